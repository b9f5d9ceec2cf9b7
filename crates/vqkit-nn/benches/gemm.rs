//! GEMM and convolution throughput at the shapes of the VQ-VAE (batch 32, 28 x 28 x 1
//! input, hidden_dims [64, 128], residual_hidden 32), in GFLOP/s (2 flops per multiply-add).
//! Compare with the f32 FMA ceiling that `vqkit bench` measures on the same machine.
//!
//! `cargo bench -p vqkit-nn --bench gemm`; names follow the workspace's
//! `{backend}/{op}/{shape}`: `cpu/gemm/{m}x{n}x{k}_{label}_{threads}t`,
//! `cpu/conv_fwd_bwd/{n}x{c}x{h}x{w}_{label}` (and `convT_fwd_bwd`), `cpu/ae_train_step/{n}x1x28x28_{threads}t`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use vqkit::backend::cpu::gemm::{MatRef, Parallelism, default_isa, sgemm_with};
use vqkit::rng::Rng;
use vqkit_nn::model::GEMM_SHAPES;
use vqkit_nn::{
    Adam, Conv2d, ConvTranspose2d, Decoder, Encoder, Tensor, VqVaeConfig, Window, autoencoder_step,
};

fn bench_gemm(cr: &mut Criterion) {
    let isa = default_isa();
    let mut g = cr.benchmark_group("cpu");
    g.sample_size(20);
    for &(label, m, n, k, ta, tb) in GEMM_SHAPES {
        let mut rng = Rng::new(7);
        let a = rng.normal_vec(m * k);
        let b = rng.normal_vec(k * n);
        let mut c = rng.normal_vec(m * n);
        let am = MatRef::operand(&a, m, k, ta);
        let bm = MatRef::operand(&b, k, n, tb);
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        for (threads, par) in [
            (1, Parallelism::None),
            (rayon::current_num_threads(), Parallelism::Rayon),
        ] {
            let id = BenchmarkId::new("gemm", format!("{m}x{n}x{k}_{label}_{threads}t"));
            g.bench_function(id, |bch| {
                bch.iter(|| {
                    sgemm_with(isa, par, m, n, k, am, bm, black_box(&mut c), n, false).unwrap()
                })
            });
        }
    }
    g.finish();
}

/// Forward + backward of single layers at the model's shapes: 3 GEMMs of `2 m n k` flops
/// each, plus im2col/col2im and layout transposes (counted as overhead, not flops).
fn bench_conv(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("cpu");
    g.sample_size(10);
    let mut rng = Rng::new(3);
    let down = Window {
        kernel: 4,
        stride: 2,
        padding: 1,
    };
    let same = Window {
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    // (label, cin, cout, window, input h = w, transposed)
    let cases = [
        ("enc2", 64, 128, down, 14, false),
        ("enc3", 128, 128, same, 7, false),
        ("dec1", 128, 64, down, 7, true),
    ];
    let batch = 32;
    for (label, cin, cout, win, hw, transposed) in cases {
        let x = Tensor::randn([batch, cin, hw, hw], 1.0, &mut rng);
        let kk = win.kernel * win.kernel;
        if transposed {
            let mut conv = ConvTranspose2d::new(cin, cout, win, 0, true, &mut rng).unwrap();
            let y = conv.forward(&x).unwrap();
            let flops = 3 * 2 * cin * cout * kk * batch * hw * hw;
            g.throughput(Throughput::Elements(flops as u64));
            let dy = Tensor::randn(y.shape, 1.0, &mut rng);
            g.bench_function(
                format!("convT_fwd_bwd/{batch}x{cin}x{hw}x{hw}_{label}"),
                |b| {
                    b.iter(|| {
                        conv.forward(black_box(&x)).unwrap();
                        conv.backward(black_box(&dy)).unwrap()
                    })
                },
            );
        } else {
            let mut conv = Conv2d::new(cin, cout, win, true, &mut rng).unwrap();
            let y = conv.forward(&x).unwrap();
            let flops = 3 * 2 * cin * cout * kk * batch * y.h() * y.w();
            g.throughput(Throughput::Elements(flops as u64));
            let dy = Tensor::randn(y.shape, 1.0, &mut rng);
            g.bench_function(
                format!("conv_fwd_bwd/{batch}x{cin}x{hw}x{hw}_{label}"),
                |b| {
                    b.iter(|| {
                        conv.forward(black_box(&x)).unwrap();
                        conv.backward(black_box(&dy)).unwrap()
                    })
                },
            );
        }
    }
    g.finish();
}

/// One Adam training step of the autoencoder (no quantizer) at the yardstick's default
/// configuration, in images/s: compare with `scripts/vqvae_torch.py` at the same threads.
fn bench_train_step(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("cpu");
    g.sample_size(10);
    let cfg = VqVaeConfig::new(1, 512, 1).net();
    let mut rng = Rng::new(5);
    let mut enc = Encoder::new(&cfg, &mut rng).unwrap();
    let mut dec = Decoder::new(&cfg, &mut rng).unwrap();
    let mut opt = Adam::new(2e-4);
    let batch = 32;
    let x = Tensor::from_vec(
        [batch, 1, 28, 28],
        (0..batch * 784).map(|_| rng.uniform() as f32).collect(),
    )
    .unwrap();
    g.throughput(Throughput::Elements(batch as u64));
    g.bench_function(
        format!(
            "ae_train_step/{batch}x1x28x28_{}t",
            rayon::current_num_threads()
        ),
        |b| b.iter(|| autoencoder_step(&mut enc, &mut dec, &mut opt, &x).unwrap()),
    );
    g.finish();
}

criterion_group!(benches, bench_gemm, bench_conv, bench_train_step);
criterion_main!(benches);
