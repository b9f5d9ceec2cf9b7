//! Single-precision GEMM for the convolution layers.
//!
//! ```text
//! C (m, n) = op(A) (m, k) . op(B) (k, n)          (accumulate = false)
//! C (m, n) += op(A) (m, k) . op(B) (k, n)         (accumulate = true)
//! ```
//!
//! A and B are read through a row stride and a column stride ([`MatRef`]), so a transposed
//! operand is the same buffer with its strides swapped: conv forward (`W . col`), the weight
//! gradient (`dY . col^T`) and the data gradient (`W^T . dY`) are all one call. C is
//! row-major with leading dimension `ldc`. B may also be anything that packs its own
//! panels ([`PackB`]): a convolution's column matrix is packed from the layer's input
//! without ever being written out.
//!
//! Blocking in the BLIS manner: op(A) is packed once, slice by slice of KC steps of k, into
//! panels of MR rows, k-major and zero-padded. The product is then one parallel region: a
//! grid of tasks, each owning a range of whole NR-column panels of C (and, only when there
//! are too few column panels to go round, a range of row panels). A task packs the
//! KC x NR panels of B for its own columns, slice by slice, and runs the micro-kernel over
//! them: B panel outer, A panel inner within a block of MC rows, so the B micro-panel stays
//! in L1 while the A block (MC x KC) stays in L2. One fork-join per GEMM: packing B inside
//! the tasks instead of in a parallel pass of its own saves two joins per KC slice, which on
//! the model's small GEMMs cost more than the packing. The micro-kernel holds an MR x NR tile
//! of C in registers over the whole KC slice, reading NR/lanes vectors of B and broadcasting
//! MR values of A per step, the register tiling of `backend/cpu/distance_argmin.rs` without
//! the argmin epilogue.
//! Edge tiles go through a small buffer, so the kernel only ever writes whole tiles.
//! A product with a small C and a long k (a weight gradient summed over all pixels of a
//! batch) has too few tiles to share between threads; it is split along k into parts,
//! computed in parallel and summed in a fixed order. Tasks and parts are functions of the
//! shape alone, so a product gives the same bits on any number of threads.
//! A convolution's GEMM may pass a [`TapMask`]: then each column panel multiplies only the
//! k ranges whose products can be nonzero (taps that read inside the image for some pixel
//! of the panel), and C tiles that are all padding are skipped.
//!
//! Variants, all checked against [`super::reference::gemm`]:
//! - v1 `portable`: plain Rust, MR = 4, NR = 16; the compiler vectorizes for the target.
//! - v2 `avx2`: AVX2 + FMA, MR = 6, NR = 16: 12 ymm accumulators + 2 B vectors + broadcast.
//! - v3 `avx512`: AVX-512F, MR = 8, NR = 48: 24 zmm accumulators + 3 B vectors + broadcast;
//!   11 loads per 24 FMAs. MR = 8 divides every channel count of the models exactly.
//!   Shipped wherever the CPU has AVX-512F.

use crate::backend::cpu::Isa;
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::cell::Cell;
use std::sync::OnceLock;

