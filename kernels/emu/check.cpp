// check.cpp: runs every kernel of kernels/*.cu under emu.h against a plain double-precision
// reference, with the launch geometry and call sequence of crates/vqkit/src/backend/cuda/.
// Build and run: kernels/emu/run.sh. Exits non-zero on the first mismatch.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "launch.h"

// One 1-D launch, as every vqkit kernel uses; a barrier mismatch ends the check.
static void launch(unsigned grid, unsigned block, const std::function<void()>& kernel)
{
    if (!emu_launch(grid, 1, 1, block, kernel)) std::exit(1);
}

// Kernel signatures, as in kernels/*.cu.
struct ArgminShape { unsigned n, k, d; };
struct RadixPass { unsigned n, k, shift, mask, tiles; };
struct SegShape { unsigned k, d; };
struct EmaShape { unsigned k, d; float decay, eps; };
extern "C" {
void codeword_norms(const float*, unsigned, unsigned, float*);
void distance_argmin_v1(const float*, const float*, const float*, ArgminShape, unsigned*, float*);
void distance_argmin_v2(const float*, const float*, const float*, ArgminShape, unsigned*, float*);
void radix_histogram(const unsigned*, RadixPass, unsigned*);
void scan_reduce(const unsigned*, unsigned, unsigned, unsigned*);
void scan_exclusive(const unsigned*, unsigned, unsigned, unsigned*);
void scan_apply(const unsigned*, unsigned, unsigned, const unsigned*, unsigned*);
void radix_scatter(const unsigned*, const unsigned*, RadixPass, const unsigned*, unsigned*, unsigned*);
void group_bounds(const unsigned*, unsigned, unsigned, unsigned*, unsigned*);
void segment_partials(const float*, const float*, const unsigned*, const unsigned*, const unsigned*, SegShape, double*);
void finalize_sums(const double*, const unsigned*, SegShape, float*, float*);
void kmeans_update(const float*, const unsigned*, SegShape, float*);
void ema_sizes(const unsigned*, EmaShape, float*, double*);
void ema_codebook(const double*, const unsigned*, const float*, const double*, EmaShape, float*, float*);
}

static unsigned cdiv(unsigned long long a, unsigned b) { return (unsigned)((a + b - 1) / b); }
static int failures = 0;
#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (!(cond)) {                                                    \
            std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);     \
            std::fprintf(stderr, __VA_ARGS__);                            \
            std::fprintf(stderr, "\n");                                   \
            if (++failures > 20) std::exit(1);                            \
        }                                                                 \
    } while (0)

static std::vector<float> data(std::mt19937_64& rng, size_t len)
{
    std::normal_distribution<float> nd(0.f, 1.f);
    float off = nd(rng);
    std::vector<float> v(len);
    for (auto& x : v) x = nd(rng) + off;
    return v;
}

static void scan(const unsigned* in, unsigned len, unsigned divisor, unsigned* out)
{
    unsigned blocks = std::max(1u, cdiv(len, 4096));
    std::vector<unsigned> sums(blocks), offs(blocks + 1);
    launch(blocks, 1024, [&] { scan_reduce(in, len, divisor, sums.data()); });
    launch(1, 1024, [&] { scan_exclusive(sums.data(), blocks, 1, offs.data()); });
    launch(blocks, 1024, [&] { scan_apply(in, len, divisor, offs.data(), out); });
}

struct Grouping {
    std::vector<unsigned> order, offsets, counts, chunk_offsets;
};

