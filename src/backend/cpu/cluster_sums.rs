//! Deterministic per-code reductions on the CPU: k-means accumulation, centroid update and
//! the EMA codebook step.
//!
//! x: (n, d), idx: (n), dist: (n); sums: (k, d), counts: (k), dist_sums: (k).
//!
//! Points are first counting-sorted by code (a histogram, an exclusive prefix sum, a stable
//! scatter), then each code's rows are summed in row order with f64 accumulators. The order
//! of every addition is fixed by the data alone, so outputs are bit-identical whatever the
//! thread count, and codes are independent tasks, so no atomics are needed.

use rayon::prelude::*;

/// Rows of each code in ascending row order: `order[offsets[j]..offsets[j + 1]]`.
/// Codes outside `0..k` are left out.
pub(crate) struct Grouped {
    pub counts: Vec<u32>,
    offsets: Vec<usize>,
    order: Vec<u32>,
}

impl Grouped {
    pub(crate) fn new(idx: &[u32], k: usize) -> Self {
        let mut counts = vec![0u32; k];
        for &j in idx {
            if let Some(c) = counts.get_mut(j as usize) {
                *c += 1;
            }
        }
        let mut offsets = Vec::with_capacity(k + 1);
        let mut acc = 0usize;
        offsets.push(0);
        for &c in &counts {
            acc += c as usize;
            offsets.push(acc);
        }
        let mut next = offsets[..k].to_vec();
        let mut order = vec![0u32; acc];
        for (i, &j) in idx.iter().enumerate() {
            if let Some(slot) = next.get_mut(j as usize) {
                order[*slot] = i as u32;
                *slot += 1;
            }
        }
        Grouped {
            counts,
            offsets,
            order,
        }
    }

    pub(crate) fn rows(&self, j: usize) -> &[u32] {
        &self.order[self.offsets[j]..self.offsets[j + 1]]
    }
}

/// `sums[j] = sum of the rows of code j`, accumulated in f64 in row order.
pub(crate) fn grouped_sums(parallel: bool, g: &Grouped, x: &[f32], d: usize, sums: &mut [f32]) {
    let one = |(j, out): (usize, &mut [f32])| {
        let mut acc = vec![0.0f64; d];
        for &i in g.rows(j) {
            let row = &x[i as usize * d..(i as usize + 1) * d];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v as f64;
            }
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            *o = *a as f32;
        }
    };
    if parallel {
        sums.par_chunks_mut(d).enumerate().for_each(one);
    } else {
        sums.chunks_mut(d).enumerate().for_each(one);
    }
}

/// `dist_sums[j] = sum of dist over the rows of code j`, in f64, row order.
pub(crate) fn grouped_dist_sums(g: &Grouped, dist: &[f32], dist_sums: &mut [f32]) {
    for (j, out) in dist_sums.iter_mut().enumerate() {
        *out = g
            .rows(j)
            .iter()
            .map(|&i| dist[i as usize] as f64)
            .sum::<f64>() as f32;
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
