//! Training, evaluating and checkpointing a [`VqVae`] (or RQ-VAE) on an image set: the loop
//! behind `vqkit train-vqvae` and `vqkit reconstruct`, as a library, so that a program of
//! one's own trains exactly as the command does.
//!
//! An epoch visits the training images in the order [`epoch_order`] gives (a function of
//! the seed and the epoch alone), in batches of a fixed size, dropping the last partial
//! batch; each step runs forward, backward and one Adam step. A checkpoint is the model's
//! safetensors file ([`VqVae::to_file`]) with the optimiser's moments and the epochs done
//! added, so a run can be resumed where it stopped.

use crate::data::gather;
use crate::metrics::{psnr, ssim};
use crate::optim::Adam;
use crate::tensor::Tensor;
use crate::vqvae::VqVae;
use std::path::Path;
use std::time::Instant;
use vqkit::backend::Backend;
use vqkit::quant::model_io::TensorFile;
use vqkit::rng::Rng;
use vqkit::{Error, Result};

/// Runs `f` on a worker of a rayon pool of `threads` workers, or of rayon's global pool
/// when `None`. The layers split their work across rayon's current pool; run from a thread
/// outside it, each of their parallel regions would be handed to the pool and back.
pub fn with_threads<T: Send>(threads: Option<usize>, f: impl FnOnce() -> T + Send) -> Result<T> {
    match threads {
        None => Ok(rayon::scope(|_| f())),
        Some(0) => Err(Error::invalid("threads", "must be at least 1")),
        Some(t) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .map_err(|e| Error::invalid("threads", e.to_string()))?;
            Ok(pool.install(f))
        }
    }
}

/// The order in which epoch `epoch` visits `n` training images: a shuffle seeded by the
/// run's seed and the epoch.
pub fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(Rng::new(seed).next_u64() ^ epoch as u64).shuffle(&mut order);
    order
}

/// What one training step reports, for progress displays.
#[derive(Clone, Debug)]
pub struct StepReport<'a> {
    /// The step within the epoch, from 0.
    pub step: usize,
    pub loss: f32,
    pub recon_loss: f32,
    pub commitment_loss: f32,
    pub codebook_loss: f32,
    /// Perplexity of this batch's codes, per level.
    pub perplexity: &'a [f32],
    /// Fraction of the codebook this batch used, per level.
    pub usage: &'a [f32],
    /// Codes replaced after this batch, per level.
    pub replaced: &'a [usize],
    /// Images per second since the epoch started.
    pub images_per_second: f64,
}

/// Means over the steps of one epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochStats {
    pub loss: f64,
    pub recon_loss: f64,
    /// Mean batch perplexity, per level.
    pub perplexity: Vec<f64>,
    /// Dead codes replaced during the epoch.
    pub replaced: usize,
    /// Images trained on (whole batches only).
    pub images: usize,
    pub seconds: f64,
}

