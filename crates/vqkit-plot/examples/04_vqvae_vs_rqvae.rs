//! # 04 — VQ-VAE against RQ-VAE on Fashion-MNIST
//!
//! A VQ-VAE puts a vector quantizer between an encoder and a decoder. The encoder maps a
//! 28 x 28 image to a 7 x 7 grid of D = 64-dimensional vectors `z_e`; each is replaced by
//! its nearest codeword `e_j` of K; the decoder reconstructs from the grid of codewords.
//! Gradients skip the quantizer (straight-through: `z_q = z_e + sg(e_j - z_e)`), a
//! commitment loss `beta |z_e - sg(e_j)|^2` keeps the encoder near its codewords, and the
//! codebook follows the vectors assigned to it by exponential moving averages. An image
//! costs `49 log2 K` bits.
//!
//! An **RQ-VAE** quantizes the same latent with S residual levels (example 02's RVQ
//! inside the network): level s quantizes what levels 1..s-1 left, so the decoder can
//! reconstruct from the first l levels at `49 l log2 K` bits. At S = 4, K = 512 it has
//! 4 x 512 codewords and reaches the rate a single codebook of 512^4 would need.
//!
//! **Dead codes.** Codewords that no vector picks get no update and stay unused for ever:
//! the codebook collapses to the few codes that won early, wasting bits. vqkit replaces a
//! codeword whose EMA usage count falls below a threshold (1 here) with a recent encoder
//! output; with the threshold at 0 nothing is replaced.
//!
//! **Small and short on purpose**: 2000 training images, 2 epochs, batch 32 (about a
//! minute on two cores). The numbers are far from converged models' (see
//! `docs/vqvae-study.md` for full runs); the comparisons are what to look at.
//!
//! The figures:
//! - `docs/figures/04_vqvae_vs_rqvae.png`: training loss per step of each run; test PSNR
//!   against bits per image (the VQ-VAE, and the RQ-VAE decoded from 1..4 levels); the
//!   test-set use of each of the 512 codewords of a VQ-VAE with dead-code replacement
//!   off and on (sorted counts: a long flat tail at zero is collapse).
//! - `docs/figures/04_rqvae_levels.png`: test images and the RQ-VAE's reconstructions
//!   from 1, 2, 3 and 4 levels.
//!
//! What to notice: without replacement the VQ-VAE settles on a few dozen codes (a
//! 9-bit code carrying about 5 bits) and reconstructs worse at the same rate; with it
//! every code is in use. The RQ-VAE's first level matches the VQ-VAE, and each further
//! level adds less PSNR than the one before: after 2 short epochs the decoder has not yet
//! learned to use fine residual detail.
//!
//! Needs Fashion-MNIST (`sudo apt-get install dataset-fashion-mnist`, or `-- --data DIR`).
//! Run: `cargo run --release --example 04_vqvae_vs_rqvae [-- --out DIR --n 2000 --epochs 2]`.

#[path = "common/mod.rs"]
mod common;

use common::Res;
use std::time::Instant;
use vqkit::backend::cpu::CpuBackend;
use vqkit_nn::data::gather;
use vqkit_nn::metrics::psnr;
use vqkit_nn::train::{epoch_order, evaluate, train_epoch};
use vqkit_nn::{Adam, Tensor, VqVae, VqVaeConfig};
use vqkit_plot::{Corner, Figure, ImageRow, Mark, Panel, Series};

const K: usize = 512;

struct Run {
    name: &'static str,
    model: VqVae,
    losses: Vec<(f64, f64)>,
}

fn train(
    cpu: &CpuBackend,
    name: &'static str,
    levels: usize,
    dead: f32,
    x: &Tensor,
    epochs: usize,
) -> Res<Run> {
    let mut cfg = VqVaeConfig::new(1, K, levels);
    cfg.dead_code_threshold = dead;
    cfg.seed = 1;
    let mut model = VqVae::new(cfg)?;
    let mut opt = Adam::new(1e-3);
    let mut losses = Vec::new();
    let t = Instant::now();
    for epoch in 0..epochs {
        let order = epoch_order(1, epoch, x.n());
        let base = losses.len();
        let stats = train_epoch(cpu, &mut model, &mut opt, x, 32, &order, epoch, |s| {
            losses.push(((base + s.step + 1) as f64, s.loss as f64));
        })?;
        println!(
            "{name}: epoch {} loss {:.4}, {} dead codes replaced, {:.0} images/s",
            epoch + 1,
            stats.loss,
            stats.replaced,
            stats.images as f64 / stats.seconds
        );
    }
    println!("{name}: trained in {:.1} s", t.elapsed().as_secs_f64());
    Ok(Run {
        name,
        model,
        losses,
    })
}

/// Codes of every level over `x`, in batches of 256.
fn codes(cpu: &CpuBackend, m: &mut VqVae, x: &Tensor) -> Res<Vec<Vec<u32>>> {
    let mut all = vec![Vec::new(); m.levels()];
    for start in (0..x.n()).step_by(256) {
        let idx: Vec<usize> = (start..(start + 256).min(x.n())).collect();
        let (c, _) = m.encode_to_indices(cpu, &gather(x, &idx)?)?;
        for (a, l) in all.iter_mut().zip(c) {
            a.extend(l);
        }
    }
    Ok(all)
}

