//! Fused distance-argmin on the CPU.
//!
//! x: (n, d) row-major, codebook: (k, d), norms: (k) = |c_j|^2; out idx: (n), dist: (n).
//!
//! ```text
//! score_ij = |c_j|^2 - 2 x_i.c_j          (|x_i|^2 is constant along a row: added last)
//! idx_i    = argmin_j score_ij            (lowest j wins a tie)
//! dist_i   = max(score_i,idx_i + |x_i|^2, 0)
//! ```
//!
//! Fusion: a register tile of MR rows x NR codewords is computed over the whole of d, turned
//! into scores, and folded into per-lane running minima before the next tile; the n x k
//! distance matrix never exists, not even as a cache-sized block. Layout: the codebook is
//! packed once per call into panels of NR codewords, d-major (`panel[t][lane]`), and each
//! block of MR rows of x is packed t-major (`xt[t][r]`), so per step of d the micro-kernel
//! loads one contiguous run of NR codeword values and broadcasts MR consecutive x values.
//! Epilogue per panel and row: score = norm - 2 acc, the panel's two halves folded lane by
//! lane, then folded into the row's running (score, index); after the last panel, one
//! branch-free horizontal reduction per row. A padded codeword has norm +inf: never chosen.
//! Rows are independent, so the result does not depend on the thread count.
//!
//! Variants, all checked against [`crate::reference`]:
//! - v0 `narrow`, for k <= 4 (k-means++ seeding asks for one codeword at a time): rows
//!   streamed against each codeword, 16-lane dot products; a panel would be mostly padding.
//! - v1 `portable`: the same tiling in plain Rust (MR = 4, NR = 16); the compiler vectorizes
//!   it for whatever the target offers. The fallback on CPUs with neither AVX2 nor AVX-512.
//! - v2 `avx2`: AVX2 + FMA intrinsics, MR = 6, NR = 16: 12 ymm accumulators + 2 codeword
//!   vectors + 1 broadcast of the 16 ymm registers.
//! - v3 `avx512`: AVX-512F intrinsics, MR = 12, NR = 32: 24 zmm accumulators + 2 codeword
//!   vectors + 1 broadcast of the 32 zmm registers; 24 FMAs per 14 loads keeps it FMA-bound.
//!   Shipped wherever the CPU has AVX-512F.

// Register tiles are indexed `acc[r][h]` by row and half: the index form states the MR x NR
// structure that an iterator chain would hide.
#![allow(clippy::needless_range_loop)]

use super::Isa;
use crate::backend::Shape;
use crate::error::Result;
use rayon::prelude::*;

/// A codebook packed into panels of `nr` codewords, `d`-major within a panel.
pub(crate) struct Packed {
    data: Vec<f32>,
    norms: Vec<f32>,
    panels: usize,
    d: usize,
}

impl Packed {
    fn new(codebook: &[f32], norms: &[f32], k: usize, d: usize, nr: usize) -> Result<Self> {
        let panels = k.div_ceil(nr);
        let mut data = crate::resources::zeroed::<f32>("the packed codebook", panels * nr * d)?;
        for (j, row) in codebook.chunks_exact(d).enumerate() {
            let panel = &mut data[(j / nr) * nr * d..];
            for (t, &v) in row.iter().enumerate() {
                panel[t * nr + j % nr] = v;
            }
        }
        let mut padded_norms = vec![f32::INFINITY; panels * nr];
        padded_norms[..k].copy_from_slice(norms);
        Ok(Packed {
            data,
            norms: padded_norms,
            panels,
            d,
        })
    }
}

/// `|v|^2` in f32 with 16 independent partial sums, so the loop vectorizes and its
/// rounding does not depend on the ISA.
pub(crate) fn sq_norm(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut chunks = v.chunks_exact(16);
    for c in &mut chunks {
        for l in 0..16 {
            acc[l] += c[l] * c[l];
        }
    }
    for (l, &x) in chunks.remainder().iter().enumerate() {
        acc[l] += x * x;
    }
    acc.iter().sum()
}

