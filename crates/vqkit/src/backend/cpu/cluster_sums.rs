//! Deterministic per-code reductions on the CPU: k-means accumulation, centroid update and
//! the EMA codebook step.
//!
//! x: (n, d), idx: (n), dist: (n); sums: (k, d), counts: (k), dist_sums: (k).
//!
//! x is streamed once in row order and each row is added into its code's f64 accumulator,
//! so every code's sum takes its rows in row order: the order of every addition is fixed by
//! the data alone and outputs are bit-identical whatever the thread count. Parallel tasks
//! split the columns, not the rows: each owns a cache-line-aligned slice of d and streams
//! the rows, so no partial sums are merged and no atomics are needed. (Gathering each
//! code's rows instead visits x in random order, bound by memory latency rather than
//! bandwidth.) A large codebook is also split into ranges of codes whose accumulators fit
//! in L2; the rows are then bucketed by range first, in row order, and each task reads its
//! bucket only (see [`sums`]).

use rayon::prelude::*;

/// Columns per parallel task: whole 64-byte lines of f32.
const LINE: usize = 16;

/// `counts[j] = #{i : idx[i] = j}`; codes outside `0..k` are skipped.
pub(crate) fn counts(idx: &[u32], k: usize) -> Vec<u32> {
    let mut counts = vec![0u32; k];
    for &j in idx {
        if let Some(c) = counts.get_mut(j as usize) {
            *c += 1;
        }
    }
    counts
}

/// `sums[j] = sum_{idx[i] = j} x_i`, accumulated in f64 in row order.
///
/// Tasks are (code range, column slice) pairs. Column slices split d between threads. Code
/// ranges keep each task's f64 accumulators (`codes x width x 8` bytes) within four times
/// L2:
/// with one range every task streams all of x; with several, the rows are first bucketed
/// by range (a counting sort of row numbers, which keeps row order inside a bucket), and a
/// task reads only its bucket's rows. Either way each code takes its rows in row order.
pub(crate) fn sums(
    isa: super::Isa,
    parallel: bool,
    x: &[f32],
    idx: &[u32],
    k: usize,
    d: usize,
    sums: &mut [f32],
) {
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let width = d.div_ceil(threads.min(d.div_ceil(LINE))).div_ceil(LINE) * LINE;
    // Accumulators up to four times L2 are still mostly hit in L2 and L3 when streamed
    // over (k = 4096, d = 128: bucketing there cost twice the time); beyond that, ranges.
    let l2 = super::CacheSizes::detect().l2;
    let range = (4 * l2 / (width.min(d) * 8)).clamp(1, k.max(1));
    sums_in(isa, parallel, x, idx, (k, d), (width, range), sums)
}

/// [`sums`] with its column slices `width` wide and its code ranges `range` long (any
/// choice gives the same bits).
fn sums_in(
    isa: super::Isa,
    parallel: bool,
    x: &[f32],
    idx: &[u32],
    (k, d): (usize, usize),
    (width, range): (usize, usize),
    sums: &mut [f32],
) {
    let buckets = (range < k).then(|| bucket_rows(idx, range, k.div_ceil(range)));
    let mut tasks = Vec::new();
    for c0 in (0..k).step_by(range) {
        for t0 in (0..d).step_by(width) {
            tasks.push((c0, c0 + range.min(k - c0), t0, width.min(d - t0)));
        }
    }
    let task = |&(c0, c1, t0, w): &(usize, usize, usize, usize)| {
        let mut acc = vec![0.0f64; (c1 - c0) * w];
        let rows = buckets.as_ref().map(|(start, rows)| {
            let b = c0 / range;
            &rows[start[b]..start[b + 1]]
        });
        let job = Accumulate {
            x,
            idx,
            d,
            t0,
            w,
            c0,
            rows,
        };
        job.run(isa, &mut acc);
        acc
    };
    let parts: Vec<Vec<f64>> = if parallel && tasks.len() > 1 {
        tasks.par_iter().map(task).collect()
    } else {
        tasks.iter().map(task).collect()
    };
    for (&(c0, c1, t0, w), acc) in tasks.iter().zip(parts) {
        for (out, a) in sums[c0 * d..c1 * d]
            .chunks_exact_mut(d)
            .zip(acc.chunks_exact(w))
        {
            for (o, &v) in out[t0..t0 + w].iter_mut().zip(a) {
                *o = v as f32;
            }
        }
    }
}

