//! Rows of a file read a chunk at a time, so that a command holds one chunk and never the
//! whole file: `.npy` (2-D or 1-D; f32, f64, f16, u8 as points, any integer type as codes;
//! either byte order; C order, or Fortran order transposed as it is read) and the TEXMEX
//! formats of the SIFT1B and ANN benchmarks, `.fvecs` (f32), `.bvecs` (u8) and `.ivecs`
//! (i32), where every row is a little-endian i32 dimension followed by its values.
//!
//! [`RowReader::open`] reads and checks the header before any row: a missing or truncated
//! file, a wrong dtype or shape, or a `.?vecs` file that is not a whole number of rows of
//! its first row's dimension is an [`Error::Format`] naming the file. Each row's own
//! dimension is checked again as the rows are read (a ragged file whose length happens to
//! be a whole number of rows fails at its first row of another dimension).
//!
//! A Fortran-order `(n, d)` `.npy` stores column 0 first: a chunk of rows `i..j` is read
//! as `d` runs of `j - i` elements, one seek and one read per column.

use super::npy::{self, Dtype};
use crate::error::{Error, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes of f32 a default chunk holds ([`RowReader::chunk_rows`]).
pub const CHUNK_BYTES: usize = 16 << 20;

/// How the rows lie in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// `.npy` data from `start`: `fortran` means column-major.
    Npy { fortran: bool, big_endian: bool },
    /// `.fvecs`, `.bvecs`, `.ivecs`: an i32 dimension before each row.
    Vecs,
}

/// The file formats [`RowReader`] reads, by extension.
pub const EXTENSIONS: &str = ".npy, .fvecs, .bvecs or .ivecs";

/// Rows of a file, read a chunk at a time (see the [module](self)).
pub struct RowReader {
    path: PathBuf,
    file: File,
    layout: Layout,
    dtype: Dtype,
    /// Byte offset of the first row.
    start: u64,
    rows: usize,
    d: usize,
    /// The next row to read.
    next: usize,
    /// Raw element bytes of the current chunk in C order, little-endian.
    raw: Vec<u8>,
    /// One column of a Fortran-order chunk, or the rows of a `.?vecs` chunk as stored.
    scratch: Vec<u8>,
}

impl RowReader {
    /// Opens a file and reads and checks its header; no row is read.
    pub fn open(path: &Path) -> Result<Self> {
        let io_err = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let bad = |reason: String| Error::format(path, reason);
        let mut file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let ext = path.extension().and_then(|e| e.to_str());
        let (layout, dtype, start, rows, d) = match ext {
            Some("npy") => {
                let mut prefix = Vec::with_capacity(12);
                (&mut file)
                    .take(12)
                    .read_to_end(&mut prefix)
                    .map_err(io_err)?;
                let hlen = npy::header_len(&prefix).map_err(bad)?;
                if (len as u128) < hlen as u128 {
                    return Err(bad("truncated .npy header".into()));
                }
                let mut head = vec![0u8; hlen];
                file.seek(SeekFrom::Start(0)).map_err(io_err)?;
                file.read_exact(&mut head).map_err(io_err)?;
                let h = npy::parse_header(&head).map_err(bad)?;
                let (n, d) = match h.shape[..] {
                    [n, d] => (n, d),
                    [n] => (n, 1),
                    _ => {
                        return Err(bad(format!(
                            "expected a 2-D array of rows, got shape {:?}",
                            h.shape
                        )));
                    }
                };
                if d == 0 {
                    return Err(bad("rows of dimension 0".into()));
                }
                let need = h.data_start as u128 + h.data_len as u128;
                if (len as u128) < need {
                    return Err(bad(format!(
                        "truncated: the header promises {} bytes of data, the file has {}",
                        h.data_len,
                        len.saturating_sub(h.data_start as u64)
                    )));
                }
                let layout = Layout::Npy {
                    fortran: h.fortran,
                    big_endian: h.big_endian,
                };
                (layout, h.dtype, h.data_start as u64, n, d)
            }
            Some(kind @ ("fvecs" | "bvecs" | "ivecs")) => {
                let dtype = match kind {
                    "fvecs" => Dtype::F32,
                    "bvecs" => Dtype::U8,
                    _ => Dtype::I32,
                };
                if len == 0 {
                    return Err(bad("the file holds no vectors".into()));
                }
                let mut head = [0u8; 4];
                if len < 4 {
                    return Err(bad(format!("truncated: {len} stray bytes before vector 0")));
                }
                file.read_exact(&mut head).map_err(io_err)?;
                let d = i32::from_le_bytes(head);
                if d <= 0 {
                    return Err(bad(format!("vector 0 declares dimension {d}")));
                }
                let d = d as usize;
                let rb = 4 + (d * dtype.size()) as u64;
                if len % rb != 0 {
                    return Err(bad(format!(
                        "truncated or ragged: {len} bytes are not a whole number of \
                         {rb}-byte rows of dimension {d} (the first vector's)"
                    )));
                }
                let rows = (len / rb) as usize;
                // The last row's dimension too: a cheap check of the whole file's shape.
                file.seek(SeekFrom::Start(len - rb)).map_err(io_err)?;
                file.read_exact(&mut head).map_err(io_err)?;
                let last = i32::from_le_bytes(head);
                if last as i64 != d as i64 {
                    return Err(bad(format!(
                        "ragged: vector {} has dimension {last}, the first had {d}",
                        rows - 1
                    )));
                }
                (Layout::Vecs, dtype, 0, rows, d)
            }
            _ => {
                return Err(bad(format!(
                    "unknown file type: expected a {EXTENSIONS} file"
                )));
            }
        };
        let mut r = RowReader {
            path: path.to_path_buf(),
            file,
            layout,
            dtype,
            start,
            rows,
            d,
            next: 0,
            raw: Vec::new(),
            scratch: Vec::new(),
        };
        r.rewind()?;
        Ok(r)
    }

