//! Convolutions through im2col and [`super::gemm`].
//!
//! Conv2d, x: (n, cin, h, w), weight: (cout, cin, k, k), out: (n, cout, oh, ow):
//! ```text
//! col  (cin k k, n oh ow) = im2col(x)          rows (ci, ky, kx), columns (image, oy, ox)
//! y'   (cout, n oh ow)    = W (cout, cin k k) . col
//! dW  += dy' . col^T      dcol = W^T . dy'     dx = col2im(dcol)
//! ```
//! ConvTranspose2d is the same pair of maps run the other way (its forward is conv2d's data
//! gradient), with weight (cin, cout, k, k) as PyTorch stores it:
//! ```text
//! col (cout k k, n h w) = W^T . x'             y = col2im(col)
//! dcol = im2col(dy)     dW += x' . dcol^T      dx' = W . dcol
//! ```
//! The whole batch is one GEMM: its columns run over (image, pixel), so the n dimension is
//! n * oh * ow, large enough for the parallel blocked GEMM even at 7 x 7 latents. The price is
//! a transpose between NCHW and (C, N * P) on each side (`'` above), a copy that costs a few
//! percent of the GEMM it feeds.
//!
//! Column matrices are k^2 times the size of the layer's input. No layer keeps its own:
//! every convolution on a thread works in one shared buffer, which stays in the last-level
//! cache, and a Conv2d keeps a copy of its input instead, from which its backward builds
//! the column matrix again. The second im2col costs less than what it saves: the weight
//! gradient's transposing read of the column matrix comes from cache instead of memory,
//! and the model's peak memory halves.

use super::gemm::{MatRef, sgemm};
use super::layers::copy_into;
use super::tensor::{Param, Tensor};
use crate::error::{Error, Result};
use crate::rng::Rng;
use rayon::prelude::*;
use std::cell::Cell;
use std::mem::MaybeUninit;

/// Below this many elements, im2col/col2im and transposes stay on the calling thread.
const MIN_PARALLEL_ELEMS: usize = 1 << 16;

/// The geometry of a square convolution window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Window {
    fn validate(&self) -> Result<()> {
        if self.kernel == 0 {
            return Err(Error::invalid("kernel", "must be at least 1"));
        }
        if self.stride == 0 {
            return Err(Error::invalid("stride", "must be at least 1"));
        }
        Ok(())
    }

    /// Conv output size along one axis, or an error if the window does not fit.
    fn out_size(&self, size: usize) -> Result<usize> {
        let padded = size + 2 * self.padding;
        if padded < self.kernel {
            return Err(Error::invalid(
                "input size",
                format!(
                    "{size} (+ 2 x padding {}) is smaller than the kernel {}",
                    self.padding, self.kernel
                ),
            ));
        }
        Ok((padded - self.kernel) / self.stride + 1)
    }
}

/// The output positions `lo..hi` (of `out_len`) whose input index `o s + off - pad` falls
/// inside `0..in_len`, so the inner loops of im2col/col2im run without a bounds branch.
fn valid_range(out_len: usize, s: usize, off: usize, pad: usize, in_len: usize) -> (usize, usize) {
    let lo = if pad > off {
        (pad - off).div_ceil(s)
    } else {
        0
    }
    .min(out_len);
    let hi = if in_len + pad > off {
        (in_len + pad - off).div_ceil(s).min(out_len)
    } else {
        0
    };
    (lo, hi.max(lo))
}

/// How one tap (ky, kx) of a window meets an image plane (h, w): output position (oy, ox)
/// reads input (oy s + ky - pad, ox s + kx - pad), which lies inside the image exactly for
/// rows `ylo..yhi` and columns `lo..hi`.
#[derive(Clone, Copy, Debug)]
struct Tap {
    s: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    ky: usize,
    kx: usize,
    pad: usize,
    ylo: usize,
    yhi: usize,
    lo: usize,
    hi: usize,
}

impl Tap {
    fn new(g: Window, ky: usize, kx: usize, [h, w]: [usize; 2], [oh, ow]: [usize; 2]) -> Self {
        let (s, pad) = (g.stride, g.padding);
        let (ylo, yhi) = valid_range(oh, s, ky, pad, h);
        let (lo, hi) = valid_range(ow, s, kx, pad, w);
        Tap {
            s,
            h,
            w,
            oh,
            ow,
            ky,
            kx,
            pad,
            ylo,
            yhi,
            lo,
            hi,
        }
    }

