//! `vqkit avq` and `vqkit nsvq`: additive quantizers, and NSVQ training of RVQ, PVQ, AVQ.

use super::rvq::{KmArgs, finish};
use super::{Common, Progress};
use std::path::PathBuf;
use std::time::Instant;
use vqkit::backend::{Backend, WithBackend, dispatch};
use vqkit::io::{self, Matrix};
use vqkit::quant::avq::{Avq, AvqConfig};
use vqkit::quant::model_io::TensorFile;
use vqkit::quant::nsvq::{self, NsvqConfig, NsvqMethod, Optimizer, Trained};

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
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output model (safetensors).
    #[arg(short, long)]
    output: PathBuf,
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
    let (model, codes, seconds, backend) = dispatch(
        args.common.backend,
        &args.common.options(),
        AvqJob {
            x: &x,
            cfg: &cfg,
            progress: &progress,
        },
    )?;
    progress.finish();
    model.to_file(Some(&cfg)).write(&args.output)?;
    let e = vqkit::quant::mse(&x.data, &model.decode(&codes)?, x.cols);
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
    cfg: &'a NsvqConfig,
    progress: &'a Progress,
}

impl WithBackend for NsvqJob<'_> {
    type Output = (Trained, f64, f64, String);
    fn run<B: Backend>(self, b: &B) -> vqkit::Result<Self::Output> {
        let t = Instant::now();
        let d = self.x.cols;
        let model = nsvq::train(b, &self.x.data, d, self.cfg, &mut |ep, e| {
            self.progress.line(&format!("epoch {ep}: train mse {e:.6}"));
            self.progress.inc();
        })?;
        let (e, _) = nsvq::evaluate(b, &model, &self.x.data, d, self.cfg.beam)?;
        Ok((model, e, t.elapsed().as_secs_f64(), b.name()))
    }
}

pub fn nsvq(args: NsvqArgs) -> vqkit::Result<()> {
    let x = io::read_points(&args.input)?;
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
    };
    let progress = Progress::new(args.epochs as u64, "nsvq");
    let (model, e, seconds, backend) = dispatch(
        args.common.backend,
        &args.common.options(),
        NsvqJob {
            x: &x,
            cfg: &cfg,
            progress: &progress,
        },
    )?;
    progress.finish();
    let mut file: TensorFile = match &model {
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
    finish(
        "nsvq",
        &backend,
        &x,
        e,
        seconds,
        &args.output,
        args.common.json,
        serde_json::json!({"method": args.method, "stages": args.stages, "k": args.k,
            "epochs": args.epochs}),
    );
    Ok(())
}
