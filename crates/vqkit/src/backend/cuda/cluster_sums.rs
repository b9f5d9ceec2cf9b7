//! Host side of `kernels/cluster_sums.cu`: the grouping of rows by code (radix passes,
//! scans, group bounds), the fixed-order per-code reductions and the k-means update, in the
//! call sequence documented beside `vqkit_kernels::CLUSTER_SUMS_PTX`.

use super::{CudaBackend, CudaBuf, cfg, device, grid, to_u32};
use crate::backend::{Shape, check};
use crate::error::Result;
use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};

/// Rows per partial sum in `segment_partials` (`SEG_CHUNK` in `kernels/cluster_sums.cu`).
pub(super) const SEG_CHUNK: u32 = 256;
/// Rows per radix tile (`TILE` in `kernels/cluster_sums.cu`).
const RADIX_TILE: u32 = 256;
/// Entries per scan block (`SCAN_CHUNK` in `kernels/cluster_sums.cu`).
const SCAN_CHUNK: u32 = 4096;
unsafe impl DeviceRepr for RadixPass {}
unsafe impl DeviceRepr for SegShape {}
/// `struct RadixPass` of `kernels/cluster_sums.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct RadixPass {
    n: u32,
    k: u32,
    shift: u32,
    mask: u32,
    tiles: u32,
}

/// `struct SegShape` of `kernels/cluster_sums.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(super) struct SegShape {
    pub(super) k: u32,
    pub(super) d: u32,
}

/// A code grouping on the device: `order[offsets[j]..offsets[j + 1]]` are the rows of
/// code j in ascending order, cut into chunks `chunk_offsets[j]..chunk_offsets[j + 1]` of
/// at most `SEG_CHUNK` rows.
pub(super) struct Grouping {
    order: CudaSlice<u32>,
    offsets: CudaSlice<u32>,
    pub(super) chunk_offsets: CudaSlice<u32>,
    /// An upper bound on the number of chunks (the device knows the exact one).
    max_chunks: u32,
}

/// The `u32` scratch buffers of the grouping.
#[derive(Clone, Copy)]
pub(super) enum U32 {
    ScanSums,
    ScanOffsets,
    Offsets,
    ChunkOffsets,
    KeysA,
    ValsA,
    KeysB,
    ValsB,
    Hist,
    HistOffsets,
    Counts,
}

/// The `f64` scratch buffers of the reductions.
#[derive(Clone, Copy)]
pub(super) enum F64 {
    Partials,
    Total,
}

/// Device buffers reused from call to call instead of allocated and freed by each, as the
/// WGPU backend reuses its own: one slot per use, grown to the largest size asked. A call
/// takes what it needs out of the slots and gives it back when done (a concurrent call
/// finds a slot empty and allocates its own). Every kernel writes what it later reads, so
/// no buffer is cleared on reuse, except where the n = 0 path says so.
#[derive(Default)]
pub(super) struct Scratch {
    u32s: [Option<CudaSlice<u32>>; U32::Counts as usize + 1],
    f64s: [Option<CudaSlice<f64>>; F64::Total as usize + 1],
}

/// A scratch slot: which buffer of which element type, and the value that poisons it.
pub(super) trait Slot: Copy {
    type Elem: DeviceRepr + cudarc::driver::ValidAsZeroBits + Copy;
    const POISON: Self::Elem;
    fn cell(self, s: &mut Scratch) -> &mut Option<CudaSlice<Self::Elem>>;
}

impl Slot for U32 {
    type Elem = u32;
    const POISON: u32 = u32::MAX;
    fn cell(self, s: &mut Scratch) -> &mut Option<CudaSlice<u32>> {
        &mut s.u32s[self as usize]
    }
}

impl Slot for F64 {
    type Elem = f64;
    const POISON: f64 = f64::NAN;
    fn cell(self, s: &mut Scratch) -> &mut Option<CudaSlice<f64>> {
        &mut s.f64s[self as usize]
    }
}

impl CudaBackend {
    /// The scratch buffer of `slot`, of at least `len` elements.
    pub(super) fn take<S: Slot>(&self, slot: S, len: usize) -> Result<CudaSlice<S::Elem>> {
        let kept = self
            .scratch
            .lock()
            .ok()
            .and_then(|mut s| slot.cell(&mut s).take());
        let mut b = match kept {
            Some(b) if b.len() >= len.max(1) => b,
            _ => self.alloc(len)?,
        };
        self.poison(&mut b, S::POISON)?;
        Ok(b)
    }

