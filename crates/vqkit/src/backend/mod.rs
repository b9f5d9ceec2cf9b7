//! The backend trait: the handful of operations every backend (CPU, WGPU, CUDA) implements
//! with identical semantics, on buffers that live on the backend's device.
//!
//! Iterative algorithms upload their data once, then call these operations step after step
//! with no host round trip beyond the few scalars they need (counts, distance sums). The
//! host-slice conveniences in [`crate::ops`] sit on top.
//!
//! Semantics, shared by all backends and pinned down by [`crate::reference`]:
//! - `codeword_norms`: `norms[j] = |c_j|^2`.
//! - `distance_argmin`: `idx[i] = argmin_j |x_i - c_j|^2` (lowest `j` wins a tie) and
//!   `dist[i] = max(|x_i|^2 - 2 x_i.c_j + |c_j|^2, 0)` for that `j`; the n x k distance
//!   matrix is never materialised.
//! - `cluster_sums`: per code `j`, `counts[j] = #{i : idx[i] = j}`,
//!   `sums[j] = sum_{idx[i]=j} x_i` and `dist_sums[j] = sum_{idx[i]=j} dist[i]`, each
//!   reduced in a fixed order, so outputs are bit-identical from run to run.
//! - `kmeans_update`: `centroids[j] = sums[j] / counts[j]` where `counts[j] > 0`; an
//!   empty cluster keeps its centroid (repairing it is the algorithm's choice).
//! - `ema_update`: see [`EmaParams`].

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::error::{Error, Result};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for u32 {}
}

/// The element types a device buffer may hold: `f32` data and `u32` codes.
pub trait Element: bytemuck::Pod + Send + Sync + std::fmt::Debug + sealed::Sealed {}
impl Element for f32 {}
impl Element for u32 {}

mod sealed_code {
    pub trait Sealed {}
}

/// An unsigned integer type that codes are written in: `u8` for up to 256 codewords, `u16`
/// up to 65,536, `u32` beyond. A user quantizing many vectors keeps codes of 8 bits in one
/// byte each. On the CPU, PQ's and greedy RQ's encoders write them in that type as they
/// find them (`Pvq::encode_into`, `Rvq::encode_into`); the other encoders, and those of
/// the GPU backends, find `u32` codes and narrow them.
///
/// The decoders read codes of any of these types in place.
pub trait Code:
    bytemuck::Pod
    + Default
    + Send
    + Sync
    + std::fmt::Debug
    + crate::resources::ZeroBits
    + sealed_code::Sealed
{
    /// The number of codewords whose indices the type holds.
    const CODEWORDS: u64;
    /// The type's name, for errors.
    const NAME: &'static str;
    /// `i`, which is below [`Code::CODEWORDS`] (the callers have checked the codebook's
    /// size with [`check_code_type`]), in this type; the bits above it are dropped.
    #[doc(hidden)]
    fn narrow(i: u32) -> Self;
    /// The code as an index.
    fn index(self) -> usize;
}

