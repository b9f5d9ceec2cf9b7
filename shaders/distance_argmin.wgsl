// distance_argmin: the fused nearest-codeword search.
//
// x: (n, d) row-major f32, codebook: (k, d) row-major f32, norms: (k) f32 = |c_j|^2;
// out idx: (n) u32, dist: (n) f32.
//
//   score_ij = |c_j|^2 - 2 x_i.c_j        (|x_i|^2 is constant along a row: added last)
//   idx_i    = argmin_j score_ij          (lowest j wins a tie)
//   dist_i   = max(score_i,idx_i + |x_i|^2, 0)
//
// Fusion: scores live in registers only and are folded into a running (best, index) pair
// as soon as they are computed; the n x k distance matrix never reaches device memory
// (at n = 1e6, k = 4096 it would be 16 GB written and read back for 8 MB of output).
//
// Variants, both checked against the f64 reference by the test suite:
// - v1 `distance_argmin_v1`: the readable reference. One invocation per row, loops over
//   every codeword and every dimension straight from device memory. Workgroup 64,
//   dispatch ceil(n / 64) workgroups.
// - v2 `distance_argmin_v2` (shipped): a GEMM-style tile. A 16 x 16 workgroup owns a block
//   of BM = 64 rows and walks the codebook in tiles of BN = 64 codewords; each step of
//   BD = 16 dimensions stages the x block and the codebook tile in workgroup memory
//   (coalesced loads: 16 consecutive lanes read 16 consecutive floats of one row), and each
//   invocation accumulates a 4 x 4 register micro-tile (rows ty + 16 r, codes tx + 16 c):
//   16 FMAs per 8 workgroup-memory loads. After each codebook tile the 16 scores fold into
//   four per-row running minima in registers; at the end the 16 candidates of each row
//   (one per tx) are reduced through workgroup memory in tx order, lowest index winning a
//   tie. Dispatch ceil(n / 64) workgroups.
//
// Chunking (both variants): when the codebook exceeds one storage binding, or would make
// one invocation loop more than ~60,000 times (llvmpipe silently ends an invocation's
// loops after 65535 iterations in total; real GPUs' watchdogs also favour short
// dispatches), the host calls the kernel once per codebook chunk. Each pair's arithmetic
// is unchanged, so the results are bit-identical to a single call. Flag HAS_PREV seeds each row's running minimum from
// idx/dist (where the previous chunk left its best score, not yet a distance); flag LAST
// turns the best score into the distance. `j0` is the global index of the chunk's first
// codeword. The *_base fields locate the dispatch's first element inside each bound window
// (storage offsets must be aligned, so windows start a little before the data).
//
// Dispatches with more than max_compute_workgroups_per_dimension workgroups are folded
// into 2-D (x, y); the linear workgroup id is x + y * num_workgroups.x.

