//! A small NCHW f32 tensor: a shape and a flat buffer, nothing more. Layers own the
//! arithmetic; the tensor only checks that data and shape agree.

use crate::error::{Error, Result};

/// A dense f32 tensor in NCHW order: `data[((n * c + ci) * h + y) * w + x]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// (N, C, H, W).
    pub shape: [usize; 4],
    pub data: Vec<f32>,
}

impl Tensor {
    /// All zeros.
    pub fn zeros(shape: [usize; 4]) -> Self {
        Tensor {
            shape,
            data: vec![0.0; shape.iter().product()],
        }
    }

    /// Wraps `data`; an error if its length is not the product of `shape`.
    pub fn from_vec(shape: [usize; 4], data: Vec<f32>) -> Result<Self> {
        let expected = shape.iter().product();
        if data.len() != expected {
            return Err(Error::ShapeMismatch {
                what: "tensor data",
                expected,
                got: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    /// Seeded standard-normal entries scaled by `scale`, for tests and benchmarks.
    pub fn randn(shape: [usize; 4], scale: f32, rng: &mut crate::rng::Rng) -> Self {
        let data = (0..shape.iter().product::<usize>())
            .map(|_| scale * rng.normal() as f32)
            .collect();
        Tensor { shape, data }
    }

    pub fn n(&self) -> usize {
        self.shape[0]
    }
    pub fn c(&self) -> usize {
        self.shape[1]
    }
    pub fn h(&self) -> usize {
        self.shape[2]
    }
    pub fn w(&self) -> usize {
        self.shape[3]
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// An error unless this tensor has shape `shape`.
    pub fn expect_shape(&self, what: &'static str, shape: [usize; 4]) -> Result<()> {
        if self.shape != shape {
            return Err(Error::invalid(
                "tensor shape",
                format!("{what}: expected {shape:?}, got {:?}", self.shape),
            ));
        }
        Ok(())
    }
}

/// A trainable tensor and its gradient, which backward passes accumulate into with `+=`.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub value: Vec<f32>,
    pub grad: Vec<f32>,
}

impl Param {
    pub fn new(value: Vec<f32>) -> Self {
        let grad = vec![0.0; value.len()];
        Param { value, grad }
    }

    /// `len` values drawn from U(-bound, bound).
    pub fn uniform(len: usize, bound: f64, rng: &mut crate::rng::Rng) -> Self {
        Param::new(
            (0..len)
                .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
                .collect(),
        )
    }

    pub fn zero_grad(&mut self) {
        self.grad.fill(0.0);
    }
}
