//! Optimisers over a parameter list, with PyTorch's update rules and defaults. The list must
//! come in the same order on every step (every module's `params_mut` guarantees it); the
//! state is matched to it by position and a changed list is an error.

use super::tensor::Param;
use rayon::prelude::*;
use vqkit::{Error, Result};

fn check_state(state: &mut Vec<Vec<f32>>, params: &[&mut Param]) -> Result<()> {
    if state.is_empty() {
        *state = params.iter().map(|p| vec![0.0; p.value.len()]).collect();
    }
    if state.len() != params.len() {
        return Err(Error::ShapeMismatch {
            what: "optimizer parameter count",
            expected: state.len(),
            got: params.len(),
        });
    }
    for (s, p) in state.iter().zip(params) {
        if s.len() != p.value.len() || p.grad.len() != p.value.len() {
            return Err(Error::ShapeMismatch {
                what: "optimizer parameter length",
                expected: s.len(),
                got: p.value.len(),
            });
        }
    }
    Ok(())
}

/// Adam (Kingma & Ba), as `torch.optim.Adam` without weight decay:
/// ```text
/// m = b1 m + (1 - b1) g        v = b2 v + (1 - b2) g^2
/// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
/// ```
#[derive(Clone, Debug)]
pub struct Adam {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    t: i32,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl Adam {
    /// PyTorch's defaults: betas (0.9, 0.999), eps 1e-8.
    pub fn new(lr: f32) -> Self {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t: 0,
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    /// The step count and the first and second moments, for checkpoints.
    pub fn state(&self) -> (i32, &[Vec<f32>], &[Vec<f32>]) {
        (self.t, &self.m, &self.v)
    }

    /// Restores [`Self::state`]; the next [`Self::step`] checks the moments against the
    /// parameters.
    pub fn set_state(&mut self, t: i32, m: Vec<Vec<f32>>, v: Vec<Vec<f32>>) -> Result<()> {
        if m.len() != v.len() || m.iter().zip(&v).any(|(a, b)| a.len() != b.len()) || t < 0 {
            return Err(Error::invalid("adam state", "moments disagree in shape"));
        }
        self.t = t;
        self.m = m;
        self.v = v;
        Ok(())
    }

    /// One update from the accumulated gradients (which it leaves in place).
    pub fn step(&mut self, params: &mut [&mut Param]) -> Result<()> {
        check_state(&mut self.m, params)?;
        check_state(&mut self.v, params)?;
        self.t += 1;
        let (b1, b2) = (self.beta1 as f64, self.beta2 as f64);
        let bc1 = 1.0 - b1.powi(self.t);
        let bc2 = 1.0 - b2.powi(self.t);
        let step = (self.lr as f64 / bc1) as f32;
        let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        for ((p, m), v) in params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
            // Elementwise, so splitting it across threads changes no result.
            p.value
                .par_iter_mut()
                .with_min_len(super::tensor::MIN_CHUNK)
                .zip(&p.grad)
                .zip(m)
                .zip(v)
                .for_each(|(((w, &g), m), v)| {
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    *w -= step * *m / (v.sqrt() * inv_sqrt_bc2 + eps);
                });
        }
        Ok(())
    }
}

/// SGD with optional momentum, as `torch.optim.SGD` (no dampening, not Nesterov):
/// `buf = momentum buf + g` (buf = g on the first step), `p -= lr buf`.
#[derive(Clone, Debug)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    buf: Vec<Vec<f32>>,
    started: bool,
}

impl Sgd {
    pub fn new(lr: f32, momentum: f32) -> Self {
        Sgd {
            lr,
            momentum,
            buf: Vec::new(),
            started: false,
        }
    }

    pub fn step(&mut self, params: &mut [&mut Param]) -> Result<()> {
        if self.momentum == 0.0 {
            for p in params.iter_mut() {
                let lr = self.lr;
                p.value
                    .iter_mut()
                    .zip(&p.grad)
                    .for_each(|(w, &g)| *w -= lr * g);
            }
            return Ok(());
        }
        check_state(&mut self.buf, params)?;
        let first = !self.started;
        self.started = true;
        for (p, buf) in params.iter_mut().zip(&mut self.buf) {
            for ((w, &g), b) in p.value.iter_mut().zip(&p.grad).zip(buf) {
                *b = if first { g } else { self.momentum * *b + g };
                *w -= self.lr * *b;
            }
        }
        Ok(())
    }
}
