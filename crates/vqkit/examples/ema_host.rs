//! The EMA step through the public host API against the backend's buffer method, on the
//! CPU: what a caller of `vqkit::ops::ema_update` (the VQ-EMA quantizer, the Python
//! package) pays beyond the step itself.
//!
//!     cargo run --release -p vqkit --example ema_host -- N K D [REPS] [THREADS]
//!
//! Points from `vqkit::rng::clustered`, codes uniform, both paths run alternately, REPS
//! times each (default 21); prints the medians and whether the two states agree bit for bit.

use std::time::Instant;
use vqkit::backend::cpu::CpuBackend;
use vqkit::backend::{Backend, EmaParams, Shape};
use vqkit::ops::{self, EmaState};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> vqkit::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("N K D [REPS] [THREADS]: integers"))
        .collect();
    let [n, k, d, ..] = args[..] else {
        panic!("usage: ema_host N K D [REPS] [THREADS]");
    };
    let reps = args.get(3).copied().unwrap_or(21).max(1);
    let b = CpuBackend::new(args.get(4).copied())?;
    let x = vqkit::rng::clustered(n, d, k, 0.3, 1);
    let mut rng = vqkit::rng::Rng::new(3);
    let idx: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
    let codebook = vqkit::rng::clustered(k, d, k, 0.3, 2);
    let params = EmaParams::default();
    let mut host = EmaState::with_dim(codebook.clone(), d)?;
    let (xb, ib) = (b.upload(&x)?, b.upload(&idx)?);
    let mut size = b.zeros::<f32>(k)?;
    let (mut esum, mut code) = (b.upload(&codebook)?, b.upload(&codebook)?);
    let (mut t_host, mut t_buf) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        ops::ema_update(&b, &x, &idx, d, params, &mut host)?;
        t_host.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let shape = Shape::new(n, k, d);
        b.ema_update(&xb, &ib, shape, params, &mut size, &mut esum, &mut code)?;
        t_buf.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let same = host.cluster_size == size && host.embed_sum == esum && host.codebook == code;
    println!(
        "{n} x {k} x {d}, {}: ops::ema_update {:.2} ms, Backend::ema_update {:.2} ms \
         (medians of {reps}); same bits: {same}",
        b.name(),
        median(t_host),
        median(t_buf),
    );
    Ok(())
}
