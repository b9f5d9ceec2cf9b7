//! k-means (Lloyd) on the backend kernels.
//!
//! ```text
//! minimise  (1/n) sum_i min_j |x_i - c_j|^2        (the inertia, reported per point)
//! assign:   a_i = argmin_j |x_i - c_j|^2           (distance_argmin)
//! update:   c_j = mean { x_i : a_i = j }            (cluster_sums + kmeans_update)
//! ```
//!
//! The points and centroids stay on the device ([`DeviceKMeans`]); each Lloyd step reads back
//! `2k` numbers (counts and distance sums). Centroids come back to the host only to repair
//! empty clusters, which is rare.
//!
//! - Initialisation: k-means++ (Arthur and Vassilvitskii 2007: each new centre is a point
//!   drawn with probability `D(x)^2 / sum D^2`, `D` the distance to the nearest centre so
//!   far), with `D` maintained by one `distance_argmin` call against the new centre; or `k`
//!   distinct random points.
//! - Lloyd steps on the CPU: only the distances that Elkan's triangle-inequality bounds
//!   cannot rule out are computed, with the same result bit for bit (`bounds.rs`).
//! - Empty clusters: split a large cluster in two (chosen with probability proportional to
//!   `size - 1`, as FAISS does), seeded and so deterministic.
//! - Subsampling: when `n > k * max_points_per_centroid`, train on a seeded random subset of
//!   that size (FAISS's default of 256 per centroid).
//! - Restarts: several seeded runs, keeping the centroids with the lowest final inertia.

use super::bounds::{Assigned, Bounds};
use super::linalg::dots;
use super::model_io::TensorFile;
use super::pca::Pca;
use super::{check_training, sub_seed};
use crate::backend::{Backend, Shape};
use crate::error::{Error, Result};
use crate::ops::{Assignment, DeviceKMeans, assign, check_finite, rows};
use crate::rng::Rng;

/// How the first centroids are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Init {
    /// D^2 sampling (k-means++).
    #[serde(rename = "kmeans++")]
    KMeansPlusPlus,
    /// `k` distinct points drawn uniformly.
    #[serde(rename = "random")]
    Random,
}

crate::impl_choice!(Init, "init", { KMeansPlusPlus => "kmeans++", Random => "random" });

/// Hyper-parameters of [`KMeans::fit`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KMeansConfig {
    /// Number of centroids.
    pub k: usize,
    /// Lloyd iterations per restart (at most; see `tol`).
    pub iters: usize,
    pub init: Init,
    pub seed: u64,
    /// Independent runs; the one with the lowest final inertia is kept.
    pub restarts: usize,
    /// Stop a run early when an iteration lowers the inertia by less than `tol` times its
    /// previous value; 0 runs every iteration.
    pub tol: f64,
    /// Train on at most `k * max_points_per_centroid` points (0: always use every point).
    pub max_points_per_centroid: usize,
    /// Progressive-dimension k-means (as FAISS's `ProgressiveDimClustering`): with `s > 0`
    /// steps, k-means runs first on the top `d^(1/s)` principal components, then on
    /// `d^(2/s)`, ..., each step starting from the last one's centroids (zero in the new
    /// coordinates), and finally in the full space. High-dimensional data with a decaying
    /// spectrum (images, residuals) lands in better minima this way. 0: off.
    #[serde(default)]
    pub progressive_dim_steps: usize,
    /// k-means++ draws its centres from a random subset of at most
    /// `k * seed_points_per_centroid` training points (0: from all of them), and of at
    /// most 32 MiB of them unless that leaves fewer than 2 per centroid. D^2 sampling is
    /// `k` sequential passes over its points, memory-bound on every backend (pruned on the
    /// CPU, see `seeding.rs`); on a representative subset it picks centres of the same
    /// quality at a fraction of the cost. The default, 8, was measured against 32 and 256
    /// on Fashion-MNIST (k = 1024 and 4096): lower or equal final inertia, a quarter of the
    /// seeding time (docs/performance.md).
    #[serde(default)]
    pub seed_points_per_centroid: usize,
    /// Lloyd steps on the CPU skip the distances that Elkan's triangle-inequality bounds
    /// rule out (`bounds.rs`), with margins that make the result exact: the same codes and
    /// centroids, bit for bit, as without. Other backends, small `k` and bound matrices
    /// above 2 GiB run every distance. false: always every distance.
    #[serde(default = "yes")]
    pub bounds: bool,
}

