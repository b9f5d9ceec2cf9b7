//! VQ-VAE (van den Oord et al. 2017) and RQ-VAE (Lee et al. 2022) on the hand-written
//! encoder and decoder of [`super::model`], with the quantizer layer of [`vqkit::quant::vq`].
//!
//! ```text
//! z_e  = encoder(x)                       (n, D, h, w), permuted to rows r_0 (n h w, D)
//! q_s  = VQ_s(r_s),  r_{s+1} = r_s - q_s  for s = 0 .. S-1   (S = 1: plain VQ-VAE)
//! z_q  = z_e + sg(sum_s q_s - z_e)        straight-through estimator
//! x^   = decoder(z_q)
//! L    = mean (x^ - x)^2 + sum_s [ mean (sg(r_s) - q_s)^2 ] + beta sum_s mean (r_s - sg(q_s))^2
//! ```
//! The codebook term is absent with EMA codebooks. Because `r_s = z_e - sum_{t<s} sg(q_t)`,
//! `dr_s / dz_e = I` and backward is
//! `dz_e = dz_q + sum_s 2 beta (r_s - q_s) / (n h w D)`; the codebook rows get
//! `2 (q_s - r_s) / (n h w D)` in codebook-loss mode.
//!
//! NSVQ (Vali and Backstrom) instead feeds the decoder `z^ = z_e - |z_e - q| u` per row
//! (`q = sum_s q_s`, `u` a random unit vector) while training, so gradients reach every
//! stage's codeword through `|z_e - q|` ([`vqkit::quant::nsvq::substitute_backward`]); there
//! is no commitment or codebook loss. At evaluation the decoder always sees `q`.
//!
//! Codebooks learned by gradient (codebook loss, NSVQ) are [`Param`]s handed to the same
//! optimiser as the convolutions; they are copied into the quantizer layers before each
//! forward and back after it (k-means initialisation and dead-code replacement change them).

use super::model::{ConvNetConfig, Decoder, Encoder};
use super::tensor::{Param, Tensor};
use super::{Layer, mse_loss};
use vqkit::backend::Backend;
use vqkit::quant::code_stats;
use vqkit::quant::model_io::TensorFile;
use vqkit::quant::nsvq::{substitute_backward, unit};
use vqkit::quant::vq::{CodebookUpdate, DeadCodes, VectorQuantizer, VqConfig, VqOutput};
use vqkit::rng::Rng;
use vqkit::{Error, Result};

/// How the codebooks learn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantizerKind {
    /// Straight-through estimator, EMA codebooks (decay `ema_decay`, 0.8 by default).
    Ema,
    /// Straight-through estimator, codebooks trained by the codebook loss.
    Codebook,
    /// Noise substitution; codebooks trained by the reconstruction loss.
    Nsvq,
}

vqkit::impl_choice!(QuantizerKind, "quantizer", { Ema => "ema", Codebook => "codebook", Nsvq => "nsvq" });

/// When NSVQ's quantizer replaces unused codes (with `dead_code_threshold > 0`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NsvqSchedule {
    /// vqkit's: every 100 batches, the codes used in fewer than 3% of them.
    #[default]
    Frequent,
    /// The published NSVQ code's: every 1000 batches, codes used in fewer than 1% of them.
    Published,
}

vqkit::impl_choice!(NsvqSchedule, "nsvq schedule", { Frequent => "frequent", Published => "published" });

impl NsvqSchedule {
    /// `(discard_threshold, num_batches)`.
    pub fn rule(self) -> (f32, usize) {
        match self {
            NsvqSchedule::Frequent => (0.03, 100),
            NsvqSchedule::Published => (0.01, 1000),
        }
    }
}

/// Hyper-parameters of a [`VqVae`] (one level) or [`RqVae`] (several).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VqVaeConfig {
    pub in_channels: usize,
    pub hidden_dims: Vec<usize>,
    pub num_residual_layers: usize,
    pub residual_hidden: usize,
    pub embedding_dim: usize,
    /// K, codewords per level.
    pub num_embeddings: usize,
    /// beta.
    pub commitment_cost: f32,
    pub quantizer: QuantizerKind,
    /// EMA decay of the codebooks (EMA mode) and of the usage counts dead codes are
    /// judged by.
    pub ema_decay: f32,
    /// S, residual levels (1 for a VQ-VAE).
    pub num_quantizers: usize,
    /// One codebook for every level.
    pub shared_codebook: bool,
    /// Dead-code replacement: EMA-size threshold (EMA, codebook) or NSVQ's periodic
    /// replacement; `0` turns it off.
    pub dead_code_threshold: f32,
    pub seed: u64,
    /// NSVQ's replacement schedule (NSVQ quantizer only).
    #[serde(default)]
    pub nsvq_schedule: NsvqSchedule,
}