    /// Number of rows in the file.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn d(&self) -> usize {
        self.d
    }

    /// The element type stored in the file.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows read since the start (or the last [`rewind`](Self::rewind)).
    pub fn position(&self) -> usize {
        self.next
    }

    /// Rows not yet read.
    pub fn remaining(&self) -> usize {
        self.rows - self.next
    }

    /// Rows per chunk such that a chunk of f32 holds about [`CHUNK_BYTES`] (at least one).
    pub fn chunk_rows(&self) -> usize {
        (CHUNK_BYTES / self.d.saturating_mul(4)).max(1)
    }

    /// Back to the first row.
    pub fn rewind(&mut self) -> Result<()> {
        self.file
            .seek(SeekFrom::Start(self.start))
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        self.next = 0;
        Ok(())
    }

    /// An error unless the file holds points: floats or bytes, or any `.?vecs` file (an
    /// integer `.npy` holds codes).
    pub fn expect_points(&self) -> Result<()> {
        let points = matches!(self.dtype, Dtype::F16 | Dtype::F32 | Dtype::F64 | Dtype::U8)
            || self.layout == Layout::Vecs;
        if points {
            return Ok(());
        }
        Err(Error::format(
            &self.path,
            format!("expected f32, f64, f16 or u8 points, got {:?}", self.dtype),
        ))
    }

    /// An error unless the file holds integer codes (any integer `.npy`, `.bvecs`, `.ivecs`).
    pub fn expect_codes(&self) -> Result<()> {
        if matches!(self.dtype, Dtype::F16 | Dtype::F32 | Dtype::F64) {
            return Err(Error::format(
                &self.path,
                format!("expected integer codes, got {:?}", self.dtype),
            ));
        }
        Ok(())
    }

    /// Reads up to `max_rows` rows of points as f32 into `out` (replacing its contents) and
    /// returns how many; 0 at the end. Integer `.npy` files are refused: they hold codes.
    pub fn next_chunk(&mut self, max_rows: usize, out: &mut Vec<f32>) -> Result<usize> {
        self.expect_points()?;
        if self.f32_in_place() {
            let rows = max_rows.min(self.rows - self.next);
            sized(out, rows * self.d)?;
            self.read_into(out)?;
            self.next += rows;
            return Ok(rows);
        }
        out.clear();
        let rows = self.fill(max_rows)?;
        grow(out, rows * self.d)?;
        let b = &self.raw;
        match self.dtype {
            Dtype::F32 => out.extend(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            Dtype::F64 => out.extend(b.chunks_exact(8).map(|c| {
                f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
            })),
            Dtype::F16 => out.extend(
                b.chunks_exact(2)
                    .map(|c| npy::f16_to_f32(u16::from_le_bytes([c[0], c[1]]))),
            ),
            Dtype::U8 => out.extend(b.iter().map(|&v| v as f32)),
            Dtype::I32 => out.extend(
                b.chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32),
            ),
            Dtype::I8 | Dtype::U16 | Dtype::I16 | Dtype::U32 | Dtype::I64 | Dtype::U64 => {
                unreachable!("refused above")
            }
        }
        Ok(rows)
    }

    /// Calls `f(first, rows)` on each remaining chunk of up to `max_rows` rows of points in
    /// order (`first`: the index of its first row), while a second thread reads the next
    /// chunk, so that reading the file and working on it overlap. The chunks are those of
    /// [`Self::next_chunk`]. The first error, from reading or from `f`, ends it and is
    /// returned; the rows after it are not read.
    pub fn for_each_chunk(
        &mut self,
        max_rows: usize,
        mut f: impl FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        use std::sync::mpsc;
        self.expect_points()?;
        std::thread::scope(|scope| {
            // Two buffers: one being read, one being worked on. The channels' ends that stay
            // here are this closure's own, dropped when it returns, before the scope waits
            // for the reader: an error from `f` then ends the reader wherever it waits (a
            // send of the next chunk, or a receive of a spare buffer).
            let (chunk_tx, chunks) = mpsc::sync_channel::<Result<(usize, Vec<f32>)>>(1);
            let (spare_tx, spares) = mpsc::channel::<Vec<f32>>();
            let _ = spare_tx.send(Vec::new());
            scope.spawn(move || {
                let mut buf = Vec::new();
                loop {
                    let first = self.next;
                    let read = self.next_chunk(max_rows, &mut buf);
                    let sent = match read {
                        Ok(0) => return,
                        Ok(_) => chunk_tx.send(Ok((first, buf))),
                        Err(e) => {
                            let _ = chunk_tx.send(Err(e));
                            return;
                        }
                    };
                    // The worker hung up (an error of its own): stop reading.
                    let Ok(()) = sent else { return };
                    buf = match spares.recv() {
                        Ok(b) => b,
                        Err(_) => return,
                    };
                }
            });
            for chunk in chunks {
                let (first, buf) = chunk?;
                f(first, &buf)?;
                let _ = spare_tx.send(buf);
            }
            Ok(())
        })
    }

    /// Reads up to `max_rows` rows of integer codes (values in `0..2^32`) into `out`
    /// (replacing its contents) and returns how many; 0 at the end. Float files are refused.
    pub fn next_codes(&mut self, max_rows: usize, out: &mut Vec<u32>) -> Result<usize> {
        let first = self.next;
        self.expect_codes()?;
        out.clear();
        let rows = self.fill(max_rows)?;
        grow(out, rows * self.d)?;
        if let Err((at, v)) = npy::extend_codes(self.dtype, &self.raw, out) {
            return Err(Error::format(
                &self.path,
                format!(
                    "code {v} (row {}) is out of range",
                    first + at / self.d.max(1)
                ),
            ));
        }
        Ok(rows)
    }

    /// The rows at `sorted` (ascending, distinct, below [`RowReader::rows`]), read from
    /// the first row a chunk at a time: memory holds one chunk and the selected rows,
    /// whatever the file's size.
    pub fn read_rows(&mut self, sorted: &[usize]) -> Result<super::Matrix> {
        if sorted.windows(2).any(|w| w[0] >= w[1]) || sorted.last().is_some_and(|&i| i >= self.rows)
        {
            return Err(Error::invalid(
                "rows",
                format!(
                    "row indices must be ascending, distinct and below {}",
                    self.rows
                ),
            ));
        }
        self.rewind()?;
        let d = self.d;
        let len = sorted
            .len()
            .checked_mul(d)
            .ok_or_else(|| Error::format(&self.path, "the shape overflows"))?;
        let mut data = crate::resources::reserve::<f32>("the sampled points", len)?;
        let mut chunk = Vec::new();
        let mut want = sorted.iter().peekable();
        while want.peek().is_some() {
            let first = self.next;
            let got = self.next_chunk(self.chunk_rows(), &mut chunk)?;
            if got == 0 {
                break;
            }
            while let Some(&&i) = want.peek() {
                if i >= first + got {
                    break;
                }
                data.extend_from_slice(&chunk[(i - first) * d..(i - first + 1) * d]);
                want.next();
            }
        }
        Ok(super::Matrix {
            rows: sorted.len(),
            cols: d,
            data,
        })
    }

    /// Reads every remaining row of points into one matrix.
    pub fn read_all(&mut self) -> Result<super::Matrix> {
        let rows = self.remaining();
        let len = rows
            .checked_mul(self.d)
            .ok_or_else(|| Error::format(&self.path, "the shape overflows"))?;
        if self.f32_in_place() {
            // Fresh zero pages, each faulted in by the read that fills it: one pass.
            let mut data = crate::resources::zeroed_lazy::<f32>("the points", len)?;
            self.read_into(&mut data)?;
            self.next += rows;
            return Ok(super::Matrix {
                rows,
                cols: self.d,
                data,
            });
        }
        let mut data = crate::resources::reserve::<f32>("the points", len)?;
        let mut chunk = Vec::new();
        while self.next_chunk(self.chunk_rows(), &mut chunk)? > 0 {
            data.extend_from_slice(&chunk);
        }
        Ok(super::Matrix {
            rows,
            cols: self.d,
            data,
        })
    }

    /// Whether the file's rows are the f32 values a chunk holds, byte for byte
    /// (little-endian f32 in C order): they are then read straight into the chunk, without
    /// the raw bytes' buffer and the conversion pass. At 100,000 x 2048 (819 MB), `perf`
    /// of `vqkit assign` put a third of the process in that pass and in clearing the
    /// buffer before each read.
    fn f32_in_place(&self) -> bool {
        self.dtype == Dtype::F32
            && self.layout
                == (Layout::Npy {
                    fortran: false,
                    big_endian: false,
                })
    }

    /// Fills `out` with the next `out.len()` floats of a file that [`Self::f32_in_place`].
    fn read_into(&mut self, out: &mut [f32]) -> Result<()> {
        self.file
            .read_exact(bytemuck::cast_slice_mut(out))
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Reads up to `max_rows` rows into `self.raw` as little-endian elements in C order.
    fn fill(&mut self, max_rows: usize) -> Result<usize> {
        let rows = max_rows.min(self.rows - self.next);
        if rows == 0 {
            self.raw.clear();
            return Ok(0);
        }
        let (d, size) = (self.d, self.dtype.size());
        let io_err = |path: &Path, source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        match self.layout {
            Layout::Npy {
                fortran: false,
                big_endian,
            } => {
                sized(&mut self.raw, rows * d * size)?;
                self.file
                    .read_exact(&mut self.raw)
                    .map_err(|e| io_err(&self.path, e))?;
                if big_endian && size > 1 {
                    npy::swap_bytes(&mut self.raw, size);
                }
            }
            Layout::Npy {
                fortran: true,
                big_endian,
            } => {
                self.raw.clear();
                grow(&mut self.raw, rows * d * size)?;
                self.raw.resize(rows * d * size, 0);
                self.scratch.clear();
                grow(&mut self.scratch, rows * size)?;
                self.scratch.resize(rows * size, 0);
                for j in 0..d {
                    let at = self.start + ((j * self.rows + self.next) * size) as u64;
                    self.file
                        .seek(SeekFrom::Start(at))
                        .and_then(|_| self.file.read_exact(&mut self.scratch))
                        .map_err(|e| io_err(&self.path, e))?;
                    for (i, v) in self.scratch.chunks_exact(size).enumerate() {
                        self.raw[(i * d + j) * size..][..size].copy_from_slice(v);
                    }
                }
                if big_endian && size > 1 {
                    npy::swap_bytes(&mut self.raw, size);
                }
            }
            Layout::Vecs => {
                self.raw.clear();
                let rb = 4 + d * size;
                self.scratch.clear();
                grow(&mut self.scratch, rows * rb)?;
                self.scratch.resize(rows * rb, 0);
                self.file
                    .read_exact(&mut self.scratch)
                    .map_err(|e| io_err(&self.path, e))?;
                grow(&mut self.raw, rows * d * size)?;
                for (r, row) in self.scratch.chunks_exact(rb).enumerate() {
                    let dim = i32::from_le_bytes([row[0], row[1], row[2], row[3]]);
                    if dim as i64 != d as i64 {
                        return Err(Error::format(
                            &self.path,
                            format!(
                                "ragged: vector {} has dimension {dim}, the first had {d}",
                                self.next + r
                            ),
                        ));
                    }
                    self.raw.extend_from_slice(&row[4..]);
                }
            }
        }
        self.next += rows;
        Ok(rows)
    }
}

