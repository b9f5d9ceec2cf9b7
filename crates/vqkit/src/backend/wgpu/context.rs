//! The wgpu context, built once per backend: device, queue, pipelines and bind-group
//! layouts, the adapter's limits as vqkit uses them, reusable scratch and staging buffers,
//! and the optional timestamp-query timer.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::{Mutex, MutexGuard};
use vqkit_kernels::wgsl::{
    CLUSTER_SUMS_WGSL, CODEWORD_NORMS_WGSL, DISTANCE_ARGMIN_WGSL, EMA_UPDATE_WGSL,
};
use wgpu::util::DeviceExt;

/// Converts a wgpu error into vqkit's.
pub(crate) fn device_error(message: impl std::fmt::Display) -> Error {
    Error::Device {
        backend: "wgpu",
        message: message.to_string(),
    }
}

/// How a kernel uses one binding.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Uniform,
    Read,
    ReadWrite,
}

use Kind::{Read, ReadWrite, Uniform};

/// One compute entry point with its explicit bind-group layout.
pub(crate) struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub name: &'static str,
}

/// Every pipeline vqkit runs. Binding numbers match the `@binding` of each WGSL global; each
/// entry point's layout lists exactly the globals it uses.
pub(crate) struct Kernels {
    pub norms: Kernel,
    pub argmin_v1: Kernel,
    pub argmin_v2: Kernel,
    pub init_keys: Kernel,
    pub sort_hist: Kernel,
    pub scan: Kernel,
    pub sort_scatter: Kernel,
    pub tile_partials: Kernel,
    pub segment_sums: Kernel,
    pub kmeans_update: Kernel,
    pub ema_decay: Kernel,
    pub ema_total: Kernel,
    pub ema_codebook: Kernel,
}

const ARGMIN_BINDINGS: &[(u32, Kind)] = &[
    (0, Uniform),
    (1, Read),
    (2, Read),
    (3, Read),
    (4, ReadWrite),
    (5, ReadWrite),
];

impl Kernels {
    fn new(device: &wgpu::Device) -> Kernels {
        let module = |label: &str, src: &str| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            })
        };
        let norms = module("codeword_norms", CODEWORD_NORMS_WGSL);
        let argmin = module("distance_argmin", DISTANCE_ARGMIN_WGSL);
        let sums = module("cluster_sums", CLUSTER_SUMS_WGSL);
        let ema = module("ema_update", EMA_UPDATE_WGSL);
        let k = |m: &wgpu::ShaderModule, name: &'static str, b: &[(u32, Kind)]| {
            kernel(device, m, name, b)
        };
        Kernels {
            norms: k(
                &norms,
                "codeword_norms_v1",
                &[(0, Uniform), (1, Read), (2, ReadWrite)],
            ),
            argmin_v1: k(&argmin, "distance_argmin_v1", ARGMIN_BINDINGS),
            argmin_v2: k(&argmin, "distance_argmin_v2", ARGMIN_BINDINGS),
            init_keys: k(
                &sums,
                "init_keys",
                &[(0, Uniform), (1, Read), (4, ReadWrite), (5, ReadWrite)],
            ),
            sort_hist: k(
                &sums,
                "sort_hist",
                &[(0, Uniform), (2, Read), (6, ReadWrite)],
            ),
            scan: k(&sums, "scan", &[(0, Uniform), (6, ReadWrite)]),
            sort_scatter: k(
                &sums,
                "sort_scatter",
                &[
                    (0, Uniform),
                    (2, Read),
                    (3, Read),
                    (4, ReadWrite),
                    (5, ReadWrite),
                    (6, ReadWrite),
                ],
            ),
            tile_partials: k(
                &sums,
                "tile_partials",
                &[
                    (0, Uniform),
                    (2, Read),
                    (3, Read),
                    (7, Read),
                    (8, Read),
                    (15, ReadWrite),
                    (17, ReadWrite),
                ],
            ),
            segment_sums: k(
                &sums,
                "segment_sums",
                &[
                    (0, Uniform),
                    (2, Read),
                    (16, Read),
                    (18, Read),
                    (9, ReadWrite),
                    (10, ReadWrite),
                    (11, ReadWrite),
                ],
            ),
            kmeans_update: k(
                &sums,
                "kmeans_update",
                &[(0, Uniform), (12, Read), (13, Read), (14, ReadWrite)],
            ),
            ema_decay: k(
                &ema,
                "ema_decay",
                &[
                    (0, Uniform),
                    (1, Read),
                    (2, Read),
                    (3, ReadWrite),
                    (4, ReadWrite),
                ],
            ),
            ema_total: k(
                &ema,
                "ema_total",
                &[(0, Uniform), (5, Read), (6, ReadWrite)],
            ),
            ema_codebook: k(
                &ema,
                "ema_codebook",
                &[
                    (0, Uniform),
                    (5, Read),
                    (7, Read),
                    (8, Read),
                    (9, ReadWrite),
                ],
            ),
        }
    }
}

