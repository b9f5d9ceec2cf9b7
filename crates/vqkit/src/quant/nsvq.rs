//! NSVQ: noise-substitution vector quantization (Vali and Backstrom; ICASSP 2023 for RVQ,
//! PVQ and AVQ). The quantization error is replaced by a random vector of the same norm, so
//! that gradients reach the codebooks through that norm:
//!
//! ```text
//! x^ = x - |x - q| u,              u uniform on the unit sphere (v / |v|, v ~ N(0, I))
//! dL/dq = (g . u) (x - q) / |x - q|                        g = dL/dx^
//! dL/dx = g - (g . u) (x - q) / |x - q|
//! ```
//!
//! For RVQ and AVQ, `q = sum_s C_s[a_s]` (the whole reconstruction; its error is substituted
//! once), so `dL/dC_s[a_s] += dL/dq` for every stage; for PVQ each sub-vector is substituted
//! on its own, or the whole vector once ([`NoiseScope`]). Training minimises
//! `L = mean_i |x_i - x^_i|^2` over mini-batches with SGD (momentum) or Adam, codes found
//! with the current codebooks (greedy RVQ and PVQ on the backend, beam search for AVQ on the
//! host), and NSVQ's codebook replacement every `num_batches` batches. Codebooks start from
//! the k-means-based fit of the same model (`init_iters` Lloyd iterations), from random
//! training vectors when `init_iters` is 0, or from Uniform(-1/K, 1/K) ([`NsvqInit`]).
//!
//! Note that with this loss alone `|x - x^| = |x - q|` exactly, so `L` is the quantization
//! error and `dL/dq = -2 (x - q) / n` whatever the noise direction: standalone NSVQ is
//! gradient descent on the codebooks, and the noise matters only where a network follows
//! `x^` (the VQ-VAE of `vqkit-nn`).
//!
//! Where this departs from the published code (Vali and Backstrom's PyTorch repositories),
//! each difference is an option here ([`NsvqConfig::init`], `noise`, `pooled_replacement`,
//! `stop_replacement`, `keep_moments`), and `docs/nsvq.md` gives the measurements that chose
//! the defaults.

use super::avq::Avq;
use super::kmeans::subsample;
use super::pvq::{Pvq, PvqConfig};
use super::rvq::{Rvq, RvqConfig};
use super::vq::replace_unused;
use super::{check_training, mse, sub_seed};
use crate::backend::{Backend, Code};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// `x^ = x - |x - q| u` for one vector.
pub fn substitute(x: &[f32], q: &[f32], u: &[f32]) -> Vec<f32> {
    let e = err_norm(x, q);
    x.iter().zip(u).map(|(&a, &w)| a - e * w).collect()
}

fn err_norm(x: &[f32], q: &[f32]) -> f32 {
    x.iter()
        .zip(q)
        .map(|(&a, &b)| (a - b) * (a - b))
        .sum::<f32>()
        .sqrt()
}

/// `(dL/dx, dL/dq)` of [`substitute`] given `g = dL/dx^`. At `x = q` the norm has no
/// gradient; the sub-gradient 0 is used for `q`.
pub fn substitute_backward(x: &[f32], q: &[f32], u: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let e = err_norm(x, q);
    let gu: f32 = g.iter().zip(u).map(|(a, b)| a * b).sum();
    let dq: Vec<f32> = if e > 0.0 {
        x.iter().zip(q).map(|(&a, &b)| gu * (a - b) / e).collect()
    } else {
        vec![0.0; x.len()]
    };
    let dx = g.iter().zip(&dq).map(|(&gi, &di)| gi - di).collect();
    (dx, dq)
}

/// A random unit vector (`v / |v|`, v standard normal).
pub fn unit(rng: &mut Rng, d: usize) -> Vec<f32> {
    loop {
        let v = rng.normal_vec(d);
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        if n > 0.0 {
            return v.iter().map(|a| a / n).collect();
        }
    }
}

/// Which model NSVQ trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NsvqMethod {
    Rvq,
    Pvq,
    Avq,
}

crate::impl_choice!(NsvqMethod, "method", { Rvq => "rvq", Pvq => "pvq", Avq => "avq" });

/// Where the codebooks start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NsvqInit {
    /// The k-means-based fit of the same model (`init_iters` Lloyd iterations), or random
    /// training vectors when `init_iters` is 0.
    #[default]
    KMeans,
    /// Every coordinate drawn from Uniform(-1/K, 1/K): the published code's default.
    Uniform,
}