fn yes() -> bool {
    true
}

impl KMeansConfig {
    /// FAISS-like defaults: 20 iterations, one run, no early stop, 256 points per centroid;
    /// k-means++ initialisation.
    pub fn new(k: usize) -> Self {
        KMeansConfig {
            k,
            iters: 20,
            init: Init::KMeansPlusPlus,
            seed: 0,
            restarts: 1,
            tol: 0.0,
            max_points_per_centroid: 256,
            progressive_dim_steps: 0,
            seed_points_per_centroid: 8,
            bounds: true,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.k == 0 {
            return Err(Error::EmptyCodebook);
        }
        if self.restarts == 0 {
            return Err(Error::invalid("restarts", "must be at least 1"));
        }
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            return Err(Error::invalid(
                "tol",
                format!("{} is not a non-negative number", self.tol),
            ));
        }
        Ok(())
    }
}

/// One Lloyd iteration as reported to a progress callback.
#[derive(Clone, Debug, PartialEq)]
pub struct IterLog {
    pub restart: usize,
    pub iter: usize,
    /// Mean squared distance of the (training) points to their centroid at this assignment.
    pub mse: f64,
    /// Empty clusters repaired after this iteration.
    pub repaired: usize,
}

/// What a fit did.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FitReport {
    /// Per restart, the inertia per point at each iteration's assignment.
    pub history: Vec<Vec<f64>>,
    /// The restart whose centroids were kept.
    pub best_restart: usize,
    /// Inertia per point of the kept centroids on the training points.
    pub mse: f64,
    /// Points trained on (after subsampling).
    pub n_train: usize,
    /// Empty clusters repaired, over all restarts.
    pub repaired: usize,
    /// Seconds spent choosing the initial centroids, over all restarts (wall clock).
    pub init_seconds: f64,
    /// The fraction of the Lloyd steps' `n x k` distances that were computed (below 1
    /// where the bounds of [`KMeansConfig::bounds`] ruled some out).
    pub distances_computed: f64,
}

/// A trained k-means codebook: `k` centroids of dimension `d`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct KMeans {
    pub d: usize,
    pub centroids: Vec<f32>,
}

impl KMeans {
    /// Wraps existing centroids, checking their shape and values.
    pub fn from_centroids(centroids: Vec<f32>, d: usize) -> Result<Self> {
        let k = rows("centroids", &centroids, d)?;
        if k == 0 {
            return Err(Error::EmptyCodebook);
        }
        check_finite("centroids", &centroids)?;
        Ok(KMeans { d, centroids })
    }

    pub fn k(&self) -> usize {
        // `d` is a public field: 0 gives no centroids rather than a division by zero.
        self.centroids.len().checked_div(self.d).unwrap_or(0)
    }

    /// Fits `cfg.k` centroids to `x` (rows of `d`).
    pub fn fit<B: Backend>(
        b: &B,
        x: &[f32],
        d: usize,
        cfg: &KMeansConfig,
    ) -> Result<(KMeans, FitReport)> {
        Self::fit_with(b, x, d, cfg, &mut |_| {})
    }