fn kernel(
    device: &wgpu::Device,
    module: &wgpu::ShaderModule,
    name: &'static str,
    bindings: &[(u32, Kind)],
) -> Kernel {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
        .iter()
        .map(|&(binding, kind)| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match kind {
                    Uniform => wgpu::BufferBindingType::Uniform,
                    Read => wgpu::BufferBindingType::Storage { read_only: true },
                    ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(name),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(name),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(name),
        layout: Some(&pipeline_layout),
        module,
        entry_point: Some(name),
        compilation_options: Default::default(),
        cache: None,
    });
    Kernel {
        pipeline,
        layout,
        name,
    }
}

/// The adapter limits vqkit's chunking obeys, in elements of 4 bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caps {
    /// Most elements one storage binding may cover, after leaving room for the aligned
    /// window's lead-in.
    pub bind_elems: usize,
    /// `min_storage_buffer_offset_alignment` in elements.
    pub align_elems: usize,
    /// `max_compute_workgroups_per_dimension`.
    pub groups_per_dim: u32,
    /// `max_buffer_size` in bytes.
    pub buffer_bytes: u64,
}

impl Caps {
    /// Most workgroups one (2-D) dispatch may launch.
    pub fn max_groups(&self) -> usize {
        (self.groups_per_dim as usize).saturating_mul(self.groups_per_dim as usize)
    }
}

/// A window of a buffer for one binding: storage offsets must be aligned, so the window
/// starts at or a little before the wanted element; `base` is that element's offset inside
/// the window, passed to the kernel.
pub(crate) struct Win<'a> {
    pub buf: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
    pub base: u32,
}

/// Reusable device buffers, keyed by role, grown on demand (never shrunk).
#[derive(Default)]
pub(crate) struct Scratch {
    bufs: HashMap<&'static str, wgpu::Buffer>,
}

impl Scratch {
    /// A buffer of at least `bytes` bytes (and at least 4) for `role`.
    pub fn get(
        &mut self,
        device: &wgpu::Device,
        role: &'static str,
        bytes: u64,
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        let bytes = bytes.max(4).next_multiple_of(4);
        if let Some(b) = self.bufs.get(role)
            && b.size() >= bytes
        {
            return b.clone();
        }
        let b = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(role),
            size: bytes,
            usage,
            mapped_at_creation: false,
        });
        self.bufs.insert(role, b.clone());
        b
    }
}

/// Timestamp queries around every compute pass while [`super::WgpuBackend::timed`] runs.
pub(crate) struct Timer {
    pub set: wgpu::QuerySet,
    pub next: u32,
    pub capacity: u32,
    /// Passes that found the query set full (then the GPU time is not reported).
    pub overflowed: bool,
}

pub(crate) const TIMER_QUERIES: u32 = 4096;

pub(crate) struct Context {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub caps: Caps,
    pub kernels: Kernels,
    /// Serialises the operations: scratch buffers are shared, so one operation holds this
    /// from its first encoded pass to its submission.
    pub scratch: Mutex<Scratch>,
    pub timer: Mutex<Option<Timer>>,
    pub timestamps: bool,
}

impl Context {
    pub fn new(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        caps: Caps,
        timestamps: bool,
    ) -> Result<Context> {
        // Device errors outside an error scope go to this handler; wgpu's default panics.
        device.on_uncaptured_error(std::sync::Arc::new(|e| {
            eprintln!("vqkit: uncaptured wgpu error: {e}");
        }));
        let kernels = scoped(&device, || Ok(Kernels::new(&device)))?;
        Ok(Context {
            device,
            queue,
            info,
            caps,
            kernels,
            scratch: Mutex::new(Scratch::default()),
            timer: Mutex::new(None),
            timestamps,
        })
    }

