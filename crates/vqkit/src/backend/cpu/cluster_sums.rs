//! Deterministic per-code reductions on the CPU: k-means accumulation, centroid update and
//! the EMA codebook step.
//!
//! x: (n, d), idx: (n), dist: (n); sums: (k, d), counts: (k), dist_sums: (k).
//!
//! The order of every addition is fixed by the shape and the data alone, so outputs are
//! bit-identical whatever the thread count: the rows are cut into chunks of a fixed length
//! ([`chunk_rows`], from n, k and d only), each chunk's rows are added in row order into
//! f64 accumulators that start from zero, and the chunks' partial sums are then added in
//! chunk order. (One chunk, for a large codebook or few rows, is a plain sum in row order.)
//!
//! Threads take whole chunks, so each streams contiguous rows. Where there are fewer chunks
//! than threads they split the columns instead: each task owns a cache-line-aligned slice
//! of d. (Two threads on alternate halves of every row ran hardly faster than one: 3.2 to
//! 3.5 against 3.4 to 3.8 ms at n = 100,000, k = 256, d = 128, on a 2-core Zen 4.)
//! Reading each code's rows instead visits x in scattered order, bound by how many lines a
//! core can have in flight rather than by bandwidth. A codebook whose accumulators exceed
//! L2 is split into ranges of codes; the rows are then bucketed by range first, in row
//! order, and each task reads its bucket only (see [`split`]). One chunk takes small ranges
//! of whole rows only where its streamed accumulators would exceed twice L2 (see
//! [`GATHER_ACC_BYTES`]).

use super::isa::{IsaLoop, in_isa};
use rayon::prelude::*;

/// Columns per parallel task: whole 64-byte lines of f32.
const LINE: usize = 16;

/// `counts[j] = #{i : idx[i] = j}`; codes outside `0..k` are skipped. Exact integers, so
/// any split of the rows gives the same counts: with `parallel`, up to one part per thread,
/// each counted into its own k counters and the parts added up, where every part has at
/// least [`COUNT_PART_ROWS`] rows and 4 k (each part costs k counters cleared and added).
pub(crate) fn counts(parallel: bool, idx: &[u32], k: usize) -> Vec<u32> {
    let parts = super::pool_threads(parallel).min(idx.len() / COUNT_PART_ROWS.max(4 * k));
    counts_in(parts, idx, k)
}

/// [`counts`] in `parts` parts of the rows (one or none: serially).
fn counts_in(parts: usize, idx: &[u32], k: usize) -> Vec<u32> {
    let count = |rows: &[u32]| {
        let mut counts = vec![0u32; k];
        for &j in rows {
            if let Some(c) = counts.get_mut(j as usize) {
                *c += 1;
            }
        }
        counts
    };
    if parts <= 1 || idx.is_empty() {
        return count(idx);
    }
    idx.par_chunks(idx.len().div_ceil(parts))
        .map(count)
        .reduce_with(|mut a, b| {
            for (a, b) in a.iter_mut().zip(&b) {
                *a += b;
            }
            a
        })
        .expect("rows in at least one part")
}

/// The fewest rows per part of a parallel [`counts`]: a part costs a task and its counters,
/// a row about a cycle.
const COUNT_PART_ROWS: usize = 16_384;

/// `sums[j] = sum_{idx[i] = j} x_i`, accumulated in f64 in the order of [`chunk_rows`].
pub(crate) fn sums(
    isa: super::Isa,
    parallel: bool,
    x: &[f32],
    idx: &[u32],
    k: usize,
    d: usize,
    sums: &mut [f32],
) {
    let split = split(parallel, idx.len(), k, d);
    sums_in(isa, parallel, x, idx, (k, d), split, sums)
}

/// [`sums`] with the rows in chunks of `split.chunk` and the work split as `split` says
/// (for a given chunk length, any split gives the same bits).
fn sums_in(
    isa: super::Isa,
    parallel: bool,
    x: &[f32],
    idx: &[u32],
    (k, d): (usize, usize),
    split: Split,
    sums: &mut [f32],
) {
    assert_eq!(sums.len(), k * d, "sums: k x d");
    let out = Out(sums.as_mut_ptr());
    reduce(isa, parallel, x, idx, (k, d), split, &|b, acc| {
        for (j, a) in (b.c0..b.c1).zip(acc.chunks_exact(b.w)) {
            // SAFETY: see `Out`; (j, t0..t0 + w) lies inside the k x d `sums`.
            let o = unsafe { out.row(j * d + b.t0, b.w) };
            for (o, &v) in o.iter_mut().zip(a) {
                *o = v as f32;
            }
        }
    });
}

/// Per-code f64 state (k x d x 8 bytes, 8 MiB) up to which the rows are cut into several
/// chunks. Beyond it a thread's full-width accumulators lose to code ranges over bucketed
/// rows ([`GATHER_ACC_BYTES`]): at n = 2,000,000, k = 16,384, d = 128 (16 MiB), two chunks
/// took 139-144 ms against 121-140 ms (2 threads, the EMA step, a build with the chunk count
/// read from the environment, 2 alternating runs). Below it, chunks of whole rows beat the
/// column slices that one chunk is shared by (see [`split`]) at every shape tried, on the
/// 2-core Xeon of 2026-12-04 (`vqkit bench --op ema --threads 2 --seconds 1`, the builds
/// before and after this cap alternating, 3 runs each; the chunk counts of [`chunk_rows`]):
///
/// | n, k, d (state) | one chunk, column slices | chunks |
/// |---|---:|---:|
/// | 10^6, 4096, 128 (4 MiB) | 39.6-40.2 ms | 4: 34.8-35.0 ms |
/// | 10^6, 8192, 128 (8 MiB) | 47.5-48.8 ms | 2: 40.2-42.1 ms |
/// | 10^6, 4096, 256 (8 MiB) | 86.5-88.3 ms | 4: 73.3-75.7 ms |
/// | 400,000, 4096, 128 (4 MiB) | 16.5-16.8 ms | 2: 15.0-18.1 ms |
///
/// Shapes that keep their split were within noise (10^6, 1024, 128: 26.3-27.5 against
/// 26.2-27.9 ms; 100,000, 4096, 128: 3.4-3.7 against 3.6-3.7 ms).
const CHUNKED_ACC_BYTES: usize = 8 << 20;
/// The most chunks a reduction is cut into.
const MAX_CHUNKS: usize = 16;

/// Rows per chunk of a reduction's fixed order: a function of the shape alone (never of
/// the threads or the machine), so it fixes the bits.
///
/// Each chunk after the first costs a pass over its partial sums (read, added into the
/// total, cleared: 24 k d bytes against the 4 d bytes of each of its rows), so a chunk
/// has at least 48 k rows, which keeps that pass within an eighth of the rows' bytes. The
/// count of chunks is a power of two (at most [`MAX_CHUNKS`]) so that it divides evenly
/// among the usual thread counts. A codebook whose state exceeds [`CHUNKED_ACC_BYTES`]
/// takes the rows in one chunk.
fn chunk_rows(n: usize, k: usize, d: usize) -> usize {
    let n = n.max(1);
    let bytes = k.saturating_mul(d).saturating_mul(8);
    if bytes == 0 || bytes > CHUNKED_ACC_BYTES {
        return n;
    }
    let fewest = 48 * k.max(1);
    let mut chunks = 1;
    while chunks < MAX_CHUNKS && n / (2 * chunks) >= fewest {
        chunks *= 2;
    }
    n.div_ceil(chunks)
}

/// How a reduction is ordered and shared out: the rows' chunk length, which fixes the bits,
/// and the tasks' column slice width and code range length, the chunks summed in one
/// parallel pass before they are added up, the accumulator bytes beyond which a task
/// prefetches them ([`ACC_AHEAD_ROWS`]; L2) and whether x's rows are prefetched
/// non-temporally ([`prefetch_x`]), which do not.
#[derive(Clone, Copy, Debug)]
struct Split {
    chunk: usize,
    width: usize,
    range: usize,
    wave: usize,
    acc_ahead_over: usize,
    /// Whether x's rows are prefetched non-temporally ([`Accumulate::stream`]).
    stream: bool,
    /// Code ranges whose tasks each pick their rows out of their chunk themselves, in row
    /// order, before adding them (whole rows, no bucketing pass): where there are fewer
    /// chunks than threads, in place of column slices, for x in the last level (see
    /// [`COMPACT_MIN_D`]).
    compact: bool,
}

