//! Host side of `kernels/ema_update.cu`: the EMA codebook step after the grouping of
//! `cluster_sums`.

use super::cluster_sums::{F64, SegShape, U32};
use super::{CudaBackend, CudaBuf, cfg, device, grid, to_u32};
use crate::backend::{EmaParams, Shape, check};
use crate::error::Result;
use cudarc::driver::{DeviceRepr, PushKernelArg};

unsafe impl DeviceRepr for EmaShape {}
/// `struct EmaShape` of `kernels/ema_update.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct EmaShape {
    k: u32,
    d: u32,
    decay: f32,
    eps: f32,
}

impl CudaBackend {
    #[allow(clippy::too_many_arguments)] // the trait method's arguments, passed through
    pub(super) fn launch_ema_update(
        &self,
        x: &CudaBuf<f32>,
        idx: &CudaBuf<u32>,
        shape: Shape,
        params: EmaParams,
        cluster_size: &mut CudaBuf<f32>,
        embed_sum: &mut CudaBuf<f32>,
        codebook: &mut CudaBuf<f32>,
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
        let Shape { n, k, d } = shape;
        let (n, k, d) = (to_u32("n", n)?, to_u32("k", k)?, to_u32("d", d)?);
        let mut counts = self.take(U32::Counts, k as usize)?;
        let g = self.group(&idx.bytes, n, k, &mut counts)?;
        let partials = self.segment_partials(&x.bytes, None, &g, SegShape { k, d })?;
        let s = EmaShape {
            k,
            d,
            decay: params.decay,
            eps: params.eps,
        };
        let mut total = self.take(F64::Total, 1)?;
        // SAFETY: ema_sizes(const u32* counts, EmaShape s, f32* cluster_size, f64* total):
        // one block reads counts[0..k), updates cluster_size[0..k) (k f32, checked) and
        // writes total[0].
        unsafe {
            self.stream
                .launch_builder(&self.kernels.ema_sizes)
                .arg(&counts)
                .arg(&s)
                .arg(&mut cluster_size.bytes)
                .arg(&mut total)
                .launch(cfg(1, 1024))
        }
        .map_err(device)?;
        // SAFETY: ema_codebook(const f64* partials, const u32* chunk_offsets,
        // const f32* cluster_size, const f64* total, EmaShape s, f32* embed_sum,
        // f32* codebook): element e < k*d reads its code's chunk partials (< max_chunks rows
        // of d), cluster_size[e / d], total[0]; updates embed_sum[e] and codebook[e]
        // (k*d f32 each, checked). Ordered after ema_sizes by the stream.
        unsafe {
            self.stream
                .launch_builder(&self.kernels.ema_codebook)
                .arg(&partials)
                .arg(&g.chunk_offsets)
                .arg(&cluster_size.bytes)
                .arg(&total)
                .arg(&s)
                .arg(&mut embed_sum.bytes)
                .arg(&mut codebook.bytes)
                .launch(cfg(grid(k as u64 * d as u64, 256)?, 256))
        }
        .map_err(device)?;
        self.give(U32::Counts, counts);
        self.give(F64::Total, total);
        self.give(F64::Partials, partials);
        self.give_grouping(g);
        Ok(())
    }
}
