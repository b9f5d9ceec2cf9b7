//! The parity suite on the CPU backend, for every instruction set this CPU has and every
//! parallelism mode: one thread (no rayon), and pools of 2 and 3 threads.

mod common;

use vqkit::backend::cpu::{CpuBackend, Isa};

fn backends() -> Vec<CpuBackend> {
    let mut v = Vec::new();
    for isa in Isa::available() {
        for threads in [1, 2, 3] {
            v.push(CpuBackend::with_isa(Some(threads), isa).expect("detected ISA"));
        }
    }
    v
}

backend_suite!(backends, 513, 24);

#[test]
fn every_isa_and_thread_count_gives_the_same_bits() {
    // Thread count must not change a single bit; the ISA may (FMA vs mul+add rounding),
    // so compare within each ISA.
    // d = 33: the tiled kernels; d = 32 against 70 codewords: the few kernel on AVX-512
    // and AVX2 (three tasks of rows, a short last panel).
    for (isa, (n, k, d)) in Isa::available()
        .into_iter()
        .flat_map(|isa| [(isa, (1000, 70, 33)), (isa, (1000, 70, 32))])
    {
        let one = CpuBackend::with_isa(Some(1), isa).unwrap();
        let three = CpuBackend::with_isa(Some(3), isa).unwrap();
        let mut rng = vqkit::rng::Rng::new(5);
        let x = common::data(&mut rng, n * d);
        let c = common::data(&mut rng, k * d);
        let a = vqkit::ops::kmeans_step(&one, &x, &mut c.clone(), d).unwrap();
        let b = vqkit::ops::kmeans_step(&three, &x, &mut c.clone(), d).unwrap();
        assert_eq!(a.inertia.to_bits(), b.inertia.to_bits(), "{isa:?} d={d}");
        assert_eq!(a.counts, b.counts);
        let s = common::run_argmin(&one, &x, &c, vqkit::Shape::new(n, k, d)).unwrap();
        let t = common::run_argmin(&three, &x, &c, vqkit::Shape::new(n, k, d)).unwrap();
        assert_eq!(s.0, t.0);
        assert!(
            s.1.iter()
                .zip(&t.1)
                .all(|(p, q)| p.to_bits() == q.to_bits())
        );
    }
}

#[test]
fn unsupported_settings_are_errors() {
    assert!(CpuBackend::new(Some(0)).is_err());
}

