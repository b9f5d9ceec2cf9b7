//! The vector-quantization layer of a VQ-VAE (van den Oord et al. 2017), with the training
//! devices users know from vector-quantize-pytorch and NSVQ.
//!
//! Forward, for encoder outputs `z` (n, d) and codebook `E` (K, d):
//!
//! ```text
//! a_i   = argmin_j |z_i - e_j|^2                 (or max cosine: L2 on unit vectors)
//! q_i   = e_{a_i}
//! L_commit = beta * mean (z - sg(q))^2           (mean over all n d elements)
//! L_code   = mean (sg(z) - q)^2                  (codebook-loss mode only)
//! out   = z + sg(q - z)                          (straight-through: forward value q)
//! ```
//!
//! Backward, given `dL/dq` for the layer's output:
//!
//! ```text
//! dL/dz   = dL/dq + 2 beta (z - q) / (n d)                          (straight-through)
//! dL/de_j = sum_{a_i = j} 2 (q_i - z_i) / (n d)                      (codebook-loss mode)
//! ```
//!
//! With cosine distance the layer normalises `u = z / |z|` and the codewords first; `q` is a
//! unit codeword, losses are on `u`, and `dL/dz = (I - u u^T) / |z| . dL/du`.
//!
//! Codebook learning: EMA (the backend's `ema_update` kernel: decay, Laplace-smoothed
//! counts with epsilon), or the codebook loss with gradients from [`VectorQuantizer::backward`].
//!
//! Dead codes, two styles:
//! - EMA threshold (vector-quantize-pytorch): a code whose EMA cluster size falls below
//!   `threshold` is replaced by a random vector of the current batch (its size reset to the
//!   threshold, its running sum to vector x threshold, so the EMA starts from it).
//! - NSVQ's `replace_unused_codebooks`: every `num_batches` training batches, codes hit in
//!   fewer than a fraction `discard_threshold` of those batches become copies of randomly
//!   chosen used codes plus small Gaussian noise (relative scale `noise`).

use super::Decoder;
use super::code_stats;
use super::kmeans::{KMeans, KMeansConfig};
use super::model_io::TensorFile;
use crate::backend::{Backend, Code, EmaParams};
use crate::error::{Error, Result};
use crate::ops::{EmaState, assign, check_finite, ema_update, rows};
use crate::rng::Rng;

/// How codewords are compared with inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    /// Squared Euclidean distance.
    L2,
    /// Cosine similarity (Euclidean on unit vectors).
    Cosine,
}

crate::impl_choice!(Distance, "distance", { L2 => "l2", Cosine => "cosine" });

/// How the codebook learns.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum CodebookUpdate {
    /// Exponential moving averages of assigned vectors (no codebook gradient).
    Ema { decay: f32, eps: f32 },
    /// The codebook loss `mean (sg(z) - q)^2`; the caller applies the gradient.
    Loss,
}

/// Dead-code replacement.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum DeadCodes {
    Off,
    /// Replace codes whose EMA cluster size is below `threshold` by batch vectors.
    EmaThreshold {
        threshold: f32,
    },
    /// NSVQ's replacement of codes used in fewer than `discard_threshold` of the last
    /// `num_batches` batches.
    Nsvq {
        discard_threshold: f32,
        num_batches: usize,
        noise: f32,
    },
}

/// Hyper-parameters of a [`VectorQuantizer`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VqConfig {
    /// Codewords.
    pub k: usize,
    /// Vector dimension.
    pub d: usize,
    /// beta, the commitment cost (0.25 in the VQ-VAE paper).
    pub commitment: f32,
    pub update: CodebookUpdate,
    /// Fit the codebook by k-means to the first training batch (it needs at least k rows).
    pub kmeans_init: bool,
    pub kmeans_iters: usize,
    pub distance: Distance,
    pub dead_codes: DeadCodes,
    pub seed: u64,
}

