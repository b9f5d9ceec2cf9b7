//! k-means++ on host memory, with the triangle inequality pruning its distance updates.
//!
//! k-means++ draws each new centre `c` with probability proportional to `D(x)^2`, the
//! squared distance of `x` to its nearest centre so far, then lowers `D` where `c` is
//! nearer. Done plainly that is `k` sequential passes over all n x d floats: cheap in
//! multiply-adds (one Lloyd iteration's worth on the seeding sample) but memory-bound,
//! since the sample does not fit in cache, and it cost vqkit's k-means about half as much
//! as its 20 Lloyd iterations.
//!
//! Most of those passes change nothing. Each point remembers its centre `a(x)`. If
//! `|c - c_a(x)| >= 2 D(x)`, then `|x - c| >= |c - c_a(x)| - |x - c_a(x)| >= D(x)`: the new
//! centre cannot take `x`, and its row is never read. So a step computes `|c - c_j|^2` for
//! the centres so far (j x d floats, from cache), then tests each point against its own
//! centre's entry with two numbers it already holds, and reads only the rows that pass;
//! as centres accumulate, `D` shrinks and a step reads a small fraction of the data. (A
//! test per cluster, against its largest `D`, skips far less in high dimensions, where one
//! far point keeps a whole cluster in play.)
//!
//! The draws are those of plain k-means++ (the same random numbers, the same walk over
//! `D^2` in f64), and the pruning is exact in real arithmetic; a 0.1% margin on the test
//! keeps f32 round-off from skipping a point whose distance ties within rounding.
//! Distances are `sum (x_t - c_t)^2` in f32 over 16 lanes, the same whatever the thread
//! count, and the points are scanned in fixed blocks, so the seeding is reproducible.

use crate::backend::Backend;
use crate::backend::cpu::Isa;
use crate::error::{Error, Result};
use crate::rng::Rng;
use rayon::prelude::*;

/// Points per parallel block of a scan (fixed: the blocks, not the threads, set the order).
const BLOCK: usize = 1024;

/// k-means++ seeding of `k` centres from the `n = x.len() / d` points of `x`, pruned as the
/// module docs say. Each step's scan runs in the backend's threads
/// ([`Backend::run_on_host`]); the steps themselves, and their interruption checks, run on
/// the calling thread, where [`crate::interrupt`]'s hook lives.
pub(crate) fn kmeans_pp_pruned<B: Backend>(
    b: &B,
    x: &[f32],
    d: usize,
    k: usize,
    rng: &mut Rng,
) -> Result<Vec<f32>> {
    let n = x.len() / d;
    let isa = Isa::detect();
    let mut centroids: Vec<f32> = Vec::with_capacity(k * d);
    let mut dmin = vec![f32::INFINITY; n];
    let mut owner = vec![0u32; n];
    // |c - c_j|^2 of the new centre to each centre so far.
    let mut between: Vec<f32> = Vec::with_capacity(k);
    let mut pick = rng.below(n);
    for c in 0..k {
        if c % 64 == 0 {
            crate::interrupt::check()?;
        }
        let centre = x[pick * d..(pick + 1) * d].to_vec();
        between.clear();
        between.extend(
            centroids
                .chunks_exact(d)
                .map(|cj| distance(isa, &centre, cj)),
        );
        // The first step has no centre yet: every point (owner 0, the new code) is read.
        between.push(f32::INFINITY);
        centroids.extend_from_slice(&centre);
        if c + 1 == k {
            break;
        }
        let scan = Scan {
            x,
            d,
            centre: &centre,
            code: c as u32,
            between: &between,
            first: c == 0,
            isa,
        };
        let (dm, ow) = (&mut dmin, &mut owner);
        let run = |parallel: bool| {
            if parallel && n > BLOCK {
                dm.par_chunks_mut(BLOCK)
                    .zip(ow.par_chunks_mut(BLOCK))
                    .enumerate()
                    .for_each(|(i, (dm, ow))| scan.block(i * BLOCK, dm, ow));
            } else {
                dm.chunks_mut(BLOCK)
                    .zip(ow.chunks_mut(BLOCK))
                    .enumerate()
                    .for_each(|(i, (dm, ow))| scan.block(i * BLOCK, dm, ow));
            }
        };
        if b.run_on_host(n * d, run).is_none() {
            return Err(Error::BackendUnavailable {
                backend: "cpu",
                reason: "the pruned seeding needs a backend whose memory is the host's".into(),
            });
        }
        let total: f64 = dmin.iter().map(|&m| m as f64).sum();
        if !total.is_finite() {
            return Err(Error::Overflow { row: 0 });
        }
        pick = if total > 0.0 {
            draw(&dmin, total, rng)
        } else {
            rng.below(n)
        };
    }
    Ok(centroids)
}