/// The largest GEMMs of the default VQ-VAE's convolutions at batch 32, as
/// `(label, m, n, k, A transposed, B transposed)`: forward (`fwd`), weight gradient (`dw`)
/// and input gradient (`dx`; the 3x3 residual convolution takes it as the flipped-kernel
/// convolution of dy), and the first layer's weight gradient, a small C over a long k that
/// is split along k. The shapes the GEMM benchmarks time.
pub const MODEL_SHAPES: &[(&str, usize, usize, usize, bool, bool)] = &[
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

/// A read-only strided view of a matrix: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn row_major(data: &'a [f32], cols: usize) -> Self {
        MatRef {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// A `rows x cols` operand stored row-major, or, when `transposed`, stored as its
    /// row-major `cols x rows` transpose.
    pub fn operand(data: &'a [f32], rows: usize, cols: usize, transposed: bool) -> Self {
        if transposed {
            MatRef::row_major(data, rows).t()
        } else {
            MatRef::row_major(data, cols)
        }
    }

    /// The columns from `j0` on.
    fn cols_from(self, j0: usize) -> Self {
        MatRef {
            data: &self.data[j0 * self.cs..],
            ..self
        }
    }

    /// The rows from `i0` on.
    fn rows_from(self, i0: usize) -> Self {
        MatRef {
            data: &self.data[i0 * self.rs..],
            ..self
        }
    }

    /// The transpose: the same buffer with rows and columns swapped.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }

    fn check(&self, what: &'static str, rows: usize, cols: usize) -> Result<()> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let need = (rows - 1) * self.rs + (cols - 1) * self.cs + 1;
        if self.data.len() < need {
            return Err(Error::ShapeMismatch {
                what,
                expected: need,
                got: self.data.len(),
            });
        }
        Ok(())
    }
}

/// The B operand of a GEMM, as the blocked loop needs it: packed KC x NR panels, or, when
/// it is a row-major matrix in memory, read in place. [`MatRef`] is one; a convolution's
/// column matrix, packed straight from the layer's input without being written out, is
/// another (`conv::Columns`).
pub trait PackB: Copy + Sync {
    /// Whether the operand covers `rows x cols` (a typed error if not).
    fn check(&self, what: &'static str, rows: usize, cols: usize) -> Result<()>;
    /// The operand without its first `k0` rows.
    fn rows_from(self, k0: usize) -> Self;
    /// `(data, row stride)` when row `p` is `data[p * stride..]`, contiguous: the
    /// micro-kernel then reads full panels in place.
    fn in_place(&self) -> Option<(&[f32], usize)>;
    /// Rows `p0..p0 + kc` x columns `j0..j0 + cols` into `out`, `kc` rows of `nr` floats,
    /// zero beyond `cols`.
    fn pack(&self, p0: usize, kc: usize, j0: usize, cols: usize, nr: usize, out: &mut [f32]);
}

impl PackB for MatRef<'_> {
    fn check(&self, what: &'static str, rows: usize, cols: usize) -> Result<()> {
        MatRef::check(self, what, rows, cols)
    }

    fn rows_from(self, k0: usize) -> Self {
        MatRef::rows_from(self, k0)
    }

    fn in_place(&self) -> Option<(&[f32], usize)> {
        (self.cs == 1).then_some((self.data, self.rs))
    }

    fn pack(&self, p0: usize, kc: usize, j0: usize, cols: usize, nr: usize, out: &mut [f32]) {
        pack_b(self, p0, kc, j0, cols, nr, out)
    }
}

/// Whether a GEMM may use rayon. Below [`MIN_PARALLEL_WORK`] multiply-adds it never does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parallelism {
    /// The calling thread only.
    None,
    /// rayon's current pool.
    Rayon,
}

/// Below this many multiply-adds a GEMM runs on the calling thread: entering rayon costs
/// microseconds, more than a small product takes.
pub const MIN_PARALLEL_WORK: usize = 1 << 18;

/// The best instruction set of this CPU, detected once.
pub fn default_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

/// `C = op(A) op(B)` (or `+=`), on the best ISA, in parallel when large enough.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) -> Result<()> {
    sgemm_with(
        default_isa(),
        Parallelism::Rayon,
        m,
        n,
        k,
        a,
        b,
        c,
        ldc,
        accumulate,
    )
}

/// [`sgemm`] on a chosen instruction set and parallelism, for tests and benchmarks.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_with(
    isa: Isa,
    par: Parallelism,
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) -> Result<()> {
    sgemm_masked_with(isa, par, m, n, k, a, b, c, ldc, accumulate, None)
}

/// [`sgemm`] skipping the products that `mask` marks as zero (see [`TapMask`]).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_masked(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: impl PackB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    mask: Option<&TapMask>,
) -> Result<()> {
    sgemm_masked_with(
        default_isa(),
        Parallelism::Rayon,
        m,
        n,
        k,
        a,
        b,
        c,
        ldc,
        accumulate,
        mask,
    )
}

