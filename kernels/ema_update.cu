// ema_update.cu: the exponential-moving-average codebook step (VQ-VAE, van den Oord et al.
// 2017, appendix A.1), given this batch's per-code counts and chunk partial sums from the
// grouping kernels of cluster_sums.cu.
//
// counts: (k), partials: (chunks, d), chunk_offsets: (k + 1);
// in/out cluster_size: (k), embed_sum: (k, d), codebook: (k, d).
//
//   size[j]  = decay * size[j] + (1 - decay) * count[j]
//   esum[j]  = decay * esum[j] + (1 - decay) * sum_{idx[i]=j} x_i
//   total    = sum_j size[j]
//   smooth_j = (size[j] + eps) / (total + k * eps) * total      (Laplace smoothing)
//   code[j]  = esum[j] / smooth_j         (left unchanged when total is 0)
//
// The whole step is: radix sort by code, group_bounds, scan of chunk counts,
// segment_partials (cluster_sums.cu), then `ema_sizes` and `ema_codebook` (here).
// Determinism: the batch sums come from cluster_sums.cu's fixed-order reduction, and
// `total` is reduced by one block in a fixed tree, so the step is bit-identical from run
// to run. Arithmetic is in f64 with f32 storage, rounding where the CPU backend rounds.
//
// Fusion: the batch sums never exist as a (k, d) f32 array: `ema_codebook` adds each
// code's chunk partials, decays embed_sum and writes the codeword in one pass, so x is
// read once (by segment_partials) and each of embed_sum and codebook once and written once.
//
// Variants: v1 only.

#define EMA_THREADS 1024

// `EmaShape` in src/backend/cuda/mod.rs.
struct EmaShape {
    unsigned int k;
    unsigned int d;
    float decay;
    float eps;
};

// ema_sizes: cluster_size[j] = decay * cluster_size[j] + (1 - decay) * counts[j], and
// total[0] = sum_j cluster_size[j] (after the update, summed as f64 in a fixed order).
// Grid: 1 block of EMA_THREADS threads (k is a codebook size, not a data size).
extern "C" __global__ void __launch_bounds__(EMA_THREADS)
ema_sizes(const unsigned int* __restrict__ counts, EmaShape s,
          float* __restrict__ cluster_size, double* __restrict__ total)
{
    __shared__ double part[EMA_THREADS];
    const unsigned int tid = threadIdx.x;
    const double decay = (double)s.decay;
    double local = 0.0;
    for (unsigned int j = tid; j < s.k; j += EMA_THREADS) {
        const float size =
            (float)(decay * (double)cluster_size[j] + (1.0 - decay) * (double)counts[j]);
        cluster_size[j] = size;
        local += (double)size;
    }
    part[tid] = local;
    __syncthreads();
    for (unsigned int half = EMA_THREADS / 2; half > 0; half /= 2) {
        if (tid < half) part[tid] += part[tid + half];
        __syncthreads();
    }
    if (tid == 0) total[0] = part[0];
}

// ema_codebook: per element (j, t): the batch sum from code j's chunk partials (in chunk
// order, rounded to f32 as the CPU backend stores it), the decayed running sum, and the
// smoothed codeword. Runs after ema_sizes (it reads the updated cluster_size and total).
// Grid: ceil(k * d / 256) blocks of 256 threads, one per element.
extern "C" __global__ void __launch_bounds__(256)
ema_codebook(const double* __restrict__ partials, const unsigned int* __restrict__ chunk_offsets,
             const float* __restrict__ cluster_size, const double* __restrict__ total_in,
             EmaShape s, float* __restrict__ embed_sum, float* __restrict__ codebook)
{
    const unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (unsigned long long)s.k * s.d) return;
    const unsigned int j = (unsigned int)(e / s.d), t = (unsigned int)(e % s.d);
    double batch = 0.0;
    for (unsigned int c = chunk_offsets[j]; c < chunk_offsets[j + 1]; ++c)
        batch += partials[(unsigned long long)c * s.d + t];
    const double decay = (double)s.decay, eps = (double)s.eps;
    const float esum = (float)(decay * (double)embed_sum[e] + (1.0 - decay) * (double)(float)batch);
    embed_sum[e] = esum;
    const double total = total_in[0];
    if (total > 0.0) {
        const double smoothed =
            ((double)cluster_size[j] + eps) / (total + (double)s.k * eps) * total;
        codebook[e] = (float)((double)esum * (1.0 / smoothed));
    }
}
