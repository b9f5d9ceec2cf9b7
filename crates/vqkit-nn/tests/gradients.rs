//! Every backward of the neural-network core against central finite differences taken in f64
//! through the scalar references of `vqkit_nn::reference`, on seeded random shapes whose
//! strides and paddings leave remainders; then the whole encoder -> decoder with MSE.
//! Also: forward against the references, PyTorch-default initialisation, the optimisers'
//! update rules, and typed errors for bad shapes.
//!
//! The scalar loss is `L = sum(y * r)` for a fixed random r, so `dL/dy = r` and the analytic
//! gradients come from one backward with `dy = r`.

use vqkit::rng::Rng;
use vqkit_nn::reference::{self, ConvGeom};
use vqkit_nn::{
    Adam, Conv2d, ConvNetConfig, ConvTranspose2d, Decoder, Encoder, Layer, Layout, Param, Relu,
    ResidualBlock, Sgd, Tensor, Window, mse_loss,
};

const H: f64 = 1e-5;

fn f64v(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Central differences of `f` at `x0` in coordinates `idx`, compared with `analytic`.
/// Tolerance: `2e-3 (|numeric| + rms(numeric))`, independent of the tensor's size.
fn check_grad(name: &str, analytic: &[f32], x0: &[f64], idx: &[usize], f: &dyn Fn(&[f64]) -> f64) {
    assert_eq!(analytic.len(), x0.len(), "{name}: gradient length");
    let mut x = x0.to_vec();
    let numeric: Vec<f64> = idx
        .iter()
        .map(|&i| {
            x[i] = x0[i] + H;
            let fp = f(&x);
            x[i] = x0[i] - H;
            let fm = f(&x);
            x[i] = x0[i];
            (fp - fm) / (2.0 * H)
        })
        .collect();
    let rms = (numeric.iter().map(|v| v * v).sum::<f64>() / numeric.len().max(1) as f64).sqrt();
    for (&i, &num) in idx.iter().zip(&numeric) {
        let a = analytic[i] as f64;
        let tol = 2e-3 * (num.abs() + rms) + 1e-9;
        assert!(
            (a - num).abs() <= tol,
            "{name}[{i}]: analytic {a} vs numeric {num} (rms {rms})"
        );
    }
}

/// Every index of a small tensor, a seeded sample of a large one (seeded by its length).
fn all(len: usize) -> Vec<usize> {
    if len <= 600 {
        (0..len).collect()
    } else {
        sample(len, 150, &mut Rng::new(len as u64))
    }
}

/// Up to `count` distinct seeded indices of `0..len`.
fn sample(len: usize, count: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..len).collect();
    rng.shuffle(&mut v);
    v.truncate(count);
    v
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn assert_close(name: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len().max(1) as f64).sqrt();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 1e-4 * (w.abs() + rms) + 1e-6,
            "{name}[{i}]: {g} vs {w}"
        );
    }
}

fn bias64(b: &Option<Param>) -> Vec<f64> {
    b.as_ref().map(|p| f64v(&p.value)).unwrap_or_default()
}

/// conv2d: (n, cin, h, w, cout, kernel, stride, padding, bias)
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize, bool);

const CONV_CASES: &[ConvCase] = &[
    (2, 3, 7, 5, 4, 3, 2, 1, true), // odd sizes, stride 2: the last window is cut short
    (1, 2, 6, 6, 3, 4, 2, 1, true), // the encoder's 4x4 stride-2 window
    (3, 1, 5, 8, 2, 1, 1, 0, true), // 1x1 projection
    (1, 2, 8, 7, 2, 3, 3, 0, false), // stride 3: remainder columns never read
    (2, 2, 4, 3, 3, 2, 1, 2, true), // padding larger than half the kernel
    // Stride 1 with cout <= cin: dx through the flipped-kernel convolution of dy.
    (2, 4, 5, 6, 3, 3, 1, 1, true), // the residual block's 3x3 (channels shrink)
    (1, 3, 6, 5, 3, 3, 1, 0, false), // no padding: dy is padded by k - 1
    (2, 5, 4, 4, 2, 2, 1, 1, true), // even kernel: dy is not padded, output grows by one
    (2, 4, 3, 3, 2, 1, 1, 0, true), // 1x1 projection down
    // Batches of 16 on the model's planes: a GEMM column panel spans 3 pixels, so panels
    // of border pixels skip the taps that read padding (the masks are in play).
    (16, 5, 7, 7, 4, 3, 1, 1, true),   // flipped-kernel dx
    (16, 3, 7, 7, 5, 3, 1, 1, false),  // col2im dx, tiles of padding left unwritten
    (16, 3, 14, 14, 4, 4, 2, 1, true), // the encoder's 4x4 stride-2 window
];

