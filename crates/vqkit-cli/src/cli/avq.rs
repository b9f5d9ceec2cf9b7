//! `vqkit avq` and `vqkit nsvq`: additive quantizers, and NSVQ training of RVQ, PVQ, AVQ.

use super::log::{Interval, Metrics, TrainLog, num, num32};
use super::rvq::{KmArgs, finish};
use super::{Common, Progress};
use std::path::PathBuf;
use std::time::Instant;
use vqkit::backend::{Backend, WithBackend};
use vqkit::io::{self, Matrix};
use vqkit::quant::avq::{Avq, AvqConfig};
use vqkit::quant::model_io::TensorFile;
use vqkit::quant::nsvq::{self, NoiseScope, NsvqConfig, NsvqInit, NsvqMethod, Optimizer, Trained};

#[derive(clap::Args)]
pub struct AvqArgs {
    /// Points: .npy or .fvecs, shape (n, d).
    #[arg(short, long)]
    input: PathBuf,
    /// Codebooks M.
    #[arg(short)]
    m: usize,
    /// Codewords per codebook.
    #[arg(short)]
    k: usize,
    /// Beam width for encoding.
    #[arg(long, default_value_t = 4)]
    beam: usize,
    /// Beam-encode / least-squares rounds after the RQ-K-means start.
    #[arg(long, default_value_t = 3)]
    ls_rounds: usize,
    #[command(flatten)]
    km: KmArgs,
    /// Output model (safetensors).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Opt {
    Sgd,
    Adam,
}

#[derive(clap::Args)]
pub struct NsvqArgs {
    /// Points: .npy or .fvecs, shape (n, d).
    #[arg(short, long)]
    input: PathBuf,
    /// rvq, pvq or avq.
    #[arg(long, value_parser = super::choice::<NsvqMethod>())]
    method: NsvqMethod,
    /// Stages (rvq), sub-vectors (pvq) or codebooks (avq).
    #[arg(long)]
    stages: usize,
    /// Codewords per codebook.
    #[arg(short)]
    k: usize,
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    #[arg(long, value_enum, default_value_t = Opt::Adam)]
    optimizer: Opt,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// Beam width (avq).
    #[arg(long, default_value_t = 4)]
    beam: usize,
    /// Lloyd iterations of the k-means start (0: random training vectors).
    #[arg(long, default_value_t = 10)]
    init_iters: usize,
    /// Replace codes used in fewer than this fraction of the last `num_batches` batches.
    #[arg(long, default_value_t = 0.01)]
    discard_threshold: f32,
    /// Batches between codebook replacements (0: never replace).
    #[arg(long, default_value_t = 100)]
    num_batches: usize,
    /// Codebook start: kmeans (the k-means-based fit, `--init-iters` iterations) or uniform
    /// (Uniform(-1/K, 1/K), the published default).
    #[arg(long, value_parser = super::choice::<NsvqInit>(), default_value_t = NsvqInit::default())]
    init: NsvqInit,
    /// PVQ noise substitution: once over the whole vector (published), or per sub-vector.
    #[arg(long, value_parser = super::choice::<NoiseScope>(), default_value_t = NoiseScope::default())]
    noise: NoiseScope,
    /// Replace unused codewords from the used ones of all codebooks together (published
    /// AVQ), not codebook by codebook (rvq, avq).
    #[arg(long)]
    pooled_replacement: bool,
    /// No replacement in the last 2 x num_batches batches (the published loops' rule).
    #[arg(long)]
    stop_replacement: bool,
    /// Keep the optimiser moments of replaced codewords (published) instead of zeroing them.
    #[arg(long, alias = "keep-adam-moments")]
    keep_moments: bool,
    /// Held-out points (same format and d as --input): their MSE is reported as test_mse.
    #[arg(long)]
    test: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output model (safetensors).
    #[arg(short, long)]
    output: PathBuf,
    /// Write a training log here: JSON lines every --log-every batches and at each epoch's
    /// end, then a summary.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Batches between two log lines within an epoch.
    #[arg(long, default_value_t = 50)]
    log_every: usize,
    #[command(flatten)]
    common: Common,
}

struct AvqJob<'a> {
    x: &'a Matrix,
    cfg: &'a AvqConfig,
    progress: &'a Progress,
}

