//! The WGPU backend: hand-written WGSL compute shaders (`shaders/*.wgsl`) on any adapter wgpu
//! finds (Vulkan, Metal, DX12, GL), lavapipe's software Vulkan included.
//!
//! One [`WgpuBackend`] owns one context, built once: instance, adapter, device, queue,
//! every pipeline and bind-group layout. Buffers are [`WgpuBuf`]s (a `wgpu::Buffer` plus its
//! length); scratch and staging buffers are reused across calls. Every wgpu call that can
//! fail runs inside error scopes, so a device error is an [`Error::Device`], never a panic,
//! and work is split to respect the adapter's limits (`max_storage_buffer_binding_size`,
//! `max_compute_workgroups_per_dimension`).
//!
//! `WGPU_BACKEND` (e.g. `vulkan`) and `WGPU_POWER_PREF` choose the adapter, as in every wgpu
//! program. Each shader is public below with its bindings and dispatch geometry, so another
//! engine can take it as it is: the shaders, with their bindings and dispatch geometry, are
//! the `vqkit-kernels` crate's ([`vqkit_kernels::wgsl`]).

mod context;
mod ops;

use super::{Backend, Element, EmaParams, Shape, check};
use crate::error::{Error, Result};
use context::{Caps, Context, TIMER_QUERIES, Timer, device_error};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

/// A device buffer of `len` elements of `T`. The underlying `wgpu::Buffer` is never smaller
/// than 4 bytes (wgpu rejects empty bindings), whatever `len`.
pub struct WgpuBuf<T: Element> {
    buf: wgpu::Buffer,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Element> WgpuBuf<T> {
    /// The raw buffer (usage `STORAGE | COPY_SRC | COPY_DST`), for interop.
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.buf
    }
}

pub use super::ArgminVariant;

/// Options for [`WgpuBackend::with_options`].
#[derive(Clone, Debug, Default)]
pub struct WgpuOptions {
    pub variant: ArgminVariant,
    /// Caps the storage binding size below the adapter's (at least 4 KiB), so tests can
    /// exercise the chunked paths with small inputs.
    pub max_binding_bytes: Option<u64>,
    /// Caps `max_compute_workgroups_per_dimension` below the adapter's (at least 4), so tests
    /// can exercise 2-D dispatch with small inputs.
    pub max_workgroups_per_dim: Option<u32>,
}

/// Timing of one [`WgpuBackend::timed`] region.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// Wall time from before the region to after a full synchronize.
    pub host_seconds: f64,
    /// The sum of the compute passes' durations from timestamp queries, when the adapter
    /// supports `TIMESTAMP_QUERY` and the region recorded at most 2048 passes.
    pub gpu_seconds: Option<f64>,
}

/// The WGPU backend. Cloning shares the context (device, pipelines, scratch buffers).
#[derive(Clone)]
pub struct WgpuBackend {
    ctx: Arc<Context>,
    variant: ArgminVariant,
}

fn unavailable(reason: String) -> Error {
    Error::BackendUnavailable {
        backend: "wgpu",
        reason: format!("{reason}; use `--backend cpu` instead"),
    }
}

