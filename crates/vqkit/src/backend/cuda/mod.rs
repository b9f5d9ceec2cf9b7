//! The CUDA backend (cargo feature `cuda`): the hand-written kernels of `kernels/*.cu`,
//! shipped as PTX ([`crate::backend::ptx`]) and loaded through cudarc with dynamic loading,
//! so vqkit builds with no CUDA toolkit and runs, without this backend, on a machine with
//! no NVIDIA driver.
//!
//! All work goes to the context's default stream, in order; buffers are device memory.
//! Driver errors become [`Error::Device`]; a missing driver, device or a driver that rejects
//! the PTX becomes [`Error::BackendUnavailable`]. Nothing here unwraps a device call.

use super::{Backend, Element, EmaParams, Shape, check};
use crate::error::{Error, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, DriverError, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use std::marker::PhantomData;
use std::sync::Arc;
use vqkit_kernels::ptx::{
    CLUSTER_SUMS_PTX, DISTANCE_ARGMIN_PTX, EMA_UPDATE_PTX, PTX_COMPILER, PTX_ISA, PTX_TARGET,
};

/// Rows per partial sum in `segment_partials` (`SEG_CHUNK` in `kernels/cluster_sums.cu`).
const SEG_CHUNK: u32 = 256;
/// Rows per radix tile (`TILE` in `kernels/cluster_sums.cu`).
const RADIX_TILE: u32 = 256;
/// Entries per scan block (`SCAN_CHUNK` in `kernels/cluster_sums.cu`).
const SCAN_CHUNK: u32 = 4096;
/// Points per `distance_argmin_v2` block.
const V2_ROWS: u32 = 128;

pub use super::ArgminVariant;

/// `struct ArgminShape` of `kernels/distance_argmin.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ArgminShape {
    n: u32,
    k: u32,
    d: u32,
}

/// `struct RadixPass` of `kernels/cluster_sums.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct RadixPass {
    n: u32,
    k: u32,
    shift: u32,
    mask: u32,
    tiles: u32,
}

/// `struct SegShape` of `kernels/cluster_sums.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct SegShape {
    k: u32,
    d: u32,
}

/// `struct EmaShape` of `kernels/ema_update.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct EmaShape {
    k: u32,
    d: u32,
    decay: f32,
    eps: f32,
}

// SAFETY: plain `#[repr(C)]` structs of 4-byte scalars, laid out exactly as the C structs
// the kernels take by value.
unsafe impl DeviceRepr for ArgminShape {}
unsafe impl DeviceRepr for RadixPass {}
unsafe impl DeviceRepr for SegShape {}
unsafe impl DeviceRepr for EmaShape {}

/// A device buffer of `len` elements of `T`, stored as bytes (at least 4, so an empty
/// buffer is still a valid allocation).
pub struct CudaBuf<T: Element> {
    bytes: CudaSlice<u8>,
    len: usize,
    _elem: PhantomData<T>,
}

impl<T: Element> std::fmt::Debug for CudaBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBuf<{}>({})", std::any::type_name::<T>(), self.len)
    }
}

fn device(e: DriverError) -> Error {
    Error::Device {
        backend: "cuda",
        message: e.to_string(),
    }
}

fn unavailable(reason: impl std::fmt::Display) -> Error {
    Error::BackendUnavailable {
        backend: "cuda",
        reason: format!("{reason}; use `--backend cpu` instead"),
    }
}

/// Whether the CUDA driver library can be loaded. cudarc panics on its first driver call
/// when it cannot, so this is checked before any.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the candidate library names and closes what it opens;
    // no symbol of the library is called.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The driver's CUDA version as (major, minor), e.g. (13, 0) for driver 580.
fn driver_version() -> Result<(i32, i32)> {
    let mut v: std::ffi::c_int = 0;
    // SAFETY: called only after `driver_present()`; writes one int through a valid pointer.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(device)?;
    Ok((v / 1000, (v % 1000) / 10))
}

