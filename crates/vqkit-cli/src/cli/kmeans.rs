//! `vqkit kmeans`: fit k-means to a file of points and save the centroids.

use super::log::{Metrics, TrainLog, num};
use super::{Common, Progress};
use std::path::PathBuf;
use std::time::Instant;
use vqkit::backend::{Backend, WithBackend};
use vqkit::io::Matrix;
use vqkit::quant::kmeans::{Init, KMeans, KMeansConfig};
use vqkit::quant::mean_sq_norm;
use vqkit::quant::minibatch::{MiniBatchConfig, RowStream, StreamReport, fit_stream};

#[derive(clap::Args)]
pub struct Args {
    /// Points: .npy (f32, f64, f16 or u8, shape (n, d)) or .fvecs.
    #[arg(short, long)]
    input: PathBuf,
    /// Number of centroids.
    #[arg(short)]
    k: usize,
    /// Lloyd iterations per restart.
    #[arg(long, default_value_t = 20)]
    iters: usize,
    #[arg(long, value_parser = super::choice::<Init>(), default_value_t = Init::KMeansPlusPlus)]
    init: Init,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Independent runs; the best is kept.
    #[arg(long, default_value_t = 1)]
    restarts: usize,
    /// Stop when an iteration improves the inertia by less than this fraction.
    #[arg(long, default_value_t = 0.0)]
    tol: f64,
    /// Train on at most k times this many points (0: all).
    #[arg(long, default_value_t = 256)]
    max_points_per_centroid: usize,
    /// Progressive-dimension steps (0: off; see the library docs).
    #[arg(long, default_value_t = 0)]
    progressive_dim_steps: usize,
    /// k-means++ seeds from at most k times this many points (0: all).
    #[arg(long, default_value_t = 8)]
    seed_points_per_centroid: usize,
    /// Compute every distance in every Lloyd step, without Elkan's bounds (the result is
    /// the same bit for bit; for timing the bounds against the fused kernel alone).
    #[arg(long)]
    no_bounds: bool,
    /// Train on this many rows of the input drawn at random (with --seed) and read a chunk
    /// at a time, so that the file need not fit in memory (0: every row; see also --stream).
    #[arg(long, default_value_t = 0)]
    sample: usize,
    /// Mini-batch k-means streaming the file in batches (never loaded whole).
    #[arg(long)]
    stream: bool,
    /// Rows per mini-batch (with --stream).
    #[arg(long, default_value_t = 4096)]
    batch_size: usize,
    /// Passes over the file (with --stream).
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Output model (safetensors).
    #[arg(short, long)]
    output: PathBuf,
    /// Write a training log here: JSON lines, one per Lloyd iteration (one per mini-batch
    /// with --stream), then a summary.
    #[arg(long)]
    log: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

struct Job<'a> {
    x: &'a Matrix,
    cfg: &'a KMeansConfig,
    progress: &'a Progress,
    log: &'a TrainLog,
}

struct Out {
    model: KMeans,
    train_mse: f64,
    mse: f64,
    seconds: f64,
    backend: String,
    n_train: usize,
    init_seconds: f64,
    distances_computed: f64,
}

impl WithBackend for Job<'_> {
    type Output = Out;
    fn run<B: Backend>(self, b: &B) -> vqkit::Result<Out> {
        let t = Instant::now();
        // Restarts follow each other in the log: the step counts every Lloyd iteration.
        let mut step = 0;
        let (model, rep) = KMeans::fit_with(b, &self.x.data, self.x.cols, self.cfg, &mut |l| {
            let mut m = Metrics::new();
            m.insert("restart".into(), l.restart.into());
            m.insert("iter".into(), l.iter.into());
            m.insert("objective".into(), num(l.mse));
            m.insert("repaired".into(), l.repaired.into());
            self.log.record(step, None, m);
            step += 1;
            self.progress.line(&format!(
                "restart {} iter {:3}  inertia {:.6}{}",
                l.restart,
                l.iter,
                l.mse,
                if l.repaired > 0 {
                    format!("  ({} empty clusters split)", l.repaired)
                } else {
                    String::new()
                }
            ));
            self.progress.inc();
        })?;
        let seconds = t.elapsed().as_secs_f64();
        // The reported figure is over every point, also when training used a subsample
        // (without one, the fit's own final figure is that already).
        let mse = if rep.n_train == self.x.rows {
            rep.mse
        } else {
            model.assign(b, &self.x.data)?.mse()
        };
        Ok(Out {
            model,
            train_mse: rep.mse,
            mse,
            seconds,
            backend: b.name(),
            n_train: rep.n_train,
            init_seconds: rep.init_seconds,
            distances_computed: rep.distances_computed,
        })
    }
}

struct StreamJob<'a> {
    args: &'a Args,
    progress: &'a Progress,
    log: &'a TrainLog,
}

