//! # 02 — Residual VQ: random codebooks against trained ones
//!
//! Residual vector quantization (RVQ) spends its bits in stages. Stage 1 quantizes `x`
//! with codebook `C_1`; stage `s` quantizes what is left, the residual
//! `r_s = x - sum_{t<s} C_t[a_t]`, with its own codebook `C_s`:
//!
//! ```text
//! a_s = argmin_j |r_s - C_s[j]|^2,   r_{s+1} = r_s - C_s[a_s],   x^ = sum_s C_s[a_s]
//! ```
//!
//! With `k` codewords per stage, `S` stages cost `S log2 k` bits but only `S k` codewords
//! and `S k d` multiply-adds per vector to encode greedily, where one flat codebook at the
//! same rate would need `k^S` of each. The price: each stage is optimal only given the
//! ones before it, so the error falls by a roughly constant *factor* per stage.
//!
//! How much each stage removes depends on the codebooks. This example runs the same
//! greedy RVQ (8 stages of k = 256 on 32-dimensional anisotropic Gaussian data, variance
//! `1/(j+1)` along axis j) with three kinds of codebooks:
//! - **random Gaussian**: `C_s ~ N(0, sigma_s^2 I)`, `sigma_s` the RMS of the stage's
//!   residual per dimension (codewords as long as typical residuals: in 32 dimensions
//!   a random direction is nearly orthogonal to any residual, so little is removed);
//! - **random residuals**: `k` residual vectors of the stage drawn at random (what
//!   k-means' random initialisation starts from);
//! - **RQ-K-means**: each `C_s` trained by k-means on the residuals of the stage
//!   (`vqkit::quant::rvq::Rvq::fit`).
//!
//! What to notice: trained codebooks remove a constant fraction per stage (a straight
//! line on the log axis) and use nearly all 256 codes at every stage; random residual
//! codebooks use fewer and fewer codes after stage 1 (the few residuals drawn near the
//! origin win most points, and the rest are wasted bits).
//!
//! The figure (`docs/figures/02_random_vs_trained_rvq.png`): relative error
//! `E|x - x^|^2 / E|x|^2` on held-out vectors after each stage (log scale: a constant
//! factor per stage is a straight line), and each stage's perplexity (`exp` of the
//! entropy of its codes; 256 would be uniform use).
//!
//! Run: `cargo run --release --example 02_random_vs_trained_rvq [-- --out DIR]`
//! (a few seconds).

#[path = "common/mod.rs"]
mod common;

use common::Res;
use std::time::Instant;
use vqkit::backend::cpu::CpuBackend;
use vqkit::ops;
use vqkit::quant::mean_sq_norm;
use vqkit::quant::rvq::{Rvq, RvqConfig};
use vqkit::rng::Rng;
use vqkit_plot::{Figure, Mark, Panel, Series};

/// Rows of `d` values, coordinate j with variance 1/(j+1).
fn anisotropic(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut x = rng.normal_vec(n * d);
    for row in x.chunks_exact_mut(d) {
        for (j, v) in row.iter_mut().enumerate() {
            *v /= ((j + 1) as f32).sqrt();
        }
    }
    x
}

/// Builds random codebooks stage by stage on the training residuals: Gaussian of the
/// residual's RMS (`gaussian`) or `k` residual rows drawn at random.
fn random_rvq(
    cpu: &CpuBackend,
    x: &[f32],
    d: usize,
    stages: usize,
    k: usize,
    gaussian: bool,
    seed: u64,
) -> Res<Rvq> {
    let mut rng = Rng::new(seed);
    let n = x.len() / d;
    let mut r = x.to_vec();
    let mut codebooks = Vec::with_capacity(stages * k * d);
    for _ in 0..stages {
        let cb: Vec<f32> = if gaussian {
            let sigma = (mean_sq_norm(&r, d) / d as f64).sqrt() as f32;
            rng.normal_vec(k * d)
                .into_iter()
                .map(|v| v * sigma)
                .collect()
        } else {
            (0..k)
                .flat_map(|_| {
                    let i = rng.below(n);
                    r[i * d..(i + 1) * d].to_vec()
                })
                .collect()
        };
        let a = ops::assign(cpu, &r, &cb, d)?;
        for (row, &j) in r.chunks_exact_mut(d).zip(&a.indices) {
            for (v, &c) in row
                .iter_mut()
                .zip(&cb[j as usize * d..(j as usize + 1) * d])
            {
                *v -= c;
            }
        }
        codebooks.extend(cb);
    }
    Ok(Rvq {
        d,
        k,
        stages,
        shared: false,
        beam: 1,
        codebooks,
    })
}

fn main() -> std::process::ExitCode {
    common::main(example)
}

fn example() -> Res {
    let start = Instant::now();
    let out = common::out_dir()?;
    let cpu = CpuBackend::new(None)?;
    let (n, n_test, d, stages, k) = (20_000, 5_000, 32, 8, 256);
    let x = anisotropic(n, d, 1);
    let test = anisotropic(n_test, d, 2);

    let trained = Rvq::fit(&cpu, &x, d, &RvqConfig::new(stages, k), &mut |s| {
        println!("RQ-K-means: stage {} trained", s + 1)
    })?;
    let models = [
        (
            "random Gaussian",
            random_rvq(&cpu, &x, d, stages, k, true, 5)?,
        ),
        (
            "random residuals",
            random_rvq(&cpu, &x, d, stages, k, false, 6)?,
        ),
        ("RQ-K-means", trained),
    ];
    let mut err = Panel::new(
        "held-out error after each stage",
        "stages (8 bits each)",
        "relative error",
    )
    .log_y()
    .legend(vqkit_plot::Corner::LowerLeft);
    let mut ppl = Panel::new("codes in use per stage", "stage", "perplexity (of 256)")
        .legend(vqkit_plot::Corner::UpperLeft);
    for (i, (name, m)) in models.iter().enumerate() {
        let codes = m.encode(&cpu, &test, 1)?;
        let stats = m.analyse(&test, &codes)?;
        let rel: Vec<f64> = stats.iter().map(|s| s.relative_error).collect();
        let p: Vec<f64> = stats.iter().map(|s| s.perplexity).collect();
        println!(
            "{name:<18} relative error per stage: {}",
            rel.iter()
                .map(|v| format!("{v:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        err.series
            .push(Series::from_ys(*name, &rel, Mark::LinePoints).colour(i));
        ppl.series
            .push(Series::from_ys(*name, &p, Mark::LinePoints).colour(i));
    }
    ppl.y_range = Some((0.0, 360.0));
    let fig = Figure::grid(vec![err, ppl], 2, 620, 460).title(
        "02 — the same greedy RVQ (8 x 256 codewords, d = 32) with random and trained codebooks",
    );
    let f = out.join("02_random_vs_trained_rvq.png");
    fig.save(&f)?;
    common::done(&[f], start);
    Ok(())
}
