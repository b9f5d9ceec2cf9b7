//! GEMM GFLOP/s per CPU-second of the calling thread (from /proc/thread-self/schedstat), for
//! shared machines where wall-clock benchmarks measure the neighbours as much as the code.
//! Single-threaded. `cargo run --release --example gemm_cputime`

use vqkit::nn::gemm::{MatRef, Parallelism, default_isa, sgemm_with};
use vqkit::rng::Rng;

fn cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let shapes: &[(&str, usize, usize, usize, bool, bool)] = &[
        ("square", 1024, 1024, 1024, false, false),
        ("enc1_fwd", 64, 6272, 16, false, false),
        ("enc2_fwd", 128, 1568, 1024, false, false),
        ("enc2_dw", 128, 1024, 1568, false, true),
        ("enc2_dx", 1024, 1568, 128, true, false),
        ("enc3_fwd", 128, 1568, 1152, false, false),
        ("res3_fwd", 32, 1568, 1152, false, false),
        ("res3_dx", 1152, 1568, 32, true, false),
    ];
    for &(label, m, n, k, ta, tb) in shapes {
        let mut rng = Rng::new(7);
        let a = rng.normal_vec(m * k);
        let b = rng.normal_vec(k * n);
        let mut c = vec![0.0f32; m * n];
        let am = if ta {
            MatRef::row_major(&a, m).t()
        } else {
            MatRef::row_major(&a, k)
        };
        let bm = if tb {
            MatRef::row_major(&b, k).t()
        } else {
            MatRef::row_major(&b, n)
        };
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
        println!(
            "{label:10} {m}x{n}x{k}: {:6.1} GFLOP/s per CPU-second",
            (2 * m * n * k * reps) as f64 / s * 1e-9
        );
    }
}
