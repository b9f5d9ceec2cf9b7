//! Exact Lloyd with Elkan's bounds, on the CPU.
//!
//! A Lloyd step's assignment recomputes all `n x k` distances, yet after the first few
//! steps the centroids move little and almost no point changes cluster. Elkan (2003) keeps,
//! per point, an upper bound `u_i >= |x_i - c_a(i)|` on the distance to its centroid and a
//! lower bound `l_ij <= |x_i - c_j|` to every other centroid. When centroid `j` moves by
//! `delta_j`, the triangle inequality keeps them bounds after
//!
//! ```text
//! u_i  += delta_a(i)           l_ij = max(l_ij - delta_j, 0)
//! ```
//!
//! and a centroid with `l_ij > u_i` cannot be the nearest: its distance is never computed.
//! On Fashion-MNIST (k = 1024) that leaves 0.4% to 4% of the distances per step.
//!
//! **Exact, not approximately so.** The assignment must be the bits of
//! `distance_argmin`: the same codes and distances, so that k-means with bounds gives the
//! centroids of k-means without, bit for bit. Two things make it so.
//! - The distances that are computed are the kernel's own ([`exact_scores`] and
//!   [`exact_lane_scores`]: one chain of FMAs over d, as the micro-kernel's lanes run it),
//!   and the lowest (score, index) wins.
//! - A centroid is ruled out only with a margin that covers every rounding. A distance
//!   computed in f32 over d terms, by the kernel or by any GEMM, is within
//!   `E_i = eta (|x_i| + max_j |c_j|)^2` of the true squared distance, with
//!   `eta = 2 (d + 8) 2^-24` (twice the classic bound `(d + 2) u` of a d-term dot product,
//!   its norms and its two sums). So `l_ij^2 > u_i^2 + 2 E_i` means the kernel's score for
//!   `j` is strictly above its score for `a(i)`; the test uses `2.5 E_i`, and bounds are
//!   rounded down (lower) or kept in f64 (upper).
//!
//! Steps:
//! - **Refresh** (first step, or when the bounds have decayed): one GEMM writes `x . c_j`
//!   over the bound matrix; each row turns it into squared distances `t_ij` (off by at
//!   most `E_i`), stores `l_ij = sqrt(t_ij - E_i)`, and computes exactly only the
//!   centroids with `t_ij <= min_j t_ij + 4.5 E_i`: the kernel's choice is among them.
//! - **Bounded step**: each point's `u_i` is made tight first (the exact distance to its
//!   centroid, needed anyway for the inertia), [`LANES`] points of one centroid at a time
//!   in the lanes of [`exact_lane_scores`]. Then one pass moves every bound by the drifts
//!   and keeps the candidates `l_ij <= sqrt(u_i^2 + 2.5 E_i)`. If they exceed
//!   [`MAX_CANDIDATES`] of `n x k`, the step is handed back to the kernel and the bounds
//!   are dropped (a threshold set when each candidate was a lone scalar chain, some thirty
//!   times the kernel's cost per distance; the lanes made them cheaper, and it was not
//!   moved since). Otherwise the points with candidates, sorted by centroid, go [`LANES`]
//!   at a time into the lanes, which compute the union of their candidates for all of
//!   them (see [`Bounds::bounded_step`]); every distance computed tightens its bound.
//!
//! Every decision depends on the row, and on the group of [`LANES`] rows it is computed
//! in, which the sort by centroid fixes whatever the thread count; so the result (and the
//! bounds) do not depend on the thread count. Memory: one f32 per point and centroid; above
//! [`MAX_BYTES`] the fit runs without bounds.

use crate::backend::Backend;
use crate::backend::cpu::gemm::{MatRef, Parallelism, sgemm_with};
use crate::backend::cpu::{
    Isa, LANES, NARROW_K, exact_lane_scores, exact_scores, finished, pack_lanes, row_norms, sq_norm,
};
use crate::error::Result;
use rayon::prelude::*;

/// Above this many candidate distances per `n x k`, a step goes to the fused kernel.
const MAX_CANDIDATES: f64 = 0.10;

/// The bound matrix's largest size.
const MAX_BYTES: usize = 2 << 30;

/// The points' share of a refresh GEMM per call.
const REFRESH_BLOCK_BYTES: usize = 4 << 20;

/// Rows per parallel task.
const TASK: usize = 64;

/// Groups of [`LANES`] points per parallel task of [`Bounds::bounded_step`].
const GROUPS_PER_TASK: usize = 4;

/// `l * SHRINK` rounds any non-negative f32 `l`, itself rounded from a value `v`, to at
/// most `v` (`(1 - 2^-21)(1 + 2^-24) / (1 - 2^-24) < 1`).
const SHRINK: f32 = 1.0 - 1.0 / (1u32 << 21) as f32;

