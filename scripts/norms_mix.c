// What a pass of row norms costs on this CPU, with the rows in L1: the pass that
// `distance_argmin.rs` runs after its kernel for rows read in place (`finish`,
// `norms16_rows`), which sums each row's squares in 16 partial sums, a multiply and an add
// apiece (two roundings, so no FMA). Sixteen rows of D floats, eight rows' chains at a time,
// in each form (docs/performance.md, "On Zen 4, the rows' norms at k = 16"):
//
//     gcc -O3 -ffp-contract=off -mavx512f scripts/norms_mix.c -o /tmp/norms_mix && /tmp/norms_mix
//
//   zmm mul+add  one zmm of partials per row: multiply, then add (the crate's form)
//   ymm mul+add  two ymm of partials per row: the same operations on half-width vectors
//   zmm mul      the multiplies alone (each chain a running product)
//   zmm add      the adds alone (each chain a running sum of x)
//   zmm fma      one FMA per step (other bits than the crate's; for the pipes only)
// Each form runs REPS times over the same 16 rows, the forms alternating, three rounds;
// printed in ns a row.
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define D 128
#define REPS 2000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

enum form { ZMM_MUL_ADD, YMM_MUL_ADD, ZMM_MUL, ZMM_ADD, ZMM_FMA, FORMS };
static const char *names[FORMS] = {"zmm mul+add", "ymm mul+add", "zmm mul", "zmm add",
                                   "zmm fma"};

// Eight rows from `x` (rows D floats apart), their partials into `out` (8 x 16 floats);
// inlined into one function per form, so that each loop is compiled for its form alone.
static inline __attribute__((always_inline)) void eight_rows(enum form f, const float *x,
                                                             float *out) {
    __m512 z[8];
    __m256 lo[8], hi[8];
    for (int i = 0; i < 8; i++) {
        z[i] = f == ZMM_MUL ? _mm512_set1_ps(1.0f) : _mm512_setzero_ps();
        lo[i] = hi[i] = _mm256_setzero_ps();
    }
    for (int t = 0; t < D; t += 16) {
        for (int i = 0; i < 8; i++) {
            const float *p = x + i * D + t;
            if (f == YMM_MUL_ADD) {
                __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
                lo[i] = _mm256_add_ps(lo[i], _mm256_mul_ps(a, a));
                hi[i] = _mm256_add_ps(hi[i], _mm256_mul_ps(b, b));
                continue;
            }
            __m512 v = _mm512_loadu_ps(p);
            switch (f) {
            case ZMM_MUL_ADD: z[i] = _mm512_add_ps(z[i], _mm512_mul_ps(v, v)); break;
            case ZMM_MUL: z[i] = _mm512_mul_ps(z[i], v); break;
            case ZMM_ADD: z[i] = _mm512_add_ps(z[i], v); break;
            default: z[i] = _mm512_fmadd_ps(v, v, z[i]); break;
            }
        }
    }
    for (int i = 0; i < 8; i++) {
        if (f == YMM_MUL_ADD) {
            _mm256_storeu_ps(out + 16 * i, lo[i]);
            _mm256_storeu_ps(out + 16 * i + 8, hi[i]);
        } else {
            _mm512_storeu_ps(out + 16 * i, z[i]);
        }
    }
}

#define FORM(name, f)                                                                     \
    __attribute__((noinline)) static void name(const float *x, float *out) {            \
        eight_rows(f, x, out);                                                            \
    }
FORM(zmm_mul_add, ZMM_MUL_ADD)
FORM(ymm_mul_add, YMM_MUL_ADD)
FORM(zmm_mul, ZMM_MUL)
FORM(zmm_add, ZMM_ADD)
FORM(zmm_fma, ZMM_FMA)
static void (*const forms[FORMS])(const float *, float *) = {zmm_mul_add, ymm_mul_add, zmm_mul,
                                                             zmm_add, zmm_fma};

int main(void) {
    float *x = aligned_alloc(64, 16 * D * sizeof(float));
    float out[8 * 16];
    double sink = 0;
    srand(1);
    // Values near 1: no product or running product leaves the normal range.
    for (int i = 0; i < 16 * D; i++) {
        x[i] = 1.0f + (float)(rand() % 1000) * 1e-7f;
    }
    for (int round = 0; round < 3; round++) {
        for (int f = 0; f < FORMS; f++) {
            double t0 = now();
            for (long r = 0; r < REPS; r++) {
                forms[f](x, out);
                forms[f](x + 8 * D, out);
                sink += out[r & 127];
            }
            printf("%s %.2f ns/row%s", names[f], (now() - t0) / REPS / 16 * 1e9,
                   f + 1 < FORMS ? ", " : "\n");
        }
    }
    return sink == 42.0;
}