    /// [`KMeans::fit`], calling `on_iter` after every Lloyd iteration.
    pub fn fit_with<B: Backend>(
        b: &B,
        x: &[f32],
        d: usize,
        cfg: &KMeansConfig,
        on_iter: &mut dyn FnMut(&IterLog),
    ) -> Result<(KMeans, FitReport)> {
        cfg.validate()?;
        let n = check_training(x, d, cfg.k)?;
        let k = cfg.k;
        let mut rng = Rng::new(cfg.seed);
        let sample;
        let train: &[f32] = match cfg.max_points_per_centroid {
            m if m > 0 && n > k.saturating_mul(m) => {
                sample = subsample(x, d, k * m, &mut rng);
                &sample
            }
            _ => x,
        };
        let n_train = train.len() / d;
        // The first k points stand in for centroids until the initialisation replaces them.
        let mut km = DeviceKMeans::new(b, train, &train[..k * d], d)?;
        let mut best: Option<(f64, Vec<f32>, usize)> = None;
        let mut history = Vec::with_capacity(cfg.restarts);
        let mut repaired_total = 0;
        let pca = (cfg.progressive_dim_steps > 0 && d > 1).then(|| Pca::fit(train, d));
        let mut init_seconds = 0.0;
        let mut computed = 0.0;
        for restart in 0..cfg.restarts {
            let mut rng = Rng::new(sub_seed(cfg.seed, restart as u64));
            let started = std::time::Instant::now();
            let init = match &pca {
                Some(p) => progressive_init(b, train, p, cfg, restart, &mut rng, on_iter)?,
                None => match cfg.init {
                    Init::Random => random_init(train, d, k, &mut rng),
                    Init::KMeansPlusPlus => plus_plus(b, km.points(), train, d, cfg, &mut rng)?,
                },
            };
            init_seconds += started.elapsed().as_secs_f64();
            km.set_centroids(&init)?;
            let (hist, repaired, fraction, bounds) =
                lloyd(&mut km, train, cfg, restart, &mut rng, on_iter)?;
            repaired_total += repaired;
            computed += fraction / cfg.restarts as f64;
            // The inertia of the final centroids, not of the last assignment before them.
            let final_mse = final_mse(&mut km, train, bounds)?;
            history.push(hist);
            if best.as_ref().is_none_or(|(m, _, _)| final_mse < *m) {
                best = Some((final_mse, km.centroids()?, restart));
            }
        }
        let (mse, centroids, best_restart) = best.ok_or(Error::EmptyCodebook)?;
        Ok((
            KMeans { d, centroids },
            FitReport {
                history,
                best_restart,
                mse,
                n_train,
                repaired: repaired_total,
                init_seconds,
                distances_computed: computed,
            },
        ))
    }

    /// Lloyd iterations from given centroids (a warm start): no initialisation, no
    /// subsampling, one run; `cfg.k` is ignored in favour of the centroids' count.
    pub fn refine<B: Backend>(
        b: &B,
        x: &[f32],
        d: usize,
        centroids: &[f32],
        cfg: &KMeansConfig,
        on_iter: &mut dyn FnMut(&IterLog),
    ) -> Result<(KMeans, FitReport)> {
        let k = rows("centroids", centroids, d)?;
        let n_train = check_training(x, d, k)?;
        let mut km = DeviceKMeans::new(b, x, centroids, d)?;
        let mut rng = Rng::new(cfg.seed);
        let (hist, repaired, computed, bounds) = lloyd(&mut km, x, cfg, 0, &mut rng, on_iter)?;
        let mse = final_mse(&mut km, x, bounds)?;
        Ok((
            KMeans {
                d,
                centroids: km.centroids()?,
            },
            FitReport {
                history: vec![hist],
                best_restart: 0,
                mse,
                n_train,
                repaired,
                init_seconds: 0.0,
                distances_computed: computed,
            },
        ))
    }

    /// Nearest centroid of every row of `x`.
    pub fn assign<B: Backend>(&self, b: &B, x: &[f32]) -> Result<Assignment> {
        super::check_input(x, self.d)?;
        assign(b, x, &self.centroids, self.d)
    }
}

/// The progressive-dimension steps below the full dimension (see
/// [`KMeansConfig::progressive_dim_steps`]); returns their centroids mapped back to the
/// original space, the start of the final full-space Lloyd run.
fn progressive_init<B: Backend>(
    b: &B,
    train: &[f32],
    pca: &Pca,
    cfg: &KMeansConfig,
    restart: usize,
    rng: &mut Rng,
    on_iter: &mut dyn FnMut(&IterLog),
) -> Result<Vec<f32>> {
    let d = pca.d;
    let k = cfg.k;
    let steps = cfg.progressive_dim_steps;
    let dims: Vec<usize> = (1..steps)
        .map(|s| ((d as f64).powf(s as f64 / steps as f64) as usize).clamp(1, d))
        .filter(|&di| di < d)
        .collect();
    let top = dims.last().copied().unwrap_or(0);
    if top == 0 {
        return Ok(random_init(train, d, k, rng));
    }
    // Coordinates along the `top` leading axes only.
    let lead = Pca {
        d,
        mean: pca.mean.clone(),
        axes: pca.axes[..top * d].to_vec(),
        variances: pca.variances[..top].to_vec(),
    };
    let y = project_rows(&lead, train, top);
    let n = train.len() / d;
    let mut cur: Vec<f32> = Vec::new();
    let mut cur_d = 0;
    for &di in &dims {
        if di <= cur_d {
            continue;
        }
        let xs: Vec<f32> = (0..n)
            .flat_map(|i| &y[i * top..i * top + di])
            .copied()
            .collect();
        let init = if cur_d == 0 {
            let mut km0 = DeviceKMeans::new(b, &xs, &xs[..k * di], di)?;
            let c = match cfg.init {
                Init::Random => random_init(&xs, di, k, rng),
                Init::KMeansPlusPlus => plus_plus(b, km0.points(), &xs, di, cfg, rng)?,
            };
            km0.set_centroids(&c)?;
            c
        } else {
            pad(&cur, cur_d, di)
        };
        let mut km = DeviceKMeans::new(b, &xs, &init, di)?;
        lloyd(&mut km, &xs, cfg, restart, rng, on_iter)?;
        cur = km.centroids()?;
        cur_d = di;
    }
    Ok(pca.unproject(&pad(&cur, cur_d, d)))
}

