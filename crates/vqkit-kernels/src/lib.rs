//! The GPU kernels of vqkit as text, for any engine to load as they are: the WGSL compute
//! shaders of the WGPU backend ([`wgsl`]) and the PTX modules of the CUDA backend
//! ([`ptx`]). No dependencies, no features: this crate only embeds the sources kept at the
//! repository root (`shaders/*.wgsl`, and `kernels/ptx/*.ptx` generated from
//! `kernels/*.cu`) and documents, beside each constant, its entry points, bindings or
//! arguments, and launch geometry.
//!
//! | kernel family | WGSL | PTX |
//! |---|---|---|
//! | `|c_j|^2` of every codeword | [`CODEWORD_NORMS_WGSL`] | in [`DISTANCE_ARGMIN_PTX`] |
//! | fused nearest codeword (no n x k matrix) | [`DISTANCE_ARGMIN_WGSL`] | [`DISTANCE_ARGMIN_PTX`] |
//! | deterministic per-code sums, k-means update | [`CLUSTER_SUMS_WGSL`] | [`CLUSTER_SUMS_PTX`] |
//! | EMA codebook update | [`EMA_UPDATE_WGSL`] | [`EMA_UPDATE_PTX`] |
//!
//! The semantics every backend shares (ties, clamping, accumulation order) are those of
//! `vqkit::backend::Backend`, checked against one f64 reference (`vqkit::reference`).

#![no_std]

pub mod ptx;
pub mod wgsl;

pub use ptx::{CLUSTER_SUMS_PTX, DISTANCE_ARGMIN_PTX, EMA_UPDATE_PTX};
pub use wgsl::{CLUSTER_SUMS_WGSL, CODEWORD_NORMS_WGSL, DISTANCE_ARGMIN_WGSL, EMA_UPDATE_WGSL};
