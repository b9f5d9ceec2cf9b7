//! The parity suite on the CUDA backend (both distance_argmin variants), plus checks that
//! need no GPU: a typed error (never a panic) where there is no driver or device, and the
//! shipped PTX's entries, ISA version and target.
//!
//! GPU tests print why they skip when no device is present; with `VQKIT_REQUIRE_CUDA=1`
//! they fail instead (for the GPU CI machine).

#![cfg(feature = "cuda")]

mod common;

use vqkit::Error;
use vqkit::backend::cuda::{self, ArgminVariant, CudaBackend};
use vqkit_kernels::ptx;

fn require() -> bool {
    std::env::var("VQKIT_REQUIRE_CUDA").is_ok_and(|v| v == "1")
}

/// The CUDA backend with each argmin variant, or nothing (after saying why).
fn backends() -> Vec<CudaBackend> {
    let mut v = Vec::new();
    for variant in [ArgminVariant::V2Tiled, ArgminVariant::V1Naive] {
        match CudaBackend::with_variant(0, variant) {
            Ok(b) => v.push(b),
            Err(e) if require() => panic!("VQKIT_REQUIRE_CUDA=1 but: {e}"),
            Err(e) => {
                eprintln!("skipping CUDA tests: {e}");
                return Vec::new();
            }
        }
    }
    v
}

backend_suite!(backends, 513, 16);

#[test]
fn no_driver_or_device_is_a_typed_error() {
    match CudaBackend::new(0) {
        Ok(b) => eprintln!(
            "a CUDA device is present ({}): checked by the suite",
            vqkit::Backend::name(&b)
        ),
        Err(Error::BackendUnavailable { backend, reason }) => {
            assert_eq!(backend, "cuda");
            assert!(!reason.is_empty());
            assert!(!require(), "VQKIT_REQUIRE_CUDA=1 but: {reason}");
        }
        Err(e) => panic!("expected BackendUnavailable, got {e:?}"),
    }
    // A device ordinal that cannot exist is an error too, never a panic.
    assert!(matches!(
        CudaBackend::new(1 << 20),
        Err(Error::BackendUnavailable { .. })
    ));
}

#[test]
fn describe_says_whether_cuda_was_found() {
    let s = cuda::describe();
    assert!(s.contains("PTX ISA 8.0"), "{s}");
    assert!(s.contains("cuda driver: "), "{s}");
    if !cuda::driver_present() {
        assert!(s.contains("NOT FOUND"), "{s}");
    }
}

#[test]
fn ptx_has_every_entry_and_the_chosen_isa_and_target() {
    assert_eq!(ptx::PTX_ISA, "8.0");
    assert_eq!(ptx::PTX_TARGET, "sm_80");
    for (name, src, entries) in ptx::MODULES {
        assert!(src.len() > 1000, "{name}: PTX is empty");
        assert!(
            src.contains("\n.version 8.0\n"),
            "{name}: wrong PTX ISA version"
        );
        assert!(src.contains("\n.target sm_80\n"), "{name}: wrong target");
        assert!(src.contains("\n.address_size 64\n"), "{name}");
        for e in entries {
            assert!(
                src.contains(&format!(".visible .entry {e}(")),
                "{name}: no entry {e}"
            );
        }
        // No entry that the list does not name (a renamed kernel must update the docs).
        let n = src.matches(".visible .entry ").count();
        assert_eq!(
            n,
            entries.len(),
            "{name}: {n} entries, {} documented",
            entries.len()
        );
    }
}

#[test]
fn ptx_is_generated_from_the_committed_sources() {
    // The PTX records the compiler; its freshness against kernels/*.cu is checked by
    // kernels/check_ptx.sh, which regenerates it.
    for (name, src, _) in ptx::MODULES {
        assert!(
            src.contains("Cuda compilation tools, release 12.0, V12.0.140"),
            "{name}: not from the pinned NVRTC 12.0.140"
        );
    }
}

#[test]
fn repeated_ema_and_kmeans_steps_are_bit_identical_on_a_larger_problem() {
    // Many rows per code (several chunks per code) and more than 256 codes (two radix
    // passes): the paths the small suite shapes reach least.
    for b in backends() {
        let mut rng = vqkit::rng::Rng::new(11);
        let (n, k, d) = (20_000, 300, 24);
        let x = common::data(&mut rng, n * d);
        let c = common::data(&mut rng, k * d);
        let run = || {
            let mut cent = c.clone();
            let rep = vqkit::ops::kmeans_step(&b, &x, &mut cent, d).unwrap();
            let a = vqkit::ops::assign(&b, &x, &cent, d).unwrap();
            let mut ema = vqkit::ops::EmaState::with_dim(cent.clone(), d).unwrap();
            vqkit::ops::ema_update(&b, &x, &a.indices, d, Default::default(), &mut ema).unwrap();
            (
                rep.inertia.to_bits(),
                cent.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                ema,
            )
        };
        let (i1, c1, e1) = run();
        let (i2, c2, e2) = run();
        assert_eq!(i1, i2);
        assert_eq!(c1, c2);
        assert_eq!(
            e1.codebook.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            e2.codebook.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        common::check_cluster_sums(std::slice::from_ref(&b), n, k, d, 3).unwrap();
        common::check_ema(std::slice::from_ref(&b), n, k, d, 4).unwrap();
    }
}

/// The shipped CUDA backend and the CPU backend, or nothing (after saying why).
fn cuda_and_cpu() -> Option<(CudaBackend, vqkit::backend::cpu::CpuBackend)> {
    let cuda = match CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) if require() => panic!("VQKIT_REQUIRE_CUDA=1 but: {e}"),
        Err(e) => {
            eprintln!("skipping CUDA tests: {e}");
            return None;
        }
    };
    Some((cuda, vqkit::backend::cpu::CpuBackend::new(Some(2)).unwrap()))
}

