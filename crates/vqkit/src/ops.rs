//! Host-slice conveniences over any [`Backend`]: they check the input once (shapes, finite
//! values, code ranges), upload, run the kernels and download the results.
//!
//! For iterative work, [`DeviceKMeans`] keeps the points and every working buffer on the
//! device between steps and reads back only `k` counts and `k` distance sums per step.

use crate::backend::{Backend, Code, EmaParams, Shape, check_len};
use crate::error::{Error, Result};
use rayon::prelude::*;

pub use crate::backend::check_finite;

/// The number of rows of width `d` in `v`, or an error if `d = 0` or `v` is ragged.
pub fn rows(what: &'static str, v: &[f32], d: usize) -> Result<usize> {
    if d == 0 {
        return Err(Error::ZeroDimension);
    }
    if !v.len().is_multiple_of(d) {
        return Err(Error::RaggedRows {
            what,
            len: v.len(),
            d,
        });
    }
    Ok(v.len() / d)
}

/// Errors on a code outside `0..k`.
pub fn check_codes<C: Code>(idx: &[C], k: usize) -> Result<()> {
    // A branch-free pass first, which vectorizes, then the search for the first bad code
    // only if there is one: `position` alone took 40 to 80 us for 100,000 codes against 7
    // to 11 (a standalone copy of both, `rustc -O`, 1000 calls, 3 runs), beside an EMA
    // step of about 450 us at k = 256, d = 32 on two threads.
    if idx.iter().fold(true, |ok, &j| ok & (j.index() < k)) {
        return Ok(());
    }
    match idx.iter().position(|&j| j.index() >= k) {
        None => Ok(()),
        Some(row) => Err(Error::CodeOutOfRange {
            row,
            code: idx[row].index() as u32,
            k,
        }),
    }
}

/// Nearest codewords of a set of points.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    /// `indices[i]`: the codeword nearest to point `i`.
    pub indices: Vec<u32>,
    /// `distances[i]`: its squared Euclidean distance.
    pub distances: Vec<f32>,
}

impl Assignment {
    /// Mean squared distance (0 for no points).
    pub fn mse(&self) -> f64 {
        if self.distances.is_empty() {
            return 0.0;
        }
        self.distances.iter().map(|&v| v as f64).sum::<f64>() / self.distances.len() as f64
    }
}

/// `out[i] = argmin_j |x_i - c_j|^2` for points `x` (n x d) and codebook (k x d).
pub fn assign<B: Backend>(b: &B, x: &[f32], codebook: &[f32], d: usize) -> Result<Assignment> {
    let n = rows("points", x, d)?;
    let k = rows("codebook", codebook, d)?;
    let shape = Shape::new(n, k, d);
    shape.validate()?;
    // Where the backend flags them, points with a NaN or infinity are found after the
    // kernel, from their distances, rather than in a pass over x of its own first; an
    // error on the way still gives way to a non-finite point, as if checked first.
    let after = b.flags_non_finite_points();
    if !after {
        check_finite("points", x)?;
    }
    let points_first = |e: Error| {
        if after {
            check_finite("points", x).err().unwrap_or(e)
        } else {
            e
        }
    };
    // Likewise a codebook with a NaN or an infinity, where the backend's norms find it.
    if !b.flags_non_finite_codebook() {
        check_finite("codebook", codebook).map_err(points_first)?;
    }
    let (indices, distances) = b.assign_host(x, codebook, shape).map_err(points_first)?;
    let out = Assignment { indices, distances };
    check_overflow(&out.distances).map_err(points_first)?;
    Ok(out)
}

