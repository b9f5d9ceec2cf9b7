//! The GEMM's driver: BLIS-style blocking (A packed once per product, B panels packed by
//! the tasks that use them), the grid of tasks of one parallel region, and the split along
//! k of products with a small C over a long k. Tasks and parts are functions of the shape
//! alone, so a product gives the same bits on any number of threads.

use super::micro::{Spec, micro};
use super::pack::{chunks_by, pack_a};
use super::{MatRef, PackB, Run, Sparsity};
use rayon::prelude::*;
use std::cell::Cell;

/// C's base pointer, shared by the tasks; each writes a disjoint tile.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: tasks write disjoint tiles of C (distinct row blocks or column panels), and the
// caller's `&mut [f32]` is held for the whole parallel section.
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}

impl CPtr {
    /// A method, not a field access, so closures capture the whole `Sync` wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A product whose C has at most this many MR x NR tiles, and whose k is long, is split
/// along k instead (see [`split_k`]).
const SPLIT_K_MAX_TILES: usize = 32;
/// The k steps of one part of a split product, roughly.
const SPLIT_K_STEPS: usize = 256;

/// How many parts to split k into, if the product is one to split: a small C over a long
/// k, such as a weight gradient summed over every pixel of the batch (64 x 16 over 6272),
/// has too few tiles for the threads to share. A function of the shape alone, so the
/// result does not depend on the thread count; a multiple of 4 parts, so 2 or 4 threads
/// get equal shares.
pub(super) fn k_parts(s: &Spec, m: usize, n: usize, k: usize) -> Option<usize> {
    let tiles = m.div_ceil(s.mr) * n.div_ceil(s.nr);
    (tiles <= SPLIT_K_MAX_TILES && k >= 4 * SPLIT_K_STEPS)
        .then(|| k.div_ceil(SPLIT_K_STEPS).next_multiple_of(4))
}

/// C (+)= the sum over `parts` near-equal ranges of k of `A[:, range] B[range, :]`: each
/// part a serial product into a buffer of its own, the parts in parallel, then summed
/// into C in part order.
#[allow(clippy::too_many_arguments)]
pub(super) fn split_k(
    s: &Spec,
    parallel: bool,
    parts: usize,
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: impl PackB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    mask: Option<&dyn Sparsity>,
) {
    // Every element of each part is written by its product (with a mask whose taps run
    // along m, tiles it rules out are not: then the buffer is zeroed first).
    let mut partial = PARTIAL.take();
    if mask.is_some_and(|mk| mk.skips_tiles()) {
        partial.clear();
    }
    partial.resize(parts * m * n, 0.0);
    let part = |(q, out): (usize, &mut [f32])| {
        let (k0, k1) = (share(q, parts, k), share(q + 1, parts, k));
        let (a, b) = (a.cols_from(k0), b.rows_from(k0));
        blocked(s, false, m, n, k1 - k0, a, b, out, n, false, mask, k0);
    };
    if parallel {
        partial.par_chunks_mut(m * n).enumerate().for_each(part);
    } else {
        partial.chunks_mut(m * n).enumerate().for_each(part);
    }
    // Row by row, each part added in turn: the same order per element as one running sum.
    for (i, row) in c.chunks_mut(ldc).take(m).enumerate() {
        let row = &mut row[..n];
        if !accumulate {
            row.fill(0.0);
        }
        for p in partial.chunks_exact(m * n) {
            row.iter_mut()
                .zip(&p[i * n..][..n])
                .for_each(|(v, &x)| *v += x);
        }
    }
    PARTIAL.set(partial);
}

thread_local! {
    /// Buffers of [`blocked`] and [`split_k`] kept by each thread between products, so a
    /// product does not allocate and zero them again: each is taken out while in use (a
    /// nested use finds an empty one and allocates its own). A product writes every
    /// element it reads first, except the split-k partial sums of a mask with its taps on
    /// M, whose dead tiles no part writes: [`split_k`] zeroes the buffer for those.
    static APACK: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static PARTIAL: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static TASK_BUFFERS: Cell<TaskBuffers> = const {
        Cell::new(TaskBuffers {
            bpack: Vec::new(),
            runs: Vec::new(),
            starts: Vec::new(),
            written: Vec::new(),
        })
    };
}

#[allow(clippy::too_many_arguments)]
pub(super) fn blocked(
    s: &Spec,
    parallel: bool,
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: impl PackB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    mask: Option<&dyn Sparsity>,
    k0: usize,
) {
    let (mr, nr) = (s.mr, s.nr);
    let a_panels = m.div_ceil(mr);
    let b_panels = n.div_ceil(nr);
    // All of op(A), packed once: KC slice after KC slice, each slice `a_panels` panels of
    // MR rows, k-major. Slice `p0` starts at `a_panels * mr * p0`.
    let mut apack = APACK.take();
    apack.resize(a_panels * mr * k, 0.0);
    {
        let slices: Vec<(usize, &mut [f32])> = (0..k)
            .step_by(s.kc)
            .zip(chunks_by(&mut apack, a_panels * mr, k, s.kc))
            .collect();
        let pack_slice = |(p0, out): (usize, &mut [f32])| {
            let kc = s.kc.min(k - p0);
            for (ip, panel) in out.chunks_mut(mr * kc).enumerate() {
                let i0 = ip * mr;
                pack_a(&a, i0, mr.min(m - i0), p0, kc, mr, panel);
            }
        };
        if parallel && m * k >= MIN_PARALLEL_PACK {
            slices.into_par_iter().for_each(pack_slice);
        } else {
            slices.into_iter().for_each(pack_slice);
        }
    }
    // Tasks: a grid of row ranges (whole MR panels) x column ranges (whole NR panels), one
    // parallel region for the whole product. Each task packs the B panels of its own
    // columns, so tasks in one row of the grid never pack the same B; rows of the grid are
    // only added when there are too few column panels to go round (then they re-pack B,
    // which is small exactly then). Ranges differ in length by at most one panel, and there
    // are several per thread, so the last task to finish is never much longer than the rest
    // (33 panels in tasks of 5 left one thread with 20 of them).
    let threads = crate::backend::cpu::pool_threads(parallel);
    let col_tasks = if threads > 1 {
        (TASKS_PER_THREAD * threads).min(b_panels)
    } else {
        1
    };
    let row_tasks = if threads > 1 && col_tasks < 2 * threads {
        (TASKS_PER_THREAD * threads)
            .div_ceil(col_tasks)
            .min(a_panels)
    } else {
        1
    };
    let cptr = CPtr(c.as_mut_ptr());
    let apack_all = &apack[..];
    let task = |w: &mut TaskBuffers, t: usize| {
        let (rt, ct) = (t / col_tasks, t % col_tasks);
        let (ip0, ip1) = (
            share(rt, row_tasks, a_panels),
            share(rt + 1, row_tasks, a_panels),
        );
        let (jp0, jp1) = (
            share(ct, col_tasks, b_panels),
            share(ct + 1, col_tasks, b_panels),
        );
        let row_block = (s.mc / mr).max(1);
        let cols_of = |jp: usize| (jp * nr, (jp * nr + nr).min(n));
        let rows_of = |ip: usize| (ip * mr, (ip * mr + mr).min(m));
        for jc in (jp0..jp1).step_by(s.nc / nr) {
            let jc1 = (jc + s.nc / nr).min(jp1);
            // Whether each column panel has had a product written yet: with a mask, a
            // panel's first KC slices may have nothing to add.
            w.written.clear();
            w.written.resize(jc1 - jc, false);
            for p0 in (0..k).step_by(s.kc) {
                let kc = s.kc.min(k - p0);
                // The ranges of this slice that each panel multiplies: all of it, unless
                // the mask rules some out.
                w.runs.clear();
                w.starts.clear();
                for jp in jc..jc1 {
                    w.starts.push(w.runs.len());
                    match mask {
                        Some(mk) => mk.k_runs(k0, cols_of(jp), (p0, p0 + kc), &mut w.runs),
                        None => w.runs.push((p0, p0 + kc)),
                    }
                }
                w.starts.push(w.runs.len());
                // A row-major B is read in place, NR columns of KC rows with its own row
                // stride: with few A panels to share it (small m) packing would cost as much
                // as the product. Partial panels and other operands are packed, only the
                // rows that the panel's runs multiply.
                let direct = b.in_place();
                w.bpack.resize((jc1 - jc) * nr * kc, 0.0);
                for (q, out) in w.bpack.chunks_mut(nr * kc).enumerate() {
                    let (j0, j1) = cols_of(jc + q);
                    if direct.is_none() || j1 - j0 < nr {
                        for &(r0, r1) in &w.runs[w.starts[q]..w.starts[q + 1]] {
                            let out = &mut out[(r0 - p0) * nr..(r1 - p0) * nr];
                            b.pack(r0, r1 - r0, j0, j1 - j0, nr, out);
                        }
                    }
                }
                let aslice = &apack_all[a_panels * mr * p0..][..a_panels * mr * kc];
                // A block of MC rows stays in L2 while the B panels of this task pass by;
                // each B micro-panel stays in L1 across the block's A panels.
                for ib in (ip0..ip1).step_by(row_block) {
                    let ib1 = (ib + row_block).min(ip1);
                    for jp in jc..jc1 {
                        let q = jp - jc;
                        let runs = &w.runs[w.starts[q]..w.starts[q + 1]];
                        let (cj, cj1) = cols_of(jp);
                        let cols = cj1 - cj;
                        let (bp, ldb) = match direct {
                            Some((data, rs)) if cols == nr => {
                                (&data[p0 * rs + cj..][..(kc - 1) * rs + nr], rs)
                            }
                            _ => (&w.bpack[q * nr * kc..][..nr * kc], nr),
                        };
                        for ip in ib..ib1 {
                            if mask.is_some_and(|mk| !mk.tile_live(rows_of(ip), (cj, cj1))) {
                                continue;
                            }
                            let ap = &aslice[ip * mr * kc..][..mr * kc];
                            let (ci, ci1) = rows_of(ip);
                            for (r, &(r0, r1)) in runs.iter().enumerate() {
                                let acc = r > 0 || accumulate || w.written[q];
                                let (ap, bp) = (&ap[(r0 - p0) * mr..], &bp[(r0 - p0) * ldb..]);
                                // SAFETY: ci1 <= m and cj1 <= n, and C holds
                                // (m - 1) * ldc + n elements (checked by `sgemm_with`), so
                                // the tile is in bounds; tasks own disjoint (row, column)
                                // ranges.
                                unsafe {
                                    let cp = cptr.get().add(ci * ldc + cj);
                                    micro(s, r1 - r0, ap, bp, ldb, cp, ldc, ci1 - ci, cols, acc);
                                }
                            }
                        }
                    }
                }
                for (q, written) in w.written.iter_mut().enumerate() {
                    *written |= w.starts[q] < w.starts[q + 1];
                }
            }
            // Panels the mask left without a single product are zero.
            if !accumulate {
                for q in (0..w.written.len()).filter(|&q| !w.written[q]) {
                    let (cj, cj1) = cols_of(jc + q);
                    for i in ip0 * mr..(ip1 * mr).min(m) {
                        // SAFETY: row i < m, columns cj..cj1 <= n of this task's tiles.
                        unsafe {
                            std::slice::from_raw_parts_mut(cptr.get().add(i * ldc + cj), cj1 - cj)
                                .fill(0.0)
                        };
                    }
                }
            }
        }
    };
    let task = |t: usize| {
        let mut w = TASK_BUFFERS.take();
        task(&mut w, t);
        TASK_BUFFERS.set(w);
    };
    let tasks = row_tasks * col_tasks;
    if parallel && tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
    APACK.set(apack);
}

/// What a task of [`blocked`] reuses from one KC slice to the next.
#[derive(Default)]
struct TaskBuffers {
    /// The packed B panels of the task's columns.
    bpack: Vec<f32>,
    /// The k ranges each column panel multiplies in the current slice: panel q's are
    /// `runs[starts[q]..starts[q + 1]]`.
    runs: Vec<Run>,
    starts: Vec<usize>,
    /// Whether a product has been written into each column panel yet.
    written: Vec<bool>,
}

/// Tasks of a parallel GEMM per thread: enough that rayon's stealing evens out the load.
const TASKS_PER_THREAD: usize = 8;

/// The start of part `i` of `parts` near-equal parts of `0..total`.
fn share(i: usize, parts: usize, total: usize) -> usize {
    i * total / parts
}

/// Below this many elements of A, packing it stays on the calling thread.
const MIN_PARALLEL_PACK: usize = 1 << 15;
