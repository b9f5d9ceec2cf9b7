// driver.cpp: a stand-in for the CUDA driver library (libcuda.so.1), so that vqkit's CUDA
// backend, or any program that drives its PTX through the driver API, runs end to end on a
// machine with no GPU. Built by kernels/emu/driver.sh (g++ only); used through
// LD_LIBRARY_PATH. It exports the driver entry points cudarc calls and answers as the
// driver would, with the driver's error codes:
//
// - Device memory is host memory. Every allocation gets canary bytes on both sides, checked
//   after every launch that was handed a pointer into it and when it is freed: a kernel
//   that writes out of bounds makes the launch fail with CUDA_ERROR_ILLEGAL_ADDRESS (and,
//   as on a GPU, every call after it). Allocations beyond the device's memory
//   (VQKIT_STANDIN_MEMORY_MB, default 4096) fail with CUDA_ERROR_OUT_OF_MEMORY.
// - cuModuleLoadData takes PTX text and accepts it only if every `.entry` it declares is a
//   kernel compiled here from kernels/*.cu with the same parameter sizes, so stale PTX, or
//   a kernel renamed on one side only, fails at load. cuModuleGetFunction finds only the
//   entries of that module.
// - cuLaunchKernel runs the kernel of kernels/*.cu itself (emu.h, launch.h) with the grid
//   and block it is given, after checking them against the device's limits and the entry's
//   `.maxntid`. The parameter array is unpacked by the kernel's own C++ signature (template
//   deduction from the kernel function), each argument read at the size the kernel
//   declares, as the driver does; every pointer argument must be null or point into a live
//   allocation (a freed buffer, or a scalar where a pointer belongs, fails with
//   CUDA_ERROR_INVALID_VALUE).
// - Launches and copies run when they are issued, one at a time (one lock for the whole
//   library), so streams are trivially in order; events record the host's steady clock
//   after the work before them, so cuEventElapsedTime measures the emulation's time.
//
// What it cannot show: anything about speed on a GPU, races between blocks (blocks run one
// after another), warp-level behaviour, or out-of-bounds reads (those read canaries or
// neighbouring host memory; the parity suites catch the wrong results they give). The
// canaries are 256 bytes on each side: a write that lands further out corrupts host memory
// instead of being reported, and one that writes the canary's own byte (0xA5) goes unseen.
// PTX is checked for its entries and parameters, not for its .version and .target.
#include "emu.h"

#include "../cluster_sums.cu"
#include "../distance_argmin.cu"
#include "../ema_update.cu"

#include "launch.h"

#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define API extern "C" __attribute__((visibility("default")))

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct Context* CUcontext;
typedef struct Module* CUmodule;
typedef struct Function* CUfunction;
typedef struct Stream* CUstream;
typedef struct Event* CUevent;

enum : CUresult {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_PTX = 218,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
};

// ---------------------------------------------------------------------------------------
// The device the stand-in reports: an sm_90 part with a modest multiprocessor count. The
// limits are the CUDA limits every current GPU shares; memory is VQKIT_STANDIN_MEMORY_MB.

static const char* const DEVICE_NAME = "vqkit CUDA stand-in (kernels emulated on the host)";
static const int DRIVER_VERSION = 12080;
static const unsigned MAX_THREADS_PER_BLOCK = 1024;
static const unsigned MAX_GRID_X = 2147483647u, MAX_GRID_YZ = 65535;
static const unsigned MAX_SHARED_PER_BLOCK = 48 * 1024;

static size_t device_memory()
{
    static const size_t bytes = [] {
        const char* v = std::getenv("VQKIT_STANDIN_MEMORY_MB");
        char* end = nullptr;
        unsigned long long mb = v && *v ? std::strtoull(v, &end, 10) : 4096;
        if (v && *v && (*end || mb == 0 || mb > (1ull << 40))) {
            std::fprintf(stderr, "cuda stand-in: VQKIT_STANDIN_MEMORY_MB=%s is not a size in MB; "
                                 "using 4096\n", v);
            mb = 4096;
        }
        return (size_t)mb << 20;
    }();
    return bytes;
}