impl VqVaeConfig {
    /// The VQ-VAE paper's settings scaled to 28 x 28 images: hidden (64, 128), two residual
    /// layers of 32 channels, D = 64, beta = 0.25, EMA with decay 0.8, dead-code threshold 1.
    pub fn new(in_channels: usize, num_embeddings: usize, num_quantizers: usize) -> Self {
        VqVaeConfig {
            in_channels,
            hidden_dims: vec![64, 128],
            num_residual_layers: 2,
            residual_hidden: 32,
            embedding_dim: 64,
            num_embeddings,
            commitment_cost: 0.25,
            quantizer: QuantizerKind::Ema,
            ema_decay: 0.8,
            num_quantizers,
            shared_codebook: false,
            dead_code_threshold: 1.0,
            seed: 0,
            nsvq_schedule: NsvqSchedule::default(),
        }
    }

    pub fn net(&self) -> ConvNetConfig {
        ConvNetConfig {
            in_channels: self.in_channels,
            hidden_dims: self.hidden_dims.clone(),
            num_residual_layers: self.num_residual_layers,
            residual_hidden: self.residual_hidden,
            embedding_dim: self.embedding_dim,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.net().validate()?;
        if self.num_quantizers == 0 {
            return Err(Error::invalid("num_quantizers", "must be at least 1"));
        }
        if !(self.dead_code_threshold.is_finite() && self.dead_code_threshold >= 0.0) {
            return Err(Error::invalid(
                "dead_code_threshold",
                "must be a non-negative number",
            ));
        }
        self.vq_config(0).validate()
    }

    /// The layer configuration of level `s`.
    fn vq_config(&self, s: usize) -> VqConfig {
        let mut c = VqConfig::new(self.num_embeddings, self.embedding_dim);
        c.seed = vqkit::quant::sub_seed(self.seed, 1000 + s as u64);
        c.commitment = self.commitment_cost;
        c.dead_codes = if self.dead_code_threshold == 0.0 {
            DeadCodes::Off
        } else {
            DeadCodes::EmaThreshold {
                threshold: self.dead_code_threshold,
            }
        };
        match self.quantizer {
            QuantizerKind::Ema => {
                c.update = CodebookUpdate::Ema {
                    decay: self.ema_decay,
                    eps: 1e-5,
                }
            }
            QuantizerKind::Codebook => c.update = CodebookUpdate::Loss,
            QuantizerKind::Nsvq => {
                c.update = CodebookUpdate::Loss;
                c.commitment = 0.0;
                if self.dead_code_threshold > 0.0 {
                    let (discard_threshold, num_batches) = self.nsvq_schedule.rule();
                    c.dead_codes = DeadCodes::Nsvq {
                        discard_threshold,
                        num_batches,
                        noise: 0.01,
                    };
                }
            }
        }
        c
    }

    /// Distinct codebooks: 1 when shared.
    fn codebooks(&self) -> usize {
        if self.shared_codebook {
            1
        } else {
            self.num_quantizers
        }
    }
}

/// What [`VqVae::forward`] returns.
#[derive(Clone, Debug)]
pub struct VqVaeOutput {
    /// x^ (n, C, H, W).
    pub recon: Tensor,
    /// mean (x^ - x)^2.
    pub recon_loss: f32,
    /// beta mean (r_s - sg(q_s))^2 summed over levels.
    pub commitment_loss: f32,
    /// mean (sg(r_s) - q_s)^2 summed over levels (codebook-loss mode only).
    pub codebook_loss: f32,
    /// Per level, over this batch.
    pub perplexity: Vec<f32>,
    pub usage: Vec<f32>,
    /// Per level, (n h w) codes in row order (image, y, x).
    pub indices: Vec<Vec<u32>>,
    /// Codes replaced after this batch, over all levels.
    pub replaced: usize,
    /// The same per level.
    pub replaced_levels: Vec<usize>,
}

impl VqVaeOutput {
    /// The training objective.
    pub fn loss(&self) -> f32 {
        self.recon_loss + self.commitment_loss + self.codebook_loss
    }
}

/// What backward needs from the last training forward.
struct Cache {
    /// r_s for each level, rows (n h w, D).
    residuals: Vec<Vec<f32>>,
    outs: Vec<VqOutput>,
    /// z_e rows, q = sum_s q_s, and the NSVQ directions (empty otherwise).
    z: Vec<f32>,
    q: Vec<f32>,
    noise: Vec<f32>,
    latent_shape: [usize; 4],
    drecon: Tensor,
}

/// Encoder -> S-level residual quantizer -> decoder. `S = 1` is the VQ-VAE.
pub struct VqVae {
    pub cfg: VqVaeConfig,
    pub encoder: Encoder,
    pub decoder: Decoder,
    /// One layer per distinct codebook (`VqVaeConfig::codebooks`).
    pub quantizers: Vec<VectorQuantizer>,
    /// The gradient-trained codebooks (codebook loss, NSVQ); empty with EMA.
    pub codebooks: Vec<Param>,
    rng: Rng,
    cache: Option<Cache>,
}

/// An RQ-VAE is a [`VqVae`] with `num_quantizers > 1`.
pub type RqVae = VqVae;

/// (n, D, h, w) -> rows (n h w, D).
pub fn nchw_to_rows(t: &Tensor) -> Vec<f32> {
    let [n, c, h, w] = t.shape;
    let p = h * w;
    let mut out = vec![0.0; t.len()];
    for i in 0..n {
        for ch in 0..c {
            let src = &t.data[(i * c + ch) * p..(i * c + ch + 1) * p];
            for (j, &v) in src.iter().enumerate() {
                out[(i * p + j) * c + ch] = v;
            }
        }
    }
    out
}

/// Rows (n h w, D) -> (n, D, h, w).
pub fn rows_to_nchw(rows: &[f32], shape: [usize; 4]) -> Result<Tensor> {
    let [n, c, h, w] = shape;
    let p = h * w;
    vqkit::backend::check_len("latent rows", rows.len(), n * c * p)?;
    let mut data = vec![0.0; rows.len()];
    for i in 0..n {
        for j in 0..p {
            for ch in 0..c {
                data[(i * c + ch) * p + j] = rows[(i * p + j) * c + ch];
            }
        }
    }
    Tensor::from_vec(shape, data)
}

impl VqVae {
    pub fn new(cfg: VqVaeConfig) -> Result<Self> {
        cfg.validate()?;
        // Each parameter is held four times in training (value, gradient, two Adam
        // moments); check that before allocating any of it.
        let codebooks =
            cfg.codebooks() as u128 * cfg.num_embeddings as u128 * cfg.embedding_dim as u128;
        vqkit::resources::ensure(
            "the model's parameters",
            (cfg.net().parameter_bound() + codebooks) * 4 * 4,
        )?;
        let mut rng = Rng::new(cfg.seed);
        let net = cfg.net();
        let encoder = Encoder::new(&net, &mut rng)?;
        let decoder = Decoder::new(&net, &mut rng)?;
        let quantizers = (0..cfg.codebooks())
            .map(|s| VectorQuantizer::new(cfg.vq_config(s)))
            .collect::<Result<Vec<_>>>()?;
        let codebooks = if cfg.quantizer == QuantizerKind::Ema {
            Vec::new()
        } else {
            quantizers
                .iter()
                .map(|q| Param::new(q.codebook.clone()))
                .collect()
        };
        Ok(VqVae {
            rng: Rng::new(vqkit::quant::sub_seed(cfg.seed, 7)),
            cfg,
            encoder,
            decoder,
            quantizers,
            codebooks,
            cache: None,
        })
    }

