//! Convolutions as GEMMs over column matrices, in the batch-innermost layout.
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
//! The column matrices on the right of a GEMM (`col`, `col^T`, `dcol`, `dcol^T`) are never
//! written out: `Columns` hands the GEMM each KC x NR panel packed straight from the
//! layer's input (a pixel's batch is one run of it), so no k^2-times-larger matrix streams
//! through memory. Only the products that col2im folds back are written, into one buffer
//! per thread that stays in the last-level cache; a Conv2d keeps its input (itself when
//! handed over by `forward_owned`, else a copy), from which its backward packs the column
//! matrix again.
//!
//! A tap of a border pixel that reads padding multiplies a zero. On 7 x 7 planes that is
//! 18% of a 3 x 3 convolution's products; each GEMM gets a [`TapMask`] saying which (tap,
//! pixel) pairs read inside the image, and skips what it can of the rest: a column panel
//! of NR columns (1.5 pixels of a batch of 32) multiplies only the taps some pixel of it
//! needs, and only those rows are packed.

use crate::tensor::{Layout, Param, Tensor, copy_into};
use rayon::prelude::*;
use std::borrow::Cow;
use std::cell::Cell;
use vqkit::backend::cpu::gemm::{MatRef, PackB, Run, Sparsity, sgemm_masked, transpose8};
use vqkit::rng::Rng;
use vqkit::{Error, Result};

/// A dimension of a GEMM: rows of C (`M`), columns of C (`N`), or the summed one (`K`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    M,
    N,
    K,
}

/// Where a convolution's GEMM multiplies by padding, so that it can skip those products.
///
/// One dimension runs over (tap, channel) pairs of the window, `channels` consecutive
/// indices per tap (taps in row-major (ky, kx) order); another over (pixel, image) pairs,
/// `images` consecutive indices per output pixel. Bit t of `valid[pixel]` is set when tap t
/// of that pixel reads inside the image: a product whose tap and pixel are not valid
/// together reads a zero of the padding, and the GEMM may skip it. Three placements, one
/// per kind of convolution GEMM:
/// - taps on K, pixels on N (`W . col`): the result is exact;
/// - pixels on K, taps on N (`dY . col^T`): the result is exact;
/// - taps on M, pixels on N (`W^T . dY`, the columns that col2im folds back): entries of C
///   at invalid (tap, pixel) pairs are left unwritten, since col2im never reads them.
///
/// At most 64 taps.
#[derive(Clone, Copy, Debug)]
pub struct TapMask<'a> {
    taps: Dim,
    channels: usize,
    pixels: Dim,
    images: usize,
    valid: &'a [u64],
    /// Where this GEMM's k starts in the mask's index space (a part of a split product).
    k0: usize,
}

impl<'a> TapMask<'a> {
    /// A mask, or an error for a placement other than the three above or a zero count.
    pub fn new(
        taps: Dim,
        channels: usize,
        pixels: Dim,
        images: usize,
        valid: &'a [u64],
    ) -> Result<Self> {
        if !matches!(
            (taps, pixels),
            (Dim::K, Dim::N) | (Dim::N, Dim::K) | (Dim::M, Dim::N)
        ) {
            return Err(Error::invalid(
                "tap mask",
                format!("taps on {taps:?} and pixels on {pixels:?} is not a convolution GEMM"),
            ));
        }
        if channels == 0 || images == 0 {
            return Err(Error::invalid(
                "tap mask",
                "channels and images must be >= 1",
            ));
        }
        Ok(TapMask {
            taps,
            channels,
            pixels,
            images,
            valid,
            k0: 0,
        })
    }

    /// The (pixel, tap) table for a GEMM of sizes `[m, n, k]`: it must cover every index.
    fn covers(&self, sizes: [usize; 3]) -> Result<()> {
        let size = |d: Dim| sizes[d as usize];
        let taps = size(self.taps).div_ceil(self.channels);
        if taps > 64 {
            return Err(Error::invalid(
                "tap mask",
                format!("{taps} taps; at most 64 fit a mask"),
            ));
        }
        let pixels = size(self.pixels).div_ceil(self.images);
        if self.valid.len() < pixels {
            return Err(Error::ShapeMismatch {
                what: "tap mask pixels",
                expected: pixels,
                got: self.valid.len(),
            });
        }
        Ok(())
    }

