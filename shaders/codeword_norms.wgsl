// codeword_norms: norms[j] = |c_j|^2, the precomputed term of the fused distance-argmin.
//
// codebook: (k, d) row-major f32, norms: (k) f32.
//
// One workgroup of 64 invocations per codeword: lanes stride over d (consecutive lanes read
// consecutive floats, so loads coalesce), then a fixed-shape tree reduction in workgroup
// memory. The order of every addition depends only on d, so the result is bit-identical
// from run to run.
//
// Variants: v1 only (this kernel is O(k d) against the argmin's O(n k d); it is not worth
// tuning further).
//
// Windows: the host binds a window of each buffer (storage offsets must be aligned to
// min_storage_buffer_offset_alignment), so `c_base` / `out_base` give the element at which
// this dispatch's first codeword starts inside its window.

struct Params {
    k: u32,        // codewords in this dispatch
    d: u32,        // dimension
    c_base: u32,   // element offset of codeword 0 in the codebook window
    out_base: u32, // element offset of norm 0 in the norms window
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> codebook: array<f32>;
@group(0) @binding(2) var<storage, read_write> norms: array<f32>;

var<workgroup> part: array<f32, 64>;

// Dispatch: k workgroups, folded into 2-D (x, y) when k exceeds the per-dimension limit.
@compute @workgroup_size(64)
fn codeword_norms_v1(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let j = wid.x + wid.y * nwg.x;
    // Workgroup-uniform: the whole group leaves together, so the barriers below stay uniform.
    if j >= p.k {
        return;
    }
    let row = p.c_base + j * p.d;
    var s = 0.0;
    for (var t = lid; t < p.d; t += 64u) {
        let v = codebook[row + t];
        s = fma(v, v, s);
    }
    part[lid] = s;
    workgroupBarrier();
    for (var w = 32u; w > 0u; w >>= 1u) {
        if lid < w {
            part[lid] += part[lid + w];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        norms[p.out_base + j] = part[0];
    }
}