static Grouping group(const std::vector<unsigned>& idx, unsigned k)
{
    unsigned n = idx.size();
    unsigned bits = 32 - __builtin_clz(k);
    unsigned passes = (bits + 7) / 8, dbits = (bits + passes - 1) / passes, bins = 1u << dbits;
    unsigned tiles = cdiv(n, 256);
    std::vector<unsigned> ka(n), va(n), kb(n), vb(n), hist(bins * tiles), hoff(bins * tiles + 1);
    const unsigned* sk = idx.data();
    const unsigned* sv = nullptr;
    unsigned *dk = ka.data(), *dv = va.data();
    for (unsigned pass = 0; pass < passes; ++pass) {
        RadixPass p{n, k, pass * dbits, bins - 1, tiles};
        launch(tiles, 256, [&] { radix_histogram(sk, p, hist.data()); });
        scan(hist.data(), bins * tiles, 1, hoff.data());
        launch(tiles, 256, [&] { radix_scatter(sk, sv, p, hoff.data(), dk, dv); });
        sk = dk;
        sv = dv;
        if (dk == ka.data()) { dk = kb.data(); dv = vb.data(); } else { dk = ka.data(); dv = va.data(); }
    }
    Grouping g;
    g.order.assign(sv ? sv : nullptr, sv ? sv + n : nullptr);
    g.offsets.resize(k + 1);
    g.counts.resize(k);
    g.chunk_offsets.resize(k + 1);
    launch(cdiv(k + 1, 256), 256, [&] { group_bounds(sk, n, k, g.offsets.data(), g.counts.data()); });
    scan(g.counts.data(), k, 256, g.chunk_offsets.data());
    return g;
}

static void check_argmin(unsigned n, unsigned k, unsigned d, unsigned seed, int variant)
{
    std::mt19937_64 rng(seed);
    auto x = data(rng, (size_t)n * d);
    auto c = data(rng, (size_t)k * d);
    if (k >= 2) std::copy(c.begin(), c.begin() + d, c.end() - d);  // duplicate of 0, last
    std::vector<float> norms(k, NAN), dist(n, NAN);
    std::vector<unsigned> idx(n, ~0u);
    launch(cdiv(k, 256), 256, [&] { codeword_norms(c.data(), k, d, norms.data()); });
    double cmax = 0;
    for (unsigned j = 0; j < k; ++j) {
        double w = 0;
        for (unsigned t = 0; t < d; ++t) w += (double)c[j * d + t] * c[j * d + t];
        cmax = std::max(cmax, w);
        CHECK(std::fabs(norms[j] - w) <= 1e-5 * w + 1e-6, "norm %u: %g vs %g", j, norms[j], w);
    }
    ArgminShape s{n, k, d};
    if (variant == 1)
        launch(cdiv(n, 256), 256, [&] { distance_argmin_v1(x.data(), c.data(), norms.data(), s, idx.data(), dist.data()); });
    else
        launch(cdiv(n, 128), 256, [&] { distance_argmin_v2(x.data(), c.data(), norms.data(), s, idx.data(), dist.data()); });
    for (unsigned i = 0; i < n; ++i) {
        double best = INFINITY, xn = 0;
        auto sq = [&](unsigned j) {
            double acc = 0;
            for (unsigned t = 0; t < d; ++t) {
                double e = (double)x[i * d + t] - c[j * d + t];
                acc += e * e;
            }
            return acc;
        };
        for (unsigned t = 0; t < d; ++t) xn += (double)x[i * d + t] * x[i * d + t];
        for (unsigned j = 0; j < k; ++j) best = std::min(best, sq(j));
        unsigned j = idx[i];
        CHECK(j < k, "v%d %ux%ux%u row %u: index %u", variant, n, k, d, i, j);
        if (j >= k) continue;
        CHECK(!(k >= 2 && j == k - 1), "v%d %ux%ux%u row %u: chose the duplicate", variant, n, k, d, i);
        double tol = 2e-5 * (xn + cmax) + 1e-6, ex = sq(j);
        CHECK(ex <= best + tol, "v%d %ux%ux%u row %u: chose %u at %g, min %g", variant, n, k, d, i, j, ex, best);
        CHECK(std::fabs(dist[i] - ex) <= tol && dist[i] >= 0, "v%d row %u: dist %g vs %g", variant, i, dist[i], ex);
    }
}

static std::vector<unsigned> codes(std::mt19937_64& rng, unsigned n, unsigned k, bool invalid)
{
    unsigned used = std::max(1u, k / 2);
    std::vector<unsigned> v(n);
    for (auto& c : v) c = (unsigned)(rng() % used) * (k / used);
    if (invalid)
        for (unsigned i = 0; i < n; i += 7) v[i] = (i % 14 == 0) ? k : 0xffffffffu;
    return v;
}

