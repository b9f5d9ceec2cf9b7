//! # 03 — RQ-K-means stage by stage on Fashion-MNIST
//!
//! RQ-K-means trains a residual quantizer greedily: k-means on the data gives `C_1`;
//! k-means on the residuals `x - C_1[a_1]` gives `C_2`; and so on (example 02 has the
//! encoding rule). After `S` stages of `k` codewords a vector costs `S log2 k` bits.
//!
//! Plain k-means at `b` bits needs `2^b` codewords: its cost and its appetite for
//! training data grow exponentially with the rate, so on 3000 training images it stops
//! at 10 bits (k = 1024, three images per codeword), and its held-out error flattens well
//! before that: codewords fitted to one or two images do not generalise. RQ-K-means reaches any rate
//! with `S k` codewords. At the *same* bits a flat codebook is at least as good in
//! principle (an RVQ's `k^S` sums are one particular flat codebook), but it cannot be
//! trained or searched beyond small rates; RVQ trades a little error per bit for that.
//!
//! The images are 28 x 28 = 784-dimensional vectors with values in [0, 1]. The errors are
//! on 1000 held-out test images, relative to their mean squared norm.
//!
//! The figures:
//! - `docs/figures/03_rq_kmeans_stages.png`: (left) held-out relative error against bits
//!   per image for plain k-means (2^b codewords) and for RQ-K-means with k = 4, 16, 64 and
//!   256 codewords per stage (each point one more stage); (right) the same RQ errors
//!   against the number of stages, log scale: how codebook size and stage count trade.
//!   What to notice: up to 8 bits RQ-K-means with k = 256 *is* k-means; beyond 10 bits
//!   only RQ goes on; at a fixed rate, fewer larger codebooks win (k = 4 at 32 bits is
//!   worse than k = 256 at 16), but each extra stage still helps by a shrinking factor.
//! - `docs/figures/03_rq_kmeans_recon.png`: test images and their reconstructions after
//!   1, 2, 4 and 6 stages of k = 256 (8, 16, 32, 48 bits per image).
//!
//! Needs Fashion-MNIST (`sudo apt-get install dataset-fashion-mnist`, or `-- --data DIR`).
//! Run: `cargo run --release --example 03_rq_kmeans_stages [-- --out DIR]` (about a
//! minute on two cores).

#[path = "common/mod.rs"]
mod common;

use common::Res;
use std::time::Instant;
use vqkit::backend::cpu::CpuBackend;
use vqkit::quant::kmeans::{KMeans, KMeansConfig};
use vqkit::quant::rvq::{Rvq, RvqConfig};
use vqkit::quant::{mse, relative_error};
use vqkit_plot::{Corner, Figure, ImageRow, Mark, Panel, Series};

fn main() -> std::process::ExitCode {
    common::main(example)
}

fn example() -> Res {
    let start = Instant::now();
    let out = common::out_dir()?;
    let n: usize = common::arg("--n", 3000)?;
    let (x, test) = common::fashion_mnist(n, 1000)?;
    let d = 784;
    let cpu = CpuBackend::new(None)?;

    // Plain k-means at 1..=11 bits (k <= n / 1.5).
    let mut flat = Vec::new();
    for bits in 1..=11u32 {
        let k = 1usize << bits;
        if 3 * k > 2 * n {
            break;
        }
        let cfg = KMeansConfig::new(k);
        let (km, _) = KMeans::fit(&cpu, &x, d, &cfg)?;
        let a = vqkit::ops::assign(&cpu, &test, &km.centroids, d)?;
        let m = a.distances.iter().map(|&v| v as f64).sum::<f64>() / a.distances.len() as f64;
        let rel = relative_error(m, &test, d);
        println!("k-means     {bits:2} bits: relative error {rel:.4}");
        flat.push((bits as f64, rel));
    }

    let mut by_bits = Panel::new(
        "error against rate",
        "bits per image",
        "relative error (test)",
    )
    .log_y()
    .with(Series::new("k-means (2^b codewords)", flat, Mark::LinePoints).colour(7));
    let mut by_stage =
        Panel::new("error against stages", "stages", "relative error (test)").log_y();
    let mut recon = None;
    for (i, &(k, stages)) in [(4usize, 16usize), (16, 12), (64, 8), (256, 6)]
        .iter()
        .enumerate()
    {
        let mut cfg = RvqConfig::new(stages, k);
        cfg.seed = 1;
        let m = Rvq::fit(&cpu, &x, d, &cfg, &mut |_| {})?;
        let codes = m.encode(&cpu, &test, 1)?;
        let rel: Vec<f64> = m
            .analyse(&test, &codes)?
            .iter()
            .map(|s| s.relative_error)
            .collect();
        let bits = (k as f64).log2();
        println!(
            "RQ k = {k:3}: relative error per stage {}",
            rel.iter()
                .map(|v| format!("{v:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let label = format!("RQ-K-means, k = {k}");
        let pts = rel
            .iter()
            .enumerate()
            .map(|(s, &e)| ((s + 1) as f64 * bits, e))
            .collect();
        by_bits
            .series
            .push(Series::new(label.clone(), pts, Mark::LinePoints).colour(i));
        by_stage
            .series
            .push(Series::from_ys(label, &rel, Mark::LinePoints).colour(i));
        if k == 256 {
            recon = Some((m, codes));
        }
    }
    by_bits.legend = Corner::UpperRight;
    let fig = Figure::grid(vec![by_bits, by_stage], 2, 640, 480).title(format!(
        "03 — RQ-K-means on Fashion-MNIST ({n} training images, 1000 test)"
    ));
    let f1 = out.join("03_rq_kmeans_stages.png");
    fig.save(&f1)?;

    // Reconstructions after 1, 2, 4, 6 stages of k = 256: the sum of the first s
    // codewords of each image's greedy code.
    let (m, codes) = recon.ok_or("no k = 256 model")?;
    let show = 10;
    let mut rows = vec![ImageRow {
        label: "test images".into(),
        images: test
            .chunks_exact(d)
            .take(show)
            .map(<[f32]>::to_vec)
            .collect(),
    }];
    for s in [1usize, 2, 4, 6] {
        let mut imgs = Vec::new();
        let mut err = 0.0;
        for i in 0..show {
            let mut y = vec![0.0f32; d];
            for t in 0..s {
                let j = codes[i * m.stages + t] as usize;
                for (v, &c) in y.iter_mut().zip(&m.codebook(t)[j * d..(j + 1) * d]) {
                    *v += c;
                }
            }
            err += mse(&test[i * d..(i + 1) * d], &y, d);
            imgs.push(y);
        }
        println!(
            "{s} stages: MSE per image {:.2} on the shown images",
            err / show as f64
        );
        rows.push(ImageRow {
            label: format!("{s} stage{} ({} bits)", if s > 1 { "s" } else { "" }, 8 * s),
            images: imgs,
        });
    }
    let f2 = out.join("03_rq_kmeans_recon.png");
    vqkit_plot::save_image_grid(
        &f2,
        &rows,
        28,
        28,
        2,
        Some("RQ-K-means reconstructions, k = 256 per stage"),
    )?;
    common::done(&[f1, f2], start);
    Ok(())
}