/// The point at which the running sum of `dmin` first exceeds a uniform fraction of
/// `total` (a point with `D = 0` is never drawn).
pub(crate) fn draw(dmin: &[f32], total: f64, rng: &mut Rng) -> usize {
    let n = dmin.len();
    let target = rng.uniform() * total;
    let mut acc = 0.0f64;
    let mut chosen = n - 1;
    for (i, &m) in dmin.iter().enumerate() {
        acc += m as f64;
        if acc > target && m > 0.0 {
            chosen = i;
            break;
        }
    }
    // Round-off can leave the walk at the end on a point with D = 0: take the last point
    // with positive D instead, which always exists when total > 0.
    if dmin[chosen] <= 0.0 {
        chosen = dmin.iter().rposition(|&m| m > 0.0).unwrap_or(chosen);
    }
    chosen
}

/// One step's update of `D^2` and the owners, reading only the rows the test leaves.
struct Scan<'a> {
    x: &'a [f32],
    d: usize,
    centre: &'a [f32],
    code: u32,
    /// `|c - c_j|^2` per centre so far.
    between: &'a [f32],
    /// The first centre: no test, every row is read.
    first: bool,
    isa: Isa,
}

impl Scan<'_> {
    fn block(&self, first: usize, dmin: &mut [f32], owner: &mut [u32]) {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the crate passes only an `Isa` the CPU supports (a backend's or
            // `Isa::detect`'s).
            Isa::Avx512 => unsafe { self.block_avx512(first, dmin, owner) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { self.block_avx2(first, dmin, owner) },
            _ => self.body(first, dmin, owner),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn block_avx512(&self, first: usize, dmin: &mut [f32], owner: &mut [u32]) {
        // SAFETY: this function's own target features are those `x86::sq_dist_avx512` needs.
        self.body_with(first, dmin, owner, |a, b| unsafe {
            x86::sq_dist_avx512(a, b)
        })
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2(&self, first: usize, dmin: &mut [f32], owner: &mut [u32]) {
        // SAFETY: this function's own target features are those `x86::sq_dist_avx2` needs.
        self.body_with(first, dmin, owner, |a, b| unsafe {
            x86::sq_dist_avx2(a, b)
        })
    }

    #[inline(always)]
    fn body(&self, first: usize, dmin: &mut [f32], owner: &mut [u32]) {
        self.body_with(first, dmin, owner, sq_dist)
    }

    #[inline(always)]
    fn body_with(
        &self,
        first: usize,
        dmin: &mut [f32],
        owner: &mut [u32],
        sq_dist: impl Fn(&[f32], &[f32]) -> f32,
    ) {
        let d = self.d;
        for (i, (m, o)) in dmin.iter_mut().zip(owner.iter_mut()).enumerate() {
            // |c - c_a|^2 >= 4 D^2 (with a 0.1% margin for f32 round-off): c cannot win.
            if !self.first && self.between[*o as usize] >= 4.004 * *m {
                continue;
            }
            let row = &self.x[(first + i) * d..(first + i + 1) * d];
            let v = sq_dist(row, self.centre);
            if v < *m {
                *m = v;
                *o = self.code;
            }
        }
    }
}

/// `|a - b|^2` through the widest instruction set available.
fn distance(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the crate passes only an `Isa` the CPU supports (a backend's or
        // `Isa::detect`'s).
        Isa::Avx512 => unsafe { distance_avx512(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { distance_avx2(a, b) },
        _ => sq_dist(a, b),
    }
}

#[cfg(target_arch = "x86_64")]
use x86::{sq_dist_avx2 as distance_avx2, sq_dist_avx512 as distance_avx512};

/// `sum (a_t - b_t)^2` with explicit vectors: the compiler splits the 16-lane loop of
/// [`sq_dist`] into 128-bit pieces. Both keep 16 partial sums, lane `l` taking the terms
/// `t = l mod 16`, and fold them in the same order, so they give the same bits as
/// [`sq_dist`] would with a fused multiply-add (the portable loop rounds the product).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sq_dist_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = _mm512_setzero_ps();
        let mut t = 0;
        while t + 16 <= n {
            // SAFETY: t + 16 <= n, the length of both slices.
            let (p, q) = unsafe {
                (
                    _mm512_loadu_ps(a.as_ptr().add(t)),
                    _mm512_loadu_ps(b.as_ptr().add(t)),
                )
            };
            let v = _mm512_sub_ps(p, q);
            acc = _mm512_fmadd_ps(v, v, acc);
            t += 16;
        }
        if t < n {
            let m: __mmask16 = (1u32 << (n - t)) as u16 - 1;
            // SAFETY: masked loads read only the n - t elements left.
            let (p, q) = unsafe {
                (
                    _mm512_maskz_loadu_ps(m, a.as_ptr().add(t)),
                    _mm512_maskz_loadu_ps(m, b.as_ptr().add(t)),
                )
            };
            let v = _mm512_sub_ps(p, q);
            acc = _mm512_fmadd_ps(v, v, acc);
        }
        let mut lanes = [0.0f32; 16];
        // SAFETY: lanes holds 16 floats.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
        lanes.iter().sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn sq_dist_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut t = 0;
        while t + 16 <= n {
            // SAFETY: t + 16 <= n, the length of both slices.
            let (p0, q0, p1, q1) = unsafe {
                (
                    _mm256_loadu_ps(a.as_ptr().add(t)),
                    _mm256_loadu_ps(b.as_ptr().add(t)),
                    _mm256_loadu_ps(a.as_ptr().add(t + 8)),
                    _mm256_loadu_ps(b.as_ptr().add(t + 8)),
                )
            };
            let (v0, v1) = (_mm256_sub_ps(p0, q0), _mm256_sub_ps(p1, q1));
            lo = _mm256_fmadd_ps(v0, v0, lo);
            hi = _mm256_fmadd_ps(v1, v1, hi);
            t += 16;
        }
        let mut lanes = [0.0f32; 16];
        // SAFETY: lanes holds 16 floats.
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi);
        }
        for (l, (&p, &q)) in a[t..n].iter().zip(&b[t..n]).enumerate() {
            let v = p - q;
            lanes[l] = v.mul_add(v, lanes[l]);
        }
        lanes.iter().sum()
    }
}

/// `sum (a_t - b_t)^2` in f32 with 16 independent partial sums: the order of additions is
/// fixed by d alone.
#[inline(always)]
fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (p, q) in ca.zip(cb) {
        for l in 0..16 {
            let t = p[l] - q[l];
            acc[l] += t * t;
        }
    }
    for (l, (&p, &q)) in ra.iter().zip(rb).enumerate() {
        let t = p - q;
        acc[l] += t * t;
    }
    acc.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::clustered;

    /// Plain k-means++ with the same distance and the same draws, for comparison.
    fn plain(x: &[f32], d: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
        let n = x.len() / d;
        let mut dmin = vec![f32::INFINITY; n];
        let mut out = Vec::new();
        let mut pick = rng.below(n);
        for c in 0..k {
            let centre = x[pick * d..(pick + 1) * d].to_vec();
            out.extend_from_slice(&centre);
            if c + 1 == k {
                break;
            }
            let mut total = 0.0f64;
            for (i, m) in dmin.iter_mut().enumerate() {
                *m = m.min(distance(Isa::detect(), &x[i * d..(i + 1) * d], &centre));
                total += *m as f64;
            }
            pick = if total > 0.0 {
                draw(&dmin, total, rng)
            } else {
                rng.below(n)
            };
        }
        out
    }

    /// On clustered data (where pruning skips most rows) and on data with duplicate points
    /// (D = 0 everywhere at the end), the pruned seeding draws exactly the centres plain
    /// k-means++ draws, in parallel or not.
    #[test]
    fn pruning_draws_the_centres_of_plain_kmeans_pp() {
        for &(n, d, k, clusters) in &[(3000, 7, 40, 10), (2500, 33, 64, 64), (500, 16, 30, 5)] {
            let mut x = clustered(n, d, clusters, 0.2, n as u64);
            if n == 500 {
                // Only 5 distinct points: later centres are drawn uniformly.
                for i in 5..n {
                    let src = x[(i % 5) * d..(i % 5 + 1) * d].to_vec();
                    x[i * d..(i + 1) * d].copy_from_slice(&src);
                }
            }
            let want = plain(&x, d, k, &mut Rng::new(9));
            for threads in [1, 3] {
                let b = crate::backend::cpu::CpuBackend::new(Some(threads)).unwrap();
                let got = kmeans_pp_pruned(&b, &x, d, k, &mut Rng::new(9)).unwrap();
                assert_eq!(got, want, "n={n} d={d} k={k} threads={threads}");
            }
        }
    }
}
