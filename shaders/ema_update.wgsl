// ema_update: the exponential-moving-average codebook step (VQ-VAE, appendix A.1), given
// this batch's per-code counts and sums from cluster_sums.wgsl (whose fixed-order radix
// sort + per-code reduction makes them bit-identical from run to run).
//
// counts: (k) u32, batch: (k, d) f32 (this batch's per-code sums of x);
// state cluster_size: (k) f32, embed_sum: (k, d) f32, codebook: (k, d) f32.
//
//   size[j]  = decay * size[j] + (1 - decay) * count[j]
//   esum[j]  = decay * esum[j] + (1 - decay) * batch[j]
//   total    = sum_j size[j]                                (fixed-shape tree: deterministic)
//   code[j]  = esum[j] / ((size[j] + eps) / (total + k eps) * total)   if total > 0
//
// Three kernels, because `total` is a reduction over every code that must finish before
// any codeword is divided by it:
//   ema_decay     one invocation per element of (kc, d); element t = 0 of each row also
//                 decays size[j]                                   ceil(kc d / 256) wgs
//   ema_total     one workgroup: contiguous chunks per invocation, then a tree; with flag
//                 ACCUMULATE adds to the total of earlier code chunks   1 wg
//   ema_codebook  one invocation per element of (kc, d)            ceil(kc d / 256) wgs
//
// Variants: v1 only (O(k d) elementwise work, memory-bound; nothing to tile).
//
// Windows: the (k, d) windows all start at element j0 * d and the (k) windows at j0, so
// each family shares one base offset. Dispatches wider than
// max_compute_workgroups_per_dimension are folded into 2-D (x + y * num_workgroups.x).

struct Params {
    kc: u32,       // codes in this chunk
    k: u32,        // codebook size (for the smoothing's k * eps)
    d: u32,
    out_base: u32, // element offset of the chunk's first (k, d) element in its windows
    cnt_base: u32, // element offset of the chunk's first code in its (k) windows
    flags: u32,
    decay: f32,
    eps: f32,
}

const ACCUMULATE: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> counts: array<u32>;
@group(0) @binding(2) var<storage, read> batch: array<f32>;
@group(0) @binding(3) var<storage, read_write> size: array<f32>;
@group(0) @binding(4) var<storage, read_write> esum: array<f32>;
@group(0) @binding(5) var<storage, read> size_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> total: array<f32>;
@group(0) @binding(7) var<storage, read> esum_in: array<f32>;
@group(0) @binding(8) var<storage, read> total_in: array<f32>;
@group(0) @binding(9) var<storage, read_write> codebook: array<f32>;

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

// Bindings: 0 params, 1 counts, 2 batch, 3 size, 4 esum.
@compute @workgroup_size(256)
fn ema_decay(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = element(wid, nwg, lid);
    if e >= p.kc * p.d {
        return;
    }
    let keep = 1.0 - p.decay;
    let o = p.out_base + e;
    esum[o] = fma(p.decay, esum[o], keep * batch[o]);
    if e % p.d == 0u {
        let j = p.cnt_base + e / p.d;
        size[j] = fma(p.decay, size[j], keep * f32(counts[j]));
    }
}

var<workgroup> part: array<f32, 256>;

// Bindings: 0 params, 5 size_in, 6 total. Dispatch: 1 workgroup.
@compute @workgroup_size(256)
fn ema_total(@builtin(local_invocation_index) lid: u32) {
    let chunk = (p.kc + 255u) / 256u;
    let a = min(lid * chunk, p.kc);
    let b = min(a + chunk, p.kc);
    var s = 0.0;
    for (var j = a; j < b; j++) {
        s += size_in[p.cnt_base + j];
    }
    part[lid] = s;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if lid < w {
            part[lid] += part[lid + w];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        if (p.flags & ACCUMULATE) != 0u {
            total[0] = total[0] + part[0];
        } else {
            total[0] = part[0];
        }
    }
}

// Bindings: 0 params, 5 size_in, 7 esum_in, 8 total_in, 9 codebook.
@compute @workgroup_size(256)
fn ema_codebook(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = element(wid, nwg, lid);
    if e >= p.kc * p.d {
        return;
    }
    let t = total_in[0];
    // Nothing ever assigned: leave the codebook as it is rather than divide by zero.
    if t > 0.0 {
        let smoothed = (size_in[p.cnt_base + e / p.d] + p.eps) / (t + f32(p.k) * p.eps) * t;
        codebook[p.out_base + e] = esum_in[p.out_base + e] / smoothed;
    }
}