/// `Code` for an unsigned integer type.
macro_rules! code_type {
    ($t:ty) => {
        impl sealed_code::Sealed for $t {}
        impl Code for $t {
            const CODEWORDS: u64 = 1 << <$t>::BITS;
            const NAME: &'static str = stringify!($t);
            fn narrow(i: u32) -> Self {
                debug_assert!(u64::from(i) < Self::CODEWORDS);
                i as $t
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

code_type!(u8);
code_type!(u16);
code_type!(u32);

/// An error unless codes of type `C` hold every index of `k` codewords.
pub fn check_code_type<C: Code>(k: usize) -> Result<()> {
    if k as u64 > C::CODEWORDS {
        return Err(Error::invalid(
            "codes",
            format!(
                "{k} codewords do not fit {} codes (at most {})",
                C::NAME,
                C::CODEWORDS
            ),
        ));
    }
    Ok(())
}

/// `wide` narrowed into `out` (of the same length), or an error naming the first code `C`
/// does not hold (then nothing is written): never a truncated code. The encoders call it
/// after [`check_code_type`] has checked the codebook's size, for a model whose fields
/// disagree (a VQ layer's codebook of more rows than its `k`); `vqkit assign` for the
/// indices [`crate::ops::assign`] returns.
pub fn narrow_codes<C: Code>(wide: &[u32], out: &mut [C]) -> Result<()> {
    check_len("codes", out.len(), wide.len())?;
    // One branch-free pass, which vectorizes, as `ops::check_codes`.
    let fits = |&c: &u32| u64::from(c) < C::CODEWORDS;
    if !wide.iter().fold(true, |ok, c| ok & fits(c))
        && let Some(row) = wide.iter().position(|c| !fits(c))
    {
        return Err(Error::invalid(
            "codes",
            format!("code {} at {row} does not fit {} codes", wide[row], C::NAME),
        ));
    }
    for (o, &c) in out.iter_mut().zip(wide) {
        *o = C::narrow(c);
    }
    Ok(())
}

/// The instruction set for the quantizers' blocked encoders (`product_codes`,
/// `residual_codes`) on `b`: its host ISA where its memory is the host's and a point with
/// a NaN or an infinity makes a distance that is not finite (the encoders rely on that
/// rather than read the points first); `None` elsewhere.
pub(crate) fn blocked_host<B: Backend>(b: &B) -> Option<cpu::Isa> {
    b.host_isa().filter(|_| b.flags_non_finite_points())
}

/// The sizes of one operation: `n` points, `k` codewords, `d` dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub n: usize,
    pub k: usize,
    pub d: usize,
}

impl Shape {
    pub fn new(n: usize, k: usize, d: usize) -> Self {
        Shape { n, k, d }
    }

    /// Errors for a shape no operation accepts: `d = 0` or `k = 0`. `n = 0` is valid.
    pub fn validate(&self) -> Result<()> {
        if self.d == 0 {
            return Err(Error::ZeroDimension);
        }
        if self.k == 0 {
            return Err(Error::EmptyCodebook);
        }
        Ok(())
    }
}

/// Errors on NaN or infinity; `what` names the input in the message. (Here, below `ops`,
/// so that a backend can search its own inputs: see [`Backend::flags_non_finite_codebook`].)
pub fn check_finite(what: &'static str, v: &[f32]) -> Result<()> {
    // A branch-free fold per chunk vectorizes (an early-exit search does not); chunks run
    // in parallel, and only a failing chunk is searched for the first bad index.
    const CHUNK: usize = 1 << 14;
    let finite = |c: &[f32]| c.iter().fold(true, |ok, x| ok & x.is_finite());
    use rayon::prelude::*;
    let bad_chunk = if v.len() >= 16 * CHUNK {
        v.par_chunks(CHUNK).position_first(|c| !finite(c))
    } else {
        v.chunks(CHUNK).position(|c| !finite(c))
    };
    let Some(chunk) = bad_chunk else {
        return Ok(());
    };
    let start = chunk * CHUNK;
    let index = start + v[start..].iter().position(|x| !x.is_finite()).unwrap_or(0);
    Err(Error::NonFinite {
        what,
        index,
        value: v[index],
    })
}

/// Checks that a buffer has exactly `expected` elements.
pub fn check_len(what: &'static str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            what,
            expected,
            got,
        })
    }
}

/// The input checks every backend runs first, one per operation, on its buffers' lengths:
/// all backends reject exactly the same inputs with the same typed errors.
pub mod check {
    use super::{EmaParams, Shape, check_len};
    use crate::error::Result;

    /// `codeword_norms`: codebook (k, d), norms (k).
    pub fn norms(k: usize, d: usize, codebook: usize, norms: usize) -> Result<()> {
        Shape::new(0, k, d).validate()?;
        check_len("codebook", codebook, k * d)?;
        check_len("norms", norms, k)
    }

    /// `distance_argmin`: x (n, d), codebook (k, d), norms (k), idx and dist (n).
    pub fn argmin(
        s: Shape,
        x: usize,
        codebook: usize,
        norms: usize,
        idx: usize,
        dist: usize,
    ) -> Result<()> {
        s.validate()?;
        check_len("x", x, s.n * s.d)?;
        check_len("codebook", codebook, s.k * s.d)?;
        check_len("norms", norms, s.k)?;
        check_len("idx", idx, s.n)?;
        check_len("dist", dist, s.n)
    }

    /// `cluster_sums`: x (n, d), idx and dist (n), sums (k, d), counts and dist_sums (k).
    pub fn cluster_sums(
        s: Shape,
        x: usize,
        idx: usize,
        dist: usize,
        sums: usize,
        counts: usize,
        dist_sums: usize,
    ) -> Result<()> {
        s.validate()?;
        check_len("x", x, s.n * s.d)?;
        check_len("idx", idx, s.n)?;
        check_len("dist", dist, s.n)?;
        check_len("sums", sums, s.k * s.d)?;
        check_len("counts", counts, s.k)?;
        check_len("dist_sums", dist_sums, s.k)
    }

