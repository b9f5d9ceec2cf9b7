//! The convolutional encoder and decoder of the VQ-VAE (van den Oord et al. 2017, in the
//! layout of the common PyTorch implementation), written so a quantizer drops in between:
//! `z_e = encoder(x)`, `z_q = quantize(z_e)`, `x_hat = decoder(z_q)`; backward runs
//! `decoder.backward(dx_hat) -> dz_q`, the quantizer's (straight-through) backward, and
//! `encoder.backward(dz_e)`.
//!
//! ```text
//! Encoder: [conv 4x4 s2 p1 -> ReLU] for each hidden dim (in -> h0 -> h1 ...)
//!          -> conv 3x3 p1 (h_last -> h_last) -> residual stack (+ ReLU)
//!          -> 1x1 projection (h_last -> embedding_dim)
//! Decoder: conv 3x3 p1 (embedding_dim -> h_last) -> residual stack (+ ReLU)
//!          -> [convT 4x4 s2 p1 -> ReLU] down the hidden dims -> convT 4x4 s2 p1 (h0 -> in)
//! ```
//! For 28 x 28 inputs and two hidden dims the latents are 7 x 7.

use super::conv::{Conv2d, ConvTranspose2d, Window};
use super::layers::{Layer, Relu, ResidualStack, mse_loss};
use super::optim::Adam;
use super::tensor::{Layout, Param, Tensor};
use vqkit::rng::Rng;
use vqkit::{Error, Result};

/// The shape of an encoder/decoder pair.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConvNetConfig {
    pub in_channels: usize,
    /// Channels after each stride-2 convolution; one halving of the resolution per entry.
    pub hidden_dims: Vec<usize>,
    pub num_residual_layers: usize,
    /// Channels inside each residual block.
    pub residual_hidden: usize,
    /// Channels of the latent (the quantizer's vector dimension).
    pub embedding_dim: usize,
}

impl ConvNetConfig {
    /// An upper bound on the encoder's and decoder's parameters: every convolution taken
    /// at 4 x 4 taps (the largest kernel), biases included.
    pub fn parameter_bound(&self) -> u128 {
        let c = |v: usize| v as u128;
        let mut dims = vec![c(self.in_channels)];
        dims.extend(self.hidden_dims.iter().map(|&h| c(h)));
        let last = *dims.last().unwrap_or(&0);
        let chain: u128 = dims.windows(2).map(|w| w[0] * w[1] * 16 + w[1]).sum();
        let residual =
            c(self.num_residual_layers) * (last * c(self.residual_hidden) * 16 * 2 + last * 2);
        let latent = last * c(self.embedding_dim) * 16 + last + c(self.embedding_dim);
        2 * (chain + residual + latent + last * last * 16)
    }

    pub fn validate(&self) -> Result<()> {
        if self.hidden_dims.is_empty() {
            return Err(Error::invalid("hidden_dims", "needs at least one entry"));
        }
        if self.in_channels == 0
            || self.embedding_dim == 0
            || self.residual_hidden == 0
            || self.hidden_dims.contains(&0)
        {
            return Err(Error::invalid(
                "channels",
                "every channel count must be at least 1",
            ));
        }
        Ok(())
    }

    fn last(&self) -> usize {
        self.hidden_dims[self.hidden_dims.len() - 1]
    }
}

const DOWN: Window = Window {
    kernel: 4,
    stride: 2,
    padding: 1,
};
const SAME3: Window = Window {
    kernel: 3,
    stride: 1,
    padding: 1,
};

/// x (n, in, h, w) -> z_e (n, embedding_dim, h / 2^len(hidden_dims), ...).
///
/// The layers run in [`Layout::Chwn`], the convolutions' own order; inputs and outputs
/// are converted from and to the layout the input came in.
pub struct Encoder {
    pub downs: Vec<Conv2d>,
    pub relus: Vec<Relu>,
    pub conv: Conv2d,
    pub stack: ResidualStack,
    pub proj: Conv2d,
    /// The layout of the last forward's input.
    layout: Layout,
}

