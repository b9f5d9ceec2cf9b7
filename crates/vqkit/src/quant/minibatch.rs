//! Mini-batch k-means (Sculley 2010) over a file streamed in batches, for data that does
//! not fit in memory: only one batch of rows, the centroids and their counts are held.
//!
//! ```text
//! per batch:  a_i = argmin_j |x_i - c_j|^2             (distance_argmin on the backend)
//!             b_j = #{i : a_i = j},  S_j = sum_{a_i=j} x_i      (cluster_sums on the backend)
//!             v_j += b_j,  c_j += (S_j - b_j c_j) / v_j   (per-centre rate 1 / v_j)
//! ```
//!
//! The centre update is the running mean over every point a centre has been given, the
//! batched form of Sculley's per-point rate `1 / v_j`. The start is the best of three k-means++
//! starts with a few Lloyd steps on the first rows of the file. After each epoch a centre that has received
//! no point is moved onto a random row of the last batch (seeded). Rows are visited in file
//! order: a stream cannot be shuffled, so a file sorted by cluster should be shuffled once
//! beforehand. The reported error is a last streaming pass with the final centres.
//!
//! Streamed formats: `.npy` (2-D, C order, little-endian f32, f64 or u8) and `.fvecs`.

use super::kmeans::{Init, KMeans, KMeansConfig};
use crate::backend::{Backend, Shape};
use crate::error::{Error, Result};
use crate::ops::{assign, check_finite};
use crate::rng::Rng;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    F32,
    F64,
    U8,
    /// `.fvecs`: an i32 dimension before every row.
    Fvecs,
}

impl Layout {
    fn row_bytes(self, d: usize) -> usize {
        match self {
            Layout::F32 => 4 * d,
            Layout::F64 => 8 * d,
            Layout::U8 => d,
            Layout::Fvecs => 4 + 4 * d,
        }
    }
}

/// Rows of a file read a batch at a time.
pub struct RowStream {
    path: PathBuf,
    file: BufReader<File>,
    layout: Layout,
    start: u64,
    /// Rows and their dimension.
    pub rows: usize,
    pub d: usize,
    next: usize,
    buf: Vec<u8>,
}

impl RowStream {
    /// Opens a `.npy` or `.fvecs` file and reads its header only.
    pub fn open(path: &Path) -> Result<Self> {
        let io_err = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let bad = |reason: String| Error::format(path, reason);
        let mut file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let ext = path.extension().and_then(|e| e.to_str());
        let (layout, start, rows, d) = match ext {
            Some("npy") => {
                let mut head = vec![0u8; 12];
                file.read_exact(&mut head)
                    .map_err(|_| bad("not a .npy file (too short)".into()))?;
                if &head[..6] != b"\x93NUMPY" {
                    return Err(bad("not a .npy file (bad magic bytes)".into()));
                }
                let (hlen, hstart) = match head[6] {
                    1 => (u16::from_le_bytes([head[8], head[9]]) as usize, 10u64),
                    2 | 3 => (
                        u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize,
                        12u64,
                    ),
                    v => return Err(bad(format!("unsupported .npy version {v}"))),
                };
                let mut text = vec![0u8; hlen];
                file.seek(SeekFrom::Start(hstart)).map_err(io_err)?;
                file.read_exact(&mut text)
                    .map_err(|_| bad("truncated .npy header".into()))?;
                let text = String::from_utf8_lossy(&text).replace('"', "'");
                let layout = if text.contains("'<f4'") || text.contains("'=f4'") {
                    Layout::F32
                } else if text.contains("'<f8'") || text.contains("'=f8'") {
                    Layout::F64
                } else if text.contains("'|u1'") || text.contains("'<u1'") {
                    Layout::U8
                } else {
                    return Err(bad(
                        "streaming reads little-endian f32, f64 or u8 .npy files".into(),
                    ));
                };
                if !text.contains("'fortran_order': False") {
                    return Err(bad("streaming needs a C-order .npy".into()));
                }
                let shape = text
                    .split("'shape':")
                    .nth(1)
                    .and_then(|s| s.split(')').next())
                    .map(|s| s.trim().trim_start_matches('('))
                    .ok_or_else(|| bad("the .npy header has no shape".into()))?;
                let dims: Vec<usize> = shape
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().map_err(|_| bad(format!("bad shape ({shape})"))))
                    .collect::<Result<_>>()?;
                let [n, d] = dims[..] else {
                    return Err(bad(format!("expected a 2-D array, got shape {dims:?}")));
                };
                let start = hstart + hlen as u64;
                let need = d
                    .checked_mul(8)
                    .and_then(|_| (n as u64).checked_mul(layout.row_bytes(d) as u64))
                    .and_then(|b| b.checked_add(start))
                    .ok_or_else(|| bad(format!("the shape ({n}, {d}) overflows")))?;
                if d == 0 {
                    return Err(bad("rows of dimension 0".into()));
                }
                if len < need {
                    return Err(bad(format!(
                        "truncated: the header promises {need} bytes, the file has {len}"
                    )));
                }
                (layout, start, n, d)
            }
            Some("fvecs") => {
                let mut head = [0u8; 4];
                file.read_exact(&mut head)
                    .map_err(|_| bad("the file holds no vectors".into()))?;
                let d = i32::from_le_bytes(head);
                if d <= 0 {
                    return Err(bad(format!("vector 0 declares dimension {d}")));
                }
                let d = d as usize;
                let rb = Layout::Fvecs.row_bytes(d) as u64;
                if len % rb != 0 {
                    return Err(bad(format!(
                        "{len} bytes are not a whole number of {rb}-byte rows of d = {d}"
                    )));
                }
                (Layout::Fvecs, 0, (len / rb) as usize, d)
            }
            _ => {
                return Err(bad(
                    "unknown file type: expected a .npy or .fvecs file".into()
                ));
            }
        };
        let mut s = RowStream {
            path: path.to_path_buf(),
            file: BufReader::with_capacity(1 << 20, file),
            layout,
            start,
            rows,
            d,
            next: 0,
            buf: Vec::new(),
        };
        s.rewind()?;
        Ok(s)
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

