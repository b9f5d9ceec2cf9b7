//! Fused distance-argmin on the CPU.
//!
//! x: (n, d) row-major, codebook: (k, d), norms: (k) = |c_j|^2; out idx: (n), dist: (n).
//!
//! ```text
//! score_ij = |c_j|^2 - 2 x_i.c_j          (|x_i|^2 is constant along a row: added last)
//! idx_i    = argmin_j score_ij            (lowest j wins a tie)
//! dist_i   = max(score_i,idx_i + |x_i|^2, 0)   (a NaN kept: see `finished`)
//! ```
//!
//! Fusion: a register tile of MR rows x NR codewords is computed over the whole of d, turned
//! into scores, and folded into per-lane running minima before the next tile; the n x k
//! distance matrix never exists, not even as a cache-sized block. Layout: the codebook is
//! packed once per call into panels of NR codewords, d-major (`panel[t][lane]`), and each
//! block of MR rows of x is packed t-major (`xt[t][r]`), so per step of d the micro-kernel
//! loads one contiguous run of NR codeword values and broadcasts MR consecutive x values.
//! (Against one or two panels, and up to 32 where at most 6 of a tile's rows start at one
//! offset of L1's 4 KiB set period, the rows are read in place instead: see
//! `DIRECT_MAX_MR`.)
//! Epilogue per panel and row: score = norm - 2 acc, the panel's vectors (two halves, or
//! one zmm for a panel of 16) folded lane by lane into the row's running (score, index),
//! the first half first (strict <, so a NaN score never wins); after the last panel, one
//! branch-free horizontal reduction per row (against a single zmm panel, the minimum's
//! reduction and its lowest lane).
//! A padded codeword has norm +inf: never chosen.
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
//!   The tiled kernel wherever the CPU has AVX-512F; at k <= 16, where neither v6 nor v7
//!   serves, v2's 6 x 16 tile with one zmm per row (`x86::rows6`: a panel of 16 is half
//!   of v3's, and each step is 6 FMAs that broadcast x from memory, where AVX2 takes 12 and
//!   6 broadcasts).
//! - v4 `scan` (AVX2, MR = 4, NR = 16), built for 5 <= d <= 8 against 2048 codewords or
//!   more; since AVX2's v6 takes every width (`tall_kernel`) it serves no shape by default
//!   and stays checked bit for bit against v2. It was for where the tiled kernels'
//!   epilogue (compares and blends to carry each lane's index) costs more than their 2 d
//!   FMAs: each panel's scores only lower
//!   per-lane minima, the block of panels where each lane last fell is noted once per
//!   block, and the one block holding a row's minimum is computed again at the end for its
//!   index. Same scores, same bits as v2 and v3. (AVX-512 had one too, until v6 beat it
//!   at every shape.)
//! - v5 `cols` (AVX-512: 12 codewords x 32 rows; AVX2: 6 x 16), for at most 2048 rows of
//!   d >= 32 against a codebook at least 4x larger (2x for d >= 512; [`codebook_stream`]):
//!   the roles swapped, codewords broadcast against rows in lanes, the rows packed into
//!   panels and the codebook a few tiles at a time, so a large codebook is read once and
//!   never copied whole. Same scores, same bits as v2 and v3.
//! - v6 `tall` (AVX-512: 64 rows), for d <= 8 against more than 4 codewords: the rows in
//!   the lanes, held in registers (above d = 4 some read from L1), against one codeword at
//!   a time (on AVX2 at some widths two: `x86::pairs`); v4's minima and recomputed panel
//!   (on AVX-512 against at most 32 panels, half panel), with panels for blocks and no
//!   horizontal reduction. Against at most four panels (5 to 128 codewords), each
//!   codeword's scores go into the rows' best and index at once, with no panel computed
//!   again. Same scores, same bits as v3. On AVX2 (32 rows in four ymm; panels of 16, so
//!   the index walk up to 64 codewords) for d <= 8 with `tall_wins`'s codebooks, where it
//!   serves instead of v2 and v4. Where the codebook is one group of panels, a task takes
//!   its blocks one at a time, each written out as it is done (`tall_stream`).
//! - v7 `few` (AVX-512: 8 codewords x 32 rows; AVX2: 4 x 16), for rows of 9 to 32 floats
//!   (AVX2: 9 to 16, to 32 against at most 128 codewords) against codebooks of up to 48 Ki
//!   floats (`few_wins`): v5's roles for many rows, each task packing its rows 32 (16) to
//!   a panel, the whole codebook (packed once, in tiles of 8 (4)) walked against each
//!   panel, the rows' best carried in registers across the tiles; no horizontal reduction,
//!   and on AVX-512 no norms' pass. Same scores, same bits as v3.

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
    /// The codewords (or rows) packed: the lanes past them are padding (norms of +inf for
    /// a codebook, zero rows for [`Packed::rows`]).
    len: usize,
    d: usize,
    /// The codewords are stored times -2 and each score's chain starts from the norm
    /// ([`folds`]); never for packed rows.
    fold: bool,
    /// The buffer goes back to [`SPARE`] when dropped (a codebook's, not rows').
    recycle: bool,
}

impl Packed {
    fn new(
        parallel: bool,
        codebook: &[f32],
        norms: &[f32],
        (k, d, nr): (usize, usize, usize),
        fold: bool,
    ) -> Result<Self> {
        let panels = k.div_ceil(nr);
        let mut data = spare_buffer(panels * nr * d)?;
        let scale = if fold { -2.0 } else { 1.0 };
        pack_panels(parallel, codebook, (d, nr), scale, &mut data);
        let mut padded_norms = vec![f32::INFINITY; panels * nr];
        padded_norms[..k].copy_from_slice(norms);
        Ok(Packed {
            data,
            norms: padded_norms,
            panels,
            len: k,
            d,
            fold,
            recycle: true,
        })
    }

    /// `n` rows of x in the same layout (panels of `nr` rows, zero rows past the end), for
    /// the kernels that read the codebook in place instead ([`codebook_stream`]). No norms.
    fn rows(parallel: bool, x: &[f32], (n, d, nr): (usize, usize, usize)) -> Result<Self> {
        let panels = n.div_ceil(nr);
        let mut data = crate::resources::zeroed_lazy::<f32>("the packed rows", panels * nr * d)?;
        pack_panels(parallel, x, (d, nr), 1.0, &mut data);
        Ok(Packed {
            data,
            norms: Vec::new(),
            panels,
            len: n,
            d,
            fold: false,
            recycle: false,
        })
    }
}

/// `src` (rows of `d`) times `scale` (1 or -2: exact either way) packed into `data`,
/// panels of `nr` rows, `d`-major within a panel (`panel[t][lane]`), padding lanes zero.
/// Every element is written: `data` may hold an earlier call's panels.
///
/// Panel by panel (a large codebook's packing, and the first touch of its pages, shared
/// between threads when the caller runs in parallel). A transpose in tiles of PACK_T steps
/// of d: a tile of the panel (PACK_T x nr floats, contiguous) is written whole from one
/// cache line of each of its rows, so every line read or written is touched in L1 only,
/// and the panel is written once, in order. (Writing one row's lane down the whole panel
/// at a time strided the stores nr floats apart: at d = 2048 a panel of 256 KB, crossed nr
/// times.)
fn pack_panels(parallel: bool, src: &[f32], (d, nr): (usize, usize), scale: f32, data: &mut [f32]) {
    let pack = |(p, panel): (usize, &mut [f32])| {
        let rows: Vec<&[f32]> = src[p * nr * d..].chunks_exact(d).take(nr).collect();
        for (tile, t0) in panel.chunks_mut(PACK_T * nr).zip((0..d).step_by(PACK_T)) {
            for (lane, row) in rows.iter().enumerate() {
                for (step, &v) in row[t0..].iter().take(PACK_T).enumerate() {
                    tile[step * nr + lane] = v * scale;
                }
            }
            // Padding lanes (the last panel only): zeros.
            for step in tile.chunks_exact_mut(nr) {
                step[rows.len()..].fill(0.0);
            }
        }
    };
    if parallel && data.len() > nr * d {
        data.par_chunks_mut(nr * d).enumerate().for_each(pack);
    } else {
        data.chunks_mut(nr * d).enumerate().for_each(pack);
    }
}

impl Drop for Packed {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        if self.recycle
            && data.len() * std::mem::size_of::<f32>() <= SPARE_MAX_BYTES
            && let Ok(mut spare) = SPARE.lock()
            && spare.len() < data.len()
        {
            *spare = data;
        }
    }
}

/// Steps of d per tile of the packing's transpose: one 64-byte line of each codeword.
const PACK_T: usize = 16;

/// The largest packed codebook kept for the next call.
const SPARE_MAX_BYTES: usize = 1 << 30;

/// The last packed codebook's buffer, kept for the next call: a fresh buffer of hundreds of
/// megabytes costs its page faults and the kernel's zeroing of every page on each call
/// (40% of a call of 256 rows against 65,536 x 2048 codewords), where reusing one costs
/// nothing. One buffer, at most [`SPARE_MAX_BYTES`]; concurrent calls allocate their own.
static SPARE: std::sync::Mutex<Vec<f32>> = std::sync::Mutex::new(Vec::new());

/// A buffer of `len` floats whose contents are unspecified (the spare one when it is large
/// enough), or an error if a new one does not fit.
fn spare_buffer(len: usize) -> Result<Vec<f32>> {
    let spare = SPARE.lock().map(|mut s| std::mem::take(&mut *s));
    match spare {
        Ok(mut v) if v.len() >= len => {
            v.truncate(len);
            Ok(v)
        }
        // Fresh pages, first touched by the (parallel) packing.
        _ => crate::resources::zeroed_lazy::<f32>("the packed codebook", len),
    }
}

/// `|v|^2` in f32 with 16 independent partial sums, so the loop vectorizes and its
/// rounding does not depend on the ISA.
#[inline(always)]
pub(crate) fn sq_norm(v: &[f32]) -> f32 {
    // Fewer than 16 floats: lane l holds only v[l]^2 and the rest are zeros, so the sum of
    // the lanes is that of the squares in order (adding +0 to a sum of squares changes no
    // bit), without the 16-step chain.
    if v.len() < 16 {
        return v.iter().fold(0.0, |s, &x| s + x * x);
    }
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

/// One call of a micro-kernel: `mr` rows of x over one chunk of d, element (r, t) of the
/// chunk at `x[r * rs + t * ts]` (packed t-major: `rs = 1, ts = mr`; read in place from
/// row-major x: `rs = d, ts = 1`), against the codebook panels in `panels`
/// over the same chunk (`t0..t0 + kc`). Each panel's accumulator tile starts at zero on the
/// first chunk (`first`) or from `acc` (one `mr * nr` tile per panel of the range, in
/// order), and is stored back to `acc` unless this is the last chunk (`last`); on the last
/// chunk the scores are folded instead, and the range's best score (without |x|^2) and its
/// index are written per row to `val` / `idx`, the lowest index on a tie.
///
/// A step over the whole of d (`first` and `last`) may cover `blocks` blocks of MR rows
/// alike: block b's element (r, t) at `x[b * bs + r * rs + t * ts]`, its rows' results at
/// `val` / `idx` from `b * MR` on. The 6 x 16 tile (`x86::rows6`: AVX2's, and AVX-512's
/// at k <= 16) walks the blocks itself; the other kernels run such a step one block at a
/// time ([`Step::each_block`]), paying per block what the 6 x 16 tile pays per step
/// ([`rows_block`] gives such steps to every kernel that reads blocks in place in lanes:
/// the 6 x 16 tile, the portable one, and the scan kernel where a test forces it).
pub(crate) struct Step<'a> {
    x: &'a [f32],
    rs: usize,
    ts: usize,
    p: &'a Packed,
    panels: std::ops::Range<usize>,
    t0: usize,
    kc: usize,
    first: bool,
    last: bool,
    blocks: usize,
    bs: usize,
}

impl<'a> Step<'a> {
    /// A step over the whole of d of one block of `mr` vectors packed t-major (`x[t * mr +
    /// r]`: a tile's rows, or the cols kernels' codewords) against `panels` of `p`.
    #[cfg(target_arch = "x86_64")]
    fn packed(x: &'a [f32], mr: usize, p: &'a Packed, panels: std::ops::Range<usize>) -> Self {
        Step {
            x,
            rs: 1,
            ts: mr,
            p,
            panels,
            t0: 0,
            kc: p.d,
            first: true,
            last: true,
            blocks: 1,
            bs: 0,
        }
    }

    /// Runs `kernel` (of `mr` rows) on each block of a step of several in turn, as steps of
    /// one block: the kernels that do not walk the blocks themselves. Returns whether the
    /// step had several (and so was done here).
    fn each_block(&self, mr: usize, val: &mut [f32], idx: &mut [u32], kernel: RowsKernel) -> bool {
        if self.blocks <= 1 {
            return false;
        }
        // Only whole-d steps cover several blocks: no accumulator tiles are carried.
        assert!(self.first && self.last, "several blocks in a chunked step");
        for b in 0..self.blocks {
            let one = Step {
                x: &self.x[b * self.bs..],
                panels: self.panels.clone(),
                blocks: 1,
                ..*self
            };
            kernel(&one, &mut [], &mut val[b * mr..], &mut idx[b * mr..]);
        }
        true
    }
}

/// A micro-kernel: see [`Step`].
type RowsKernel = fn(s: &Step, acc: &mut [f32], val: &mut [f32], idx: &mut [u32]);

