// cluster_sums.cu: deterministic per-code reductions (k-means accumulation and update),
// and the grouping machinery that ema_update.cu shares.
//
// x: (n, d) row-major, idx: (n), dist: (n);  out sums: (k, d), counts: (k), dist_sums: (k).
//
//   counts[j]    = #{i : idx[i] = j}
//   sums[j]      = sum_{idx[i]=j} x_i              (f64 accumulation, fixed order)
//   dist_sums[j] = sum_{idx[i]=j} dist_i
//   centroids[j] = sums[j] / counts[j]  where counts[j] > 0  (kmeans_update)
//
// Determinism: no float atomics anywhere. The order of every floating-point addition is a
// function of the data alone, so outputs are bit-identical from run to run:
//  1. group: a stable LSD radix sort of (code, row) pairs by code (`radix_histogram`,
//     an exclusive scan, `radix_scatter`; 1 pass for k < 256, 2 up to 65535, ...). Rows
//     start in ascending order and every pass is stable, so each code's rows stay in
//     ascending row order: the same grouping as the CPU backend's counting sort. The only
//     atomics are integer ones on a block's shared-memory histogram.
//  2. bounds: `group_bounds` finds each code's range of the sorted order by binary search,
//     giving offsets and counts; codes >= k are sorted to the end (key k) and ignored.
//  3. reduce: each code's rows are cut into chunks of SEG_CHUNK rows; `segment_partials`
//     sums one chunk per block in row order in f64 (many blocks share a big cluster, so a
//     collapsed codebook still spreads over the GPU); `finalize_sums` adds a code's chunk
//     partials in chunk order.
//  A row's features are read once, by one block, in step 3: the sort moves 4-byte codes
//  and row ids only, so the traffic is n x d x 4 bytes plus O(n) for the grouping.
//
// Fusion: `dist` rides along as column d of an augmented row [x_i, dist_i], so sums and
// dist_sums come out of the same pass; ema_update passes no dist and uses d columns.
//
// Variants: v1 only. Kept out on purpose: float atomicAdd into sums (fast, but its order,
// and so its rounding, changes from run to run) and a single-pass global counting sort
// with atomic slot claims (the same, for the order of rows within a code).

#define SEG_CHUNK 256          // rows per partial sum (src/backend/cuda/mod.rs: SEG_CHUNK)
#define TILE 256               // rows per radix tile = threads per radix block
#define SCAN_THREADS 1024
#define SCAN_PER_THREAD 4

// One radix pass (`RadixPass` in src/backend/cuda/mod.rs).
struct RadixPass {
    unsigned int n;       // rows
    unsigned int k;       // codes >= k are clamped to the sentinel key k
    unsigned int shift;   // the digit is (key >> shift) & mask
    unsigned int mask;    // bins - 1, bins <= 256
    unsigned int tiles;   // ceil(n / TILE)
};

__device__ __forceinline__ unsigned int clamp_key(unsigned int code, unsigned int k)
{
    return code < k ? code : k;
}

// ---------------------------------------------------------------------------------------
// radix_histogram: hist[digit * tiles + tile] = rows of this tile with that digit.
// keys: (n); hist: (bins * tiles). Grid: tiles blocks of TILE threads, one row each.
// Digit-major layout: an exclusive scan of the whole array gives every (digit, tile) its
// first output slot, which is exactly the stable order (digit, then tile, then row).
extern "C" __global__ void __launch_bounds__(TILE)
radix_histogram(const unsigned int* __restrict__ keys, RadixPass p,
                unsigned int* __restrict__ hist)
{
    __shared__ unsigned int bins[256];
    const unsigned int tile = blockIdx.x, tid = threadIdx.x;
    bins[tid] = 0;  // TILE == 256 threads: one bin each
    __syncthreads();
    const unsigned int row = tile * TILE + tid;
    if (row < p.n) atomicAdd(&bins[(clamp_key(keys[row], p.k) >> p.shift) & p.mask], 1u);
    __syncthreads();
    if (tid <= p.mask) hist[tid * p.tiles + tile] = bins[tid];
}

