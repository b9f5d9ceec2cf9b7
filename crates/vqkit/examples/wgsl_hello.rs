//! Nearest codewords on a GPU from vqkit's WGSL, in a plain wgpu program: the way another
//! engine would take `vqkit_kernels::DISTANCE_ARGMIN_WGSL` without the rest of vqkit.
//!
//! ```text
//! norms[j] = |c_j|^2                               (codeword_norms_v1)
//! idx[i]   = argmin_j |x_i|^2 - 2 x_i.c_j + |c_j|^2   dist[i] = that minimum, clamped at 0
//!                                                  (distance_argmin_v2)
//! ```
//!
//! Every step from adapter to read-back is written out, in the order a wgpu program takes
//! them. Run it with `cargo run -p vqkit --example wgsl_hello`; on a machine without a GPU,
//! a software Vulkan driver (Debian: `mesa-vulkan-drivers`) and `WGPU_BACKEND=vulkan` run it
//! too. Without any adapter it says so and exits 0, or 1 when `VQKIT_REQUIRE_WGPU=1`.

use vqkit_kernels::{CODEWORD_NORMS_WGSL, DISTANCE_ARGMIN_WGSL};
use wgpu::util::DeviceExt;

/// The uniform of `codeword_norms_v1`, as `shaders/codeword_norms.wgsl` declares it.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NormParams {
    k: u32,
    d: u32,
    /// Element offsets of the first codeword and the first norm in the bound buffers.
    c_base: u32,
    out_base: u32,
}

/// The uniform of the `distance_argmin_*` entry points (48 bytes).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ArgminParams {
    n: u32,
    k: u32,
    d: u32,
    x_base: u32,
    c_base: u32,
    nrm_base: u32,
    out_base: u32,
    /// Index of the first codeword in this dispatch (0: the whole codebook at once).
    j0: u32,
    /// 2 = LAST: this dispatch sees the last codewords and writes the final result.
    flags: u32,
    _pad: [u32; 3],
}

/// Rows of points each `distance_argmin_v2` workgroup owns.
const ROWS_PER_WORKGROUP: u32 = 64;

fn main() {
    let require = std::env::var("VQKIT_REQUIRE_WGPU").is_ok_and(|v| v == "1");
    match pollster::block_on(run()) {
        Ok(()) => {}
        Err(Failure::NoAdapter(why)) => {
            eprintln!("wgsl_hello: skipped: {why}");
            std::process::exit(i32::from(require));
        }
        Err(Failure::Error(e)) => {
            eprintln!("wgsl_hello: {e}");
            std::process::exit(1);
        }
    }
}

/// Why the example stopped: nothing to run on, or something that went wrong.
enum Failure {
    NoAdapter(String),
    Error(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Error(e)
    }
}