crate::impl_choice!(NsvqInit, "init", { KMeans => "kmeans", Uniform => "uniform" });

/// Over what the quantization error of PVQ is replaced by noise (RVQ and AVQ always
/// substitute over the whole vector).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseScope {
    /// Once over the whole vector, `x^ = x - |x - q| u` with `u` of dimension d, as the
    /// published code does: each sub-codeword's gradient is its slice of `dL/dq`. The
    /// default: it trains exactly as the other (see the module doc) with one random
    /// direction per vector instead of M.
    #[default]
    Whole,
    /// Each sub-vector on its own, `x^_m = x_m - |x_m - q_m| u_m` (vqkit's former way).
    PerSubvector,
}

crate::impl_choice!(NoiseScope, "noise", { Whole => "whole", PerSubvector => "per-subvector" });

/// First-order optimiser.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Optimizer {
    Sgd { momentum: f32 },
    Adam { beta1: f32, beta2: f32, eps: f32 },
}

/// Hyper-parameters of [`train`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NsvqConfig {
    pub method: NsvqMethod,
    /// Stages (RVQ), sub-vectors (PVQ) or codebooks (AVQ).
    pub stages: usize,
    pub k: usize,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub optimizer: Optimizer,
    pub seed: u64,
    /// Beam width for AVQ encoding.
    pub beam: usize,
    /// Lloyd iterations of the k-means-based initialisation; 0: random training vectors.
    pub init_iters: usize,
    /// NSVQ codebook replacement: `(discard_threshold, num_batches)`.
    pub replace: Option<(f32, usize)>,
    /// How the codebooks start.
    #[serde(default)]
    pub init: NsvqInit,
    /// PVQ's noise substitution: per sub-vector or over the whole vector.
    #[serde(default)]
    pub noise: NoiseScope,
    /// Replace unused codewords from the used ones of every codebook together (the
    /// published AVQ code), instead of codebook by codebook. RVQ and AVQ only: PVQ's
    /// codebooks live in different sub-spaces.
    #[serde(default)]
    pub pooled_replacement: bool,
    /// Stop replacing codewords in the last `2 num_batches` batches, as the published
    /// training loops do (a replacement at batch `t`, from 1, only when
    /// `t <= total - 2 num_batches + 1`), so that the last codewords brought in have time
    /// to settle.
    #[serde(default)]
    pub stop_replacement: bool,
    /// Keep the optimiser's moments of replaced codewords (as PyTorch's Adam does when the
    /// published code overwrites a codeword) instead of zeroing them.
    #[serde(default)]
    pub keep_moments: bool,
}