    /// Copies the gradient-trained codebooks (which the optimiser updates) into the
    /// quantizer layers that encode and decode with them.
    fn sync_codebooks(&mut self) {
        for (q, p) in self.quantizers.iter_mut().zip(&self.codebooks) {
            q.codebook.copy_from_slice(&p.value);
        }
    }

    /// Levels S.
    pub fn levels(&self) -> usize {
        self.cfg.num_quantizers
    }

    fn layer_of(&self, s: usize) -> usize {
        if self.cfg.shared_codebook { 0 } else { s }
    }

    /// Every trainable parameter in a fixed order: encoder, decoder, codebooks.
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = self.encoder.params_mut();
        v.extend(self.decoder.params_mut());
        v.extend(self.codebooks.iter_mut());
        v
    }

    pub fn zero_grad(&mut self) {
        self.params_mut().into_iter().for_each(Param::zero_grad);
    }

    /// z_e (n, D, h, w).
    pub fn encode(&mut self, x: &Tensor) -> Result<Tensor> {
        x.expect_shape("images", [x.n(), self.cfg.in_channels, x.h(), x.w()])?;
        self.encoder.forward(x)
    }

    /// x^ from a latent (n, D, h, w).
    pub fn decode(&mut self, z: &Tensor) -> Result<Tensor> {
        self.decoder.forward(z)
    }