// ---------------------------------------------------------------------------------------
// Exclusive scan: out[i] = sum_{i' < i} ceil(in[i'] / divisor), out[len] = the total.
// in: (len), out: (len + 1). A three-launch reduce-then-scan over chunks of SCAN_CHUNK:
//   scan_reduce    grid ceil(len / SCAN_CHUNK) (at least 1): block_sums[b] = chunk total
//   scan_exclusive grid 1: block_offsets = exclusive scan of block_sums (chunk by chunk)
//   scan_apply     grid as scan_reduce: each chunk scanned from its block offset
// Every block adds in a fixed tree, so the result (integers anyway) is exact.
#define SCAN_CHUNK (SCAN_THREADS * SCAN_PER_THREAD)

__device__ __forceinline__ unsigned int scan_load(const unsigned int* __restrict__ in,
                                                  unsigned int len, unsigned int divisor,
                                                  unsigned int i)
{
    return i < len ? (in[i] + divisor - 1) / divisor : 0u;
}

// Scans one chunk starting at `base` into out, from `carry`; returns the chunk total.
// All threads of the block must call it (it synchronizes).
__device__ unsigned int scan_chunk(const unsigned int* __restrict__ in, unsigned int len,
                                   unsigned int divisor, unsigned int base, unsigned int carry,
                                   unsigned int* __restrict__ out, unsigned int* part)
{
    const unsigned int tid = threadIdx.x;
    unsigned int v[SCAN_PER_THREAD];
    unsigned int local = 0;
#pragma unroll
    for (int q = 0; q < SCAN_PER_THREAD; ++q) {
        v[q] = scan_load(in, len, divisor, base + tid * SCAN_PER_THREAD + q);
        local += v[q];
    }
    part[tid] = local;
    __syncthreads();
    // Hillis-Steele inclusive scan of the per-thread totals.
    for (unsigned int off = 1; off < SCAN_THREADS; off *= 2) {
        const unsigned int add = tid >= off ? part[tid - off] : 0u;
        __syncthreads();
        part[tid] += add;
        __syncthreads();
    }
    unsigned int run = carry + part[tid] - local;
#pragma unroll
    for (int q = 0; q < SCAN_PER_THREAD; ++q) {
        const unsigned int i = base + tid * SCAN_PER_THREAD + q;
        if (i < len) out[i] = run;
        run += v[q];
    }
    const unsigned int total = part[SCAN_THREADS - 1];
    __syncthreads();  // part[] may be rewritten by the caller's next chunk
    return total;
}

extern "C" __global__ void __launch_bounds__(SCAN_THREADS)
scan_reduce(const unsigned int* __restrict__ in, unsigned int len, unsigned int divisor,
            unsigned int* __restrict__ block_sums)
{
    __shared__ unsigned int part[SCAN_THREADS];
    const unsigned int tid = threadIdx.x, base = blockIdx.x * SCAN_CHUNK;
    unsigned int local = 0;
#pragma unroll
    for (int q = 0; q < SCAN_PER_THREAD; ++q)
        local += scan_load(in, len, divisor, base + tid * SCAN_PER_THREAD + q);
    part[tid] = local;
    __syncthreads();
    for (unsigned int half = SCAN_THREADS / 2; half > 0; half /= 2) {
        if (tid < half) part[tid] += part[tid + half];
        __syncthreads();
    }
    if (tid == 0) block_sums[blockIdx.x] = part[0];
}

extern "C" __global__ void __launch_bounds__(SCAN_THREADS)
scan_exclusive(const unsigned int* __restrict__ in, unsigned int len, unsigned int divisor,
               unsigned int* __restrict__ out)
{
    __shared__ unsigned int part[SCAN_THREADS];
    unsigned int carry = 0;
    for (unsigned int base = 0; base < len; base += SCAN_CHUNK)
        carry += scan_chunk(in, len, divisor, base, carry, out, part);
    if (threadIdx.x == 0) out[len] = carry;
}

