// Three other orders for the EMA's accumulation (crates/vqkit/src/backend/cpu/
// cluster_sums.rs), each adding every code's rows in row order into f64, so each gives
// the crate's bits (checked here against the first): can any of them beat the crate's
// loop on this CPU? AVX-512, rows of 32 floats (the main job's d), codes uniform in 0..k
// (docs/performance.md, "On Zen 4, tried at 08c6713 and not kept";
// `scripts/accumulate_mix.c` times the crate's loop's parts).
//
//     gcc -O2 -mavx512f scripts/accumulate_orders.c -o /tmp/accumulate_orders
//     /tmp/accumulate_orders N K
//
// Loops, one thread, over n rows (x of n x 32 floats):
//   rows     the crate's order: each row widened and added into its code's accumulators
//            in memory (k x 32 f64), the row 64 rows ahead prefetched into L2 (the
//            crate's 8 KiB ahead at rows of 32 floats)
//   sorted   the rows' numbers sorted by code first (a counting sort, stable), then each
//            code's rows added into 4 registers and stored once: no accumulator in memory
//            but the rows read out of order
//   windows  the same within windows of W rows (a window of x fits in L2): each code's
//            rows of the window added into registers loaded from, and stored back to, its
//            accumulators; W = 1024, 4096
//   slices   for each block of B rows (in L2), each slice of 8 columns in turn added into
//            its own k x 8 accumulators (16 KiB at k = 256: in L1); B = 512, 2048
// Each loop runs 40 times, the loops alternating pass by pass; the fastest pass is
// printed, in microseconds and ns a row, with whether its sums equal the first loop's.
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define D 32
#define PASSES 40

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// acc[j][0..32] += row, widened: the crate's step for one row.
static inline void add_row(double *acc, const float *row) {
    for (int c = 0; c < D; c += 8) {
        __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(row + c));
        _mm512_storeu_pd(acc + c, _mm512_add_pd(_mm512_loadu_pd(acc + c), v));
    }
}

static void rows(const float *x, const uint32_t *idx, long n, double *acc) {
    for (long i = 0; i < n; i++) {
        const float *ahead = x + (i + 64) * D;
        _mm_prefetch((const char *)ahead, _MM_HINT_T1);
        _mm_prefetch((const char *)(ahead + 16), _MM_HINT_T1);
        add_row(acc + (size_t)idx[i] * D, x + i * D);
    }
}

// Rows r0..r1's numbers grouped by code in row order: start[j]..start[j + 1] of `list`.
static void sort_rows(const uint32_t *idx, long r0, long r1, uint32_t k, uint32_t *start,
                      uint32_t *next, uint32_t *list) {
    memset(start, 0, (k + 1) * sizeof *start);
    for (long i = r0; i < r1; i++) start[idx[i] + 1]++;
    for (uint32_t j = 0; j < k; j++) start[j + 1] += start[j];
    memcpy(next, start, k * sizeof *next);
    for (long i = r0; i < r1; i++) list[next[idx[i]]++] = (uint32_t)i;
}

// Code j's listed rows added into registers from its accumulators, stored back once.
static void add_listed(const float *x, const uint32_t *list, uint32_t p, uint32_t e,
                       double *acc) {
    // Four named registers (an array of four went through the stack).
    __m512d s0 = _mm512_loadu_pd(acc), s1 = _mm512_loadu_pd(acc + 8);
    __m512d s2 = _mm512_loadu_pd(acc + 16), s3 = _mm512_loadu_pd(acc + 24);
    for (; p < e; p++) {
        const float *row = x + (size_t)list[p] * D;
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm256_loadu_ps(row)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_loadu_ps(row + 8)));
        s2 = _mm512_add_pd(s2, _mm512_cvtps_pd(_mm256_loadu_ps(row + 16)));
        s3 = _mm512_add_pd(s3, _mm512_cvtps_pd(_mm256_loadu_ps(row + 24)));
    }
    _mm512_storeu_pd(acc, s0);
    _mm512_storeu_pd(acc + 8, s1);
    _mm512_storeu_pd(acc + 16, s2);
    _mm512_storeu_pd(acc + 24, s3);
}

static uint32_t *start, *next, *list;