    /// The input row that output row `oy` (in `ylo..yhi`) reads.
    fn src_row(&self, oy: usize) -> usize {
        oy * self.s + self.ky - self.pad
    }

    /// The input column that output column `lo` reads.
    fn first_col(&self) -> usize {
        self.lo * self.s + self.kx - self.pad
    }
}

/// Copies one tap's planes of a batch into `out` (one oh x ow plane per image), zero outside
/// the image; image b's input plane starts at `x[b * step]`.
type TapGather = fn(out: &mut [f32], x: &[f32], step: usize, t: &Tap);

/// A register version of [`gather_taps`] for strides 1 and 2 where the CPU has AVX-512F:
/// one masked load and store per output row (a 16-lane chunk of it) in place of a copy
/// call per row and fill calls for the borders, which dominate on 7 x 7 planes; for a
/// stride-1 "same" convolution, one per 16 elements of the whole plane, which is the image
/// shifted. `None` elsewhere. (The same treatment of `scatter_tap` was no faster: each
/// tap's masked load-add-store reads what the previous tap just stored, and masked stores
/// do not forward to loads.)
fn gather_simd(stride: usize) -> Option<TapGather> {
    #[cfg(target_arch = "x86_64")]
    if (stride == 1 || stride == 2) && std::arch::is_x86_feature_detected!("avx512f") {
        return Some(|out, x, step, t| {
            let plane = t.oh * t.ow;
            assert!(plane > 0 && out.len() % plane == 0);
            let n = out.len() / plane;
            assert!(n == 0 || x.len() >= (n - 1) * step + t.h * t.w);
            // SAFETY: AVX-512F detected; the asserts keep every output plane inside `out`
            // and every input plane inside `x`.
            unsafe { x86::gather_avx512(out, x, step, t) }
        });
    }
    None
}

/// The scalar [`TapGather`].
fn gather_taps(out: &mut [f32], x: &[f32], step: usize, t: &Tap) {
    for (b, o) in out.chunks_exact_mut(t.oh * t.ow).enumerate() {
        gather_tap(o, &x[b * step..][..t.h * t.w], t);
    }
}

/// One plane of [`gather_taps`].
fn gather_tap(o: &mut [f32], img: &[f32], t: &Tap) {
    let (s, ow) = (t.s, t.ow);
    let (ylo, yhi, lo, hi) = (t.ylo, t.yhi, t.lo, t.hi);
    if s == 1 && (t.oh, ow) == (t.h, t.w) && ylo < yhi && lo < hi {
        // A "same" convolution: the tap's plane is the image shifted by (ky - p, kx - p).
        // One copy of the flat run from the first valid element to the last, then zero
        // what the shift wrapped across row ends.
        let (start, end) = (ylo * ow + lo, (yhi - 1) * ow + hi);
        let from = t.src_row(ylo) * t.w + t.first_col();
        o[start..end].copy_from_slice(&img[from..from + (end - start)]);
        o[..start].fill(0.0);
        o[end..t.oh * ow].fill(0.0);
        for oy in ylo..yhi {
            let row = &mut o[oy * ow..][..ow];
            row[..lo].fill(0.0);
            row[hi..].fill(0.0);
        }
        return;
    }
    o[..ylo * ow].fill(0.0);
    o[yhi * ow..t.oh * ow].fill(0.0);
    for oy in ylo..yhi {
        let o = &mut o[oy * ow..][..ow];
        o[..lo].fill(0.0);
        o[hi..].fill(0.0);
        if lo == hi {
            continue;
        }
        let src = &img[t.src_row(oy) * t.w + t.first_col()..];
        if s == 1 {
            o[lo..hi].copy_from_slice(&src[..hi - lo]);
        } else {
            for (i, v) in o[lo..hi].iter_mut().enumerate() {
                *v = src[i * s];
            }
        }
    }
}

/// Adds `o` (oh x ow) into `img` at one tap's positions: the adjoint of [`gather_tap`].
fn scatter_tap(img: &mut [f32], o: &[f32], t: &Tap) {
    if t.lo == t.hi {
        return;
    }
    let (s, ow, first) = (t.s, t.ow, t.first_col());
    for oy in t.ylo..t.yhi {
        let dst = &mut img[t.src_row(oy) * t.w + first..];
        let row = &o[oy * ow + t.lo..oy * ow + t.hi];
        if s == 1 {
            for (d, &v) in dst[..row.len()].iter_mut().zip(row) {
                *d += v;
            }
        } else {
            for (i, &v) in row.iter().enumerate() {
                dst[i * s] += v;
            }
        }
    }
}

