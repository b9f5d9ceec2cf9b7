//! A minimal neural-network core written by hand: an f32 tensor (NCHW, or batch-innermost
//! inside the networks), convolution layers as register-tiled GEMMs that pack the column
//! matrices they multiply straight from the layer's input and skip the products with
//! padding, ReLU, residual blocks, MSE, Adam and SGD, and the VQ-VAE encoder and decoder
//! built from them, and the training loop, evaluation and checkpoint format of the VQ-VAE
//! ([`train`]). The matrix products run on the core library's CPU GEMM
//! (`vqkit::backend::cpu::gemm`); the quantizers are the core library's
//! (`vqkit::quant::vq`). No autodiff: every layer's forward caches
//! what its backward needs, and its backward (in llm.c's manner) returns the input gradient
//! and accumulates the parameter gradients with `+=`. Every backward is checked against
//! central finite differences through the f64 references in [`reference`](mod@reference).
//!
//! The layers split their work across rayon's current pool, one parallel region per GEMM
//! and per elementwise pass: a training step has dozens. Run the training loop on
//! one of the pool's threads (`ThreadPool::install`, or `rayon::scope` for the global pool),
//! as `vqkit train-vqvae` and `examples/ae_step` do ([`train::with_threads`]); called from
//! another thread, each region is handed to the pool and back, which costs a measurable
//! share of a step (see `docs/vqvae-study.md`).

pub mod conv;
pub mod data;
pub mod layers;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod reference;
pub mod tensor;
pub mod train;
pub mod vqvae;

pub use tensor::{Layout, Param, Tensor};

pub use conv::{Conv2d, ConvTranspose2d, Window};
pub use layers::{Layer, Relu, ResidualBlock, ResidualStack, mse_loss};
pub use model::{ConvNetConfig, Decoder, Encoder, autoencoder_step};
pub use optim::{Adam, Sgd};
pub use vqvae::{NsvqSchedule, QuantizerKind, RqVae, VqVae, VqVaeConfig, VqVaeOutput};

/// Asks the C allocator to keep freed memory for reuse instead of handing it back to the
/// operating system (glibc only; elsewhere nothing happens). A training step allocates and
/// frees activations of a few MB per layer; with glibc's default, adaptive thresholds the
/// freed top of the heap can be trimmed and the next step faults the same pages back in,
/// zeroed by the kernel; how often depends on the order of allocations (measured with
/// `perf stat -e page-faults`, see `docs/vqvae-study.md`). The process keeps its peak heap
/// instead. Call it once,
/// early: `vqkit`'s commands and the examples do; a library user decides for their process.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        // glibc's malloc.h: M_TRIM_THRESHOLD -1, M_MMAP_THRESHOLD -3. Setting either turns
        // the adaptive thresholds off, so both are set: blocks below 32 MB (glibc's upper
        // limit) come from the heap, and the heap is trimmed only above 1 GB free.
        // SAFETY: mallopt takes two ints and only changes allocator parameters; it is safe
        // to call at any time from any thread.
        unsafe {
            mallopt(-3, 32 << 20);
            mallopt(-1, 1 << 30);
        }
    }
}