/// Row numbers grouped by code range (`idx / range`), in row order within a group:
/// (start of each group plus an end, the rows). Codes outside `0..k` are dropped.
fn bucket_rows(idx: &[u32], range: usize, groups: usize) -> (Vec<usize>, Vec<u32>) {
    let mut start = vec![0usize; groups + 1];
    for &j in idx {
        let g = j as usize / range;
        if g < groups {
            start[g + 1] += 1;
        }
    }
    for g in 0..groups {
        start[g + 1] += start[g];
    }
    let mut next = start.clone();
    let mut rows = vec![0u32; start[groups]];
    for (i, &j) in idx.iter().enumerate() {
        let g = j as usize / range;
        if g < groups {
            rows[next[g]] = i as u32;
            next[g] += 1;
        }
    }
    (start, rows)
}

/// One task of [`sums`]: columns `t0..t0 + w` of the rows whose code is in `c0..c0 + codes`
/// (all rows, or the bucket `rows`), added into `acc` (codes x w, f64).
struct Accumulate<'a> {
    x: &'a [f32],
    idx: &'a [u32],
    d: usize,
    t0: usize,
    w: usize,
    c0: usize,
    rows: Option<&'a [u32]>,
}

impl Accumulate<'_> {
    fn run(&self, isa: super::Isa, acc: &mut [f64]) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: an `Isa` other than Portable exists only after runtime detection.
            super::Isa::Avx512 => unsafe { self.run_avx512(acc) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            super::Isa::Avx2 => unsafe { self.run_avx2(acc) },
            _ => self.body(acc),
        }
    }

    /// The loop compiled for AVX-512: 8 widening converts and adds per 64-byte line instead
    /// of SSE2's 4 of each per 16 bytes, so the core runs far enough ahead to keep memory busy.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(&self, acc: &mut [f64]) {
        self.body(acc)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, acc: &mut [f64]) {
        self.body(acc)
    }

    #[inline(always)]
    fn body(&self, acc: &mut [f64]) {
        let (d, t0, w) = (self.d, self.t0, self.w);
        let codes = acc.len() / w;
        let mut add = |i: usize| {
            // A code below c0 wraps to a huge j: skipped, as are codes past the range.
            let j = (self.idx[i] as usize).wrapping_sub(self.c0);
            if j < codes
                && let Some(row) = self.x.get(i * d + t0..i * d + t0 + w)
            {
                for (a, &v) in acc[j * w..(j + 1) * w].iter_mut().zip(row) {
                    *a += v as f64;
                }
            }
        };
        match self.rows {
            Some(rows) => rows.iter().for_each(|&i| add(i as usize)),
            None => (0..self.idx.len()).for_each(add),
        }
    }
}

/// `dist_sums[j] = sum_{idx[i] = j} dist[i]`, in f64, row order.
pub(crate) fn dist_sums(idx: &[u32], dist: &[f32], dist_sums: &mut [f32]) {
    let mut acc = vec![0.0f64; dist_sums.len()];
    for (&j, &v) in idx.iter().zip(dist) {
        if let Some(a) = acc.get_mut(j as usize) {
            *a += v as f64;
        }
    }
    for (o, a) in dist_sums.iter_mut().zip(acc) {
        *o = a as f32;
    }
}