extern "C" __global__ void __launch_bounds__(SCAN_THREADS)
scan_apply(const unsigned int* __restrict__ in, unsigned int len, unsigned int divisor,
           const unsigned int* __restrict__ block_offsets, unsigned int* __restrict__ out)
{
    __shared__ unsigned int part[SCAN_THREADS];
    scan_chunk(in, len, divisor, blockIdx.x * SCAN_CHUNK, block_offsets[blockIdx.x], out, part);
    if (blockIdx.x == 0 && threadIdx.x == 0) out[len] = block_offsets[gridDim.x];
}

// ---------------------------------------------------------------------------------------
// radix_scatter: moves each (key, value) to its stably sorted slot for this digit.
// keys_in: (n) (raw codes on the first pass: clamped here), vals_in: (n) or null for row
// ids, offsets: (bins * tiles + 1) from the exclusive scan; keys_out, vals_out: (n).
// Grid: tiles blocks of TILE threads, one row each.
// A row's slot = offsets[digit, tile] + the number of earlier rows of the tile with the
// same digit, counted from the tile's digits in shared memory (all lanes of a warp read
// the same word at each step: a broadcast).
extern "C" __global__ void __launch_bounds__(TILE)
radix_scatter(const unsigned int* __restrict__ keys_in, const unsigned int* __restrict__ vals_in,
              RadixPass p, const unsigned int* __restrict__ offsets,
              unsigned int* __restrict__ keys_out, unsigned int* __restrict__ vals_out)
{
    __shared__ unsigned int digits[TILE];
    const unsigned int tile = blockIdx.x, tid = threadIdx.x;
    const unsigned int row = tile * TILE + tid;
    const bool live = row < p.n;
    const unsigned int key = live ? clamp_key(keys_in[row], p.k) : 0u;
    const unsigned int digit = live ? (key >> p.shift) & p.mask : 0xffffffffu;
    digits[tid] = digit;
    __syncthreads();
    if (!live) return;
    unsigned int rank = 0;
    for (unsigned int t = 0; t < tid; ++t) rank += digits[t] == digit;
    const unsigned int slot = offsets[digit * p.tiles + tile] + rank;
    keys_out[slot] = key;
    vals_out[slot] = vals_in ? vals_in[row] : row;
}

