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
pub(crate) fn sums(
    isa: super::Isa,
    parallel: bool,
    x: &[f32],
    idx: &[u32],
    k: usize,
    d: usize,
    sums: &mut [f32],
) {
    sums_in(isa, parallel, x, idx, (k, d), split(parallel, k, d), sums)
}

/// [`sums`] with its column slices `width` wide and its code ranges `range` long (any
/// choice gives the same bits).
fn sums_in(
    isa: super::Isa,
    parallel: bool,
    x: &[f32],
    idx: &[u32],
    (k, d): (usize, usize),
    split: (usize, usize),
    sums: &mut [f32],
) {
    assert_eq!(sums.len(), k * d, "sums: k x d");
    let out = Out(sums.as_mut_ptr());
    reduce(isa, parallel, x, idx, (k, d), split, &|b, acc| {
        for (j, a) in (b.c0..b.c1).zip(acc.chunks_exact(b.w)) {
            // SAFETY: see `Out`; (j, t0..t0 + w) lies inside the k x d `sums`.
            let o = unsafe { out.row(j * d + b.t0, b.w) };
            for (o, &v) in o.iter_mut().zip(a) {
                *o = v as f32;
            }
        }
    });
}

/// The tasks' split of a reduction: (column slice width, code range length).
///
/// Column slices split d between threads. Code ranges keep each task's f64 accumulators
/// (`codes x width x 8` bytes) within four times L2: with one range every task streams all
/// of x; with several, the rows are first bucketed by range (a counting sort of row
/// numbers, which keeps row order inside a bucket), and a task reads only its bucket's
/// rows. Either way each code takes its rows in row order.
fn split(parallel: bool, k: usize, d: usize) -> (usize, usize) {
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
    (width, range)
}

/// One task's block of the k x d result: codes `c0..c1`, columns `t0..t0 + w`.
#[derive(Clone, Copy, Debug)]
struct Block {
    c0: usize,
    c1: usize,
    t0: usize,
    w: usize,
}

/// An output's base pointer, shared by the tasks of one reduction; each writes only its own
/// [`Block`], and the blocks of a reduction are disjoint.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint blocks (distinct code ranges or column slices), and the
// caller's `&mut [f32]` is held for the whole reduction.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The `len` floats from `at`.
    ///
    /// # Safety
    /// `at + len` is within the output, and no other live reference overlaps the range.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, at: usize, len: usize) -> &mut [f32] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}