/// `v` resized to `len` values, or [`Error::OutOfMemory`] when they do not fit. A buffer
/// reused from chunk to chunk is not cleared again: its values are about to be overwritten.
fn sized<T: Clone + Default>(v: &mut Vec<T>, len: usize) -> Result<()> {
    if v.len() < len {
        v.clear();
        grow(v, len)?;
        v.resize(len, T::default());
    }
    v.truncate(len);
    Ok(())
}

/// Room for `len` values in an empty `v`, or [`Error::OutOfMemory`] (instead of the
/// allocator's abort) when a chunk does not fit.
fn grow<T>(v: &mut Vec<T>, len: usize) -> Result<()> {
    crate::resources::grow("a chunk of rows", v, len)
}

/// `m.min(n)` distinct indices below `n`, drawn uniformly and returned sorted (Floyd's
/// algorithm: memory for the `m` indices only, whatever `n`).
pub fn sample_rows(n: usize, m: usize, rng: &mut crate::rng::Rng) -> Vec<usize> {
    let m = m.min(n);
    let mut chosen = std::collections::HashSet::with_capacity(m);
    for j in n - m..n {
        let t = rng.below(j + 1);
        if !chosen.insert(t) {
            chosen.insert(j);
        }
    }
    let mut v: Vec<usize> = chosen.into_iter().collect();
    v.sort_unstable();
    v
}

