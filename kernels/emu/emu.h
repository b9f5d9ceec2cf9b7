// emu.h: just enough of CUDA's execution model to run vqkit's kernels as host C++, so their
// indexing, tiling, barriers and fixed reduction orders can be tested on a machine with no
// GPU (kernels/emu/run.sh). Force-included before each kernels/*.cu.
//
// A launch (launch.h) runs the grid's blocks one after another; the threads of a block are
// fibers that meet at __syncthreads, so a missing barrier shows up as a fiber reading what
// its peers have not written yet. `__shared__` becomes `static`: one copy per kernel, which
// is exactly block-shared memory when one block runs at a time. What it cannot show: warp-level
// timing, memory coalescing, register pressure (see ptxas -v), and inter-block races.
#pragma once
#include <cmath>
#include <cstring>

struct emu_dim3 {
    unsigned int x, y, z;
};
extern thread_local emu_dim3 threadIdx;
extern thread_local emu_dim3 blockIdx;
extern emu_dim3 blockDim;
extern emu_dim3 gridDim;
void __syncthreads();

struct alignas(16) float4 {
    float x, y, z, w;
};

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict

inline float __int_as_float(int v)
{
    float f;
    std::memcpy(&f, &v, sizeof f);
    return f;
}
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v)
{
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
using std::fmaf;
using std::fmaxf;