#[test]
fn conv2d_backward_matches_finite_differences() {
    for (case, &(n, cin, h, w, cout, k, s, p, bias)) in CONV_CASES.iter().enumerate() {
        let mut rng = Rng::new(100 + case as u64);
        let win = Window {
            kernel: k,
            stride: s,
            padding: p,
        };
        let g = ConvGeom {
            kernel: k,
            stride: s,
            padding: p,
        };
        let mut conv = Conv2d::new(cin, cout, win, bias, &mut rng).unwrap();
        let x = Tensor::randn([n, cin, h, w], 1.0, &mut rng);
        let y = conv.forward(&x).unwrap();
        let (w64, b64, x64) = (f64v(&conv.weight.value), bias64(&conv.bias), f64v(&x.data));
        let (yr, ys) = reference::conv2d(&x64, x.shape, &w64, &b64, cout, g);
        assert_eq!(y.shape, ys);
        assert_close("conv2d forward", &y.data, &yr);
        let r = Tensor::randn(ys, 1.0, &mut rng);
        let r64 = f64v(&r.data);
        // Gradients accumulate: start from a known nonzero value and subtract it after.
        conv.weight.grad.fill(0.5);
        let dx = conv.backward(&r).unwrap();
        let dw: Vec<f32> = conv.weight.grad.iter().map(|g| g - 0.5).collect();
        let name = format!("conv2d case {case}");
        check_grad(
            &format!("{name} dx"),
            &dx.data,
            &x64,
            &all(x64.len()),
            &|xv| dot(&reference::conv2d(xv, x.shape, &w64, &b64, cout, g).0, &r64),
        );
        check_grad(&format!("{name} dW"), &dw, &w64, &all(w64.len()), &|wv| {
            dot(&reference::conv2d(&x64, x.shape, wv, &b64, cout, g).0, &r64)
        });
        if let Some(b) = &conv.bias {
            check_grad(
                &format!("{name} db"),
                &b.grad,
                &b64,
                &all(b64.len()),
                &|bv| dot(&reference::conv2d(&x64, x.shape, &w64, bv, cout, g).0, &r64),
            );
        }
    }
}

/// conv_transpose2d: (n, cin, h, w, cout, kernel, stride, padding, output_padding)
type ConvTCase = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

const CONVT_CASES: &[ConvTCase] = &[
    (2, 3, 3, 4, 2, 4, 2, 1, 0),  // the decoder's 4x4 stride-2 window
    (1, 2, 3, 3, 3, 3, 2, 1, 1),  // output_padding fills the last row and column
    (2, 2, 2, 3, 2, 3, 3, 2, 2),  // stride 3, heavy cropping
    (1, 3, 4, 2, 2, 1, 1, 0, 0),  // 1x1
    (16, 4, 7, 7, 3, 4, 2, 1, 0), // the decoder's window on a batch of 16: masks in play
];

#[test]
fn conv_transpose2d_backward_matches_finite_differences() {
    for (case, &(n, cin, h, w, cout, k, s, p, op)) in CONVT_CASES.iter().enumerate() {
        let mut rng = Rng::new(200 + case as u64);
        let win = Window {
            kernel: k,
            stride: s,
            padding: p,
        };
        let g = ConvGeom {
            kernel: k,
            stride: s,
            padding: p,
        };
        let mut conv = ConvTranspose2d::new(cin, cout, win, op, true, &mut rng).unwrap();
        let x = Tensor::randn([n, cin, h, w], 1.0, &mut rng);
        let y = conv.forward(&x).unwrap();
        let (w64, b64, x64) = (f64v(&conv.weight.value), bias64(&conv.bias), f64v(&x.data));
        let refy = |xv: &[f64], wv: &[f64], bv: &[f64]| {
            reference::conv_transpose2d(xv, x.shape, wv, bv, cout, g, op)
        };
        let (yr, ys) = refy(&x64, &w64, &b64);
        assert_eq!(y.shape, ys);
        assert_close("conv_transpose2d forward", &y.data, &yr);
        let r = Tensor::randn(ys, 1.0, &mut rng);
        let r64 = f64v(&r.data);
        let dx = conv.backward(&r).unwrap();
        let name = format!("conv_transpose2d case {case}");
        check_grad(
            &format!("{name} dx"),
            &dx.data,
            &x64,
            &all(x64.len()),
            &|xv| dot(&refy(xv, &w64, &b64).0, &r64),
        );
        check_grad(
            &format!("{name} dW"),
            &conv.weight.grad,
            &w64,
            &all(w64.len()),
            &|wv| dot(&refy(&x64, wv, &b64).0, &r64),
        );
        let db = &conv.bias.as_ref().unwrap().grad;
        check_grad(&format!("{name} db"), db, &b64, &all(b64.len()), &|bv| {
            dot(&refy(&x64, &w64, bv).0, &r64)
        });
    }
}

/// Inputs kept at least 0.05 away from ReLU's kink, where finite differences are undefined.
fn away_from_zero(t: &mut Tensor) {
    t.data.iter_mut().for_each(|v| {
        if v.abs() < 0.05 {
            *v = 0.05f32.copysign(*v);
        }
    });
}

#[test]
fn relu_and_mse_backward_match_finite_differences() {
    let mut rng = Rng::new(300);
    let mut x = Tensor::randn([2, 3, 5, 3], 1.0, &mut rng);
    away_from_zero(&mut x);
    let mut relu = Relu::default();
    let y = relu.forward(&x).unwrap();
    let x64 = f64v(&x.data);
    assert_close("relu forward", &y.data, &reference::relu(&x64));
    let r = Tensor::randn(y.shape, 1.0, &mut rng);
    let r64 = f64v(&r.data);
    let dx = relu.backward(&r).unwrap();
    check_grad("relu dx", &dx.data, &x64, &all(x64.len()), &|xv| {
        dot(&reference::relu(xv), &r64)
    });

    let t = Tensor::randn(x.shape, 1.0, &mut rng);
    let t64 = f64v(&t.data);
    let (loss, dl) = mse_loss(&x, &t).unwrap();
    assert!((loss as f64 - reference::mse(&x64, &t64)).abs() < 1e-5 * loss as f64);
    check_grad("mse dx", &dl.data, &x64, &all(x64.len()), &|xv| {
        reference::mse(xv, &t64)
    });
}