/// Where a reduction has fewer chunks than threads, x fits in the last-level cache and
/// its rows have at least this many floats, its tasks take code ranges of whole rows, each
/// task first picking out its rows' numbers from the chunk's codes (a pass over the codes
/// without a branch), rather than column slices of every row. Each slice's task reads
/// every row of its chunk, and at d = 32 a slice of 16 floats is one line, so two threads
/// ran the step no faster than one; a range's task reads only its rows, whole, and pays
/// each row's loop once. `vqkit bench --op ema --n N --k K --d D --threads 2 --seconds
/// 0.3` (or 0.5), alternating pairs (5 to 9), medians of the ratios (ranges / slices),
/// n x k x d, the Zen 4 VM (32 MiB of L3): in a build with the choice read from the
/// environment, 100,000 x 4096 x 32 0.795, 0.783 and 0.591 (three sets, the trial's
/// versions), x 4096 x 64 0.661 and 0.774, x 8192 x 32 0.655; against the build before,
/// 100,000 x 4096 x 32 0.615, 0.598 and 0.598, x 4096 x 64 0.735.
///
/// The ranges hold equal numbers of codes, not of rows: where most rows fall in one range
/// (codes far from uniform, a codebook with dead codes), its task does most of the work
/// and the others wait: about one thread's time plus the pick-out pass (not measured with
/// skewed codes), which is what the slices gave at d = 32; the benchmarks' codes are near
/// uniform.
///
/// From memory the ranges' rows, half of them with gaps between, lost to the slices'
/// streams at short rows (300,000 x 4096 x 32 1.279, x 4096 x 64 1.209, 400,000 x 8192 x
/// 32 1.371 to 1.660) and moved either way at long ones (100,000 x 4096 x 128 0.932 to
/// 1.168 over five sets, 200,000 x 4096 x 128 0.975 and 1.164, 100,000 x 1024 x 256
/// 0.906). Shorter rows have no column slices to share (a slice is at least a line), so
/// one task takes them on one thread; picked out and added one by one (where one task
/// streams short rows in runs, `Accumulate::short_rows`), they lost even so, two threads
/// against one: 1,000,000 x 65,536 x 2 1.961, 300,000 x 8192 x 4 1.733, 500,000 x 16,384
/// x 8 1.548, 200,000 x 8192 x 16 1.126 (from memory, 5,000,000 x 65,536 x 2 3.943); only
/// a small batch against a large codebook of 2-D points gained (19,073 x 262,144 x 2:
/// 0.662), and it too keeps its one task. The same bits: a code's rows are added in row
/// order either way.
const COMPACT_MIN_D: usize = 32;

/// The split of a reduction of n rows onto a k x d result.
///
/// Threads take chunks of rows; where there are fewer chunks than threads, code ranges
/// whose tasks pick out their own rows ([`COMPACT_MIN_D`]) or column slices split the
/// work between them. Code ranges keep each task's f64 accumulators
/// (`codes x width x 8` bytes) within four times L2: with one range every task streams its
/// chunk's rows; with several, the rows are first bucketed by range (a counting sort of row
/// numbers, which keeps row order inside a bucket), and a task reads only its bucket's
/// rows.
fn split(parallel: bool, n: usize, k: usize, d: usize) -> Split {
    let threads = super::pool_threads(parallel);
    let chunk = chunk_rows(n, k, d);
    // Only as many slices as it takes to give every thread a task: each slice's task pulls
    // whole rows from memory, not its slice alone (the hardware prefetchers fetch the lines
    // beside the ones read), so S slices read the chunk's rows S times. At n = 10^6,
    // k = 4096, d = 128, one chunk, 2 threads: slices of 64, 32 and 16 columns took 40, 73
    // and 138 ms, nearly the stream's time per slice (`vqkit bench --op ema --threads 2
    // --seconds 1`, the width read from the environment in a build that was not kept). On
    // the 16 threads of the H200 machine (docs/gpu-check.md, `bench_cpu_*`) that one chunk
    // in 8 slices took 42.6 ms against 10.6 ms for k = 1024, whose 16 chunks need none.
    let slices = threads.div_ceil(n.div_ceil(chunk).max(1));
    let width = d.div_ceil(slices.min(d.div_ceil(LINE))).div_ceil(LINE) * LINE;
    // Accumulators up to four times L2 (and up to STREAM_ACC_BYTES whatever the L2) are
    // still mostly hit in L2 and L3 when streamed over (k = 4096, d = 128: bucketing there
    // cost twice the time); beyond that, ranges.
    let caches = super::CacheSizes::detect();
    let l2 = caches.l2;
    let streamed = STREAM_ACC_BYTES.max(4 * l2);
    let range = (streamed / (width.min(d) * 8)).clamp(1, k.max(1));
    // Every chunk whose partial sums fit in WAVE_BYTES, and at least one per thread.
    let wave = (WAVE_BYTES / k.saturating_mul(d).saturating_mul(8).max(1)).max(threads);
    // One chunk whose streamed accumulators would exceed twice L2 and STREAM_ACC_BYTES:
    // whole rows in code ranges of GATHER_ACC_BYTES (see there).
    let gather = chunk >= n
        && k.saturating_mul(width.min(d)).saturating_mul(8) > STREAM_ACC_BYTES.max(2 * l2);
    // Fewer chunks than threads, rows of two lines or more and x in the last level: code
    // ranges whose tasks pick out their own rows ([`Split::compact`]) rather than column
    // slices.
    let x_cached = n.saturating_mul(d).saturating_mul(4) <= caches.llc;
    let compact = !gather && slices > 1 && d >= COMPACT_MIN_D && x_cached;
    let (width, range) = if gather {
        let range = (GATHER_ACC_BYTES / (d.max(1) * 8)).clamp(1, k.max(1));
        (d.div_ceil(LINE) * LINE, range)
    } else if compact {
        let range = k.div_ceil(slices).min(streamed / (d.max(1) * 8));
        (d.div_ceil(LINE) * LINE, range.clamp(1, k.max(1)))
    } else {
        (width, range)
    };
    // x past the last level is prefetched non-temporally where an L2 prefetch would take
    // L1 too, or would share L2 with more than half of it in accumulators ([`prefetch_x`]).
    let acc = range.saturating_mul(width.min(d)).saturating_mul(8);
    let stream = !x_cached && (super::cache::t1_prefetch_fills_l1() || acc > l2 / 2);
    Split {
        chunk,
        width,
        range,
        wave,
        acc_ahead_over: l2,
        stream,
        compact,
    }
}

/// One task's block of the k x d result: codes `c0..c1`, columns `t0..t0 + w`.
#[derive(Clone, Copy, Debug)]
struct Block {
    c0: usize,
    c1: usize,
    t0: usize,
    w: usize,
}

impl Block {
    /// Its accumulators: codes x w.
    fn len(&self) -> usize {
        (self.c1 - self.c0) * self.w
    }
}

/// An output's base pointer, shared by the tasks of one reduction; each writes only its own
/// [`Block`], and the blocks of a reduction are disjoint.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint blocks (distinct code ranges or column slices), and the
// caller's `&mut [f32]` is held for the whole reduction.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The `len` floats from `at`.
    ///
    /// # Safety
    /// `at + len` is within the output, and no other live reference overlaps the range.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, at: usize, len: usize) -> &mut [f32] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}

