//! `vqkit rq-kmeans` and `vqkit pvq`: fit residual and product quantizers.

use super::log::{Metrics, TrainLog, num, nums};
use super::{Common, Progress};
use std::path::PathBuf;
use std::time::Instant;
use vqkit::backend::{Backend, WithBackend};
use vqkit::io::{self, Matrix};
use vqkit::quant::kmeans::Init;
use vqkit::quant::pvq::{Pvq, PvqConfig};
use vqkit::quant::rvq::{Rvq, RvqConfig, StageStats};
use vqkit::quant::{mse, relative_error};

/// k-means options shared by the training commands.
#[derive(clap::Args, Clone, Debug)]
pub struct KmArgs {
    /// Lloyd iterations per codebook.
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    #[arg(long, value_parser = super::choice::<Init>(), default_value_t = Init::KMeansPlusPlus)]
    pub init: Init,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train each codebook on at most k times this many points (0: all).
    #[arg(long, default_value_t = 256)]
    pub max_points_per_centroid: usize,
    /// Train on this many rows of the input drawn at random (with --seed) and read a chunk
    /// at a time, so that the file need not fit in memory; the figures printed are then
    /// those of the sample (0: every row).
    #[arg(long, default_value_t = 0)]
    pub sample: usize,
}

/// The training points of a command: the whole input, or `sample` rows of it drawn with
/// `seed` and read a chunk at a time (see [`KmArgs::sample`]).
pub fn training_points(
    input: &std::path::Path,
    sample: usize,
    seed: u64,
    json: bool,
) -> vqkit::Result<io::Matrix> {
    let (x, n) = io::rows::read_training(input, sample, seed)?;
    if x.rows < n && !json {
        println!(
            "training on {} of the {n} rows of {}",
            x.rows,
            input.display()
        );
    }
    Ok(x)
}

#[derive(clap::Args)]
pub struct RqArgs {
    /// Points: .npy or .fvecs, shape (n, d).
    #[arg(short, long)]
    input: PathBuf,
    /// Number of stages S.
    #[arg(long)]
    stages: usize,
    /// Codewords per stage.
    #[arg(short)]
    k: usize,
    /// Beam width for training and encoding (1: greedy).
    #[arg(long, default_value_t = 1)]
    beam: usize,
    /// One codebook shared by every stage.
    #[arg(long)]
    shared: bool,
    /// Progressive-dimension k-means steps per stage (0: off).
    #[arg(long, default_value_t = 10)]
    progressive_dim_steps: usize,
    /// Stage-wise refinement rounds after training (0: plain RQ-K-means).
    #[arg(long, default_value_t = 0)]
    refine: usize,
    #[command(flatten)]
    km: KmArgs,
    /// Output model (safetensors).
    #[arg(short, long)]
    output: PathBuf,
    /// Write a training log here: JSON lines, one per Lloyd iteration of every stage's
    /// k-means (step: the iterations before it, stage after stage, refinement rounds
    /// last), then a summary.
    #[arg(long)]
    log: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct PvqArgs {
    /// Points: .npy or .fvecs, shape (n, d).
    #[arg(short, long)]
    input: PathBuf,
    /// Sub-vectors M (must divide d).
    #[arg(short)]
    m: usize,
    /// Codewords per sub-space.
    #[arg(short)]
    k: usize,
    #[command(flatten)]
    km: KmArgs,
    /// Output model (safetensors).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    common: Common,
}

struct RqJob<'a> {
    x: &'a Matrix,
    cfg: &'a RvqConfig,
    progress: &'a Progress,
    log: &'a TrainLog,
}

impl WithBackend for RqJob<'_> {
    type Output = (Rvq, Vec<u32>, f64, String);
    fn run<B: Backend>(self, b: &B) -> vqkit::Result<Self::Output> {
        let t = Instant::now();
        // Every Lloyd iteration is one step, stage after stage (progressive-dimension
        // k-means runs several passes of iterations per stage, so `stage * iters + iter`
        // would repeat), refinement rounds after the stages.
        let mut step = 0;
        let model = Rvq::fit_logged(
            b,
            &self.x.data,
            self.x.cols,
            self.cfg,
            &mut |s| {
                self.progress.line(&format!("stage {s} trained"));
                self.progress.inc();
            },
            &mut |l| {
                let mut m = Metrics::new();
                m.insert("stage".into(), l.stage.into());
                m.insert("iter".into(), l.iter.into());
                if let Some(r) = l.refine_round {
                    m.insert("refine_round".into(), r.into());
                }
                m.insert("objective".into(), num(l.mse));
                m.insert("repaired".into(), l.repaired.into());
                self.log.record(step, None, m);
                step += 1;
            },
        )?;
        let codes = model.encode(b, &self.x.data, self.cfg.beam)?;
        Ok((model, codes, t.elapsed().as_secs_f64(), b.name()))
    }
}

