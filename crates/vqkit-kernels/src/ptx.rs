//! The CUDA kernels as PTX text, generated from `kernels/*.cu` by `kernels/build_ptx.sh`
//! (NVRTC 12.0.140 from PyPI, pinned) and kept in `kernels/ptx/`, outside `src/`.
//! Always compiled, with or without the `cuda` feature, so another engine can load them as
//! they are (`cuModuleLoadData`); `kernels/check_ptx.sh` fails CI when they are stale.
//!
//! Every kernel is `extern "C"` (unmangled names), takes its sizes as `u32` or as one
//! `#[repr(C)]` struct by value, and uses 1-D grids and blocks. Codes are `u32`, data `f32`.

/// The PTX ISA version of every module: what CUDA 12.0 emits, so any CUDA 12.x or later
/// driver accepts it (a driver rejects PTX newer than itself).
pub const PTX_ISA: &str = "8.0";
/// The virtual architecture of every module: the driver JIT-compiles it for sm_80 and any
/// later GPU (sm_86, sm_89, sm_90, ...).
pub const PTX_TARGET: &str = "sm_80";
/// The compiler that produced the PTX.
pub const PTX_COMPILER: &str = "NVRTC 12.0.140 (PyPI nvidia-cuda-nvrtc-cu12==12.0.140)";

/// `kernels/distance_argmin.cu`. `struct ArgminShape { u32 n, k, d; }` by value.
///
/// - `codeword_norms(const f32* codebook, u32 k, u32 d, f32* norms)`: `norms[j] = |c_j|^2`.
///   Grid `ceil(k / 256)`, block 256, one thread per codeword.
/// - `distance_argmin_v2(const f32* x, const f32* codebook, const f32* norms, ArgminShape s,
///   u32* idx, f32* dist)`: `idx[i] = argmin_j |x_i - c_j|^2` (lowest j on a tie),
///   `dist[i] = max(|x_i|^2 - 2 x_i.c_j + |c_j|^2, 0)`. Grid `ceil(n / 128)`, block 256,
///   34,304 bytes of static shared memory. The shipped variant.
/// - `distance_argmin_v1(...)`: same signature and result, naive. Grid `ceil(n / 256)`,
///   block 256.
pub const DISTANCE_ARGMIN_PTX: &str = include_str!("../ptx/distance_argmin.ptx");

/// `kernels/cluster_sums.cu`: the grouping by code shared by k-means and EMA, the
/// fixed-order reductions and the centroid update. Structs by value:
/// `RadixPass { u32 n, k, shift, mask, tiles }`, `SegShape { u32 k, d }`.
/// Call sequence (see `CudaBackend::group` in `crates/vqkit/src/backend/cuda/`):
///
/// 1. per radix pass (`bits = 32 - lzcnt(k)`, `passes = ceil(bits / 8)`, digit width
///    `ceil(bits / passes)`, `tiles = ceil(n / 256)`):
///    `radix_histogram(const u32* keys, RadixPass, u32* hist /*bins*tiles*/)` grid tiles,
///    block 256; the exclusive scan below of `hist`; then `radix_scatter(const u32* keys_in,
///    const u32* vals_in /*null: row ids*/, RadixPass, const u32* offsets, u32* keys_out,
///    u32* vals_out)` grid tiles, block 256.
/// 2. exclusive scan of `len` entries (`out[i] = sum_{i'<i} ceil(in[i'] / divisor)`,
///    `out[len]` the total), `b = max(1, ceil(len / 4096))`:
///    `scan_reduce(const u32* in, u32 len, u32 divisor, u32* block_sums)` grid b, block 1024;
///    `scan_exclusive(const u32* block_sums, u32 b, 1, u32* block_offsets /*b+1*/)` grid 1,
///    block 1024; `scan_apply(const u32* in, u32 len, u32 divisor, const u32* block_offsets,
///    u32* out /*len+1*/)` grid b, block 1024.
/// 3. `group_bounds(const u32* sorted_keys, u32 n, u32 k, u32* offsets /*k+1*/, u32* counts)`
///    grid `ceil((k + 1) / 256)`, block 256; then the scan of `counts` with divisor 256
///    into `chunk_offsets` (k + 1).
/// 4. `segment_partials(const f32* x, const f32* dist /*or null*/, const u32* order,
///    const u32* offsets, const u32* chunk_offsets, SegShape, f64* partials)`: grid
///    `ceil(n / 256) + k`, block `min(256, round_up(cols, 32))` with `cols = d + (dist != null)`.
/// 5. `finalize_sums(const f64* partials, const u32* chunk_offsets, SegShape, f32* sums,
///    f32* dist_sums /*or null*/)` grid `ceil(k * cols / 256)`, block 256.
///
/// And `kmeans_update(const f32* sums, const u32* counts, SegShape, f32* centroids)`, grid
/// `ceil(k * d / 256)`, block 256.
pub const CLUSTER_SUMS_PTX: &str = include_str!("../ptx/cluster_sums.ptx");

/// `kernels/ema_update.cu`, after steps 1-4 of [`CLUSTER_SUMS_PTX`] with no dist.
/// `struct EmaShape { u32 k, d; f32 decay, eps; }` by value.
///
/// - `ema_sizes(const u32* counts, EmaShape, f32* cluster_size, f64* total)`: grid 1,
///   block 1024.
/// - `ema_codebook(const f64* partials, const u32* chunk_offsets, const f32* cluster_size,
///   const f64* total, EmaShape, f32* embed_sum, f32* codebook)`: grid `ceil(k * d / 256)`,
///   block 256; after `ema_sizes` on the same stream.
pub const EMA_UPDATE_PTX: &str = include_str!("../ptx/ema_update.ptx");

/// Every module with its name and kernel entries, for tests and tools.
pub const MODULES: [(&str, &str, &[&str]); 3] = [
    (
        "distance_argmin",
        DISTANCE_ARGMIN_PTX,
        &["codeword_norms", "distance_argmin_v1", "distance_argmin_v2"],
    ),
    (
        "cluster_sums",
        CLUSTER_SUMS_PTX,
        &[
            "radix_histogram",
            "scan_reduce",
            "scan_exclusive",
            "scan_apply",
            "radix_scatter",
            "group_bounds",
            "segment_partials",
            "finalize_sums",
            "kmeans_update",
        ],
    ),
    ("ema_update", EMA_UPDATE_PTX, &["ema_sizes", "ema_codebook"]),
];
