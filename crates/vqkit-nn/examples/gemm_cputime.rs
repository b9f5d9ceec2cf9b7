//! GEMM GFLOP/s per CPU-second of the calling thread (from /proc/thread-self/schedstat), for
//! shared machines where wall-clock benchmarks measure the neighbours as much as the code.
//! Single-threaded, against the measured single-core FMA ceiling.
//! `cargo run --release --example gemm_cputime`

use vqkit::backend::cpu::gemm::{MatRef, Parallelism, default_isa, sgemm_with};
use vqkit::rng::Rng;
use vqkit_nn::model::GEMM_SHAPES;

fn cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let ceiling = vqkit::backend::cpu::peak::fma_gflops(default_isa(), 1);
    println!("single-core FMA ceiling: {ceiling:.1} GFLOP/s");
    for &(label, m, n, k, ta, tb) in GEMM_SHAPES {
        let mut rng = Rng::new(7);
        let a = rng.normal_vec(m * k);
        let b = rng.normal_vec(k * n);
        let mut c = vec![0.0f32; m * n];
        let am = MatRef::operand(&a, m, k, ta);
        let bm = MatRef::operand(&b, k, n, tb);
        let run = |c: &mut [f32]| {
            sgemm_with(
                default_isa(),
                Parallelism::None,
                m,
                n,
                k,
                am,
                bm,
                c,
                n,
                false,
            )
            .unwrap()
        };
        run(&mut c);
        let reps = (4e9 / (2 * m * n * k) as f64).ceil() as usize;
        let t0 = cpu_ns();
        for _ in 0..reps {
            run(&mut c);
        }
        let s = (cpu_ns() - t0) as f64 * 1e-9;
        let gflops = (2 * m * n * k * reps) as f64 / s * 1e-9;
        println!(
            "{label:10} {m}x{n}x{k}: {gflops:6.1} GFLOP/s per CPU-second, {:3.0}% of the ceiling",
            100.0 * gflops / ceiling
        );
    }
}