async fn run() -> Result<(), Failure> {
    // 1. The data: n points and k codewords of d floats, row-major, seeded and random
    //    (never zeros, so every index is a real choice).
    let (n, k, d) = (1000usize, 37usize, 24usize);
    let mut rng = vqkit::rng::Rng::new(7);
    let x = rng.normal_vec(n * d);
    let codebook = rng.normal_vec(k * d);

    // 2. An instance (WGPU_BACKEND picks Vulkan, Metal, DX12 or GL), an adapter (a GPU, or
    //    lavapipe), and a device with its queue.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions::default())
        .await
        .map_err(|e| Failure::NoAdapter(format!("no adapter ({e}); install a Vulkan driver")))?;
    println!("adapter: {}", adapter.get_info().name);
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor::default())
        .await
        .map_err(|e| format!("no device: {e}"))?;

    // 3. The shader modules: the WGSL text exactly as vqkit-kernels ships it.
    let norms_module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("codeword_norms"),
        source: wgpu::ShaderSource::Wgsl(CODEWORD_NORMS_WGSL.into()),
    });
    let argmin_module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("distance_argmin"),
        source: wgpu::ShaderSource::Wgsl(DISTANCE_ARGMIN_WGSL.into()),
    });

    // 4. One compute pipeline per entry point. `layout: None` lets wgpu derive each bind
    //    group layout from the globals the entry point uses, bindings as documented beside
    //    the constants.
    let pipeline = |module: &wgpu::ShaderModule, entry: &str| {
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        })
    };
    let norms_pipeline = pipeline(&norms_module, "codeword_norms_v1");
    let argmin_pipeline = pipeline(&argmin_module, "distance_argmin_v2");

    // 5. Buffers: inputs uploaded at creation, outputs as storage buffers the shaders
    //    write, and one buffer the CPU can map to read the results back.
    let storage = |label: &str, contents: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        })
    };
    let uniform = |label: &str, contents: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::UNIFORM,
        })
    };
    let x_buf = storage("x", bytemuck::cast_slice(&x));
    let c_buf = storage("codebook", bytemuck::cast_slice(&codebook));
    let norms_buf = storage("norms", &vec![0u8; 4 * k]);
    let idx_buf = storage("idx", &vec![0u8; 4 * n]);
    let dist_buf = storage("dist", &vec![0u8; 4 * n]);
    let norm_params = NormParams {
        k: k as u32,
        d: d as u32,
        c_base: 0,
        out_base: 0,
    };
    let argmin_params = ArgminParams {
        n: n as u32,
        k: k as u32,
        d: d as u32,
        x_base: 0,
        c_base: 0,
        nrm_base: 0,
        out_base: 0,
        j0: 0,
        flags: 2,
        _pad: [0; 3],
    };
    let norm_uniform = uniform("norm params", bytemuck::bytes_of(&norm_params));
    let argmin_uniform = uniform("argmin params", bytemuck::bytes_of(&argmin_params));
    let readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: (8 * n) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });

    // 6. Bind groups: which buffer sits at which binding of group 0.
    let bind = |p: &wgpu::ComputePipeline, buffers: &[(u32, &wgpu::Buffer)]| {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .map(|&(binding, b)| wgpu::BindGroupEntry {
                binding,
                resource: b.as_entire_binding(),
            })
            .collect();
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &p.get_bind_group_layout(0),
            entries: &entries,
        })
    };
    let norms_group = bind(
        &norms_pipeline,
        &[(0, &norm_uniform), (1, &c_buf), (2, &norms_buf)],
    );
    let argmin_group = bind(
        &argmin_pipeline,
        &[
            (0, &argmin_uniform),
            (1, &x_buf),
            (2, &c_buf),
            (3, &norms_buf),
            (4, &idx_buf),
            (5, &dist_buf),
        ],
    );

    // 7. Record the work: the norms (one workgroup per codeword), then the fused argmin
    //    (one workgroup per 64 points; passes in one encoder run in order), then copy both
    //    outputs into the mappable buffer.
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&norms_pipeline);
        pass.set_bind_group(0, &norms_group, &[]);
        pass.dispatch_workgroups(k as u32, 1, 1);
    }
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&argmin_pipeline);
        pass.set_bind_group(0, &argmin_group, &[]);
        pass.dispatch_workgroups((n as u32).div_ceil(ROWS_PER_WORKGROUP), 1, 1);
    }
    encoder.copy_buffer_to_buffer(&idx_buf, 0, &readback, 0, (4 * n) as u64);
    encoder.copy_buffer_to_buffer(&dist_buf, 0, &readback, (4 * n) as u64, (4 * n) as u64);

    // 8. Submit, map the read-back buffer, wait for the GPU, and read.
    queue.submit([encoder.finish()]);
    let (tx, rx) = std::sync::mpsc::channel();
    readback.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| format!("device lost: {e}"))?;
    rx.recv()
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot map: {e}"))?;
    let bytes = readback
        .get_mapped_range(..)
        .map_err(|e| format!("cannot read: {e}"))?
        .to_vec();
    let idx: Vec<u32> = bytemuck::cast_slice(&bytes[..4 * n]).to_vec();
    let dist: Vec<f32> = bytemuck::cast_slice(&bytes[4 * n..]).to_vec();

    // 9. Check against vqkit's f64 reference: the chosen codeword's exact distance must be
    //    the minimum to rounding (an index may differ only on such a tie).
    let (_, best) = vqkit::reference::distance_argmin(&x, &codebook, d);
    let mut worst = 0.0f64;
    for (i, p) in x.chunks_exact(d).enumerate() {
        let j = idx[i] as usize;
        let got = vqkit::reference::sq_dist(p, &codebook[j * d..(j + 1) * d]);
        worst = worst.max(got - best[i]).max((dist[i] as f64 - got).abs());
    }
    println!(
        "{n} points, {k} codewords, d = {d}: first codes {:?}, largest error {worst:.2e}",
        &idx[..8]
    );
    if worst > 1e-4 {
        return Err(format!("the GPU's answer is off by {worst}").into());
    }
    Ok(())
}
