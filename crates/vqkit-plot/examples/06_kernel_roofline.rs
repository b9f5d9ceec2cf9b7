//! # 06 — The distance-argmin kernel against the machine's roofline
//!
//! Every quantizer in vqkit spends its time in one fused kernel,
//! `out[i] = argmin_j |x_i - c_j|^2` over n points and k codewords of dimension d. With
//! `|x - c|^2 = |x|^2 - 2 x.c + |c|^2` and the codeword norms precomputed, it is a
//! matrix product `X C^T` (2nkd flops) whose n x k result never leaves the registers:
//! each tile of dot products is folded into a running (min, argmin) per point. It reads
//! at least `4 (nd + kd)` bytes and writes `8n`, so its *arithmetic intensity* is
//!
//! ```text
//! I = 2nkd / (4 (nd + kd + 2n))  ~  k/2 flop/byte for n >> k,
//! ```
//!
//! and the *roofline* bounds its speed by `min(peak FLOP/s, I x memory bandwidth)`: small
//! codebooks are memory-bound, large ones compute-bound. The CPU backend carries one
//! micro-kernel per instruction set (`portable` Rust that the compiler vectorizes, `avx2`
//! with FMA, `avx512`; see `crates/vqkit/src/backend/cpu/distance_argmin.rs`); the
//! ceilings are measured on this machine with the loops `vqkit bench` uses
//! (`vqkit::backend::cpu::peak`: register-only FMA chains per instruction set, and a
//! parallel read of 256 MiB, the roofline's memory slope), here once each, the best of
//! three passes, where the bench takes one pass after each round of its runs (and reads as
//! many bytes as the op it bounds moves).
//!
//! The figure (`docs/figures/06_kernel_roofline.png`): (left) achieved GFLOP/s against
//! arithmetic intensity, one colour per instruction set, with each one's FMA ceiling and
//! the bandwidth slope; (right) the fraction of its own ceiling each variant reaches
//! against k, for d = 32 and d = 128.
//!
//! What to notice: large codebooks approach the FMA ceiling (the micro-kernels keep the
//! FMA pipes busy), while small ones (k = 8, 32) sit far below *both* roofs: a handful
//! of codewords per point leaves the work outside the dot products (the argmin fold, the
//! per-point writes, loop overheads) dominant, which no roofline counts. And the
//! measured ceilings themselves differ by instruction set (on some CPUs AVX-512 runs at
//! a lower clock, so its ceiling need not be above AVX2's).
//!
//! Only the CPU variants are timed here; the GPU kernels (WGSL, CUDA v1 naive and v2
//! tiled) are benchmarked by `vqkit bench --backend all` on a machine with a GPU. Timings
//! on a loaded machine are noisy: run it on an idle one.
//!
//! Run: `cargo run --release --example 06_kernel_roofline [-- --out DIR]` (seconds).

#[path = "common/mod.rs"]
mod common;

use common::Res;
use std::time::Instant;
use vqkit::Shape;
use vqkit::backend::cpu::{CpuBackend, Isa, peak};
use vqkit::bench::{self, Op, Timing};
use vqkit_plot::{Corner, Figure, Mark, Panel, Series};

fn main() -> std::process::ExitCode {
    common::main(example)
}

fn example() -> Res {
    let start = Instant::now();
    let out = common::out_dir()?;
    let n: usize = common::arg("--n", 20_000)?;
    let threads = CpuBackend::new(None)?.threads();
    let gbps = peak::read_gbps(threads);
    println!("{threads} threads, memory read bandwidth {gbps:.1} GB/s");
    let timing = Timing {
        warmup: 1,
        min_repeats: 3,
        min_seconds: 0.05,
        max_repeats: 7,
    };
    let ks = [8usize, 32, 128, 512, 2048];
    let ds = [32usize, 128];

    let mut roof = Panel::new(
        "roofline: distance_argmin on the CPU",
        "arithmetic intensity (flop/byte)",
        "GFLOP/s",
    )
    .log_x()
    .log_y()
    .legend(Corner::LowerRight);
    let mut frac = Panel::new(
        "fraction of the FMA ceiling",
        "k (codewords)",
        "achieved / ceiling",
    )
    .log_x()
    .legend(Corner::UpperLeft);
    let (mut i_lo, mut i_hi) = (f64::INFINITY, 0.0f64);
    for (ci, isa) in Isa::available().into_iter().enumerate() {
        let cpu = CpuBackend::with_isa(None, isa)?;
        let ceiling = peak::fma_gflops(isa, threads);
        println!("{:<8} FMA ceiling {ceiling:.1} GFLOP/s", isa.as_str());
        let mut pts = Vec::new();
        for (di, &d) in ds.iter().enumerate() {
            let mut f = Vec::new();
            for &k in &ks {
                let shape = Shape::new(n, k, d);
                let r = bench::run(&cpu, Op::Assign, shape, timing, None)?;
                let g = r.gflops.ok_or("assign reports GFLOP/s")?;
                let (nf, kf, df) = (n as f64, k as f64, d as f64);
                let intensity = 2.0 * nf * kf * df / (4.0 * (nf * df + kf * df + 2.0 * nf));
                println!(
                    "{:<8} n = {n} k = {k:5} d = {d:3}: {g:7.1} GFLOP/s, intensity {intensity:6.1}",
                    isa.as_str()
                );
                i_lo = i_lo.min(intensity);
                i_hi = i_hi.max(intensity);
                pts.push((intensity, g));
                f.push((k as f64, g / ceiling));
            }
            let mark = if di == 0 {
                Mark::LinePoints
            } else {
                Mark::Dashed
            };
            frac.series
                .push(Series::new(format!("{} d = {d}", isa.as_str()), f, mark).colour(ci));
        }
        roof.series.push(
            Series::new(
                format!("{} (ceiling {ceiling:.0})", isa.as_str()),
                pts,
                Mark::Points,
            )
            .colour(ci)
            .size(4),
        );
        roof.series.push(
            Series::new(
                "",
                vec![(i_lo / 2.0, ceiling), (i_hi * 2.0, ceiling)],
                Mark::Dashed,
            )
            .colour(ci),
        );
    }
    // The bandwidth roof: I x GB/s, up to where it meets the highest ceiling.
    let top = roof
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let knee = top / gbps;
    roof.series.push(
        Series::new(
            format!("memory {gbps:.0} GB/s"),
            vec![(i_lo / 2.0, gbps * i_lo / 2.0), (knee, top)],
            Mark::Line,
        )
        .colour(7),
    );
    frac.y_range = Some((0.0, 1.1));
    let fig = Figure::grid(vec![roof, frac], 2, 640, 480).title(format!(
        "06 — distance_argmin, n = {n}, {threads} threads, per CPU instruction set"
    ));
    let f = out.join("06_kernel_roofline.png");
    fig.save(&f)?;
    common::done(&[f], start);
    Ok(())
}
