//! Host linear algebra for the steps the backend trait has no kernel for: the full
//! inner-product tables that beam search ranks (the argmin kernel returns only the best
//! code, beam search needs the best B), and the small dense solves of least-squares
//! codebook updates.
//!
//! `dots` is a register-tiled 4 x 4 inner-product kernel in plain Rust, compiled three
//! times (AVX-512F, AVX2 + FMA, portable) and chosen at run time, so that the compiler can
//! vectorise it for the CPU it runs on; rayon splits rows above a work threshold.

// The tile loops index `acc[r][c][l]`: the index form states the 4 x 4 x LANES structure.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;

const LANES: usize = 16;
const MR: usize = 4;
const NR: usize = 4;

/// `out[i * k + j] = a_i . b_j` for `a` (m, d) and `b` (k, d), row-major.
pub fn dots(a: &[f32], b: &[f32], d: usize, out: &mut [f32]) {
    if d == 0 {
        out.fill(0.0);
        return;
    }
    let m = a.len() / d;
    let k = b.len() / d;
    debug_assert_eq!(out.len(), m * k);
    let rows_per_task = MR * 8;
    let work = m * k * d;
    let body = |(blk, o): (usize, &mut [f32])| {
        let r0 = blk * rows_per_task;
        let r1 = (r0 + rows_per_task).min(m);
        dots_rows(&a[r0 * d..r1 * d], b, d, k, o);
    };
    if work >= 1 << 20 {
        out.par_chunks_mut(rows_per_task * k)
            .enumerate()
            .for_each(body);
    } else {
        out.chunks_mut(rows_per_task * k).enumerate().for_each(body);
    }
}

fn dots_rows(a: &[f32], b: &[f32], d: usize, k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { dots_avx512(a, b, d, k, out) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { dots_avx2(a, b, d, k, out) };
        }
    }
    dots_generic::<false>(a, b, d, k, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn dots_avx512(a: &[f32], b: &[f32], d: usize, k: usize, out: &mut [f32]) {
    dots_generic::<true>(a, b, d, k, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(a: &[f32], b: &[f32], d: usize, k: usize, out: &mut [f32]) {
    dots_generic::<true>(a, b, d, k, out)
}

/// `FMA`: use fused multiply-add (only where the target feature makes it an instruction;
/// elsewhere `mul_add` would be a slow library call).
#[inline(always)]
fn dots_generic<const FMA: bool>(a: &[f32], b: &[f32], d: usize, k: usize, out: &mut [f32]) {
    let m = a.len() / d;
    let full = d / LANES * LANES;
    let mut i = 0;
    while i < m {
        let mr = MR.min(m - i);
        let mut j = 0;
        while j < k {
            let nr = NR.min(k - j);
            let ar: [&[f32]; MR] =
                std::array::from_fn(|r| &a[(i + r.min(mr - 1)) * d..(i + r.min(mr - 1) + 1) * d]);
            let br: [&[f32]; NR] =
                std::array::from_fn(|c| &b[(j + c.min(nr - 1)) * d..(j + c.min(nr - 1) + 1) * d]);
            let mut acc = [[[0.0f32; LANES]; NR]; MR];
            let mut t = 0;
            while t < full {
                for r in 0..MR {
                    let av = &ar[r][t..t + LANES];
                    for c in 0..NR {
                        let bv = &br[c][t..t + LANES];
                        for l in 0..LANES {
                            acc[r][c][l] = if FMA {
                                av[l].mul_add(bv[l], acc[r][c][l])
                            } else {
                                acc[r][c][l] + av[l] * bv[l]
                            };
                        }
                    }
                }
                t += LANES;
            }
            for r in 0..mr {
                for c in 0..nr {
                    let mut s: f32 = acc[r][c].iter().sum();
                    for u in full..d {
                        s += ar[r][u] * br[c][u];
                    }
                    out[(i + r) * k + j + c] = s;
                }
            }
            j += NR;
        }
        i += MR;
    }
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