    /// Gives a buffer back to `slot` for the next call.
    pub(super) fn give<S: Slot>(&self, slot: S, buf: CudaSlice<S::Elem>) {
        if let Ok(mut s) = self.scratch.lock() {
            *slot.cell(&mut s) = Some(buf);
        }
    }

    /// In builds with debug assertions (the tests), fills a scratch buffer, fresh or reused,
    /// with `v`, so that a kernel reading what it did not write in this call fails the
    /// parity suite instead of passing on zeros or on the previous call's values.
    fn poison<T: DeviceRepr + Copy>(&self, buf: &mut CudaSlice<T>, v: T) -> Result<()> {
        if cfg!(debug_assertions) {
            self.stream
                .memcpy_htod(&vec![v; buf.len()], buf)
                .map_err(device)?;
        }
        Ok(())
    }

    /// Gives a grouping's buffers back to the scratch slots.
    pub(super) fn give_grouping(&self, g: Grouping) {
        self.give(U32::ValsA, g.order);
        self.give(U32::Offsets, g.offsets);
        self.give(U32::ChunkOffsets, g.chunk_offsets);
    }
    /// Exclusive scan: `out[i] = sum_{i' < i} ceil(input[i'] / divisor)`, `out[len]` the
    /// total; `out` has `len + 1` entries.
    fn scan<T>(
        &self,
        input: &CudaSlice<T>,
        len: u32,
        divisor: u32,
        out: &mut CudaSlice<u32>,
    ) -> Result<()> {
        let blocks = len.div_ceil(SCAN_CHUNK).max(1);
        let mut sums = self.take(U32::ScanSums, blocks as usize)?;
        let mut offs = self.take(U32::ScanOffsets, blocks as usize + 1)?;
        let one = 1u32;
        // SAFETY: scan_reduce(const u32* in, u32 len, u32 divisor, u32* block_sums): reads
        // in[0..len) (input holds len u32s), writes block_sums[0..blocks).
        unsafe {
            self.stream
                .launch_builder(&self.kernels.scan_reduce)
                .arg(input)
                .arg(&len)
                .arg(&divisor)
                .arg(&mut sums)
                .launch(cfg(blocks, 1024))
        }
        .map_err(device)?;
        // SAFETY: scan_exclusive(const u32* in, u32 len, u32 divisor, u32* out): reads
        // sums[0..blocks), writes offs[0..=blocks).
        unsafe {
            self.stream
                .launch_builder(&self.kernels.scan_exclusive)
                .arg(&sums)
                .arg(&blocks)
                .arg(&one)
                .arg(&mut offs)
                .launch(cfg(1, 1024))
        }
        .map_err(device)?;
        // SAFETY: scan_apply(const u32* in, u32 len, u32 divisor, const u32* block_offsets,
        // u32* out): reads in[0..len) and offs[0..=blocks), writes out[0..=len).
        unsafe {
            self.stream
                .launch_builder(&self.kernels.scan_apply)
                .arg(input)
                .arg(&len)
                .arg(&divisor)
                .arg(&offs)
                .arg(out)
                .launch(cfg(blocks, 1024))
        }
        .map_err(device)?;
        self.give(U32::ScanSums, sums);
        self.give(U32::ScanOffsets, offs);
        Ok(())
    }

