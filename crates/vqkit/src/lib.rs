//! vqkit: hand-written kernels for vector quantization (fused distance-argmin, EMA codebook
//! update, k-means steps) on CPU, WGPU and CUDA backends behind one narrow trait, and the
//! algorithms and models built on them.
//!
//! ```
//! use vqkit::{backend::cpu::CpuBackend, ops};
//! let cpu = CpuBackend::new(None)?;
//! let x = [0.0f32, 0.0, 1.0, 1.0, 9.0, 9.0]; // three 2-d points
//! let codebook = [0.0f32, 0.0, 10.0, 10.0]; // two codewords
//! let a = ops::assign(&cpu, &x, &codebook, 2)?;
//! assert_eq!(a.indices, [0, 0, 1]);
//! assert_eq!(a.distances, [0.0, 2.0, 2.0]);
//! # Ok::<(), vqkit::Error>(())
//! ```

pub mod backend;
pub mod bench;
pub mod choice;
pub mod error;
pub mod interrupt;
pub mod io;
pub mod ops;
pub mod quant;
pub mod reference;
pub mod resources;
pub mod rng;

pub use backend::{Backend, BackendKind, Code, EmaParams, Shape};
pub use choice::Choice;
pub use error::{Error, Result};
/// The WGSL and PTX sources of the GPU kernels (the `vqkit-kernels` crate).
pub use vqkit_kernels as kernels;
