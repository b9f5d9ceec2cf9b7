//! The benchmark harness behind `vqkit bench`: times each kernel through the [`Backend`]
//! trait on seeded clustered data held on the device (warm-up outside the timed region,
//! a synchronize inside it, repeats, median) and reports GFLOP/s or GB/s with the fraction
//! of the machine's ceiling, measured between the runs' rounds (see [`Probe`]). Only a backend
//! whose memory is the host's (the CPU) has its ceilings measured.

use crate::backend::cpu::Isa;
pub use crate::backend::cpu::peak::Probe;
use crate::backend::{Backend, EmaParams, Shape};
use crate::error::Result;
use crate::ops::DeviceKMeans;
use crate::rng::{Rng, clustered};
use std::time::Instant;

/// The operations `vqkit bench` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// `distance_argmin` with precomputed norms; 2nkd flops.
    Assign,
    /// `ema_update` for a given assignment; memory-bound, reported in GB/s.
    Ema,
    /// One Lloyd step: norms, assign, accumulate, update, read back 2k scalars.
    Kmeans,
}

crate::impl_choice!(Op, "op", { Assign => "assign", Ema => "ema", Kmeans => "kmeans" });

impl Op {
    /// Floating-point work of one run (multiply-adds count 2).
    pub fn flops(self, s: Shape) -> Option<f64> {
        let (n, k, d) = (s.n as f64, s.k as f64, s.d as f64);
        match self {
            Op::Assign => Some(2.0 * n * k * d),
            Op::Kmeans => Some(2.0 * n * k * d + n * d),
            Op::Ema => None,
        }
    }

    /// The bytes an EMA step must move at least: read x and the codes, read and write
    /// sizes and running sums, write the codebook.
    pub fn bytes(self, s: Shape) -> Option<f64> {
        let (n, k, d) = (s.n as f64, s.k as f64, s.d as f64);
        match self {
            Op::Ema => Some(4.0 * (n * d + n + 2.0 * k + 3.0 * k * d)),
            _ => None,
        }
    }
}

/// Which of the machine's ceilings bounds an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// f32 FMA throughput, GFLOP/s: operations with a FLOP count.
    Fma,
    /// Memory read bandwidth, GB/s: the EMA step.
    Read,
}

impl Op {
    /// The ceiling its rate is set against.
    pub fn bound(self) -> Bound {
        match self {
            Op::Assign | Op::Kmeans => Bound::Fma,
            Op::Ema => Bound::Read,
        }
    }
}

/// Rounds of runs a benchmark with a [`Probe`] is cut into, a ceiling measured after each
/// in the backend's threads, so that the fraction compares a kernel with what the machine
/// could do at that moment (on a shared machine both move with the neighbours' load).
pub const ROUNDS: usize = 5;

/// One timed kernel.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchResult {
    pub backend: String,
    pub op: Op,
    pub n: usize,
    pub k: usize,
    pub d: usize,
    pub repeats: usize,
    pub median_s: f64,
    pub min_s: f64,
    /// `device` when the times come from the device's timestamp queries, `host` when from
    /// the host clock around a synchronize.
    pub timer: &'static str,
    pub gflops: Option<f64>,
    pub gbps: Option<f64>,
    /// The ceilings measured after each round ([`Probe`]), median: GFLOP/s or GB/s, as
    /// the op's metric.
    pub ceiling: Option<f64>,
    /// Achieved / ceiling: the median over rounds of each round's rate (from its median
    /// time) over the ceiling measured after it.
    pub ceiling_fraction: Option<f64>,
}

/// How long to time each kernel.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Runs before timing starts.
    pub warmup: usize,
    /// At least this many timed runs...
    pub min_repeats: usize,
    /// ...and more, up to `max_repeats`, until this much time has been spent.
    pub min_seconds: f64,
    pub max_repeats: usize,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            warmup: 1,
            min_repeats: 3,
            min_seconds: 1.0,
            max_repeats: 25,
        }
    }
}

/// Times `f` (which must synchronize before returning) on `b` in `rounds` rounds, calling
/// `between` with each round's sorted times after it, and returns all the run times,
/// sorted: the device's own timestamps where it has them, the host clock otherwise, and
/// whether the device timed them. `timing`'s repeats and seconds are shared out among the
/// rounds, the repeats rounded up to at least one a round (so the total may exceed
/// `max_repeats`); its warm-up runs before the first round, and one untimed run before
/// each later one (what `between` did, passes over as many bytes as the op moves, may have
/// emptied the caches).
pub fn time_runs<B: Backend>(
    b: &B,
    timing: Timing,
    rounds: usize,
    mut between: impl FnMut(&[f64]),
    mut f: impl FnMut() -> Result<()>,
) -> Result<(Vec<f64>, bool)> {
    for _ in 0..timing.warmup {
        f()?;
    }
    let rounds = rounds.max(1);
    let (min_repeats, max_repeats) = (
        timing.min_repeats.div_ceil(rounds).max(1),
        timing.max_repeats.div_ceil(rounds).max(1),
    );
    let min_seconds = timing.min_seconds / rounds as f64;
    let mut times = Vec::new();
    let mut on_device = true;
    for r in 0..rounds {
        if r > 0 {
            f()?;
        }
        let mut round = Vec::new();
        let start = Instant::now();
        while round.len() < min_repeats
            || (start.elapsed().as_secs_f64() < min_seconds && round.len() < max_repeats)
        {
            let t = Instant::now();
            let device = b.device_seconds(&mut f)?;
            let host = t.elapsed().as_secs_f64();
            on_device &= device.is_some();
            round.push(device.unwrap_or(host));
        }
        round.sort_by(f64::total_cmp);
        between(&round);
        times.extend(round);
    }
    times.sort_by(f64::total_cmp);
    Ok((times, on_device))
}

