//! Host side of each kernel family: chunking to the adapter's limits, windows, parameters
//! and the order of dispatches. Lengths are already checked by the `Backend` impl.
//!
//! Chunking: every storage binding covers at most `caps.bind_elems` elements, and every
//! dispatch at most `caps.max_groups()` workgroups. Row-indexed buffers (x, idx, dist) are
//! split into row chunks, code-indexed ones (codebook, norms, sums, ...) into code chunks;
//! each chunk binds aligned windows of the whole buffers, so no data is copied.

use super::ArgminVariant;
use super::context::{Context, device_error};
use crate::backend::{EmaParams, Shape};
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};

/// Loop iterations one invocation may run. llvmpipe (lavapipe) ends every invocation's
/// loops after 65535 iterations in total, silently; on real GPUs short dispatches also stay
/// clear of the OS's GPU watchdog. Work is chunked so no kernel exceeds this, which costs
/// nothing in bits: a codebook split into chunks gives bit-identical argmin results.
const LOOP_BUDGET: usize = 60_000;

/// Codewords one argmin dispatch may scan within [`LOOP_BUDGET`].
fn argmin_codes_per_dispatch(variant: ArgminVariant, d: usize) -> usize {
    match variant {
        // Per codeword, d multiply-adds plus the inner loop's exit test and the outer
        // loop's own iteration (llvmpipe counts all three: with d + 1 a million codewords
        // of d = 4 lost a tail of each chunk); then d for |x|^2.
        ArgminVariant::V1Naive => (LOOP_BUDGET.saturating_sub(d) / (d + 2)).max(1),
        // Per 64-code tile, counting every loop as if nothing were unrolled: 16 + 20 for
        // clearing and folding the 4 x 4 accumulators, and per 16-dim step 4 staging plus
        // 16 x (1 + 4 + 4 + 16) micro-tile iterations (rounded up); d more for |x|^2.
        ArgminVariant::V2Tiled => {
            let per_tile = 36 + d.div_ceil(16) * 420;
            (LOOP_BUDGET.saturating_sub(d) / per_tile).max(1) * ARGMIN_ROWS
        }
    }
}

/// `(start, len)` of consecutive chunks of at most `step` covering `0..total`.
fn chunks(total: usize, step: usize) -> impl Iterator<Item = (usize, usize)> {
    let step = step.max(1);
    (0..total.div_ceil(step)).map(move |c| (c * step, step.min(total - c * step)))
}

fn u32_of(v: usize, what: &'static str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid(what, format!("{v} exceeds the GPU's u32 range")))
}

