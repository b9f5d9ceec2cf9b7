//! Residual vector quantization (RVQ) trained as RQ-K-means.
//!
//! ```text
//! r_0 = x,   a_s = argmin_j |r_s - C_s[j]|^2,   r_{s+1} = r_s - C_s[a_s]      (greedy)
//! x^ = sum_s C_s[a_s]
//! ```
//!
//! Training fits stage `s`'s codebook by k-means on the residuals left by stages `0..s`.
//! With a beam (B > 1) the residuals are those of the best path found by beam search over
//! the stages trained so far, and encoding keeps the B best partial sums per vector:
//!
//! ```text
//! |x - p - C_s[j]|^2 = |x - p|^2 - 2 x.C_s[j] + 2 sum_{t<s} C_t[a_t].C_s[j] + |C_s[j]|^2
//! ```
//!
//! so a stage costs one product `x . C_s^T` per vector (K d) plus table look-ups
//! (`C_t . C_s^T`, K x K per stage pair) per beam entry (B s K), independent of d.
//!
//! Kernels: k-means and greedy assignment run on the backend. The residual update
//! `r -= C_s[a]` and beam scoring (which needs the B best codes, not only the argmin) run on
//! the host: the trait has no gather-subtract or top-B kernel.
//!
//! A shared codebook (`shared`): one codebook for every stage, fitted by k-means on `x`, then
//! refined by Lloyd steps on the pooled residuals of all stages under greedy encoding.

use super::kmeans::{Init, IterLog, KMeans, KMeansConfig, subsample};
use super::linalg::{dots, smallest};
use super::model_io::TensorFile;
use super::{check_input, check_training, code_stats, mean_sq_norm, sub_seed};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::{DeviceKMeans, assign, check_codes};
use crate::rng::Rng;
use rayon::prelude::*;

/// Hyper-parameters of [`Rvq::fit`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RvqConfig {
    pub stages: usize,
    /// Codewords per stage.
    pub k: usize,
    /// Lloyd iterations per stage.
    pub iters: usize,
    pub init: Init,
    pub seed: u64,
    /// Beam width for training and encoding; 1 is greedy.
    pub beam: usize,
    /// One codebook for every stage.
    pub shared: bool,
    /// Lloyd rounds on pooled residuals for a shared codebook.
    pub shared_rounds: usize,
    /// k-means subsampling (see [`KMeansConfig::max_points_per_centroid`]).
    pub max_points_per_centroid: usize,
    /// Refinement rounds after stage-wise training: each stage's codebook in turn gets
    /// Lloyd iterations on `x - sum_{t != s} C_t[a_t]`, the other stages' codes fixed, then
    /// every vector is re-encoded. 0 is plain RQ-K-means.
    #[serde(default)]
    pub refine_rounds: usize,
    /// Progressive-dimension k-means per stage (see
    /// [`KMeansConfig::progressive_dim_steps`]; FAISS's residual quantizer uses 10).
    #[serde(default)]
    pub progressive_dim_steps: usize,
}

impl RvqConfig {
    pub fn new(stages: usize, k: usize) -> Self {
        RvqConfig {
            stages,
            k,
            iters: 20,
            init: Init::KMeansPlusPlus,
            seed: 0,
            beam: 1,
            shared: false,
            shared_rounds: 5,
            max_points_per_centroid: 256,
            refine_rounds: 0,
            progressive_dim_steps: 10,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.stages == 0 {
            return Err(Error::invalid("stages", "must be at least 1"));
        }
        if self.beam == 0 {
            return Err(Error::invalid("beam", "must be at least 1"));
        }
        if self.k == 0 {
            return Err(Error::EmptyCodebook);
        }
        Ok(())
    }

    fn kmeans(&self, stage: usize) -> KMeansConfig {
        KMeansConfig {
            k: self.k,
            iters: self.iters,
            init: self.init,
            seed: sub_seed(self.seed, stage as u64),
            restarts: 1,
            tol: 0.0,
            max_points_per_centroid: self.max_points_per_centroid,
            progressive_dim_steps: self.progressive_dim_steps,
            seed_points_per_centroid: 8,
            bounds: true,
        }
    }
}

/// Per-stage analysis: how much each stage removes and how well it uses its codes.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StageStats {
    pub stage: usize,
    /// Mean squared error after stages `0..=stage`.
    pub mse: f64,
    /// `mse / mean(|x|^2)`.
    pub relative_error: f64,
    /// `exp(entropy)` of this stage's code distribution (K for uniform use).
    pub perplexity: f64,
    /// Fraction of this stage's codewords used at least once.
    pub usage: f64,
}