/// The tiled (or scan) kernel of `isa` for `k` codewords, its MR and NR. On AVX-512, a
/// codebook of at most 16 would fill at most half of the 32-wide panel: the 6 x 16 tile
/// instead, in one zmm per row (the AVX2 tile's FMAs, the same bits).
fn kernel_for(isa: Isa, scan: bool, k: usize) -> (RowsKernel, usize, usize) {
    match isa {
        Isa::Portable => (rows_portable, PORTABLE_MR, PORTABLE_NR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if scan => (x86::scan_avx2_entry, x86::SCAN256_MR, x86::AVX2_NR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (x86::rows_avx2_entry, x86::AVX2_MR, x86::AVX2_NR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if k <= x86::AVX2_NR => (x86::rows6_avx512_entry, x86::AVX2_MR, x86::AVX2_NR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (x86::rows_avx512_entry, x86::AVX512_MR, x86::AVX512_NR),
    }
}

/// Whether [`rows_stream`] serves a shape on `isa`: on AVX-512, rows of more than
/// [`SCAN_MAX_D`] floats (narrower ones fold, and the tall kernels take them) up to
/// [`FEW_MAX_D`], against codebooks of at most [`FEW_MAX_FLOATS`]. Against the kernels it replaces
/// there (the 12-row AVX-512 tile; at k <= 16 the 6-row AVX2 one), on the 2-core Zen 4 VM
/// (2026-12-06), `vqkit bench --op assign --n 100000 --k K --d D --threads T --seconds
/// 0.3`, one build with the choice read once from the environment, the replaced kernel
/// first in each pair, medians of the pairs' ratios (new / old), 3 pairs on one thread:
/// d = 9, k = 16 0.580, k = 32 0.544, k = 256 0.922; d = 16, k = 16 0.706, k = 32 0.684,
/// k = 64 0.779, k = 128 0.881, k = 256 0.950; d = 24, k = 24 0.639; d = 32, k = 16 0.914,
/// k = 32 0.817, k = 64 0.876, k = 128 0.948, k = 256 0.944; 5 pairs on two threads: d = 9,
/// k = 16 0.639; d = 16, k = 16 0.704, k = 32 0.669, k = 256 0.945; d = 32, k = 16 0.837,
/// k = 32 0.774, k = 64 0.894, k = 256 0.981.
///
/// On AVX2 (tiles of 4 codewords, panels of 16 rows), before the two changes of the next
/// paragraph, up to [`FEW256_MAX_D`] only, against the 6-row AVX2 tile, the same command
/// with `--isa avx2` on the same VM, 3 pairs on one thread: d = 9, k = 16 0.653, k = 64
/// 0.967, k = 256 0.842; d = 12, k = 16 0.713; d = 16, k = 16 0.755, k = 32 0.824, k = 64
/// 0.915, k = 128 1.022, k = 256 0.927; 5 pairs: d = 12, k = 32 0.798, k = 256 0.877;
/// d = 20, k = 16 0.905; two threads, 5 pairs: d = 9, k = 16 0.712; d = 12, k = 64 0.867;
/// d = 16, k = 16 0.731, k = 256 0.935. From d = 24 it lost or tied (5 pairs: d = 24,
/// k = 16 1.016, k = 64 1.029; 3 pairs: k = 128 1.087, k = 256 1.071; d = 32, k = 16 1.103,
/// k = 256 1.082). Between 17 and 23 only d = 20, k = 16 was measured: 16 is the widest
/// width measured to win at every k tried.
///
/// Since the few kernel prefetches a line per step (`x86::Ahead`) and `pack_rows` copies
/// the last steps directly, AVX2's few kernel also wins up to [`FEW_MAX_D`] against at
/// most [`FEW256_WIDE_MAX_K`] codewords (a build reading AVX2's widest rows from the
/// environment, against d <= 16 at 673e085, 5 pairs, one thread: k x d = 8 x 32 0.526,
/// 16 x 20 0.661, 16 x 24 0.860, 16 x 28 0.787, 16 x 32 0.775, 32 x 17 0.783, 32 x 20
/// 0.799, 32 x 32 0.857; two threads 16 x 24 0.818, 16 x 32 0.933, 32 x 24 0.857 (7
/// pairs), 32 x 32 1.066 (5 pairs) and 0.740 (7 pairs)), not beyond (64 x 24 1.042, 64 x 32
/// 1.059, 256 x 24 1.073, 256 x 32 1.043, 48 x 32 1.132; 48 x 24 0.846 and two threads
/// 0.943, 64 x 20 0.884: between 33 and 63 codewords the two cross by width).
///
/// Since its panel's norms take a cheaper pass, after the walk (`x86::few_norms`), it wins
/// up to 128 codewords at the widths measured, 20 to 32 (builds with the bound at 32 and at
/// 64 or unbounded, 5 pairs, one thread, `--isa avx2`: 40 x 28 0.758, 48 x 24 0.865, 48 x
/// 32 0.901, 64 x 20 0.875, 64 x 24 0.888, 64 x 32 0.916, 96 x 32 0.951, 128 x 24 0.951,
/// 128 x 32 0.980), and loses or ties beyond (256 x 32 1.039, 512 x 24 1.012, 1024 x 32
/// 0.995; 256 x 20 0.965, a gain left out).
fn few_wins(isa: Isa, d: usize, k: usize) -> bool {
    let widest = match isa {
        Isa::Avx512 => FEW_MAX_D,
        Isa::Avx2 if k <= FEW256_WIDE_MAX_K => FEW_MAX_D,
        Isa::Avx2 => FEW256_MAX_D,
        Isa::Portable => return false,
    };
    d > SCAN_MAX_D && d <= widest && k > NARROW_K && k.saturating_mul(d) <= FEW_MAX_FLOATS
}

/// The widest rows the few kernel takes on AVX2 against more than [`FEW256_WIDE_MAX_K`]
/// codewords (see [`few_wins`]).
const FEW256_MAX_D: usize = 16;

/// The most codewords against which AVX2's few kernel takes rows as wide as on AVX-512
/// (see [`few_wins`]).
const FEW256_WIDE_MAX_K: usize = 128;

/// The widest rows [`rows_stream`] takes (see [`few_wins`]), and the widest whose norms
/// `x86::few_walk` takes in its first tile (partials of at most two steps). What the few
/// kernel saves per row (the reduction across lanes; on AVX-512 the norms' pass) is the
/// same at any width, and what it adds (packing: a load and a store per element) grows with
/// d; wider, it lost (the command of [`few_wins`], one thread, 3 pairs: d = 40, k = 16
/// 1.055, k = 128 0.972; d = 48, k = 16 1.098; d = 64, k = 16 1.225, k = 32 1.100, k = 64
/// 1.085). Where between 32 and 40 the two cross at each k was not measured.
const FEW_MAX_D: usize = 32;

/// The largest codebook [`rows_stream`] takes, in floats (see [`few_wins`]): 192 KiB, so
/// that the tiles the kernel walks once per panel of 32 rows (16 on AVX2) stay in L2 (a
/// constant, not the detected L2: every x86 core of the last decade has 256 KiB or more).
/// The tiled kernels' per-row reduction shrinks against the walk as k grows; the few kernel
/// had been measured to k = 256 only (2% to 8% gained there) and held to it. With the
/// prefetch of `x86::Ahead`, against a build reading the bound from the environment (at
/// most 256 codewords), `vqkit bench --op assign --n N --k K --d D --threads T --seconds
/// 0.3`, medians of the alternating pairs' ratios, n x k x d, the Zen 4 VM: one thread, 5
/// pairs, 100,000 x 512 x 16 0.877, x 512 x 32 0.949, 50,000 x 2048 x 24 0.961, x 4096 x 12
/// 0.973; `--isa avx2` 100,000 x 512 x 16 0.984, 50,000 x 2048 x 12 0.949; two threads
/// 100,000 x 512 x 16 0.892, x 512 x 32 0.956, 50,000 x 1536 x 32 0.951. Past L2 it still
/// tied on one thread, 3 pairs (20,000 x 16,384 x 32 0.995, 10,000 x 65,536 x 32 0.995,
/// 10,000 x 262,144 x 16 0.990; two threads 20,000 x 65,536 x 16 0.949), but there it reads
/// the codebook from L3 or memory once per panel, 16 flop a byte (8 on AVX2), which many
/// threads sharing memory would not sustain; so not past this bound. Only 512 x 16 gained
/// clearly; the rest by 2% to 5%, within the noise of single sets.
const FEW_MAX_FLOATS: usize = 48 * 1024;

/// v7 `few`: many short rows against a few codewords, with the rows in the lanes. Where the
/// codewords are in the lanes (the tiled kernels), every row ends in a reduction across its
/// lanes, and at k <= 32 that, the running best across the tile's rows and the norms' pass
/// cost more than the row's 2 k d FMAs. Here each task packs its rows 32 to a panel (two
/// vectors of 16 rows per step of d, [`pack_rows`]; with AVX2 16, two vectors of 8), and
/// walks the codebook, packed once into tiles of [`x86::FEW_MR`] codewords
/// (`tile[t * 8 + j]`; with AVX2 [`x86::FEW256_MR`]), each codeword broadcast against the
/// panel: one compare and two blends per codeword and vector of rows carry the rows' best,
/// in codeword order with a strict `<`, and no lane is ever reduced. The rows' norms come
/// from the walk's first tile on AVX-512 (`x86::few_walk`), from a pass over the panel
/// after the walk on AVX2 (`x86::few_norms`). Each score is the tiled kernels' chain of
/// FMAs from zero (`c * x + acc` is `x * c + acc`) and `norm - 2 acc` in one rounding, so
/// the bits are theirs (unfolded: d > 8 only).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn rows_stream(
    isa: Isa,
    parallel: bool,
    rows: usize,
    x: &[f32],
    codebook: &[f32],
    norms: &[f32],
    shape: Shape,
    idx: &mut [u32],
    dist: &mut [f32],
) -> Result<()> {
    let (mr, nr) = x86::few_for(isa);
    let Shape { k, d, .. } = shape;
    // At most `FEW_MAX_FLOATS` (`few_wins`): 192 KiB.
    let mut tiles = vec![0.0f32; k.div_ceil(mr) * mr * d];
    for (j0, tile) in (0..k).step_by(mr).zip(tiles.chunks_exact_mut(mr * d)) {
        pack_rows(&codebook[j0 * d..(j0 + mr).min(k) * d], d, mr, tile);
    }
    for_each_task(parallel, rows, x, d, idx, dist, |xs, idx, dist| {
        let mut panel = FewPanel([0.0f32; FEW_PANEL_MAX]);
        let panel = &mut panel.0[..nr * d];
        let blocks = xs
            .chunks(nr * d)
            .zip(idx.chunks_mut(nr).zip(dist.chunks_mut(nr)));
        for (b, (block, (idx, dist))) in blocks.enumerate() {
            // The next panel's rows, fetched into L1 a line per step of the walk over
            // this one (`x86::Ahead`).
            let next = ((b + 1) * nr * d).min(xs.len());
            let ahead = &xs[next..(next + nr * d).min(xs.len())];
            if block.len() < nr * d {
                panel.fill(0.0);
            }
            pack_rows(block, d, nr, panel);
            x86::few_entry(isa, panel, d, (&tiles, norms), ahead, idx, dist);
        }
    });
    Ok(())
}

/// The most floats of the few kernel's panel of rows (32 rows of [`FEW_MAX_D`]).
#[cfg(target_arch = "x86_64")]
const FEW_PANEL_MAX: usize = 32 * FEW_MAX_D;

/// The few kernel's packed panel of rows on the stack, on cache lines (see [`TallTile`]).
#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct FewPanel([f32; FEW_PANEL_MAX]);

/// Rows per parallel task at most: a multiple of the micro-kernels' MR (4, 6, 12), large
/// enough to amortise the task and to reuse each codebook group many times, small enough to
/// balance two to a few dozen threads.
const TASK_ROWS: usize = 384;

/// Rows per task for rows of `d` floats: [`TASK_ROWS`], or fewer for wide rows so that the
/// task's packed rows stay in half of L2 (a multiple of 12 rows, 12 at least). A function
/// of d and the machine only, never of the thread count; and rows are independent, so any
/// task size gives the same bits.
fn task_rows(caches: super::CacheSizes, d: usize) -> usize {
    let fit = caches.l2 / 2 / (d.max(1) * std::mem::size_of::<f32>());
    (fit / 12 * 12).clamp(12, TASK_ROWS)
}

/// How a task walks the codebook, from the cache sizes (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Blocking {
    /// Steps of d per chunk: a chunk of MR rows of x stays in L1 while panels pass by.
    pub kc: usize,
    /// Panels per group: a group of the codebook stays in L2 while the task's row blocks
    /// pass over it. (With `cols`, tiles of codewords per group: [`cols_group`].)
    pub group: usize,
    /// Rows per parallel task ([`task_rows`]).
    pub rows: usize,
    /// Whole blocks of MR rows are read in place rather than packed: for codebooks of at
    /// most two panels, where packing a row would cost about as much as its products, and
    /// against up to [`DIRECT_MAX_PANELS`] for tiles of which at most [`DIRECT_MAX_MR`]
    /// rows start at one offset of L1's set period ([`rows_per_l1_set`]).
    pub direct: bool,
    /// Short rows against many panels: the scan kernels (AVX2; minima only, the index found
    /// afterwards) rather than the tiled ones. Only where d is one chunk (`kc >= d`).
    pub scan: bool,
    /// Few rows against a large codebook: the rows packed and the codebook read in place
    /// ([`codebook_stream`]); `group` then counts tiles of its codewords.
    pub cols: bool,
    /// Short rows: the tall kernels (a tile of 16 to 64 rows held in registers, one
    /// codeword at a time) rather than the tiled or scan ones. Only where d is one chunk
    /// and the scores fold (`folds`); the rows are then always packed.
    pub tall: bool,
    /// Many rows of 9 to 32 floats against a codebook of up to 48 Ki floats ([`few_wins`]):
    /// rows packed 32 to a panel, the codebook in tiles of 8 broadcast against them
    /// ([`rows_stream`]; with AVX2 16 rows and tiles of 4; not in the portable build). Only
    /// where the scores do not fold and `cols` is not set (few rows against a codebook four
    /// times their number take [`codebook_stream`]); elsewhere moot.
    pub few: bool,
}

impl Blocking {
    /// Blocks for `mr` x `nr` tiles over dimension `d` and `panels` panels: x's chunk of
    /// MR rows in half of L1, the codebook group in half of L2 (the other halves hold the
    /// streamed operand and the task's packed rows). Chunks are even (no short tail chunk).
    pub(crate) fn for_shape(
        caches: super::CacheSizes,
        mr: usize,
        nr: usize,
        d: usize,
        panels: usize,
    ) -> Blocking {
        let f32s = std::mem::size_of::<f32>();
        let kc_max = (caches.l1d / 2 / (mr * f32s)).max(16);
        let kc = d.div_ceil(d.div_ceil(kc_max).max(1)).max(1);
        let group = (caches.l2 / 2 / (nr * d.max(1) * f32s)).clamp(1, panels.max(1));
        let rows = task_rows(caches, d);
        let direct =
            panels <= 2 || (rows_per_l1_set(mr, d) <= DIRECT_MAX_MR && panels <= DIRECT_MAX_PANELS);
        Blocking {
            kc,
            group,
            rows,
            direct,
            scan: false,
            cols: false,
            tall: false,
            few: false,
        }
    }
}

/// A tile reads its rows in place ([`Blocking::direct`], from lanes for tiles of up to
/// [`LANES_MAX_MR`] rows) against up to [`DIRECT_MAX_PANELS`] panels, not only against one
/// or two, where at most this many of its rows start at one offset of L1's set period
/// ([`rows_per_l1_set`]): the 6-row AVX2 and 4-row portable tiles at any width, the 12-row
/// AVX-512 tile as below. Packing a block costs a load, a store and a share of its norms
/// per element of x, against k / 8 FMAs (AVX2) for that element once packed: a few percent
/// of a call at k = 256, a fifth at k = 64; read in place, the rows pay for their norms in
/// a pass at the end of each task instead ([`fuses_norms`]). On a 2-core Zen 1 (AVX2, 512
/// KiB of L2 per core), `vqkit bench --op assign --n N --k K --d D --threads 2 --seconds
/// 1`, the build before (2614fd2) and this one alternating, the one before first, 5 runs,
/// medians, in ms: 100,000 x 64 x 32 9.69 -> 7.78, x 128 x 16 10.01 -> 8.61, x 256 x 2 5.03
/// -> 4.80, x 256 x 8 9.60 -> 8.86, x 256 x 32 28.62 -> 27.71, x 512 x 32 53.08 -> 51.58, x
/// 256 x 128 100.56 -> 93.32, x 512 x 128 194.5 -> 186.3; 76,293 x 256 x 512 292.4 ->
/// 276.6; 19,073 x 256 x 2048 293.3 -> 283.2. Against larger codebooks the packing weighs
/// little and the rows in place lost: read in place at every size, 100,000 x 1024 x 32
/// 100.5 -> 102.8 and, the order reversed, 101.2 -> 102.7; x 4096 x 32 391.6 -> 408.0
/// (reversed; 5 runs each), one thread 795.0 -> 840.6 (3 runs); x 1024 x 128 365.5 -> 362.3
/// (reversed).
///
/// The 12-row AVX-512 tile reads its rows in place too wherever at most this many of them
/// start at one offset ([`rows_per_l1_set`]): all but rows of a multiple of 1024 floats. On a
/// 2-core Zen 4 (AVX-512 on 256-bit units; 32 KiB of L1, 8-way; 1 MiB of L2 per core),
/// `vqkit bench --op assign --n N --k K --d D --threads 1 --seconds 0.3`, one build with
/// the choice read once from the environment, packed and in place alternating, 3 runs,
/// medians of the ratios (in place / packed): 100,000 x 128 x 32 0.870, x 256 x 16 0.934,
/// x 256 x 32 0.934, x 512 x 32 0.961, x 1024 x 32 0.982, x 256 x 128 0.899, x 512 x 128
/// 0.952, x 128 x 9 0.962, x 200 x 6 0.961, x 256 x 12 0.975, x 512 x 15 0.976; 50,000 x
/// 1024 x 128 0.982; 76,293 x 256 x 512 0.944; 30,000 x 512 x 512 0.967; 20,000 x 1024 x
/// 512 1.003; 50,000 x 256 x 640 0.942, x 768 0.949; 60,000 x 256 x 682 0.947; 40,000 x
/// 256 x 992 0.954, x 1000 0.945, x 1025 0.988, x 1056 0.954; 25,000 x 256 x 1536 0.960
/// (rows 6 KiB apart: 6 of the 12 at each of two offsets); 20,000 x 256 x 2000 0.952 (and
/// 100,000 x 64 x 32, two panels, in place in both: 1.005). Rows of 1024 and 2048 floats
/// lost: 38,000 x 256 x 1024 1.071, 40,000 x 512 x 1024 1.090, 19,073 x 256 x 2048 1.066
/// and 1.070. There the 12 rows start at one offset of the 4 KiB period, so at each step
/// of d the tile reads 12 lines of one set of 8 ways at the same place of their pages. At
/// 1025 floats (rows 4 bytes apart in the period) the 12 lines of a step mostly share a
/// set too, at different offsets, and in place tied; at 1000 (rows 96 bytes apart) they
/// lie in 12 sets. So the rule is the same offset, not the same set; which part of the
/// core loses there (the set's 8 ways, or the 4 KiB aliasing of the load queue) was not
/// measured. (The AVX2 tile's 6 rows in place won at 2048: 19,073 x 256 x 2048 above.)
const DIRECT_MAX_MR: usize = 6;

/// The span of addresses over which x86 cores' L1 data caches repeat their sets: 64 sets
/// of 64-byte lines (32 KiB in 8 ways, 48 KiB in 12).
const L1_SET_PERIOD: usize = 4096;

/// How many of a tile's `mr` rows of `d` floats, read in place, start at the same offset
/// of the [`L1_SET_PERIOD`] (and so in the same set of L1, at the same place of their
/// 4 KiB pages): rows `4 d` bytes apart start at `L1_SET_PERIOD / gcd(4 d, L1_SET_PERIOD)`
/// offsets (one where `4 d` is a multiple of it), the rows spread over them in turn. The
/// micro-kernel reads the rows a few floats at a time, all at the same offset in d, so
/// rows that start at one offset meet in one set at every step (see [`DIRECT_MAX_MR`]).
fn rows_per_l1_set(mr: usize, d: usize) -> usize {
    // Wrapping is exact here: 2^usize::BITS is a multiple of the period.
    let bytes = d.wrapping_mul(std::mem::size_of::<f32>()) % L1_SET_PERIOD;
    // The period is a power of two, so the gcd is the stride's largest power-of-two factor.
    let gcd = if bytes == 0 {
        L1_SET_PERIOD
    } else {
        1 << bytes.trailing_zeros()
    };
    mr.div_ceil(L1_SET_PERIOD / gcd)
}

/// Codebooks of at most this many panels are read against rows in place by tiles at most
/// [`DIRECT_MAX_MR`] of whose rows start at one offset of L1's set period (512 codewords on
/// AVX2, 1024 on AVX-512): see there.
const DIRECT_MAX_PANELS: usize = 32;

/// Rows at most this wide went to the scan kernels (see `x86::scan_walk`), and go to the
/// tall ones ([`tall_wins`]). Against the tiled kernel, `vqkit bench --op assign --threads
/// 2` (2 or 3 alternating runs): d = 2, k = 4096 22 -> 15.5 ms, k = 65,536 256 -> 150 ms;
/// d = 4, k = 4096 30 -> 25 ms; d = 8, k = 4096 to 262,144 the same to 5% faster; d = 16,
/// k = 4096 5% slower. With `--isa avx2`: d = 2, k = 65,536 320-360 -> 206-310 ms; d = 8,
/// k = 4096 62 -> 44-57 ms.
const SCAN_MAX_D: usize = 8;

/// Codebooks of at least this many codewords went to the scan kernels (now to the AVX2 tall
/// kernel, [`tall_kernel`]): below, the work each call repeats per row (the reduction, one
/// block computed again) weighs too much (d = 2 to 8, k = 256: 1.4x to 1.6x slower than the
/// tiled kernel). (Rows of at most 4 floats took them from 1024 codewords, 1dd8c3e: d = 2,
/// k = 1024 35.4 -> 30.8 ms, k = 2048 68.4 -> 51.7; d = 4, k = 1024 46.8 -> 44.4, in the
/// runs below; until the AVX2 tall kernel took those rows, [`tall_kernel`].)
///
/// On a 2-core Zen 1 (AVX2), `vqkit bench --op assign --n 100000 --k K --d D --threads 1
/// --seconds 1`, the tiled kernel against the scan kernel (a build with the bound read once
/// from the environment), 3 alternating runs, medians: d = 8, k = 2048 135.1 -> 126.6 ms,
/// k = 1024 68.9 -> 70.0; d = 6, k = 2048 112.9 -> 112.3, k = 1024 57.8 -> 57.3; d = 5,
/// k = 1024 52.9 -> 50.6 (the runs' third pair 82-88 ms, the machine busy); at k = 256
/// the tiled kernel kept winning (d = 8 19.3 against 24.7 ms, d = 2 10.7 against 13.3).
const SCAN_MIN_K: usize = 2048;

/// Whether the scan kernels serve a shape (rather than the tiled ones), where the
/// instruction set has them ([`kernel_for`]: AVX2) and the tall ones do not serve it.
/// Since the AVX2 tall kernel serves every codebook `tall_wins` gives it (see
/// [`tall_kernel`]), which includes all of these, the scan kernels run only where a
/// blocking asks for them (the tests); they stay as the minima walk's first form, checked
/// bit for bit against the tiled kernel.
fn scan_wins(d: usize, k: usize) -> bool {
    d <= SCAN_MAX_D && k >= SCAN_MIN_K
}

/// Whether the tall kernels serve a shape (rather than the tiled or scan ones), where the
/// instruction set has one ([`tall_kernel`]: AVX-512 and AVX2): rows of d <= 8 against
/// more than [`NARROW_K`] codewords. The first bounds (below) were measured on AVX-512. Against
/// the kernels they replace, `vqkit bench --op assign --threads 2`, 3 alternating runs,
/// medians, n = 100,000 unless given: d = 2, k = 32 0.84 -> 0.64 ms, k = 256 2.07 -> 1.23
/// ms, k = 4096 (the scan kernel) 13.2 -> 9.3 ms; d = 4, k = 256 2.49 -> 1.90 ms, k = 1024
/// 7.97 -> 4.93 ms, k = 4096 20.1 -> 16.5 ms; d = 6, k = 256 3.52 -> 2.94 ms, k = 4096 30.5
/// -> 27.4 ms; d = 8, k = 256 3.78 -> 3.59 ms, k = 1024 11.8 -> 10.0 ms, k = 4096 37.7 ->
/// 35.2 ms, k = 65,536 (n = 19,073) 105 -> 102 ms, k = 262,144 (n = 4768) 107 -> 104 ms;
/// d = 2, k = 65,536 (n = 76,293) 101 and 102 ms, k = 262,144 (n = 19,073) 111 -> 102 ms.
/// Below those k they lost (d = 2, k = 16 0.58 -> 0.78 ms; d = 4, k = 64 0.88 -> 1.11 ms;
/// d = 8, k = 64 1.47 -> 1.82 ms, k = 128 2.17 -> 2.35 ms): a row's minimum costs one panel
/// computed again, against few panels. With AVX2's 16 registers (`--isa avx2` on that Zen 4
/// VM, one or two vectors of 8 rows per tile) they lost or tied: d = 8, k = 4096 48 -> 61
/// ms, d = 4, k = 1024 9.2 -> 10.2 ms, d = 2, k = 4096 18.3 and 18.4 ms. On a Zen 1, two
/// vectors won at d <= 4 (see [`tall_kernel`]), and AVX2 took them there; four vectors
/// up to d = 3 gained again on the Zen 4 VM (`x86::TALL256_MR`: d = 2, k = 4096 0.670),
/// and once its rows were packed with AVX (`x86::pack_narrow_avx`) AVX2 took every width.
///
/// Against at most [`TALL_INDEX_MAX_PANELS`] panels (128 codewords on AVX-512, 64 on AVX2)
/// the tall kernel carries each lane's index instead (`x86::tall_index_walk`), which wins
/// against the tiled kernels there too (below): up to 128 codewords on AVX-512, 64 on AVX2
/// (whose 65 to 128 take the minima walk).
///
/// Until b51eaef, between 129 and 255 codewords at d > 2 the tiled kernels stayed: the
/// first bound (the minima walk lost at d = 8, k = 128 and won at 256) and the index
/// walk's reach (to 128) left them there, unmeasured. Measured after the half panels and
/// four vectors of rows (7d0fcaa, 65217a7, f7a1e12), the tall kernels win there (0.45 to
/// 0.90; not measured at k = 129 to 135, d = 8): a build reading the bound from the
/// environment, tall against tiled, `vqkit bench --op assign --n
/// 100000 --k K --d D --threads T --seconds 0.3`, 5 alternating pairs, medians, k x d:
/// one thread 192 x 4 0.484, 160 x 8 0.721, 224 x 6 0.684, 136 x 3 0.446; `--isa avx2`
/// 192 x 4 0.587, 160 x 8 0.903, 224 x 6 0.743; two threads 192 x 4 0.517, 240 x 8
/// 0.839, 136 x 3 0.469. So every codebook of more than [`NARROW_K`] codewords.
fn tall_wins(d: usize, k: usize) -> bool {
    d <= SCAN_MAX_D && k > NARROW_K
}

/// Codewords per panel of the AVX2 tall kernel (two ymm: `x86::AVX2_NR`).
#[cfg(target_arch = "x86_64")]
const TALL256_NR: usize = 16;

/// The most panels a step of the tall kernel walks carrying each lane's index rather than
/// its minimum alone. `vqkit bench --op assign --n 100000 --threads 2`, 3 alternating runs
/// (2026-12-04, Zen 4 VM), the build before (the tiled kernels, AVX2's 16-wide one at
/// k <= 16; at k = 32, d = 2 the minima walk) against the index walk, medians: k = 8,
/// d = 1 0.45 -> 0.25 ms; k = 16, d = 2 0.44 -> 0.33 ms, d = 4 0.47 -> 0.36 ms, d = 8
/// 0.53 -> 0.51 ms; k = 32, d = 2 0.55 -> 0.36 ms; k = 64, d = 4 0.86 -> 0.57 ms, d = 8
/// 1.09 -> 0.92 ms; k = 128, d = 4 1.34 -> 0.90 ms, d = 8 1.84 -> 1.54 ms.
#[cfg(target_arch = "x86_64")]
const TALL_INDEX_MAX_PANELS: usize = 4;

/// Codewords per panel of the tall kernel (AVX-512's: two zmm).
#[cfg(target_arch = "x86_64")]
const TALL_NR: usize = 32;

/// The tall kernel for rows of `d` floats with its rows per tile and panel width, where
/// the instruction set has one: AVX-512 and AVX2 (`TALL256_MAX_D`) for d <= 8.
///
/// On AVX2 the tiled kernel's epilogue at d <= 4 (a compare and two blends per row and half
/// panel, against 2 d FMAs) and the scan kernel's per-row work lose to the tall walk's one
/// `min` per vector of rows and codeword, against the codebooks `tall_wins` gives it (at d
/// <= 2 more than four codewords; at d = 3 to 8, before b51eaef, only up to 128 and from
/// 256). `vqkit bench --op
/// assign --n 100000 --k K --d D --threads 1 --seconds 1` on a 2-core Zen 1, one build with
/// the choice read once from the environment, the shipped kernels first in each pair, 3
/// runs, medians, in ms: d = 2, k = 8 2.11 -> 1.39, k = 16 2.00 -> 1.65, k = 32
/// 2.53 -> 2.05, k = 64 3.42 -> 3.06, k = 128 5.41 -> 4.51, k = 256 9.52 -> 7.07, k = 1024
/// 29.80 -> 22.55, k = 4096 87.71 -> 80.32; d = 1, k = 16 1.81 -> 1.29, k = 32
/// 2.24 -> 1.73, k = 256 7.87 -> 5.25; n = 76,293, k = 65,536, d = 2 942.1 -> 933.7 (a
/// tie). At d = 3 and 4 (another build, the same command): d = 4, k = 16 2.14 -> 1.96,
/// k = 64 4.30 -> 4.31, k = 128 7.00 -> 6.43, k = 256 12.27 -> 10.51, k = 1024
/// 40.98 -> 32.66, k = 4096 136.67 -> 131.12; d = 3, k = 16 2.15 -> 1.82, k = 256
/// 11.04 -> 8.91, k = 4096 114.39 -> 105.73.
///
/// Until 2026-12-06's seventh session AVX2 took d = 4 only past the index walk's four
/// panels and, of d = 5 to 8, only d = 8 against at most 32 codewords: on that Zen 1 the
/// index walk at d = 4 lost on two threads (`--n 100000 --k K --d 4 --threads 2 --seconds
/// 1`, 5 runs in each order: k = 16 1.084 -> 1.308 ms and 1.082 -> 1.186, k = 64
/// 2.081 -> 2.230), and the minima walk lost at d = 5 to 8 (16 rows: d = 6, k = 256
/// 13.80 -> 14.28 ms; d = 8, k = 256 17.60 -> 19.16, k = 4096 230.24 -> 253.16); on the Zen
/// 4 VM with `--isa avx2`, rows packed by copies for d < 8 as an AVX2-only CPU then packed
/// them, 16 x 5 1.271, 32 x 6 1.219, 16 x 7 1.155 (one thread, 5 pairs). Since then the
/// tall kernels stream their blocks (after the Zen 1's runs) and finish their rows (after
/// both), and rows of 2 to 7 floats pack with AVX's transposes where there is no AVX-512
/// (`x86::pack_narrow_avx`). On the Zen 4 VM, `vqkit bench --op assign --n N --k K --d D
/// --threads T --seconds 0.3 --isa avx2` in a build packing as an AVX2-only CPU does (no
/// AVX-512 permutes) with the packing and the rule read from the environment, medians of
/// the alternating pairs' ratios (n = 100,000 unless given, k x d). Against the copies and
/// the old rule, one thread, 5 pairs: 16 x 4 0.635, 16 x 5 0.636, 16 x 6 0.644, 16 x 7
/// 0.576, 32 x 6 0.838, 64 x 4 0.878, 64 x 6 0.920, 64 x 8 0.951. Against the old rule,
/// both packing with AVX, one thread, 3 pairs: 128 x 6 0.802, 256 x 5 0.727, 256 x 7 0.566,
/// 256 x 8 0.855, 1024 x 6 0.694, 20,000 x 4096 x 7 0.902, x 4096 x 8 0.833,
/// 20,000 x 1024 x 8 0.834, 5000 x 65,536 x 6 0.974; two threads, 5 pairs: 16 x 4 0.607,
/// 16 x 6 1.046 (7 pairs: 0.676), 64 x 4 0.933, 64 x 7 0.906, 256 x 6 0.766, 4096 x 5
/// 0.811; 7 pairs: 16 x 5 0.723, 32 x 7 0.752; 3 pairs: 20,000 x 4096 x 8 0.878, x 4096 x 6
/// 0.742, 5000 x 65,536 x 8 0.912. So AVX2 takes every shape `tall_wins` gives it, the scan
/// kernels' included. Not measured again on an AVX2-only CPU, nor on the Zen 1: at d >= 5
/// the walk reads some of the rows' elements from L1 as FMA operands, and a core with fewer
/// load ports than Zen 4's three may lose there (the old rule is one line, and the scan
/// kernels stay).
fn tall_kernel(isa: Isa, d: usize) -> Option<(RowsKernel, usize, usize)> {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && d <= SCAN_MAX_D {
        const { assert!(TALL_NR == x86::AVX512_NR) };
        return Some((x86::tall_avx512_entry, x86::TALL_MR, x86::AVX512_NR));
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && d <= x86::TALL256_MAX_D {
        const { assert!(TALL256_NR == x86::AVX2_NR) };
        return Some((x86::tall_avx2_entry, x86::TALL256_MR, x86::AVX2_NR));
    }
    let _ = (isa, d);
    None
}

/// Whether the kernels of `isa` (the tiled and scan ones: the cols kernels serve only
/// rows of d >= 32) compute each score as one FMA chain over d starting from the norm,
/// against the codeword times -2 (`norm + x_0 (-2 c_0) + ...`), rather than as a chain
/// from zero and then `norm - 2 acc`: for rows of at most [`SCAN_MAX_D`] (the scan
/// kernels' widths), where that last FMA is a large part of the work (one of three at
/// d = 2). Both forms round each step once, and `-2 c` is exact
/// (doubling overflows only where `c^2`, and so the norm, already did), but their last
/// bits differ; [`exact_scores`] follows the same rule. `vqkit bench --op assign
/// --threads 2`, 3 alternating runs, medians (best): d = 2, k = 4096 15.9 -> 14.6 (12.1)
/// ms, k = 65,536 144 -> 121 (102) ms; `--isa avx2` d = 2, k = 4096 23.7 -> 18.3 ms. The
/// portable kernels keep their products and sums.
pub(crate) fn folds(isa: Isa, d: usize) -> bool {
    isa != Isa::Portable && d <= SCAN_MAX_D
}

/// At most this many rows go to [`codebook_stream`]: beyond, the tiled kernels' packing of
/// the codebook is shared by enough rows (and the rows no longer fit the caches).
const COLS_MAX_N: usize = 2048;

/// Rows at least this wide go to [`codebook_stream`] (narrower ones, to the tiled or scan
/// kernels: at d = 16 the two ran the same).
const COLS_MIN_D: usize = 32;

/// Whether [`codebook_stream`] serves a shape, where the instruction set has a cols kernel
/// (`x86::cols_for`: AVX2 and AVX-512): few rows against a codebook at least four times
/// larger (twice, for rows of 512 or more). `vqkit bench --op assign --threads 2`, tiled
/// against cols (2 alternating runs): 256 x 65,536 x 2048 490 -> 370 to 400 ms, 298 x 65,536 x 512 136
/// -> 110 to 115 ms, 1192 x 262,144 x 32 127 to 198 -> 102 to 122 ms, 1192 x 65,536 x 128
/// 121 to 135 -> 95 to 103 ms, 2048 x 16,384 x 2048 840 to 904 -> 656 to 676 ms. With
/// `--isa avx2`: 256 x 65,536 x 2048 469 to 506 -> 376 to 413 ms, 298 x 65,536 x 512 136
/// to 157 -> 128 to 132 ms.
///
/// Rows of at least [`COLS_WIDE_D`] take it from a codebook twice as large (3 alternating
/// runs, at 68ec426): 1192 x 4096 x 2048 101-111 -> 93-99 ms (AVX2: 107-130 -> 95-122),
/// 1024 x 2048 x 2048 45-46 -> 41-43 ms, 2048 x 4096 x 512 40-42 -> 39-41 ms (AVX2: the
/// same within noise). Narrower rows do not: at 2048 x 4096 x 128 and x 32, AVX-512 gained
/// 10% but AVX2 lost 25% to 50%. From k = n to 2n the two ran the same.
#[cfg(target_arch = "x86_64")]
fn cols_wins(shape: Shape) -> bool {
    let Shape { n, k, d } = shape;
    let ratio = if d >= COLS_WIDE_D { 2 } else { 4 };
    n <= COLS_MAX_N && k >= ratio * n && d >= COLS_MIN_D
}

/// Rows this wide go to [`codebook_stream`] from a codebook twice their number (narrower
/// ones, four times): see [`cols_wins`].
#[cfg(target_arch = "x86_64")]
const COLS_WIDE_D: usize = 512;

/// Tiles of `mr` codewords per group for [`codebook_stream`]: a group in half of L2, but at
/// least [`COLS_GROUP_MIN_CODEWORDS`] codewords where those fit in
/// [`COLS_GROUP_MAX_BYTES`] (each task packs its group into a buffer of its own), and one
/// tile at least.
#[cfg(target_arch = "x86_64")]
fn cols_group(caches: super::CacheSizes, mr: usize, d: usize) -> usize {
    let tile_bytes = mr * d.max(1) * std::mem::size_of::<f32>();
    let fit = caches.l2 / 2 / tile_bytes;
    let least = COLS_GROUP_MIN_CODEWORDS
        .div_ceil(mr)
        .min(COLS_GROUP_MAX_BYTES / tile_bytes);
    fit.max(least).max(1)
}

/// The most bytes a group raised to [`COLS_GROUP_MIN_CODEWORDS`] takes (120 codewords of
/// up to 8738 floats): beyond, a panel of 16 rows alone exceeds 512 KiB of L2, and a larger
/// group would only grow each task's buffer.
#[cfg(target_arch = "x86_64")]
const COLS_GROUP_MAX_BYTES: usize = 4 << 20;

/// The fewest codewords a group of [`codebook_stream`] holds, whatever L2 holds. Each group
/// walks every packed row again, so at wide d, where half of L2 holds only a few tiles
/// (5 tiles of 6 codewords at d = 2048 with 512 KiB of L2), the rows are read from beyond
/// L2 once per few codewords; a larger group, whose tiles then spill to L3, streams its
/// tiles (24 bytes a step of d on AVX2, t-major) and keeps the rows' pass (64 bytes a step)
/// for many more codewords. On a 2-core Zen 1 (512 KiB of L2 per core, 8 MiB of L3),
/// `vqkit bench --op assign --n N --k K --d D --threads T --seconds 1`, the build before
/// (groups of 5 tiles at d = 2048, 10 at 1024) and this one alternating, the one before
/// first, 5 runs, medians: 1192 x 4096 x 2048 on two threads 335.0 -> 296.7 ms and, again,
/// 332.2 -> 301.7; on one thread 634.2 -> 579.2; 256 x 65,536 x 2048 (two threads) 1021.2
/// -> 980.8 (its 2 MiB of rows in L3); 1024 x 2048 x 2048 (one thread, 6 runs) 257.2 ->
/// 248.7, though in a first set of 5 runs three of this build's took 394 to 410 ms against
/// the other's 255 to 265 (the group in the shared L3, where neighbours' lines evict it;
/// not seen again). On a quieter
/// machine later (5 runs each, this build won every pair): 1192 x 4096 x 2048 on two
/// threads 307.3 -> 289.7 ms (85% -> 92% of the FMA ceiling), 1024 x 2048 x 2048 on one
/// 261.3 -> 246.9. A build with the group read from the environment, at 1192 x 4096 x 2048
/// (`--seconds 2`, 2 runs each): 2 tiles 590 to 656 ms on one thread, 5 tiles 553 to 575,
/// 10 543 to 552, 20 541 to 574, 40 531 to 543; on two threads 5 tiles 286 to 291, 20 274
/// to 275, 40 274 to 275, 80 279 to 289, 160 281 to 338. With 512 KiB of L2 per thread,
/// up to d = 546 half of L2 holds 20 tiles or more and the rule changes nothing; there
/// groups four times larger than half of L2 tied or lost (1192 x 262,144 x 32 330-373 against
/// 347-379 ms, 298 x 65,536 x 512 and 2048 x 8192 x 256 within noise). AVX-512's tiles of
/// 12 take 10 tiles at least (more than half of 1 MiB of L2 holds at d = 2048): not
/// measured on AVX-512.
#[cfg(target_arch = "x86_64")]
const COLS_GROUP_MIN_CODEWORDS: usize = 120;

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
    // A codebook of 16 or fewer would fill at most half of AVX-512's 32-wide panel: the
    // 16-wide tile (`kernel_for`) wastes none of its work on padding. (The tall kernel
    // skips its padding lanes; the few kernel, rows in its lanes, takes codewords in tiles
    // of 8.)
    let few = few_wins(isa, shape.d, shape.k);
    let scan = scan_wins(shape.d, shape.k);
    let tall = tall_wins(shape.d, shape.k)
        .then(|| tall_kernel(isa, shape.d))
        .flatten();
    let (_, mr, nr) = tall.unwrap_or_else(|| kernel_for(isa, scan, shape.k));
    let caches = super::CacheSizes::detect();
    let mut blocking = Blocking {
        scan,
        tall: tall.is_some(),
        few,
        ..Blocking::for_shape(caches, mr, nr, shape.d, shape.k.div_ceil(nr))
    };
    #[cfg(target_arch = "x86_64")]
    if let (true, Some((_, mr, _))) = (cols_wins(shape), x86::cols_for(isa)) {
        blocking.cols = true;
        blocking.group = cols_group(caches, mr, shape.d);
    }
    distance_argmin_blocked(
        isa, blocking, parallel, x, codebook, norms, shape, idx, dist,
    )
}

/// [`distance_argmin`] with the blocking given: every blocking gives the same bits (each
/// score is the same chain of FMAs over d, stored and reloaded exactly between chunks; the
/// running best is carried across groups with a strict `<`, so the lowest index still wins
/// a tie).
#[allow(clippy::too_many_arguments)]
pub(crate) fn distance_argmin_blocked(
    isa: Isa,
    blocking: Blocking,
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
    let rows = blocking.rows;
    if k <= NARROW_K {
        for_each_task(parallel, rows, x, d, idx, dist, |xs, idx, dist| {
            rows_narrow(xs, codebook, norms, d, idx, dist)
        });
        return Ok(());
    }
    // The cols kernels compute unfolded scores only, and the scan kernels folded ones
    // (`cols_wins` and `scan_wins` never ask otherwise): elsewhere the blocking's `cols`
    // or `scan` is moot.
    let fold = folds(isa, d);
    #[cfg(target_arch = "x86_64")]
    if let (true, Some(cols)) = (blocking.cols && !fold, x86::cols_for(isa)) {
        let group = blocking.group;
        return codebook_stream(cols, group, parallel, x, codebook, norms, shape, idx, dist);
    }
    #[cfg(target_arch = "x86_64")]
    if blocking.few && !fold && isa != Isa::Portable && d <= FEW_MAX_D {
        return rows_stream(
            isa,
            parallel,
            blocking.rows,
            x,
            codebook,
            norms,
            shape,
            idx,
            dist,
        );
    }
    let scan = blocking.scan && blocking.kc >= d && fold;
    let tall = if blocking.tall && blocking.kc >= d && fold {
        tall_kernel(isa, d)
    } else {
        None
    };
    let (kernel, mr, nr) = tall.unwrap_or_else(|| kernel_for(isa, scan, k));
    // The tall kernels read their rows packed.
    let blocking = Blocking {
        direct: blocking.direct && tall.is_none(),
        ..blocking
    };
    let packed = Packed::new(parallel, codebook, norms, (k, d, nr), fold)?;
    let all = 0..packed.panels;
    // Fewer row tasks than threads to keep busy (a few hundred rows against a large
    // codebook): the codebook is split too, into slices of whole groups.
    let row_tasks = n.div_ceil(rows);
    let threads = super::pool_threads(parallel);
    let groups = packed.panels.div_ceil(blocking.group);
    let slices = if parallel {
        (2 * threads).div_ceil(row_tasks).min(groups)
    } else {
        1
    };
    #[cfg(target_arch = "x86_64")]
    if tall.is_some() && groups == 1 {
        for_each_task(parallel, rows, x, d, idx, dist, |xs, idx, dist| {
            tall_stream(isa, xs, &packed, idx, dist)
        });
        return Ok(());
    }
    if slices <= 1 {
        let fused = fuses_norms(&blocking);
        for_each_task(parallel, rows, x, d, idx, dist, |xs, idx, dist| {
            rows_block(
                kernel,
                mr,
                nr,
                blocking,
                xs,
                &packed,
                all.clone(),
                fused,
                idx,
                dist,
            );
            if !fused {
                finish(xs, d, dist);
            }
        });
        return Ok(());
    }
    // Each slice's best per row, then the slices folded in codebook order with a strict <
    // (a later slice holds higher indices): the bits of the unsplit walk.
    let per = groups.div_ceil(slices) * blocking.group;
    let parts: Vec<(Vec<u32>, Vec<f32>)> = (0..packed.panels)
        .step_by(per)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|p0| {
            let (mut pi, mut pd) = (vec![0u32; n], vec![0.0f32; n]);
            let panels = p0..packed.panels.min(p0 + per);
            for_each_task(parallel, rows, x, d, &mut pi, &mut pd, |xs, idx, dist| {
                rows_block(
                    kernel,
                    mr,
                    nr,
                    blocking,
                    xs,
                    &packed,
                    panels.clone(),
                    false,
                    idx,
                    dist,
                )
            });
            (pi, pd)
        })
        .collect();
    fold_parts(parts, idx, dist);
    finish(x, d, dist);
    Ok(())
}

/// The most floats of a tall kernel's tile (64 rows of 8).
#[cfg(target_arch = "x86_64")]
const TALL_TILE_MAX: usize = 512;

/// A tall kernel's packed tile on the stack, on cache lines: the kernel's vector loads of
/// its steps then never split a line. In the kernel's own frame it also makes the compiler
/// align that frame, and so the kernel's spills (`x86::tall_tiles`).
#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct TallTile([f32; TALL_TILE_MAX]);

/// A task of the tall kernels (`mr` rows a tile) where the whole codebook is one group:
/// block by block, the rows packed into a buffer on the stack, the codebook walked and
/// each row's index and distance written out at once, the kernel taking the rows' norms
/// from the tile it holds in registers (`x86::tall_stream`). [`rows_block`] instead
/// keeps every block's running best for the next group of panels: it set the task's
/// outputs to +inf, allocated its norms and results, and merged each block's results into
/// the outputs row by row with a compare and a branch, which at k = 16, d = 2 took a
/// quarter of a call (`perf record -e cpu-clock`, one thread) against the kernel's two
/// fifths. The same bits: a single group's walk starts from (+inf, 0) and never keeps a
/// NaN, so the merge into (+inf, 0) copied its results.
///
/// `vqkit bench --op assign --n 100000 --k K --d D --threads T --seconds 0.3`, one build
/// with the choice read from the environment, 5 alternating pairs, medians of the ratios
/// (new / old), k x d: one thread 16 x 2 0.715, 16 x 8 0.893, 64 x 4 0.880, 256 x 2 0.936,
/// 256 x 8 0.975, 4096 x 2 0.994; two threads 16 x 2 0.689, 16 x 8 0.831, 32 x 1 0.803,
/// 128 x 5 0.873, 256 x 2 0.876, 256 x 8 0.965; `--isa avx2`, one thread, 3 pairs: 16 x 2
/// 0.777, 16 x 3 0.802, 256 x 2 0.931, 4096 x 4 0.991 (the Zen 4 VM). Prefetching the next
/// block into L2, as `rows_stream` then did, lost (16 x 8 1.080, 16 x 2 1.067).
///
/// The norms' pass ([`packed_norms`]) and `add_norms` after the kernel, with the
/// copies out of its buffers and the kernel's checks on every block, took about a
/// fifth of a call at k = 16, d = 2 (`perf`, one thread). With the kernel finishing the
/// rows from its registers, the step checked once per task, and the index walk counting
/// its codewords' index up in a vector (`x86::tall_index_walk`), against 092f6c0 (the
/// command above, 5 pairs; the packed norms' change of 9e0f2bd, which the tall kernels
/// do not use, in between): one thread 16 x 1 0.862, 16 x 2 0.876, 16 x 4 0.896, 16 x 8
/// 0.938, 64 x 4 0.886, 256 x 2 0.993, 256 x 8 0.987, 4096 x 2 1.002; two threads 16 x 2
/// 0.699, 16 x 8 0.865, 64 x 4 0.845, 256 x 2 0.952; `--isa avx2`, one thread, 3 pairs:
/// 16 x 2 0.839, 16 x 4 1.005, 256 x 2 0.998, 4096 x 2 1.036.
#[cfg(target_arch = "x86_64")]
fn tall_stream(isa: Isa, x: &[f32], p: &Packed, idx: &mut [u32], dist: &mut [f32]) {
    x86::tall_stream(isa, x, p, idx, dist)
}

/// Each row's best over `parts` (its index and score in each part, the parts in codebook
/// order) into `idx` / `dist`: a later part wins only with a strictly lower score, so the
/// lowest index still wins a tie; a row with no score below +inf gets (0, +inf), as in
/// each part.
fn fold_parts(parts: Vec<(Vec<u32>, Vec<f32>)>, idx: &mut [u32], dist: &mut [f32]) {
    idx.fill(0);
    dist.fill(f32::INFINITY);
    for (pi, pd) in parts {
        for (((i, v), &j), &w) in idx.iter_mut().zip(dist.iter_mut()).zip(&pi).zip(&pd) {
            if w < *v {
                (*i, *v) = (j, w);
            }
        }
    }
}

/// Few rows against a large codebook, the roles of the tiled kernels swapped: the rows
/// are packed into panels of NR (a few megabytes at most) and the codebook is read in
/// place, MR codewords at a time broadcast against a panel of rows, so the codebook is
/// read once and never copied (packing 65,536 codewords of 2048 floats for 256 rows moved
/// 1 GB). Tasks take slices of whole tiles of MR codewords, in groups that stay in half of
/// L2, or larger at wide d (`group` tiles: [`cols_group`]), while each panel of rows
/// passes over them; each (tile, panel) runs over the whole of d with its accumulators in
/// registers, and folds
/// its scores into the rows' best in codeword order with a strict `<`. The slices are
/// folded in order the same way. Each score is the tiled kernels' chain of FMAs (`c * x +
/// acc` is `x * c + acc`), so the bits are theirs (unfolded: rows of d >= 32 only).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn codebook_stream(
    (kernel, mr, nr): (x86::ColsKernel, usize, usize),
    group: usize,
    parallel: bool,
    x: &[f32],
    codebook: &[f32],
    norms: &[f32],
    shape: Shape,
    idx: &mut [u32],
    dist: &mut [f32],
) -> Result<()> {
    let Shape { n, k, d } = shape;
    let rows = Packed::rows(parallel, x, (n, d, nr))?;
    let tiles = k.div_ceil(mr);
    let threads = super::pool_threads(parallel);
    let group = group.max(1);
    let per = tiles.div_ceil(4 * threads).max(1);
    let task = |first: usize| -> (Vec<u32>, Vec<f32>) {
        let tiles = first..tiles.min(first + per);
        let mut best_v = vec![f32::INFINITY; rows.panels * nr];
        let mut best_i = vec![0u32; rows.panels * nr];
        // The group's tiles packed t-major (`tile[t * mr + r]`): read in place, the 12
        // codewords of a tile are 12 streams d floats apart, which at d = 2048 (8 KB)
        // all fall in one set of L1 and evict each other.
        let mut packed = vec![0.0f32; group.min(tiles.len()) * mr * d];
        for g0 in tiles.clone().step_by(group) {
            let g = g0..tiles.end.min(g0 + group);
            for (tile, tb) in g.clone().zip(packed.chunks_exact_mut(mr * d)) {
                let j0 = tile * mr;
                let block = &codebook[j0 * d..(j0 + mr).min(k) * d];
                if block.len() < mr * d {
                    tb.fill(0.0);
                }
                pack_rows(block, d, mr, tb);
            }
            for panel in 0..rows.panels {
                for (tile, tb) in g.clone().zip(packed.chunks_exact(mr * d)) {
                    let j0 = tile * mr;
                    let m = mr.min(k - j0);
                    let step = Step::packed(tb, mr, &rows, panel..panel + 1);
                    kernel(&step, (&norms[j0..j0 + m], j0), &mut best_v, &mut best_i);
                }
            }
        }
        (best_i, best_v)
    };
    let starts: Vec<usize> = (0..tiles).step_by(per).collect();
    let parts = if parallel {
        starts.into_par_iter().map(task).collect()
    } else {
        starts.into_iter().map(task).collect()
    };
    fold_parts(parts, idx, dist);
    finish(x, d, dist);
    Ok(())
}

/// Whether a task takes its rows' |x|^2 as it packs each block (`rows_block`'s `finish`,
/// [`packed_norms`]) rather than in a pass after the walk: wherever the rows are packed. Until
/// 4d711d2 that pass read x again, from beyond L2 at wide d (6% of a one-thread call at
/// 19,073 x 256 x 2048 in `perf`); `vqkit bench --grid wide --op assign --threads 2`, 2
/// alternating runs, on a 2-core Xeon with 2 MiB of L2 per core: d = 2048, n = 19,073,
/// k = 256 80.0 -> 65.8 ms; d = 512, k = 256 73.3 -> 68.3 ms; d = 128 and 32 at k >= 256,
/// 4% to 8%. Below 32 floats it then lost (d = 8, k = 256 2.0 -> 2.3 ms): the norms were
/// taken row by row, each a 16-term scalar sum. Since they are taken from the packed
/// rows, the rows in a vector's lanes, it wins at every width (`vqkit bench --op assign
/// --n 100000 --threads 2`, 3 alternating runs, the threshold read from the environment
/// in a build that was not kept, fused below 32 floats or not): d = 16, k = 256
/// 3.83-4.01 -> 3.50-3.58 ms, k = 4096 46.6-48.7 -> 45.7-47.0 ms; d = 8, k = 256
/// 2.04-2.16 -> 1.89-1.98 ms; d = 24, k = 1024 17.1-17.7 -> 16.6-17.1 ms; d = 2, k = 32
/// 0.58-1.05 -> 0.52-0.91 ms; d = 4, k = 4096 the same. Blocks read in place
/// (`Blocking::direct`) keep the pass: a call per row cost more there (d = 32, k = 16 1.3
/// -> 1.6 ms).
fn fuses_norms(blocking: &Blocking) -> bool {
    !blocking.direct
}

/// `out[i] = |x_i|^2` ([`sq_norm`]) for the rows of `x`, compiled for each instruction set
/// it runs on. [`sq_norm`] multiplies and adds in separate roundings (Rust never fuses the
/// two) and sums its lanes in order, so its bits are the same on all of them; wider
/// registers only take fewer instructions. With AVX-512 sixteen rows at a time, their
/// partials transposed into vectors of rows (`x86::norms16_rows`), with AVX2 four at a
/// time from d = 16 (`x86::norms4_rows`), row by row otherwise. Built for the baseline
/// SSE2 alone, [`finish`]'s loop took a fifth of a call at k = 16, d = 128 (in `perf`,
/// against the micro-kernel's 128 steps of 2 FMAs per row). `vqkit bench --op assign --n
/// 100000 --threads 2`, 8 alternating runs, medians: k = 16, d = 32 1.98 -> 1.78 ms,
/// d = 128 5.09 -> 4.54 ms, d = 512 18.3 -> 17.4 ms; k = 32, d = 128 6.97 -> 6.28 ms.
pub(crate) fn row_norms(x: &[f32], d: usize, out: &mut [f32]) {
    if d == 0 {
        return out.fill(0.0);
    }
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx512.supported() {
        // SAFETY: AVX-512F was detected at run time.
        return unsafe { row_norms_avx512(x, d, out) };
    } else if Isa::Avx2.supported() {
        // SAFETY: AVX2 was detected at run time.
        return unsafe { row_norms_avx2(x, d, out) };
    }
    row_norms_body(x, d, out)
}