thread_local! {
    /// Each thread's f64 accumulators, kept between tasks and calls up to
    /// [`ACC_KEEP_BYTES`]: fresh ones (megabytes at k = 4096, d = 128) would be faulted in
    /// and cleared page by page on every call. The calling thread of a chunked reduction
    /// takes its running total and partial sums from here as well.
    static ACC: std::cell::Cell<Vec<f64>> = const { std::cell::Cell::new(Vec::new()) };
    /// Each thread's row numbers for a compact task ([`Split::compact`]), kept between
    /// tasks and calls as the accumulators are.
    static MINE: std::cell::Cell<Vec<usize>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Accumulators above this size are freed after use rather than kept by the thread.
const ACC_KEEP_BYTES: usize = 16 << 20;

/// `f` on a buffer of `len` zeros taken from the thread's [`ACC`], which keeps it after
/// unless it exceeds [`ACC_KEEP_BYTES`].
fn with_acc<R>(len: usize, f: impl FnOnce(&mut [f64]) -> R) -> R {
    let mut acc = ACC.take();
    acc.clear();
    acc.resize(len + 7, 0.0);
    // From the first 64-byte boundary: a row of accumulators then starts on a cache line
    // wherever its length is a multiple of 8, and no vector add splits a line.
    let skip = acc.as_ptr().align_offset(64).min(7);
    let r = f(&mut acc[skip..skip + len]);
    if acc.capacity() * 8 <= ACC_KEEP_BYTES {
        ACC.set(acc);
    }
    r
}

/// The per-code sums of x in f64 in the order fixed by `split.chunk`, computed by tasks of
/// `split`'s blocks (any blocks give the same bits); each finished block's sums
/// (codes x w, row-major) go to `finish`, which writes its block of the outputs.
fn reduce(
    isa: super::Isa,
    parallel: bool,
    x: &[f32],
    idx: &[u32],
    (k, d): (usize, usize),
    split: Split,
    finish: &(dyn Fn(Block, &[f64]) + Sync),
) {
    let Split {
        chunk,
        width,
        range,
        wave,
        acc_ahead_over,
        stream,
        compact,
    } = split;
    let n = idx.len();
    let buckets = (range < k && !compact).then(|| bucket_rows(idx, range, k.div_ceil(range)));
    let mut blocks = Vec::new();
    for c0 in (0..k).step_by(range) {
        for t0 in (0..d).step_by(width) {
            let (c1, w) = (c0 + range.min(k - c0), width.min(d - t0));
            blocks.push(Block { c0, c1, t0, w });
        }
    }
    // Block `b`'s rows `r0..r1` added into `acc`.
    let accumulate = |b: &Block, (r0, r1): (usize, usize), acc: &mut [f64]| {
        // A compact task's rows: those of its chunk whose code is in its range, in order
        // (every row's number written, the count moved on only for the task's own), into
        // the thread's kept buffer (what it held past `picked` is never read).
        let (mut mine, mut picked) = (Vec::new(), 0);
        if compact {
            mine = MINE.take();
            if mine.len() < r1 - r0 {
                mine.resize(r1 - r0, 0usize);
            }
            for (i, &j) in (r0..r1).zip(&idx[r0..r1]) {
                mine[picked] = i;
                picked += ((j as usize).wrapping_sub(b.c0) < b.c1 - b.c0) as usize;
            }
        }
        let rows = buckets.as_ref().map(|(start, rows)| {
            let g = b.c0 / range;
            let bucket = &rows[start[g]..start[g + 1]];
            let (a, z) = (
                bucket.partition_point(|&i| i < r0),
                bucket.partition_point(|&i| i < r1),
            );
            &bucket[a..z]
        });
        let rows = if compact {
            Rows::Bucket(&mine[..picked])
        } else {
            rows.map_or(Rows::Range(r0, r1), Rows::Bucket)
        };
        let job = Accumulate {
            x,
            idx,
            d,
            t0: b.t0,
            w: b.w,
            c0: b.c0,
            rows,
            ahead: ahead_rows(b.w, d, buckets.is_some()),
            acc_ahead: b.len() * std::mem::size_of::<f64>() > acc_ahead_over,
            stream,
        };
        in_isa(isa, &job, acc);
        if compact && mine.capacity() * std::mem::size_of::<usize>() <= ACC_KEEP_BYTES {
            MINE.set(mine);
        }
    };
    let chunks = n.div_ceil(chunk.max(1));
    if chunks <= 1 {
        let task = |b: &Block| {
            with_acc(b.len(), |acc| {
                accumulate(b, (0, n), acc);
                finish(*b, acc);
            })
        };
        if parallel && blocks.len() > 1 {
            blocks.par_iter().for_each(task);
        } else {
            blocks.iter().for_each(task);
        }
        return;
    }
    // Several chunks: waves of `split.wave` chunks, each chunk into its own partial sums
    // (laid out block after block) in one parallel pass, then each run of codes of each
    // block adds the wave's partial sums into the total in chunk order, clearing them for
    // the next wave, and after the last wave finishes.
    let kd = k * d;
    let per_wave = wave.clamp(1, chunks);
    with_acc((per_wave + 1) * kd, |buf| {
        let (total, parts) = buf.split_at_mut(kd);
        for first in (0..chunks).step_by(per_wave) {
            let wave = first..(first + per_wave).min(chunks);
            let last = wave.end == chunks;
            let parts = &mut parts[..wave.len() * kd];
            let mut tasks = Vec::new();
            for (c, part) in wave.zip(parts.chunks_mut(kd)) {
                let rows = (c * chunk, ((c + 1) * chunk).min(n));
                for (b, acc) in blocks.iter().zip(by_block(part, &blocks)) {
                    tasks.push((b, rows, acc));
                }
            }
            // The partial sums start from zero: fresh, or cleared when last added up.
            let task = |(b, rows, acc): &mut (&Block, (usize, usize), &mut [f64])| {
                accumulate(b, *rows, acc)
            };
            if parallel && tasks.len() > 1 {
                tasks.par_iter_mut().for_each(task);
            } else {
                tasks.iter_mut().for_each(task);
            }
            // Runs of whole codes of a block: (the run's block, its share of the total,
            // each chunk's share of its partial sums in chunk order).
            type Run<'a> = (Block, &'a mut [f64], Vec<&'a mut [f64]>);
            let mut runs: Vec<Run> = Vec::new();
            let mut parts: Vec<Vec<&mut [f64]>> =
                parts.chunks_mut(kd).map(|p| by_block(p, &blocks)).collect();
            for (bi, (b, t)) in blocks.iter().zip(by_block(total, &blocks)).enumerate() {
                let codes = (ADD_RUN / b.w).max(1);
                let mut ps: Vec<_> = parts
                    .iter_mut()
                    .map(|p| std::mem::take(&mut p[bi]).chunks_mut(codes * b.w))
                    .collect();
                for (r, t) in t.chunks_mut(codes * b.w).enumerate() {
                    let c0 = b.c0 + r * codes;
                    let block = Block {
                        c1: c0 + t.len() / b.w,
                        c0,
                        ..*b
                    };
                    let shares = ps.iter_mut().filter_map(|p| p.next()).collect();
                    runs.push((block, t, shares));
                }
            }
            let add = |(b, t, ps): &mut Run| {
                for p in ps.iter_mut() {
                    for (t, p) in t.iter_mut().zip(p.iter_mut()) {
                        *t += std::mem::take(p);
                    }
                }
                if last {
                    finish(*b, t);
                }
            };
            if parallel && runs.len() > 1 {
                runs.par_iter_mut().for_each(add);
            } else {
                runs.iter_mut().for_each(add);
            }
        }
    });
}

/// The most bytes of partial sums a wave of chunks fills before they are added up, unless
/// the threads need more. Small codebooks take every chunk in one wave: waves of as many
/// chunks as threads, each with two forks and joins, cost more than the adds (k = 16,
/// d = 32, n = 100,000, 16 chunks: two threads ran slower than one).
const WAVE_BYTES: usize = 8 << 20;

/// A task's accumulators (whole rows of a range of codes) where one chunk's streamed
/// accumulators would exceed twice L2: the rows are then bucketed by code range and each
/// task adds its bucket's whole rows, in row order, into accumulators that stay in L1 and
/// L2. The same additions in the same order as streaming the chunk, so the same bits.
///
/// The bucket's rows are read out of order, which costs where the streamed accumulators
/// would stay in L2 (k = 4096, d = 32, n = 100,000, 2 threads: 1.3 against 0.9 ms), and
/// wins where they would not, their read-modify-writes then going out to L3 for every row:
/// n = 20,000, k = 4096, d = 512 4.0 to 4.2 -> 2.9 to 3.0 ms, k = 1024 2.8 to 2.9 -> 2.2
/// to 2.3 ms, n = 40,000, k = 65,536, d = 128 9.1 -> 6.9 to 7.3 ms (a 2-core Xeon with
/// 2 MiB of L2 per core, the EMA step, alternating runs; the first build of this sorted the
/// rows by code in a pass of its own, and ran the same within 3%). At k = 4096, d = 128
/// (2 MiB of accumulators a task) the two tied there, and on the Zen 4 VM of earlier
/// sessions (1 MiB of L2) rows read out of order lost to the stream at that shape
/// (docs/performance.md, the EMA section), so only accumulators beyond twice L2 take
/// this: k = 1024, d = 512 keeps the stream on the Xeon.
const GATHER_ACC_BYTES: usize = 64 << 10;

/// A task's accumulators up to which it streams its rows in order whatever the L2 (beyond
/// L2 it prefetches each row's accumulators, [`ACC_AHEAD_ROWS`] ahead), rather than
/// reading a bucket's rows ([`GATHER_ACC_BYTES`]) or taking code ranges. A row read out of
/// order is a TLB miss as well as a cache miss (a bucket's rows lie pages apart, 4 KiB
/// pages), and the page walks, not the bandwidth, bound the gather; streamed accumulators
/// of a few MiB stay within L3 and within the reach of a second-level TLB of 4 KiB pages
/// (1536 to 3072 entries on x86 cores of the last decade: 6 to 12 MiB). On a 2-core Zen 1
/// (AVX2, 512 KiB of L2 per core, 8 MiB of L3), `vqkit bench --op ema --seconds 1`,
/// alternating runs, medians: n = 100,000, k = 4096, d = 128, one thread, 18.9-19.7 ms
/// gathered, 12.7-14.5 streamed, 10.2-11.8 streamed with the accumulators prefetched; two
/// threads (two column slices of 2 MiB of accumulators) 8.6-11.4 -> 6.5-7.3 ms (3 runs),
/// and at n = 400,000 (two chunks, which took two code ranges) 42.5 -> 30.8 ms (5 runs; in
/// a later set of 3, 32.7-42.7 -> 24.6-28.7 ms). At k = 8192 (4 MiB a task, the L3 full)
/// the two tied, and at k = 65,536 (16 MiB) the gather won, 12 ms against 39. Where each
/// task's share of a cap on all of them (4 MiB over the tasks running at once) decided
/// instead, n = 400,000 kept its two ranges and ran 34.8-39.0 ms. With 2 MiB of L2 or more
/// (the Xeon) this changes nothing; with 1 MiB (the Zen 4 VM), tasks of 2 to 4 MiB now
/// stream (not measured there).
const STREAM_ACC_BYTES: usize = 4 << 20;

/// `buf` cut into the blocks' accumulators, laid out block after block.
fn by_block<'a>(mut buf: &'a mut [f64], blocks: &[Block]) -> Vec<&'a mut [f64]> {
    let mut out = Vec::with_capacity(blocks.len());
    for b in blocks {
        let (acc, rest) = std::mem::take(&mut buf).split_at_mut(b.len());
        buf = rest;
        out.push(acc);
    }
    out
}

/// Elements of the running total per task when the chunks' partial sums are added into it.
const ADD_RUN: usize = 1 << 12;

/// Row numbers grouped by code range (`idx / range`), in row order within a group:
/// (start of each group plus an end, the rows). Codes outside `0..k` are dropped.
fn bucket_rows(idx: &[u32], range: usize, groups: usize) -> (Vec<usize>, Vec<usize>) {
    let mut start = vec![0usize; groups + 1];
    for &j in idx {
        let g = j as usize / range;
        if g < groups {
            start[g + 1] += 1;
        }
    }
    for g in 0..groups {
        start[g + 1] += start[g];
    }
    let mut next = start.clone();
    let mut rows = vec![0usize; start[groups]];
    for (i, &j) in idx.iter().enumerate() {
        let g = j as usize / range;
        if g < groups {
            rows[next[g]] = i;
            next[g] += 1;
        }
    }
    (start, rows)
}

