//! Convolutions through im2col and [`super::gemm`], in the batch-innermost layout.
//!
//! The convolutions work on tensors in [`Layout::Chwn`]: channel, row, column, then the
//! image, so every pixel of a channel is a run of `n` floats. Conv2d, x: (cin, h, w, n),
//! weight: (cout, cin, k, k), out: (cout, oh, ow, n):
//! ```text
//! col (k k cin, oh ow n) = im2col(x)      rows (tap, ci), columns (oy, ox, image)
//! y   (cout, oh ow n)    = W' (cout, k k cin) . col
//! dW' += dy . col^T      dcol = W'^T . dy      dx = col2im(dcol)
//! ```
//! where W' is the weight with each tap's input channels contiguous (cout, ky, kx, cin), so
//! a tap is one range of the GEMM's k. ConvTranspose2d is the same pair of maps run the
//! other way (its forward is conv2d's data gradient), with weight (cin, cout, k, k) as
//! PyTorch stores it:
//! ```text
//! col (k k cout, h w n) = W'^T . x         y = col2im(col)
//! dcol = im2col(dy)     dW' += x . dcol^T    dx = W' . dcol
//! ```
//! The whole batch is one GEMM, n * oh * ow columns wide even at 7 x 7 latents, and the
//! GEMM's C is the next layer's input as it stands: no transposes between layers. Tensors
//! in [`Layout::Nchw`] are accepted too, converted on the way in and out.
//!
//! A tap of a border pixel that reads padding multiplies a zero. On 7 x 7 planes that is
//! 18% of a 3 x 3 convolution's products; each GEMM gets a [`TapMask`] saying which (tap,
//! pixel) pairs read inside the image, and skips what it can of the rest: a column panel
//! of NR columns (1.5 pixels of a batch of 32) multiplies only the taps some pixel of it
//! needs.
//!
//! Column matrices are k^2 times the size of the layer's input. No layer keeps its own:
//! every convolution on a thread works in one shared buffer, which stays in the last-level
//! cache, and a Conv2d keeps a copy of its input instead, from which its backward builds
//! the column matrix again.

use super::gemm::{Dim, MatRef, TapMask, sgemm_masked};
use super::layers::copy_into;
use super::tensor::{Layout, Param, Tensor};
use crate::error::{Error, Result};
use crate::rng::Rng;
use rayon::prelude::*;
use std::cell::Cell;

/// Below this many elements, im2col/col2im and the weight permutations stay on the calling
/// thread.
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
    w: usize,
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
            w,
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

/// Which taps of window `g` read inside an (h, w) image, for each (oh, ow) output pixel:
/// bit `ky k + kx`. `None` for windows of more than 64 taps (then nothing is skipped).
fn tap_table(g: Window, hw: [usize; 2], ohw: [usize; 2]) -> Option<Vec<u64>> {
    let k = g.kernel;
    if k * k > 64 {
        return None;
    }
    let mut valid = vec![0u64; ohw[0] * ohw[1]];
    for ky in 0..k {
        for kx in 0..k {
            let t = Tap::new(g, ky, kx, hw, ohw);
            for oy in t.ylo..t.yhi {
                for v in &mut valid[oy * t.ow + t.lo..oy * t.ow + t.hi] {
                    *v |= 1 << (ky * k + kx);
                }
            }
        }
    }
    Some(valid)
}

/// The mask of a GEMM with taps (of `channels` each) on `taps` and the (pixel, image)
/// columns of `valid`'s pixels, `images` per pixel, on `pixels`.
fn mask<'a>(
    valid: &'a Option<Vec<u64>>,
    taps: Dim,
    channels: usize,
    pixels: Dim,
    images: usize,
) -> Result<Option<TapMask<'a>>> {
    valid
        .as_deref()
        .map(|v| TapMask::new(taps, channels, pixels, images, v))
        .transpose()
}

/// col (k k c, oh ow n) from x (c, h, w, n): `col[(t, ci)][(oy, ox, b)] = x[ci, oy s + ky - p,
/// ox s + kx - p, b]` for tap t = (ky, kx), zero outside the image. Every element of `col`
/// is written.
fn im2col(col: &mut [f32], x: &[f32], xs: [usize; 4], g: Window, ohw: [usize; 2]) {
    let [n, c, h, w] = xs;
    let k = g.kernel;
    let np = ohw[0] * ohw[1] * n;
    debug_assert_eq!(col.len(), k * k * c * np);
    let row = |(r, out): (usize, &mut [f32])| {
        let (t, ci) = (r / c, r % c);
        let tap = Tap::new(g, t / k, t % k, [h, w], ohw);
        gather(out, &x[ci * h * w * n..][..h * w * n], n, &tap);
    };
    if col.len() >= MIN_PARALLEL_ELEMS {
        col.par_chunks_mut(np.max(1)).enumerate().for_each(row);
    } else {
        col.chunks_mut(np.max(1)).enumerate().for_each(row);
    }
}

