//! The f64 scalar reference for every kernel: plain loops, no tiling, no SIMD, every sum in
//! f64. Tests and benchmarks of all backends compare against these and nothing else.

/// Exact squared distance in f64.
pub fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&p, &q)| {
            let t = p as f64 - q as f64;
            t * t
        })
        .sum()
}

/// `|c_j|^2` per codeword.
pub fn codeword_norms(codebook: &[f32], d: usize) -> Vec<f64> {
    codebook
        .chunks_exact(d)
        .map(|c| c.iter().map(|&v| v as f64 * v as f64).sum())
        .collect()
}

/// For each point, the nearest codeword (lowest index on an exact tie) and its exact squared
/// distance.
pub fn distance_argmin(x: &[f32], codebook: &[f32], d: usize) -> (Vec<u32>, Vec<f64>) {
    x.chunks_exact(d)
        .map(|xi| {
            let mut best = (0u32, f64::INFINITY);
            for (j, c) in codebook.chunks_exact(d).enumerate() {
                let s = sq_dist(xi, c);
                if s < best.1 {
                    best = (j as u32, s);
                }
            }
            best
        })
        .unzip()
}

/// Per-code sums, counts and distance sums; codes outside `0..k` are ignored.
pub fn cluster_sums(
    x: &[f32],
    idx: &[u32],
    dist: &[f32],
    k: usize,
    d: usize,
) -> (Vec<f64>, Vec<u32>, Vec<f64>) {
    let mut sums = vec![0.0f64; k * d];
    let mut counts = vec![0u32; k];
    let mut dist_sums = vec![0.0f64; k];
    for (i, &j) in idx.iter().enumerate() {
        let j = j as usize;
        if j >= k {
            continue;
        }
        counts[j] += 1;
        dist_sums[j] += dist[i] as f64;
        for t in 0..d {
            sums[j * d + t] += x[i * d + t] as f64;
        }
    }
    (sums, counts, dist_sums)
}

/// New centroids: the mean of each non-empty cluster, the old centroid otherwise.
pub fn kmeans_update(sums: &[f64], counts: &[u32], centroids: &[f32], d: usize) -> Vec<f64> {
    let mut out: Vec<f64> = centroids.iter().map(|&v| v as f64).collect();
    for (j, &m) in counts.iter().enumerate() {
        if m > 0 {
            for t in 0..d {
                out[j * d + t] = sums[j * d + t] / m as f64;
            }
        }
    }
    out
}

/// The EMA state after one step, as `(cluster_size, embed_sum, codebook)`; see
/// [`crate::backend::EmaParams`] for the formulas.
#[allow(clippy::too_many_arguments)]
pub fn ema_update(
    x: &[f32],
    idx: &[u32],
    k: usize,
    d: usize,
    decay: f32,
    eps: f32,
    cluster_size: &[f32],
    embed_sum: &[f32],
    codebook: &[f32],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (decay, eps) = (decay as f64, eps as f64);
    let (sums, counts, _) = cluster_sums(x, idx, &vec![0.0; idx.len()], k, d);
    let size: Vec<f64> = cluster_size
        .iter()
        .zip(&counts)
        .map(|(&s, &c)| decay * s as f64 + (1.0 - decay) * c as f64)
        .collect();
    let esum: Vec<f64> = embed_sum
        .iter()
        .zip(&sums)
        .map(|(&e, &b)| decay * e as f64 + (1.0 - decay) * b)
        .collect();
    let total: f64 = size.iter().sum();
    let mut code: Vec<f64> = codebook.iter().map(|&v| v as f64).collect();
    if total > 0.0 {
        for j in 0..k {
            let smoothed = (size[j] + eps) / (total + k as f64 * eps) * total;
            for t in 0..d {
                code[j * d + t] = esum[j * d + t] / smoothed;
            }
        }
    }
    (size, esum, code)
}

/// `C (m, n) = A (m, k) . B (k, n)`, all row-major.
pub fn gemm(m: usize, n: usize, k: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            let av = a[i * k + p];
            for j in 0..n {
                c[i * n + j] += av * b[p * n + j];
            }
        }
    }
    c
}
