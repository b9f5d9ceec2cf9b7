// launch.cpp: the emulation's launcher (see launch.h) and the CUDA built-in variables it
// sets, declared in emu.h.
#include "launch.h"

#include <cstdio>
#include <vector>
#include <ucontext.h>

struct emu_dim3 {
    unsigned int x, y, z;
};
thread_local emu_dim3 threadIdx;
thread_local emu_dim3 blockIdx;
emu_dim3 blockDim;
emu_dim3 gridDim;

static ucontext_t g_main;
static std::vector<ucontext_t> g_fibers;
static unsigned g_current;
static const std::function<void()>* g_kernel;

void __syncthreads() { swapcontext(&g_fibers[g_current], &g_main); }

static void fiber_entry()
{
    (*g_kernel)();
    threadIdx.x = ~0u;  // done
}

bool emu_launch(unsigned grid_x, unsigned grid_y, unsigned grid_z, unsigned block,
                const std::function<void()>& kernel)
{
    if (grid_x == 0 || grid_y == 0 || grid_z == 0 || block == 0) return true;
    blockDim = {block, 1, 1};
    gridDim = {grid_x, grid_y, grid_z};
    g_kernel = &kernel;
    const size_t stack = 64 * 1024;
    static std::vector<char> stacks;  // reused: allocating per launch dominates the run time
    if (stacks.size() < (size_t)block * stack) stacks.resize((size_t)block * stack);
    g_fibers.assign(block, ucontext_t{});
    std::vector<bool> done(block);
    for (unsigned bz = 0; bz < grid_z; ++bz)
        for (unsigned by = 0; by < grid_y; ++by)
            for (unsigned bx = 0; bx < grid_x; ++bx) {
                blockIdx = {bx, by, bz};
                for (unsigned t = 0; t < block; ++t) {
                    getcontext(&g_fibers[t]);
                    g_fibers[t].uc_stack.ss_sp = &stacks[(size_t)t * stack];
                    g_fibers[t].uc_stack.ss_size = stack;
                    g_fibers[t].uc_link = &g_main;
                    makecontext(&g_fibers[t], fiber_entry, 0);
                    done[t] = false;
                }
                for (unsigned live = block; live > 0;) {
                    unsigned finished = 0, waiting = 0;
                    for (unsigned t = 0; t < block; ++t) {
                        if (done[t]) continue;
                        g_current = t;
                        threadIdx = {t, 0, 0};
                        swapcontext(&g_main, &g_fibers[t]);
                        if (threadIdx.x == ~0u) {
                            done[t] = true;
                            ++finished;
                        } else {
                            ++waiting;
                        }
                    }
                    if (finished && waiting) {
                        std::fprintf(stderr,
                                     "emu: block (%u, %u, %u): %u threads exited while %u wait "
                                     "at a barrier\n",
                                     bx, by, bz, finished, waiting);
                        return false;
                    }
                    live -= finished;
                }
            }
    return true;
}