/// Rows ahead of the one being added whose slice of x is prefetched ([`prefetch_x`]), for a
/// task whose slices are `w` of the rows' `d` columns: where it reads whole rows in order
/// (a chunk's stream, or the rows a task picks out of its chunk, [`Split::compact`],
/// which lie close together), enough rows to come to [`AHEAD_BYTES`], at least
/// [`MIN_AHEAD_ROWS`]; where it reads column slices or a bucket's `scattered` rows,
/// [`MIN_AHEAD_ROWS`].
///
/// Where a task reads only its slice of each row (a few lines, then a stride), or a
/// bucket's rows in scattered order, the hardware prefetchers follow late or not at all:
/// at n = 100,000, 2 threads on column slices (`vqkit bench --op ema`, 5 alternating runs,
/// medians), d = 128 and k = 256, 1024, 4096 went from 6.4, 6.7, 6.0 ms to 4.5, 4.9, 5.1
/// ms with 8 rows ahead, and d = 512, k = 1024 from 29.7 to 21.9 ms. On whole rows in
/// chunks the prefetch still won on that VM (k = 256, d = 128: 2.2 to 4.7 ms against 3.2
/// to 4.8 ms without it).
///
/// Column slices keep 8 rows: at n = 100,000, k = 4096, d = 32 on two threads (two slices
/// of 16 floats, one line of each row), 128 rows ahead ran 0.92 ms against 0.78 ms at 8
/// (8 alternating runs, medians; 64 rows: 0.94 ms); at d = 64 and 128 (slices of 32 and
/// 64) 8, 32 and 64 rows ran within noise. A bucket's rows, scattered, keep 8 rows too:
/// at n = 40,000, k = 65,536, d = 128 (whole rows of a bucket), 16 rows ahead ran 5.80 ms
/// against 5.18 ms at 8 (6 alternating runs, medians, 2 threads).
fn ahead_rows(w: usize, d: usize, scattered: bool) -> usize {
    if w < d || scattered {
        MIN_AHEAD_ROWS
    } else {
        (AHEAD_BYTES / (4 * w.max(1))).max(MIN_AHEAD_ROWS)
    }
}

/// How far, in bytes of whole rows, a task's prefetch runs ahead. A fixed 8 rows were
/// 1 KiB at d = 32: on the Zen 4 VM, with x in L3, one thread spent a third of its samples
/// on the converts that read x. `vqkit bench --op ema --n 100000 --d 32 --threads 1`
/// (whole rows of 32), 5 alternating runs, medians: k = 256 1.04 ms at 8 rows ahead, 0.67
/// at 24, 0.52 at 64 (8 KiB). At d = 128 (x from memory) 8, 16 and 32 rows ran the same.
const AHEAD_BYTES: usize = 8192;

/// The fewest rows the prefetch runs ahead (from 256 floats a row, whole rows reach
/// [`AHEAD_BYTES`] within them).
const MIN_AHEAD_ROWS: usize = 8;

/// Rows ahead of the one being added whose accumulators are prefetched, where a task's
/// accumulators exceed L2: a row's code is random, so its accumulators' read-modify-write
/// would wait on L3 with nothing for the hardware prefetchers to follow. Measured with
/// [`STREAM_ACC_BYTES`] (see there); 4 and 8 rows ran the same, 16 slower.
const ACC_AHEAD_ROWS: usize = 8;

/// `v`'s cache lines asked for in L1 (the accumulators are written in a few rows' time).
#[inline(always)]
fn prefetch_l1(v: &[f64]) {
    #[cfg(target_arch = "x86_64")]
    for line in v.chunks(8) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: SSE is part of x86-64, and a prefetch never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// `v`'s cache lines prefetched: into L2, or with `stream` non-temporally (x beyond the
/// last-level cache, [`Accumulate::stream`]), so that rows read once no longer push the
/// accumulators out of L2. Where x fits in the last level it stays there for the next
/// pass (the accumulation follows an assignment over the same rows, and the bench repeats
/// a call), which a non-temporal fetch gives up: on a 2-core Zen 1 (8 MiB of L3), `vqkit
/// bench --op ema --threads 2 --seconds 1`, a build with the hint read from the
/// environment, 4 alternating runs, medians, 10,000 x 256 x 128 (5 MB) took 0.42 -> 0.58
/// ms and 100,000 x 256 x 16 (6.4 MB) 0.55 -> 0.76 non-temporally, while the shapes past
/// L3 gained (100,000 x 4096 x 128 7.68 -> 6.14 ms, 5 runs). The build with this rule
/// against the one before, 7 alternating runs, medians, n = 100,000: k x d = 256 x 32
/// 0.90 -> 0.85 ms, 256 x 128 4.02 -> 3.14, 1024 x 32 0.96 -> 0.94, 1024 x 128 4.69 ->
/// 3.94, 4096 x 32 1.74 -> 1.23 (1.82 -> 1.58 in the build above), 4096 x 128 7.58 ->
/// 6.84 (docs/performance.md).
///
/// Zen 1 fetches into L1 on the L2 hint; Zen 4 does not
/// ([`super::cache::t1_prefetch_fills_l1`]), and there the non-temporal fetch of x past L3
/// lost wherever a task's accumulators fit in half of L2, and tied or won only beyond (a
/// build with the hint read from the environment, `--threads 2`, 5 alternating pairs,
/// medians of the ratios L2 / non-temporal: n = 100,000, k x d = 256 x 128 0.868, 1024 x
/// 128 0.984, 4096 x 128 0.992; 400,000 x 256 x 32 0.835; 3 pairs: 100,000 x 512 x 128
/// 0.803, 400,000 x 1024 x 64 0.865, 400,000 x 64 x 128 0.787, 1,000,000 x 256 x 128
/// 0.774, 1,000,000 x 4096 x 128 1.027). So x past L3 is
/// fetched non-temporally only where the L2 hint fills L1 or where a task's accumulators
/// take more than half of L2 (at 1024 x 128, 1 MiB, one thread, two sets of pairs gave
/// 0.870 and 1.072). This rule against 1c21191 on the Zen 4 VM, `--threads 2`, 9 pairs:
/// 100,000 x 256 x 128 0.968, 400,000 x 64 x 128 0.909, 1,000,000 x 256 x 128 0.909; one
/// thread, 100,000 x 256 x 128 1.006.
#[inline(always)]
fn prefetch_x(v: &[f32], stream: bool) {
    if stream {
        #[cfg(target_arch = "x86_64")]
        for line in v.chunks(16) {
            use std::arch::x86_64::{_MM_HINT_NTA, _mm_prefetch};
            // SAFETY: SSE is part of x86-64, and a prefetch never faults.
            unsafe { _mm_prefetch::<_MM_HINT_NTA>(line.as_ptr().cast()) };
        }
    } else {
        super::distance_argmin::prefetch_l2(v);
    }
}

/// One task of [`sums`]: columns `t0..t0 + w` of the rows whose code is in `c0..c0 + codes`
/// among `rows`, added into `acc` (codes x w, f64).
struct Accumulate<'a> {
    x: &'a [f32],
    idx: &'a [u32],
    d: usize,
    t0: usize,
    w: usize,
    c0: usize,
    rows: Rows<'a>,
    /// Rows ahead whose slice is prefetched: [`ahead_rows`].
    ahead: usize,
    /// Whether the accumulators of the row [`ACC_AHEAD_ROWS`] ahead are prefetched too:
    /// where the task's accumulators exceed L2 (see there).
    acc_ahead: bool,
    /// Whether x's rows are prefetched non-temporally ([`prefetch_x`]): where x exceeds the
    /// last-level cache, so that no row of it stays cached until the next pass, on a CPU
    /// whose L2 prefetch fills L1 as well or for a task whose accumulators take more than
    /// half of L2 (see [`split`]).
    stream: bool,
}

/// The rows a task reads.
#[derive(Clone, Copy)]
enum Rows<'a> {
    /// Rows `r0..r1`.
    Range(usize, usize),
    /// Those of a bucket, or those a compact task picked out of its chunk (ascending).
    Bucket(&'a [usize]),
}

impl IsaLoop<&mut [f64]> for Accumulate<'_> {
    /// The loop with the width a constant at the widths the default grids' tasks take
    /// (whole rows of 32 or 128, column slices of 64), and at any other width. `vqkit bench
    /// --op ema --seconds 1`, 3 runs alternating with the loop at any width (2-core Xeon,
    /// medians): n = 10,000, k = 16, d = 32, `--threads 1` (x in L2) 0.068-0.069 ->
    /// 0.055-0.057 ms; n = 100,000, `--threads 2`, d = 32, k = 256 0.67-0.97 -> 0.56-0.59
    /// ms, k = 4096 0.94-1.57 -> 0.81-0.98 ms; d = 128, k = 4096 3.94-4.34 -> 3.77-3.96 ms;
    /// k = 256 and 1024 at d = 128 the same within noise.
    ///
    /// Short widths (1, 2, 3, 4, 6, 8 and 12 floats: 2-D and 3-D points, a product
    /// quantizer's subvectors) are constants too: at any width each row paid a
    /// runtime-length loop with its overlap checks. `vqkit bench --op ema --n 100000 --k K
    /// --d D --threads 2 --seconds 0.3`, bb6169c against 6279e1c (the loop at any width), 3
    /// alternating pairs, medians of the ratios, k = 256: d = 1 0.659, 2 0.494, 3 0.791, 4
    /// 0.468, 6 0.500, 8 0.524, 12 0.686; k = 16, d = 2 0.495; k = 4096, d = 8 0.535 (the
    /// Zen 4 VM).
    #[inline(always)]
    fn body(&self, acc: &mut [f64]) {
        match self.w {
            1 => self.body_fixed::<1>(acc),
            2 => self.body_fixed::<2>(acc),
            3 => self.body_fixed::<3>(acc),
            4 => self.body_fixed::<4>(acc),
            6 => self.body_fixed::<6>(acc),
            8 => self.body_fixed::<8>(acc),
            12 => self.body_fixed::<12>(acc),
            16 => self.body_fixed::<16>(acc),
            32 => self.body_fixed::<32>(acc),
            64 => self.body_fixed::<64>(acc),
            128 => self.body_fixed::<128>(acc),
            _ => self.body_any(acc),
        }
    }
}