static void sorted(const float *x, const uint32_t *idx, long n, uint32_t k, double *acc) {
    sort_rows(idx, 0, n, k, start, next, list);
    for (uint32_t j = 0; j < k; j++) add_listed(x, list, start[j], start[j + 1], acc + j * D);
}

static void windows(const float *x, const uint32_t *idx, long n, uint32_t k, long w,
                    double *acc) {
    for (long r0 = 0; r0 < n; r0 += w) {
        long r1 = r0 + w < n ? r0 + w : n;
        sort_rows(idx, r0, r1, k, start, next, list);
        for (uint32_t j = 0; j < k; j++)
            if (start[j] < start[j + 1])
                add_listed(x, list, start[j], start[j + 1], acc + j * D);
    }
}

// Slice s's accumulators are acc + s * k * 8 (k x 8 each).
static void slices(const float *x, const uint32_t *idx, long n, uint32_t k, long b,
                   double *acc) {
    for (long r0 = 0; r0 < n; r0 += b) {
        long r1 = r0 + b < n ? r0 + b : n;
        for (int sl = 0; sl < D / 8; sl++) {
            double *a = acc + (size_t)sl * k * 8;
            for (long i = r0; i < r1; i++) {
                double *o = a + (size_t)idx[i] * 8;
                __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(x + i * D + 8 * sl));
                _mm512_storeu_pd(o, _mm512_add_pd(_mm512_loadu_pd(o), v));
            }
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s N K\n", argv[0]);
        return 2;
    }
    long n = atol(argv[1]);
    uint32_t k = (uint32_t)atol(argv[2]);
    if (n < 1 || k < 1) {
        fprintf(stderr, "N and K must be positive\n");
        return 2;
    }
    // 64 rows of slack past x for the prefetches.
    float *x = aligned_alloc(64, (size_t)(n + 64) * D * sizeof(float));
    uint32_t *idx = malloc(n * sizeof *idx);
    start = malloc((k + 1) * sizeof *start);
    next = malloc(k * sizeof *next);
    list = malloc(n * sizeof *list);
    enum { LOOPS = 6 };
    double *acc[LOOPS];
    for (int l = 0; l < LOOPS; l++) {
        acc[l] = aligned_alloc(64, (size_t)k * D * sizeof(double));
        if (!acc[l]) return 1;
    }
    if (!x || !idx || !start || !next || !list) return 1;
    srand(1);
    for (long i = 0; i < (n + 64) * D; i++) x[i] = (float)(rand() % 2001 - 1000) * 1e-3f;
    for (long i = 0; i < n; i++) idx[i] = (uint32_t)rand() % k;
    const char *names[LOOPS] = {"rows", "sorted", "windows 1024", "windows 4096",
                                "slices 512", "slices 2048"};
    double best[LOOPS];
    for (int l = 0; l < LOOPS; l++) best[l] = 1e30;
    for (int pass = 0; pass < PASSES; pass++) {
        for (int l = 0; l < LOOPS; l++) {
            memset(acc[l], 0, (size_t)k * D * sizeof(double));
            double t = now();
            switch (l) {
            case 0: rows(x, idx, n, acc[l]); break;
            case 1: sorted(x, idx, n, k, acc[l]); break;
            case 2: windows(x, idx, n, k, 1024, acc[l]); break;
            case 3: windows(x, idx, n, k, 4096, acc[l]); break;
            case 4: slices(x, idx, n, k, 512, acc[l]); break;
            case 5: slices(x, idx, n, k, 2048, acc[l]); break;
            }
            t = now() - t;
            if (t < best[l]) best[l] = t;
        }
    }
    for (int l = 0; l < LOOPS; l++) {
        // The slices' accumulators are laid out by slice: compare element by element.
        int same = 1;
        for (uint32_t j = 0; j < k; j++)
            for (int c = 0; c < D; c++) {
                double v = l < 4 ? acc[l][j * D + c]
                                 : acc[l][(size_t)(c / 8) * k * 8 + j * 8 + c % 8];
                if (v != acc[0][j * D + c]) same = 0;
            }
        printf("%-13s %9.1f us %6.2f ns a row  %s\n", names[l], best[l] * 1e6,
               best[l] * 1e9 / n, same ? "same sums" : "DIFFERENT SUMS");
    }
    return 0;
}
