// What an AVX-512 core issues beside its FMAs: the tall kernel's inner loop at d = 2
// (`tall_walk` in crates/vqkit/src/backend/cpu/distance_argmin.rs) against FMAs alone.
//
//   gcc -O2 -mavx512f scripts/tall_loop_pipes.c -o /tmp/tall_loop_pipes && /tmp/tall_loop_pipes
//
// Each line prints nanoseconds per iteration, the fastest of 5 passes:
//   fma          8 independent zmm FMA chains (the core's FMA rate: 8 FMAs an iteration)
//   fma+min      the same and 4 `vminps` on their results (the tall kernel's running minima)
//   fma+cmp      the same and 4 compares into a mask with 4 masked blends instead
//   tall d=2     one codeword against 64 rows held in 8 registers, as the compiled
//                kernel runs it (`objdump -d` of `tall_avx512`): 3 broadcasts from L1,
//                3 register copies, 8 FMAs, 4 `vminps`
// Where `fma+min` takes the time of `fma`, the minima issue on pipes the FMAs leave free.
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define ITERS 100000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// mode 0: FMAs alone; 1: and minima; 2: and compare + blend. Distinct starting values, so
// that no two chains are the same computation. Inlined into one function per mode, so the
// mode is a constant in each loop.
static inline __attribute__((always_inline)) float chains(int mode) {
    __m512 a[8], m[4];
    for (int i = 0; i < 8; i++) a[i] = _mm512_set1_ps(1.0f + i);
    for (int i = 0; i < 4; i++) m[i] = _mm512_set1_ps(3.0f + 2 * i);
    const __m512 x = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-7f);
    for (long it = 0; it < ITERS; it++) {
        // Unrolled, so that the chains live in registers.
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) a[i] = _mm512_fmadd_ps(a[i], x, c);
        if (mode == 1)
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) m[i] = _mm512_min_ps(a[2 * i], m[i]);
        if (mode == 2)
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                __mmask16 lt = _mm512_cmp_ps_mask(a[2 * i], m[i], _CMP_LT_OQ);
                m[i] = _mm512_mask_blend_ps(lt, m[i], a[2 * i]);
            }
    }
    __m512 s = m[0];
    for (int i = 0; i < 8; i++) s = _mm512_add_ps(s, a[i]);
    for (int i = 1; i < 4; i++) s = _mm512_add_ps(s, m[i]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((noinline)) static float chains_fma(void) { return chains(0); }
__attribute__((noinline)) static float chains_min(void) { return chains(1); }
__attribute__((noinline)) static float chains_cmp(void) { return chains(2); }

// The panel: 32 codewords' first elements, then their second, then their norms.
static float panel[96] __attribute__((aligned(64)));

// zmm0-3 hold the rows' first elements (4 vectors of 16 rows), zmm4-7 their second,
// zmm17-20 the running minima, all set before the loop (finite values, no subnormals);
// one pass walks the 32 codewords of the panel.
__attribute__((noinline)) static float tall_d2(long passes) {
    register __m512 x0 asm("zmm0") = _mm512_set1_ps(0.25f);
    register __m512 x1 asm("zmm1") = _mm512_set1_ps(0.5f);
    register __m512 x2 asm("zmm2") = _mm512_set1_ps(0.75f);
    register __m512 x3 asm("zmm3") = _mm512_set1_ps(1.0f);
    register __m512 y0 asm("zmm4") = _mm512_set1_ps(-0.25f);
    register __m512 y1 asm("zmm5") = _mm512_set1_ps(-0.5f);
    register __m512 y2 asm("zmm6") = _mm512_set1_ps(-0.75f);
    register __m512 y3 asm("zmm7") = _mm512_set1_ps(-1.0f);
    register __m512 m0 asm("zmm17") = _mm512_set1_ps(1e30f);
    register __m512 m1 asm("zmm18") = _mm512_set1_ps(1e30f);
    register __m512 m2 asm("zmm19") = _mm512_set1_ps(1e30f);
    register __m512 m3 asm("zmm20") = _mm512_set1_ps(1e30f);
    for (long p = 0; p < passes; p++) {
        __asm__ volatile(
            "xor %%r15, %%r15\n"
            "1:\n"
            "vbroadcastss 256(%[c],%%r15,4), %%zmm21\n"
            "vbroadcastss (%[c],%%r15,4), %%zmm22\n"
            "vmovaps %%zmm22, %%zmm23\n"
            "vfmadd213ps %%zmm21, %%zmm0, %%zmm23\n"
            "vmovaps %%zmm22, %%zmm24\n"
            "vfmadd213ps %%zmm21, %%zmm1, %%zmm24\n"
            "vmovaps %%zmm22, %%zmm25\n"
            "vfmadd213ps %%zmm21, %%zmm2, %%zmm25\n"
            "vfmadd213ps %%zmm21, %%zmm3, %%zmm22\n"
            "vbroadcastss 128(%[c],%%r15,4), %%zmm21\n"
            "vfmadd231ps %%zmm21, %%zmm4, %%zmm23\n"
            "vminps %%zmm20, %%zmm23, %%zmm20\n"
            "vfmadd231ps %%zmm21, %%zmm5, %%zmm24\n"
            "vminps %%zmm19, %%zmm24, %%zmm19\n"
            "vfmadd231ps %%zmm21, %%zmm6, %%zmm25\n"
            "vminps %%zmm18, %%zmm25, %%zmm18\n"
            "vfmadd231ps %%zmm21, %%zmm7, %%zmm22\n"
            "vminps %%zmm17, %%zmm22, %%zmm17\n"
            "inc %%r15\n"
            "cmp $32, %%r15\n"
            "jne 1b\n"
            : "+v"(m0), "+v"(m1), "+v"(m2), "+v"(m3)
            : [c] "r"(panel), "v"(x0), "v"(x1), "v"(x2), "v"(x3), "v"(y0), "v"(y1), "v"(y2),
              "v"(y3)
            : "r15", "zmm21", "zmm22", "zmm23", "zmm24", "zmm25", "memory");
    }
    return _mm512_reduce_min_ps(_mm512_min_ps(_mm512_min_ps(m0, m1), _mm512_min_ps(m2, m3)));
}

int main(void) {
    for (int i = 0; i < 96; i++) panel[i] = 0.5f + i * 1e-3f;
    const char *names[] = {"fma", "fma+min", "fma+cmp"};
    double best[4] = {1e9, 1e9, 1e9, 1e9};
    float sink = 0;
    for (int pass = 0; pass < 5; pass++) {
        float (*const runs[3])(void) = {chains_fma, chains_min, chains_cmp};
        for (int mode = 0; mode < 3; mode++) {
            double t = now();
            sink += runs[mode]();
            t = (now() - t) / ITERS * 1e9;
            if (t < best[mode]) best[mode] = t;
        }
        double t = now();
        sink += tall_d2(ITERS / 32);
        t = (now() - t) / (ITERS / 32 * 32) * 1e9;
        if (t < best[3]) best[3] = t;
    }
    for (int mode = 0; mode < 3; mode++) printf("%-10s %6.3f ns\n", names[mode], best[mode]);
    printf("%-10s %6.3f ns\n", "tall d=2", best[3]);
    return sink == 0.125f;  // keeps the chains' results alive
}
