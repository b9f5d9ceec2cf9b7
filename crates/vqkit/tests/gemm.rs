//! The GEMM against the f64 reference on shapes that hit every remainder of every tile
//! (MR, NR, MC, KC, NC), with all four transpose combinations, overwrite and accumulate, on
//! every ISA this CPU has, serial and parallel. Outputs are poisoned before each run.

use vqkit::backend::cpu::Isa;
use vqkit::backend::cpu::gemm::{MatRef, Parallelism, sgemm, sgemm_with};
use vqkit::reference;
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
            let isa = vqkit::backend::cpu::gemm::default_isa();
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