/// A sized count as the kernels' `u32`, refusing sizes whose index arithmetic could
/// overflow on the device (rows are also `int` there).
fn to_u32(name: &'static str, v: usize) -> Result<u32> {
    match u32::try_from(v) {
        Ok(u) if u <= i32::MAX as u32 - 2 * SEG_CHUNK => Ok(u),
        _ => Err(Error::invalid(
            name,
            format!(
                "{v} is too large for the CUDA backend (at most {})",
                i32::MAX as u32 - 2 * SEG_CHUNK
            ),
        )),
    }
}

fn grid(items: u64, per_block: u32) -> Result<u32> {
    u32::try_from(items.div_ceil(per_block as u64))
        .map_err(|_| Error::invalid("shape", format!("{items} items need too many CUDA blocks")))
}

fn cfg(grid: u32, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The kernels, loaded once per backend.
struct Kernels {
    codeword_norms: CudaFunction,
    argmin_v1: CudaFunction,
    argmin_v2: CudaFunction,
    radix_histogram: CudaFunction,
    radix_scatter: CudaFunction,
    scan_reduce: CudaFunction,
    scan_exclusive: CudaFunction,
    scan_apply: CudaFunction,
    group_bounds: CudaFunction,
    segment_partials: CudaFunction,
    finalize_sums: CudaFunction,
    kmeans_update: CudaFunction,
    ema_sizes: CudaFunction,
    ema_codebook: CudaFunction,
}

/// A code grouping on the device: `order[offsets[j]..offsets[j + 1]]` are the rows of
/// code j in ascending order, cut into chunks `chunk_offsets[j]..chunk_offsets[j + 1]` of
/// at most `SEG_CHUNK` rows.
struct Grouping {
    order: CudaSlice<u32>,
    offsets: CudaSlice<u32>,
    chunk_offsets: CudaSlice<u32>,
    /// An upper bound on the number of chunks (the device knows the exact one).
    max_chunks: u32,
}

/// The CUDA backend on one device.
pub struct CudaBackend {
    stream: Arc<CudaStream>,
    kernels: Kernels,
    variant: ArgminVariant,
    name: String,
}

impl CudaBackend {
    /// The CUDA backend on device `ordinal`, with the shipped kernels.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_variant(ordinal, ArgminVariant::default())
    }

    /// The CUDA backend with a chosen `distance_argmin` kernel (for tests and benchmarks).
    pub fn with_variant(ordinal: usize, variant: ArgminVariant) -> Result<Self> {
        if !driver_present() {
            return Err(unavailable(
                "no NVIDIA driver: the CUDA driver library (libcuda.so) was not found",
            ));
        }
        // cudarc panics (rather than erring) if the library lacks a symbol it binds; keep
        // that from unwinding into the caller.
        std::panic::catch_unwind(|| Self::open(ordinal, variant)).unwrap_or_else(|_| {
            Err(unavailable(
                "the CUDA driver library is missing a function vqkit needs (driver older than CUDA 12.0?)",
            ))
        })
    }

    fn open(ordinal: usize, variant: ArgminVariant) -> Result<Self> {
        let count = CudaContext::device_count()
            .map_err(|e| unavailable(format!("the CUDA driver reports no devices: {e}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(unavailable(format!(
                "device {ordinal} was requested; {count} CUDA device(s) present"
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| unavailable(format!("cannot open CUDA device {ordinal}: {e}")))?;
        // SAFETY: every buffer and launch of this backend uses the one default stream, so
        // cudarc's cross-stream event tracking has nothing to order; turning it off before
        // any allocation saves two events per buffer.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let load = |name: &str, src: &str| {
            ctx.load_module(Ptx::from_src(src)).map_err(|e| {
                unavailable(format!(
                    "the driver rejected kernels/ptx/{name}.ptx (PTX ISA {PTX_ISA}, {PTX_TARGET}; \
                     needs a CUDA 12.0+ driver and an sm_80+ GPU): {e}"
                ))
            })
        };
        let argmin = load("distance_argmin", DISTANCE_ARGMIN_PTX)?;
        let sums = load("cluster_sums", CLUSTER_SUMS_PTX)?;
        let ema = load("ema_update", EMA_UPDATE_PTX)?;
        let f = |m: &Arc<cudarc::driver::CudaModule>, name: &str| {
            m.load_function(name)
                .map_err(|e| unavailable(format!("kernel {name} not found in the PTX: {e}")))
        };
        let kernels = Kernels {
            codeword_norms: f(&argmin, "codeword_norms")?,
            argmin_v1: f(&argmin, "distance_argmin_v1")?,
            argmin_v2: f(&argmin, "distance_argmin_v2")?,
            radix_histogram: f(&sums, "radix_histogram")?,
            radix_scatter: f(&sums, "radix_scatter")?,
            scan_reduce: f(&sums, "scan_reduce")?,
            scan_exclusive: f(&sums, "scan_exclusive")?,
            scan_apply: f(&sums, "scan_apply")?,
            group_bounds: f(&sums, "group_bounds")?,
            segment_partials: f(&sums, "segment_partials")?,
            finalize_sums: f(&sums, "finalize_sums")?,
            kmeans_update: f(&sums, "kmeans_update")?,
            ema_sizes: f(&ema, "ema_sizes")?,
            ema_codebook: f(&ema, "ema_codebook")?,
        };
        let dev = ctx.name().map_err(device)?;
        let (major, minor) = ctx.compute_capability().map_err(device)?;
        let v = match variant {
            ArgminVariant::V1Naive => ", argmin v1",
            ArgminVariant::V2Tiled => "",
        };
        Ok(CudaBackend {
            stream,
            kernels,
            variant,
            name: format!("cuda ({dev}, sm_{major}{minor}{v})"),
        })
    }

    pub fn variant(&self) -> ArgminVariant {
        self.variant
    }

    fn alloc<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>> {
        self.stream.alloc_zeros::<T>(len.max(1)).map_err(device)
    }

    /// Exclusive scan: `out[i] = sum_{i' < i} ceil(input[i'] / divisor)`, `out[len]` the
    /// total; `out` has `len + 1` entries.
    fn scan<T>(
        &self,
        input: &CudaSlice<T>,
        len: u32,
        divisor: u32,
        out: &mut CudaSlice<u32>,
    ) -> Result<()> {
        let blocks = len.div_ceil(SCAN_CHUNK).max(1);
        let mut sums = self.alloc::<u32>(blocks as usize)?;
        let mut offs = self.alloc::<u32>(blocks as usize + 1)?;
        let one = 1u32;
        // SAFETY: scan_reduce(const u32* in, u32 len, u32 divisor, u32* block_sums): reads
        // in[0..len) (input holds len u32s), writes block_sums[0..blocks).
        unsafe {
            self.stream
                .launch_builder(&self.kernels.scan_reduce)
                .arg(input)
                .arg(&len)
                .arg(&divisor)
                .arg(&mut sums)
                .launch(cfg(blocks, 1024))
        }
        .map_err(device)?;
        // SAFETY: scan_exclusive(const u32* in, u32 len, u32 divisor, u32* out): reads
        // sums[0..blocks), writes offs[0..=blocks).
        unsafe {
            self.stream
                .launch_builder(&self.kernels.scan_exclusive)
                .arg(&sums)
                .arg(&blocks)
                .arg(&one)
                .arg(&mut offs)
                .launch(cfg(1, 1024))
        }
        .map_err(device)?;
        // SAFETY: scan_apply(const u32* in, u32 len, u32 divisor, const u32* block_offsets,
        // u32* out): reads in[0..len) and offs[0..=blocks), writes out[0..=len).
        unsafe {
            self.stream
                .launch_builder(&self.kernels.scan_apply)
                .arg(input)
                .arg(&len)
                .arg(&divisor)
                .arg(&offs)
                .arg(out)
                .launch(cfg(blocks, 1024))
        }
        .map_err(device)?;
        Ok(())
    }

    /// One stable radix pass: histogram, scan, scatter. `vals_in = None` means row ids.
    #[allow(clippy::too_many_arguments)]
    fn radix_pass<K>(
        &self,
        keys_in: &CudaSlice<K>,
        vals_in: Option<&CudaSlice<u32>>,
        p: RadixPass,
        hist: &mut CudaSlice<u32>,
        hist_offsets: &mut CudaSlice<u32>,
        keys_out: &mut CudaSlice<u32>,
        vals_out: &mut CudaSlice<u32>,
    ) -> Result<()> {
        // SAFETY: radix_histogram(const u32* keys, RadixPass p, u32* hist): reads
        // keys[0..p.n), writes hist[0..(p.mask + 1) * p.tiles); grid p.tiles, block 256.
        unsafe {
            self.stream
                .launch_builder(&self.kernels.radix_histogram)
                .arg(keys_in)
                .arg(&p)
                .arg(&mut *hist)
                .launch(cfg(p.tiles, RADIX_TILE))
        }
        .map_err(device)?;
        self.scan(&*hist, (p.mask + 1) * p.tiles, 1, hist_offsets)?;
        let null: u64 = 0;
        let mut b = self.stream.launch_builder(&self.kernels.radix_scatter);
        b.arg(keys_in);
        match vals_in {
            Some(v) => b.arg(v),
            None => b.arg(&null),
        };
        b.arg(&p).arg(&*hist_offsets).arg(keys_out).arg(vals_out);
        // SAFETY: radix_scatter(const u32* keys_in, const u32* vals_in or null, RadixPass p,
        // const u32* offsets, u32* keys_out, u32* vals_out): reads keys_in and vals_in
        // [0..p.n) and offsets[0..=bins*tiles); each live row writes one distinct slot
        // < p.n of keys_out and vals_out (the slots are a permutation of 0..p.n).
        unsafe { b.launch(cfg(p.tiles, RADIX_TILE)) }.map_err(device)?;
        Ok(())
    }

    /// Groups rows by code (codes >= k are left out) and writes `counts[j]` (k entries).
    fn group<C: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        idx: &CudaSlice<u8>,
        n: u32,
        k: u32,
        counts: &mut CudaSlice<C>,
    ) -> Result<Grouping> {
        let mut offsets = self.alloc::<u32>(k as usize + 1)?;
        let mut chunk_offsets = self.alloc::<u32>(k as usize + 1)?;
        let mut ka = self.alloc::<u32>(n as usize)?;
        let mut va = self.alloc::<u32>(n as usize)?;
        let max_chunks = n.div_ceil(SEG_CHUNK) + k;
        if n > 0 {
            // Keys are codes clamped to k (the "ignored" bucket, sorted last).
            let bits = 32 - k.leading_zeros();
            let passes = bits.div_ceil(8);
            let digit = bits.div_ceil(passes);
            let tiles = n.div_ceil(RADIX_TILE);
            let bins = 1u32 << digit;
            let mut hist = self.alloc::<u32>((bins * tiles) as usize)?;
            let mut hoff = self.alloc::<u32>((bins * tiles) as usize + 1)?;
            let mut kb = self.alloc::<u32>(n as usize)?;
            let mut vb = self.alloc::<u32>(n as usize)?;
            let pass = |i: u32| RadixPass {
                n,
                k,
                shift: i * digit,
                mask: bins - 1,
                tiles,
            };
            self.radix_pass(idx, None, pass(0), &mut hist, &mut hoff, &mut ka, &mut va)?;
            for i in 1..passes {
                self.radix_pass(
                    &ka,
                    Some(&va),
                    pass(i),
                    &mut hist,
                    &mut hoff,
                    &mut kb,
                    &mut vb,
                )?;
                std::mem::swap(&mut ka, &mut kb);
                std::mem::swap(&mut va, &mut vb);
            }
            // SAFETY: group_bounds(const u32* sorted, u32 n, u32 k, u32* offsets, u32* counts):
            // binary searches sorted[0..n) (ka: n sorted keys), writes offsets[0..=k) and
            // counts[0..k) (counts holds k u32s).
            unsafe {
                self.stream
                    .launch_builder(&self.kernels.group_bounds)
                    .arg(&ka)
                    .arg(&n)
                    .arg(&k)
                    .arg(&mut offsets)
                    .arg(&mut *counts)
                    .launch(cfg(grid(k as u64 + 1, 256)?, 256))
            }
            .map_err(device)?;
            self.scan(&*counts, k, SEG_CHUNK, &mut chunk_offsets)?;
        } else {
            // No rows: zero counts, and the zeroed offsets already say "no chunks".
            self.stream.memset_zeros(counts).map_err(device)?;
        }
        Ok(Grouping {
            order: va,
            offsets,
            chunk_offsets,
            max_chunks,
        })
    }

    /// f64 partial sums of code chunks of `[x_i, dist_i]` (or `x_i` with no dist):
    /// `(max_chunks, cols)` with `cols = d + dist.is_some()`.
    fn segment_partials(
        &self,
        x: &CudaSlice<u8>,
        dist: Option<&CudaSlice<u8>>,
        g: &Grouping,
        s: SegShape,
    ) -> Result<CudaSlice<f64>> {
        let cols = s.d + dist.is_some() as u32;
        let mut partials = self.alloc::<f64>(g.max_chunks as usize * cols as usize)?;
        let block = cols.div_ceil(32).clamp(1, 8) * 32;
        let null: u64 = 0;
        let mut b = self.stream.launch_builder(&self.kernels.segment_partials);
        b.arg(x);
        match dist {
            Some(v) => b.arg(v),
            None => b.arg(&null),
        };
        b.arg(&g.order)
            .arg(&g.offsets)
            .arg(&g.chunk_offsets)
            .arg(&s)
            .arg(&mut partials);
        // SAFETY: segment_partials(const f32* x, const f32* dist or null, const u32* order,
        // const u32* offsets, const u32* chunk_offsets, SegShape s, f64* partials): block c
        // < chunk_offsets[k] <= max_chunks reads rows order[offsets[j]..offsets[j+1]) < n of
        // x (n * d f32) and dist (n f32), writes partials[c * cols..(c + 1) * cols).
        unsafe { b.launch(cfg(g.max_chunks, block)) }.map_err(device)?;
        Ok(partials)
    }
}

