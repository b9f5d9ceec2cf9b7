// cluster_sums: deterministic per-code reductions for k-means (and the EMA batch sums),
// plus the centroid update.
//
// x: (n, d) row-major f32, idx: (n) u32, dist: (n) f32;
// out sums: (k, d) f32, counts: (k) u32, dist_sums: (k) f32; centroids: (k, d) f32.
//
//   counts[j]    = #{i : idx[i] = j}
//   sums[j]      = sum_{idx[i] = j} x_i        (rows added in ascending row order)
//   dist_sums[j] = sum_{idx[i] = j} dist_i     (likewise)
//   centroids[j] = sums[j] / counts[j]         where counts[j] > 0
//
// WGSL has no float atomics, and float atomics would make the order of additions (and so
// the bits of the result) depend on scheduling. Instead the points are sorted by code with
// a stable LSD radix sort, so each code's rows form one contiguous run in ascending row
// order, and each run is reduced by one workgroup in that order. Integer atomics appear
// only in the per-block digit histograms, whose result does not depend on order. Every
// float addition happens in an order fixed by the data alone: outputs are bit-identical
// from run to run. Codes >= k become the key k, sort after every real code and are never
// read: no out-of-bounds write whatever idx holds.
//
// Pipeline per chunk of rows (the host splits n so every buffer fits one storage binding):
//   1. init_keys     keys[i] = min(idx[i], k), vals[i] = i                 ceil(n/256) wgs
//   2. per radix pass (8 bits each, ceil(bits(k)/8) passes, ping-pong buffers):
//      sort_hist     per block of 256 keys, a 256-bin digit histogram      nblocks wgs
//                    -> table[digit * nblocks + block] (digit-major)
//      scan          exclusive prefix sum of table, in place                1 wg
//      sort_scatter  key goes to table[digit][block] + its rank among the   nblocks wgs
//                    earlier keys of its block with the same digit (stable)
//   3. tile_partials one workgroup per tile of `tile` sorted positions: the   ceil(n/tile)
//                    column sums (lanes over d + 1 columns, Kahan, row order) of
//                    each code's run inside the tile -> partials
//   4. segment_sums  one workgroup per code: binary-search its run, sum its   k wgs
//                    tiles' partials in tile order (Kahan); flag ACCUMULATE adds the
//                    result to what earlier row chunks left (a fixed order too).
//   kmeans_update    one invocation per element of (k, d)                   ceil(k d/256) wgs
//
// The tile size depends on d alone (the host picks it so one invocation's loops stay
// bounded), so the order of additions is fixed by the data, d and the row chunking (which
// depends on the adapter's binding limit), never by scheduling; a code holding most rows
// is spread over ceil(count / tile) workgroups.
//
// Variants: v1 only (v0, one workgroup serially over each code's whole run, was replaced:
// a dominant code serialised the reduction, and llvmpipe stops any invocation's loops
// after 65535 iterations in total, which long runs exceeded).
//
// Windows: the host binds aligned windows of each buffer; the *_base fields locate the
// dispatch's first element inside its window. Dispatches wider than
// max_compute_workgroups_per_dimension are folded into 2-D (x + y * num_workgroups.x).

struct Params {
    n: u32,        // rows in this chunk
    k: u32,        // codebook size (the key of an ignored row)
    d: u32,
    x_base: u32,   // element offset of row 0 in the x window
    row_base: u32, // element offset of row 0 in the idx and dist windows
    shift: u32,    // radix pass: the digit is (key >> shift) & 255
    nblocks: u32,  // radix blocks of 256 keys: ceil(n / 256)
    len: u32,      // scan: elements of table
    j0: u32,       // first code of this code chunk
    kc: u32,       // codes in this code chunk
    out_base: u32, // element offset of code j0's row in the (k, d) windows
    cnt_base: u32, // element offset of code j0 in the (k) windows
    flags: u32,
    tile: u32,     // positions of the sorted order per tile_partials workgroup
    _pad1: u32,
    _pad2: u32,
}

