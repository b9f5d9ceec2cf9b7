//! A small f32 tensor: a shape, a memory order and a flat buffer, nothing more. Layers own
//! the arithmetic; the tensor only checks that data and shape agree.

use rayon::prelude::*;
use vqkit::{Error, Result};

/// The order of a tensor's elements in memory. The shape is (N, C, H, W) in both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// `data[((b * c + ci) * h + y) * w + x]`: PyTorch's order, the one users hand in.
    #[default]
    Nchw,
    /// `data[((ci * h + y) * w + x) * n + b]`: the batch innermost, the order the
    /// convolutions work in. Each pixel of a channel is a run of `n` floats, a convolution's
    /// column matrix is packed from such runs, and its GEMM writes this order directly.
    Chwn,
}

/// A dense f32 tensor of shape (N, C, H, W), stored in the order `layout` says.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// (N, C, H, W).
    pub shape: [usize; 4],
    pub layout: Layout,
    pub data: Vec<f32>,
}

impl Tensor {
    /// All zeros.
    pub fn zeros(shape: [usize; 4]) -> Self {
        Tensor {
            shape,
            layout: Layout::Nchw,
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
        Ok(Tensor {
            shape,
            layout: Layout::Nchw,
            data,
        })
    }

    /// Seeded standard-normal entries scaled by `scale`, for tests and benchmarks.
    pub fn randn(shape: [usize; 4], scale: f32, rng: &mut vqkit::rng::Rng) -> Self {
        let data = (0..shape.iter().product::<usize>())
            .map(|_| scale * rng.normal() as f32)
            .collect();
        Tensor {
            shape,
            layout: Layout::Nchw,
            data,
        }
    }

    /// The same tensor in `layout`: a transpose between (N, C H W) and (C H W, N).
    pub fn to_layout(&self, layout: Layout) -> Tensor {
        if layout == self.layout {
            return self.clone();
        }
        let n = self.shape[0];
        let chw = self.data.len() / n.max(1);
        let (rows, cols) = match self.layout {
            Layout::Nchw => (n, chw),
            Layout::Chwn => (chw, n),
        };
        Tensor {
            shape: self.shape,
            layout,
            data: transpose(&self.data, rows, cols),
        }
    }

    /// This tensor in `layout`: borrowed when it is stored that way already, else converted.
    pub fn in_layout(&self, layout: Layout) -> std::borrow::Cow<'_, Tensor> {
        if layout == self.layout {
            std::borrow::Cow::Borrowed(self)
        } else {
            std::borrow::Cow::Owned(self.to_layout(layout))
        }
    }

    /// [`Tensor::to_layout`], consuming `self` (no copy when it is in `layout` already).
    pub fn into_layout(self, layout: Layout) -> Tensor {
        if layout == self.layout {
            self
        } else {
            self.to_layout(layout)
        }
    }

    /// A tensor of the same shape and layout holding `data`.
    pub fn like(&self, data: Vec<f32>) -> Tensor {
        debug_assert_eq!(data.len(), self.data.len());
        Tensor {
            shape: self.shape,
            layout: self.layout,
            data,
        }
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

    /// An error unless this tensor has shape `shape` and is stored in `layout`.
    pub fn expect(&self, what: &'static str, shape: [usize; 4], layout: Layout) -> Result<()> {
        self.expect_shape(what, shape)?;
        self.expect_layout(what, layout)
    }

    /// An error unless this tensor is stored in `layout`.
    pub fn expect_layout(&self, what: &'static str, layout: Layout) -> Result<()> {
        if self.layout != layout {
            return Err(Error::invalid(
                "tensor layout",
                format!("{what}: expected {layout:?}, got {:?}", self.layout),
            ));
        }
        Ok(())
    }
}

/// The transpose of a row-major `rows x cols` matrix, by tiles that stay in L1, tile rows
/// of the output in parallel when large.
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0.0f32; src.len()];
    if src.is_empty() {
        return out;
    }
    // Output row j (of `rows` elements) is column j of the input.
    let band = |(jb, o): (usize, &mut [f32])| {
        let j0 = jb * TILE;
        let j1 = (j0 + TILE).min(cols);
        for i0 in (0..rows).step_by(TILE) {
            for i in i0..(i0 + TILE).min(rows) {
                let row = &src[i * cols..];
                for j in j0..j1 {
                    o[(j - j0) * rows + i] = row[j];
                }
            }
        }
    };
    if src.len() >= 1 << 16 {
        out.par_chunks_mut(TILE * rows).enumerate().for_each(band);
    } else {
        out.chunks_mut(TILE * rows).enumerate().for_each(band);
    }
    out
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
    pub fn uniform(len: usize, bound: f64, rng: &mut vqkit::rng::Rng) -> Self {
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

/// Elementwise passes split into chunks of at least this many elements across rayon's
/// threads (a serial pass would leave the other cores idle between the parallel GEMMs).
pub(crate) const MIN_CHUNK: usize = 1 << 14;

/// `dst = src`, reusing `dst`'s allocation, split across the threads when large.
pub(crate) fn copy_into(dst: &mut Vec<f32>, src: &[f32]) {
    dst.resize(src.len(), 0.0);
    if src.len() <= MIN_CHUNK {
        dst.copy_from_slice(src);
        return;
    }
    dst.par_chunks_mut(MIN_CHUNK)
        .zip(src.par_chunks(MIN_CHUNK))
        .for_each(|(d, s)| d.copy_from_slice(s));
}