/// [`sgemm_masked`] on a chosen instruction set and parallelism.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_masked_with(
    isa: Isa,
    par: Parallelism,
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: impl PackB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    mask: Option<&TapMask>,
) -> Result<()> {
    if !Isa::available().contains(&isa) {
        return Err(Error::BackendUnavailable {
            backend: "cpu",
            reason: format!("this CPU does not support {}", isa.as_str()),
        });
    }
    a.check("gemm A", m, k)?;
    PackB::check(&b, "gemm B", k, n)?;
    if let Some(mask) = mask {
        mask.check([m, n, k])?;
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if ldc < n {
        return Err(Error::invalid(
            "ldc",
            format!("leading dimension {ldc} is below n = {n}"),
        ));
    }
    let need = (m - 1) * ldc + n;
    if c.len() < need {
        return Err(Error::ShapeMismatch {
            what: "gemm C",
            expected: need,
            got: c.len(),
        });
    }
    if k == 0 {
        if !accumulate {
            for row in c.chunks_mut(ldc).take(m) {
                row[..n].fill(0.0);
            }
        }
        return Ok(());
    }
    let parallel = par == Parallelism::Rayon
        && m * n * k >= MIN_PARALLEL_WORK
        && rayon::current_num_threads() > 1;
    let spec = spec_for(isa);
    match k_parts(&spec, m, n, k) {
        Some(parts) => split_k(
            &spec, parallel, parts, m, n, k, a, b, c, ldc, accumulate, mask,
        ),
        None => blocked(&spec, parallel, m, n, k, a, b, c, ldc, accumulate, mask),
    }
    Ok(())
}

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
    fn check(&self, sizes: [usize; 3]) -> Result<()> {
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
    fn tile_live(&self, (i0, i1): (usize, usize), (j0, j1): (usize, usize)) -> bool {
        self.taps != Dim::M || self.taps_in(i0, i1) & self.pixels_in(j0, j1) != 0
    }

    /// Appends to `runs` the maximal ranges of k steps in `p0..p1` whose products with the
    /// columns `j0..j1` of op(B) may be nonzero.
    fn k_runs(&self, (j0, j1): (usize, usize), (p0, p1): (usize, usize), runs: &mut Vec<Run>) {
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

    /// [`TapMask::k_runs`] over a k cut into units of `unit` steps (a tap's channels or a
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

/// A range of k steps.
type Run = (usize, usize);

/// A micro-kernel: `C[0..MR][0..NR] (+)= sum_p a[p][0..MR] (x) b[p][0..NR]` over `kc` steps,
/// C at `c` with row stride `ldc`.
type Kernel = unsafe fn(
    kc: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
);

struct Spec {
    kernel: Kernel,
    mr: usize,
    nr: usize,
    kc: usize,
    mc: usize,
    nc: usize,
}

fn spec_for(isa: Isa) -> Spec {
    match isa {
        Isa::Portable => Spec {
            kernel: kernel_portable,
            mr: PORTABLE_MR,
            nr: PORTABLE_NR,
            kc: 256,
            mc: 128,
            nc: 3072,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Spec {
            kernel: x86::kernel_avx2,
            mr: x86::AVX2_MR,
            nr: x86::AVX2_NR,
            kc: 256,
            mc: 120,
            nc: 3072,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Spec {
            kernel: x86::kernel_avx512,
            mr: x86::AVX512_MR,
            nr: x86::AVX512_NR,
            kc: 128,
            mc: 128,
            nc: 3072,
        },
        #[cfg(not(target_arch = "x86_64"))]
        _ => spec_for(Isa::Portable),
    }
}

/// Packs rows `i0..i0+mr_rows` x steps `p0..p0+kc` of op(A) into one MR-row panel, k-major.
fn pack_a(a: &MatRef, i0: usize, rows: usize, p0: usize, kc: usize, mr: usize, out: &mut [f32]) {
    if a.cs == 1 {
        // Rows of A are contiguous along k: a transpose. By 8 x 8 blocks in registers for
        // whole 8-row panels, then row by row, scattering with stride MR.
        let mut p_start = 0;
        if let (8, 8, true, Some(t8)) = (mr, rows, kc >= 8, transpose8()) {
            p_start = kc / 8 * 8;
            for pb in (0..p_start).step_by(8) {
                let src = &a.data[i0 * a.rs + p0 + pb..];
                t8(src, a.rs, &mut out[pb * mr..], mr);
            }
        }
        for i in 0..rows {
            let row = &a.data[(i0 + i) * a.rs + p0..][..kc];
            for (p, &v) in row.iter().enumerate().skip(p_start) {
                out[p * mr + i] = v;
            }
        }
        if rows < mr {
            for step in out[..kc * mr].chunks_exact_mut(mr) {
                step[rows..].fill(0.0);
            }
        }
    } else if a.rs == 1 {
        // Columns of A are contiguous (a transposed operand): one slice copy per step.
        for p in 0..kc {
            let o = &mut out[p * mr..(p + 1) * mr];
            o[..rows].copy_from_slice(&a.data[(p0 + p) * a.cs + i0..][..rows]);
            o[rows..].fill(0.0);
        }
    } else {
        for p in 0..kc {
            let o = &mut out[p * mr..(p + 1) * mr];
            for (i, v) in o.iter_mut().enumerate() {
                *v = if i < rows { a.at(i0 + i, p0 + p) } else { 0.0 };
            }
        }
    }
}

/// Packs steps `p0..p0+kc` x columns `j0..j0+cols` of op(B) into one NR-column panel.
fn pack_b(b: &MatRef, p0: usize, kc: usize, j0: usize, cols: usize, nr: usize, out: &mut [f32]) {
    if b.cs == 1 {
        for p in 0..kc {
            let o = &mut out[p * nr..(p + 1) * nr];
            let src = &b.data[(p0 + p) * b.rs + j0..][..cols];
            o[..cols].copy_from_slice(src);
            o[cols..].fill(0.0);
        }
    } else {
        // Columns of B are contiguous along k (a transposed operand): a transpose, by 8 x 8
        // blocks in registers where the CPU has AVX, element by element at the edges.
        let mut j = 0;
        if b.rs == 1 {
            let (j8, k8) = (cols / 8 * 8, kc / 8 * 8);
            if let (true, Some(t8)) = (j8 > 0 && k8 > 0, transpose8()) {
                for jb in (0..j8).step_by(8) {
                    for pb in (0..k8).step_by(8) {
                        let src = &b.data[(j0 + jb) * b.cs + p0 + pb..];
                        t8(src, b.cs, &mut out[pb * nr + jb..], nr);
                    }
                }
                // Rows p >= k8 of the first j8 columns are left for the loop below.
                for jj in 0..j8 {
                    let col = &b.data[(j0 + jj) * b.cs + p0..];
                    for p in k8..kc {
                        out[p * nr + jj] = col[p];
                    }
                }
                j = j8;
            }
        }
        for j in j..cols {
            let col = &b.data[(j0 + j) * b.cs + p0 * b.rs..];
            for p in 0..kc {
                out[p * nr + j] = col[p * b.rs];
            }
        }
        // The padding columns, row by row: column by column, each store would touch a
        // cache line of its own, kc of them per column.
        if cols < nr {
            for row in out[..kc * nr].chunks_exact_mut(nr) {
                row[cols..].fill(0.0);
            }
        }
    }
}

/// One 8 x 8 transpose, `dst[r * dst_stride + c] = src[c * src_stride + r]` for r, c < 8, done
/// in registers; `None` where the CPU cannot (then the packs go element by element).
pub(super) type Transpose8 = fn(src: &[f32], src_stride: usize, dst: &mut [f32], dst_stride: usize);

pub(super) fn transpose8() -> Option<Transpose8> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        return Some(|src, src_stride, dst, dst_stride| {
            assert!(src.len() > 7 * src_stride + 7 && dst.len() > 7 * dst_stride + 7);
            // SAFETY: AVX detected above; the assert keeps all 8 rows of 8 in both slices.
            unsafe { x86::transpose8_avx(src.as_ptr(), src_stride, dst.as_mut_ptr(), dst_stride) }
        });
    }
    None
}

/// C's base pointer, shared by the tasks; each writes a disjoint tile.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: tasks write disjoint tiles of C (distinct row blocks or column panels), and the
// caller's `&mut [f32]` is held for the whole parallel section.
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}

impl CPtr {
    /// A method, not a field access, so closures capture the whole `Sync` wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A product whose C has at most this many MR x NR tiles, and whose k is long, is split
/// along k instead (see [`split_k`]).
const SPLIT_K_MAX_TILES: usize = 32;
/// The k steps of one part of a split product, roughly.
const SPLIT_K_STEPS: usize = 256;

/// How many parts to split k into, if the product is one to split: a small C over a long
/// k, such as a weight gradient summed over every pixel of the batch (64 x 16 over 6272),
/// has too few tiles for the threads to share. A function of the shape alone, so the
/// result does not depend on the thread count; a multiple of 4 parts, so 2 or 4 threads
/// get equal shares.
fn k_parts(s: &Spec, m: usize, n: usize, k: usize) -> Option<usize> {
    let tiles = m.div_ceil(s.mr) * n.div_ceil(s.nr);
    (tiles <= SPLIT_K_MAX_TILES && k >= 4 * SPLIT_K_STEPS)
        .then(|| k.div_ceil(SPLIT_K_STEPS).next_multiple_of(4))
}

/// C (+)= the sum over `parts` near-equal ranges of k of `A[:, range] B[range, :]`: each
/// part a serial product into a buffer of its own, the parts in parallel, then summed
/// into C in part order.
#[allow(clippy::too_many_arguments)]
fn split_k(
    s: &Spec,
    parallel: bool,
    parts: usize,
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: impl PackB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    mask: Option<&TapMask>,
) {
    // Every element of each part is written by its product (with a mask whose taps run
    // along m, tiles it rules out are not: then the buffer is zeroed first).
    let mut partial = PARTIAL.take();
    if mask.is_some_and(|mk| mk.taps == Dim::M) {
        partial.clear();
    }
    partial.resize(parts * m * n, 0.0);
    let part = |(q, out): (usize, &mut [f32])| {
        let (k0, k1) = (share(q, parts, k), share(q + 1, parts, k));
        let (a, b) = (a.cols_from(k0), b.rows_from(k0));
        let mask = mask.map(|mk| mk.starting_at(k0));
        blocked(s, false, m, n, k1 - k0, a, b, out, n, false, mask.as_ref());
    };
    if parallel {
        partial.par_chunks_mut(m * n).enumerate().for_each(part);
    } else {
        partial.chunks_mut(m * n).enumerate().for_each(part);
    }
    // Row by row, each part added in turn: the same order per element as one running sum.
    for (i, row) in c.chunks_mut(ldc).take(m).enumerate() {
        let row = &mut row[..n];
        if !accumulate {
            row.fill(0.0);
        }
        for p in partial.chunks_exact(m * n) {
            row.iter_mut()
                .zip(&p[i * n..][..n])
                .for_each(|(v, &x)| *v += x);
        }
    }
    PARTIAL.set(partial);
}

thread_local! {
    /// Buffers of [`blocked`] and [`split_k`] kept by each thread between products, so a
    /// product does not allocate and zero them again: each is taken out while in use (a
    /// nested use finds an empty one and allocates its own). A product writes every
    /// element it reads first, except the split-k partial sums of a mask with its taps on
    /// M, whose dead tiles no part writes: [`split_k`] zeroes the buffer for those.
    static APACK: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static PARTIAL: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static TASK_BUFFERS: Cell<TaskBuffers> = const {
        Cell::new(TaskBuffers {
            bpack: Vec::new(),
            runs: Vec::new(),
            starts: Vec::new(),
            written: Vec::new(),
        })
    };
}

#[allow(clippy::too_many_arguments)]
fn blocked(
    s: &Spec,
    parallel: bool,
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: impl PackB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    mask: Option<&TapMask>,
) {
    let (mr, nr) = (s.mr, s.nr);
    let a_panels = m.div_ceil(mr);
    let b_panels = n.div_ceil(nr);
    // All of op(A), packed once: KC slice after KC slice, each slice `a_panels` panels of
    // MR rows, k-major. Slice `p0` starts at `a_panels * mr * p0`.
    let mut apack = APACK.take();
    apack.resize(a_panels * mr * k, 0.0);
    {
        let slices: Vec<(usize, &mut [f32])> = (0..k)
            .step_by(s.kc)
            .zip(chunks_by(&mut apack, a_panels * mr, k, s.kc))
            .collect();
        let pack_slice = |(p0, out): (usize, &mut [f32])| {
            let kc = s.kc.min(k - p0);
            for (ip, panel) in out.chunks_mut(mr * kc).enumerate() {
                let i0 = ip * mr;
                pack_a(&a, i0, mr.min(m - i0), p0, kc, mr, panel);
            }
        };
        if parallel && m * k >= MIN_PARALLEL_PACK {
            slices.into_par_iter().for_each(pack_slice);
        } else {
            slices.into_iter().for_each(pack_slice);
        }
    }
    // Tasks: a grid of row ranges (whole MR panels) x column ranges (whole NR panels), one
    // parallel region for the whole product. Each task packs the B panels of its own
    // columns, so tasks in one row of the grid never pack the same B; rows of the grid are
    // only added when there are too few column panels to go round (then they re-pack B,
    // which is small exactly then). Ranges differ in length by at most one panel, and there
    // are several per thread, so the last task to finish is never much longer than the rest
    // (33 panels in tasks of 5 left one thread with 20 of them).
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let col_tasks = if threads > 1 {
        (TASKS_PER_THREAD * threads).min(b_panels)
    } else {
        1
    };
    let row_tasks = if threads > 1 && col_tasks < 2 * threads {
        (TASKS_PER_THREAD * threads)
            .div_ceil(col_tasks)
            .min(a_panels)
    } else {
        1
    };
    let cptr = CPtr(c.as_mut_ptr());
    let apack_all = &apack[..];
    let task = |w: &mut TaskBuffers, t: usize| {
        let (rt, ct) = (t / col_tasks, t % col_tasks);
        let (ip0, ip1) = (
            share(rt, row_tasks, a_panels),
            share(rt + 1, row_tasks, a_panels),
        );
        let (jp0, jp1) = (
            share(ct, col_tasks, b_panels),
            share(ct + 1, col_tasks, b_panels),
        );
        let row_block = (s.mc / mr).max(1);
        let cols_of = |jp: usize| (jp * nr, (jp * nr + nr).min(n));
        let rows_of = |ip: usize| (ip * mr, (ip * mr + mr).min(m));
        for jc in (jp0..jp1).step_by(s.nc / nr) {
            let jc1 = (jc + s.nc / nr).min(jp1);
            // Whether each column panel has had a product written yet: with a mask, a
            // panel's first KC slices may have nothing to add.
            w.written.clear();
            w.written.resize(jc1 - jc, false);
            for p0 in (0..k).step_by(s.kc) {
                let kc = s.kc.min(k - p0);
                // The ranges of this slice that each panel multiplies: all of it, unless
                // the mask rules some out.
                w.runs.clear();
                w.starts.clear();
                for jp in jc..jc1 {
                    w.starts.push(w.runs.len());
                    match mask {
                        Some(mk) => mk.k_runs(cols_of(jp), (p0, p0 + kc), &mut w.runs),
                        None => w.runs.push((p0, p0 + kc)),
                    }
                }
                w.starts.push(w.runs.len());
                // A row-major B is read in place, NR columns of KC rows with its own row
                // stride: with few A panels to share it (small m) packing would cost as much
                // as the product. Partial panels and other operands are packed, only the
                // rows that the panel's runs multiply.
                let direct = b.in_place();
                w.bpack.resize((jc1 - jc) * nr * kc, 0.0);
                for (q, out) in w.bpack.chunks_mut(nr * kc).enumerate() {
                    let (j0, j1) = cols_of(jc + q);
                    if direct.is_none() || j1 - j0 < nr {
                        for &(r0, r1) in &w.runs[w.starts[q]..w.starts[q + 1]] {
                            let out = &mut out[(r0 - p0) * nr..(r1 - p0) * nr];
                            b.pack(r0, r1 - r0, j0, j1 - j0, nr, out);
                        }
                    }
                }
                let aslice = &apack_all[a_panels * mr * p0..][..a_panels * mr * kc];
                // A block of MC rows stays in L2 while the B panels of this task pass by;
                // each B micro-panel stays in L1 across the block's A panels.
                for ib in (ip0..ip1).step_by(row_block) {
                    let ib1 = (ib + row_block).min(ip1);
                    for jp in jc..jc1 {
                        let q = jp - jc;
                        let runs = &w.runs[w.starts[q]..w.starts[q + 1]];
                        let (cj, cj1) = cols_of(jp);
                        let cols = cj1 - cj;
                        let (bp, ldb) = match direct {
                            Some((data, rs)) if cols == nr => {
                                (&data[p0 * rs + cj..][..(kc - 1) * rs + nr], rs)
                            }
                            _ => (&w.bpack[q * nr * kc..][..nr * kc], nr),
                        };
                        for ip in ib..ib1 {
                            if mask.is_some_and(|mk| !mk.tile_live(rows_of(ip), (cj, cj1))) {
                                continue;
                            }
                            let ap = &aslice[ip * mr * kc..][..mr * kc];
                            let (ci, ci1) = rows_of(ip);
                            for (r, &(r0, r1)) in runs.iter().enumerate() {
                                let acc = r > 0 || accumulate || w.written[q];
                                let (ap, bp) = (&ap[(r0 - p0) * mr..], &bp[(r0 - p0) * ldb..]);
                                // SAFETY: ci1 <= m and cj1 <= n, and C holds
                                // (m - 1) * ldc + n elements (checked by `sgemm_with`), so
                                // the tile is in bounds; tasks own disjoint (row, column)
                                // ranges.
                                unsafe {
                                    let cp = cptr.get().add(ci * ldc + cj);
                                    micro(s, r1 - r0, ap, bp, ldb, cp, ldc, ci1 - ci, cols, acc);
                                }
                            }
                        }
                    }
                }
                for (q, written) in w.written.iter_mut().enumerate() {
                    *written |= w.starts[q] < w.starts[q + 1];
                }
            }
            // Panels the mask left without a single product are zero.
            if !accumulate {
                for q in (0..w.written.len()).filter(|&q| !w.written[q]) {
                    let (cj, cj1) = cols_of(jc + q);
                    for i in ip0 * mr..(ip1 * mr).min(m) {
                        // SAFETY: row i < m, columns cj..cj1 <= n of this task's tiles.
                        unsafe {
                            std::slice::from_raw_parts_mut(cptr.get().add(i * ldc + cj), cj1 - cj)
                                .fill(0.0)
                        };
                    }
                }
            }
        }
    };
    let task = |t: usize| {
        let mut w = TASK_BUFFERS.take();
        task(&mut w, t);
        TASK_BUFFERS.set(w);
    };
    let tasks = row_tasks * col_tasks;
    if parallel && tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
    APACK.set(apack);
}

/// What a task of [`blocked`] reuses from one KC slice to the next.
#[derive(Default)]
struct TaskBuffers {
    /// The packed B panels of the task's columns.
    bpack: Vec<f32>,
    /// The k ranges each column panel multiplies in the current slice: panel q's are
    /// `runs[starts[q]..starts[q + 1]]`.
    runs: Vec<Run>,
    starts: Vec<usize>,
    /// Whether a product has been written into each column panel yet.
    written: Vec<bool>,
}

/// Tasks of a parallel GEMM per thread: enough that rayon's stealing evens out the load.
const TASKS_PER_THREAD: usize = 8;

/// The start of part `i` of `parts` near-equal parts of `0..total`.
fn share(i: usize, parts: usize, total: usize) -> usize {
    i * total / parts
}

/// Below this many elements of A, packing it stays on the calling thread.
const MIN_PARALLEL_PACK: usize = 1 << 15;

/// `buf` (rows x k, slice-major) cut into its KC slices: `rows * min(kc, k - p0)` each.
fn chunks_by(buf: &mut [f32], rows: usize, k: usize, kc: usize) -> Vec<&mut [f32]> {
    let mut out = Vec::with_capacity(k.div_ceil(kc));
    let mut rest = buf;
    for p0 in (0..k).step_by(kc) {
        let (head, tail) = rest.split_at_mut(rows * kc.min(k - p0));
        out.push(head);
        rest = tail;
    }
    out
}

/// Runs the micro-kernel on one tile of `rows x cols` (at most MR x NR) at `c`.
///
/// # Safety
/// `c` must point to a `rows x cols` region with row stride `ldc` that no one else touches;
/// `ap` holds `kc * MR` floats, `bp` KC rows of NR floats `ldb` apart.
#[allow(clippy::too_many_arguments)]
unsafe fn micro(
    s: &Spec,
    kc: usize,
    ap: &[f32],
    bp: &[f32],
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    acc: bool,
) {
    debug_assert!(ap.len() >= kc * s.mr && bp.len() >= (kc - 1) * ldb + s.nr);
    if rows == s.mr && cols == s.nr {
        // SAFETY: a whole tile, in bounds by the caller's contract; the kernel's ISA was
        // detected before this spec was chosen.
        unsafe { (s.kernel)(kc, ap.as_ptr(), bp.as_ptr(), ldb, c, ldc, acc) };
        return;
    }
    let mut tmp = [0.0f32; MAX_TILE];
    // SAFETY: tmp holds MR x NR <= MAX_TILE floats with row stride NR.
    unsafe {
        (s.kernel)(
            kc,
            ap.as_ptr(),
            bp.as_ptr(),
            ldb,
            tmp.as_mut_ptr(),
            s.nr,
            false,
        )
    };
    for i in 0..rows {
        for j in 0..cols {
            // SAFETY: i < rows, j < cols: inside the caller's region.
            unsafe {
                let d = c.add(i * ldc + j);
                *d = if acc {
                    *d + tmp[i * s.nr + j]
                } else {
                    tmp[i * s.nr + j]
                };
            }
        }
    }
}

/// The largest MR x NR of any variant.
const MAX_TILE: usize = 8 * 48;

const PORTABLE_MR: usize = 4;
const PORTABLE_NR: usize = 16;

/// v1: plain Rust; fixed-size arrays let the compiler keep the tile in vector registers.
///
/// # Safety
/// `a`: kc x MR floats, `b`: kc rows of NR floats `ldb` apart, `c`: an MR x NR tile with row
/// stride `ldc`.
unsafe fn kernel_portable(
    kc: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    const MR: usize = PORTABLE_MR;
    const NR: usize = PORTABLE_NR;
    // SAFETY: the caller guarantees the lengths above.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, kc * MR),
            std::slice::from_raw_parts(b, (kc - 1) * ldb + NR),
        )
    };
    let mut t = [[0.0f32; NR]; MR];
    for (p, ap) in a.chunks_exact(MR).enumerate() {
        let bp: &[f32; NR] = b[p * ldb..][..NR].try_into().expect("NR floats");
        for r in 0..MR {
            for l in 0..NR {
                t[r][l] += ap[r] * bp[l];
            }
        }
    }
    for (r, row) in t.iter().enumerate() {
        // SAFETY: row r < MR of the caller's tile, NR wide.
        let cr = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), NR) };
        for (o, &v) in cr.iter_mut().zip(row) {
            *o = if acc { *o + v } else { v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 8 x 8 transpose: rows of `src` (8 floats, `ss` apart) become columns of `dst`.
    ///
    /// # Safety
    /// AVX detected; `src` and `dst` hold 8 rows of 8 floats at strides `ss` and `ds`.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn transpose8_avx(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        // SAFETY: rows r < 8 of 8 floats each, inside both buffers by the caller's contract.
        unsafe {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
            // Interleave pairs of rows, then pairs of pairs, then swap 128-bit halves.
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let out = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (i, v) in out.iter().enumerate() {
                _mm256_storeu_ps(dst.add(i * ds), *v);
            }
        }
    }

    pub(super) const AVX2_MR: usize = 6;
    pub(super) const AVX2_NR: usize = 16;
    pub(super) const AVX512_MR: usize = 8;
    pub(super) const AVX512_NR: usize = 48;

    /// v2: 6 rows x 16 columns (two ymm).
    ///
    /// # Safety
    /// AVX2 and FMA detected; `a`: kc x 6 floats, `b`: kc rows of 16 floats `ldb` apart,
    /// `c`: a 6 x 16 tile.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_avx2(
        kc: usize,
        a: *const f32,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        acc_c: bool,
    ) {
        const MR: usize = AVX2_MR;
        const _: () = assert!(AVX2_NR == 2 * 8);
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        // SAFETY (all pointer accesses): p < kc, r < MR, h < 2: inside the caller's buffers.
        unsafe {
            for p in 0..kc {
                let bp = b.add(p * ldb);
                let b0 = _mm256_loadu_ps(bp);
                let b1 = _mm256_loadu_ps(bp.add(8));
                let ap = a.add(p * MR);
                for (r, t) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*ap.add(r));
                    t[0] = _mm256_fmadd_ps(av, b0, t[0]);
                    t[1] = _mm256_fmadd_ps(av, b1, t[1]);
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (h, &v) in row.iter().enumerate() {
                    let cp = c.add(r * ldc + h * 8);
                    let v = if acc_c {
                        _mm256_add_ps(_mm256_loadu_ps(cp), v)
                    } else {
                        v
                    };
                    _mm256_storeu_ps(cp, v);
                }
            }
        }
    }

    /// v3: 8 rows x 48 columns (three zmm).
    ///
    /// # Safety
    /// AVX-512F detected; `a`: kc x 8 floats, `b`: kc rows of 48 floats `ldb` apart,
    /// `c`: an 8 x 48 tile.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernel_avx512(
        kc: usize,
        a: *const f32,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        acc_c: bool,
    ) {
        const MR: usize = AVX512_MR;
        const _: () = assert!(AVX512_NR == 3 * 16);
        let mut acc = [[_mm512_setzero_ps(); 3]; MR];
        // SAFETY (all pointer accesses): p < kc, r < MR, h < 3: inside the caller's buffers.
        unsafe {
            for p in 0..kc {
                let bp = b.add(p * ldb);
                let b0 = _mm512_loadu_ps(bp);
                let b1 = _mm512_loadu_ps(bp.add(16));
                let b2 = _mm512_loadu_ps(bp.add(32));
                let ap = a.add(p * MR);
                for (r, t) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ap.add(r));
                    t[0] = _mm512_fmadd_ps(av, b0, t[0]);
                    t[1] = _mm512_fmadd_ps(av, b1, t[1]);
                    t[2] = _mm512_fmadd_ps(av, b2, t[2]);
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (h, &v) in row.iter().enumerate() {
                    let cp = c.add(r * ldc + h * 16);
                    let v = if acc_c {
                        _mm512_add_ps(_mm512_loadu_ps(cp), v)
                    } else {
                        v
                    };
                    _mm512_storeu_ps(cp, v);
                }
            }
        }
    }
}