// Returns all outputs' bits, for the determinism check.
static std::vector<unsigned> check_cluster(unsigned n, unsigned k, unsigned d, unsigned seed, bool invalid)
{
    std::mt19937_64 rng(seed);
    auto x = data(rng, (size_t)n * d);
    auto idx = codes(rng, n, k, invalid);
    std::vector<float> dist(n);
    for (auto& v : dist) v = std::uniform_real_distribution<float>(0, 4)(rng);
    Grouping g = group(idx, k);
    // The order must be the stable grouping, exactly.
    std::vector<unsigned> want;
    std::vector<unsigned> wc(k, 0);
    for (unsigned j = 0; j < k; ++j)
        for (unsigned i = 0; i < n; ++i)
            if (idx[i] == j) { want.push_back(i); ++wc[j]; }
    CHECK(std::equal(want.begin(), want.end(), g.order.begin()), "%ux%ux%u: order is not the stable grouping", n, k, d);
    CHECK(g.counts == wc, "%ux%ux%u: counts differ", n, k, d);
    unsigned maxc = cdiv(n, 256) + k;
    SegShape s{k, d};
    std::vector<double> part((size_t)maxc * (d + 1), NAN);
    std::vector<float> sums((size_t)k * d, NAN), ds(k, NAN);
    unsigned block = std::min(256u, std::max(32u, cdiv(d + 1, 32) * 32));
    launch(maxc, block, [&] { segment_partials(x.data(), dist.data(), g.order.data(), g.offsets.data(), g.chunk_offsets.data(), s, part.data()); });
    launch(cdiv((unsigned long long)k * (d + 1), 256), 256, [&] { finalize_sums(part.data(), g.chunk_offsets.data(), s, sums.data(), ds.data()); });
    for (unsigned j = 0; j < k; ++j) {
        double wd = 0, ad = 0;
        for (unsigned i = 0; i < n; ++i) if (idx[i] == j) { wd += dist[i]; ad += std::fabs(dist[i]); }
        CHECK(std::fabs(ds[j] - wd) <= 1e-5 * ad + 1e-6, "dist_sums[%u] %g vs %g", j, ds[j], wd);
        for (unsigned t = 0; t < d; ++t) {
            double w = 0, a = 0;
            for (unsigned i = 0; i < n; ++i) if (idx[i] == j) { w += x[i * d + t]; a += std::fabs(x[i * d + t]); }
            CHECK(std::fabs(sums[j * d + t] - w) <= 1e-5 * a + 1e-6, "%ux%ux%u sums[%u,%u] %g vs %g", n, k, d, j, t, sums[j * d + t], w);
        }
    }
    auto old = data(rng, (size_t)k * d);
    auto cent = old;
    launch(cdiv((unsigned long long)k * d, 256), 256, [&] { kmeans_update(sums.data(), g.counts.data(), s, cent.data()); });
    for (unsigned j = 0; j < k; ++j)
        for (unsigned t = 0; t < d; ++t) {
            float w = g.counts[j] ? (float)((double)sums[j * d + t] * (1.0 / g.counts[j])) : old[j * d + t];
            CHECK(cent[j * d + t] == w, "centroid[%u,%u]", j, t);
        }
    std::vector<unsigned> bits(g.order);
    for (float v : sums) { unsigned b; std::memcpy(&b, &v, 4); bits.push_back(b); }
    for (float v : ds) { unsigned b; std::memcpy(&b, &v, 4); bits.push_back(b); }
    return bits;
}