impl WithBackend for AvqJob<'_> {
    type Output = (Avq, Vec<u32>, f64, String);
    fn run<B: Backend>(self, b: &B) -> vqkit::Result<Self::Output> {
        let t = Instant::now();
        let model = Avq::fit(b, &self.x.data, self.x.cols, self.cfg, &mut |r, e| {
            self.progress.line(&format!("round {r}: mse {e:.6}"));
            self.progress.inc();
        })?;
        let codes = model.encode(&self.x.data, self.cfg.beam)?;
        Ok((model, codes, t.elapsed().as_secs_f64(), b.name()))
    }
}

pub fn avq(args: AvqArgs) -> vqkit::Result<()> {
    let x =
        super::rvq::training_points(&args.input, args.km.sample, args.km.seed, args.common.json)?;
    let cfg = AvqConfig {
        m: args.m,
        k: args.k,
        iters: args.km.iters,
        init: args.km.init,
        seed: args.km.seed,
        beam: args.beam,
        ls_rounds: args.ls_rounds,
        max_points_per_centroid: args.km.max_points_per_centroid,
    };
    let progress = Progress::new(args.ls_rounds as u64 + 1, "avq");
    let (model, codes, seconds, backend) = args.common.dispatch(AvqJob {
        x: &x,
        cfg: &cfg,
        progress: &progress,
    })?;
    progress.finish();
    model.to_file(Some(&cfg)).write(&args.output)?;
    let recon = args.common.in_pool(|_| model.decode(&codes))?;
    let e = vqkit::quant::mse(&x.data, &recon, x.cols);
    finish(
        "avq",
        &backend,
        &x,
        e,
        seconds,
        &args.output,
        args.common.json,
        serde_json::json!({"m": args.m, "k": args.k, "beam": args.beam}),
    );
    Ok(())
}

struct NsvqJob<'a> {
    x: &'a Matrix,
    test: Option<&'a Matrix>,
    cfg: &'a NsvqConfig,
    progress: &'a Progress,
    log: &'a TrainLog,
    log_every: usize,
}

struct NsvqOut {
    model: Trained,
    mse: f64,
    test_mse: Option<f64>,
    seconds: f64,
    backend: String,
}

impl WithBackend for NsvqJob<'_> {
    type Output = NsvqOut;
    fn run<B: Backend>(self, b: &B) -> vqkit::Result<NsvqOut> {
        let t = Instant::now();
        let d = self.x.cols;
        let batch = self.cfg.batch;
        let per_epoch = self.x.rows.div_ceil(batch.max(1)).max(1);
        // Shared by the two callbacks: the figures since the last line, the last batch.
        let state = std::cell::RefCell::new((Interval::default(), 0usize, Instant::now()));
        let line = |(iv, _, since): &mut (Interval, usize, Instant),
                    step: usize,
                    epoch: usize,
                    extra: Option<f64>| {
            let rows = iv.batches * batch;
            let mut m = iv.take();
            m.insert(
                "points_per_s".into(),
                num(rows as f64 / since.elapsed().as_secs_f64()),
            );
            *since = Instant::now();
            if let Some(e) = extra {
                m.insert("train_mse".into(), num(e));
            }
            self.log.record(step, Some(epoch), m);
        };
        let model = nsvq::train_observed(
            b,
            &self.x.data,
            d,
            self.cfg,
            &mut |l| {
                let mut st = state.borrow_mut();
                let iv = &mut st.0;
                iv.batches += 1;
                iv.add("loss", l.loss);
                iv.add_vec("perplexity", &l.perplexity, true);
                iv.add_vec("usage", &l.usage, true);
                let rep: Vec<f64> = l.replaced.iter().map(|&r| r as f64).collect();
                iv.add_vec("dead_replaced", &rep, false);
                let due = iv.batches == self.log_every;
                st.1 = l.batch;
                // An epoch's last batch is logged by the epoch's line, so that steps
                // strictly increase.
                let epoch_end = (l.batch + 1) % per_epoch == 0;
                if due && !epoch_end {
                    line(&mut st, l.batch, l.epoch, None);
                }
            },
            &mut |ep, e| {
                let mut st = state.borrow_mut();
                let last = st.1;
                line(&mut st, last, ep, Some(e));
                self.progress.line(&format!("epoch {ep}: train mse {e:.6}"));
                self.progress.inc();
            },
        )?;
        let (e, _) = nsvq::evaluate(b, &model, &self.x.data, d, self.cfg.beam)?;
        let test_mse = match self.test {
            Some(y) => Some(nsvq::evaluate(b, &model, &y.data, d, self.cfg.beam)?.0),
            None => None,
        };
        Ok(NsvqOut {
            model,
            mse: e,
            test_mse,
            seconds: t.elapsed().as_secs_f64(),
            backend: b.name(),
        })
    }
}