    /// `kmeans_update`: sums and centroids (k, d), counts (k).
    pub fn update(k: usize, d: usize, sums: usize, counts: usize, centroids: usize) -> Result<()> {
        Shape::new(0, k, d).validate()?;
        check_len("sums", sums, k * d)?;
        check_len("counts", counts, k)?;
        check_len("centroids", centroids, k * d)
    }

    /// `ema_update`: x (n, d), idx (n), cluster_size (k), embed_sum and codebook (k, d).
    pub fn ema(
        s: Shape,
        params: EmaParams,
        x: usize,
        idx: usize,
        cluster_size: usize,
        embed_sum: usize,
        codebook: usize,
    ) -> Result<()> {
        s.validate()?;
        params.validate()?;
        check_len("x", x, s.n * s.d)?;
        check_len("idx", idx, s.n)?;
        check_len("cluster_size", cluster_size, s.k)?;
        check_len("embed_sum", embed_sum, s.k * s.d)?;
        check_len("codebook", codebook, s.k * s.d)
    }
}

/// Parameters of the exponential-moving-average codebook update (VQ-VAE, van den Oord et
/// al. 2017, appendix A.1; the same smoothing as vector-quantize-pytorch):
///
/// ```text
/// size[j]  = decay * size[j] + (1 - decay) * count[j]
/// esum[j]  = decay * esum[j] + (1 - decay) * sum_{idx[i]=j} x_i
/// total    = sum_j size[j]
/// smooth_j = (size[j] + eps) / (total + k * eps) * total      (Laplace smoothing)
/// code[j]  = esum[j] / smooth_j
/// ```
/// When `total` is 0 (nothing ever assigned) the codebook is left unchanged rather than
/// divided by zero.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmaParams {
    pub decay: f32,
    pub eps: f32,
}

impl Default for EmaParams {
    fn default() -> Self {
        EmaParams {
            decay: 0.99,
            eps: 1e-5,
        }
    }
}

impl EmaParams {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.decay) {
            return Err(Error::invalid(
                "decay",
                format!("{} is not in [0, 1]", self.decay),
            ));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::invalid(
                "eps",
                format!("{} is not a positive number", self.eps),
            ));
        }
        Ok(())
    }
}

/// A compute backend. Buffers are the backend's own (`Vec<T>` on the CPU, device memory on
/// a GPU); every operation checks buffer lengths against the shape it is given and returns
/// a typed error rather than panicking. Inputs must be finite: the host conveniences in
/// [`crate::ops`] check that once, at upload.
///
/// Operations may run asynchronously on a device; `download` and `synchronize` wait.
pub trait Backend: Send + Sync {
    /// A device buffer of `T`.
    type Buf<T: Element>: Send + Sync;

    /// A short name: `cpu`, `wgpu`, `cuda`, with the device where that helps.
    fn name(&self) -> String;

    /// Copies host data into a new device buffer.
    fn upload<T: Element>(&self, host: &[T]) -> Result<Self::Buf<T>>;
    /// A new zero-filled device buffer.
    fn zeros<T: Element>(&self, len: usize) -> Result<Self::Buf<T>>;
    /// Copies a device buffer back to the host, waiting for pending work.
    fn download<T: Element>(&self, buf: &Self::Buf<T>) -> Result<Vec<T>>;
    /// The number of elements in a buffer.
    fn buf_len<T: Element>(&self, buf: &Self::Buf<T>) -> usize;
    /// Waits until all submitted work is complete.
    fn synchronize(&self) -> Result<()>;

