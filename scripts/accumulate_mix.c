// What bounds the EMA's accumulation (`cluster_sums.rs`) on this CPU: each row of x (32
// floats here, the main job's d) is widened to f64 and added into its code's 32 f64
// accumulators, a read-modify-write of twice the row's bytes. This times the loop's parts
// on their own, AVX-512 (docs/performance.md, "On Zen 4, what bounds the accumulation").
//
//     gcc -O2 -mavx512f scripts/accumulate_mix.c -o /tmp/accumulate_mix && /tmp/accumulate_mix N
//
// Loops, each over the same n rows in order (x of n x 32 floats, codes uniform in 0..k):
//   read       x loaded and added in f32 into 4 register chains: the read alone
//   widen      x widened to f64 (vcvtps2pd) and added into 8 register chains: no stores
//   acc k      widened and added into the row's code's accumulators in memory (k x 32
//              f64), load, add and store, as the crate's loop does
//   fma k      the same with each add an FMA by 1.0 (which rounds as the add does) read
//              from memory, so that the compiler cannot turn it back into an add: on Zen 4
//              FMAs and adds issue to different pipes
// Each loop is run 200 times, the loops alternating pass by pass, each timed pass after an
// untimed read of x (so that x is as cached as it can be); the fastest pass is printed,
// in ns a row and GB/s of x.
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define D 32
#define PASSES 200

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// Kept from the optimizer: every loop's result lands here.
static volatile double sink;

static void read_f32(const float *x, const uint32_t *idx, long n, uint32_t k) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (long i = 0; i < n; i += 2) {
        const float *r = x + i * D;
        // The code is read and compared as in the other loops.
        if (idx[i] < k) {
            a0 = _mm512_add_ps(a0, _mm512_loadu_ps(r));
            a1 = _mm512_add_ps(a1, _mm512_loadu_ps(r + 16));
        }
        if (idx[i + 1] < k) {
            a2 = _mm512_add_ps(a2, _mm512_loadu_ps(r + D));
            a3 = _mm512_add_ps(a3, _mm512_loadu_ps(r + D + 16));
        }
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
    sink = _mm512_reduce_add_ps(s);
}

// Written out, not in loops over arrays of registers, which the compiler may keep in memory.
#define WIDEN(a, r, q) a = _mm512_add_pd(a, _mm512_cvtps_pd(_mm256_loadu_ps((r) + 8 * (q))))

static void widen(const float *x, const uint32_t *idx, long n, uint32_t k) {
    __m512d a0 = _mm512_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
    __m512d b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (long i = 0; i < n; i += 2) {
        const float *r = x + i * D;
        if (idx[i] < k) {
            WIDEN(a0, r, 0);
            WIDEN(a1, r, 1);
            WIDEN(a2, r, 2);
            WIDEN(a3, r, 3);
        }
        if (idx[i + 1] < k) {
            WIDEN(b0, r + D, 0);
            WIDEN(b1, r + D, 1);
            WIDEN(b2, r + D, 2);
            WIDEN(b3, r + D, 3);
        }
    }
    __m512d s = _mm512_add_pd(_mm512_add_pd(a0, a1), _mm512_add_pd(a2, a3));
    s = _mm512_add_pd(s, _mm512_add_pd(_mm512_add_pd(b0, b1), _mm512_add_pd(b2, b3)));
    sink = _mm512_reduce_add_pd(s);
}

// The multiplier of the FMA loop: 1.0, read through a volatile so that it is not a
// constant the compiler could fold the FMA away with.
static volatile double one = 1.0;

// The read-modify-write loop; with `fma` (a constant at each call, so the compiler builds
// each loop apart) each add is an FMA by `one`.
static inline __attribute__((always_inline)) void accumulate_with(const float *x,
                                                                  const uint32_t *idx, long n,
                                                                  uint32_t k, double *acc,
                                                                  int fma) {
    const __m512d m = _mm512_set1_pd(one);
    for (long i = 0; i < n; i++) {
        const float *r = x + i * D;
        uint32_t j = idx[i];
        if (j < k) {
            double *a = acc + (long)j * D;
            for (int q = 0; q < 4; q++) {
                __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(r + 8 * q));
                __m512d old = _mm512_loadu_pd(a + 8 * q);
                _mm512_storeu_pd(a + 8 * q,
                                 fma ? _mm512_fmadd_pd(v, m, old) : _mm512_add_pd(old, v));
            }
        }
    }
    sink = acc[0];
}

static void accumulate(const float *x, const uint32_t *idx, long n, uint32_t k, double *acc) {
    accumulate_with(x, idx, n, k, acc, 0);
}

static void accumulate_fma(const float *x, const uint32_t *idx, long n, uint32_t k,
                           double *acc) {
    accumulate_with(x, idx, n, k, acc, 1);
}

static uint64_t state = 0x9e3779b97f4a7c15ull;
static uint64_t next(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static void report(const char *name, long n, double best) {
    printf("%-12s %6.2f ns/row %7.1f GB/s of x\n", name, best * 1e9 / n,
           n * D * 4.0 / best / 1e9);
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    n &= ~1L;
    // Loops 0 and 1: read and widen (k = 4096: every code in range); 2 to 5: acc at ks;
    // 6 and 7: fma at k = 16 and 256.
    const uint32_t ks[] = {16, 256, 1024, 4096, 16, 256};
    float *x = aligned_alloc(64, n * D * sizeof(float));
    uint32_t *idx = malloc(n * sizeof(uint32_t));
    double *acc = aligned_alloc(64, 4096 * D * sizeof(double));
    if (!x || !idx || !acc) return 1;
    for (long i = 0; i < n * D; i++) x[i] = (float)(next() % 1000) / 1000.0f;
    for (int c = 0; c < 4096 * D; c++) acc[c] = 0.0;
    printf("n = %ld rows of %d floats (x: %.1f MB)\n", n, D, n * D * 4.0 / 1e6);
    double best[8];
    for (int t = 0; t < 8; t++) best[t] = 1e9;
    // The loops alternate pass by pass, so that each sees the same machine.
    for (int p = 0; p < PASSES; p++) {
        for (int t = 0; t < 8; t++) {
            uint32_t k = t < 2 ? 4096 : ks[t - 2];
            // Codes for this k (regenerated each pass: cheap beside the loop, untimed).
            srand(t);
            for (long i = 0; i < n; i++) idx[i] = (uint32_t)(rand() % k);
            read_f32(x, idx, n, k);
            double s = now();
            if (t == 0)
                read_f32(x, idx, n, k);
            else if (t == 1)
                widen(x, idx, n, k);
            else if (t < 6)
                accumulate(x, idx, n, k, acc);
            else
                accumulate_fma(x, idx, n, k, acc);
            double e = now() - s;
            if (e < best[t]) best[t] = e;
        }
    }
    report("read", n, best[0]);
    report("widen", n, best[1]);
    char name[32];
    for (int t = 2; t < 8; t++) {
        snprintf(name, sizeof name, "%s k=%u", t < 6 ? "acc" : "fma", ks[t - 2]);
        report(name, n, best[t]);
    }
    return 0;
}