// Whether the device reports stream-ordered allocation (cuMemAllocAsync), as every GPU
// vqkit targets does, so that cudarc takes that path; VQKIT_STANDIN_MEMORY_POOLS=0 turns it
// off to exercise plain cuMemAlloc.
static bool memory_pools()
{
    const char* v = std::getenv("VQKIT_STANDIN_MEMORY_POOLS");
    return !(v && std::strcmp(v, "0") == 0);
}

static int attribute(int attr)
{
    switch (attr) {
    case 1: return MAX_THREADS_PER_BLOCK;      // MAX_THREADS_PER_BLOCK
    case 2: case 3: return 1024;               // MAX_BLOCK_DIM_X, _Y
    case 4: return 64;                         // MAX_BLOCK_DIM_Z
    case 5: return (int)MAX_GRID_X;            // MAX_GRID_DIM_X
    case 6: case 7: return (int)MAX_GRID_YZ;   // MAX_GRID_DIM_Y, _Z
    case 8: return MAX_SHARED_PER_BLOCK;       // MAX_SHARED_MEMORY_PER_BLOCK
    case 9: return 64 * 1024;                  // TOTAL_CONSTANT_MEMORY
    case 10: return 32;                        // WARP_SIZE
    case 12: return 65536;                     // MAX_REGISTERS_PER_BLOCK
    case 13: return 1000000;                   // CLOCK_RATE (kHz)
    case 16: return 4;                         // MULTIPROCESSOR_COUNT
    case 36: return 1000000;                   // MEMORY_CLOCK_RATE (kHz)
    case 37: return 256;                       // GLOBAL_MEMORY_BUS_WIDTH
    case 38: return 4 << 20;                   // L2_CACHE_SIZE
    case 39: return 2048;                      // MAX_THREADS_PER_MULTIPROCESSOR
    case 41: return 1;                         // UNIFIED_ADDRESSING
    case 75: return 9;                         // COMPUTE_CAPABILITY_MAJOR
    case 76: return 0;                         // COMPUTE_CAPABILITY_MINOR
    case 97: return 227 * 1024;                // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
    case 115: return memory_pools() ? 1 : 0;   // MEMORY_POOLS_SUPPORTED
    default: return 0;
    }
}

// ---------------------------------------------------------------------------------------
// State, all behind one lock.

static std::recursive_mutex g_mu;
#define LOCK std::lock_guard<std::recursive_mutex> lock_(g_mu)

static bool g_initialized = false;
static CUresult g_sticky = CUDA_SUCCESS;  // an illegal address poisons the context, as on a GPU
struct Context {
    int refs = 0;
};
static Context g_primary;
static thread_local CUcontext g_current = nullptr;