impl Accumulate<'_> {
    /// [`Self::body_any`] for `W = self.w`: each row's converts and adds unrolled, one
    /// bounds check per row for x (none for whole rows in order) and none for the
    /// accumulators, the prefetch one instruction per line of the row (short whole rows in
    /// order: one per line of x).
    #[inline(always)]
    fn body_fixed<const W: usize>(&self, acc: &mut [f64]) {
        let (acc, _) = acc.as_chunks_mut::<W>();
        // Methods, not closures: a closure called from two loops may be compiled apart
        // from them, without the caller's instruction set.
        match self.rows {
            Rows::Bucket(rows) => {
                for (p, &i) in rows.iter().enumerate() {
                    if let Some(&ahead) = rows.get(p + self.ahead) {
                        self.prefetch_fixed::<W>(ahead);
                    }
                    if self.acc_ahead
                        && let Some(&ahead) = rows.get(p + ACC_AHEAD_ROWS)
                    {
                        self.prefetch_acc_fixed(acc, ahead);
                    }
                    self.add_fixed(acc, i);
                }
            }
            Rows::Range(r0, r1) if W == self.d => {
                // Whole rows in order (W == d: t0 is 0): the task's rows of x as one run of
                // [f32; W] beside their codes, so no row's read or code is bounds-checked
                // (the prefetches still check theirs).
                let r1 = r1.min(self.idx.len()).min(self.x.len() / W);
                let r0 = r0.min(r1);
                let (rows, _) = self.x[r0 * W..r1 * W].as_chunks::<W>();
                let codes = &self.idx[r0..r1];
                if W < LINE && !self.acc_ahead {
                    self.short_rows(acc, r0, rows, codes);
                    return;
                }
                for (p, (row, &j)) in rows.iter().zip(codes).enumerate() {
                    let i = r0 + p;
                    self.prefetch_fixed::<W>(i + self.ahead);
                    if self.acc_ahead {
                        self.prefetch_acc_fixed(acc, i + ACC_AHEAD_ROWS);
                    }
                    self.add_coded(acc, row, j);
                }
            }
            Rows::Range(r0, r1) => {
                for i in r0..r1 {
                    self.prefetch_fixed::<W>(i + self.ahead);
                    if self.acc_ahead {
                        self.prefetch_acc_fixed(acc, i + ACC_AHEAD_ROWS);
                    }
                    self.add_fixed(acc, i);
                }
            }
        }
    }

    /// Whole rows of `W < LINE` floats in order, from row `r0`: in runs of [`LINE`] rows,
    /// `W` lines' worth of x (on `W` or `W + 1` lines, as the run falls), those of the run
    /// about [`Accumulate::ahead`] rows ahead prefetched once per run (consecutive runs'
    /// prefetches tile x, so every line is asked for), and the run's rows added with no
    /// prefetch, no check and no branch but the code's. (Row by row, each row asked
    /// whether it started a line and checked its prefetch's bounds: about 30 instructions
    /// a row at d = 2, where this takes about 8.)
    /// `vqkit bench --op ema --n N --k K --d D --threads T --seconds 0.3` against the row by
    /// row loop, 5 alternating pairs, medians of the ratios (the Zen 4 VM), one thread:
    /// 100,000 x 256 x 2 0.514, x 256 x 8 0.644, x 16 x 4 0.892, x 4096 x 8 0.567; two
    /// threads: 0.498, 0.620, 0.675, 0.658, and 400,000 x 256 x 4 0.699. `--op kmeans`,
    /// one thread, 3 pairs: 100,000 x 256 x 2 0.959, x 16 x 8 0.915.
    #[inline(always)]
    fn short_rows<const W: usize>(
        &self,
        acc: &mut [[f64; W]],
        r0: usize,
        rows: &[[f32; W]],
        codes: &[u32],
    ) {
        let (runs, rest) = rows.as_chunks::<LINE>();
        let (run_codes, rest_codes) = codes.as_chunks::<LINE>();
        let ahead = self.ahead.div_ceil(LINE) * LINE * W;
        for (r, (run, codes)) in runs.iter().zip(run_codes).enumerate() {
            let at = (r0 + r * LINE) * W + ahead;
            if let Some(lines) = self.x.get(at..at + LINE * W) {
                prefetch_x(lines, self.stream);
            }
            for (row, &j) in run.iter().zip(codes) {
                self.add_coded(acc, row, j);
            }
        }
        for (row, &j) in rest.iter().zip(rest_codes) {
            self.add_coded(acc, row, j);
        }
    }

    /// `row`, whose code is `j`, added into its code's accumulators if the code is in the
    /// task's range.
    #[inline(always)]
    fn add_coded<const W: usize>(&self, acc: &mut [[f64; W]], row: &[f32; W], j: u32) {
        // A code below c0 wraps to a huge index: skipped, as are codes past the range.
        if let Some(a) = acc.get_mut((j as usize).wrapping_sub(self.c0)) {
            add_row(a, row);
        }
    }

    /// Row `i`'s slice added into its code's accumulators, if its code is in the range.
    #[inline(always)]
    fn add_fixed<const W: usize>(&self, acc: &mut [[f64; W]], i: usize) {
        let at = i * self.d + self.t0;
        if let Some(row) = self.x.get(at..).and_then(|x| x.first_chunk::<W>()) {
            self.add_coded(acc, row, self.idx[i]);
        }
    }

    /// The accumulators of row `i`'s code prefetched into L1, if the row lies in x and its
    /// code in the task's range.
    #[inline(always)]
    fn prefetch_acc_fixed<const W: usize>(&self, acc: &[[f64; W]], i: usize) {
        if let Some(&j) = self.idx.get(i)
            && let Some(a) = acc.get((j as usize).wrapping_sub(self.c0))
        {
            prefetch_l1(a);
        }
    }

    /// Row `i`'s slice prefetched ([`prefetch_x`]), a line at a time, if it lies in x.
    #[inline(always)]
    fn prefetch_fixed<const W: usize>(&self, i: usize) {
        let at = i * self.d + self.t0;
        if let Some(row) = self.x.get(at..at + W) {
            if W < LINE {
                let start = row.as_ptr() as usize;
                let last = (start + 4 * (W - 1)) / 64;
                if W == self.d && matches!(self.rows, Rows::Range(..)) {
                    // Short whole rows read in order (here only where the accumulators
                    // are prefetched too; otherwise [`Self::short_rows`]): one prefetch for
                    // each line they reach, by the row whose last float starts it (the
                    // line of the byte before the row is the previous row's).
                    if last != (start - 1) / 64 {
                        prefetch_x(&row[W - 1..], self.stream);
                    }
                } else {
                    // A slice of a row, or a bucket's scattered rows: each its own lines.
                    prefetch_x(&row[..1], self.stream);
                    if last != start / 64 {
                        prefetch_x(&row[W - 1..], self.stream);
                    }
                }
                return;
            }
            for line in (0..W).step_by(16) {
                prefetch_x(&row[line..line + 1], self.stream);
            }
        }
    }

    #[inline(always)]
    fn body_any(&self, acc: &mut [f64]) {
        match self.rows {
            Rows::Bucket(rows) => {
                for (p, &i) in rows.iter().enumerate() {
                    if let Some(&ahead) = rows.get(p + self.ahead) {
                        self.prefetch_any(ahead);
                    }
                    if self.acc_ahead
                        && let Some(&ahead) = rows.get(p + ACC_AHEAD_ROWS)
                    {
                        self.prefetch_acc_any(acc, ahead);
                    }
                    self.add_any(acc, i);
                }
            }
            Rows::Range(r0, r1) => {
                for i in r0..r1 {
                    self.prefetch_any(i + self.ahead);
                    if self.acc_ahead {
                        self.prefetch_acc_any(acc, i + ACC_AHEAD_ROWS);
                    }
                    self.add_any(acc, i);
                }
            }
        }
    }

    /// [`Self::add_fixed`] at any width.
    #[inline(always)]
    fn add_any(&self, acc: &mut [f64], i: usize) {
        let (at, w) = (i * self.d + self.t0, self.w);
        // A code below c0 wraps to a huge j: skipped, as are codes past the range.
        let j = (self.idx[i] as usize).wrapping_sub(self.c0);
        // (Compared before `j * w`, which a wrapped j would overflow.)
        if j < acc.len() / w
            && let Some(row) = self.x.get(at..at + w)
        {
            for (a, &v) in acc[j * w..(j + 1) * w].iter_mut().zip(row) {
                *a += v as f64;
            }
        }
    }

    /// [`Self::prefetch_acc_fixed`] at any width.
    #[inline(always)]
    fn prefetch_acc_any(&self, acc: &[f64], i: usize) {
        let w = self.w;
        if let Some(&j) = self.idx.get(i) {
            let j = (j as usize).wrapping_sub(self.c0);
            if j < acc.len() / w {
                prefetch_l1(&acc[j * w..(j + 1) * w]);
            }
        }
    }

    /// The slice of row `i`, if it lies in x, prefetched: see [`ahead_rows`].
    #[inline(always)]
    fn prefetch_any(&self, i: usize) {
        let at = i * self.d + self.t0;
        if let Some(ahead) = self.x.get(at..at + self.w) {
            prefetch_x(ahead, self.stream);
        }
    }
}