static std::vector<unsigned> check_ema(unsigned n, unsigned k, unsigned d, unsigned seed)
{
    std::mt19937_64 rng(seed);
    auto x = data(rng, (size_t)n * d);
    auto idx = codes(rng, n, k, false);
    std::vector<float> size(k);
    for (auto& v : size) v = std::uniform_real_distribution<float>(0, 3)(rng);
    auto esum = data(rng, (size_t)k * d), code = data(rng, (size_t)k * d);
    auto size0 = size, esum0 = esum, code0 = code;
    EmaShape s{k, d, 0.8f, 1e-3f};
    Grouping g = group(idx, k);
    unsigned maxc = cdiv(n, 256) + k;
    std::vector<double> part((size_t)maxc * d, NAN), total(1, NAN);
    unsigned block = std::min(256u, std::max(32u, cdiv(d, 32) * 32));
    SegShape ss{k, d};
    launch(maxc, block, [&] { segment_partials(x.data(), nullptr, g.order.data(), g.offsets.data(), g.chunk_offsets.data(), ss, part.data()); });
    launch(1, 1024, [&] { ema_sizes(g.counts.data(), s, size.data(), total.data()); });
    launch(cdiv((unsigned long long)k * d, 256), 256, [&] { ema_codebook(part.data(), g.chunk_offsets.data(), size.data(), total.data(), s, esum.data(), code.data()); });
    double dec = 0.8, eps = 1e-3, tot = 0;
    std::vector<double> ws(k);
    for (unsigned j = 0; j < k; ++j) { ws[j] = dec * size0[j] + (1 - dec) * g.counts[j]; tot += ws[j]; }
    for (unsigned j = 0; j < k; ++j) {
        CHECK(std::fabs(size[j] - ws[j]) <= 1e-5 * (ws[j] + 1), "size[%u]", j);
        double sm = (ws[j] + eps) / (tot + k * eps) * tot;
        for (unsigned t = 0; t < d; ++t) {
            double b = 0, a = 0;
            for (unsigned i = 0; i < n; ++i) if (idx[i] == j) { b += x[i * d + t]; a += std::fabs(x[i * d + t]); }
            double we = dec * esum0[j * d + t] + (1 - dec) * b, scale = std::fabs(esum0[j * d + t]) + a;
            CHECK(std::fabs(esum[j * d + t] - we) <= 1e-5 * scale + 1e-6, "esum[%u,%u] %g vs %g", j, t, esum[j * d + t], we);
            double wcode = we / sm;
            CHECK(std::fabs(code[j * d + t] - wcode) <= 1e-5 * (scale / sm + std::fabs(wcode)) + 1e-6, "code[%u,%u]", j, t);
        }
    }
    std::vector<unsigned> bits;
    for (float v : code) { unsigned b; std::memcpy(&b, &v, 4); bits.push_back(b); }
    for (float v : size) { unsigned b; std::memcpy(&b, &v, 4); bits.push_back(b); }
    return bits;
}

int main()
{
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    const unsigned sides[] = {1, 2, 3, 7, 16, 33, 65, 129, 257};
    unsigned seed = 1;
    for (unsigned n : sides)
        for (unsigned k : {1u, 3u, 65u, 129u, 257u})
            for (unsigned d : {1u, 3u, 8u, 33u}) {
                if (n * k * d > 3000000) continue;
                check_argmin(n, k, d, seed, 2);
                if (n <= 65) check_argmin(n, k, d, seed, 1);
                ++seed;
            }
    check_argmin(300, 300, 130, 7, 2);
    check_argmin(129, 1100, 9, 8, 2);
    std::printf("argmin ok\n");
    for (unsigned n : {0u, 1u, 5u, 255u, 256u, 257u, 700u, 3000u})
        for (unsigned k : {1u, 2u, 255u, 256u, 300u})
            for (unsigned d : {1u, 5u, 40u}) {
                auto a = check_cluster(n, k, d, seed, (n % 2) == 1);
                auto b = check_cluster(n, k, d, seed, (n % 2) == 1);
                CHECK(a == b, "cluster %ux%ux%u: two runs differ", n, k, d);
                auto e1 = check_ema(n, k, d, seed);
                auto e2 = check_ema(n, k, d, seed);
                CHECK(e1 == e2, "ema %ux%ux%u: two runs differ", n, k, d);
                ++seed;
            }
    // A collapsed codebook: one code takes every row (many chunks for one code).
    check_cluster(5000, 3, 2, 99, false);
    // More than 8 bits of code: two radix passes; > 4096 scan entries: several scan blocks.
    check_cluster(6000, 70000, 2, 5, true);
    check_ema(3000, 1025, 3, 6);
    std::printf("cluster_sums, kmeans_update, ema_update ok\n");
    if (failures) {
        std::printf("%d failures\n", failures);
        return 1;
    }
    std::printf("emulation: all kernels match the reference\n");
    return 0;
}