/// Rows of `c` widened from `from` to `to` coordinates with zeros.
fn pad(c: &[f32], from: usize, to: usize) -> Vec<f32> {
    c.chunks_exact(from)
        .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(0.0, to - from)))
        .collect()
}

/// `(x_i - mean) . axis_t` for the `top` axes of `p`, as rows of `top`.
fn project_rows(p: &Pca, x: &[f32], top: usize) -> Vec<f32> {
    let d = p.d;
    let centred: Vec<f32> = x
        .chunks_exact(d)
        .flat_map(|r| r.iter().zip(&p.mean).map(|(&v, &m)| v - m))
        .collect();
    let mut out = vec![0.0f32; (x.len() / d) * top];
    dots(&centred, &p.axes[..top * d], d, &mut out);
    out
}

/// Lloyd iterations with empty-cluster repair, stopping at a fixed point or on the
/// relative-improvement test, on the points `x` that `km` holds. Returns the inertia per
/// point at each iteration, the number of clusters repaired, the fraction of the
/// distances computed (see [`KMeansConfig::bounds`]) and the bounds, if they were kept.
fn lloyd<B: Backend>(
    km: &mut DeviceKMeans<'_, B>,
    x: &[f32],
    cfg: &KMeansConfig,
    restart: usize,
    rng: &mut Rng,
    on_iter: &mut dyn FnMut(&IterLog),
) -> Result<(Vec<f64>, usize, f64, Option<Bounds>)> {
    let Shape { n, k, d } = km.shape();
    let mut hist = Vec::with_capacity(cfg.iters);
    let mut repaired_total = 0;
    let mut prev_counts: Option<Vec<u32>> = None;
    let mut bounds = if cfg.bounds {
        Bounds::new(km.backend(), x, d, k)
    } else {
        None
    };
    // Distances computed over the steps, against n x k per step.
    let mut computed = 0.0f64;
    for iter in 0..cfg.iters {
        crate::interrupt::check()?;
        let assigned = match bounds.as_mut() {
            Some(bd) => match bd.assign(km.backend(), x, &km.centroids()?)? {
                Assigned::Done {
                    idx,
                    dist,
                    computed: c,
                } => Some((idx.to_vec(), dist.to_vec(), c)),
                Assigned::Dropped => None,
            },
            None => None,
        };
        let rep = match assigned {
            Some((idx, dist, c)) => {
                computed += c;
                km.step_assigned(&idx, &dist)?
            }
            None => {
                // Dropped bounds stay dropped: too many candidates once, the fused kernel
                // is the cheaper way from here on.
                bounds = None;
                computed += (n * k) as f64;
                km.step()?
            }
        };
        let mse = rep.inertia / n.max(1) as f64;
        let mut repaired = 0;
        if !rep.empty.is_empty() {
            let mut c = km.centroids()?;
            repaired = split_empty(&mut c, &rep.counts, &rep.empty, d, rng);
            km.set_centroids(&c)?;
            repaired_total += repaired;
        }
        on_iter(&IterLog {
            restart,
            iter,
            mse,
            repaired,
        });
        let prev = hist.last().copied();
        hist.push(mse);
        // A fixed point: the same inertia, bit for bit, and the same cluster sizes as the
        // step before, with no repair in either. The centroids did not move, so every
        // further step would repeat this one exactly (FAISS stops on the same objective).
        let counts = (repaired == 0).then_some(rep.counts);
        if prev.is_some_and(|p| p.to_bits() == mse.to_bits())
            && counts.is_some()
            && counts == prev_counts
        {
            break;
        }
        prev_counts = counts;
        // A repair moves centroids, so the next inertia is not comparable: never stop there.
        if let Some(p) = prev
            && cfg.tol > 0.0
            && repaired == 0
            && p - mse <= cfg.tol * p
        {
            break;
        }
    }
    let fraction = computed / (hist.len().max(1) * n * k) as f64;
    Ok((hist, repaired_total, fraction, bounds))
}

