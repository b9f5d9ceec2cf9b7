//! The parity suite shared by every backend: each check compares one trait operation with
//! `vqkit::reference` (f64) on seeded random data. A backend's test file instantiates it
//! with `backend_suite!(make_backends, MAX_SIDE)`, so CPU, WGPU and CUDA run the same code.

#![allow(dead_code)]

use vqkit::backend::{Backend, EmaParams, Shape};
use vqkit::reference;
use vqkit::rng::Rng;
use vqkit::{Error, ops};

/// Sides that hit the remainders of every tile in vqkit's kernels (MR of 4, 6, 12; NR of
/// 8, 16, 32; workgroups of 64 and 256; task blocks of 384), capped at `max`.
pub fn sides(max: usize) -> Vec<usize> {
    [
        1, 2, 3, 5, 7, 12, 13, 16, 17, 31, 33, 63, 65, 127, 129, 257, 385, 513,
    ]
    .into_iter()
    .filter(|&s| s <= max)
    .collect()
}

/// `|got - want| <= tol`, false for NaN (so an unwritten, poisoned output fails).
pub fn within(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol
}

/// Seeded N(0, 1) data, plus a shared offset so points are not all near the origin.
pub fn data(rng: &mut Rng, len: usize) -> Vec<f32> {
    let offset = rng.normal() as f32;
    (0..len).map(|_| rng.normal() as f32 + offset).collect()
}

/// `distance_argmin` (and `codeword_norms`) against the reference, checked by distance:
/// the chosen code's exact distance is within tolerance of the true minimum, the reported
/// distance within tolerance of the chosen code's exact distance, and an exact duplicate
/// of codeword 0 placed last is never chosen (the lowest index wins a tie). The data and
/// the reference are made once for all of `backends` (under valgrind's memcheck they cost
/// more than the kernels).
pub fn check_argmin<B: Backend>(
    backends: &[B],
    n: usize,
    k: usize,
    d: usize,
    seed: u64,
) -> Result<(), String> {
    if backends.is_empty() {
        return Ok(());
    }
    let mut rng = Rng::new(seed);
    let x = data(&mut rng, n * d);
    let mut c = data(&mut rng, k * d);
    if k >= 2 {
        let first = c[..d].to_vec();
        c[(k - 1) * d..].copy_from_slice(&first);
    }
    let shape = Shape::new(n, k, d);
    let cn = reference::codeword_norms(&c, d);
    let cmax = cn.iter().cloned().fold(0.0, f64::max);
    let (_, best) = reference::distance_argmin(&x, &c, d);
    for b in backends {
        let (idx, dist) = run_argmin_against(b, &x, &c, shape, &cn).map_err(|e| e.to_string())?;
        // The host-slice path (in place on the CPU) must give exactly the device path's bits.
        let (hidx, hdist) = b.assign_host(&x, &c, shape).map_err(|e| e.to_string())?;
        if hidx != idx
            || hdist
                .iter()
                .zip(&dist)
                .any(|(p, q)| p.to_bits() != q.to_bits())
        {
            return Err(format!(
                "{}: {n}x{k}x{d}: assign_host differs from the device path",
                b.name()
            ));
        }
        for i in 0..n {
            let j = idx[i] as usize;
            if j >= k {
                return Err(format!(
                    "{}: row {i}: index {j} out of range (k = {k})",
                    b.name()
                ));
            }
            if k >= 2 && j == k - 1 {
                return Err(format!(
                    "{}: row {i}: chose the duplicate {j} over index 0",
                    b.name()
                ));
            }
            let xi = &x[i * d..(i + 1) * d];
            let xn: f64 = xi.iter().map(|&v| v as f64 * v as f64).sum();
            // f32 round-off of |x|^2 - 2 x.c + |c|^2 is relative to the norms, not the
            // distance.
            let tol = 2e-5 * (xn + cmax) + 1e-6;
            let exact = reference::sq_dist(xi, &c[j * d..(j + 1) * d]);
            if exact > best[i] + tol {
                return Err(format!(
                    "{}: {n}x{k}x{d} row {i}: chose {j} at {exact}, the minimum is {} (tol {tol})",
                    b.name(),
                    best[i]
                ));
            }
            if !within(dist[i] as f64, exact, tol) || dist[i] < 0.0 {
                return Err(format!(
                    "{}: {n}x{k}x{d} row {i}: reported distance {} for exact {exact} (tol {tol})",
                    b.name(),
                    dist[i]
                ));
            }
        }
    }
    Ok(())
}