    /// One stable radix pass: histogram, scan, scatter. `vals_in = None` means row ids.
    #[allow(clippy::too_many_arguments)]
    fn radix_pass<K>(
        &self,
        keys_in: &CudaSlice<K>,
        vals_in: Option<&CudaSlice<u32>>,
        p: RadixPass,
        hist: &mut CudaSlice<u32>,
        hist_offsets: &mut CudaSlice<u32>,
        keys_out: &mut CudaSlice<u32>,
        vals_out: &mut CudaSlice<u32>,
    ) -> Result<()> {
        // SAFETY: radix_histogram(const u32* keys, RadixPass p, u32* hist): reads
        // keys[0..p.n), writes hist[0..(p.mask + 1) * p.tiles); grid p.tiles, block 256.
        unsafe {
            self.stream
                .launch_builder(&self.kernels.radix_histogram)
                .arg(keys_in)
                .arg(&p)
                .arg(&mut *hist)
                .launch(cfg(p.tiles, RADIX_TILE))
        }
        .map_err(device)?;
        self.scan(&*hist, (p.mask + 1) * p.tiles, 1, hist_offsets)?;
        let null: u64 = 0;
        let mut b = self.stream.launch_builder(&self.kernels.radix_scatter);
        b.arg(keys_in);
        match vals_in {
            Some(v) => b.arg(v),
            None => b.arg(&null),
        };
        b.arg(&p).arg(&*hist_offsets).arg(keys_out).arg(vals_out);
        // SAFETY: radix_scatter(const u32* keys_in, const u32* vals_in or null, RadixPass p,
        // const u32* offsets, u32* keys_out, u32* vals_out): reads keys_in and vals_in
        // [0..p.n) and offsets[0..=bins*tiles); each live row writes one distinct slot
        // < p.n of keys_out and vals_out (the slots are a permutation of 0..p.n).
        unsafe { b.launch(cfg(p.tiles, RADIX_TILE)) }.map_err(device)?;
        Ok(())
    }