/// Runs the micro-kernel for `mr` rows of x packed t-major (`x[t * mr + r]`, length
/// `mr * d`), writing each row's best score (without |x|^2) and index.
type RowsKernel = fn(x: &[f32], p: &Packed, val: &mut [f32], idx: &mut [u32]);

fn kernel_for(isa: Isa) -> (RowsKernel, usize, usize) {
    match isa {
        Isa::Portable => (rows_portable, PORTABLE_MR, PORTABLE_NR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (x86::rows_avx2_entry, x86::AVX2_MR, x86::AVX2_NR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (x86::rows_avx512_entry, x86::AVX512_MR, x86::AVX512_NR),
    }
}

/// Rows per parallel task: a multiple of the micro-kernel's MR, large enough to amortise
/// the task, small enough to balance two to a few dozen threads.
const TASK_ROWS: usize = 384;

/// The CPU distance-argmin. Shapes are checked by the caller.
#[allow(clippy::too_many_arguments)]
pub(crate) fn distance_argmin(
    isa: Isa,
    parallel: bool,
    x: &[f32],
    codebook: &[f32],
    norms: &[f32],
    shape: Shape,
    idx: &mut [u32],
    dist: &mut [f32],
) -> Result<()> {
    let Shape { n, k, d } = shape;
    if n == 0 {
        return Ok(());
    }
    if k <= NARROW_K {
        for_each_task(parallel, x, d, idx, dist, |xs, idx, dist| {
            rows_narrow(xs, codebook, norms, d, idx, dist)
        });
        return Ok(());
    }
    let (kernel, mr, nr) = kernel_for(isa);
    let packed = Packed::new(codebook, norms, k, d, nr)?;
    for_each_task(parallel, x, d, idx, dist, |xs, idx, dist| {
        rows_block(kernel, mr, xs, &packed, idx, dist)
    });
    Ok(())
}

/// Splits the rows into fixed tasks of `TASK_ROWS` (independent of the thread count) and
/// runs `f(x rows, idx, dist)` on each, in parallel or in order.
fn for_each_task(
    parallel: bool,
    x: &[f32],
    d: usize,
    idx: &mut [u32],
    dist: &mut [f32],
    f: impl Fn(&[f32], &mut [u32], &mut [f32]) + Sync,
) {
    let task = |(t, (idx, dist)): (usize, (&mut [u32], &mut [f32]))| {
        f(&x[t * TASK_ROWS * d..][..idx.len() * d], idx, dist)
    };
    if parallel {
        idx.par_chunks_mut(TASK_ROWS)
            .zip(dist.par_chunks_mut(TASK_ROWS))
            .enumerate()
            .for_each(task);
    } else {
        idx.chunks_mut(TASK_ROWS)
            .zip(dist.chunks_mut(TASK_ROWS))
            .enumerate()
            .for_each(task);
    }
}

/// Up to this many codewords, a panel of NR would be mostly padding (k-means++ seeding
/// asks for one codeword at a time): rows are streamed against each codeword instead.
const NARROW_K: usize = 4;

/// v0 `narrow`, for k <= NARROW_K: per row, a 16-lane dot product with each codeword; the
/// same score, tie rule and clamp as the tiled kernels. Memory-bound, as it should be.
fn rows_narrow(
    x: &[f32],
    codebook: &[f32],
    norms: &[f32],
    d: usize,
    idx: &mut [u32],
    dist: &mut [f32],
) {
    for ((row, i), out) in x.chunks_exact(d).zip(idx.iter_mut()).zip(dist.iter_mut()) {
        let mut best = (f32::INFINITY, 0u32);
        for (j, (c, &nj)) in codebook.chunks_exact(d).zip(norms).enumerate() {
            let s = nj - 2.0 * dot(row, c);
            if s < best.0 {
                best = (s, j as u32);
            }
        }
        (*i, *out) = (best.1, (best.0 + sq_norm(row)).max(0.0));
    }
}

/// `a.b` in f32 with 16 independent partial sums (vectorizes; order fixed by d alone).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (p, q) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += p[l] * q[l];
        }
    }
    for (l, (&p, &q)) in ra.iter().zip(rb).enumerate() {
        acc[l] += p * q;
    }
    acc.iter().sum()
}