const ACCUMULATE: u32 = 1u; // add to the outputs instead of overwriting them
const WITH_DIST: u32 = 2u;  // also reduce dist into dist_sums

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read> keys_in: array<u32>;
@group(0) @binding(3) var<storage, read> vals_in: array<u32>;
@group(0) @binding(4) var<storage, read_write> keys_out: array<u32>;
@group(0) @binding(5) var<storage, read_write> vals_out: array<u32>;
@group(0) @binding(6) var<storage, read_write> table: array<u32>;
@group(0) @binding(7) var<storage, read> x: array<f32>;
@group(0) @binding(8) var<storage, read> dist: array<f32>;
@group(0) @binding(9) var<storage, read_write> sums: array<f32>;
@group(0) @binding(10) var<storage, read_write> counts: array<u32>;
@group(0) @binding(11) var<storage, read_write> dist_sums: array<f32>;
@group(0) @binding(12) var<storage, read> sums_in: array<f32>;
@group(0) @binding(13) var<storage, read> counts_in: array<u32>;
@group(0) @binding(14) var<storage, read_write> centroids: array<f32>;
@group(0) @binding(15) var<storage, read_write> partials: array<f32>;
@group(0) @binding(16) var<storage, read> partials_in: array<f32>;
@group(0) @binding(17) var<storage, read_write> first_slot: array<u32>;
@group(0) @binding(18) var<storage, read> first_slot_in: array<u32>;

