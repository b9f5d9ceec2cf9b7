// launch.h: runs one kernel launch of kernels/*.cu on the host, for the emulation's users
// (check.cpp, and the stand-in driver of driver.cpp).
#pragma once
#include <functional>

struct emu_dim3;

// Runs `kernel` for every block of `grid` (x fastest, then y, then z) with `block` threads
// each. The threads of a block are fibers on the calling thread, run round-robin: each runs
// until __syncthreads (or its end), then the next; a barrier completes when every fiber has
// reached it. Sequential, so results are repeatable, and a missing barrier makes a fiber
// read shared memory its peers have not written yet. Not reentrant: one launch at a time
// per process (`__shared__` arrays are statics, one copy per kernel).
//
// Returns false, after printing which block, when some threads of a block finish while
// others wait at a barrier (on a GPU: a hang or undefined behaviour).
bool emu_launch(unsigned grid_x, unsigned grid_y, unsigned grid_z, unsigned block,
                const std::function<void()>& kernel);
