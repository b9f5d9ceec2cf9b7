//! The GEMM against the f64 reference on shapes that hit every remainder of every tile
//! (MR, NR, MC, KC, NC), with all four transpose combinations, overwrite and accumulate, on
//! every ISA this CPU has, serial and parallel. Outputs are poisoned before each run.

use vqkit::backend::cpu::Isa;
use vqkit::nn::gemm::{
    Dim, MatRef, Parallelism, TapMask, sgemm, sgemm_masked, sgemm_masked_with, sgemm_with,
};
use vqkit::nn::reference;
use vqkit::rng::Rng;

#[allow(clippy::too_many_arguments)] // one GEMM case: its ISA, parallelism, shape and flags
fn check(isa: Isa, par: Parallelism, m: usize, n: usize, k: usize, ta: bool, tb: bool, acc: bool) {
    let mut rng = Rng::new((m * 1_000_003 + n * 1009 + k) as u64);
    let a = rng.normal_vec(m * k);
    let b = rng.normal_vec(k * n);
    // Stored layouts: A as (m, k) or (k, m); B as (k, n) or (n, k).
    let am = MatRef::operand(&a, m, k, ta);
    let bm = MatRef::operand(&b, k, n, tb);
    let a64: Vec<f64> = (0..m * k)
        .map(|t| am.data[(t / k) * am.rs + (t % k) * am.cs] as f64)
        .collect();
    let b64: Vec<f64> = (0..k * n)
        .map(|t| bm.data[(t / n) * bm.rs + (t % n) * bm.cs] as f64)
        .collect();
    let want = reference::gemm(m, n, k, &a64, &b64);
    let ldc = n + 3; // a leading dimension wider than n: the gap must stay untouched
    let init = rng.normal_vec(m * ldc);
    let mut c = if acc {
        init.clone()
    } else {
        vec![f32::NAN; m * ldc]
    };
    sgemm_with(isa, par, m, n, k, am, bm, &mut c, ldc, acc).unwrap();
    for i in 0..m {
        for j in 0..ldc {
            let got = c[i * ldc + j];
            if j >= n {
                let before = if acc { init[i * ldc + j] } else { f32::NAN };
                assert!(
                    got.to_bits() == before.to_bits(),
                    "gap written at ({i},{j})"
                );
                continue;
            }
            let base = if acc { init[i * ldc + j] as f64 } else { 0.0 };
            let w = base + want[i * n + j];
            // f32 rounding of a k-term dot product of unit normals: ~ sqrt(k) * 2^-24 * |terms|.
            let tol = 1e-5 * (k as f64).sqrt().max(1.0) * 4.0 + 1e-6 * w.abs();
            assert!(
                (got as f64 - w).abs() <= tol,
                "{isa:?} {par:?} m={m} n={n} k={k} ta={ta} tb={tb} acc={acc} at ({i},{j}): {got} vs {w}"
            );
        }
    }
}

#[test]
fn gemm_matches_reference_on_remainders() {
    let dims = [1usize, 3, 17, 63, 65];
    for isa in Isa::available() {
        for &m in &dims {
            for &n in &dims {
                for &k in &[1usize, 17, 65] {
                    let (ta, tb, acc) = ((m + n) % 2 == 1, (n + k) % 2 == 0, (m + k) % 2 == 0);
                    check(isa, Parallelism::None, m, n, k, ta, tb, acc);
                }
            }
        }
    }
}

#[test]
fn gemm_large_blocks_all_transposes_parallel() {
    // m > MC, k > KC, n > NC: every block loop runs more than once and ends in a remainder.
    for isa in Isa::available() {
        check(isa, Parallelism::Rayon, 137, 3100, 270, false, false, true);
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            check(isa, Parallelism::Rayon, 129, 97, 263, ta, tb, ta);
        }
    }
}

#[test]
fn gemm_split_along_k() {
    // A small C over a long k (a weight gradient summed over the batch's pixels) is split
    // along k into parts summed in order: parts of unequal length, every transpose.
    for isa in Isa::available() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for par in [Parallelism::None, Parallelism::Rayon] {
                check(isa, par, 65, 17, 1100, ta, tb, ta != tb);
                check(isa, par, 9, 49, 3001, ta, tb, ta == tb);
            }
        }
    }
}

#[test]
fn gemm_result_does_not_depend_on_threads() {
    // The task grid and the split along k are functions of the shape: serial runs and
    // parallel runs on pools of 2, 3 and 4 threads (whatever this machine has) give the
    // same bits.
    let mut rng = Rng::new(3);
    for (m, n, k) in [(64, 16, 6272), (128, 1568, 300), (200, 100, 1500)] {
        let a = rng.normal_vec(m * k);
        let b = rng.normal_vec(k * n);
        let run = |par| {
            let mut c = vec![0.0f32; m * n];
            // B stored transposed, as in a weight gradient (dY . col^T).
            let (am, bm) = (MatRef::row_major(&a, k), MatRef::operand(&b, k, n, true));
            let isa = vqkit::nn::gemm::default_isa();
            sgemm_with(isa, par, m, n, k, am, bm, &mut c, n, false).unwrap();
            c
        };
        let serial = run(Parallelism::None);
        for threads in [2, 3, 4] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let parallel = pool.install(|| run(Parallelism::Rayon));
            assert!(
                serial
                    .iter()
                    .zip(&parallel)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{m}x{n}x{k}: serial and {threads}-thread results differ"
            );
        }
    }
}