/// One Lloyd iteration of one stage's k-means during [`Rvq::fit_logged`]. Its `mse` is the
/// inertia of that stage's residuals, i.e. the error of the model up to that stage (all
/// stages in a refinement round), at that iteration's assignment.
#[derive(Clone, Debug, PartialEq)]
pub struct StageIterLog {
    pub stage: usize,
    /// `None` while the stages are first trained; `Some(r)` in refinement round `r`.
    pub refine_round: Option<usize>,
    pub iter: usize,
    pub mse: f64,
    /// Empty clusters repaired after this iteration.
    pub repaired: usize,
}

impl StageIterLog {
    fn new(stage: usize, refine_round: Option<usize>, l: &IterLog) -> Self {
        StageIterLog {
            stage,
            refine_round,
            iter: l.iter,
            mse: l.mse,
            repaired: l.repaired,
        }
    }
}

/// A trained residual quantizer: `stages` codebooks of `k` codewords of dimension `d`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rvq {
    pub d: usize,
    pub k: usize,
    pub stages: usize,
    pub shared: bool,
    /// Default beam width for encoding.
    pub beam: usize,
    /// (stages, k, d), row-major; all stages equal when `shared`.
    pub codebooks: Vec<f32>,
}

impl Rvq {
    /// Stage `s`'s codebook (k, d).
    pub fn codebook(&self, s: usize) -> &[f32] {
        let sz = self.k * self.d;
        &self.codebooks[s * sz..(s + 1) * sz]
    }

    /// Fits the codebooks; `on_stage` is called after each stage is trained.
    pub fn fit<B: Backend>(
        b: &B,
        x: &[f32],
        d: usize,
        cfg: &RvqConfig,
        on_stage: &mut dyn FnMut(usize),
    ) -> Result<Rvq> {
        Self::fit_logged(b, x, d, cfg, on_stage, &mut |_| {})
    }

    /// [`Rvq::fit`], also calling `on_iter` after every Lloyd iteration of every stage's
    /// k-means (and of each refinement round's).
    pub fn fit_logged<B: Backend>(
        b: &B,
        x: &[f32],
        d: usize,
        cfg: &RvqConfig,
        on_stage: &mut dyn FnMut(usize),
        on_iter: &mut dyn FnMut(&StageIterLog),
    ) -> Result<Rvq> {
        cfg.validate()?;
        let n = check_training(x, d, cfg.k)?;
        let mut model = Rvq {
            d,
            k: cfg.k,
            stages: 0,
            shared: cfg.shared,
            beam: cfg.beam,
            codebooks: Vec::with_capacity(cfg.stages * cfg.k * d),
        };
        if cfg.shared {
            let (km, _) = KMeans::fit_with(b, x, d, &cfg.kmeans(0), &mut |l| {
                on_iter(&StageIterLog::new(0, None, l))
            })?;
            let mut c = km.centroids;
            let mut rng = Rng::new(sub_seed(cfg.seed, 1 << 32));
            for _ in 0..cfg.shared_rounds {
                c = shared_round(b, x, d, cfg, c, &mut rng)?;
            }
            for s in 0..cfg.stages {
                model.codebooks.extend_from_slice(&c);
                on_stage(s);
            }
            model.stages = cfg.stages;
            return Ok(model);
        }
        let mut residual = x.to_vec();
        let mut beam = BeamState::new(n, cfg.beam, x);
        for s in 0..cfg.stages {
            crate::interrupt::check()?;
            let (km, _) = KMeans::fit_with(b, &residual, d, &cfg.kmeans(s), &mut |l| {
                on_iter(&StageIterLog::new(s, None, l))
            })?;
            model.codebooks.extend_from_slice(&km.centroids);
            model.stages = s + 1;
            if cfg.beam == 1 {
                let a = km.assign(b, &residual)?;
                subtract_codewords(&mut residual, &km.centroids, &a.indices, d);
            } else {
                beam = model.beam_stage(x, &beam, s, cfg.beam);
                residual = x.to_vec();
                let best = beam.best_codes();
                for t in 0..=s {
                    let codes: Vec<u32> = best.iter().map(|c| c[t]).collect();
                    subtract_codewords(&mut residual, model.codebook(t), &codes, d);
                }
            }
            on_stage(s);
        }
        for round in 0..cfg.refine_rounds {
            crate::interrupt::check()?;
            model.refine_round(b, x, cfg, round, on_iter)?;
        }
        Ok(model)
    }