fn group_id(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Bindings: 0 params, 1 idx, 4 keys_out, 5 vals_out.
@compute @workgroup_size(256)
fn init_keys(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = group_id(wid, nwg) * 256u + lid;
    if i < p.n {
        keys_out[i] = min(idx[p.row_base + i], p.k);
        vals_out[i] = i;
    }
}

var<workgroup> hist: array<atomic<u32>, 256>;

// Bindings: 0 params, 2 keys_in, 6 table.
@compute @workgroup_size(256)
fn sort_hist(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let b = group_id(wid, nwg);
    if b >= p.nblocks {
        return;
    }
    atomicStore(&hist[lid], 0u);
    workgroupBarrier();
    let i = b * 256u + lid;
    if i < p.n {
        atomicAdd(&hist[(keys_in[i] >> p.shift) & 255u], 1u);
    }
    workgroupBarrier();
    table[lid * p.nblocks + b] = atomicLoad(&hist[lid]);
}

var<workgroup> scan_sh: array<u32, 256>;

// Exclusive prefix sum of table[0..len] in place, by one workgroup: each invocation sums
// a contiguous chunk, the 256 chunk totals are scanned in workgroup memory, then each
// chunk is rewritten. Integer: exact in any order.
// Bindings: 0 params, 6 table. Dispatch: 1 workgroup.
@compute @workgroup_size(256)
fn scan(@builtin(local_invocation_index) lid: u32) {
    let chunk = (p.len + 255u) / 256u;
    let a = min(lid * chunk, p.len);
    let b = min(a + chunk, p.len);
    var s = 0u;
    for (var i = a; i < b; i++) {
        s += table[i];
    }
    scan_sh[lid] = s;
    workgroupBarrier();
    // Hillis-Steele inclusive scan of the 256 totals.
    for (var off = 1u; off < 256u; off <<= 1u) {
        var v = 0u;
        if lid >= off {
            v = scan_sh[lid - off];
        }
        workgroupBarrier();
        scan_sh[lid] += v;
        workgroupBarrier();
    }
    var run = scan_sh[lid] - s;
    for (var i = a; i < b; i++) {
        let v = table[i];
        table[i] = run;
        run += v;
    }
}

var<workgroup> digits: array<u32, 256>;

// Bindings: 0 params, 2 keys_in, 3 vals_in, 4 keys_out, 5 vals_out, 6 table (scanned).
@compute @workgroup_size(256)
fn sort_scatter(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let b = group_id(wid, nwg);
    if b >= p.nblocks {
        return;
    }
    let i = b * 256u + lid;
    var key = 0u;
    var dig = 0xffffffffu; // past n: matches no real digit
    if i < p.n {
        key = keys_in[i];
        dig = (key >> p.shift) & 255u;
    }
    digits[lid] = dig;
    workgroupBarrier();
    if i < p.n {
        // Rank among the earlier keys of this block with the same digit: this is what makes
        // the pass stable, and so the final order ascending by row within each code.
        var rank = 0u;
        for (var l = 0u; l < lid; l++) {
            rank += select(0u, 1u, digits[l] == dig);
        }
        let dst = table[dig * p.nblocks + b] + rank;
        keys_out[dst] = key;
        vals_out[dst] = vals_in[i];
    }
}

// First position in the sorted keys[0..n] whose key is >= j.
fn lower_bound(j: u32) -> u32 {
    var lo = 0u;
    var hi = p.n;
    while lo < hi {
        let mid = (lo + hi) / 2u;
        if keys_in[mid] < j {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// Sums rows [a, b) of the sorted order into column `c` (c = d: the dist column), with
// Kahan summation: f32 with a compensation term, so the error stays near one rounding
// instead of growing with the run length.
fn run_sum(a: u32, b: u32, c: u32) -> f32 {
    var s = 0.0;
    var comp = 0.0;
    for (var r = a; r < b; r++) {
        let row = vals_in[r];
        var v: f32;
        if c < p.d {
            v = x[p.x_base + row * p.d + c];
        } else {
            v = dist[p.row_base + row];
        }
        let y = v - comp;
        let t = s + y;
        comp = (t - s) - y;
        s = t;
    }
    return s;
}

fn columns() -> u32 {
    if (p.flags & WITH_DIST) != 0u {
        return p.d + 1u; // column d is dist
    }
    return p.d;
}

// Stage 1 of the per-code reduction. The sorted order is cut into fixed tiles of `tile`
// positions; the workgroup of tile t walks its runs (one per code present) in order and
// writes each run's column sums to partials[slot], slot = t * tile + (run's index within
// the tile), rows of d + 1 floats. A run that starts in this tile records its slot in
// first_slot[code]; a run continued from an earlier tile always has index 0. Tiles bound
// every invocation's work whatever the distribution of codes, so one dominant code is
// spread over many workgroups (and lavapipe's per-invocation loop limit is never hit).
// Bindings: 0 params, 2 keys_in (sorted), 3 vals_in (rows), 7 x, 8 dist, 15 partials,
// 17 first_slot. Dispatch: ceil(n / tile) workgroups of 64.
@compute @workgroup_size(64)
fn tile_partials(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let a0 = group_id(wid, nwg) * p.tile;
    if a0 >= p.n {
        return;
    }
    let tile_end = min(a0 + p.tile, p.n);
    let width = p.d + 1u;
    let cols = columns();
    var pos = a0;
    var seg = 0u;
    loop {
        if pos >= tile_end {
            break;
        }
        let key = keys_in[pos];
        if key >= p.k {
            break; // ignored rows (code >= k) sort last: nothing left to sum
        }
        let run_end = min(lower_bound(key + 1u), tile_end);
        let slot = a0 + seg;
        for (var c = lid; c < cols; c += 64u) {
            partials[slot * width + c] = run_sum(pos, run_end, c);
        }
        if lid == 0u && (pos == 0u || keys_in[pos - 1u] != key) {
            first_slot[key] = slot;
        }
        pos = run_end;
        seg += 1u;
    }
}

// Stage 2: one workgroup per code sums its run's tile partials in tile order (Kahan
// again) and writes sums, dist_sums and counts; flag ACCUMULATE adds to what earlier row
// chunks left (a fixed order too).
// Bindings: 0 params, 2 keys_in (sorted), 16 partials_in, 18 first_slot_in, 9 sums,
// 10 counts, 11 dist_sums. Dispatch: kc workgroups of 64.
@compute @workgroup_size(64)
fn segment_sums(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = group_id(wid, nwg);
    if g >= p.kc {
        return;
    }
    let j = p.j0 + g;
    let start = lower_bound(j);
    let end = lower_bound(j + 1u);
    let acc = (p.flags & ACCUMULATE) != 0u;
    let width = p.d + 1u;
    let cols = columns();
    for (var c = lid; c < cols; c += 64u) {
        var s = 0.0;
        var comp = 0.0;
        if start < end {
            let first = start / p.tile;
            let last = (end - 1u) / p.tile;
            for (var t = first; t <= last; t++) {
                var slot = t * p.tile;
                if t == first {
                    slot = first_slot_in[j];
                }
                let y = partials_in[slot * width + c] - comp;
                let u = s + y;
                comp = (u - s) - y;
                s = u;
            }
        }
        if c < p.d {
            let o = p.out_base + g * p.d + c;
            if acc {
                sums[o] = sums[o] + s;
            } else {
                sums[o] = s;
            }
        } else {
            let o = p.cnt_base + g;
            if acc {
                dist_sums[o] = dist_sums[o] + s;
            } else {
                dist_sums[o] = s;
            }
        }
    }
    if lid == 0u {
        let o = p.cnt_base + g;
        if acc {
            counts[o] = counts[o] + (end - start);
        } else {
            counts[o] = end - start;
        }
    }
}

// Bindings: 0 params, 12 sums_in, 13 counts_in, 14 centroids. The (k, d) windows of sums
// and centroids start at the same element, so share out_base. Dispatch: ceil(kc d / 256).
@compute @workgroup_size(256)
fn kmeans_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = group_id(wid, nwg) * 256u + lid;
    if e >= p.kc * p.d {
        return;
    }
    let m = counts_in[p.cnt_base + e / p.d];
    if m > 0u {
        centroids[p.out_base + e] = sums_in[p.out_base + e] / f32(m);
    }
}
