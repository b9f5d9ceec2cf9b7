//! The no-quantizer baseline: the VQ-VAE's encoder and decoder trained as a plain
//! autoencoder on Fashion-MNIST (Adam, lr 1e-3, batch 32, the yardstick's data), printing
//! per epoch the mean training MSE, the test MSE and PSNR, and the first 12 step losses.
//! The counterpart of `scripts/vqvae_torch.py --codebook 0`.
//! `cargo run --release --example ae_train -- [seed] [images] [epochs] [data dir]`

use std::path::PathBuf;
use vqkit::rng::Rng;
use vqkit_nn::data::{self, DEFAULT_DATA_DIR, gather};
use vqkit_nn::train::epoch_order;
use vqkit_nn::{Adam, Decoder, Encoder, Layer, Tensor, VqVaeConfig, autoencoder_step};

fn main() -> vqkit::Result<()> {
    vqkit_nn::retain_freed_memory();
    let arg = |i: usize, default: usize| -> usize {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (seed, limit, epochs) = (arg(1, 0) as u64, arg(2, 10_000), arg(3, 2));
    let dir = std::env::args()
        .nth(4)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let cfg = VqVaeConfig::new(1, 512, 1).net();
    let mut rng = Rng::new(seed);
    let mut enc = Encoder::new(&cfg, &mut rng)?;
    let mut dec = Decoder::new(&cfg, &mut rng)?;
    let mut opt = Adam::new(1e-3);
    let train = data::load_split(&dir, "train", Some(limit))?.images;
    let test = data::load_split(&dir, "t10k", Some(limit))?.images;
    let per = train.c() * train.h() * train.w();
    let shape = |n: usize| [n, train.c(), train.h(), train.w()];
    let mut first = Vec::new();
    for epoch in 0..epochs {
        // The data order of `train-vqvae`.
        let order = epoch_order(seed, epoch, train.n());
        let (mut sum, mut steps) = (0.0f64, 0usize);
        for batch in order.chunks_exact(32) {
            let loss = autoencoder_step(&mut enc, &mut dec, &mut opt, &gather(&train, batch)?)?;
            if first.len() < 12 {
                first.push(format!("{loss:.3}"));
            }
            sum += loss as f64;
            steps += 1;
        }
        let mut se = 0.0f64;
        for chunk in test.data.chunks(256 * per) {
            let x = Tensor::from_vec(shape(chunk.len() / per), chunk.to_vec())?;
            let y = dec.forward(&enc.forward(&x)?)?;
            se += y
                .data
                .iter()
                .zip(&x.data)
                .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                .sum::<f64>();
        }
        let mse = se / test.data.len().max(1) as f64;
        println!(
            "seed {seed} epoch {}: train mse {:.5}, test mse {mse:.5}, test psnr {:.2} dB; first steps {}",
            epoch + 1,
            sum / steps.max(1) as f64,
            -10.0 * mse.log10(),
            first.join(" ")
        );
    }
    Ok(())
}