    /// One round of stage-wise refinement (see [`RvqConfig::refine_rounds`]). Lloyd runs on
    /// the backend; the partial residuals are formed on the host.
    fn refine_round<B: Backend>(
        &mut self,
        b: &B,
        x: &[f32],
        cfg: &RvqConfig,
        round: usize,
        on_iter: &mut dyn FnMut(&StageIterLog),
    ) -> Result<()> {
        let (d, k, st) = (self.d, self.k, self.stages);
        let n = x.len() / d;
        let mut codes = self.encode(b, x, cfg.beam)?;
        // r = x - x^, the residual after every stage.
        let mut r = x.to_vec();
        for s in 0..st {
            let col: Vec<u32> = (0..n).map(|i| codes[i * st + s]).collect();
            subtract_codewords(&mut r, self.codebook(s), &col, d);
        }
        for s in 0..st {
            let col: Vec<u32> = (0..n).map(|i| codes[i * st + s]).collect();
            add_codewords(&mut r, self.codebook(s), &col, d);
            let mut kc = cfg.kmeans(s);
            kc.seed = sub_seed(cfg.seed, (1000 + round * st + s) as u64);
            let old = self.codebook(s).to_vec();
            let (km, _) = KMeans::refine(b, &r, d, &old, &kc, &mut |l| {
                on_iter(&StageIterLog::new(s, Some(round), l))
            })?;
            let a = km.assign(b, &r)?;
            subtract_codewords(&mut r, &km.centroids, &a.indices, d);
            self.codebooks[s * k * d..(s + 1) * k * d].copy_from_slice(&km.centroids);
            for (i, &c) in a.indices.iter().enumerate() {
                codes[i * st + s] = c;
            }
        }
        Ok(())
    }

    /// Codes (n, stages): greedy on the backend when `beam` is 1, beam search otherwise.
    pub fn encode<B: Backend>(&self, b: &B, x: &[f32], beam: usize) -> Result<Vec<u32>> {
        let n = check_input(x, self.d)?;
        if beam == 0 {
            return Err(Error::invalid("beam", "must be at least 1"));
        }
        if beam == 1 {
            let mut r = x.to_vec();
            let mut codes = vec![0u32; n * self.stages];
            for s in 0..self.stages {
                let a = assign(b, &r, self.codebook(s), self.d)?;
                subtract_codewords(&mut r, self.codebook(s), &a.indices, self.d);
                for (i, &c) in a.indices.iter().enumerate() {
                    codes[i * self.stages + s] = c;
                }
            }
            return Ok(codes);
        }
        let mut state = BeamState::new(n, beam, x);
        for s in 0..self.stages {
            state = self.beam_stage(x, &state, s, beam);
        }
        Ok(state.best_codes().concat())
    }

    /// `x^_i = sum_s C_s[codes[i, s]]`.
    pub fn decode(&self, codes: &[u32]) -> Result<Vec<f32>> {
        check_codes(codes, self.k)?;
        let n = codes.len() / self.stages;
        let mut out = vec![0.0f32; n * self.d];
        for s in 0..self.stages {
            let c = self.codebook(s);
            for (i, o) in out.chunks_exact_mut(self.d).enumerate() {
                let j = codes[i * self.stages + s] as usize;
                for (v, &w) in o.iter_mut().zip(&c[j * self.d..(j + 1) * self.d]) {
                    *v += w;
                }
            }
        }
        Ok(out)
    }