pub fn nsvq(args: NsvqArgs) -> vqkit::Result<()> {
    if args.log_every == 0 {
        return Err(vqkit::Error::invalid("log-every", "must be at least 1"));
    }
    let log = TrainLog::open(
        args.log.as_deref(),
        "nsvq",
        serde_json::json!({
            "input": args.input, "method": args.method, "stages": args.stages, "k": args.k,
            "epochs": args.epochs, "batch": args.batch, "lr": num32(args.lr),
            "optimizer": format!("{:?}", args.optimizer).to_lowercase(),
            "momentum": num32(args.momentum), "beam": args.beam, "init_iters": args.init_iters,
            "discard_threshold": num32(args.discard_threshold), "num_batches": args.num_batches,
            "init": args.init.as_str(), "noise": args.noise.as_str(),
            "pooled_replacement": args.pooled_replacement,
            "stop_replacement": args.stop_replacement, "keep_moments": args.keep_moments,
            "test": args.test, "seed": args.seed, "log_every": args.log_every,
            "backend": args.common.backend.to_string(), "threads": args.common.threads,
        }),
    )?;
    let x = io::read_points(&args.input)?;
    let test = match &args.test {
        Some(p) => {
            let y = io::read_points(p)?;
            if y.cols != x.cols {
                return Err(vqkit::Error::WrongDimension {
                    expected: x.cols,
                    got: y.cols,
                });
            }
            Some(y)
        }
        None => None,
    };
    let cfg = NsvqConfig {
        method: args.method,
        stages: args.stages,
        k: args.k,
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        optimizer: match args.optimizer {
            Opt::Sgd => Optimizer::Sgd {
                momentum: args.momentum,
            },
            Opt::Adam => Optimizer::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
        },
        seed: args.seed,
        beam: args.beam,
        init_iters: args.init_iters,
        replace: (args.num_batches > 0).then_some((args.discard_threshold, args.num_batches)),
        init: args.init,
        noise: args.noise,
        pooled_replacement: args.pooled_replacement,
        stop_replacement: args.stop_replacement,
        keep_moments: args.keep_moments,
    };
    let progress = Progress::new(args.epochs as u64, "nsvq");
    let out = args.common.dispatch_logged(
        &log,
        NsvqJob {
            x: &x,
            test: test.as_ref(),
            cfg: &cfg,
            progress: &progress,
            log: &log,
            log_every: args.log_every,
        },
    )?;
    progress.finish();
    let mut file: TensorFile = match &out.model {
        Trained::Rvq(m) => m.to_file(None),
        Trained::Pvq(m) => m.to_file(None),
        Trained::Avq(m) => m.to_file(None),
    };
    file.set("trained_with", "nsvq");
    file.set(
        "vqkit.nsvq_config",
        serde_json::to_string(&cfg).unwrap_or_default(),
    );
    file.write(&args.output)?;
    let mut m = Metrics::new();
    m.insert("mse".into(), num(out.mse));
    if let Some(t) = out.test_mse {
        m.insert("test_mse".into(), num(t));
    }
    m.insert("seconds".into(), num(out.seconds));
    log.summary(m)?;
    if let Some(t) = out.test_mse
        && !args.common.json
    {
        println!(
            "held-out mse {t:.6} ({} points)",
            test.as_ref().map_or(0, |y| y.rows)
        );
    }
    finish(
        "nsvq",
        &out.backend,
        &x,
        out.mse,
        out.seconds,
        &args.output,
        args.common.json,
        serde_json::json!({"method": args.method, "stages": args.stages, "k": args.k,
            "epochs": args.epochs, "test_mse": out.test_mse}),
    );
    Ok(())
}