    /// Groups rows by code (codes >= k are left out) and writes `counts[j]` (k entries).
    pub(super) fn group<C: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        idx: &CudaSlice<u8>,
        n: u32,
        k: u32,
        counts: &mut CudaSlice<C>,
    ) -> Result<Grouping> {
        let mut offsets = self.take(U32::Offsets, k as usize + 1)?;
        let mut chunk_offsets = self.take(U32::ChunkOffsets, k as usize + 1)?;
        let mut ka = self.take(U32::KeysA, n as usize)?;
        let mut va = self.take(U32::ValsA, n as usize)?;
        let max_chunks = n.div_ceil(SEG_CHUNK) + k;
        if n > 0 {
            // Keys are codes clamped to k (the "ignored" bucket, sorted last).
            let bits = 32 - k.leading_zeros();
            let passes = bits.div_ceil(8);
            let digit = bits.div_ceil(passes);
            let tiles = n.div_ceil(RADIX_TILE);
            let bins = 1u32 << digit;
            let mut hist = self.take(U32::Hist, (bins * tiles) as usize)?;
            let mut hoff = self.take(U32::HistOffsets, (bins * tiles) as usize + 1)?;
            let mut kb = self.take(U32::KeysB, n as usize)?;
            let mut vb = self.take(U32::ValsB, n as usize)?;
            let pass = |i: u32| RadixPass {
                n,
                k,
                shift: i * digit,
                mask: bins - 1,
                tiles,
            };
            self.radix_pass(idx, None, pass(0), &mut hist, &mut hoff, &mut ka, &mut va)?;
            for i in 1..passes {
                self.radix_pass(
                    &ka,
                    Some(&va),
                    pass(i),
                    &mut hist,
                    &mut hoff,
                    &mut kb,
                    &mut vb,
                )?;
                std::mem::swap(&mut ka, &mut kb);
                std::mem::swap(&mut va, &mut vb);
            }
            // SAFETY: group_bounds(const u32* sorted, u32 n, u32 k, u32* offsets, u32* counts):
            // binary searches sorted[0..n) (ka: n sorted keys), writes offsets[0..=k) and
            // counts[0..k) (counts holds k u32s).
            unsafe {
                self.stream
                    .launch_builder(&self.kernels.group_bounds)
                    .arg(&ka)
                    .arg(&n)
                    .arg(&k)
                    .arg(&mut offsets)
                    .arg(&mut *counts)
                    .launch(cfg(grid(k as u64 + 1, 256)?, 256))
            }
            .map_err(device)?;
            self.scan(&*counts, k, SEG_CHUNK, &mut chunk_offsets)?;
            self.give(U32::Hist, hist);
            self.give(U32::HistOffsets, hoff);
            self.give(U32::KeysB, kb);
            self.give(U32::ValsB, vb);
        } else {
            // No rows: zero counts, and zero offsets to say "no chunks".
            self.stream.memset_zeros(counts).map_err(device)?;
            self.stream.memset_zeros(&mut offsets).map_err(device)?;
            self.stream
                .memset_zeros(&mut chunk_offsets)
                .map_err(device)?;
        }
        self.give(U32::KeysA, ka);
        Ok(Grouping {
            order: va,
            offsets,
            chunk_offsets,
            max_chunks,
        })
    }

    /// f64 partial sums of code chunks of `[x_i, dist_i]` (or `x_i` with no dist):
    /// `(max_chunks, cols)` with `cols = d + dist.is_some()`.
    pub(super) fn segment_partials(
        &self,
        x: &CudaSlice<u8>,
        dist: Option<&CudaSlice<u8>>,
        g: &Grouping,
        s: SegShape,
    ) -> Result<CudaSlice<f64>> {
        let cols = s.d + dist.is_some() as u32;
        let mut partials = self.take(F64::Partials, g.max_chunks as usize * cols as usize)?;
        let block = cols.div_ceil(32).clamp(1, 8) * 32;
        let null: u64 = 0;
        let mut b = self.stream.launch_builder(&self.kernels.segment_partials);
        b.arg(x);
        match dist {
            Some(v) => b.arg(v),
            None => b.arg(&null),
        };
        b.arg(&g.order)
            .arg(&g.offsets)
            .arg(&g.chunk_offsets)
            .arg(&s)
            .arg(&mut partials);
        // SAFETY: segment_partials(const f32* x, const f32* dist or null, const u32* order,
        // const u32* offsets, const u32* chunk_offsets, SegShape s, f64* partials): block c
        // < chunk_offsets[k] <= max_chunks reads rows order[offsets[j]..offsets[j+1]) < n of
        // x (n * d f32) and dist (n f32), writes partials[c * cols..(c + 1) * cols).
        unsafe { b.launch(cfg(g.max_chunks, block)) }.map_err(device)?;
        Ok(partials)
    }

    #[allow(clippy::too_many_arguments)] // the trait method's arguments, passed through
    pub(super) fn launch_cluster_sums(
        &self,
        x: &CudaBuf<f32>,
        idx: &CudaBuf<u32>,
        dist: &CudaBuf<f32>,
        shape: Shape,
        sums: &mut CudaBuf<f32>,
        counts: &mut CudaBuf<u32>,
        dist_sums: &mut CudaBuf<f32>,
    ) -> Result<()> {
        check::cluster_sums(
            shape,
            x.len,
            idx.len,
            dist.len,
            sums.len,
            counts.len,
            dist_sums.len,
        )?;
        let Shape { n, k, d } = shape;
        let (n, k, d) = (to_u32("n", n)?, to_u32("k", k)?, to_u32("d", d)?);
        let g = self.group(&idx.bytes, n, k, &mut counts.bytes)?;
        let s = SegShape { k, d };
        let partials = self.segment_partials(&x.bytes, Some(&dist.bytes), &g, s)?;
        // SAFETY: finalize_sums(const f64* partials, const u32* chunk_offsets, SegShape s,
        // f32* sums, f32* dist_sums): thread (j, t) < k * (d + 1) reads its code's chunk
        // rows of partials (< max_chunks) and writes sums[j*d + t] (k*d f32, checked) or
        // dist_sums[j] (k f32, checked).
        unsafe {
            self.stream
                .launch_builder(&self.kernels.finalize_sums)
                .arg(&partials)
                .arg(&g.chunk_offsets)
                .arg(&s)
                .arg(&mut sums.bytes)
                .arg(&mut dist_sums.bytes)
                .launch(cfg(grid(k as u64 * (d as u64 + 1), 256)?, 256))
        }
        .map_err(device)?;
        self.give(F64::Partials, partials);
        self.give_grouping(g);
        Ok(())
    }

    pub(super) fn launch_kmeans_update(
        &self,
        sums: &CudaBuf<f32>,
        counts: &CudaBuf<u32>,
        k: usize,
        d: usize,
        centroids: &mut CudaBuf<f32>,
    ) -> Result<()> {
        check::update(k, d, sums.len, counts.len, centroids.len)?;
        let s = SegShape {
            k: to_u32("k", k)?,
            d: to_u32("d", d)?,
        };
        // SAFETY: kmeans_update(const f32* sums, const u32* counts, SegShape s,
        // f32* centroids): element e < k*d reads sums[e], counts[e / d] and writes
        // centroids[e] (lengths checked above).
        unsafe {
            self.stream
                .launch_builder(&self.kernels.kmeans_update)
                .arg(&sums.bytes)
                .arg(&counts.bytes)
                .arg(&s)
                .arg(&mut centroids.bytes)
                .launch(cfg(grid(k as u64 * d as u64, 256)?, 256))
        }
        .map_err(device)?;
        Ok(())
    }
}