    /// Codes per level, each (n h w) in row order, and the latent shape, without training.
    pub fn encode_to_indices<B: Backend>(
        &mut self,
        b: &B,
        x: &Tensor,
    ) -> Result<(Vec<Vec<u32>>, [usize; 4])> {
        self.sync_codebooks();
        let z = self.encode(x)?;
        let mut r = nchw_to_rows(&z);
        let d = self.cfg.embedding_dim;
        let mut codes = Vec::with_capacity(self.levels());
        for s in 0..self.levels() {
            let q = &self.quantizers[self.layer_of(s)];
            let idx = q.encode(b, &r)?;
            let qs = q.decode(&idx)?;
            r.iter_mut().zip(&qs).for_each(|(a, &v)| *a -= v);
            codes.push(idx);
            debug_assert_eq!(r.len() % d, 0);
        }
        Ok((codes, z.shape))
    }

    /// Sum of the first `levels` levels' codewords as a latent of `shape`.
    fn latent_from_indices(
        &self,
        codes: &[Vec<u32>],
        levels: usize,
        shape: [usize; 4],
    ) -> Result<Tensor> {
        if codes.len() < levels || codes.len() > self.levels() {
            return Err(Error::invalid(
                "codes",
                format!(
                    "{} levels given, the model has {}",
                    codes.len(),
                    self.levels()
                ),
            ));
        }
        let mut sum = vec![0.0f32; shape.iter().product()];
        for (s, c) in codes.iter().take(levels).enumerate() {
            let q = self.quantizers[self.layer_of(s)].decode(c)?;
            vqkit::backend::check_len("codes", q.len(), sum.len())?;
            sum.iter_mut().zip(&q).for_each(|(a, &v)| *a += v);
        }
        rows_to_nchw(&sum, shape)
    }

    /// x^ from the codes of every level (latent `shape` as [`Self::encode_to_indices`] gave).
    pub fn decode_from_indices(&mut self, codes: &[Vec<u32>], shape: [usize; 4]) -> Result<Tensor> {
        self.sync_codebooks();
        let z = self.latent_from_indices(codes, codes.len(), shape)?;
        self.decoder.forward(&z)
    }

    /// The reconstruction after each level: decoder(sum_{t <= s} q_t) for s = 0 .. S-1.
    pub fn reconstruct_levels<B: Backend>(&mut self, b: &B, x: &Tensor) -> Result<Vec<Tensor>> {
        let (codes, shape) = self.encode_to_indices(b, x)?;
        (1..=self.levels())
            .map(|l| {
                let z = self.latent_from_indices(&codes, l, shape)?;
                self.decoder.forward(&z)
            })
            .collect()
    }