    pub fn lock_scratch(&self) -> MutexGuard<'_, Scratch> {
        // A panic while holding the lock cannot leave the map inconsistent: take it back.
        self.scratch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` inside error scopes, so a validation or out-of-memory error in anything it
    /// records becomes `Error::Device` instead of a panic.
    pub fn scoped<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        scoped(&self.device, f)
    }

    /// A window of `len` elements from element `start` of `buf`. `len` must be at most
    /// `caps.bind_elems` and at least 1.
    pub fn win<'a>(&self, buf: &'a wgpu::Buffer, start: usize, len: usize) -> Win<'a> {
        let align = self.caps.align_elems;
        let first = start / align * align;
        let base = start - first;
        Win {
            buf,
            offset: first as u64 * 4,
            size: (base + len.max(1)) as u64 * 4,
            base: base as u32,
        }
    }

    /// Records one dispatch of `groups` workgroups of `kernel`, with `params` in a fresh
    /// uniform buffer at binding 0 and `binds` at their binding numbers. Folds `groups` into
    /// 2-D when it exceeds the per-dimension limit.
    pub fn dispatch(
        &self,
        enc: &mut wgpu::CommandEncoder,
        kernel: &Kernel,
        params: &[u8],
        binds: &[(u32, &Win<'_>)],
        groups: usize,
    ) -> Result<()> {
        if groups == 0 {
            return Ok(());
        }
        let per_dim = self.caps.groups_per_dim as usize;
        let gx = groups.min(per_dim);
        let gy = groups.div_ceil(gx);
        if gy > per_dim {
            return Err(device_error(format!(
                "{}: {groups} workgroups exceed the dispatch limit",
                kernel.name
            )));
        }
        // A fresh uniform buffer per dispatch: queue.write_buffer would land before the whole
        // submission, so one shared buffer could not hold different values per dispatch.
        let ubuf = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(kernel.name),
                contents: params,
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: ubuf.as_entire_binding(),
        }];
        for &(binding, w) in binds {
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: w.buf,
                    offset: w.offset,
                    size: NonZeroU64::new(w.size),
                }),
            });
        }
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.name),
            layout: &kernel.layout,
            entries: &entries,
        });
        let mut timer = self.timer.lock().unwrap_or_else(|e| e.into_inner());
        let writes = match timer.as_mut() {
            Some(t) if t.next + 2 <= t.capacity => {
                t.next += 2;
                Some((t.next - 2, &t.set))
            }
            Some(t) => {
                t.overflowed = true;
                None
            }
            None => None,
        };
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(kernel.name),
            timestamp_writes: writes.map(|(i, set)| wgpu::ComputePassTimestampWrites {
                query_set: set,
                beginning_of_pass_write_index: Some(i),
                end_of_pass_write_index: Some(i + 1),
            }),
        });
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups(gx as u32, gy as u32, 1);
        Ok(())
    }

    pub fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    /// Blocks until all submitted work is done.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(device_error)
    }

    /// Copies `bytes` bytes of `src` to the host through a reused staging buffer.
    pub fn read_back(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let mut scratch = self.lock_scratch();
        let staging = scratch.get(
            &self.device,
            "staging",
            bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        self.scoped(|| {
            let mut enc = self.encoder("read_back");
            enc.copy_buffer_to_buffer(src, 0, &staging, 0, bytes);
            self.queue.submit([enc.finish()]);
            Ok(())
        })?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
            // The receiver outlives this callback (we wait below); a failed send is moot.
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|_| device_error("buffer mapping was dropped"))?
            .map_err(|e| device_error(format!("cannot map the staging buffer: {e}")))?;
        let out = {
            let view = staging
                .get_mapped_range(0..bytes)
                .map_err(|e| device_error(format!("cannot read the staging buffer: {e}")))?;
            view.to_vec()
        };
        staging.unmap();
        Ok(out)
    }
}

/// Pushes out-of-memory, validation and internal error scopes around `f` and turns the first
/// error they catch into `Error::Device`.
fn scoped<R>(device: &wgpu::Device, f: impl FnOnce() -> Result<R>) -> Result<R> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
    let out = f();
    // Scopes pop in reverse order of pushing.
    let e_internal = pollster::block_on(internal.pop());
    let e_validation = pollster::block_on(validation.pop());
    let e_oom = pollster::block_on(oom.pop());
    if let Some(e) = e_oom.or(e_validation).or(e_internal) {
        return Err(device_error(e));
    }
    out
}