impl Encoder {
    /// Parameters initialised as PyTorch's defaults, in layer order, from `rng`.
    pub fn new(cfg: &ConvNetConfig, rng: &mut Rng) -> Result<Self> {
        cfg.validate()?;
        let mut downs = Vec::new();
        let mut c = cfg.in_channels;
        for &h in &cfg.hidden_dims {
            downs.push(Conv2d::new(c, h, DOWN, true, rng)?);
            c = h;
        }
        Ok(Encoder {
            relus: (0..downs.len()).map(|_| Relu::default()).collect(),
            downs,
            conv: Conv2d::new(c, c, SAME3, true, rng)?,
            stack: ResidualStack::new(c, cfg.residual_hidden, cfg.num_residual_layers, rng)?,
            proj: Conv2d::linear_1x1(c, cfg.embedding_dim, rng)?,
            layout: Layout::Nchw,
        })
    }
}

impl Encoder {
    /// The parameter gradients of a backward pass, without the gradient of the input
    /// images (which nothing trains): the first convolution skips its data gradient.
    pub fn backward_params(&mut self, dy: &Tensor) -> Result<()> {
        self.backward_inner(dy, false).map(|_| ())
    }

    fn backward_inner(&mut self, dy: &Tensor, want_dx: bool) -> Result<Option<Tensor>> {
        dy.expect_layout("encoder output gradient", self.layout)?;
        let d = self.proj.backward(&dy.in_layout(Layout::Chwn))?;
        let d = self.stack.backward_owned(d)?;
        let mut d = self.conv.backward(&d)?;
        for (i, (conv, relu)) in self.downs.iter_mut().zip(&mut self.relus).enumerate().rev() {
            let dr = relu.backward_owned(d)?;
            if i == 0 && !want_dx {
                conv.backward_params(&dr)?;
                return Ok(None);
            }
            d = conv.backward(&dr)?;
        }
        Ok(Some(d.into_layout(self.layout)))
    }
}

impl Layer for Encoder {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        self.layout = x.layout;
        // Each layer's input handed over to it (the convolutions keep theirs for the
        // backward, ReLU works in place), except the residual stack's, which it adds back.
        let mut h = x.to_layout(Layout::Chwn);
        for (conv, relu) in self.downs.iter_mut().zip(&mut self.relus) {
            h = relu.forward_owned(conv.forward_owned(h)?)?;
        }
        let h = self.conv.forward_owned(h)?;
        let h = self.stack.forward(&h)?;
        Ok(self.proj.forward_owned(h)?.into_layout(self.layout))
    }

    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        self.backward_inner(dy, true)
            .and_then(|dx| dx.ok_or_else(|| Error::invalid("backward", "no input gradient")))
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v: Vec<&mut Param> = self.downs.iter_mut().flat_map(|c| c.params_mut()).collect();
        v.extend(self.conv.params_mut());
        v.extend(self.stack.params_mut());
        v.extend(self.proj.params_mut());
        v
    }
}

/// z_q (n, embedding_dim, h', w') -> x_hat (n, in, h' 2^len(hidden_dims), ...).
pub struct Decoder {
    pub conv: Conv2d,
    pub stack: ResidualStack,
    pub ups: Vec<ConvTranspose2d>,
    /// One per transposed convolution but the last (the output has no activation).
    pub relus: Vec<Relu>,
    /// The layout of the last forward's input (the layers run in [`Layout::Chwn`]).
    layout: Layout,
}

