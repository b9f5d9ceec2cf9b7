//! Single-precision GEMM, the CPU's matrix product: the convolution layers of `vqkit-nn` and
//! the inner-product tables of beam search run on it.
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
//! A GEMM may pass a [`Sparsity`], the products it knows to be zero: a convolution's tap
//! mask (`vqkit_nn::conv::TapMask`) makes each column panel multiply only the k ranges whose
//! products can be nonzero (taps that read inside the image for some pixel of the panel),
//! and skip C tiles that are all padding.
//!
//! Files: this one holds the API (operands, entry points); `driver.rs` the blocking, the
//! task grid and the split along k; `pack.rs` the packing of A and B panels; `micro.rs` the
//! micro-kernels and their block sizes.
//!
//! Variants, all checked against [`crate::reference::gemm`]:
//! - v1 `portable`: plain Rust, MR = 4, NR = 16; the compiler vectorizes for the target.
//! - v2 `avx2`: AVX2 + FMA, MR = 6, NR = 16: 12 ymm accumulators + 2 B vectors + broadcast.
//! - v3 `avx512`: AVX-512F, MR = 8, NR = 48: 24 zmm accumulators + 3 B vectors + broadcast;
//!   11 loads per 24 FMAs. MR = 8 divides every channel count of the models exactly.
//!   Shipped wherever the CPU has AVX-512F.

mod driver;
mod micro;
mod pack;

use super::Isa;
use crate::error::{Error, Result};
use driver::{blocked, k_parts, split_k};
use micro::spec_for;
use pack::pack_b;

/// The 8 x 8 register transpose behind [`transpose8`], for other packings of the CPU
/// backend (the distance kernels' rows).
#[cfg(target_arch = "x86_64")]
pub(crate) use micro::x86::{transpose8_avx, transpose8_regs};
pub use pack::{Transpose8, transpose8};

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

/// The best instruction set of this CPU (detected once, by [`Isa::detect`]).
pub fn default_isa() -> Isa {
    Isa::detect()
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

/// [`sgemm`] skipping the products that `mask` marks as zero (see [`Sparsity`]).
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
    mask: Option<&dyn Sparsity>,
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
    mask: Option<&dyn Sparsity>,
) -> Result<()> {
    if !isa.supported() {
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
        None => blocked(&spec, parallel, m, n, k, a, b, c, ldc, accumulate, mask, 0),
    }
    Ok(())
}

/// The products of a GEMM known to be zero, so that the driver can skip them. The indices
/// are those of the whole product: a part of a product split along k starts at step `k0`.
pub trait Sparsity: Sync {
    /// Whether the pattern covers a GEMM of sizes `[m, n, k]` (a typed error if not).
    fn check(&self, sizes: [usize; 3]) -> Result<()>;
    /// Whether the C tile of rows `i0..i1` and columns `j0..j1` needs computing. A tile for
    /// which this is false is left unwritten: its caller never reads it.
    fn tile_live(&self, rows: (usize, usize), cols: (usize, usize)) -> bool;
    /// Whether [`Sparsity::tile_live`] can be false for some tile.
    fn skips_tiles(&self) -> bool;
    /// Appends to `runs` the maximal ranges of k steps in `p0..p1` (of a part starting at
    /// step `k0`, indices relative to the part) whose products with columns `j0..j1` of
    /// op(B) may be nonzero.
    fn k_runs(&self, k0: usize, cols: (usize, usize), steps: (usize, usize), runs: &mut Vec<Run>);
}

/// A range of k steps.
pub type Run = (usize, usize);
