//! `vqkit train-vqvae` (train a VQ-VAE or RQ-VAE on MNIST-style IDX images, evaluate on the
//! test split, save a safetensors checkpoint that also holds the optimiser state) and
//! `vqkit reconstruct` (a PNG grid: originals above their reconstructions, one row per RQ
//! level).

use super::log::{self as trainlog, Interval, TrainLog, num, nums};
use super::{Common, choice};
use std::path::PathBuf;
use std::time::Instant;
use vqkit::backend::{Backend, WithBackend};
use vqkit::io::idx;
use vqkit::quant::model_io::TensorFile;
use vqkit::{Error, Result};
use vqkit_nn::data::{self, DEFAULT_DATA_DIR};
use vqkit_nn::train::{
    self, Checkpoint, Metrics, epoch_order, evaluate, load_checkpoint, save_checkpoint,
};
use vqkit_nn::{Adam, NsvqSchedule, QuantizerKind, Tensor, VqVae, VqVaeConfig};

/// `vqvae`: one quantizer; `rqvae`: a residual stack of `--levels` quantizers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    Vqvae,
    Rqvae,
}

vqkit::impl_choice!(ModelKind, "model", { Vqvae => "vqvae", Rqvae => "rqvae" });

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Directory with `train-images-idx3-ubyte[.gz]` and `t10k-images-idx3-ubyte[.gz]`.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data: PathBuf,
    /// vqvae, or rqvae (residual levels).
    #[arg(long, value_parser = choice::<ModelKind>(), default_value_t = ModelKind::Vqvae)]
    model: ModelKind,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Codewords per level (K).
    #[arg(long, default_value_t = 512)]
    codebook: usize,
    /// Residual levels (RQ-VAE; default 4). A VQ-VAE has one.
    #[arg(long)]
    levels: Option<usize>,
    /// ema (straight-through, EMA codebooks), codebook (codebook loss) or nsvq (noise
    /// substitution).
    #[arg(long, value_parser = choice::<QuantizerKind>(), default_value_t = QuantizerKind::Ema)]
    quantizer: QuantizerKind,
    /// EMA decay of the codebooks (0.8 as vector-quantize-pytorch: at 0.99 the codebook
    /// trails the moving encoder and most codes die in the first epoch).
    #[arg(long, default_value_t = 0.8)]
    decay: f32,
    /// One codebook for every RQ level.
    #[arg(long)]
    shared_codebook: bool,
    /// Replace codes whose EMA usage per batch falls below this (0: never).
    #[arg(long, default_value_t = 1.0)]
    dead_code_threshold: f32,
    /// NSVQ's replacement schedule: frequent (codes used in < 3% of 100 batches) or
    /// published (< 1% of 1000 batches).
    #[arg(long, value_parser = choice::<NsvqSchedule>(), default_value_t = NsvqSchedule::default())]
    nsvq_schedule: NsvqSchedule,
    /// Commitment cost beta.
    #[arg(long, default_value_t = 0.25)]
    beta: f32,
    #[arg(long, num_args = 1.., default_values_t = [64, 128])]
    hidden_dims: Vec<usize>,
    #[arg(long, default_value_t = 2)]
    residual_layers: usize,
    #[arg(long, default_value_t = 32)]
    residual_hidden: usize,
    /// Latent channels D (the codeword dimension).
    #[arg(long, default_value_t = 64)]
    embedding_dim: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// At most this many images of each split.
    #[arg(long)]
    limit: Option<usize>,
    /// Model and checkpoint (safetensors), rewritten after every epoch.
    #[arg(short, long)]
    output: PathBuf,
    /// Continue from a checkpoint written by this command (up to `--epochs` in total). The
    /// architecture, quantizer and learning rate come from the checkpoint; the random
    /// stream of dead-code replacement restarts, so a resumed run is not bit-identical to
    /// an uninterrupted one.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Write a training log here: JSON lines every --log-every batches and at each epoch's
    /// end (step: the batch index over all epochs), then a summary with the test figures.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Batches between two log lines within an epoch.
    #[arg(long, default_value_t = 50)]
    log_every: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct ReconstructArgs {
    /// A model written by `train-vqvae`.
    #[arg(short, long)]
    model: PathBuf,
    /// An IDX image file (gzipped or not), or an MNIST-style directory (its t10k split).
    #[arg(short, long)]
    input: PathBuf,
    /// Images in the grid.
    #[arg(short, default_value_t = 16)]
    n: usize,
    /// Pixel magnification.
    #[arg(long, default_value_t = 2)]
    scale: usize,
    /// Output PNG.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    common: Common,
}