impl Backend for CudaBackend {
    type Buf<T: Element> = CudaBuf<T>;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn upload<T: Element>(&self, host: &[T]) -> Result<CudaBuf<T>> {
        let bytes: &[u8] = bytemuck::cast_slice(host);
        let slice = if bytes.is_empty() {
            self.alloc::<u8>(4)?
        } else {
            self.stream.clone_htod(bytes).map_err(device)?
        };
        Ok(CudaBuf {
            bytes: slice,
            len: host.len(),
            _elem: PhantomData,
        })
    }

    fn zeros<T: Element>(&self, len: usize) -> Result<CudaBuf<T>> {
        let n = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| Error::invalid("len", format!("{len} elements overflow")))?;
        Ok(CudaBuf {
            bytes: self.alloc::<u8>(n.max(4))?,
            len,
            _elem: PhantomData,
        })
    }

    fn download<T: Element>(&self, buf: &CudaBuf<T>) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); buf.len];
        if buf.len > 0 {
            let host: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
            let view = buf.bytes.slice(0..host.len());
            self.stream.memcpy_dtoh(&view, host).map_err(device)?;
        }
        self.stream.synchronize().map_err(device)?;
        Ok(out)
    }

    fn buf_len<T: Element>(&self, buf: &CudaBuf<T>) -> usize {
        buf.len
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(device)
    }

    fn codeword_norms(
        &self,
        codebook: &CudaBuf<f32>,
        k: usize,
        d: usize,
        norms: &mut CudaBuf<f32>,
    ) -> Result<()> {
        check::norms(k, d, codebook.len, norms.len)?;
        let (k, d) = (to_u32("k", k)?, to_u32("d", d)?);
        // SAFETY: codeword_norms(const f32* codebook, u32 k, u32 d, f32* norms): thread j < k
        // reads codebook[j*d..(j+1)*d) (k*d f32, checked) and writes norms[j] (k f32, checked).
        unsafe {
            self.stream
                .launch_builder(&self.kernels.codeword_norms)
                .arg(&codebook.bytes)
                .arg(&k)
                .arg(&d)
                .arg(&mut norms.bytes)
                .launch(cfg(grid(k as u64, 256)?, 256))
        }
        .map_err(device)?;
        Ok(())
    }

    fn distance_argmin(
        &self,
        x: &CudaBuf<f32>,
        codebook: &CudaBuf<f32>,
        norms: &CudaBuf<f32>,
        shape: Shape,
        idx: &mut CudaBuf<u32>,
        dist: &mut CudaBuf<f32>,
    ) -> Result<()> {
        check::argmin(shape, x.len, codebook.len, norms.len, idx.len, dist.len)?;
        let Shape { n, k, d } = shape;
        if n == 0 {
            return Ok(());
        }
        let s = ArgminShape {
            n: to_u32("n", n)?,
            k: to_u32("k", k)?,
            d: to_u32("d", d)?,
        };
        let (f, launch) = match self.variant {
            ArgminVariant::V1Naive => (&self.kernels.argmin_v1, cfg(grid(n as u64, 256)?, 256)),
            ArgminVariant::V2Tiled => (&self.kernels.argmin_v2, cfg(grid(n as u64, V2_ROWS)?, 256)),
        };
        // SAFETY: distance_argmin_v{1,2}(const f32* x, const f32* codebook, const f32* norms,
        // ArgminShape s, u32* idx, f32* dist): reads x[0..n*d), codebook[0..k*d), norms[0..k)
        // (lengths checked above; out-of-range tile elements are masked in the kernel),
        // writes idx[i] and dist[i] for i < n only.
        unsafe {
            self.stream
                .launch_builder(f)
                .arg(&x.bytes)
                .arg(&codebook.bytes)
                .arg(&norms.bytes)
                .arg(&s)
                .arg(&mut idx.bytes)
                .arg(&mut dist.bytes)
                .launch(launch)
        }
        .map_err(device)?;
        Ok(())
    }

    fn cluster_sums(
        &self,
        x: &CudaBuf<f32>,
        idx: &CudaBuf<u32>,
        dist: &CudaBuf<f32>,
        shape: Shape,
        sums: &mut CudaBuf<f32>,
        counts: &mut CudaBuf<u32>,
        dist_sums: &mut CudaBuf<f32>,
    ) -> Result<()> {
        check::cluster_sums(
            shape,
            x.len,
            idx.len,
            dist.len,
            sums.len,
            counts.len,
            dist_sums.len,
        )?;
        let Shape { n, k, d } = shape;
        let (n, k, d) = (to_u32("n", n)?, to_u32("k", k)?, to_u32("d", d)?);
        let g = self.group(&idx.bytes, n, k, &mut counts.bytes)?;
        let s = SegShape { k, d };
        let partials = self.segment_partials(&x.bytes, Some(&dist.bytes), &g, s)?;
        // SAFETY: finalize_sums(const f64* partials, const u32* chunk_offsets, SegShape s,
        // f32* sums, f32* dist_sums): thread (j, t) < k * (d + 1) reads its code's chunk
        // rows of partials (< max_chunks) and writes sums[j*d + t] (k*d f32, checked) or
        // dist_sums[j] (k f32, checked).
        unsafe {
            self.stream
                .launch_builder(&self.kernels.finalize_sums)
                .arg(&partials)
                .arg(&g.chunk_offsets)
                .arg(&s)
                .arg(&mut sums.bytes)
                .arg(&mut dist_sums.bytes)
                .launch(cfg(grid(k as u64 * (d as u64 + 1), 256)?, 256))
        }
        .map_err(device)?;
        Ok(())
    }

    fn kmeans_update(
        &self,
        sums: &CudaBuf<f32>,
        counts: &CudaBuf<u32>,
        k: usize,
        d: usize,
        centroids: &mut CudaBuf<f32>,
    ) -> Result<()> {
        check::update(k, d, sums.len, counts.len, centroids.len)?;
        let s = SegShape {
            k: to_u32("k", k)?,
            d: to_u32("d", d)?,
        };
        // SAFETY: kmeans_update(const f32* sums, const u32* counts, SegShape s,
        // f32* centroids): element e < k*d reads sums[e], counts[e / d] and writes
        // centroids[e] (lengths checked above).
        unsafe {
            self.stream
                .launch_builder(&self.kernels.kmeans_update)
                .arg(&sums.bytes)
                .arg(&counts.bytes)
                .arg(&s)
                .arg(&mut centroids.bytes)
                .launch(cfg(grid(k as u64 * d as u64, 256)?, 256))
        }
        .map_err(device)?;
        Ok(())
    }

    fn ema_update(
        &self,
        x: &CudaBuf<f32>,
        idx: &CudaBuf<u32>,
        shape: Shape,
        params: EmaParams,
        cluster_size: &mut CudaBuf<f32>,
        embed_sum: &mut CudaBuf<f32>,
        codebook: &mut CudaBuf<f32>,
    ) -> Result<()> {
        check::ema(
            shape,
            params,
            x.len,
            idx.len,
            cluster_size.len,
            embed_sum.len,
            codebook.len,
        )?;
        let Shape { n, k, d } = shape;
        let (n, k, d) = (to_u32("n", n)?, to_u32("k", k)?, to_u32("d", d)?);
        let mut counts = self.alloc::<u32>(k as usize)?;
        let g = self.group(&idx.bytes, n, k, &mut counts)?;
        let partials = self.segment_partials(&x.bytes, None, &g, SegShape { k, d })?;
        let s = EmaShape {
            k,
            d,
            decay: params.decay,
            eps: params.eps,
        };
        let mut total = self.alloc::<f64>(1)?;
        // SAFETY: ema_sizes(const u32* counts, EmaShape s, f32* cluster_size, f64* total):
        // one block reads counts[0..k), updates cluster_size[0..k) (k f32, checked) and
        // writes total[0].
        unsafe {
            self.stream
                .launch_builder(&self.kernels.ema_sizes)
                .arg(&counts)
                .arg(&s)
                .arg(&mut cluster_size.bytes)
                .arg(&mut total)
                .launch(cfg(1, 1024))
        }
        .map_err(device)?;
        // SAFETY: ema_codebook(const f64* partials, const u32* chunk_offsets,
        // const f32* cluster_size, const f64* total, EmaShape s, f32* embed_sum,
        // f32* codebook): element e < k*d reads its code's chunk partials (< max_chunks rows
        // of d), cluster_size[e / d], total[0]; updates embed_sum[e] and codebook[e]
        // (k*d f32 each, checked). Ordered after ema_sizes by the stream.
        unsafe {
            self.stream
                .launch_builder(&self.kernels.ema_codebook)
                .arg(&partials)
                .arg(&g.chunk_offsets)
                .arg(&cluster_size.bytes)
                .arg(&total)
                .arg(&s)
                .arg(&mut embed_sum.bytes)
                .arg(&mut codebook.bytes)
                .launch(cfg(grid(k as u64 * d as u64, 256)?, 256))
        }
        .map_err(device)?;
        Ok(())
    }
}

