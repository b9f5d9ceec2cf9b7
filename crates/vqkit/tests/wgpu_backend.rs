//! The parity suite on the WGPU backend (both distance_argmin variants), plus the chunked
//! and 2-D dispatch paths forced with artificially small limits, codes out of range, and
//! the timing and adapter report.
//!
//! No adapter: the tests print why and pass, unless `VQKIT_REQUIRE_WGPU=1` (set in CI, with
//! `WGPU_BACKEND=vulkan` on lavapipe), which turns "no adapter" into a failure.

#![cfg(feature = "wgpu")]

mod common;

use std::sync::OnceLock;
use vqkit::Backend;
use vqkit::backend::wgpu::{ArgminVariant, WgpuBackend, WgpuOptions};
use vqkit::reference;

fn required() -> bool {
    std::env::var("VQKIT_REQUIRE_WGPU").as_deref() == Ok("1")
}

/// One backend per options, built once per test binary: every test shares its device.
fn cached(
    cell: &'static OnceLock<Result<WgpuBackend, String>>,
    opts: fn() -> WgpuOptions,
) -> Option<WgpuBackend> {
    let r = cell.get_or_init(|| {
        let r = WgpuBackend::with_options(opts()).map_err(|e| e.to_string());
        if let Ok(b) = &r {
            eprintln!("wgpu tests run on {}", b.name());
        }
        r
    });
    match r {
        Ok(b) => Some(b.clone()),
        Err(e) if required() => panic!("VQKIT_REQUIRE_WGPU=1 but the wgpu backend failed: {e}"),
        Err(e) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| eprintln!("wgpu tests skipped: {e}"));
            None
        }
    }
}

fn shared() -> Option<WgpuBackend> {
    static CELL: OnceLock<Result<WgpuBackend, String>> = OnceLock::new();
    cached(&CELL, WgpuOptions::default)
}

/// Limits small enough that test-sized inputs take every chunked path: 4 KiB bindings
/// (960 floats after the alignment margin) and 4 workgroups per dimension (16 per
/// dispatch, always folded into 2-D).
fn tiny() -> Option<WgpuBackend> {
    static CELL: OnceLock<Result<WgpuBackend, String>> = OnceLock::new();
    cached(&CELL, || WgpuOptions {
        max_binding_bytes: Some(4096),
        max_workgroups_per_dim: Some(4),
        ..Default::default()
    })
}

/// The shipped tiled kernels and the naive v1, on one device.
fn backends() -> Vec<WgpuBackend> {
    match shared() {
        Some(b) => vec![b.with_variant(ArgminVariant::V1Naive), b],
        None => Vec::new(),
    }
}

backend_suite!(backends, 257, 32);

#[test]
fn chunked_paths_match_reference() {
    let Some(t) = tiny() else { return };
    let variants = [ArgminVariant::V2Tiled, ArgminVariant::V1Naive].map(|v| t.with_variant(v));
    // d = 17: 56 rows or codes per binding, so x, the codebook, sums and centroids all
    // split; k = 300 needs two radix passes.
    for (n, k, d) in [(300, 70, 17), (200, 300, 3), (65, 5, 129)] {
        common::check_argmin(&variants, n, k, d, 7).unwrap();
        common::check_cluster_sums(std::slice::from_ref(&t), n, k, d, 8).unwrap();
        common::check_ema(std::slice::from_ref(&t), n, k, d, 9).unwrap();
    }
    common::check_determinism(&t, 150, 40, 9).unwrap();
}

#[test]
fn chunked_and_whole_agree_on_argmin_indices() {
    let (Some(b), Some(t)) = (shared(), tiny()) else {
        return;
    };
    let mut rng = vqkit::rng::Rng::new(3);
    let (n, k, d) = (200, 90, 13);
    let x = common::data(&mut rng, n * d);
    let c = common::data(&mut rng, k * d);
    let s = vqkit::Shape::new(n, k, d);
    let whole = common::run_argmin(&b, &x, &c, s).unwrap();
    let split = common::run_argmin(&t, &x, &c, s).unwrap();
    // Same kernel, same per-pair arithmetic: chunking the codebook must not change a bit.
    assert_eq!(whole.0, split.0);
    assert!(
        whole
            .1
            .iter()
            .zip(&split.1)
            .all(|(p, q)| p.to_bits() == q.to_bits())
    );
}

#[test]
fn many_codes_use_several_radix_passes_and_2d_dispatch() {
    let Some(b) = shared() else { return };
    // k > 65535: three 8-bit passes, and one segment_sums workgroup per code exceeds a
    // single dimension of the dispatch grid on every adapter.
    common::check_cluster_sums(std::slice::from_ref(&b), 300, 70_000, 2, 11).unwrap();
}