/// Elements per row (or per codeword) that fit one binding, or an error for a `d` so large
/// that a single row does not.
fn per_binding(ctx: &Context, d: usize) -> Result<usize> {
    match ctx.caps.bind_elems / d {
        0 => Err(Error::invalid(
            "d",
            format!(
                "one row of {d} floats exceeds the adapter's storage binding limit ({} floats)",
                ctx.caps.bind_elems
            ),
        )),
        r => Ok(r),
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NormsParams {
    k: u32,
    d: u32,
    c_base: u32,
    out_base: u32,
}

pub(super) fn codeword_norms(
    ctx: &Context,
    codebook: &wgpu::Buffer,
    k: usize,
    d: usize,
    norms: &wgpu::Buffer,
) -> Result<()> {
    let step = per_binding(ctx, d)?.min(ctx.caps.max_groups());
    let d32 = u32_of(d, "d")?;
    ctx.scoped(|| {
        let mut enc = ctx.encoder("codeword_norms");
        for (j0, kn) in chunks(k, step) {
            let cw = ctx.win(codebook, j0 * d, kn * d);
            let nw = ctx.win(norms, j0, kn);
            let p = NormsParams {
                k: kn as u32,
                d: d32,
                c_base: cw.base,
                out_base: nw.base,
            };
            ctx.dispatch(
                &mut enc,
                &ctx.kernels.norms,
                bytemuck::bytes_of(&p),
                &[(1, &cw), (2, &nw)],
                kn,
            )?;
        }
        ctx.queue.submit([enc.finish()]);
        Ok(())
    })
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ArgminParams {
    n: u32,
    k: u32,
    d: u32,
    x_base: u32,
    c_base: u32,
    nrm_base: u32,
    out_base: u32,
    j0: u32,
    flags: u32,
    _pad: [u32; 3],
}

const HAS_PREV: u32 = 1;
const LAST: u32 = 2;

/// Rows per argmin workgroup, in both variants.
const ARGMIN_ROWS: usize = 64;

#[allow(clippy::too_many_arguments)]
pub(super) fn distance_argmin(
    ctx: &Context,
    variant: ArgminVariant,
    x: &wgpu::Buffer,
    codebook: &wgpu::Buffer,
    norms: &wgpu::Buffer,
    shape: Shape,
    idx: &wgpu::Buffer,
    dist: &wgpu::Buffer,
) -> Result<()> {
    let Shape { n, k, d } = shape;
    if n == 0 {
        return Ok(());
    }
    let per = per_binding(ctx, d)?;
    let row_step = per.min(ctx.caps.max_groups().saturating_mul(ARGMIN_ROWS));
    let code_step = per.min(argmin_codes_per_dispatch(variant, d));
    let kernel = match variant {
        ArgminVariant::V1Naive => &ctx.kernels.argmin_v1,
        ArgminVariant::V2Tiled => &ctx.kernels.argmin_v2,
    };
    let d32 = u32_of(d, "d")?;
    u32_of(k, "k")?;
    let code_chunks = k.div_ceil(code_step);
    ctx.scoped(|| {
        let mut enc = ctx.encoder("distance_argmin");
        for (r0, rn) in chunks(n, row_step) {
            let xw = ctx.win(x, r0 * d, rn * d);
            let iw = ctx.win(idx, r0, rn);
            let dw = ctx.win(dist, r0, rn);
            for (c, (j0, kn)) in chunks(k, code_step).enumerate() {
                let cw = ctx.win(codebook, j0 * d, kn * d);
                let nw = ctx.win(norms, j0, kn);
                let mut flags = 0;
                if c > 0 {
                    flags |= HAS_PREV;
                }
                if c + 1 == code_chunks {
                    flags |= LAST;
                }
                // idx and dist windows start at the same row, so they share one base.
                let p = ArgminParams {
                    n: rn as u32,
                    k: kn as u32,
                    d: d32,
                    x_base: xw.base,
                    c_base: cw.base,
                    nrm_base: nw.base,
                    out_base: iw.base,
                    j0: j0 as u32,
                    flags,
                    _pad: [0; 3],
                };
                ctx.dispatch(
                    &mut enc,
                    kernel,
                    bytemuck::bytes_of(&p),
                    &[(1, &xw), (2, &cw), (3, &nw), (4, &iw), (5, &dw)],
                    rn.div_ceil(ARGMIN_ROWS),
                )?;
            }
        }
        ctx.queue.submit([enc.finish()]);
        Ok(())
    })
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct SumsParams {
    n: u32,
    k: u32,
    d: u32,
    x_base: u32,
    row_base: u32,
    shift: u32,
    nblocks: u32,
    len: u32,
    j0: u32,
    kc: u32,
    out_base: u32,
    cnt_base: u32,
    flags: u32,
    tile: u32,
    _pad: [u32; 2],
}

const ACCUMULATE: u32 = 1;
const WITH_DIST: u32 = 2;
/// Keys per radix-sort block (the sort kernels' workgroup size) and digits per pass.
const BLOCK: usize = 256;

/// Records the deterministic per-code reduction: `sums`, `counts` and (when `dist` is
/// given) `dist_sums` for the rows of `x` grouped by `idx`. The caller holds the scratch
/// lock (`scratch`) until it submits `enc`.
#[allow(clippy::too_many_arguments)]
fn record_sums(
    ctx: &Context,
    scratch: &mut super::context::Scratch,
    enc: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    idx: &wgpu::Buffer,
    dist: Option<&wgpu::Buffer>,
    shape: Shape,
    sums: &wgpu::Buffer,
    counts: &wgpu::Buffer,
    dist_sums: &wgpu::Buffer,
) -> Result<()> {
    let Shape { n, k, d } = shape;
    if n == 0 {
        // Nothing assigned: every sum and count is zero. No dispatch (no empty bindings).
        enc.clear_buffer(sums, 0, None);
        enc.clear_buffer(counts, 0, None);
        enc.clear_buffer(dist_sums, 0, None);
        return Ok(());
    }
    let caps = ctx.caps;
    let k32 = u32_of(k, "k")?;
    let d32 = u32_of(d, "d")?;
    if k > caps.bind_elems {
        return Err(Error::invalid(
            "k",
            format!(
                "{k} codes exceed one storage binding ({} elements)",
                caps.bind_elems
            ),
        ));
    }
    // Each lane of tile_partials handles ceil((d + 1) / 64) columns; a tile of `tile` rows
    // costs at most that many iterations per row, plus per run (at worst one per row) a
    // binary search (~32), the column loop and the run loop itself.
    let lane_cols = (d + 1).div_ceil(64);
    let tile = (LOOP_BUDGET / (2 * lane_cols + 34)).max(1);
    // Row chunks: x and the partials ((d + 1) per row) fit a binding, as does the radix
    // table (256 per block); the block, tile and scan loops stay within the dispatch and
    // loop limits; segment_sums visits at most LOOP_BUDGET / lane_cols tiles per code.
    let row_step = per_binding(ctx, d + 1)?
        .min(caps.bind_elems / BLOCK * BLOCK)
        .min(caps.max_groups().saturating_mul(BLOCK))
        .min(caps.max_groups().saturating_mul(tile))
        .min((LOOP_BUDGET / 2 - 16) * BLOCK)
        .min(
            (LOOP_BUDGET.saturating_sub(80) / lane_cols)
                .saturating_sub(1)
                .max(1)
                * tile,
        );
    let code_step = per_binding(ctx, d)?.min(caps.max_groups());
    // Keys are 0..=k (k marks an ignored row): one 8-bit pass per byte of k.
    let passes = (32 - k32.leading_zeros()).div_ceil(8).max(1);

    let rows_max = row_step.min(n);
    let blocks_max = rows_max.div_ceil(BLOCK);
    let usage = wgpu::BufferUsages::STORAGE;
    let bytes = rows_max as u64 * 4;
    let keys = [
        scratch.get(&ctx.device, "keys_a", bytes, usage),
        scratch.get(&ctx.device, "keys_b", bytes, usage),
    ];
    let vals = [
        scratch.get(&ctx.device, "vals_a", bytes, usage),
        scratch.get(&ctx.device, "vals_b", bytes, usage),
    ];
    let table = scratch.get(&ctx.device, "table", (blocks_max * BLOCK) as u64 * 4, usage);
    let partials = scratch.get(
        &ctx.device,
        "partials",
        (rows_max * (d + 1)) as u64 * 4,
        usage,
    );
    let first_slot = scratch.get(&ctx.device, "first_slot", k as u64 * 4, usage);
    let fw = ctx.win(&first_slot, 0, k);
    let k_ = &ctx.kernels;

    for (c, (r0, rn)) in chunks(n, row_step).enumerate() {
        let xw = ctx.win(x, r0 * d, rn * d);
        let iw = ctx.win(idx, r0, rn);
        let dw = match dist {
            Some(b) => ctx.win(b, r0, rn),
            // segment_sums binds dist even when it does not read it: bind x again.
            None => ctx.win(x, r0 * d, rn * d),
        };
        let nblocks = rn.div_ceil(BLOCK);
        let base = SumsParams {
            n: rn as u32,
            k: k32,
            d: d32,
            x_base: xw.base,
            row_base: iw.base,
            nblocks: nblocks as u32,
            len: (nblocks * BLOCK) as u32,
            tile: tile as u32,
            flags: if dist.is_some() { WITH_DIST } else { 0 },
            ..Default::default()
        };
        let (ka, kb) = (ctx.win(&keys[0], 0, rn), ctx.win(&keys[1], 0, rn));
        let (va, vb) = (ctx.win(&vals[0], 0, rn), ctx.win(&vals[1], 0, rn));
        let tw = ctx.win(&table, 0, nblocks * BLOCK);
        ctx.dispatch(
            enc,
            &k_.init_keys,
            bytemuck::bytes_of(&base),
            &[(1, &iw), (4, &ka), (5, &va)],
            rn.div_ceil(BLOCK),
        )?;
        let mut cur = (&ka, &va);
        let mut other = (&kb, &vb);
        for pass in 0..passes {
            let p = SumsParams {
                shift: pass * 8,
                ..base
            };
            let p = bytemuck::bytes_of(&p);
            ctx.dispatch(enc, &k_.sort_hist, p, &[(2, cur.0), (6, &tw)], nblocks)?;
            ctx.dispatch(enc, &k_.scan, p, &[(6, &tw)], 1)?;
            ctx.dispatch(
                enc,
                &k_.sort_scatter,
                p,
                &[(2, cur.0), (3, cur.1), (4, other.0), (5, other.1), (6, &tw)],
                nblocks,
            )?;
            std::mem::swap(&mut cur, &mut other);
        }
        let pw = ctx.win(&partials, 0, rn * (d + 1));
        let p = SumsParams {
            row_base: dw.base,
            ..base
        };
        ctx.dispatch(
            enc,
            &k_.tile_partials,
            bytemuck::bytes_of(&p),
            &[
                (2, cur.0),
                (3, cur.1),
                (7, &xw),
                (8, &dw),
                (15, &pw),
                (17, &fw),
            ],
            rn.div_ceil(tile),
        )?;
        for (j0, kn) in chunks(k, code_step) {
            let sw = ctx.win(sums, j0 * d, kn * d);
            let cw = ctx.win(counts, j0, kn);
            let dsw = ctx.win(dist_sums, j0, kn);
            let p = SumsParams {
                j0: j0 as u32,
                kc: kn as u32,
                out_base: sw.base,
                cnt_base: cw.base,
                flags: base.flags | if c > 0 { ACCUMULATE } else { 0 },
                ..base
            };
            ctx.dispatch(
                enc,
                &k_.segment_sums,
                bytemuck::bytes_of(&p),
                &[
                    (2, cur.0),
                    (16, &pw),
                    (18, &fw),
                    (9, &sw),
                    (10, &cw),
                    (11, &dsw),
                ],
                kn,
            )?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn cluster_sums(
    ctx: &Context,
    x: &wgpu::Buffer,
    idx: &wgpu::Buffer,
    dist: &wgpu::Buffer,
    shape: Shape,
    sums: &wgpu::Buffer,
    counts: &wgpu::Buffer,
    dist_sums: &wgpu::Buffer,
) -> Result<()> {
    let mut scratch = ctx.lock_scratch();
    ctx.scoped(|| {
        let mut enc = ctx.encoder("cluster_sums");
        record_sums(
            ctx,
            &mut scratch,
            &mut enc,
            x,
            idx,
            Some(dist),
            shape,
            sums,
            counts,
            dist_sums,
        )?;
        ctx.queue.submit([enc.finish()]);
        Ok(())
    })
}

/// Codes per chunk of an elementwise `(k, d)` kernel with 256-invocation workgroups.
fn elementwise_step(ctx: &Context, d: usize) -> Result<usize> {
    let per = per_binding(ctx, d)?;
    Ok(per
        .min((ctx.caps.max_groups().saturating_mul(256) / d).max(1))
        // ema_total: each of 256 lanes loops over kc / 256 sizes.
        .min(LOOP_BUDGET * 256))
}

pub(super) fn kmeans_update(
    ctx: &Context,
    sums: &wgpu::Buffer,
    counts: &wgpu::Buffer,
    k: usize,
    d: usize,
    centroids: &wgpu::Buffer,
) -> Result<()> {
    let step = elementwise_step(ctx, d)?;
    let d32 = u32_of(d, "d")?;
    ctx.scoped(|| {
        let mut enc = ctx.encoder("kmeans_update");
        for (j0, kn) in chunks(k, step) {
            let sw = ctx.win(sums, j0 * d, kn * d);
            let cw = ctx.win(counts, j0, kn);
            let ow = ctx.win(centroids, j0 * d, kn * d);
            let p = SumsParams {
                d: d32,
                kc: kn as u32,
                out_base: sw.base,
                cnt_base: cw.base,
                ..Default::default()
            };
            ctx.dispatch(
                &mut enc,
                &ctx.kernels.kmeans_update,
                bytemuck::bytes_of(&p),
                &[(12, &sw), (13, &cw), (14, &ow)],
                (kn * d).div_ceil(256),
            )?;
        }
        ctx.queue.submit([enc.finish()]);
        Ok(())
    })
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct EmaGpuParams {
    kc: u32,
    k: u32,
    d: u32,
    out_base: u32,
    cnt_base: u32,
    flags: u32,
    decay: f32,
    eps: f32,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn ema_update(
    ctx: &Context,
    x: &wgpu::Buffer,
    idx: &wgpu::Buffer,
    shape: Shape,
    params: EmaParams,
    cluster_size: &wgpu::Buffer,
    embed_sum: &wgpu::Buffer,
    codebook: &wgpu::Buffer,
) -> Result<()> {
    let Shape { k, d, .. } = shape;
    let step = elementwise_step(ctx, d)?;
    let k32 = u32_of(k, "k")?;
    let d32 = u32_of(d, "d")?;
    let kd = k
        .checked_mul(d)
        .ok_or_else(|| device_error("k * d overflows"))?;
    let mut scratch = ctx.lock_scratch();
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let batch = scratch.get(&ctx.device, "ema_batch", kd as u64 * 4, usage);
    let counts = scratch.get(&ctx.device, "ema_counts", k as u64 * 4, usage);
    let dsums = scratch.get(&ctx.device, "ema_dist_sums", k as u64 * 4, usage);
    let total = scratch.get(&ctx.device, "ema_total", 4, usage);
    ctx.scoped(|| {
        let mut enc = ctx.encoder("ema_update");
        record_sums(
            ctx,
            &mut scratch,
            &mut enc,
            x,
            idx,
            None,
            shape,
            &batch,
            &counts,
            &dsums,
        )?;
        let tw = ctx.win(&total, 0, 1);
        let k_ = &ctx.kernels;
        let param = |kn: usize, out_base: u32, cnt_base: u32, flags: u32| EmaGpuParams {
            kc: kn as u32,
            k: k32,
            d: d32,
            out_base,
            cnt_base,
            flags,
            decay: params.decay,
            eps: params.eps,
        };
        // Three sweeps over the code chunks: `total` needs every decayed size before any
        // codeword is divided by it.
        for (j0, kn) in chunks(k, step) {
            let cw = ctx.win(&counts, j0, kn);
            let bw = ctx.win(&batch, j0 * d, kn * d);
            let sw = ctx.win(cluster_size, j0, kn);
            let ew = ctx.win(embed_sum, j0 * d, kn * d);
            let p = param(kn, ew.base, sw.base, 0);
            ctx.dispatch(
                &mut enc,
                &k_.ema_decay,
                bytemuck::bytes_of(&p),
                &[(1, &cw), (2, &bw), (3, &sw), (4, &ew)],
                (kn * d).div_ceil(256),
            )?;
        }
        for (c, (j0, kn)) in chunks(k, step).enumerate() {
            let sw = ctx.win(cluster_size, j0, kn);
            let p = param(kn, 0, sw.base, if c > 0 { 1 } else { 0 });
            ctx.dispatch(
                &mut enc,
                &k_.ema_total,
                bytemuck::bytes_of(&p),
                &[(5, &sw), (6, &tw)],
                1,
            )?;
        }
        for (j0, kn) in chunks(k, step) {
            let sw = ctx.win(cluster_size, j0, kn);
            let ew = ctx.win(embed_sum, j0 * d, kn * d);
            let cbw = ctx.win(codebook, j0 * d, kn * d);
            let p = param(kn, ew.base, sw.base, 0);
            ctx.dispatch(
                &mut enc,
                &k_.ema_codebook,
                bytemuck::bytes_of(&p),
                &[(5, &sw), (7, &ew), (8, &tw), (9, &cbw)],
                (kn * d).div_ceil(256),
            )?;
        }
        ctx.queue.submit([enc.finish()]);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::chunks;

    #[test]
    fn chunks_cover_the_range_exactly() {
        let v: Vec<_> = chunks(10, 4).collect();
        assert_eq!(v, [(0, 4), (4, 4), (8, 2)]);
        assert_eq!(chunks(0, 4).count(), 0);
        assert_eq!(chunks(3, 0).count(), 3);
    }
}