/// The CPU finds points with a NaN or an infinity after the kernel, from their distances
/// (`Backend::flags_non_finite_points`): on the kernel paths (few codewords, rows read in
/// place, tiled, tall, few, cols, d in several chunks, the codebook split between threads:
/// which shape takes which depends on the cache sizes, the ones noted are this machine's,
/// 32-48 KB of L1d and 1 MB of L2), every instruction set and 1 or 2 threads, the error
/// must still name the points and the first bad value's index, as the check before the
/// kernel did; a bad codebook too must not hide bad points.
#[test]
fn non_finite_points_are_found_after_the_kernel_on_every_path() {
    use vqkit::Error;
    // (n, k, d): k <= 4; k = 16 read in place; k = 64 at d = 20 (the few kernel) and
    // k = 300 at d = 17 (the few kernel on AVX-512, tiled on AVX2); tiled; tall (d <= 8:
    // AVX-512's tiles of 64 rows, AVX2's of 32, with a short last one); cols (few rows,
    // k >= 4n, d >= 32); d longer than one chunk (in lanes with AVX2); a codebook of
    // several L2 groups for fewer row tasks than threads (split, then folded).
    let shapes = [
        (50, 3, 5),
        (1000, 16, 33),
        (1000, 64, 20),
        (300, 300, 17),
        (100, 100, 40),
        (100, 4100, 8),
        (130, 40, 2),
        (70, 300, 7),
        (40, 400, 40),
        (30, 20, 1500),
        (100, 16400, 16),
    ];
    let mut rng = vqkit::rng::Rng::new(11);
    for (ii, isa) in Isa::available().into_iter().enumerate() {
        for (ti, threads) in [1, 2].into_iter().enumerate() {
            let b = CpuBackend::with_isa(Some(threads), isa).unwrap();
            for (si, &(n, k, d)) in shapes.iter().enumerate() {
                let x = common::data(&mut rng, n * d);
                let c = common::data(&mut rng, k * d);
                assert!(vqkit::ops::assign(&b, &x, &c, d).is_ok());
                // The first and last value, one in the middle, and two rows at once (the
                // earlier one is named); each place with one of the three bad values in
                // turn, the turn shifted by the ISA and the thread count, so every shape
                // meets all three, and every place all three over three or more
                // (ISA, threads) pairs (the whole cross product tripled the test's time
                // under valgrind's memcheck in CI).
                let mid = rng.below(n) * d + rng.below(d);
                let places = [vec![0], vec![n * d - 1], vec![mid], vec![n * d - 1, mid]];
                for (pi, at) in places.into_iter().enumerate() {
                    let turn = si + pi + ti + ii;
                    let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][turn % 3];
                    let (xb, first) = poisoned(&x, &at, bad);
                    let got = vqkit::ops::assign(&b, &xb, &c, d);
                    assert!(
                        names_first(&got, "points", first),
                        "{isa:?} x{threads} {n}x{k}x{d}, {bad} at {at:?}: {got:?}"
                    );
                    let mut cb = c.clone();
                    cb[k * d / 2] = f32::NAN;
                    let got = vqkit::ops::assign(&b, &xb, &cb, d);
                    assert!(
                        matches!(got, Err(Error::NonFinite { what: "points", .. })),
                        "{isa:?} {n}x{k}x{d}, bad codebook too: {got:?}"
                    );
                    // A bad codebook alone, found from its norms
                    // (`Backend::flags_non_finite_codebook`), names its first bad value:
                    // the same places, in the codebook.
                    let at_c: Vec<usize> = at
                        .iter()
                        .map(|&i| {
                            if i == n * d - 1 {
                                k * d - 1
                            } else {
                                i % (k * d)
                            }
                        })
                        .collect();
                    let (cb, first) = poisoned(&c, &at_c, bad);
                    let got = vqkit::ops::assign(&b, &x, &cb, d);
                    assert!(
                        names_first(&got, "codebook", first),
                        "{isa:?} {n}x{k}x{d}, {bad} in the codebook: {got:?}"
                    );
                }
            }
        }
    }
}

/// `v` with `bad` written at every place of `at`, and the first of them.
fn poisoned(v: &[f32], at: &[usize], bad: f32) -> (Vec<f32>, usize) {
    let mut v = v.to_vec();
    for &i in at {
        v[i] = bad;
    }
    (v, *at.iter().min().unwrap())
}

/// Whether `got` is the non-finite error naming input `what` and index `first`.
fn names_first(got: &vqkit::Result<vqkit::ops::Assignment>, what: &str, first: usize) -> bool {
    matches!(got, Err(vqkit::Error::NonFinite { what: w, index, .. }) if *w == what && *index == first)
}

/// Finite codewords whose norms overflow pass the codebook check (their norms are not
/// finite, so the codebook is searched, and its values are): one such codeword is simply
/// never the nearest, and a codebook of them only gives distances that overflow, an
/// overflow error, on every instruction set.
#[test]
fn codewords_whose_norms_overflow_are_never_chosen_or_an_overflow_error() {
    use vqkit::Error;
    let d = 16;
    for isa in Isa::available() {
        let b = CpuBackend::with_isa(Some(2), isa).unwrap();
        let x: Vec<f32> = (0..40 * d).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut c: Vec<f32> = (0..300 * d).map(|i| (i % 5) as f32 * 0.1).collect();
        c[7 * d + 3] = 1e30;
        let got = vqkit::ops::assign(&b, &x, &c, d).unwrap();
        assert!(got.indices.iter().all(|&j| j != 7), "{isa:?}");
        assert!(got.distances.iter().all(|v| v.is_finite()), "{isa:?}");
        let huge = vec![1e30f32; 300 * d];
        let got = vqkit::ops::assign(&b, &x, &huge, d);
        assert!(
            matches!(got, Err(Error::Overflow { .. })),
            "{isa:?}: {got:?}"
        );
    }
}