    /// One forward pass with target `x` (reconstruction). With `train` the quantizers learn
    /// (k-means initialisation at the first batch, EMA, dead codes) and the pass is cached
    /// for [`Self::backward`].
    pub fn forward<B: Backend>(&mut self, b: &B, x: &Tensor, train: bool) -> Result<VqVaeOutput> {
        let z = self.encode(x)?;
        let rows = nchw_to_rows(&z);
        let d = self.cfg.embedding_dim;
        let n = rows.len() / d;
        let gradient_codebooks = !self.codebooks.is_empty();
        self.sync_codebooks();
        let mut residuals = Vec::with_capacity(self.levels());
        let mut outs = Vec::with_capacity(self.levels());
        let mut r = rows.clone();
        let mut qsum = vec![0.0f32; rows.len()];
        for s in 0..self.levels() {
            let layer = self.layer_of(s);
            let o = self.quantizers[layer].forward(b, &r, train)?;
            qsum.iter_mut()
                .zip(&o.quantized)
                .for_each(|(a, &v)| *a += v);
            let next: Vec<f32> = r.iter().zip(&o.quantized).map(|(&a, &v)| a - v).collect();
            residuals.push(std::mem::replace(&mut r, next));
            outs.push(o);
        }
        if gradient_codebooks && train {
            for (q, p) in self.quantizers.iter().zip(&mut self.codebooks) {
                p.value.copy_from_slice(&q.codebook);
            }
        }
        let nsvq = self.cfg.quantizer == QuantizerKind::Nsvq && train;
        let mut noise = Vec::new();
        let dec_in = if nsvq {
            let mut zh = Vec::with_capacity(rows.len());
            for i in 0..n {
                let u = unit(&mut self.rng, d);
                let row = i * d..(i + 1) * d;
                zh.extend(vqkit::quant::nsvq::substitute(
                    &rows[row.clone()],
                    &qsum[row],
                    &u,
                ));
                noise.extend(u);
            }
            zh
        } else {
            qsum.clone()
        };
        let recon = self.decoder.forward(&rows_to_nchw(&dec_in, z.shape)?)?;
        let (recon_loss, drecon) = mse_loss(&recon, x)?;
        let mut out = VqVaeOutput {
            recon,
            recon_loss,
            commitment_loss: outs.iter().map(|o| o.commitment_loss).sum(),
            codebook_loss: if self.cfg.quantizer == QuantizerKind::Codebook {
                outs.iter().map(|o| o.codebook_loss).sum()
            } else {
                0.0
            },
            perplexity: outs.iter().map(|o| o.perplexity).collect(),
            usage: outs.iter().map(|o| o.usage).collect(),
            indices: outs.iter().map(|o| o.indices.clone()).collect(),
            replaced: outs.iter().map(|o| o.replaced).sum(),
            replaced_levels: outs.iter().map(|o| o.replaced).collect(),
        };
        if self.cfg.quantizer == QuantizerKind::Nsvq {
            out.commitment_loss = 0.0;
        }
        self.cache = if train {
            Some(Cache {
                residuals,
                outs,
                z: rows,
                q: qsum,
                noise,
                latent_shape: z.shape,
                drecon,
            })
        } else {
            None
        };
        Ok(out)
    }

    /// Gradients of the last training forward's loss: the decoder's and encoder's
    /// parameters and the gradient-trained codebooks accumulate with `+=`.
    pub fn backward(&mut self) -> Result<()> {
        let c = self
            .cache
            .take()
            .ok_or_else(|| Error::invalid("backward", "called before a training forward"))?;
        let dzq = self.decoder.backward(&c.drecon)?;
        let dzq = nchw_to_rows(&dzq);
        let d = self.cfg.embedding_dim;
        let mut dz;
        if self.cfg.quantizer == QuantizerKind::Nsvq {
            // z^ = z - |z - q| u: dz and dq per row; dq reaches every level's codeword.
            dz = Vec::with_capacity(dzq.len());
            let mut dq = Vec::with_capacity(dzq.len());
            for (((zr, qr), ur), gr) in
                c.z.chunks_exact(d)
                    .zip(c.q.chunks_exact(d))
                    .zip(c.noise.chunks_exact(d))
                    .zip(dzq.chunks_exact(d))
            {
                let (a, b) = substitute_backward(zr, qr, ur, gr);
                dz.extend(a);
                dq.extend(b);
            }
            for (s, o) in c.outs.iter().enumerate() {
                let layer = self.layer_of(s);
                let g = &mut self.codebooks[layer].grad;
                for (i, &j) in o.indices.iter().enumerate() {
                    let j = j as usize;
                    for t in 0..d {
                        g[j * d + t] += dq[i * d + t];
                    }
                }
            }
        } else {
            // Straight-through: dz = dz_q, plus each level's commitment gradient.
            dz = dzq;
            let zeros = vec![0.0f32; dz.len()];
            for (s, (r, o)) in c.residuals.iter().zip(&c.outs).enumerate() {
                let layer = self.layer_of(s);
                let g = self.quantizers[layer].backward(r, o, &zeros)?;
                dz.iter_mut().zip(&g.dz).for_each(|(a, &v)| *a += v);
                if let (Some(dc), Some(p)) = (g.dcodebook, self.codebooks.get_mut(layer)) {
                    p.grad.iter_mut().zip(&dc).for_each(|(a, &v)| *a += v);
                }
            }
        }
        let dz = rows_to_nchw(&dz, c.latent_shape)?;
        self.encoder.backward_params(&dz)?;
        Ok(())
    }