/// The f64 mirror of the models, reading parameters in `params_mut` order.
struct RefNet<'a> {
    p: &'a [Vec<f64>],
    at: usize,
}

impl RefNet<'_> {
    fn take(&mut self) -> &[f64] {
        self.at += 1;
        &self.p[self.at - 1]
    }
    fn conv(
        &mut self,
        x: &[f64],
        xs: [usize; 4],
        cout: usize,
        g: ConvGeom,
        bias: bool,
    ) -> (Vec<f64>, [usize; 4]) {
        let w = self.take().to_vec();
        let b = if bias {
            self.take().to_vec()
        } else {
            Vec::new()
        };
        reference::conv2d(x, xs, &w, &b, cout, g)
    }
    fn convt(
        &mut self,
        x: &[f64],
        xs: [usize; 4],
        cout: usize,
        g: ConvGeom,
    ) -> (Vec<f64>, [usize; 4]) {
        let w = self.take().to_vec();
        let b = self.take().to_vec();
        reference::conv_transpose2d(x, xs, &w, &b, cout, g, 0)
    }
    fn block(&mut self, x: &[f64], xs: [usize; 4], hidden: usize) -> Vec<f64> {
        let h = reference::relu(x);
        let (h, hs) = self.conv(&h, xs, hidden, G3, false);
        let h = reference::relu(&h);
        let (h, _) = self.conv(&h, hs, xs[1], G1, false);
        h.iter().zip(x).map(|(a, b)| a + b).collect()
    }
    fn stack(&mut self, x: &[f64], xs: [usize; 4], cfg: &ConvNetConfig) -> Vec<f64> {
        let mut h = x.to_vec();
        for _ in 0..cfg.num_residual_layers {
            h = self.block(&h, xs, cfg.residual_hidden);
        }
        reference::relu(&h)
    }
    fn encoder(
        &mut self,
        x: &[f64],
        xs: [usize; 4],
        cfg: &ConvNetConfig,
    ) -> (Vec<f64>, [usize; 4]) {
        let (mut h, mut hs) = (x.to_vec(), xs);
        for &c in &cfg.hidden_dims {
            let (y, ys) = self.conv(&h, hs, c, G4, true);
            (h, hs) = (reference::relu(&y), ys);
        }
        let (h, hs) = self.conv(&h, hs, hs[1], G3, true);
        let h = self.stack(&h, hs, cfg);
        self.conv(&h, hs, cfg.embedding_dim, G1, true)
    }
    fn decoder(
        &mut self,
        z: &[f64],
        zs: [usize; 4],
        cfg: &ConvNetConfig,
    ) -> (Vec<f64>, [usize; 4]) {
        let last = *cfg.hidden_dims.last().unwrap();
        let (h, hs) = self.conv(z, zs, last, G3, true);
        let (mut h, mut hs) = (self.stack(&h, hs, cfg), hs);
        for i in (0..cfg.hidden_dims.len()).rev() {
            let out = if i == 0 {
                cfg.in_channels
            } else {
                cfg.hidden_dims[i - 1]
            };
            let (y, ys) = self.convt(&h, hs, out, G4);
            (h, hs) = (if i == 0 { y } else { reference::relu(&y) }, ys);
        }
        (h, hs)
    }
}

const G1: ConvGeom = ConvGeom {
    kernel: 1,
    stride: 1,
    padding: 0,
};
const G3: ConvGeom = ConvGeom {
    kernel: 3,
    stride: 1,
    padding: 1,
};
const G4: ConvGeom = ConvGeom {
    kernel: 4,
    stride: 2,
    padding: 1,
};

#[test]
fn residual_block_backward_matches_finite_differences() {
    let mut rng = Rng::new(400);
    let mut block = ResidualBlock::new(3, 2, &mut rng).unwrap();
    let x = Tensor::randn([2, 3, 5, 4], 1.0, &mut rng);
    let y = block.forward(&x).unwrap();
    let params: Vec<Vec<f64>> = block.params_mut().iter().map(|p| f64v(&p.value)).collect();
    let x64 = f64v(&x.data);
    let run = |ps: &[Vec<f64>], xv: &[f64]| RefNet { p: ps, at: 0 }.block(xv, x.shape, 2);
    assert_close("residual forward", &y.data, &run(&params, &x64));
    let r = Tensor::randn(y.shape, 1.0, &mut rng);
    let r64 = f64v(&r.data);
    let dx = block.backward(&r).unwrap();
    check_grad("residual dx", &dx.data, &x64, &all(x64.len()), &|xv| {
        dot(&run(&params, xv), &r64)
    });
    let grads: Vec<Vec<f32>> = block.params_mut().iter().map(|p| p.grad.clone()).collect();
    for (t, g) in grads.iter().enumerate() {
        check_grad(
            &format!("residual param {t}"),
            g,
            &params[t],
            &all(g.len()),
            &|pv| {
                let mut ps = params.clone();
                ps[t] = pv.to_vec();
                dot(&run(&ps, &x64), &r64)
            },
        );
    }
}