/// col (C k k, N oh ow) from an image batch (N, C, H, W): `col[(ci, ky, kx)][(b, oy, ox)] =
/// x[b, ci, oy s + ky - p, ox s + kx - p]`, zero outside the image. Every element of `col`
/// is written.
fn im2col(col: &mut [f32], x: &[f32], xs: [usize; 4], g: Window, oh: usize, ow: usize) {
    let [n, c, h, w] = xs;
    let k = g.kernel;
    let np = n * oh * ow;
    debug_assert_eq!(col.len(), c * k * k * np);
    let gather = gather_simd(g.stride).unwrap_or(gather_taps);
    let row = |(r, out): (usize, &mut [f32])| {
        let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
        let tap = Tap::new(g, ky, kx, [h, w], [oh, ow]);
        gather(out, &x[ci * h * w..], c * h * w, &tap);
    };
    if col.len() >= MIN_PARALLEL_ELEMS {
        col.par_chunks_mut(np.max(1)).enumerate().for_each(row);
    } else {
        col.chunks_mut(np.max(1)).enumerate().for_each(row);
    }
}

/// The adjoint of [`im2col`]: x (N, C, H, W) `= sum over windows of col`, plus `bias[ci]`
/// on channel ci when given (added last, after the taps). Each image's planes are zeroed and
/// summed into by one task, so the output is not zeroed in a serial pass of its own; each
/// element takes its taps in the order (ky, kx).
fn col2im(
    col: &[f32],
    xs: [usize; 4],
    g: Window,
    oh: usize,
    ow: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let [n, c, h, w] = xs;
    let k = g.kernel;
    let np = n * oh * ow;
    let len = n * c * h * w;
    let image = |(b, xb): (usize, &mut [MaybeUninit<f32>])| {
        for (ci, plane) in xb.chunks_exact_mut(h * w).enumerate() {
            plane.iter_mut().for_each(|d| {
                d.write(0.0);
            });
            // SAFETY: every element of the plane was written just above.
            let img = unsafe { &mut *(plane as *mut [MaybeUninit<f32>] as *mut [f32]) };
            for ky in 0..k {
                for kx in 0..k {
                    let tap = Tap::new(g, ky, kx, [h, w], [oh, ow]);
                    let r = (ci * k + ky) * k + kx;
                    scatter_tap(img, &col[r * np + b * oh * ow..][..oh * ow], &tap);
                }
            }
            if let Some(bias) = bias {
                img.iter_mut().for_each(|v| *v += bias[ci]);
            }
        }
    };
    let mut x = Vec::with_capacity(len);
    let spare = &mut x.spare_capacity_mut()[..len];
    let chunk = (c * h * w).max(1);
    if len >= MIN_PARALLEL_ELEMS {
        spare.par_chunks_mut(chunk).enumerate().for_each(image);
    } else {
        spare.chunks_mut(chunk).enumerate().for_each(image);
    }
    // SAFETY: the chunks of `c h w` elements, one per image, cover all `len` elements,
    // and `image` writes every element of its chunk before adding to it.
    unsafe { x.set_len(len) };
    x
}

thread_local! {
    /// The column-matrix buffer that every convolution on this thread shares.
    static COLUMNS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's shared column-matrix buffer, which stays in the last-level
/// cache from layer to layer. A nested call finds it taken and works in a fresh one.
fn with_columns<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    let mut buf = COLUMNS.take();
    let r = f(&mut buf);
    COLUMNS.set(buf);
    r
}

/// NCHW (N, C, P) -> (C, N P), into `out` (reused; every element is written).
fn nchw_to_cnp_into(out: &mut Vec<f32>, x: &[f32], n: usize, c: usize, p: usize) {
    let out = scratch(out, x.len());
    let row = |(ci, o): (usize, &mut [f32])| {
        for b in 0..n {
            o[b * p..(b + 1) * p].copy_from_slice(&x[(b * c + ci) * p..][..p]);
        }
    };
    if x.len() >= MIN_PARALLEL_ELEMS {
        out.par_chunks_mut((n * p).max(1)).enumerate().for_each(row);
    } else {
        out.chunks_mut((n * p).max(1)).enumerate().for_each(row);
    }
}