impl WithBackend for StreamJob<'_> {
    type Output = (KMeans, StreamReport, f64, String, usize, usize);
    fn run<B: Backend>(self, b: &B) -> vqkit::Result<Self::Output> {
        let a = self.args;
        let mut stream = RowStream::open(&a.input)?;
        let cfg = MiniBatchConfig {
            k: a.k,
            batch: a.batch_size,
            epochs: a.epochs,
            init: a.init,
            seed: a.seed,
            init_rows: (16 * a.k).max(a.batch_size),
        };
        self.progress
            .set_len((a.epochs * stream.rows().div_ceil(a.batch_size.max(1))) as u64);
        let t = Instant::now();
        let mut step = 0;
        let (model, rep) = fit_stream(b, &mut stream, &cfg, &mut |e, i, m| {
            let mut lm = Metrics::new();
            lm.insert("objective".into(), num(m));
            lm.insert(
                "points_per_s".into(),
                num(((step + 1) * cfg.batch) as f64 / t.elapsed().as_secs_f64()),
            );
            self.log.record(step, Some(e), lm);
            step += 1;
            if i == 0 {
                self.progress
                    .line(&format!("epoch {e} first batch inertia {m:.6}"));
            }
            self.progress.inc();
        })?;
        Ok((
            model,
            rep,
            t.elapsed().as_secs_f64(),
            b.name(),
            stream.rows(),
            stream.d(),
        ))
    }
}

/// The options a log's header records.
fn log_args(a: &Args) -> serde_json::Value {
    serde_json::json!({
        "input": a.input, "k": a.k, "iters": a.iters, "init": a.init.as_str(), "seed": a.seed,
        "restarts": a.restarts, "tol": a.tol, "max_points_per_centroid": a.max_points_per_centroid,
        "progressive_dim_steps": a.progressive_dim_steps, "sample": a.sample, "stream": a.stream,
        "batch_size": a.batch_size, "epochs": a.epochs, "backend": a.common.backend.to_string(),
        "threads": a.common.threads,
    })
}

fn run_stream(args: Args) -> vqkit::Result<()> {
    let log = TrainLog::open(args.log.as_deref(), "kmeans", log_args(&args))?;
    let progress = Progress::new(0, "mini-batch k-means");
    let (model, rep, seconds, backend, n, d) = args.common.dispatch_logged(
        &log,
        StreamJob {
            args: &args,
            progress: &progress,
            log: &log,
        },
    )?;
    progress.finish();
    for (e, m) in rep.epoch_mse.iter().enumerate() {
        println!("epoch {e}  mean batch inertia {m:.6}");
    }
    let mut f = model.to_file(None);
    f.set("trained_with", "minibatch");
    f.write(&args.output)?;
    let mut m = Metrics::new();
    m.insert("mse".into(), num(rep.mse));
    m.insert("epoch_mse".into(), super::log::nums(&rep.epoch_mse));
    m.insert("seconds".into(), num(seconds));
    log.summary(m)?;
    if args.common.json {
        let v = serde_json::json!({
            "command": "kmeans", "mode": "stream", "backend": backend, "n": n, "d": d,
            "k": args.k, "batch_size": args.batch_size, "epochs": args.epochs,
            "mse": rep.mse, "reassigned": rep.reassigned, "seconds": seconds,
            "output": args.output,
        });
        println!("{v}");
    } else {
        println!(
            "mini-batch k-means: n = {n}, d = {d}, k = {} on {backend} in {seconds:.3} s",
            args.k
        );
        println!("mse {:.6}", rep.mse);
        println!("model written to {}", args.output.display());
    }
    Ok(())
}

pub fn run(args: Args) -> vqkit::Result<()> {
    if args.stream {
        return run_stream(args);
    }
    let log = TrainLog::open(args.log.as_deref(), "kmeans", log_args(&args))?;
    let x = super::rvq::training_points(&args.input, args.sample, args.seed, args.common.json)?;
    let cfg = KMeansConfig {
        k: args.k,
        iters: args.iters,
        init: args.init,
        seed: args.seed,
        restarts: args.restarts,
        tol: args.tol,
        max_points_per_centroid: args.max_points_per_centroid,
        progressive_dim_steps: args.progressive_dim_steps,
        seed_points_per_centroid: args.seed_points_per_centroid,
        bounds: !args.no_bounds,
    };
    let progress = Progress::new((args.iters * args.restarts) as u64, "k-means");
    let out = args.common.dispatch_logged(
        &log,
        Job {
            x: &x,
            cfg: &cfg,
            progress: &progress,
            log: &log,
        },
    )?;
    progress.finish();
    out.model.to_file(Some(&cfg)).write(&args.output)?;
    let rel = out.mse / mean_sq_norm(&x.data, x.cols).max(f64::MIN_POSITIVE);
    let mut m = Metrics::new();
    m.insert("mse".into(), num(out.mse));
    m.insert("train_mse".into(), num(out.train_mse));
    m.insert("relative_error".into(), num(rel));
    m.insert("n_train".into(), out.n_train.into());
    m.insert("seconds".into(), num(out.seconds));
    log.summary(m)?;
    if args.common.json {
        let v = serde_json::json!({
            "command": "kmeans", "backend": out.backend, "n": x.rows, "d": x.cols, "k": args.k,
            "n_train": out.n_train, "iters": args.iters, "init": args.init.as_str(),
            "mse": out.mse, "train_mse": out.train_mse, "relative_error": rel,
            "seconds": out.seconds, "init_seconds": out.init_seconds,
            "distances_computed": out.distances_computed, "output": args.output,
        });
        println!("{v}");
    } else {
        println!(
            "k-means: n = {}, d = {}, k = {} on {} in {:.3} s",
            x.rows, x.cols, args.k, out.backend, out.seconds
        );
        println!("mse {:.6}  relative error {:.6}", out.mse, rel);
        println!("model written to {}", args.output.display());
    }
    Ok(())
}