    /// Test-set style statistics of codes: (perplexity, usage) per level.
    pub fn code_stats(&self, codes: &[Vec<u32>]) -> Vec<(f64, f64)> {
        codes
            .iter()
            .map(|c| code_stats(c, self.cfg.num_embeddings))
            .collect()
    }

    /// The model in a safetensors file of kind `vqvae`: the configuration as JSON in
    /// `vqkit.config`, parameters `encoder.{i}` / `decoder.{i}` (flat, in `params_mut`
    /// order), and per codebook `vq.{s}.codebook` (K, D), `vq.{s}.cluster_size`,
    /// `vq.{s}.embed_sum`.
    pub fn to_file(&mut self) -> Result<TensorFile> {
        self.sync_codebooks();
        let mut f = TensorFile::new("vqvae");
        let cfg = serde_json::to_string(&self.cfg)
            .map_err(|e| Error::invalid("config", e.to_string()))?;
        f.set("vqkit.config", cfg);
        f.set("levels", self.levels());
        for (i, p) in self.encoder.params_mut().into_iter().enumerate() {
            f.put(
                &format!("encoder.{i}"),
                vec![p.value.len()],
                p.value.clone(),
            );
        }
        for (i, p) in self.decoder.params_mut().into_iter().enumerate() {
            f.put(
                &format!("decoder.{i}"),
                vec![p.value.len()],
                p.value.clone(),
            );
        }
        let (k, d) = (self.cfg.num_embeddings, self.cfg.embedding_dim);
        for (s, q) in self.quantizers.iter().enumerate() {
            f.put(&format!("vq.{s}.codebook"), vec![k, d], q.codebook.clone());
            f.put(
                &format!("vq.{s}.cluster_size"),
                vec![k],
                q.cluster_size.clone(),
            );
            f.put(
                &format!("vq.{s}.embed_sum"),
                vec![k, d],
                q.embed_sum.clone(),
            );
            f.set(&format!("vq.{s}.initialised"), q.initialised);
        }
        Ok(f)
    }

    /// Reads a file written by [`Self::to_file`]; any disagreement is a format error.
    pub fn from_file(f: &TensorFile) -> Result<Self> {
        if f.kind()? != "vqvae" {
            return Err(f.err(format!("a {} model, not a vqvae", f.kind()?)));
        }
        let cfg: VqVaeConfig = serde_json::from_str(&f.get::<String>("vqkit.config")?)
            .map_err(|e| f.err(format!("metadata `vqkit.config`: {e}")))?;
        let mut m = VqVae::new(cfg).map_err(|e| f.err(format!("configuration: {e}")))?;
        for (prefix, params) in [
            ("encoder", m.encoder.params_mut()),
            ("decoder", m.decoder.params_mut()),
        ] {
            for (i, p) in params.into_iter().enumerate() {
                let len = p.value.len();
                p.value
                    .copy_from_slice(f.tensor(&format!("{prefix}.{i}"), &[len])?);
            }
        }
        let (k, d) = (m.cfg.num_embeddings, m.cfg.embedding_dim);
        for (s, q) in m.quantizers.iter_mut().enumerate() {
            q.codebook = f.tensor(&format!("vq.{s}.codebook"), &[k, d])?.to_vec();
            q.cluster_size = f.tensor(&format!("vq.{s}.cluster_size"), &[k])?.to_vec();
            q.embed_sum = f.tensor(&format!("vq.{s}.embed_sum"), &[k, d])?.to_vec();
            q.initialised = f.get(&format!("vq.{s}.initialised"))?;
        }
        for (p, q) in m.codebooks.iter_mut().zip(&m.quantizers) {
            p.value.copy_from_slice(&q.codebook);
        }
        Ok(m)
    }
}
