//! The CUDA stand-in driver (`kernels/emu/driver.sh`) answers as the driver would: the
//! error codes of an allocation beyond the device's memory, an empty or oversized launch,
//! a block beyond the kernel's `.maxntid`, an unknown function, a freed buffer passed to a
//! kernel, and PTX whose entries do not match the kernels of `kernels/*.cu`. Driven through
//! plain cudarc, as any program would. These run only on the stand-in (a real driver's
//! limits differ); elsewhere they say why and return. Out-of-bounds writes, which poison
//! the context for the rest of the process, are checked in `cuda_standin_bounds.rs`.

#![cfg(feature = "cuda")]

mod common;

use cudarc::driver::sys::cudaError_enum as E;
use cudarc::driver::{DriverError, LaunchConfig, PushKernelArg, result};
use cudarc::nvrtc::Ptx;
use vqkit_kernels::DISTANCE_ARGMIN_PTX;

fn code<T: std::fmt::Debug>(r: Result<T, DriverError>) -> E {
    r.expect_err("the driver should have refused").0
}

fn one_d(grid: u32, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[test]
fn launches_check_their_geometry_and_pointers() {
    let Some(ctx) = common::standin_context() else {
        return;
    };
    let stream = ctx.default_stream();
    let module = ctx.load_module(Ptx::from_src(DISTANCE_ARGMIN_PTX)).unwrap();
    let norms_fn = module.load_function("codeword_norms").unwrap();
    let (k, d) = (5u32, 3u32);
    let codebook = stream.clone_htod(&[1.0f32; 15]).unwrap();
    let mut norms = stream.alloc_zeros::<f32>(k as usize).unwrap();
    // codeword_norms(const f32* codebook, u32 k, u32 d, f32* norms)
    let launch = |cfg: LaunchConfig,
                  codebook_ptr: Option<&u64>,
                  norms: &mut cudarc::driver::CudaSlice<f32>| {
        let mut b = stream.launch_builder(&norms_fn);
        match codebook_ptr {
            Some(p) => b.arg(p),
            None => b.arg(&codebook),
        };
        b.arg(&k).arg(&d).arg(norms);
        // SAFETY: the arguments follow the kernel's signature; the stand-in checks the rest.
        unsafe { b.launch(cfg) }
    };
    launch(one_d(1, 256), None, &mut norms).unwrap();
    assert_eq!(stream.clone_dtoh(&norms).unwrap(), [3.0; 5]);
    assert_eq!(
        code(launch(one_d(0, 256), None, &mut norms)),
        E::CUDA_ERROR_INVALID_VALUE
    );
    assert_eq!(
        code(launch(one_d(1, 0), None, &mut norms)),
        E::CUDA_ERROR_INVALID_VALUE
    );
    assert_eq!(
        code(launch(one_d(1, 2048), None, &mut norms)),
        E::CUDA_ERROR_INVALID_VALUE
    );
    // The kernel is compiled for at most 256 threads per block (its .maxntid).
    assert_eq!(
        code(launch(one_d(1, 512), None, &mut norms)),
        E::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES
    );
    // A freed buffer, and a small integer, where the codebook pointer belongs.
    // SAFETY: a plain allocation and free of 64 bytes; the pointer is never dereferenced here.
    let freed = unsafe { result::malloc_sync(64) }.unwrap();
    unsafe { result::free_sync(freed) }.unwrap();
    assert_eq!(
        code(launch(one_d(1, 256), Some(&freed), &mut norms)),
        E::CUDA_ERROR_INVALID_VALUE
    );
    assert_eq!(
        code(launch(one_d(1, 256), Some(&15), &mut norms)),
        E::CUDA_ERROR_INVALID_VALUE
    );
    // The failed launches left no trace: the context still works.
    launch(one_d(1, 256), None, &mut norms).unwrap();
}

#[test]
fn memory_beyond_the_device_is_out_of_memory() {
    let Some(ctx) = common::standin_context() else {
        return;
    };
    let stream = ctx.default_stream();
    let (free, total) = result::mem_get_info().unwrap();
    assert!(free <= total);
    assert_eq!(
        code(stream.alloc_zeros::<u8>(total + 1)),
        E::CUDA_ERROR_OUT_OF_MEMORY
    );
    // SAFETY: freeing a pointer that was never allocated is refused, not performed.
    assert_eq!(
        code(unsafe { result::free_sync(0xdead_0000) }),
        E::CUDA_ERROR_INVALID_VALUE
    );
}

#[test]
fn modules_hold_only_the_kernels_compiled_from_kernels_cu() {
    let Some(ctx) = common::standin_context() else {
        return;
    };
    let module = ctx.load_module(Ptx::from_src(DISTANCE_ARGMIN_PTX)).unwrap();
    assert_eq!(
        code(module.load_function("no_such_kernel")),
        E::CUDA_ERROR_NOT_FOUND
    );
    // An entry that kernels/*.cu does not define.
    let renamed = DISTANCE_ARGMIN_PTX.replace(".entry codeword_norms(", ".entry codeword_normz(");
    assert_eq!(
        code(ctx.load_module(Ptx::from_src(renamed))),
        E::CUDA_ERROR_INVALID_IMAGE
    );
    // An entry whose parameters no longer match the kernel's (a stale PTX).
    let stale = DISTANCE_ARGMIN_PTX.replace("\t.param .u32 codeword_norms_param_2,\n", "");
    assert_ne!(stale, DISTANCE_ARGMIN_PTX);
    assert_eq!(
        code(ctx.load_module(Ptx::from_src(stale))),
        E::CUDA_ERROR_INVALID_IMAGE
    );
    assert_eq!(
        code(ctx.load_module(Ptx::from_src("not ptx at all"))),
        E::CUDA_ERROR_INVALID_IMAGE
    );
}

#[test]
fn events_time_the_work_between_them() {
    let Some(ctx) = common::standin_context() else {
        return;
    };
    let stream = ctx.default_stream();
    let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let a = stream.record_event(timing).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let b = stream.record_event(timing).unwrap();
    let ms = a.elapsed_ms(&b).unwrap();
    assert!((15.0..2000.0).contains(&ms), "{ms} ms");
    // Events made without timing cannot be timed.
    let c = stream.record_event(None).unwrap();
    assert_eq!(code(a.elapsed_ms(&c)), E::CUDA_ERROR_INVALID_HANDLE);
}

#[test]
fn allocation_follows_the_reported_memory_pools_and_needs_a_context() {
    let Some(ctx) = common::standin_context() else {
        return;
    };
    let pools = std::env::var("VQKIT_STANDIN_MEMORY_POOLS").map_or(true, |v| v != "0");
    // cudarc allocates stream-ordered (cuMemAllocAsync) where the device has memory pools,
    // as every GPU vqkit targets does; CI runs this file both ways.
    assert_eq!(ctx.has_async_alloc(), pools);
    let stream = ctx.default_stream();
    let b = stream.clone_htod(&[1u32, 2, 3]).unwrap();
    assert_eq!(stream.clone_dtoh(&b).unwrap(), [1, 2, 3]);
    // A thread with no context current cannot allocate.
    let code = std::thread::spawn(|| {
        // SAFETY: a plain allocation request; it is refused before any memory is touched.
        unsafe { result::malloc_sync(64) }.map(|_| ())
    })
    .join()
    .unwrap();
    assert_eq!(
        code.expect_err("no context").0,
        E::CUDA_ERROR_INVALID_CONTEXT
    );
}