/// The first `len` elements of `buf`, which grows (zeroed) when shorter and never shrinks,
/// so a buffer shared by layers of different sizes is not zeroed again at each switch.
/// Elements it already held keep their stale values: for outputs overwritten in full.
fn scratch(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// (C, N P) -> NCHW (N, C, P), adding `bias[ci]` when given.
pub(crate) fn cnp_to_nchw(
    y: &[f32],
    n: usize,
    c: usize,
    p: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(y.len());
    let image = |(b, o): (usize, &mut [MaybeUninit<f32>])| {
        for ci in 0..c {
            let src = &y[ci * n * p + b * p..][..p];
            let bv = bias.map_or(0.0, |bv| bv[ci]);
            for (d, &s) in o[ci * p..(ci + 1) * p].iter_mut().zip(src) {
                d.write(if bias.is_some() { s + bv } else { s });
            }
        }
    };
    // The output is written in full, image by image, so it is not zeroed first.
    let spare = &mut out.spare_capacity_mut()[..y.len()];
    if y.len() >= MIN_PARALLEL_ELEMS {
        spare
            .par_chunks_mut((c * p).max(1))
            .enumerate()
            .for_each(image);
    } else {
        spare.chunks_mut((c * p).max(1)).enumerate().for_each(image);
    }
    // SAFETY: the chunks of `c p` elements, one per image, cover all `y.len() = n c p`
    // elements of the spare capacity, and `image` writes every element of its chunk.
    unsafe { out.set_len(y.len()) };
    out
}

/// `db[c] += sum over (n, p) of dy[n, c, p]`; channels in parallel, each summed in a fixed
/// order, so the result does not depend on the thread count.
fn bias_grad(db: &mut [f32], dy: &Tensor) {
    let [n, c, h, w] = dy.shape;
    let p = h * w;
    let channel = |(ci, g): (usize, &mut f32)| {
        let mut s = 0.0f64;
        for b in 0..n {
            s += dy.data[(b * c + ci) * p..][..p]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>();
        }
        *g += s as f32;
    };
    if dy.len() >= MIN_PARALLEL_ELEMS {
        db[..c].par_iter_mut().enumerate().for_each(channel);
    } else {
        db[..c].iter_mut().enumerate().for_each(channel);
    }
}

/// PyTorch's default initialisation: kaiming_uniform(a = sqrt 5) for the weight, which is
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias.
fn init(len: usize, fan_in: usize, bias: Option<usize>, rng: &mut Rng) -> (Param, Option<Param>) {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    let w = Param::uniform(len, bound, rng);
    let b = bias.map(|c| Param::uniform(c, bound, rng));
    (w, b)
}

struct ConvCache {
    /// A copy of the input: the backward builds the column matrix again from it.
    x: Vec<f32>,
    xshape: [usize; 4],
    oh: usize,
    ow: usize,
}

/// Buffers a layer keeps between steps, so a training step does not allocate (and zero)
/// its large temporaries again each time.
#[derive(Default)]
struct Scratch {
    /// The GEMM output of the forward (C, N P) and the gradient dy' of the backward.
    cnp: Vec<f32>,
}

/// 2-d convolution (PyTorch's `Conv2d`, square kernel, no dilation or groups).
/// weight: (cout, cin, k, k), bias: (cout).
pub struct Conv2d {
    pub cin: usize,
    pub cout: usize,
    pub window: Window,
    pub weight: Param,
    pub bias: Option<Param>,
    cache: Option<ConvCache>,
    scratch: Scratch,
}

impl Conv2d {
    /// A convolution initialised as PyTorch's default, from `rng`.
    pub fn new(cin: usize, cout: usize, window: Window, bias: bool, rng: &mut Rng) -> Result<Self> {
        window.validate()?;
        if cin == 0 || cout == 0 {
            return Err(Error::invalid("channels", "must be at least 1"));
        }
        let kk = window.kernel * window.kernel;
        let (weight, bias) = init(cout * cin * kk, cin * kk, bias.then_some(cout), rng);
        Ok(Conv2d {
            cin,
            cout,
            window,
            weight,
            bias,
            cache: None,
            scratch: Scratch::default(),
        })
    }

    /// The 1 x 1 linear projection (per-pixel `y = W x + b`), e.g. before a quantizer.
    pub fn linear_1x1(cin: usize, cout: usize, rng: &mut Rng) -> Result<Self> {
        let window = Window {
            kernel: 1,
            stride: 1,
            padding: 0,
        };
        Conv2d::new(cin, cout, window, true, rng)
    }

    /// Output shape for input shape `xs`, or an error.
    pub fn out_shape(&self, xs: [usize; 4]) -> Result<[usize; 4]> {
        if xs[1] != self.cin {
            return Err(Error::ShapeMismatch {
                what: "conv2d input channels",
                expected: self.cin,
                got: xs[1],
            });
        }
        Ok([
            xs[0],
            self.cout,
            self.window.out_size(xs[2])?,
            self.window.out_size(xs[3])?,
        ])
    }

    /// y = conv(x) + b; caches im2col(x) for the backward.
    pub fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let [n, cout, oh, ow] = self.out_shape(x.shape)?;
        let k = self.window.kernel;
        let ck = self.cin * k * k;
        let np = n * oh * ow;
        let y = scratch(&mut self.scratch.cnp, cout * np);
        with_columns(|col| {
            let col = scratch(col, ck * np);
            im2col(col, &x.data, x.shape, self.window, oh, ow);
            sgemm(
                cout,
                np,
                ck,
                MatRef::row_major(&self.weight.value, ck),
                MatRef::row_major(col, np),
                y,
                np,
                false,
            )
        })?;
        let bias = self.bias.as_ref().map(|b| b.value.as_slice());
        let out = Tensor::from_vec([n, cout, oh, ow], cnp_to_nchw(y, n, cout, oh * ow, bias))?;
        // The previous step's copy is this one's buffer.
        let mut xc = self.cache.take().map(|c| c.x).unwrap_or_default();
        copy_into(&mut xc, &x.data);
        self.cache = Some(ConvCache {
            x: xc,
            xshape: x.shape,
            oh,
            ow,
        });
        Ok(out)
    }

    /// dx from dy; `dW += dy' col^T`, `db += sum dy`.
    pub fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        self.backward_inner(dy, true)
            .and_then(|dx| dx.ok_or_else(|| Error::invalid("backward", "no input gradient")))
    }

    /// The parameter gradients only (`dW`, `db`), for a first layer whose input needs none:
    /// saves the data-gradient GEMM and col2im.
    pub fn backward_params(&mut self, dy: &Tensor) -> Result<()> {
        self.backward_inner(dy, false).map(|_| ())
    }

    fn backward_inner(&mut self, dy: &Tensor, want_dx: bool) -> Result<Option<Tensor>> {
        let cache = self.cache.as_ref().ok_or_else(no_forward)?;
        let [n, _, _, _] = cache.xshape;
        let (oh, ow) = (cache.oh, cache.ow);
        dy.expect_shape("conv2d output gradient", [n, self.cout, oh, ow])?;
        let k = self.window.kernel;
        let ck = self.cin * k * k;
        let np = n * oh * ow;
        let dyp = &mut self.scratch.cnp;
        nchw_to_cnp_into(dyp, &dy.data, n, self.cout, oh * ow);
        if let Some(b) = &mut self.bias {
            bias_grad(&mut b.grad, dy);
        }
        let (cout, weight) = (self.cout, &mut self.weight);
        let g = self.window;
        with_columns(|buf| {
            // The column matrix again, from the copy of the input, into the shared buffer.
            let col = scratch(buf, ck * np);
            im2col(col, &cache.x, cache.xshape, g, oh, ow);
            sgemm(
                cout,
                ck,
                np,
                MatRef::row_major(dyp, np),
                MatRef::row_major(col, np).t(),
                &mut weight.grad,
                ck,
                true,
            )?;
            if !want_dx {
                return Ok(None);
            }
            if g.stride == 1 && g.padding < k && cout <= self.cin {
                // dx is the full convolution of dy with the flipped kernels: im2col of dy
                // has cout k k rows, no more than the cin k k rows that col2im would scatter.
                let [_, cin, h, w] = cache.xshape;
                let kk = k * k;
                let mut wf = vec![0.0f32; cin * cout * kk];
                for (co, wc) in weight.value.chunks_exact(cin * kk).enumerate() {
                    for (ci, taps) in wc.chunks_exact(kk).enumerate() {
                        let row = &mut wf[(ci * cout + co) * kk..][..kk];
                        row.iter_mut()
                            .zip(taps.iter().rev())
                            .for_each(|(d, &v)| *d = v);
                    }
                }
                let full = Window {
                    kernel: k,
                    stride: 1,
                    padding: k - 1 - g.padding,
                };
                let (rows, nhw) = (cout * kk, n * h * w);
                let dycol = scratch(buf, rows * nhw);
                im2col(dycol, &dy.data, dy.shape, full, h, w);
                // dy' is no longer needed: its buffer takes dx'.
                let dxp = scratch(dyp, cin * nhw);
                sgemm(
                    cin,
                    nhw,
                    rows,
                    MatRef::row_major(&wf, rows),
                    MatRef::row_major(dycol, nhw),
                    dxp,
                    nhw,
                    false,
                )?;
                let dx = cnp_to_nchw(dxp, n, cin, h * w, None);
                return Tensor::from_vec(cache.xshape, dx).map(Some);
            }
            let dcol = scratch(buf, ck * np);
            sgemm(
                ck,
                np,
                cout,
                MatRef::row_major(&weight.value, ck).t(),
                MatRef::row_major(dyp, np),
                dcol,
                np,
                false,
            )?;
            let dx = col2im(dcol, cache.xshape, g, oh, ow, None);
            Tensor::from_vec(cache.xshape, dx).map(Some)
        })
    }

    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = vec![&mut self.weight];
        if let Some(b) = &mut self.bias {
            v.push(b);
        }
        v
    }
}

