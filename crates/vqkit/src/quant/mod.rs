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
pub mod sums;
#[cfg(test)]
mod test_support;
pub mod vq;

use crate::backend::Code;
use crate::backend::cpu::{Isa, residual_decode, residual_decoded_len, size};
use crate::error::{Error, Result};
use crate::ops::{check_finite, rows};

/// `mean_i |x_i|^2`, the denominator of the relative error `mse / mean(|x|^2)`, summed in
/// f64 in [`sums`]'s order (the bits of a stream in any chunks), on the calling thread;
/// 0 where `x` holds no whole row (or `d` is 0).
pub fn mean_sq_norm(x: &[f32], d: usize) -> f64 {
    let n = x.len() / d.max(1);
    if n == 0 {
        return 0.0;
    }
    let mut s = sums::RowSums::new();
    s.add_sq(x, d);
    s.total() / n as f64
}

/// Mean squared distance between two equally shaped sets of rows of width `d`, summed in
/// f64 in [`sums`]'s order on the calling thread (over the rows both hold where their
/// lengths differ); 0 where they hold no whole row (or `d` is 0).
pub fn mse(x: &[f32], y: &[f32], d: usize) -> f64 {
    let n = x.len().min(y.len()) / d.max(1);
    if n == 0 {
        return 0.0;
    }
    let mut s = sums::RowSums::new();
    s.add_sq_diff(x, y, d);
    s.total() / n as f64
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

/// The decoding every quantizer shares: each code's codeword of `codebooks` (m, k, ds),
/// row-major, either added from zero in codebook order into rows of ds floats (RQ, AQ:
/// [`residual_decode`]) or laid side by side (PQ, and with m = 1 k-means and VQ:
/// [`pvq::copy_codewords`]). Every check comes before the first write.
pub(crate) struct Decoder<'a> {
    /// The codebooks' name in errors.
    what: &'static str,
    codebooks: &'a [f32],
    shape: (usize, usize, usize),
    sum: bool,
}

impl<'a> Decoder<'a> {
    /// Rows of `sum_s C_s[codes[i, s]]`; a last row of fewer than m codes is dropped.
    pub(crate) fn sums(codebooks: &'a [f32], shape: (usize, usize, usize)) -> Self {
        let what = "codebooks";
        Decoder {
            what,
            codebooks,
            shape,
            sum: true,
        }
    }

    /// Each code's codeword, side by side.
    pub(crate) fn copies(
        what: &'static str,
        codebooks: &'a [f32],
        shape: (usize, usize, usize),
    ) -> Self {
        Decoder {
            what,
            codebooks,
            shape,
            sum: false,
        }
    }

    pub(crate) fn decode<C: Code>(&self, codes: &[C]) -> Result<Vec<f32>> {
        let len = self.decoded_len(codes)?;
        let mut out = crate::resources::zeroed_lazy::<f32>("the reconstructions", len)?;
        self.fill(codes, &mut out)?;
        Ok(out)
    }

    pub(crate) fn decode_into<C: Code>(&self, codes: &[C], out: &mut [f32]) -> Result<()> {
        let len = self.decoded_len(codes)?;
        crate::backend::check_len("the reconstructions", out.len(), len)?;
        self.fill(codes, out)
    }

    /// The floats `codes` decode to, after checking them and the codebooks' length.
    fn decoded_len<C: Code>(&self, codes: &[C]) -> Result<usize> {
        let (m, k, ds) = self.shape;
        crate::ops::check_codes(codes, k)?;
        if self.sum {
            return residual_decoded_len(self.codebooks, self.shape, codes);
        }
        let want = size(self.what, &[m, k, ds])?;
        crate::backend::check_len(self.what, self.codebooks.len(), want)?;
        size("the reconstructions", &[codes.len(), ds])
    }

    fn fill<C: Code>(&self, codes: &[C], out: &mut [f32]) -> Result<()> {
        if self.sum {
            return residual_decode(Isa::detect(), self.codebooks, self.shape, codes, out);
        }
        pvq::copy_codewords(self.codebooks, self.shape, codes, out);
        Ok(())
    }
}