impl Decoder {
    pub fn new(cfg: &ConvNetConfig, rng: &mut Rng) -> Result<Self> {
        cfg.validate()?;
        let last = cfg.last();
        let conv = Conv2d::new(cfg.embedding_dim, last, SAME3, true, rng)?;
        let stack = ResidualStack::new(last, cfg.residual_hidden, cfg.num_residual_layers, rng)?;
        let mut ups = Vec::new();
        let mut c = last;
        for i in (0..cfg.hidden_dims.len()).rev() {
            let out = if i == 0 {
                cfg.in_channels
            } else {
                cfg.hidden_dims[i - 1]
            };
            ups.push(ConvTranspose2d::new(c, out, DOWN, 0, true, rng)?);
            c = out;
        }
        Ok(Decoder {
            conv,
            stack,
            relus: (1..ups.len()).map(|_| Relu::default()).collect(),
            ups,
            layout: Layout::Nchw,
        })
    }
}

impl Layer for Decoder {
    fn forward(&mut self, z: &Tensor) -> Result<Tensor> {
        self.layout = z.layout;
        let h = self.conv.forward_owned(z.to_layout(Layout::Chwn))?;
        let mut h = self.stack.forward(&h)?;
        let last = self.ups.len() - 1;
        for (i, up) in self.ups.iter_mut().enumerate() {
            h = up.forward_owned(h)?;
            if i < last {
                h = self.relus[i].forward_owned(h)?;
            }
        }
        Ok(h.into_layout(self.layout))
    }

    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        dy.expect_layout("decoder output gradient", self.layout)?;
        let dy = &*dy.in_layout(Layout::Chwn);
        let last = self.ups.len() - 1;
        let mut d = self.ups[last].backward(dy)?;
        for i in (0..last).rev() {
            let g = self.relus[i].backward_owned(d)?;
            d = self.ups[i].backward(&g)?;
        }
        let d = self.stack.backward_owned(d)?;
        Ok(self.conv.backward(&d)?.into_layout(self.layout))
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = self.conv.params_mut();
        v.extend(self.stack.params_mut());
        v.extend(self.ups.iter_mut().flat_map(|u| u.params_mut()));
        v
    }
}

/// One Adam step of the plain autoencoder (encoder -> decoder, MSE against the input), with
/// the layers' backward passes in reverse order; returns the loss before the step.
pub fn autoencoder_step(
    enc: &mut Encoder,
    dec: &mut Decoder,
    opt: &mut Adam,
    x: &Tensor,
) -> Result<f32> {
    let z = enc.forward(x)?;
    let xh = dec.forward(&z)?;
    let (loss, dxh) = mse_loss(&xh, x)?;
    enc.zero_grad();
    dec.zero_grad();
    let dz = dec.backward(&dxh)?;
    enc.backward_params(&dz)?;
    let mut params = enc.params_mut();
    params.extend(dec.params_mut());
    opt.step(&mut params)?;
    Ok(loss)
}

/// The largest GEMMs of the default VQ-VAE's convolutions at batch 32, as
/// `(label, m, n, k, A transposed, B transposed)`: forward (`fwd`), weight gradient (`dw`)
/// and input gradient (`dx`; the 3x3 residual convolution takes it as the flipped-kernel
/// convolution of dy), and the first layer's weight gradient, a small C over a long k that
/// is split along k; and a square product for scale. The shapes the GEMM benchmarks time
/// (`benches/gemm.rs`, `examples/gemm_cputime.rs`).
pub const GEMM_SHAPES: &[(&str, usize, usize, usize, bool, bool)] = &[
    ("square", 1024, 1024, 1024, false, false),
    ("enc1_fwd", 64, 6272, 16, false, false),
    ("enc1_dw", 64, 16, 6272, false, true),
    ("enc2_fwd", 128, 1568, 1024, false, false),
    ("enc2_dw", 128, 1024, 1568, false, true),
    ("enc2_dx", 1024, 1568, 128, true, false),
    ("enc3_fwd", 128, 1568, 1152, false, false),
    ("res3_fwd", 32, 1568, 1152, false, false),
    ("res3_dw", 32, 1152, 1568, false, true),
    ("res3_dx", 128, 1568, 288, false, false),
];