impl NsvqConfig {
    pub fn new(method: NsvqMethod, stages: usize, k: usize) -> Self {
        NsvqConfig {
            method,
            stages,
            k,
            epochs: 5,
            batch: 256,
            lr: 1e-3,
            optimizer: Optimizer::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            seed: 0,
            beam: 4,
            init_iters: 10,
            replace: Some((0.01, 100)),
            init: NsvqInit::default(),
            noise: NoiseScope::default(),
            pooled_replacement: false,
            stop_replacement: false,
            keep_moments: false,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.stages == 0 || self.batch == 0 || self.beam == 0 {
            return Err(Error::invalid(
                "stages, batch, beam",
                "must each be at least 1",
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid("lr", "must be a positive number"));
        }
        if let Some((t, nb)) = self.replace
            && (!(0.0..=1.0).contains(&t) || nb == 0)
        {
            return Err(Error::invalid(
                "replace",
                "discard_threshold must be in [0, 1] and num_batches >= 1",
            ));
        }
        if self.pooled_replacement && self.method == NsvqMethod::Pvq {
            return Err(Error::invalid(
                "pooled_replacement",
                "PVQ's codebooks quantize different sub-vectors; pool only for rvq or avq",
            ));
        }
        Ok(())
    }
}

/// A model trained by NSVQ.
#[derive(Clone, Debug, PartialEq)]
pub enum Trained {
    Rvq(Rvq),
    Pvq(Pvq),
    Avq(Avq),
}

impl Trained {
    fn codebooks_mut(&mut self) -> &mut Vec<f32> {
        match self {
            Trained::Rvq(m) => &mut m.codebooks,
            Trained::Pvq(m) => &mut m.codebooks,
            Trained::Avq(m) => &mut m.codebooks,
        }
    }

    /// Codes (n, stages) with the current codebooks.
    pub fn encode<B: Backend>(&self, b: &B, x: &[f32], beam: usize) -> Result<Vec<u32>> {
        match self {
            Trained::Rvq(m) => m.encode(b, x, 1),
            Trained::Pvq(m) => m.encode(b, x),
            Trained::Avq(m) => m.encode(x, beam),
        }
    }

    pub fn decode<C: Code>(&self, codes: &[C]) -> Result<Vec<f32>> {
        match self {
            Trained::Rvq(m) => m.decode(codes),
            Trained::Pvq(m) => m.decode(codes),
            Trained::Avq(m) => m.decode(codes),
        }
    }
}

/// Optimiser state over a flat parameter vector.
struct Opt {
    kind: Optimizer,
    lr: f32,
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Opt {
    fn step(&mut self, p: &mut [f32], g: &[f32]) {
        self.t += 1;
        match self.kind {
            Optimizer::Sgd { momentum } => {
                for ((w, &gi), mi) in p.iter_mut().zip(g).zip(&mut self.m) {
                    *mi = momentum * *mi + gi;
                    *w -= self.lr * *mi;
                }
            }
            Optimizer::Adam { beta1, beta2, eps } => {
                let c1 = 1.0 - beta1.powi(self.t);
                let c2 = 1.0 - beta2.powi(self.t);
                for (((w, &gi), mi), vi) in p.iter_mut().zip(g).zip(&mut self.m).zip(&mut self.v) {
                    *mi = beta1 * *mi + (1.0 - beta1) * gi;
                    *vi = beta2 * *vi + (1.0 - beta2) * gi * gi;
                    *w -= self.lr * (*mi / c1) / ((*vi / c2).sqrt() + eps);
                }
            }
        }
    }

    /// Forgets the moments of replaced codewords (rows of `d` at `rows`).
    fn reset_rows(&mut self, rows: impl Iterator<Item = usize>, d: usize) {
        for r in rows {
            self.m[r * d..(r + 1) * d].fill(0.0);
            self.v[r * d..(r + 1) * d].fill(0.0);
        }
    }
}

/// What [`train_observed`] reports after every batch.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchLog {
    pub epoch: usize,
    /// Batches done before this one, over all epochs.
    pub batch: usize,
    /// This batch's `mean_i |x_i - x^_i|^2`.
    pub loss: f64,
    /// Per codebook, over this batch: `exp(entropy)` of the codes, and the fraction of
    /// codewords used.
    pub perplexity: Vec<f64>,
    pub usage: Vec<f64>,
    /// Per codebook, the codewords replaced after this batch (zeros between replacements).
    pub replaced: Vec<usize>,
}

/// Trains a model with noise substitution; `on_epoch(epoch, train_mse)` after each epoch
/// (the mean over its batches of `|x - x^|^2`).
pub fn train<B: Backend>(
    b: &B,
    x: &[f32],
    d: usize,
    cfg: &NsvqConfig,
    on_epoch: &mut dyn FnMut(usize, f64),
) -> Result<Trained> {
    train_observed(b, x, d, cfg, &mut |_| {}, on_epoch)
}

/// Where one batch's gradient goes: the layout of the model's codebooks.
struct Layout {
    /// Codes per vector (stages, sub-vectors or codebooks).
    width: usize,
    /// Codeword dimension (d, or d / M for PVQ).
    cw_dim: usize,
    pvq: bool,
}

/// [`train`], also calling `on_batch` after every batch.
pub fn train_observed<B: Backend>(
    b: &B,
    x: &[f32],
    d: usize,
    cfg: &NsvqConfig,
    on_batch: &mut dyn FnMut(&BatchLog),
    on_epoch: &mut dyn FnMut(usize, f64),
) -> Result<Trained> {
    cfg.validate()?;
    let n = check_training(x, d, cfg.k)?;
    let mut rng = Rng::new(cfg.seed);
    let mut model = init(b, x, d, cfg)?;
    let lay = match &model {
        Trained::Pvq(p) => Layout {
            width: p.m,
            cw_dim: p.dsub(),
            pvq: true,
        },
        _ => Layout {
            width: cfg.stages,
            cw_dim: d,
            pvq: false,
        },
    };
    let np = lay.width * cfg.k * lay.cw_dim;
    let mut opt = Opt {
        kind: cfg.optimizer,
        lr: cfg.lr,
        m: vec![0.0; np],
        v: vec![0.0; np],
        t: 0,
    };
    let mut order: Vec<usize> = (0..n).collect();
    let mut used = vec![0u32; lay.width * cfg.k];
    let mut batches_seen = 0;
    let total_batches = cfg.epochs * n.div_ceil(cfg.batch);
    let mut batch_index = 0;
    let mut xb = Vec::with_capacity(cfg.batch * d);
    for epoch in 0..cfg.epochs {
        crate::interrupt::check()?;
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0f64;
        let mut batches = 0usize;
        for chunk in order.chunks(cfg.batch) {
            crate::interrupt::check()?;
            xb.clear();
            for &i in chunk {
                xb.extend_from_slice(&x[i * d..(i + 1) * d]);
            }
            let codes = model.encode(b, &xb, cfg.beam)?;
            let q = model.decode(&codes)?;
            let (grad, loss) = batch_gradient(&xb, &q, &codes, d, cfg, &lay, &mut rng);
            loss_sum += loss;
            batches += 1;
            opt.step(model.codebooks_mut(), &grad);
            let mut replaced = vec![0; lay.width];
            if let Some((threshold, num_batches)) = cfg.replace {
                count_used(&mut used, &codes, &lay, cfg.k);
                batches_seen += 1;
                if batches_seen == num_batches {
                    // The published loops replace at batch t (from 1) only while
                    // t <= total - 2 num_batches + 1.
                    let window_open =
                        !cfg.stop_replacement || batch_index + 2 * num_batches <= total_batches;
                    if window_open {
                        replaced =
                            replace(&mut model, &mut opt, &used, cfg, &lay, threshold, &mut rng);
                    }
                    used.fill(0);
                    batches_seen = 0;
                }
            }
            let stats: Vec<(f64, f64)> = (0..lay.width)
                .map(|st| {
                    let col: Vec<u32> = codes.iter().skip(st).step_by(lay.width).copied().collect();
                    super::code_stats(&col, cfg.k)
                })
                .collect();
            on_batch(&BatchLog {
                epoch,
                batch: batch_index,
                loss,
                perplexity: stats.iter().map(|s| s.0).collect(),
                usage: stats.iter().map(|s| s.1).collect(),
                replaced,
            });
            batch_index += 1;
        }
        on_epoch(epoch, loss_sum / batches.max(1) as f64);
    }
    Ok(model)
}

/// The gradient of `L = mean_rows |x - x^|^2` over the flat codebooks, and `L`, for one
/// batch `xb` with reconstructions `q` from `codes`.
fn batch_gradient(
    xb: &[f32],
    q: &[f32],
    codes: &[u32],
    d: usize,
    cfg: &NsvqConfig,
    lay: &Layout,
    rng: &mut Rng,
) -> (Vec<f32>, f64) {
    let rows = xb.len() / d;
    let (s, k, cw) = (lay.width, cfg.k, lay.cw_dim);
    let mut grad = vec![0.0f32; s * k * cw];
    let mut loss = 0.0f64;
    // Pieces substituted separately: PVQ's sub-vectors (per-subvector noise) or the whole
    // vector.
    let (parts, pd) = if lay.pvq && cfg.noise == NoiseScope::PerSubvector {
        (s, cw)
    } else {
        (1, d)
    };
    for r in 0..rows {
        let row = r * d..(r + 1) * d;
        let (xh_row, us) = substitute_pieces(&xb[row.clone()], &q[row], parts, rng);
        for part in 0..parts {
            let o = r * d + part * pd;
            let (xs, qs) = (&xb[o..o + pd], &q[o..o + pd]);
            let u = &us[part * pd..(part + 1) * pd];
            let xh = &xh_row[part * pd..(part + 1) * pd];
            // L = mean_rows |x - x^|^2, so g = 2 (x^ - x) / rows.
            let g: Vec<f32> = xh
                .iter()
                .zip(xs)
                .map(|(&h, &a)| 2.0 * (h - a) / rows as f32)
                .collect();
            loss += xh
                .iter()
                .zip(xs)
                .map(|(&h, &a)| ((h - a) as f64).powi(2))
                .sum::<f64>();
            let (_, dq) = substitute_backward(xs, qs, u, &g);
            // Scatter dL/dq to every codeword that made up q: the whole of it to each
            // stage of RVQ/AVQ; to each PVQ sub-codeword its own slice.
            let stages = if parts == 1 { 0..s } else { part..part + 1 };
            for st in stages {
                let j = codes[r * s + st] as usize;
                let off = (st * k + j) * cw;
                let slice = if lay.pvq && parts == 1 {
                    &dq[st * cw..(st + 1) * cw]
                } else {
                    &dq[..]
                };
                for (gw, &v) in grad[off..off + cw].iter_mut().zip(slice) {
                    *gw += v;
                }
            }
        }
    }
    (grad, loss / rows as f64)
}

/// `x^` of one vector with its error replaced by noise over `pieces` equal parts (1: the
/// whole vector, `|x^ - x| = |x - q|`; M: each sub-vector, `|x^_m - x_m| = |x_m - q_m|`),
/// and the unit directions used, part after part.
fn substitute_pieces(x: &[f32], q: &[f32], pieces: usize, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
    let pd = x.len() / pieces;
    let mut xh = Vec::with_capacity(x.len());
    let mut us = Vec::with_capacity(x.len());
    for p in 0..pieces {
        let part = p * pd..(p + 1) * pd;
        let u = unit(rng, pd);
        xh.extend(substitute(&x[part.clone()], &q[part], &u));
        us.extend(u);
    }
    (xh, us)
}

/// Counts each code of the batch at most once, as the published code's indexed increment
/// does.
fn count_used(used: &mut [u32], codes: &[u32], lay: &Layout, k: usize) {
    let mut seen = vec![false; used.len()];
    for row in codes.chunks_exact(lay.width) {
        for (st, &j) in row.iter().enumerate() {
            seen[st * k + j as usize] = true;
        }
    }
    for (u, s) in used.iter_mut().zip(seen) {
        *u += s as u32;
    }
}

/// NSVQ's replacement of the codewords used in fewer than `threshold` of the last
/// `num_batches` batches, per codebook or pooled; returns the count per codebook.
fn replace(
    model: &mut Trained,
    opt: &mut Opt,
    used: &[u32],
    cfg: &NsvqConfig,
    lay: &Layout,
    threshold: f32,
    rng: &mut Rng,
) -> Vec<usize> {
    let Some((_, num_batches)) = cfg.replace else {
        return vec![0; lay.width];
    };
    let (k, cw) = (cfg.k, lay.cw_dim);
    let cb = model.codebooks_mut();
    // Global codeword rows replaced.
    let rows: Vec<usize> = if cfg.pooled_replacement {
        replace_unused(cb, cw, used, num_batches, threshold, 0.01, rng)
    } else {
        (0..lay.width)
            .flat_map(|st| {
                let slot = &mut cb[st * k * cw..(st + 1) * k * cw];
                let r = replace_unused(
                    slot,
                    cw,
                    &used[st * k..(st + 1) * k],
                    num_batches,
                    threshold,
                    0.01,
                    rng,
                );
                r.into_iter().map(move |j| st * k + j).collect::<Vec<_>>()
            })
            .collect()
    };
    let mut per = vec![0; lay.width];
    for &r in &rows {
        per[r / k] += 1;
    }
    if !cfg.keep_moments {
        opt.reset_rows(rows.into_iter(), cw);
    }
    per
}

fn init<B: Backend>(b: &B, x: &[f32], d: usize, cfg: &NsvqConfig) -> Result<Trained> {
    let s = cfg.stages;
    let k = cfg.k;
    if cfg.init == NsvqInit::Uniform {
        return uniform_init(d, cfg);
    }
    if cfg.init_iters > 0 {
        return Ok(match cfg.method {
            NsvqMethod::Rvq | NsvqMethod::Avq => {
                let mut rc = RvqConfig::new(s, k);
                rc.iters = cfg.init_iters;
                rc.seed = cfg.seed;
                let r = Rvq::fit(b, x, d, &rc, &mut |_| {})?;
                if cfg.method == NsvqMethod::Rvq {
                    Trained::Rvq(r)
                } else {
                    Trained::Avq(Avq::from_rvq(&r, cfg.beam))
                }
            }
            NsvqMethod::Pvq => {
                let mut pc = PvqConfig::new(s, k);
                pc.iters = cfg.init_iters;
                pc.seed = cfg.seed;
                Trained::Pvq(Pvq::fit(b, x, d, &pc, &mut |_| {})?)
            }
        });
    }
    // Random training vectors, scaled by 1/S for the additive models so that the first
    // reconstructions have the data's scale.
    let mut rows = Vec::with_capacity(s * k * d);
    for st in 0..s {
        let mut r = Rng::new(sub_seed(cfg.seed, st as u64));
        rows.extend(subsample(x, d, k, &mut r));
    }
    Ok(match cfg.method {
        NsvqMethod::Pvq => {
            if s == 0 || !d.is_multiple_of(s) {
                return Err(Error::invalid(
                    "stages",
                    format!("{s} sub-vectors do not divide d = {d}"),
                ));
            }
            let ds = d / s;
            let mut cb = Vec::with_capacity(s * k * ds);
            for st in 0..s {
                for j in 0..k {
                    let row = &rows[(st * k + j) * d..(st * k + j + 1) * d];
                    cb.extend_from_slice(&row[st * ds..(st + 1) * ds]);
                }
            }
            Trained::Pvq(Pvq {
                d,
                m: s,
                k,
                codebooks: cb,
            })
        }
        NsvqMethod::Rvq | NsvqMethod::Avq => {
            let scaled: Vec<f32> = rows.iter().map(|v| v / s as f32).collect();
            let r = Rvq {
                d,
                k,
                stages: s,
                shared: false,
                beam: 1,
                codebooks: scaled,
            };
            if cfg.method == NsvqMethod::Rvq {
                Trained::Rvq(r)
            } else {
                Trained::Avq(Avq::from_rvq(&r, cfg.beam))
            }
        }
    })
}

/// Codebooks of i.i.d. Uniform(-1/K, 1/K) coordinates (the published default).
fn uniform_init(d: usize, cfg: &NsvqConfig) -> Result<Trained> {
    let (s, k) = (cfg.stages, cfg.k);
    let mut rng = Rng::new(sub_seed(cfg.seed, 1 << 40));
    let bound = 1.0 / k as f64;
    let mut draw = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
            .collect()
    };
    Ok(match cfg.method {
        NsvqMethod::Pvq => {
            if !d.is_multiple_of(s) {
                return Err(Error::invalid(
                    "stages",
                    format!("{s} sub-vectors do not divide d = {d}"),
                ));
            }
            Trained::Pvq(Pvq {
                d,
                m: s,
                k,
                codebooks: draw(s * k * (d / s)),
            })
        }
        NsvqMethod::Rvq | NsvqMethod::Avq => {
            let r = Rvq {
                d,
                k,
                stages: s,
                shared: false,
                beam: 1,
                codebooks: draw(s * k * d),
            };
            if cfg.method == NsvqMethod::Rvq {
                Trained::Rvq(r)
            } else {
                Trained::Avq(Avq::from_rvq(&r, cfg.beam))
            }
        }
    })
}

/// The training error of a model on `x`: `(mse, codes)`.
pub fn evaluate<B: Backend>(
    b: &B,
    model: &Trained,
    x: &[f32],
    d: usize,
    beam: usize,
) -> Result<(f64, Vec<u32>)> {
    let codes = model.encode(b, x, beam)?;
    Ok((mse(x, &model.decode(&codes)?, d), codes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    fn norm(v: impl Iterator<Item = f32>) -> f32 {
        v.map(|a| a * a).sum::<f32>().sqrt()
    }

    fn data(n: usize, d: usize) -> Vec<f32> {
        crate::rng::clustered(n, d, 6, 0.3, 11)
    }

    #[test]
    fn uniform_init_stays_within_one_over_k() {
        let b = CpuBackend::new(Some(1)).unwrap();
        let x = data(300, 8);
        for method in [NsvqMethod::Rvq, NsvqMethod::Pvq, NsvqMethod::Avq] {
            let mut cfg = NsvqConfig::new(method, 2, 16);
            cfg.init = NsvqInit::Uniform;
            cfg.epochs = 0;
            let mut m = train(&b, &x, 8, &cfg, &mut |_, _| {}).unwrap();
            let cb = m.codebooks_mut().clone();
            assert_eq!(
                cb.len(),
                if method == NsvqMethod::Pvq {
                    2 * 16 * 4
                } else {
                    2 * 16 * 8
                }
            );
            assert!(cb.iter().all(|v| v.abs() <= 1.0 / 16.0), "{method:?}");
            // Spread over the interval, not a constant: both signs, and near both ends.
            let (lo, hi) = cb
                .iter()
                .fold((0.0f32, 0.0f32), |(l, h), &v| (l.min(v), h.max(v)));
            assert!(lo < -0.05 && hi > 0.05, "{lo} {hi}");
        }
    }

    #[test]
    fn whole_vector_noise_keeps_the_whole_error_norm() {
        let mut rng = Rng::new(3);
        let x: Vec<f32> = (0..12).map(|i| (i as f32 * 0.7).sin()).collect();
        // An error much larger in the first sub-vector than in the others.
        let q: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| v - if i < 4 { 1.0 } else { 0.01 })
            .collect();
        let err = |a: &[f32], b: &[f32]| norm(a.iter().zip(b).map(|(p, r)| p - r));
        let (whole, u) = substitute_pieces(&x, &q, 1, &mut rng);
        assert!((err(&whole, &x) - err(&x, &q)).abs() < 1e-5);
        assert!((norm(u.iter().copied()) - 1.0).abs() < 1e-5);
        let (per, u) = substitute_pieces(&x, &q, 3, &mut rng);
        for m in 0..3 {
            let p = m * 4..(m + 1) * 4;
            assert!(
                (err(&per[p.clone()], &x[p.clone()]) - err(&x[p.clone()], &q[p.clone()])).abs()
                    < 1e-5
            );
            assert!((norm(u[p].iter().copied()) - 1.0).abs() < 1e-5);
        }
        // The whole vector's noise spreads the first sub-vector's large error over all of
        // them: some sub-vector's noise norm differs from its own error.
        let differs = (0..3).any(|m| {
            let p = m * 4..(m + 1) * 4;
            (err(&whole[p.clone()], &x[p.clone()]) - err(&x[p.clone()], &q[p])).abs() > 0.05
        });
        assert!(differs);
    }

    #[test]
    fn with_the_quantizer_loss_alone_the_noise_scope_does_not_change_the_gradient() {
        // L = |x - x^|^2 = |x - q|^2 whatever u is, and dL/dq = (g . u) (x - q) / |x - q|
        // with g = -2 |x - q| u gives -2 (x - q): the direction u drops out, so whole-vector
        // and per-sub-vector noise train PVQ alike (they differ only where a network sits
        // after x^, as in a VQ-VAE).
        let (d, k) = (8, 2);
        let x: Vec<f32> = (0..d).map(|i| 1.0 + i as f32).collect();
        let q = vec![0.5f32; d];
        let codes = [0u32, 1, 0, 1];
        for noise in [NoiseScope::Whole, NoiseScope::PerSubvector] {
            let mut cfg = NsvqConfig::new(NsvqMethod::Pvq, 4, k);
            cfg.noise = noise;
            let lay = Layout {
                width: 4,
                cw_dim: 2,
                pvq: true,
            };
            let (g, loss) = batch_gradient(&x, &q, &codes, d, &cfg, &lay, &mut Rng::new(9));
            let e2: f64 = x
                .iter()
                .zip(&q)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            assert!(
                (loss - e2).abs() < 1e-4 * e2,
                "{noise:?}: the loss is |x - q|^2"
            );
            for m in 0..4 {
                let off = (m * k + codes[m] as usize) * 2;
                for t in 0..2 {
                    let want = -2.0 * (x[m * 2 + t] - q[m * 2 + t]);
                    assert!((g[off + t] - want).abs() < 1e-4 * want.abs(), "{noise:?}");
                }
            }
        }
    }

    /// A model of `width` codebooks of `k` rows of dimension 2, the optimiser state of
    /// ones, and the layout.
    fn toy(method: NsvqMethod, width: usize, k: usize) -> (Trained, Opt, Layout, NsvqConfig) {
        let cw = 2;
        let cb: Vec<f32> = (0..width * k * cw).map(|i| 10.0 + i as f32).collect();
        let model = match method {
            NsvqMethod::Avq => Trained::Avq(Avq::from_rvq(
                &Rvq {
                    d: cw,
                    k,
                    stages: width,
                    shared: false,
                    beam: 1,
                    codebooks: cb,
                },
                2,
            )),
            _ => Trained::Rvq(Rvq {
                d: cw,
                k,
                stages: width,
                shared: false,
                beam: 1,
                codebooks: cb,
            }),
        };
        let np = width * k * cw;
        let opt = Opt {
            kind: Optimizer::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            lr: 1e-3,
            m: vec![1.0; np],
            v: vec![1.0; np],
            t: 5,
        };
        let mut cfg = NsvqConfig::new(method, width, k);
        cfg.replace = Some((0.5, 10));
        (
            model,
            opt,
            Layout {
                width,
                cw_dim: cw,
                pvq: false,
            },
            cfg,
        )
    }

    #[test]
    fn pooled_replacement_draws_from_every_codebook() {
        // Codebook 0 fully used, codebook 1 never: alone, codebook 1 has nothing to copy
        // from and only gets jittered; pooled, its rows become copies of codebook 0's.
        let (k, cw) = (4, 2);
        let used: Vec<u32> = [vec![10u32; k], vec![0u32; k]].concat();
        for pooled in [false, true] {
            let (mut model, mut opt, lay, mut cfg) = toy(NsvqMethod::Avq, 2, k);
            cfg.pooled_replacement = pooled;
            let before = model.codebooks_mut().clone();
            let per = replace(
                &mut model,
                &mut opt,
                &used,
                &cfg,
                &lay,
                0.5,
                &mut Rng::new(1),
            );
            assert_eq!(per, vec![0, k], "codebook 1's rows are replaced either way");
            let cb = model.codebooks_mut().clone();
            assert_eq!(cb[..k * cw], before[..k * cw], "codebook 0 is untouched");
            for j in k..2 * k {
                let row = &cb[j * cw..(j + 1) * cw];
                let dist = |src: &[f32]| norm(row.iter().zip(src).map(|(a, b)| a - b));
                let nearest0 = (0..k)
                    .map(|i| dist(&before[i * cw..(i + 1) * cw]))
                    .fold(f32::MAX, f32::min);
                let own = dist(&before[j * cw..(j + 1) * cw]);
                if pooled {
                    assert!(
                        nearest0 < 0.5,
                        "row {j} copies a codebook-0 row ({nearest0})"
                    );
                } else {
                    assert!(own < 0.5 && nearest0 > 1.0, "row {j} stays where it was");
                }
            }
        }
    }

    #[test]
    fn pvq_refuses_pooled_replacement() {
        let mut cfg = NsvqConfig::new(NsvqMethod::Pvq, 2, 4);
        cfg.pooled_replacement = true;
        assert!(matches!(
            cfg.validate(),
            Err(Error::InvalidParameter { .. })
        ));
    }

    #[test]
    fn kept_moments_survive_a_replacement_and_reset_ones_do_not() {
        let (k, cw) = (4, 2);
        // Rows 1 and 3 of the single codebook unused.
        let used = vec![10u32, 0, 10, 0];
        for keep in [false, true] {
            let (mut model, mut opt, lay, mut cfg) = toy(NsvqMethod::Rvq, 1, k);
            cfg.keep_moments = keep;
            replace(
                &mut model,
                &mut opt,
                &used,
                &cfg,
                &lay,
                0.5,
                &mut Rng::new(2),
            );
            for (j, &u) in used.iter().enumerate() {
                let m = &opt.m[j * cw..(j + 1) * cw];
                let v = &opt.v[j * cw..(j + 1) * cw];
                let reset = u == 0 && !keep;
                let want = if reset { 0.0 } else { 1.0 };
                assert!(m.iter().chain(v).all(|&a| a == want), "keep {keep} row {j}");
            }
        }
    }

    #[test]
    fn stop_replacement_leaves_the_last_two_windows_alone() {
        let b = CpuBackend::new(Some(1)).unwrap();
        // 32 codewords for 6 clusters, and a threshold no code meets in every batch: every
        // replacement point replaces something.
        let x = data(400, 4);
        let nb = 3;
        let total = 4 * 400usize.div_ceil(40);
        for stop in [false, true] {
            let mut cfg = NsvqConfig::new(NsvqMethod::Rvq, 1, 32);
            (cfg.epochs, cfg.batch, cfg.init_iters) = (4, 40, 0);
            cfg.replace = Some((1.0, nb));
            cfg.stop_replacement = stop;
            let mut at = Vec::new();
            train_observed(
                &b,
                &x,
                4,
                &cfg,
                &mut |l| {
                    if l.replaced[0] > 0 {
                        at.push(l.batch);
                    }
                },
                &mut |_, _| {},
            )
            .unwrap();
            // Replacement points: batches nb - 1, 2 nb - 1, ... (from 0).
            let points: Vec<usize> = (nb - 1..total).step_by(nb).collect();
            let expect: Vec<usize> = points
                .into_iter()
                .filter(|&t| !stop || t + 2 * nb <= total)
                .collect();
            assert_eq!(at, expect, "stop {stop}");
            if stop {
                assert!(at.iter().all(|&t| t + 2 * nb <= total));
            } else {
                assert!(at.iter().any(|&t| t + 2 * nb > total));
            }
        }
    }
}
