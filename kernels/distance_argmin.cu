// distance_argmin.cu: the fused nearest-codeword search, and the codeword norms it needs.
//
// x: (n, d) row-major, codebook: (k, d), norms: (k) = |c_j|^2;  out idx: (n), dist: (n).
//
//   score_ij = |c_j|^2 - 2 x_i.c_j     (|x_i|^2 is constant along a row: added once, last)
//   idx_i    = argmin_j score_ij        (the lowest j wins a tie)
//   dist_i   = max(score_i,idx_i + |x_i|^2, 0)   (clamped: round-off can make it negative)
//
// Fusion: the n x k matrix of scores never reaches device memory. A block owns 128 points
// and sweeps the whole codebook in tiles of 128 codewords; each tile's 128 x 128 dot
// products live in registers (8 x 8 per thread), are turned into scores and folded into a
// per-thread running minimum before the next tile starts. Only n indices and n distances
// are written: at n = 1e6, k = 4096 that is 8 MB instead of 16 GB.
//
// Variants kept in this file, each checked against the f64 reference:
// - v1 `distance_argmin_v1`: naive, one thread per point, x and the codebook read straight
//   from global memory. The obviously-correct baseline; memory-bound (each point re-reads
//   the whole codebook through L1/L2).
// - v2 `distance_argmin_v2`: shared-memory tiles of 128 points x 8 dims and 128 codewords
//   x 8 dims (double-buffered, one __syncthreads per step, loads for the next step issued
//   before the FMAs of this one), 8 x 8 register blocking per thread (64 FMAs per 16
//   shared-memory reads), argmin folded in the epilogue of each codeword tile. SHIPPED: it
//   turns the inner loop from load-bound into FMA-bound, which is what the target (>= 50%
//   of FP32 FMA peak) needs. Registers: 147 (sm_80) / 153 (sm_90) with no spills under
//   __launch_bounds__(256, 1), so one 256-thread block (8 warps) per SM; capping at 128
//   registers for two blocks per SM spilled 32-80 bytes (ptxas -v), which the CI check
//   forbids. Each warp has 64 independent FMAs per shared-memory step, which is what
//   hides latency at that occupancy; a v3 that prefetches with cp.async (no staging
//   registers) is the next step if measurement shows the SM starved.
//
// Room for a tensor-core path: the product loop (`v2_mma_step`), the per-tile fold
// (`v2_fold_tile`) and the final cross-thread (score, index) reduction are separate steps.
// A TF32/BF16 mma path would replace the product loop, keep a short top-R candidate list
// per row in the fold instead of a single minimum, and re-rank those candidates with an
// exact FP32 dot product (as v1 does for one pair) before the same final reduction.
//
// Compiled by NVRTC (kernels/build_ptx.sh) with no headers: only built-in types and
// functions are used, so the same source also builds as C++ for the host emulation test
// in kernels/emu/.

#define VQ_INF __int_as_float(0x7f800000)

// The shape of one call, passed by value (`ArgminShape` in src/backend/cuda/mod.rs).
struct ArgminShape {
    unsigned int n;
    unsigned int k;
    unsigned int d;
};

// ---------------------------------------------------------------------------------------
// codeword_norms: norms[j] = |c_j|^2.
// codebook: (k, d), norms: (k). Grid: ceil(k / 256) blocks of 256 threads, one per codeword.
// Four partial sums break the dependency chain; their order is fixed, so the result is
// bit-identical from run to run. Not hot: k x d reads once per codebook change.
extern "C" __global__ void __launch_bounds__(256)
codeword_norms(const float* __restrict__ codebook, unsigned int k, unsigned int d,
               float* __restrict__ norms)
{
    const unsigned int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= k) return;
    const float* c = codebook + (unsigned long long)j * d;
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
    unsigned int t = 0;
    for (; t + 4 <= d; t += 4) {
        a0 = fmaf(c[t], c[t], a0);
        a1 = fmaf(c[t + 1], c[t + 1], a1);
        a2 = fmaf(c[t + 2], c[t + 2], a2);
        a3 = fmaf(c[t + 3], c[t + 3], a3);
    }
    for (; t < d; ++t) a0 = fmaf(c[t], c[t], a0);
    norms[j] = (a0 + a1) + (a2 + a3);
}

// A row's distance, its best score plus |x_i|^2, clamped at zero with a compare: a NaN (an
// overflowed score plus an overflowed |x|^2) stays one, as on the CPU, and the host then
// reports the overflow, where fmaxf would have made it a distance of 0.
__device__ __forceinline__ float clamp_distance(float v)
{
    return v < 0.f ? 0.f : v;
}

// |x_i|^2 for one row, with the same fixed order as codeword_norms.
__device__ __forceinline__ float row_sq_norm(const float* __restrict__ row, unsigned int d)
{
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
    unsigned int t = 0;
    for (; t + 4 <= d; t += 4) {
        a0 = fmaf(row[t], row[t], a0);
        a1 = fmaf(row[t + 1], row[t + 1], a1);
        a2 = fmaf(row[t + 2], row[t + 2], a2);
        a3 = fmaf(row[t + 3], row[t + 3], a3);
    }
    for (; t < d; ++t) a0 = fmaf(row[t], row[t], a0);
    return (a0 + a1) + (a2 + a3);
}