#[test]
fn gemm_k_zero_and_bad_shapes() {
    let mut c = vec![5.0f32; 6];
    sgemm(
        2,
        3,
        0,
        MatRef::row_major(&[], 0),
        MatRef::row_major(&[], 3),
        &mut c,
        3,
        false,
    )
    .unwrap();
    assert_eq!(c, vec![0.0; 6]);
    let a = vec![1.0f32; 4];
    let b = vec![1.0f32; 5];
    let err = sgemm(
        2,
        3,
        2,
        MatRef::row_major(&a, 2),
        MatRef::row_major(&b, 3),
        &mut c,
        3,
        false,
    );
    assert!(err.is_err(), "B too short must be an error");
    let b = vec![1.0f32; 6];
    let mut small = vec![0.0f32; 5];
    assert!(
        sgemm(
            2,
            3,
            2,
            MatRef::row_major(&a, 2),
            MatRef::row_major(&b, 3),
            &mut small,
            3,
            false
        )
        .is_err()
    );
    assert!(
        sgemm(
            2,
            3,
            2,
            MatRef::row_major(&a, 2),
            MatRef::row_major(&b, 3),
            &mut c,
            2,
            false
        )
        .is_err()
    );
}

/// One masked product against the f64 reference. Where B carries both taps and pixels, its
/// entries at invalid pairs are zero (the promise a mask makes) and C is compared in full;
/// where C carries both (taps on M), only its entries at valid pairs are compared.
#[allow(clippy::too_many_arguments)] // one case: ISA, parallelism, placement, shape, flags
fn check_masked(
    isa: Isa,
    par: Parallelism,
    (taps, pixels): (Dim, Dim),
    (channels, images): (usize, usize),
    (m, n, k): (usize, usize, usize),
    tb: bool,
    acc: bool,
    density: f64,
) {
    let mut rng = Rng::new((m * 7919 + n * 31 + k) as u64 ^ (channels * 131 + images) as u64);
    let size = |d: Dim| match d {
        Dim::M => m,
        Dim::N => n,
        Dim::K => k,
    };
    let ntaps = size(taps).div_ceil(channels);
    let npix = size(pixels).div_ceil(images);
    let valid: Vec<u64> = (0..npix)
        .map(|_| (0..ntaps).fold(0, |v, t| v | ((rng.uniform() < density) as u64) << t))
        .collect();
    let live = |i: usize, j: usize, p: usize| {
        let at = |d: Dim| match d {
            Dim::M => i,
            Dim::N => j,
            Dim::K => p,
        };
        valid[at(pixels) / images] >> (at(taps) / channels) & 1 == 1
    };
    let a = rng.normal_vec(m * k);
    let mut b = rng.normal_vec(k * n);
    // B stored as (k, n), or as (n, k) when transposed.
    let at = |p: usize, j: usize| if tb { j * k + p } else { p * n + j };
    if taps != Dim::M {
        // B carries both taps and pixels: the products the mask rules out are zero there,
        // as a column matrix is zero where a tap reads padding.
        for p in 0..k {
            for j in 0..n {
                if !live(0, j, p) {
                    b[at(p, j)] = 0.0;
                }
            }
        }
    }
    let (am, bm) = (MatRef::row_major(&a, k), MatRef::operand(&b, k, n, tb));
    let a64: Vec<f64> = a.iter().map(|&v| v as f64).collect();
    let b64: Vec<f64> = (0..k * n).map(|t| b[at(t / n, t % n)] as f64).collect();
    let want = reference::gemm(m, n, k, &a64, &b64);
    let init = rng.normal_vec(m * n);
    let mut c = if acc {
        init.clone()
    } else {
        vec![f32::NAN; m * n]
    };
    let mask = TapMask::new(taps, channels, pixels, images, &valid).unwrap();
    sgemm_masked_with(isa, par, m, n, k, am, bm, &mut c, n, acc, Some(&mask)).unwrap();
    for i in 0..m {
        for j in 0..n {
            if taps == Dim::M && !live(i, j, 0) {
                continue;
            }
            let w = if acc { init[i * n + j] as f64 } else { 0.0 } + want[i * n + j];
            let got = c[i * n + j] as f64;
            let tol = 4e-5 * (k as f64).sqrt().max(1.0) + 1e-6 * w.abs();
            assert!(
                (got - w).abs() <= tol,
                "{isa:?} {par:?} taps {taps:?} x{channels} pixels {pixels:?} x{images} \
                 {m}x{n}x{k} tb={tb} acc={acc} density {density} at ({i},{j}): {got} vs {w}"
            );
        }
    }
}

