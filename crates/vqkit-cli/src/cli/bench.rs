//! `vqkit bench`: the main job. Times every kernel on every requested backend and prints a
//! table (or JSON lines) with GFLOP/s or GB/s and the fraction of the machine's ceiling,
//! measured between each kernel's rounds of runs ([`bench::Probe`]).

use std::time::Instant;
use vqkit::Choice;
use vqkit::backend::cpu::Isa;
use vqkit::backend::{
    ArgminVariant, Backend, BackendKind, BackendOptions, Shape, WithBackend, dispatch,
};
use vqkit::bench::{self, BenchResult, Op, Timing};

#[derive(clap::Args)]
pub struct Args {
    /// Backend(s) to time; `all` runs every compiled backend that finds a device.
    #[arg(long, value_enum, default_value_t = Which::Cpu)]
    backend: Which,
    /// Operation to time (default: all three).
    #[arg(long, value_parser = super::choice::<Op>())]
    op: Option<Op>,
    /// The grid of shapes: `default` (n = 100,000, d in {32, 128}, k in {256, 1024, 4096})
    /// or `wide` (d from 2 to 2048, k from 16 to 262,144, n sized to ~2e10 flops a run).
    #[arg(long, value_enum, default_value_t = Grid::Default)]
    grid: Grid,
    /// Points (default grid: 100,000).
    #[arg(long)]
    n: Option<usize>,
    /// Codewords (default grid: 256, 1024, 4096).
    #[arg(long)]
    k: Option<usize>,
    /// Dimensions (default grid: 32, 128).
    #[arg(long)]
    d: Option<usize>,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// The GPU backends' distance_argmin kernel: v1 (naive) or v2 (tiled, shipped).
    #[arg(long, value_parser = super::choice::<ArgminVariant>(), default_value_t = ArgminVariant::V2Tiled)]
    variant: ArgminVariant,
    /// The CPU micro-kernels' instruction set (default: the best this CPU has). The rows'
    /// packing and norms still take the best this CPU has (the same bits either way), so
    /// `avx2` on an AVX-512 CPU times AVX2's kernels, not an AVX2-only CPU.
    #[arg(long, value_parser = super::choice::<Isa>())]
    isa: Option<Isa>,
    /// Seconds to spend timing each kernel (at least 3 runs after a warm-up; on the CPU,
    /// at least one in each of the 5 rounds between which the ceiling is measured).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// One JSON object per result line instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write each shape's inputs to this directory as .npy (points and codebook), for
    /// timing other programs on the same data.
    #[arg(long)]
    save_inputs: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Grid {
    Default,
    Wide,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    Cpu,
    Wgpu,
    Cuda,
    All,
}

struct Job<'a> {
    ops: &'a [Op],
    shapes: &'a [Shape],
    timing: Timing,
    json: bool,
    /// Measures the ceilings between rounds (on the CPU only: a GPU's cannot be measured
    /// from the host).
    probe: &'a bench::Probe,
}

impl WithBackend for Job<'_> {
    type Output = Vec<BenchResult>;
    fn run<B: Backend>(self, b: &B) -> vqkit::Result<Vec<BenchResult>> {
        let probe = b.host_isa().map(|_| self.probe);
        if !self.json {
            println!("\n{}", b.name());
            match probe {
                Some(_) => println!(
                    "ceiling: f32 FMA GFLOP/s, or GB/s of a sum over as many bytes as the op \
                     moves, measured after each of {} rounds of runs; % ceil: the rounds' \
                     median of rate / ceiling",
                    bench::ROUNDS
                ),
                None => println!("no measured ceiling for this device: fractions omitted"),
            }
            println!(
                "{:<7} {:>9} {:>6} {:>5} {:>11} {:>10} {:>9} {:>9} {:>9}",
                "op", "n", "k", "d", "median ms", "GFLOP/s", "GB/s", "ceiling", "% ceil"
            );
        }
        let mut out = Vec::new();
        for &shape in self.shapes {
            for &op in self.ops {
                let r = bench::run(b, op, shape, self.timing, probe)?;
                print_result(&r, self.json);
                out.push(r);
            }
        }
        Ok(out)
    }
}

fn print_result(r: &BenchResult, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    let opt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    println!(
        "{:<7} {:>9} {:>6} {:>5} {:>11.3} {:>10} {:>9} {:>9} {:>9}",
        r.op.as_str(),
        r.n,
        r.k,
        r.d,
        r.median_s * 1e3,
        opt(r.gflops, 1),
        opt(r.gbps, 1),
        opt(r.ceiling, 1),
        opt(r.ceiling_fraction.map(|f| f * 100.0), 0),
    );
}

pub fn run(args: Args) -> vqkit::Result<()> {
    let start = Instant::now();
    let ops: Vec<Op> = args.op.map_or(Op::ALL.to_vec(), |o| vec![o]);
    let grid = match args.grid {
        Grid::Default => bench::default_shapes(),
        Grid::Wide => bench::wide_shapes(),
    };
    let shapes: Vec<Shape> = grid
        .into_iter()
        .map(|s| {
            Shape::new(
                args.n.unwrap_or(s.n),
                args.k.unwrap_or(s.k),
                args.d.unwrap_or(s.d),
            )
        })
        .fold(Vec::new(), |mut v, s| {
            if !v.contains(&s) {
                v.push(s);
            }
            v
        });
    let kinds: Vec<BackendKind> = match args.backend {
        Which::Cpu => vec![BackendKind::Cpu],
        Which::Wgpu => vec![BackendKind::Wgpu],
        Which::Cuda => vec![BackendKind::Cuda],
        Which::All => BackendKind::ALL.to_vec(),
    };
    let opts = BackendOptions {
        threads: args.threads,
        isa: args.isa,
        argmin_variant: args.variant,
    };
    let timing = Timing {
        min_seconds: args.seconds,
        ..Timing::default()
    };
    if let Some(dir) = &args.save_inputs {
        for &shape in &shapes {
            let (x, c) = bench::save_inputs(shape, dir)?;
            if !args.json {
                println!("inputs written: {} {}", x.display(), c.display());
            }
        }
    }
    let probe = bench::Probe::new();
    let mut results = Vec::new();
    for kind in kinds {
        let job = Job {
            ops: &ops,
            shapes: &shapes,
            timing,
            json: args.json,
            probe: &probe,
        };
        match dispatch(kind, &opts, job) {
            Ok(r) => results.extend(r),
            // With `all`, a backend without a device is reported and skipped.
            Err(e @ vqkit::Error::BackendUnavailable { .. }) if args.backend == Which::All => {
                eprintln!("skipping {kind}: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    if args.json {
        let v = serde_json::json!({
            "command": "bench", "results": results.len(), "seconds": start.elapsed().as_secs_f64(),
        });
        println!("{v}");
    }
    Ok(())
}