impl VqConfig {
    pub fn new(k: usize, d: usize) -> Self {
        VqConfig {
            k,
            d,
            commitment: 0.25,
            update: CodebookUpdate::Ema {
                decay: 0.99,
                eps: 1e-5,
            },
            kmeans_init: true,
            kmeans_iters: 10,
            distance: Distance::L2,
            dead_codes: DeadCodes::Off,
            seed: 0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.k == 0 {
            return Err(Error::EmptyCodebook);
        }
        if self.d == 0 {
            return Err(Error::ZeroDimension);
        }
        if !(self.commitment.is_finite() && self.commitment >= 0.0) {
            return Err(Error::invalid(
                "commitment",
                "must be a non-negative number",
            ));
        }
        if let CodebookUpdate::Ema { decay, eps } = self.update {
            EmaParams { decay, eps }.validate()?;
        }
        match self.dead_codes {
            DeadCodes::EmaThreshold { threshold }
                if !(threshold.is_finite() && threshold >= 0.0) =>
            {
                Err(Error::invalid("threshold", "must be a non-negative number"))
            }
            DeadCodes::Nsvq {
                discard_threshold,
                num_batches,
                noise,
            } if !(0.0..=1.0).contains(&discard_threshold)
                || num_batches == 0
                || !(noise.is_finite() && noise >= 0.0) =>
            {
                Err(Error::invalid(
                    "nsvq replacement",
                    "discard_threshold must be in [0, 1], num_batches >= 1, noise >= 0",
                ))
            }
            _ => Ok(()),
        }
    }
}

/// What one forward pass returns.
#[derive(Clone, Debug, PartialEq)]
pub struct VqOutput {
    /// `q` (n, d): the straight-through output's forward value.
    pub quantized: Vec<f32>,
    pub indices: Vec<u32>,
    /// `beta * mean (z - sg(q))^2`.
    pub commitment_loss: f32,
    /// `mean (sg(z) - q)^2` in codebook-loss mode, 0 with EMA.
    pub codebook_loss: f32,
    /// `exp(entropy)` of the batch's code histogram.
    pub perplexity: f32,
    /// Fraction of codes used by the batch.
    pub usage: f32,
    /// Codes replaced after this batch.
    pub replaced: usize,
}

impl VqOutput {
    /// `commitment_loss + codebook_loss`.
    pub fn loss(&self) -> f32 {
        self.commitment_loss + self.codebook_loss
    }
}

/// Gradients from [`VectorQuantizer::backward`].
#[derive(Clone, Debug, PartialEq)]
pub struct VqGrads {
    /// `dL/dz` (n, d): the straight-through gradient plus the commitment term.
    pub dz: Vec<f32>,
    /// `dL/dE` (K, d) from the codebook loss; `None` with EMA updates.
    pub dcodebook: Option<Vec<f32>>,
}

/// The VQ layer's state.
#[derive(Clone, Debug)]
pub struct VectorQuantizer {
    pub cfg: VqConfig,
    /// (K, d); unit rows with cosine distance.
    pub codebook: Vec<f32>,
    /// EMA cluster sizes (K) and running sums (K, d); also kept in codebook-loss mode, for
    /// the threshold style of dead-code replacement.
    pub cluster_size: Vec<f32>,
    pub embed_sum: Vec<f32>,
    pub initialised: bool,
    /// Per code, in how many batches it was used since the last NSVQ replacement.
    pub batches_used: Vec<u32>,
    pub batches_seen: usize,
    rng: Rng,
}

/// Equal state: configuration, codebook, EMA statistics (not the random stream's position).
impl PartialEq for VectorQuantizer {
    fn eq(&self, o: &Self) -> bool {
        self.cfg == o.cfg
            && self.codebook == o.codebook
            && self.cluster_size == o.cluster_size
            && self.embed_sum == o.embed_sum
            && self.initialised == o.initialised
    }
}

/// `v / |v|` per row; a zero row stays zero. Returns the norms.
fn normalise_rows(v: &mut [f32], d: usize) -> Vec<f32> {
    v.chunks_exact_mut(d)
        .map(|r| {
            let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            if n > 0.0 {
                r.iter_mut().for_each(|x| *x /= n);
            }
            n
        })
        .collect()
}

impl VectorQuantizer {
    /// A layer with a seeded N(0, 1) codebook (replaced by k-means at the first batch when
    /// `kmeans_init`).
    pub fn new(cfg: VqConfig) -> Result<Self> {
        cfg.validate()?;
        // The codebook, its EMA sums and gradient, and per-code state.
        crate::resources::ensure(
            "the quantizer's codebook",
            crate::resources::bytes_of::<f32>(cfg.k.saturating_mul(cfg.d)) * 4,
        )?;
        let mut rng = Rng::new(cfg.seed);
        let mut codebook = rng.normal_vec(cfg.k * cfg.d);
        if cfg.distance == Distance::Cosine {
            normalise_rows(&mut codebook, cfg.d);
        }
        Ok(VectorQuantizer {
            cluster_size: vec![0.0; cfg.k],
            embed_sum: codebook.clone(),
            codebook,
            initialised: !cfg.kmeans_init,
            batches_used: vec![0; cfg.k],
            batches_seen: 0,
            rng,
            cfg,
        })
    }

