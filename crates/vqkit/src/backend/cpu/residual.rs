//! A residual quantizer's greedy codes on the host: each stage's nearest codeword to the
//! residual of the stages before it, the rows in blocks.
//!
//! One full distance-argmin per stage (the device formulation, `Rvq::encode_each`) reads
//! the whole residual from memory, then subtracts the codewords in a second pass that
//! reads and writes it again, then scatters the stage's codes into every row. At k = 16,
//! d = 128 those passes cost more than the search. Here a task copies a block of rows that
//! stays in L2 and runs every stage on it: the search with the sequential
//! `distance_argmin`, then the subtraction. x is read from memory once and the codes
//! written once. The searches are the same `distance_argmin` on the same residuals,
//! codebooks and norms, and each subtraction is the same `r -= c` per element: the same
//! bits as the loop's, whatever the block and the thread count.
//!
//! Decoding (`residual_decode`) sums each row's codewords, 64 columns at a time in
//! registers over every stage, in the build of the detected instruction set.

use super::isa::{IsaLoop, in_isa};
use super::product::{
    Scratch, block_rows, codebook_norms, codes_into_rows, in_blocks, size, skewed,
};
use super::{Isa, distance_argmin::distance_argmin};
use crate::backend::{Code, Shape};
use crate::error::Result;
use rayon::prelude::*;

/// `codes[i * stages + s]` = the nearest of stage `s`'s `k` codewords (`codebooks`,
/// (stages, k, d), row-major) to `x_i - sum_{t < s} C_t[codes[i * stages + t]]`, in `C`,
/// which must hold `k` indices.
///
/// Returns `Ok(false)`, the codes then unspecified, where a stage's codebook holds a NaN
/// or an infinity or a residual's distance is not finite: from a NaN or an infinity in x,
/// from finite values whose squares overflow, or from a residual that overflowed. The
/// caller then runs the loop per stage, whose first error, in its order, is the answer. An
/// `Err` is for what the loop would not meet (shapes, memory).
pub(crate) fn residual_codes<C: Code>(
    isa: Isa,
    parallel: bool,
    x: &[f32],
    d: usize,
    codebooks: &[f32],
    (stages, k): (usize, usize),
    codes: &mut [C],
) -> Result<bool> {
    Shape::new(0, k, d).validate()?;
    super::check_len(
        "codebooks",
        codebooks.len(),
        size("codebooks", &[stages, k, d])?,
    )?;
    // Whole rows (the callers have said so with `ops::rows`'s error).
    let n = x.len() / d;
    super::check_len("points", x.len(), n * d)?;
    super::check_len("codes", codes.len(), size("codes", &[n, stages])?)?;
    // No stage searches the points, so none would flag a NaN among them.
    if stages == 0 {
        return Ok(false);
    }
    let (norms, bad_codebook) = codebook_norms(codebooks, stages, k, d)?;
    if bad_codebook.is_some() {
        return Ok(false);
    }
    let rows = block_rows(super::CacheSizes::detect().l2, d);
    let task = |sc: &mut Scratch, (t, out): (usize, &mut [C])| {
        let len = out.len() / stages;
        let cstride = skewed(len);
        sc.size(len * d, stages * cstride, len)?;
        sc.xs[..len * d].copy_from_slice(&x[t * rows * d..][..len * d]);
        let (r, dist) = (&mut sc.xs[..len * d], &mut sc.dist[..len]);
        for s in 0..stages {
            let (cb, nm) = (&codebooks[s * k * d..][..k * d], &norms[s * k..][..k]);
            let idx = &mut sc.idx[s * cstride..][..len];
            distance_argmin(isa, false, r, cb, nm, Shape::new(len, k, d), idx, dist)?;
            if !dist.iter().fold(true, |ok, v| ok & v.is_finite()) {
                return Ok(false);
            }
            // The last stage's residuals are not read.
            if s + 1 == stages {
                break;
            }
            in_isa(isa, &Shift::<true> { cb, d }, (&mut *r, &*idx));
        }
        codes_into_rows(&sc.idx, cstride, stages, out, stages);
        Ok(true)
    };
    let done = in_blocks(parallel, codes, rows * stages, task)?;
    Ok(done.into_iter().all(|ok| ok))
}

/// `r_i -= c[idx_i]` (rows of `d`) on rayon's current pool, in the build of `isa`: the
/// fit's and the device path's subtraction of each stage's codewords.
pub(crate) fn subtract_codewords(isa: Isa, r: &mut [f32], c: &[f32], idx: &[u32], d: usize) {
    shift_rows(isa, &Shift::<true> { cb: c, d }, r, idx);
}

/// `r_i += c[idx_i]`, as [`subtract_codewords`]: the refinement's adding back of a stage.
pub(crate) fn add_codewords(isa: Isa, r: &mut [f32], c: &[f32], idx: &[u32], d: usize) {
    shift_rows(isa, &Shift::<false> { cb: c, d }, r, idx);
}

fn shift_rows<const SUB: bool>(isa: Isa, s: &Shift<SUB>, r: &mut [f32], idx: &[u32]) {
    if s.d == 0 {
        return;
    }
    r.par_chunks_mut(s.d.saturating_mul(DECODE_ROWS))
        .zip(idx.par_chunks(DECODE_ROWS))
        .for_each(|(r, idx)| in_isa(isa, s, (r, idx)));
}