static CUresult fail(CUresult code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static CUresult fail(CUresult code, const char* fmt, ...)
{
    std::fprintf(stderr, "cuda stand-in: error %d: ", code);
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fputc('\n', stderr);
    return code;
}

#define REQUIRE_INIT                                          \
    do {                                                      \
        if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED; \
        if (g_sticky) return g_sticky;                        \
    } while (0)

// What needs a context current on the calling thread, as the driver does: memory, copies,
// modules, launches, streams and events.
#define REQUIRE_CONTEXT                                                              \
    do {                                                                             \
        REQUIRE_INIT;                                                                \
        if (!g_current)                                                              \
            return fail(CUDA_ERROR_INVALID_CONTEXT, "%s: no context is current on this " \
                                                    "thread", __func__);             \
    } while (0)

// Device memory: host blocks with canaries on both sides.
static const size_t GUARD = 256;
static const unsigned char CANARY = 0xA5;
struct Alloc {
    char* base;   // what malloc returned: GUARD canary bytes, then the buffer, then GUARD more
    size_t size;  // bytes the caller asked for
};
static std::map<uintptr_t, Alloc> g_allocs;  // by the buffer's first byte
static size_t g_used = 0;
// Freed blocks are held back from the host allocator for a while, so that a buffer freed
// and then used (a dangling pointer) does not find its address handed to a new buffer and
// pass as live: the last QUARANTINE_BYTES of freed blocks stay allocated, oldest released
// first.
static const size_t QUARANTINE_BYTES = 256u << 20;
static std::deque<Alloc> g_quarantine;
static size_t g_quarantined = 0;

static void quarantine(const Alloc& a)
{
    g_quarantine.push_back(a);
    g_quarantined += a.size;
    while (g_quarantined > QUARANTINE_BYTES && !g_quarantine.empty()) {
        g_quarantined -= g_quarantine.front().size;
        std::free(g_quarantine.front().base);
        g_quarantine.pop_front();
    }
}

// The allocation holding [p, p + bytes), or null.
static Alloc* find_alloc(uintptr_t p, size_t bytes)
{
    auto it = g_allocs.upper_bound(p);
    if (it == g_allocs.begin()) return nullptr;
    --it;
    uintptr_t start = it->first;
    if (p < start || p - start > it->second.size || bytes > it->second.size - (p - start))
        return nullptr;
    return &it->second;
}

static bool guards_intact(const Alloc& a)
{
    const unsigned char* lo = (const unsigned char*)a.base;
    const unsigned char* hi = lo + GUARD + a.size;
    for (size_t i = 0; i < GUARD; ++i)
        if (lo[i] != CANARY || hi[i] != CANARY) return false;
    return true;
}

// ---------------------------------------------------------------------------------------
// The kernels: one entry per `extern "C" __global__` function of kernels/*.cu, its
// parameter list deduced from the function itself.

struct Geometry {
    unsigned gx, gy, gz, block;
};

struct Kernel {
    const char* name;
    std::vector<size_t> sizes;    // sizeof each parameter, in order
    std::vector<bool> pointers;   // whether each parameter is a pointer
    // Reads the parameters from `params` and runs the grid; false on a barrier mismatch.
    bool (*run)(void** params, const Geometry& g);
};

template <class... A, size_t... I>
static auto read_args(void** params, std::index_sequence<I...>)
{
    return std::make_tuple(*static_cast<const std::remove_cv_t<A>*>(params[I])...);
}

template <auto F, class... A>
static bool run_grid(void** params, const Geometry& g, void (*)(A...))
{
    auto args = read_args<A...>(params, std::index_sequence_for<A...>{});
    return emu_launch(g.gx, g.gy, g.gz, g.block, [&args] { std::apply(F, args); });
}

template <auto F>
static bool run_kernel(void** params, const Geometry& g)
{
    return run_grid<F>(params, g, F);
}

template <class... A>
static Kernel describe(const char* name, void (*)(A...), bool (*run)(void**, const Geometry&))
{
    return Kernel{name, {sizeof(A)...}, {std::is_pointer<A>::value...}, run};
}

#define KERNEL(f) describe(#f, &f, &run_kernel<&f>)
static const std::vector<Kernel>& kernels()
{
    static const std::vector<Kernel> all = {
        KERNEL(codeword_norms),   KERNEL(distance_argmin_v1), KERNEL(distance_argmin_v2),
        KERNEL(radix_histogram),  KERNEL(scan_reduce),        KERNEL(scan_exclusive),
        KERNEL(scan_apply),       KERNEL(radix_scatter),      KERNEL(group_bounds),
        KERNEL(segment_partials), KERNEL(finalize_sums),      KERNEL(kmeans_update),
        KERNEL(ema_sizes),        KERNEL(ema_codebook),
    };
    return all;
}

static const Kernel* kernel_named(const std::string& name)
{
    for (const Kernel& k : kernels())
        if (name == k.name) return &k;
    return nullptr;
}

// ---------------------------------------------------------------------------------------
// Modules: the entries a PTX image declares, with their parameter sizes and `.maxntid`.

struct Function {
    const Kernel* kernel;
    unsigned maxntid;  // the entry's `.maxntid` (threads per block), or the device limit
    CUmodule module;
};
struct Module {
    std::vector<Function*> functions;
};
static std::set<Module*> g_modules;
static std::set<Function*> g_functions;

// The size in bytes of one `.param` declaration, or 0 if it is not understood.
static size_t param_size(const std::string& decl)
{
    static const std::pair<const char*, size_t> scalar[] = {
        {".u64", 8}, {".s64", 8}, {".b64", 8}, {".f64", 8},
        {".u32", 4}, {".s32", 4}, {".b32", 4}, {".f32", 4},
        {".u16", 2}, {".s16", 2}, {".b16", 2}, {".u8", 1}, {".s8", 1},
    };
    size_t open = decl.find('[');
    if (open != std::string::npos) return std::strtoull(decl.c_str() + open + 1, nullptr, 10);
    for (auto& [type, bytes] : scalar)
        if (decl.find(type) != std::string::npos) return bytes;
    return 0;
}

// Parses every `.entry` of a PTX image, checking each against the kernel of the same name.
static CUresult load_ptx(const std::string& ptx, Module& m)
{
    if (ptx.find(".version") == std::string::npos || ptx.find(".target") == std::string::npos)
        return fail(CUDA_ERROR_INVALID_IMAGE, "the image is not PTX text (no .version/.target)");
    size_t at = 0;
    while ((at = ptx.find(".entry ", at)) != std::string::npos) {
        size_t name0 = at + 7, paren = ptx.find('(', name0);
        size_t close = ptx.find(')', paren), body = ptx.find('{', close);
        if (paren == std::string::npos || close == std::string::npos || body == std::string::npos)
            return fail(CUDA_ERROR_INVALID_PTX, "a truncated .entry declaration");
        std::string name = ptx.substr(name0, paren - name0);
        while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.pop_back();
        const Kernel* k = kernel_named(name);
        if (!k)
            return fail(CUDA_ERROR_INVALID_IMAGE,
                        "the PTX declares entry %s, which no kernel of kernels/*.cu defines",
                        name.c_str());
        std::vector<size_t> sizes;
        std::string params = ptx.substr(paren + 1, close - paren - 1);
        for (size_t p = 0; (p = params.find(".param", p)) != std::string::npos;) {
            size_t end = params.find(',', p);
            std::string decl = params.substr(p, end == std::string::npos ? std::string::npos : end - p);
            sizes.push_back(param_size(decl));
            p = end == std::string::npos ? params.size() : end;
        }
        if (sizes != k->sizes)
            return fail(CUDA_ERROR_INVALID_IMAGE,
                        "entry %s: the PTX declares %zu parameters that do not match the "
                        "kernel's %zu in kernels/*.cu (stale PTX? run kernels/build_ptx.sh)",
                        name.c_str(), sizes.size(), k->sizes.size());
        unsigned maxntid = MAX_THREADS_PER_BLOCK;
        std::string between = ptx.substr(close, body - close);
        size_t mx = between.find(".maxntid");
        if (mx != std::string::npos) {
            unsigned x = 1, y = 1, z = 1;
            std::sscanf(between.c_str() + mx, ".maxntid %u, %u, %u", &x, &y, &z);
            maxntid = x * y * z;
        }
        Function* f = new Function{k, maxntid, &m};
        m.functions.push_back(f);
        g_functions.insert(f);
        at = body;
    }
    if (m.functions.empty()) return fail(CUDA_ERROR_INVALID_IMAGE, "the PTX declares no .entry");
    return CUDA_SUCCESS;
}

// ---------------------------------------------------------------------------------------
// Streams and events.

struct Stream {
    unsigned flags;
};
struct Event {
    unsigned flags;
    bool recorded = false;
    double seconds = 0;  // the host's steady clock when recorded
};
static std::set<Stream*> g_streams;
static std::set<Event*> g_events;

static bool stream_ok(CUstream s)
{
    // 0 is the default stream; 1 and 2 are CU_STREAM_LEGACY and CU_STREAM_PER_THREAD.
    return (uintptr_t)s <= 2 || g_streams.count(s);
}

static double now()
{
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// ---------------------------------------------------------------------------------------
// Initialisation, version, devices, contexts.

API CUresult cuInit(unsigned flags)
{
    LOCK;
    if (flags != 0) return fail(CUDA_ERROR_INVALID_VALUE, "cuInit flags must be 0");
    g_initialized = true;
    return CUDA_SUCCESS;
}

API CUresult cuDriverGetVersion(int* v)
{
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = DRIVER_VERSION;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetCount(int* n)
{
    LOCK;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!n) return CUDA_ERROR_INVALID_VALUE;
    *n = 1;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGet(CUdevice* d, int ordinal)
{
    LOCK;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetName(char* name, int len, CUdevice d)
{
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    std::snprintf(name, (size_t)len, "%s", DEVICE_NAME);
    return CUDA_SUCCESS;
}

API CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice d)
{
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    *v = attribute(attr);
    return CUDA_SUCCESS;
}

API CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d)
{
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    *bytes = device_memory();
    return CUDA_SUCCESS;
}

API CUresult cuDeviceComputeCapability(int* major, int* minor, CUdevice d)
{
    if (!major || !minor) return CUDA_ERROR_INVALID_VALUE;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    *major = attribute(75);
    *minor = attribute(76);
    return CUDA_SUCCESS;
}

API CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice d)
{
    LOCK;
    REQUIRE_INIT;
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    ++g_primary.refs;
    *ctx = &g_primary;
    return CUDA_SUCCESS;
}

API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d)
{
    LOCK;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    if (g_primary.refs <= 0) return CUDA_ERROR_INVALID_CONTEXT;
    --g_primary.refs;
    return CUDA_SUCCESS;
}