/// Norms and argmin through the trait, outputs poisoned first so an unwritten one shows.
pub fn run_argmin<B: Backend>(
    b: &B,
    x: &[f32],
    c: &[f32],
    shape: Shape,
) -> vqkit::Result<(Vec<u32>, Vec<f32>)> {
    run_argmin_against(b, x, c, shape, &reference::codeword_norms(c, shape.d))
}

/// [`run_argmin`] with the reference's codeword norms given.
fn run_argmin_against<B: Backend>(
    b: &B,
    x: &[f32],
    c: &[f32],
    shape: Shape,
    want_norms: &[f64],
) -> vqkit::Result<(Vec<u32>, Vec<f32>)> {
    let Shape { n, k, d } = shape;
    let xb = b.upload(x)?;
    let cb = b.upload(c)?;
    let mut norms = b.upload(&vec![f32::NAN; k])?;
    b.codeword_norms(&cb, k, d, &mut norms)?;
    let got_norms = b.download(&norms)?;
    for (j, (&g, &want)) in got_norms.iter().zip(want_norms).enumerate() {
        if !within(g as f64, want, 1e-5 * want + 1e-6) {
            return Err(Error::invalid(
                "norms",
                format!("norm {j}: got {g}, want {want}"),
            ));
        }
    }
    let mut idx = b.upload(&vec![u32::MAX; n])?;
    let mut dist = b.upload(&vec![f32::NAN; n])?;
    b.distance_argmin(&xb, &cb, &norms, shape, &mut idx, &mut dist)?;
    Ok((b.download(&idx)?, b.download(&dist)?))
}

fn close(what: &str, got: &[f32], want: &[f64], scale: &[f64], rtol: f64) -> Result<(), String> {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = rtol * scale[i] + 1e-6;
        if !within(g as f64, w, tol) {
            return Err(format!("{what}[{i}]: got {g}, want {w} (tol {tol})"));
        }
    }
    Ok(())
}

/// Random codes in `0..k`, weighted so that some codes stay empty when k is large.
pub fn codes(rng: &mut Rng, n: usize, k: usize) -> Vec<u32> {
    let used = (k / 2).max(1);
    (0..n)
        .map(|_| rng.below(used) as u32 * (k / used) as u32)
        .collect()
}

/// `cluster_sums` then `kmeans_update` against the reference, the data and the reference
/// made once for all of `backends`. Sums are compared with a tolerance relative to the sum
/// of absolute values (the sum's condition), counts exactly.
pub fn check_cluster_sums<B: Backend>(
    backends: &[B],
    n: usize,
    k: usize,
    d: usize,
    seed: u64,
) -> Result<(), String> {
    if backends.is_empty() {
        return Ok(());
    }
    let mut rng = Rng::new(seed);
    let x = data(&mut rng, n * d);
    let idx = codes(&mut rng, n, k);
    let dist: Vec<f32> = (0..n).map(|_| rng.uniform() as f32 * 4.0).collect();
    let old = data(&mut rng, k * d);
    let shape = Shape::new(n, k, d);
    let abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let (want_s, want_c, want_d) = reference::cluster_sums(&x, &idx, &dist, k, d);
    let (scale_s, _, scale_d) = reference::cluster_sums(&abs, &idx, &dist, k, d);
    for b in backends {
        let e = |e: Error| format!("{}: {e}", b.name());
        let (xb, ib, db) = (
            b.upload(&x).map_err(e)?,
            b.upload(&idx).map_err(e)?,
            b.upload(&dist).map_err(e)?,
        );
        let mut sums = b.upload(&vec![f32::NAN; k * d]).map_err(e)?;
        let mut counts = b.upload(&vec![u32::MAX; k]).map_err(e)?;
        let mut dsums = b.upload(&vec![f32::NAN; k]).map_err(e)?;
        b.cluster_sums(&xb, &ib, &db, shape, &mut sums, &mut counts, &mut dsums)
            .map_err(e)?;
        let got_c = b.download(&counts).map_err(e)?;
        if got_c != want_c {
            return Err(format!("{}: {n}x{k}x{d}: counts differ", b.name()));
        }
        let got_s = b.download(&sums).map_err(e)?;
        close("sums", &got_s, &want_s, &scale_s, 1e-5)
            .map_err(|m| format!("{}: {n}x{k}x{d}: {m}", b.name()))?;
        close(
            "dist_sums",
            &b.download(&dsums).map_err(e)?,
            &want_d,
            &scale_d,
            1e-5,
        )
        .map_err(|m| format!("{}: {n}x{k}x{d}: {m}", b.name()))?;

        let mut cent = b.upload(&old).map_err(e)?;
        b.kmeans_update(&sums, &counts, k, d, &mut cent)
            .map_err(e)?;
        let sums64: Vec<f64> = got_s.iter().map(|&v| v as f64).collect();
        let want = reference::kmeans_update(&sums64, &got_c, &old, d);
        let scale: Vec<f64> = want.iter().map(|v| v.abs()).collect();
        close(
            "centroids",
            &b.download(&cent).map_err(e)?,
            &want,
            &scale,
            1e-6,
        )
        .map_err(|m| format!("{}: {n}x{k}x{d}: {m}", b.name()))?;
    }
    Ok(())
}

