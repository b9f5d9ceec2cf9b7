//! The CPU backend: always compiled, the embedded default. rayon over row blocks and codes,
//! with SIMD micro-kernels chosen at run time (AVX-512, AVX2 + FMA, or portable).
//!
//! The CPU's matrix kernels live here together, on one ISA detection ([`Isa`]):
//! `distance_argmin.rs` (the fused argmin), `cluster_sums.rs` (the per-code reductions and
//! the EMA step), [`gemm`] (the matrix product the convolutions and beam search use) and
//! [`peak`] (the FMA and bandwidth ceilings the benchmarks report against).

mod cache;
mod cluster_sums;
mod distance_argmin;
pub mod gemm;
mod isa;
pub mod peak;
mod product;
mod residual;

pub use cache::CacheSizes;
pub use isa::{Isa, has_avx};

#[cfg(test)]
pub(crate) use product::block_rows;
pub(crate) use product::{product_codes, size};
pub(crate) use residual::{
    DECODE_ROWS, add_codewords, residual_codes, residual_decode, residual_decoded_len,
    subtract_codewords,
};

pub(crate) use distance_argmin::{
    LANES, NARROW_K, exact_lane_scores, exact_scores, finished, pack_lanes, row_norms, sq_norm,
};

use super::{Backend, Element, EmaParams, Shape, check, check_len};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Below this many multiply-adds an operation runs on the calling thread: entering rayon
/// costs microseconds, more than a small problem takes.
const MIN_PARALLEL_WORK: usize = 1 << 18;

/// The threads a kernel's parallel loops spread over: the current rayon pool's, or one
/// where the caller runs it sequentially.
pub(crate) fn pool_threads(parallel: bool) -> usize {
    if parallel {
        rayon::current_num_threads()
    } else {
        1
    }
}

/// The CPU backend. Its buffers are plain `Vec`s; "device" and host memory are the same.
pub struct CpuBackend {
    isa: Isa,
    /// `None`: run on the calling thread. `Some`: a pool of its own, or rayon's global pool.
    pool: Option<Option<rayon::ThreadPool>>,
    threads: usize,
}

impl CpuBackend {
    /// A CPU backend with the best SIMD path and `threads` workers (`None`: all cores;
    /// `Some(1)`: no rayon at all).
    pub fn new(threads: Option<usize>) -> Result<Self> {
        Self::with_isa(threads, Isa::detect())
    }