/// One task's rows, MR at a time: each block is packed t-major (`xt[t * MR + r]`, zero rows
/// past the end), so the micro-kernel broadcasts from one contiguous run per step of d
/// whatever d is; then `dist = max(score + |x|^2, 0)`.
fn rows_block(
    kernel: RowsKernel,
    mr: usize,
    x: &[f32],
    p: &Packed,
    idx: &mut [u32],
    dist: &mut [f32],
) {
    let d = p.d;
    let rows = idx.len();
    let mut xt = vec![0.0f32; mr * d];
    let mut val = vec![0.0f32; mr];
    let mut ix = vec![0u32; mr];
    for r0 in (0..rows).step_by(mr) {
        let m = mr.min(rows - r0);
        for (r, row) in x[r0 * d..(r0 + m) * d].chunks_exact(d).enumerate() {
            for (t, &v) in row.iter().enumerate() {
                xt[t * mr + r] = v;
            }
        }
        if m < mr {
            for t in 0..d {
                xt[t * mr + m..(t + 1) * mr].fill(0.0);
            }
        }
        kernel(&xt, p, &mut val, &mut ix);
        dist[r0..r0 + m].copy_from_slice(&val[..m]);
        idx[r0..r0 + m].copy_from_slice(&ix[..m]);
    }
    for (r, out) in dist.iter_mut().enumerate() {
        *out = (*out + sq_norm(&x[r * d..(r + 1) * d])).max(0.0);
    }
}

/// The lowest (score, index) over lanes, lowest index on a tie. Each lane holds the lowest
/// index reaching its own minimum, since panels are visited in order with a strict `<`.
fn reduce_lanes(vals: &[f32], idxs: &[u32]) -> (f32, u32) {
    let mut best = (f32::INFINITY, 0u32);
    for (&v, &i) in vals.iter().zip(idxs) {
        if v < best.0 || (v == best.0 && i < best.1) {
            best = (v, i);
        }
    }
    best
}

const PORTABLE_MR: usize = 4;
const PORTABLE_NR: usize = 16;