/// `ema_update` against the reference, over two steps so that the decayed state matters:
/// each step starts every backend from the same state (the first seeded, the second the
/// reference's first step rounded to f32), so the data and the reference are made once
/// for all of `backends`.
pub fn check_ema<B: Backend>(
    backends: &[B],
    n: usize,
    k: usize,
    d: usize,
    seed: u64,
) -> Result<(), String> {
    if backends.is_empty() {
        return Ok(());
    }
    let mut rng = Rng::new(seed);
    let params = EmaParams {
        decay: 0.8,
        eps: 1e-3,
    };
    let mut size: Vec<f32> = (0..k).map(|_| rng.uniform() as f32 * 3.0).collect();
    let mut esum = data(&mut rng, k * d);
    let mut code = data(&mut rng, k * d);
    let shape = Shape::new(n, k, d);
    for _ in 0..2 {
        let x = data(&mut rng, n * d);
        let idx = codes(&mut rng, n, k);
        let (ws, we, wc) = reference::ema_update(
            &x,
            &idx,
            k,
            d,
            params.decay,
            params.eps,
            &size,
            &esum,
            &code,
        );
        let scale_s: Vec<f64> = ws.iter().map(|v| v.abs() + 1.0).collect();
        // The running sum's condition: the decayed old sum plus the batch's absolute sum.
        let abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        let (babs, _, _) = reference::cluster_sums(&abs, &idx, &vec![0.0; n], k, d);
        let scale_e: Vec<f64> = esum
            .iter()
            .zip(&babs)
            .map(|(&o, &a)| o.abs() as f64 + a)
            .collect();
        let total: f64 = ws.iter().sum();
        let scale_c: Vec<f64> = (0..k * d)
            .map(|i| {
                let j = i / d;
                let sm =
                    (ws[j] + params.eps as f64) / (total + k as f64 * params.eps as f64) * total;
                scale_e[i] / sm + wc[i].abs()
            })
            .collect();
        for b in backends {
            let e = |e: Error| format!("{}: {e}", b.name());
            let (xb, ib) = (b.upload(&x).map_err(e)?, b.upload(&idx).map_err(e)?);
            let (mut sb, mut eb, mut cb) = (
                b.upload(&size).map_err(e)?,
                b.upload(&esum).map_err(e)?,
                b.upload(&code).map_err(e)?,
            );
            b.ema_update(&xb, &ib, shape, params, &mut sb, &mut eb, &mut cb)
                .map_err(e)?;
            let gs = b.download(&sb).map_err(e)?;
            let ge = b.download(&eb).map_err(e)?;
            let gc = b.download(&cb).map_err(e)?;
            let ctx = |m: String| format!("{}: ema {n}x{k}x{d}: {m}", b.name());
            // The host-slice path (`ops::ema_update`; in place on the CPU) gives the same
            // bits.
            let (mut hs, mut he, mut hc) = (size.clone(), esum.clone(), code.clone());
            b.ema_update_host(&x, &idx, shape, params, &mut hs, &mut he, &mut hc)
                .map_err(e)?;
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
            if (bits(&hs), bits(&he), bits(&hc)) != (bits(&gs), bits(&ge), bits(&gc)) {
                return Err(ctx("ema_update_host differs from ema_update".into()));
            }
            close("cluster_size", &gs, &ws, &scale_s, 1e-5).map_err(ctx)?;
            close("embed_sum", &ge, &we, &scale_e, 1e-5).map_err(ctx)?;
            close("codebook", &gc, &wc, &scale_c, 1e-5).map_err(ctx)?;
        }
        let f32s = |v: &[f64]| v.iter().map(|&w| w as f32).collect::<Vec<f32>>();
        (size, esum, code) = (f32s(&ws), f32s(&we), f32s(&wc));
    }
    Ok(())
}

