//! ReLU, the VQ-VAE residual block and stack, and the MSE loss.

use super::conv::{Conv2d, Window};
use super::tensor::{Layout, MIN_CHUNK, Param, Tensor};
use rayon::prelude::*;
use vqkit::rng::Rng;
use vqkit::{Error, Result};

/// The interface every trainable block shares, so tests and optimisers can treat them alike.
pub trait Layer {
    /// y = f(x); caches what [`Layer::backward`] needs.
    fn forward(&mut self, x: &Tensor) -> Result<Tensor>;
    /// dx from dy (for the last forward); parameter gradients accumulate with `+=`.
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor>;
    /// [`Layer::forward`] of an input the caller has no further use for: a layer that keeps
    /// its input for the backward takes it over instead of copying it, and one that works
    /// elementwise writes its output over it. The same result as `forward(&x)`.
    fn forward_owned(&mut self, x: Tensor) -> Result<Tensor> {
        self.forward(&x)
    }
    /// [`Layer::backward`] of a gradient the caller has no further use for, likewise.
    fn backward_owned(&mut self, dy: Tensor) -> Result<Tensor> {
        self.backward(&dy)
    }
    /// The parameters, always in the same order.
    fn params_mut(&mut self) -> Vec<&mut Param>;
    /// Sets every parameter gradient to zero.
    fn zero_grad(&mut self) {
        self.params_mut().into_iter().for_each(Param::zero_grad);
    }
}

impl Layer for Conv2d {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        Conv2d::forward(self, x)
    }
    fn forward_owned(&mut self, x: Tensor) -> Result<Tensor> {
        Conv2d::forward_owned(self, x)
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        Conv2d::backward(self, dy)
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        Conv2d::params_mut(self)
    }
}

impl Layer for super::conv::ConvTranspose2d {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        super::conv::ConvTranspose2d::forward(self, x)
    }
    fn forward_owned(&mut self, x: Tensor) -> Result<Tensor> {
        super::conv::ConvTranspose2d::forward_owned(self, x)
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        super::conv::ConvTranspose2d::backward(self, dy)
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        super::conv::ConvTranspose2d::params_mut(self)
    }
}

/// `y = max(x, 0)`; keeps one byte per element, whether it was positive, since
/// `dx = dy * [x > 0]`.
#[derive(Default)]
pub struct Relu {
    /// `mask[i] = (x[i] > 0) as u8` of the last forward.
    mask: Vec<u8>,
    /// The last forward's shape and layout; `None` before the first.
    seen: Option<([usize; 4], Layout)>,
}

impl Layer for Relu {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        self.forward_owned(x.clone())
    }

    /// In place: the output is written over the input.
    fn forward_owned(&mut self, mut x: Tensor) -> Result<Tensor> {
        self.mask.resize(x.len(), 0);
        let pass = |(v, m): (&mut [f32], &mut [u8])| {
            for (v, m) in v.iter_mut().zip(m) {
                *m = (*v > 0.0) as u8;
                *v = v.max(0.0);
            }
        };
        x.data
            .par_chunks_mut(MIN_CHUNK)
            .zip(self.mask.par_chunks_mut(MIN_CHUNK))
            .for_each(pass);
        self.seen = Some((x.shape, x.layout));
        Ok(x)
    }

    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        self.backward_owned(dy.clone())
    }

    /// In place: dx is written over dy.
    fn backward_owned(&mut self, mut dy: Tensor) -> Result<Tensor> {
        let (shape, layout) = self
            .seen
            .ok_or_else(|| Error::invalid("backward", "called before forward"))?;
        dy.expect("relu output gradient", shape, layout)?;
        let pass = |(g, m): (&mut [f32], &[u8])| {
            for (g, &m) in g.iter_mut().zip(m) {
                *g = if m != 0 { *g } else { 0.0 };
            }
        };
        dy.data
            .par_chunks_mut(MIN_CHUNK)
            .zip(self.mask.par_chunks(MIN_CHUNK))
            .for_each(pass);
        Ok(dy)
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        Vec::new()
    }
}