/// The seeded benchmark inputs for a shape: clustered points (k/4 true clusters, so the
/// argmin sees realistic near-ties) and a codebook drawn from the points.
pub fn inputs(shape: Shape, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let Shape { n, k, d } = shape;
    let x = clustered(n, d, (k / 4).max(1), 0.3, seed);
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut c = Vec::with_capacity(k * d);
    for _ in 0..k {
        let i = if n > 0 { rng.below(n) } else { 0 };
        match x.get(i * d..(i + 1) * d) {
            Some(row) => c.extend_from_slice(row),
            None => c.extend(rng.normal_vec(d)),
        }
    }
    (x, c)
}

/// The seed of every benchmark's inputs ([`inputs`]).
pub const INPUT_SEED: u64 = 42;

/// Writes the inputs [`run`] times at `shape` to `dir` as `x_{n}x{d}_k{k}.npy` (the points)
/// and `c_{k}x{d}_n{n}.npy` (the codebook), so that other programs (`scripts/gpu_check/`) can
/// time their formulations on the same data. Returns the two paths.
pub fn save_inputs(
    shape: Shape,
    dir: &std::path::Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    shape.validate()?;
    let Shape { n, k, d } = shape;
    std::fs::create_dir_all(dir).map_err(|source| crate::Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let (x, c) = inputs(shape, INPUT_SEED);
    let xp = dir.join(format!("x_{n}x{d}_k{k}.npy"));
    let cp = dir.join(format!("c_{k}x{d}_n{n}.npy"));
    crate::io::npy::write_f32(&xp, &[n, d], &x)?;
    crate::io::npy::write_f32(&cp, &[k, d], &c)?;
    Ok((xp, cp))
}

/// Benchmarks one operation at one shape on `b`.
pub fn run<B: Backend>(
    b: &B,
    op: Op,
    shape: Shape,
    timing: Timing,
    probe: Option<&Probe>,
) -> Result<BenchResult> {
    shape.validate()?;
    let Shape { n, k, d } = shape;
    // The points on the host, in the k-means state and in the assign/EMA copy (on a CPU
    // backend all three are host memory), the codebook thrice, and per-point outputs.
    crate::resources::ensure(
        "the benchmark's buffers",
        crate::resources::bytes_of::<f32>(n.saturating_mul(d)) * 3
            + crate::resources::bytes_of::<f32>(k.saturating_mul(d)) * 3
            + crate::resources::bytes_of::<u32>(n) * 4,
    )?;
    let (x, c) = inputs(shape, INPUT_SEED);
    let mut km = DeviceKMeans::new(b, &x, &c, d)?;
    // Work per run, in GFLOP or GB: what the rate and the ceiling count.
    let work = op.flops(shape).or(op.bytes(shape)).unwrap_or(0.0) / 1e9;
    // Per round: (its rate / the ceiling measured after it, that ceiling).
    let mut paired: Vec<(f64, f64)> = Vec::new();
    // Only on the host: a device backend has no host instruction set.
    let probe = probe.zip(b.host_isa());
    // The bytes a read ceiling reads: as many as the op moves (see `Probe::read_gbps`).
    let footprint = op.bytes(shape).unwrap_or(0.0) as usize;
    // The ceiling now, in the backend's threads (work of usize::MAX: in parallel wherever
    // the backend has threads); none where the pass gave no usable rate.
    let measure = |(probe, isa): (&Probe, Isa)| {
        b.run_on_host(usize::MAX, |parallel| match op.bound() {
            Bound::Fma => probe.fma_gflops(isa, parallel),
            Bound::Read => probe.read_gbps(isa, footprint, parallel),
        })
        .filter(|c| c.is_finite() && *c > 0.0)
    };
    let rounds = if probe.is_some() { ROUNDS } else { 1 };
    let between = |round: &[f64]| {
        if let Some(ceiling) = probe.and_then(measure) {
            paired.push((work / round[round.len() / 2] / ceiling, ceiling));
        }
    };
    let (times, on_device) = match op {
        Op::Assign => {
            let xb = b.upload(&x)?;
            let cb = b.upload(&c)?;
            let mut norms = b.zeros::<f32>(k)?;
            b.codeword_norms(&cb, k, d, &mut norms)?;
            let mut idx = b.zeros::<u32>(n)?;
            let mut dist = b.zeros::<f32>(n)?;
            time_runs(b, timing, rounds, between, || {
                b.distance_argmin(&xb, &cb, &norms, shape, &mut idx, &mut dist)?;
                b.synchronize()
            })?
        }
        Op::Ema => {
            km.assign()?;
            let idx = b.upload(&km.assignment()?.indices)?;
            let xb = b.upload(&x)?;
            let mut size = b.zeros::<f32>(k)?;
            let mut esum = b.upload(&c)?;
            let mut code = b.upload(&c)?;
            let params = EmaParams::default();
            time_runs(b, timing, rounds, between, || {
                b.ema_update(&xb, &idx, shape, params, &mut size, &mut esum, &mut code)?;
                b.synchronize()
            })?
        }
        Op::Kmeans => time_runs(b, timing, rounds, between, || km.step().map(|_| ()))?,
    };
    let median_s = times[times.len() / 2];
    let gflops = op.flops(shape).map(|f| f / median_s / 1e9);
    let gbps = op.bytes(shape).map(|by| by / median_s / 1e9);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let ceiling = median(paired.iter().map(|p| p.1).collect());
    let ceiling_fraction = median(paired.iter().map(|p| p.0).collect());
    Ok(BenchResult {
        backend: b.name(),
        op,
        n,
        k,
        d,
        repeats: times.len(),
        median_s,
        min_s: times[0],
        timer: if on_device { "device" } else { "host" },
        gflops,
        gbps,
        ceiling,
        ceiling_fraction,
    })
}

/// The default grid of `vqkit bench`: n = 100,000 points, d in {32, 128}, k in
/// {256, 1024, 4096}, the shapes of the project's speed targets.
pub fn default_shapes() -> Vec<Shape> {
    let mut v = Vec::new();
    for d in [32, 128] {
        for k in [256, 1024, 4096] {
            v.push(Shape::new(100_000, k, d));
        }
    }
    v
}

/// The dimensions and codebook sizes of `vqkit bench --grid wide`: every width from 2-D
/// points to wide embeddings, every codebook from a product quantizer's 16 codes to the
/// coarse quantizer of a large IVF index.
pub const WIDE_D: [usize; 6] = [2, 8, 32, 128, 512, 2048];
pub const WIDE_K: [usize; 5] = [16, 256, 4096, 65_536, 262_144];

/// Points for a shape of the wide grid: about 2e10 flops of `assign` per run (0.1 to 1 s
/// on a CPU), between 256 and 100,000 rows. `scripts/compare_faiss_assign.py --grid wide`
/// uses the same rule.
pub fn wide_rows(k: usize, d: usize) -> usize {
    let per_row = 2.0 * k as f64 * d as f64;
    ((2e10 / per_row) as usize).clamp(256, 100_000)
}

/// The wide grid: [`WIDE_D`] x [`WIDE_K`] with [`wide_rows`] points each.
pub fn wide_shapes() -> Vec<Shape> {
    let mut v = Vec::new();
    for d in WIDE_D {
        for k in WIDE_K {
            v.push(Shape::new(wide_rows(k, d), k, d));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    /// `repeats` timed runs after `warmup`, however long they take.
    fn exactly(warmup: usize, repeats: usize) -> Timing {
        Timing {
            warmup,
            min_repeats: repeats,
            min_seconds: 0.0,
            max_repeats: repeats,
        }
    }

    #[test]
    fn rounds_share_the_repeats_and_each_is_followed_by_its_times() {
        let cpu = CpuBackend::new(Some(1)).unwrap();
        let timing = exactly(2, 7);
        let (mut calls, mut seen) = (0, Vec::new());
        let (times, on_device) = time_runs(
            &cpu,
            timing,
            3,
            |round: &[f64]| {
                assert!(round.is_sorted_by(|a, b| a <= b), "{round:?}");
                seen.push(round.len());
            },
            || {
                calls += 1;
                Ok(())
            },
        )
        .unwrap();
        // 7 repeats over 3 rounds: 3 each, after the 2 warm-up runs, and one untimed run
        // before each of the later rounds.
        assert_eq!(seen, [3, 3, 3]);
        assert_eq!((calls, times.len()), (2 + 9 + 2, 9));
        assert!(times.is_sorted_by(|a, b| a <= b) && !on_device);
    }

    #[test]
    fn a_probe_sets_each_round_against_a_ceiling_and_none_leaves_it_out() {
        let cpu = CpuBackend::new(Some(2)).unwrap();
        let timing = exactly(0, 1);
        let shape = Shape::new(2_000, 64, 16);
        let probe = Probe::new();
        for op in [Op::Assign, Op::Ema] {
            let with = run(&cpu, op, shape, timing, Some(&probe)).unwrap();
            assert_eq!(with.repeats, ROUNDS, "one run in each round");
            let (c, f) = (with.ceiling.unwrap(), with.ceiling_fraction.unwrap());
            assert!(
                c.is_finite() && c > 0.0 && f.is_finite() && f > 0.0,
                "{with:?}"
            );
            let without = run(&cpu, op, shape, timing, None).unwrap();
            assert_eq!(without.repeats, 1);
            assert!(without.ceiling.is_none() && without.ceiling_fraction.is_none());
        }
    }
}
