//! Command-line parsing and one module per command.

mod assign;
mod bench;
mod info;

use clap::{Parser, Subcommand};
use vqkit::backend::{BackendKind, BackendOptions};

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
}

/// Options shared by every command that computes.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Backend to run on.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    pub backend: BackendKind,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the figures as one JSON object on the last stdout line.
    #[arg(long)]
    pub json: bool,
}

impl Common {
    pub fn options(&self) -> BackendOptions {
        BackendOptions {
            threads: self.threads,
        }
    }
}

pub fn main() -> vqkit::Result<()> {
    match Cli::parse().command {
        Command::Info(a) => info::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Assign(a) => assign::run(a),
    }
}
