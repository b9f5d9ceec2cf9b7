//! Criterion benches for every CPU kernel at the project's target shapes, named
//! `{backend}/{op}/{n}x{k}x{d}`, with throughput in FLOPs (assign, kmeans) or bytes (ema).
//! The portable kernel runs beside the SIMD one in the same run as the baseline.
//!
//!     cargo bench --bench kernels                  # everything (several minutes)
//!     cargo bench --bench kernels -- assign/100000x1024x128

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::time::Duration;
use vqkit::backend::cpu::{CpuBackend, Isa};
use vqkit::backend::{Backend, EmaParams, Shape};
use vqkit::bench::{Op, default_shapes, inputs};
use vqkit::ops::DeviceKMeans;

fn backends() -> Vec<(String, CpuBackend)> {
    let best = Isa::detect();
    let mut v = vec![(
        format!("cpu-{}", best.as_str()),
        CpuBackend::with_isa(None, best).expect("detected ISA"),
    )];
    if best != Isa::Portable {
        v.push((
            "cpu-portable".into(),
            CpuBackend::with_isa(None, Isa::Portable).expect("portable always exists"),
        ));
    }
    v
}

fn throughput(op: Op, s: Shape) -> Throughput {
    match (op.flops(s), op.bytes(s)) {
        (Some(f), _) => Throughput::Elements(f as u64),
        (None, Some(b)) => Throughput::Bytes(b as u64),
        (None, None) => Throughput::Elements(s.n as u64),
    }
}

fn kernels(c: &mut Criterion) {
    for (name, b) in backends() {
        for shape in default_shapes() {
            let Shape { n, k, d } = shape;
            let id = format!("{n}x{k}x{d}");
            let (x, cb) = inputs(shape, 42);
            let xb = b.upload(&x).unwrap();
            let cbuf = b.upload(&cb).unwrap();
            let mut norms = b.zeros::<f32>(k).unwrap();
            b.codeword_norms(&cbuf, k, d, &mut norms).unwrap();
            let mut idx = b.zeros::<u32>(n).unwrap();
            let mut dist = b.zeros::<f32>(n).unwrap();

            let mut g = c.benchmark_group(format!("{name}/assign"));
            g.sample_size(10).warm_up_time(Duration::from_millis(500));
            g.throughput(throughput(Op::Assign, shape));
            g.bench_function(BenchmarkId::from_parameter(&id), |bench| {
                bench.iter(|| {
                    b.distance_argmin(&xb, &cbuf, &norms, shape, &mut idx, &mut dist)
                        .unwrap();
                    b.synchronize().unwrap();
                })
            });
            g.finish();

            let mut g = c.benchmark_group(format!("{name}/ema"));
            g.sample_size(10).warm_up_time(Duration::from_millis(300));
            g.throughput(throughput(Op::Ema, shape));
            let mut size = b.zeros::<f32>(k).unwrap();
            let mut esum = b.upload(&cb).unwrap();
            let mut code = b.upload(&cb).unwrap();
            g.bench_function(BenchmarkId::from_parameter(&id), |bench| {
                bench.iter(|| {
                    let p = EmaParams::default();
                    b.ema_update(&xb, &idx, shape, p, &mut size, &mut esum, &mut code)
                        .unwrap();
                    b.synchronize().unwrap();
                })
            });
            g.finish();

            let mut g = c.benchmark_group(format!("{name}/kmeans"));
            g.sample_size(10).warm_up_time(Duration::from_millis(500));
            g.throughput(throughput(Op::Kmeans, shape));
            let mut km = DeviceKMeans::new(&b, &x, &cb, d).unwrap();
            g.bench_function(BenchmarkId::from_parameter(&id), |bench| {
                bench.iter(|| km.step().unwrap())
            });
            g.finish();
        }
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