/// One shard's share of a Lloyd step, in the form a distributed k-means reduces: per-cluster
/// sums of the shard's points (f64), their counts, and the shard's inertia.
///
/// Reduced over shards, `sum_s sums_s[j] / sum_s counts_s[j]` is the next centroid `j` and
/// `sum_s inertia_s` the objective of the current one. Every number is accumulated in a
/// fixed order (points in row order, per cluster), so the result does not depend on the
/// number of threads, and the sum over shards in a fixed order is reproducible.
#[derive(Clone, Debug, PartialEq)]
pub struct PartialStats {
    /// (k, d), row-major: `sums[j] = sum_{a_i = j} x_i`.
    pub sums: Vec<f64>,
    /// `counts[j] = |{i : a_i = j}|`.
    pub counts: Vec<u64>,
    /// `sum_i |x_i - c_{a_i}|^2`.
    pub inertia: f64,
}

/// The fused assignment of `x` (n x d) to `centroids` (k x d) on the backend, then the
/// shard's [`PartialStats`] on the host in f64.
pub fn partial_stats<B: Backend>(
    b: &B,
    x: &[f32],
    centroids: &[f32],
    d: usize,
) -> Result<PartialStats> {
    let a = assign(b, x, centroids, d)?;
    let k = centroids.len() / d;
    let n = a.indices.len();
    // Group the points by cluster, keeping row order within each (a counting sort), so that
    // each cluster's sum is one sequential f64 accumulation, whichever thread runs it.
    let mut counts = vec![0u64; k];
    for &c in &a.indices {
        counts[c as usize] += 1;
    }
    let mut start = Vec::with_capacity(k + 1);
    start.push(0usize);
    for &c in &counts {
        start.push(start.last().copied().unwrap_or(0) + c as usize);
    }
    let mut order = crate::resources::filled("the points grouped by cluster", n, 0u32)?;
    let mut next = start.clone();
    for (i, &c) in a.indices.iter().enumerate() {
        order[next[c as usize]] = i as u32;
        next[c as usize] += 1;
    }
    let mut sums = crate::resources::filled("the cluster sums", k * d, 0.0f64)?;
    sums.par_chunks_mut(d)
        .with_min_len(16)
        .enumerate()
        .for_each(|(j, s)| {
            for &i in &order[start[j]..start[j + 1]] {
                let row = &x[i as usize * d..(i as usize + 1) * d];
                for (acc, &v) in s.iter_mut().zip(row) {
                    *acc += v as f64;
                }
            }
        });
    let inertia = a.distances.iter().map(|&v| v as f64).sum();
    Ok(PartialStats {
        sums,
        counts,
        inertia,
    })
}

/// Finite inputs can still give infinite squared distances; say so rather than return them.
/// One pass without a branch (it vectorizes; `position`'s early exit did not, and took a
/// quarter of the kernel's time at n = 100,000, k = 16, d = 2), and a search for the row
/// only where there is one.
fn check_overflow(dist: &[f32]) -> Result<()> {
    if dist.iter().fold(true, |ok, v| ok & v.is_finite()) {
        return Ok(());
    }
    let row = dist.iter().position(|v| !v.is_finite()).unwrap_or(0);
    Err(Error::Overflow { row })
}

/// What one Lloyd step reports.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// Sum of squared distances of the points to their centroid before the update.
    pub inertia: f64,
    /// Codes no point was assigned to; their centroids were left unchanged.
    pub empty: Vec<u32>,
    /// Points per code.
    pub counts: Vec<u32>,
}

/// k-means state on the device: the points, the centroids and every working buffer stay
/// there between steps.
pub struct DeviceKMeans<'a, B: Backend> {
    backend: &'a B,
    shape: Shape,
    x: B::Buf<f32>,
    centroids: B::Buf<f32>,
    norms: B::Buf<f32>,
    idx: B::Buf<u32>,
    dist: B::Buf<f32>,
    sums: B::Buf<f32>,
    counts: B::Buf<u32>,
    dist_sums: B::Buf<f32>,
}