/// Elkan's bounds for one Lloyd run on host memory (see the module docs).
pub(crate) struct Bounds {
    isa: Isa,
    d: usize,
    k: usize,
    /// `l_ij`, row-major (n, k); valid only while `valid`.
    lower: Vec<f32>,
    /// The kernel's codes and distances at `prev`.
    idx: Vec<u32>,
    /// Per point, how many candidates [`Bounds::shift`] left, and per task of [`TASK`]
    /// rows, those candidates, row after row.
    pending: Vec<u32>,
    cands: Vec<Vec<u32>>,
    dist: Vec<f32>,
    /// `|x_i|^2` as the kernel computes it, and `|x_i|` in f64.
    x_sq: Vec<f32>,
    x_norm: Vec<f64>,
    eta: f64,
    /// The centroids the bounds were last made for.
    prev: Vec<f32>,
    valid: bool,
}

/// What one assignment through the bounds gave.
pub(crate) enum Assigned<'a> {
    /// The kernel's codes and distances, and how many distances were computed (a
    /// refresh's GEMM counts as all `n x k`).
    Done {
        idx: &'a [u32],
        dist: &'a [f32],
        computed: f64,
    },
    /// Too many candidates: run the kernel instead; the bounds are gone.
    Dropped,
}

impl Bounds {
    /// Bounds for `x` (rows of `d`) and `k` centroids, or `None` where they do not pay or
    /// do not fit: another backend than the CPU's, `k` too small for the bounds' pass to
    /// save anything, very short rows, or a bound matrix above [`MAX_BYTES`].
    pub(crate) fn new<B: Backend>(b: &B, x: &[f32], d: usize, k: usize) -> Option<Bounds> {
        let isa = b.host_isa()?;
        let n = x.len() / d.max(1);
        let bytes = n.checked_mul(k)?.checked_mul(std::mem::size_of::<f32>())?;
        // The margin assumes d u < 1; far beyond any real row.
        if k < 64 || k <= NARROW_K || !(16..1 << 22).contains(&d) || bytes > MAX_BYTES {
            return None;
        }
        // Written whole by the first refresh's GEMM, which first-touches its pages.
        let lower = crate::resources::zeroed_lazy::<f32>("the k-means bounds", n * k).ok()?;
        // In the backend's threads (one thread took 3% of a one-step fit on Fashion-MNIST).
        let (mut x_sq, mut x_norm) = (vec![0.0f32; n], vec![0.0f64; n]);
        let rows = |((x, x_sq), x_norm): ((&[f32], &mut [f32]), &mut [f64])| {
            row_norms(x, d, x_sq);
            for (r, v) in x.chunks_exact(d).zip(x_norm) {
                *v = r.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
            }
        };
        b.run_on_host(n * d, |par| {
            let (xs, sq, nm) = (x.chunks(TASK * d), &mut x_sq, &mut x_norm);
            if par {
                let sq = sq.par_chunks_mut(TASK).zip(nm.par_chunks_mut(TASK));
                x.par_chunks(TASK * d)
                    .zip(sq)
                    .for_each(|(x, (s, m))| rows(((x, s), m)));
            } else {
                xs.zip(sq.chunks_mut(TASK))
                    .zip(nm.chunks_mut(TASK))
                    .for_each(rows);
            }
        })?;
        Some(Bounds {
            isa,
            d,
            k,
            lower,
            idx: vec![0; n],
            pending: vec![0; n],
            cands: vec![Vec::new(); n.div_ceil(TASK)],
            dist: vec![0.0; n],
            x_sq,
            x_norm,
            eta: 2.0 * (d as f64 + 8.0) * f64::powi(2.0, -24),
            prev: Vec::new(),
            valid: false,
        })
    }