struct TrainJob<'a> {
    args: &'a TrainArgs,
    train: &'a Tensor,
    test: &'a Tensor,
    model: VqVae,
    opt: Adam,
    start_epoch: usize,
    log: &'a TrainLog,
}

struct TrainOut {
    model: VqVae,
    opt: Adam,
    metrics: Metrics,
    train_loss: f64,
    images_per_second: f64,
    train_seconds: f64,
    backend: String,
}

fn fmt_list(v: &[f64], prec: usize) -> String {
    let s: Vec<String> = v.iter().map(|x| format!("{x:.prec$}")).collect();
    s.join(" ")
}

/// Adds one step's figures to the interval of the log.
fn accumulate(iv: &mut Interval, s: &train::StepReport) {
    let f = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| x as f64).collect() };
    iv.batches += 1;
    iv.add("loss", s.loss as f64);
    iv.add("recon_loss", s.recon_loss as f64);
    iv.add("commit_loss", s.commitment_loss as f64);
    iv.add("codebook_loss", s.codebook_loss as f64);
    iv.add_vec("perplexity", &f(s.perplexity), true);
    iv.add_vec("usage", &f(s.usage), true);
    let rep: Vec<f64> = s.replaced.iter().map(|&r| r as f64).collect();
    iv.add_vec("dead_replaced", &rep, false);
}

impl WithBackend for TrainJob<'_> {
    type Output = TrainOut;
    fn run<B: Backend>(self, b: &B) -> Result<TrainOut> {
        // This runs on the pool's thread that trains: the log's stop hook goes there.
        let log = self.log;
        log.guard(|| self.train(b))
    }
}

impl TrainJob<'_> {
    fn train<B: Backend>(self, b: &B) -> Result<TrainOut> {
        let TrainJob {
            args,
            train,
            test,
            mut model,
            mut opt,
            start_epoch,
            log,
        } = self;
        let n = train.n();
        let bs = args.batch;
        let batches = n / bs;
        let (mut seen, mut train_seconds, mut train_loss) = (0usize, 0.0f64, f64::NAN);
        for epoch in start_epoch..args.epochs {
            let order = epoch_order(args.seed, epoch, n);
            let bar = indicatif::ProgressBar::new(batches as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(format!("{}/{}", epoch + 1, args.epochs));
            let first = epoch * batches;
            let mut iv = Interval::default();
            let mut since = Instant::now();
            let line = |iv: &mut Interval, since: &mut Instant| {
                let images = (iv.batches * bs) as f64;
                let mut m = iv.take();
                m.insert(
                    "images_per_s".into(),
                    num(images / since.elapsed().as_secs_f64()),
                );
                *since = Instant::now();
                m
            };
            let stats =
                train::train_epoch(b, &mut model, &mut opt, train, bs, &order, epoch, |s| {
                    accumulate(&mut iv, s);
                    // The epoch's last step is logged with the epoch's means below.
                    if iv.batches == args.log_every && s.step + 1 < batches {
                        let m = line(&mut iv, &mut since);
                        log.record(first + s.step, Some(epoch), m);
                    }
                    bar.inc(1);
                    if s.step % 10 == 0 {
                        let perp: Vec<String> =
                            s.perplexity.iter().map(|p| format!("{p:.0}")).collect();
                        bar.set_message(format!(
                            "loss {:.4} perplexity {} {:.0} img/s",
                            s.loss,
                            perp.join("/"),
                            s.images_per_second
                        ));
                    }
                })?;
            bar.finish_and_clear();
            let mut m = line(&mut iv, &mut since);
            m.insert("epoch_loss".into(), num(stats.loss));
            m.insert("epoch_recon_loss".into(), num(stats.recon_loss));
            m.insert("epoch_perplexity".into(), nums(&stats.perplexity));
            log.record(first + batches.max(1) - 1, Some(epoch), m);
            train_seconds += stats.seconds;
            seen += stats.images;
            train_loss = stats.loss;
            println!(
                "epoch {}/{}: loss {:.5}  recon {:.5}  perplexity {}  replaced codes {}  {:.1} images/s",
                epoch + 1,
                args.epochs,
                train_loss,
                stats.recon_loss,
                fmt_list(&stats.perplexity, 1),
                stats.replaced,
                stats.images as f64 / stats.seconds
            );
            save_checkpoint(&mut model, &opt, epoch + 1, &args.output)?;
        }
        let metrics = evaluate(b, &mut model, test)?;
        Ok(TrainOut {
            model,
            opt,
            metrics,
            train_loss,
            images_per_second: seen as f64 / train_seconds.max(f64::MIN_POSITIVE),
            train_seconds,
            backend: b.name(),
        })
    }
}

