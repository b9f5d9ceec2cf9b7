//! # 01 — Vector quantization in two dimensions
//!
//! A vector quantizer replaces each point `x` in R^d by the nearest of `k` codewords
//! `c_1..c_k` (the codebook): `q(x) = c_j` with `j = argmin_j |x - c_j|^2`. The set of
//! points that map to `c_j` is its *Voronoi cell*, a convex polygon bounded by the
//! perpendicular bisectors between neighbouring codewords. The distortion is the mean
//! squared error `D = E |x - q(x)|^2`, and the rate is `R = log2 k` bits per vector.
//!
//! **k-means (Lloyd's algorithm)** alternates the two conditions an optimal quantizer
//! satisfies: (1) nearest-neighbour: given the codebook, each point goes to its nearest
//! codeword (`vqkit::ops::assign`, the fused distance-argmin kernel); (2) centroid: given
//! the cells, each codeword moves to the mean of its points, which minimises the squared
//! error within the cell. Neither step can raise `D`, so `D` falls monotonically to a
//! local minimum.
//!
//! **Rate-distortion at high rate**: with `k` cells of roughly equal volume in d
//! dimensions, each cell's linear size scales as `k^(-1/d)` and its squared error as
//! `k^(-2/d) = 2^(-2R/d)`: every extra bit *per dimension* divides `D` by 4, i.e. gains
//! 10 log10(4) = 6.02 dB — the "6 dB per bit" rule. Here d = 2, so doubling k (one more
//! bit per vector, half a bit per dimension) should halve `D`, a slope of -1 on log-log
//! axes, once k is large enough for cells to be small against the mixture's structure.
//!
//! The figure (`docs/figures/01_vq_2d.png`), left to right:
//! 1. the Voronoi cells of a k = 8 codebook, coloured by `assign` over a 200 x 200 grid,
//!    with the data and each codeword's path over the Lloyd iterations from a uniform
//!    random start (small dots: the iterates, large red dots: the final codewords);
//! 2. the distortion per Lloyd iteration (falls monotonically, then flattens);
//! 3. the distortion against codebook size k = 1..1024 on log axes, with the 6 dB-per-bit
//!    slope for d = 2 drawn through the k = 64 point.
//!
//! Run: `cargo run --release --example 01_vq_2d [-- --out DIR]` (a few seconds).

#[path = "common/mod.rs"]
mod common;

use common::Res;
use std::path::{Path, PathBuf};
use std::time::Instant;
use vqkit::backend::cpu::CpuBackend;
use vqkit::ops::{self, DeviceKMeans};
use vqkit::quant::kmeans::{KMeans, KMeansConfig};
use vqkit::rng::Rng;
use vqkit_plot::{Figure, Mark, Panel, Raster, Series};

/// A mixture of `m` Gaussian blobs of different widths in [-4, 4]^2.
fn mixture(n: usize, m: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let blobs: Vec<(f64, f64, f64)> = (0..m)
        .map(|_| {
            (
                rng.uniform() * 8.0 - 4.0,
                rng.uniform() * 8.0 - 4.0,
                0.3 + 0.7 * rng.uniform(),
            )
        })
        .collect();
    let mut x = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let (cx, cy, s) = blobs[rng.below(m)];
        x.push((cx + s * rng.normal()) as f32);
        x.push((cy + s * rng.normal()) as f32);
    }
    x
}

fn main() -> std::process::ExitCode {
    common::main(example)
}

fn example() -> Res {
    let start = Instant::now();
    let f = run(&common::out_dir()?)?;
    common::done(&[f], start);
    Ok(())
}