    /// The kernel's assignment of `x` to `centroids` (see the module docs).
    pub(crate) fn assign<B: Backend>(
        &mut self,
        b: &B,
        x: &[f32],
        centroids: &[f32],
    ) -> Result<Assigned<'_>> {
        let (d, k) = (self.d, self.k);
        let n = self.idx.len();
        let norms: Vec<f32> = centroids.chunks_exact(d).map(sq_norm).collect();
        let c_max = norms.iter().fold(0.0f64, |m, &v| m.max(v as f64)).sqrt();
        // sq_norm's own error on the largest norm, with room.
        let c_max = c_max * (1.0 + self.eta) + f64::MIN_POSITIVE;
        let eta = self.eta;
        let margin = move |xn: f64| eta * (xn + c_max) * (xn + c_max);
        if !self.valid {
            self.refresh(b, x, centroids, &norms, &margin)?;
            self.prev = centroids.to_vec();
            self.valid = true;
            return Ok(Assigned::Done {
                idx: &self.idx,
                dist: &self.dist,
                computed: (n * k) as f64,
            });
        }
        let drift: Vec<f64> = centroids
            .chunks_exact(d)
            .zip(self.prev.chunks_exact(d))
            .map(|(c, p)| {
                let s: f64 = c
                    .iter()
                    .zip(p)
                    .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                    .sum();
                s.sqrt() * (1.0 + 1e-9)
            })
            .collect();
        // f32 drifts rounded up, for the vectorized pass over the lower bounds.
        let drift32: Vec<f32> = drift.iter().map(|&v| up(v)).collect();
        let candidates = match self.own_scores(b, x, centroids, &norms) {
            Some(()) => self.shift(b, x, &drift32, &margin),
            None => usize::MAX,
        };
        if candidates as f64 > MAX_CANDIDATES * (n * k) as f64 {
            self.valid = false;
            return Ok(Assigned::Dropped);
        }
        let computed = self.bounded_step(b, x, centroids, &norms, &margin);
        self.prev.copy_from_slice(centroids);
        Ok(Assigned::Done {
            idx: &self.idx,
            dist: &self.dist,
            computed: computed as f64,
        })
    }

    /// Each point's score against its own centroid, into `dist`, as the kernel computes
    /// it: the points sorted by centroid, [`LANES`] at a time, so that most groups compute
    /// one centroid's chains for all their lanes at once. (Eight pairs of a point and its
    /// centroid at a time, one scalar chain each, had taken 9% of a fit on Fashion-MNIST
    /// at k = 1024.) `None` where the backend does not run on the host.
    fn own_scores<B: Backend>(
        &mut self,
        b: &B,
        x: &[f32],
        centroids: &[f32],
        norms: &[f32],
    ) -> Option<()> {
        let (d, k, isa) = (self.d, self.k, self.isa);
        let n = self.idx.len();
        let idx = &self.idx;
        let order = by_centroid(idx, k);
        let mut own = vec![0.0f32; n];
        let task = |(order, own): (&[u32], &mut [f32])| {
            let mut xt = vec![0.0f32; d * LANES];
            let mut scores = [[0.0f32; LANES]; LANES];
            for (group, own) in order.chunks(LANES).zip(own.chunks_mut(LANES)) {
                // The group's centroids (ascending: the points are sorted by them), and
                // each lane's among them.
                let (mut union, mut of) = (Vec::with_capacity(LANES), [0usize; LANES]);
                for (l, &i) in group.iter().enumerate() {
                    let a = idx[i as usize];
                    if union.last() != Some(&a) {
                        union.push(a);
                    }
                    of[l] = union.len() - 1;
                }
                pack_lanes(x, d, group, &mut xt);
                exact_lane_scores(isa, &xt, centroids, norms, &union, &mut scores);
                for (l, o) in own.iter_mut().enumerate() {
                    *o = scores[of[l]][l];
                }
            }
        };
        let per_task = LANES * GROUPS_PER_TASK;
        b.run_on_host(n * d, |par| {
            if par {
                let own = own.par_chunks_mut(per_task);
                order.par_chunks(per_task).zip(own).for_each(task);
            } else {
                order
                    .chunks(per_task)
                    .zip(own.chunks_mut(per_task))
                    .for_each(task);
            }
        })?;
        for (&i, &s) in order.iter().zip(&own) {
            self.dist[i as usize] = s;
        }
        Some(())
    }

    /// Moves every bound by the drifts and keeps, per point, the centroids (not its own)
    /// whose bound does not rule them out against the point's tight distance (its score
    /// from [`Bounds::own_scores`]); returns how many.
    fn shift<B: Backend>(
        &mut self,
        b: &B,
        x: &[f32],
        drift32: &[f32],
        margin: &(dyn Fn(f64) -> f64 + Sync),
    ) -> usize {
        let (k, isa) = (self.k, self.isa);
        let task = |t: Task| {
            t.cands.clear();
            for (i, row) in t.lower.chunks_exact_mut(k).enumerate() {
                let w = reach(finished(t.dist[i], t.x_sq[i]), margin(t.x_norm[i]));
                let before = t.cands.len();
                shift_row(isa, row, drift32, w, t.idx[i], t.cands);
                t.pending[i] = (t.cands.len() - before) as u32;
            }
            t.cands.len()
        };
        self.for_tasks(b, x, task).unwrap_or(usize::MAX)
    }

    /// Per point, the candidates left by [`Bounds::shift`], computed exactly. Returns the
    /// number of distances computed.
    ///
    /// The points with candidates are sorted by centroid (a stable sort: by centroid, then
    /// row) and taken [`LANES`] at a time, one in each lane of [`exact_lane_scores`], which
    /// computes the union of their candidates for all of them at once. Points of one
    /// cluster share most of their candidates: on Fashion-MNIST at k = 1024 the lanes held
    /// a wanted distance 27% of the time in the first bounded step and 10% in the last,
    /// where one vector FMA does the work of sixteen scalar ones. Every distance computed
    /// becomes its point's lower bound, wanted or not.
    fn bounded_step<B: Backend>(
        &mut self,
        b: &B,
        x: &[f32],
        centroids: &[f32],
        norms: &[f32],
        margin: &(dyn Fn(f64) -> f64 + Sync),
    ) -> usize {
        let (d, k, isa) = (self.d, self.k, self.isa);
        let n = self.idx.len();
        let (x_sq, x_norm) = (&self.x_sq, &self.x_norm);
        let mut points: Vec<Point> = Vec::new();
        let rows = self.lower.chunks_exact_mut(k);
        let state = self.idx.iter_mut().zip(&mut self.dist).zip(&self.pending);
        let mut at = 0;
        for (i, (row, ((idx, dist), &pending))) in rows.zip(state).enumerate() {
            at = if i % TASK == 0 { 0 } else { at };
            let js = &self.cands[i / TASK][at..][..pending as usize];
            at += js.len();
            if js.is_empty() {
                // Every candidate fell to the tight distance: the point stays.
                *dist = finished(*dist, x_sq[i]);
            } else {
                points.push(Point {
                    i,
                    js,
                    row,
                    idx,
                    dist,
                });
            }
        }
        points.sort_by_key(|p| *p.idx);
        let task = |points: &mut [Point]| {
            let mut lanes = Lanes::new(d, k);
            let mut computed = 0;
            for group in points.chunks_mut(LANES) {
                computed += lanes.group(group, x);
                let scores = &mut lanes.scores[..lanes.union.len()];
                exact_lane_scores(isa, &lanes.xt, centroids, norms, &lanes.union, scores);
                lanes.settle(group, (x_sq, x_norm), margin);
            }
            computed
        };
        let per_task = LANES * GROUPS_PER_TASK;
        let computed = b.run_on_host(points.len() * k, |par| {
            if par {
                points.par_chunks_mut(per_task).map(task).sum()
            } else {
                points.chunks_mut(per_task).map(task).sum::<usize>()
            }
        });
        n + computed.unwrap_or(0)
    }

    /// Every bound from scratch: a GEMM for all `x . c_j`, then per row the candidates
    /// for the kernel's choice, computed exactly.
    fn refresh<B: Backend>(
        &mut self,
        b: &B,
        x: &[f32],
        centroids: &[f32],
        norms: &[f32],
        margin: &(dyn Fn(f64) -> f64 + Sync),
    ) -> Result<()> {
        let (d, k, isa) = (self.d, self.k, self.isa);
        let n = self.idx.len();
        let lower = &mut self.lower;
        b.run_on_host(n * k * d, |par| {
            let par = if par {
                Parallelism::Rayon
            } else {
                Parallelism::None
            };
            // Blocks of rows whose A operand stays in the last-level cache while the GEMM
            // walks the centroids' column panels over it (one call on all 60,000 rows of
            // Fashion-MNIST streams them from memory once per panel: 0.80 s against 0.52 s
            // in blocks, k = 1024, 2 threads).
            let rb = (REFRESH_BLOCK_BYTES / (d * std::mem::size_of::<f32>())).max(256);
            let c = MatRef::row_major(centroids, d).t();
            for (xb, lb) in x.chunks(rb * d).zip(lower.chunks_mut(rb * k)) {
                let a = MatRef::row_major(xb, d);
                sgemm_with(isa, par, xb.len() / d, k, d, a, c, lb, k, false)?;
            }
            Ok(())
        })
        .unwrap_or(Ok(()))?;
        let task = |t: Task| {
            let (mut js, mut scores) = (Vec::<u32>::new(), Vec::<f32>::new());
            for i in 0..t.idx.len() {
                let (row, xr) = (&mut t.lower[i * k..(i + 1) * k], &t.x[i * d..(i + 1) * d]);
                let (xs, e) = (t.x_sq[i], margin(t.x_norm[i]));
                // t_ij = |x|^2 + |c|^2 - 2 x.c, within E of the truth (its f32 roundings
                // included: eta is twice what a d-term product needs). The kernel's
                // choice is within 4 E of the lowest.
                let t_min = refresh_row(isa, RowPass::Distances { norms, xs }, row);
                candidates(row, t_min + up(4.5 * e), u32::MAX, &mut js);
                scores.resize(js.len(), 0.0);
                exact_scores(isa, xr, centroids, norms, &js, &mut scores);
                let mut best = (f32::INFINITY, 0u32);
                for (&j, &s) in js.iter().zip(&scores) {
                    if s < best.0 || (s == best.0 && j < best.1) {
                        best = (s, j);
                    }
                }
                refresh_row(isa, RowPass::Bounds { e: up(e) }, row);
                t.idx[i] = best.1;
                t.dist[i] = finished(best.0, xs);
            }
            0
        };
        self.for_tasks(b, x, task);
        Ok(())
    }

    /// Runs `task` on every block of [`TASK`] rows (of `x` and of the per-point state) in
    /// the backend's threads and sums what the tasks return (`None` if the backend is not
    /// the host's).
    fn for_tasks<B: Backend>(
        &mut self,
        b: &B,
        x: &[f32],
        task: impl Fn(Task) -> usize + Sync,
    ) -> Option<usize> {
        let (k, d) = (self.k, self.d);
        let n = self.idx.len();
        let xs = |i: usize| &x[i * TASK * d..((i + 1) * TASK * d).min(x.len())];
        let (lower, idx, dist, pending, cands) = (
            &mut self.lower,
            &mut self.idx,
            &mut self.dist,
            &mut self.pending,
            &mut self.cands,
        );
        let (x_sq, x_norm) = (&self.x_sq, &self.x_norm);
        b.run_on_host(n * k, |par| {
            let one = |(i, ((((lower, idx), dist), pending), cands)): (usize, Slices)| {
                task(Task {
                    lower,
                    idx,
                    pending,
                    cands,
                    dist,
                    x: xs(i),
                    x_sq: &x_sq[i * TASK..][..idx_len(n, i)],
                    x_norm: &x_norm[i * TASK..][..idx_len(n, i)],
                })
            };
            if par {
                lower
                    .par_chunks_mut(TASK * k)
                    .zip(idx.par_chunks_mut(TASK))
                    .zip(dist.par_chunks_mut(TASK))
                    .zip(pending.par_chunks_mut(TASK))
                    .zip(cands.par_iter_mut())
                    .enumerate()
                    .map(one)
                    .sum()
            } else {
                lower
                    .chunks_mut(TASK * k)
                    .zip(idx.chunks_mut(TASK))
                    .zip(dist.chunks_mut(TASK))
                    .zip(pending.chunks_mut(TASK))
                    .zip(cands.iter_mut())
                    .enumerate()
                    .map(one)
                    .sum()
            }
        })
    }
}

