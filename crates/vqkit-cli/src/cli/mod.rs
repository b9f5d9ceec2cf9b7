//! Command-line parsing and one module per command.

mod assign;
mod avq;
mod bench;
mod complexity;
mod encode;
mod info;
mod kmeans;
mod log;
mod plot;
mod rvq;
mod vqvae;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use log::TrainLog;
use vqkit::Choice;
use vqkit::backend::{BackendKind, BackendOptions, Code, WithBackend, dispatch};
pub(crate) use vqkit_nn::train::with_threads;

#[derive(Parser)]
#[command(
    name = "vqkit",
    version,
    about = "Vector-quantization kernels on CPU, WGPU and CUDA: benchmark, assign, inspect"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The backends compiled in, the devices found, and the CPU features used.
    Info(info::Args),
    /// Time each kernel on seeded clustered data and print GFLOP/s or GB/s against the
    /// machine's measured ceiling.
    Bench(bench::Args),
    /// Nearest codeword for each point of a file; prints the mean squared distance.
    Assign(assign::Args),
    /// Fit k-means; prints the inertia per iteration and saves the centroids (safetensors).
    Kmeans(kmeans::Args),
    /// Fit a residual quantizer (RQ-K-means): S stages of k codewords, greedy or beam search.
    #[command(name = "rq-kmeans")]
    RqKmeans(rvq::RqArgs),
    /// Fit a product quantizer: M sub-vectors, one k-means codebook each.
    Pvq(rvq::PvqArgs),
    /// Fit an additive quantizer: M full-dimensional codebooks, beam-search encoding,
    /// least-squares codebook refinement.
    Avq(avq::AvqArgs),
    /// Train RVQ, PVQ or AVQ codebooks with noise substitution (NSVQ) and SGD or Adam.
    Nsvq(avq::NsvqArgs),
    /// Bits per vector and operations per encoded vector for VQ, RVQ, PVQ, AVQ.
    Complexity(complexity::Args),
    /// Codes of a file of points under any trained model.
    Encode(encode::EncodeArgs),
    /// Reconstructions from codes under any trained model.
    Decode(encode::DecodeArgs),
    /// Train a VQ-VAE or RQ-VAE on MNIST-style IDX images; test-set MSE, PSNR, SSIM,
    /// perplexity and usage per level, bits per image; safetensors checkpoints.
    #[command(name = "train-vqvae")]
    TrainVqvae(vqvae::TrainArgs),
    /// A PNG grid of images above their reconstructions (one row per RQ level).
    Reconstruct(vqvae::ReconstructArgs),
    /// Curves from JSON-lines training logs (`--log FILE`): a panel per metric, several
    /// runs on one figure.
    Plot(plot::Args),
}

/// Options shared by every command that computes.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Backend to run on.
    #[arg(long, value_parser = choice::<BackendKind>(), default_value_t = BackendKind::Cpu)]
    pub backend: BackendKind,
    /// Threads for the CPU backend and for the host work around any backend (default: all
    /// cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the figures as one JSON object on the last stdout line.
    #[arg(long)]
    pub json: bool,
}

impl Common {
    /// Runs `f` inside a pool of `--threads` threads (all cores without it), with the
    /// options of a backend created in that pool: its kernels and the host work around them
    /// (decoding, the quantizers' loops on the host, which run on rayon's current pool)
    /// then keep to the threads asked for. With a pool of its own, the backend alone did,
    /// and `encode --threads 1` decoded its error figures on every core. With one thread
    /// the CPU backend runs its kernels on the calling thread, without rayon, as it did.
    pub fn in_pool<T: Send>(
        &self,
        f: impl FnOnce(&BackendOptions) -> vqkit::Result<T> + Send,
    ) -> vqkit::Result<T> {
        let opts = BackendOptions::threads(self.threads.filter(|&t| t == 1));
        with_threads(self.threads, || f(&opts))?
    }

    /// Runs `job` on `--backend`, created in [`Common::in_pool`]'s pool.
    pub fn dispatch<W>(&self, job: W) -> vqkit::Result<W::Output>
    where
        W: WithBackend + Send,
        W::Output: Send,
    {
        self.in_pool(|opts| dispatch(self.backend, opts, job))
    }

    /// [`Common::dispatch`] under `log`'s guard, set on the pool's thread that runs the
    /// training loop (the guard's hook is per thread: set on the caller's, a failed log
    /// write would no longer stop the training).
    pub fn dispatch_logged<W>(&self, log: &TrainLog, job: W) -> vqkit::Result<W::Output>
    where
        W: WithBackend + Send,
        W::Output: Send,
    {
        self.in_pool(|opts| log.guard(|| dispatch(self.backend, opts, job)))
    }
}

/// The type of the codes a command writes (`--code-dtype`).
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum CodeDtype {
    Auto,
    Uint8,
    Uint16,
    Uint32,
}

impl CodeDtype {
    /// Bytes per code for indices into `k` codewords: `Auto`'s is the narrowest type that
    /// holds them. A named type is returned as it is; the caller checks it against `k`
    /// ([`vqkit::backend::check_code_type`]) before creating its output.
    pub fn bytes(self, k: usize) -> usize {
        match self {
            CodeDtype::Auto => match k as u64 {
                k if k <= u8::CODEWORDS => 1,
                k if k <= u16::CODEWORDS => 2,
                _ => 4,
            },
            CodeDtype::Uint8 => 1,
            CodeDtype::Uint16 => 2,
            CodeDtype::Uint32 => 4,
        }
    }
}