/// One epoch of training on the images of `train` in `order`, in batches of `batch` (the
/// last partial batch is dropped), calling `on_step` after every step. A loss that is not
/// finite stops training with an error; so does [`vqkit::interrupt::check`] asking to stop
/// (checked before every step).
#[allow(clippy::too_many_arguments)]
pub fn train_epoch<B: Backend>(
    b: &B,
    model: &mut VqVae,
    opt: &mut Adam,
    train: &Tensor,
    batch: usize,
    order: &[usize],
    epoch: usize,
    mut on_step: impl FnMut(&StepReport),
) -> Result<EpochStats> {
    if batch == 0 {
        return Err(Error::invalid("batch", "must be at least 1"));
    }
    let t0 = Instant::now();
    let (mut loss_sum, mut recon_sum) = (0.0f64, 0.0f64);
    let mut perp_sum = vec![0.0f64; model.levels()];
    let (mut replaced, mut steps) = (0, 0);
    for (step, idx) in order.chunks_exact(batch).enumerate() {
        vqkit::interrupt::check()?;
        let x = gather(train, idx)?;
        model.zero_grad();
        let out = model.forward(b, &x, true)?;
        model.backward()?;
        opt.step(&mut model.params_mut())?;
        if !out.loss().is_finite() {
            return Err(Error::invalid(
                "training",
                format!(
                    "the loss diverged at epoch {} step {step}; lower the learning rate (--lr)",
                    epoch + 1
                ),
            ));
        }
        loss_sum += out.loss() as f64;
        recon_sum += out.recon_loss as f64;
        for (a, &p) in perp_sum.iter_mut().zip(&out.perplexity) {
            *a += p as f64;
        }
        replaced += out.replaced;
        steps += 1;
        on_step(&StepReport {
            step,
            loss: out.loss(),
            recon_loss: out.recon_loss,
            commitment_loss: out.commitment_loss,
            codebook_loss: out.codebook_loss,
            perplexity: &out.perplexity,
            usage: &out.usage,
            replaced: &out.replaced_levels,
            images_per_second: ((step + 1) * batch) as f64 / t0.elapsed().as_secs_f64(),
        });
    }
    let n = steps.max(1) as f64;
    Ok(EpochStats {
        loss: loss_sum / n,
        recon_loss: recon_sum / n,
        perplexity: perp_sum.iter().map(|p| p / n).collect(),
        replaced,
        images: steps * batch,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Test-set figures of a model.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Metrics {
    pub mse: f64,
    /// Peak signal-to-noise ratio of `mse` for pixels in [0, 1], in dB.
    pub psnr: f64,
    /// Mean SSIM over images (channels averaged).
    pub ssim: f64,
    /// Perplexity of the codes over the whole set, per level.
    pub perplexity: Vec<f64>,
    /// Fraction of the codebook used over the whole set, per level.
    pub usage: Vec<f64>,
    pub bits_per_image: f64,
    /// Bits of an 8-bit image over `bits_per_image`.
    pub compression_ratio: f64,
}

/// MSE, PSNR and mean SSIM of the reconstructions, perplexity and usage of every level's
/// codes over the whole set, in batches of 256 without training.
pub fn evaluate<B: Backend>(b: &B, m: &mut VqVae, x: &Tensor) -> Result<Metrics> {
    let n = x.n();
    let (h, w) = (x.h(), x.w());
    let per = x.c() * h * w;
    let mut se = 0.0f64;
    let mut ssim_sum = 0.0f64;
    let mut codes: Vec<Vec<u32>> = vec![Vec::new(); m.levels()];
    let mut latent = 0;
    for start in (0..n).step_by(256) {
        let idx: Vec<usize> = (start..(start + 256).min(n)).collect();
        let batch = gather(x, &idx)?;
        let out = m.forward(b, &batch, false)?;
        se += out.recon_loss as f64 * batch.len() as f64;
        for (a, r) in batch
            .data
            .chunks_exact(per)
            .zip(out.recon.data.chunks_exact(per))
        {
            // Channels are averaged for SSIM (the datasets here have one).
            for c in 0..x.c() {
                let p = c * h * w..(c + 1) * h * w;
                ssim_sum += ssim(&a[p.clone()], &r[p], h, w) / x.c() as f64;
            }
        }
        latent = out.indices[0].len() / idx.len();
        for (all, lvl) in codes.iter_mut().zip(out.indices) {
            all.extend(lvl);
        }
    }
    let mse = se / (n * per).max(1) as f64;
    let stats = m.code_stats(&codes);
    let bits = (m.levels() * latent) as f64 * (m.cfg.num_embeddings as f64).log2();
    Ok(Metrics {
        mse,
        psnr: psnr(mse),
        ssim: ssim_sum / n.max(1) as f64,
        perplexity: stats.iter().map(|s| s.0).collect(),
        usage: stats.iter().map(|s| s.1).collect(),
        bits_per_image: bits,
        compression_ratio: (per * 8) as f64 / bits.max(f64::MIN_POSITIVE),
    })
}

/// A model with the optimiser state and the epochs done: what a resumed run starts from.
pub struct Checkpoint {
    pub model: VqVae,
    pub opt: Adam,
    pub epoch: usize,
}

/// Writes the model, the optimiser state and the epochs done to one safetensors file.
pub fn save_checkpoint(m: &mut VqVae, opt: &Adam, epoch: usize, path: &Path) -> Result<()> {
    let mut f = m.to_file()?;
    let (t, mm, vv) = opt.state();
    f.set("train.epoch", epoch);
    f.set("train.lr", opt.lr);
    f.set("adam.t", t);
    f.set("adam.tensors", mm.len());
    for (i, (a, b)) in mm.iter().zip(vv).enumerate() {
        f.put(&format!("adam.m.{i}"), vec![a.len()], a.clone());
        f.put(&format!("adam.v.{i}"), vec![b.len()], b.clone());
    }
    f.write(path)
}

/// Reads a checkpoint written by [`save_checkpoint`].
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    checkpoint_from_file(&TensorFile::read(path)?)
}

/// The checkpoint in a safetensors file already read (see [`load_checkpoint`]).
pub fn checkpoint_from_file(f: &TensorFile) -> Result<Checkpoint> {
    let mut model = VqVae::from_file(f)?;
    let mut opt = Adam::new(f.get("train.lr")?);
    let count: usize = f.get("adam.tensors")?;
    let lens: Vec<usize> = model.params_mut().iter().map(|p| p.value.len()).collect();
    if count != 0 && count != lens.len() {
        return Err(f.err(format!(
            "{count} optimiser tensors for {} parameters",
            lens.len()
        )));
    }
    let mut mm = Vec::with_capacity(count);
    let mut vv = Vec::with_capacity(count);
    for (i, &len) in lens.iter().enumerate().take(count) {
        mm.push(f.tensor(&format!("adam.m.{i}"), &[len])?.to_vec());
        vv.push(f.tensor(&format!("adam.v.{i}"), &[len])?.to_vec());
    }
    opt.set_state(f.get("adam.t")?, mm, vv)?;
    Ok(Checkpoint {
        model,
        opt,
        epoch: f.get("train.epoch")?,
    })
}

/// A grayscale picture of images above their reconstructions: row 0 holds the first
/// channel of each image of `x`, row r the same from `levels[r - 1]` (the reconstruction
/// after r levels of an RQ-VAE), every pixel magnified `scale` times, 2 pixels apart.
/// Returns `(width, height, pixels)` for [`vqkit::io::png::write_gray`].
pub fn reconstruction_grid(
    x: &Tensor,
    levels: &[Tensor],
    scale: usize,
) -> Result<(usize, usize, Vec<u8>)> {
    if scale == 0 {
        return Err(Error::invalid("scale", "must be at least 1"));
    }
    let (h, w) = (x.h(), x.w());
    for t in levels {
        if t.shape[0] != x.n() || t.h() != h || t.w() != w {
            return Err(Error::invalid(
                "reconstructions",
                format!(
                    "shape {:?} does not match the images' {:?}",
                    t.shape, x.shape
                ),
            ));
        }
    }
    let first_channel = |t: &Tensor| -> Vec<f32> {
        t.data
            .chunks_exact(t.c() * h * w)
            .flat_map(|img| img[..h * w].iter().copied())
            .collect()
    };
    let mut rows = vec![first_channel(x)];
    rows.extend(levels.iter().map(first_channel));
    let s = scale;
    let up: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| {
            r.chunks_exact(h * w)
                .flat_map(|img| {
                    (0..h * s)
                        .flat_map(move |y| (0..w * s).map(move |xx| img[(y / s) * w + xx / s]))
                })
                .collect()
        })
        .collect();
    Ok(vqkit::io::png::grid(&up, x.n(), h * s, w * s, 2))
}