    /// Error after each stage, and each stage's perplexity and codebook usage.
    pub fn analyse(&self, x: &[f32], codes: &[u32]) -> Result<Vec<StageStats>> {
        let n = check_input(x, self.d)?;
        check_codes(codes, self.k)?;
        let norm = mean_sq_norm(x, self.d);
        let mut r = x.to_vec();
        let mut out = Vec::with_capacity(self.stages);
        for s in 0..self.stages {
            let col: Vec<u32> = (0..n).map(|i| codes[i * self.stages + s]).collect();
            subtract_codewords(&mut r, self.codebook(s), &col, self.d);
            let mse = mean_sq_norm(&r, self.d);
            let (perplexity, usage) = code_stats(&col, self.k);
            out.push(StageStats {
                stage: s,
                mse,
                relative_error: if norm > 0.0 { mse / norm } else { mse },
                perplexity,
                usage,
            });
        }
        Ok(out)
    }

    /// One stage of beam search over all vectors (host; see the module docs).
    fn beam_stage(&self, x: &[f32], state: &BeamState, s: usize, beam: usize) -> BeamState {
        let (d, k) = (self.d, self.k);
        let cs = self.codebook(s);
        let norms: Vec<f32> = cs
            .chunks_exact(d)
            .map(|c| c.iter().map(|v| v * v).sum())
            .collect();
        // tables[t] = C_t . C_s^T (k, k) for t < s.
        let tables: Vec<Vec<f32>> = (0..s)
            .map(|t| {
                let mut tab = vec![0.0f32; k * k];
                dots(self.codebook(t), cs, d, &mut tab);
                tab
            })
            .collect();
        let n = state.n;
        let width = s + 1;
        let mut next = BeamState {
            n,
            beam,
            width,
            len: vec![0; n],
            dist: vec![f32::INFINITY; n * beam],
            codes: vec![0; n * beam * width],
        };
        const CHUNK: usize = 32;
        next.len
            .par_chunks_mut(CHUNK)
            .zip(next.dist.par_chunks_mut(CHUNK * beam))
            .zip(next.codes.par_chunks_mut(CHUNK * beam * width))
            .enumerate()
            .for_each(|(ci, ((len, dist), codes))| {
                let i0 = ci * CHUNK;
                let m = len.len();
                let mut xc = vec![0.0f32; m * k];
                dots(&x[i0 * d..(i0 + m) * d], cs, d, &mut xc);
                let mut scores = Vec::with_capacity(state.beam * k);
                let mut top = Vec::with_capacity(beam);
                for v in 0..m {
                    let i = i0 + v;
                    let xcv = &xc[v * k..(v + 1) * k];
                    scores.clear();
                    for e in 0..state.len[i] {
                        let base = state.dist[i * state.beam + e];
                        let prev = state.entry_codes(i, e);
                        let start = scores.len();
                        scores.extend(
                            xcv.iter()
                                .zip(&norms)
                                .map(|(&xcj, &nj)| base - 2.0 * xcj + nj),
                        );
                        let row = &mut scores[start..];
                        for (t, tab) in tables.iter().enumerate() {
                            let a = prev[t] as usize;
                            for (sc, &tv) in row.iter_mut().zip(&tab[a * k..(a + 1) * k]) {
                                *sc += 2.0 * tv;
                            }
                        }
                    }
                    smallest(&scores, beam, &mut top);
                    len[v] = top.len();
                    for (o, &(sc, flat)) in top.iter().enumerate() {
                        let (e, j) = (flat as usize / k, flat as usize % k);
                        dist[v * beam + o] = sc;
                        let dst = &mut codes[(v * beam + o) * width..(v * beam + o + 1) * width];
                        dst[..s].copy_from_slice(state.entry_codes(i, e));
                        dst[s] = j as u32;
                    }
                }
            });
        next
    }

    pub fn to_file(&self, cfg: Option<&RvqConfig>) -> TensorFile {
        let mut f = TensorFile::new("rvq");
        f.set("d", self.d);
        f.set("k", self.k);
        f.set("stages", self.stages);
        f.set("shared", self.shared);
        f.set("beam", self.beam);
        if let Some(c) = cfg {
            f.set("vqkit.config", serde_json::to_string(c).unwrap_or_default());
        }
        f.put(
            "codebooks",
            vec![self.stages, self.k, self.d],
            self.codebooks.clone(),
        );
        f
    }