fn instance() -> wgpu::Instance {
    // `WGPU_BACKEND` and friends are read here, so CI can pin lavapipe with
    // WGPU_BACKEND=vulkan.
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

impl WgpuBackend {
    /// The default adapter (`WGPU_BACKEND` / `WGPU_POWER_PREF` respected) with the tiled
    /// kernels. No adapter, or a device that cannot be created, is
    /// [`Error::BackendUnavailable`].
    pub fn new() -> Result<Self> {
        Self::with_options(WgpuOptions::default())
    }

    pub fn with_options(opts: WgpuOptions) -> Result<Self> {
        let instance = instance();
        let adapter =
            pollster::block_on(
                instance.request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::from_env()
                        .unwrap_or(wgpu::PowerPreference::HighPerformance),
                    ..Default::default()
                }),
            )
            .map_err(|e| {
                unavailable(format!(
                    "no GPU adapter found ({e}); install a Vulkan, Metal or DX12 driver \
                 (on Debian: mesa-vulkan-drivers libvulkan1)"
                ))
            })?;
        let info = adapter.get_info();
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("vqkit"),
            required_features: if timestamps {
                wgpu::Features::TIMESTAMP_QUERY
            } else {
                wgpu::Features::empty()
            },
            // The adapter's own limits: larger bindings mean fewer chunks.
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| unavailable(format!("adapter {} failed to open: {e}", info.name)))?;

        let align_elems = (limits.min_storage_buffer_offset_alignment as usize / 4).max(1);
        // Elements are indexed with u32 in the shaders: keep bindings below 2 GiB.
        let mut bind_bytes = limits.max_storage_buffer_binding_size.min(1 << 31);
        if let Some(cap) = opts.max_binding_bytes {
            bind_bytes = bind_bytes.min(cap.max(4096));
        }
        let mut groups_per_dim = limits.max_compute_workgroups_per_dimension;
        if let Some(cap) = opts.max_workgroups_per_dim {
            groups_per_dim = groups_per_dim.min(cap.max(4));
        }
        let caps = Caps {
            bind_elems: (bind_bytes as usize / 4).saturating_sub(align_elems),
            align_elems,
            groups_per_dim,
            buffer_bytes: limits.max_buffer_size,
        };
        if caps.bind_elems < 2 * 256 || groups_per_dim < 4 {
            return Err(unavailable(format!(
                "adapter {} has unusably small limits ({} bytes per storage binding, \
                 {groups_per_dim} workgroups per dimension)",
                info.name, limits.max_storage_buffer_binding_size
            )));
        }
        let ctx = Context::new(device, queue, info, caps, timestamps)
            .map_err(|e| unavailable(format!("cannot build the compute pipelines: {e}")))?;
        Ok(WgpuBackend {
            ctx: Arc::new(ctx),
            variant: opts.variant,
        })
    }

    /// The same context running another `distance_argmin` variant.
    pub fn with_variant(&self, variant: ArgminVariant) -> Self {
        WgpuBackend {
            ctx: self.ctx.clone(),
            variant,
        }
    }

    pub fn variant(&self) -> ArgminVariant {
        self.variant
    }

    /// The adapter in use.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.ctx.info
    }

    /// Whether [`Self::timed`] reports GPU time from timestamp queries.
    pub fn has_timestamps(&self) -> bool {
        self.ctx.timestamps
    }

    /// Runs `f` and times it: host wall time around `f` plus a synchronize, and, where the
    /// adapter offers `TIMESTAMP_QUERY`, the GPU time of every compute pass recorded while
    /// `f` runs (on any thread using this context) from timestamp queries. Warm up before
    /// timing: the first call of a kernel may include pipeline compilation on some drivers.
    pub fn timed<R>(&self, f: impl FnOnce(&Self) -> Result<R>) -> Result<(R, Timing)> {
        let ctx = &self.ctx;
        self.synchronize()?;
        if ctx.timestamps {
            let set = ctx.scoped(|| {
                Ok(ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("vqkit timer"),
                    ty: wgpu::QueryType::Timestamp,
                    count: TIMER_QUERIES,
                }))
            })?;
            *ctx.timer.lock().unwrap_or_else(|e| e.into_inner()) = Some(Timer {
                set,
                next: 0,
                capacity: TIMER_QUERIES,
                overflowed: false,
            });
        }
        let t0 = Instant::now();
        let out = f(self).and_then(|r| self.synchronize().map(|_| r));
        let host_seconds = t0.elapsed().as_secs_f64();
        let timer = ctx.timer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let r = out?;
        let gpu_seconds = match timer {
            Some(t) if !t.overflowed => Some(self.resolve_timer(&t)?),
            _ => None,
        };
        Ok((
            r,
            Timing {
                host_seconds,
                gpu_seconds,
            },
        ))
    }

    fn resolve_timer(&self, t: &Timer) -> Result<f64> {
        if t.next == 0 {
            return Ok(0.0);
        }
        let ctx = &self.ctx;
        let bytes = t.next as u64 * 8;
        let resolve = ctx.scoped(|| {
            let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("vqkit timer resolve"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let mut enc = ctx.encoder("resolve timestamps");
            enc.resolve_query_set(&t.set, 0..t.next, &resolve, 0);
            ctx.queue.submit([enc.finish()]);
            Ok(resolve)
        })?;
        let raw = ctx.read_back(&resolve, bytes)?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&raw);
        let period_ns = ctx.queue.get_timestamp_period() as f64;
        let total: u64 = ticks
            .chunks_exact(2)
            .map(|p| p[1].saturating_sub(p[0]))
            .sum();
        Ok(total as f64 * period_ns * 1e-9)
    }

    fn new_buffer<T: Element>(&self, len: usize) -> Result<WgpuBuf<T>> {
        let bytes = len
            .checked_mul(4)
            .map(|b| b as u64)
            .filter(|&b| b <= self.ctx.caps.buffer_bytes)
            .ok_or_else(|| {
                device_error(format!(
                    "a buffer of {len} elements exceeds the adapter's max_buffer_size of {} bytes",
                    self.ctx.caps.buffer_bytes
                ))
            })?;
        let buf = self.ctx.scoped(|| {
            Ok(self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: bytes.max(4),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }))
        })?;
        Ok(WgpuBuf {
            buf,
            len,
            _t: PhantomData,
        })
    }
}