/// One row of [`im2col`]: tap `t` of one channel's plane (h, w, n) into `out` (oh, ow, n).
/// With stride 1 each output row is one run of the input row; otherwise a run of `n` per
/// pixel.
fn gather(out: &mut [f32], plane: &[f32], n: usize, t: &Tap) {
    let (ow, s) = (t.ow, t.s);
    zero(&mut out[..t.ylo * ow * n]);
    zero(&mut out[t.yhi * ow * n..]);
    for oy in t.ylo..t.yhi {
        let o = &mut out[oy * ow * n..][..ow * n];
        zero(&mut o[..t.lo * n]);
        zero(&mut o[t.hi * n..]);
        let src = &plane[(t.src_row(oy) * t.w + t.first_col()) * n..];
        let o = &mut o[t.lo * n..t.hi * n];
        if s == 1 {
            copy(o, &src[..o.len()]);
        } else {
            for (i, px) in o.chunks_exact_mut(n).enumerate() {
                copy(px, &src[i * s * n..][..n]);
            }
        }
    }
}

/// `dst = src`, 16 floats at a time: the runs are a few hundred bytes at most, where a
/// call to `memcpy` costs as much as the copy.
fn copy(dst: &mut [f32], src: &[f32]) {
    let mut d = dst.chunks_exact_mut(16);
    let mut s = src.chunks_exact(16);
    for (d, s) in (&mut d).zip(&mut s) {
        let d: &mut [f32; 16] = d.try_into().expect("16 floats");
        *d = *<&[f32; 16]>::try_from(s).expect("16 floats");
    }
    for (d, &s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = s;
    }
}

/// `dst = 0`, 16 floats at a time (as [`copy`]).
fn zero(dst: &mut [f32]) {
    let mut d = dst.chunks_exact_mut(16);
    for d in &mut d {
        *<&mut [f32; 16]>::try_from(d).expect("16 floats") = [0.0; 16];
    }
    d.into_remainder().iter_mut().for_each(|v| *v = 0.0);
}

/// The adjoint of [`im2col`]: x (c, h, w, n) `= sum over taps of col`, plus `bias[ci]` on
/// channel ci when given (added last). Each channel's plane is zeroed and summed into by one
/// task; each element takes its taps in the order (ky, kx). Entries of `col` at taps that
/// read padding are never read (a masked GEMM may leave them unwritten).
fn col2im(
    col: &[f32],
    xs: [usize; 4],
    g: Window,
    ohw: [usize; 2],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let [n, c, h, w] = xs;
    let k = g.kernel;
    let np = ohw[0] * ohw[1] * n;
    let mut x = vec![0.0f32; n * c * h * w];
    let plane = |(ci, img): (usize, &mut [f32])| {
        for ky in 0..k {
            for kx in 0..k {
                let t = Tap::new(g, ky, kx, [h, w], ohw);
                let r = (ky * k + kx) * c + ci;
                scatter(img, &col[r * np..][..np], n, &t);
            }
        }
        if let Some(bias) = bias {
            img.iter_mut().for_each(|v| *v += bias[ci]);
        }
    };
    let chunk = (h * w * n).max(1);
    if x.len() >= MIN_PARALLEL_ELEMS {
        x.par_chunks_mut(chunk).enumerate().for_each(plane);
    } else {
        x.chunks_mut(chunk).enumerate().for_each(plane);
    }
    x
}