    /// The layer's input as the distance sees it: `z`, or `z / |z|` with cosine distance.
    fn prepare(&self, z: &[f32]) -> Vec<f32> {
        let mut u = z.to_vec();
        if self.cfg.distance == Distance::Cosine {
            normalise_rows(&mut u, self.cfg.d);
        }
        u
    }

    /// Nearest codes of `z` (n, d) under the layer's distance, without training.
    pub fn encode<B: Backend>(&self, b: &B, z: &[f32]) -> Result<Vec<u32>> {
        rows("inputs", z, self.cfg.d)?;
        check_finite("inputs", z)?;
        Ok(assign(b, &self.prepare(z), &self.codebook, self.cfg.d)?.indices)
    }

    /// Codewords for codes, rows in blocks on rayon's current pool.
    pub fn decode<C: Code>(&self, codes: &[C]) -> Result<Vec<f32>> {
        self.decoder().decode(codes)
    }

    /// [`VectorQuantizer::decode`] into `out`, which must hold `codes.len() * d` floats;
    /// everything is checked before anything is written.
    pub fn decode_into<C: Code>(&self, codes: &[C], out: &mut [f32]) -> Result<()> {
        self.decoder().decode_into(codes, out)
    }

    fn decoder(&self) -> Decoder<'_> {
        Decoder::copies("codebook", &self.codebook, (1, self.cfg.k, self.cfg.d))
    }

    /// One forward pass over a batch `z` (n, d). With `train`, the first batch initialises
    /// the codebook (k-means, if configured), EMA mode updates it, and dead codes are
    /// replaced; the returned `quantized` is always computed with the codebook before
    /// those updates, as the losses are.
    pub fn forward<B: Backend>(&mut self, b: &B, z: &[f32], train: bool) -> Result<VqOutput> {
        let d = self.cfg.d;
        let k = self.cfg.k;
        let n = rows("inputs", z, d)?;
        check_finite("inputs", z)?;
        let u = self.prepare(z);
        if train && !self.initialised {
            self.kmeans_init(b, &u)?;
        }
        let a = assign(b, &u, &self.codebook, d)?;
        let quantized = self.decode(&a.indices)?;
        let elems = (n * d).max(1) as f64;
        let mut sq = super::sums::RowSums::new();
        sq.add_sq_diff(&u, &quantized, d);
        let sq = sq.total() / elems;
        let (perplexity, usage) = code_stats(&a.indices, k);
        let mut out = VqOutput {
            quantized,
            commitment_loss: (self.cfg.commitment as f64 * sq) as f32,
            codebook_loss: match self.cfg.update {
                CodebookUpdate::Loss => sq as f32,
                CodebookUpdate::Ema { .. } => 0.0,
            },
            perplexity: perplexity as f32,
            usage: usage as f32,
            replaced: 0,
            indices: a.indices,
        };
        if train && n > 0 {
            self.train_step(b, &u, &out.indices)?;
            out.replaced = self.replace_dead(&u, &out.indices);
        }
        Ok(out)
    }

    fn kmeans_init<B: Backend>(&mut self, b: &B, u: &[f32]) -> Result<()> {
        let d = self.cfg.d;
        let mut kc = KMeansConfig::new(self.cfg.k);
        kc.iters = self.cfg.kmeans_iters;
        kc.seed = self.cfg.seed;
        let (km, _) = KMeans::fit(b, u, d, &kc)?;
        self.codebook = km.centroids;
        if self.cfg.distance == Distance::Cosine {
            normalise_rows(&mut self.codebook, d);
        }
        // Start the EMA from the k-means clusters: sizes are their counts, sums match.
        let a = assign(b, u, &self.codebook, d)?;
        self.cluster_size = vec![0.0; self.cfg.k];
        for &j in &a.indices {
            self.cluster_size[j as usize] += 1.0;
        }
        self.embed_sum = self
            .codebook
            .chunks_exact(d)
            .zip(&self.cluster_size)
            .flat_map(|(c, &s)| c.iter().map(move |v| v * s))
            .collect();
        self.initialised = true;
        Ok(())
    }