/// v1: plain Rust; fixed-size arrays let the compiler keep the tile in vector registers.
fn rows_portable(x: &[f32], p: &Packed, val: &mut [f32], idx: &mut [u32]) {
    const MR: usize = PORTABLE_MR;
    const NR: usize = PORTABLE_NR;
    let d = p.d;
    let mut best_v = [[f32::INFINITY; NR]; MR];
    let mut best_i = [[0u32; NR]; MR];
    for panel in 0..p.panels {
        let pd = &p.data[panel * NR * d..(panel + 1) * NR * d];
        let mut acc = [[0.0f32; NR]; MR];
        for (t, c) in pd.chunks_exact(NR).enumerate() {
            for r in 0..MR {
                let xv = x[t * MR + r];
                for l in 0..NR {
                    acc[r][l] += xv * c[l];
                }
            }
        }
        let norms = &p.norms[panel * NR..(panel + 1) * NR];
        for r in 0..MR {
            for l in 0..NR {
                let s = norms[l] - 2.0 * acc[r][l];
                if s < best_v[r][l] {
                    best_v[r][l] = s;
                    best_i[r][l] = (panel * NR + l) as u32;
                }
            }
        }
    }
    for r in 0..MR {
        (val[r], idx[r]) = reduce_lanes(&best_v[r], &best_i[r]);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Packed, reduce_lanes};

    use std::arch::x86_64::*;

    pub(super) const AVX2_MR: usize = 6;
    pub(super) const AVX2_NR: usize = 16;
    pub(super) const AVX512_MR: usize = 12;
    pub(super) const AVX512_NR: usize = 32;

    pub(super) fn rows_avx2_entry(x: &[f32], p: &Packed, val: &mut [f32], idx: &mut [u32]) {
        assert!(x.len() >= AVX2_MR * p.d && val.len() >= AVX2_MR && idx.len() >= AVX2_MR);
        assert!(p.data.len() >= p.panels * AVX2_NR * p.d && p.norms.len() >= p.panels * AVX2_NR);
        // SAFETY: `Isa::Avx2` is only constructed after runtime detection of AVX2 and FMA;
        // the asserts above bound every pointer offset the kernel takes.
        unsafe { rows_avx2(x, p, val, idx) }
    }

    pub(super) fn rows_avx512_entry(x: &[f32], p: &Packed, val: &mut [f32], idx: &mut [u32]) {
        assert!(x.len() >= AVX512_MR * p.d && val.len() >= AVX512_MR && idx.len() >= AVX512_MR);
        assert!(
            p.data.len() >= p.panels * AVX512_NR * p.d && p.norms.len() >= p.panels * AVX512_NR
        );
        // SAFETY: `Isa::Avx512` is only constructed after runtime detection of AVX-512F;
        // the asserts above bound every pointer offset the kernel takes.
        unsafe { rows_avx512(x, p, val, idx) }
    }

    /// v2: 6 rows x 16 codewords (two ymm) per tile.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_avx2(x: &[f32], p: &Packed, val: &mut [f32], idx: &mut [u32]) {
        const MR: usize = AVX2_MR;
        const NR: usize = AVX2_NR;
        let d = p.d;
        let xp = x.as_ptr();
        // Per row, per lane: the best score so far and its codeword.
        let mut best_v = [_mm256_set1_ps(f32::INFINITY); MR];
        let mut best_i = [_mm256_setzero_si256(); MR];
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let minus_two = _mm256_set1_ps(-2.0);
        for panel in 0..p.panels {
            // SAFETY (all pointer reads below): panel < p.panels, t < d and r < MR, so every
            // offset is inside the lengths the entry point asserted.
            let cp = unsafe { p.data.as_ptr().add(panel * NR * d) };
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            for t in 0..d {
                let (c0, c1) = unsafe {
                    (
                        _mm256_loadu_ps(cp.add(t * NR)),
                        _mm256_loadu_ps(cp.add(t * NR + 8)),
                    )
                };
                for r in 0..MR {
                    let xv = unsafe { _mm256_broadcast_ss(&*xp.add(t * MR + r)) };
                    acc[r][0] = _mm256_fmadd_ps(xv, c0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(xv, c1, acc[r][1]);
                }
            }
            let np = unsafe { p.norms.as_ptr().add(panel * NR) };
            let norms = unsafe { [_mm256_loadu_ps(np), _mm256_loadu_ps(np.add(8))] };
            let i0 = _mm256_add_epi32(lane, _mm256_set1_epi32((panel * NR) as i32));
            let ids = [i0, _mm256_add_epi32(i0, _mm256_set1_epi32(8))];
            for r in 0..MR {
                // Fold the panel's halves (strict <: a tie keeps the lower first half),
                // then fold into the running best.
                let s0 = _mm256_fmadd_ps(acc[r][0], minus_two, norms[0]);
                let s1 = _mm256_fmadd_ps(acc[r][1], minus_two, norms[1]);
                let take1 = _mm256_cmp_ps::<_CMP_LT_OQ>(s1, s0);
                let s = _mm256_blendv_ps(s0, s1, take1);
                let i = blend_epi32(ids[0], ids[1], take1);
                let lt = _mm256_cmp_ps::<_CMP_LT_OQ>(s, best_v[r]);
                best_v[r] = _mm256_blendv_ps(best_v[r], s, lt);
                best_i[r] = blend_epi32(best_i[r], i, lt);
            }
        }
        for r in 0..MR {
            let mut v = [0.0f32; 8];
            let mut i = [0u32; 8];
            // SAFETY: v and i hold one vector of 8 lanes each.
            unsafe {
                _mm256_storeu_ps(v.as_mut_ptr(), best_v[r]);
                _mm256_storeu_si256(i.as_mut_ptr().cast(), best_i[r]);
            }
            (val[r], idx[r]) = reduce_lanes(&v, &i);
        }
    }

    /// Lanes of `b` where `mask` is set, of `a` elsewhere (AVX2 has no integer blendv on
    /// float masks: go through the float domain, a pure bit move).
    #[target_feature(enable = "avx2")]
    fn blend_epi32(a: __m256i, b: __m256i, mask: __m256) -> __m256i {
        _mm256_castps_si256(_mm256_blendv_ps(
            _mm256_castsi256_ps(a),
            _mm256_castsi256_ps(b),
            mask,
        ))
    }

    /// v3: 12 rows x 32 codewords (two zmm) per tile.
    #[target_feature(enable = "avx512f")]
    unsafe fn rows_avx512(x: &[f32], p: &Packed, val: &mut [f32], idx: &mut [u32]) {
        const MR: usize = AVX512_MR;
        const NR: usize = AVX512_NR;
        let d = p.d;
        let xp = x.as_ptr();
        // Per row, per lane: the best score so far and its codeword.
        let mut best_v = [_mm512_set1_ps(f32::INFINITY); MR];
        let mut best_i = [_mm512_setzero_si512(); MR];
        let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let minus_two = _mm512_set1_ps(-2.0);
        for panel in 0..p.panels {
            // SAFETY (all pointer reads below): panel < p.panels, t < d and r < MR, so every
            // offset is inside the lengths the entry point asserted.
            let cp = unsafe { p.data.as_ptr().add(panel * NR * d) };
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            for t in 0..d {
                let (c0, c1) = unsafe {
                    (
                        _mm512_loadu_ps(cp.add(t * NR)),
                        _mm512_loadu_ps(cp.add(t * NR + 16)),
                    )
                };
                for r in 0..MR {
                    let xv = _mm512_set1_ps(unsafe { *xp.add(t * MR + r) });
                    acc[r][0] = _mm512_fmadd_ps(xv, c0, acc[r][0]);
                    acc[r][1] = _mm512_fmadd_ps(xv, c1, acc[r][1]);
                }
            }
            let np = unsafe { p.norms.as_ptr().add(panel * NR) };
            let norms = unsafe { [_mm512_loadu_ps(np), _mm512_loadu_ps(np.add(16))] };
            let i0 = _mm512_add_epi32(lane, _mm512_set1_epi32((panel * NR) as i32));
            let ids = [i0, _mm512_add_epi32(i0, _mm512_set1_epi32(16))];
            for r in 0..MR {
                // Fold the panel's two halves first (the first half has the lower indices,
                // so a strict < keeps ties there), then fold into the running best.
                let s0 = _mm512_fmadd_ps(acc[r][0], minus_two, norms[0]);
                let s1 = _mm512_fmadd_ps(acc[r][1], minus_two, norms[1]);
                let take1 = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(s1, s0);
                let s = _mm512_mask_blend_ps(take1, s0, s1);
                let i = _mm512_mask_blend_epi32(take1, ids[0], ids[1]);
                let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(s, best_v[r]);
                best_v[r] = _mm512_mask_blend_ps(lt, best_v[r], s);
                best_i[r] = _mm512_mask_blend_epi32(lt, best_i[r], i);
            }
        }
        for r in 0..MR {
            // Fold the 16 lanes branch-free: the lowest score, and among the lanes holding
            // it, the lowest index.
            let (v, i) = (best_v[r], best_i[r]);
            let m = _mm512_reduce_min_ps(v);
            let at_min = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v, _mm512_set1_ps(m));
            val[r] = m;
            idx[r] = _mm512_mask_reduce_min_epu32(at_min, i);
        }
    }
}