#[test]
fn encoder_decoder_mse_backward_matches_finite_differences() {
    let cfg = ConvNetConfig {
        in_channels: 2,
        hidden_dims: vec![3, 4],
        num_residual_layers: 2,
        residual_hidden: 3,
        embedding_dim: 3,
    };
    let mut rng = Rng::new(500);
    let mut enc = Encoder::new(&cfg, &mut rng).unwrap();
    let mut dec = Decoder::new(&cfg, &mut rng).unwrap();
    let x = Tensor::randn([2, 2, 8, 8], 1.0, &mut rng);
    let target = Tensor::randn(x.shape, 1.0, &mut rng);
    let z = enc.forward(&x).unwrap();
    assert_eq!(z.shape, [2, 3, 2, 2]);
    let xh = dec.forward(&z).unwrap();
    let (loss, dxh) = mse_loss(&xh, &target).unwrap();
    let dz = dec.backward(&dxh).unwrap();
    let dx = enc.backward(&dz).unwrap();

    let mut params: Vec<Vec<f64>> = enc.params_mut().iter().map(|p| f64v(&p.value)).collect();
    let n_enc = params.len();
    params.extend(dec.params_mut().iter().map(|p| f64v(&p.value)));
    let mut grads: Vec<Vec<f32>> = enc.params_mut().iter().map(|p| p.grad.clone()).collect();
    grads.extend(dec.params_mut().iter().map(|p| p.grad.clone()));
    let (x64, t64) = (f64v(&x.data), f64v(&target.data));
    let run = |ps: &[Vec<f64>], xv: &[f64]| {
        let (z, zs) = RefNet {
            p: &ps[..n_enc],
            at: 0,
        }
        .encoder(xv, x.shape, &cfg);
        let (y, _) = RefNet {
            p: &ps[n_enc..],
            at: 0,
        }
        .decoder(&z, zs, &cfg);
        reference::mse(&y, &t64)
    };
    let want = run(&params, &x64);
    assert!(
        (loss as f64 - want).abs() <= 1e-4 * want,
        "loss {loss} vs {want}"
    );
    let mut pick = Rng::new(501);
    check_grad(
        "model dx",
        &dx.data,
        &x64,
        &sample(x64.len(), 24, &mut pick),
        &|xv| run(&params, xv),
    );
    for (t, g) in grads.iter().enumerate() {
        let idx = sample(g.len(), 8, &mut pick);
        check_grad(&format!("model param {t}"), g, &params[t], &idx, &|pv| {
            let mut ps = params.clone();
            ps[t] = pv.to_vec();
            run(&ps, &x64)
        });
    }
}

#[test]
fn initialisation_follows_pytorch_bounds() {
    let mut rng = Rng::new(600);
    let win = Window {
        kernel: 4,
        stride: 2,
        padding: 1,
    };
    let conv = Conv2d::new(8, 16, win, true, &mut rng).unwrap();
    let bound = 1.0 / (8.0f32 * 16.0).sqrt(); // fan_in = cin k k
    // ConvTranspose2d: PyTorch takes fan_in from weight dim 1 (cout), so cout k k.
    let convt = ConvTranspose2d::new(16, 4, win, 0, true, &mut rng).unwrap();
    let bound_t = 1.0 / (4.0f32 * 16.0).sqrt();
    for (vals, b) in [
        (&conv.weight.value, bound),
        (&conv.bias.as_ref().unwrap().value, bound),
        (&convt.weight.value, bound_t),
        (&convt.bias.as_ref().unwrap().value, bound_t),
    ] {
        let max = vals.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(max <= b, "init exceeds the bound {b}: {max}");
        if vals.len() > 100 {
            assert!(max > 0.9 * b, "init does not fill U(-{b}, {b}): max {max}");
            let mean = vals.iter().sum::<f32>() / vals.len() as f32;
            assert!(mean.abs() < 0.1 * b, "init mean {mean}");
        }
    }
    // Same seed, same parameters.
    let again = Conv2d::new(8, 16, win, true, &mut Rng::new(600)).unwrap();
    assert_eq!(again.weight.value, conv.weight.value);
}