/// The first `len` elements of `buf`, which is replaced by a larger one where it is
/// shorter: a buffer for every chunk of codes or reconstructions, since a fresh one's pages
/// are zeroed by the kernel as they are first written.
pub fn reuse<'a, T: vqkit::resources::ZeroBits>(
    buf: &'a mut Vec<T>,
    len: usize,
    what: &'static str,
) -> vqkit::Result<&'a mut [T]> {
    if buf.len() < len {
        *buf = vqkit::resources::zeroed_lazy(what, len)?;
    }
    Ok(&mut buf[..len])
}

pub fn main() -> vqkit::Result<()> {
    match Cli::parse().command {
        Command::Info(a) => info::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Assign(a) => assign::run(a),
        Command::Kmeans(a) => kmeans::run(a),
        Command::RqKmeans(a) => rvq::rq_kmeans(a),
        Command::Pvq(a) => rvq::pvq(a),
        Command::Avq(a) => avq::avq(a),
        Command::Nsvq(a) => avq::nsvq(a),
        Command::Complexity(a) => complexity::run(a),
        Command::Encode(a) => encode::encode(a),
        Command::Decode(a) => encode::decode(a),
        Command::TrainVqvae(a) => vqvae::train(a),
        Command::Reconstruct(a) => vqvae::reconstruct(a),
        Command::Plot(a) => plot::run(a),
    }
}

/// A progress bar on a terminal's stderr, and per-step lines on stdout. When stderr is not a
/// terminal indicatif draws nothing, so piped output holds only the lines.
pub struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    pub fn new(len: u64, what: &str) -> Self {
        let bar = indicatif::ProgressBar::new(len);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {elapsed}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        Progress { bar }
    }

    /// Prints a line to stdout without tearing the bar.
    pub fn line(&self, s: &str) {
        self.bar.suspend(|| println!("{s}"));
    }

    pub fn set_len(&self, len: u64) {
        self.bar.set_length(len);
    }

    pub fn inc(&self) {
        self.bar.inc(1);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Rows per chunk of a streaming command: `--chunk-rows`, or about
/// [`vqkit::io::rows::CHUNK_BYTES`] of f32 rows of the input.
pub fn chunk_rows(
    given: Option<usize>,
    input: &vqkit::io::rows::RowReader,
) -> vqkit::Result<usize> {
    match given {
        Some(0) => Err(vqkit::Error::invalid("chunk-rows", "must be at least 1")),
        Some(r) => Ok(r),
        None => Ok(input.chunk_rows()),
    }
}

/// The clap parser of a [`Choice`]: its names as the possible values (listed by `--help`
/// and in the error for any other word), parsed into the value.
pub fn choice<T: Choice + Clone>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::ALL.iter().map(|v| v.name()))
        .map(|name| T::from_name(&name).expect("clap accepts only the listed names"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vqkit::backend::Backend;

    /// The threads of rayon's current pool where a job runs, and its backend's name.
    struct Threads;

    impl WithBackend for Threads {
        type Output = (usize, String);
        fn run<B: Backend>(self, b: &B) -> vqkit::Result<Self::Output> {
            Ok((rayon::current_num_threads(), b.name()))
        }
    }

    /// Whether `vqkit::interrupt::check` stopped the job where it runs.
    struct Checks<'a>(&'a std::sync::atomic::AtomicBool);

    impl WithBackend for Checks<'_> {
        type Output = ();
        fn run<B: Backend>(self, _: &B) -> vqkit::Result<()> {
            let stopped = matches!(vqkit::interrupt::check(), Err(vqkit::Error::Interrupted));
            self.0.store(stopped, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    fn common(threads: Option<usize>) -> Common {
        Common {
            backend: BackendKind::Cpu,
            threads,
            json: false,
        }
    }

    /// Host work in a job (decoding) runs on rayon's current pool: it must be the size
    /// asked for, and the backend's the same.
    #[test]
    fn jobs_run_in_a_pool_of_the_threads_asked_for() {
        for t in [1, 3] {
            let (pool, name) = common(Some(t)).dispatch(Threads).unwrap();
            assert_eq!(pool, t);
            assert!(name.ends_with(&format!(", {t} threads)")), "{name}");
        }
        let all = rayon::current_num_threads();
        let (pool, name) = common(None).dispatch(Threads).unwrap();
        assert_eq!(pool, all);
        assert!(name.ends_with(&format!(", {all} threads)")), "{name}");
        let err = common(Some(0)).dispatch(Threads).unwrap_err().to_string();
        assert!(err.contains("threads"), "{err}");
    }

    /// A failed log write stops the training loop, which runs on the pool's thread: the
    /// guard's hook must be set there, not on the caller's.
    #[test]
    fn a_failed_log_write_stops_the_job_in_the_pool() {
        let path = std::env::temp_dir().join(format!("vqkit-cli-log-{}.jsonl", std::process::id()));
        let log = log::failed_log(&path);
        for t in [None, Some(1), Some(2)] {
            let stopped = std::sync::atomic::AtomicBool::new(false);
            let err = common(t)
                .dispatch_logged(&log, Checks(&stopped))
                .unwrap_err();
            assert!(
                stopped.into_inner(),
                "threads {t:?}: the job was not stopped"
            );
            assert!(err.to_string().contains("no space left"), "{err}");
        }
        let _ = std::fs::remove_file(&path);
    }
}