pub fn train(args: TrainArgs) -> Result<()> {
    let t = Instant::now();
    if args.batch == 0 {
        return Err(Error::invalid("batch", "must be at least 1"));
    }
    if args.log_every == 0 {
        return Err(Error::invalid("log-every", "must be at least 1"));
    }
    let log = TrainLog::open(
        args.log.as_deref(),
        "train-vqvae",
        serde_json::json!({
            "data": args.data, "model": args.model.as_str(), "epochs": args.epochs,
            "batch": args.batch, "lr": trainlog::num32(args.lr), "codebook": args.codebook, "levels": args.levels,
            "quantizer": args.quantizer.as_str(), "decay": trainlog::num32(args.decay),
            "shared_codebook": args.shared_codebook,
            "dead_code_threshold": trainlog::num32(args.dead_code_threshold),
            "nsvq_schedule": args.nsvq_schedule.as_str(), "beta": trainlog::num32(args.beta),
            "hidden_dims": args.hidden_dims, "residual_layers": args.residual_layers,
            "residual_hidden": args.residual_hidden, "embedding_dim": args.embedding_dim,
            "seed": args.seed, "limit": args.limit, "resume": args.resume,
            "log_every": args.log_every, "backend": args.common.backend.to_string(),
            "threads": args.common.threads,
        }),
    )?;
    let levels = match (args.model, args.levels) {
        (ModelKind::Vqvae, None | Some(1)) => 1,
        (ModelKind::Vqvae, Some(l)) => {
            return Err(Error::invalid(
                "levels",
                format!("a VQ-VAE has one level, got {l}; use --model rqvae"),
            ));
        }
        (ModelKind::Rqvae, l) => l.unwrap_or(4),
    };
    let (train, test) = data::load_dataset(&args.data, args.limit)?;
    let (train, test) = (train.images, test.images);
    if train.n() < args.batch {
        return Err(Error::invalid(
            "batch",
            format!(
                "{} training images, fewer than one batch of {}",
                train.n(),
                args.batch
            ),
        ));
    }
    let (model, opt, start_epoch) = match &args.resume {
        Some(p) => {
            let Checkpoint { model, opt, epoch } = load_checkpoint(p)?;
            (model, opt, epoch)
        }
        None => {
            let cfg = VqVaeConfig {
                in_channels: train.c(),
                hidden_dims: args.hidden_dims.clone(),
                num_residual_layers: args.residual_layers,
                residual_hidden: args.residual_hidden,
                embedding_dim: args.embedding_dim,
                num_embeddings: args.codebook,
                commitment_cost: args.beta,
                quantizer: args.quantizer,
                ema_decay: args.decay,
                num_quantizers: levels,
                shared_codebook: args.shared_codebook,
                dead_code_threshold: args.dead_code_threshold,
                seed: args.seed,
                nsvq_schedule: args.nsvq_schedule,
            };
            (VqVae::new(cfg)?, Adam::new(args.lr), 0)
        }
    };
    // k-means initialisation fits K codewords to the first batch's latent rows.
    let down = 1usize << model.cfg.hidden_dims.len();
    let rows = args.batch * (train.h() / down) * (train.w() / down);
    if model.cfg.num_embeddings > rows {
        return Err(Error::invalid(
            "codebook",
            format!(
                "K = {} codewords need at least as many latent rows per batch ({rows} at --batch {})",
                model.cfg.num_embeddings, args.batch
            ),
        ));
    }
    let threads = args.common.threads;
    let job = TrainJob {
        args: &args,
        train: &train,
        test: &test,
        model,
        opt,
        start_epoch,
        log: &log,
    };
    let out = args.common.dispatch(job)?;
    let mut model = out.model;
    if start_epoch >= args.epochs {
        // Nothing trained: still leave a checkpoint where asked, a whole one (optimiser
        // state and epochs done included), so that it can be resumed from in turn.
        save_checkpoint(&mut model, &out.opt, start_epoch, &args.output)?;
    }
    let m = &out.metrics;
    let seconds = t.elapsed().as_secs_f64();
    let mut sm = trainlog::Metrics::new();
    sm.insert("train_loss".into(), num(out.train_loss));
    sm.insert("test_mse".into(), num(m.mse));
    sm.insert("test_psnr".into(), num(m.psnr));
    sm.insert("test_ssim".into(), num(m.ssim));
    sm.insert("perplexity".into(), nums(&m.perplexity));
    sm.insert("usage".into(), nums(&m.usage));
    sm.insert("bits_per_image".into(), num(m.bits_per_image));
    sm.insert("images_per_s".into(), num(out.images_per_second));
    sm.insert("seconds".into(), num(seconds));
    log.summary(sm)?;
    if args.common.json {
        let v = serde_json::json!({
            "command": "train-vqvae",
            "model": if levels > 1 { "rqvae" } else { "vqvae" },
            "quantizer": model.cfg.quantizer.as_str(),
            "backend": out.backend,
            "threads": threads,
            "epochs": args.epochs,
            "batch": args.batch,
            "lr": args.lr,
            "codebook": model.cfg.num_embeddings,
            "levels": model.levels(),
            "n_train": train.n(),
            "n_test": test.n(),
            "train_loss": out.train_loss,
            "images_per_second": out.images_per_second,
            "train_seconds": out.train_seconds,
            "test_mse": m.mse,
            "test_psnr": m.psnr,
            "test_ssim": m.ssim,
            "perplexity": m.perplexity,
            "usage": m.usage,
            "bits_per_image": m.bits_per_image,
            "compression_ratio": m.compression_ratio,
            "seconds": seconds,
            "output": args.output,
        });
        println!("{v}");
    } else {
        println!(
            "test ({} images): mse {:.5}  psnr {:.2} dB  ssim {:.4}",
            test.n(),
            m.mse,
            m.psnr,
            m.ssim
        );
        println!(
            "codes per level: perplexity {}  usage {}",
            fmt_list(&m.perplexity, 1),
            fmt_list(&m.usage, 3)
        );
        println!(
            "{:.0} bits per image, compression ratio {:.1}; training {:.1} images/s; {:.1} s in all",
            m.bits_per_image, m.compression_ratio, out.images_per_second, seconds
        );
        println!("model written to {}", args.output.display());
    }
    Ok(())
}