#[test]
fn adam_and_sgd_follow_pytorch_update_rules() {
    let grads = [[0.5f32, -2.0, 1e-3], [0.1, 0.3, -0.7], [-0.4, 0.0, 2.0]];
    // Adam, in f64 by the formula of torch.optim.Adam.
    let mut p = Param::new(vec![1.0, -1.0, 0.25]);
    let mut adam = Adam::new(0.01);
    let (mut m, mut v, mut w) = ([0.0f64; 3], [0.0f64; 3], [1.0f64, -1.0, 0.25]);
    for (t, g) in grads.iter().enumerate() {
        p.grad.copy_from_slice(g);
        adam.step(&mut [&mut p]).unwrap();
        let t = t as i32 + 1;
        for i in 0..3 {
            let gi = g[i] as f64;
            m[i] = 0.9 * m[i] + 0.1 * gi;
            v[i] = 0.999 * v[i] + 0.001 * gi * gi;
            let mh = m[i] / (1.0 - 0.9f64.powi(t));
            let vh = v[i] / (1.0 - 0.999f64.powi(t));
            w[i] -= 0.01 * mh / (vh.sqrt() + 1e-8);
        }
        for (&got, &want) in p.value.iter().zip(&w) {
            assert!(
                (got as f64 - want).abs() < 1e-6,
                "adam step {t}: {got} vs {want}"
            );
        }
    }
    // SGD with momentum 0.9: buf = g first, then 0.9 buf + g.
    let mut p = Param::new(vec![1.0, -1.0, 0.25]);
    let mut sgd = Sgd::new(0.1, 0.9);
    let (mut buf, mut w) = ([0.0f64; 3], [1.0f64, -1.0, 0.25]);
    for (t, g) in grads.iter().enumerate() {
        p.grad.copy_from_slice(g);
        sgd.step(&mut [&mut p]).unwrap();
        for i in 0..3 {
            buf[i] = if t == 0 {
                g[i] as f64
            } else {
                0.9 * buf[i] + g[i] as f64
            };
            w[i] -= 0.1 * buf[i];
            assert!((p.value[i] as f64 - w[i]).abs() < 1e-6);
        }
    }
    // A different parameter list is an error, not a silent mix-up.
    let mut q = Param::new(vec![0.0; 5]);
    assert!(adam.step(&mut [&mut q]).is_err());
    assert!(sgd.step(&mut [&mut q]).is_err());
}

#[test]
fn bad_shapes_are_typed_errors() {
    let mut rng = Rng::new(700);
    let win = Window {
        kernel: 3,
        stride: 1,
        padding: 0,
    };
    let mut conv = Conv2d::new(2, 3, win, true, &mut rng).unwrap();
    let x = Tensor::randn([1, 2, 5, 5], 1.0, &mut rng);
    assert!(conv.backward(&x).is_err(), "backward before forward");
    assert!(
        conv.forward(&Tensor::zeros([1, 3, 5, 5])).is_err(),
        "wrong channel count"
    );
    assert!(
        conv.forward(&Tensor::zeros([1, 2, 2, 5])).is_err(),
        "image smaller than kernel"
    );
    conv.forward(&x).unwrap();
    assert!(
        conv.backward(&Tensor::zeros([1, 3, 4, 3])).is_err(),
        "wrong gradient shape"
    );
    assert!(Tensor::from_vec([1, 2, 3, 4], vec![0.0; 23]).is_err());
    assert!(
        Window {
            kernel: 0,
            stride: 1,
            padding: 0
        } != win
    );
    assert!(
        Conv2d::new(
            2,
            3,
            Window {
                kernel: 3,
                stride: 0,
                padding: 0
            },
            true,
            &mut rng
        )
        .is_err()
    );
    assert!(
        ConvTranspose2d::new(
            2,
            3,
            Window {
                kernel: 3,
                stride: 2,
                padding: 0
            },
            2,
            true,
            &mut rng
        )
        .is_err()
    );
    let mut relu = Relu::default();
    relu.forward(&x).unwrap();
    assert!(relu.backward(&Tensor::zeros([1, 2, 5, 4])).is_err());
    assert!(mse_loss(&x, &Tensor::zeros([1, 2, 5, 4])).is_err());
    let bad = ConvNetConfig {
        in_channels: 1,
        hidden_dims: vec![],
        num_residual_layers: 1,
        residual_hidden: 2,
        embedding_dim: 2,
    };
    assert!(Encoder::new(&bad, &mut rng).is_err());
    let cfg = ConvNetConfig {
        hidden_dims: vec![2],
        ..bad
    };
    let mut enc = Encoder::new(&cfg, &mut rng).unwrap();
    assert!(
        enc.forward(&Tensor::zeros([1, 2, 8, 8])).is_err(),
        "wrong input channels"
    );
}

/// (n, c, h, w) -> rows (n h w, c), in f64.
fn to_rows(v: &[f64], s: [usize; 4]) -> Vec<f64> {
    let [n, c, h, w] = s;
    let p = h * w;
    let mut out = vec![0.0; v.len()];
    for i in 0..n {
        for ch in 0..c {
            for j in 0..p {
                out[(i * p + j) * c + ch] = v[(i * c + ch) * p + j];
            }
        }
    }
    out
}

fn from_rows(v: &[f64], s: [usize; 4]) -> Vec<f64> {
    let [n, c, h, w] = s;
    let p = h * w;
    let mut out = vec![0.0; v.len()];
    for i in 0..n {
        for ch in 0..c {
            for j in 0..p {
                out[(i * c + ch) * p + j] = v[(i * p + j) * c + ch];
            }
        }
    }
    out
}