API CUresult cuCtxSetCurrent(CUcontext ctx)
{
    if (ctx && ctx != &g_primary) return CUDA_ERROR_INVALID_CONTEXT;
    g_current = ctx;
    return CUDA_SUCCESS;
}

API CUresult cuCtxGetCurrent(CUcontext* ctx)
{
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    *ctx = g_current;
    return CUDA_SUCCESS;
}

API CUresult cuCtxPushCurrent_v2(CUcontext ctx) { return cuCtxSetCurrent(ctx); }

API CUresult cuCtxPopCurrent_v2(CUcontext* ctx)
{
    if (ctx) *ctx = g_current;
    return CUDA_SUCCESS;
}

API CUresult cuCtxGetDevice(CUdevice* d)
{
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    if (!g_current) return CUDA_ERROR_INVALID_CONTEXT;
    *d = 0;
    return CUDA_SUCCESS;
}

API CUresult cuCtxSynchronize()
{
    LOCK;
    REQUIRE_CONTEXT;
    return CUDA_SUCCESS;
}

// ---------------------------------------------------------------------------------------
// Memory.

API CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total)
{
    LOCK;
    REQUIRE_CONTEXT;
    if (!free_bytes || !total) return CUDA_ERROR_INVALID_VALUE;
    *total = device_memory();
    *free_bytes = device_memory() - g_used;
    return CUDA_SUCCESS;
}

API CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytes)
{
    LOCK;
    REQUIRE_CONTEXT;
    if (!dptr || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    if (bytes > device_memory() - g_used)
        return fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc of %zu bytes: %zu of %zu in use", bytes,
                    g_used, device_memory());
    char* base = static_cast<char*>(std::aligned_alloc(GUARD, GUARD + ((bytes + GUARD - 1) / GUARD) * GUARD + GUARD));
    if (!base) return fail(CUDA_ERROR_OUT_OF_MEMORY, "host allocation of %zu bytes failed", bytes);
    std::memset(base, CANARY, GUARD);
    std::memset(base + GUARD + bytes, CANARY, GUARD);
    // A fresh allocation is not zeroed, as on a GPU: fill it with a pattern that no
    // correct program reads as data.
    std::memset(base + GUARD, 0xFF, bytes);
    uintptr_t p = (uintptr_t)(base + GUARD);
    g_allocs[p] = Alloc{base, bytes};
    g_used += bytes;
    *dptr = p;
    return CUDA_SUCCESS;
}

API CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    LOCK;
    if (!g_initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (dptr == 0) return CUDA_SUCCESS;
    auto it = g_allocs.find((uintptr_t)dptr);
    if (it == g_allocs.end())
        return fail(CUDA_ERROR_INVALID_VALUE, "cuMemFree of 0x%llx, which is not a live allocation",
                    dptr);
    bool intact = guards_intact(it->second);
    quarantine(it->second);
    g_used -= it->second.size;
    g_allocs.erase(it);
    if (!intact) {
        g_sticky = CUDA_ERROR_ILLEGAL_ADDRESS;
        return fail(CUDA_ERROR_ILLEGAL_ADDRESS, "the buffer at 0x%llx was written out of bounds",
                    dptr);
    }
    return g_sticky;
}

API CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream s)
{
    LOCK;
    if (!stream_ok(s)) return CUDA_ERROR_INVALID_HANDLE;
    return cuMemFree_v2(dptr);
}

API CUresult cuMemAllocAsync(CUdeviceptr* dptr, size_t bytes, CUstream s)
{
    LOCK;
    if (!memory_pools()) return CUDA_ERROR_NOT_SUPPORTED;
    if (!stream_ok(s)) return CUDA_ERROR_INVALID_HANDLE;
    return cuMemAlloc_v2(dptr, bytes);
}