/// Rows in task `i` of `n` rows.
fn idx_len(n: usize, i: usize) -> usize {
    TASK.min(n - i * TASK)
}

/// A task's mutable slices, as the chunk iterators zip them.
type Slices<'a> = (
    (
        ((&'a mut [f32], &'a mut [u32]), &'a mut [f32]),
        &'a mut [u32],
    ),
    &'a mut Vec<u32>,
);

/// One task's rows: bounds, outputs, inputs.
struct Task<'a> {
    lower: &'a mut [f32],
    idx: &'a mut [u32],
    pending: &'a mut [u32],
    cands: &'a mut Vec<u32>,
    dist: &'a mut [f32],
    x: &'a [f32],
    x_sq: &'a [f32],
    x_norm: &'a [f64],
}

/// A point with candidates left, for [`Bounds::bounded_step`]: its row number, its
/// candidates, its bounds and its outputs (its centroid and the tight score to it on the way in).
struct Point<'a> {
    i: usize,
    js: &'a [u32],
    row: &'a mut [f32],
    idx: &'a mut u32,
    dist: &'a mut f32,
}

/// One task's buffers for [`Bounds::bounded_step`]'s groups of [`LANES`] points.
struct Lanes {
    d: usize,
    /// The group's rows transposed, as [`exact_lane_scores`] takes them.
    xt: Vec<f32>,
    /// The union of the group's candidates, and whether a centroid is in it.
    union: Vec<u32>,
    seen: Vec<bool>,
    /// The group's scores against `union`.
    scores: Vec<[f32; LANES]>,
}