/// The inertia per point of `km`'s centroids on its points `x`: one more step of the
/// bounds where Lloyd kept them (the same bits as the kernel's), else the kernel.
fn final_mse<B: Backend>(
    km: &mut DeviceKMeans<'_, B>,
    x: &[f32],
    bounds: Option<Bounds>,
) -> Result<f64> {
    if let Some(mut bd) = bounds
        && let Assigned::Done { idx, dist, .. } = bd.assign(km.backend(), x, &km.centroids()?)?
    {
        let a = Assignment {
            indices: idx.to_vec(),
            distances: dist.to_vec(),
        };
        return Ok(a.mse());
    }
    km.assign()?;
    Ok(km.assignment()?.mse())
}

/// `m` distinct rows of `x`, drawn uniformly (a partial Fisher-Yates shuffle of the indices).
pub(crate) fn subsample(x: &[f32], d: usize, m: usize, rng: &mut Rng) -> Vec<f32> {
    let n = x.len() / d;
    let picks = distinct(n, m, rng);
    let mut out = Vec::with_capacity(picks.len() * d);
    for i in picks {
        out.extend_from_slice(&x[i * d..(i + 1) * d]);
    }
    out
}

/// `m.min(n)` distinct indices below `n`, in random order.
fn distinct(n: usize, m: usize, rng: &mut Rng) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let m = m.min(n);
    for i in 0..m {
        let j = i + rng.below(n - i);
        idx.swap(i, j);
    }
    idx.truncate(m);
    idx
}

/// `k` distinct points as initial centroids.
pub(crate) fn random_init(x: &[f32], d: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    subsample(x, d, k, rng)
}

/// k-means++ seeding. On a backend whose memory is the host's (the CPU), the pruned
/// k-means++ of [`super::seeding`], in the backend's threads. On a device, `D(x)^2`, the
/// squared distance of each point to its nearest centre so far, is updated after each new
/// centre by one `distance_argmin` against that centre alone (a 1-row codebook gives
/// exactly `|x - c|^2`) and an element-wise minimum on the host: the trait has no
/// element-wise minimum kernel. When every point coincides with a centre (`sum D^2 = 0`),
/// the remaining centres are drawn uniformly.
pub(crate) fn kmeans_pp<B: Backend>(
    b: &B,
    xb: &B::Buf<f32>,
    x: &[f32],
    d: usize,
    k: usize,
    rng: &mut Rng,
) -> Result<Vec<f32>> {
    let n = x.len() / d;
    if b.host_isa().is_some() {
        return super::seeding::kmeans_pp_pruned(b, x, d, k, rng);
    }
    let mut centroids = Vec::with_capacity(k * d);
    let mut dmin = vec![f32::INFINITY; n];
    let mut idx = b.zeros::<u32>(n)?;
    let mut dist = b.zeros::<f32>(n)?;
    let mut norm = b.zeros::<f32>(1)?;
    let mut pick = rng.below(n);
    for c in 0..k {
        let row = &x[pick * d..(pick + 1) * d];
        if c % 64 == 0 {
            crate::interrupt::check()?;
        }
        centroids.extend_from_slice(row);
        if c + 1 == k {
            break;
        }
        let cb = b.upload(row)?;
        b.codeword_norms(&cb, 1, d, &mut norm)?;
        b.distance_argmin(xb, &cb, &norm, Shape::new(n, 1, d), &mut idx, &mut dist)?;
        let dnew = b.download(&dist)?;
        let mut total = 0.0f64;
        for (m, &v) in dmin.iter_mut().zip(&dnew) {
            if v < *m {
                *m = v;
            }
            total += *m as f64;
        }
        if !total.is_finite() {
            return Err(Error::Overflow { row: 0 });
        }
        pick = if total > 0.0 {
            super::seeding::draw(&dmin, total, rng)
        } else {
            rng.below(n)
        };
    }
    Ok(centroids)
}