fn no_forward() -> Error {
    Error::invalid("backward", "called before forward")
}

struct ConvTCache {
    xp: Vec<f32>,
    xshape: [usize; 4],
    oh: usize,
    ow: usize,
}

/// 2-d transposed convolution (PyTorch's `ConvTranspose2d`, square kernel, no dilation or
/// groups). weight: (cin, cout, k, k), bias: (cout);
/// `oh = (h - 1) stride - 2 padding + k + output_padding`.
pub struct ConvTranspose2d {
    pub cin: usize,
    pub cout: usize,
    pub window: Window,
    pub output_padding: usize,
    pub weight: Param,
    pub bias: Option<Param>,
    cache: Option<ConvTCache>,
    scratch: Scratch,
}

impl ConvTranspose2d {
    /// Initialised as PyTorch's default; as in PyTorch, fan_in is taken from weight
    /// dimension 1, so it is `cout k k`.
    pub fn new(
        cin: usize,
        cout: usize,
        window: Window,
        output_padding: usize,
        bias: bool,
        rng: &mut Rng,
    ) -> Result<Self> {
        window.validate()?;
        if cin == 0 || cout == 0 {
            return Err(Error::invalid("channels", "must be at least 1"));
        }
        if output_padding >= window.stride {
            return Err(Error::invalid(
                "output_padding",
                format!(
                    "{output_padding} must be smaller than the stride {}",
                    window.stride
                ),
            ));
        }
        let kk = window.kernel * window.kernel;
        let (weight, bias) = init(cin * cout * kk, cout * kk, bias.then_some(cout), rng);
        Ok(ConvTranspose2d {
            cin,
            cout,
            window,
            output_padding,
            weight,
            bias,
            cache: None,
            scratch: Scratch::default(),
        })
    }

