//! A product quantizer's codes on the host: every sub-space's nearest codeword for each row,
//! the rows in blocks.
//!
//! One full distance-argmin per sub-space (the device formulation, `Pvq::encode_each`)
//! first copies that sub-space's columns out of every row, then scatters its codes into
//! every row of the output: two passes over the data for each of M searches that, at
//! k = 16, d / M = 2, take a microsecond per thousand rows. Here a task takes a block of rows
//! that stays in L2, and for each sub-space copies its columns into a buffer in L1 and runs
//! the sequential distance-argmin on it, so x is read from memory once and the codes
//! written once. Each search is the same `distance_argmin` on the same rows, codebook and
//! norms: the same bits as the loop's, whatever the block and the thread count.

use super::{Isa, distance_argmin::distance_argmin, sq_norms};
use crate::backend::{Code, Shape, check_finite};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// The distance between two sub-spaces' codes in [`Scratch`]: `len` rounded up to a cache
/// line, plus one, so that the M columns read together when the codes go into rows (a
/// power of two apart, they would share L1's sets) fall in different sets.
pub(super) fn skewed(len: usize) -> usize {
    len.div_ceil(16) * 16 + 16
}

/// A task's buffers: one sub-space's columns of its rows (RVQ: the block's residuals), the
/// codes of every sub-space or stage (`skewed` apart), one search's distances.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) xs: Vec<f32>,
    pub(super) idx: Vec<u32>,
    pub(super) dist: Vec<f32>,
}

impl Scratch {
    /// The buffers resized to `xs`, `idx` and `dist` values, or an error where memory is
    /// short (many stages or sub-spaces, or very long rows, make them large).
    pub(super) fn size(&mut self, xs: usize, idx: usize, dist: usize) -> Result<()> {
        use crate::resources::resized;
        resized("a task's rows", &mut self.xs, xs)?;
        resized("a task's codes", &mut self.idx, idx)?;
        resized("a task's distances", &mut self.dist, dist)
    }
}

/// Rows per task: the task's rows of x (read once for each sub-space) in half of L2, a
/// multiple of 64 (the tall kernels' tile), 64 to 4096.
pub(crate) fn block_rows(l2: usize, d: usize) -> usize {
    let fit = l2 / 2 / (d.max(1) * std::mem::size_of::<f32>());
    (fit / 64 * 64).clamp(64, 4096)
}

/// Columns `[s * ds, (s + 1) * ds)` of each row of `x` (rows of `d`) into `out`, row after
/// row. Widths of 1, 2, 4, 8 and 16 as fixed-size copies: a copy of `ds` floats whose
/// length is not known is a call to `memcpy` per row.
///
/// The task's block of rows is in L2 by then: its first sub-space reads it from memory,
/// the others from L2. Splitting the block by sub-space in one pass, rows 16 at a time,
/// instead was no faster at M = 64, d / M = 2: 2% and 1% slower in two sets of 5
/// alternating runs (one thread; docs/performance.md).
fn gather(x: &[f32], d: usize, s: usize, ds: usize, out: &mut [f32]) {
    fn fixed<const W: usize>(x: &[f32], d: usize, c0: usize, out: &mut [f32]) {
        for (o, row) in out.chunks_exact_mut(W).zip(x.chunks_exact(d)) {
            let o: &mut [f32; W] = o.try_into().expect("W floats");
            *o = row[c0..c0 + W].try_into().expect("W columns");
        }
    }
    let c0 = s * ds;
    match ds {
        1 => fixed::<1>(x, d, c0, out),
        2 => fixed::<2>(x, d, c0, out),
        4 => fixed::<4>(x, d, c0, out),
        8 => fixed::<8>(x, d, c0, out),
        16 => fixed::<16>(x, d, c0, out),
        _ => {
            for (o, row) in out.chunks_exact_mut(ds).zip(x.chunks_exact(d)) {
                o.copy_from_slice(&row[c0..c0 + ds]);
            }
        }
    }
}

