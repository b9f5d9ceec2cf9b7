// What AVX2's blends and compares cost beside FMAs (`blend_epi32` in
// crates/vqkit/src/backend/cpu/distance_argmin.rs):
//
//   gcc -O2 scripts/avx2_blend_pipes.c -o /tmp/avx2_blend_pipes && taskset -c 1 /tmp/avx2_blend_pipes
//
// Each line prints nanoseconds per iteration, the fastest of 5 passes of 16 ymm FMAs in 8
// chains (two a chain: the FMA's latency and rate both bound them), alone and with 4 more
// instructions of one kind on registers the chains never touch. Where a line takes the
// time of `fma`, its instructions issue on pipes the FMAs leave free.
#include <stdio.h>
#include <time.h>

#define ITERS 50000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define FMA(r) "vfmadd231ps %%ymm14, %%ymm15, %%ymm" #r "\n"
#define CHAINS FMA(0) FMA(1) FMA(2) FMA(3) FMA(4) FMA(5) FMA(6) FMA(7)
// Every register the loop reads zeroed before it, inside the timed statement, so that
// no code of the compiler's runs between the zeroing and the loop.
#define ZEROS                                                                       \
    "vxorps %%ymm0, %%ymm0, %%ymm0\n vxorps %%ymm1, %%ymm1, %%ymm1\n"               \
    "vxorps %%ymm2, %%ymm2, %%ymm2\n vxorps %%ymm3, %%ymm3, %%ymm3\n"               \
    "vxorps %%ymm4, %%ymm4, %%ymm4\n vxorps %%ymm5, %%ymm5, %%ymm5\n"               \
    "vxorps %%ymm6, %%ymm6, %%ymm6\n vxorps %%ymm7, %%ymm7, %%ymm7\n"               \
    "vxorps %%ymm8, %%ymm8, %%ymm8\n vxorps %%ymm9, %%ymm9, %%ymm9\n"               \
    "vxorps %%ymm14, %%ymm14, %%ymm14\n vxorps %%ymm15, %%ymm15, %%ymm15\n"
// Four of one instruction, into ymm10 to ymm13 from ymm8 and ymm9.
#define FOUR(op) \
    op " %%ymm8, %%ymm9, %%ymm8, %%ymm10\n" op " %%ymm8, %%ymm9, %%ymm8, %%ymm11\n" \
    op " %%ymm8, %%ymm9, %%ymm8, %%ymm12\n" op " %%ymm8, %%ymm9, %%ymm8, %%ymm13\n"
#define FOUR3(op) \
    op " %%ymm8, %%ymm9, %%ymm10\n" op " %%ymm8, %%ymm9, %%ymm11\n" \
    op " %%ymm8, %%ymm9, %%ymm12\n" op " %%ymm8, %%ymm9, %%ymm13\n"
#define TIME(name, extra)                                                              \
    {                                                                                  \
        double best = 1e9;                                                             \
        for (int pass = 0; pass < 5; pass++) {                                         \
            double t = now();                                                          \
            __asm__ volatile(ZEROS "mov %[n], %%rcx\n"                                 \
                             "1:\n" CHAINS CHAINS extra "dec %%rcx\n jnz 1b\n"          \
                             :                                                         \
                             : [n] "r"(ITERS)                                          \
                             : "rcx", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4",    \
                               "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",        \
                               "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");           \
            t = (now() - t) / ITERS * 1e9;                                             \
            if (t < best) best = t;                                                    \
        }                                                                              \
        printf("%-12s %.3f ns\n", name, best);                                         \
    }

int main(void) {
    // Zeros everywhere: no subnormals, no NaNs; the chains' sums stay zero.
    TIME("fma", "")
    TIME("vblendvps", FOUR("vblendvps"))
    TIME("vpblendvb", FOUR("vpblendvb"))
    TIME("vcmpltps", FOUR3("vcmpltps"))
    TIME("vminps", FOUR3("vminps"))
    return 0;
}