/// `row` added into `a`, element by element in f64.
///
/// A line of the row at a time, each read whole before its adds are stored: the compiler
/// cannot tell that `a` and `row` do not overlap, and would add element by element. Not the
/// whole row at once: at W = 128 the compiler then converted all of it before the first
/// add, 32 ymm of f64 on AVX2's 16 registers, and spilled half to the stack and back
/// (`vqkit bench --op ema --n 100000 --d 128 --threads 1 --seconds 1`, 2-core Zen 1, 4
/// alternating runs, medians: k = 256 7.45 -> 6.68 ms, k = 4096 10.76 -> 9.87 ms; widths
/// 16 to 64 within noise; docs/performance.md).
#[inline(always)]
fn add_row<const W: usize>(a: &mut [f64; W], row: &[f32; W]) {
    let (a, a_rest) = a.as_chunks_mut::<LINE>();
    let (row, rest) = row.as_chunks::<LINE>();
    for (a, &line) in a.iter_mut().zip(row) {
        for (a, v) in a.iter_mut().zip(line) {
            *a += v as f64;
        }
    }
    // The last W % 16 floats (all of a short row) copied out the same way: their count is
    // a constant, so the copy and the adds unroll.
    let mut line = [0.0f32; LINE];
    line[..rest.len()].copy_from_slice(rest);
    for (a, v) in a_rest.iter_mut().zip(line) {
        *a += v as f64;
    }
}

/// `dist_sums[j] = sum_{idx[i] = j} dist[i]`, in f64, row order.
pub(crate) fn dist_sums(idx: &[u32], dist: &[f32], dist_sums: &mut [f32]) {
    let mut acc = vec![0.0f64; dist_sums.len()];
    for (&j, &v) in idx.iter().zip(dist) {
        if let Some(a) = acc.get_mut(j as usize) {
            *a += v as f64;
        }
    }
    for (o, a) in dist_sums.iter_mut().zip(acc) {
        *o = a as f32;
    }
}

/// `centroids[j] = sums[j] / counts[j]` where `counts[j] > 0`.
pub(crate) fn kmeans_update(sums: &[f32], counts: &[u32], d: usize, centroids: &mut [f32]) {
    for ((c, s), &m) in centroids.chunks_mut(d).zip(sums.chunks(d)).zip(counts) {
        if m > 0 {
            let inv = 1.0 / m as f64;
            for (c, &s) in c.iter_mut().zip(s) {
                *c = (s as f64 * inv) as f32;
            }
        }
    }
}

/// The EMA step of [`crate::backend::EmaParams`] on the batch `x` with codes `idx`: the
/// smoothed sizes, then each code's running sum and codeword from its batch sum.
///
/// The batch sums are not stored as f32: the step is applied to each block of `embed_sum`
/// and `codebook` as soon as that block's f64 sums are complete (rounding them to f32
/// first, as a stored batch sum would be), by the task that summed it where the rows are
/// one chunk, and after the last chunk's sums are added in otherwise. So the step is one
/// pass over x and one over the k x d state, and its f64 buffers are the threads' kept
/// accumulators (see [`ACC`]).
pub(crate) fn ema(
    isa: super::Isa,
    parallel: bool,
    params: (f32, f32),
    x: &[f32],
    idx: &[u32],
    (k, d): (usize, usize),
    state: EmaState,
) {
    let split = split(parallel, idx.len(), k, d);
    ema_in(isa, parallel, params, x, idx, (k, d), split, state)
}

/// The EMA state's three buffers: smoothed sizes (k), running sums and codebook (k x d).
pub(crate) type EmaState<'a> = (&'a mut [f32], &'a mut [f32], &'a mut [f32]);

/// [`ema`] with the reduction ordered and split as `split` says (for a given chunk length,
/// any split gives the same bits).
#[allow(clippy::too_many_arguments)]
fn ema_in(
    isa: super::Isa,
    parallel: bool,
    (decay, eps): (f32, f32),
    x: &[f32],
    idx: &[u32],
    (k, d): (usize, usize),
    split: Split,
    (cluster_size, embed_sum, codebook): EmaState,
) {
    assert!(
        cluster_size.len() == k && embed_sum.len() == k * d && codebook.len() == k * d,
        "EMA state: k, k x d, k x d"
    );
    let (decay, eps) = (decay as f64, eps as f64);
    let counts = counts(parallel, idx, k);
    let mut total = 0.0;
    in_isa(
        isa,
        &Sizes {
            decay,
            counts: &counts,
        },
        (&mut *cluster_size, &mut total),
    );
    // The Laplace smoothing of the sizes; none while no code has weight, when the codebook
    // is left as it is.
    let smooth = (total > 0.0).then_some(Smooth {
        sizes: cluster_size,
        eps,
        total,
        denom: total + k as f64 * eps,
    });
    let (es, cb) = (Out(embed_sum.as_mut_ptr()), Out(codebook.as_mut_ptr()));
    reduce(isa, parallel, x, idx, (k, d), split, &|b, acc| {
        let step = EmaBlock {
            decay,
            smooth,
            block: b,
            d,
            state: (es, cb),
        };
        // Compiled for the instruction set the accumulation used: in the baseline build the
        // step's f64 arithmetic ran two lanes at a time, 12% of the step at n = 100,000,
        // k = 4096, d = 128 (`perf` of `vqkit bench --op ema`, 2 threads).
        in_isa(isa, &step, acc);
    });
}

/// The EMA's sizes decayed towards the batch's counts, `size = decay size + (1 - decay)
/// count` (f64, rounded to f32), and their total ([`SIZE_LANES`] partial sums in f64).
struct Sizes<'a> {
    decay: f64,
    counts: &'a [u32],
}

/// The partial sums of the sizes' total: size j goes into partial `j % SIZE_LANES`, in
/// code order, and the partials are added in order. One chain of adds in code order
/// waited on each add's latency, about 4 cycles a code: at 262,144 codes, a sixth of an
/// EMA step of 19,073 rows (`perf`, the Zen 4 VM). A fixed order, so the same bits on any
/// thread count.
const SIZE_LANES: usize = 8;

impl IsaLoop<(&mut [f32], &mut f64)> for Sizes<'_> {
    /// Compiled for the step's instruction set (in the baseline build the decay ran two
    /// lanes at a time).
    #[inline(always)]
    fn body(&self, (sizes, total): (&mut [f32], &mut f64)) {
        let decay = self.decay;
        let mut part = [0.0f64; SIZE_LANES];
        let (runs, rest) = sizes.as_chunks_mut::<SIZE_LANES>();
        let (count_runs, count_rest) = self.counts.as_chunks::<SIZE_LANES>();
        let step = |s: &mut f32, c: u32, part: &mut f64| {
            *s = (decay * *s as f64 + (1.0 - decay) * c as f64) as f32;
            *part += *s as f64;
        };
        for (run, counts) in runs.iter_mut().zip(count_runs) {
            for l in 0..SIZE_LANES {
                step(&mut run[l], counts[l], &mut part[l]);
            }
        }
        for (l, (s, &c)) in rest.iter_mut().zip(count_rest).enumerate() {
            step(s, c, &mut part[l]);
        }
        *total = part.iter().fold(0.0, |t, &p| t + p);
    }
}

/// The Laplace smoothing of the EMA's sizes: code j's smoothed size is
/// `(size_j + eps) / denom * total`, with `denom = total + k eps`.
#[derive(Clone, Copy)]
struct Smooth<'a> {
    sizes: &'a [f32],
    eps: f64,
    total: f64,
    denom: f64,
}

impl Smooth<'_> {
    /// Code `j`'s 1 / smoothed size, if it has a size. Computed by each block's task as
    /// it updates the code (the same expression, so the same bits), rather than into a
    /// vector of k beforehand: at 65,536 codes that vector was half a MiB written, read
    /// and freed a call. `vqkit bench --op ema --n N --k K --d D --threads T --seconds
    /// 0.3`, 5 alternating pairs, medians of the ratios (the Zen 4 VM), one thread:
    /// 19,073 x 65,536 x 8 0.929, 76,293 x 65,536 x 2 0.974, 19,073 x 262,144 x 2 0.971,
    /// 100,000 x 1024 x 32 1.026; two threads: 19,073 x 65,536 x 8 0.924, 4768 x 262,144 x
    /// 8 0.797.
    #[inline(always)]
    fn inv(&self, j: usize) -> Option<f64> {
        let &s = self.sizes.get(j)?;
        Some(1.0 / ((s as f64 + self.eps) / self.denom * self.total))
    }
}

/// The EMA step on one finished [`Block`] of the state, from its f64 batch sums.
struct EmaBlock<'a> {
    decay: f64,
    /// The sizes' smoothing; none when the codebook is left as it is.
    smooth: Option<Smooth<'a>>,
    block: Block,
    d: usize,
    /// `embed_sum` and `codebook`.
    state: (Out, Out),
}

impl IsaLoop<&[f64]> for EmaBlock<'_> {
    /// Each code's running sum `e = decay e + (1 - decay) batch` (the batch sum rounded to
    /// f32 first, as a stored one would be) and codeword `e / smoothed size`, in f64. The
    /// products and sums are rounded separately (Rust never fuses them), so every
    /// instruction set gives the same bits.
    ///
    /// Rows of 1 to 12 floats (the accumulation's short constant widths) take a constant
    /// length here too: at any width each code paid a loop of runtime length with its
    /// remainder, which at large codebooks of short rows made this step most of the call
    /// (`perf` at n = 19,073, k = 65,536, d = 8: 617 samples here against 52 in the
    /// accumulation). `vqkit bench --op ema --n N --k K --d D --threads 1 --seconds 0.3`,
    /// against the loop at any width, 5 alternating pairs, medians of the ratios (the Zen 4
    /// VM), n x k x d: 19,073 x 65,536 x 12 0.592, x 8 0.452, x 4 0.732, 76,293 x 65,536 x
    /// 2 0.883, 4768 x 262,144 x 8 0.645 (a build with the arrays at every width); the
    /// same loop without the arrays below, which the compiler left scalar: 0.829, 0.921 at
    /// d = 2, 0.850. From 16 floats the loop at any width stays: constant widths there lost
    /// (19,073 x 65,536 x 16 1.223, 4768 x 65,536 x 32 1.353 and 1.473, 1192 x 65,536 x 128
    /// 1.004 and 1.047).
    #[inline(always)]
    fn body(&self, acc: &[f64]) {
        match self.block.w {
            1 => self.codes::<1>(acc),
            2 => self.codes::<2>(acc),
            3 => self.codes::<3>(acc),
            4 => self.codes::<4>(acc),
            6 => self.codes::<6>(acc),
            8 => self.codes::<8>(acc),
            12 => self.codes::<12>(acc),
            w => {
                for (j, a) in (self.block.c0..self.block.c1).zip(acc.chunks_exact(w)) {
                    self.code(j, a);
                }
            }
        }
    }
}

