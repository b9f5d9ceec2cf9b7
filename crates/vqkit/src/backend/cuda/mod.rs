//! The CUDA backend (cargo feature `cuda`): the hand-written kernels of `kernels/*.cu`,
//! shipped as PTX ([`vqkit_kernels::ptx`]) and loaded through cudarc with dynamic loading,
//! so vqkit builds with no CUDA toolkit and runs, without this backend, on a machine with
//! no NVIDIA driver.
//!
//! All work goes to the context's default stream, in order; buffers are device memory.
//! The host code of each kernel family sits beside its stem: `distance_argmin.rs`,
//! `cluster_sums.rs`, `ema_update.rs`, as in `kernels/` and `shaders/`.
//! Driver errors become [`Error::Device`]; a missing driver, device or a driver that rejects
//! the PTX becomes [`Error::BackendUnavailable`]. Nothing here unwraps a device call.

mod cluster_sums;
mod distance_argmin;
mod ema_update;

use super::{Backend, Element, EmaParams, Shape};
use crate::error::{Error, Result};
use cluster_sums::{SEG_CHUNK, Scratch};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, DriverError, LaunchConfig,
};
use cudarc::nvrtc::Ptx;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use vqkit_kernels::ptx::{
    CLUSTER_SUMS_PTX, DISTANCE_ARGMIN_PTX, EMA_UPDATE_PTX, PTX_COMPILER, PTX_ISA, PTX_TARGET,
};

pub use super::ArgminVariant;

// SAFETY: plain `#[repr(C)]` structs of 4-byte scalars, laid out exactly as the C structs
// the kernels take by value.

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

/// The CUDA backend on one device.
pub struct CudaBackend {
    stream: Arc<CudaStream>,
    kernels: Kernels,
    variant: ArgminVariant,
    name: String,
    /// Device buffers of the grouping and reductions, kept from call to call.
    scratch: Mutex<Scratch>,
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
            scratch: Mutex::new(Scratch::default()),
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
}

/// Device memory that vqkit did not allocate (a PyTorch tensor's, a CuPy array's), borrowed
/// as a buffer of this backend so the kernels run on it in place; dropping it gives the
/// memory back to its owner without freeing it.
pub struct Borrowed<T: Element>(std::mem::ManuallyDrop<CudaBuf<T>>);

impl<T: Element> std::ops::Deref for Borrowed<T> {
    type Target = CudaBuf<T>;
    fn deref(&self) -> &CudaBuf<T> {
        &self.0
    }
}

impl<T: Element> std::ops::DerefMut for Borrowed<T> {
    fn deref_mut(&mut self) -> &mut CudaBuf<T> {
        &mut self.0
    }
}

impl<T: Element> Drop for Borrowed<T> {
    fn drop(&mut self) {
        // SAFETY: taken once, here, and never used again.
        let buf = unsafe { std::mem::ManuallyDrop::take(&mut self.0) };
        // Not freed: the memory belongs to whoever lent it.
        buf.bytes.leak();
    }
}

impl CudaBackend {
    /// Borrows `len` elements of `T` at device address `ptr` as a buffer of this backend.
    ///
    /// # Safety
    /// `ptr` must address at least `len` elements of `T` of device memory usable in this
    /// device's primary context (where PyTorch and CuPy allocate), and stay allocated, and
    /// unwritten by other work, until the returned buffer is dropped.
    pub unsafe fn borrow_device<T: Element>(&self, ptr: u64, len: usize) -> Result<Borrowed<T>> {
        let n = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| Error::invalid("len", format!("{len} elements overflow")))?;
        // SAFETY: the caller vouches for the allocation; event tracking is off, so
        // upgrading creates no events and cannot fail.
        let bytes = unsafe { self.stream.upgrade_device_ptr::<u8>(ptr, n) };
        Ok(Borrowed(std::mem::ManuallyDrop::new(CudaBuf {
            bytes,
            len,
            _elem: PhantomData,
        })))
    }

    /// The device address of a buffer, to hand it to another engine (for example through
    /// `__cuda_array_interface__`). Valid while the buffer lives.
    pub fn device_address<T: Element>(&self, buf: &CudaBuf<T>) -> u64 {
        use cudarc::driver::DevicePtr;
        let (ptr, _record) = buf.bytes.device_ptr(&self.stream);
        ptr
    }

    /// Waits until the work queued on another engine's stream is done, so that this
    /// backend reads what it wrote. `handle` is a `CUstream` as `__cuda_array_interface__`
    /// gives it (1: the legacy default stream, 2: the per-thread default stream).
    ///
    /// # Safety
    /// `handle` must be 1, 2 or a live stream of this device.
    pub unsafe fn wait_for_stream(&self, handle: u64) -> Result<()> {
        self.stream.context().bind_to_thread().map_err(device)?;
        // SAFETY: the caller vouches for the handle; the context is current.
        unsafe { cudarc::driver::sys::cuStreamSynchronize(handle as cudarc::driver::sys::CUstream) }
            .result()
            .map_err(device)
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

    /// The time between two CUDA events recorded on the stream before and after `work`:
    /// what the device spent, from its own clock, not the host's around a launch.
    fn device_seconds(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<f64>> {
        let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.stream.record_event(timing).map_err(device)?;
        work()?;
        let end = self.stream.record_event(timing).map_err(device)?;
        // elapsed_ms waits for both events.
        let ms = start.elapsed_ms(&end).map_err(device)?;
        Ok(Some(f64::from(ms) * 1e-3))
    }

    fn codeword_norms(
        &self,
        codebook: &CudaBuf<f32>,
        k: usize,
        d: usize,
        norms: &mut CudaBuf<f32>,
    ) -> Result<()> {
        self.launch_codeword_norms(codebook, k, d, norms)
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
        self.launch_distance_argmin(x, codebook, norms, shape, idx, dist)
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
        self.launch_cluster_sums(x, idx, dist, shape, sums, counts, dist_sums)
    }

    fn kmeans_update(
        &self,
        sums: &CudaBuf<f32>,
        counts: &CudaBuf<u32>,
        k: usize,
        d: usize,
        centroids: &mut CudaBuf<f32>,
    ) -> Result<()> {
        self.launch_kmeans_update(sums, counts, k, d, centroids)
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
        self.launch_ema_update(x, idx, shape, params, cluster_size, embed_sum, codebook)
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
