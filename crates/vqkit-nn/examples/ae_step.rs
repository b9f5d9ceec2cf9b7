//! Runs autoencoder training steps (batch 32, the yardstick's default configuration) on
//! random images and prints images/s: a plain loop for `perf record`.
//! `cargo run --release --example ae_step -- [steps]`

use std::time::Instant;
use vqkit::rng::Rng;
use vqkit_nn::{Adam, Decoder, Encoder, Tensor, VqVaeConfig, autoencoder_step};

fn main() -> vqkit::Result<()> {
    vqkit_nn::retain_freed_memory();
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let cfg = VqVaeConfig::new(1, 512, 1).net();
    let mut rng = Rng::new(5);
    let mut enc = Encoder::new(&cfg, &mut rng)?;
    let mut dec = Decoder::new(&cfg, &mut rng)?;
    let mut opt = Adam::new(2e-4);
    let batch = 32;
    let x = Tensor::from_vec(
        [batch, 1, 28, 28],
        (0..batch * 784).map(|_| rng.uniform() as f32).collect(),
    )?;
    // The steps run on a worker of rayon's pool, as `vqkit train-vqvae` runs them: from
    // outside it, every parallel region would hand the work over to the pool and back.
    let t0 = Instant::now();
    rayon::scope(|_| -> vqkit::Result<()> {
        for _ in 0..steps {
            autoencoder_step(&mut enc, &mut dec, &mut opt, &x)?;
        }
        Ok(())
    })?;
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{:.1} images/s ({} threads)",
        (steps * batch) as f64 / s,
        rayon::current_num_threads()
    );
    Ok(())
}