#[test]
fn masked_gemm_skips_only_zero_products() {
    // The three placements of a convolution GEMM, channel and image counts that do and do
    // not divide MR, NR and KC, masks from empty to full (an all-invalid column panel must
    // come out zero, or untouched when accumulating), a long k that is split into parts.
    let placements = [(Dim::K, Dim::N), (Dim::N, Dim::K), (Dim::M, Dim::N)];
    for isa in Isa::available() {
        for (pi, &(taps, pixels)) in placements.iter().enumerate() {
            for (ci, &(channels, images)) in [(1, 1), (3, 5), (32, 32), (64, 7), (48, 16)]
                .iter()
                .enumerate()
            {
                for (di, &density) in [0.0, 0.3, 0.8, 1.0].iter().enumerate() {
                    let ntaps = [9, 16, 4, 25][(pi + ci + di) % 4];
                    let tap_len = ntaps * channels;
                    let pix_len = [49, 7, 30][(ci + di) % 3] * images;
                    let other = [17, 130, 8][(pi + di) % 3];
                    let (m, n, k) = match (taps, pixels) {
                        (Dim::K, Dim::N) => (other, pix_len, tap_len),
                        (Dim::N, Dim::K) => (other, tap_len, pix_len),
                        _ => (tap_len, pix_len, other),
                    };
                    let (tb, acc) = ((ci + di) % 2 == 1, (pi + ci + di) % 2 == 0);
                    for par in [Parallelism::None, Parallelism::Rayon] {
                        check_masked(
                            isa,
                            par,
                            (taps, pixels),
                            (channels, images),
                            (m, n, k),
                            tb,
                            acc,
                            density,
                        );
                    }
                }
            }
        }
        // Split along k: a small C over a long masked k.
        for par in [Parallelism::None, Parallelism::Rayon] {
            check_masked(
                isa,
                par,
                (Dim::N, Dim::K),
                (16, 32),
                (64, 16, 6272),
                true,
                false,
                0.7,
            );
            check_masked(
                isa,
                par,
                (Dim::K, Dim::N),
                (70, 1),
                (9, 20, 4480),
                false,
                true,
                0.5,
            );
        }
    }
}

#[test]
fn bad_masks_are_typed_errors() {
    let valid = [u64::MAX; 4];
    assert!(TapMask::new(Dim::K, 1, Dim::K, 1, &valid).is_err());
    assert!(TapMask::new(Dim::M, 1, Dim::K, 1, &valid).is_err());
    assert!(TapMask::new(Dim::K, 0, Dim::N, 1, &valid).is_err());
    let (a, b) = (vec![0.0f32; 8 * 65], vec![0.0f32; 65 * 8]);
    let mut c = vec![0.0f32; 64];
    let (am, bm) = (MatRef::row_major(&a, 65), MatRef::row_major(&b, 8));
    // 65 taps of one channel do not fit 64 bits; 8 pixels of one image need 8 entries.
    let too_many = TapMask::new(Dim::K, 1, Dim::N, 2, &valid).unwrap();
    assert!(sgemm_masked(8, 8, 65, am, bm, &mut c, 8, false, Some(&too_many)).is_err());
    let short = TapMask::new(Dim::K, 5, Dim::N, 1, &valid).unwrap();
    assert!(sgemm_masked(8, 8, 65, am, bm, &mut c, 8, false, Some(&short)).is_err());
}

#[test]
fn split_products_leave_dead_tiles_untouched() {
    // The split-k partial sums live in a buffer each thread keeps between products. With
    // the taps on M a part leaves the tiles its mask rules out unwritten, so an all-dead
    // product accumulated into C must change nothing, even right after a product (on the
    // same thread: no parallelism) that left other sums in that buffer.
    let (m, n, k) = (8, 40, 1100);
    let mut rng = Rng::new(17);
    let a = rng.normal_vec(m * k);
    let b = rng.normal_vec(k * n);
    let (am, bm) = (MatRef::row_major(&a, k), MatRef::row_major(&b, n));
    let dead = vec![0u64; n / 4];
    let mask = TapMask::new(Dim::M, 2, Dim::N, 4, &dead).unwrap();
    for isa in Isa::available() {
        let mut c = vec![0.0; m * n];
        sgemm_with(isa, Parallelism::None, m, n, k, am, bm, &mut c, n, false).unwrap();
        assert!(c.iter().all(|v| v.is_finite()) && c.iter().any(|&v| v != 0.0));
        let init = rng.normal_vec(m * n);
        let mut c = init.clone();
        sgemm_masked_with(
            isa,
            Parallelism::None,
            m,
            n,
            k,
            am,
            bm,
            &mut c,
            n,
            true,
            Some(&mask),
        )
        .unwrap();
        assert_eq!(c, init, "{isa:?}");
    }
}