impl<'a, B: Backend> DeviceKMeans<'a, B> {
    /// Uploads the points and initial centroids, after checking them.
    pub fn new(backend: &'a B, x: &[f32], centroids: &[f32], d: usize) -> Result<Self> {
        let n = rows("points", x, d)?;
        let k = rows("centroids", centroids, d)?;
        let shape = Shape::new(n, k, d);
        shape.validate()?;
        check_finite("points", x)?;
        check_finite("centroids", centroids)?;
        Ok(DeviceKMeans {
            backend,
            shape,
            x: backend.upload(x)?,
            centroids: backend.upload(centroids)?,
            norms: backend.zeros(k)?,
            idx: backend.zeros(n)?,
            dist: backend.zeros(n)?,
            sums: backend.zeros(k * d)?,
            counts: backend.zeros(k)?,
            dist_sums: backend.zeros(k)?,
        })
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The backend the points live on.
    pub fn backend(&self) -> &'a B {
        self.backend
    }

    /// The points on the device, for algorithms that run other kernels on them (k-means++
    /// seeding measures distances to each new centre with `distance_argmin`).
    pub fn points(&self) -> &B::Buf<f32> {
        &self.x
    }

    /// Assigns every point to its nearest centroid (without updating the centroids).
    pub fn assign(&mut self) -> Result<()> {
        let b = self.backend;
        let Shape { k, d, .. } = self.shape;
        b.codeword_norms(&self.centroids, k, d, &mut self.norms)?;
        b.distance_argmin(
            &self.x,
            &self.centroids,
            &self.norms,
            self.shape,
            &mut self.idx,
            &mut self.dist,
        )
    }

    /// One Lloyd iteration: assign, accumulate, update. Reads back `2k` numbers.
    pub fn step(&mut self) -> Result<StepReport> {
        self.assign()?;
        self.update()
    }

    /// One Lloyd iteration from an assignment made elsewhere (codes and squared distances
    /// of every point, as [`DeviceKMeans::assign`] would give them).
    pub fn step_assigned(&mut self, idx: &[u32], dist: &[f32]) -> Result<StepReport> {
        let n = self.shape.n;
        check_len("codes", idx.len(), n)?;
        check_len("distances", dist.len(), n)?;
        if let Some(&bad) = idx.iter().find(|&&j| j as usize >= self.shape.k) {
            return Err(Error::invalid(
                "codes",
                format!("code {bad} of a {}-centroid codebook", self.shape.k),
            ));
        }
        self.idx = self.backend.upload(idx)?;
        self.dist = self.backend.upload(dist)?;
        self.update()
    }

    /// Accumulate and update from the current assignment.
    fn update(&mut self) -> Result<StepReport> {
        let b = self.backend;
        let Shape { k, d, .. } = self.shape;
        b.cluster_sums(
            &self.x,
            &self.idx,
            &self.dist,
            self.shape,
            &mut self.sums,
            &mut self.counts,
            &mut self.dist_sums,
        )?;
        b.kmeans_update(&self.sums, &self.counts, k, d, &mut self.centroids)?;
        let counts = b.download(&self.counts)?;
        let dist_sums = b.download(&self.dist_sums)?;
        let inertia: f64 = dist_sums.iter().map(|&v| v as f64).sum();
        if !inertia.is_finite() {
            return Err(Error::Overflow { row: 0 });
        }
        let empty = (0..k as u32).filter(|&j| counts[j as usize] == 0).collect();
        Ok(StepReport {
            inertia,
            empty,
            counts,
        })
    }

    /// The current centroids.
    pub fn centroids(&self) -> Result<Vec<f32>> {
        self.backend.download(&self.centroids)
    }

    /// Replaces the centroids (after a host-side repair of empty clusters, say).
    pub fn set_centroids(&mut self, centroids: &[f32]) -> Result<()> {
        check_len("centroids", centroids.len(), self.shape.k * self.shape.d)?;
        check_finite("centroids", centroids)?;
        self.centroids = self.backend.upload(centroids)?;
        Ok(())
    }