/// Adds one tap's row of a column matrix (oh, ow, n) into a plane (h, w, n): the adjoint
/// of [`gather`].
fn scatter(img: &mut [f32], row: &[f32], n: usize, t: &Tap) {
    if t.lo == t.hi {
        return;
    }
    let (s, ow) = (t.s, t.ow);
    for oy in t.ylo..t.yhi {
        let dst = &mut img[(t.src_row(oy) * t.w + t.first_col()) * n..];
        let src = &row[(oy * ow + t.lo) * n..(oy * ow + t.hi) * n];
        if s == 1 {
            dst[..src.len()]
                .iter_mut()
                .zip(src)
                .for_each(|(d, &v)| *d += v);
        } else {
            for (i, px) in src.chunks_exact(n).enumerate() {
                dst[i * s * n..][..n]
                    .iter_mut()
                    .zip(px)
                    .for_each(|(d, &v)| *d += v);
            }
        }
    }
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

/// The first `len` elements of `buf`, which grows (zeroed) when shorter and never shrinks,
/// so a buffer shared by layers of different sizes is not zeroed again at each switch.
/// Elements it already held keep their stale values: for outputs overwritten in full.
fn scratch(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// A weight (a, b, k k) with its taps moved outside the channels, (a, k k, b), into `out`.
fn taps_outer(out: &mut Vec<f32>, w: &[f32], [a, b, kk]: [usize; 3]) {
    debug_assert_eq!(w.len(), a * b * kk);
    let out = scratch(out, w.len());
    for (wi, oi) in w.chunks_exact(b * kk).zip(out.chunks_exact_mut(kk * b)) {
        for (j, taps) in wi.chunks_exact(kk).enumerate() {
            for (t, &v) in taps.iter().enumerate() {
                oi[t * b + j] = v;
            }
        }
    }
}

/// `grad (a, b, k k) += g (a, k k, b)`: a gradient computed with the taps outside, added to
/// the parameter's own order.
fn add_taps_inner(grad: &mut [f32], g: &[f32], [_, b, kk]: [usize; 3]) {
    for (gi, oi) in grad.chunks_exact_mut(b * kk).zip(g.chunks_exact(kk * b)) {
        for (j, taps) in gi.chunks_exact_mut(kk).enumerate() {
            for (t, v) in taps.iter_mut().enumerate() {
                *v += oi[t * b + j];
            }
        }
    }
}

/// `db[c] += sum over (pixels, images) of dy[c]` for dy (c, h, w, n): channel rows in
/// parallel, each summed in f64 in a fixed order.
fn bias_grad(db: &mut [f32], dy: &[f32]) {
    let len = dy.len() / db.len().max(1);
    let channel = |(g, row): (&mut f32, &[f32])| {
        *g += row.iter().map(|&v| v as f64).sum::<f64>() as f32;
    };
    if dy.len() >= MIN_PARALLEL_ELEMS {
        db.par_iter_mut()
            .zip(dy.par_chunks(len.max(1)))
            .for_each(channel);
    } else {
        db.iter_mut().zip(dy.chunks(len.max(1))).for_each(channel);
    }
}

/// A fresh output of `rows` rows of `len`: each row filled with its bias, or zero.
fn output(rows: usize, len: usize, bias: Option<&[f32]>) -> Vec<f32> {
    match bias {
        None => vec![0.0; rows * len],
        Some(b) => {
            let mut y = Vec::with_capacity(rows * len);
            for &v in &b[..rows] {
                y.resize(y.len() + len, v);
            }
            y
        }
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

/// What a convolution's backward needs from its forward.
struct Cache {
    /// A copy of the input in [`Layout::Chwn`]: Conv2d's backward builds the column matrix
    /// again from it, ConvTranspose2d's takes it as the weight gradient's left operand.
    x: Vec<f32>,
    xshape: [usize; 4],
    /// The layout the input came in: the backward takes dy and returns dx in it.
    layout: Layout,
    /// The output's (oh, ow).
    ohw: [usize; 2],
}

/// Buffers a layer keeps between steps, so a training step does not allocate (and zero)
/// them again each time.
#[derive(Default)]
struct Scratch {
    /// The weight with each tap's channels contiguous, as the GEMMs take it.
    wt: Vec<f32>,
    /// The weight gradient in that order.
    dw: Vec<f32>,
}

/// The input's data in [`Layout::Chwn`], in the buffer of the last step's copy when it
/// came in that layout.
fn keep_chwn(x: &Tensor, old: Option<Cache>) -> Vec<f32> {
    match x.layout {
        Layout::Chwn => {
            let mut keep = old.map(|c| c.x).unwrap_or_default();
            copy_into(&mut keep, &x.data);
            keep
        }
        Layout::Nchw => x.to_layout(Layout::Chwn).data,
    }
}

/// A result in [`Layout::Chwn`], returned in `layout`.
fn finish(shape: [usize; 4], data: Vec<f32>, layout: Layout) -> Tensor {
    Tensor {
        shape,
        layout: Layout::Chwn,
        data,
    }
    .into_layout(layout)
}

/// 2-d convolution (PyTorch's `Conv2d`, square kernel, no dilation or groups).
/// weight: (cout, cin, k, k), bias: (cout).
pub struct Conv2d {
    pub cin: usize,
    pub cout: usize,
    pub window: Window,
    pub weight: Param,
    pub bias: Option<Param>,
    cache: Option<Cache>,
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

    /// y = conv(x) + b, in x's layout; keeps a copy of x for the backward.
    pub fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let ys = self.out_shape(x.shape)?;
        let [n, cin, h, w] = x.shape;
        let [_, cout, oh, ow] = ys;
        let (g, kk) = (self.window, self.window.kernel * self.window.kernel);
        let (ck, np) = (kk * cin, oh * ow * n);
        let keep = keep_chwn(x, self.cache.take());
        let wt = &mut self.scratch.wt;
        taps_outer(wt, &self.weight.value, [cout, cin, kk]);
        let valid = tap_table(g, [h, w], [oh, ow]);
        let bias = self.bias.as_ref().map(|b| b.value.as_slice());
        let mut y = output(cout, np, bias);
        with_columns(|col| {
            let col = scratch(col, ck * np);
            im2col(col, &keep, x.shape, g, [oh, ow]);
            sgemm_masked(
                cout,
                np,
                ck,
                MatRef::row_major(&wt[..cout * ck], ck),
                MatRef::row_major(col, np),
                &mut y,
                np,
                bias.is_some(),
                mask(&valid, Dim::K, cin, Dim::N, n)?.as_ref(),
            )
        })?;
        self.cache = Some(Cache {
            x: keep,
            xshape: x.shape,
            layout: x.layout,
            ohw: [oh, ow],
        });
        Ok(finish(ys, y, x.layout))
    }

    /// dx from dy; `dW += dy col^T`, `db += sum dy`.
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
        let Conv2d {
            cin,
            cout,
            window: g,
            weight,
            bias,
            cache,
            scratch: Scratch { wt, dw },
        } = self;
        let (cin, cout, g) = (*cin, *cout, *g);
        let cache = cache.as_ref().ok_or_else(no_forward)?;
        let [n, _, h, w] = cache.xshape;
        let [oh, ow] = cache.ohw;
        let ys = [n, cout, oh, ow];
        dy.expect("conv2d output gradient", ys, cache.layout)?;
        let dyc = dy.in_layout(Layout::Chwn);
        let dy = &dyc.data;
        let (k, kk) = (g.kernel, g.kernel * g.kernel);
        let (ck, np, nhw) = (kk * cin, oh * ow * n, h * w * n);
        if let Some(b) = bias {
            bias_grad(&mut b.grad, dy);
        }
        let valid = tap_table(g, [h, w], [oh, ow]);
        let dx = with_columns(|buf| -> Result<Option<Vec<f32>>> {
            // The column matrix again, from the copy of the input, into the shared buffer.
            let col = scratch(buf, ck * np);
            im2col(col, &cache.x, cache.xshape, g, [oh, ow]);
            let dwt = scratch(dw, cout * ck);
            sgemm_masked(
                cout,
                ck,
                np,
                MatRef::row_major(dy, np),
                MatRef::row_major(col, np).t(),
                dwt,
                ck,
                false,
                mask(&valid, Dim::N, cin, Dim::K, n)?.as_ref(),
            )?;
            add_taps_inner(&mut weight.grad, dwt, [cout, cin, kk]);
            if !want_dx {
                return Ok(None);
            }
            let mut dx = vec![0.0f32; cin * nhw];
            if g.stride == 1 && g.padding < k && cout <= cin {
                // dx is the full convolution of dy with the kernels rotated by 180 degrees
                // and their channels swapped: the im2col of dy has k k cout rows, no more
                // than the k k cin rows that col2im would scatter.
                let wf = scratch(wt, cin * kk * cout);
                for (co, wc) in weight.value.chunks_exact(cin * kk).enumerate() {
                    for (ci, taps) in wc.chunks_exact(kk).enumerate() {
                        for (t, &v) in taps.iter().enumerate() {
                            wf[(ci * kk + kk - 1 - t) * cout + co] = v;
                        }
                    }
                }
                let full = Window {
                    kernel: k,
                    stride: 1,
                    padding: k - 1 - g.padding,
                };
                let dycol = scratch(buf, kk * cout * nhw);
                im2col(dycol, dy, ys, full, [h, w]);
                let fvalid = tap_table(full, [oh, ow], [h, w]);
                sgemm_masked(
                    cin,
                    nhw,
                    kk * cout,
                    MatRef::row_major(wf, kk * cout),
                    MatRef::row_major(dycol, nhw),
                    &mut dx,
                    nhw,
                    false,
                    mask(&fvalid, Dim::K, cout, Dim::N, n)?.as_ref(),
                )?;
                return Ok(Some(dx));
            }
            taps_outer(wt, &weight.value, [cout, cin, kk]);
            let dcol = scratch(buf, ck * np);
            sgemm_masked(
                ck,
                np,
                cout,
                MatRef::row_major(&wt[..cout * ck], ck).t(),
                MatRef::row_major(dy, np),
                dcol,
                np,
                false,
                mask(&valid, Dim::M, cin, Dim::N, n)?.as_ref(),
            )?;
            Ok(Some(col2im(dcol, cache.xshape, g, [oh, ow], None)))
        })?;
        Ok(dx.map(|dx| finish(cache.xshape, dx, cache.layout)))
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
    cache: Option<Cache>,
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

    /// y = conv_transpose(x) + b, in x's layout; keeps a copy of x for the backward.
    pub fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let ys = self.out_shape(x.shape)?;
        let [n, cin, h, w] = x.shape;
        let [_, cout, oh, ow] = ys;
        let (g, kk) = (self.window, self.window.kernel * self.window.kernel);
        let (ck, nhw) = (kk * cout, h * w * n);
        let keep = keep_chwn(x, self.cache.take());
        let wt = &mut self.scratch.wt;
        taps_outer(wt, &self.weight.value, [cin, cout, kk]);
        // The taps of the convolution this one is the adjoint of: from y's grid to x's.
        let valid = tap_table(g, [oh, ow], [h, w]);
        let bias = self.bias.as_ref().map(|b| b.value.as_slice());
        let y = with_columns(|col| -> Result<Vec<f32>> {
            let col = scratch(col, ck * nhw);
            sgemm_masked(
                ck,
                nhw,
                cin,
                MatRef::row_major(&wt[..cin * ck], ck).t(),
                MatRef::row_major(&keep, nhw),
                col,
                nhw,
                false,
                mask(&valid, Dim::M, cout, Dim::N, n)?.as_ref(),
            )?;
            Ok(col2im(col, ys, g, [h, w], bias))
        })?;
        self.cache = Some(Cache {
            x: keep,
            xshape: x.shape,
            layout: x.layout,
            ohw: [oh, ow],
        });
        Ok(finish(ys, y, x.layout))
    }

    /// dx from dy; `dW += x dcol^T`, `db += sum dy`.
    pub fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        let ConvTranspose2d {
            cin,
            cout,
            window: g,
            weight,
            bias,
            cache,
            scratch: Scratch { wt, dw },
            ..
        } = self;
        let (cin, cout, g) = (*cin, *cout, *g);
        let cache = cache.as_ref().ok_or_else(no_forward)?;
        let [n, _, h, w] = cache.xshape;
        let [oh, ow] = cache.ohw;
        let ys = [n, cout, oh, ow];
        dy.expect("conv_transpose2d output gradient", ys, cache.layout)?;
        let dyc = dy.in_layout(Layout::Chwn);
        let dy = &dyc.data;
        let kk = g.kernel * g.kernel;
        let (ck, nhw) = (kk * cout, h * w * n);
        if let Some(b) = bias {
            bias_grad(&mut b.grad, dy);
        }
        taps_outer(wt, &weight.value, [cin, cout, kk]);
        let valid = tap_table(g, [oh, ow], [h, w]);
        let dx = with_columns(|dcol| -> Result<Vec<f32>> {
            let dcol = scratch(dcol, ck * nhw);
            im2col(dcol, dy, ys, g, [h, w]);
            let dwt = scratch(dw, cin * ck);
            sgemm_masked(
                cin,
                ck,
                nhw,
                MatRef::row_major(&cache.x, nhw),
                MatRef::row_major(dcol, nhw).t(),
                dwt,
                ck,
                false,
                mask(&valid, Dim::N, cout, Dim::K, n)?.as_ref(),
            )?;
            add_taps_inner(&mut weight.grad, dwt, [cin, cout, kk]);
            let mut dx = vec![0.0f32; cin * nhw];
            sgemm_masked(
                cin,
                nhw,
                ck,
                MatRef::row_major(&wt[..cin * ck], ck),
                MatRef::row_major(dcol, nhw),
                &mut dx,
                nhw,
                false,
                mask(&valid, Dim::K, cout, Dim::N, n)?.as_ref(),
            )?;
            Ok(dx)
        })?;
        Ok(finish(cache.xshape, dx, cache.layout))
    }

    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = vec![&mut self.weight];
        if let Some(b) = &mut self.bias {
            v.push(b);
        }
        v
    }
}
