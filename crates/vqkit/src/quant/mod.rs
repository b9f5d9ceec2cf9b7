//! Quantization algorithms built on the [`Backend`](crate::Backend) kernels: k-means,
//! residual (RVQ / RQ-K-means), product (PVQ) and additive (AVQ) quantizers, the VQ-VAE
//! layer, NSVQ training, a complexity calculator, and safetensors model files.
//!
//! Every algorithm is generic over the backend: the heavy steps (nearest codeword, cluster
//! sums, centroid and EMA updates) run on the backend's kernels. Steps the narrow trait has
//! no kernel for (residual updates `r -= c[idx]`, beam-search scoring, least squares) run on
//! the host, and each says so where it does.

pub mod avq;
mod bounds;
pub mod complexity;
pub mod kmeans;
pub mod linalg;
pub mod minibatch;
pub mod model;
pub mod model_io;
pub mod nsvq;
pub mod pca;
pub mod pvq;
pub mod rvq;
mod seeding;
#[cfg(test)]
mod test_support;
pub mod vq;

use crate::error::{Error, Result};
use crate::ops::{check_finite, rows};

/// `mean_i |x_i|^2`, the denominator of the relative error `mse / mean(|x|^2)`.
pub fn mean_sq_norm(x: &[f32], d: usize) -> f64 {
    let n = x.len() / d.max(1);
    if n == 0 {
        return 0.0;
    }
    x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64
}

/// Mean squared distance between two equally shaped sets of rows of width `d`.
pub fn mse(x: &[f32], y: &[f32], d: usize) -> f64 {
    let n = x.len() / d.max(1);
    if n == 0 {
        return 0.0;
    }
    x.iter()
        .zip(y)
        .map(|(&a, &b)| {
            let t = a as f64 - b as f64;
            t * t
        })
        .sum::<f64>()
        / n as f64
}

/// `mse / mean(|x|^2)`, or the plain mse when the data is all zeros.
pub fn relative_error(mse: f64, x: &[f32], d: usize) -> f64 {
    let m = mean_sq_norm(x, d);
    if m > 0.0 { mse / m } else { mse }
}

/// Checks training data: rows of width `d`, finite, and at least `k` of them.
pub(crate) fn check_training(x: &[f32], d: usize, k: usize) -> Result<usize> {
    let n = rows("points", x, d)?;
    if k == 0 {
        return Err(Error::EmptyCodebook);
    }
    if k > n {
        return Err(Error::KLargerThanN { k, n });
    }
    check_finite("points", x)?;
    Ok(n)
}

/// Checks data handed to a trained model: rows of the model's width, finite.
pub(crate) fn check_input(x: &[f32], d: usize) -> Result<usize> {
    let n = rows("points", x, d)?;
    check_finite("points", x)?;
    Ok(n)
}

/// Derives an independent seed for sub-task `i` (a restart, a stage, a sub-space) so that
/// sub-tasks do not share random streams.
pub fn sub_seed(seed: u64, i: u64) -> u64 {
    seed ^ (i.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// `(exp(entropy), fraction used)` of a code histogram over `k` codes: the perplexity and
/// usage that every quantizer and model reports per level.
pub fn code_stats(codes: &[u32], k: usize) -> (f64, f64) {
    let mut counts = vec![0u64; k];
    for &c in codes {
        if (c as usize) < k {
            counts[c as usize] += 1;
        }
    }
    let n = codes.len().max(1) as f64;
    let h: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum();
    let used = counts.iter().filter(|&&c| c > 0).count();
    (h.exp(), used as f64 / k.max(1) as f64)
}