static CUresult copy(void* dst, const void* src, size_t bytes)
{
    if (bytes) std::memmove(dst, src, bytes);
    return CUDA_SUCCESS;
}

static CUresult device_range(CUdeviceptr p, size_t bytes, const char* what)
{
    if (!find_alloc((uintptr_t)p, bytes))
        return fail(CUDA_ERROR_INVALID_VALUE,
                    "%s: [0x%llx, +%zu bytes) is not inside a live allocation", what, p, bytes);
    return CUDA_SUCCESS;
}

API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t bytes)
{
    LOCK;
    REQUIRE_CONTEXT;
    if (CUresult r = device_range(dst, bytes, "cuMemcpyHtoD")) return r;
    if (!src && bytes) return CUDA_ERROR_INVALID_VALUE;
    return copy((void*)dst, src, bytes);
}

API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t bytes, CUstream s)
{
    LOCK;
    if (!stream_ok(s)) return CUDA_ERROR_INVALID_HANDLE;
    return cuMemcpyHtoD_v2(dst, src, bytes);
}

API CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t bytes)
{
    LOCK;
    REQUIRE_CONTEXT;
    if (CUresult r = device_range(src, bytes, "cuMemcpyDtoH")) return r;
    if (!dst && bytes) return CUDA_ERROR_INVALID_VALUE;
    return copy(dst, (const void*)src, bytes);
}

API CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t bytes, CUstream s)
{
    LOCK;
    if (!stream_ok(s)) return CUDA_ERROR_INVALID_HANDLE;
    return cuMemcpyDtoH_v2(dst, src, bytes);
}

API CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes)
{
    LOCK;
    REQUIRE_CONTEXT;
    if (CUresult r = device_range(dst, bytes, "cuMemcpyDtoD")) return r;
    if (CUresult r = device_range(src, bytes, "cuMemcpyDtoD")) return r;
    return copy((void*)dst, (const void*)src, bytes);
}

API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream s)
{
    LOCK;
    if (!stream_ok(s)) return CUDA_ERROR_INVALID_HANDLE;
    return cuMemcpyDtoD_v2(dst, src, bytes);
}

API CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n)
{
    LOCK;
    REQUIRE_CONTEXT;
    if (CUresult r = device_range(dst, n, "cuMemsetD8")) return r;
    std::memset((void*)dst, v, n);
    return CUDA_SUCCESS;
}

API CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream s)
{
    LOCK;
    if (!stream_ok(s)) return CUDA_ERROR_INVALID_HANDLE;
    return cuMemsetD8_v2(dst, v, n);
}

API CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned v, size_t n)
{
    LOCK;
    REQUIRE_CONTEXT;
    if (dst % 4) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = device_range(dst, n * 4, "cuMemsetD32")) return r;
    unsigned* p = (unsigned*)dst;
    for (size_t i = 0; i < n; ++i) p[i] = v;
    return CUDA_SUCCESS;
}

API CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, CUstream s)
{
    LOCK;
    if (!stream_ok(s)) return CUDA_ERROR_INVALID_HANDLE;
    return cuMemsetD32_v2(dst, v, n);
}

// ---------------------------------------------------------------------------------------
// Modules and functions.

API CUresult cuModuleLoadData(CUmodule* module, const void* image)
{
    LOCK;
    REQUIRE_CONTEXT;
    if (!module || !image) return CUDA_ERROR_INVALID_VALUE;
    Module* m = new Module;
    if (CUresult r = load_ptx(static_cast<const char*>(image), *m)) {
        for (Function* f : m->functions) {
            g_functions.erase(f);
            delete f;
        }
        delete m;
        return r;
    }
    g_modules.insert(m);
    *module = m;
    return CUDA_SUCCESS;
}

API CUresult cuModuleLoadDataEx(CUmodule* module, const void* image, unsigned, void*, void**)
{
    return cuModuleLoadData(module, image);
}

API CUresult cuModuleUnload(CUmodule m)
{
    LOCK;
    if (!g_modules.count(m)) return CUDA_ERROR_INVALID_HANDLE;
    for (Function* f : m->functions) {
        g_functions.erase(f);
        delete f;
    }
    g_modules.erase(m);
    delete m;
    return CUDA_SUCCESS;
}