thread_local! {
    /// Each thread's f64 accumulators, kept between tasks and calls: fresh ones (megabytes
    /// at k = 4096, d = 128) would be faulted in and cleared page by page on every call.
    static ACC: std::cell::Cell<Vec<f64>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Accumulators above this size are freed after use rather than kept by the thread.
const ACC_KEEP_BYTES: usize = 16 << 20;

/// The per-code sums of x in f64, row order, split into `(width, range)` tasks (any split
/// gives the same bits); each task hands its finished block's accumulators (codes x w) to
/// `finish`, which writes its block of the outputs.
fn reduce(
    isa: super::Isa,
    parallel: bool,
    x: &[f32],
    idx: &[u32],
    (k, d): (usize, usize),
    (width, range): (usize, usize),
    finish: &(dyn Fn(Block, &[f64]) + Sync),
) {
    let buckets = (range < k).then(|| bucket_rows(idx, range, k.div_ceil(range)));
    let mut tasks = Vec::new();
    for c0 in (0..k).step_by(range) {
        for t0 in (0..d).step_by(width) {
            let (c1, w) = (c0 + range.min(k - c0), width.min(d - t0));
            tasks.push(Block { c0, c1, t0, w });
        }
    }
    let task = |&b: &Block| {
        let mut acc = ACC.take();
        acc.clear();
        acc.resize((b.c1 - b.c0) * b.w, 0.0);
        let rows = buckets.as_ref().map(|(start, rows)| {
            let g = b.c0 / range;
            &rows[start[g]..start[g + 1]]
        });
        let job = Accumulate {
            x,
            idx,
            d,
            t0: b.t0,
            w: b.w,
            c0: b.c0,
            rows,
        };
        job.run(isa, &mut acc);
        finish(b, &acc);
        if acc.capacity() * 8 <= ACC_KEEP_BYTES {
            ACC.set(acc);
        }
    };
    if parallel && tasks.len() > 1 {
        tasks.par_iter().for_each(task);
    } else {
        tasks.iter().for_each(task);
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

/// Rows ahead of the one being added whose slice of x is prefetched into L2. A task reads
/// only its slice of each row (a few lines, then a stride), or, from a bucket, rows in
/// scattered order: patterns the hardware prefetchers follow late or not at all. At
/// n = 100,000, 2 threads (`vqkit bench --op ema`, 5 alternating runs, medians), d = 128
/// and k = 256, 1024, 4096 went from 6.4, 6.7, 6.0 ms to 4.5, 4.9, 5.1 ms, and d = 512,
/// k = 1024 from 29.7 to 21.9 ms.
const AHEAD_ROWS: usize = 8;

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
        // The slice of the row AHEAD_ROWS rows on is prefetched: see [`AHEAD_ROWS`].
        let prefetch = |i: usize| {
            if let Some(ahead) = self.x.get(i * d + t0..i * d + t0 + w) {
                super::distance_argmin::prefetch_l2(ahead);
            }
        };
        match self.rows {
            Some(rows) => {
                for (p, &i) in rows.iter().enumerate() {
                    if let Some(&ahead) = rows.get(p + AHEAD_ROWS) {
                        prefetch(ahead as usize);
                    }
                    add(i as usize);
                }
            }
            None => {
                for i in 0..self.idx.len() {
                    prefetch(i + AHEAD_ROWS);
                    add(i);
                }
            }
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

/// The EMA step of [`crate::backend::EmaParams`] on the batch `x` with codes `idx`: the
/// smoothed sizes, then each code's running sum and codeword from its batch sum.
///
/// The batch sums are never stored: each task of the reduction applies the step to its own
/// block of `embed_sum` and `codebook` as soon as its accumulators are complete (rounding
/// them to f32 first, as a stored batch sum would be), so the step is one pass over x and
/// one over the k x d state, with no k x d buffer allocated per call.
pub(crate) fn ema(
    isa: super::Isa,
    parallel: bool,
    params: (f32, f32),
    x: &[f32],
    idx: &[u32],
    (k, d): (usize, usize),
    state: EmaState,
) {
    let split = split(parallel, k, d);
    ema_in(isa, parallel, params, x, idx, (k, d), split, state)
}

/// The EMA state's three buffers: smoothed sizes (k), running sums and codebook (k x d).
pub(crate) type EmaState<'a> = (&'a mut [f32], &'a mut [f32], &'a mut [f32]);

/// [`ema`] with the reduction split into `split` tasks (any split gives the same bits).
#[allow(clippy::too_many_arguments)]
fn ema_in(
    isa: super::Isa,
    parallel: bool,
    (decay, eps): (f32, f32),
    x: &[f32],
    idx: &[u32],
    (k, d): (usize, usize),
    split: (usize, usize),
    (cluster_size, embed_sum, codebook): EmaState,
) {
    assert!(
        cluster_size.len() == k && embed_sum.len() == k * d && codebook.len() == k * d,
        "EMA state: k, k x d, k x d"
    );
    let (decay, eps) = (decay as f64, eps as f64);
    for (s, &c) in cluster_size.iter_mut().zip(&counts(idx, k)) {
        *s = (decay * *s as f64 + (1.0 - decay) * c as f64) as f32;
    }
    let total: f64 = cluster_size.iter().map(|&s| s as f64).sum();
    // Each code's 1 / (Laplace-smoothed size); none while no code has weight, when the
    // codebook is left as it is.
    let inv: Vec<f64> = if total > 0.0 {
        let smoothed = |s: f32| (s as f64 + eps) / (total + k as f64 * eps) * total;
        cluster_size.iter().map(|&s| 1.0 / smoothed(s)).collect()
    } else {
        Vec::new()
    };
    let (es, cb) = (Out(embed_sum.as_mut_ptr()), Out(codebook.as_mut_ptr()));
    reduce(isa, parallel, x, idx, (k, d), split, &|b, acc| {
        for (j, a) in (b.c0..b.c1).zip(acc.chunks_exact(b.w)) {
            // SAFETY: see `Out`; (j, t0..t0 + w) lies inside the k x d state.
            let e = unsafe { es.row(j * d + b.t0, b.w) };
            for (e, &v) in e.iter_mut().zip(a) {
                let batch = v as f32 as f64;
                *e = (decay * *e as f64 + (1.0 - decay) * batch) as f32;
            }
            if let Some(&inv) = inv.get(j) {
                // SAFETY: as above.
                let c = unsafe { cb.row(j * d + b.t0, b.w) };
                for (c, &e) in c.iter_mut().zip(e.iter()) {
                    *c = (e as f64 * inv) as f32;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Isa;
    use crate::rng::Rng;

    /// (n, k, d, x, idx).
    type Case = (usize, usize, usize, Vec<f32>, Vec<u32>);

    /// Shapes with every remainder of a 16-column slice, random codes (one out of range).
    fn cases() -> Vec<Case> {
        let mut rng = Rng::new(3);
        let mut v = Vec::new();
        for &(n, k, d) in &[(200, 7, 5), (300, 50, 40), (64, 130, 17)] {
            let x = rng.normal_vec(n * d);
            let mut idx: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
            idx[0] = k as u32 + 5; // out of range: skipped
            v.push((n, k, d, x, idx));
        }
        v
    }

    /// Every (column width, code range) split of k x d, in parallel or not, on every ISA.
    fn splits(k: usize, d: usize) -> impl Iterator<Item = (Isa, (usize, usize), bool)> {
        Isa::available().into_iter().flat_map(move |isa| {
            [16, 32, d.div_ceil(16) * 16]
                .into_iter()
                .flat_map(move |w| {
                    [1, 3, k.div_ceil(2), k]
                        .into_iter()
                        .flat_map(move |r| [false, true].map(|p| (isa, (w, r), p)))
                })
        })
    }

    /// The per-code sums in f64, row order, rounded to f32: the reference for both tests.
    fn row_order_sums(x: &[f32], idx: &[u32], k: usize, d: usize) -> Vec<f32> {
        let mut want = vec![0.0f64; k * d];
        for (row, &j) in x.chunks_exact(d).zip(idx) {
            if let Some(w) = want.get_mut(j as usize * d..(j as usize + 1) * d) {
                w.iter_mut().zip(row).for_each(|(w, &v)| *w += v as f64);
            }
        }
        want.iter().map(|&v| v as f32).collect()
    }

    /// Every column width and code range, on every instruction set, in parallel or not,
    /// gives the bits of a plain f64 sum in row order; codes out of range are skipped.
    #[test]
    fn sums_match_row_order_f64_for_every_split() {
        for (n, k, d, x, idx) in cases() {
            let want = row_order_sums(&x, &idx, k, d);
            for (isa, split, parallel) in splits(k, d) {
                let mut got = vec![f32::NAN; k * d];
                sums_in(isa, parallel, &x, &idx, (k, d), split, &mut got);
                assert_eq!(got, want, "{isa:?} n={n} k={k} d={d} split={split:?}");
            }
        }
    }

    /// Owned EMA state: sizes, running sums, codebook.
    type State = (Vec<f32>, Vec<f32>, Vec<f32>);

    /// The EMA step written out plainly: sizes, then the stored batch sums folded into the
    /// running sums, then the codewords (left alone while no code has weight).
    fn plain_ema(
        (decay, eps): (f64, f64),
        x: &[f32],
        idx: &[u32],
        (k, d): (usize, usize),
        (mut size, mut esum, mut code): State,
    ) -> State {
        let batch = row_order_sums(x, idx, k, d);
        for (s, &c) in size.iter_mut().zip(&counts(idx, k)) {
            *s = (decay * *s as f64 + (1.0 - decay) * c as f64) as f32;
        }
        let total: f64 = size.iter().map(|&s| s as f64).sum();
        for (j, &s) in size.iter().enumerate() {
            let smoothed = (s as f64 + eps) / (total + k as f64 * eps) * total;
            for t in j * d..(j + 1) * d {
                esum[t] = (decay * esum[t] as f64 + (1.0 - decay) * batch[t] as f64) as f32;
                if total > 0.0 {
                    code[t] = (esum[t] as f64 * (1.0 / smoothed)) as f32;
                }
            }
        }
        (size, esum, code)
    }

    /// The fused EMA step gives the plain step's bits for every split, with weight and
    /// with none anywhere (every code out of range, all sizes zero).
    #[test]
    fn fused_ema_matches_the_plain_step_for_every_split() {
        let (decay, eps) = (0.9f32, 1e-5f32);
        for (n, k, d, x, idx) in cases() {
            let mut rng = Rng::new(n as u64);
            let (esum, code) = (rng.normal_vec(k * d), rng.normal_vec(k * d));
            let weighted = (idx, (0..k).map(|j| (j % 3) as f32).collect::<Vec<_>>());
            let weightless = (vec![k as u32; n], vec![0.0f32; k]);
            for (idx, size) in [weighted, weightless] {
                let start = (size, esum.clone(), code.clone());
                let params = (decay as f64, eps as f64);
                let want = plain_ema(params, &x, &idx, (k, d), start.clone());
                for (isa, split, parallel) in splits(k, d) {
                    let mut got = start.clone();
                    let state = (&mut got.0[..], &mut got.1[..], &mut got.2[..]);
                    ema_in(isa, parallel, (decay, eps), &x, &idx, (k, d), split, state);
                    let at = format!("{isa:?} n={n} k={k} d={d} {split:?} weight={}", start.0[1]);
                    assert_eq!(got, want, "{at}");
                }
            }
        }
    }
}