    /// Reads up to `max_rows` rows into `out` (replacing its contents); 0 at the end.
    pub fn next_batch(&mut self, max_rows: usize, out: &mut Vec<f32>) -> Result<usize> {
        let rows = max_rows.min(self.rows - self.next);
        out.clear();
        if rows == 0 {
            return Ok(0);
        }
        let d = self.d;
        let rb = self.layout.row_bytes(d);
        self.buf.resize(rows * rb, 0);
        self.file
            .read_exact(&mut self.buf)
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        out.reserve(rows * d);
        for (r, row) in self.buf.chunks_exact(rb).enumerate() {
            match self.layout {
                Layout::F32 => out.extend(
                    row.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ),
                Layout::F64 => out.extend(row.chunks_exact(8).map(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })),
                Layout::U8 => out.extend(row.iter().map(|&v| v as f32)),
                Layout::Fvecs => {
                    let dim = i32::from_le_bytes([row[0], row[1], row[2], row[3]]);
                    if dim as usize != d {
                        return Err(Error::format(
                            &self.path,
                            format!(
                                "vector {} has dimension {dim}, the first had {d}",
                                self.next + r
                            ),
                        ));
                    }
                    out.extend(
                        row[4..]
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    );
                }
            }
        }
        self.next += rows;
        Ok(rows)
    }
}

/// Hyper-parameters of [`fit_stream`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MiniBatchConfig {
    pub k: usize,
    /// Rows per batch.
    pub batch: usize,
    /// Passes over the file.
    pub epochs: usize,
    pub init: Init,
    pub seed: u64,
    /// Rows read from the start of the file for the initial k-means (at least k).
    pub init_rows: usize,
}

impl MiniBatchConfig {
    pub fn new(k: usize) -> Self {
        MiniBatchConfig {
            k,
            batch: 4096,
            epochs: 2,
            init: Init::KMeansPlusPlus,
            seed: 0,
            init_rows: (16 * k).max(4096),
        }
    }
}

/// What [`fit_stream`] reports.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StreamReport {
    /// Mean squared distance of every row of the file to its final centre.
    pub mse: f64,
    /// Mean over the batches of each epoch of the batch inertia (before the update).
    pub epoch_mse: Vec<f64>,
    pub rows: usize,
    pub reassigned: usize,
}

