//! Sums of squares over rows in f64 (the error and norm figures: [`super::mse`],
//! [`super::mean_sq_norm`], `vqkit encode`'s streamed figures), in one order that neither
//! the threads nor the chunks the rows arrive in can change:
//! - a row's squares go to [`LANES`] lanes (element `j` to lane `j % LANES`, each lane in
//!   element order), and the lanes are added in a fixed tree;
//! - the rows' sums are added in row order within blocks of [`BLOCK`] rows (rows
//!   `b * BLOCK..(b + 1) * BLOCK` of the whole input, from 0.0), and the blocks' sums in
//!   block order.
//!
//! A stream of chunks carries its open block from one chunk to the next, so the bits are
//! those of the whole input at once. A sum made by [`RowSums::parallel`] adds its blocks
//! on rayon's current pool (the same bits): for callers inside a pool of the threads they
//! were asked for, as `vqkit encode`. [`super::mse`] and [`super::mean_sq_norm`] stay on
//! the calling thread, since they are called from anywhere (outside a pool, rayon's
//! would be the global one, of every core, and in a forked Python child one without
//! threads). Each square is a multiply and then an add (Rust contracts neither into an
//! FMA), so the bits do not depend on the instruction set either.
//!
//! Why: the plain `iter().sum::<f64>()` this replaced is one chain of dependent adds, a
//! few cycles an element on one core. At 200,000 x 128 points it took 42% of a one-thread
//! `vqkit encode` of PQ codes (`perf record`, docs/performance.md).

use rayon::prelude::*;

/// Lanes of a row's sum: eight f64, one 512-bit vector or two 256-bit ones.
pub const LANES: usize = 8;

/// Rows a block adds in order before its sum joins the total.
pub const BLOCK: usize = 256;

/// Blocks below which a call does not go parallel (the same bits either way).
const PARALLEL_BLOCKS: usize = 16;

/// A running sum of per-row sums in the order of the module docs.
#[derive(Debug, Default)]
pub struct RowSums {
    /// The sum of the completed blocks.
    done: f64,
    /// The open block's sum, and its rows so far (below [`BLOCK`]).
    open: f64,
    open_rows: usize,
    /// Whether full blocks are added on rayon's current pool.
    parallel: bool,
}

impl RowSums {
    /// A sum added on the calling thread.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sum whose calls add their full blocks in parallel on rayon's current pool, where
    /// they have 16 or more: the same bits as [`RowSums::new`]'s.
    pub fn parallel() -> Self {
        RowSums {
            parallel: true,
            ..Self::default()
        }
    }

    /// The sum so far: the completed blocks', then the open block's.
    pub fn total(&self) -> f64 {
        self.done + self.open
    }

    /// Adds `|x_i|^2` for the rows of width `d` in `x` (whole rows; a partial last row is
    /// ignored, as `x.len() / d` counts rows).
    pub fn add_sq(&mut self, x: &[f32], d: usize) {
        if d == 0 {
            return;
        }
        self.add_rows(x.len() / d, |i| sq(&x[i * d..][..d]));
    }

    /// Adds `|x_i - y_i|^2` for the rows of width `d` of `x` and `y` (as many rows as the
    /// shorter holds).
    pub fn add_sq_diff(&mut self, x: &[f32], y: &[f32], d: usize) {
        if d == 0 {
            return;
        }
        let n = x.len().min(y.len()) / d;
        self.add_rows(n, |i| sq_diff(&x[i * d..][..d], &y[i * d..][..d]));
    }

    /// Adds `row(0)`, ..., `row(n - 1)`, the sums of the next `n` rows of the input (each
    /// computed in a fixed order of its own: [`sq`] or [`sq_diff`] of the row or a part of
    /// it). `row` may be called from the pool's threads, in any order.
    pub fn add_rows(&mut self, n: usize, row: impl Fn(usize) -> f64 + Sync) {
        let mut i = 0;
        // Close the open block first.
        while self.open_rows > 0 && i < n {
            self.open += row(i);
            self.open_rows += 1;
            i += 1;
            if self.open_rows == BLOCK {
                self.done += self.open;
                (self.open, self.open_rows) = (0.0, 0);
            }
        }
        let blocks = (n - i) / BLOCK;
        let block = |b: usize| {
            let first = i + b * BLOCK;
            (first..first + BLOCK).fold(0.0, |s, r| s + row(r))
        };
        if self.parallel && blocks >= PARALLEL_BLOCKS {
            let sums: Vec<f64> = (0..blocks).into_par_iter().map(block).collect();
            self.done = sums.iter().fold(self.done, |t, &s| t + s);
        } else {
            self.done = (0..blocks).map(block).fold(self.done, |t, s| t + s);
        }
        for r in i + blocks * BLOCK..n {
            self.open += row(r);
            self.open_rows += 1;
        }
    }
}

/// The lanes' sum, in a fixed tree.
#[inline(always)]
fn lanes_sum(a: [f64; LANES]) -> f64 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// `|x|^2` in f64, in [`LANES`] lanes.
#[inline]
pub fn sq(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for (a, &v) in acc.iter_mut().zip(c) {
            let v = v as f64;
            *a += v * v;
        }
    }
    for (a, &v) in acc.iter_mut().zip(it.remainder()) {
        let v = v as f64;
        *a += v * v;
    }
    lanes_sum(acc)
}