/// The whole RQ-VAE (two levels, codebook loss) against finite differences. The straight-
/// through estimator is not the derivative of the forward value, so the f64 reference is the
/// surrogate whose value and derivative at the current parameters are what STE defines,
/// with the codes held at those the forward chose (z0, q0, r0: the values there):
/// ```text
/// L = mse(dec(z - z0 + Q0), x) + beta sum_s mean(z - P_s0)^2 + sum_s mean(r_s0 - C_s[a_s])^2
/// ```
/// where `P_s0 = sum_{t <= s} q_t0` and `Q0 = P_{S-1,0}`.
#[test]
fn whole_rqvae_backward_matches_finite_differences() {
    use vqkit::backend::cpu::CpuBackend;
    use vqkit_nn::{QuantizerKind, VqVae, VqVaeConfig};
    let b = CpuBackend::new(Some(1)).unwrap();
    let mut cfg = VqVaeConfig::new(1, 4, 2);
    cfg.hidden_dims = vec![3, 4];
    cfg.num_residual_layers = 1;
    cfg.residual_hidden = 2;
    cfg.embedding_dim = 3;
    cfg.quantizer = QuantizerKind::Codebook;
    cfg.dead_code_threshold = 0.0;
    cfg.seed = 600;
    let mut m = VqVae::new(cfg.clone()).unwrap();
    let mut rng = Rng::new(601);
    let x = Tensor::randn([2, 1, 8, 8], 1.0, &mut rng);
    // The first training forward fits the codebooks by k-means, which leaves each codeword
    // at the mean of its rows (a codebook gradient of ~0); move them off it.
    m.forward(&b, &x, true).unwrap();
    for c in &mut m.codebooks {
        c.value
            .iter_mut()
            .for_each(|v| *v += 0.3 * rng.normal() as f32);
    }
    m.zero_grad();
    let out = m.forward(&b, &x, true).unwrap();
    m.backward().unwrap();
    let params: Vec<Vec<f64>> = m.params_mut().iter().map(|p| f64v(&p.value)).collect();
    let grads: Vec<Vec<f32>> = m.params_mut().iter().map(|p| p.grad.clone()).collect();
    let n_enc = m.encoder.params_mut().len();
    let n_dec = m.decoder.params_mut().len();
    let net = cfg.net();
    let d = cfg.embedding_dim;
    let x64 = f64v(&x.data);
    let enc = |ps: &[Vec<f64>]| {
        RefNet {
            p: &ps[..n_enc],
            at: 0,
        }
        .encoder(&x64, x.shape, &net)
    };
    let (z0, zs) = enc(&params);
    let z0r = to_rows(&z0, zs);
    let rows = z0r.len() / d;
    // q_s0 rows and partial sums from the chosen codes.
    let mut partial = Vec::new();
    let mut resid = Vec::new();
    let mut acc = vec![0.0f64; z0r.len()];
    for (s, idx) in out.indices.iter().enumerate() {
        let c = &params[n_enc + n_dec + s];
        resid.push(z0r.iter().zip(&acc).map(|(a, b)| a - b).collect::<Vec<_>>());
        for (i, &j) in idx.iter().enumerate() {
            for t in 0..d {
                acc[i * d + t] += c[j as usize * d + t];
            }
        }
        partial.push(acc.clone());
    }
    let beta = cfg.commitment_cost as f64;
    let elems = (rows * d) as f64;
    let run = |ps: &[Vec<f64>]| {
        let (z, _) = enc(ps);
        let zr = to_rows(&z, zs);
        let dec_in: Vec<f64> = zr
            .iter()
            .zip(&z0r)
            .zip(&acc)
            .map(|((z, z0), q)| z - z0 + q)
            .collect();
        let (y, _) = RefNet {
            p: &ps[n_enc..n_enc + n_dec],
            at: 0,
        }
        .decoder(&from_rows(&dec_in, zs), zs, &net);
        let mut l = reference::mse(&y, &x64);
        for (s, idx) in out.indices.iter().enumerate() {
            let commit: f64 = zr
                .iter()
                .zip(&partial[s])
                .map(|(a, b)| (a - b).powi(2))
                .sum();
            l += beta * commit / elems;
            let c = &ps[n_enc + n_dec + s];
            let mut code = 0.0;
            for (i, &j) in idx.iter().enumerate() {
                for t in 0..d {
                    code += (resid[s][i * d + t] - c[j as usize * d + t]).powi(2);
                }
            }
            l += code / elems;
        }
        l
    };
    let want = run(&params);
    assert!(
        (out.loss() as f64 - want).abs() <= 1e-4 * want,
        "loss {} vs {want}",
        out.loss()
    );
    let mut pick = Rng::new(602);
    for (t, g) in grads.iter().enumerate() {
        let idx = sample(g.len(), 8, &mut pick);
        check_grad(&format!("rqvae param {t}"), g, &params[t], &idx, &|pv| {
            let mut ps = params.clone();
            ps[t] = pv.to_vec();
            run(&ps)
        });
    }
    // The codebook gradients must be nonzero somewhere (the check above is not vacuous).
    assert!(grads[n_enc + n_dec].iter().any(|&g| g != 0.0));
}