    /// The mask of part of a product split along k, which starts at step `k0`.
    fn starting_at(self, k0: usize) -> Self {
        TapMask {
            k0: self.k0 + k0,
            ..self
        }
    }

    /// The taps met by indices `lo..hi` (non-empty) of the tap dimension.
    fn taps_in(&self, lo: usize, hi: usize) -> u64 {
        let (lo, hi) = self.shift(self.taps, lo, hi);
        let (t0, t1) = (lo / self.channels, (hi - 1) / self.channels);
        (u64::MAX >> (63 - (t1 - t0))) << t0
    }

    /// The taps valid at any pixel met by indices `lo..hi` (non-empty) of the pixel
    /// dimension.
    fn pixels_in(&self, lo: usize, hi: usize) -> u64 {
        let (lo, hi) = self.shift(self.pixels, lo, hi);
        self.valid[lo / self.images..=(hi - 1) / self.images]
            .iter()
            .fold(0, |acc, &v| acc | v)
    }

    fn shift(&self, d: Dim, lo: usize, hi: usize) -> (usize, usize) {
        let off = if d == Dim::K { self.k0 } else { 0 };
        (lo + off, hi + off)
    }

    /// Whether the C tile of rows `i0..i1` and columns `j0..j1` needs computing.
    fn live(&self, (i0, i1): (usize, usize), (j0, j1): (usize, usize)) -> bool {
        self.taps != Dim::M || self.taps_in(i0, i1) & self.pixels_in(j0, j1) != 0
    }

    /// Appends to `runs` the maximal ranges of k steps in `p0..p1` whose products with the
    /// columns `j0..j1` of op(B) may be nonzero.
    fn runs_in(&self, (j0, j1): (usize, usize), (p0, p1): (usize, usize), runs: &mut Vec<Run>) {
        match self.taps {
            Dim::K => {
                let allowed = self.pixels_in(j0, j1);
                self.units(self.channels, (p0, p1), |t| allowed >> t & 1 == 1, runs);
            }
            Dim::N => {
                let taps = self.taps_in(j0, j1);
                let valid = self.valid;
                self.units(self.images, (p0, p1), |px| valid[px] & taps != 0, runs);
            }
            Dim::M => runs.push((p0, p1)),
        }
    }

    /// [`TapMask::runs_in`] over a k cut into units of `unit` steps (a tap's channels or a
    /// pixel's images), of which those with `live(u)` count.
    fn units(
        &self,
        unit: usize,
        (p0, p1): (usize, usize),
        live: impl Fn(usize) -> bool,
        runs: &mut Vec<Run>,
    ) {
        let (lo, hi) = self.shift(Dim::K, p0, p1);
        let first = runs.len();
        let mut u = lo / unit;
        while u * unit < hi {
            if live(u) {
                let r0 = (u * unit).max(lo) - self.k0;
                let r1 = ((u + 1) * unit).min(hi) - self.k0;
                match runs[first..].last_mut() {
                    Some(last) if last.1 == r0 => last.1 = r1,
                    _ => runs.push((r0, r1)),
                }
            }
            u += 1;
        }
    }
}

impl Sparsity for TapMask<'_> {
    fn check(&self, sizes: [usize; 3]) -> Result<()> {
        self.covers(sizes)
    }

    fn tile_live(&self, rows: (usize, usize), cols: (usize, usize)) -> bool {
        self.live(rows, cols)
    }

    fn skips_tiles(&self) -> bool {
        self.taps == Dim::M
    }

    fn k_runs(&self, k0: usize, cols: (usize, usize), steps: (usize, usize), runs: &mut Vec<Run>) {
        self.starting_at(k0).runs_in(cols, steps, runs)
    }
}

/// Below this many elements, col2im, the bias gradients and the weight permutations stay on
/// the calling thread.
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