    pub fn from_file(f: &TensorFile) -> Result<Self> {
        let d: usize = f.get("d")?;
        let k: usize = f.get("k")?;
        let stages: usize = f.get("stages")?;
        let beam: usize = f.get("beam")?;
        if d == 0 || k == 0 || stages == 0 || beam == 0 {
            return Err(f.err("d, k, stages and beam must be positive"));
        }
        let codebooks = f.tensor("codebooks", &[stages, k, d])?.to_vec();
        Ok(Rvq {
            d,
            k,
            stages,
            shared: f.get("shared")?,
            beam,
            codebooks,
        })
    }
}

/// The B best partial encodings of every vector after some stages.
#[derive(Clone, Debug)]
struct BeamState {
    n: usize,
    beam: usize,
    /// Codes per entry (stages done).
    width: usize,
    /// Entries per vector (at most `beam`).
    len: Vec<usize>,
    /// `|x - partial sum|^2` per entry, best first.
    dist: Vec<f32>,
    codes: Vec<u32>,
}

impl BeamState {
    /// The empty encoding: one entry per vector with distance `|x|^2`.
    fn new(n: usize, beam: usize, x: &[f32]) -> Self {
        let d = x.len() / n.max(1);
        let mut dist = vec![f32::INFINITY; n * beam];
        for i in 0..n {
            dist[i * beam] = x[i * d..(i + 1) * d].iter().map(|v| v * v).sum();
        }
        BeamState {
            n,
            beam,
            width: 0,
            len: vec![1; n],
            dist,
            codes: Vec::new(),
        }
    }

    fn entry_codes(&self, i: usize, e: usize) -> &[u32] {
        let o = (i * self.beam + e) * self.width;
        &self.codes[o..o + self.width]
    }

    /// The best entry's codes for every vector.
    fn best_codes(&self) -> Vec<Vec<u32>> {
        (0..self.n)
            .map(|i| self.entry_codes(i, 0).to_vec())
            .collect()
    }
}

/// `r_i -= c[idx_i]` on the host.
pub(crate) fn subtract_codewords(r: &mut [f32], c: &[f32], idx: &[u32], d: usize) {
    r.par_chunks_mut(d.max(1) * 256)
        .zip(idx.par_chunks(256))
        .for_each(|(rb, ib)| {
            for (ri, &j) in rb.chunks_exact_mut(d).zip(ib) {
                let cj = &c[j as usize * d..(j as usize + 1) * d];
                for (a, &b) in ri.iter_mut().zip(cj) {
                    *a -= b;
                }
            }
        });
}

/// `r_i += c[idx_i]` on the host.
fn add_codewords(r: &mut [f32], c: &[f32], idx: &[u32], d: usize) {
    for (ri, &j) in r.chunks_exact_mut(d).zip(idx) {
        for (a, &b) in ri.iter_mut().zip(&c[j as usize * d..(j as usize + 1) * d]) {
            *a += b;
        }
    }
}

/// One refinement round of a shared codebook: pool the residuals every stage sees under
/// greedy encoding, subsample the pool, and run Lloyd steps on it from the current codebook.
fn shared_round<B: Backend>(
    b: &B,
    x: &[f32],
    d: usize,
    cfg: &RvqConfig,
    c: Vec<f32>,
    rng: &mut Rng,
) -> Result<Vec<f32>> {
    let n = x.len() / d;
    let cap = if cfg.max_points_per_centroid > 0 {
        cfg.k * cfg.max_points_per_centroid
    } else {
        usize::MAX
    };
    let mut pool = Vec::with_capacity((n * cfg.stages).min(cap) * d);
    let mut r = x.to_vec();
    for s in 0..cfg.stages {
        let a = assign(b, &r, &c, d)?;
        let take = subsample(&r, d, cap / cfg.stages, rng);
        pool.extend_from_slice(&take);
        if s + 1 < cfg.stages {
            subtract_codewords(&mut r, &c, &a.indices, d);
        }
    }
    let mut km = DeviceKMeans::new(b, &pool, &c, d)?;
    for _ in 0..cfg.iters.clamp(1, 5) {
        km.step()?;
    }
    km.centroids()
}