impl EmaBlock<'_> {
    /// [`Self::code`]'s step for each code of the block, its rows `W` long, each row read
    /// whole into an array and written back whole: the compiler, which cannot tell the
    /// state from the sums apart, then computes a row in vector registers (through
    /// `Self::code` at a constant width it left them scalar).
    #[inline(always)]
    fn codes<const W: usize>(&self, acc: &[f64]) {
        let (b, d, decay) = (self.block, self.d, self.decay);
        // The state's rows below are w long: W must be w.
        assert_eq!(W, b.w, "EMA step: the row width");
        let (es, cb) = self.state;
        let (acc, _) = acc.as_chunks::<W>();
        for (j, a) in (b.c0..b.c1).zip(acc) {
            // SAFETY: see `Out`; (j, t0..t0 + W) lies inside the k x d state (W = w).
            let e = unsafe { es.row(j * d + b.t0, W) };
            let Some(e) = e.first_chunk_mut::<W>() else {
                continue;
            };
            let old = *e;
            let new: [f32; W] = std::array::from_fn(|t| running_sum(decay, old[t], a[t]));
            *e = new;
            if let Some(inv) = self.smooth.and_then(|m| m.inv(j)) {
                // SAFETY: as above.
                let c = unsafe { cb.row(j * d + b.t0, W) };
                if let Some(c) = c.first_chunk_mut::<W>() {
                    *c = std::array::from_fn(|t| codeword(new[t], inv));
                }
            }
        }
    }

    /// Code `j`'s slice of the state from its batch sums `a` (the block's width long).
    #[inline(always)]
    fn code(&self, j: usize, a: &[f64]) {
        let (b, d, decay) = (self.block, self.d, self.decay);
        let (es, cb) = self.state;
        // SAFETY: see `Out`; (j, t0..t0 + w) lies inside the k x d state.
        let e = unsafe { es.row(j * d + b.t0, b.w) };
        for (e, &v) in e.iter_mut().zip(a) {
            *e = running_sum(decay, *e, v);
        }
        if let Some(inv) = self.smooth.and_then(|m| m.inv(j)) {
            // SAFETY: as above.
            let c = unsafe { cb.row(j * d + b.t0, b.w) };
            for (c, &e) in c.iter_mut().zip(e.iter()) {
                *c = codeword(e, inv);
            }
        }
    }
}

/// One element of a code's running sum after the step: `decay e + (1 - decay) batch`,
/// the batch sum `v` rounded to f32 first (as a stored one would be), in f64, rounded to
/// f32. Both of [`EmaBlock`]'s loops take it (and [`codeword`]) from here, so they give
/// the same bits.
#[inline(always)]
fn running_sum(decay: f64, e: f32, v: f64) -> f32 {
    let batch = v as f32 as f64;
    (decay * e as f64 + (1.0 - decay) * batch) as f32
}