/// k-means++ on the points, or on a random subset of them (see
/// [`KMeansConfig::seed_points_per_centroid`]).
fn plus_plus<B: Backend>(
    b: &B,
    xb: &B::Buf<f32>,
    x: &[f32],
    d: usize,
    cfg: &KMeansConfig,
    rng: &mut Rng,
) -> Result<Vec<f32>> {
    let (n, k, per) = (x.len() / d, cfg.k, cfg.seed_points_per_centroid);
    // Past SEED_SAMPLE_BYTES, down to 2 points per centroid (a constant, not the
    // machine's cache size: the same seed gives the same centroids everywhere).
    let cap = (SEED_SAMPLE_BYTES / (d * std::mem::size_of::<f32>())).max(2 * k);
    let m = k.saturating_mul(per).min(cap);
    if per > 0 && n > m {
        let s = subsample(x, d, m, rng);
        let sb = b.upload(&s)?;
        return kmeans_pp(b, &sb, &s, d, k, rng);
    }
    kmeans_pp(b, xb, x, d, k, rng)
}

/// The largest k-means++ sample by default, in bytes: D^2 sampling makes k passes over
/// it, and one that no last-level cache holds makes each pass a trip to memory (at k =
/// 4096, d = 784, eight points per centroid are 100 MB: 10 s of seeding against 2.3 s for
/// two per centroid, for 0.4% of final inertia; docs/performance.md).
const SEED_SAMPLE_BYTES: usize = 32 << 20;

/// Relative perturbation of a split centroid (FAISS uses the same 1/1024).
const SPLIT_EPS: f32 = 1.0 / 1024.0;

/// Repairs each empty cluster by splitting a populated one: a cluster `m` is drawn with
/// probability proportional to `counts[m] - 1`, and its centroid `c` becomes the pair
/// `c + e`, `c - e` with `e_t = +-eps (|c_t| + s)`, signs alternating over `t` and `s` a
/// small scale so that zero coordinates move too. Returns the number repaired.
pub(crate) fn split_empty(
    centroids: &mut [f32],
    counts: &[u32],
    empty: &[u32],
    d: usize,
    rng: &mut Rng,
) -> usize {
    let mut sizes: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
    let mut repaired = 0;
    for &j in empty {
        let j = j as usize;
        let total: f64 = sizes.iter().map(|&s| (s - 1.0).max(0.0)).sum();
        if total <= 0.0 {
            break; // Every cluster has at most one point: nothing left to split.
        }
        let target = rng.uniform() * total;
        let mut acc = 0.0;
        let mut m = 0;
        for (i, &s) in sizes.iter().enumerate() {
            acc += (s - 1.0).max(0.0);
            if acc > target && s > 1.0 {
                m = i;
                break;
            }
        }
        let src: Vec<f32> = centroids[m * d..(m + 1) * d].to_vec();
        let scale = (src.iter().map(|v| v * v).sum::<f32>() / d as f32).sqrt() * 1e-3 + 1e-12;
        for t in 0..d {
            let e = SPLIT_EPS * (src[t].abs() + scale);
            let e = if t % 2 == 0 { e } else { -e };
            centroids[j * d + t] = src[t] + e;
            centroids[m * d + t] = src[t] - e;
        }
        let half = (sizes[m] / 2.0).floor();
        sizes[j] = half;
        sizes[m] -= half;
        repaired += 1;
    }
    repaired
}

impl KMeans {
    /// The model as a safetensors file: `centroids` (k, d); the fit's hyper-parameters, if
    /// given, go to the metadata as JSON under `vqkit.config`.
    pub fn to_file(&self, cfg: Option<&KMeansConfig>) -> TensorFile {
        let mut f = TensorFile::new("kmeans");
        f.set("d", self.d);
        f.set("k", self.k());
        if let Some(c) = cfg {
            f.set("vqkit.config", serde_json::to_string(c).unwrap_or_default());
        }
        f.put("centroids", vec![self.k(), self.d], self.centroids.clone());
        f
    }

    pub fn from_file(f: &TensorFile) -> Result<Self> {
        let d: usize = f.get("d")?;
        let k: usize = f.get("k")?;
        if d == 0 || k == 0 {
            return Err(f.err("d and k must be positive"));
        }
        let c = f.tensor("centroids", &[k, d])?;
        Ok(KMeans {
            d,
            centroids: c.to_vec(),
        })
    }
}