/// A report of every adapter wgpu finds (honouring `WGPU_BACKEND`): name, backend, device
/// type, driver, the limits vqkit's chunking depends on, and timestamp-query support. For
/// `vqkit info`.
pub fn describe() -> String {
    let instance = instance();
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    if adapters.is_empty() {
        return "wgpu: no adapter found (install a Vulkan driver, e.g. Debian's \
                mesa-vulkan-drivers and libvulkan1; or use --backend cpu)"
            .to_string();
    }
    let mut out = String::new();
    for a in adapters {
        let i = a.get_info();
        let l = a.limits();
        let ts = a.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        out.push_str(&format!(
            "wgpu: {} ({:?}, {:?}, driver {} {})\n  max_storage_buffer_binding_size {} B, \
             max_buffer_size {} B, max_compute_workgroups_per_dimension {}, \
             max_compute_workgroup_storage_size {} B, max_compute_invocations_per_workgroup {}, \
             timestamp queries: {}\n",
            i.name,
            i.backend,
            i.device_type,
            i.driver,
            i.driver_info,
            l.max_storage_buffer_binding_size,
            l.max_buffer_size,
            l.max_compute_workgroups_per_dimension,
            l.max_compute_workgroup_storage_size,
            l.max_compute_invocations_per_workgroup,
            if ts { "yes" } else { "no" },
        ));
    }
    out
}

impl Backend for WgpuBackend {
    type Buf<T: Element> = WgpuBuf<T>;

    fn name(&self) -> String {
        let v = match self.variant {
            ArgminVariant::V1Naive => "v1",
            ArgminVariant::V2Tiled => "v2",
        };
        format!(
            "wgpu ({}, {:?}, argmin {v})",
            self.ctx.info.name, self.ctx.info.backend
        )
    }

    fn upload<T: Element>(&self, host: &[T]) -> Result<WgpuBuf<T>> {
        let b = self.new_buffer(host.len())?;
        if !host.is_empty() {
            self.ctx.scoped(|| {
                self.ctx
                    .queue
                    .write_buffer(&b.buf, 0, bytemuck::cast_slice(host));
                Ok(())
            })?;
        }
        Ok(b)
    }

    fn zeros<T: Element>(&self, len: usize) -> Result<WgpuBuf<T>> {
        // WebGPU zero-initialises new buffers.
        self.new_buffer(len)
    }