// ---------------------------------------------------------------------------------------
// v1: naive. Grid: ceil(n / 256) blocks of 256 threads, one thread per point.
extern "C" __global__ void __launch_bounds__(256)
distance_argmin_v1(const float* __restrict__ x, const float* __restrict__ codebook,
                   const float* __restrict__ norms, ArgminShape s,
                   unsigned int* __restrict__ idx, float* __restrict__ dist)
{
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= s.n) return;
    const float* xi = x + (unsigned long long)i * s.d;
    float best = VQ_INF;
    unsigned int best_j = 0;
    for (unsigned int j = 0; j < s.k; ++j) {
        const float* cj = codebook + (unsigned long long)j * s.d;
        float dot = 0.f;
        for (unsigned int t = 0; t < s.d; ++t) dot = fmaf(xi[t], cj[t], dot);
        const float score = fmaf(-2.f, dot, norms[j]);
        if (score < best) {  // strict: the first (lowest) j keeps a tie
            best = score;
            best_j = j;
        }
    }
    idx[i] = best_j;
    dist[i] = clamp_distance(best + row_sq_norm(xi, s.d));
}

// ---------------------------------------------------------------------------------------
// v2: tiled. Grid: ceil(n / 128) blocks of 256 threads; 33.8 KB of static shared memory.
//
// Thread (ty, tx) = (tid / 16, tid % 16) owns rows {4ty..4ty+3, 64+4ty..64+4ty+3} and
// columns {4tx..4tx+3, 64+4tx..64+4tx+3} of each 128 x 128 tile: the two halves keep the
// float4 shared-memory reads of a warp on distinct banks. Tiles are stored k-major
// (`xs[kk][m]`) so one float4 read fetches four rows' values of one dimension; the pad of
// 4 floats makes the transposing stores conflict-free.
#define V2_BM 128      // points per block
#define V2_BN 128      // codewords per tile
#define V2_BK 8        // dimensions per step
#define V2_THREADS 256
#define V2_PAD 4
#define V2_LOADS (V2_BM * V2_BK / V2_THREADS)  // elements each thread loads per tile: 4

// Each thread loads the same dimension (tid % 8) of rows tid / 8 + 32 q, q = 0..3, of a
// (128 rows x 8 dims) tile of a row-major (rows, d) matrix: a warp reads 4 rows x 32
// contiguous bytes, full sectors. `src` points at the thread's first element of the tile's
// first step (row r0 + tid / 8, dim tid % 8), `rows_left` = rows - (r0 + tid / 8) and
// `dims_left` = d - (k0 + tid % 8), so the bounds checks are two compares. Out-of-range
// elements read as 0 (a padded codeword is never chosen: the fold skips j >= k).
__device__ __forceinline__ void v2_load(const float* __restrict__ src, int rows_left,
                                        int dims_left, unsigned int d, unsigned int k0,
                                        float (&reg)[V2_LOADS])
{
#pragma unroll
    for (int q = 0; q < V2_LOADS; ++q) {
        const int r = q * (V2_THREADS / V2_BK);
        reg[q] = (r < rows_left && dims_left > 0)
                     ? src[(unsigned long long)r * d + k0]
                     : 0.f;
    }
}

__device__ __forceinline__ void v2_store(float (*tile)[V2_BM + V2_PAD],
                                         const float (&reg)[V2_LOADS])
{
#pragma unroll
    for (int q = 0; q < V2_LOADS; ++q)
        tile[threadIdx.x % V2_BK][threadIdx.x / V2_BK + q * (V2_THREADS / V2_BK)] = reg[q];
}

