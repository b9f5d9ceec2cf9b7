//! Host side of `kernels/distance_argmin.cu`: the codeword norms and the fused
//! distance-argmin (`distance_argmin_v1` naive, `distance_argmin_v2` tiled and shipped),
//! their argument structs and launch geometry.

use super::{ArgminVariant, CudaBackend, CudaBuf, cfg, device, grid, to_u32};
use crate::backend::{Shape, check};
use crate::error::Result;
use cudarc::driver::{DeviceRepr, PushKernelArg};

/// Points per `distance_argmin_v2` block.
const V2_ROWS: u32 = 128;
unsafe impl DeviceRepr for ArgminShape {}
/// `struct ArgminShape` of `kernels/distance_argmin.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ArgminShape {
    n: u32,
    k: u32,
    d: u32,
}

impl CudaBackend {
    pub(super) fn launch_codeword_norms(
        &self,
        codebook: &CudaBuf<f32>,
        k: usize,
        d: usize,
        norms: &mut CudaBuf<f32>,
    ) -> Result<()> {
        check::norms(k, d, codebook.len, norms.len)?;
        let (k, d) = (to_u32("k", k)?, to_u32("d", d)?);
        // SAFETY: codeword_norms(const f32* codebook, u32 k, u32 d, f32* norms): thread j < k
        // reads codebook[j*d..(j+1)*d) (k*d f32, checked) and writes norms[j] (k f32, checked).
        unsafe {
            self.stream
                .launch_builder(&self.kernels.codeword_norms)
                .arg(&codebook.bytes)
                .arg(&k)
                .arg(&d)
                .arg(&mut norms.bytes)
                .launch(cfg(grid(k as u64, 256)?, 256))
        }
        .map_err(device)?;
        Ok(())
    }

    pub(super) fn launch_distance_argmin(
        &self,
        x: &CudaBuf<f32>,
        codebook: &CudaBuf<f32>,
        norms: &CudaBuf<f32>,
        shape: Shape,
        idx: &mut CudaBuf<u32>,
        dist: &mut CudaBuf<f32>,
    ) -> Result<()> {
        check::argmin(shape, x.len, codebook.len, norms.len, idx.len, dist.len)?;
        let Shape { n, k, d } = shape;
        if n == 0 {
            return Ok(());
        }
        let s = ArgminShape {
            n: to_u32("n", n)?,
            k: to_u32("k", k)?,
            d: to_u32("d", d)?,
        };
        let (f, launch) = match self.variant {
            ArgminVariant::V1Naive => (&self.kernels.argmin_v1, cfg(grid(n as u64, 256)?, 256)),
            ArgminVariant::V2Tiled => (&self.kernels.argmin_v2, cfg(grid(n as u64, V2_ROWS)?, 256)),
        };
        // SAFETY: distance_argmin_v{1,2}(const f32* x, const f32* codebook, const f32* norms,
        // ArgminShape s, u32* idx, f32* dist): reads x[0..n*d), codebook[0..k*d), norms[0..k)
        // (lengths checked above; out-of-range tile elements are masked in the kernel),
        // writes idx[i] and dist[i] for i < n only.
        unsafe {
            self.stream
                .launch_builder(f)
                .arg(&x.bytes)
                .arg(&codebook.bytes)
                .arg(&norms.bytes)
                .arg(&s)
                .arg(&mut idx.bytes)
                .arg(&mut dist.bytes)
                .launch(launch)
        }
        .map_err(device)?;
        Ok(())
    }
}