/// The points of a file for training: every row when `m` is 0 or at least the file's
/// rows, otherwise `m` rows drawn uniformly with `seed` and read a chunk at a time, so
/// that the file need not fit in memory. Returns the matrix and the file's row count.
pub fn read_training(path: &Path, m: usize, seed: u64) -> Result<(super::Matrix, usize)> {
    let mut r = RowReader::open(path)?;
    r.expect_points()?;
    let n = r.rows();
    if m == 0 || m >= n {
        return Ok((r.read_all()?, n));
    }
    let rows = sample_rows(n, m, &mut crate::rng::Rng::new(seed));
    Ok((r.read_rows(&rows)?, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vqkit-rows-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn vecs(rows: &[Vec<i32>], elem: impl Fn(i32) -> Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        for r in rows {
            out.extend((r.len() as i32).to_le_bytes());
            for &v in r {
                out.extend(elem(v));
            }
        }
        out
    }

    fn all(r: &mut RowReader, chunk: usize) -> Vec<f32> {
        let (mut out, mut part) = (Vec::new(), Vec::new());
        while r.next_chunk(chunk, &mut part).unwrap() > 0 {
            out.extend_from_slice(&part);
        }
        out
    }

    #[test]
    fn samples_are_distinct_sorted_uniform_and_read_across_chunks() {
        let mut rng = crate::rng::Rng::new(5);
        for (n, m) in [(10, 0), (10, 3), (10, 10), (10, 25), (1_000_000_000, 1000)] {
            let s = sample_rows(n, m, &mut rng);
            assert_eq!(s.len(), m.min(n));
            assert!(s.windows(2).all(|w| w[0] < w[1]) && s.iter().all(|&i| i < n));
        }
        // Every index equally likely: 20,000 draws of 3 of 10, each index about 6,000 times.
        let mut hits = [0usize; 10];
        for _ in 0..20_000 {
            for i in sample_rows(10, 3, &mut rng) {
                hits[i] += 1;
            }
        }
        assert!(hits.iter().all(|&h| (5600..6400).contains(&h)), "{hits:?}");

        let dir = scratch("sample");
        let (n, d) = (1000usize, 5usize);
        let x: Vec<f32> = (0..n * d).map(|v| v as f32).collect();
        let path = dir.join("x.npy");
        npy::write_f32(&path, &[n, d], &x).unwrap();
        let mut r = RowReader::open(&path).unwrap();
        let pick = [0, 1, 317, 318, 999];
        let want: Vec<f32> = pick
            .iter()
            .flat_map(|&i| x[i * d..(i + 1) * d].to_vec())
            .collect();
        assert_eq!(r.read_rows(&pick).unwrap().data, want);
        // Again, from wherever the reader stands.
        assert_eq!(r.read_rows(&pick).unwrap().data, want);
        assert!(r.read_rows(&[3, 2]).is_err());
        assert!(r.read_rows(&[1000]).is_err());
        let (all, rows) = read_training(&path, 0, 1).unwrap();
        assert_eq!((all.data, rows), (x.clone(), n));
        let (some, _) = read_training(&path, 10, 1).unwrap();
        assert_eq!(some.rows, 10);
        let (again, _) = read_training(&path, 10, 1).unwrap();
        assert_eq!(some.data, again.data);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn every_format_reads_the_same_rows_in_chunks_of_any_size() {
        let dir = scratch("formats");
        let (n, d) = (7usize, 3usize);
        let want: Vec<f32> = (0..n * d).map(|v| v as f32).collect();
        let rows: Vec<Vec<i32>> = (0..n)
            .map(|i| (0..d).map(|j| (i * d + j) as i32).collect())
            .collect();
        let c = dir.join("c.npy");
        npy::write_f32(&c, &[n, d], &want).unwrap();
        // Fortran order: column j holds want[i * d + j] for every i.
        let mut f = npy::header_f32(&[n, d]);
        let at = f.windows(5).position(|w| w == b"False").unwrap();
        f[at..at + 5].copy_from_slice(b"True ");
        for j in 0..d {
            for i in 0..n {
                f.extend(want[i * d + j].to_le_bytes());
            }
        }
        let fo = dir.join("f.npy");
        std::fs::write(&fo, f).unwrap();
        let fv = dir.join("x.fvecs");
        std::fs::write(&fv, vecs(&rows, |v| (v as f32).to_le_bytes().to_vec())).unwrap();
        let bv = dir.join("x.bvecs");
        std::fs::write(&bv, vecs(&rows, |v| vec![v as u8])).unwrap();
        let iv = dir.join("x.ivecs");
        std::fs::write(&iv, vecs(&rows, |v| v.to_le_bytes().to_vec())).unwrap();
        for p in [&c, &fo, &fv, &bv, &iv] {
            for chunk in [1, 2, 3, 7, 100] {
                let mut r = RowReader::open(p).unwrap();
                assert_eq!((r.rows(), r.d()), (n, d), "{p:?}");
                assert_eq!(all(&mut r, chunk), want, "{p:?} in chunks of {chunk}");
                assert_eq!(r.remaining(), 0);
            }
            let mut r = RowReader::open(p).unwrap();
            assert_eq!(r.read_all().unwrap().data, want);
        }
        // Codes from an integer file, and the range check.
        let mut r = RowReader::open(&iv).unwrap();
        let mut codes = Vec::new();
        assert_eq!(r.next_codes(5, &mut codes).unwrap(), 5);
        assert_eq!(codes, (0..15).collect::<Vec<u32>>());
        let neg = dir.join("neg.ivecs");
        std::fs::write(
            &neg,
            vecs(&[vec![1, 2], vec![3, -4]], |v| v.to_le_bytes().to_vec()),
        )
        .unwrap();
        let e = RowReader::open(&neg)
            .unwrap()
            .next_codes(9, &mut codes)
            .unwrap_err()
            .to_string();
        assert!(e.contains("code -4 (row 1) is out of range"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_reused_chunk_buffer_of_any_size_reads_the_same_rows() {
        // Little-endian f32 in C order is read straight into the chunk; f64 and big-endian
        // f32 through the raw bytes. Both reuse their buffers, growing and shrinking.
        let dir = scratch("reuse");
        let (n, d) = (11usize, 5usize);
        let want: Vec<f32> = (0..n * d).map(|v| v as f32 * 0.5 - 3.0).collect();
        let le = dir.join("le.npy");
        npy::write_f32(&le, &[n, d], &want).unwrap();
        let mut be = npy::header_f32(&[n, d]);
        let at = be.windows(3).position(|w| w == b"<f4").unwrap();
        be[at] = b'>';
        for v in &want {
            be.extend(v.to_be_bytes());
        }
        let be_path = dir.join("be.npy");
        std::fs::write(&be_path, be).unwrap();
        let mut f64s = b"\x93NUMPY".to_vec();
        let text = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({n}, {d}), }}");
        let text = format!("{text:<118}\n");
        f64s.extend([1, 0]);
        f64s.extend((text.len() as u16).to_le_bytes());
        f64s.extend(text.as_bytes());
        for v in &want {
            f64s.extend((*v as f64).to_le_bytes());
        }
        let f64_path = dir.join("f64.npy");
        std::fs::write(&f64_path, f64s).unwrap();
        for p in [&le, &be_path, &f64_path] {
            let mut r = RowReader::open(p).unwrap();
            let (mut got, mut chunk) = (Vec::new(), vec![9.0f32; 100]);
            for rows in [2, 5, 1, 3, 4] {
                let read = r.next_chunk(rows, &mut chunk).unwrap();
                assert_eq!(chunk.len(), read * d, "{p:?}");
                got.extend_from_slice(&chunk);
            }
            assert_eq!(got, want, "{p:?}");
            assert_eq!(r.next_chunk(3, &mut chunk).unwrap(), 0);
            assert!(chunk.is_empty());
        }
        // Chunks read ahead on a second thread: the same rows, in order, with their first
        // row's index; an error from the worker ends the reading and is the one returned.
        for p in [&le, &be_path, &f64_path] {
            let mut r = RowReader::open(p).unwrap();
            let (mut got, mut firsts) = (Vec::new(), Vec::new());
            r.for_each_chunk(4, |first, rows| {
                firsts.push(first);
                got.extend_from_slice(rows);
                Ok(())
            })
            .unwrap();
            assert_eq!(
                (got.as_slice(), firsts.as_slice()),
                (&want[..], &[0, 4, 8][..])
            );
            assert_eq!(r.remaining(), 0);
            let mut r = RowReader::open(p).unwrap();
            let mut calls = 0;
            let e = r
                .for_each_chunk(2, |first, _| {
                    calls += 1;
                    match first {
                        // By then the reader has sent the next chunk and waits for a
                        // spare buffer, which never comes back: it must still end (a
                        // reader left waiting there would hang this test).
                        2 => {
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            Err(Error::invalid("rows", "stop here"))
                        }
                        _ => Ok(()),
                    }
                })
                .unwrap_err();
            assert!(e.to_string().contains("stop here"), "{e}");
            assert_eq!(calls, 2);
        }
        // A file cut short after it was opened: an I/O error naming it, not a panic, from
        // either way of reading.
        let mut ahead = RowReader::open(&le).unwrap();
        let mut r = RowReader::open(&le).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&le)
            .unwrap()
            .set_len(200)
            .unwrap();
        let e = r.read_all().unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("le.npy"), "{e}");
        let mut rows = 0;
        let e = ahead
            .for_each_chunk(3, |_, x| {
                rows += x.len() / d;
                Ok(())
            })
            .unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        // 200 bytes hold the 128-byte header and 3.6 rows of 5 floats: the first chunk of 3
        // rows is whole, the second is cut short.
        assert_eq!(rows, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_are_format_errors_naming_the_file() {
        let dir = scratch("bad");
        let msg = |p: &Path| match RowReader::open(p) {
            Err(e @ Error::Format { .. }) => {
                let m = e.to_string();
                assert!(m.contains(&*p.to_string_lossy()), "{m}");
                m
            }
            Err(e) => panic!("{p:?}: expected a format error, got {e:?}"),
            Ok(_) => panic!("{p:?}: opened"),
        };
        let good = npy::f32_bytes(&[4, 2], &[1.0; 8]);
        let p = dir.join("t.npy");
        std::fs::write(&p, &good[..good.len() - 3]).unwrap();
        assert!(msg(&p).contains("truncated"));
        std::fs::write(&p, &good[..30]).unwrap();
        assert!(msg(&p).contains("truncated"));
        std::fs::write(&p, &good[..5]).unwrap();
        assert!(msg(&p).contains("magic"));
        std::fs::write(&p, npy::f32_bytes(&[1, 2, 2], &[0.0; 4])).unwrap();
        assert!(msg(&p).contains("2-D"));
        let mut c16 = good.clone();
        let at = c16.windows(3).position(|w| w == b"<f4").unwrap();
        c16[at + 1] = b'c';
        std::fs::write(&p, &c16).unwrap();
        assert!(msg(&p).contains("unsupported dtype"));
        // Integer points, float codes.
        std::fs::write(&p, npy::u32_bytes(&[2, 2], &[1, 2, 3, 4])).unwrap();
        let mut r = RowReader::open(&p).unwrap();
        let e = r.next_chunk(9, &mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("expected f32, f64, f16 or u8 points"), "{e}");
        std::fs::write(&p, &good).unwrap();
        let e = RowReader::open(&p)
            .unwrap()
            .next_codes(9, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected integer codes"), "{e}");

        let f = dir.join("x.fvecs");
        let two = vecs(&[vec![1, 2], vec![3, 4]], |v| {
            (v as f32).to_le_bytes().to_vec()
        });
        std::fs::write(&f, &two[..two.len() - 1]).unwrap();
        assert!(msg(&f).contains("truncated or ragged"));
        std::fs::write(&f, &two[..2]).unwrap();
        assert!(msg(&f).contains("truncated"));
        std::fs::write(&f, []).unwrap();
        assert!(msg(&f).contains("no vectors"));
        std::fs::write(&f, (-1i32).to_le_bytes()).unwrap();
        assert!(msg(&f).contains("dimension -1"));
        // Ragged: (2) (3) is 12 + 16 bytes, not whole rows of 12.
        let b = dir.join("x.bvecs");
        let ragged = vecs(&[vec![1, 2], vec![1, 2, 3]], |v| vec![v as u8]);
        std::fs::write(&b, &ragged).unwrap();
        assert!(msg(&b).contains("ragged"));
        // Ragged but a whole number of rows: (2) (1 1) (3) (2) in bytes is 6 + 5 + 7 + 6 =
        // 24 = 4 rows of 6; the last row's dimension is right, the second's is not.
        let sly = vecs(&[vec![1, 2], vec![1], vec![1, 2, 3], vec![1, 2]], |v| {
            vec![v as u8]
        });
        assert_eq!(sly.len(), 24);
        std::fs::write(&b, &sly).unwrap();
        let mut r = RowReader::open(&b).unwrap();
        let e = r.next_chunk(1, &mut Vec::new()).map(|_| ());
        assert!(e.is_ok());
        let e = r.next_chunk(1, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, Error::Format { .. }));
        assert!(e.to_string().contains("vector 1 has dimension 1"), "{e}");
        let p = dir.join("x.txt");
        std::fs::write(&p, "1 2 3").unwrap();
        assert!(msg(&p).contains("unknown file type"));
        assert!(matches!(
            RowReader::open(&dir.join("missing.npy")),
            Err(Error::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