    fn train_step<B: Backend>(&mut self, b: &B, u: &[f32], idx: &[u32]) -> Result<()> {
        let d = self.cfg.d;
        match self.cfg.update {
            CodebookUpdate::Ema { decay, eps } => {
                let mut st = EmaState {
                    cluster_size: std::mem::take(&mut self.cluster_size),
                    embed_sum: std::mem::take(&mut self.embed_sum),
                    codebook: std::mem::take(&mut self.codebook),
                };
                let r = ema_update(b, u, idx, d, EmaParams { decay, eps }, &mut st);
                self.cluster_size = st.cluster_size;
                self.embed_sum = st.embed_sum;
                self.codebook = st.codebook;
                r?;
                if self.cfg.distance == Distance::Cosine {
                    normalise_rows(&mut self.codebook, d);
                }
            }
            CodebookUpdate::Loss => {
                // Sizes only, for the threshold style of replacement (decay 0.99).
                let mut counts = vec![0.0f32; self.cfg.k];
                for &j in idx {
                    counts[j as usize] += 1.0;
                }
                for (s, c) in self.cluster_size.iter_mut().zip(counts) {
                    *s = 0.99 * *s + 0.01 * c;
                }
            }
        }
        Ok(())
    }

    /// Dead-code replacement after a training batch; returns how many were replaced.
    fn replace_dead(&mut self, u: &[f32], idx: &[u32]) -> usize {
        let d = self.cfg.d;
        let n = idx.len();
        match self.cfg.dead_codes {
            DeadCodes::Off => 0,
            DeadCodes::EmaThreshold { threshold } => {
                let mut replaced = 0;
                for j in 0..self.cfg.k {
                    if self.cluster_size[j] < threshold {
                        let i = self.rng.below(n);
                        let src = &u[i * d..(i + 1) * d];
                        self.codebook[j * d..(j + 1) * d].copy_from_slice(src);
                        for (e, &v) in self.embed_sum[j * d..(j + 1) * d].iter_mut().zip(src) {
                            *e = v * threshold;
                        }
                        self.cluster_size[j] = threshold;
                        replaced += 1;
                    }
                }
                replaced
            }
            DeadCodes::Nsvq {
                discard_threshold,
                num_batches,
                noise,
            } => {
                let mut hit = vec![false; self.cfg.k];
                for &j in idx {
                    hit[j as usize] = true;
                }
                for (c, h) in self.batches_used.iter_mut().zip(hit) {
                    *c += h as u32;
                }
                self.batches_seen += 1;
                if self.batches_seen < num_batches {
                    return 0;
                }
                let r = replace_unused(
                    &mut self.codebook,
                    d,
                    &self.batches_used,
                    self.batches_seen,
                    discard_threshold,
                    noise,
                    &mut self.rng,
                );
                for &j in &r {
                    // Restart the replaced code's EMA from its new value.
                    let s = self.cluster_size[j].max(1.0);
                    self.cluster_size[j] = s;
                    for t in 0..d {
                        self.embed_sum[j * d + t] = self.codebook[j * d + t] * s;
                    }
                }
                if self.cfg.distance == Distance::Cosine {
                    normalise_rows(&mut self.codebook, d);
                }
                self.batches_used.fill(0);
                self.batches_seen = 0;
                r.len()
            }
        }
    }