/// Which taps read inside the image, for each output pixel: bit t of entry p is set when
/// `src[t * pixels + p]` (the table of [`source_pixels`]) is not padding. `None` for
/// windows of more than 64 taps (then nothing is skipped).
fn tap_table(src: &[u32], pixels: usize) -> Option<Vec<u64>> {
    let taps = src.len() / pixels.max(1);
    if taps > 64 {
        return None;
    }
    let mut valid = vec![0u64; pixels];
    for (t, tap) in src.chunks_exact(pixels.max(1)).enumerate() {
        for (v, &s) in valid.iter_mut().zip(tap) {
            *v |= u64::from(s != PADDING) << t;
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

#[cfg(test)]
/// The column matrix written out, the reference that [`Columns`] is tested against:
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

#[cfg(test)]
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
        if t.lo == t.hi {
            continue; // no column of this tap reads inside the image
        }
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

/// The column matrix of im2col as a GEMM operand that is never written out: each
/// packed panel is copied straight from the input, so a convolution's forward streams no
/// k^2-times-larger matrix through memory. Rows (tap, channel), columns (pixel, image).
#[derive(Clone, Copy)]
struct Columns<'a> {
    /// The input, (c, h, w, n), and h w n.
    x: &'a [f32],
    plane: usize,
    c: usize,
    n: usize,
    /// For tap t and output pixel p, `src[t * pixels + p]`: the input pixel it reads, or
    /// [`PADDING`].
    src: &'a [u32],
    pixels: usize,
    /// The first row of the matrix that row 0 of this view is (a split product's part).
    row0: usize,
    /// The transpose: rows (pixel, image), columns (tap, channel), as a weight gradient
    /// reads it.
    transposed: bool,
    /// One tap that reads every pixel in place (a 1 x 1 convolution): the column matrix is
    /// the input itself.
    identity: bool,
}

/// An entry of [`Columns::src`] for a tap that reads padding.
const PADDING: u32 = u32::MAX;

impl<'a> Columns<'a> {
    /// The column matrix of `x` (c, h, w, n) under `g`, given `source_pixels(g, ...)`.
    fn new(x: &'a [f32], [n, c, h, w]: [usize; 4], src: &'a [u32], ohw: [usize; 2]) -> Self {
        Columns {
            x,
            plane: h * w * n,
            c,
            n,
            src,
            pixels: ohw[0] * ohw[1],
            row0: 0,
            transposed: false,
            identity: src.len() == h * w
                && ohw == [h, w]
                && src.iter().enumerate().all(|(p, &s)| s as usize == p),
        }
    }

    /// The transpose of the column matrix.
    fn t(self) -> Self {
        Columns {
            transposed: !self.transposed,
            ..self
        }
    }

    /// Rows `p0..p0 + kc` x columns `j0..j0 + cols` of the transposed view, (pixel, image)
    /// x (tap, channel), into `out`: 8 x 8 register transposes where 8 rows lie in one
    /// pixel and 8 columns are consecutive channels of one tap, element by element
    /// elsewhere.
    fn pack_t(&self, p0: usize, kc: usize, j0: usize, cols: usize, nr: usize, out: &mut [f32]) {
        let (c, n) = (self.c, self.n);
        let t8 = transpose8();
        let mut r = self.row0 + p0;
        let end = r + kc;
        while r < end {
            // Rows r..re: images b..b + (re - r) of output pixel p.
            let (p, b) = (r / n, r % n);
            let re = ((p + 1) * n).min(end);
            let o = &mut out[(r - self.row0 - p0) * nr..(re - self.row0 - p0) * nr];
            let rows = re - r;
            let mut jj = 0;
            while jj < cols {
                let (t, ci) = ((j0 + jj) / c, (j0 + jj) % c);
                let s = self.src[t * self.pixels + p];
                // Columns jj..je: channels ci.. of tap t.
                let je = (jj + c - ci).min(cols);
                if s == PADDING {
                    for row in o.chunks_exact_mut(nr) {
                        row[jj..je].fill(0.0);
                    }
                    jj = je;
                    continue;
                }
                let at = |ch: usize| ch * self.plane + s as usize * n + b;
                let mut j = jj;
                if let Some(t8) = t8 {
                    while j + 8 <= je {
                        let ch = ci + (j - jj);
                        let mut i = 0;
                        while i + 8 <= rows {
                            t8(&self.x[at(ch) + i..], self.plane, &mut o[i * nr + j..], nr);
                            i += 8;
                        }
                        for i in i..rows {
                            for q in 0..8 {
                                o[i * nr + j + q] = self.x[at(ch + q) + i];
                            }
                        }
                        j += 8;
                    }
                }
                for j in j..je {
                    let x = &self.x[at(ci + (j - jj))..][..rows];
                    for (i, &v) in x.iter().enumerate() {
                        o[i * nr + j] = v;
                    }
                }
                jj = je;
            }
            if cols < nr {
                for row in o.chunks_exact_mut(nr) {
                    row[cols..].fill(0.0);
                }
            }
            r = re;
        }
    }
}

/// For each tap of window `g` and each output pixel, the input pixel read: the table of
/// [`Columns`]. Planes of 2^31 pixels or more are an error (the table is 32-bit).
fn source_pixels(g: Window, [h, w]: [usize; 2], [oh, ow]: [usize; 2]) -> Result<Vec<u32>> {
    for (a, b) in [(h, w), (oh, ow)] {
        if a.checked_mul(b).is_none_or(|pixels| pixels >= 1 << 31) {
            return Err(Error::invalid(
                "input size",
                format!("{a} x {b} is too many pixels for one plane"),
            ));
        }
    }
    let k = g.kernel;
    let mut src = vec![PADDING; k * k * oh * ow];
    for (t, tap) in src.chunks_exact_mut((oh * ow).max(1)).enumerate() {
        let tp = Tap::new(g, t / k, t % k, [h, w], [oh, ow]);
        if tp.lo == tp.hi {
            continue; // no column of this tap reads inside the image
        }
        for oy in tp.ylo..tp.yhi {
            let first = tp.src_row(oy) * w + tp.first_col();
            for (i, v) in tap[oy * ow + tp.lo..oy * ow + tp.hi].iter_mut().enumerate() {
                *v = (first + i * tp.s) as u32;
            }
        }
    }
    Ok(src)
}

impl PackB for Columns<'_> {
    fn check(&self, what: &'static str, rows: usize, cols: usize) -> Result<()> {
        let taps = self.src.len() / self.pixels.max(1);
        let (mut have_rows, mut have_cols) = (taps * self.c, self.pixels * self.n);
        if self.transposed {
            (have_rows, have_cols) = (have_cols, have_rows);
        }
        if self.row0 + rows > have_rows || cols > have_cols {
            return Err(Error::ShapeMismatch {
                what,
                expected: (self.row0 + rows) * cols,
                got: have_rows * have_cols,
            });
        }
        Ok(())
    }

    fn rows_from(self, k0: usize) -> Self {
        Columns {
            row0: self.row0 + k0,
            ..self
        }
    }

    fn in_place(&self) -> Option<(&[f32], usize)> {
        (self.identity && !self.transposed).then(|| (&self.x[self.row0 * self.plane..], self.plane))
    }

    fn pack(&self, p0: usize, kc: usize, j0: usize, cols: usize, nr: usize, out: &mut [f32]) {
        if self.transposed {
            return self.pack_t(p0, kc, j0, cols, nr, out);
        }
        let (c, n) = (self.c, self.n);
        // Row (tap t, channel ci); columns from image b of output pixel p. No divisions
        // per row: the rows step through the channels of a tap, then the next tap.
        let (p_first, b_first) = (j0 / n, j0 % n);
        let (mut t, mut ci) = ((self.row0 + p0) / c, (self.row0 + p0) % c);
        for o in out[..kc * nr].chunks_exact_mut(nr) {
            let src = &self.src[t * self.pixels..][..self.pixels];
            let x = &self.x[ci * self.plane..][..self.plane];
            let (mut p, mut b, mut j) = (p_first, b_first, 0);
            while j < cols {
                let s = src[p];
                let mut len = (n - b).min(cols - j);
                let mut q = p + 1;
                if s == PADDING {
                    zero(&mut o[j..j + len]);
                } else {
                    // Pixels whose sources follow one another are one copy.
                    while j + len < cols && src[q] == s + (q - p) as u32 {
                        len += n.min(cols - j - len);
                        q += 1;
                    }
                    copy(&mut o[j..j + len], &x[s as usize * n + b..][..len]);
                }
                (p, b, j) = (q, 0, j + len);
            }
            zero(&mut o[cols..]);
            ci += 1;
            if ci == c {
                (t, ci) = (t + 1, 0);
            }
        }
    }
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
    let row = |(wi, oi): (&[f32], &mut [f32])| {
        for (j, taps) in wi.chunks_exact(kk).enumerate() {
            for (t, &v) in taps.iter().enumerate() {
                oi[t * b + j] = v;
            }
        }
    };
    if w.len() >= MIN_PARALLEL_ELEMS {
        w.par_chunks_exact(b * kk)
            .zip(out.par_chunks_exact_mut(kk * b))
            .for_each(row);
    } else {
        w.chunks_exact(b * kk)
            .zip(out.chunks_exact_mut(kk * b))
            .for_each(row);
    }
}

/// A Conv2d weight (cout, cin, k k) as the weight of the full convolution that gives dx:
/// `out[(ci, k k - 1 - t), co] = w[co, ci, t]`, the kernel rotated by 180 degrees and the
/// channels swapped, each tap's cout channels contiguous.
fn flipped_taps(out: &mut Vec<f32>, w: &[f32], [cout, cin, kk]: [usize; 3]) {
    debug_assert_eq!(w.len(), cout * cin * kk);
    let out = scratch(out, w.len());
    // One input channel's kk x cout block of the output per task.
    let block = |(ci, o): (usize, &mut [f32])| {
        for (co, wc) in w.chunks_exact(cin * kk).enumerate() {
            for (t, &v) in wc[ci * kk..][..kk].iter().enumerate() {
                o[(kk - 1 - t) * cout + co] = v;
            }
        }
    };
    if w.len() >= MIN_PARALLEL_ELEMS {
        out.par_chunks_exact_mut(kk * cout)
            .enumerate()
            .for_each(block);
    } else {
        out.chunks_exact_mut(kk * cout).enumerate().for_each(block);
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
    /// The input in [`Layout::Chwn`] (the tensor handed to `forward_owned` itself, or a
    /// copy): Conv2d's backward packs the column matrix from it again, ConvTranspose2d's
    /// takes it as the weight gradient's left operand.
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

/// The input's data in [`Layout::Chwn`]: the input's own buffer when it is handed over in
/// that layout, else a copy (into the buffer of the last step's copy when there is one).
fn keep_chwn(x: Cow<'_, Tensor>, old: Option<Cache>) -> Vec<f32> {
    match (x, old) {
        (Cow::Borrowed(x), Some(old)) if x.layout == Layout::Chwn => {
            let mut keep = old.x;
            copy_into(&mut keep, &x.data);
            keep
        }
        (Cow::Borrowed(x), _) => x.to_layout(Layout::Chwn).data,
        (Cow::Owned(x), _) => x.into_layout(Layout::Chwn).data,
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
        self.forward_cow(Cow::Borrowed(x))
    }

    /// [`Self::forward`], keeping x itself for the backward (no copy when it is in
    /// [`Layout::Chwn`]).
    pub fn forward_owned(&mut self, x: Tensor) -> Result<Tensor> {
        self.forward_cow(Cow::Owned(x))
    }

    fn forward_cow(&mut self, x: Cow<'_, Tensor>) -> Result<Tensor> {
        let ys = self.out_shape(x.shape)?;
        let (xs, layout) = (x.shape, x.layout);
        let [n, cin, h, w] = xs;
        let [_, cout, oh, ow] = ys;
        let (g, kk) = (self.window, self.window.kernel * self.window.kernel);
        let (ck, np) = (kk * cin, oh * ow * n);
        let keep = keep_chwn(x, self.cache.take());
        let wt = &mut self.scratch.wt;
        taps_outer(wt, &self.weight.value, [cout, cin, kk]);
        let src = source_pixels(g, [h, w], [oh, ow])?;
        let valid = tap_table(&src, oh * ow);
        let bias = self.bias.as_ref().map(|b| b.value.as_slice());
        let mut y = output(cout, np, bias);
        sgemm_masked(
            cout,
            np,
            ck,
            MatRef::row_major(&wt[..cout * ck], ck),
            Columns::new(&keep, xs, &src, [oh, ow]),
            &mut y,
            np,
            bias.is_some(),
            mask(&valid, Dim::K, cin, Dim::N, n)?
                .as_ref()
                .map(|m| m as &dyn Sparsity),
        )?;
        self.cache = Some(Cache {
            x: keep,
            xshape: xs,
            layout,
            ohw: [oh, ow],
        });
        Ok(finish(ys, y, layout))
    }

    /// dx from dy; `dW += dy col^T`, `db += sum dy`.
    pub fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        self.backward_inner(dy, true)
            .and_then(|dx| dx.ok_or_else(|| Error::invalid("backward", "no input gradient")))
    }

    /// The parameter gradients only (`dW`, `db`), for a first layer whose input needs none:
    /// saves the data-gradient GEMM (and, for strided layers, col2im).
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
        let (cache, dyc) = start_backward("conv2d output gradient", cache, dy, cout, bias)?;
        let dy = &dyc.data;
        let [n, _, h, w] = cache.xshape;
        let [oh, ow] = cache.ohw;
        let ys = [n, cout, oh, ow];
        let (k, kk) = (g.kernel, g.kernel * g.kernel);
        let (ck, np, nhw) = (kk * cin, oh * ow * n, h * w * n);
        let src = source_pixels(g, [h, w], [oh, ow])?;
        let valid = tap_table(&src, oh * ow);
        // The column matrix again, packed from the input the forward kept.
        let dwt = scratch(dw, cout * ck);
        sgemm_masked(
            cout,
            ck,
            np,
            MatRef::row_major(dy, np),
            Columns::new(&cache.x, cache.xshape, &src, [oh, ow]).t(),
            dwt,
            ck,
            false,
            mask(&valid, Dim::N, cin, Dim::K, n)?
                .as_ref()
                .map(|m| m as &dyn Sparsity),
        )?;
        add_taps_inner(&mut weight.grad, dwt, [cout, cin, kk]);
        if !want_dx {
            return Ok(None);
        }
        if g.stride == 1 && g.padding < k {
            // dx is the full convolution of dy with the kernels rotated by 180 degrees and
            // their channels swapped: one GEMM over the packed columns of dy, with no column
            // matrix to write and fold back by col2im.
            let mut dx = vec![0.0f32; cin * nhw];
            flipped_taps(wt, &weight.value, [cout, cin, kk]);
            let full = Window {
                kernel: k,
                stride: 1,
                padding: k - 1 - g.padding,
            };
            let src = source_pixels(full, [oh, ow], [h, w])?;
            let fvalid = tap_table(&src, h * w);
            sgemm_masked(
                cin,
                nhw,
                kk * cout,
                MatRef::row_major(&wt[..cin * kk * cout], kk * cout),
                Columns::new(dy, ys, &src, [h, w]),
                &mut dx,
                nhw,
                false,
                mask(&fvalid, Dim::K, cout, Dim::N, n)?
                    .as_ref()
                    .map(|m| m as &dyn Sparsity),
            )?;
            return Ok(Some(finish(cache.xshape, dx, cache.layout)));
        }
        let dx = with_columns(|buf| -> Result<Vec<f32>> {
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
                mask(&valid, Dim::M, cin, Dim::N, n)?
                    .as_ref()
                    .map(|m| m as &dyn Sparsity),
            )?;
            Ok(col2im(dcol, cache.xshape, g, [oh, ow], None))
        })?;
        Ok(Some(finish(cache.xshape, dx, cache.layout)))
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

/// What every convolution's backward starts with: its forward's cache, `dy` checked against
/// the output's shape and the input's layout and taken in the batch-innermost layout, and
/// `db += sum dy`.
fn start_backward<'a>(
    what: &'static str,
    cache: &'a Option<Cache>,
    dy: &'a Tensor,
    cout: usize,
    bias: &mut Option<Param>,
) -> Result<(&'a Cache, Cow<'a, Tensor>)> {
    let cache = cache.as_ref().ok_or_else(no_forward)?;
    let [n, _, _, _] = cache.xshape;
    let [oh, ow] = cache.ohw;
    dy.expect(what, [n, cout, oh, ow], cache.layout)?;
    let dy = dy.in_layout(Layout::Chwn);
    if let Some(b) = bias {
        bias_grad(&mut b.grad, &dy.data);
    }
    Ok((cache, dy))
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
        self.forward_cow(Cow::Borrowed(x))
    }

    /// [`Self::forward`], keeping x itself for the backward (no copy when it is in
    /// [`Layout::Chwn`]).
    pub fn forward_owned(&mut self, x: Tensor) -> Result<Tensor> {
        self.forward_cow(Cow::Owned(x))
    }

    fn forward_cow(&mut self, x: Cow<'_, Tensor>) -> Result<Tensor> {
        let ys = self.out_shape(x.shape)?;
        let (xs, layout) = (x.shape, x.layout);
        let [n, cin, h, w] = xs;
        let [_, cout, oh, ow] = ys;
        let (g, kk) = (self.window, self.window.kernel * self.window.kernel);
        let (ck, nhw) = (kk * cout, h * w * n);
        let keep = keep_chwn(x, self.cache.take());
        let wt = &mut self.scratch.wt;
        taps_outer(wt, &self.weight.value, [cin, cout, kk]);
        // The taps of the convolution this one is the adjoint of: from y's grid to x's.
        let valid = tap_table(&source_pixels(g, [oh, ow], [h, w])?, h * w);
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
                mask(&valid, Dim::M, cout, Dim::N, n)?
                    .as_ref()
                    .map(|m| m as &dyn Sparsity),
            )?;
            Ok(col2im(col, ys, g, [h, w], bias))
        })?;
        self.cache = Some(Cache {
            x: keep,
            xshape: xs,
            layout,
            ohw: [oh, ow],
        });
        Ok(finish(ys, y, layout))
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
        let (cache, dyc) =
            start_backward("conv_transpose2d output gradient", cache, dy, cout, bias)?;
        let dy = &dyc.data;
        let [n, _, h, w] = cache.xshape;
        let [oh, ow] = cache.ohw;
        let ys = [n, cout, oh, ow];
        let kk = g.kernel * g.kernel;
        let (ck, nhw) = (kk * cout, h * w * n);
        taps_outer(wt, &weight.value, [cin, cout, kk]);
        let src = source_pixels(g, [oh, ow], [h, w])?;
        let valid = tap_table(&src, h * w);
        let dcol = Columns::new(dy, ys, &src, [h, w]);
        let dwt = scratch(dw, cin * ck);
        sgemm_masked(
            cin,
            ck,
            nhw,
            MatRef::row_major(&cache.x, nhw),
            dcol.t(),
            dwt,
            ck,
            false,
            mask(&valid, Dim::N, cout, Dim::K, n)?
                .as_ref()
                .map(|m| m as &dyn Sparsity),
        )?;
        add_taps_inner(&mut weight.grad, dwt, [cin, cout, kk]);
        let mut dx = vec![0.0f32; cin * nhw];
        sgemm_masked(
            cin,
            nhw,
            ck,
            MatRef::row_major(&wt[..cin * ck], ck),
            dcol,
            &mut dx,
            nhw,
            false,
            mask(&valid, Dim::K, cout, Dim::N, n)?
                .as_ref()
                .map(|m| m as &dyn Sparsity),
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The weight permutations, serial and split across threads (above
    /// `MIN_PARALLEL_ELEMS`), against their definitions, into buffers holding stale values.
    #[test]
    fn weight_permutations_match_their_definitions() {
        let mut rng = Rng::new(4);
        for [a, b, kk] in [[3, 2, 9], [5, 7, 16], [128, 64, 9], [64, 128, 16]] {
            let w = rng.normal_vec(a * b * kk);
            let mut out = vec![f32::NAN; a * b * kk + 5];
            taps_outer(&mut out, &w, [a, b, kk]);
            for (i, j, t) in (0..a * b * kk).map(|e| (e / (b * kk), e / kk % b, e % kk)) {
                assert_eq!(out[(i * kk + t) * b + j], w[(i * b + j) * kk + t]);
            }
            // As a Conv2d weight (cout a, cin b): tap kk - 1 - t of (ci, co).
            let mut out = vec![f32::NAN; a * b * kk + 5];
            flipped_taps(&mut out, &w, [a, b, kk]);
            for (co, ci, t) in (0..a * b * kk).map(|e| (e / (b * kk), e / kk % b, e % kk)) {
                assert_eq!(
                    out[(ci * kk + kk - 1 - t) * a + co],
                    w[(co * b + ci) * kk + t]
                );
            }
        }
    }

    /// The 32-bit table of source pixels refuses planes it cannot index, before allocating.
    #[test]
    fn huge_planes_are_typed_errors() {
        let g = Window {
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        let big = [1 << 16, 1 << 15];
        assert!(matches!(
            source_pixels(g, big, [7, 7]),
            Err(Error::InvalidParameter { .. })
        ));
        assert!(matches!(
            source_pixels(g, [7, 7], big),
            Err(Error::InvalidParameter { .. })
        ));
        assert_eq!(
            source_pixels(g, [7, 7], [7, 7]).map(|v| v.len()).ok(),
            Some(9 * 49)
        );
    }

    /// [`Columns`] packs exactly the panels of the column matrix [`im2col`] writes out, in
    /// both orientations, bit for bit: seeded geometries with kernels 1-5, strides 1-2,
    /// paddings below the kernel, batches that do and do not divide a panel, and random
    /// row ranges, column ranges (every remainder of NR) and split offsets. Planes narrower
    /// than the window give taps that read no column of the image.
    #[test]
    fn columns_pack_the_column_matrix() {
        let mut rng = Rng::new(7);
        for case in 0..400 {
            let pick = |r: &mut Rng, v: &[usize]| v[r.below(v.len())];
            let n = pick(&mut rng, &[1, 2, 3, 5, 8, 16, 32]);
            let c = pick(&mut rng, &[1, 3, 8, 16]);
            let (h, w) = (1 + rng.below(9), 1 + rng.below(9));
            let kernel = 1 + rng.below(5);
            let g = Window {
                kernel,
                stride: 1 + rng.below(2),
                padding: rng.below(kernel),
            };
            let (Ok(oh), Ok(ow)) = (g.out_size(h), g.out_size(w)) else {
                continue;
            };
            let xs = [n, c, h, w];
            let x: Vec<f32> = rng.normal_vec(n * c * h * w);
            let (rows, np) = (kernel * kernel * c, oh * ow * n);
            let mut col = vec![f32::NAN; rows * np];
            im2col(&mut col, &x, xs, g, [oh, ow]);
            let src = source_pixels(g, [h, w], [oh, ow]).expect("small planes");
            let view = Columns::new(&x, xs, &src, [oh, ow]);
            let nr = pick(&mut rng, &[16, 48]);
            for transposed in [false, true] {
                let (mat, cols_view) = if transposed {
                    (MatRef::row_major(&col, np).t(), view.t())
                } else {
                    (MatRef::row_major(&col, np), view)
                };
                let (k, width) = if transposed { (np, rows) } else { (rows, np) };
                let k0 = rng.below(k);
                let (mat, cols_view) = (mat.rows_from(k0), cols_view.rows_from(k0));
                let p0 = rng.below(k - k0);
                let kc = 1 + rng.below(k - k0 - p0);
                let j0 = rng.below(width);
                let cols = 1 + rng.below((width - j0).min(nr));
                let mut want = vec![f32::NAN; kc * nr];
                let mut got = vec![f32::NAN; kc * nr];
                mat.pack(p0, kc, j0, cols, nr, &mut want);
                cols_view.pack(p0, kc, j0, cols, nr, &mut got);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                let what = format!(
                    "case {case}: {xs:?} {g:?} transposed {transposed} k0 {k0} p0 {p0} \
                     kc {kc} j0 {j0} cols {cols} nr {nr}"
                );
                assert_eq!(bits(&got), bits(&want), "{what}");
                // A 1 x 1 convolution's columns are read in place (so is any window that
                // maps a plane onto itself pixel for pixel): the same values.
                let identity = kernel == 1 && g.stride == 1 && g.padding == 0;
                if transposed || identity {
                    assert_eq!(cols_view.in_place().is_some(), !transposed, "{what}");
                }
                if let Some((data, rs)) = cols_view.in_place() {
                    for p in 0..kc {
                        let row = &data[(p0 + p) * rs + j0..][..cols];
                        assert_eq!(bits(row), bits(&want[p * nr..][..cols]), "{what}");
                    }
                }
            }
        }
    }
}