    /// Runs `work` and returns the seconds the device itself spent on what it submitted,
    /// where the device can measure that (GPU timestamp queries); `None` where it cannot,
    /// and callers then time on the host around [`Backend::synchronize`].
    fn device_seconds(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<f64>> {
        work()?;
        Ok(None)
    }

    /// Host algorithms that read host slices at random (the pruned k-means++ seeding), and
    /// the benchmark's ceiling probes: a backend whose memory is the host's runs `f` in its
    /// own threads and returns `Some`;
    /// `f` is told whether to go parallel, for `work` multiply-adds. Device backends return
    /// `None` and the caller uses its device formulation instead.
    fn run_on_host<R: Send>(&self, work: usize, f: impl FnOnce(bool) -> R + Send) -> Option<R> {
        let _ = (work, f);
        None
    }

    /// Whether [`Backend::assign_host`] gives every point with a NaN or infinite
    /// coordinate a distance that is not finite (whatever the codebook, finite). Then
    /// `ops::assign` checks the points for such values only when a distance is not finite,
    /// rather than in a pass of its own before the kernel: at k = 16, d = 128 that pass
    /// read the points once more for a kernel that reads them once. True on the CPU,
    /// whose distances are `score + |x|^2` with NaN passed through; false elsewhere (WGSL
    /// and CUDA's fast arithmetic promise nothing for NaN).
    fn flags_non_finite_points(&self) -> bool {
        false
    }

    /// Whether [`Backend::assign_host`] itself returns [`check_finite`]'s error for a
    /// codebook with a NaN or an infinity, so that `ops::assign` need not read the codebook
    /// in a pass of its own before the kernel. True on the CPU, whose norms pass sees every
    /// such value (a NaN or infinite coordinate makes its codeword's norm NaN or infinite,
    /// and only then is the codebook searched): at 256 points against 65,536 codewords of
    /// 2048, that pass read 512 MB for a kernel that reads them once. False elsewhere.
    fn flags_non_finite_codebook(&self) -> bool {
        false
    }

    /// The instruction set of this backend's kernels when its memory is the host's and
    /// they are the CPU's (`Some` on the CPU backend): host algorithms that must reproduce
    /// `distance_argmin`'s bits (exact Lloyd with bounds) compute on it. `None` elsewhere.
    fn host_isa(&self) -> Option<cpu::Isa> {
        None
    }

    /// Norms and distance-argmin on host slices, returning `(idx, dist)`. The default
    /// uploads, runs [`Backend::codeword_norms`] and [`Backend::distance_argmin`] and
    /// downloads; a backend whose memory is the host's (the CPU) runs in place instead.
    fn assign_host(
        &self,
        x: &[f32],
        codebook: &[f32],
        shape: Shape,
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        let Shape { n, k, d } = shape;
        let xb = self.upload(x)?;
        let cb = self.upload(codebook)?;
        let mut norms = self.zeros::<f32>(k)?;
        self.codeword_norms(&cb, k, d, &mut norms)?;
        let mut idx = self.zeros::<u32>(n)?;
        let mut dist = self.zeros::<f32>(n)?;
        self.distance_argmin(&xb, &cb, &norms, shape, &mut idx, &mut dist)?;
        Ok((self.download(&idx)?, self.download(&dist)?))
    }

    /// [`Backend::ema_update`] on host slices, the state updated in place. Unlike it, the
    /// points must be finite: a NaN or an infinity among them is [`Error::NonFinite`] (the
    /// first one's index in `x`), and the state is left as it was, as it is on any error.
    /// The default checks the points, uploads them, the codes and the state, runs the step
    /// and downloads all three buffers before writing any back; a backend whose memory is
    /// the host's (the CPU) runs in place instead.
    #[allow(clippy::too_many_arguments)]
    fn ema_update_host(
        &self,
        x: &[f32],
        idx: &[u32],
        shape: Shape,
        params: EmaParams,
        cluster_size: &mut [f32],
        embed_sum: &mut [f32],
        codebook: &mut [f32],
    ) -> Result<()> {
        check_finite("points", x)?;
        let (xb, ib) = (self.upload(x)?, self.upload(idx)?);
        let mut size = self.upload(cluster_size)?;
        let mut esum = self.upload(embed_sum)?;
        let mut code = self.upload(codebook)?;
        self.ema_update(&xb, &ib, shape, params, &mut size, &mut esum, &mut code)?;
        let (s, e, c) = (
            self.download(&size)?,
            self.download(&esum)?,
            self.download(&code)?,
        );
        check_len("cluster_size", s.len(), cluster_size.len())?;
        check_len("embed_sum", e.len(), embed_sum.len())?;
        check_len("codebook", c.len(), codebook.len())?;
        cluster_size.copy_from_slice(&s);
        embed_sum.copy_from_slice(&e);
        codebook.copy_from_slice(&c);
        Ok(())
    }

    /// `norms[j] = |c_j|^2` for a codebook of `k` rows of `d`.
    fn codeword_norms(
        &self,
        codebook: &Self::Buf<f32>,
        k: usize,
        d: usize,
        norms: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// Nearest codeword and its squared distance for each of `shape.n` points.
    fn distance_argmin(
        &self,
        x: &Self::Buf<f32>,
        codebook: &Self::Buf<f32>,
        norms: &Self::Buf<f32>,
        shape: Shape,
        idx: &mut Self::Buf<u32>,
        dist: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// Per-code sums of assigned points, counts and distance sums (k-means accumulation).
    /// Codes outside `0..k` are ignored (the host conveniences reject them first).
    #[allow(clippy::too_many_arguments)]
    fn cluster_sums(
        &self,
        x: &Self::Buf<f32>,
        idx: &Self::Buf<u32>,
        dist: &Self::Buf<f32>,
        shape: Shape,
        sums: &mut Self::Buf<f32>,
        counts: &mut Self::Buf<u32>,
        dist_sums: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// `centroids[j] = sums[j] / counts[j]` where `counts[j] > 0`.
    fn kmeans_update(
        &self,
        sums: &Self::Buf<f32>,
        counts: &Self::Buf<u32>,
        k: usize,
        d: usize,
        centroids: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// One EMA codebook step for the assignments `idx` of the points `x` (see [`EmaParams`]).
    #[allow(clippy::too_many_arguments)]
    fn ema_update(
        &self,
        x: &Self::Buf<f32>,
        idx: &Self::Buf<u32>,
        shape: Shape,
        params: EmaParams,
        cluster_size: &mut Self::Buf<f32>,
        embed_sum: &mut Self::Buf<f32>,
        codebook: &mut Self::Buf<f32>,
    ) -> Result<()>;
}

/// The backends vqkit knows about, whether or not they are compiled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Cpu,
    Wgpu,
    Cuda,
}

impl BackendKind {
    /// Whether this build contains the backend (a GPU may still be absent at run time).
    pub fn compiled(self) -> bool {
        match self {
            BackendKind::Cpu => true,
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
        }
    }
}

crate::impl_choice!(BackendKind, "backend", { Cpu => "cpu", Wgpu => "wgpu", Cuda => "cuda" });

/// Which `distance_argmin` kernel a GPU backend runs. Both are kept, in WGSL and CUDA alike,
/// so that tests check both against the reference and benchmarks can compare them;
/// [`ArgminVariant::V2Tiled`] ships.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ArgminVariant {
    /// v1: one point per invocation or thread, no tiling: the readable reference.
    V1Naive,
    /// v2: codebook tiles in workgroup (shared) memory, register micro-tiles, the argmin
    /// folded in registers (shipped).
    #[default]
    V2Tiled,
}

crate::impl_choice!(ArgminVariant, "variant", { V1Naive => "v1", V2Tiled => "v2" });

/// Options for creating a backend.
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// CPU worker threads; `None` uses rayon's default (all cores).
    pub threads: Option<usize>,
    /// The CPU micro-kernels' instruction set; `None` picks the best this CPU has.
    pub isa: Option<cpu::Isa>,
    /// The GPU backends' `distance_argmin` kernel.
    pub argmin_variant: ArgminVariant,
}

impl BackendOptions {
    /// `threads` workers, the best CPU instruction set, the shipped GPU kernels.
    pub const fn threads(threads: Option<usize>) -> Self {
        BackendOptions {
            threads,
            isa: None,
            argmin_variant: ArgminVariant::V2Tiled,
        }
    }
}

/// A computation generic over the backend, run by [`dispatch`] on a backend chosen at run
/// time (a closure cannot be generic, so this trait stands in for one).
pub trait WithBackend {
    type Output;
    fn run<B: Backend>(self, backend: &B) -> Result<Self::Output>;
}

/// Creates the backend `kind` and runs `job` on it. A backend that is not compiled in, or
/// that finds no device, is a typed [`Error::BackendUnavailable`], never a panic.
pub fn dispatch<W: WithBackend>(
    kind: BackendKind,
    opts: &BackendOptions,
    job: W,
) -> Result<W::Output> {
    match kind {
        BackendKind::Cpu => job.run(&match opts.isa {
            Some(isa) => cpu::CpuBackend::with_isa(opts.threads, isa)?,
            None => cpu::CpuBackend::new(opts.threads)?,
        }),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => job.run(&self::wgpu::WgpuBackend::with_options(
            self::wgpu::WgpuOptions {
                variant: opts.argmin_variant,
                ..Default::default()
            },
        )?),
        #[cfg(not(feature = "wgpu"))]
        BackendKind::Wgpu => Err(not_compiled(kind)),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => job.run(&cuda::CudaBackend::with_variant(0, opts.argmin_variant)?),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(not_compiled(kind)),
    }
}

#[cfg(not(all(feature = "wgpu", feature = "cuda")))]
fn not_compiled(kind: BackendKind) -> Error {
    Error::BackendUnavailable {
        backend: kind.as_str(),
        reason: format!(
            "this build of vqkit has no {kind} backend; rebuild with `--features {kind}`, \
                 or use `--backend cpu`"
        ),
    }
}