    fn download<T: Element>(&self, buf: &WgpuBuf<T>) -> Result<Vec<T>> {
        let raw = self.ctx.read_back(&buf.buf, buf.len as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&raw))
    }

    fn buf_len<T: Element>(&self, buf: &WgpuBuf<T>) -> usize {
        buf.len
    }

    fn synchronize(&self) -> Result<()> {
        self.ctx.wait()
    }

    fn device_seconds(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Option<f64>> {
        let ((), t) = self.timed(|_| work())?;
        Ok(t.gpu_seconds)
    }

    fn codeword_norms(
        &self,
        codebook: &WgpuBuf<f32>,
        k: usize,
        d: usize,
        norms: &mut WgpuBuf<f32>,
    ) -> Result<()> {
        check::norms(k, d, codebook.len, norms.len)?;
        ops::codeword_norms(&self.ctx, &codebook.buf, k, d, &norms.buf)
    }

    fn distance_argmin(
        &self,
        x: &WgpuBuf<f32>,
        codebook: &WgpuBuf<f32>,
        norms: &WgpuBuf<f32>,
        shape: Shape,
        idx: &mut WgpuBuf<u32>,
        dist: &mut WgpuBuf<f32>,
    ) -> Result<()> {
        check::argmin(shape, x.len, codebook.len, norms.len, idx.len, dist.len)?;
        ops::distance_argmin(
            &self.ctx,
            self.variant,
            &x.buf,
            &codebook.buf,
            &norms.buf,
            shape,
            &idx.buf,
            &dist.buf,
        )
    }

    fn cluster_sums(
        &self,
        x: &WgpuBuf<f32>,
        idx: &WgpuBuf<u32>,
        dist: &WgpuBuf<f32>,
        shape: Shape,
        sums: &mut WgpuBuf<f32>,
        counts: &mut WgpuBuf<u32>,
        dist_sums: &mut WgpuBuf<f32>,
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
        ops::cluster_sums(
            &self.ctx,
            &x.buf,
            &idx.buf,
            &dist.buf,
            shape,
            &sums.buf,
            &counts.buf,
            &dist_sums.buf,
        )
    }

    fn kmeans_update(
        &self,
        sums: &WgpuBuf<f32>,
        counts: &WgpuBuf<u32>,
        k: usize,
        d: usize,
        centroids: &mut WgpuBuf<f32>,
    ) -> Result<()> {
        check::update(k, d, sums.len, counts.len, centroids.len)?;
        ops::kmeans_update(&self.ctx, &sums.buf, &counts.buf, k, d, &centroids.buf)
    }

    fn ema_update(
        &self,
        x: &WgpuBuf<f32>,
        idx: &WgpuBuf<u32>,
        shape: Shape,
        params: EmaParams,
        cluster_size: &mut WgpuBuf<f32>,
        embed_sum: &mut WgpuBuf<f32>,
        codebook: &mut WgpuBuf<f32>,
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
        ops::ema_update(
            &self.ctx,
            &x.buf,
            &idx.buf,
            shape,
            params,
            &cluster_size.buf,
            &embed_sum.buf,
            &codebook.buf,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::context::Win;
    use super::*;

    #[test]
    fn device_errors_in_a_scope_are_typed_errors() {
        let b = match WgpuBackend::new() {
            Ok(b) => b,
            Err(e) if std::env::var("VQKIT_REQUIRE_WGPU").as_deref() == Ok("1") => {
                panic!("VQKIT_REQUIRE_WGPU=1 but {e}")
            }
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        let ctx = &b.ctx;
        let r = ctx.scoped(|| {
            let buf = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: 4,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            // A 64-byte binding of a 4-byte buffer: wgpu reports a validation error.
            let w = Win {
                buf: &buf,
                offset: 0,
                size: 64,
                base: 0,
            };
            let mut enc = ctx.encoder("invalid on purpose");
            ctx.dispatch(&mut enc, &ctx.kernels.norms, &[0u8; 16], &[(1, &w)], 1)?;
            ctx.queue.submit([enc.finish()]);
            Ok(())
        });
        assert!(matches!(r, Err(Error::Device { .. })), "{r:?}");
        // The device still works.
        let v = b.upload(&[7u32, 8]).unwrap();
        assert_eq!(b.download(&v).unwrap(), [7, 8]);
    }
}