struct Params {
    n: u32,        // rows in this dispatch
    k: u32,        // codewords in this chunk
    d: u32,
    x_base: u32,   // element offset of row 0 in the x window
    c_base: u32,   // element offset of codeword 0 in the codebook window
    nrm_base: u32, // element offset of norm 0 in the norms window
    out_base: u32, // element offset of row 0 in the idx and dist windows
    j0: u32,       // global index of this chunk's first codeword
    flags: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const HAS_PREV: u32 = 1u;
const LAST: u32 = 2u;
// The largest finite f32: a sentinel no real score can beat, and WGSL has no inf literal.
const BIG: f32 = 3.40282347e38;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> codebook: array<f32>;
@group(0) @binding(3) var<storage, read> norms: array<f32>;
@group(0) @binding(4) var<storage, read_write> idx: array<u32>;
@group(0) @binding(5) var<storage, read_write> dist: array<f32>;

fn row_sq_norm(row: u32) -> f32 {
    var s = 0.0;
    for (var t = 0u; t < p.d; t++) {
        let v = x[row + t];
        s = fma(v, v, s);
    }
    return s;
}

// Writes row i's result: the distance on the last chunk, the raw score otherwise.
fn finish(i: u32, best: f32, best_j: u32) {
    idx[p.out_base + i] = best_j;
    if (p.flags & LAST) != 0u {
        // Clamped at zero with a compare, so that a NaN (an overflowed score plus an
        // overflowed |x|^2) stays one, as on the CPU, where max() would give 0; and a
        // value that is not finite, tested on its bits, passes through whole: a GLSL
        // compiler (wgpu's GL backend on llvmpipe) took NaN for impossible and turned the
        // compare and select into max(v, 0), so the host saw 0, not the overflow.
        let v = best + row_sq_norm(p.x_base + i * p.d);
        let finite = (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
        dist[p.out_base + i] = select(v, select(v, 0.0, v < 0.0), finite);
    } else {
        dist[p.out_base + i] = best;
    }
}

// ---- v1: one row per invocation, no tiling --------------------------------------------

@compute @workgroup_size(64)
fn distance_argmin_v1(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 64u + lid;
    if i >= p.n {
        return;
    }
    let xr = p.x_base + i * p.d;
    var best = BIG;
    var best_j = p.j0; // a row whose scores all overflow still gets a valid index
    if (p.flags & HAS_PREV) != 0u {
        best = dist[p.out_base + i];
        best_j = idx[p.out_base + i];
    }
    for (var j = 0u; j < p.k; j++) {
        let cr = p.c_base + j * p.d;
        var dot = 0.0;
        for (var t = 0u; t < p.d; t++) {
            dot = fma(x[xr + t], codebook[cr + t], dot);
        }
        let s = norms[p.nrm_base + j] - 2.0 * dot;
        if s < best { // strict: the earlier (lower) index keeps a tie
            best = s;
            best_j = p.j0 + j;
        }
    }
    finish(i, best, best_j);
}

// ---- v2: codebook tile in workgroup memory, 4 x 4 register micro-tile -----------------

const BM: u32 = 64u; // rows per workgroup
const BN: u32 = 64u; // codewords per tile
const BD: u32 = 16u; // dimensions per staging step
const TS: u32 = 65u; // padded stride of the staged tiles: the transposing stores hit distinct banks

var<workgroup> xs: array<f32, 1040>; // [BD][TS]: xs[t * TS + r] = x[row0 + r][d0 + t]
var<workgroup> cs: array<f32, 1040>; // [BD][TS]: cs[t * TS + c] = codebook[j + c][d0 + t]
var<workgroup> red_s: array<f32, 1024>; // [BM][16] candidate scores per row
var<workgroup> red_j: array<u32, 1024>; // [BM][16] their indices

@compute @workgroup_size(16, 16)
fn distance_argmin_v2(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row0 = (wid.x + wid.y * nwg.x) * BM;
    // Workgroup-uniform exit: barriers below stay in uniform control flow.
    if row0 >= p.n {
        return;
    }
    let tx = lid3.x;
    let ty = lid3.y;

    var best: array<f32, 4>;
    var best_j: array<u32, 4>;
    for (var r = 0u; r < 4u; r++) {
        best[r] = BIG;
        best_j[r] = 0xffffffffu; // "none yet": loses every tie in the final reduction
    }

    for (var j0 = 0u; j0 < p.k; j0 += BN) {
        var acc: array<f32, 16>;
        for (var q = 0u; q < 16u; q++) {
            acc[q] = 0.0;
        }
        for (var d0 = 0u; d0 < p.d; d0 += BD) {
            // Stage BM x BD of x and BN x BD of the codebook, zero-padded past n, k and d.
            for (var e = 0u; e < 4u; e++) {
                let flat = e * 256u + lid;
                let r = flat / BD;
                let t = flat % BD;
                let dim = d0 + t;
                var xv = 0.0;
                if row0 + r < p.n && dim < p.d {
                    xv = x[p.x_base + (row0 + r) * p.d + dim];
                }
                xs[t * TS + r] = xv;
                var cv = 0.0;
                if j0 + r < p.k && dim < p.d {
                    cv = codebook[p.c_base + (j0 + r) * p.d + dim];
                }
                cs[t * TS + r] = cv;
            }
            workgroupBarrier();
            for (var t = 0u; t < BD; t++) {
                var a: array<f32, 4>;
                var b: array<f32, 4>;
                for (var q = 0u; q < 4u; q++) {
                    a[q] = xs[t * TS + ty + 16u * q];
                    b[q] = cs[t * TS + tx + 16u * q];
                }
                for (var r = 0u; r < 4u; r++) {
                    for (var c = 0u; c < 4u; c++) {
                        acc[r * 4u + c] = fma(a[r], b[c], acc[r * 4u + c]);
                    }
                }
            }
            workgroupBarrier();
        }
        // Fold this tile's scores into the running minima; c ascends, so for one
        // invocation the codes are visited in increasing order and `<` keeps the lowest.
        for (var c = 0u; c < 4u; c++) {
            let j = j0 + tx + 16u * c;
            if j < p.k {
                let nrm = norms[p.nrm_base + j];
                for (var r = 0u; r < 4u; r++) {
                    let s = nrm - 2.0 * acc[r * 4u + c];
                    if s < best[r] || best_j[r] == 0xffffffffu {
                        best[r] = s;
                        best_j[r] = p.j0 + j;
                    }
                }
            }
        }
    }

    // Cross-invocation argmin: row r's 16 candidates, one per tx.
    for (var r = 0u; r < 4u; r++) {
        red_s[(ty + 16u * r) * 16u + tx] = best[r];
        red_j[(ty + 16u * r) * 16u + tx] = best_j[r];
    }
    workgroupBarrier();
    if lid < BM {
        let i = row0 + lid;
        if i < p.n {
            var bs = BIG;
            var bj = 0xffffffffu;
            if (p.flags & HAS_PREV) != 0u {
                bs = dist[p.out_base + i];
                bj = idx[p.out_base + i];
            }
            for (var q = 0u; q < 16u; q++) {
                let s = red_s[lid * 16u + q];
                let j = red_j[lid * 16u + q];
                if j != 0xffffffffu && (s < bs || (s == bs && j < bj) || bj == 0xffffffffu) {
                    bs = s;
                    bj = j;
                }
            }
            if bj == 0xffffffffu {
                bj = p.j0; // every score overflowed: still a valid index
            }
            finish(i, bs, bj);
        }
    }
}