/// `centroids[j] = sums[j] / counts[j]` where `counts[j] > 0`.
pub(crate) fn kmeans_update(sums: &[f32], counts: &[u32], d: usize, centroids: &mut [f32]) {
    for ((c, s), &m) in centroids.chunks_mut(d).zip(sums.chunks(d)).zip(counts) {
        if m > 0 {
            let inv = 1.0 / m as f64;
            for (c, &s) in c.iter_mut().zip(s) {
                *c = (s as f64 * inv) as f32;
            }
        }
    }
}

/// One code's share of the EMA step: (its running sum, its codeword), (its batch sum, its
/// smoothed size).
type CodeRow<'a> = ((&'a mut [f32], &'a mut [f32]), (&'a [f32], &'a f32));

/// The EMA step of [`crate::backend::EmaParams`] given this batch's counts and sums.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ema_apply(
    parallel: bool,
    decay: f32,
    eps: f32,
    counts: &[u32],
    batch_sums: &[f32],
    d: usize,
    cluster_size: &mut [f32],
    embed_sum: &mut [f32],
    codebook: &mut [f32],
) {
    let (decay, eps) = (decay as f64, eps as f64);
    let k = counts.len();
    for (s, &c) in cluster_size.iter_mut().zip(counts) {
        *s = (decay * *s as f64 + (1.0 - decay) * c as f64) as f32;
    }
    let total: f64 = cluster_size.iter().map(|&s| s as f64).sum();
    // One pass over each code's row: its running sum, then (if any code has weight) its
    // codeword. Rows are independent, so rows in parallel give the same bits.
    let row = |((e, c), (b, &s)): CodeRow| {
        for (e, &b) in e.iter_mut().zip(b) {
            *e = (decay * *e as f64 + (1.0 - decay) * b as f64) as f32;
        }
        if total > 0.0 {
            let smoothed = (s as f64 + eps) / (total + k as f64 * eps) * total;
            let inv = 1.0 / smoothed;
            for (c, &e) in c.iter_mut().zip(e.iter()) {
                *c = (e as f64 * inv) as f32;
            }
        }
    };
    if parallel && k * d >= 1 << 16 {
        embed_sum
            .par_chunks_mut(d)
            .zip(codebook.par_chunks_mut(d))
            .zip(batch_sums.par_chunks(d).zip(cluster_size.par_iter()))
            .for_each(row);
    } else {
        embed_sum
            .chunks_mut(d)
            .zip(codebook.chunks_mut(d))
            .zip(batch_sums.chunks(d).zip(cluster_size.iter()))
            .for_each(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Isa;
    use crate::rng::Rng;

    /// Every column width and code range, on every instruction set, in parallel or not,
    /// gives the bits of a plain f64 sum in row order; codes out of range are skipped.
    #[test]
    fn sums_match_row_order_f64_for_every_split() {
        let mut rng = Rng::new(3);
        for &(n, k, d) in &[(200, 7, 5), (300, 50, 40), (64, 130, 17)] {
            let x = rng.normal_vec(n * d);
            let mut idx: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
            idx[0] = k as u32 + 5; // out of range: skipped
            let mut want = vec![0.0f64; k * d];
            for (row, &j) in x.chunks_exact(d).zip(&idx) {
                if let Some(w) = want.get_mut(j as usize * d..(j as usize + 1) * d) {
                    w.iter_mut().zip(row).for_each(|(w, &v)| *w += v as f64);
                }
            }
            let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            for isa in Isa::available() {
                for width in [16, 32, d.div_ceil(16) * 16] {
                    for range in [1, 3, k.div_ceil(2), k] {
                        for parallel in [false, true] {
                            let mut got = vec![0.0f32; k * d];
                            sums_in(isa, parallel, &x, &idx, (k, d), (width, range), &mut got);
                            assert_eq!(got, want, "{isa:?} n={n} k={k} d={d} w={width} r={range}");
                        }
                    }
                }
            }
        }
    }
}