API CUresult cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name)
{
    LOCK;
    REQUIRE_CONTEXT;
    if (!f || !name) return CUDA_ERROR_INVALID_VALUE;
    if (!g_modules.count(m)) return CUDA_ERROR_INVALID_HANDLE;
    for (Function* fn : m->functions)
        if (std::strcmp(fn->kernel->name, name) == 0) {
            *f = fn;
            return CUDA_SUCCESS;
        }
    return fail(CUDA_ERROR_NOT_FOUND, "cuModuleGetFunction: the module has no entry %s", name);
}

API CUresult cuFuncGetAttribute(int* v, int attr, CUfunction f)
{
    LOCK;
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    if (!g_functions.count(f)) return CUDA_ERROR_INVALID_HANDLE;
    *v = attr == 0 ? (int)f->maxntid : 0;  // CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK
    return CUDA_SUCCESS;
}

API CUresult cuFuncSetAttribute(CUfunction f, int, int)
{
    LOCK;
    return g_functions.count(f) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

API CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                            unsigned by, unsigned bz, unsigned shared, CUstream s, void** params,
                            void** extra)
{
    LOCK;
    REQUIRE_CONTEXT;
    if (!g_functions.count(f)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuLaunchKernel: not a function of a loaded module");
    const Kernel& k = *f->kernel;
    if (!stream_ok(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (extra) return fail(CUDA_ERROR_NOT_SUPPORTED, "%s: launch `extra` parameters are not supported", k.name);
    if (!params && !k.sizes.empty()) return fail(CUDA_ERROR_INVALID_VALUE, "%s: no parameters", k.name);
    if (gx == 0 || gy == 0 || gz == 0 || gx > MAX_GRID_X || gy > MAX_GRID_YZ || gz > MAX_GRID_YZ)
        return fail(CUDA_ERROR_INVALID_VALUE, "%s: grid (%u, %u, %u) is empty or beyond the limits",
                    k.name, gx, gy, gz);
    if (bx == 0 || by == 0 || bz == 0 || (unsigned long long)bx * by * bz > MAX_THREADS_PER_BLOCK)
        return fail(CUDA_ERROR_INVALID_VALUE, "%s: block (%u, %u, %u) is empty or too large",
                    k.name, bx, by, bz);
    if (by != 1 || bz != 1)
        return fail(CUDA_ERROR_NOT_SUPPORTED, "%s: the emulation runs 1-D blocks only", k.name);
    if ((unsigned long long)bx * by * bz > f->maxntid)
        return fail(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
                    "%s: %u threads per block, beyond the kernel's .maxntid %u", k.name, bx * by * bz,
                    f->maxntid);
    if (shared > MAX_SHARED_PER_BLOCK)
        return fail(CUDA_ERROR_INVALID_VALUE, "%s: %u bytes of dynamic shared memory", k.name, shared);
    std::vector<Alloc*> touched;
    for (size_t i = 0; i < k.sizes.size(); ++i) {
        if (!k.pointers[i]) continue;
        uintptr_t p = *static_cast<const uintptr_t*>(params[i]);
        if (p == 0) continue;
        Alloc* a = find_alloc(p, 0);
        if (!a)
            return fail(CUDA_ERROR_INVALID_VALUE,
                        "%s: parameter %zu is 0x%llx, which points into no live allocation "
                        "(a freed buffer, or a value where a pointer belongs)",
                        k.name, i, (unsigned long long)p);
        touched.push_back(a);
    }
    if (!k.run(params, Geometry{gx, gy, gz, bx}))
        return fail(CUDA_ERROR_LAUNCH_FAILED, "%s: threads of a block diverged at a barrier", k.name);
    for (Alloc* a : touched)
        if (!guards_intact(*a)) {
            g_sticky = CUDA_ERROR_ILLEGAL_ADDRESS;
            return fail(CUDA_ERROR_ILLEGAL_ADDRESS,
                        "%s wrote out of the bounds of the %zu-byte buffer at %p", k.name, a->size,
                        (void*)(a->base + GUARD));
        }
    return CUDA_SUCCESS;
}

// ---------------------------------------------------------------------------------------
// Streams and events.

API CUresult cuStreamCreate(CUstream* s, unsigned flags)
{
    LOCK;
    REQUIRE_CONTEXT;
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    Stream* st = new Stream{flags};
    g_streams.insert(st);
    *s = st;
    return CUDA_SUCCESS;
}

API CUresult cuStreamCreateWithPriority(CUstream* s, unsigned flags, int)
{
    return cuStreamCreate(s, flags);
}

API CUresult cuStreamDestroy_v2(CUstream s)
{
    LOCK;
    if (!g_streams.erase(s)) return CUDA_ERROR_INVALID_HANDLE;
    delete s;
    return CUDA_SUCCESS;
}

API CUresult cuStreamSynchronize(CUstream s)
{
    LOCK;
    REQUIRE_CONTEXT;
    return stream_ok(s) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

API CUresult cuStreamQuery(CUstream s) { return cuStreamSynchronize(s); }

API CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned)
{
    LOCK;
    REQUIRE_CONTEXT;
    if (!stream_ok(s) || !g_events.count(e)) return CUDA_ERROR_INVALID_HANDLE;
    return CUDA_SUCCESS;
}

API CUresult cuEventCreate(CUevent* e, unsigned flags)
{
    LOCK;
    REQUIRE_CONTEXT;
    if (!e) return CUDA_ERROR_INVALID_VALUE;
    Event* ev = new Event{flags};
    g_events.insert(ev);
    *e = ev;
    return CUDA_SUCCESS;
}

API CUresult cuEventRecord(CUevent e, CUstream s)
{
    LOCK;
    REQUIRE_CONTEXT;
    if (!g_events.count(e) || !stream_ok(s)) return CUDA_ERROR_INVALID_HANDLE;
    e->recorded = true;
    e->seconds = now();
    return CUDA_SUCCESS;
}

API CUresult cuEventRecordWithFlags(CUevent e, CUstream s, unsigned) { return cuEventRecord(e, s); }

API CUresult cuEventSynchronize(CUevent e)
{
    LOCK;
    REQUIRE_CONTEXT;
    return g_events.count(e) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

API CUresult cuEventQuery(CUevent e) { return cuEventSynchronize(e); }

API CUresult cuEventElapsedTime(float* ms, CUevent start, CUevent end)
{
    LOCK;
    REQUIRE_CONTEXT;
    if (!ms) return CUDA_ERROR_INVALID_VALUE;
    if (!g_events.count(start) || !g_events.count(end)) return CUDA_ERROR_INVALID_HANDLE;
    const unsigned DISABLE_TIMING = 2;
    if ((start->flags | end->flags) & DISABLE_TIMING) return CUDA_ERROR_INVALID_HANDLE;
    if (!start->recorded || !end->recorded) return CUDA_ERROR_NOT_READY;
    *ms = (float)((end->seconds - start->seconds) * 1e3);
    return CUDA_SUCCESS;
}

API CUresult cuEventElapsedTime_v2(float* ms, CUevent start, CUevent end)
{
    return cuEventElapsedTime(ms, start, end);
}

API CUresult cuEventDestroy_v2(CUevent e)
{
    LOCK;
    if (!g_events.erase(e)) return CUDA_ERROR_INVALID_HANDLE;
    delete e;
    return CUDA_SUCCESS;
}

// ---------------------------------------------------------------------------------------
// Error names, as the driver spells them.

static const char* error_name(CUresult r)
{
    switch (r) {
    case CUDA_SUCCESS: return "CUDA_SUCCESS";
    case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
    case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
    case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
    case CUDA_ERROR_INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
    case CUDA_ERROR_INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
    case CUDA_ERROR_INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
    case CUDA_ERROR_INVALID_PTX: return "CUDA_ERROR_INVALID_PTX";
    case CUDA_ERROR_INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
    case CUDA_ERROR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
    case CUDA_ERROR_NOT_READY: return "CUDA_ERROR_NOT_READY";
    case CUDA_ERROR_ILLEGAL_ADDRESS: return "CUDA_ERROR_ILLEGAL_ADDRESS";
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES";
    case CUDA_ERROR_LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
    case CUDA_ERROR_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
    default: return nullptr;
    }
}

API CUresult cuGetErrorName(CUresult r, const char** s)
{
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    *s = error_name(r);
    return *s ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

API CUresult cuGetErrorString(CUresult r, const char** s)
{
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    *s = error_name(r);
    return *s ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