struct ReconJob<'a> {
    model: &'a mut VqVae,
    x: &'a Tensor,
}

impl WithBackend for ReconJob<'_> {
    type Output = Vec<Tensor>;
    fn run<B: Backend>(self, b: &B) -> Result<Vec<Tensor>> {
        self.model.reconstruct_levels(b, self.x)
    }
}

pub fn reconstruct(args: ReconstructArgs) -> Result<()> {
    if args.n == 0 || args.scale == 0 || args.scale > 16 {
        return Err(Error::invalid(
            "-n / --scale",
            "n >= 1 and 1 <= scale <= 16",
        ));
    }
    let mut model = VqVae::from_file(&TensorFile::read(&args.model)?)?;
    let x = if args.input.is_dir() {
        data::load_split(&args.input, "t10k", Some(args.n))?.images
    } else {
        data::to_tensor(&idx::read_images(&args.input, Some(args.n))?)
    };
    if x.c() != model.cfg.in_channels {
        return Err(Error::WrongDimension {
            expected: model.cfg.in_channels,
            got: x.c(),
        });
    }
    let levels = args.common.dispatch(ReconJob {
        model: &mut model,
        x: &x,
    })?;
    // Rows: originals, then the reconstruction after each level (the last is the model's).
    let (gw, gh, px) = train::reconstruction_grid(&x, &levels, args.scale)?;
    vqkit::io::png::write_gray(&args.output, gw, gh, &px)?;
    if args.common.json {
        let v = serde_json::json!({
            "command": "reconstruct", "images": x.n(), "levels": model.levels(),
            "width": gw, "height": gh, "output": args.output,
        });
        println!("{v}");
    } else {
        println!(
            "{} images, {} reconstruction row(s): {gw} x {gh} grid written to {}",
            x.n(),
            model.levels(),
            args.output.display()
        );
    }
    Ok(())
}