/// One element of a codeword from its running sum `e` and the code's 1 / smoothed size,
/// in f64, rounded to f32 (shared by both loops as [`running_sum`] is).
#[inline(always)]
fn codeword(e: f32, inv: f64) -> f32 {
    (e as f64 * inv) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Isa;
    use crate::rng::Rng;

    /// (n, k, d, x, idx).
    type Case = (usize, usize, usize, Vec<f32>, Vec<u32>);

    /// Shapes with every remainder of a 16-column slice, and rows for each fixed-width loop
    /// (1 to 128 columns, whole rows at each), random codes (three out of range: the
    /// first row's, one in the middle and the last).
    fn cases() -> Vec<Case> {
        let mut rng = Rng::new(3);
        let mut v = Vec::new();
        let shapes = [
            (200, 7, 5),
            (300, 50, 40),
            (64, 130, 17),
            (90, 11, 200),
            // Short whole rows of each fixed width below 16 (in bucket splits too, below),
            // and a last column slice of 6.
            (150, 9, 3),
            (120, 20, 12),
            (61, 6, 2),
            (40, 3, 1),
            (70, 9, 4),
            (100, 5, 6),
            (80, 13, 8),
            (45, 10, 22),
            // Whole rows of the fixed widths from 16.
            (50, 7, 16),
            (40, 9, 32),
            (30, 5, 64),
            (20, 3, 128),
            // Short whole rows past the prefetch's distance (its runs' prefetch taken).
            (1100, 9, 2),
            // A codebook of whole runs of the sizes' 8 partial sums (no remainder).
            (60, 16, 5),
        ];
        for &(n, k, d) in &shapes {
            let x = rng.normal_vec(n * d);
            let mut idx: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
            // Out of range, skipped: the first row, one in the middle and the last.
            for i in [0, n / 2 + 1, n - 1] {
                idx[i] = k as u32 + 5;
            }
            v.push((n, k, d, x, idx));
        }
        v
    }

    /// Every (chunk length, column width, code range, wave, accumulators prefetched or not,
    /// ranges bucketed or picked out by their tasks) split of n x k x d on every ISA: one
    /// chunk, and chunks of 7 and 64 rows; x prefetched non-temporally where the
    /// accumulators are prefetched. The splits run in parallel and in order by turns, the
    /// turn shifted by the width's place: a width holds an even number of splits, so
    /// without the shift each (range, wave, prefetch) choice would run one way at every
    /// width; with it, every such choice runs both ways across the widths, and each
    /// width, range and wave meets both. Both for every split doubled the tests' time
    /// under valgrind's memcheck in CI.
    fn splits(n: usize, k: usize, d: usize) -> impl Iterator<Item = (Isa, Split, bool)> {
        let all = Isa::available().into_iter().flat_map(move |isa| {
            chunks(n).into_iter().flat_map(move |chunk| {
                [16, 32, 64, 128, d.div_ceil(16) * 16]
                    .into_iter()
                    .enumerate()
                    .flat_map(move |(wi, width)| {
                        [1, 3, k.div_ceil(2), k].into_iter().flat_map(move |range| {
                            // Waves of one and two chunks, and all of them.
                            let waves = if chunk < n {
                                vec![1, 2, usize::MAX]
                            } else {
                                vec![1]
                            };
                            // Accumulators prefetched or not (the production split
                            // prefetches those beyond L2), and with them ranges picked
                            // out by each task rather than bucketed.
                            waves.into_iter().flat_map(move |wave| {
                                [(0, false), (0, true), (usize::MAX, false)]
                                    .into_iter()
                                    .map(move |(acc_ahead_over, compact)| {
                                        let split = Split {
                                            chunk,
                                            width,
                                            range,
                                            wave,
                                            acc_ahead_over,
                                            // x streamed where the accumulators are
                                            // prefetched: both prefetches in some splits.
                                            stream: acc_ahead_over == 0,
                                            compact,
                                        };
                                        (isa, split, wi)
                                    })
                            })
                        })
                    })
            })
        });
        all.enumerate()
            .map(|(i, (isa, split, wi))| (isa, split, (i + wi) % 2 == 1))
    }

    /// The chunk lengths of [`splits`]: all rows in one, and two short lengths.
    fn chunks(n: usize) -> [usize; 3] {
        [n, 7, 64]
    }

    /// Of references made per chunk length of n rows (`chunks(n).map(...)`), the one for
    /// `chunk`.
    fn for_chunk<T>(wants: &[T; 3], n: usize, chunk: usize) -> &T {
        &wants[chunks(n).iter().position(|&c| c == chunk).unwrap()]
    }

    /// The per-code sums in f64, each chunk of `chunk` rows in row order from zero, the
    /// chunks' sums added in chunk order, rounded to f32: the reference for both tests.
    fn chunked_sums(x: &[f32], idx: &[u32], (k, d): (usize, usize), chunk: usize) -> Vec<f32> {
        let mut total = vec![0.0f64; k * d];
        for (rows, codes) in x.chunks(chunk * d).zip(idx.chunks(chunk)) {
            let mut part = vec![0.0f64; k * d];
            for (row, &j) in rows.chunks_exact(d).zip(codes) {
                if let Some(p) = part.get_mut(j as usize * d..(j as usize + 1) * d) {
                    p.iter_mut().zip(row).for_each(|(p, &v)| *p += v as f64);
                }
            }
            total.iter_mut().zip(&part).for_each(|(t, &p)| *t += p);
        }
        total.iter().map(|&v| v as f32).collect()
    }

    /// Every column width and code range, on every instruction set, in parallel or not,
    /// gives the bits of the f64 sums in the split's chunk order; codes out of range are
    /// skipped.
    #[test]
    fn sums_match_chunked_f64_for_every_split() {
        for (n, k, d, x, idx) in cases() {
            // The references by chunk length, made once (under valgrind's memcheck they
            // cost more than the sums they check).
            let wants = chunks(n).map(|chunk| chunked_sums(&x, &idx, (k, d), chunk));
            for (isa, split, parallel) in splits(n, k, d) {
                let want = for_chunk(&wants, n, split.chunk);
                let mut got = vec![f32::NAN; k * d];
                sums_in(isa, parallel, &x, &idx, (k, d), split, &mut got);
                assert_eq!(&got, want, "{isa:?} n={n} k={k} d={d} split={split:?}");
            }
        }
    }

    /// The production order at a shape cut into eight chunks, the last one short, gives
    /// the same bits on one thread and in pools of 2 and 3, with the production split (the
    /// eight chunks in one wave) and with code ranges over bucketed rows in waves of three
    /// chunks (the last one short), for the sums and the EMA step. Code 0 takes only rows built so that the order shows
    /// in its sums: each chunk's rows from zero, the chunks' sums one after the other.
    #[test]
    fn production_chunks_give_the_same_bits_on_any_threads() {
        let (n, k, d) = (20_003, 32, 20);
        let c = chunk_rows(n, k, d);
        assert_eq!(
            (c, n.div_ceil(c), n % c),
            (2501, 8, 2496),
            "8 chunks, the last short"
        );
        let mut rng = Rng::new(11);
        let mut x = rng.normal_vec(n * d);
        let mut idx: Vec<u32> = (0..n).map(|_| 1 + rng.below(k - 1) as u32).collect();
        let big = 2f32.powi(60);
        // Code 0, columns 0 to 2, in chunks 0, 1, 1, 2 and 3. Column 0: 2^60 and -2^60
        // cancel within chunk 1, so chunk 0's 1 survives (a plain sum in row order loses
        // it). Column 1: chunk 1's 2^60 swallows the 1 before chunk 2 cancels it (chunks
        // 1 and 2 added first would keep it). Column 2: the same with chunks 2 and 3 (a
        // wave's chunks added together first, or a pairwise tree, would keep it).
        let rows = [
            (0, [1.0, 1.0, 1.0]),
            (c, [big, big, 0.0]),
            (c + 1, [-big, 0.0, 0.0]),
            (2 * c, [0.0, -big, big]),
            (3 * c, [0.0, 0.0, -big]),
        ];
        for (i, v) in rows {
            x[i * d..i * d + 3].copy_from_slice(&v);
            idx[i] = 0;
        }
        let want = chunked_sums(&x, &idx, (k, d), c);
        assert_eq!(want[..3], [1.0, 0.0, 0.0], "the reference's order");
        assert_eq!(
            chunked_sums(&x, &idx, (k, d), n)[0],
            0.0,
            "row order differs"
        );
        let (decay, eps) = (0.5, 0.0);
        let start: State = (vec![1.0; k], vec![0.0; k * d], vec![0.0; k * d]);
        let want_ema = plain_ema((decay, eps), &x, &idx, (k, d), c, start.clone());
        assert_eq!(want_ema.1[..3], [0.5, 0.0, 0.0], "the EMA's running sums");
        let buckets = Split {
            chunk: c,
            width: 16,
            range: 5,
            wave: 3,
            acc_ahead_over: 0,
            stream: true,
            compact: false,
        };
        let picked = Split {
            compact: true,
            ..buckets
        };
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a pool");
            let parallel = threads > 1;
            for isa in Isa::available() {
                let mut got = vec![f32::NAN; k * d];
                pool.install(|| sums(isa, parallel, &x, &idx, k, d, &mut got));
                assert_eq!(got, want, "{isa:?} on {threads} threads");
                pool.install(|| sums_in(isa, parallel, &x, &idx, (k, d), buckets, &mut got));
                assert_eq!(got, want, "{isa:?} on {threads} threads, bucketed");
                pool.install(|| sums_in(isa, parallel, &x, &idx, (k, d), picked, &mut got));
                assert_eq!(got, want, "{isa:?} on {threads} threads, picked out");
                let mut state = start.clone();
                let view = (&mut state.0[..], &mut state.1[..], &mut state.2[..]);
                let params = (decay as f32, eps as f32);
                pool.install(|| ema(isa, parallel, params, &x, &idx, (k, d), view));
                assert_eq!(state, want_ema, "{isa:?} on {threads} threads, EMA");
            }
        }
    }

    /// With fewer chunks than threads (one chunk here, and x of 160 KB, far smaller than
    /// any last-level cache, as `split`'s choice needs) the production split takes code
    /// ranges whose tasks pick out their own rows, and its sums and EMA step give the
    /// one-thread bits on 2 and 3 threads.
    #[test]
    fn one_chunk_on_several_threads_picks_out_ranges() {
        let (n, k, d) = (1001, 70, 40);
        assert_eq!(chunk_rows(n, k, d), n, "one chunk");
        let mut rng = Rng::new(13);
        let x = rng.normal_vec(n * d);
        let mut idx: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
        idx[n / 2] = k as u32 + 1;
        let start: State = (vec![1.0; k], rng.normal_vec(k * d), vec![0.0; k * d]);
        let params = (0.8, 1e-5);
        let pool = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a pool")
        };
        for isa in Isa::available() {
            let run = |threads: usize| {
                let parallel = threads > 1;
                let mut got = vec![f32::NAN; k * d];
                let mut state = start.clone();
                let view = (&mut state.0[..], &mut state.1[..], &mut state.2[..]);
                pool(threads).install(|| {
                    sums(isa, parallel, &x, &idx, k, d, &mut got);
                    ema(isa, parallel, params, &x, &idx, (k, d), view);
                });
                (got, state)
            };
            let want = run(1);
            assert_eq!(want.0, chunked_sums(&x, &idx, (k, d), n), "{isa:?}");
            for threads in [2, 3] {
                let split = pool(threads).install(|| split(true, n, k, d));
                assert!(split.compact && split.range < k, "{split:?}");
                assert_eq!(run(threads), want, "{isa:?} on {threads} threads");
            }
        }
    }

    /// Owned EMA state: sizes, running sums, codebook.
    type State = (Vec<f32>, Vec<f32>, Vec<f32>);

    /// The EMA step written out plainly (batch sums in chunks of `chunk` rows): sizes, then
    /// the stored batch sums folded into the running sums, then the codewords (left alone while no code has weight).
    fn plain_ema(
        (decay, eps): (f64, f64),
        x: &[f32],
        idx: &[u32],
        (k, d): (usize, usize),
        chunk: usize,
        (mut size, mut esum, mut code): State,
    ) -> State {
        let batch = chunked_sums(x, idx, (k, d), chunk);
        for (s, &c) in size.iter_mut().zip(&counts(false, idx, k)) {
            *s = (decay * *s as f64 + (1.0 - decay) * c as f64) as f32;
        }
        // Eight partial sums, size j in partial j % 8, then added in order.
        let mut part = [0.0f64; 8];
        for (j, &s) in size.iter().enumerate() {
            part[j % 8] += s as f64;
        }
        let total: f64 = part.iter().fold(0.0, |t, &p| t + p);
        for (j, &s) in size.iter().enumerate() {
            let smoothed = (s as f64 + eps) / (total + k as f64 * eps) * total;
            for t in j * d..(j + 1) * d {
                esum[t] = (decay * esum[t] as f64 + (1.0 - decay) * batch[t] as f64) as f32;
                if total > 0.0 {
                    code[t] = (esum[t] as f64 * (1.0 / smoothed)) as f32;
                }
            }
        }
        (size, esum, code)
    }

    /// Counts in parts are the serial counts: codes outside `0..k` skipped, parts of
    /// unequal length, more parts than rows.
    #[test]
    fn counts_in_parts_are_the_serial_counts() {
        let mut rng = crate::rng::Rng::new(7);
        for (n, k) in [(0, 3), (1, 1), (5, 4), (1000, 7), (4099, 64)] {
            // Codes up to k + 1: some outside the codebook.
            let idx: Vec<u32> = (0..n).map(|_| rng.below(k + 2) as u32).collect();
            let mut want = vec![0u32; k];
            for &j in &idx {
                if (j as usize) < k {
                    want[j as usize] += 1;
                }
            }
            for parts in 0..=9 {
                assert_eq!(
                    counts_in(parts, &idx, k),
                    want,
                    "n {n}, k {k}, {parts} parts"
                );
            }
            assert_eq!(counts(true, &idx, k), want);
        }
    }

    /// The fused EMA step gives the plain step's bits for every split, with weight and
    /// with none anywhere (every code out of range, all sizes zero).
    #[test]
    fn fused_ema_matches_the_plain_step_for_every_split() {
        let (decay, eps) = (0.9f32, 1e-5f32);
        for (n, k, d, x, idx) in cases() {
            let mut rng = Rng::new(n as u64);
            let (esum, code) = (rng.normal_vec(k * d), rng.normal_vec(k * d));
            let weighted = (idx, (0..k).map(|j| (j % 3) as f32).collect::<Vec<_>>());
            let weightless = (vec![k as u32; n], vec![0.0f32; k]);
            for (idx, size) in [weighted, weightless] {
                let start = (size, esum.clone(), code.clone());
                let params = (decay as f64, eps as f64);
                let wants = chunks(n)
                    .map(|chunk| plain_ema(params, &x, &idx, (k, d), chunk, start.clone()));
                for (isa, split, parallel) in splits(n, k, d) {
                    let want = for_chunk(&wants, n, split.chunk);
                    let mut got = start.clone();
                    let state = (&mut got.0[..], &mut got.1[..], &mut got.2[..]);
                    ema_in(isa, parallel, (decay, eps), &x, &idx, (k, d), split, state);
                    let at = format!("{isa:?} n={n} k={k} d={d} {split:?} weight={}", start.0[1]);
                    assert_eq!(&got, want, "{at}");
                }
            }
        }
    }
}