/// What `vqkit info` prints about CUDA: whether the driver was found, its version, the
/// devices, and the PTX this build ships.
pub fn describe() -> String {
    let mut out = format!(
        "cuda backend: compiled in; kernels shipped as PTX ISA {PTX_ISA}, target {PTX_TARGET} \
         ({PTX_COMPILER}), JIT-compiled by the driver: needs a CUDA 12.0+ driver and an sm_80+ GPU\n"
    );
    if !driver_present() {
        out.push_str("cuda driver: NOT FOUND (no libcuda.so): the cuda backend is unavailable\n");
        return out;
    }
    let probe = std::panic::catch_unwind(|| -> Result<String> {
        let mut s = String::new();
        let (major, minor) = driver_version()?;
        s.push_str(&format!("cuda driver: found, CUDA {major}.{minor}\n"));
        let count = CudaContext::device_count().map_err(device)?;
        s.push_str(&format!("cuda devices: {count}\n"));
        for i in 0..count.max(0) as usize {
            match CudaContext::new(i) {
                Ok(ctx) => {
                    let name = ctx.name().unwrap_or_else(|e| format!("? ({e})"));
                    let cc = ctx
                        .compute_capability()
                        .map(|(a, b)| format!("sm_{a}{b}"))
                        .unwrap_or_else(|e| format!("? ({e})"));
                    let mem = ctx.total_mem().map(|b| b >> 20).unwrap_or(0);
                    s.push_str(&format!("  [{i}] {name}, {cc}, {mem} MiB\n"));
                }
                Err(e) => s.push_str(&format!("  [{i}] cannot be opened: {e}\n")),
            }
        }
        Ok(s)
    });
    match probe {
        Ok(Ok(s)) => out.push_str(&s),
        Ok(Err(e)) => out.push_str(&format!("cuda driver: found, but unusable: {e}\n")),
        Err(_) => out.push_str("cuda driver: found, but it lacks functions vqkit needs\n"),
    }
    out
}