/// Mini-batch k-means over a stream; `on_batch(epoch, batch, batch_mse)` after each batch.
pub fn fit_stream<B: Backend>(
    b: &B,
    stream: &mut RowStream,
    cfg: &MiniBatchConfig,
    on_batch: &mut dyn FnMut(usize, usize, f64),
) -> Result<(KMeans, StreamReport)> {
    let (k, d, n) = (cfg.k, stream.d, stream.rows);
    if k == 0 {
        return Err(Error::EmptyCodebook);
    }
    if k > n {
        return Err(Error::KLargerThanN { k, n });
    }
    if cfg.batch == 0 {
        return Err(Error::invalid("batch", "must be at least 1"));
    }
    let mut rng = Rng::new(cfg.seed);
    let mut xb = Vec::new();
    stream.rewind()?;
    stream.next_batch(cfg.init_rows.max(k), &mut xb)?;
    check_finite("points", &xb)?;
    let mut kc = KMeansConfig::new(k);
    kc.iters = 5;
    // Three cheap restarts on the first rows: a missed cluster here is hard to recover
    // from with per-centre rates that shrink as 1 / v_j.
    kc.restarts = 3;
    kc.init = cfg.init;
    kc.seed = cfg.seed;
    let (km, _) = KMeans::fit(b, &xb, d, &kc)?;
    let mut c = km.centroids;
    let mut v = vec![0.0f64; k];
    let mut epoch_mse = Vec::with_capacity(cfg.epochs);
    let mut reassigned = 0;
    let mut sums = b.zeros::<f32>(k * d)?;
    let mut counts = b.zeros::<u32>(k)?;
    let mut dist_sums = b.zeros::<f32>(k)?;
    for epoch in 0..cfg.epochs {
        crate::interrupt::check()?;
        stream.rewind()?;
        let (mut total, mut batches) = (0.0f64, 0usize);
        loop {
            let rows = stream.next_batch(cfg.batch, &mut xb)?;
            if rows == 0 {
                break;
            }
            check_finite("points", &xb)?;
            let shape = Shape::new(rows, k, d);
            let x_dev = b.upload(&xb)?;
            let c_dev = b.upload(&c)?;
            let mut norms = b.zeros::<f32>(k)?;
            b.codeword_norms(&c_dev, k, d, &mut norms)?;
            let mut idx = b.zeros::<u32>(rows)?;
            let mut dist = b.zeros::<f32>(rows)?;
            b.distance_argmin(&x_dev, &c_dev, &norms, shape, &mut idx, &mut dist)?;
            b.cluster_sums(
                &x_dev,
                &idx,
                &dist,
                shape,
                &mut sums,
                &mut counts,
                &mut dist_sums,
            )?;
            let s = b.download(&sums)?;
            let cnt = b.download(&counts)?;
            let ds: f64 = b.download(&dist_sums)?.iter().map(|&x| x as f64).sum();
            if !ds.is_finite() {
                return Err(Error::Overflow { row: 0 });
            }
            // c_j += (S_j - b_j c_j) / v_j: the running mean of every point given to j.
            for j in 0..k {
                if cnt[j] == 0 {
                    continue;
                }
                let bj = cnt[j] as f64;
                v[j] += bj;
                let rate = 1.0 / v[j];
                for t in 0..d {
                    let cj = c[j * d + t] as f64;
                    c[j * d + t] = (cj + (s[j * d + t] as f64 - bj * cj) * rate) as f32;
                }
            }
            let bm = ds / rows as f64;
            total += bm;
            on_batch(epoch, batches, bm);
            batches += 1;
            if stream.next >= stream.rows {
                // Centres that no point has reached move onto rows of this last batch.
                for j in 0..k {
                    if v[j] == 0.0 {
                        let i = rng.below(rows);
                        c[j * d..(j + 1) * d].copy_from_slice(&xb[i * d..(i + 1) * d]);
                        reassigned += 1;
                    }
                }
            }
        }
        epoch_mse.push(total / batches.max(1) as f64);
    }
    // Final error over the whole file.
    stream.rewind()?;
    let mut sse = 0.0f64;
    loop {
        let rows = stream.next_batch(cfg.batch, &mut xb)?;
        if rows == 0 {
            break;
        }
        check_finite("points", &xb)?;
        sse += assign(b, &xb, &c, d)?
            .distances
            .iter()
            .map(|&x| x as f64)
            .sum::<f64>();
    }
    Ok((
        KMeans { d, centroids: c },
        StreamReport {
            mse: sse / n as f64,
            epoch_mse,
            rows: n,
            reassigned,
        },
    ))
}