#[inline(always)]
fn row_norms_body(x: &[f32], d: usize, out: &mut [f32]) {
    for (row, out) in x.chunks_exact(d).zip(out.iter_mut()) {
        *out = sq_norm(row);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_norms_avx512(x: &[f32], d: usize, out: &mut [f32]) {
    let rows = (x.len() / d).min(out.len());
    for (g, out) in out[..rows].chunks_mut(16).enumerate() {
        // SAFETY: AVX-512F is enabled here; the group's rows lie inside x.
        unsafe { x86::norms16_rows(&x[g * 16 * d..(g * 16 + out.len()) * d], d, out) };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_norms_avx2(x: &[f32], d: usize, out: &mut [f32]) {
    // Below 16 floats a row's norm is a short fold (`sq_norm`), which the transposes lost
    // to (d = 8 and 12, docs/performance.md).
    if d < 16 {
        return row_norms_body(x, d, out);
    }
    let rows = (x.len() / d).min(out.len());
    for (g, out) in out[..rows].chunks_mut(4).enumerate() {
        // SAFETY: AVX2 is enabled here; the group's rows lie inside x.
        unsafe { x86::norms4_rows(&x[g * 4 * d..(g * 4 + out.len()) * d], d, out) };
    }
}

/// `|x|^2` of the first `out.len()` rows of a block packed t-major by [`pack_rows`]
/// (`xt[t * mr + r]`, d steps), with the bits of [`sq_norm`] on each row. The rows are in
/// the lanes: each of [`sq_norm`]'s 16 partial sums (partial `t % 16` takes step t, in
/// order) is one vector of MR rows, and the partials' final sum in order is 15 vector
/// adds, where row by row it was 15 scalar adds per row and the lane extractions feeding
/// them (`row_norms` was 6% of a call at n = 100,000, k = 256, d = 32 in `perf`, the
/// kernel 84%). With fewer than 16 steps each partial is one square (`0 + v^2`, exact)
/// or +0, so the sum is [`sq_norm`]'s fold of the squares in order: adding +0 changes no
/// bit of a sum of squares, which is never -0.
fn packed_norms(xt: &[f32], d: usize, mr: usize, out: &mut [f32]) {
    assert!(xt.len() >= d * mr && out.len() <= mr);
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx512.supported() {
        // SAFETY: AVX-512F was detected at run time; the lengths are asserted.
        return unsafe { x86::packed_norms_avx512(xt, d, mr, out) };
    } else if Isa::Avx2.supported() {
        // SAFETY: AVX2 was detected at run time; the lengths are asserted.
        return unsafe { x86::packed_norms_avx2(xt, d, mr, out) };
    }
    packed_norms_portable(xt, d, mr, out)
}

/// [`packed_norms`] without SIMD intrinsics.
fn packed_norms_portable(xt: &[f32], d: usize, mr: usize, out: &mut [f32]) {
    if mr == PORTABLE_MR {
        return packed_norms_body::<PORTABLE_MR>(xt, d, out);
    }
    let mut row = vec![0.0f32; d];
    for (r, o) in out.iter_mut().enumerate() {
        for (t, v) in row.iter_mut().enumerate() {
            *v = xt[t * mr + r];
        }
        *o = sq_norm(&row);
    }
}

/// [`packed_norms`] in plain Rust, for MR a power of two that the target's vectors hold.
fn packed_norms_body<const MR: usize>(xt: &[f32], d: usize, out: &mut [f32]) {
    let (steps, _) = xt[..d * MR].as_chunks::<MR>();
    let mut p = [[0.0f32; MR]; 16];
    let mut sixteens = steps.chunks_exact(16);
    for c in &mut sixteens {
        for (p, step) in p.iter_mut().zip(c) {
            for (p, &v) in p.iter_mut().zip(step) {
                *p += v * v;
            }
        }
    }
    for (p, step) in p.iter_mut().zip(sixteens.remainder()) {
        for (p, &v) in p.iter_mut().zip(step) {
            *p += v * v;
        }
    }
    let mut n = p[0];
    for p in &p[1..] {
        for (n, &v) in n.iter_mut().zip(p) {
            *n += v;
        }
    }
    for (o, &n) in out.iter_mut().zip(&n) {
        *o = n;
    }
}

/// `dist = max(score + |x|^2, 0)` for each row of `x` ([`finished`]: a NaN kept), the
/// norms ([`row_norms`]) 64 rows at a time.
fn finish(x: &[f32], d: usize, dist: &mut [f32]) {
    let mut x_sq = [0.0f32; 64];
    for (rows, dist) in x.chunks(64 * d).zip(dist.chunks_mut(64)) {
        row_norms(rows, d, &mut x_sq);
        add_norms(dist, &x_sq);
    }
}

/// `dist = max(score + x_sq, 0)` element by element ([`finished`]).
fn add_norms(dist: &mut [f32], x_sq: &[f32]) {
    for (v, &n) in dist.iter_mut().zip(x_sq) {
        *v = finished(*v, n);
    }
}

/// A row's distance from its best score and `|x|^2` ([`sq_norm`] of the row), clamped at
/// zero. A NaN passes through (`f32::max` would turn it into 0): a row with a NaN or
/// infinite coordinate has a NaN or infinite `|x|^2`, and so a distance that is not
/// finite, which is what lets `ops::assign` check the points after the kernel (see
/// `Backend::flags_non_finite_points`).
pub(crate) fn finished(score: f32, x_sq: f32) -> f32 {
    let v = score + x_sq;
    if v < 0.0 { 0.0 } else { v }
}

/// The scores `|c_j|^2 - 2 x.c_j` of one row `x` against the codewords `js`, into `out`,
/// bit for bit as the tiled kernels of `isa` compute them (for `k > NARROW_K`): each is one
/// chain over d from zero, of FMAs (AVX2, AVX-512) or of products and sums (portable),
/// then `norm - 2 acc` in one rounding (`2 acc` is exact); or, where the kernels [`folds`],
/// one chain of FMAs from the norm against `-2 c`. Exact Lloyd with bounds
/// (`quant/bounds.rs`) computes only the distances its bounds cannot rule out, and they
/// must be the kernel's. Eight codewords at a time: eight independent chains hide the
/// FMA latency.
pub(crate) fn exact_scores(
    isa: Isa,
    x: &[f32],
    codebook: &[f32],
    norms: &[f32],
    js: &[u32],
    out: &mut [f32],
) {
    let d = x.len();
    for (js, out) in js.chunks(CHAINS).zip(out.chunks_mut(CHAINS)) {
        let rows: [&[f32]; CHAINS] = std::array::from_fn(|l| {
            let j = js[l.min(js.len() - 1)] as usize;
            &codebook[j * d..(j + 1) * d]
        });
        let scores = match isa {
            Isa::Portable => chains::<false, false>(x, &rows, norms, js),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the crate passes only an `Isa` the CPU supports (a backend's, checked by
            // `CpuBackend::with_isa`, or `Isa::detect`'s), and every CPU with either has FMA.
            Isa::Avx2 | Isa::Avx512 => unsafe { chains_fma(folds(isa, d), x, &rows, norms, js) },
        };
        out.copy_from_slice(&scores[..out.len()]);
    }
}

/// One step of a score's chain: `acc + x c`, as the kernels round it (see [`folds`]).
#[inline(always)]
fn chain_step<const FUSED: bool, const FOLD: bool>(x: f32, c: f32, acc: f32) -> f32 {
    match (FUSED, FOLD) {
        (true, true) => x.mul_add(-2.0 * c, acc),
        (true, false) => x.mul_add(c, acc),
        _ => acc + x * c,
    }
}

/// The score from its chain: the chain itself when folded, else `norm - 2 acc`.
#[inline(always)]
fn score_of<const FUSED: bool, const FOLD: bool>(acc: f32, norm: f32) -> f32 {
    match (FUSED, FOLD) {
        (_, true) => acc,
        (true, false) => acc.mul_add(-2.0, norm),
        (false, false) => norm - 2.0 * acc,
    }
}

const CHAINS: usize = 8;

/// The rows one call of [`exact_lane_scores`] takes, one in each lane.
pub(crate) const LANES: usize = 16;

/// [`exact_scores`] for up to [`LANES`] rows at once against the same codewords, the same
/// bits: `xt` holds the rows transposed (`xt[t * LANES + l]` is row `l`'s coordinate `t`),
/// and `out[m][l]` gets row `l`'s score against codeword `js[m]`. Each lane runs one row's
/// chain, as the micro-kernels' lanes do (lanes of codewords there, of rows here: `x c`
/// and `c x` round the same), so that a codeword costs one vector FMA a step for all the
/// rows where [`exact_scores`] takes one scalar FMA a step for each row. Several codewords
/// at a time (eight on AVX-512, four on AVX2, two portable: as many vector chains as hide
/// the FMA latency without spilling). Exact Lloyd (`quant/bounds.rs`) fills the lanes with
/// rows that share most of their candidates.
pub(crate) fn exact_lane_scores(
    isa: Isa,
    xt: &[f32],
    codebook: &[f32],
    norms: &[f32],
    js: &[u32],
    out: &mut [[f32; LANES]],
) {
    let d = xt.len() / LANES;
    let fold = folds(isa, d);
    match isa {
        Isa::Portable => lane_scores::<false, false, 2>(xt, codebook, norms, js, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the crate passes only an `Isa` the CPU supports (see `exact_scores`), and
        // every CPU with AVX-512F has FMA.
        Isa::Avx512 => unsafe { lane_scores_avx512(fold, xt, codebook, norms, js, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above; `Isa::Avx2` is detected with FMA.
        Isa::Avx2 => unsafe { lane_scores_avx2(fold, xt, codebook, norms, js, out) },
    }
}

/// The rows `rows` of `x` (rows of d) transposed into `xt` as [`exact_lane_scores`] takes
/// them, one in each lane; lanes past the last row repeat it (their scores are not read).
/// Four steps of four rows at a time by SSE transposes (a scalar loop took 14% of a fit on
/// Fashion-MNIST at k = 1024).
pub(crate) fn pack_lanes(x: &[f32], d: usize, rows: &[u32], xt: &mut [f32]) {
    let rows: [&[f32]; LANES] = std::array::from_fn(|l| {
        let i = rows[l.min(rows.len() - 1)] as usize;
        &x[i * d..][..d]
    });
    #[cfg(target_arch = "x86_64")]
    let done = x86::pack_lanes_sse(&rows, xt);
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    let steps = xt[..d * LANES].as_chunks_mut::<LANES>().0;
    for (t, step) in steps.iter_mut().enumerate().skip(done) {
        for (v, row) in step.iter_mut().zip(&rows) {
            *v = row[t];
        }
    }
}

/// [`exact_lane_scores`] on AVX-512: eight codewords at a time, a register of sixteen
/// lanes each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn lane_scores_avx512(
    fold: bool,
    xt: &[f32],
    codebook: &[f32],
    norms: &[f32],
    js: &[u32],
    out: &mut [[f32; LANES]],
) {
    use std::arch::x86_64::__m512;
    // SAFETY: AVX-512F and FMA are enabled here.
    unsafe {
        if fold {
            lane_scores_simd::<__m512, true, 8>(xt, codebook, norms, js, out)
        } else {
            lane_scores_simd::<__m512, false, 8>(xt, codebook, norms, js, out)
        }
    }
}

/// [`exact_lane_scores`] on AVX2: four codewords at a time, two registers of eight lanes
/// each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn lane_scores_avx2(
    fold: bool,
    xt: &[f32],
    codebook: &[f32],
    norms: &[f32],
    js: &[u32],
    out: &mut [[f32; LANES]],
) {
    use std::arch::x86_64::__m256;
    // SAFETY: AVX2 and FMA are enabled here.
    unsafe {
        if fold {
            lane_scores_simd::<[__m256; 2], true, 4>(xt, codebook, norms, js, out)
        } else {
            lane_scores_simd::<[__m256; 2], false, 4>(xt, codebook, norms, js, out)
        }
    }
}

/// [`LANES`] f32 lanes in registers, for [`lane_scores_simd`]. Every method's safety
/// condition: the CPU has the instruction set of the implementation (AVX-512F for
/// `__m512`, AVX for `[__m256; 2]`, FMA for both's `fmadd`), and the caller is compiled
/// for it, so that the method inlines into it.
#[cfg(target_arch = "x86_64")]
trait LaneReg: Copy {
    unsafe fn splat(v: f32) -> Self;
    unsafe fn load(v: &[f32; LANES]) -> Self;
    /// `a b + c`, lane by lane, in one rounding.
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
    unsafe fn store(self) -> [f32; LANES];
}

#[cfg(target_arch = "x86_64")]
impl LaneReg for std::arch::x86_64::__m512 {
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: the trait's condition.
        unsafe { std::arch::x86_64::_mm512_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn load(v: &[f32; LANES]) -> Self {
        // SAFETY: the trait's condition; `v` is 16 floats.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(v.as_ptr()) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: the trait's condition.
        unsafe { std::arch::x86_64::_mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn store(self) -> [f32; LANES] {
        let mut v = [0.0f32; LANES];
        // SAFETY: the trait's condition; `v` is 16 floats.
        unsafe { std::arch::x86_64::_mm512_storeu_ps(v.as_mut_ptr(), self) };
        v
    }
}

#[cfg(target_arch = "x86_64")]
impl LaneReg for [std::arch::x86_64::__m256; 2] {
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: the trait's condition.
        unsafe { [std::arch::x86_64::_mm256_set1_ps(v); 2] }
    }
    #[inline(always)]
    unsafe fn load(v: &[f32; LANES]) -> Self {
        use std::arch::x86_64::_mm256_loadu_ps;
        // SAFETY: the trait's condition; `v` is 16 floats, two runs of 8.
        unsafe {
            [
                _mm256_loadu_ps(v.as_ptr()),
                _mm256_loadu_ps(v.as_ptr().add(8)),
            ]
        }
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        use std::arch::x86_64::_mm256_fmadd_ps;
        // SAFETY: the trait's condition.
        unsafe {
            [
                _mm256_fmadd_ps(a[0], b[0], c[0]),
                _mm256_fmadd_ps(a[1], b[1], c[1]),
            ]
        }
    }
    #[inline(always)]
    unsafe fn store(self) -> [f32; LANES] {
        use std::arch::x86_64::_mm256_storeu_ps;
        let mut v = [0.0f32; LANES];
        // SAFETY: the trait's condition; `v` is 16 floats, two runs of 8.
        unsafe {
            _mm256_storeu_ps(v.as_mut_ptr(), self[0]);
            _mm256_storeu_ps(v.as_mut_ptr().add(8), self[1]);
        }
        v
    }
}

/// [`exact_lane_scores`] in registers `R`, `M` codewords at a time (the last group padded
/// by repeating its last codeword), the codeword's coordinate broadcast to every lane.
///
/// # Safety
/// [`LaneReg`]'s condition for `R`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn lane_scores_simd<R: LaneReg, const FOLD: bool, const M: usize>(
    xt: &[f32],
    codebook: &[f32],
    norms: &[f32],
    js: &[u32],
    out: &mut [[f32; LANES]],
) {
    let (steps, _) = xt.as_chunks::<LANES>();
    let d = steps.len();
    for (js, out) in js.chunks(M).zip(out.chunks_mut(M)) {
        let pick = |m: usize| js[m.min(js.len() - 1)] as usize;
        let rows: [&[f32]; M] = std::array::from_fn(|m| &codebook[pick(m) * d..][..d]);
        let ns: [f32; M] = std::array::from_fn(|m| norms[pick(m)]);
        // SAFETY (this block and the next): the caller's.
        let mut acc = ns.map(|n| unsafe { R::splat(if FOLD { n } else { 0.0 }) });
        for (t, xv) in steps.iter().enumerate() {
            let xv = unsafe { R::load(xv) };
            for (a, row) in acc.iter_mut().zip(&rows) {
                // Folded, the chain runs from the norm against -2 c (`chain_step`); `-2 c`
                // is exact.
                let c = unsafe { R::splat(if FOLD { -2.0 * row[t] } else { row[t] }) };
                *a = unsafe { R::fmadd(xv, c, *a) };
            }
        }
        for ((o, a), &n) in out.iter_mut().zip(&acc).zip(&ns) {
            let v = unsafe { a.store() };
            *o = v.map(|v| score_of::<true, FOLD>(v, n));
        }
    }
}

/// [`exact_lane_scores`] without FMA (portable: products and sums, as its kernels round
/// them), `M` codewords at a time, the last group padded by repeating its last codeword.
fn lane_scores<const FUSED: bool, const FOLD: bool, const M: usize>(
    xt: &[f32],
    codebook: &[f32],
    norms: &[f32],
    js: &[u32],
    out: &mut [[f32; LANES]],
) {
    let (steps, _) = xt.as_chunks::<LANES>();
    let d = steps.len();
    for (js, out) in js.chunks(M).zip(out.chunks_mut(M)) {
        let pick = |m: usize| js[m.min(js.len() - 1)] as usize;
        let rows: [&[f32]; M] = std::array::from_fn(|m| &codebook[pick(m) * d..][..d]);
        let ns: [f32; M] = std::array::from_fn(|m| norms[pick(m)]);
        let mut acc = [[0.0f32; LANES]; M];
        if FOLD {
            for (a, &n) in acc.iter_mut().zip(&ns) {
                *a = [n; LANES];
            }
        }
        for (t, xv) in steps.iter().enumerate() {
            for (a, row) in acc.iter_mut().zip(&rows) {
                let c = row[t];
                for (v, &x) in a.iter_mut().zip(xv) {
                    *v = chain_step::<FUSED, FOLD>(x, c, *v);
                }
            }
        }
        for ((o, a), &n) in out.iter_mut().zip(&acc).zip(&ns) {
            *o = a.map(|v| score_of::<FUSED, FOLD>(v, n));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn chains_fma(
    fold: bool,
    x: &[f32],
    rows: &[&[f32]; CHAINS],
    norms: &[f32],
    js: &[u32],
) -> [f32; CHAINS] {
    if fold {
        chains::<true, true>(x, rows, norms, js)
    } else {
        chains::<true, false>(x, rows, norms, js)
    }
}

/// [`exact_scores`] for up to [`CHAINS`] codewords (`rows`, padded by repeating the last).
#[inline(always)]
fn chains<const FUSED: bool, const FOLD: bool>(
    x: &[f32],
    rows: &[&[f32]; CHAINS],
    norms: &[f32],
    js: &[u32],
) -> [f32; CHAINS] {
    let d = x.len();
    let rows: [&[f32]; CHAINS] = rows.map(|r| &r[..d]);
    let norm = |l: usize| norms[js[l.min(js.len() - 1)] as usize];
    let mut acc: [f32; CHAINS] = if FOLD {
        std::array::from_fn(norm)
    } else {
        [0.0; CHAINS]
    };
    for t in 0..d {
        let xv = x[t];
        for l in 0..CHAINS {
            acc[l] = chain_step::<FUSED, FOLD>(xv, rows[l][t], acc[l]);
        }
    }
    std::array::from_fn(|l| score_of::<FUSED, FOLD>(acc[l], norm(l)))
}

/// Splits the rows into fixed tasks of `rows` (independent of the thread count) and runs
/// `f(x rows, idx, dist)` on each, in parallel or in order.
fn for_each_task(
    parallel: bool,
    rows: usize,
    x: &[f32],
    d: usize,
    idx: &mut [u32],
    dist: &mut [f32],
    f: impl Fn(&[f32], &mut [u32], &mut [f32]) + Sync,
) {
    let task = |(t, (idx, dist)): (usize, (&mut [u32], &mut [f32]))| {
        f(&x[t * rows * d..][..idx.len() * d], idx, dist)
    };
    if parallel {
        idx.par_chunks_mut(rows)
            .zip(dist.par_chunks_mut(rows))
            .enumerate()
            .for_each(task);
    } else {
        idx.chunks_mut(rows)
            .zip(dist.chunks_mut(rows))
            .enumerate()
            .for_each(task);
    }
}

/// Up to this many codewords, a panel of NR would be mostly padding (k-means++ seeding
/// asks for one codeword at a time): rows are streamed against each codeword instead.
pub(crate) const NARROW_K: usize = 4;

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
        (*i, *out) = (best.1, finished(best.0, sq_norm(row)));
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

thread_local! {
    /// Per thread: the task's rows packed block by block, and the accumulator tiles a
    /// chunked d carries between chunks. Reused from task to task (a wide task's rows are
    /// megabytes: allocating them per task would fault fresh pages in every time).
    static SCRATCH: std::cell::Cell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

/// One task's rows against the codebook panels in `panels`: each row's best score (without
/// |x|^2) into `dist`, its index into `idx`. The rows are packed once, MR at a time, each
/// block t-major (`xt[t * MR + r]`, zero rows past the end), so the micro-kernel
/// broadcasts from one contiguous run per step of d whatever d is (or, with
/// `blocking.direct`, whole blocks are read in place, see [`LANES_MAX_MR`]). Then, group
/// by group of the codebook, every block runs over the group chunk by chunk of d, and its
/// rows' best is folded into the task's running best (a later group wins only with a
/// strictly lower score: it holds higher indices).
#[allow(clippy::too_many_arguments)]
fn rows_block(
    kernel: RowsKernel,
    mr: usize,
    nr: usize,
    blocking: Blocking,
    x: &[f32],
    p: &Packed,
    panels: std::ops::Range<usize>,
    finish: bool,
    idx: &mut [u32],
    dist: &mut [f32],
) {
    let d = p.d;
    let rows = idx.len();
    // With `finish` (only where every block is packed), each row's |x|^2 is taken as its
    // block is packed, while the row is in cache, rather than in a pass of its own after
    // the walk, which read x again from beyond L2 at wide d (see [`fuses_norms`]).
    assert!(
        !finish || !blocking.direct,
        "finish fused only with packed blocks"
    );
    let mut x_sq = vec![0.0f32; if finish { rows } else { 0 }];
    let blocks = rows.div_ceil(mr);
    // Blocks from `packed` on are packed; before it, whole blocks are read in place: with
    // `lanes`, block b is row b of each of MR lanes of `packed` rows (row r * packed + b),
    // otherwise rows b * MR to b * MR + MR - 1.
    let packed = if blocking.direct { rows / mr } else { 0 };
    let lanes = blocking.direct && mr <= LANES_MAX_MR;
    let row = |b: usize, r: usize| {
        if lanes && b < packed {
            r * packed + b
        } else {
            b * mr + r
        }
    };
    let (mut xt, mut acc) = SCRATCH.take();
    // The buffer keeps what the last call packed (cleared, it was written twice, and the
    // clearing took two fifths of this function's samples at n = 100,000, k = 16, d = 8):
    // every whole block is packed over (`pack_rows` writes all of it), and a last,
    // partial block is cleared first. Its missing rows' lanes are computed and dropped,
    // so their values cannot reach a result; zeros keep a stale NaN or subnormal out of
    // them all the same.
    xt.resize((blocks - packed) * mr * d, 0.0);
    for (b, block) in x[packed * mr * d..].chunks(mr * d).enumerate() {
        let xb = &mut xt[b * mr * d..(b + 1) * mr * d];
        if block.len() < xb.len() {
            xb.fill(0.0);
        }
        pack_rows(block, d, mr, xb);
        if finish {
            let r0 = b * mr;
            packed_norms(xb, d, mr, &mut x_sq[r0..r0 + block.len() / d.max(1)]);
        }
    }
    let Blocking { kc, group, .. } = blocking;
    let chunked = kc < d;
    acc.clear();
    if chunked {
        acc.resize(group * mr * nr, 0.0);
    }
    dist.fill(f32::INFINITY);
    idx.fill(0);
    // Blocks in lanes over the whole of d go to the kernel in one step (see [`Step`]): with
    // AVX2, its entry and checks paid once per group rather than once per block of MR rows
    // (the portable kernel still runs per block, through `Step::each_block`). On a
    // 2-core Zen 1, `vqkit bench --op assign --n 100000 --k K --d D --threads T`, the
    // medians of 8 alternating pairs' ratios (new / old): k = 16, one thread, d = 8 0.86,
    // d = 32 0.93, d = 128 0.96; two threads, d = 8 0.90; k = 64, d = 32 0.98; k = 512
    // 0.99 (docs/performance.md, "blocks read in place in one step per group").
    let merged = if lanes && !chunked && d > 0 {
        packed
    } else {
        0
    };
    let mut val = vec![0.0f32; mr * merged.max(1)];
    let mut ix = vec![0u32; mr * merged.max(1)];
    for g0 in panels.clone().step_by(group) {
        let panels = g0..panels.end.min(g0 + group);
        if merged > 0 {
            let step = Step {
                x,
                rs: packed * d,
                ts: 1,
                p,
                panels: panels.clone(),
                t0: 0,
                kc: d,
                first: true,
                last: true,
                blocks: merged,
                bs: d,
            };
            kernel(&step, &mut acc, &mut val, &mut ix);
            for r in 0..mr {
                for b in 0..merged {
                    let (i, v) = (row(b, r), b * mr + r);
                    if val[v] < dist[i] {
                        (dist[i], idx[i]) = (val[v], ix[v]);
                    }
                }
            }
        }
        for b in merged..blocks {
            if !lanes && d <= PREFETCH_MAX_D && b + 1 < packed {
                let ahead = (b + 1) * mr * d;
                prefetch_l2(&x[ahead..ahead + mr * d]);
            }
            for t0 in (0..d).step_by(kc) {
                let kc = kc.min(d - t0);
                let (x, rs, ts) = if b < packed {
                    let rs = if lanes { packed * d } else { d };
                    (&x[row(b, 0) * d + t0..], rs, 1)
                } else {
                    let xb = &xt[(b - packed) * mr * d..(b - packed + 1) * mr * d];
                    (&xb[t0 * mr..(t0 + kc) * mr], 1, mr)
                };
                let step = Step {
                    x,
                    rs,
                    ts,
                    p,
                    panels: panels.clone(),
                    t0,
                    kc,
                    first: t0 == 0,
                    last: t0 + kc == d,
                    blocks: 1,
                    bs: 0,
                };
                kernel(&step, &mut acc, &mut val, &mut ix);
            }
            let r0 = b * mr;
            let m = mr.min(rows - r0);
            if lanes && b < packed {
                for r in 0..m {
                    let i = row(b, r);
                    if val[r] < dist[i] {
                        (dist[i], idx[i]) = (val[r], ix[r]);
                    }
                }
            } else {
                // Consecutive rows: the same strict `<` in one loop over the block's slices,
                // bounded once, with no map through `row` per row (written as selects; the
                // compiler still emits a compare and branch per row, not vector code, in
                // `objdump -d`). The loop above took most of this function's samples at
                // n = 100,000, k = 16, d = 2 (`perf record -e cpu-clock`, the Zen 4 VM),
                // and this function 45% of the call's. One build
                // with the choice read from the environment, `vqkit bench --op assign --n
                // 100000 --threads 1 --seconds 0.3`, 3 pairs, medians of the ratios (new /
                // old): k = 16, d = 2 0.870, d = 4 0.834, d = 8 0.913; k = 64, d = 4 0.935;
                // k = 256, d = 2 0.963, d = 8 0.932; k = 256, d = 128 and k = 4096, d = 32
                // 1.000.
                let (dist, idx) = (&mut dist[r0..r0 + m], &mut idx[r0..r0 + m]);
                for ((o, i), (&v, &j)) in dist.iter_mut().zip(idx).zip(val.iter().zip(&ix)) {
                    let better = v < *o;
                    *o = if better { v } else { *o };
                    *i = if better { j } else { *i };
                }
            }
        }
    }
    if finish {
        add_norms(dist, &x_sq);
    }
    SCRATCH.set((xt, acc));
}

/// Kernels of at most this many rows, where they read rows in place, take a block's rows
/// from MR lanes of consecutive rows, one from each, rather than MR consecutive rows. Each
/// of the MR streams then runs on from row to row through the task, long enough for the
/// hardware prefetchers to follow, where consecutive rows give MR streams of one row each
/// (at d = 128, 8 lines: the prefetchers hardly start). Any rows-to-blocks map gives the
/// same bits: rows are independent. At k = 16 (the 6-row AVX2 kernel), against
/// consecutive rows with the next block prefetched ([`PREFETCH_MAX_D`]), `vqkit bench
/// --op assign --n 100000 --k 16 --threads 2`, 8 alternating runs, medians: d = 128
/// 4.54 -> 4.20 ms, d = 512 17.4 -> 14.0 ms, d = 2048 56.4 -> 52.4 ms, d = 32 1.78 and
/// 1.83 ms (within noise). With `--isa avx2`, k = 32 (5 runs, against the build before
/// both this and the norms' ISA builds, [`row_norms`]): d = 128 7.71 -> 6.79 ms, d = 512
/// 28.2 -> 24.1 ms. The 12 streams of the AVX-512 kernel were too many (`--threads 1`, 6 runs, against the
/// prefetch issued line by line inside the kernel, which ran as the block prefetch did
/// within noise): k = 64, d = 128 20.5 -> 23.9 ms, d = 32 6.9 -> 8.0 ms. It keeps the
/// prefetch. The 4-row portable kernel takes lanes too: `--isa portable`, k = 16,
/// d = 128, 3 runs, 19.4 and 19.0 ms (with the norms' ISA builds), within noise.
const LANES_MAX_MR: usize = 6;

/// The widest rows for which, where blocks of consecutive rows are read in place (kernels
/// of more than [`LANES_MAX_MR`] rows), the next block of rows is prefetched while this
/// one is computed. Measured when the 6-row kernel took consecutive rows too: at k = 16,
/// 2 threads, `vqkit bench --op assign`
/// (3 alternating runs, medians) it took d = 128 from 9.7 to 6.9 ms and d = 512 from 23.5
/// to 22.0; at d = 2048 (rows of 128 lines, long enough for the hardware prefetchers) it
/// gained nothing (64.8 against 66.4 ms).
const PREFETCH_MAX_D: usize = 512;

/// Asks for the cache lines of `v` to be brought into L2. A block of rows read in place
/// is read a few floats from each of MR rows at a time: to the hardware prefetchers that
/// is MR short streams, and they do not run ahead of them.
#[inline]
pub(crate) fn prefetch_l2(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in v.chunks(16) {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        // SAFETY: SSE is part of x86-64, and a prefetch never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// A block of up to `mr` rows of x (row-major, `d` wide) packed t-major into `xb`
/// (`xb[t * mr + r]`); rows past the block's end stay as they are (zeros).
///
/// Step by step of d, so that the stores run through `xb` in order, with MR a constant for
/// the micro-kernels' tile heights so that each step is MR loads and MR stores with no
/// loop around them. (Row by row, the stores went MR floats apart, and the scalar store
/// and its index arithmetic were 10% of a call at n = 76,293, k = 256, d = 512.)
fn pack_rows(block: &[f32], d: usize, mr: usize, xb: &mut [f32]) {
    // Rows of one to seven floats (whole blocks of every tile height below): both sides'
    // lengths known, so the copy is unrolled with no bounds checks (into shuffles at some
    // widths, scalar moves at others, in `objdump -d`), where the SSE transposes take four
    // steps at a time and left the rest (all of d = 1 to 3) to a loop through an array of
    // row slices. One build with the choice read from the environment (and the one-loop
    // merge of `rows_block`), the command there, 3 pairs: k = 16, d = 1 0.783,
    // d = 2 0.742, d = 3 0.764, d = 4 0.957, d = 5 0.671, d = 6 0.989, d = 8 1.037 (so from
    // 8 the SSE steps); k = 64, d = 2 0.851; k = 256, d = 2 0.930, d = 3 0.949, d = 4
    // 0.981, d = 6 1.000, d = 8 1.033; k = 4096, d = 2 0.997. With AVX-512, tiles of a
    // multiple of 16 rows (the tall kernels') take permutes instead
    // (`x86::pack_narrow_avx512`), and without AVX-512 tiles of a multiple of 8 rows take
    // AVX's 8 x 8 transposes (`x86::pack_narrow_avx`); from d = 8 tiles of a multiple of
    // 8 rows take eight steps at a time with AVX (`x86::pack_steps_avx`) before the SSE
    // steps.
    fn narrow<const MR: usize, const D: usize>(block: &[f32], xb: &mut [f32]) {
        let (block, xb) = (&block[..MR * D], &mut xb[..MR * D]);
        for r in 0..MR {
            for t in 0..D {
                xb[t * MR + r] = block[r * D + t];
            }
        }
    }
    fn steps<const MR: usize>(block: &[f32], d: usize, xb: &mut [f32]) {
        // `f::<MR, D>(block, xb)` for D = d, from 2 to 7.
        macro_rules! by_width {
            ($($f:ident)::+) => {
                match d {
                    2 => $($f)::+::<MR, 2>(block, xb),
                    3 => $($f)::+::<MR, 3>(block, xb),
                    4 => $($f)::+::<MR, 4>(block, xb),
                    5 => $($f)::+::<MR, 5>(block, xb),
                    6 => $($f)::+::<MR, 6>(block, xb),
                    _ => $($f)::+::<MR, 7>(block, xb),
                }
            };
        }
        #[cfg(target_arch = "x86_64")]
        if MR.is_multiple_of(16) && (2..8).contains(&d) && Isa::Avx512.supported() {
            // SAFETY: AVX-512F was detected at run time.
            unsafe { by_width!(x86::pack_narrow_avx512) };
            return;
        }
        // Without AVX-512, blocks of a multiple of 8 rows take 8 x 8 transposes with AVX
        // (`x86::pack_narrow_avx`).
        #[cfg(target_arch = "x86_64")]
        if MR.is_multiple_of(8) && (2..8).contains(&d) && super::has_avx() {
            // SAFETY: AVX was detected at run time.
            unsafe { by_width!(x86::pack_narrow_avx) };
            return;
        }
        match d {
            1 => return narrow::<MR, 1>(block, xb),
            2..8 => return by_width!(narrow),
            _ => {}
        }
        #[cfg(target_arch = "x86_64")]
        let start = {
            let eights = if super::has_avx() {
                // SAFETY: AVX was detected at run time.
                unsafe { x86::pack_steps_avx::<MR>(block, d, xb) }
            } else {
                0
            };
            x86::pack_steps_sse::<MR>(block, d, xb, eights)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let start = 0;
        if start == d {
            return;
        }
        // The steps the transposes above leave (the last d % 4; every step for tiles of 6
        // rows, and off x86-64), one float at a time. Through an array of the MR rows'
        // slices, built per block, this was a fifth of a call at n = 100,000, k = 16,
        // d = 9 (`perf`, one thread, `--isa avx2`); 6-row tiles, `--isa avx2`, one thread,
        // 5 pairs: 20,000 x 4096 x 64 0.976, x 4096 x 33 0.961.
        let block = &block[..MR * d];
        for (t, step) in xb[..MR * d].chunks_exact_mut(MR).enumerate().skip(start) {
            for (r, v) in step.iter_mut().enumerate() {
                *v = block[r * d + t];
            }
        }
    }
    match (mr, block.len() == mr * d) {
        (PORTABLE_MR, true) => steps::<PORTABLE_MR>(block, d, xb),
        #[cfg(target_arch = "x86_64")]
        (x86::AVX2_MR, true) => steps::<{ x86::AVX2_MR }>(block, d, xb),
        #[cfg(target_arch = "x86_64")]
        (x86::AVX512_MR, true) => steps::<{ x86::AVX512_MR }>(block, d, xb),
        #[cfg(target_arch = "x86_64")]
        (16, true) => steps::<16>(block, d, xb),
        #[cfg(target_arch = "x86_64")]
        (32, true) => steps::<32>(block, d, xb),
        #[cfg(target_arch = "x86_64")]
        (64, true) => steps::<64>(block, d, xb),
        _ => {
            for (r, row) in block.chunks_exact(d).enumerate() {
                for (t, &v) in row.iter().enumerate() {
                    xb[t * mr + r] = v;
                }
            }
        }
    }
}

/// Panels per block of the scan kernels for a range of `panels`: each block costs one
/// compare and two blends per row, and the block holding a row's minimum is computed twice,
/// so about the square root of the range balances the two.
fn scan_block(panels: usize) -> usize {
    ((panels as f64 / 2.0).sqrt() as usize).max(1)
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
fn rows_portable(s: &Step, acc_buf: &mut [f32], val: &mut [f32], idx: &mut [u32]) {
    const MR: usize = PORTABLE_MR;
    const NR: usize = PORTABLE_NR;
    if s.each_block(MR, val, idx, rows_portable) {
        return;
    }
    let (p, x) = (s.p, s.x);
    let d = p.d;
    let mut best_v = [[f32::INFINITY; NR]; MR];
    let mut best_i = [[0u32; NR]; MR];
    for (q, panel) in s.panels.clone().enumerate() {
        let pd = &p.data[panel * NR * d + s.t0 * NR..][..s.kc * NR];
        let mut acc = [[0.0f32; NR]; MR];
        let saved = acc_buf.get_mut(q * MR * NR..(q + 1) * MR * NR);
        if let (false, Some(saved)) = (s.first, &saved) {
            for r in 0..MR {
                acc[r].copy_from_slice(&saved[r * NR..(r + 1) * NR]);
            }
        }
        for (t, c) in pd.chunks_exact(NR).enumerate() {
            for r in 0..MR {
                let xv = x[t * s.ts + r * s.rs];
                for l in 0..NR {
                    acc[r][l] += xv * c[l];
                }
            }
        }
        if !s.last {
            if let Some(saved) = saved {
                for r in 0..MR {
                    saved[r * NR..(r + 1) * NR].copy_from_slice(&acc[r]);
                }
            }
            continue;
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
    if s.last {
        for r in 0..MR {
            (val[r], idx[r]) = reduce_lanes(&best_v[r], &best_i[r]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Step, scan_block};
    use crate::backend::cpu::gemm::{transpose8_avx, transpose8_regs};

    use std::arch::x86_64::*;

    pub(super) const AVX2_MR: usize = 6;
    pub(super) const AVX2_NR: usize = 16;
    pub(super) const AVX512_MR: usize = 12;
    pub(super) const AVX512_NR: usize = 32;

    /// Asserts every bound a kernel's pointer arithmetic relies on.
    pub(super) fn check(s: &Step, acc: &[f32], val: &[f32], idx: &[u32], mr: usize, nr: usize) {
        let p = s.p;
        assert!(s.blocks >= 1 && (s.blocks == 1 || (s.first && s.last)) && s.kc >= 1);
        // The last element read (the last block's last row at the chunk's last step), in
        // checked arithmetic: this is the only guard in front of the kernels' pointers.
        let reach = [(s.blocks - 1, s.bs), (mr - 1, s.rs), (s.kc - 1, s.ts)]
            .into_iter()
            .try_fold(0usize, |sum, (n, stride)| {
                sum.checked_add(n.checked_mul(stride)?)
            });
        assert!(
            reach.is_some_and(|last| last < s.x.len()),
            "a step past its rows"
        );
        let outs = s.blocks.checked_mul(mr).expect("a step's results overflow");
        assert!(val.len() >= outs && idx.len() >= outs);
        assert!(s.panels.end <= p.panels && s.t0 + s.kc <= p.d);
        assert!(p.data.len() >= p.panels * nr * p.d && p.norms.len() >= p.panels * nr);
        assert!((s.first && s.last) || acc.len() >= s.panels.len() * mr * nr);
    }

    pub(super) fn rows_avx2_entry(s: &Step, acc: &mut [f32], val: &mut [f32], idx: &mut [u32]) {
        check(s, acc, val, idx, AVX2_MR, AVX2_NR);
        // SAFETY: `Isa::Avx2` is only constructed after runtime detection of AVX2 and FMA;
        // `check` bounds every pointer offset the kernel takes.
        unsafe {
            if s.p.fold {
                rows_avx2::<true>(s, acc, val, idx)
            } else {
                rows_avx2::<false>(s, acc, val, idx)
            }
        }
    }

    pub(super) fn rows_avx512_entry(s: &Step, acc: &mut [f32], val: &mut [f32], idx: &mut [u32]) {
        if s.each_block(AVX512_MR, val, idx, rows_avx512_entry) {
            return;
        }
        check(s, acc, val, idx, AVX512_MR, AVX512_NR);
        // SAFETY: `Isa::Avx512` is only constructed after runtime detection of AVX-512F;
        // `check` bounds every pointer offset the kernel takes.
        unsafe {
            match (s.p.fold, s.rs == 1 && s.ts == AVX512_MR) {
                (true, true) => rows_avx512::<true, true>(s, acc, val, idx),
                (true, false) => rows_avx512::<true, false>(s, acc, val, idx),
                (false, true) => rows_avx512::<false, true>(s, acc, val, idx),
                (false, false) => rows_avx512::<false, false>(s, acc, val, idx),
            }
        }
    }

    /// v2: 6 rows x 16 codewords (two ymm) per tile.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_avx2<const FOLD: bool>(
        s: &Step,
        acc_buf: &mut [f32],
        val: &mut [f32],
        idx: &mut [u32],
    ) {
        // SAFETY: the caller's contract; compiled for AVX2 and FMA.
        unsafe { rows6::<__m256, FOLD>(s, acc_buf, val, idx) }
    }

    /// v2's tile of 6 rows x 16 codewords in one zmm per row.
    #[target_feature(enable = "avx512f")]
    unsafe fn rows6_avx512<const FOLD: bool>(
        s: &Step,
        acc_buf: &mut [f32],
        val: &mut [f32],
        idx: &mut [u32],
    ) {
        // SAFETY: the caller's contract; compiled for AVX-512F.
        unsafe { rows6::<__m512, FOLD>(s, acc_buf, val, idx) }
    }

    pub(super) fn rows6_avx512_entry(s: &Step, acc: &mut [f32], val: &mut [f32], idx: &mut [u32]) {
        check(s, acc, val, idx, AVX2_MR, AVX2_NR);
        // Chosen for k <= 16 only (`kernel_for`): the whole codebook is one panel, and the
        // tile's index is its lane's (`rows6`'s `one`).
        assert_eq!(s.panels.len(), 1, "the 16-wide zmm tile takes one panel");
        // SAFETY: only chosen after runtime detection of AVX-512F; `check` bounds every
        // pointer offset the kernel takes.
        unsafe {
            if s.p.fold {
                rows6_avx512::<true>(s, acc, val, idx)
            } else {
                rows6_avx512::<false>(s, acc, val, idx)
            }
        }
    }

    /// The tile of 6 rows x 16 codewords, in vectors of `V::W` lanes (a panel is `16 /
    /// V::W` of them).
    ///
    /// # Safety
    /// The caller is compiled for `V`'s instruction set and FMA; `check` passed for
    /// [`AVX2_MR`] x [`AVX2_NR`].
    #[inline(always)]
    unsafe fn rows6<V: Lanes, const FOLD: bool>(
        s: &Step,
        acc_buf: &mut [f32],
        val: &mut [f32],
        idx: &mut [u32],
    ) {
        const MR: usize = AVX2_MR;
        const NR: usize = AVX2_NR;
        let h = NR / V::W;
        let (p, d) = (s.p, s.p.d);
        // SAFETY (all intrinsics and pointer accesses below): the caller's contract;
        // `check` asserted that the panel range, the chunk t0..t0 + kc, every block's MR
        // rows of x and the saved tiles are in bounds.
        unsafe {
            let lane: V::I =
                V::load_i([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15].as_ptr());
            let minus_two = V::splat(-2.0);
            // One panel in one vector: each lane holds one codeword, in order, and the
            // index is found from the lane of the minimum (`V::reduce` reduces the indices
            // too: at k = 16, d = 128 the epilogue was 14% of the kernel's samples).
            let one = h == 1 && s.panels.len() == 1;
            let first = s.panels.start * NR;
            // A step of several blocks (see `Step`): each in turn, as if called for it alone.
            for blk in 0..s.blocks {
                let xp = s.x.as_ptr().wrapping_add(blk * s.bs);
                let (val, idx) = (&mut val[blk * MR..], &mut idx[blk * MR..]);
                // Per row, per lane: the best score so far and its codeword.
                let mut best_v = [V::splat(f32::INFINITY); MR];
                let mut best_i = [V::splat_i(0); MR];
                for (q, panel) in s.panels.clone().enumerate() {
                    let cp = p.data.as_ptr().add(panel * NR * d + s.t0 * NR);
                    let ap = acc_buf.as_mut_ptr().wrapping_add(q * MR * NR);
                    let np = p.norms.as_ptr().add(panel * NR);
                    // Folded, each chain starts from its codeword's norm (see `folds`).
                    let mut acc = [[V::splat(0.0); 2]; MR];
                    if FOLD && s.first {
                        acc = [[V::load(np), V::load(np.add(V::W % NR))]; MR];
                    }
                    if !s.first {
                        for (r, acc) in acc.iter_mut().enumerate() {
                            for (j, a) in acc.iter_mut().enumerate().take(h) {
                                *a = V::load(ap.add(r * NR + j * V::W));
                            }
                        }
                    }
                    for t in 0..s.kc {
                        let c = [V::load(cp.add(t * NR)), V::load(cp.add(t * NR + V::W % NR))];
                        let xt = xp.add(t * s.ts);
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let xv = V::splat(*xt.add(r * s.rs));
                            for (a, &c) in acc.iter_mut().zip(&c).take(h) {
                                *a = V::fmadd(xv, c, *a);
                            }
                        }
                    }
                    if !s.last {
                        for (r, acc) in acc.iter().enumerate() {
                            for (j, a) in acc.iter().enumerate().take(h) {
                                a.store(ap.add(r * NR + j * V::W));
                            }
                        }
                        continue;
                    }
                    let norms = [V::load(np), V::load(np.add(V::W % NR))];
                    let i0 = V::add_i(lane, V::splat_i((panel * NR) as u32));
                    let ids = [i0, V::add_i(i0, V::splat_i(V::W as u32))];
                    for (r, acc) in acc.iter().enumerate() {
                        // Each vector into the running best in codeword order, the lower
                        // indices first, with a strict <: a tie keeps the lower index and a
                        // NaN score never wins. (Folding the halves into each other first
                        // kept a NaN first half and so dropped the second half's score.)
                        for j in 0..h {
                            let s = if FOLD {
                                acc[j]
                            } else {
                                V::fmadd(acc[j], minus_two, norms[j])
                            };
                            let lt = V::lt(s, best_v[r]);
                            best_v[r] = V::blend(lt, best_v[r], s);
                            if !one {
                                best_i[r] = V::blend_i(lt, best_i[r], ids[j]);
                            }
                        }
                    }
                }
                if !s.last {
                    return;
                }
                for r in 0..MR {
                    (val[r], idx[r]) = if one {
                        // Lane l holds codeword `first + l` alone, or +inf where its score
                        // was +inf or NaN: the lowest lane at the minimum is the lowest
                        // index, and at +inf every lane is, and index 0 is `reduce`'s.
                        let m = V::min_lane(best_v[r]);
                        let l = V::eq_bits(best_v[r], m).trailing_zeros() as usize;
                        (
                            m,
                            if m < f32::INFINITY {
                                (first + l) as u32
                            } else {
                                0
                            },
                        )
                    } else {
                        V::reduce(best_v[r], best_i[r])
                    };
                }
            }
        }
    }

    /// Rows per scan tile with AVX2: two accumulators and the block's minima per row in
    /// registers (12 ymm), with the codeword vectors and a broadcast.
    pub(super) const SCAN256_MR: usize = 4;

    pub(super) fn scan_avx2_entry(s: &Step, acc: &mut [f32], val: &mut [f32], idx: &mut [u32]) {
        if s.each_block(SCAN256_MR, val, idx, scan_avx2_entry) {
            return;
        }
        check(s, acc, val, idx, SCAN256_MR, AVX2_NR);
        assert!(s.first && s.last && s.t0 == 0 && s.kc == s.p.d && s.p.fold);
        // SAFETY: `Isa::Avx2` is only constructed after runtime detection of AVX2 and FMA;
        // `check` bounds every pointer offset the kernel takes, and d is one chunk.
        unsafe { scan_avx2(s, val, idx) }
    }

    /// The 8 lanes folded branch-free, as [`super::reduce_lanes`] folds them: the lowest
    /// score, and among the lanes holding it, the lowest index (no lane holds NaN; a lane
    /// at +inf holds index 0). The score returned is the minimum itself, whose zero may
    /// differ in sign from the chosen lane's: the distance (`score + |x|^2`, clamped at 0)
    /// is the same.
    ///
    /// The two 128-bit halves are folded into one first and the rest runs on 128 bits: a
    /// shuffle across the halves (`vperm2f128`, `vperm2i128`) is 8 micro-ops on Zen 1, an
    /// extract one, and Zen 1 splits every 256-bit operation in two.
    #[target_feature(enable = "avx2")]
    pub(super) fn reduce_avx2(v: __m256, i: __m256i) -> (f32, u32) {
        let (v0, v1) = (_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let (i0, i1) = (_mm256_castsi256_si128(i), _mm256_extracti128_si256::<1>(i));
        let m = min_avx2(v);
        // Each half's indices where it holds the minimum, u32::MAX elsewhere.
        let at = |v: __m128, i: __m128i| {
            _mm_castps_si128(_mm_blendv_ps(
                _mm_castsi128_ps(_mm_set1_epi32(-1)),
                _mm_castsi128_ps(i),
                _mm_cmpeq_ps(v, m),
            ))
        };
        let c = _mm_min_epu32(at(v0, i0), at(v1, i1));
        let c = _mm_min_epu32(c, _mm_shuffle_epi32::<0b01_00_11_10>(c));
        let c = _mm_min_epu32(c, _mm_shuffle_epi32::<0b10_11_00_01>(c));
        (_mm_cvtss_f32(m), _mm_cvtsi128_si32(c) as u32)
    }

    /// The lowest of the 8 lanes of `v` (no NaN lanes) in every lane of an xmm: the halves
    /// folded into one, then 128-bit shuffles (see [`reduce_avx2`]).
    #[target_feature(enable = "avx2")]
    fn min_avx2(v: __m256) -> __m128 {
        let m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_min_ps(m, _mm_shuffle_ps::<0b01_00_11_10>(m, m));
        _mm_min_ps(m, _mm_shuffle_ps::<0b10_11_00_01>(m, m))
    }

    /// Lanes of `b` where `mask` is set, of `a` elsewhere, for masks whose lanes are all
    /// ones or all zeros (a compare's): blended byte by byte (`vpblendvb`), which on Zen 4
    /// costs the FMAs beside it less than `vblendvps` (16 ymm FMAs in 8 chains took 5% more
    /// time with 4 `vpblendvb` beside them, 17% more with 4 `vblendvps`:
    /// `scripts/avx2_blend_pipes.c`).
    #[target_feature(enable = "avx2")]
    fn blend_epi32(a: __m256i, b: __m256i, mask: __m256) -> __m256i {
        _mm256_blendv_epi8(a, b, _mm256_castps_si256(mask))
    }

    /// Codewords per tile of the AVX-512 cols kernel (broadcast), against 32 rows (two zmm).
    const COLS512_MR: usize = 12;

    /// A cols kernel (see [`cols_walk`]): a step, the tile's norms and first index, the
    /// rows' best scores and indices.
    pub(super) type ColsKernel = fn(&Step, (&[f32], usize), &mut [f32], &mut [u32]);

    /// The steps of d that [`super::pack_rows`] packs four at a time for tiles of a
    /// multiple of four rows, with SSE (part of x86-64): four rows by four steps loaded as
    /// four vectors, transposed in registers and stored as four steps. Returns how many
    /// steps it packed; the rest (fewer than four, or all of them for other MR) are the
    /// caller's. A copy: the bits of the scalar loop.
    ///
    /// Against the scalar loop, with the 12-row AVX-512 tiles: `perf` put the packing at
    /// 12% of the kernel's samples at n = 19,073, k = 256, d = 2048, and at 5% with this.
    /// `vqkit bench --op assign --threads 2`, 6 alternating runs, medians: there 116.3 ->
    /// 105.3 ms; 76,293 x 256 x 512 108.9 -> 107.0 ms (`--threads 1`, 3 runs: 215 -> 206);
    /// 100,000 x 256 x 128 39.2 -> 38.1 ms; 100,000 x 256 x 32 10.8 -> 10.5 ms. The 6-row
    /// AVX2 tiles, packed as four rows and an unpacked pair, gained nothing (`--isa avx2`,
    /// 6 runs: 114 -> 120 ms and 116 -> 123 ms at the first two shapes): their scalar
    /// packing was 4.5% of the kernel to begin with. The portable kernel (4 rows) runs as
    /// it did (`--isa portable`, d = 2048: 640 and 639 ms).
    pub(super) fn pack_steps_sse<const MR: usize>(
        block: &[f32],
        d: usize,
        xb: &mut [f32],
        from: usize,
    ) -> usize {
        if !MR.is_multiple_of(4) {
            return from;
        }
        assert!(block.len() >= MR * d && xb.len() >= MR * d);
        let steps = d / 4 * 4;
        let (src, dst) = (block.as_ptr(), xb.as_mut_ptr());
        for t in (from.next_multiple_of(4)..steps).step_by(4) {
            for r in (0..MR).step_by(4) {
                // SAFETY: rows r..r + 4 at steps t..t + 4 are inside `block` (t + 4 <= d,
                // r + 4 <= MR) and their slots inside `xb` ((t + 3) * MR + r + 4 <= MR * d),
                // as asserted above; the loads and stores are unaligned ones.
                unsafe {
                    let steps = transpose4(
                        _mm_loadu_ps(src.add(r * d + t)),
                        _mm_loadu_ps(src.add((r + 1) * d + t)),
                        _mm_loadu_ps(src.add((r + 2) * d + t)),
                        _mm_loadu_ps(src.add((r + 3) * d + t)),
                    );
                    for (s, v) in steps.into_iter().enumerate() {
                        _mm_storeu_ps(dst.add((t + s) * MR + r), v);
                    }
                }
            }
        }
        steps
    }

    /// The steps of d that [`super::pack_rows`] packs eight at a time for tiles of a
    /// multiple of eight rows, with AVX: eight rows by eight steps transposed in registers
    /// (the GEMM's `transpose8_avx`) and stored as eight steps.
    /// Returns how many steps it packed (a multiple of eight); [`pack_steps_sse`] takes
    /// the rest from there. A copy: the bits of the scalar loop.
    ///
    /// For the tall kernel's 32 rows at d = 8 (then) the SSE steps were a quarter of a call at
    /// k = 16 (`perf record -e cpu-clock`, one thread, after `super::tall_stream`); this
    /// takes about half that. The few kernel's panels (32 rows, 16 with AVX2) pack this way
    /// too. `vqkit bench --op assign --n 100000 --k K --d D --threads T --seconds 0.3`,
    /// against the build before this and `tall_stream`, medians of the alternating pairs'
    /// ratios (new / old), k x d, the Zen 4 VM: one thread, 5 pairs, 16 x 8 0.683 (with
    /// `tall_stream`); where only this and the stores of [`store_first`] changed, the few
    /// kernel's shapes, 7 pairs: 16 x 12 0.856, 16 x 32 0.940, 32 x 32 0.978, 64 x 24
    /// 0.988; 5 pairs: 16 x 16 0.947, `--isa avx2` 16 x 16 0.943, 64 x 12 0.977; two
    /// threads, 9 pairs: 16 x 32 0.852, 32 x 32 0.932, 128 x 32 0.984.
    ///
    /// # Safety
    /// The CPU has AVX.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn pack_steps_avx<const MR: usize>(
        block: &[f32],
        d: usize,
        xb: &mut [f32],
    ) -> usize {
        if !MR.is_multiple_of(8) {
            return 0;
        }
        assert!(block.len() >= MR * d && xb.len() >= MR * d);
        let steps = d / 8 * 8;
        let (src, dst) = (block.as_ptr(), xb.as_mut_ptr());
        for t in (0..steps).step_by(8) {
            for r in (0..MR).step_by(8) {
                // SAFETY: rows r..r + 8 at steps t..t + 8 are inside `block` (t + 8 <= d,
                // r + 8 <= MR) and their slots inside `xb` ((t + 7) * MR + r + 8 <= MR * d),
                // as asserted above; the loads and stores are unaligned ones.
                unsafe { transpose8_avx(src.add(r * d + t), d, dst.add(t * MR + r), MR) };
            }
        }
        steps
    }

    /// [`super::pack_rows`] for whole blocks of MR rows (a multiple of 8) of D < 8 floats,
    /// with AVX: each 8 rows loaded as 8 vectors from their first floats (a row's vector
    /// holds the following rows' first 8 - D floats too, never stored; the block's last
    /// rows, whose vectors would reach past the block, under a mask), transposed in
    /// registers ([`transpose8_regs`]), and the first D vectors, the rows' D steps, stored.
    /// A copy: the bits of the scalar loop.
    ///
    /// # Safety
    /// The CPU has AVX.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn pack_narrow_avx<const MR: usize, const D: usize>(
        block: &[f32],
        xb: &mut [f32],
    ) {
        assert!(MR.is_multiple_of(8) && D < 8);
        assert!(block.len() >= MR * D && xb.len() >= MR * D);
        let (src, dst) = (block.as_ptr(), xb.as_mut_ptr());
        let first: [i32; 8] = std::array::from_fn(|l| if l < D { -1 } else { 0 });
        // SAFETY: AVX by the caller's contract; `first` holds 8 ints.
        let mask = unsafe { _mm256_loadu_si256(first.as_ptr().cast()) };
        for r0 in (0..MR).step_by(8) {
            // SAFETY: row r's vector from r * D: whole where its 8 floats lie in the block,
            // else its D floats alone (masked lanes are not read); steps t < D of rows
            // r0..r0 + 8 are stored at t * MR + r0, inside `xb` (asserted above).
            unsafe {
                let rows: [__m256; 8] = std::array::from_fn(|i| {
                    let at = (r0 + i) * D;
                    if at + 8 <= MR * D {
                        _mm256_loadu_ps(src.add(at))
                    } else {
                        _mm256_maskload_ps(src.add(at), mask)
                    }
                });
                let steps = transpose8_regs(rows);
                for (t, v) in steps.iter().enumerate().take(D) {
                    _mm256_storeu_ps(dst.add(t * MR + r0), *v);
                }
            }
        }
    }

    /// [`super::pack_rows`] for whole blocks of MR rows (a multiple of 16) of D < 8 floats,
    /// with AVX-512: each 16 rows' 16 D floats loaded as D vectors, and each step's 16
    /// values picked out of them by two-vector permutes, one per pair of vectors that holds
    /// some (lane r takes float r D + t), merged under masks. D = 2 takes one permute a
    /// step, D = 7 four. A copy: the bits of the scalar loop.
    ///
    /// The tall kernels' blocks of 64 rows (then 32 above d = 4) were copied float by
    /// float (`narrow`): at k = 16, d = 2, 15% of a call in `perf` (one thread), 9% this
    /// way. `vqkit bench --op assign --n 100000 --k K --d D --threads T --seconds 0.3`
    /// against the copies, 5 alternating pairs, medians of the ratios, k x d: one thread
    /// 16 x 3 0.923, 32 x 4 0.944, 16 x 6 0.927, 16 x 5 0.986, 64 x 7 1.006, 256 x 2 1.005,
    /// 16 x 2 1.014 and 1.019; two threads 16 x 2 0.982, 16 x 3 0.930, 32 x 4 0.940,
    /// 16 x 6 0.885, 256 x 4 0.986, 1024 x 2 0.988 (the Zen 4 VM).
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_narrow_avx512<const MR: usize, const D: usize>(
        block: &[f32],
        xb: &mut [f32],
    ) {
        const { assert!(D >= 2 && D < 8) };
        assert!(MR.is_multiple_of(16) && block.len() >= MR * D && xb.len() >= MR * D);
        let vector_pairs = D.div_ceil(2);
        let (src, dst) = (block.as_ptr(), xb.as_mut_ptr());
        // A constant's reference (`const`): the table itself in the program, never copied.
        let picks = const { &NarrowPicks::<D>::PICKS };
        for g in 0..MR / 16 {
            // SAFETY: the group's 16 D floats lie inside `block` and step t's 16 slots of
            // the group inside `xb` (asserted above); the loads and stores are unaligned.
            unsafe {
                let v: [__m512; D] =
                    std::array::from_fn(|i| _mm512_loadu_ps(src.add((g * D + i) * 16)));
                for t in 0..D {
                    let mut out = _mm512_setzero_ps();
                    for p in 0..vector_pairs {
                        let (idx, mask) = &picks[t][p];
                        let (a, b) = (v[2 * p], v[(2 * p + 1).min(D - 1)]);
                        let picked =
                            _mm512_permutex2var_ps(a, _mm512_loadu_si512(idx.as_ptr().cast()), b);
                        out = _mm512_mask_mov_ps(out, *mask, picked);
                    }
                    _mm512_storeu_ps(dst.add(t * MR + g * 16), out);
                }
            }
        }
    }

    /// [`pack_narrow_avx512`]'s permutes for rows of D floats, constants of the program:
    /// for step t and pair of vectors p, each lane's index into the pair (lane r takes
    /// float r D + t, counted from the pair's first) and the mask of the lanes whose float
    /// lies in the pair. Computed in the loop, they were folded or not as the compiler's
    /// heuristics went: in one build the packing of rows of 7 took as long as the kernel
    /// at k = 32 (`perf record -e cpu-clock`, `--isa avx2`), its masks built at run time.
    struct NarrowPicks<const D: usize>;

    impl<const D: usize> NarrowPicks<D> {
        const PICKS: [[([i32; 16], u16); 4]; 8] = {
            let mut picks = [[([0i32; 16], 0u16); 4]; 8];
            let mut t = 0;
            while t < D {
                let mut p = 0;
                while p < D.div_ceil(2) {
                    let mut r = 0;
                    while r < 16 {
                        let at = (r * D + t).wrapping_sub(32 * p);
                        picks[t][p].0[r] = (at & 31) as i32;
                        if at < 32 {
                            picks[t][p].1 |= 1 << r;
                        }
                        r += 1;
                    }
                    p += 1;
                }
                t += 1;
            }
            picks
        };
    }

    /// Four steps of four rows, `a`, `b`, `c`, `e`, as four rows of steps:
    /// `[a0 b0 c0 e0]`, `[a1 b1 c1 e1]`, ...
    #[inline(always)]
    pub(super) fn transpose4(a: __m128, b: __m128, c: __m128, e: __m128) -> [__m128; 4] {
        // SAFETY: SSE is part of every x86-64 CPU; register operations only.
        unsafe {
            let ab_lo = _mm_unpacklo_ps(a, b); // a0 b0 a1 b1
            let ab_hi = _mm_unpackhi_ps(a, b); // a2 b2 a3 b3
            let ce_lo = _mm_unpacklo_ps(c, e);
            let ce_hi = _mm_unpackhi_ps(c, e);
            [
                _mm_movelh_ps(ab_lo, ce_lo),
                _mm_movehl_ps(ce_lo, ab_lo),
                _mm_movelh_ps(ab_hi, ce_hi),
                _mm_movehl_ps(ce_hi, ab_hi),
            ]
        }
    }

    /// [`super::pack_lanes`]'s steps in fours; returns how many steps it packed.
    pub(super) fn pack_lanes_sse(rows: &[&[f32]; super::LANES], xt: &mut [f32]) -> usize {
        const L: usize = super::LANES;
        let d = rows[0].len();
        assert!(rows.iter().all(|r| r.len() == d) && xt.len() >= d * L);
        let steps = d / 4 * 4;
        let dst = xt.as_mut_ptr();
        for t in (0..steps).step_by(4) {
            for r in (0..L).step_by(4) {
                // SAFETY: steps t..t + 4 are inside each row (t + 4 <= d), and the slots
                // (t + 3) * L + r + 4 <= d * L inside `xt`, as asserted; unaligned loads and
                // stores.
                unsafe {
                    let load = |l: usize| _mm_loadu_ps(rows[r + l].as_ptr().add(t));
                    let steps = transpose4(load(0), load(1), load(2), load(3));
                    for (s, v) in steps.into_iter().enumerate() {
                        _mm_storeu_ps(dst.add((t + s) * L + r), v);
                    }
                }
            }
        }
        steps
    }

    /// [`super::row_norms`] of up to four rows of x (row-major, d >= 16) on AVX2: each
    /// row's 16 partial sums in two ymm ([`super::sq_norm`]'s partials), their
    /// four 128-bit quarters transposed across the rows so that one xmm holds a partial of
    /// every row, and the partials added in order: [`super::sq_norm`]'s bits, with 15 xmm
    /// adds for the four rows where row by row each took 15 scalar adds and the lane
    /// extractions feeding them. Only 128-bit shuffles: on Zen 1 one across the halves of a
    /// ymm is 8 micro-ops (eight rows transposed in ymm lost, docs/performance.md).
    ///
    /// # Safety
    /// The CPU has AVX2; `d >= 16` and `1 <= out.len() <= 4`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn norms4_rows(x: &[f32], d: usize, out: &mut [f32]) {
        assert!(d >= 16 && (1..=4).contains(&out.len()) && x.len() >= out.len() * d);
        let (full, rem) = (d / 16 * 16, d % 16);
        // SAFETY: compiled for AVX2 (and so AVX).
        let add_square = |a, v| unsafe { <__m256 as Lanes>::add_square(a, v) };
        // Four rows always, those past `out` repeating its last (their sums dropped).
        let p: [*const f32; 4] =
            std::array::from_fn(|i| x.as_ptr().wrapping_add(i.min(out.len() - 1) * d));
        let mut lo = [_mm256_setzero_ps(); 4];
        let mut hi = lo;
        for t in (0..full).step_by(16) {
            for i in 0..4 {
                // SAFETY: t + 16 <= full <= d: both loads lie in row i.
                unsafe {
                    lo[i] = add_square(lo[i], _mm256_loadu_ps(p[i].add(t)));
                    hi[i] = add_square(hi[i], _mm256_loadu_ps(p[i].add(t + 8)));
                }
            }
        }
        if rem > 0 {
            // The last `r` floats of a row (r <= 8) in lanes 0..r and zeros above, from the
            // 8 floats that end the row: a lane permute and a mask, where a masked
            // load is slow on Zen 1. The zeros add +0 to their partials: no bit changes,
            // the partials being never -0.
            let r = if rem <= 8 { rem } else { rem - 8 };
            let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let from = _mm256_add_epi32(lane, _mm256_set1_epi32((8 - r) as i32));
            let keep = first_lanes(r);
            for i in 0..4 {
                // SAFETY: d >= 16, so the 8 floats before the row's end lie in row i; with
                // rem > 8, full + 8 < d.
                unsafe {
                    let end = _mm256_loadu_ps(p[i].add(d - 8));
                    let tail = _mm256_and_ps(
                        _mm256_permutevar8x32_ps(end, from),
                        _mm256_castsi256_ps(keep),
                    );
                    if rem <= 8 {
                        lo[i] = add_square(lo[i], tail);
                    } else {
                        lo[i] = add_square(lo[i], _mm256_loadu_ps(p[i].add(full)));
                        hi[i] = add_square(hi[i], tail);
                    }
                }
            }
        }
        // Row i's partials as quarters: lanes 0..4, 4..8, 8..12, 12..16.
        let q = |i: usize| {
            [
                _mm256_castps256_ps128(lo[i]),
                _mm256_extractf128_ps::<1>(lo[i]),
                _mm256_castps256_ps128(hi[i]),
                _mm256_extractf128_ps::<1>(hi[i]),
            ]
        };
        let q = [q(0), q(1), q(2), q(3)];
        let mut n = _mm_setzero_ps();
        for j in 0..4 {
            for (m, v) in transpose4(q[0][j], q[1][j], q[2][j], q[3][j])
                .into_iter()
                .enumerate()
            {
                // The first partial as it is (+0 + p would be p: the partials are never -0).
                n = if j == 0 && m == 0 {
                    v
                } else {
                    _mm_add_ps(n, v)
                };
            }
        }
        let mut lanes = [0.0f32; 4];
        // SAFETY: four floats into `lanes`; SSE is part of x86-64.
        unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), n) };
        out.copy_from_slice(&lanes[..out.len()]);
    }

    /// [`super::row_norms`] of up to sixteen rows of x (row-major, d wide): each row's 16
    /// partial sums in one vector (lane l takes elements l, l + 16, ...: [`super::sq_norm`]'s
    /// partials, the last short chunk loaded under a mask, whose zeros add +0: no bit
    /// changes, the partials being never -0), the vectors transposed so that one holds a
    /// partial of every row, and the partials added in order: [`super::sq_norm`]'s bits,
    /// with 15 vector adds for the sixteen rows in place of 15 scalar adds and the lane
    /// extractions feeding them per row.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `d >= 1` and `out.len() <= 16`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn norms16_rows(x: &[f32], d: usize, out: &mut [f32]) {
        assert!(d >= 1 && out.len() <= 16 && x.len() >= out.len() * d);
        let full = d / 16 * 16;
        let zero = _mm512_setzero_ps();
        let r: [__m512; 16] = std::array::from_fn(|i| {
            let Some(row) = x.get(i * d..(i + 1) * d) else {
                return zero;
            };
            let mut a = zero;
            // SAFETY: compiled for AVX-512F; the loads lie in the row (the last under a
            // mask of its d - full floats, the others not read).
            unsafe {
                for t in (0..full).step_by(16) {
                    a = __m512::add_square(a, _mm512_loadu_ps(row.as_ptr().add(t)));
                }
                if full < d {
                    a = __m512::add_square(a, __m512::load_first(row.as_ptr().add(full), d - full));
                }
            }
            a
        });
        // SAFETY: compiled for AVX-512F.
        unsafe { sum_partials(&transpose16(r), out) }
    }

    /// [`super::sq_norm`]'s last step on vectors: the 16 partials `p` added in order, lane
    /// by lane, and lanes `0..out.len()` of the sum written to `out` (at most 16).
    ///
    /// # Safety
    /// The caller is compiled for `V`'s instruction set.
    #[inline(always)]
    unsafe fn sum_partials<V: Lanes>(p: &[V; 16], out: &mut [f32]) {
        // SAFETY: the caller's contract; 16 floats hold any V.
        unsafe {
            let mut n = p[0];
            for &p in &p[1..] {
                n = V::add(n, p);
            }
            store_first(n, out);
        }
    }

    /// Lanes `0..out.len()` of `v` written to `out` (at most 16): one store where `out`
    /// holds a whole vector (the tall and few kernels' blocks); otherwise through a copy
    /// of runtime length, which is a call to `memcpy` (5.5% of a call at n = 100,000,
    /// k = 16, d = 2 in `perf`, one thread, for the tall kernel's norms).
    ///
    /// # Safety
    /// The caller is compiled for `V`'s instruction set.
    #[inline(always)]
    unsafe fn store_first<V: Lanes>(v: V, out: &mut [f32]) {
        if out.len() == V::W {
            // SAFETY: the caller's contract; `out` holds a whole vector.
            return unsafe { v.store(out.as_mut_ptr()) };
        }
        let mut lanes = [0.0f32; 16];
        // SAFETY: the caller's contract; 16 floats hold any V.
        unsafe { v.store(lanes.as_mut_ptr()) };
        out.copy_from_slice(&lanes[..out.len()]);
    }

    /// The 16 x 16 transpose of `r` (vector i, lane j into vector j, lane i): pairs of
    /// vectors interleaved by floats, then by pairs of floats, then 128-bit blocks
    /// exchanged twice; 64 shuffles.
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // Within each 128-bit block k: (vector 2i, 2i + 1) x (lanes 4k..4k + 3)
        // interleaved, the low and the high two lanes.
        let a: [__m512; 16] = std::array::from_fn(|i| {
            let (p, q) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(p, q)
            } else {
                _mm512_unpackhi_ps(p, q)
            }
        });
        // u[4j + m], block k: lane 4k + m of vectors 4j..4j + 3.
        let u: [__m512; 16] = std::array::from_fn(|i| {
            let (j, m) = (i / 4, i % 4);
            let (p, q) = (
                _mm512_castps_pd(a[4 * j + m / 2]),
                _mm512_castps_pd(a[4 * j + 2 + m / 2]),
            );
            _mm512_castpd_ps(if m % 2 == 0 {
                _mm512_unpacklo_pd(p, q)
            } else {
                _mm512_unpackhi_pd(p, q)
            })
        });
        // For each m, the 4 x 4 blocks of u[m], u[4 + m], u[8 + m], u[12 + m] transposed:
        // lane 4k + m of all sixteen vectors.
        let mut out = [_mm512_setzero_ps(); 16];
        for m in 0..4 {
            let (a0, b0, c0, d0) = (u[m], u[4 + m], u[8 + m], u[12 + m]);
            let v0 = _mm512_shuffle_f32x4::<0x44>(a0, b0);
            let v1 = _mm512_shuffle_f32x4::<0xEE>(a0, b0);
            let v2 = _mm512_shuffle_f32x4::<0x44>(c0, d0);
            let v3 = _mm512_shuffle_f32x4::<0xEE>(c0, d0);
            out[m] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
            out[4 + m] = _mm512_shuffle_f32x4::<0xDD>(v0, v2);
            out[8 + m] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
            out[12 + m] = _mm512_shuffle_f32x4::<0xDD>(v1, v3);
        }
        out
    }

    /// [`super::packed_norms`] with the block's rows in the lanes of a vector, a vector's
    /// width of rows at a time (the tall kernels' blocks in `rows_block` 16, 32 or 64, and
    /// the few kernel's panels on AVX2 until [`few_norms`]; the tiles of 6 and 12 rows take
    /// the tested loads throughout, their last vector reaching past the block): each step's
    /// rows loaded ([`load_step`]: a whole vector, or under a mask of the rows at the
    /// block's end), squared and added into its partial (separate roundings, as in
    /// [`super::sq_norm`]), the 16 partials added in order.
    ///
    /// With the partials in registers (where whole vectors of every step lie in `xt`; the
    /// pass had kept them on the stack), `perf` at n = 4096, k = 16, d = 32, one thread,
    /// put the pass at 10.0% of a call against 12.8%; `vqkit bench --op assign --n 100000
    /// --k 16 --d D --threads T --seconds 0.3`, 5 alternating pairs against 092f6c0, medians
    /// of the ratios, one thread: d = 16 0.934, 24 0.922, 32 0.983, 128 0.994 (n = 4096,
    /// d = 32: 0.968); two threads, 3 pairs: d = 24 0.912, 32 1.018 (the Zen 4 VM).
    ///
    /// # Safety
    /// The caller is compiled for `V`'s instruction set; `xt` holds `d * mr` floats,
    /// `out` at most `mr`.
    #[inline(always)]
    unsafe fn packed_norms_simd<V: Lanes>(xt: &[f32], d: usize, mr: usize, out: &mut [f32]) {
        for (g, out) in out.chunks_mut(V::W).enumerate() {
            let g0 = g * V::W;
            let rows = (mr - g0).min(V::W);
            // SAFETY: see `load_step`. Whole sixteens are unrolled, so that the partials
            // stay in registers.
            unsafe {
                if d < 16 {
                    // Partial l is step l's square alone (0 + v^2, exact) or +0, and
                    // sum_partials adds them in order: the same bits as one chain over
                    // the steps, which stays in a register where the partials, indexed
                    // by a loop of runtime length, went through the stack.
                    let mut n = V::splat(0.0);
                    for t in 0..d {
                        n = V::add_square(n, load_step(xt, g0 + t * mr, rows));
                    }
                    store_first(n, out);
                    continue;
                }
                let full = d / 16 * 16;
                if g0 + (d - 1) * mr + V::W <= xt.len() {
                    // Every step's whole vector inside `xt`: loads from a pointer moved a
                    // step at a time, with no test (lanes past `rows` are never written
                    // out; the pointer may end past `xt`, hence `wrapping_add`, but is
                    // read only at steps below d). With `load_step`'s test per step the
                    // compiler kept the sixteen steps' offsets on the stack, and with a
                    // remainder loop of runtime length the partials too.
                    let mut p = [V::splat(0.0); 16];
                    let mut at = xt.as_ptr().wrapping_add(g0);
                    for _ in 0..d / 16 {
                        for p in p.iter_mut() {
                            *p = V::add_square(*p, V::load(at));
                            at = at.wrapping_add(mr);
                        }
                    }
                    // The last d % 16 steps, and +0 into the other partials (a sum of
                    // squares is never -0, so adding +0 changes no bit): each partial
                    // added unconditionally stays in its register.
                    for (l, p) in p.iter_mut().enumerate() {
                        let v = if full + l < d {
                            V::load(at.wrapping_add(l * mr))
                        } else {
                            V::splat(0.0)
                        };
                        *p = V::add_square(*p, v);
                    }
                    sum_partials(&p, out);
                    continue;
                }
                let mut p = [V::splat(0.0); 16];
                for t0 in (0..full).step_by(16) {
                    for (l, p) in p.iter_mut().enumerate() {
                        *p = V::add_square(*p, load_step(xt, g0 + (t0 + l) * mr, rows));
                    }
                }
                for (l, p) in p.iter_mut().enumerate() {
                    let v = if full + l < d {
                        load_step(xt, g0 + (full + l) * mr, rows)
                    } else {
                        V::splat(0.0)
                    };
                    *p = V::add_square(*p, v);
                }
                sum_partials(&p, out);
            }
        }
    }

    /// The `rows` floats of `xt` from `at` in a vector's first lanes: a whole vector where
    /// one lies inside `xt` (the lanes past `rows` then hold the next step's floats, whose
    /// sums are never written out, and lanes never mix), otherwise a masked load that reads
    /// nothing past them. Masked loads of every step of the 6-row AVX2 blocks took 5.2% of
    /// the samples, whole ones 2.75%, on a 2-core Zen 1 (`perf record -e cpu-clock vqkit
    /// bench --op assign --n 100000 --k 256 --d 32 --threads 1 --seconds 3`).
    ///
    /// # Safety
    /// The caller is compiled for `V`'s instruction set; `at + rows <= xt.len()`.
    #[inline(always)]
    unsafe fn load_step<V: Lanes>(xt: &[f32], at: usize, rows: usize) -> V {
        let p = xt.as_ptr().wrapping_add(at);
        // SAFETY: a whole vector from `at` lies inside `xt` where tested; otherwise the
        // masked load reads lanes 0..rows alone, inside by the caller's contract.
        unsafe {
            if at + V::W <= xt.len() {
                V::load(p)
            } else {
                V::load_first(p, rows)
            }
        }
    }

    /// [`packed_norms_simd`] on AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `xt` holds `d * mr` floats, `out` at most `mr`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn packed_norms_avx512(xt: &[f32], d: usize, mr: usize, out: &mut [f32]) {
        // SAFETY: compiled for AVX-512F; the caller's contract.
        unsafe { packed_norms_simd::<__m512>(xt, d, mr, out) }
    }

    /// [`packed_norms_simd`] on AVX2.
    ///
    /// # Safety
    /// The CPU has AVX2; `xt` holds `d * mr` floats, `out` at most `mr`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn packed_norms_avx2(xt: &[f32], d: usize, mr: usize, out: &mut [f32]) {
        // SAFETY: compiled for AVX2; the caller's contract.
        unsafe { packed_norms_simd::<__m256>(xt, d, mr, out) }
    }

    /// The cols kernel of `isa` with its tile (codewords MR, rows NR), if it has one.
    pub(super) fn cols_for(isa: super::Isa) -> Option<(ColsKernel, usize, usize)> {
        match isa {
            super::Isa::Avx512 => Some((cols_avx512_entry, COLS512_MR, AVX512_NR)),
            super::Isa::Avx2 => Some((cols_avx2_entry, COLS256_MR, AVX2_NR)),
            super::Isa::Portable => None,
        }
    }

    /// Asserts every bound a cols kernel's pointer arithmetic relies on.
    fn check_cols(s: &Step, tile: (&[f32], usize), best: (usize, usize), mr: usize, nr: usize) {
        let (p, (norms, j0)) = (s.p, tile);
        assert!(s.first && s.last && s.t0 == 0 && s.kc == p.d && p.d >= 1 && s.blocks == 1);
        assert!(s.x.len() > (mr - 1) * s.rs + (s.kc - 1) * s.ts);
        assert!(s.panels.end <= p.panels && p.data.len() >= p.panels * nr * p.d);
        assert!(norms.len() <= mr && j0 + norms.len() <= u32::MAX as usize);
        assert!(best.0 >= s.panels.end * nr && best.1 >= s.panels.end * nr);
    }

    fn cols_avx512_entry(s: &Step, tile: (&[f32], usize), best_v: &mut [f32], best_i: &mut [u32]) {
        check_cols(s, tile, (best_v.len(), best_i.len()), COLS512_MR, AVX512_NR);
        // SAFETY: `Isa::Avx512` is only constructed after runtime detection of AVX-512F;
        // `check_cols` bounds every pointer offset the kernel takes.
        unsafe { cols_avx512(s, tile, best_v, best_i) }
    }

    /// Codewords per tile of the few kernel ([`super::rows_stream`]) on AVX-512: with their
    /// 16 accumulators (8 codewords x two vectors of 16 rows), the panel's step, the
    /// broadcast and the rows' best scores and indices, 23 of AVX-512's 32 registers (26
    /// in the first tile, with the rows' norms and a zero).
    pub(super) const FEW_MR: usize = 8;

    /// Codewords per tile of the few kernel on AVX2: 8 accumulators (4 codewords x two
    /// vectors of 8 rows), the panel's step, the broadcast and the rows' best scores and
    /// indices, 15 of AVX2's 16 registers.
    pub(super) const FEW256_MR: usize = 4;

    /// The few kernel's tile and panel (codewords per tile, rows per panel: two vectors)
    /// for `isa` (AVX2 or AVX-512).
    pub(super) fn few_for(isa: super::Isa) -> (usize, usize) {
        match isa {
            super::Isa::Avx512 => (FEW_MR, FEW_NR),
            super::Isa::Avx2 => (FEW256_MR, FEW256_NR),
            super::Isa::Portable => unreachable!("the few kernel runs on AVX2 or AVX-512"),
        }
    }

    /// Rows per panel of the few kernel: two vectors, of 16 (AVX-512) and of 8 (AVX2).
    const FEW_NR: usize = 2 * 16;
    const FEW256_NR: usize = 2 * 8;

    /// The few kernel on one panel of up to NR rows (`panel[t * NR + r]`, d steps, NR of
    /// [`few_for`]) against every codeword (`tiles` packed by [`super::rows_stream`] in
    /// tiles of MR, `norms` one per codeword): each row's index and distance
    /// (`finished(score, |x|^2)`, the norms from the panel) into `idx` and `dist`, for
    /// rows of at most [`super::FEW_MAX_D`] floats. `isa` is AVX2 or AVX-512, whose `Isa`
    /// is only constructed after runtime detection.
    pub(super) fn few_entry(
        isa: super::Isa,
        panel: &[f32],
        d: usize,
        (tiles, norms): (&[f32], &[f32]),
        ahead: &[f32],
        idx: &mut [u32],
        dist: &mut [f32],
    ) {
        let ahead = Ahead::new(ahead);
        let (mr, nr) = few_for(isa);
        let rows = idx.len();
        assert!((1..=super::FEW_MAX_D).contains(&d) && panel.len() >= nr * d);
        assert!(tiles.len() >= norms.len().div_ceil(mr) * mr * d);
        assert!(norms.len() <= u32::MAX as usize);
        assert!(rows <= nr && dist.len() == rows);
        // SAFETY: the `Isa` was constructed after runtime detection of its instruction
        // set; the asserts bound every offset the kernel takes: the panel's d steps of NR,
        // each tile's d steps of MR, the rows' first `rows` results.
        unsafe {
            match isa {
                super::Isa::Avx512 => few_avx512(panel, d, (tiles, norms), ahead, idx, dist),
                super::Isa::Avx2 => few_avx2(panel, d, (tiles, norms), ahead, idx, dist),
                super::Isa::Portable => unreachable!("the few kernel runs on AVX2 or AVX-512"),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn few_avx512(
        panel: &[f32],
        d: usize,
        tiles: (&[f32], &[f32]),
        ahead: Ahead<'_>,
        idx: &mut [u32],
        dist: &mut [f32],
    ) {
        // `few_entry` bounds the panel by `few_for`'s rows: two of these vectors.
        const { assert!(FEW_NR == 2 * <__m512 as Lanes>::W) };
        // SAFETY: compiled for AVX-512F; the caller's asserts (masked loads and stores, from
        // a half's first lane only where it holds a row).
        unsafe {
            let (best_v, best_i, x_sq) = few_walk::<__m512, FEW_MR, true>(panel, d, tiles, ahead);
            // `finished` on each lane: the score plus |x|^2, clamped at 0 with a NaN kept
            // (an ordered compare is false on NaN).
            let rows = idx.len();
            for h in 0..2 {
                let lanes = rows.saturating_sub(16 * h).min(16);
                // No lane: no pointer to form (one past the rows' ends would be out of
                // their allocation, mask or not).
                if lanes == 0 {
                    break;
                }
                let m = ((1u32 << lanes) - 1) as __mmask16;
                let v = _mm512_add_ps(best_v[h], x_sq[h]);
                let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, _mm512_setzero_ps());
                let v = _mm512_mask_blend_ps(neg, v, _mm512_setzero_ps());
                _mm512_mask_storeu_ps(dist.as_mut_ptr().add(16 * h), m, v);
                _mm512_mask_storeu_epi32(idx.as_mut_ptr().add(16 * h).cast(), m, best_i[h]);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn few_avx2(
        panel: &[f32],
        d: usize,
        tiles: (&[f32], &[f32]),
        ahead: Ahead<'_>,
        idx: &mut [u32],
        dist: &mut [f32],
    ) {
        const { assert!(FEW256_NR == 2 * <__m256 as Lanes>::W) };
        // SAFETY: compiled for AVX2 and FMA; the caller's asserts.
        unsafe {
            // The norms in a pass of their own: taken in the walk, as on AVX-512, they
            // moved AVX2's register allocation in the walk (`vqkit bench --op assign --n
            // 100000 --k K --d D --threads 1 --seconds 0.3 --isa avx2`, 5 alternating
            // pairs against the pass, medians of the ratios, the Zen 4 VM: k x d = 128 x 16
            // 1.148, 64 x 12 1.179, 256 x 16 1.220, 16 x 16 0.996).
            let (best_v, best_i, _) = few_walk::<__m256, FEW256_MR, false>(panel, d, tiles, ahead);
            // After the walk, so that no register holds them through it (computed before
            // it, the norms took two of the walk's registers, and the rows' best indices
            // went to the stack: 256 x 16 1.245, the command below). Against
            // `packed_norms_simd`, whose 16 partials and tests took a quarter of this
            // function's samples at 16 x 32 (`perf record -F 5000 -e cpu-clock` of six runs
            // of `vqkit bench --op assign --n 100000 --k 16 --d 32 --threads 1 --seconds
            // 0.5 --isa avx2`), with the finish in vectors: `vqkit bench --op assign --n
            // 100000 --k K --d D --threads 1 --seconds 0.3 --isa avx2`, 5 alternating
            // pairs, medians of new / old, k x d (the Zen 4 VM): 16 x 9 0.906, 16 x 12
            // 0.926, 16 x 16 0.846, 16 x 24 0.884, 16 x 32 0.908, 32 x 20 0.926, 32 x 32
            // 0.942, 128 x 16 0.968, 256 x 16 0.979, 64 x 32 1.007, 256 x 32 1.004.
            let n = few_norms::<__m256>(panel.as_ptr(), d);
            let (mut v, mut i) = ([0.0f32; FEW256_NR], [0u32; FEW256_NR]);
            finish_rows(best_v, &n, best_i, (&mut v, &mut i), (idx, dist));
        }
    }

    /// The norms of a few kernel's panel of two vectors of rows (`panel[t * 2 W + r]`, d
    /// steps) with [`super::sq_norm`]'s bits, for d <= 32: its partial l is step l's square
    /// plus step l + 16's where there is one, and the partials are added in order, so that
    /// the norm is one chain over the partials (those of two steps first, then those of
    /// one). Against the general pass ([`packed_norms_simd`]), which keeps 16 partials for
    /// any d, this keeps two chains and no partials.
    ///
    /// # Safety
    /// The caller is compiled for V's instruction set; `panel` holds d steps of 2 W floats.
    #[inline(always)]
    unsafe fn few_norms<V: Lanes>(panel: *const f32, d: usize) -> [V; 2] {
        const { assert!(super::FEW_MAX_D <= 32) };
        debug_assert!(d <= super::FEW_MAX_D);
        let w = V::W;
        // SAFETY: the caller's contract: steps below d.
        unsafe {
            let zero = V::splat(0.0);
            let step = |t: usize, h: usize| V::load(panel.add(t * 2 * w + h * w));
            let mut n = [zero; 2];
            let paired = d.saturating_sub(16);
            for l in 0..paired {
                for (h, n) in n.iter_mut().enumerate() {
                    let p = V::add_square(V::add_square(zero, step(l, h)), step(l + 16, h));
                    *n = V::add(*n, p);
                }
            }
            for l in paired..d.min(16) {
                for (h, n) in n.iter_mut().enumerate() {
                    *n = V::add_square(*n, step(l, h));
                }
            }
            n
        }
    }

    /// [`few_entry`]'s walk on vectors V: the codebook tile by tile against the panel's
    /// two vectors of rows, each codeword's scores into the rows' best at once; the rows'
    /// best scores (without |x|^2), their indices, and with NORMS their norms (zeros
    /// without: AVX2 takes them in [`few_norms`]).
    ///
    /// With NORMS (AVX-512) the norms are taken in the first tile's pass over the panel,
    /// with the bits of [`super::sq_norm`] (and of [`packed_norms_simd`], which the kernel
    /// had run over the panel before it: 15% of the samples at n = 4096, k = 16, d = 16 in
    /// `perf`, one thread, much of it the 15 adds of its partials in one chain,
    /// latency-bound). Up to d = 32 partial l of `sq_norm` is step l's square plus step
    /// l + 16's (+0 where a step is missing, which changes no bit of a sum of squares), and
    /// the partials are added in order: at d <= 16 one chain over the steps; wider, partial
    /// l is completed at step l + 16 (step l reloaded from the panel, in L1) and added
    /// there, and the partials without a second step, l >= d - 16, are added after the
    /// pass. The adds go to the adder pipes, which the FMAs leave idle, and their chain runs
    /// beside the FMAs'.
    ///
    /// The norms are right for d <= 32 only ([`super::FEW_MAX_D`], which `few_entry`
    /// asserts).
    ///
    /// # Safety
    /// The caller is compiled for V's instruction set and `few_entry`'s asserts hold for
    /// MR codewords a tile and 2 V::W rows a panel.
    #[inline(always)]
    unsafe fn few_walk<V: Lanes, const MR: usize, const NORMS: bool>(
        panel: &[f32],
        d: usize,
        (tiles, norms): (&[f32], &[f32]),
        mut ahead: Ahead<'_>,
    ) -> ([V; 2], [V::I; 2], [V; 2]) {
        // Partials of at most two steps: steps l and l + 16.
        const { assert!(super::FEW_MAX_D <= 32) };
        let (w, k) = (V::W, norms.len());
        let nr = 2 * w;
        let (xp, cp) = (panel.as_ptr(), tiles.as_ptr());
        // SAFETY (the pointer accesses below): the caller's contract.
        unsafe {
            let (zero, minus_two) = (V::splat(0.0), V::splat(-2.0));
            let mut best_v = [V::splat(f32::INFINITY); 2];
            let mut best_i = [V::splat_i(0); 2];
            let mut x_sq = [zero; 2];
            for (tile, j0) in (0..k).step_by(MR).enumerate() {
                let tp = cp.add(tile * MR * d);
                let mut acc = [[zero; 2]; MR];
                if NORMS && tile == 0 {
                    for t in 0..d.min(16) {
                        ahead.step();
                        let x = few_step(xp.add(t * nr), tp.add(t * MR), &mut acc);
                        if d <= 16 {
                            for h in 0..2 {
                                x_sq[h] = V::add_square(x_sq[h], x[h]);
                            }
                        }
                    }
                    for t in 16..d {
                        ahead.step();
                        let x = few_step(xp.add(t * nr), tp.add(t * MR), &mut acc);
                        for h in 0..2 {
                            let first = V::load(xp.add((t - 16) * nr + h * w));
                            let p = V::add_square(V::add_square(zero, first), x[h]);
                            x_sq[h] = V::add(x_sq[h], p);
                        }
                    }
                    if d > 16 {
                        for l in d - 16..16 {
                            for (h, n) in x_sq.iter_mut().enumerate() {
                                *n = V::add_square(*n, V::load(xp.add(l * nr + h * w)));
                            }
                        }
                    }
                } else {
                    for t in 0..d {
                        ahead.step();
                        few_step(xp.add(t * nr), tp.add(t * MR), &mut acc);
                    }
                }
                // Into the rows' best in codeword order: a tie keeps the lower index, a
                // NaN score never wins; padding codewords are skipped.
                for (j, a) in acc.iter().enumerate().take(MR.min(k - j0)) {
                    let norm = V::splat(norms[j0 + j]);
                    let at = V::splat_i((j0 + j) as u32);
                    for h in 0..2 {
                        let s = V::fmadd(a[h], minus_two, norm);
                        let lt = V::lt(s, best_v[h]);
                        best_v[h] = V::blend(lt, best_v[h], s);
                        best_i[h] = V::blend_i(lt, best_i[h], at);
                    }
                }
            }
            ahead.rest();
            (best_v, best_i, x_sq)
        }
    }

    /// The few kernel's prefetch of the rows it walks next (the next panel's, before they
    /// are packed): one cache line into L1 per step of the walk, so that the lines are
    /// asked for among the FMAs rather than all at once. Prefetched together before each
    /// panel (64 lines at d = 32), into L2, they stalled the core: `perf` (n = 100,000,
    /// k = 16, d = 32, one thread) put 19% of a call on that loop's prefetches, and x is
    /// read from L3 there. Spread over the walk and into L1 against that (a build reading
    /// the choice from the environment, `vqkit bench --op assign --n 100000 --k K --d D
    /// --threads T --seconds 0.3`, 7 alternating pairs, medians of the ratios, k x d, the
    /// Zen 4 VM): one thread 16 x 32 0.826, 16 x 12 0.894, 32 x 20 0.896, 256 x 32
    /// 0.976; two threads 16 x 32 0.907, 16 x 16 0.882, 64 x 24 0.962; `--isa avx2`, 5
    /// pairs, 16 x 16 0.688, 64 x 12 0.908. One thread, 5 pairs, against the same burst:
    /// spread into L2 instead, 16 x 32 1.139, 16 x 16 0.882, 64 x 24 0.995; none at all,
    /// 1.436, 1.168, 1.108. The rows need not start on a line, so a panel's last line may
    /// go unasked. Against large codebooks the lines reach L1 early in the walk and may be
    /// back in L2 by the time they are packed. A panel
    /// has two lines per step of d on AVX-512 and one on AVX2, and the walk takes tiles x
    /// d steps: against 8 codewords or fewer (one tile of AVX-512's) the lines left are
    /// asked for after it ([`Ahead::rest`]).
    pub(super) struct Ahead<'a> {
        rows: &'a [f32],
        /// The float whose line is asked for next (every 16th from the first).
        next: usize,
    }

    impl<'a> Ahead<'a> {
        fn new(rows: &'a [f32]) -> Ahead<'a> {
            Ahead { rows, next: 0 }
        }

        /// The next line, if any is left.
        #[inline(always)]
        fn step(&mut self) {
            if let Some(v) = self.rows.get(self.next) {
                // SAFETY: SSE is part of x86-64, and a prefetch never faults.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(v).cast()) };
                self.next += 16;
            }
        }

        /// The lines left.
        #[inline(always)]
        fn rest(&mut self) {
            while self.next < self.rows.len() {
                self.step();
            }
        }
    }

    /// One step of [`few_walk`]: the panel's two vectors of rows at `x` into the tile's
    /// accumulators, each codeword (MR floats at `c`) broadcast; the rows' vectors.
    ///
    /// # Safety
    /// The caller is compiled for V's instruction set; `x` holds two vectors, `c` MR
    /// floats.
    #[inline(always)]
    unsafe fn few_step<V: Lanes, const MR: usize>(
        x: *const f32,
        c: *const f32,
        acc: &mut [[V; 2]; MR],
    ) -> [V; 2] {
        // SAFETY: the caller's contract.
        unsafe {
            let x = [V::load(x), V::load(x.add(V::W))];
            for (j, a) in acc.iter_mut().enumerate() {
                let c = V::splat(*c.add(j));
                a[0] = V::fmadd(c, x[0], a[0]);
                a[1] = V::fmadd(c, x[1], a[1]);
            }
            x
        }
    }

    /// Codewords per tile of the AVX2 cols kernel, against 16 rows (two ymm).
    const COLS256_MR: usize = 6;

    fn cols_avx2_entry(s: &Step, tile: (&[f32], usize), best_v: &mut [f32], best_i: &mut [u32]) {
        check_cols(s, tile, (best_v.len(), best_i.len()), COLS256_MR, AVX2_NR);
        // SAFETY: `Isa::Avx2` is only constructed after runtime detection of AVX2 and FMA;
        // `check_cols` bounds every pointer offset the kernel takes.
        unsafe { cols_avx2(s, tile, best_v, best_i) }
    }

    /// One vector of f32 lanes with its u32 lanes and lane mask, as the scan, cols, tall and
    /// few walks use it: `__m256` (AVX2 + FMA, 8 lanes) and `__m512` (AVX-512F, 16 lanes).
    ///
    /// # Safety
    /// Every method runs its instruction set's intrinsics: call them only from a function
    /// compiled for it (they are inlined into it).
    trait Lanes: Copy {
        type I: Copy;
        type M: Copy;
        /// Lanes per vector (the 6 x 16 tile's panel is two ymm or one zmm; the tall, scan
        /// and few kernels' panels are two vectors).
        const W: usize;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn store(self, p: *mut f32);
        unsafe fn load_i(p: *const u32) -> Self::I;
        unsafe fn store_i(i: Self::I, p: *mut u32);
        unsafe fn splat(v: f32) -> Self;
        unsafe fn splat_i(v: u32) -> Self::I;
        /// `a * b + c`, one rounding.
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
        /// The lower of `new` and `old` per lane; `old` where `new` is NaN.
        unsafe fn min(new: Self, old: Self) -> Self;
        unsafe fn lt(a: Self, b: Self) -> Self::M;
        /// `b` where `m`, else `a`, for masks from [`Lanes::lt`] alone: AVX2's blends
        /// (`blend_epi32`) take a lane from all of its bits being set, byte by byte.
        unsafe fn blend(m: Self::M, a: Self, b: Self) -> Self;
        unsafe fn blend_i(m: Self::M, a: Self::I, b: Self::I) -> Self::I;
        /// The lowest lane, and the lowest `i` among the lanes holding it (no NaN lanes).
        unsafe fn reduce(v: Self, i: Self::I) -> (f32, u32);
        /// The lowest lane (no NaN lanes): [`Lanes::reduce`]'s score.
        unsafe fn min_lane(v: Self) -> f32;
        /// Bit `l` set where lane `l` equals `m`.
        unsafe fn eq_bits(v: Self, m: f32) -> u32;
        /// Lanes `0..lanes` from `p` (not read beyond), the others zero.
        unsafe fn load_first(p: *const f32, lanes: usize) -> Self;
        /// `a + v * v`, two roundings (as Rust computes `a += v * v`).
        unsafe fn add_square(a: Self, v: Self) -> Self;
        unsafe fn add(a: Self, b: Self) -> Self;
        /// `a + b` lane by lane, wrapping.
        unsafe fn add_i(a: Self::I, b: Self::I) -> Self::I;
    }

    /// Lanes `0..lanes` of 8 with every bit set, the others clear.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn first_lanes(lanes: usize) -> __m256i {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes.min(8) as i32), lane)
    }

    impl Lanes for __m256 {
        type I = __m256i;
        type M = __m256;
        const W: usize = 8;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self) }
        }
        #[inline(always)]
        unsafe fn load_i(p: *const u32) -> __m256i {
            unsafe { _mm256_loadu_si256(p.cast()) }
        }
        #[inline(always)]
        unsafe fn store_i(i: __m256i, p: *mut u32) {
            unsafe { _mm256_storeu_si256(p.cast(), i) }
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            unsafe { _mm256_set1_ps(v) }
        }
        #[inline(always)]
        unsafe fn splat_i(v: u32) -> __m256i {
            unsafe { _mm256_set1_epi32(v as i32) }
        }
        #[inline(always)]
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn min(new: Self, old: Self) -> Self {
            unsafe { _mm256_min_ps(new, old) }
        }
        #[inline(always)]
        unsafe fn lt(a: Self, b: Self) -> __m256 {
            unsafe { _mm256_cmp_ps::<_CMP_LT_OQ>(a, b) }
        }
        #[inline(always)]
        unsafe fn blend(m: __m256, a: Self, b: Self) -> Self {
            // `m` is `lt`'s: every lane all ones or all zeros, as `blend_epi32` needs.
            // SAFETY: AVX2, in functions compiled for it (the trait's contract).
            unsafe {
                let (a, b) = (_mm256_castps_si256(a), _mm256_castps_si256(b));
                _mm256_castsi256_ps(blend_epi32(a, b, m))
            }
        }
        #[inline(always)]
        unsafe fn blend_i(m: __m256, a: __m256i, b: __m256i) -> __m256i {
            unsafe { blend_epi32(a, b, m) }
        }
        #[inline(always)]
        unsafe fn reduce(v: Self, i: __m256i) -> (f32, u32) {
            unsafe { reduce_avx2(v, i) }
        }
        #[inline(always)]
        unsafe fn min_lane(v: Self) -> f32 {
            unsafe { _mm_cvtss_f32(min_avx2(v)) }
        }
        #[inline(always)]
        unsafe fn eq_bits(v: Self, m: f32) -> u32 {
            unsafe { _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, _mm256_set1_ps(m))) as u32 }
        }
        #[inline(always)]
        unsafe fn load_first(p: *const f32, lanes: usize) -> Self {
            unsafe { _mm256_maskload_ps(p, first_lanes(lanes)) }
        }
        #[inline(always)]
        unsafe fn add_square(a: Self, v: Self) -> Self {
            unsafe { _mm256_add_ps(a, _mm256_mul_ps(v, v)) }
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn add_i(a: __m256i, b: __m256i) -> __m256i {
            unsafe { _mm256_add_epi32(a, b) }
        }
    }

    impl Lanes for __m512 {
        type I = __m512i;
        type M = __mmask16;
        const W: usize = 16;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm512_storeu_ps(p, self) }
        }
        #[inline(always)]
        unsafe fn load_i(p: *const u32) -> __m512i {
            unsafe { _mm512_loadu_si512(p.cast()) }
        }
        #[inline(always)]
        unsafe fn store_i(i: __m512i, p: *mut u32) {
            unsafe { _mm512_storeu_si512(p.cast(), i) }
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            unsafe { _mm512_set1_ps(v) }
        }
        #[inline(always)]
        unsafe fn splat_i(v: u32) -> __m512i {
            unsafe { _mm512_set1_epi32(v as i32) }
        }
        #[inline(always)]
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn min(new: Self, old: Self) -> Self {
            unsafe { _mm512_min_ps(new, old) }
        }
        #[inline(always)]
        unsafe fn lt(a: Self, b: Self) -> __mmask16 {
            unsafe { _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b) }
        }
        #[inline(always)]
        unsafe fn blend(m: __mmask16, a: Self, b: Self) -> Self {
            unsafe { _mm512_mask_blend_ps(m, a, b) }
        }
        #[inline(always)]
        unsafe fn blend_i(m: __mmask16, a: __m512i, b: __m512i) -> __m512i {
            unsafe { _mm512_mask_blend_epi32(m, a, b) }
        }
        #[inline(always)]
        unsafe fn reduce(v: Self, i: __m512i) -> (f32, u32) {
            unsafe {
                let m = _mm512_reduce_min_ps(v);
                let at_min = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v, _mm512_set1_ps(m));
                (m, _mm512_mask_reduce_min_epu32(at_min, i))
            }
        }
        #[inline(always)]
        unsafe fn min_lane(v: Self) -> f32 {
            unsafe { _mm512_reduce_min_ps(v) }
        }
        #[inline(always)]
        unsafe fn eq_bits(v: Self, m: f32) -> u32 {
            unsafe { _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v, _mm512_set1_ps(m)) as u32 }
        }
        #[inline(always)]
        unsafe fn load_first(p: *const f32, lanes: usize) -> Self {
            unsafe { _mm512_maskz_loadu_ps(((1u32 << lanes) - 1) as __mmask16, p) }
        }
        #[inline(always)]
        unsafe fn add_square(a: Self, v: Self) -> Self {
            unsafe { _mm512_add_ps(a, _mm512_mul_ps(v, v)) }
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn add_i(a: __m512i, b: __m512i) -> __m512i {
            unsafe { _mm512_add_epi32(a, b) }
        }
    }

    /// v4 `scan`: MR rows x one panel of two vectors per tile, for short rows against many
    /// panels. Where d is small the tiled kernels' epilogue (two compares and four blends
    /// per row and panel, to carry every lane's index) outweighs their 2 d FMAs. Here a
    /// panel's scores only go into the row's per-lane minima (two `min`s); which *block* of
    /// panels last lowered each lane is recorded once per block; and at the end, the one
    /// block holding the row's first minimum is computed again to find its index. The
    /// scores are the tiled kernels', FMA for FMA, so the result is their bits. `D` is d
    /// when it is a constant (the loop over d unrolled), else 0.
    ///
    /// # Safety
    /// The caller is compiled for `V`'s instruction set and `check` passed for the step,
    /// with the whole of d in it.
    #[inline(always)]
    unsafe fn scan_walk<V: Lanes, const MR: usize, const D: usize>(
        s: &Step,
        val: &mut [f32],
        idx: &mut [u32],
    ) {
        let range = s.panels.clone();
        let block = scan_block(range.len());
        // SAFETY: the caller's contract, passed on.
        let (low, at) = unsafe { scan_blocks::<V, MR, D>(s, block) };
        // SAFETY: as for the blocks.
        unsafe {
            for r in 0..MR {
                // The minimum, and the first block where a lane reached it.
                let (m, first) = V::reduce(low[r], at[r]);
                (val[r], idx[r]) = (f32::INFINITY, 0);
                // No score below +inf (the minima never hold NaN): the tiled kernels'
                // strict `<` took none either.
                if m == f32::INFINITY {
                    continue;
                }
                let b0 = range.start + first as usize * block;
                if let Some(found) = (b0..range.end.min(b0 + block))
                    .find_map(|panel| first_scoring::<V>(s, r, panel, m))
                {
                    (val[r], idx[r]) = found;
                }
            }
        }
    }

    /// The panels of [`scan_walk`]'s step in blocks of `block`: per row and lane, the lowest
    /// score, and the block that first reached it. x's element (r, t) is read at `r * rs +
    /// t * ts` (the step's strides); the broadcasts are held in registers across the panels.
    ///
    /// # Safety
    /// As for [`scan_walk`].
    #[inline(always)]
    unsafe fn scan_blocks<V: Lanes, const MR: usize, const D: usize>(
        s: &Step,
        block: usize,
    ) -> ([V; MR], [V::I; MR]) {
        let (rs, ts) = (s.rs, s.ts);
        let (p, w) = (s.p, V::W);
        let nr = 2 * w;
        let d = if D == 0 { p.d } else { D };
        let xp = s.x.as_ptr();
        let range = s.panels.clone();
        // SAFETY: the caller's contract: `check` bounds the panels, the MR rows of x over
        // the whole of d and the norms.
        unsafe {
            let inf = V::splat(f32::INFINITY);
            // Per row, per lane: the lowest score so far, and the block that first reached it.
            let mut low = [inf; MR];
            let mut at = [V::splat_i(0); MR];
            for (b, b0) in range.clone().step_by(block).enumerate() {
                let mut bm = [inf; MR];
                for panel in b0..range.end.min(b0 + block) {
                    let cp = p.data.as_ptr().add(panel * nr * d);
                    // Folded (see `folds`): each chain starts from its codeword's norm.
                    let np = p.norms.as_ptr().add(panel * nr);
                    let mut acc = [[V::load(np), V::load(np.add(w))]; MR];
                    // x's elements are the same for every panel, and the compiler hoists
                    // their broadcasts out of the panel loop: MR x d of them do not fit in
                    // 16 registers, so they were spilled and each FMA reloaded a whole ymm
                    // from the stack. Through an opaque pointer each is broadcast from x
                    // again per panel, a 4-byte load. On a 2-core Zen 1 (AVX2; two 128-bit
                    // loads a cycle), `vqkit bench --op assign --threads 1`, 2 to 3
                    // alternating runs: n = 50,000, k = 4096, d = 8 125-129 -> 116-120 ms,
                    // d = 4 75.6-75.9 -> 71.1 ms, d = 2 47.8-47.9 -> 46.2-46.3 ms;
                    // n = 20,000, k = 65,536, d = 8 757-759 -> 722-725 ms.
                    let xq = std::hint::black_box(xp);
                    for t in 0..d {
                        let c = [V::load(cp.add(t * nr)), V::load(cp.add(t * nr + w))];
                        let xt = xq.add(t * ts);
                        for r in 0..MR {
                            let xv = V::splat(*xt.add(r * rs));
                            acc[r][0] = V::fmadd(xv, c[0], acc[r][0]);
                            acc[r][1] = V::fmadd(xv, c[1], acc[r][1]);
                        }
                    }
                    for r in 0..MR {
                        // A NaN score never enters the minima, as it never wins the tiled `<`.
                        bm[r] = V::min(acc[r][1], V::min(acc[r][0], bm[r]));
                    }
                }
                let here = V::splat_i(b as u32);
                for r in 0..MR {
                    let lower = V::lt(bm[r], low[r]);
                    low[r] = V::blend(lower, low[r], bm[r]);
                    at[r] = V::blend_i(lower, at[r], here);
                }
            }
            (low, at)
        }
    }

    /// Row `r` of the step's rows against one panel: its scores as the tiled and scan
    /// kernels compute them, folded (one FMA chain over d from the norm, against the
    /// packed `-2 c`: see `folds`).
    ///
    /// # Safety
    /// As for [`scan_walk`].
    #[inline(always)]
    unsafe fn panel_scores<V: Lanes>(s: &Step, r: usize, panel: usize) -> (V, V) {
        // SAFETY: the caller's contract.
        let [a0, a1] = unsafe { halves_scores::<V, 2>(s, r, 2 * panel) };
        (a0, a1)
    }

    /// Row `r` of the step's rows against half `q` of the panels (codewords `q * W` to
    /// `q * W + W - 1`): their scores as [`panel_scores`] computes them.
    ///
    /// # Safety
    /// As for [`panel_scores`], for panel `q / 2`.
    #[inline(always)]
    unsafe fn half_scores<V: Lanes>(s: &Step, r: usize, q: usize) -> V {
        // SAFETY: the caller's contract.
        unsafe { halves_scores::<V, 1>(s, r, q)[0] }
    }

    /// Row `r`'s scores against H consecutive halves of the panels from half `q` (within
    /// one panel), in one loop over d: each lane one chain from its codeword's norm.
    ///
    /// # Safety
    /// As for [`panel_scores`], for panel `q / 2`; `q % 2 + H <= 2`.
    #[inline(always)]
    unsafe fn halves_scores<V: Lanes, const H: usize>(s: &Step, r: usize, q: usize) -> [V; H] {
        let (p, d, xp, w) = (s.p, s.p.d, s.x.as_ptr(), V::W);
        debug_assert!(q % 2 + H <= 2);
        // SAFETY: the caller's `check` bounds the panel, the row and d.
        unsafe {
            let cp = p.data.as_ptr().add((q / 2) * 2 * w * d + (q % 2) * w);
            let np = p.norms.as_ptr().add(q * w);
            let mut a: [V; H] = std::array::from_fn(|h| V::load(np.add(h * w)));
            for t in 0..d {
                let xv = V::splat(*xp.add(t * s.ts + r * s.rs));
                for (h, a) in a.iter_mut().enumerate() {
                    *a = V::fmadd(xv, V::load(cp.add(t * 2 * w + h * w)), *a);
                }
            }
            a
        }
    }

    /// Row `r`'s first codeword in `panel` whose score is `m` (a minimum the scan or tall
    /// walk found there), with that score: `m` itself where it is not zero (equal floats
    /// other than zeros have the same bits), the score itself for a zero, so that it keeps
    /// its sign as in the tiled walk. None where no score of the panel equals `m`.
    ///
    /// # Safety
    /// As for [`panel_scores`].
    #[inline(always)]
    unsafe fn first_scoring<V: Lanes>(
        s: &Step,
        r: usize,
        panel: usize,
        m: f32,
    ) -> Option<(f32, u32)> {
        let w = V::W;
        // SAFETY: the caller's contract, passed on; `all` holds a panel.
        unsafe {
            let (s0, s1) = panel_scores::<V>(s, r, panel);
            let hit = V::eq_bits(s0, m) | (V::eq_bits(s1, m) << w);
            if hit == 0 {
                return None;
            }
            let lane = hit.trailing_zeros() as usize;
            let j = (panel * 2 * w + lane) as u32;
            // Equal floats other than zeros have the same bits: the score is `m` itself,
            // without the vectors' trip through memory (a 4-byte load from a 64-byte
            // store, whose wait took a tenth of the tall kernel's samples at k = 256, d = 8
            // in `perf`). A zero takes that trip for its sign (which no distance shows:
            // `|x|^2 >= +0` is added to it).
            if m != 0.0 {
                return Some((m, j));
            }
            let mut all = [0.0f32; 32];
            s0.store(all.as_mut_ptr());
            s1.store(all.as_mut_ptr().add(w));
            Some((all[lane], j))
        }
    }

    /// v5 `cols`: MR codewords (broadcast from `s.x`, element (r, t) at `r * rs + t *
    /// ts`) x the rows of a panel (two vectors, from the packed rows `s.p`) per tile, over
    /// the whole of d, for each panel of rows in `s.panels`; the scores of the
    /// `norms.len()` real codewords (indices from `j0`) are folded into `best_v` / `best_i`
    /// (per row, by panel) in codeword order with a strict `<`.
    ///
    /// # Safety
    /// The caller is compiled for `V`'s instruction set and `check_cols` passed.
    #[inline(always)]
    unsafe fn cols_walk<V: Lanes, const MR: usize>(
        s: &Step,
        (norms, j0): (&[f32], usize),
        best_v: &mut [f32],
        best_i: &mut [u32],
    ) {
        let (p, d, w) = (s.p, s.p.d, V::W);
        let cwp = s.x.as_ptr();
        // SAFETY: the caller's contract: `check_cols` bounds the panels, d, the MR
        // codewords and the best arrays.
        unsafe {
            let minus_two = V::splat(-2.0);
            for panel in s.panels.clone() {
                let xp = p.data.as_ptr().add(panel * 2 * w * d);
                let mut acc = [[V::splat(0.0); 2]; MR];
                for t in 0..d {
                    // Both streams STREAM_AHEAD steps ahead, into L1.
                    let a = xp.wrapping_add((t + STREAM_AHEAD) * 2 * w);
                    _mm_prefetch::<_MM_HINT_T0>(a.cast());
                    _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(w).cast());
                    let c = cwp.wrapping_add((t + STREAM_AHEAD) * s.ts);
                    _mm_prefetch::<_MM_HINT_T0>(c.cast());
                    let x = [V::load(xp.add(t * 2 * w)), V::load(xp.add(t * 2 * w + w))];
                    let ct = cwp.add(t * s.ts);
                    for r in 0..MR {
                        let cv = V::splat(*ct.add(r * s.rs));
                        acc[r][0] = V::fmadd(cv, x[0], acc[r][0]);
                        acc[r][1] = V::fmadd(cv, x[1], acc[r][1]);
                    }
                }
                let bvp = best_v.as_mut_ptr().add(panel * 2 * w);
                let bip = best_i.as_mut_ptr().add(panel * 2 * w);
                let mut bv = [V::load(bvp), V::load(bvp.add(w))];
                let mut bi = [V::load_i(bip), V::load_i(bip.add(w))];
                for r in 0..MR {
                    if r < norms.len() {
                        let nj = V::splat(norms[r]);
                        let j = V::splat_i((j0 + r) as u32);
                        for h in 0..2 {
                            let sc = V::fmadd(acc[r][h], minus_two, nj);
                            let lt = V::lt(sc, bv[h]);
                            bv[h] = V::blend(lt, bv[h], sc);
                            bi[h] = V::blend_i(lt, bi[h], j);
                        }
                    }
                }
                for h in 0..2 {
                    bv[h].store(bvp.add(h * w));
                    V::store_i(bi[h], bip.add(h * w));
                }
            }
        }
    }

    /// Rows per tile of AVX-512's tall kernel at every width up to d = 8: four vectors of
    /// 16 (`tall_avx512`'s G must agree: `tall_step` asserts it). Up to d = 4 the rows' d
    /// elements, the chains, the minima and their panels fit AVX-512's 32 registers. Until
    /// this session of 2026-12-07 wider rows took two vectors, so as to stay in registers;
    /// with four, some of the rows' elements are read from L1 as FMA operands (Zen 4 has
    /// three load ports), and each codeword's d + 1 broadcasts serve twice the rows. `vqkit
    /// bench --op assign --n N --k K --d D --threads T --seconds 0.3` on the Zen 4 VM, one
    /// build of each, alternating pairs, medians of four / two, n x k x d: one thread, 7
    /// pairs, 100,000 x 256 x 8 0.984, x 16 x 8 0.909, x 128 x 8 1.007, x 256 x 7 0.917,
    /// x 32 x 5 0.897, x 16 x 6 0.889, 50,000 x 1024 x 8 0.942, 30,000 x 4096 x 8 0.922;
    /// 5 pairs, 100,000 x 256 x 6 0.890, x 256 x 5 0.961, x 64 x 8 0.906, 30,000 x 4096 x 6
    /// 0.878; two threads, 5 pairs, 100,000 x 256 x 8 0.952, x 256 x 6 0.946, 30,000 x 4096
    /// x 8 0.929, 100,000 x 16 x 8 1.085 (single pairs from 0.83 to 1.17; 9 pairs more,
    /// 0.925, single pairs from 0.39 to 1.81), x 64 x 7 0.951 (9 pairs).
    pub(super) const TALL_MR: usize = 64;

    pub(super) fn tall_avx512_entry(s: &Step, acc: &mut [f32], val: &mut [f32], idx: &mut [u32]) {
        if s.each_block(TALL_MR, val, idx, tall_avx512_entry) {
            return;
        }
        let mr = TALL_MR;
        check(s, acc, val, idx, mr, AVX512_NR);
        assert!(s.first && s.last && s.kc == s.p.d && s.p.d <= super::SCAN_MAX_D);
        assert!(s.p.fold && s.rs == 1 && s.ts == mr);
        // SAFETY: `Isa::Avx512` is only constructed after runtime detection of AVX-512F;
        // `check` bounds every pointer offset the kernel takes; the rows are packed.
        unsafe { tall_avx512(s, val, idx, None) }
    }

    /// Every row of `x` (rows of `p.d` floats) against the whole of a codebook `p` on
    /// `isa`'s tall kernel (AVX2 or AVX-512), finished into `idx` and `dist`
    /// ([`tall_finish`]): for [`super::tall_stream`]. Tile by tile, each packed into one
    /// buffer on the stack, a step over the same buffer and the same codebook, so checked
    /// once rather than per tile (the checks took 7% of a call at n = 100,000, k = 16,
    /// d = 2, one thread), with buffers kept across tiles for the kernel's results (the
    /// minima walk's, and a short tile's; the index walk hands a whole tile's to the
    /// finish in registers). The loop over tiles is compiled for each row width
    /// ([`tall_tiles`]).
    pub(super) fn tall_stream(
        isa: super::Isa,
        x: &[f32],
        p: &super::Packed,
        idx: &mut [u32],
        dist: &mut [f32],
    ) {
        assert!((1..=super::SCAN_MAX_D).contains(&p.d) && p.fold);
        // SAFETY: `Isa::Avx512` and `Isa::Avx2` are only constructed after runtime
        // detection of their instruction sets; `tall_tiles` checks the rest.
        unsafe {
            match isa {
                super::Isa::Avx512 => tall_stream_avx512(x, p, (idx, dist)),
                super::Isa::Avx2 => tall_stream_avx2(x, p, (idx, dist)),
                super::Isa::Portable => panic!("the tall kernels run on AVX2 or AVX-512"),
            }
        }
    }

    /// [`tall_tiles`] by row width on AVX-512, a tile's rows packed by
    /// [`pack_narrow_avx512`] (d from 2 to 7), [`pack_steps_avx`] (8), or
    /// [`super::pack_rows`] (1).
    ///
    /// # Safety
    /// As for [`tall_tiles`]; the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn tall_stream_avx512(x: &[f32], p: &super::Packed, out: (&mut [u32], &mut [f32])) {
        const MR: usize = TALL_MR;
        macro_rules! tiles {
            ($d:literal, $pack:expr) => {
                tall_tiles::<__m512, $d, 4, MR>(x, p, out, $pack)
            };
        }
        // SAFETY: compiled for AVX-512F (and so AVX); the caller's contract.
        unsafe {
            match p.d {
                1 => tiles!(1, |b, xb| super::pack_rows(b, 1, MR, xb)),
                2 => tiles!(2, |b, xb| pack_narrow_avx512::<MR, 2>(b, xb)),
                3 => tiles!(3, |b, xb| pack_narrow_avx512::<MR, 3>(b, xb)),
                4 => tiles!(4, |b, xb| pack_narrow_avx512::<MR, 4>(b, xb)),
                5 => tiles!(5, |b, xb| pack_narrow_avx512::<MR, 5>(b, xb)),
                6 => tiles!(6, |b, xb| pack_narrow_avx512::<MR, 6>(b, xb)),
                7 => tiles!(7, |b, xb| pack_narrow_avx512::<MR, 7>(b, xb)),
                8 => tiles!(8, |b, xb| assert_eq!(pack_steps_avx::<MR>(b, 8, xb), 8)),
                d => unreachable!("the tall kernel serves d <= 8, not {d}"),
            }
        }
    }

    /// [`tall_tiles`] by row width on AVX2, a tile's rows packed as [`super::pack_rows`]
    /// packs them: by [`pack_narrow_avx512`] where the CPU has AVX-512 (`--isa avx2` on
    /// an AVX-512 CPU), else [`pack_narrow_avx`] (d from 2 to 7), chosen once; by
    /// [`pack_steps_avx`] (8); by `pack_rows` (1). Chosen once rather than by `pack_rows`
    /// on every tile, whose dispatch by width and instruction set cost (`vqkit bench --op
    /// assign --n 100000 --k K --d D --threads 1 --seconds 0.3 --isa avx2`, 7 alternating
    /// pairs, medians of `pack_rows` / chosen once, k x d, the Zen 4 VM): 16 x 2 1.060,
    /// 16 x 8 1.025, 64 x 6 1.016, 16 x 4 1.004.
    ///
    /// # Safety
    /// As for [`tall_tiles`]; the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tall_stream_avx2(x: &[f32], p: &super::Packed, out: (&mut [u32], &mut [f32])) {
        const MR: usize = TALL256_MR;
        let wide = super::Isa::Avx512.supported();
        macro_rules! tiles {
            ($d:literal, narrow) => {{
                let pack: unsafe fn(&[f32], &mut [f32]) = if wide {
                    pack_narrow_avx512::<MR, $d>
                } else {
                    pack_narrow_avx::<MR, $d>
                };
                tall_tiles::<__m256, $d, 4, MR>(x, p, out, |b, xb| pack(b, xb))
            }};
            ($d:literal, $pack:expr) => {
                tall_tiles::<__m256, $d, 4, MR>(x, p, out, $pack)
            };
        }
        // SAFETY: compiled for AVX2 and FMA (and so AVX); each pack function's instruction
        // set was detected (AVX-512F by `wide`); the caller's contract.
        unsafe {
            match p.d {
                1 => tiles!(1, |b, xb| super::pack_rows(b, 1, MR, xb)),
                2 => tiles!(2, narrow),
                3 => tiles!(3, narrow),
                4 => tiles!(4, narrow),
                5 => tiles!(5, narrow),
                6 => tiles!(6, narrow),
                7 => tiles!(7, narrow),
                8 => tiles!(8, |b, xb| assert_eq!(pack_steps_avx::<MR>(b, 8, xb), 8)),
                d => unreachable!("the AVX2 tall kernel serves d <= 8, not {d}"),
            }
        }
    }

    /// The tall kernel's loop over tiles ([`tall_step`], each tile finished into `out`):
    /// the rows of `x`, MR a tile, each whole tile packed by `pack` into a buffer on this
    /// frame, a short last one zero-filled and packed by [`super::pack_rows`]; the step
    /// over that buffer and `p` checked once. Inlined into one function per instruction set
    /// and row width, the packing with it on AVX-512 (on AVX2 a function chosen once and
    /// called through a pointer). Until 8e23db3 each tile took a call through the packing's
    /// dispatch by width and one into the kernel's (`tall_avx512`, a 3 KB frame, its own
    /// dispatch by width): with the packing and the finish, more than a quarter of the
    /// kernel's samples at k = 16, d = 2 lay outside its walk.
    ///
    /// The tile's buffer (64-byte aligned) must stay in this function: the compiler then
    /// realigns the frame to 64 bytes and the vectors it spills (the tile's rows at d = 7
    /// and 8, four zmm for each of 7 or 8 steps, 28 or 32 of the 32 registers) land on whole
    /// lines. With the buffer in the caller, this function's spills took whatever alignment
    /// the stack had (as `tall_avx512`'s still do), and at 16 x 8 the loop over tiles ran
    /// 3.4% slower than the calls it replaced, where it now runs 1.5% faster (3.1% in a
    /// build packing d = 8 through `pack_rows`; docs/performance.md, "the tall kernels' loop
    /// over tiles").
    ///
    /// # Safety
    /// The caller is compiled for `V`'s instruction set.
    #[inline(always)]
    unsafe fn tall_tiles<V: Lanes, const D: usize, const G: usize, const MR: usize>(
        x: &[f32],
        p: &super::Packed,
        (idx, dist): (&mut [u32], &mut [f32]),
        pack: impl Fn(&[f32], &mut [f32]),
    ) {
        const { assert!(G * V::W == MR && MR * D <= super::TALL_TILE_MAX && MR <= 64) };
        // The walks' panels: two vectors of codewords (`tall_walk`, `tall_index_walk`).
        let nr = 2 * V::W;
        assert!(p.d == D && x.len() == idx.len() * D && idx.len() == dist.len());
        let mut tile = super::TallTile([0.0f32; super::TALL_TILE_MAX]);
        let xb = &mut tile.0[..MR * D];
        let (mut val, mut ix) = ([0.0f32; MR], [0u32; MR]);
        check(
            &Step::packed(xb, MR, p, 0..p.panels),
            &[],
            &val,
            &ix,
            MR,
            nr,
        );
        let tiles = x
            .chunks(MR * D)
            .zip(idx.chunks_mut(MR).zip(dist.chunks_mut(MR)));
        for (rows, out) in tiles {
            if rows.len() < xb.len() {
                xb.fill(0.0);
                super::pack_rows(rows, D, MR, xb);
            } else {
                pack(rows, xb);
            }
            let s = Step::packed(xb, MR, p, 0..p.panels);
            // SAFETY: the caller's contract; the tile holds at most MR rows.
            unsafe { tall_step::<V, D, G>(&s, &mut val, &mut ix, Some(out)) };
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn tall_avx512(s: &Step, val: &mut [f32], idx: &mut [u32], fin: Finish) {
        const { assert!(TALL_MR == 4 * 16) };
        // SAFETY: compiled for AVX-512F; the caller checked the step. G as `TALL_MR`.
        unsafe {
            match s.p.d {
                1 => tall_step::<__m512, 1, 4>(s, val, idx, fin),
                2 => tall_step::<__m512, 2, 4>(s, val, idx, fin),
                3 => tall_step::<__m512, 3, 4>(s, val, idx, fin),
                4 => tall_step::<__m512, 4, 4>(s, val, idx, fin),
                5 => tall_step::<__m512, 5, 4>(s, val, idx, fin),
                6 => tall_step::<__m512, 6, 4>(s, val, idx, fin),
                7 => tall_step::<__m512, 7, 4>(s, val, idx, fin),
                8 => tall_step::<__m512, 8, 4>(s, val, idx, fin),
                d => unreachable!("the tall kernel serves d <= 8, not {d}"),
            }
        }
    }

    /// Where a tall kernel finishes its tile's rows: their indices and distances.
    type Finish<'a> = Option<(&'a mut [u32], &'a mut [f32])>;

    /// Rows per tile of the AVX2 tall kernel at every width up to `TALL256_MAX_D`: four
    /// vectors of 8. `tall_avx2`'s G must agree (`tall_step` asserts it).
    ///
    /// Two vectors first, tuned on a 2-core Zen 1: with their d elements, chains, minima
    /// and panels and the codeword's d + 1 broadcasts they take 15 of AVX2's 16 registers at
    /// d = 2; at d = 3 and 4 the compiler keeps some of the rows' elements in memory and
    /// reads them as FMA operands from L1, which still beat one vector of 8 rows held whole
    /// (`vqkit bench --op assign --n 100000 --k K --d 4 --threads 1 --seconds 1` on that
    /// Zen 1, 3 alternating runs, medians, against the tiled and scan kernels: 8 rows,
    /// k = 256 11.56 -> 12.77 ms, k = 4096 135.07 -> 165.26; 16 rows, in another build,
    /// 12.27 -> 10.51 and 136.67 -> 131.12).
    ///
    /// Four vectors up to d = 3: per codeword its d + 1 broadcasts then serve twice the
    /// rows, where with two vectors a codeword's few FMAs came with as many other
    /// instructions. On the Zen 4 VM with `--isa avx2` (the same command, `--seconds 0.3`,
    /// 3 alternating pairs, medians of the ratios, 32 rows against 16): d = 2, k = 256
    /// 0.705, k = 4096 0.596, k = 16 0.841, k = 32 0.954; d = 1, k = 256 0.819; d = 3,
    /// k = 256 0.641; but d = 4, k = 4096 1.253 (more of the rows' elements through memory).
    ///
    /// Four vectors at every width since the second session of 2026-12-07, when four
    /// vectors of 16 also won on AVX-512 above d = 4 ([`TALL_MR`]): with two vectors the
    /// rows' elements were already read from L1 from d = 5 (16 registers), so four cost no
    /// more loads an FMA and halve the broadcasts'. `vqkit bench --op assign --n N --k K
    /// --d D --threads T --seconds 0.3 --isa avx2` on the Zen 4 VM, one build of each,
    /// alternating pairs, medians of four / two, n x k x d: one thread, 7 pairs, 100,000 x
    /// 256 x 8 0.914, x 16 x 8 0.832, x 32 x 6 0.796, x 128 x 7 0.783, x 256 x 5 0.962,
    /// x 16 x 5 0.744, x 256 x 4 0.963, x 16 x 4 0.883, x 64 x 4 0.938, 30,000 x 4096 x 8
    /// 0.942, x 4096 x 5 0.954, x 4096 x 4 0.962; two threads, 5 pairs, 100,000 x 256 x 8
    /// 0.921, x 16 x 8 0.913, x 64 x 6 0.889. Not measured on an AVX2-only CPU, most of
    /// which have two load ports where Zen 4 has three: four vectors read more of the
    /// rows' elements from L1 than two at d = 4, and about as many an FMA above.
    pub(super) const TALL256_MR: usize = 32;

    /// The widest rows the AVX2 tall kernel takes, those of the scan kernels (with more
    /// elements a row the minima walk keeps more of them in memory; from d = 5 it lost on
    /// the Zen 1 and now wins on the Zen 4 VM: `super::tall_kernel`).
    pub(super) const TALL256_MAX_D: usize = super::SCAN_MAX_D;

    pub(super) fn tall_avx2_entry(s: &Step, acc: &mut [f32], val: &mut [f32], idx: &mut [u32]) {
        if s.each_block(TALL256_MR, val, idx, tall_avx2_entry) {
            return;
        }
        let mr = TALL256_MR;
        check(s, acc, val, idx, mr, AVX2_NR);
        assert!(s.first && s.last && s.kc == s.p.d && s.p.d <= TALL256_MAX_D);
        assert!(s.p.fold && s.rs == 1 && s.ts == mr);
        // SAFETY: `Isa::Avx2` is only constructed after runtime detection of AVX2 and FMA;
        // `check` bounds every pointer offset the kernel takes; the rows are packed.
        unsafe { tall_avx2(s, val, idx, None) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn tall_avx2(s: &Step, val: &mut [f32], idx: &mut [u32], fin: Finish) {
        const { assert!(TALL256_MR == 4 * 8 && TALL256_MAX_D == 8) };
        // SAFETY: compiled for AVX2 and FMA; the caller checked the step. G as
        // `TALL256_MR`.
        unsafe {
            match s.p.d {
                1 => tall_step::<__m256, 1, 4>(s, val, idx, fin),
                2 => tall_step::<__m256, 2, 4>(s, val, idx, fin),
                3 => tall_step::<__m256, 3, 4>(s, val, idx, fin),
                4 => tall_step::<__m256, 4, 4>(s, val, idx, fin),
                5 => tall_step::<__m256, 5, 4>(s, val, idx, fin),
                6 => tall_step::<__m256, 6, 4>(s, val, idx, fin),
                7 => tall_step::<__m256, 7, 4>(s, val, idx, fin),
                8 => tall_step::<__m256, 8, 4>(s, val, idx, fin),
                d => unreachable!("the AVX2 tall kernel serves d <= 8, not {d}"),
            }
        }
    }

    /// A step of the tall kernel: [`tall_index_walk`] over at most
    /// [`super::TALL_INDEX_MAX_PANELS`] panels (on AVX2 at d = 2 as two halves of the tile,
    /// [`split_index`]), [`tall_walk`] over more; with `fin`, the rows then finished
    /// ([`tall_finish`]).
    ///
    /// # Safety
    /// As for [`tall_walk`]; `fin` holds at most G * W rows.
    #[inline(always)]
    unsafe fn tall_step<V: Lanes, const D: usize, const G: usize>(
        s: &Step,
        val: &mut [f32],
        idx: &mut [u32],
        fin: Finish,
    ) {
        let w = V::W;
        const { assert!(G * V::W <= 64 && D >= 1 && D <= super::SCAN_MAX_D) };
        assert!(s.p.d == D && s.rs == 1 && s.ts == G * w && G * w <= 64);
        let xp = s.x.as_ptr();
        // SAFETY: the caller's contract: `check` bounds the panels, the norms, the tile's
        // G * W rows over the whole of d, and `val` / `idx`.
        unsafe {
            let xs: [[V; G]; D] = std::array::from_fn(|t| {
                std::array::from_fn(|g| V::load(xp.add(t * G * w + g * w)))
            });
            let (best, at) = if s.panels.len() <= super::TALL_INDEX_MAX_PANELS {
                if G == 4 && split_index::<V, D>() {
                    let lo: [[V; 2]; D] = std::array::from_fn(|t| [xs[t][0], xs[t][1]]);
                    let (b0, a0) = tall_index_walk::<V, D, 2>(s, &lo);
                    let hi: [[V; 2]; D] = std::array::from_fn(|t| [xs[t][2], xs[t][3]]);
                    let (b1, a1) = tall_index_walk::<V, D, 2>(s, &hi);
                    (
                        std::array::from_fn(|g| if g < 2 { b0[g] } else { b1[g - 2] }),
                        std::array::from_fn(|g| if g < 2 { a0[g] } else { a1[g - 2] }),
                    )
                } else {
                    tall_index_walk(s, &xs)
                }
            } else {
                tall_walk(s, &xs, val, idx);
                if fin.is_none() {
                    return;
                }
                (
                    std::array::from_fn(|g| V::load(val.as_ptr().add(g * w))),
                    std::array::from_fn(|g| V::load_i(idx.as_ptr().add(g * w))),
                )
            };
            match fin {
                Some(out) => tall_finish(&xs, best, at, (val, idx), out),
                None => {
                    for g in 0..G {
                        best[g].store(val.as_mut_ptr().add(g * w));
                        V::store_i(at[g], idx.as_mut_ptr().add(g * w));
                    }
                }
            }
        }
    }

    /// The tile's first rows finished into `out` (indices, distances) from the walk's best
    /// scores and indices in registers (`best`, `at`) by [`finish_rows`], each row's norm
    /// from its elements in registers (the chain of [`super::packed_norms`] below 16
    /// floats: from +0, each square added in order with its own rounding), the same bits as
    /// the norms' pass and `add_norms` after the kernel. Those two and the copies out, at
    /// n = 100,000, k = 16, one thread (`perf record -e cpu-clock`), took about 16% of a
    /// call at d = 2 and 11% at d = 8 when the kernel's results came through the buffers.
    ///
    /// # Safety
    /// As for [`finish_rows`].
    #[inline(always)]
    unsafe fn tall_finish<V: Lanes, const D: usize, const G: usize>(
        xs: &[[V; G]; D],
        best: [V; G],
        at: [V::I; G],
        bufs: (&mut [f32], &mut [u32]),
        out: (&mut [u32], &mut [f32]),
    ) {
        // SAFETY: the caller's contract.
        unsafe { finish_rows(best, &Squares(xs), at, bufs, out) }
    }

    /// Each vector of rows' norms for [`finish_rows`], taken as the vector is finished.
    /// A trait with its method always inlined rather than a closure: a closure's call is
    /// inlined at the compiler's discretion, and once it was not (two callers of
    /// `tall_step`), its intrinsics were compiled as calls without the caller's instruction
    /// set (`_mm512_mul_ps` a function, at 16 x 8 five times slower).
    trait RowNorms<V> {
        /// Vector g's norms.
        ///
        /// # Safety
        /// The caller is compiled for `V`'s instruction set.
        unsafe fn norm(&self, g: usize) -> V;
    }

    /// Norms computed already.
    impl<V: Copy, const G: usize> RowNorms<V> for [V; G] {
        #[inline(always)]
        unsafe fn norm(&self, g: usize) -> V {
            self[g]
        }
    }

    /// Norms from the rows' elements in registers (`xs[t][g]`, as [`tall_step`] loads
    /// them): from +0, each square added in order with its own rounding.
    struct Squares<'a, V, const D: usize, const G: usize>(&'a [[V; G]; D]);

    impl<V: Lanes, const D: usize, const G: usize> RowNorms<V> for Squares<'_, V, D, G> {
        #[inline(always)]
        unsafe fn norm(&self, g: usize) -> V {
            // SAFETY: the caller's contract.
            unsafe {
                let mut n = V::splat(0.0);
                for x in self.0 {
                    n = V::add_square(n, x[g]);
                }
                n
            }
        }
    }

    /// The first rows of G vectors finished into `out` (indices, distances): each row's
    /// best score (`best`) plus its norm (`norms.norm(g)` for vector g, taken as the vector
    /// is finished), clamped at zero with a NaN kept ([`super::finished`], lane by lane), and
    /// its index (`at`). G * W rows go straight to `out`; fewer through the buffers `val` /
    /// `idx` (G * W rows) and are copied. For the tall kernels' tiles and AVX2's few
    /// panels, whose whole panels had gone through buffers (`vqkit bench --op assign --n
    /// 100000 --k K --d D --threads 1 --seconds 0.3 --isa avx2`, 7 alternating pairs,
    /// medians of new / old against d231702, k x d: 16 x 16 0.946, 16 x 12 0.949, 32 x 20
    /// 0.979; the tall kernels compiled to the same instructions as before).
    ///
    /// # Safety
    /// The caller is compiled for `V`'s instruction set (the lengths are asserted).
    #[inline(always)]
    unsafe fn finish_rows<V: Lanes, const G: usize>(
        best: [V; G],
        norms: &impl RowNorms<V>,
        at: [V::I; G],
        (val, idx): (&mut [f32], &mut [u32]),
        (oi, od): (&mut [u32], &mut [f32]),
    ) {
        let w = V::W;
        let m = oi.len();
        assert!(m == od.len() && m <= G * w && val.len() >= G * w && idx.len() >= G * w);
        let whole = m == G * w;
        let (vp, ip) = if whole {
            (od.as_mut_ptr(), oi.as_mut_ptr())
        } else {
            (val.as_mut_ptr(), idx.as_mut_ptr())
        };
        // SAFETY: the caller's contract; `vp` / `ip` hold G * W rows (asserted).
        unsafe {
            let zero = V::splat(0.0);
            for g in 0..G {
                let v = V::add(best[g], norms.norm(g));
                V::blend(V::lt(v, zero), v, zero).store(vp.add(g * w));
                V::store_i(at[g], ip.add(g * w));
            }
        }
        if !whole {
            oi.copy_from_slice(&idx[..m]);
            od.copy_from_slice(&val[..m]);
        }
    }

    /// Whether the tall index walk takes its tile of G = 4 vectors as two of 2, one after
    /// the other (each walking the codebook), rather than all four at once: on AVX2 at
    /// d = 2, where four vectors' rows, best scores and indices take all 16 registers
    /// before a chain or a broadcast, and two vectors' take 8, at the cost of walking the
    /// codebook's broadcasts twice.
    /// `vqkit bench --op assign --n 100000 --k K --d D --threads 1 --seconds 0.3 --isa
    /// avx2`, a build choosing at run time, 5 alternating pairs, medians of halves / whole,
    /// k x d: 16 x 2 0.884, 32 x 2 0.824, 64 x 2 0.781; 16 x 1 1.062, 64 x 1 1.170, 16 x 3
    /// 1.013, 16 x 4 1.025, 64 x 4 1.039, 32 x 6 1.058, 64 x 8 1.077 (the Zen 4 VM). The
    /// same split of the minima walk lost at every width (256 x 1 1.054, 256 x 2 1.344,
    /// 256 x 3 1.357, 256 x 4 1.054; n = 30,000: 4096 x 2 1.442, 4096 x 8 1.049).
    const fn split_index<V: Lanes, const D: usize>() -> bool {
        V::W == 8 && D == 2
    }

    /// Whether the tall walks at rows of D floats compute two codewords' chains in one loop
    /// over d ([`tall_chains`]): the index walk (`index`) or the minima walk. Where the
    /// rows' elements do not all fit in registers beside the chains and minima (AVX2's 16
    /// with a tile of four vectors), each is read from L1 as an FMA operand once a
    /// codeword; with two codewords a loop, once for both, at the cost of G more chains in
    /// registers. Only on AVX2, and only at the widths where it won:
    ///
    /// `vqkit bench --op assign --n N --k K --d D --threads 1 --seconds 0.3`, one build
    /// with two codewords a loop at every width against one with one, 5 alternating pairs,
    /// medians of two / one, n x k x d (the Zen 4 VM). The minima walk, `--isa avx2`:
    /// 30,000 x 4096 x 1 1.035, x 2 1.089, x 3 1.107, x 4 1.037, x 5 1.040, x 6 0.982, x 7
    /// 0.939, x 8 0.912, 19,073 x 65,536 x 8 0.916, 100,000 x 256 x 8 0.921. The index
    /// walk, n = 100,000, `--isa avx2`: 64 x 1 1.165, 16 x 1 1.125, 64 x 2 0.760, 32 x 2
    /// 0.801, 16 x 2 0.863, 64 x 3 1.087, x 4 1.137, x 5 1.056, x 6 1.006, x 7 0.988, x 8
    /// 0.989 (why d = 2 gains and 3 to 6 lose, the compiler's spills differing, was not
    /// looked into). AVX-512, the minima walk: 30,000 x 4096 x 1 1.010, x 2 1.011, x 4
    /// 1.016, x 5 0.991, x 6 0.993, x 7 0.989, x 8 0.991; the index walk: 16 x 1 1.009,
    /// 128 x 1 0.990, 64 x 2 1.012, 16 x 2 1.007, 64 x 4 1.019, x 6 1.003, x 8 1.010. With
    /// the minima walk's pairs from d = 5 on AVX-512 its index walk at d = 7 lost (7 pairs,
    /// n = 100,000, 64 x 7 1.110, 128 x 7 1.142, 32 x 6 0.987: the walks and the finish
    /// share the tile's rows in one function, and its registers), so AVX-512 keeps one
    /// codeword a loop. Four codewords a loop, in a build choosing at run time: on AVX-512
    /// (its 32 registers) nothing over two (30,000 x 4096 x 8 1.003), on AVX2 spills
    /// (1.567).
    const fn pairs<V: Lanes, const D: usize>(index: bool) -> bool {
        match (index, V::W) {
            (true, 8) => D == 2 || D >= 7,
            (false, 8) => D >= 6,
            _ => false,
        }
    }

    /// C consecutive codewords' folded scores for the tile's rows, in one loop over d (so
    /// that each of the rows' elements read serves all C): each the chain from the
    /// codeword's norm (`norms[j]`) of one FMA per element, in order, against its values
    /// `c[t * nr + j]` (its lane of a panel).
    ///
    /// # Safety
    /// The caller is compiled for `V`'s instruction set; `c` points at D rows of C values
    /// `nr` apart, `norms` at C norms.
    #[inline(always)]
    unsafe fn tall_chains<V: Lanes, const D: usize, const G: usize, const C: usize>(
        xs: &[[V; G]; D],
        c: *const f32,
        nr: usize,
        norms: *const f32,
    ) -> [[V; G]; C] {
        // SAFETY: the caller's contract.
        unsafe {
            let mut acc: [[V; G]; C] = std::array::from_fn(|j| [V::splat(*norms.add(j)); G]);
            for (t, x) in xs.iter().enumerate() {
                let cs: [V; C] = std::array::from_fn(|j| V::splat(*c.add(t * nr + j)));
                for g in 0..G {
                    for j in 0..C {
                        acc[j][g] = V::fmadd(x[g], cs[j], acc[j][g]);
                    }
                }
            }
            acc
        }
    }

    /// [`tall_walk`] for steps of few panels: each codeword's scores go into the rows' best
    /// at once, a compare and two blends per vector of rows (the score and the codeword's
    /// index), in codeword order with a strict `<`, so no panel is computed again at the
    /// end. That recomputation, one panel of scalar chains per row, is what made the tall
    /// kernel lose to the tiled one against few codewords. Returns the rows' best scores and
    /// indices in registers, G vectors each, for [`tall_finish`].
    ///
    /// The walk stops at the last panel's last codeword (`Packed::len`), so padding lanes
    /// cost nothing. A codeword whose norm overflowed to +inf, or is NaN, is walked: every
    /// chain from it is +inf or NaN, which the strict `<` never takes. Until a819dba each
    /// codeword's norm was tested for that and the codeword skipped, a load, a compare and
    /// a branch per codeword and tile. Without them (`vqkit bench --op assign --n 100000
    /// --k K --d D --threads T --seconds 0.3`, alternating pairs, medians of new / old,
    /// k x d, the Zen 4 VM), one thread, 15 pairs: 16 x 2 0.910, 16 x 8 0.967, 32 x 6
    /// 0.981, 128 x 3 0.981, 16 x 4 1.000, 64 x 4 1.047 (21 pairs: 1.005, and the old
    /// build first 0.994); two threads 16 x 2 0.929, 16 x 8 0.930; `--isa avx2` 16 x 2
    /// 0.955, 16 x 8 0.931, 32 x 4 0.748. The old build first, 21 pairs, old / new: one
    /// thread 16 x 2 1.070, 16 x 8 1.015; two threads 1.089, 1.003. Again with `--isa
    /// avx2`, 21 pairs: 32 x 4 0.577 (1.417 with the old build first, old / new), 16 x 8
    /// 0.939 (1.066). Gains at d = 2 and on AVX2 (16 registers, where the test's
    /// registers were dearest); a few percent or none elsewhere.
    ///
    /// # Safety
    /// As for [`tall_walk`] (which also writes `val` and `idx`: this writes neither).
    #[inline(always)]
    unsafe fn tall_index_walk<V: Lanes, const D: usize, const G: usize>(
        s: &Step,
        xs: &[[V; G]; D],
    ) -> ([V; G], [V::I; G]) {
        let (p, w) = (s.p, V::W);
        let nr = 2 * w;
        // SAFETY: the caller's contract: `check` bounds the panels and the norms.
        unsafe {
            let mut best = [V::splat(f32::INFINITY); G];
            let mut at = [V::splat_i(0); G];
            for panel in s.panels.clone() {
                let cp = p.data.as_ptr().add(panel * nr * D);
                let np = p.norms.as_ptr().add(panel * nr);
                // The codeword's index in every lane, counted up from the panel's first
                // rather than broadcast from a general register per codeword (on Zen 4,
                // two operations, and a fifth of the kernel's samples at k = 16, d = 2).
                let mut next = V::splat_i((panel * nr) as u32);
                let lanes = (p.len - panel * nr).min(nr);
                // Two codewords a loop where `pairs` says so, the odd one after.
                let mut even = 0;
                if pairs::<V, D>(true) {
                    even = lanes & !1;
                    let run = (&mut best, &mut at, &mut next);
                    index_lanes::<V, D, G, 2>(xs, (cp, np, nr), 0..even, run);
                }
                let run = (&mut best, &mut at, &mut next);
                index_lanes::<V, D, G, 1>(xs, (cp, np, nr), even..lanes, run);
            }
            (best, at)
        }
    }

    /// The index walk over a panel's codewords `lanes` (a multiple of C of them), C
    /// codewords a loop ([`tall_chains`]) from the panel's values `cp` and norms `np` (`nr`
    /// codewords wide), each codeword's scores then taken in order by a strict `<` into
    /// the rows' best and their indices, `next` the first codeword's index in every lane.
    /// `next` ends as the index after the last codeword.
    ///
    /// # Safety
    /// As for [`tall_chains`], for every codeword of `lanes`.
    #[inline(always)]
    unsafe fn index_lanes<V: Lanes, const D: usize, const G: usize, const C: usize>(
        xs: &[[V; G]; D],
        (cp, np, nr): (*const f32, *const f32, usize),
        lanes: std::ops::Range<usize>,
        (best, at, next): (&mut [V; G], &mut [V::I; G], &mut V::I),
    ) {
        debug_assert!(lanes.len().is_multiple_of(C));
        // SAFETY: the caller's contract.
        unsafe {
            let one = V::splat_i(1);
            for lane in lanes.step_by(C) {
                let accs = tall_chains::<V, D, G, C>(xs, cp.add(lane), nr, np.add(lane));
                // By index: an array's by-value iterator kept the chains in memory.
                for acc in &accs {
                    let j = *next;
                    *next = V::add_i(j, one);
                    for g in 0..G {
                        let lt = V::lt(acc[g], best[g]);
                        best[g] = V::blend(lt, best[g], acc[g]);
                        at[g] = V::blend_i(lt, at[g], j);
                    }
                }
            }
        }
    }

    /// The rows' minima `pm` lowered by the scores of a panel's codewords `lanes` (a
    /// multiple of C of them), C codewords a loop ([`tall_chains`]) from the panel as for
    /// [`index_lanes`]. A NaN score never enters the minima, as it never wins the tiled `<`.
    ///
    /// # Safety
    /// As for [`tall_chains`], for every codeword of `lanes`.
    #[inline(always)]
    unsafe fn minima_lanes<V: Lanes, const D: usize, const G: usize, const C: usize>(
        xs: &[[V; G]; D],
        (cp, np, nr): (*const f32, *const f32, usize),
        lanes: std::ops::Range<usize>,
        pm: &mut [V; G],
    ) {
        debug_assert!(lanes.len().is_multiple_of(C));
        // SAFETY: the caller's contract.
        unsafe {
            for lane in lanes.step_by(C) {
                let accs = tall_chains::<V, D, G, C>(xs, cp.add(lane), nr, np.add(lane));
                for acc in &accs {
                    for g in 0..G {
                        pm[g] = V::min(acc[g], pm[g]);
                    }
                }
            }
        }
    }

    /// The most panels against which AVX-512's tall walk notes the half panel (one zmm of
    /// codewords) that first reached each row's minimum rather than the panel: a compare
    /// and two blends per vector of rows every 16 codewords rather than 32, so that each row
    /// then computes one vector of scores again rather than two (at d = 2, 2 of the row's 34
    /// zmm FMAs and compares at k = 256, on the FMA pipes). `vqkit bench --op assign --n N
    /// --k K --d D --threads 1 --seconds 0.3`, a build with the bound read from the
    /// environment, alternating pairs, medians of halves / panels, k x d: 7 pairs,
    /// n = 100,000, 256 x 2 0.964, 256 x 8 0.939, 512 x 4 0.968, 256 x 5 0.988; 5 pairs,
    /// 1024 x 2 0.988, 1024 x 8 0.989; n = 50,000, 4096 x 2 1.023, 4096 x 6 1.006 (the
    /// extra compares cost more than the one panel of 128 saves). On AVX2 (`--isa avx2`,
    /// halves of 8 codewords) it lost or tied: 256 x 2 1.099, 512 x 3 1.045, 256 x 8 0.995.
    const TALL_HALVES_MAX_PANELS: usize = 32;

    /// The tall kernels: G vectors of W rows (the rows in the lanes, from the packed block:
    /// element (r, t) at `t * G * W + r`) held in registers over the step's panels, against
    /// one codeword at a time (on AVX2 at some widths two, [`pairs`]), its d values and
    /// norm broadcast. Each score is the folded chain of the tiled kernels (from the norm,
    /// one FMA per element, in order). Per codeword and vector of rows the kernel keeps
    /// only the lanes' minima (one `min`); per panel it notes, in each lane, whether the
    /// panel lowered the row's minimum and so which panel first reached it (on AVX-512
    /// against at most [`TALL_HALVES_MAX_PANELS`] panels, which half panel). The one panel
    /// (or half) holding a row's minimum is then computed again for the row, as
    /// [`scan_walk`] does, and its first codeword scoring the minimum is the row's: the
    /// tiled walk's strict `<` over codewords in order (a NaN score never wins, and a row
    /// with no score below +inf keeps (+inf, 0)). Where no row's minimum is +inf or zero
    /// (the rule), the score is the minimum itself and only the index is looked for,
    /// without [`first_scoring`]'s tests per row (`vqkit bench --op assign --n 100000 --k K
    /// --d D --threads 1 --seconds 0.3`, 7 alternating pairs, medians of new / old, k x d:
    /// 256 x 2 0.944, 256 x 8 0.994, 512 x 4 0.985, 256 x 5 0.981).
    ///
    /// Where the tiled kernel spends on each row and panel its compares and blends and,
    /// per block, a horizontal reduction, which at d <= 8 outweigh the 2 to 8 FMAs of a
    /// score, this spends one `min` per vector of rows and codeword.
    ///
    /// # Safety
    /// The caller is compiled for `V`'s instruction set and `check` passed for a tile of
    /// G * W rows, packed (`s.rs == 1`, `s.ts == G * W`), with `s.p.d == D`; `xs` holds
    /// the tile's rows (element t of vector g: row g * W + lane, as [`tall_step`] loads them).
    #[inline(always)]
    unsafe fn tall_walk<V: Lanes, const D: usize, const G: usize>(
        s: &Step,
        xs: &[[V; G]; D],
        val: &mut [f32],
        idx: &mut [u32],
    ) {
        let (p, w) = (s.p, V::W);
        let nr = 2 * w;
        let range = s.panels.clone();
        // SAFETY: the caller's contract: `check` bounds the panels, the norms, and `val` /
        // `idx` for the tile's G * W rows.
        unsafe {
            let inf = V::splat(f32::INFINITY);
            let mut low = [inf; G];
            let mut at = [V::splat_i(0); G];
            let split = 2 * w == AVX512_NR && range.len() <= TALL_HALVES_MAX_PANELS;
            let sub = if split { w } else { nr };
            for panel in range.clone() {
                let cp = p.data.as_ptr().add(panel * nr * D);
                let np = p.norms.as_ptr().add(panel * nr);
                for first in (0..nr).step_by(sub) {
                    let mut pm = [inf; G];
                    let lanes = first..first + sub;
                    if pairs::<V, D>(false) {
                        minima_lanes::<V, D, G, 2>(xs, (cp, np, nr), lanes, &mut pm);
                    } else {
                        minima_lanes::<V, D, G, 1>(xs, (cp, np, nr), lanes, &mut pm);
                    }
                    let here = V::splat_i(((panel * nr + first) / sub) as u32);
                    for g in 0..G {
                        let lower = V::lt(pm[g], low[g]);
                        low[g] = V::blend(lower, low[g], pm[g]);
                        at[g] = V::blend_i(lower, at[g], here);
                    }
                }
            }
            let (mut lows, mut ats) = ([0.0f32; 64], [0u32; 64]);
            let mut rare = 0;
            for g in 0..G {
                low[g].store(lows.as_mut_ptr().add(g * w));
                V::store_i(at[g], ats.as_mut_ptr().add(g * w));
                rare |= V::eq_bits(low[g], 0.0) | V::eq_bits(low[g], f32::INFINITY);
            }
            if rare == 0 {
                // No row's minimum is +inf or zero (the rule, on any data but
                // the contrived): its score is the minimum itself, and only its index is
                // looked for, without the tests of `first_scoring` per row.
                let (vp, ip) = (val.as_mut_ptr(), idx.as_mut_ptr());
                for r in 0..G * w {
                    // `q`: the panel, or half, the walk noted: one of the step's, which
                    // `check` bounds.
                    let (m, q) = (lows[r], ats[r] as usize);
                    debug_assert!(range.contains(&(q * sub / nr)));
                    let hit = if split {
                        V::eq_bits(half_scores::<V>(s, r, q), m)
                    } else {
                        let (s0, s1) = panel_scores::<V>(s, r, q);
                        V::eq_bits(s0, m) | (V::eq_bits(s1, m) << w)
                    };
                    assert!(hit != 0, "the minimum comes from this panel's own scores");
                    *vp.add(r) = m;
                    *ip.add(r) = (q * sub) as u32 + hit.trailing_zeros();
                }
                return;
            }
            if split {
                // The first half of a panel to reach a minimum is the first half of the
                // panel holding it: the panel's first codeword scoring it is the row's.
                for a in &mut ats[..G * w] {
                    *a /= 2;
                }
            }
            for r in 0..G * w {
                let m = lows[r];
                (val[r], idx[r]) = (f32::INFINITY, 0);
                // No score below +inf (the minima never hold NaN): the tiled kernels'
                // strict `<` took none either.
                if m == f32::INFINITY {
                    continue;
                }
                (val[r], idx[r]) = first_scoring::<V>(s, r, ats[r] as usize, m)
                    .expect("the minimum comes from this panel's own scores");
            }
        }
    }

    /// [`scan_walk`] with d a constant where it is one of the common short widths (the
    /// loop over d unrolled, the row's values kept in registers).
    ///
    /// # Safety
    /// As for [`scan_walk`].
    #[inline(always)]
    unsafe fn scan_by_d<V: Lanes, const MR: usize>(s: &Step, val: &mut [f32], idx: &mut [u32]) {
        // SAFETY: the caller's contract.
        unsafe {
            match s.p.d {
                1 => scan_walk::<V, MR, 1>(s, val, idx),
                2 => scan_walk::<V, MR, 2>(s, val, idx),
                3 => scan_walk::<V, MR, 3>(s, val, idx),
                4 => scan_walk::<V, MR, 4>(s, val, idx),
                8 => scan_walk::<V, MR, 8>(s, val, idx),
                _ => scan_walk::<V, MR, 0>(s, val, idx),
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn scan_avx2(s: &Step, val: &mut [f32], idx: &mut [u32]) {
        // SAFETY: compiled for AVX2 and FMA; the caller checked the step.
        unsafe { scan_by_d::<__m256, SCAN256_MR>(s, val, idx) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn cols_avx2(s: &Step, tile: (&[f32], usize), best_v: &mut [f32], best_i: &mut [u32]) {
        // SAFETY: compiled for AVX2 and FMA; the caller checked the step.
        unsafe { cols_walk::<__m256, COLS256_MR>(s, tile, best_v, best_i) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn cols_avx512(s: &Step, tile: (&[f32], usize), best_v: &mut [f32], best_i: &mut [u32]) {
        // SAFETY: compiled for AVX-512F; the caller checked the step.
        unsafe { cols_walk::<__m512, COLS512_MR>(s, tile, best_v, best_i) }
    }

    /// Steps of d ahead at which the AVX-512 tile and the cols kernels prefetch the operand
    /// they stream from L2 (the codebook panel; the rows' panel and the codeword tile, the
    /// latter from L3 where a group exceeds L2: `cols_group`) into L1, 2 lines a step. On
    /// a 2-core Xeon (2 MiB of L2 per core; `vqkit bench --op assign --threads 2`,
    /// alternating runs), where the kernels had run at 69% to 77% of
    /// the FMA ceiling at wide d: 1192 x 4096 x 2048 (cols) 67.7-70.4 -> 60.4-63.3 ms,
    /// 256 x 65,536 x 2048 (cols) 222-225 -> 204-212 ms, 298 x 65,536 x 512 (cols) 71-73
    /// -> 65-66 ms; the tile kernel, with the cols prefetch in both builds, 19,073 x 256 x
    /// 2048 67.8-73.4 -> 66.6-66.7 ms, 4768 x 4096 x 512 62.3-64.9 -> 59.2-59.9 ms,
    /// 100,000 x 4096 x 32 92-93 -> 86-88 ms; d <= 128 in cols and k = 16 within noise.
    /// 16 steps ahead did the same as 6.
    const STREAM_AHEAD: usize = 6;

    /// v3: 12 rows x 32 codewords (two zmm) per tile.
    #[target_feature(enable = "avx512f")]
    unsafe fn rows_avx512<const FOLD: bool, const PACKED: bool>(
        s: &Step,
        acc_buf: &mut [f32],
        val: &mut [f32],
        idx: &mut [u32],
    ) {
        const MR: usize = AVX512_MR;
        const NR: usize = AVX512_NR;
        let (p, d) = (s.p, s.p.d);
        // Packed rows (`x[t * MR + r]`) at offsets known to the compiler.
        let (rs, ts) = if PACKED { (1, MR) } else { (s.rs, s.ts) };
        let xp = s.x.as_ptr();
        // Per row, per lane: the best score so far and its codeword.
        let mut best_v = [_mm512_set1_ps(f32::INFINITY); MR];
        let mut best_i = [_mm512_setzero_si512(); MR];
        let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let minus_two = _mm512_set1_ps(-2.0);
        for (q, panel) in s.panels.clone().enumerate() {
            // SAFETY (all pointer accesses below): `check` asserted that the panel range,
            // the chunk t0..t0 + kc, the MR rows of x and the saved tiles are in bounds.
            let cp = unsafe { p.data.as_ptr().add(panel * NR * d + s.t0 * NR) };
            let ap = acc_buf.as_mut_ptr().wrapping_add(q * MR * NR);
            let np = unsafe { p.norms.as_ptr().add(panel * NR) };
            // Folded, each chain starts from its codeword's norm (see `folds`).
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            if FOLD && s.first {
                acc = [unsafe { [_mm512_loadu_ps(np), _mm512_loadu_ps(np.add(16))] }; MR];
            }
            if !s.first {
                for r in 0..MR {
                    for h in 0..2 {
                        acc[r][h] = unsafe { _mm512_loadu_ps(ap.add(r * NR + h * 16)) };
                    }
                }
            }
            for t in 0..s.kc {
                // A prefetch never faults, past the panel's end included.
                let a = cp.wrapping_add((t + STREAM_AHEAD) * NR);
                _mm_prefetch::<_MM_HINT_T0>(a.cast());
                _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(16).cast());
                let (c0, c1) = unsafe {
                    (
                        _mm512_loadu_ps(cp.add(t * NR)),
                        _mm512_loadu_ps(cp.add(t * NR + 16)),
                    )
                };
                let xt = unsafe { xp.add(t * ts) };
                for r in 0..MR {
                    let xv = _mm512_set1_ps(unsafe { *xt.add(r * rs) });
                    acc[r][0] = _mm512_fmadd_ps(xv, c0, acc[r][0]);
                    acc[r][1] = _mm512_fmadd_ps(xv, c1, acc[r][1]);
                }
            }
            if !s.last {
                for r in 0..MR {
                    for h in 0..2 {
                        unsafe { _mm512_storeu_ps(ap.add(r * NR + h * 16), acc[r][h]) };
                    }
                }
                continue;
            }
            let norms = unsafe { [_mm512_loadu_ps(np), _mm512_loadu_ps(np.add(16))] };
            let i0 = _mm512_add_epi32(lane, _mm512_set1_epi32((panel * NR) as i32));
            let ids = [i0, _mm512_add_epi32(i0, _mm512_set1_epi32(16))];
            for r in 0..MR {
                // Each half into the running best in codeword order, as in the AVX2 kernel:
                // a tie keeps the lower index, a NaN score never wins.
                let (s0, s1) = if FOLD {
                    (acc[r][0], acc[r][1])
                } else {
                    (
                        _mm512_fmadd_ps(acc[r][0], minus_two, norms[0]),
                        _mm512_fmadd_ps(acc[r][1], minus_two, norms[1]),
                    )
                };
                for (s, i) in [(s0, ids[0]), (s1, ids[1])] {
                    let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(s, best_v[r]);
                    best_v[r] = _mm512_mask_blend_ps(lt, best_v[r], s);
                    best_i[r] = _mm512_mask_blend_epi32(lt, best_i[r], i);
                }
            }
        }
        if !s.last {
            return;
        }
        for r in 0..MR {
            // Fold the 16 lanes branch-free: the lowest score, and among the lanes holding
            // it, the lowest index.
            // SAFETY: compiled for AVX-512F.
            (val[r], idx[r]) = unsafe { <__m512 as Lanes>::reduce(best_v[r], best_i[r]) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Rng, clustered};

    /// Every blocking (chunks of d down to one step, groups down to one panel, uneven
    /// tails) gives the bits of the unblocked walk, on every instruction set, at shapes
    /// whose n, k and d leave remainders against every MR, NR and chunk. Codebooks drawn
    /// from the points with repeats make exact ties, so the tie rule is exercised too.
    type PackedNorms = fn(&[f32], usize, usize, &mut [f32]);
    type RowNorms = fn(&[f32], usize, &mut [f32]);

    /// Values with overflowing squares, NaNs, infinities and zeros of either sign.
    fn awkward(rng: &mut Rng, len: usize) -> Vec<f32> {
        let mut x = rng.normal_vec(len);
        for v in x.iter_mut() {
            match rng.below(40) {
                0 => *v = f32::NAN,
                1 => *v = f32::INFINITY,
                2 => *v = -0.0,
                3 => *v = 0.0,
                4 => *v *= 3e19,
                _ => {}
            }
        }
        x
    }

    /// Row norms are [`sq_norm`]'s bits on each row, in every build the CPU runs, for
    /// groups of rows short of, at and past sixteen, at d around each multiple of 16.
    #[test]
    fn row_norms_are_sq_norm() {
        let mut rng = Rng::new(6);
        let mut ways: Vec<(&str, RowNorms)> =
            vec![("dispatched", row_norms), ("portable", row_norms_body)];
        #[cfg(target_arch = "x86_64")]
        if Isa::Avx2.supported() {
            // SAFETY: AVX2 was detected at run time.
            ways.push(("avx2", |x, d, out| unsafe { row_norms_avx2(x, d, out) }));
        }
        #[cfg(target_arch = "x86_64")]
        if Isa::Avx512.supported() {
            // SAFETY: AVX-512F was detected at run time.
            ways.push(("avx512", |x, d, out| unsafe { row_norms_avx512(x, d, out) }));
        }
        // Rows in groups of four (AVX2) and sixteen (AVX-512) with every remainder of four
        // and some of sixteen; awkward values (most rows of 64 floats or more hold a NaN or
        // an infinity), and plain normal ones, whose sums' rounding the order decides.
        for d in (1..=50).chain([63, 64, 65, 784]) {
            for rows in [1, 2, 15, 16, 17, 18, 40] {
                for (kind, x) in [
                    ("awkward", awkward(&mut rng, rows * d)),
                    ("normal", rng.normal_vec(rows * d)),
                ] {
                    for &(way, norms) in &ways {
                        let mut out = vec![0.0f32; rows];
                        norms(&x, d, &mut out);
                        let at = format!("{way} {kind} d={d} rows={rows}");
                        assert_sq_norms(&x, d, &out, &at);
                    }
                }
            }
        }
    }

    /// Each of `out` is [`sq_norm`]'s bits on its row of `x`.
    fn assert_sq_norms(x: &[f32], d: usize, out: &[f32], at: &str) {
        for (r, o) in out.iter().enumerate() {
            let want = sq_norm(&x[r * d..(r + 1) * d]);
            assert_eq!(o.to_bits(), want.to_bits(), "{at} row {r}");
        }
    }

    /// The AVX2 fold of a vector's 8 lanes is [`reduce_lanes`]'s: the lowest score, and the
    /// lowest index among the lanes holding it, with ties within and across the two
    /// halves, lanes at +inf (index 0, as the kernels leave them) and zeros of either sign
    /// (equal as scores; the distance is the same). `reduce_lanes` itself against the
    /// definition, on every CPU.
    #[test]
    fn the_lane_folds_are_reduce_lanes() {
        let mut rng = Rng::new(11);
        let values = [-1.5f32, -0.0, 0.0, 2.0, 7.25, f32::INFINITY];
        for case in 0..2000 {
            let v: [f32; 8] = std::array::from_fn(|_| values[rng.below(values.len())]);
            let i: [u32; 8] = std::array::from_fn(|l| {
                if v[l] == f32::INFINITY {
                    0
                } else {
                    rng.below(1 << 20) as u32
                }
            });
            // The lowest score, and the lowest index among the lanes holding it (all of
            // them at +inf, index 0, where every lane is).
            let low = v.iter().copied().fold(f32::INFINITY, f32::min);
            let first = (0..8).filter(|&l| v[l] == low).map(|l| i[l]).min();
            let want = (low, first.expect("some lane holds the minimum"));
            let got = reduce_lanes(&v, &i);
            assert!(
                got.0 == want.0 && got.1 == want.1,
                "case {case}: {v:?} {i:?}"
            );
            #[cfg(target_arch = "x86_64")]
            if Isa::Avx2.supported() {
                use std::arch::x86_64::{_mm256_loadu_ps, _mm256_loadu_si256};
                // SAFETY: AVX2 was detected at run time; both arrays hold 8 lanes.
                let got = unsafe {
                    let iv = _mm256_loadu_si256(i.as_ptr().cast());
                    x86::reduce_avx2(_mm256_loadu_ps(v.as_ptr()), iv)
                };
                assert!(
                    got.0 == want.0 && got.1 == want.1,
                    "avx2 {case}: {v:?} {i:?}"
                );
            }
        }
    }

    /// The norms of a packed block are [`sq_norm`]'s bits on each row, in every build the
    /// CPU runs, at every MR (and one no kernel uses), for blocks short of MR rows, at d
    /// around each multiple of 16, with overflowing squares, NaNs, infinities and zeros of
    /// either sign among the values.
    #[test]
    fn packed_norms_are_sq_norm() {
        let mut rng = Rng::new(5);
        let mut mrs = vec![PORTABLE_MR, 5, 16, 32, 64];
        #[cfg(target_arch = "x86_64")]
        mrs.extend([x86::AVX2_MR, x86::AVX512_MR]);
        let mut ways: Vec<(&str, PackedNorms)> = vec![
            ("dispatched", packed_norms),
            ("portable", packed_norms_portable),
        ];
        #[cfg(target_arch = "x86_64")]
        if Isa::Avx2.supported() {
            // SAFETY: AVX2 was detected at run time; the tests pass whole blocks.
            ways.push(("avx2", |xt, d, mr, out| unsafe {
                x86::packed_norms_avx2(xt, d, mr, out)
            }));
        }
        #[cfg(target_arch = "x86_64")]
        if Isa::Avx512.supported() {
            // SAFETY: AVX-512F was detected at run time; the tests pass whole blocks.
            ways.push(("avx512", |xt, d, mr, out| unsafe {
                x86::packed_norms_avx512(xt, d, mr, out)
            }));
        }
        for mr in mrs {
            for d in (1..=50).chain([63, 64, 65, 784]) {
                for rows in [1, mr.div_ceil(2), mr] {
                    let x = awkward(&mut rng, rows * d);
                    let mut xt = vec![0.0f32; mr * d];
                    pack_rows(&x, d, mr, &mut xt);
                    for &(way, norms) in &ways {
                        let mut out = vec![0.0f32; rows];
                        norms(&xt, d, mr, &mut out);
                        assert_sq_norms(&x, d, &out, &format!("{way} mr={mr} d={d}"));
                    }
                }
            }
        }
    }

    /// The tiled kernel over the whole of d and `panels` panels in one group: the blocking
    /// the other kernels' bits are checked against.
    fn tiled_whole(d: usize, panels: usize) -> Blocking {
        Blocking {
            kc: d,
            group: panels,
            rows: TASK_ROWS,
            direct: false,
            scan: false,
            cols: false,
            tall: false,
            few: false,
        }
    }

    /// The tall kernels' loop over tiles, at every width they take (each its own packing)
    /// and around every tile boundary (no rows, a short tile alone, whole tiles, a short
    /// last one), against the index walk's codebooks (k = 16) and the minima walk's
    /// (300): the tiled kernel's bits. Rows and outputs of different lengths are refused,
    /// and so is a codebook packed for narrower panels than the walks read (`check`).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn tall_stream_gives_the_tiled_bits() {
        for d in 1..=SCAN_MAX_D {
            for k in [16, 300] {
                let c = clustered(k, d, 5, 0.5, 6 + d as u64);
                let norms: Vec<f32> = c.chunks_exact(d).map(sq_norm).collect();
                for isa in Isa::available().into_iter().filter(|&i| i != Isa::Portable) {
                    let (_, mr, nr) = tall_kernel(isa, d).expect("a tall kernel on x86 SIMD");
                    let p = Packed::new(false, &c, &norms, (k, d, nr), true).unwrap();
                    for n in [0, 1, mr - 1, mr, mr + 1, 2 * mr + 5] {
                        let x = clustered(n, d, 3, 0.5, 20 + n as u64);
                        let (mut idx, mut dist) = (vec![7u32; n], vec![-1.0f32; n]);
                        x86::tall_stream(isa, &x, &p, &mut idx, &mut dist);
                        let (mut ti, mut td) = (vec![0u32; n], vec![0.0f32; n]);
                        let tiled = tiled_whole(d, k.div_ceil(kernel_for(isa, false, k).2));
                        let shape = Shape::new(n, k, d);
                        distance_argmin_blocked(
                            isa, tiled, false, &x, &c, &norms, shape, &mut ti, &mut td,
                        )
                        .unwrap();
                        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        let at = format!("{isa:?} n={n} k={k} d={d}");
                        assert_eq!((&idx, bits(&dist)), (&ti, bits(&td)), "{at}");
                    }
                    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let x = vec![0.0f32; 3 * d];
                        x86::tall_stream(isa, &x, &p, &mut [0; 2], &mut [0.0; 2]);
                    }));
                    assert!(
                        caught.is_err(),
                        "{isa:?} d={d}: rows and outputs of two lengths"
                    );
                    // A codebook packed in panels narrower than the kernel's walks read is
                    // refused by the check, before any tile.
                    let narrow = Packed::new(false, &c, &norms, (k, d, nr / 2), true).unwrap();
                    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let x = vec![0.0f32; 3 * d];
                        x86::tall_stream(isa, &x, &narrow, &mut [0; 3], &mut [0.0; 3]);
                    }));
                    assert!(
                        caught.is_err(),
                        "{isa:?} d={d}: panels of {} passed",
                        nr / 2
                    );
                }
            }
        }
    }

    #[test]
    fn every_blocking_gives_the_same_bits() {
        let mut rng = Rng::new(7);
        let shapes = [
            (29, 37, 5),
            (13, 97, 33),
            (50, 70, 130),
            (7, 5, 300),
            // Short rows against many panels (the scan kernels): blocks of panels with
            // remainders, ties across blocks.
            (23, 1000, 2),
            (10, 700, 8),
            (11, 700, 6),
            (6, 300, 1),
            // Tall tiles (AVX-512's 64 rows, AVX2's 32), full and short, over several
            // blocks.
            (150, 300, 3),
            (70, 300, 7),
            (70, 300, 1),
            // Small codebooks of short rows (the tall kernel's index walk): a partial
            // panel, padding lanes skipped.
            (90, 16, 4),
            (45, 9, 8),
            (70, 100, 2),
            // The AVX2 tall kernel's index walk (at most four panels of 16): tiles of 32
            // rows, full and short, partial panels.
            (40, 50, 2),
            (33, 7, 1),
            (37, 40, 3),
            // Its two codewords a loop (`x86::pairs`: d = 2 and from 7) and an odd one left,
            // a whole tile and a short one.
            (40, 33, 2),
            (40, 61, 7),
            // Many rows against a few codewords (the few kernel): panels of 32 (AVX2: 16)
            // full and short, tiles of 8 (AVX2: 4) full and short, widths from 9.
            (70, 16, 16),
            (33, 37, 9),
            (100, 13, 31),
            // And against hundreds of codewords (many tiles, the best moving late), and
            // against one tile (AVX-512's: the prefetch's last lines after the walk).
            (45, 300, 12),
            (70, 6, 24),
            // Between 129 and 255 codewords (the tall kernels' since b51eaef): AVX-512's
            // 5 and 8 panels, the last holding one codeword or 31; AVX2's 9 and 16.
            (70, 129, 5),
            (45, 255, 8),
        ];
        for &(n, k, d) in &shapes {
            let x = clustered(n, d, 4, 0.3, 11 + d as u64);
            let mut c = Vec::with_capacity(k * d);
            for _ in 0..k {
                let i = rng.below(n);
                c.extend_from_slice(&x[i * d..(i + 1) * d]);
            }
            let norms: Vec<f32> = c.chunks_exact(d).map(sq_norm).collect();
            let shape = Shape::new(n, k, d);
            for isa in Isa::available() {
                let (_, _, nr) = kernel_for(isa, false, k);
                let panels = k.div_ceil(nr);
                let run = |b: Blocking| {
                    let (mut idx, mut dist) = (vec![0u32; n], vec![0f32; n]);
                    distance_argmin_blocked(
                        isa, b, false, &x, &c, &norms, shape, &mut idx, &mut dist,
                    )
                    .unwrap();
                    (idx, dist.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
                };
                let whole = run(tiled_whole(d, panels));
                for kc in [1, 3, 7, d.div_ceil(2), d] {
                    for group in [1, 2, 3, panels] {
                        for rows in [5, 12, TASK_ROWS] {
                            for (direct, scan, cols, tall, few) in [
                                (false, false, false, false, false),
                                (true, false, false, false, false),
                                (false, true, false, false, false),
                                (true, true, false, false, false),
                                (false, false, true, false, false),
                                (false, false, false, true, false),
                                (true, false, false, true, false),
                                (false, false, false, false, true),
                            ] {
                                let b = Blocking {
                                    kc,
                                    group,
                                    rows,
                                    direct,
                                    scan,
                                    cols,
                                    tall,
                                    few,
                                };
                                assert_eq!(run(b), whole, "{isa:?} n={n} k={k} d={d} {b:?}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// The scan, tall and cols kernels give the tiled kernels' bits where scores overflow:
    /// codewords whose norm is +inf (never chosen), products of +inf (scores of -inf,
    /// chosen, the first of them), NaN scores beside the best one in a panel, rows where
    /// every score is +inf or NaN (index 0, +inf), NaN norms (never chosen: the tall index
    /// walk walks them), and zeros of either sign; over ranges of panels split into blocks
    /// with remainders. The scan kernels (AVX2) at d = 3, 6 and 8 (x held in registers,
    /// read in a loop over d), the tall ones at d = 1, 2, 3, 6, 7 and 8 on both (AVX2's two
    /// codewords a loop at 2, 6, 7 and 8), the cols ones at d = 33 and the few ones at d =
    /// 12 and 32 (unfolded; at d = 32 against 1000 and 1500 codewords the test forces
    /// AVX2's past its widest); elsewhere the tiled kernel against itself. With 13 rows
    /// (every tile short) and 40 (a full tile of each kernel first).
    #[test]
    fn scan_and_cols_match_tiled_at_overflow() {
        for (d, scan, cols, tall, few) in [
            (3, true, false, false, false),
            (6, true, false, false, false),
            (8, true, false, false, false),
            (33, false, true, false, false),
            (1, false, false, true, false),
            (2, false, false, true, false),
            (3, false, false, true, false),
            (6, false, false, true, false),
            (7, false, false, true, false),
            (8, false, false, true, false),
            (12, false, false, false, true),
            (32, false, false, false, true),
        ] {
            // 13 rows: two blocks of 6 in place and one more (AVX2), three of 4 (portable);
            // 40: a whole tile of every kernel first (AVX-512's tall one, 64 rows, excepted);
            // 130 against the minima walk: a second tall tile of ordinary rows but one
            // (row 70, huge: a minimum of -inf), so that the walk's path for tiles whose
            // minima are neither +inf nor zero meets the overflows too.
            // 1500 codewords: the tall kernels' minima walk over the whole codebook (1000:
            // on AVX-512 by half panels, `x86::TALL_HALVES_MAX_PANELS`); 100 and 40: their
            // index walk over it (AVX-512's four panels and two, AVX2's three at 40), the
            // streamed blocks of `tall_stream` either way. 12: one panel of 16 with padding
            // (on AVX-512 the 16-wide tile, whose index is its lane's).
            let sizes = [13, 40]
                .into_iter()
                .flat_map(|n| [1500, 1000, 100, 40, 12].map(|k| (n, k)))
                .chain([(130, 1500), (130, 1000)]);
            for (n, k) in sizes {
                let mut x = clustered(n, d, 2, 0.5, 4);
                let mut c = clustered(k, d, 5, 0.5, 6);
                // Row 1 is huge, row 2 is zero (its scores are the norms: +0 for zero codewords).
                x[d..2 * d].fill(1e21);
                x[2 * d..3 * d].fill(0.0);
                if n > 70 {
                    x[70 * d..71 * d].fill(1e21);
                }
                // Norms of +inf: scores of +inf (NaN against rows 1 and 2). 8 and 16 are the
                // first halves of 24's lane pair in a 32-wide panel and AVX2's 16-wide one.
                for j in [5usize, 8, 16, 700, 1499].into_iter().filter(|&j| j < k) {
                    c[j * d..(j + 1) * d].fill(3e38);
                }
                // Finite norms whose products with row 1 overflow: scores of -inf, the first at
                // codeword 0; NaN once every norm is +inf, so that row 1's first +inf is 1's.
                for j in [0usize, 9, 701, 1400].into_iter().filter(|&j| j < k) {
                    c[j * d..(j + 1) * d].fill(1e18);
                }
                // Zero codewords, the first (the zero row's best) beside a NaN score in both
                // panel widths; against one panel (k = 12), 4, between the +inf norm of 5 and
                // the NaN norm of 3 below.
                let zeros = [24usize, 40, 900].into_iter().chain((k <= 16).then_some(4));
                for j in zeros.filter(|&j| j < k) {
                    c[j * d..(j + 1) * d].fill(0.0);
                }
                let mut norms: Vec<f32> = c.chunks_exact(d).map(sq_norm).collect();
                assert!(norms[5].is_infinite() && norms[0].is_finite());
                let shape = Shape::new(n, k, d);
                for isa in Isa::available() {
                    // The tiled kernels, then the scan or the cols ones; the tall ones over
                    // the whole codebook (their minima walk) and in groups of two panels
                    // (their index walk).
                    // `direct`: rows read in place, several blocks a step (the tiled kernel).
                    let run = |norms: &[f32],
                               kernels: (bool, bool, bool, bool),
                               whole: bool,
                               direct: bool| {
                        let (scan, cols, tall, few) = kernels;
                        let (_, _, nr) = kernel_for(isa, scan, k);
                        let b = Blocking {
                            kc: d,
                            group: if whole { k.div_ceil(nr) } else { 2 },
                            rows: TASK_ROWS,
                            direct,
                            scan,
                            cols,
                            tall,
                            few,
                        };
                        let (mut idx, mut dist) = (vec![0u32; n], vec![0f32; n]);
                        distance_argmin_blocked(
                            isa, b, true, &x, &c, norms, shape, &mut idx, &mut dist,
                        )
                        .unwrap();
                        (idx, dist.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
                    };
                    let at = format!("{isa:?} n={n} k={k} d={d}");
                    let tiles = (false, false, false, false);
                    let kernels = (scan, cols, tall, few);
                    let tiled = run(&norms, tiles, true, false);
                    assert_eq!(tiled.0[1], 0, "{at}: the first -inf score");
                    assert!(
                        n <= 70 || tiled.0[70] == 0,
                        "{at}: row 70's first -inf score"
                    );
                    assert_eq!(run(&norms, kernels, true, false), tiled, "{at}");
                    assert_eq!(run(&norms, kernels, false, false), tiled, "{at} by 2");
                    assert_eq!(run(&norms, tiles, true, true), tiled, "{at} in place");
                    assert_eq!(run(&norms, tiles, false, true), tiled, "{at} in place by 2");
                    // NaN norms (no codebook passing the non-finite check has one): scores of
                    // NaN, never taken; one the first of a panel, one mid-panel, one last.
                    let mut nan = norms.clone();
                    let nan_at: Vec<usize> = [3, 32, 33, 650, k - 1]
                        .into_iter()
                        .filter(|&j| j < k)
                        .collect();
                    for &j in &nan_at {
                        nan[j] = f32::NAN;
                    }
                    let tiled = run(&nan, tiles, true, false);
                    let chose = |j: usize| tiled.0.contains(&(j as u32));
                    assert!(!nan_at.iter().any(|&j| chose(j)), "{at}: chose a NaN");
                    assert_eq!(run(&nan, kernels, true, false), tiled, "{at} NaN");
                    assert_eq!(run(&nan, kernels, false, false), tiled, "{at} NaN by 2");
                    assert_eq!(run(&nan, tiles, true, true), tiled, "{at} NaN in place");
                    assert_eq!(
                        run(&nan, tiles, false, true),
                        tiled,
                        "{at} NaN in place by 2"
                    );
                    norms.fill(f32::INFINITY);
                    let tiled = run(&norms, tiles, true, false);
                    assert_eq!(tiled.0, vec![0; n], "{at}: no score below +inf");
                    assert_eq!(run(&norms, kernels, true, false), tiled, "{at}");
                    assert_eq!(run(&norms, kernels, false, false), tiled, "{at} by 2");
                    assert_eq!(run(&norms, tiles, true, true), tiled, "{at} in place");
                    assert_eq!(run(&norms, tiles, false, true), tiled, "{at} in place by 2");
                    norms = c.chunks_exact(d).map(sq_norm).collect();
                }
            }
        }
    }

    /// `x86::check`, the guard in front of the kernels' pointers, takes a task's blocks in
    /// lanes and refuses a step reaching past its rows (one block too many, blocks too far
    /// apart, offsets that overflow) and several blocks in a step over a chunk of d.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn check_refuses_steps_past_their_rows() {
        use std::panic::{AssertUnwindSafe, catch_unwind};
        let (d, k, mr, nr, packed) = (5, 16, x86::AVX2_MR, x86::AVX2_NR, 3);
        let c = vec![0.5f32; k * d];
        let norms: Vec<f32> = c.chunks_exact(d).map(sq_norm).collect();
        let p = Packed::new(false, &c, &norms, (k, d, nr), false).unwrap();
        let x = vec![0.0f32; mr * packed * d];
        let (val, idx, acc) = (
            vec![0.0; mr * packed],
            vec![0u32; mr * packed],
            vec![0.0; mr * nr],
        );
        let step = |blocks: usize, bs: usize, last: bool| Step {
            x: &x,
            rs: packed * d,
            ts: 1,
            p: &p,
            panels: 0..1,
            t0: 0,
            kc: d,
            first: true,
            last,
            blocks,
            bs,
        };
        let passes = |s: &Step| {
            catch_unwind(AssertUnwindSafe(|| x86::check(s, &acc, &val, &idx, mr, nr))).is_ok()
        };
        assert!(passes(&step(packed, d, true)), "the task's blocks in lanes");
        assert!(passes(&step(1, 0, false)), "one block over a chunk");
        assert!(!passes(&step(packed + 1, d, true)), "one block too many");
        assert!(!passes(&step(packed, 2 * d, true)), "blocks too far apart");
        // Wrapping arithmetic would put this step's last element at 28, inside x.
        assert!(
            !passes(&step(2, usize::MAX - 50, true)),
            "offsets that overflow"
        );
        assert!(!passes(&step(2, d, false)), "several blocks over a chunk");
    }

    /// [`exact_scores`] gives the kernel's bits: the lowest (score, index) over every
    /// codeword is the kernel's index, and its finished score the kernel's distance, on
    /// every instruction set, with ties (repeated codewords) and d leaving remainders
    /// against the chains and the chunks.
    #[test]
    fn exact_scores_are_the_kernels() {
        let mut rng = Rng::new(3);
        // (6, 4100, 3): the tall kernels; d <= 8 folds (see `folds`).
        for &(n, k, d) in &[
            (31, 5, 1),
            (40, 37, 7),
            (6, 4100, 3),
            (25, 100, 33),
            (9, 70, 301),
            // The few kernel (AVX-512), chosen by the dispatch: a short panel, a short tile.
            (40, 37, 16),
            (70, 256, 32),
            // k <= 16 past the few kernel's rows: the 6 x 16 tile (AVX-512: in zmm).
            (40, 13, 40),
        ] {
            let x = clustered(n, d, 3, 0.5, 5 + d as u64);
            let mut c = Vec::with_capacity(k * d);
            for _ in 0..k {
                let i = rng.below(n);
                c.extend(x[i * d..(i + 1) * d].iter().map(|v| v + 0.01));
            }
            let norms: Vec<f32> = c.chunks_exact(d).map(sq_norm).collect();
            let all: Vec<u32> = (0..k as u32).collect();
            for isa in Isa::available() {
                let (mut idx, mut dist) = (vec![0u32; n], vec![0f32; n]);
                let shape = Shape::new(n, k, d);
                distance_argmin(isa, true, &x, &c, &norms, shape, &mut idx, &mut dist).unwrap();
                for (i, row) in x.chunks_exact(d).enumerate() {
                    let mut s = vec![0f32; k];
                    exact_scores(isa, row, &c, &norms, &all, &mut s);
                    let (best, j) = reduce_lanes(&s, &all);
                    assert_eq!(j, idx[i], "{isa:?} n={n} k={k} d={d} row {i}");
                    let got = finished(best, sq_norm(row));
                    assert_eq!(got.to_bits(), dist[i].to_bits(), "{isa:?} row {i}");
                    // In a lane beside other rows (every lane, and groups shorter than
                    // LANES, whose missing lanes repeat the last row), the same bits.
                    for lane in [0, i % LANES, LANES - 1] {
                        let mut rows: Vec<u32> =
                            (0..LANES).map(|l| ((i + 7 * l + 1) % n) as u32).collect();
                        rows[lane] = i as u32;
                        let rows = &rows[..(lane + 1).max(i % LANES + 1)];
                        let mut xt = vec![f32::NAN; d * LANES];
                        pack_lanes(&x, d, rows, &mut xt);
                        let mut lanes = vec![[0f32; LANES]; k];
                        exact_lane_scores(isa, &xt, &c, &norms, &all, &mut lanes);
                        for (j, v) in lanes.iter().enumerate() {
                            assert_eq!(v[lane].to_bits(), s[j].to_bits(), "{isa:?} lane {lane}");
                        }
                    }
                    // Any subset, in any order, gives the same scores.
                    let some: Vec<u32> = all.iter().rev().step_by(3).copied().collect();
                    let mut t = vec![0f32; some.len()];
                    exact_scores(isa, row, &c, &norms, &some, &mut t);
                    for (&j, v) in some.iter().zip(&t) {
                        assert_eq!(v.to_bits(), s[j as usize].to_bits());
                    }
                }
            }
        }
    }

    /// Rows packed for the tiled, tall and few kernels are the block's transpose.
    #[test]
    fn row_packing_is_the_block_transpose() {
        // Every tile height, d from 1 to 7 (the narrow copies, and AVX-512's permutes for
        // tiles of a multiple of 16 rows) and from 8 at every remainder mod 8 (the AVX
        // steps, the SSE ones and the scalar tail),
        // whole blocks and short ones (the last block of a task), over a buffer holding
        // stale values (a short block's missing rows must stay as they were).
        let mut mrs = vec![PORTABLE_MR, 1, 3, 5, 8];
        #[cfg(target_arch = "x86_64")]
        mrs.extend([
            x86::AVX2_MR,
            x86::AVX512_MR,
            x86::TALL_MR,
            x86::TALL256_MR,
            // AVX2's few kernel's panels.
            16,
        ]);
        for &mr in &mrs {
            // Every short block for the tiled heights; for the tall ones (64, 32 and 16 rows,
            // which memcheck runs slowly) one short by one row, by a whole SSE group of
            // four and to a single row.
            let rows: Vec<usize> = if mr <= 12 {
                (1..=mr).collect()
            } else {
                vec![1, mr - 5, mr - 4, mr - 1, mr]
            };
            for d in (1..=17).chain([31, 64, 130, 2049]) {
                for &rows in &rows {
                    let block: Vec<f32> = (0..rows * d).map(|v| v as f32 * 0.25 - 7.0).collect();
                    let mut xb = vec![f32::NAN; mr * d];
                    pack_rows(&block, d, mr, &mut xb);
                    for (at, &v) in xb.iter().enumerate() {
                        let (t, r) = (at / mr, at % mr);
                        let at = format!("mr={mr} d={d} rows={rows} t={t} r={r}");
                        if r < rows {
                            assert_eq!(v.to_bits(), block[r * d + t].to_bits(), "{at}");
                        } else {
                            assert!(v.is_nan(), "{at}: a missing row was written");
                        }
                    }
                }
            }
        }
    }

    /// The packed layout is its definition, `panel[t][lane] = codebook[p nr + lane][t]`
    /// (times -2 when folded) with +0 padding lanes and +inf padding norms, at every
    /// remainder of the transpose's tiles (d around PACK_T) and of the panels (k around
    /// nr), sequential and parallel.
    #[test]
    fn packing_is_the_panel_transpose() {
        let nr = 32;
        for &(k, d) in &[(1, 1), (31, 15), (32, 16), (33, 17), (70, 47), (65, 48)] {
            let c: Vec<f32> = (0..k * d).map(|v| v as f32 + 0.5).collect();
            let norms: Vec<f32> = (0..k).map(|j| j as f32).collect();
            for (parallel, fold) in [(false, false), (true, false), (false, true), (true, true)] {
                let p = Packed::new(parallel, &c, &norms, (k, d, nr), fold).unwrap();
                assert_eq!(p.panels, k.div_ceil(nr));
                assert_eq!(p.data.len(), p.panels * nr * d);
                let scale = if fold { -2.0 } else { 1.0 };
                for (at, &v) in p.data.iter().enumerate() {
                    let (panel, t, lane) = (at / (nr * d), at / nr % d, at % nr);
                    let j = panel * nr + lane;
                    let want = if j < k { c[j * d + t] * scale } else { 0.0 };
                    let at = format!("k={k} d={d} panel={panel} t={t} lane={lane} fold={fold}");
                    assert_eq!(v.to_bits(), want.to_bits(), "{at}");
                }
                for (j, &v) in p.norms.iter().enumerate() {
                    assert_eq!(v, if j < k { j as f32 } else { f32::INFINITY });
                }
            }
        }
    }

    /// A packing into a reused buffer writes every element: padding lanes are zeros
    /// whatever the buffer held, and the argmin is that of a fresh buffer.
    #[test]
    fn a_reused_buffer_packs_like_a_fresh_one() {
        let (n, k, d, nr) = (20, 37, 9, 16);
        let x = clustered(n, d, 3, 0.5, 8);
        let c = clustered(k, d, 3, 0.5, 9);
        let norms: Vec<f32> = c.chunks_exact(d).map(sq_norm).collect();
        let fresh = Packed::new(false, &c, &norms, (k, d, nr), false)
            .unwrap()
            .data
            .clone();
        *SPARE.lock().unwrap() = vec![f32::NAN; 4 * fresh.len()];
        let reused = Packed::new(false, &c, &norms, (k, d, nr), false).unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&reused.data), bits(&fresh));
        drop(reused);
        let run = || {
            let (mut idx, mut dist) = (vec![0u32; n], vec![0f32; n]);
            let shape = Shape::new(n, k, d);
            distance_argmin(
                Isa::Portable,
                false,
                &x,
                &c,
                &norms,
                shape,
                &mut idx,
                &mut dist,
            )
            .unwrap();
            (idx, bits(&dist))
        };
        let first = run();
        *SPARE.lock().unwrap() = vec![f32::NAN; 1 << 16];
        assert_eq!(run(), first);
    }

    /// The few kernel takes its rows' norms (AVX-512: in its first tile's pass; AVX2: in a
    /// pass after the walk, `x86::few_norms`) with the bits of `sq_norm` at every width it
    /// serves, 9 to 32 (one chain to 16, partials of two steps beyond, the partials without
    /// a second step added after the pass): the tiled kernel's bits, on panels full and
    /// short, rows of every magnitude (a norm of +inf, a zero row, one whose squares are
    /// subnormal) and a NaN row. (The last partials left out, `d - 16..15`, fail it: `cargo
    /// test --release -p vqkit --lib -- few_kernel_norms`.)
    #[test]
    fn few_kernel_norms_at_every_width() {
        for d in 9..=FEW_MAX_D {
            let (n, k) = (45, 21);
            let mut x = clustered(n, d, 3, 0.5, 40 + d as u64);
            x[d..2 * d].fill(1e21);
            x[2 * d..3 * d].fill(0.0);
            x[3 * d..4 * d].fill(1e-20);
            x[5 * d + d / 2] = f32::NAN;
            let c = clustered(k, d, 4, 0.5, 80 + d as u64);
            let norms: Vec<f32> = c.chunks_exact(d).map(sq_norm).collect();
            let shape = Shape::new(n, k, d);
            for isa in Isa::available()
                .into_iter()
                .filter(|&isa| isa != Isa::Portable)
            {
                let run = |few| {
                    let b = Blocking {
                        few,
                        ..Blocking::for_shape(crate::backend::cpu::CacheSizes::DEFAULT, 4, 8, d, 3)
                    };
                    let (mut idx, mut dist) = (vec![0u32; n], vec![0f32; n]);
                    distance_argmin_blocked(
                        isa, b, false, &x, &c, &norms, shape, &mut idx, &mut dist,
                    )
                    .unwrap();
                    (idx, dist.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
                };
                let (tiled, few) = (run(false), run(true));
                assert_eq!(few, tiled, "{isa:?} d={d}");
                assert!(f32::from_bits(few.1[5]).is_nan() && few.1[1] == f32::INFINITY.to_bits());
            }
        }
    }

    /// Blocks of 16, 32 and 64 rows of 2 to 7 floats packed with AVX's transposes
    /// (`x86::pack_narrow_avx`, which `pack_rows` calls only without AVX-512, so this calls
    /// it itself) are the block's transpose: the blocks' last rows loaded under a mask, in
    /// buffers of exactly the block (memcheck sees a read past it).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx_narrow_packing_is_the_block_transpose() {
        fn check<const MR: usize, const D: usize>() {
            let block: Vec<f32> = (0..MR * D).map(|v| v as f32 * 0.5 - 3.0).collect();
            let mut xb = vec![f32::NAN; MR * D];
            // SAFETY: the caller checked for AVX.
            unsafe { x86::pack_narrow_avx::<MR, D>(&block, &mut xb) };
            for (at, &v) in xb.iter().enumerate() {
                let (t, r) = (at / MR, at % MR);
                let want = block[r * D + t].to_bits();
                assert_eq!(v.to_bits(), want, "mr={MR} d={D} t={t} r={r}");
            }
        }
        if !crate::backend::cpu::has_avx() {
            return;
        }
        check::<16, 2>();
        check::<16, 3>();
        check::<16, 4>();
        check::<16, 5>();
        check::<16, 6>();
        check::<16, 7>();
        // AVX2's tall tiles (32 rows) at every width it packs them for.
        check::<32, 2>();
        check::<32, 3>();
        check::<32, 4>();
        check::<32, 5>();
        check::<32, 6>();
        check::<32, 7>();
        check::<64, 3>();
        check::<64, 4>();
    }

    /// The shapes the few kernel takes ([`few_wins`]), at its bounds.
    #[test]
    fn few_kernel_bounds() {
        // Rows of 9 to 32 floats on AVX-512 and on AVX2 against up to 128 codewords, 9 to
        // 16 on AVX2 beyond (narrower ones fold); more than 4 codewords (fewer: the narrow
        // kernel), 48 Ki floats of codebook at most; never in the portable build.
        let avx512 = |d, k| few_wins(Isa::Avx512, d, k);
        assert!(avx512(9, 5) && avx512(32, 1536) && avx512(16, 16) && avx512(12, 4096));
        assert!(!avx512(8, 16) && !avx512(33, 16) && !avx512(32, 1537) && !avx512(12, 4097));
        assert!(!avx512(16, NARROW_K) && !avx512(9, usize::MAX));
        let avx2 = |d, k| few_wins(Isa::Avx2, d, k);
        assert!(avx2(9, 5) && avx2(16, 3072) && !avx2(17, 129) && !avx2(8, 16));
        assert!(avx2(17, 16) && avx2(32, 128) && !avx2(33, 16) && !avx2(32, 129));
        assert!(!avx2(16, 3073) && !avx2(16, NARROW_K));
        assert!(!few_wins(Isa::Portable, 16, 16));
    }

    /// The tall kernels take rows of d <= 8 against every codebook of more than
    /// [`NARROW_K`] codewords, 129 to 255 included (b51eaef).
    #[test]
    fn tall_kernel_bounds() {
        for d in 1..=SCAN_MAX_D {
            for k in [NARROW_K + 1, 128, 129, 200, 255, 256, 1 << 18] {
                assert!(tall_wins(d, k), "d = {d}, k = {k}");
            }
            assert!(!tall_wins(d, NARROW_K), "d = {d}");
        }
        assert!(!tall_wins(SCAN_MAX_D + 1, 256));
    }

    #[test]
    fn blocking_fits_the_caches() {
        let caches = crate::backend::cpu::CacheSizes {
            l2: 1 << 20,
            ..crate::backend::cpu::CacheSizes::DEFAULT
        };
        // The 6-row AVX2 and 4-row portable tiles read their rows in place against up to
        // 32 panels at any width; the 12-row AVX-512 one too, unless 12 of its rows would
        // start at one offset of L1's set period (rows of a multiple of 1024 floats), then
        // against one or two panels only.
        for panels in [1, 2, 3, 32, 33, 64, 1 << 14] {
            let small = panels <= DIRECT_MAX_PANELS;
            for d in [1, 2, 8, 33, 128, 512, 1000, 1024, 1025, 1536, 2048, 4096] {
                for mr in [4, 6] {
                    assert_eq!(Blocking::for_shape(caches, mr, 16, d, panels).direct, small);
                }
                let apart = d % 1024 != 0;
                assert_eq!(
                    Blocking::for_shape(caches, 12, 32, d, panels).direct,
                    panels <= 2 || (small && apart),
                    "d = {d}, {panels} panels"
                );
            }
        }
        // Rows 2 KiB apart start at two offsets, 6 KiB apart too, 512 bytes apart at 8,
        // an odd number of floats apart at 1024; rows of 1000 or 1025 floats at 128 and
        // 1024 (measured: in place won or tied there).
        assert_eq!(rows_per_l1_set(12, 512), 6);
        assert_eq!(rows_per_l1_set(12, 1536), 6);
        assert_eq!(rows_per_l1_set(12, 128), 2);
        assert_eq!(rows_per_l1_set(12, 1024), 12);
        assert_eq!(rows_per_l1_set(12, 0), 12);
        assert_eq!(rows_per_l1_set(12, 33), 1);
        assert_eq!(rows_per_l1_set(6, 2048), 6);
        assert_eq!(rows_per_l1_set(12, 1000), 1);
        assert_eq!(rows_per_l1_set(12, 1025), 1);
        // d fits in one chunk; 1 MiB / 2 holds 1024 codewords of 128 floats.
        let b = Blocking::for_shape(caches, 12, 32, 128, 2048);
        assert_eq!(b, tiled_whole(128, 32));
        // 12 rows x 341 floats fill half of L1: d = 1536 goes in 5 even chunks.
        let b = Blocking::for_shape(caches, 12, 32, 1536, 32);
        assert_eq!(b.kc, 1536_usize.div_ceil(5));
        assert!(12 * b.kc * 4 <= 16 << 10);
        // A group never exceeds the codebook, and holds one panel at least.
        assert_eq!(Blocking::for_shape(caches, 12, 32, 128, 3).group, 3);
        assert_eq!(Blocking::for_shape(caches, 12, 32, 1 << 16, 3).group, 1);
        // Wide rows: a task's rows fit in half of L2 (64 rows of 2048 floats: 60, a
        // multiple of 12), and never fewer than 12.
        assert_eq!(Blocking::for_shape(caches, 12, 32, 2048, 1).rows, 60);
        assert_eq!(Blocking::for_shape(caches, 12, 32, 1 << 20, 1).rows, 12);
    }

    /// A group of the cols kernels fills half of L2 with its tiles, but holds at least
    /// [`COLS_GROUP_MIN_CODEWORDS`] codewords: whole tiles of `mr`.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn cols_groups_hold_half_of_l2_or_the_fewest_codewords() {
        let l2 = |l2| crate::backend::cpu::CacheSizes {
            l2,
            ..crate::backend::cpu::CacheSizes::DEFAULT
        };
        let least = COLS_GROUP_MIN_CODEWORDS;
        // 512 KiB of L2, tiles of 6 codewords: 10.7 tiles of 1024 floats fill half of it,
        // 21.3 of 512.
        assert_eq!(cols_group(l2(512 << 10), 6, 32), 341);
        assert_eq!(cols_group(l2(512 << 10), 6, 512), 21);
        assert_eq!(cols_group(l2(512 << 10), 6, 1024), least.div_ceil(6));
        assert_eq!(cols_group(l2(512 << 10), 6, 2048), least.div_ceil(6));
        // 2 MiB, tiles of 12: 10.7 tiles of 2048 floats fill half of it, 5.3 of 4096.
        assert_eq!(cols_group(l2(2 << 20), 12, 2048), 10);
        assert_eq!(cols_group(l2(2 << 20), 12, 4096), least.div_ceil(12));
        // From d = 547 (6 tiles fit in half of 512 KiB at d = 768: 14, raised to 20).
        assert_eq!(cols_group(l2(512 << 10), 6, 546), 20);
        assert_eq!(cols_group(l2(512 << 10), 6, 768), least.div_ceil(6));
        // Raised only as far as COLS_GROUP_MAX_BYTES holds: 4 MiB holds 120 codewords up
        // to 8738 floats, then fewer, and one tile at least.
        assert_eq!(cols_group(l2(512 << 10), 6, 8738), least.div_ceil(6));
        assert_eq!(cols_group(l2(512 << 10), 6, 8739), 19);
        // 1.5 MiB tiles at d = 2^16: two in 4 MiB.
        assert_eq!(cols_group(l2(512 << 10), 6, 1 << 16), 2);
        assert_eq!(cols_group(l2(64 << 10), 13, 1 << 20), 1);
    }
}