    /// Gradients for a forward pass `out` of inputs `z`, given `dquantized = dL/dq` for the
    /// layer's output (see the module docs for the formulas).
    pub fn backward(&self, z: &[f32], out: &VqOutput, dquantized: &[f32]) -> Result<VqGrads> {
        let d = self.cfg.d;
        let n = rows("inputs", z, d)?;
        crate::backend::check_len("dquantized", dquantized.len(), n * d)?;
        crate::backend::check_len("quantized", out.quantized.len(), n * d)?;
        let u = self.prepare(z);
        let scale = 2.0 / (n * d).max(1) as f32;
        let beta = self.cfg.commitment;
        // dL/du: straight-through plus the commitment term.
        let mut du: Vec<f32> = dquantized
            .iter()
            .zip(u.iter().zip(&out.quantized))
            .map(|(&g, (&p, &q))| g + beta * scale * (p - q))
            .collect();
        if self.cfg.distance == Distance::Cosine {
            // du/dz = (I - u u^T) / |z|.
            for ((g, ur), zr) in du
                .chunks_exact_mut(d)
                .zip(u.chunks_exact(d))
                .zip(z.chunks_exact(d))
            {
                let norm = zr.iter().map(|v| v * v).sum::<f32>().sqrt();
                if norm > 0.0 {
                    let proj: f32 = g.iter().zip(ur).map(|(a, b)| a * b).sum();
                    for (gi, &ui) in g.iter_mut().zip(ur) {
                        *gi = (*gi - proj * ui) / norm;
                    }
                }
            }
        }
        let dcodebook = match self.cfg.update {
            CodebookUpdate::Ema { .. } => None,
            CodebookUpdate::Loss => {
                let mut g = vec![0.0f32; self.cfg.k * d];
                for (i, &j) in out.indices.iter().enumerate() {
                    let j = j as usize;
                    for t in 0..d {
                        g[j * d + t] += scale * (out.quantized[i * d + t] - u[i * d + t]);
                    }
                }
                Some(g)
            }
        };
        Ok(VqGrads { dz: du, dcodebook })
    }

    pub fn to_file(&self) -> TensorFile {
        let mut f = TensorFile::new("vq");
        let (k, d) = (self.cfg.k, self.cfg.d);
        f.set("d", d);
        f.set("k", k);
        f.set("initialised", self.initialised);
        f.set(
            "vqkit.config",
            serde_json::to_string(&self.cfg).unwrap_or_default(),
        );
        f.put("codebook", vec![k, d], self.codebook.clone());
        f.put("cluster_size", vec![k], self.cluster_size.clone());
        f.put("embed_sum", vec![k, d], self.embed_sum.clone());
        f
    }

    pub fn from_file(f: &TensorFile) -> Result<Self> {
        let cfg: VqConfig = serde_json::from_str(&f.get::<String>("vqkit.config")?)
            .map_err(|e| f.err(format!("metadata `vqkit.config`: {e}")))?;
        cfg.validate()?;
        let (k, d) = (cfg.k, cfg.d);
        if f.get::<usize>("k")? != k || f.get::<usize>("d")? != d {
            return Err(f.err("metadata k, d disagree with `vqkit.config`"));
        }
        // Check the tensors against k and d before allocating anything of that size.
        let codebook = f.tensor("codebook", &[k, d])?.to_vec();
        let mut q = VectorQuantizer::new(cfg)?;
        q.codebook = codebook;
        q.cluster_size = f.tensor("cluster_size", &[k])?.to_vec();
        q.embed_sum = f.tensor("embed_sum", &[k, d])?.to_vec();
        q.initialised = f.get("initialised")?;
        Ok(q)
    }
}

/// NSVQ's replacement: codes used in fewer than `discard_threshold * batches` batches
/// become randomly chosen used codes plus Gaussian noise of standard deviation
/// `noise * rms(code)`. If no code is used, every code is perturbed instead. Returns the
/// replaced codes.
pub fn replace_unused(
    codebook: &mut [f32],
    d: usize,
    batches_used: &[u32],
    batches: usize,
    discard_threshold: f32,
    noise: f32,
    rng: &mut Rng,
) -> Vec<usize> {
    let limit = discard_threshold as f64 * batches as f64;
    let (unused, used): (Vec<usize>, Vec<usize>) =
        (0..batches_used.len()).partition(|&j| (batches_used[j] as f64) < limit);
    if unused.is_empty() {
        return unused;
    }
    if used.is_empty() {
        for v in codebook.iter_mut() {
            *v += noise * rng.normal() as f32;
        }
        return unused;
    }
    for &j in &unused {
        let src = used[rng.below(used.len())];
        let rms = (codebook[src * d..(src + 1) * d]
            .iter()
            .map(|v| v * v)
            .sum::<f32>()
            / d as f32)
            .sqrt()
            .max(1e-6);
        for t in 0..d {
            codebook[j * d + t] = codebook[src * d + t] + noise * rms * rng.normal() as f32;
        }
    }
    unused
}