impl Lanes {
    fn new(d: usize, k: usize) -> Lanes {
        Lanes {
            d,
            xt: vec![0.0; d * LANES],
            union: Vec::new(),
            seen: vec![false; k],
            scores: vec![[0.0; LANES]; k],
        }
    }

    /// Gathers the union of the group's candidates and packs its rows; returns how many
    /// distances the group will compute.
    fn group(&mut self, group: &[Point], x: &[f32]) -> usize {
        self.union.clear();
        for p in group {
            for &j in p.js {
                if !std::mem::replace(&mut self.seen[j as usize], true) {
                    self.union.push(j);
                }
            }
        }
        for &j in &self.union {
            self.seen[j as usize] = false;
        }
        let rows: Vec<u32> = group.iter().map(|p| p.i as u32).collect();
        pack_lanes(x, self.d, &rows, &mut self.xt);
        group.len() * self.union.len()
    }

    /// Each point's new centroid among its own and the union, and a bound from every
    /// distance computed, wanted or not: writing only the candidates' own bounds left the
    /// others loose, and the fit computed 15% of the distances instead of 9%, in 4.5
    /// against 3.5 s, on Fashion-MNIST at k = 1024. (The bounds in f32, vectorized over
    /// the lanes, ran the same: the time goes to the stores into sixteen rows.)
    fn settle(
        &self,
        group: &mut [Point],
        (x_sq, x_norm): (&[f32], &[f64]),
        margin: &(dyn Fn(f64) -> f64 + Sync),
    ) {
        for (l, p) in group.iter_mut().enumerate() {
            let (a, own, xs, e) = (*p.idx, *p.dist, x_sq[p.i], margin(x_norm[p.i]));
            let mut best = (own, a);
            for (&j, s) in self.union.iter().zip(&self.scores) {
                let s = s[l];
                p.row[j as usize] = lower_bound(s + xs, e);
                if s < best.0 || (s == best.0 && j < best.1) {
                    best = (s, j);
                }
            }
            if best.1 != a {
                p.row[a as usize] = lower_bound(own + xs, e);
            }
            *p.idx = best.1;
            *p.dist = finished(best.0, xs);
        }
    }
}

