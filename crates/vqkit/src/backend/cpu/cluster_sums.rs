//! Deterministic per-code reductions on the CPU: k-means accumulation, centroid update and
//! the EMA codebook step.
//!
//! x: (n, d), idx: (n), dist: (n); sums: (k, d), counts: (k), dist_sums: (k).
//!
//! x is streamed once in row order and each row is added into its code's f64 accumulator,
//! so every code's sum takes its rows in row order: the order of every addition is fixed by
//! the data alone and outputs are bit-identical whatever the thread count. Parallel tasks
//! split the columns, not the rows: each owns a cache-line-aligned slice of d for all k
//! codes and streams every row, so no partial sums are merged and no atomics are needed.
//! (Gathering each code's rows instead visits x in random order, bound by memory latency
//! rather than bandwidth.)

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
pub(crate) fn sums(parallel: bool, x: &[f32], idx: &[u32], k: usize, d: usize, sums: &mut [f32]) {
    let tasks = if parallel {
        rayon::current_num_threads().min(d.div_ceil(LINE))
    } else {
        1
    };
    let width = d.div_ceil(tasks).div_ceil(LINE) * LINE;
    let slice = |t0: usize| {
        let w = width.min(d - t0);
        let mut acc = vec![0.0f64; k * w];
        for (row, &j) in x.chunks_exact(d).zip(idx) {
            if let Some(a) = acc.get_mut(j as usize * w..(j as usize + 1) * w) {
                for (a, &v) in a.iter_mut().zip(&row[t0..t0 + w]) {
                    *a += v as f64;
                }
            }
        }
        (t0, w, acc)
    };
    let starts: Vec<usize> = (0..d).step_by(width).collect();
    let parts: Vec<(usize, usize, Vec<f64>)> = if starts.len() > 1 {
        starts.into_par_iter().map(slice).collect()
    } else {
        starts.into_iter().map(slice).collect()
    };
    for (t0, w, acc) in parts {
        for (out, a) in sums.chunks_exact_mut(d).zip(acc.chunks_exact(w)) {
            for (o, &v) in out[t0..t0 + w].iter_mut().zip(a) {
                *o = v as f32;
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

/// The EMA step of [`crate::backend::EmaParams`] given this batch's counts and sums.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ema_apply(
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
    for (e, &b) in embed_sum.iter_mut().zip(batch_sums) {
        *e = (decay * *e as f64 + (1.0 - decay) * b as f64) as f32;
    }
    let total: f64 = cluster_size.iter().map(|&s| s as f64).sum();
    if total <= 0.0 {
        return;
    }
    for j in 0..k {
        let smoothed = (cluster_size[j] as f64 + eps) / (total + k as f64 * eps) * total;
        let inv = 1.0 / smoothed;
        for t in 0..d {
            codebook[j * d + t] = (embed_sum[j * d + t] as f64 * inv) as f32;
        }
    }
}