/// The VQ-VAE paper's residual block: `y = x + conv1x1(relu(conv3x3(relu(x))))`, channels
/// c -> hidden -> c, convolutions without bias (as the common PyTorch VQ-VAE has them).
pub struct ResidualBlock {
    pub relu1: Relu,
    pub conv3: Conv2d,
    pub relu2: Relu,
    pub conv1: Conv2d,
}

impl ResidualBlock {
    pub fn new(channels: usize, hidden: usize, rng: &mut Rng) -> Result<Self> {
        let w3 = Window {
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        let w1 = Window {
            kernel: 1,
            stride: 1,
            padding: 0,
        };
        Ok(ResidualBlock {
            relu1: Relu::default(),
            conv3: Conv2d::new(channels, hidden, w3, false, rng)?,
            relu2: Relu::default(),
            conv1: Conv2d::new(hidden, channels, w1, false, rng)?,
        })
    }
}

impl Layer for ResidualBlock {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        // x is needed again for the sum: ReLU's output goes into a copy.
        let h = self.relu1.forward(x)?;
        let h = self.conv3.forward_owned(h)?;
        let h = self.relu2.forward_owned(h)?;
        let mut y = self.conv1.forward_owned(h)?;
        y.expect("residual branch", x.shape, x.layout)?;
        add_into(&mut y.data, &x.data);
        Ok(y)
    }

    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        let dh = self.conv1.backward(dy)?;
        let dh = self.relu2.backward_owned(dh)?;
        let dh = self.conv3.backward(&dh)?;
        let mut dx = self.relu1.backward_owned(dh)?;
        add_into(&mut dx.data, &dy.data);
        Ok(dx)
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = self.conv3.params_mut();
        v.extend(self.conv1.params_mut());
        v
    }
}

/// `a += b`, elementwise.
fn add_into(a: &mut [f32], b: &[f32]) {
    a.par_iter_mut()
        .with_min_len(MIN_CHUNK)
        .zip(b)
        .for_each(|(a, &b)| *a += b);
}

/// `layers` residual blocks followed by a ReLU.
pub struct ResidualStack {
    pub blocks: Vec<ResidualBlock>,
    pub relu: Relu,
}

impl ResidualStack {
    pub fn new(channels: usize, hidden: usize, layers: usize, rng: &mut Rng) -> Result<Self> {
        let blocks = (0..layers)
            .map(|_| ResidualBlock::new(channels, hidden, rng))
            .collect::<Result<_>>()?;
        Ok(ResidualStack {
            blocks,
            relu: Relu::default(),
        })
    }
}

impl Layer for ResidualStack {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let mut h = None;
        for b in &mut self.blocks {
            h = Some(b.forward(h.as_ref().unwrap_or(x))?);
        }
        match h {
            Some(h) => self.relu.forward_owned(h),
            None => self.relu.forward(x),
        }
    }

    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        self.backward_owned(dy.clone())
    }

    fn backward_owned(&mut self, dy: Tensor) -> Result<Tensor> {
        let mut d = self.relu.backward_owned(dy)?;
        for b in self.blocks.iter_mut().rev() {
            d = b.backward(&d)?;
        }
        Ok(d)
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        self.blocks
            .iter_mut()
            .flat_map(|b| b.params_mut())
            .collect()
    }
}

/// Mean squared error and its gradient: `loss = mean((x - t)^2)`, `dx = 2 (x - t) / len`.
/// The sum runs in f64.
pub fn mse_loss(x: &Tensor, target: &Tensor) -> Result<(f32, Tensor)> {
    target.expect("mse target", x.shape, x.layout)?;
    let inv = 1.0 / x.len().max(1) as f64;
    let mut sum = 0.0f64;
    let data = x
        .data
        .iter()
        .zip(&target.data)
        .map(|(&a, &b)| {
            let d = a - b;
            sum += d as f64 * d as f64;
            (2.0 * d as f64 * inv) as f32
        })
        .collect();
    Ok(((sum * inv) as f32, x.like(data)))
}