pub fn rq_kmeans(args: RqArgs) -> vqkit::Result<()> {
    let log = TrainLog::open(
        args.log.as_deref(),
        "rq-kmeans",
        serde_json::json!({
            "input": args.input, "stages": args.stages, "k": args.k, "beam": args.beam,
            "shared": args.shared, "progressive_dim_steps": args.progressive_dim_steps,
            "refine": args.refine, "iters": args.km.iters, "init": args.km.init.as_str(),
            "seed": args.km.seed, "max_points_per_centroid": args.km.max_points_per_centroid,
            "sample": args.km.sample, "backend": args.common.backend.to_string(),
            "threads": args.common.threads,
        }),
    )?;
    let x = training_points(&args.input, args.km.sample, args.km.seed, args.common.json)?;
    let cfg = RvqConfig {
        stages: args.stages,
        k: args.k,
        iters: args.km.iters,
        init: args.km.init,
        seed: args.km.seed,
        beam: args.beam,
        shared: args.shared,
        shared_rounds: 5,
        max_points_per_centroid: args.km.max_points_per_centroid,
        refine_rounds: args.refine,
        progressive_dim_steps: args.progressive_dim_steps,
    };
    let progress = Progress::new(args.stages as u64, "rq-kmeans");
    let (model, codes, seconds, backend) = args.common.dispatch_logged(
        &log,
        RqJob {
            x: &x,
            cfg: &cfg,
            progress: &progress,
            log: &log,
        },
    )?;
    progress.finish();
    model.to_file(Some(&cfg)).write(&args.output)?;
    // In the pool too: `analyse` subtracts the codewords on rayon's current pool.
    let stats = args.common.in_pool(|_| model.analyse(&x.data, &codes))?;
    report_stages(&stats, args.common.json);
    let e = stats.last().map_or(0.0, |s| s.mse);
    let mut m = Metrics::new();
    m.insert("mse".into(), num(e));
    m.insert(
        "relative_error".into(),
        num(relative_error(e, &x.data, x.cols)),
    );
    let per = |f: fn(&StageStats) -> f64| nums(&stats.iter().map(f).collect::<Vec<f64>>());
    m.insert("stage_mse".into(), per(|s| s.mse));
    m.insert("perplexity".into(), per(|s| s.perplexity));
    m.insert("usage".into(), per(|s| s.usage));
    m.insert("seconds".into(), num(seconds));
    log.summary(m)?;
    finish(
        "rq-kmeans",
        &backend,
        &x,
        e,
        seconds,
        &args.output,
        args.common.json,
        serde_json::json!({"stages": args.stages, "k": args.k, "beam": args.beam,
            "shared": args.shared, "refine": args.refine, "per_stage": stats}),
    );
    Ok(())
}

fn report_stages(stats: &[StageStats], json: bool) {
    if json {
        return;
    }
    println!("stage  mse          rel.error   perplexity  usage");
    for s in stats {
        println!(
            "{:5}  {:<11.6}  {:<10.6}  {:<10.2}  {:.3}",
            s.stage, s.mse, s.relative_error, s.perplexity, s.usage
        );
    }
}

/// Prints the final figures: a human summary, or one JSON line with `extra` merged in.
#[allow(clippy::too_many_arguments)]
pub fn finish(
    command: &str,
    backend: &str,
    x: &Matrix,
    mse: f64,
    seconds: f64,
    output: &std::path::Path,
    json: bool,
    extra: serde_json::Value,
) {
    let rel = relative_error(mse, &x.data, x.cols);
    if json {
        let mut v = serde_json::json!({
            "command": command, "backend": backend, "n": x.rows, "d": x.cols,
            "mse": mse, "relative_error": rel, "seconds": seconds, "output": output,
        });
        if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        println!("{v}");
    } else {
        println!(
            "{command}: n = {}, d = {} on {backend} in {seconds:.3} s",
            x.rows, x.cols
        );
        println!("mse {mse:.6}  relative error {rel:.6}");
        println!("model written to {}", output.display());
    }
}

struct PvqJob<'a> {
    x: &'a Matrix,
    cfg: &'a PvqConfig,
    progress: &'a Progress,
}

impl WithBackend for PvqJob<'_> {
    type Output = (Pvq, Vec<u32>, f64, String);
    fn run<B: Backend>(self, b: &B) -> vqkit::Result<Self::Output> {
        let t = Instant::now();
        let model = Pvq::fit(b, &self.x.data, self.x.cols, self.cfg, &mut |_| {
            self.progress.inc()
        })?;
        let codes = model.encode(b, &self.x.data)?;
        Ok((model, codes, t.elapsed().as_secs_f64(), b.name()))
    }
}

pub fn pvq(args: PvqArgs) -> vqkit::Result<()> {
    let x = training_points(&args.input, args.km.sample, args.km.seed, args.common.json)?;
    let cfg = PvqConfig {
        m: args.m,
        k: args.k,
        iters: args.km.iters,
        init: args.km.init,
        seed: args.km.seed,
        max_points_per_centroid: args.km.max_points_per_centroid,
    };
    let progress = Progress::new(args.m as u64, "pvq");
    let (model, codes, seconds, backend) = args.common.dispatch(PvqJob {
        x: &x,
        cfg: &cfg,
        progress: &progress,
    })?;
    progress.finish();
    model.to_file(Some(&cfg)).write(&args.output)?;
    let e = mse(
        &x.data,
        &args.common.in_pool(|_| model.decode(&codes))?,
        x.cols,
    );
    finish(
        "pvq",
        &backend,
        &x,
        e,
        seconds,
        &args.output,
        args.common.json,
        serde_json::json!({"m": args.m, "k": args.k}),
    );
    Ok(())
}