    /// The latest assignment (codes and squared distances).
    pub fn assignment(&self) -> Result<Assignment> {
        Ok(Assignment {
            indices: self.backend.download(&self.idx)?,
            distances: self.backend.download(&self.dist)?,
        })
    }
}

/// One Lloyd step on host slices: `centroids` is updated in place.
pub fn kmeans_step<B: Backend>(
    b: &B,
    x: &[f32],
    centroids: &mut [f32],
    d: usize,
) -> Result<StepReport> {
    let mut km = DeviceKMeans::new(b, x, centroids, d)?;
    let report = km.step()?;
    centroids.copy_from_slice(&km.centroids()?);
    Ok(report)
}

/// EMA codebook state on the host: cluster sizes, running sums and the codebook.
#[derive(Clone, Debug, PartialEq)]
pub struct EmaState {
    pub cluster_size: Vec<f32>,
    pub embed_sum: Vec<f32>,
    pub codebook: Vec<f32>,
}

impl EmaState {
    /// A fresh state for a `k x d` codebook: sizes start at zero and running sums at the
    /// codewords themselves.
    pub fn with_dim(codebook: Vec<f32>, d: usize) -> Result<Self> {
        let k = rows("codebook", &codebook, d)?;
        Ok(EmaState {
            cluster_size: vec![0.0; k],
            embed_sum: codebook.clone(),
            codebook,
        })
    }
}

/// One EMA step on host slices for the points `x` assigned to `idx`.
pub fn ema_update<B: Backend>(
    b: &B,
    x: &[f32],
    idx: &[u32],
    d: usize,
    params: EmaParams,
    state: &mut EmaState,
) -> Result<()> {
    let EmaState {
        cluster_size,
        embed_sum,
        codebook,
    } = state;
    ema_update_in_place(b, x, idx, d, params, (cluster_size, embed_sum, codebook))
}

/// [`ema_update`] on a state held elsewhere (NumPy or PyTorch buffers): `cluster_size`
/// (k), `embed_sum` and `codebook` (k x d), updated in place, or left as they were on an
/// error.
pub fn ema_update_in_place<B: Backend>(
    b: &B,
    x: &[f32],
    idx: &[u32],
    d: usize,
    params: EmaParams,
    (cluster_size, embed_sum, codebook): (&mut [f32], &mut [f32], &mut [f32]),
) -> Result<()> {
    let n = rows("points", x, d)?;
    let k = rows("codebook", codebook, d)?;
    Shape::new(n, k, d).validate()?;
    params.validate()?;
    check_len("indices", idx.len(), n)?;
    check_len("cluster_size", cluster_size.len(), k)?;
    check_len("embed_sum", embed_sum.len(), k * d)?;
    // A code out of range gives way to a NaN or an infinity among the points, as if they
    // were checked first; the backend checks them (on the CPU, mostly without a pass of
    // its own: see `CpuBackend::ema_update_host`).
    check_codes(idx, k).map_err(|e| check_finite("points", x).err().unwrap_or(e))?;
    b.ema_update_host(
        x,
        idx,
        Shape::new(n, k, d),
        params,
        cluster_size,
        embed_sum,
        codebook,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The overflow check names the first row whose distance is not finite, wherever it is
    /// (within and past the vectorized pass's lanes), and passes finite distances.
    #[test]
    fn overflow_names_the_first_non_finite_row() {
        for n in [1, 7, 16, 33, 1000] {
            assert!(check_overflow(&vec![1.5f32; n]).is_ok());
            for row in [0, n / 2, n - 1] {
                for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
                    let mut dist = vec![0.25f32; n];
                    dist[row] = bad;
                    if row + 1 < n {
                        dist[n - 1] = f32::NAN;
                    }
                    let got = check_overflow(&dist);
                    assert!(
                        matches!(got, Err(Error::Overflow { row: r }) if r == row),
                        "n={n} row={row} {bad}: {got:?}"
                    );
                }
            }
        }
    }
}
