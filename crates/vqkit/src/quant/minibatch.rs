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
//! Streamed formats: those of [`RowReader`] (`.npy`, `.fvecs`, `.bvecs`, `.ivecs`).

use super::kmeans::{Init, KMeans, KMeansConfig};
use crate::backend::{Backend, Shape};
use crate::error::{Error, Result};
use crate::io::rows::RowReader;
use crate::ops::{assign, check_finite};
use crate::rng::Rng;

/// The rows of a file streamed in batches: [`crate::io::rows::RowReader`], under the name
/// this module first gave it.
pub type RowStream = RowReader;

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
    stream: &mut RowReader,
    cfg: &MiniBatchConfig,
    on_batch: &mut dyn FnMut(usize, usize, f64),
) -> Result<(KMeans, StreamReport)> {
    let (k, d, n) = (cfg.k, stream.d(), stream.rows());
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
    stream.next_chunk(cfg.init_rows.max(k), &mut xb)?;
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
            let rows = stream.next_chunk(cfg.batch, &mut xb)?;
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
            if stream.remaining() == 0 {
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
        let rows = stream.next_chunk(cfg.batch, &mut xb)?;
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