// acc[r][c] += x[row r] * c[col c] over the 8 dimensions of one shared-memory tile.
__device__ __forceinline__ void v2_mma_step(const float (*xs)[V2_BM + V2_PAD],
                                            const float (*cs)[V2_BN + V2_PAD], int ty, int tx,
                                            float (&acc)[8][8])
{
#pragma unroll
    for (int kk = 0; kk < V2_BK; ++kk) {
        const float4 a0 = *reinterpret_cast<const float4*>(&xs[kk][4 * ty]);
        const float4 a1 = *reinterpret_cast<const float4*>(&xs[kk][64 + 4 * ty]);
        const float4 b0 = *reinterpret_cast<const float4*>(&cs[kk][4 * tx]);
        const float4 b1 = *reinterpret_cast<const float4*>(&cs[kk][64 + 4 * tx]);
        const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
        const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
        for (int r = 0; r < 8; ++r)
#pragma unroll
            for (int c = 0; c < 8; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
    }
}

// Folds one finished 128 x 128 tile of dot products (codewords j0..j0+127) into the running
// minima, then clears the accumulators. Columns are visited in increasing j and the
// comparison is strict, so within a thread the lowest index keeps a tie.
__device__ __forceinline__ void v2_fold_tile(const float* __restrict__ norms, unsigned int k,
                                             unsigned int j0, int tx, float (&acc)[8][8],
                                             float (&best)[8], unsigned int (&best_j)[8])
{
#pragma unroll
    for (int c = 0; c < 8; ++c) {
        const unsigned int j = j0 + (c < 4 ? 4 * tx + c : 64 + 4 * tx + (c - 4));
        if (j < k) {
            const float cn = norms[j];
#pragma unroll
            for (int r = 0; r < 8; ++r) {
                const float score = fmaf(-2.f, acc[r][c], cn);
                if (score < best[r]) {
                    best[r] = score;
                    best_j[r] = j;
                }
            }
        }
#pragma unroll
        for (int r = 0; r < 8; ++r) acc[r][c] = 0.f;
    }
}

extern "C" __global__ void __launch_bounds__(V2_THREADS, 1)
distance_argmin_v2(const float* __restrict__ x, const float* __restrict__ codebook,
                   const float* __restrict__ norms, ArgminShape s,
                   unsigned int* __restrict__ idx, float* __restrict__ dist)
{
    __shared__ __align__(16) float xs[2][V2_BK][V2_BM + V2_PAD];
    __shared__ __align__(16) float cs[2][V2_BK][V2_BN + V2_PAD];
    // Per-thread minima gathered for the final reduction: 16 threads share each row.
    __shared__ float red_score[V2_BM][17];
    __shared__ unsigned int red_j[V2_BM][17];

    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const unsigned int row0 = blockIdx.x * V2_BM;
    const unsigned int ksteps = (s.d + V2_BK - 1) / V2_BK;
    const unsigned int steps = ksteps * ((s.k + V2_BN - 1) / V2_BN);

    float acc[8][8];
    float best[8];
    unsigned int best_j[8];
#pragma unroll
    for (int r = 0; r < 8; ++r) {
        best[r] = VQ_INF;
        best_j[r] = 0;
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[r][c] = 0.f;
    }

    // This thread's fixed place in every tile it loads (see v2_load).
    const unsigned int lr = tid / V2_BK, lk = tid % V2_BK;
    const float* xp = x + (unsigned long long)(row0 + lr) * s.d + lk;
    const float* cp = codebook + (unsigned long long)lr * s.d + lk;
    const int x_rows_left = (int)(s.n - row0) - (int)lr;

    // One flat loop over (codeword tile, dimension step) so that the prefetch of the next
    // step crosses tile boundaries without a pipeline bubble.
    float xr[V2_LOADS], cr[V2_LOADS];
    v2_load(xp, x_rows_left, (int)s.d - (int)lk, s.d, 0, xr);
    v2_load(cp, (int)s.k - (int)lr, (int)s.d - (int)lk, s.d, 0, cr);
    v2_store(xs[0], xr);
    v2_store(cs[0], cr);
    __syncthreads();
    unsigned int ct = 0, ks = 0;  // tile and step of `it`
    for (unsigned int it = 0; it < steps; ++it) {
        const int buf = it & 1;
        const bool more = it + 1 < steps;
        if (more) {
            const unsigned int nks = ks + 1 == ksteps ? 0 : ks + 1;
            const unsigned int nct = ks + 1 == ksteps ? ct + 1 : ct;
            const unsigned int k0 = nks * V2_BK;
            const int dims_left = (int)(s.d - k0) - (int)lk;
            v2_load(xp, x_rows_left, dims_left, s.d, k0, xr);
            v2_load(cp + (unsigned long long)nct * V2_BN * s.d, (int)(s.k - nct * V2_BN) - (int)lr,
                    dims_left, s.d, k0, cr);
        }
        v2_mma_step(xs[buf], cs[buf], ty, tx, acc);
        if (more) {
            // The other buffer was last read in step it - 1, which ended in a barrier.
            v2_store(xs[buf ^ 1], xr);
            v2_store(cs[buf ^ 1], cr);
        }
        __syncthreads();
        if (ks + 1 == ksteps) {
            v2_fold_tile(norms, s.k, ct * V2_BN, tx, acc, best, best_j);
            ks = 0;
            ++ct;
        } else {
            ++ks;
        }
    }

    // Final reduction: the 16 threads of a row hold minima over disjoint columns; take the
    // lowest score, the lowest index on a tie, in a fixed order.
#pragma unroll
    for (int r = 0; r < 8; ++r) {
        const int row = r < 4 ? 4 * ty + r : 64 + 4 * ty + (r - 4);
        red_score[row][tx] = best[r];
        red_j[row][tx] = best_j[r];
    }
    __syncthreads();
    if (tid < V2_BM) {
        float score = red_score[tid][0];
        unsigned int j = red_j[tid][0];
        for (int t = 1; t < 16; ++t) {
            const float sc = red_score[tid][t];
            const unsigned int jt = red_j[tid][t];
            if (sc < score || (sc == score && jt < j)) {
                score = sc;
                j = jt;
            }
        }
        const unsigned int i = row0 + tid;
        if (i < s.n) {
            idx[i] = j;
            dist[i] = clamp_distance(score + row_sq_norm(x + (unsigned long long)i * s.d, s.d));
        }
    }
}