fn rel_close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * a.abs().max(b.abs()).max(1e-12)
}

#[test]
fn kmeans_on_cuda_matches_the_cpu() {
    use vqkit::quant::kmeans::{Init, KMeans, KMeansConfig};
    let Some((cuda, cpu)) = cuda_and_cpu() else {
        return;
    };
    let d = 8;
    let x = vqkit::rng::clustered(3000, d, 12, 0.4, 5);
    for init in [Init::KMeansPlusPlus, Init::Random] {
        let mut cfg = KMeansConfig::new(16);
        cfg.init = init;
        cfg.iters = 8;
        let (mg, rg) = KMeans::fit(&cuda, &x, d, &cfg).unwrap();
        let (mc, rc) = KMeans::fit(&cpu, &x, d, &cfg).unwrap();
        assert!(
            rel_close(rg.mse, rc.mse, 1e-4),
            "{init:?}: cuda {} cpu {}",
            rg.mse,
            rc.mse
        );
        let worst = mg
            .centroids
            .iter()
            .zip(&mc.centroids)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-3, "{init:?}: centroids differ by {worst}");
    }
}

#[test]
fn rq_kmeans_on_cuda_matches_the_cpu() {
    use vqkit::quant::rvq::{Rvq, RvqConfig};
    let Some((cuda, cpu)) = cuda_and_cpu() else {
        return;
    };
    let d = 12;
    let x = vqkit::rng::clustered(2000, d, 20, 0.5, 9);
    let mut cfg = RvqConfig::new(3, 16);
    cfg.beam = 2;
    // Relative squared error of a model's reconstruction, encoded on backend `b`.
    let error = |m: &Rvq, b: &dyn Fn(&Rvq) -> Vec<u32>| {
        let y = m.decode(&b(m)).unwrap();
        let se: f64 = x
            .iter()
            .zip(&y)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum();
        se / x.iter().map(|&a| (a as f64).powi(2)).sum::<f64>()
    };
    let gpu = Rvq::fit(&cuda, &x, d, &cfg, &mut |_| {}).unwrap();
    let host = Rvq::fit(&cpu, &x, d, &cfg, &mut |_| {}).unwrap();
    let eg = error(&gpu, &|m| m.encode(&cuda, &x, 2).unwrap());
    let ec = error(&host, &|m| m.encode(&cpu, &x, 2).unwrap());
    assert!(eg < 0.5 && rel_close(eg, ec, 1e-3), "cuda {eg} cpu {ec}");
    // Encoding with the CPU-trained model on CUDA gives the CPU's codes (but for ties).
    let (a, b) = (
        host.encode(&cuda, &x, 1).unwrap(),
        host.encode(&cpu, &x, 1).unwrap(),
    );
    let same = a.iter().zip(&b).filter(|(p, q)| p == q).count();
    assert!(
        same * 1000 >= a.len() * 999,
        "{same} of {} codes agree",
        a.len()
    );
}

#[test]
fn vq_ema_layer_on_cuda_matches_the_cpu() {
    use vqkit::quant::vq::{DeadCodes, VectorQuantizer, VqConfig};
    let Some((cuda, cpu)) = cuda_and_cpu() else {
        return;
    };
    let (k, d) = (32, 8);
    let mut cfg = VqConfig::new(k, d);
    cfg.dead_codes = DeadCodes::EmaThreshold { threshold: 0.5 };
    cfg.seed = 3;
    let (mut g, mut c) = (
        VectorQuantizer::new(cfg.clone()).unwrap(),
        VectorQuantizer::new(cfg).unwrap(),
    );
    let mut rng = vqkit::rng::Rng::new(4);
    for step in 0..6 {
        let z = rng.normal_vec(256 * d);
        let og = g.forward(&cuda, &z, true).unwrap();
        let oc = c.forward(&cpu, &z, true).unwrap();
        assert_eq!(og.indices, oc.indices, "step {step}");
        let worst = g
            .codebook
            .iter()
            .zip(&c.codebook)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "step {step}: codebooks differ by {worst}");
    }
}