/// `codes[i * m + s]` = the nearest of sub-space `s`'s `k` codewords (`codebooks`, (m, k,
/// d / m), row-major) to columns `[s * ds, (s + 1) * ds)` of row `i` of `x` (rows of `d`).
/// `m` must divide `d`. The codes are written in `C`, which must hold `k` indices (the
/// callers check it with `check_code_type`).
///
/// The errors are those of `ops::assign` run on each sub-space in turn, and the first of
/// them in that order: [`check_finite`]'s for a codebook with a NaN or an infinity, or
/// [`Error::Overflow`] for the first row whose distance is not finite. Where the points
/// are finite, that is finite values whose squares overflow; a NaN or an infinity in a
/// point makes its distance in that sub-space not finite too (as `flags_non_finite_points`
/// says of the CPU's distance-argmin), so the caller need not read x for one first: on an
/// error, [`check_finite`] of the points says whether one was the cause.
pub(crate) fn product_codes<C: Code>(
    isa: Isa,
    parallel: bool,
    x: &[f32],
    d: usize,
    codebooks: &[f32],
    (m, k): (usize, usize),
    codes: &mut [C],
) -> Result<()> {
    if m == 0 || !d.is_multiple_of(m) {
        return Err(Error::invalid(
            "m",
            format!("{m} sub-vectors do not divide d = {d}"),
        ));
    }
    let ds = d / m;
    Shape::new(0, k, ds).validate()?;
    super::check_len(
        "codebooks",
        codebooks.len(),
        size("codebooks", &[m, k, ds])?,
    )?;
    // Whole rows (the callers have said so with `ops::rows`'s error).
    let n = x.len() / d;
    super::check_len("points", x.len(), n * d)?;
    super::check_len("codes", codes.len(), size("codes", &[n, m])?)?;
    let (norms, bad_codebook) = codebook_norms(codebooks, m, k, ds)?;
    // Sub-spaces past a bad codebook are never searched: its error comes first.
    let searched = bad_codebook.as_ref().map_or(m, |(s, _)| *s);
    let rows = block_rows(super::CacheSizes::detect().l2, d);
    // Per task, the first overflow as (sub-space, row): the loop's order.
    let task = |sc: &mut Scratch, (t, out): (usize, &mut [C])| {
        let len = out.len() / m;
        let xt = &x[t * rows * d..][..len * d];
        let cstride = skewed(len);
        // Sized by the first task of each thread's run of tasks, reused by the rest.
        sc.size(len * ds, m * cstride, len)?;
        let (xs, dist) = (&mut sc.xs[..len * ds], &mut sc.dist[..len]);
        let mut overflow = None;
        for s in 0..searched {
            gather(xt, d, s, ds, xs);
            let (cb, nm) = (&codebooks[s * k * ds..][..k * ds], &norms[s * k..][..k]);
            let idx = &mut sc.idx[s * cstride..][..len];
            distance_argmin(isa, false, xs, cb, nm, Shape::new(len, k, ds), idx, dist)?;
            // One pass without a branch, as `ops::check_overflow`.
            if overflow.is_none() && !dist.iter().fold(true, |ok, v| ok & v.is_finite()) {
                let r = dist.iter().position(|v| !v.is_finite()).unwrap_or(0);
                overflow = Some((s, t * rows + r));
            }
        }
        codes_into_rows(&sc.idx, cstride, searched, out, m);
        Ok::<_, Error>(overflow)
    };
    let first = in_blocks(parallel, codes, rows * m, task)?
        .into_iter()
        .flatten()
        .min();
    // An overflow is found only before a bad codebook's sub-space, so it comes first.
    if let Some((_, row)) = first {
        return Err(Error::Overflow { row });
    }
    bad_codebook.map_or(Ok(()), |(_, e)| Err(e))
}