fn main() -> std::process::ExitCode {
    common::main(example)
}

fn example() -> Res {
    let start = Instant::now();
    vqkit_nn::retain_freed_memory();
    let out = common::out_dir()?;
    let n: usize = common::arg("--n", 2000)?;
    let epochs: usize = common::arg("--epochs", 2)?;
    let n_test = 1000;
    let (x, t) = common::fashion_mnist(n, n_test)?;
    let x = Tensor::from_vec([n, 1, 28, 28], x)?;
    let test = Tensor::from_vec([n_test, 1, 28, 28], t)?;
    let cpu = CpuBackend::new(None)?;

    let mut runs = Vec::new();
    vqkit_nn::train::with_threads(None, || -> Res {
        runs.push(train(
            &cpu,
            "VQ-VAE, dead codes replaced",
            1,
            1.0,
            &x,
            epochs,
        )?);
        runs.push(train(&cpu, "VQ-VAE, no replacement", 1, 0.0, &x, epochs)?);
        runs.push(train(&cpu, "RQ-VAE, 4 levels", 4, 1.0, &x, epochs)?);
        Ok(())
    })??;

    let mut loss = Panel::new(
        format!("training loss ({n} images, {epochs} epochs)"),
        "step",
        "loss",
    )
    .log_y();
    let mut rate = Panel::new("test PSNR against rate", "bits per image", "PSNR (dB)")
        .legend(Corner::LowerRight);
    let mut usage = Vec::new();
    for (i, r) in runs.iter_mut().enumerate() {
        loss.series
            .push(Series::new(r.name, r.losses.clone(), Mark::Line).colour(i));
        let m = evaluate(&cpu, &mut r.model, &test)?;
        println!(
            "{}: test PSNR {:.2} dB, usage per level {:?}, {} bits per image",
            r.name,
            m.psnr,
            m.usage
                .iter()
                .map(|u| format!("{u:.2}"))
                .collect::<Vec<_>>(),
            m.bits_per_image
        );
        if r.model.levels() > 1 {
            // PSNR from the first l levels, l = 1..4.
            let levels = r.model.reconstruct_levels(&cpu, &test)?;
            let per_level = 49.0 * (K as f64).log2();
            let pts: Vec<(f64, f64)> = levels
                .iter()
                .enumerate()
                .map(|(l, y)| {
                    (
                        (l + 1) as f64 * per_level,
                        psnr(vqkit::quant::mse(&test.data, &y.data, 784) / 784.0),
                    )
                })
                .collect();
            println!(
                "{}: PSNR by levels {:?}",
                r.name,
                pts.iter()
                    .map(|p| format!("{:.2}", p.1))
                    .collect::<Vec<_>>()
            );
            rate.series
                .push(Series::new(r.name, pts, Mark::LinePoints).colour(i));
        } else {
            rate.series.push(
                Series::new(r.name, vec![(m.bits_per_image, m.psnr)], Mark::Points)
                    .colour(i)
                    .size(6),
            );
            let c = codes(&cpu, &mut r.model, &test)?;
            let mut counts = vec![0f64; K];
            for &j in &c[0] {
                counts[j as usize] += 1.0;
            }
            counts.sort_by(|a, b| b.total_cmp(a));
            let used = counts.iter().filter(|&&v| v > 0.0).count();
            let bars: Vec<(f64, f64)> = counts
                .iter()
                .enumerate()
                .map(|(j, &v)| (j as f64, v))
                .collect();
            let mut p = Panel::new(
                format!("{}: {used} of {K} codes used", r.name),
                "codeword (by use, descending)",
                "test vectors",
            )
            .with(Series::new("", bars, Mark::Bars).colour(i));
            p.no_legend = true;
            usage.push(p);
        }
    }
    let mut panels = vec![loss, rate];
    panels.extend(usage);
    let fig = Figure::grid(panels, 2, 620, 420)
        .title("04 — VQ-VAE and RQ-VAE on Fashion-MNIST (K = 512, small and short runs)");
    let f1 = out.join("04_vqvae_vs_rqvae.png");
    fig.save(&f1)?;

    // Reconstructions per RQ level of the first 10 test images.
    let rq = &mut runs[2].model;
    let idx: Vec<usize> = (0..10).collect();
    let shown = gather(&test, &idx)?;
    let levels = rq.reconstruct_levels(&cpu, &shown)?;
    let split = |t: &Tensor| {
        t.data
            .chunks_exact(784)
            .map(<[f32]>::to_vec)
            .collect::<Vec<_>>()
    };
    let mut rows = vec![ImageRow {
        label: "test images".into(),
        images: split(&shown),
    }];
    for (l, y) in levels.iter().enumerate() {
        rows.push(ImageRow {
            label: format!(
                "{} level{} ({} bits)",
                l + 1,
                if l > 0 { "s" } else { "" },
                441 * (l + 1)
            ),
            images: split(y),
        });
    }
    let f2 = out.join("04_rqvae_levels.png");
    vqkit_plot::save_image_grid(
        &f2,
        &rows,
        28,
        28,
        2,
        Some("RQ-VAE reconstructions from the first l levels (K = 512)"),
    )?;
    common::done(&[f1, f2], start);
    Ok(())
}