/// Layers keep buffers between steps: a layer run on batches of changing size must give
/// exactly what a fresh copy of it gives on each batch.
#[test]
fn reused_layers_match_fresh_ones_bit_for_bit() {
    let convs: &[(usize, usize, Window)] = &[
        (
            4,
            3,
            Window {
                kernel: 3,
                stride: 1,
                padding: 1,
            },
        ), // flipped-kernel dx
        (
            3,
            4,
            Window {
                kernel: 3,
                stride: 1,
                padding: 1,
            },
        ), // col2im dx
        (
            2,
            3,
            Window {
                kernel: 4,
                stride: 2,
                padding: 1,
            },
        ),
    ];
    for (case, &(cin, cout, win)) in convs.iter().enumerate() {
        let seed = 300 + case as u64;
        let mut reused = Conv2d::new(cin, cout, win, true, &mut Rng::new(seed)).unwrap();
        let mut reused_t =
            ConvTranspose2d::new(cin, cout, win, 0, true, &mut Rng::new(seed)).unwrap();
        let mut rng = Rng::new(seed + 1);
        for n in [3usize, 1, 2] {
            let x = Tensor::randn([n, cin, 6, 5], 1.0, &mut rng);
            let mut fresh = Conv2d::new(cin, cout, win, true, &mut Rng::new(seed)).unwrap();
            let mut fresh_t =
                ConvTranspose2d::new(cin, cout, win, 0, true, &mut Rng::new(seed)).unwrap();
            let (y, yf) = (reused.forward(&x).unwrap(), fresh.forward(&x).unwrap());
            assert_eq!(y.data, yf.data, "conv {case} forward, batch {n}");
            let dy = Tensor::randn(y.shape, 1.0, &mut rng);
            reused.zero_grad();
            let (dx, dxf) = (reused.backward(&dy).unwrap(), fresh.backward(&dy).unwrap());
            assert_eq!(dx.data, dxf.data, "conv {case} dx, batch {n}");
            assert_eq!(
                reused.weight.grad, fresh.weight.grad,
                "conv {case} dW, batch {n}"
            );
            let (y, yf) = (reused_t.forward(&x).unwrap(), fresh_t.forward(&x).unwrap());
            assert_eq!(y.data, yf.data, "conv_t {case} forward, batch {n}");
            let dy = Tensor::randn(y.shape, 1.0, &mut rng);
            reused_t.zero_grad();
            let (dx, dxf) = (
                reused_t.backward(&dy).unwrap(),
                fresh_t.backward(&dy).unwrap(),
            );
            assert_eq!(dx.data, dxf.data, "conv_t {case} dx, batch {n}");
            assert_eq!(
                reused_t.weight.grad, fresh_t.weight.grad,
                "conv_t {case} dW, batch {n}"
            );
        }
    }
}