#[test]
fn codes_out_of_range_are_ignored() {
    let Some(b) = shared() else { return };
    let (n, k, d) = (9, 3, 2);
    let x: Vec<f32> = (0..n * d).map(|v| v as f32 * 0.5 - 2.0).collect();
    let idx = [0u32, 3, 1, u32::MAX, 2, 0, 7, 1, 2];
    let dist: Vec<f32> = (0..n).map(|v| v as f32 + 0.25).collect();
    let mut sums = b.upload(&vec![f32::NAN; k * d]).unwrap();
    let mut counts = b.upload(&vec![u32::MAX; k]).unwrap();
    let mut ds = b.upload(&vec![f32::NAN; k]).unwrap();
    b.cluster_sums(
        &b.upload(&x).unwrap(),
        &b.upload(&idx).unwrap(),
        &b.upload(&dist).unwrap(),
        vqkit::Shape::new(n, k, d),
        &mut sums,
        &mut counts,
        &mut ds,
    )
    .unwrap();
    let (ws, wc, wd) = reference::cluster_sums(&x, &idx, &dist, k, d);
    assert_eq!(b.download(&counts).unwrap(), wc);
    let got: Vec<f64> = b
        .download(&sums)
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    assert_eq!(got, ws, "small exact sums");
    let got: Vec<f64> = b.download(&ds).unwrap().iter().map(|&v| v as f64).collect();
    assert_eq!(got, wd);
}

#[test]
fn adapter_report_and_timing() {
    let Some(b) = shared() else { return };
    let info = b.adapter_info();
    eprintln!(
        "adapter: {} ({:?}, {:?})",
        info.name, info.backend, info.device_type
    );
    if std::env::var("WGPU_BACKEND").as_deref() == Ok("vulkan") {
        assert_eq!(info.backend, wgpu::Backend::Vulkan);
    }
    let report = vqkit::backend::wgpu::describe();
    eprintln!("{report}");
    assert!(report.contains(&info.name), "{report}");

    let mut rng = vqkit::rng::Rng::new(4);
    let (n, k, d) = (256, 64, 16);
    let x = common::data(&mut rng, n * d);
    let c = common::data(&mut rng, k * d);
    let (a, t) = b.timed(|b| vqkit::ops::assign(b, &x, &c, d)).unwrap();
    assert_eq!(a.indices.len(), n);
    assert!(t.host_seconds > 0.0);
    eprintln!("timing: {t:?} (timestamps: {})", b.has_timestamps());
    if b.has_timestamps() {
        let gpu = t
            .gpu_seconds
            .expect("timestamps supported, so GPU time is reported");
        // A sum of each pass's span, which need not fit in the host's wall time: a driver
        // may overlap passes or keep a clock of its own (lavapipe, on a loaded CI machine:
        // 20.07 ms summed in 19.65 ms of wall time). The check is for the units: a wrong
        // timestamp period is off by 1e3 or more.
        assert!(gpu > 0.0 && gpu <= 2.0 * t.host_seconds, "{t:?}");
    } else {
        assert_eq!(t.gpu_seconds, None);
    }
}

#[test]
fn long_loops_are_split_across_dispatches() {
    // llvmpipe silently ends an invocation's loops after 65535 iterations in total: an
    // unsplit v1 gets 1 x 257 x 257 wrong (k d > 65535), and a single workgroup summing
    // one code's 70,000 rows would too. Both must match the reference.
    let Some(b) = shared() else { return };
    let variants = [ArgminVariant::V1Naive, ArgminVariant::V2Tiled].map(|v| b.with_variant(v));
    common::check_argmin(&variants, 3, 257, 257, 0).unwrap();
    common::check_argmin(&variants, 70, 4096, 256, 1).unwrap();
    // k = 1: every row in one run, spread over ~42 tiles of 1666.
    let one = std::slice::from_ref(&b);
    common::check_cluster_sums(one, 70_000, 1, 2, 2).unwrap();
    common::check_ema(one, 70_000, 1, 2, 3).unwrap();
}

#[test]
fn oversized_buffers_are_errors_not_panics() {
    let Some(b) = shared() else { return };
    // Beyond max_buffer_size (2 GiB on lavapipe), and beyond usize arithmetic.
    for len in [1usize << 40, usize::MAX / 2] {
        let r = b.zeros::<f32>(len);
        assert!(matches!(r, Err(vqkit::Error::Device { .. })), "{len}");
    }
    // The device is still usable afterwards.
    let v = b.upload(&[1.0f32, 2.0, 3.0]).unwrap();
    assert_eq!(b.download(&v).unwrap(), [1.0, 2.0, 3.0]);
}
