//! Host linear algebra for the steps the backend trait has no kernel for: the full
//! inner-product tables that beam search ranks (the argmin kernel returns only the best
//! code, beam search needs the best B), and the small dense solves of least-squares
//! codebook updates.
//!
//! `dots` is a matrix product on the CPU backend's GEMM, the one home of vqkit's CPU matrix
//! kernels.

use crate::backend::cpu::gemm::{self, MatRef};

/// `out[i * k + j] = a_i . b_j` for `a` (m, d) and `b` (k, d), row-major: the product
/// `A B^T` on the CPU's GEMM ([`gemm::sgemm`], with B read through its transpose).
///
/// # Panics
/// If `out` does not hold `m * k` values: callers size it from the same shapes.
pub fn dots(a: &[f32], b: &[f32], d: usize, out: &mut [f32]) {
    if d == 0 {
        out.fill(0.0);
        return;
    }
    let (m, k) = (a.len() / d, b.len() / d);
    assert_eq!(out.len(), m * k, "dots: output of {m} x {k}");
    // The operands cover m x d and d x k by construction and the GEMM runs on the detected
    // instruction set, so it has no error to return.
    let done = gemm::sgemm(
        m,
        k,
        d,
        MatRef::row_major(a, d),
        MatRef::row_major(b, d).t(),
        out,
        k,
        false,
    );
    debug_assert!(done.is_ok(), "{done:?}");
}

/// Solves `(A + ridge I) X = R` for symmetric positive semi-definite `A` (p, p) and `R`
/// (p, q) by Cholesky in f64, in place of `R`. The ridge keeps codewords that no vector uses
/// (a zero row and column in `A`) at zero rather than making the system singular; it is
/// scaled by the mean diagonal so that it is small relative to the data. Returns false if the
/// factorisation fails even so (non-finite input).
pub fn solve_spd(a: &mut [f64], r: &mut [f64], p: usize, q: usize, ridge: f64) -> bool {
    let mean_diag = (0..p).map(|i| a[i * p + i]).sum::<f64>() / p.max(1) as f64;
    let lambda = ridge * mean_diag.max(1e-12);
    for i in 0..p {
        a[i * p + i] += lambda;
    }
    // Cholesky: A = L L^T, L stored in the lower triangle of `a`.
    for j in 0..p {
        let mut s = a[j * p + j];
        for t in 0..j {
            s -= a[j * p + t] * a[j * p + t];
        }
        if !(s > 0.0 && s.is_finite()) {
            return false;
        }
        let l = s.sqrt();
        a[j * p + j] = l;
        for i in j + 1..p {
            let mut s = a[i * p + j];
            for t in 0..j {
                s -= a[i * p + t] * a[j * p + t];
            }
            a[i * p + j] = s / l;
        }
    }
    // Forward then back substitution, one right-hand-side column block at a time (rows of R).
    for i in 0..p {
        for t in 0..i {
            let f = a[i * p + t];
            if f != 0.0 {
                for c in 0..q {
                    r[i * q + c] -= f * r[t * q + c];
                }
            }
        }
        let l = a[i * p + i];
        for c in 0..q {
            r[i * q + c] /= l;
        }
    }
    for i in (0..p).rev() {
        for t in i + 1..p {
            let f = a[t * p + i];
            if f != 0.0 {
                for c in 0..q {
                    r[i * q + c] -= f * r[t * q + c];
                }
            }
        }
        let l = a[i * p + i];
        for c in 0..q {
            r[i * q + c] /= l;
        }
    }
    true
}

/// The `b` smallest of `scores` (ties to the lower index), as `(score, index)` ascending.
pub fn smallest(scores: &[f32], b: usize, out: &mut Vec<(f32, u32)>) {
    out.clear();
    for (j, &s) in scores.iter().enumerate() {
        if out.len() < b {
            out.push((s, j as u32));
            let mut p = out.len() - 1;
            while p > 0 && out[p - 1].0 > s {
                out.swap(p, p - 1);
                p -= 1;
            }
        } else if b > 0 && s < out[b - 1].0 {
            out[b - 1] = (s, j as u32);
            let mut p = b - 1;
            while p > 0 && out[p - 1].0 > s {
                out.swap(p, p - 1);
                p -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn dots_match_f64_on_remainder_shapes() {
        let mut rng = Rng::new(1);
        for (m, k, d) in [(1, 1, 1), (5, 7, 17), (9, 3, 33), (33, 65, 40)] {
            let a = rng.normal_vec(m * d);
            let b = rng.normal_vec(k * d);
            let mut out = vec![f32::NAN; m * k];
            dots(&a, &b, d, &mut out);
            for i in 0..m {
                for j in 0..k {
                    let e: f64 = (0..d)
                        .map(|t| a[i * d + t] as f64 * b[j * d + t] as f64)
                        .sum();
                    assert!((out[i * k + j] as f64 - e).abs() < 1e-4 * (1.0 + e.abs()));
                }
            }
        }
    }

    #[test]
    fn solve_spd_solves() {
        // A = M^T M + I, X known.
        let p = 6;
        let q = 2;
        let mut rng = Rng::new(2);
        let m: Vec<f64> = (0..p * p).map(|_| rng.normal()).collect();
        let mut a = vec![0.0; p * p];
        for i in 0..p {
            for j in 0..p {
                a[i * p + j] = (0..p).map(|t| m[t * p + i] * m[t * p + j]).sum::<f64>()
                    + if i == j { 1.0 } else { 0.0 };
            }
        }
        let x: Vec<f64> = (0..p * q).map(|_| rng.normal()).collect();
        let mut r = vec![0.0; p * q];
        for i in 0..p {
            for c in 0..q {
                r[i * q + c] = (0..p).map(|t| a[i * p + t] * x[t * q + c]).sum();
            }
        }
        assert!(solve_spd(&mut a.clone(), &mut r, p, q, 0.0));
        for (u, v) in r.iter().zip(&x) {
            assert!((u - v).abs() < 1e-9);
        }
    }

    #[test]
    fn smallest_keeps_the_b_best_in_order() {
        let mut out = Vec::new();
        smallest(&[5.0, 1.0, 3.0, 1.0, 0.5, 9.0], 3, &mut out);
        assert_eq!(out, vec![(0.5, 4), (1.0, 1), (1.0, 3)]);
    }
}