/// Computes everything and writes the figure into `out`; returns its path.
fn run(out: &Path) -> Res<PathBuf> {
    let cpu = CpuBackend::new(None)?;
    let (n, k, iters) = (8000, 8, 25);
    let x = mixture(n, 6, 7);

    // Lloyd iterations from k points drawn uniformly in [-5, 5]^2 (a poor start, so the
    // paths are long), keeping every iterate of the codebook.
    let mut rng = Rng::new(3);
    let init: Vec<f32> = (0..2 * k)
        .map(|_| (rng.uniform() * 10.0 - 5.0) as f32)
        .collect();
    let mut km = DeviceKMeans::new(&cpu, &x, &init, 2)?;
    let mut path = vec![init];
    let mut mse = Vec::new();
    for _ in 0..iters {
        let r = km.step()?;
        mse.push(r.inertia / n as f64);
        path.push(km.centroids()?);
    }
    let codebook = path.last().ok_or("no iterations")?.clone();

    // Voronoi cells: the nearest codeword of every grid point, by the same kernel.
    let (lo, hi, g) = (-6.0f64, 6.0f64, 200usize);
    let grid: Vec<f32> = (0..g)
        .flat_map(|j| {
            (0..g).flat_map(move |i| {
                let step = (hi - lo) / g as f64;
                [
                    (lo + (i as f64 + 0.5) * step) as f32,
                    (lo + (j as f64 + 0.5) * step) as f32,
                ]
            })
        })
        .collect();
    let cells = ops::assign(&cpu, &grid, &codebook, 2)?;
    let mut vor = Panel::new(
        format!("Voronoi cells, k = {k}, and Lloyd paths"),
        "x1",
        "x2",
    );
    vor.raster = Some(Raster {
        x: (lo, hi),
        y: (lo, hi),
        nx: g,
        ny: g,
        class: cells.indices.iter().map(|&c| c as usize).collect(),
    });
    let shown: Vec<(f64, f64)> = x
        .chunks_exact(2)
        .take(2500)
        .map(|p| (p[0] as f64, p[1] as f64))
        .collect();
    vor.series
        .push(Series::new("", shown, Mark::Points).colour(7).size(1));
    for j in 0..k {
        let pts = path
            .iter()
            .map(|c| (c[2 * j] as f64, c[2 * j + 1] as f64))
            .collect();
        vor.series
            .push(Series::new("", pts, Mark::LinePoints).colour(j).size(2));
    }
    let finals = codebook
        .chunks_exact(2)
        .map(|c| (c[0] as f64, c[1] as f64))
        .collect();
    vor.series
        .push(Series::new("", finals, Mark::Points).colour(3).size(6));
    vor.no_legend = true;

    let lloyd = Panel::new("distortion per Lloyd iteration", "iteration", "MSE")
        .log_y()
        .with(Series::from_ys(
            "k = 8, uniform random start",
            &mse,
            Mark::LinePoints,
        ));

    // Distortion against codebook size (k-means++ and 20 iterations at each k).
    let mut rd = Vec::new();
    for bits in 0..=10u32 {
        let kk = 1usize << bits;
        let mut cfg = KMeansConfig::new(kk);
        cfg.max_points_per_centroid = 0;
        let (_, rep) = KMeans::fit(&cpu, &x, 2, &cfg)?;
        rd.push((kk as f64, rep.mse));
        println!("k = {kk:5}  MSE = {:.5}", rep.mse);
    }
    let anchor = rd[6];
    let slope: Vec<(f64, f64)> = [4.0, 1024.0]
        .iter()
        .map(|&kk| (kk, anchor.1 * anchor.0 / kk))
        .collect();
    let rate = Panel::new("distortion vs codebook size", "k (codewords)", "MSE")
        .log_x()
        .log_y()
        .with(Series::new("k-means", rd, Mark::LinePoints))
        .with(Series::new("6 dB/bit per dim (D ∝ 1/k for d = 2)", slope, Mark::Dashed).colour(7));

    let fig =
        Figure::grid(vec![vor, lloyd, rate], 3, 560, 520).title("01 — vector quantization in 2-D");
    let f = out.join("01_vq_2d.png");
    fig.save(&f)?;
    println!(
        "final k = {k} MSE after {iters} Lloyd iterations: {:.4}",
        mse[iters - 1]
    );
    Ok(f)
}

/// `cargo test` runs this example (it is the fastest): the figure is a PNG of its size.
#[cfg(test)]
mod tests {
    #[test]
    fn the_example_writes_its_figure() {
        let dir = std::env::temp_dir().join(format!("vqkit-example-01-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = super::run(&dir).unwrap();
        let png = std::fs::read(&f).unwrap();
        assert_eq!(vqkit_plot::png_size(&png), Some((1680, 520)));
        assert!(
            png.len() > 20_000,
            "a figure with content, {} bytes",
            png.len()
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
