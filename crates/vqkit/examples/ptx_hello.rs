//! Nearest codewords on an NVIDIA GPU from vqkit's PTX, in a plain cudarc program: the way
//! another engine would take `vqkit_kernels::DISTANCE_ARGMIN_PTX` without the rest of vqkit.
//!
//! ```text
//! norms[j] = |c_j|^2                                  codeword_norms, grid ceil(k/256), block 256
//! idx[i]   = argmin_j |x_i|^2 - 2 x_i.c_j + |c_j|^2   distance_argmin_v2, grid ceil(n/128),
//! dist[i]  = that minimum, clamped at 0                block 256
//! ```
//!
//! Every step from driver to read-back is written out. Run it with
//! `cargo run -p vqkit --features cuda --example ptx_hello` on a machine with a CUDA 12.0 or
//! later driver and an sm_80 or later GPU. Without a driver it says so and exits 0, or 1
//! when `VQKIT_REQUIRE_CUDA=1`.

use cudarc::driver::{CudaContext, DeviceRepr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use vqkit_kernels::DISTANCE_ARGMIN_PTX;

/// `struct ArgminShape { u32 n, k, d; }` of `kernels/distance_argmin.cu`, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct ArgminShape {
    n: u32,
    k: u32,
    d: u32,
}

// SAFETY: a plain `#[repr(C)]` struct of three u32, the layout the kernel declares.
unsafe impl DeviceRepr for ArgminShape {}

/// Points per `distance_argmin_v2` block (256 threads).
const V2_ROWS: u32 = 128;

fn main() {
    let require = std::env::var("VQKIT_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    // 1. Is there a driver at all? cudarc loads libcuda at run time and stops the process on
    //    its first call when there is none, so ask first.
    // SAFETY: only tries to open the driver library; calls none of its functions.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        eprintln!("ptx_hello: skipped: no CUDA driver library (libcuda.so) on this machine");
        std::process::exit(i32::from(require));
    }
    if let Err(e) = run() {
        eprintln!("ptx_hello: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    // 2. The data: n points and k codewords of d floats, row-major, seeded and random
    //    (never zeros, so every index is a real choice).
    let (n, k, d) = (1000usize, 37usize, 24usize);
    let mut rng = vqkit::rng::Rng::new(7);
    let x = rng.normal_vec(n * d);
    let codebook = rng.normal_vec(k * d);

    // 3. A context on device 0 and its default stream: launches and copies on one stream
    //    run in the order they are issued.
    let ctx = CudaContext::new(0)?;
    println!("device: {}", ctx.name()?);
    let stream = ctx.default_stream();

    // 4. The module: the driver JIT-compiles the PTX text (ISA 8.0, sm_80) for this GPU. Then
    //    the two entry points by their unmangled names.
    let module = ctx.load_module(Ptx::from_src(DISTANCE_ARGMIN_PTX))?;
    let norms_fn = module.load_function("codeword_norms")?;
    let argmin_fn = module.load_function("distance_argmin_v2")?;

    // 5. Device buffers: the inputs copied from the host, the outputs allocated zeroed.
    let x_dev = stream.clone_htod(&x)?;
    let c_dev = stream.clone_htod(&codebook)?;
    let mut norms = stream.alloc_zeros::<f32>(k)?;
    let mut idx = stream.alloc_zeros::<u32>(n)?;
    let mut dist = stream.alloc_zeros::<f32>(n)?;

    // 6. Launch the norms: `codeword_norms(const f32* codebook, u32 k, u32 d, f32* norms)`,
    //    one thread per codeword. Arguments are pushed in the kernel's order.
    let (k32, d32) = (k as u32, d as u32);
    let one_per_thread = LaunchConfig {
        grid_dim: (k32.div_ceil(256), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match the kernel's signature in type and order; the buffers
    // hold k * d and k floats, and the kernel guards j < k.
    unsafe {
        stream
            .launch_builder(&norms_fn)
            .arg(&c_dev)
            .arg(&k32)
            .arg(&d32)
            .arg(&mut norms)
            .launch(one_per_thread)?;
    }

    // 7. Launch the fused argmin: `distance_argmin_v2(const f32* x, const f32* codebook,
    //    const f32* norms, ArgminShape s, u32* idx, f32* dist)`, 128 points per block of
    //    256 threads; its tiles live in 34,304 bytes of static shared memory, so none is
    //    requested here.
    let shape = ArgminShape {
        n: n as u32,
        k: k32,
        d: d32,
    };
    let tiled = LaunchConfig {
        grid_dim: ((n as u32).div_ceil(V2_ROWS), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: as above: n * d points, k * d codewords, k norms, n outputs each; the kernel
    // guards rows >= n and codewords >= k.
    unsafe {
        stream
            .launch_builder(&argmin_fn)
            .arg(&x_dev)
            .arg(&c_dev)
            .arg(&norms)
            .arg(&shape)
            .arg(&mut idx)
            .arg(&mut dist)
            .launch(tiled)?;
    }

    // 8. Copy the results back: the copy waits for the launches before it on the stream.
    let idx = stream.clone_dtoh(&idx)?;
    let dist = stream.clone_dtoh(&dist)?;

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