/// Two runs of every operation give bit-identical outputs.
pub fn check_determinism<B: Backend>(b: &B, n: usize, k: usize, d: usize) -> Result<(), String> {
    let run = || -> vqkit::Result<Vec<u32>> {
        let mut rng = Rng::new(99);
        let x = data(&mut rng, n * d);
        let c = data(&mut rng, k * d);
        let (idx, dist) = run_argmin(b, &x, &c, Shape::new(n, k, d))?;
        let mut km = ops::DeviceKMeans::new(b, &x, &c, d)?;
        let rep = km.step()?;
        let mut ema = ops::EmaState::with_dim(c.clone(), d)?;
        ops::ema_update(b, &x, &idx, d, EmaParams::default(), &mut ema)?;
        let mut bits: Vec<u32> = idx;
        bits.extend(dist.iter().map(|v| v.to_bits()));
        bits.extend(km.centroids()?.iter().map(|v| v.to_bits()));
        bits.push(rep.inertia.to_bits() as u32);
        bits.extend(
            ema.codebook
                .iter()
                .chain(&ema.cluster_size)
                .map(|v| v.to_bits()),
        );
        Ok(bits)
    };
    let a = run().map_err(|e| e.to_string())?;
    let b2 = run().map_err(|e| e.to_string())?;
    if a != b2 {
        return Err(format!("{}: two runs differ", b.name()));
    }
    Ok(())
}