/// One of a refresh's passes over a row of the bound matrix.
#[derive(Clone, Copy)]
enum RowPass<'a> {
    /// `x . c_j` into `t_ij = |x|^2 + |c_j|^2 - 2 x . c_j`; the pass returns the least.
    Distances { norms: &'a [f32], xs: f32 },
    /// `t_ij` into `l_ij = sqrt(t_ij - e)`, rounded down.
    Bounds { e: f32 },
}

/// A [`RowPass`] over `row`, compiled for the widest instruction set the CPU has (in SSE2
/// alone, the two passes took 6% of a one-step fit on Fashion-MNIST at k = 1024). The
/// same bits on all: one expression per entry, and the least entry whatever the order.
fn refresh_row(isa: Isa, pass: RowPass, row: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the crate passes only an `Isa` the CPU supports (a backend's or
        // `Isa::detect`'s).
        Isa::Avx512 => return unsafe { refresh_row_avx512(pass, row) },
        Isa::Avx2 => return unsafe { refresh_row_avx2(pass, row) },
        Isa::Portable => {}
    }
    let _ = isa;
    refresh_row_body(pass, row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn refresh_row_avx512(pass: RowPass, row: &mut [f32]) -> f32 {
    refresh_row_body(pass, row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn refresh_row_avx2(pass: RowPass, row: &mut [f32]) -> f32 {
    refresh_row_body(pass, row)
}

#[inline(always)]
fn refresh_row_body(pass: RowPass, row: &mut [f32]) -> f32 {
    match pass {
        RowPass::Distances { norms, xs } => {
            // Sixteen running minima, so that the loop vectorizes.
            let mut least = [f32::INFINITY; 16];
            let (cw, cr) = norms[..row.len()].as_chunks::<16>();
            let (whole, rest) = row.as_chunks_mut::<16>();
            for (g, cn) in whole.iter_mut().zip(cw) {
                for ((g, &cn), m) in g.iter_mut().zip(cn).zip(&mut least) {
                    *g = xs + cn - 2.0 * *g;
                    *m = m.min(*g);
                }
            }
            for (g, &cn) in rest.iter_mut().zip(cr) {
                *g = xs + cn - 2.0 * *g;
                least[0] = least[0].min(*g);
            }
            least.into_iter().fold(f32::INFINITY, f32::min)
        }
        RowPass::Bounds { e } => {
            for g in row.iter_mut() {
                *g = (*g - e).max(0.0).sqrt() * SHRINK;
            }
            0.0
        }
    }
}

/// The row numbers `idx` sorted by value (a counting sort, stable: by centroid, then row).
fn by_centroid(idx: &[u32], k: usize) -> Vec<u32> {
    let mut start = vec![0usize; k + 1];
    for &a in idx {
        start[a as usize + 1] += 1;
    }
    for j in 0..k {
        start[j + 1] += start[j];
    }
    let mut order = vec![0u32; idx.len()];
    for (i, &a) in idx.iter().enumerate() {
        order[start[a as usize]] = i as u32;
        start[a as usize] += 1;
    }
    order
}

/// Moves a point's bounds `row` down by the drifts (rounded down, see [`SHRINK`]) and
/// appends to `out`, ascending, the centroids other than `skip` whose moved bound is at
/// most `w`. AVX-512 where the CPU has it: the comparisons give their mask directly (the
/// SSE2 loop, with [`candidates`] reading the bounds again in a pass of their own, had
/// taken a quarter of a fit on Fashion-MNIST at k = 1024).
fn shift_row(isa: Isa, row: &mut [f32], drift: &[f32], w: f32, skip: u32, out: &mut Vec<u32>) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: as in `refresh_row`: an `Isa` the CPU supports.
        return unsafe { shift_row_avx512(row, drift, w, skip, out) };
    }
    let _ = isa;
    shift_row_from(0, row, drift, w, skip, out)
}

/// [`shift_row`] portable, for a row starting at centroid `base`.
fn shift_row_from(
    base: usize,
    row: &mut [f32],
    drift: &[f32],
    w: f32,
    skip: u32,
    out: &mut Vec<u32>,
) {
    for (c, (row, drift)) in row.chunks_mut(16).zip(drift.chunks(16)).enumerate() {
        let mut m = 0u32;
        for (l, (v, &dj)) in row.iter_mut().zip(drift).enumerate() {
            *v = (*v - dj).max(0.0) * SHRINK;
            m |= ((*v <= w) as u32) << l;
        }
        push_set_bits(m, base + 16 * c, skip, out);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn shift_row_avx512(row: &mut [f32], drift: &[f32], w: f32, skip: u32, out: &mut Vec<u32>) {
    use std::arch::x86_64::*;
    let drift = &drift[..row.len()];
    let whole = row.len() / 16 * 16;
    let (zero, shrink, wv) = (
        _mm512_setzero_ps(),
        _mm512_set1_ps(SHRINK),
        _mm512_set1_ps(w),
    );
    for (c, (r, dj)) in row[..whole]
        .chunks_exact_mut(16)
        .zip(drift.chunks_exact(16))
        .enumerate()
    {
        // SAFETY: `r` and `dj` are 16 floats each.
        let v = unsafe { _mm512_sub_ps(_mm512_loadu_ps(r.as_ptr()), _mm512_loadu_ps(dj.as_ptr())) };
        // `max(v, 0)` gives 0 for a NaN, as `f32::max` does.
        let v = _mm512_mul_ps(_mm512_max_ps(v, zero), shrink);
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(r.as_mut_ptr(), v) };
        let m = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(v, wv);
        push_set_bits(m as u32, 16 * c, skip, out);
    }
    shift_row_from(whole, &mut row[whole..], &drift[whole..], w, skip, out)
}

/// Appends `base + b` for each set bit `b` of `m`, ascending, except `skip`.
fn push_set_bits(mut m: u32, base: usize, skip: u32, out: &mut Vec<u32>) {
    while m != 0 {
        let j = (base + m.trailing_zeros() as usize) as u32;
        if j != skip {
            out.push(j);
        }
        m &= m - 1;
    }
}

/// The centroids `j != skip` whose bound in `row` is at most `w`, into `js`, ascending:
/// sixteen comparisons a mask, then its set bits.
fn candidates(row: &[f32], w: f32, skip: u32, js: &mut Vec<u32>) {
    js.clear();
    for (c, chunk) in row.chunks(16).enumerate() {
        let mut m = 0u32;
        for (l, &v) in chunk.iter().enumerate() {
            m |= ((v <= w) as u32) << l;
        }
        push_set_bits(m, 16 * c, skip, js);
    }
}

/// How far a lower bound may reach and still not rule its centroid out, for a point at
/// computed squared distance `dist` from its own centroid: `u^2 = dist + E` bounds the
/// true distance above, and a centroid is out when `l^2 > u^2 + 2.5 E`.
fn reach(dist: f32, e: f64) -> f32 {
    up((dist as f64 + 3.5 * e).sqrt())
}

/// A lower bound on the true distance from an f32 squared distance `t` off by at most `e`.
fn lower_bound(t: f32, e: f64) -> f32 {
    let v = (t as f64 - e).max(0.0).sqrt();
    let f = v as f32;
    if f as f64 > v { f.next_down() } else { f }
}

/// `v` rounded up to f32.
fn up(v: f64) -> f32 {
    let f = v as f32;
    if (f as f64) < v { f.next_up() } else { f }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::quant::kmeans::{Init, KMeans, KMeansConfig};
    use crate::rng::{Rng, clustered};

    /// The bits of a fit: centroids, per-step and final inertia, and the fraction computed.
    fn fit(b: &CpuBackend, x: &[f32], d: usize, cfg: &KMeansConfig) -> (Vec<u32>, Vec<u64>, f64) {
        let (model, rep) = KMeans::fit(b, x, d, cfg).unwrap();
        let bits = model.centroids.iter().map(|v| v.to_bits()).collect();
        let mut hist: Vec<u64> = rep.history.concat().iter().map(|v| v.to_bits()).collect();
        hist.push(rep.mse.to_bits());
        (bits, hist, rep.distances_computed)
    }

    /// With its bounds, k-means gives the bits it gives computing every distance: the same
    /// inertia at every step and the same centroids, on every instruction set and thread
    /// count. The data: well separated clusters (the bounds prune most distances: checked,
    /// so that the comparison is not of two unbounded runs); the same shifted off the
    /// origin (wider margins, still pruning), and far from it (margins as wide as the
    /// gaps: the first bounded step is handed back to the kernel); points
    /// repeated five times (exact ties, settled by the lowest index); and nearly as many
    /// centroids as points (empty clusters, repaired on the host between steps).
    #[test]
    fn bounds_give_the_bits_of_every_distance() {
        let near = clustered(2000, 33, 40, 0.3, 1);
        let far: Vec<f32> = near.iter().map(|v| v + 3000.0).collect();
        let off: Vec<f32> = near.iter().map(|v| v + 20.0).collect();
        let mut rng = Rng::new(2);
        let base = clustered(400, 16, 30, 0.2, 3);
        let mut repeated = Vec::new();
        for _ in 0..2000 {
            let i = rng.below(400);
            repeated.extend_from_slice(&base[i * 16..(i + 1) * 16]);
        }
        let few = clustered(90, 20, 80, 0.5, 4);
        let cases: [(&str, &[f32], usize, usize, Init); 5] = [
            ("clusters", &near, 33, 96, Init::KMeansPlusPlus),
            ("off 0", &off, 33, 96, Init::KMeansPlusPlus),
            ("far from 0", &far, 33, 64, Init::KMeansPlusPlus),
            ("repeated", &repeated, 16, 128, Init::Random),
            ("few points", &few, 20, 72, Init::Random),
        ];
        for (name, x, d, k, init) in cases {
            let mut cfg = KMeansConfig::new(k);
            (cfg.iters, cfg.init, cfg.seed) = (10, init, 5);
            for isa in Isa::available() {
                for threads in [1, 2] {
                    let b = CpuBackend::with_isa(Some(threads), isa).unwrap();
                    cfg.bounds = false;
                    let every = fit(&b, x, d, &cfg);
                    cfg.bounds = true;
                    let bounded = fit(&b, x, d, &cfg);
                    let at = format!("{name}: {isa:?}, {threads} threads");
                    assert_eq!(every.2, 1.0, "{at}");
                    assert_eq!(bounded.0, every.0, "{at}: centroids");
                    assert_eq!(bounded.1, every.1, "{at}: inertia");
                    match name {
                        "clusters" | "off 0" => assert!(bounded.2 < 0.5, "{at}: {}", bounded.2),
                        "far from 0" => assert_eq!(bounded.2, 1.0, "{at}: handed back"),
                        _ => {}
                    }
                }
            }
        }
    }

    /// The shift of a row of bounds gives the same bounds and candidates on every
    /// instruction set, at every length (whole registers and the remainder), the own
    /// centroid skipped, and ties at `w` kept.
    #[test]
    fn shift_row_is_the_same_on_every_isa() {
        let mut rng = Rng::new(4);
        for k in [1, 15, 16, 17, 64, 100] {
            let row: Vec<f32> = (0..k).map(|_| (rng.uniform() * 10.0) as f32).collect();
            let drift: Vec<f32> = (0..k).map(|_| (rng.uniform() * 3.0) as f32).collect();
            let w = 4.0f32;
            let mut want_row = row.clone();
            let mut want = Vec::new();
            for (j, (v, &dj)) in want_row.iter_mut().zip(&drift).enumerate() {
                *v = (*v - dj).max(0.0) * SHRINK;
                if *v <= w && j != 3 {
                    want.push(j as u32);
                }
            }
            for isa in Isa::available() {
                let (mut r, mut got) = (row.clone(), Vec::new());
                r.iter_mut()
                    .take(1)
                    .for_each(|v| *v = w / SHRINK + drift[0]);
                let mut want_row = want_row.clone();
                let mut want = want.clone();
                // Row 0 lands on w exactly or just above, as the rounding falls; either
                // way the same on every ISA, checked against the scalar loop.
                let v0 = (r[0] - drift[0]).max(0.0) * SHRINK;
                want_row[0] = v0;
                want.retain(|&j| j != 0);
                if v0 <= w {
                    want.insert(0, 0);
                }
                shift_row(isa, &mut r, &drift, w, 3, &mut got);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&r), bits(&want_row), "{isa:?} k = {k}");
                assert_eq!(got, want, "{isa:?} k = {k}");
            }
        }
    }

    /// A refresh's row passes give the same bits on every instruction set, at lengths
    /// around whole registers, the least distance among them.
    #[test]
    fn refresh_rows_are_the_same_on_every_isa() {
        let mut rng = Rng::new(6);
        for k in [1, 15, 16, 17, 100] {
            let dots: Vec<f32> = (0..k)
                .map(|_| (rng.uniform() * 50.0 - 10.0) as f32)
                .collect();
            let norms: Vec<f32> = (0..k).map(|_| (rng.uniform() * 90.0) as f32).collect();
            let xs = 20.0f32;
            let want: Vec<f32> = dots
                .iter()
                .zip(&norms)
                .map(|(&g, &c)| xs + c - 2.0 * g)
                .collect();
            let least = want.iter().copied().fold(f32::INFINITY, f32::min);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for isa in Isa::available() {
                let mut row = dots.clone();
                let got = refresh_row(isa, RowPass::Distances { norms: &norms, xs }, &mut row);
                assert_eq!(bits(&row), bits(&want), "{isa:?} k = {k}");
                assert_eq!(got.to_bits(), least.to_bits(), "{isa:?} k = {k}");
                refresh_row(isa, RowPass::Bounds { e: 3.0 }, &mut row);
                let bounds: Vec<f32> = want
                    .iter()
                    .map(|&t| (t - 3.0).max(0.0).sqrt() * SHRINK)
                    .collect();
                assert_eq!(bits(&row), bits(&bounds), "{isa:?} k = {k}");
            }
        }
    }

    /// The roundings the bounds rely on go the safe way: `up` never below its value,
    /// `lower_bound` never above the true root, a shifted bound never above the exact
    /// difference.
    #[test]
    fn roundings_keep_bounds_bounds() {
        let mut rng = Rng::new(9);
        for _ in 0..100_000 {
            let v = (rng.uniform() * 1e6).powi(2) * rng.uniform();
            assert!(up(v) as f64 >= v, "{v}");
            let (t, e) = (v as f32, v * 1e-4 * rng.uniform());
            assert!(
                lower_bound(t, e) as f64 <= (t as f64 - e).max(0.0).sqrt(),
                "{t} {e}"
            );
            let (l, dj) = (v as f32, up(v * rng.uniform() * 1.5));
            let shifted = (l - dj).max(0.0) * SHRINK;
            assert!(
                shifted as f64 <= (l as f64 - dj as f64).max(0.0),
                "{l} {dj}"
            );
        }
    }
}
