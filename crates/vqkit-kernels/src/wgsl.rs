//! The WGSL compute shaders of vqkit's WGPU backend, from `shaders/*.wgsl`, one file per
//! kernel family. Each constant is a complete WGSL module: create it with
//! `Device::create_shader_module`, build a compute pipeline on the entry point named below,
//! and bind buffers as listed (see `crates/vqkit/examples/wgsl_hello.rs` for every step).
//! All buffers are `array<f32>` or `array<u32>`; uniforms are 16-byte aligned structs of
//! `u32` (and `f32`) fields in the order given.

/// `norms[j] = |c_j|^2`. Entry point `codeword_norms_v1`, `@workgroup_size(64)`.
///
/// Bindings (group 0): 0 uniform `Params { k, d, c_base, out_base: u32 }`; 1 codebook
/// `array<f32>` (read); 2 norms `array<f32>` (read_write). Dispatch: one workgroup per
/// codeword, `k` workgroups, folded as `(x, y)` with `x * y >= k` when `k` exceeds the
/// per-dimension limit (the kernel reads its index as `x + y * num_workgroups.x`). The
/// `*_base` fields are the element offsets of the first codeword / norm in the bound range
/// (0 when binding whole buffers).
pub const CODEWORD_NORMS_WGSL: &str = include_str!("../shaders/codeword_norms.wgsl");

/// Fused `idx[i] = argmin_j |x_i - c_j|^2` (lowest `j` on a tie) and
/// `dist[i] = max(|x_i|^2 - 2 x_i.c_j + |c_j|^2, 0)`.
///
/// Entry points: `distance_argmin_v1` (naive, `@workgroup_size(64)`, one row per
/// invocation) and `distance_argmin_v2` (tiled, `@workgroup_size(16, 16)`, 64 rows per
/// workgroup, 64-codeword tiles in workgroup memory, 12.4 KiB of it). Both dispatch
/// `ceil(n / 64)` workgroups, folded into 2-D as for the norms.
///
/// Bindings (group 0): 0 uniform `Params { n, k, d, x_base, c_base, nrm_base, out_base, j0,
/// flags, 3 x pad: u32 }` (48 bytes); 1 x `array<f32>` (read); 2 codebook (read); 3 norms
/// (read); 4 idx `array<u32>` (read_write); 5 dist `array<f32>` (read_write). For a
/// single-dispatch call set every `*_base` and `j0` to 0 and `flags = 2` (LAST); `flags = 1`
/// (HAS_PREV) continues from a previous codebook chunk's partial result.
pub const DISTANCE_ARGMIN_WGSL: &str = include_str!("../shaders/distance_argmin.wgsl");

/// Deterministic k-means accumulation (stable radix sort by code, then a per-code reduction
/// in row order) and the centroid update. Entry points, all on one 64-byte uniform
/// `Params` at binding 0 (see the file for its fields):
///
/// | entry | workgroup | bindings (besides 0) | workgroups |
/// |---|---|---|---|
/// | `init_keys` | 256 | 1 idx (r), 4 keys_out (rw), 5 vals_out (rw) | `ceil(n/256)` |
/// | `sort_hist` | 256 | 2 keys_in (r), 6 table (rw) | `ceil(n/256)` |
/// | `scan` | 256 | 6 table (rw) | 1 |
/// | `sort_scatter` | 256 | 2 keys_in, 3 vals_in (r), 4 keys_out, 5 vals_out, 6 table (rw) | `ceil(n/256)` |
/// | `tile_partials` | 64 | 2 keys, 3 rows, 7 x, 8 dist (r), 15 partials, 17 first_slot (rw) | `ceil(n/tile)` |
/// | `segment_sums` | 64 | 2 keys, 16 partials, 18 first_slot (r), 9 sums, 10 counts, 11 dist_sums (rw) | `k` |
/// | `kmeans_update` | 256 | 12 sums, 13 counts (r), 14 centroids (rw) | `ceil(k d/256)` |
///
/// One radix pass (`sort_hist`, `scan`, `sort_scatter`, ping-ponging keys/vals) per 8 bits
/// of `k` (keys are `min(code, k)`); `table` holds `256 * ceil(n/256)` `u32`s, `partials`
/// `n (d + 1)` floats, `first_slot` `k` `u32`s. `tile` (sorted positions per
/// `tile_partials` workgroup) is any value >= 1; vqkit uses `60000 / (2 ceil((d+1)/64) + 34)`
/// to bound each invocation's loops.
pub const CLUSTER_SUMS_WGSL: &str = include_str!("../shaders/cluster_sums.wgsl");

/// The EMA codebook step given this batch's counts and sums from [`CLUSTER_SUMS_WGSL`].
/// Uniform `Params { kc, k, d, out_base, cnt_base, flags: u32, decay, eps: f32 }` at 0.
///
/// | entry | workgroup | bindings (besides 0) | workgroups |
/// |---|---|---|---|
/// | `ema_decay` | 256 | 1 counts, 2 batch (r), 3 cluster_size, 4 embed_sum (rw) | `ceil(k d/256)` |
/// | `ema_total` | 256 | 5 cluster_size (r), 6 total `array<f32, 1>` (rw) | 1 |
/// | `ema_codebook` | 256 | 5 cluster_size, 7 embed_sum, 8 total (r), 9 codebook (rw) | `ceil(k d/256)` |
pub const EMA_UPDATE_WGSL: &str = include_str!("../shaders/ema_update.wgsl");