/// The convolutions run in the batch-innermost layout and convert NCHW tensors on the way
/// in and out: the two layouts give the same bits, forward and backward.
#[test]
fn layouts_give_the_same_bits() {
    let win = Window {
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    let down = Window {
        kernel: 4,
        stride: 2,
        padding: 1,
    };
    for (case, (cin, cout, win)) in [(5, 4, win), (3, 5, win), (3, 4, down)]
        .into_iter()
        .enumerate()
    {
        let mut rng = Rng::new(900 + case as u64);
        let x = Tensor::randn([16, cin, 7, 7], 1.0, &mut rng);
        let xc = x.to_layout(Layout::Chwn);
        let mut a = Conv2d::new(cin, cout, win, true, &mut Rng::new(case as u64)).unwrap();
        let mut b = Conv2d::new(cin, cout, win, true, &mut Rng::new(case as u64)).unwrap();
        let (y, yc) = (a.forward(&x).unwrap(), b.forward(&xc).unwrap());
        assert_eq!((y.layout, yc.layout), (Layout::Nchw, Layout::Chwn));
        assert_eq!(
            y.data,
            yc.to_layout(Layout::Nchw).data,
            "conv {case} forward"
        );
        let dy = Tensor::randn(y.shape, 1.0, &mut rng);
        // dy in the other layout than the forward's input is an error, not a wrong answer.
        assert!(b.backward(&dy).is_err());
        let (dx, dxc) = (
            a.backward(&dy).unwrap(),
            b.backward(&dy.to_layout(Layout::Chwn)).unwrap(),
        );
        assert_eq!(dx.data, dxc.to_layout(Layout::Nchw).data, "conv {case} dx");
        assert_eq!(a.weight.grad, b.weight.grad, "conv {case} dW");
        let mut a = ConvTranspose2d::new(cin, cout, win, 0, true, &mut Rng::new(7)).unwrap();
        let mut b = ConvTranspose2d::new(cin, cout, win, 0, true, &mut Rng::new(7)).unwrap();
        let (y, yc) = (a.forward(&x).unwrap(), b.forward(&xc).unwrap());
        assert_eq!(
            y.data,
            yc.to_layout(Layout::Nchw).data,
            "conv_t {case} forward"
        );
        let dy = Tensor::randn(y.shape, 1.0, &mut rng);
        let (dx, dxc) = (
            a.backward(&dy).unwrap(),
            b.backward(&dy.to_layout(Layout::Chwn)).unwrap(),
        );
        assert_eq!(
            dx.data,
            dxc.to_layout(Layout::Nchw).data,
            "conv_t {case} dx"
        );
        assert_eq!(a.weight.grad, b.weight.grad, "conv_t {case} dW");
    }
    // A round trip through the other layout is the identity.
    let x = Tensor::randn([3, 2, 5, 4], 1.0, &mut Rng::new(1));
    assert_eq!(x.to_layout(Layout::Chwn).to_layout(Layout::Nchw), x);
}

/// `Encoder::backward_params` (what training calls) leaves exactly the parameter gradients
/// of the finite-difference-checked `backward`, only without the input gradient.
#[test]
fn encoder_backward_params_matches_backward() {
    let cfg = ConvNetConfig {
        in_channels: 2,
        hidden_dims: vec![3, 4],
        num_residual_layers: 1,
        residual_hidden: 2,
        embedding_dim: 3,
    };
    let mut full = Encoder::new(&cfg, &mut Rng::new(700)).unwrap();
    let mut params_only = Encoder::new(&cfg, &mut Rng::new(700)).unwrap();
    let mut rng = Rng::new(701);
    let x = Tensor::randn([2, 2, 12, 12], 1.0, &mut rng);
    let z = full.forward(&x).unwrap();
    assert_eq!(params_only.forward(&x).unwrap().data, z.data);
    let dz = Tensor::randn(z.shape, 1.0, &mut rng);
    full.zero_grad();
    params_only.zero_grad();
    full.backward(&dz).unwrap();
    params_only.backward_params(&dz).unwrap();
    let grads = |e: &mut Encoder| -> Vec<Vec<f32>> {
        e.params_mut().iter().map(|p| p.grad.clone()).collect()
    };
    assert_eq!(grads(&mut full), grads(&mut params_only));
    assert!(grads(&mut full).iter().flatten().any(|&g| g != 0.0));
}

/// The owned passes of a layer that overrides them (a convolution keeps the handed-over
/// input as its cache) against the borrowed ones, on twins made from one seed: outputs,
/// input gradients and parameter gradients bit for bit (`to_bits`, so -0 and +0 differ), in
/// both layouts. A second step, of another batch size, is also run on a fresh instance that
/// never saw the first, so a buffer kept from the first step shows.
fn check_owned_twin<L: Layer>(name: &str, make: &dyn Fn(&mut Rng) -> L, cin: usize, hw: usize) {
    fn bits(t: &Tensor) -> ([usize; 4], Layout, Vec<u32>) {
        (
            t.shape,
            t.layout,
            t.data.iter().map(|v| v.to_bits()).collect(),
        )
    }
    let step = |l: &mut L, x: &Tensor, dy: &Tensor, owned: bool| {
        let y = if owned {
            l.forward_owned(x.clone())
        } else {
            l.forward(x)
        }
        .unwrap();
        l.zero_grad();
        let dx = if owned {
            l.backward_owned(dy.clone())
        } else {
            l.backward(dy)
        }
        .unwrap();
        let grads: Vec<Vec<u32>> = l
            .params_mut()
            .into_iter()
            .map(|p| p.grad.iter().map(|v| v.to_bits()).collect())
            .collect();
        (bits(&y), bits(&dx), grads)
    };
    for layout in [Layout::Nchw, Layout::Chwn] {
        let (mut a, mut b) = (make(&mut Rng::new(3)), make(&mut Rng::new(3)));
        let mut rng = Rng::new(11);
        for n in [3, 2] {
            let x = Tensor::randn([n, cin, hw, hw], 1.0, &mut rng).into_layout(layout);
            let ys = make(&mut Rng::new(3)).forward(&x).unwrap().shape;
            let dy = Tensor::randn(ys, 1.0, &mut rng).into_layout(layout);
            let borrowed = step(&mut a, &x, &dy, false);
            assert!(
                borrowed == step(&mut b, &x, &dy, true),
                "{name} {layout:?} n={n}"
            );
            let fresh = step(&mut make(&mut Rng::new(3)), &x, &dy, true);
            assert!(
                borrowed == fresh,
                "{name} {layout:?} n={n}: not as a fresh layer"
            );
        }
    }
}

#[test]
fn owned_passes_match_borrowed_ones() {
    let window = |kernel, stride, padding| Window {
        kernel,
        stride,
        padding,
    };
    check_owned_twin(
        "strided conv2d",
        &|rng| Conv2d::new(3, 4, window(3, 2, 1), true, rng).unwrap(),
        3,
        7,
    );
    // Stride 1 takes dx as the full convolution with the flipped kernel.
    check_owned_twin(
        "conv2d",
        &|rng| Conv2d::new(3, 5, window(3, 1, 1), false, rng).unwrap(),
        3,
        6,
    );
    check_owned_twin(
        "conv_transpose2d",
        &|rng| ConvTranspose2d::new(3, 2, window(4, 2, 1), 1, true, rng).unwrap(),
        3,
        5,
    );
}

#[test]
fn relu_of_special_values() {
    let v = [
        f32::NAN,
        -0.0,
        0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -1.5,
        2.5,
    ];
    let x = Tensor::from_vec([1, 1, 1, v.len()], v.to_vec()).unwrap();
    for owned in [false, true] {
        let mut relu = Relu::default();
        let y = if owned {
            relu.forward_owned(x.clone())
        } else {
            relu.forward(&x)
        }
        .unwrap();
        assert_eq!(&y.data[1..], &[0.0, 0.0, f32::INFINITY, 0.0, 0.0, 2.5]);
        assert_eq!(y.data[0], 0.0, "NaN in, 0 out (f32::max)");
        let dx = relu.backward(&x.like(vec![1.0; v.len()])).unwrap();
        assert_eq!(dx.data, [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
    }
}