/// The product of `dims`, or an error naming `what` where it overflows.
pub(crate) fn size(what: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |p, &v| p.checked_mul(v))
        .ok_or_else(|| {
            Error::invalid(
                what,
                format!("{dims:?} elements overflow the address space"),
            )
        })
}

/// The first codebook with a NaN or an infinity, and [`check_finite`]'s error for it.
pub(super) type BadCodebook = (usize, Error);

/// Each codebook's norms (`m` of `k` codewords of `dc`), as `assign_host` computes them,
/// and the first codebook whose norms are not all finite and that holds a NaN or an
/// infinity, with [`check_finite`]'s error for it (its norms and those after it are not
/// computed).
pub(super) fn codebook_norms(
    codebooks: &[f32],
    m: usize,
    k: usize,
    dc: usize,
) -> Result<(Vec<f32>, Option<BadCodebook>)> {
    let mut norms = crate::resources::zeroed::<f32>("the codeword norms", m * k)?;
    let chunks = codebooks
        .chunks_exact(k * dc)
        .zip(norms.chunks_exact_mut(k));
    for (s, (cb, nm)) in chunks.enumerate() {
        sq_norms(false, cb, dc, nm);
        if !nm.iter().all(|v| v.is_finite())
            && let Err(e) = check_finite("codebook", cb)
        {
            return Ok((norms, Some((s, e))));
        }
    }
    Ok((norms, None))
}

/// `task(scratch, (block, codes of the block))` on each block of `block` codes, in
/// parallel or in order, each thread's run of tasks sharing one [`Scratch`]; the results
/// in block order, or the error of the first block that failed (whatever the threads).
pub(super) fn in_blocks<C: Code, T: Send>(
    parallel: bool,
    codes: &mut [C],
    block: usize,
    task: impl Fn(&mut Scratch, (usize, &mut [C])) -> Result<T> + Send + Sync,
) -> Result<Vec<T>> {
    let done: Vec<Result<T>> = if parallel {
        let blocks = codes.par_chunks_mut(block).enumerate();
        blocks.map_init(Scratch::default, task).collect()
    } else {
        let mut sc = Scratch::default();
        let blocks = codes.chunks_mut(block).enumerate();
        blocks.map(|b| task(&mut sc, b)).collect()
    };
    done.into_iter().collect()
}

/// Codes kept by codebook (`idx`, columns `cstride` apart) into rows of `m` (`out`), the
/// first `searched` columns, narrowed to `C`.
///
/// Each codebook's codes written into the rows after its search instead were 5% slower at
/// M = 64, d / M = 2 (one thread, 5 alternating runs; the block's rows and codes then share
/// L2).
pub(super) fn codes_into_rows<C: Code>(
    idx: &[u32],
    cstride: usize,
    searched: usize,
    out: &mut [C],
    m: usize,
) {
    for (s, col) in idx.chunks(cstride).take(searched).enumerate() {
        for (row, &c) in out.chunks_exact_mut(m).zip(col) {
            row[s] = C::narrow(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_fit_half_of_l2() {
        assert_eq!(block_rows(1 << 20, 128), 1024);
        assert_eq!(block_rows(1 << 20, 8), 4096);
        assert_eq!(block_rows(256 << 10, 1024), 64);
        assert_eq!(block_rows(1 << 20, 100), 1280);
        assert_eq!(block_rows(0, 3), 64);
    }

    #[test]
    fn gather_copies_each_width() {
        for ds in 1..=17 {
            let (m, n) = (3, 5);
            let d = m * ds;
            let x: Vec<f32> = (0..n * d).map(|v| v as f32).collect();
            for s in 0..m {
                let mut out = vec![-1.0; n * ds];
                gather(&x, d, s, ds, &mut out);
                let want: Vec<f32> = x
                    .chunks_exact(d)
                    .flat_map(|r| &r[s * ds..(s + 1) * ds])
                    .copied()
                    .collect();
                assert_eq!(out, want, "ds {ds} s {s}");
            }
        }
    }
}
