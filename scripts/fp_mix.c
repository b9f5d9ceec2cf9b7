// What a 256-bit min (and an integer max) costs beside FMAs on this CPU: the scan kernel's
// loop at d = 2 is 16 FMAs and 8 `vminps` per panel of 4 rows (docs/performance.md,
// "the scan kernel's mix of FMAs and minima").
//
//     gcc -O2 -mavx2 -mfma scripts/fp_mix.c -o /tmp/fp_mix && /tmp/fp_mix
//
// Each loop runs 16 independent 256-bit FMAs (8 chains, 2 deep: enough for a 4-5 cycle
// latency at one or two a cycle) plus the extra instructions named, all on registers
// (broadcasts from a line in L1), and prints the cycles per loop at the clock given
// (default 2.5 GHz; the FMA ceiling `vqkit bench` measures, over 16 flops a cycle a core,
// gives it).
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ITERS 50000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static float line[16] __attribute__((aligned(64)));

// Each loop first sets its two FMA operands (ymm12, ymm13) from the line: the registers are
// the caller's to lose between statements. (Two broadcasts a loop: free, as measured below.)
#define FMA16                                                                              \
    "vbroadcastss (%[l]),%%ymm12\n vbroadcastss 4(%[l]),%%ymm13\n"                          \
    ".rept 2\n"                                                                            \
    "vfmadd231ps %%ymm12,%%ymm13,%%ymm0\n vfmadd231ps %%ymm12,%%ymm13,%%ymm1\n"            \
    "vfmadd231ps %%ymm12,%%ymm13,%%ymm2\n vfmadd231ps %%ymm12,%%ymm13,%%ymm3\n"            \
    "vfmadd231ps %%ymm12,%%ymm13,%%ymm4\n vfmadd231ps %%ymm12,%%ymm13,%%ymm5\n"            \
    "vfmadd231ps %%ymm12,%%ymm13,%%ymm6\n vfmadd231ps %%ymm12,%%ymm13,%%ymm7\n"            \
    ".endr\n"

// Eight of `op` on four running registers (ymm8-11), two per register a loop.
#define EIGHT(op)                                                                          \
    op " %%ymm12,%%ymm8,%%ymm8\n " op " %%ymm12,%%ymm9,%%ymm9\n "                          \
    op " %%ymm12,%%ymm10,%%ymm10\n " op " %%ymm12,%%ymm11,%%ymm11\n "                      \
    op " %%ymm13,%%ymm8,%%ymm8\n " op " %%ymm13,%%ymm9,%%ymm9\n "                          \
    op " %%ymm13,%%ymm10,%%ymm10\n " op " %%ymm13,%%ymm11,%%ymm11\n"

#define CLOBBERS                                                                           \
    "ymm0", "ymm1", "ymm2", "ymm3", "ymm4", "ymm5", "ymm6", "ymm7", "ymm8", "ymm9",         \
        "ymm10", "ymm11", "ymm12", "ymm13", "ymm14", "ymm15"

int main(int argc, char **argv) {
    double ghz = argc > 1 ? atof(argv[1]) : 2.5;
    for (int i = 0; i < 16; i++) line[i] = 1.0f + i * 1e-3f;
    const char *names[] = {"16 FMA", "+ 8 vbroadcastss (memory)", "+ 4 vmovaps",
                           "+ 8 vminps", "+ 8 vpmaxud"};
    double t[6];
    t[0] = now();
    for (long i = 0; i < ITERS; i++) __asm__ volatile(FMA16 ::[l] "r"(line) : CLOBBERS);
    t[1] = now();
    for (long i = 0; i < ITERS; i++)
        __asm__ volatile(FMA16
                         "vbroadcastss (%[l]),%%ymm14\n vbroadcastss 4(%[l]),%%ymm15\n"
                         "vbroadcastss 8(%[l]),%%ymm14\n vbroadcastss 12(%[l]),%%ymm15\n"
                         "vbroadcastss 16(%[l]),%%ymm14\n vbroadcastss 20(%[l]),%%ymm15\n"
                         "vbroadcastss 24(%[l]),%%ymm14\n vbroadcastss 28(%[l]),%%ymm15\n" ::[l] "r"(line)
                         : CLOBBERS);
    t[2] = now();
    for (long i = 0; i < ITERS; i++)
        __asm__ volatile(FMA16 "vmovaps %%ymm12,%%ymm14\n vmovaps %%ymm13,%%ymm15\n"
                               "vmovaps %%ymm12,%%ymm14\n vmovaps %%ymm13,%%ymm15\n" ::[l] "r"(line)
                                   : CLOBBERS);
    t[3] = now();
    for (long i = 0; i < ITERS; i++)
        __asm__ volatile(FMA16 EIGHT("vminps")::[l] "r"(line) : CLOBBERS);
    t[4] = now();
    for (long i = 0; i < ITERS; i++)
        __asm__ volatile(FMA16 EIGHT("vpmaxud")::[l] "r"(line) : CLOBBERS);
    t[5] = now();
    for (int i = 0; i < 5; i++)
        printf("%-28s %6.2f cycles a loop at %.2f GHz\n", names[i],
               (t[i + 1] - t[i]) / ITERS * ghz * 1e9, ghz);
    return 0;
}