// ---------------------------------------------------------------------------------------
// group_bounds: offsets[j] = first slot of code j in the sorted keys (j <= k), and
// counts[j] = offsets[j + 1] - offsets[j] (j < k).
// sorted: (n); offsets: (k + 1); counts: (k). Grid: ceil((k + 1) / 256) x 256 threads.
__device__ __forceinline__ unsigned int lower_bound(const unsigned int* __restrict__ a,
                                                    unsigned int n, unsigned int v)
{
    unsigned int lo = 0, hi = n;
    while (lo < hi) {
        const unsigned int mid = lo + (hi - lo) / 2;
        if (a[mid] < v) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

extern "C" __global__ void __launch_bounds__(256)
group_bounds(const unsigned int* __restrict__ sorted, unsigned int n, unsigned int k,
             unsigned int* __restrict__ offsets, unsigned int* __restrict__ counts)
{
    const unsigned int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j > k) return;
    const unsigned int start = lower_bound(sorted, n, j);
    offsets[j] = start;
    if (j < k) counts[j] = lower_bound(sorted, n, j + 1) - start;
}

// ---------------------------------------------------------------------------------------
// segment_partials: one f64 partial sum of the augmented rows [x_i, dist_i] per chunk.
// The chunks of code j are chunk_offsets[j]..chunk_offsets[j + 1] (the exclusive scan of
// counts with divisor SEG_CHUNK); chunk q of code j covers order[offsets[j] + q * SEG_CHUNK ..]
// (at most SEG_CHUNK rows, never past offsets[j + 1]).
// x: (n, d), dist: (n) or null, order: (n), offsets: (k + 1), chunk_offsets: (k + 1);
// partials: (max_chunks, cols) with cols = d + (dist != null).
// Grid: max_chunks = ceil(n / SEG_CHUNK) + k blocks (an upper bound on the chunk count,
// which only the device knows); blocks past chunk_offsets[k] exit. Block: cols rounded up
// to a warp, at most 256 threads, each striding over the columns. A warp reads 32
// consecutive floats of one row: coalesced.
struct SegShape {
    unsigned int k;
    unsigned int d;
};

extern "C" __global__ void __launch_bounds__(256)
segment_partials(const float* __restrict__ x, const float* __restrict__ dist,
                 const unsigned int* __restrict__ order, const unsigned int* __restrict__ offsets,
                 const unsigned int* __restrict__ chunk_offsets, SegShape s,
                 double* __restrict__ partials)
{
    const unsigned int chunk = blockIdx.x;
    if (chunk >= chunk_offsets[s.k]) return;  // uniform per block; no barriers below
    // The code owning this chunk: the last j with chunk_offsets[j] <= chunk (empty codes
    // have no chunks and share their offset with the next code, so search for the upper
    // bound and step back).
    unsigned int lo = 0, hi = s.k + 1;
    while (lo < hi) {
        const unsigned int mid = lo + (hi - lo) / 2;
        if (chunk_offsets[mid] <= chunk) lo = mid + 1;
        else hi = mid;
    }
    const unsigned int j = lo - 1;
    const unsigned int begin = offsets[j] + (chunk - chunk_offsets[j]) * SEG_CHUNK;
    const unsigned int end = min(begin + SEG_CHUNK, offsets[j + 1]);
    const unsigned int cols = s.d + (dist != nullptr);
    for (unsigned int t = threadIdx.x; t < cols; t += blockDim.x) {
        double acc = 0.0;
        if (t < s.d) {
#pragma unroll 4
            for (unsigned int p = begin; p < end; ++p)
                acc += (double)x[(unsigned long long)order[p] * s.d + t];
        } else {
#pragma unroll 4
            for (unsigned int p = begin; p < end; ++p) acc += (double)dist[order[p]];
        }
        partials[(unsigned long long)chunk * cols + t] = acc;
    }
}

// ---------------------------------------------------------------------------------------
// finalize_sums: sums[j][t] = sum of code j's chunk partials in chunk order (t < d), and
// dist_sums[j] the same for column d when dist_sums is not null.
// partials: (max_chunks, cols), chunk_offsets: (k + 1); sums: (k, d), dist_sums: (k).
// Grid: ceil(k * cols / 256) blocks of 256 threads, one per (j, t).
extern "C" __global__ void __launch_bounds__(256)
finalize_sums(const double* __restrict__ partials, const unsigned int* __restrict__ chunk_offsets,
              SegShape s, float* __restrict__ sums, float* __restrict__ dist_sums)
{
    const unsigned int cols = s.d + (dist_sums != nullptr);
    const unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (unsigned long long)s.k * cols) return;
    const unsigned int j = (unsigned int)(e / cols), t = (unsigned int)(e % cols);
    double acc = 0.0;
    for (unsigned int c = chunk_offsets[j]; c < chunk_offsets[j + 1]; ++c)
        acc += partials[(unsigned long long)c * cols + t];
    if (t < s.d) sums[(unsigned long long)j * s.d + t] = (float)acc;
    else dist_sums[j] = (float)acc;
}

// ---------------------------------------------------------------------------------------
// kmeans_update: centroids[j] = sums[j] / counts[j] where counts[j] > 0; an empty
// cluster keeps its centroid. sums, centroids: (k, d), counts: (k).
// Grid: ceil(k * d / 256) blocks of 256 threads, one per element. Divides in f64 as the
// CPU backend does, so both round the same way.
extern "C" __global__ void __launch_bounds__(256)
kmeans_update(const float* __restrict__ sums, const unsigned int* __restrict__ counts,
              SegShape s, float* __restrict__ centroids)
{
    const unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (unsigned long long)s.k * s.d) return;
    const unsigned int m = counts[e / s.d];
    if (m > 0) centroids[e] = (float)((double)sums[e] * (1.0 / (double)m));
}
