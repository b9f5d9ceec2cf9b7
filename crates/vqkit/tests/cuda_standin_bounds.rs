//! On the CUDA stand-in driver, a kernel that writes past the end of a buffer makes its
//! launch fail with CUDA_ERROR_ILLEGAL_ADDRESS, and, as on a GPU, every call after it: so
//! this test has a process of its own. It runs only on the stand-in.

#![cfg(feature = "cuda")]

mod common;

use cudarc::driver::sys::cudaError_enum as E;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use vqkit_kernels::DISTANCE_ARGMIN_PTX;

#[test]
fn an_out_of_bounds_write_is_an_illegal_address() {
    let Some(ctx) = common::standin_context() else {
        return;
    };
    let stream = ctx.default_stream();
    let module = ctx.load_module(Ptx::from_src(DISTANCE_ARGMIN_PTX)).unwrap();
    let f = module.load_function("codeword_norms").unwrap();
    // Norms for 100 codewords into a buffer of 4: a launch one too large, as a wrong k would.
    let (k, d) = (100u32, 2u32);
    let codebook = stream.clone_htod(&vec![1.0f32; (k * d) as usize]).unwrap();
    let mut norms = stream.alloc_zeros::<f32>(4).unwrap();
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = stream.launch_builder(&f);
    b.arg(&codebook).arg(&k).arg(&d).arg(&mut norms);
    // SAFETY: on a GPU this launch would corrupt memory; the stand-in's buffers are host
    // memory with canaries around them, which is what this test checks.
    let err = unsafe { b.launch(cfg) }.expect_err("an out-of-bounds write");
    assert_eq!(err.0, E::CUDA_ERROR_ILLEGAL_ADDRESS);
    // Sticky, as on a GPU: the context is unusable from here on.
    assert_eq!(
        stream.synchronize().expect_err("a poisoned context").0,
        E::CUDA_ERROR_ILLEGAL_ADDRESS
    );
    std::mem::forget((codebook, norms, module));
}