/// `|x - y|^2` in f64 (each difference taken in f64), in [`LANES`] lanes.
#[inline]
pub fn sq_diff(x: &[f32], y: &[f32]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let (mut xs, mut ys) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    for (cx, cy) in (&mut xs).zip(&mut ys) {
        for ((a, &u), &v) in acc.iter_mut().zip(cx).zip(cy) {
            let t = u as f64 - v as f64;
            *a += t * t;
        }
    }
    for ((a, &u), &v) in acc.iter_mut().zip(xs.remainder()).zip(ys.remainder()) {
        let t = u as f64 - v as f64;
        *a += t * t;
    }
    lanes_sum(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The order of the module docs, written out element by element.
    fn by_hand(x: &[f32], y: Option<&[f32]>, d: usize) -> f64 {
        let n = x.len() / d;
        let row = |i: usize| {
            let mut acc = [0.0f64; LANES];
            for j in 0..d {
                let t = x[i * d + j] as f64 - y.map_or(0.0, |y| y[i * d + j] as f64);
                acc[j % LANES] += t * t;
            }
            // The tree, written out: lanes 0 + 4, 2 + 6, 1 + 5, 3 + 7, then pairs.
            let (a, b) = (acc[0] + acc[4], acc[2] + acc[6]);
            let (c, e) = (acc[1] + acc[5], acc[3] + acc[7]);
            (a + b) + (c + e)
        };
        let mut total = 0.0;
        for b in 0..n.div_ceil(BLOCK) {
            let mut s = 0.0;
            for i in b * BLOCK..((b + 1) * BLOCK).min(n) {
                s += row(i);
            }
            total += s;
        }
        total
    }

    fn bits(v: f64) -> u64 {
        v.to_bits()
    }

    /// Rows enough that after a first chunk of 77 rows, the second call closes the open
    /// block and still has [`PARALLEL_BLOCKS`] full blocks: its parallel branch starts at a
    /// row past 0.
    const LONG: usize = (PARALLEL_BLOCKS + 2) * BLOCK + 77;
    const _: () = assert!((LONG - 77 - (BLOCK - 77)) / BLOCK >= PARALLEL_BLOCKS);

    /// Any chunking and any thread count give the bits of the order written out by hand,
    /// and that order agrees with the plain sum to rounding.
    #[test]
    fn chunks_and_threads_do_not_change_the_bits() {
        let mut rng = Rng::new(4);
        // Widths around the lanes; row counts around a block and past the parallel cut.
        for d in [1, 2, 7, 8, 9, 16, 33, 128] {
            for n in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, LONG] {
                // Magnitudes that spread over many binades, so that orders differ in bits.
                let x: Vec<f32> = (0..n * d)
                    .map(|i| rng.normal() as f32 * (1 << (i % 20)) as f32)
                    .collect();
                let y: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
                let want_sq = by_hand(&x, None, d);
                let want_diff = by_hand(&x, Some(&y), d);
                let plain: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
                assert!((want_sq - plain).abs() <= 1e-10 * plain.abs(), "{d} {n}");
                let plain: f64 = x
                    .iter()
                    .zip(&y)
                    .map(|(&u, &v)| (u as f64 - v as f64).powi(2))
                    .sum();
                assert!((want_diff - plain).abs() <= 1e-10 * plain.abs(), "{d} {n}");
                for threads in [1, 2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    // Chunks of one length, and a first chunk of 77 rows then the rest (a
                    // parallel call that starts by closing an open block).
                    let lengths = [1, 5, BLOCK - 1, BLOCK + 3, 1000, n.max(1)];
                    let cuts = lengths.iter().map(|&c| (c, c)).chain([(77, n.max(1))]);
                    for ((first, rest), parallel) in cuts.flat_map(|c| [(c, false), (c, true)]) {
                        let make = || {
                            if parallel {
                                RowSums::parallel()
                            } else {
                                RowSums::new()
                            }
                        };
                        let (mut a, mut b) = (make(), make());
                        pool.install(|| {
                            let split = (first * d).min(x.len());
                            a.add_sq(&x[..split], d);
                            b.add_sq_diff(&x[..split], &y[..split], d);
                            let (xs, ys) = (&x[split..], &y[split..]);
                            for (cx, cy) in xs.chunks(rest * d).zip(ys.chunks(rest * d)) {
                                a.add_sq(cx, d);
                                b.add_sq_diff(cx, cy, d);
                            }
                        });
                        let case = format!(
                            "d {d} n {n} threads {threads} chunks {first}, {rest} {parallel}"
                        );
                        assert_eq!(bits(a.total()), bits(want_sq), "{case}");
                        assert_eq!(bits(b.total()), bits(want_diff), "{case}");
                    }
                }
            }
        }
    }

    #[test]
    fn empty_and_zero_width_inputs_sum_to_zero() {
        let mut s = RowSums::new();
        s.add_sq(&[], 3);
        s.add_sq(&[1.0, 2.0], 0);
        s.add_sq_diff(&[1.0], &[], 1);
        assert_eq!(bits(s.total()), 0);
    }
}