/// `r_i -= cb[idx_i]` (`SUB`) or `r_i += cb[idx_i]` for a block's rows, in the build of an
/// instruction set: compiled for the baseline, SSE2, the subtraction took about 15% of
/// `compute_codes` at M = 16, nbits = 4 (`perf record`, one thread).
struct Shift<'a, const SUB: bool> {
    cb: &'a [f32],
    d: usize,
}

impl<const SUB: bool> IsaLoop<(&mut [f32], &[u32])> for Shift<'_, SUB> {
    #[inline(always)]
    fn body(&self, (r, idx): (&mut [f32], &[u32])) {
        for (ri, &j) in r.chunks_exact_mut(self.d).zip(idx) {
            for (a, &b) in ri.iter_mut().zip(&self.cb[j as usize * self.d..][..self.d]) {
                if SUB {
                    *a -= b;
                } else {
                    *a += b;
                }
            }
        }
    }
}

/// Rows per task of the decoders (PQ's, RQ's): 256 rows of 128 floats are 128 KiB of
/// output.
pub(crate) const DECODE_ROWS: usize = 256;

/// The floats [`residual_decode`] writes for `codes` (a last row of fewer than `stages`
/// codes is dropped), after checking that `codebooks` holds (stages, k, d) floats.
pub(crate) fn residual_decoded_len<C: Code>(
    codebooks: &[f32],
    (stages, k, d): (usize, usize, usize),
    codes: &[C],
) -> Result<usize> {
    let want = size("codebooks", &[stages, k, d])?;
    super::check_len("codebooks", codebooks.len(), want)?;
    let n = codes.len().checked_div(stages).unwrap_or(0);
    size("the reconstructions", &[n, d])
}

/// `out_i = 0 + C_0[codes[i, 0]] + C_1[codes[i, 1]] + ...` (`codebooks` (stages, k, d),
/// row-major), added in stage order: the same bits as adding stage after stage over all
/// rows, whatever the instruction set, the block or the thread count. Rows in blocks of
/// [`DECODE_ROWS`] on rayon's current pool; a last row of fewer than `stages` codes is
/// dropped. `out` holds [`residual_decoded_len`] floats. Every code is below `k` (the
/// caller checks).
pub(crate) fn residual_decode<C: Code>(
    isa: Isa,
    codebooks: &[f32],
    (stages, k, d): (usize, usize, usize),
    codes: &[C],
    out: &mut [f32],
) -> Result<()> {
    let len = residual_decoded_len(codebooks, (stages, k, d), codes)?;
    super::check_len("the reconstructions", out.len(), len)?;
    if stages == 0 || d == 0 {
        return Ok(());
    }
    let codes = &codes[..len / d * stages];
    let sum = SumRows {
        codebooks,
        k,
        d,
        stages,
    };
    out.par_chunks_mut(DECODE_ROWS.saturating_mul(d))
        .zip(codes.par_chunks(DECODE_ROWS.saturating_mul(stages)))
        .for_each(|(o, c)| in_isa(isa, &sum, (o, c)));
    Ok(())
}

/// The sums of [`residual_decode`], in the build of its instruction set.
struct SumRows<'a> {
    codebooks: &'a [f32],
    k: usize,
    d: usize,
    stages: usize,
}

/// Floats a row's columns are summed in at a time, in registers: 4 AVX-512 or 8 AVX2
/// registers, over every stage, then stored once. The same bits as adding into the row in
/// memory stage after stage, with one store where that took one a stage.
const SUM_COLS: usize = 64;

impl SumRows<'_> {
    /// `acc += C_s[codes[s]]` over columns `c0..c0 + acc.len()`, stage after stage.
    #[inline(always)]
    fn sum<C: Code>(&self, codes: &[C], c0: usize, acc: &mut [f32]) {
        for (s, &j) in codes.iter().enumerate() {
            let w = &self.codebooks[(s * self.k + j.index()) * self.d + c0..][..acc.len()];
            for (a, &w) in acc.iter_mut().zip(w) {
                *a += w;
            }
        }
    }
}

impl<C: Code> IsaLoop<(&mut [f32], &[C])> for SumRows<'_> {
    #[inline(always)]
    fn body(&self, (out, codes): (&mut [f32], &[C])) {
        for (o, c) in out
            .chunks_exact_mut(self.d)
            .zip(codes.chunks_exact(self.stages))
        {
            // Every float of the row is written once and never read: `+=` on the
            // allocator's untouched zero pages first mapped the shared zero page, then took a
            // copy-on-write fault whose TLB flush interrupted the other threads (on 2
            // threads, 189 ms against 105 for the one-thread loop before it,
            // `vqkit.ResidualQuantizer(128, 4, 4).decode` of 200,000 rows; `perf`: 59% of
            // samples in the flush's IPIs).
            let mut cols = o.chunks_exact_mut(SUM_COLS);
            for (t, o) in (&mut cols).enumerate() {
                let mut acc = [0.0f32; SUM_COLS];
                self.sum(c, t * SUM_COLS, &mut acc);
                o.copy_from_slice(&acc);
            }
            let o = cols.into_remainder();
            let mut acc = [0.0f32; SUM_COLS];
            let acc = &mut acc[..o.len()];
            self.sum(c, self.d - o.len(), acc);
            o.copy_from_slice(acc);
        }
    }
}