    /// A CPU backend forced onto one instruction set, for tests and benchmarks; an error if
    /// this CPU lacks it.
    pub fn with_isa(threads: Option<usize>, isa: Isa) -> Result<Self> {
        if !isa.supported() {
            return Err(Error::BackendUnavailable {
                backend: "cpu",
                reason: format!("this CPU does not support {}", isa.as_str()),
            });
        }
        let (pool, threads) = match threads {
            Some(0) => return Err(Error::invalid("threads", "must be at least 1")),
            Some(1) => (None, 1),
            Some(t) => {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .map_err(|e| Error::BackendUnavailable {
                        backend: "cpu",
                        reason: format!("cannot start {t} threads: {e}"),
                    })?;
                (Some(Some(pool)), t)
            }
            None => (Some(None), rayon::current_num_threads()),
        };
        Ok(CpuBackend { isa, pool, threads })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(parallel)` inside this backend's pool; `parallel` is false when the backend
    /// is single-threaded or the work is below [`MIN_PARALLEL_WORK`].
    fn run<R: Send>(&self, work: usize, f: impl FnOnce(bool) -> R + Send) -> R {
        match &self.pool {
            Some(_) if work < MIN_PARALLEL_WORK => f(false),
            Some(Some(pool)) => pool.install(|| f(true)),
            Some(None) => f(true),
            None => f(false),
        }
    }
}

/// `norms[j] = |codebook_j|^2` ([`sq_norm`]) for the rows of `codebook`, in parallel or not
/// (the same bits), [`row_norms`] on runs of [`NORM_ROWS`] rows. (Row by row, each
/// [`sq_norm`] ran in the baseline build, SSE2.)
fn sq_norms(parallel: bool, codebook: &[f32], d: usize, norms: &mut [f32]) {
    let one = |(o, c): (&mut [f32], &[f32])| row_norms(c, d, o);
    let rows = NORM_ROWS * d.max(1);
    if parallel {
        norms
            .par_chunks_mut(NORM_ROWS)
            .zip(codebook.par_chunks(rows))
            .for_each(one);
    } else {
        norms
            .chunks_mut(NORM_ROWS)
            .zip(codebook.chunks(rows))
            .for_each(one);
    }
}

/// Rows per task of [`sq_norms`].
const NORM_ROWS: usize = 1024;

impl Backend for CpuBackend {
    type Buf<T: Element> = Vec<T>;

    fn name(&self) -> String {
        format!("cpu ({}, {} threads)", self.isa.as_str(), self.threads)
    }

    fn upload<T: Element>(&self, host: &[T]) -> Result<Vec<T>> {
        crate::resources::copied("a CPU buffer", host)
    }

    fn zeros<T: Element>(&self, len: usize) -> Result<Vec<T>> {
        crate::resources::filled("a CPU buffer", len, T::zeroed())
    }

    fn download<T: Element>(&self, buf: &Vec<T>) -> Result<Vec<T>> {
        Ok(buf.clone())
    }

    fn buf_len<T: Element>(&self, buf: &Vec<T>) -> usize {
        buf.len()
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn run_on_host<R: Send>(&self, work: usize, f: impl FnOnce(bool) -> R + Send) -> Option<R> {
        Some(self.run(work, f))
    }

    fn host_isa(&self) -> Option<Isa> {
        Some(self.isa)
    }

    fn flags_non_finite_points(&self) -> bool {
        true
    }

    fn flags_non_finite_codebook(&self) -> bool {
        true
    }

    fn assign_host(
        &self,
        x: &[f32],
        codebook: &[f32],
        shape: Shape,
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        // Host memory is this backend's memory: no copies of x.
        shape.validate()?;
        let Shape { n, k, d } = shape;
        check_len("x", x.len(), n * d)?;
        check_len("codebook", codebook.len(), k * d)?;
        let mut norms = crate::resources::zeroed::<f32>("the codeword norms", k)?;
        // Zeroed by the allocator rather than by a `memset` pass of their own (at n =
        // 100,000, k = 16, d = 2 from Python, that pass took a quarter of the kernel's time;
        // the allocator clears only memory it reuses: 10% in the same profile after it).
        let mut idx = crate::resources::zeroed_lazy::<u32>("the codes", n)?;
        let mut dist = crate::resources::zeroed_lazy::<f32>("the distances", n)?;
        self.run(n * k * d, |par| {
            // A large codebook's norms are a pass over it as long as its packing: shared
            // between the threads too.
            sq_norms(par, codebook, d, &mut norms);
            // A NaN or an infinity makes its codeword's norm NaN or infinite; only then is
            // the codebook searched for one (see `flags_non_finite_codebook`). A norm that
            // overflowed from finite values passes, as before: its distances do not.
            if !norms.iter().all(|v| v.is_finite()) {
                super::check_finite("codebook", codebook)?;
            }
            distance_argmin::distance_argmin(
                self.isa, par, x, codebook, &norms, shape, &mut idx, &mut dist,
            )
        })?;
        Ok((idx, dist))
    }

    fn codeword_norms(
        &self,
        codebook: &Vec<f32>,
        k: usize,
        d: usize,
        norms: &mut Vec<f32>,
    ) -> Result<()> {
        check::norms(k, d, codebook.len(), norms.len())?;
        self.run(k * d, |par| sq_norms(par, codebook, d, norms));
        Ok(())
    }

    fn distance_argmin(
        &self,
        x: &Vec<f32>,
        codebook: &Vec<f32>,
        norms: &Vec<f32>,
        shape: Shape,
        idx: &mut Vec<u32>,
        dist: &mut Vec<f32>,
    ) -> Result<()> {
        check::argmin(
            shape,
            x.len(),
            codebook.len(),
            norms.len(),
            idx.len(),
            dist.len(),
        )?;
        let Shape { n, k, d } = shape;
        self.run(n * k * d, |par| {
            distance_argmin::distance_argmin(self.isa, par, x, codebook, norms, shape, idx, dist)
        })
    }

    fn cluster_sums(
        &self,
        x: &Vec<f32>,
        idx: &Vec<u32>,
        dist: &Vec<f32>,
        shape: Shape,
        sums: &mut Vec<f32>,
        counts: &mut Vec<u32>,
        dist_sums: &mut Vec<f32>,
    ) -> Result<()> {
        let (xl, il, dl) = (x.len(), idx.len(), dist.len());
        check::cluster_sums(shape, xl, il, dl, sums.len(), counts.len(), dist_sums.len())?;
        let Shape { n, k, d } = shape;
        let c = self.run(n * d, |par| {
            cluster_sums::sums(self.isa, par, x, idx, k, d, sums);
            cluster_sums::counts(par, idx, k)
        });
        cluster_sums::dist_sums(idx, dist, dist_sums);
        counts.copy_from_slice(&c);
        Ok(())
    }

    fn kmeans_update(
        &self,
        sums: &Vec<f32>,
        counts: &Vec<u32>,
        k: usize,
        d: usize,
        centroids: &mut Vec<f32>,
    ) -> Result<()> {
        check::update(k, d, sums.len(), counts.len(), centroids.len())?;
        cluster_sums::kmeans_update(sums, counts, d, centroids);
        Ok(())
    }

    fn ema_update(
        &self,
        x: &Vec<f32>,
        idx: &Vec<u32>,
        shape: Shape,
        params: EmaParams,
        cluster_size: &mut Vec<f32>,
        embed_sum: &mut Vec<f32>,
        codebook: &mut Vec<f32>,
    ) -> Result<()> {
        let state = (&mut cluster_size[..], &mut embed_sum[..], &mut codebook[..]);
        check_ema(shape, params, x, idx, &state)?;
        self.ema_step(x, idx, shape, params, state);
        Ok(())
    }

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
        // Host memory is this backend's memory: the step runs on the caller's slices (a
        // copy of x and of the state each call had cost more than the step itself).
        //
        // A NaN or an infinity among the points makes its code's batch sum, and so its
        // running sum, non-finite (f64 sums of finite floats do not overflow). Where the
        // points outnumber the codes EMA_SNAPSHOT_RATIO times, the step runs first on a
        // kept copy of the state, and x is searched only if a running sum comes out
        // non-finite, the copy then put back: a pass over k x d instead of n x d.
        let Shape { n, k, d } = shape;
        check_ema(shape, params, x, idx, &(cluster_size, embed_sum, codebook))?;
        if n < EMA_SNAPSHOT_RATIO * k {
            super::check_finite("points", x)?;
            self.ema_step(x, idx, shape, params, (cluster_size, embed_sum, codebook));
            return Ok(());
        }
        let kept = (
            crate::resources::copied("the EMA state kept", cluster_size)?,
            crate::resources::copied("the EMA state kept", embed_sum)?,
            crate::resources::copied("the EMA state kept", codebook)?,
        );
        self.ema_step(x, idx, shape, params, (cluster_size, embed_sum, codebook));
        let finite = self.run(k * d, |_| {
            super::check_finite("embed_sum", embed_sum).is_ok()
        });
        if !finite && let Err(e) = super::check_finite("points", x) {
            cluster_size.copy_from_slice(&kept.0);
            embed_sum.copy_from_slice(&kept.1);
            codebook.copy_from_slice(&kept.2);
            return Err(e);
        }
        Ok(())
    }
}

/// Points per code from which [`CpuBackend::ema_update_host`] keeps a copy of the state
/// (2 k x d + k floats copied) rather than reading the n x d points for NaN and
/// infinities before the step.
const EMA_SNAPSHOT_RATIO: usize = 8;

/// The EMA step's shapes and parameters, for host slices (sizes, running sums, codebook).
fn check_ema(
    shape: Shape,
    params: EmaParams,
    x: &[f32],
    idx: &[u32],
    (size, esum, code): &(&mut [f32], &mut [f32], &mut [f32]),
) -> Result<()> {
    let (s, e, c) = (size.len(), esum.len(), code.len());
    check::ema(shape, params, x.len(), idx.len(), s, e, c)
}

impl CpuBackend {
    /// The EMA step on host slices whose shapes and parameters [`check_ema`] passed.
    fn ema_step(
        &self,
        x: &[f32],
        idx: &[u32],
        shape: Shape,
        params: EmaParams,
        (cluster_size, embed_sum, codebook): (&mut [f32], &mut [f32], &mut [f32]),
    ) {
        let Shape { n, k, d } = shape;
        self.run(n * d + k * d, |par| {
            cluster_sums::ema(
                self.isa,
                par,
                (params.decay, params.eps),
                x,
                idx,
                (k, d),
                (cluster_size, embed_sum, codebook),
            );
        });
    }
}
