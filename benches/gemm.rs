//! GEMM and convolution throughput at the shapes of the VQ-VAE (batch 32, 28 x 28 x 1
//! input, hidden_dims [64, 128], residual_hidden 32), in GFLOP/s (2 flops per multiply-add).
//! Compare with the sgemm ceiling of the machine (about 125 GFLOP/s per core on the Zen 4
//! the numbers in the report came from).
//!
//! `cargo bench --bench gemm`; names are `cpu/{op}/{m}x{n}x{k}/{threads}t`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use vqkit::nn::gemm::{MatRef, Parallelism, default_isa, sgemm_with};
use vqkit::rng::Rng;

/// (label, m, n, k, A transposed, B transposed)
const SHAPES: &[(&str, usize, usize, usize, bool, bool)] = &[
    ("square", 1024, 1024, 1024, false, false),
    ("enc1_fwd", 64, 6272, 16, false, false),
    ("enc2_fwd", 128, 1568, 1024, false, false),
    ("enc2_dw", 128, 1024, 1568, false, true),
    ("enc2_dx", 1024, 1568, 128, true, false),
    ("enc3_fwd", 128, 1568, 1152, false, false),
    ("res3_fwd", 32, 1568, 1152, false, false),
    ("res3_dx", 1152, 1568, 32, true, false),
];

fn bench_gemm(cr: &mut Criterion) {
    let isa = default_isa();
    let mut g = cr.benchmark_group("cpu");
    g.sample_size(20);
    for &(label, m, n, k, ta, tb) in SHAPES {
        let mut rng = Rng::new(7);
        let a = rng.normal_vec(m * k);
        let b = rng.normal_vec(k * n);
        let mut c = rng.normal_vec(m * n);
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
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        for (threads, par) in [
            (1, Parallelism::None),
            (rayon::current_num_threads(), Parallelism::Rayon),
        ] {
            let id = BenchmarkId::new(format!("gemm_{label}"), format!("{m}x{n}x{k}/{threads}t"));
            g.bench_function(id, |bch| {
                bch.iter(|| {
                    sgemm_with(isa, par, m, n, k, am, bm, black_box(&mut c), n, false).unwrap()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_gemm);
criterion_main!(benches);