    /// Output shape for input shape `xs`, or an error.
    pub fn out_shape(&self, xs: [usize; 4]) -> Result<[usize; 4]> {
        if xs[1] != self.cin {
            return Err(Error::ShapeMismatch {
                what: "conv_transpose2d input channels",
                expected: self.cin,
                got: xs[1],
            });
        }
        let g = self.window;
        let size = |h: usize| -> Result<usize> {
            let full = (h.max(1) - 1) * g.stride + g.kernel + self.output_padding;
            if h == 0 || full <= 2 * g.padding {
                return Err(Error::invalid(
                    "input size",
                    format!("{h} gives an empty transposed-convolution output"),
                ));
            }
            Ok(full - 2 * g.padding)
        };
        Ok([xs[0], self.cout, size(xs[2])?, size(xs[3])?])
    }

    pub fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let ys = self.out_shape(x.shape)?;
        let [n, _, h, w] = x.shape;
        let k = self.window.kernel;
        let ck = self.cout * k * k;
        let nhw = n * h * w;
        let mut xp = self.cache.take().map(|c| c.xp).unwrap_or_default();
        nchw_to_cnp_into(&mut xp, &x.data, n, self.cin, h * w);
        let bias = self.bias.as_ref().map(|b| b.value.as_slice());
        let y = with_columns(|col| {
            let col = scratch(col, ck * nhw);
            sgemm(
                ck,
                nhw,
                self.cin,
                MatRef::row_major(&self.weight.value, ck).t(),
                MatRef::row_major(&xp, nhw),
                col,
                nhw,
                false,
            )?;
            Tensor::from_vec(ys, col2im(col, ys, self.window, h, w, bias))
        })?;
        self.cache = Some(ConvTCache {
            xp,
            xshape: x.shape,
            oh: ys[2],
            ow: ys[3],
        });
        Ok(y)
    }

    pub fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        let cache = self.cache.as_ref().ok_or_else(no_forward)?;
        let [n, _, h, w] = cache.xshape;
        let ys = [n, self.cout, cache.oh, cache.ow];
        dy.expect_shape("conv_transpose2d output gradient", ys)?;
        let k = self.window.kernel;
        let ck = self.cout * k * k;
        let nhw = n * h * w;
        if let Some(b) = &mut self.bias {
            bias_grad(&mut b.grad, dy);
        }
        let dxp = scratch(&mut self.scratch.cnp, self.cin * nhw);
        with_columns(|dcol| {
            let dcol = scratch(dcol, ck * nhw);
            im2col(dcol, &dy.data, ys, self.window, h, w);
            sgemm(
                self.cin,
                ck,
                nhw,
                MatRef::row_major(&cache.xp, nhw),
                MatRef::row_major(dcol, nhw).t(),
                &mut self.weight.grad,
                ck,
                true,
            )?;
            sgemm(
                self.cin,
                nhw,
                ck,
                MatRef::row_major(&self.weight.value, ck),
                MatRef::row_major(dcol, nhw),
                dxp,
                nhw,
                false,
            )
        })?;
        Tensor::from_vec(cache.xshape, cnp_to_nchw(dxp, n, self.cin, h * w, None))
    }

    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = vec![&mut self.weight];
        if let Some(b) = &mut self.bias {
            v.push(b);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The register gather against the scalar one, bit for bit, on seeded geometries whose
    /// widths leave every remainder of a 16-lane chunk (and need 1, 2 or 3 chunks), "same"
    /// convolutions (the whole-plane path) among them.
    #[test]
    fn register_gather_matches_scalar_one() {
        for stride in [1, 2] {
            let Some(gather) = gather_simd(stride) else {
                eprintln!("no AVX-512F here: only the scalar gather runs");
                return;
            };
            let mut rng = Rng::new(11 + stride as u64);
            for case in 0..300 {
                let kernel = 1 + rng.below(5);
                let g = Window {
                    kernel,
                    stride,
                    padding: rng.below(kernel),
                };
                let (h, w) = (1 + rng.below(12), 1 + case % 40);
                let (Ok(oh), Ok(ow)) = (g.out_size(h), g.out_size(w)) else {
                    continue;
                };
                // 1 to 3 images, their planes `step` apart with a gap between.
                let (n, step) = (1 + case % 3, h * w + rng.below(3));
                let x: Vec<f32> = (0..n * step).map(|_| rng.normal() as f32).collect();
                for (ky, kx) in (0..kernel).flat_map(|ky| (0..kernel).map(move |kx| (ky, kx))) {
                    let t = Tap::new(g, ky, kx, [h, w], [oh, ow]);
                    let len = n * oh * ow;
                    let (mut want, mut got) = (vec![f32::NAN; len], vec![1.0; len]);
                    gather_taps(&mut want, &x, step, &t);
                    gather(&mut got, &x, step, &t);
                    assert_eq!(
                        bits(&want),
                        bits(&got),
                        "gather {g:?} {h}x{w} tap {ky},{kx}"
                    );
                }
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Tap;
    use std::arch::x86_64::*;

    /// The output columns of the 16-wide chunk at `c0` that a tap reads (`valid`), and
    /// those that exist at all (`store`).
    fn chunk_masks(t: &Tap, c0: usize) -> (u32, u16) {
        let width = (t.ow - c0).min(16);
        let a = t.lo.clamp(c0, c0 + width) - c0;
        let b = t.hi.clamp(c0, c0 + width) - c0;
        let valid = ((1u32 << b) - 1) & !((1u32 << a) - 1);
        (valid, ((1u32 << width) - 1) as u16)
    }

    /// `valid` (16 lanes) spread to the even lanes of 32: stride 2 reads every other float.
    fn even_lanes(valid: u32) -> (u16, u16) {
        let mut m = 0u32;
        for i in 0..16 {
            m |= ((valid >> i) & 1) << (2 * i);
        }
        (m as u16, (m >> 16) as u16)
    }

    /// [`super::TapGather`] for strides 1 and 2.
    ///
    /// # Safety
    /// AVX-512F detected; `out` holds whole oh x ow planes; `x` holds the h x w input plane
    /// of each, `step` apart; the tap's ranges from `valid_range`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gather_avx512(out: &mut [f32], x: &[f32], step: usize, t: &Tap) {
        let plane = t.oh * t.ow;
        if t.s == 1 && (t.oh, t.ow) == (t.h, t.w) && plane <= 16 * 64 {
            // SAFETY: the caller's contract.
            return unsafe { gather_same_avx512(out, x, step, t) };
        }
        for (b, o) in out.chunks_exact_mut(plane).enumerate() {
            // SAFETY: the caller's contract, for one plane.
            unsafe { gather_rows_avx512(o, &x[b * step..][..t.h * t.w], t) };
        }
    }

    /// A stride-1 tap of a convolution whose output has the input's size: the output plane,
    /// read as one flat run, is the input plane shifted by `(ky - pad) w + kx - pad`, with
    /// the positions outside the image zero. Their masks (16 lanes each) are the same for
    /// every image, so they are built once.
    ///
    /// # Safety
    /// As [`gather_avx512`], and oh x ow = h x w <= 1024.
    #[target_feature(enable = "avx512f")]
    unsafe fn gather_same_avx512(out: &mut [f32], x: &[f32], step: usize, t: &Tap) {
        let plane = t.oh * t.ow;
        let mut valid = [0u16; 64];
        for oy in t.ylo..t.yhi {
            for q in oy * t.ow + t.lo..oy * t.ow + t.hi {
                valid[q / 16] |= 1 << (q % 16);
            }
        }
        let shift =
            (t.ky as isize - t.pad as isize) * t.w as isize + t.kx as isize - t.pad as isize;
        let (full, rest) = (plane / 16, plane % 16);
        for (b, o) in out.chunks_exact_mut(plane).enumerate() {
            let img = x[b * step..][..plane].as_ptr();
            // SAFETY: a lane is loaded only where its output position reads inside the
            // image, at input index q + shift < plane; stores stay inside the plane.
            unsafe {
                for (c, &m) in valid[..full].iter().enumerate() {
                    let v =
                        _mm512_maskz_loadu_ps(m, img.wrapping_offset((16 * c) as isize + shift));
                    _mm512_storeu_ps(o.as_mut_ptr().add(16 * c), v);
                }
                if rest > 0 {
                    let src = img.wrapping_offset((16 * full) as isize + shift);
                    let v = _mm512_maskz_loadu_ps(valid[full], src);
                    let store = ((1u32 << rest) - 1) as u16;
                    _mm512_mask_storeu_ps(o.as_mut_ptr().add(16 * full), store, v);
                }
            }
        }
    }

    /// One plane, row by row.
    ///
    /// # Safety
    /// AVX-512F detected; `o` holds oh x ow floats; `img` the h x w input plane; the tap's
    /// ranges from `valid_range` (so the columns read are inside a row).
    #[target_feature(enable = "avx512f")]
    unsafe fn gather_rows_avx512(o: &mut [f32], img: &[f32], t: &Tap) {
        let (s, ow) = (t.s, t.ow);
        debug_assert!(s == 1 || s == 2);
        // SAFETY: stores are masked to the row's ow columns; loads are masked to the
        // columns lo..hi, whose inputs lie inside row `src_row(oy)` of `img` (the
        // pointer to the chunk's first column may lie before it: never dereferenced).
        unsafe {
            // Lanes 0, 2, .., 30 of a 32-lane pair.
            let evens =
                _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let zero = _mm512_setzero_ps();
            for c0 in (0..ow).step_by(16) {
                let (valid, store) = chunk_masks(t, c0);
                let (m0, m1) = if s == 1 {
                    (valid as u16, 0)
                } else {
                    even_lanes(valid)
                };
                let col0 = (c0 * s + t.kx) as isize - t.pad as isize;
                for oy in 0..t.oh {
                    let v = if (t.ylo..t.yhi).contains(&oy) && valid != 0 {
                        let src = img
                            .as_ptr()
                            .wrapping_offset((t.src_row(oy) * t.w) as isize + col0);
                        let a = _mm512_maskz_loadu_ps(m0, src);
                        if s == 1 {
                            a
                        } else {
                            let b = _mm512_maskz_loadu_ps(m1, src.wrapping_add(16));
                            _mm512_permutex2var_ps(a, evens, b)
                        }
                    } else {
                        zero
                    };
                    _mm512_mask_storeu_ps(o.as_mut_ptr().add(oy * ow + c0), store, v);
                }
            }
        }
    }
}