/// Bad input gets a typed error, never a panic; `n = 0` is valid and gives empty output.
pub fn check_bad_input<B: Backend>(b: &B) {
    let name = b.name();
    let x = vec![1.0f32; 12];
    let c = vec![0.5f32; 6];
    // Mismatched lengths through the trait.
    let xb = b.upload(&x).unwrap();
    let cb = b.upload(&c).unwrap();
    let mut norms = b.zeros::<f32>(3).unwrap();
    let mut idx = b.zeros::<u32>(4).unwrap();
    let mut dist = b.zeros::<f32>(4).unwrap();
    let err = b.distance_argmin(&xb, &cb, &norms, Shape::new(5, 3, 2), &mut idx, &mut dist);
    assert!(
        matches!(err, Err(Error::ShapeMismatch { .. })),
        "{name}: {err:?}"
    );
    let err = b.codeword_norms(&cb, 4, 2, &mut norms);
    assert!(
        matches!(err, Err(Error::ShapeMismatch { .. })),
        "{name}: {err:?}"
    );
    let err = b.distance_argmin(&xb, &cb, &norms, Shape::new(4, 3, 0), &mut idx, &mut dist);
    assert!(matches!(err, Err(Error::ZeroDimension)), "{name}: {err:?}");
    let err = b.distance_argmin(&xb, &cb, &norms, Shape::new(4, 0, 3), &mut idx, &mut dist);
    assert!(matches!(err, Err(Error::EmptyCodebook)), "{name}: {err:?}");
    let mut sums = b.zeros::<f32>(5).unwrap();
    let mut counts = b.zeros::<u32>(3).unwrap();
    let mut ds = b.zeros::<f32>(3).unwrap();
    let err = b.cluster_sums(
        &xb,
        &idx,
        &dist,
        Shape::new(4, 3, 3),
        &mut sums,
        &mut counts,
        &mut ds,
    );
    assert!(
        matches!(err, Err(Error::ShapeMismatch { .. })),
        "{name}: {err:?}"
    );
    let bad = EmaParams {
        decay: 1.5,
        eps: 1e-5,
    };
    let mut cs = b.zeros::<f32>(3).unwrap();
    let mut es = b.zeros::<f32>(6).unwrap();
    let mut cb2 = b.zeros::<f32>(6).unwrap();
    let err = b.ema_update(
        &xb,
        &idx,
        Shape::new(6, 3, 2),
        bad,
        &mut cs,
        &mut es,
        &mut cb2,
    );
    assert!(
        matches!(err, Err(Error::InvalidParameter { .. })),
        "{name}: {err:?}"
    );

    // Host conveniences.
    assert!(matches!(
        ops::assign(b, &x, &c, 0),
        Err(Error::ZeroDimension)
    ));
    assert!(matches!(
        ops::assign(b, &x, &[], 2),
        Err(Error::EmptyCodebook)
    ));
    assert!(matches!(
        ops::assign(b, &x[..5], &c, 2),
        Err(Error::RaggedRows { .. })
    ));
    let mut nan = x.clone();
    nan[7] = f32::NAN;
    assert!(matches!(
        ops::assign(b, &nan, &c, 2),
        Err(Error::NonFinite { index: 7, .. })
    ));
    let mut inf = c.clone();
    inf[1] = f32::NEG_INFINITY;
    assert!(matches!(
        ops::assign(b, &x, &inf, 2),
        Err(Error::NonFinite {
            what: "codebook",
            ..
        })
    ));
    let huge = vec![3e30f32; 4];
    assert!(matches!(
        ops::assign(b, &huge, &[-3e30, -3e30], 2),
        Err(Error::Overflow { .. })
    ));
    // A score that overflows to -inf plus an |x|^2 that overflows to +inf is NaN: an
    // overflow too, not a distance clamped to 0 (as `max(v, 0)` made it on every backend).
    let got = ops::assign(b, &[1e21, 1e21, 1.0, 2.0], &[1e18, 1e18], 2);
    assert!(
        matches!(got, Err(Error::Overflow { row: 0 })),
        "{name}: {got:?}"
    );
    let empty = ops::assign(b, &[], &c, 2).unwrap();
    assert!(empty.indices.is_empty() && empty.distances.is_empty());
    let mut state = ops::EmaState::with_dim(c.clone(), 2).unwrap();
    let err = ops::ema_update(
        b,
        &x,
        &[0, 1, 2, 3, 0, 1],
        2,
        EmaParams::default(),
        &mut state,
    );
    assert!(
        matches!(
            err,
            Err(Error::CodeOutOfRange {
                row: 3,
                code: 3,
                k: 3
            })
        ),
        "{err:?}"
    );
    let err = ops::ema_update(b, &x, &[0, 1], 2, EmaParams::default(), &mut state);
    assert!(matches!(err, Err(Error::ShapeMismatch { .. })), "{err:?}");
    let mut bad = x.clone();
    bad[5] = f32::NAN;
    let err = ops::ema_update(b, &bad, &[0; 6], 2, EmaParams::default(), &mut state);
    assert!(
        matches!(err, Err(Error::NonFinite { index: 5, .. })),
        "{err:?}"
    );
    // Many points per code (the CPU then keeps a copy of the state rather than reading x
    // first), the infinity late in x: the same error, the first bad index.
    let many: Vec<f32> = (0..64).map(|i| (i % 7) as f32).collect();
    let codes: Vec<u32> = (0..32).map(|i| i % 3).collect();
    for at in [41, 63] {
        let mut bad = many.clone();
        bad[at] = f32::INFINITY;
        bad[at - 2] = f32::NEG_INFINITY;
        let err = ops::ema_update(b, &bad, &codes, 2, EmaParams::default(), &mut state);
        assert!(
            matches!(err, Err(Error::NonFinite { index, .. }) if index == at - 2),
            "{name}: {err:?}"
        );
    }
    // Nothing of the state is lost to a refused step.
    let fresh = ops::EmaState::with_dim(c.clone(), 2).unwrap();
    assert_eq!(
        (&state.cluster_size, &state.embed_sum, &state.codebook),
        (&fresh.cluster_size, &fresh.embed_sum, &fresh.codebook),
        "{name}"
    );
    // A running sum that is NaN already is no error of the points.
    state.embed_sum[1] = f32::NAN;
    ops::ema_update(b, &many, &codes, 2, EmaParams::default(), &mut state).unwrap();
    // Empty data through every operation.
    let mut cent = c.clone();
    let rep = ops::kmeans_step(b, &[], &mut cent, 2).unwrap();
    assert_eq!(rep.empty, vec![0, 1, 2]);
    assert_eq!(cent, c);
}

/// Instantiates the suite in a test file. `$make` returns the backends to test (empty:
/// skipped, after printing why); `$max` caps n, k and d so slow devices stay fast.
#[macro_export]
macro_rules! backend_suite {
    ($make:expr, $max:expr, $cases:expr) => {
        use proptest::prelude::*;

        fn side() -> impl Strategy<Value = usize> {
            proptest::sample::select(common::sides($max))
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: $cases, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn argmin_matches_reference(n in side(), k in side(), d in side(), seed in any::<u64>()) {
                common::check_argmin(&$make(), n, k, d, seed).map_err(TestCaseError::fail)?;
            }

            #[test]
            fn cluster_sums_and_update_match_reference(n in side(), k in side(), d in side(), seed in any::<u64>()) {
                common::check_cluster_sums(&$make(), n, k, d, seed).map_err(TestCaseError::fail)?;
            }

            #[test]
            fn ema_matches_reference(n in side(), k in side(), d in side(), seed in any::<u64>()) {
                common::check_ema(&$make(), n, k, d, seed).map_err(TestCaseError::fail)?;
            }
        }

        /// The shapes users bring beyond the proptest sides: rows of 4096 floats, and
        /// codebooks of a million codewords and more (the coarse quantizers of IVF indexes);
        /// and on the CPU, the kernel variants against the f64 reference: short rows
        /// against thousands of codewords (the tall kernels' minima walk; the AVX2 scan
        /// kernels, which no shape takes by default, are checked bit for bit against the
        /// tiled kernel in the crate's own tests), a few rows against a codebook many times
        /// larger (cols), many rows against a few codewords (few).
        #[test]
        fn argmin_accepts_wide_rows_and_million_codeword_codebooks() {
            let shapes = [
                (37, 3, 4096),
                (70, 129, 4096),
                (19, (1 << 20) + 3, 4),
                (301, 5003, 2),
                // Short rows against many codewords (the tall kernels, AVX-512's and
                // AVX2's): rows and codewords leaving remainders.
                (53, 4099, 8),
                (29, 4097, 6),
                (45, 700, 100),
                // Short rows against small codebooks (the tall kernels carrying indices,
                // AVX2's up to 64 codewords): partial panels, up to four panels.
                (70, 16, 4),
                (33, 7, 8),
                (41, 32, 8),
                (65, 128, 3),
                (40, 50, 2),
                (37, 40, 3),
                // Between 129 and 255 codewords (the tall kernels' minima walk since b51eaef,
                // the tiled kernels before): one codeword in the last panel, a last panel
                // one short.
                (65, 129, 3),
                (70, 255, 8),
                // AVX2's tall index walk at two codewords a loop (d = 7, an odd one left).
                (40, 61, 7),
                // Many rows of 9 to 32 floats against a few codewords (the few kernels:
                // AVX-512's panels of 32 rows and tiles of 8 codewords, AVX2's of 16 and 4,
                // past 16 floats against at most 128 codewords), full and short.
                (100, 37, 9),
                (70, 100, 24),
                (70, 256, 32),
                (45, 13, 17),
                (48, 22, 16),
            ];
            let backends = $make();
            for &(n, k, d) in &shapes {
                common::check_argmin(&backends, n, k, d, 11).unwrap();
            }
        }

        #[test]
        fn outputs_are_bit_identical_across_runs() {
            let m = $max.min(257);
            for b in $make() {
                common::check_determinism(&b, m * 3 + 1, m / 2 + 3, m / 4 + 5).unwrap();
            }
        }

        #[test]
        fn bad_input_is_a_typed_error() {
            for b in $make() {
                common::check_bad_input(&b);
            }
        }
    };
}

/// A context on the CUDA stand-in driver (`kernels/emu/driver.sh`), or `None` after saying
/// why: no driver library, or a real driver (whose limits the stand-in tests do not
/// describe). With `VQKIT_REQUIRE_CUDA=1` (CI) a missing driver is a failure.
#[cfg(feature = "cuda")]
pub fn standin_context() -> Option<std::sync::Arc<cudarc::driver::CudaContext>> {
    if !vqkit::backend::cuda::driver_present() {
        let require = std::env::var("VQKIT_REQUIRE_CUDA").is_ok_and(|v| v == "1");
        assert!(
            !require,
            "VQKIT_REQUIRE_CUDA=1 but no CUDA driver library was found"
        );
        println!("skipped: no CUDA driver library");
        return None;
    }
    let ctx = cudarc::driver::CudaContext::new(0).expect("device 0");
    let name = ctx.name().expect("a device name");
    if !name.contains("stand-in") {
        println!("skipped: {name} is not the stand-in driver");
        return None;
    }
    Some(ctx)
}
