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
use super::{Decoder, check_input, check_training, code_stats, mean_sq_norm, sub_seed};
use crate::backend::cpu::{Isa, residual_codes, size};
use crate::backend::{
    Backend, Code, Shape, blocked_host, check_code_type, check_finite, narrow_codes,
};
use crate::error::{Error, Result};
use crate::ops::{DeviceKMeans, assign, check_codes, rows};
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
    ///
    /// Greedy on a backend whose memory is the host's (the CPU), in blocks of rows, every
    /// stage run while a block is in cache (`residual_codes`): the codes and errors of the
    /// loop per stage (see docs/performance.md). A model whose fields disagree (k = 0,
    /// codebooks of another length than (stages, k, d)) is refused before the points are
    /// read; then come the points' errors, then the beam's.
    pub fn encode<B: Backend>(&self, b: &B, x: &[f32], beam: usize) -> Result<Vec<u32>> {
        let n = self.check_encode(x, beam)?;
        if beam > 1 {
            return Ok(self.encode_beam(x, n, beam));
        }
        if blocked_host(b).is_some() {
            let len = size("codes", &[n, self.stages])?;
            let mut codes = crate::resources::zeroed_lazy("the codes", len)?;
            if self.encode_blocked(b, x, n, &mut codes)? {
                return Ok(codes);
            }
        }
        check_finite("points", x)?;
        self.encode_each(b, x, n)
    }

    /// [`Rvq::encode`] into `out`: n x stages codes of type `C`, which must hold `k` indices
    /// (`u8` up to 256 codewords). Checked before anything is written, in this order: the
    /// model's fields, the points' shape (with a beam wider than 1, their values too), the
    /// beam, the codes' length, their type. After an error from the points' values (a NaN,
    /// an infinity, an overflow) `out`'s contents are unspecified. Greedy on the CPU, the
    /// codes are written in `C` as they are found: 8-bit codes of many vectors take a byte
    /// each. A device's codes and a beam search's are found as `u32`, then narrowed.
    pub fn encode_into<B: Backend, C: Code>(
        &self,
        b: &B,
        x: &[f32],
        beam: usize,
        out: &mut [C],
    ) -> Result<()> {
        let n = self.check_encode(x, beam)?;
        crate::backend::check_len("codes", out.len(), size("codes", &[n, self.stages])?)?;
        check_code_type::<C>(self.k)?;
        if beam > 1 {
            return narrow_codes(&self.encode_beam(x, n, beam), out);
        }
        if self.encode_blocked(b, x, n, out)? {
            return Ok(());
        }
        check_finite("points", x)?;
        narrow_codes(&self.encode_each(b, x, n)?, out)
    }

    /// The model's fields, then the points (all of them for a beam search, their shape
    /// for greedy codes), then `beam`; the number of points.
    fn check_encode(&self, x: &[f32], beam: usize) -> Result<usize> {
        Shape::new(0, self.k, self.d).validate()?;
        let want = size("codebooks", &[self.stages, self.k, self.d])?;
        crate::backend::check_len("codebooks", self.codebooks.len(), want)?;
        match beam {
            0 => {
                check_input(x, self.d)?;
                Err(Error::invalid("beam", "must be at least 1"))
            }
            1 => rows("points", x, self.d),
            _ => check_input(x, self.d),
        }
    }

    /// Beam search's codes of `n` checked points.
    fn encode_beam(&self, x: &[f32], n: usize, beam: usize) -> Vec<u32> {
        let mut state = BeamState::new(n, beam, x);
        for s in 0..self.stages {
            state = self.beam_stage(x, &state, s, beam);
        }
        state.best_codes().concat()
    }

    /// Greedy codes as a device computes them: per stage, the nearest codeword to every
    /// residual, then the residuals less their codewords.
    fn encode_each<B: Backend>(&self, b: &B, x: &[f32], n: usize) -> Result<Vec<u32>> {
        let mut r = x.to_vec();
        let mut codes = vec![0u32; size("codes", &[n, self.stages])?];
        for s in 0..self.stages {
            let a = assign(b, &r, self.codebook(s), self.d)?;
            subtract_codewords(&mut r, self.codebook(s), &a.indices, self.d);
            for (i, &c) in a.indices.iter().enumerate() {
                codes[i * self.stages + s] = c;
            }
        }
        Ok(codes)
    }

    /// Greedy codes on a backend whose memory is the host's (the CPU), in blocks of rows,
    /// every stage run while a block is in cache (`residual_codes`): the codes of the loop
    /// per stage, bit for bit. `false`, `out` then unspecified, on other backends, and where
    /// a value is not finite (in x, a codebook, a residual or a distance): the loop per stage
    /// then gives its first error. Where it returns `true`, the points were finite: on the
    /// CPU a point with a NaN or an infinity has a distance that is not finite
    /// (`flags_non_finite_points`).
    fn encode_blocked<B: Backend, C: Code>(
        &self,
        b: &B,
        x: &[f32],
        n: usize,
        out: &mut [C],
    ) -> Result<bool> {
        let Some(isa) = blocked_host(b) else {
            return Ok(false);
        };
        let shape = (self.stages, self.k);
        let run = |par| residual_codes(isa, par, x, self.d, &self.codebooks, shape, out);
        let work = [n, self.k, self.d, self.stages]
            .iter()
            .fold(1usize, |p, &v| p.saturating_mul(v));
        match b.run_on_host(work, run) {
            Some(Ok(done)) => Ok(done),
            None => Ok(false),
            Some(Err(e)) => Err(e),
        }
    }

    /// `x^_i = sum_s C_s[codes[i, s]]`, added to zero in stage order (the same bits as stage
    /// after stage over all rows), rows in blocks on rayon's current pool (called outside
    /// one, rayon's global pool: every core). (A last row of fewer than `stages` codes is
    /// dropped.)
    pub fn decode<C: Code>(&self, codes: &[C]) -> Result<Vec<f32>> {
        Decoder::sums(&self.codebooks, (self.stages, self.k, self.d)).decode(codes)
    }

    /// [`Rvq::decode`] into `out`, which must hold `codes.len() / stages * d` floats;
    /// everything is checked before anything is written.
    pub fn decode_into<C: Code>(&self, codes: &[C], out: &mut [f32]) -> Result<()> {
        Decoder::sums(&self.codebooks, (self.stages, self.k, self.d)).decode_into(codes, out)
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

/// `r_i -= c[idx_i]` on the host, on rayon's current pool.
pub(crate) fn subtract_codewords(r: &mut [f32], c: &[f32], idx: &[u32], d: usize) {
    crate::backend::cpu::subtract_codewords(Isa::detect(), r, c, idx, d);
}

/// `r_i += c[idx_i]` on the host, on rayon's current pool.
fn add_codewords(r: &mut [f32], c: &[f32], idx: &[u32], d: usize) {
    crate::backend::cpu::add_codewords(Isa::detect(), r, c, idx, d);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{CacheSizes, CpuBackend, DECODE_ROWS, block_rows, residual_decode};
    use crate::quant::test_support::{cpu_backends, same_errors};

    fn model(d: usize, stages: usize, k: usize, seed: u64) -> Rvq {
        // Each stage's codewords smaller than the last, as trained ones are.
        let mut codebooks = Rng::new(seed).normal_vec(stages * k * d);
        for (s, c) in codebooks.chunks_mut(k * d).enumerate() {
            c.iter_mut().for_each(|v| *v *= 0.5f32.powi(s as i32));
        }
        Rvq {
            d,
            k,
            stages,
            shared: false,
            beam: 1,
            codebooks,
        }
    }

    /// Refinement rounds (each stage refitted with the other stages' codes fixed, its
    /// codewords added back to the residuals and subtracted again on the host) lower the
    /// greedy codes' error on clustered data (0.572 -> 0.547 on the Zen 4 VM, AVX-512), and
    /// give the same codebooks in pools of 1 and 3 threads, where the host's additions and
    /// subtractions run.
    #[test]
    fn refinement_lowers_the_error_the_same_on_1_and_3_threads() {
        let (n, d) = (3000, 8);
        let x = crate::rng::clustered(n, d, 40, 0.3, 5);
        let mut cfg = RvqConfig::new(3, 16);
        cfg.iters = 8;
        let fit = |cfg: &RvqConfig, threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let b = CpuBackend::new(None).unwrap();
                Rvq::fit(&b, &x, d, cfg, &mut |_| {}).unwrap()
            })
        };
        let one = CpuBackend::new(Some(1)).unwrap();
        let error = |m: &Rvq| {
            let codes = m.encode(&one, &x, 1).unwrap();
            super::super::mse(&x, &m.decode(&codes).unwrap(), d)
        };
        let plain = fit(&cfg, 1);
        cfg.refine_rounds = 2;
        let refined = fit(&cfg, 1);
        let (before, after) = (error(&plain), error(&refined));
        assert!(after < 0.99 * before, "{before} -> {after}");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fit(&cfg, 3).codebooks), bits(&refined.codebooks));
    }

    /// The host's additions and subtractions of codewords, on every instruction set and in
    /// pools of 1 and 3 threads, are the scalar loop's, bit for bit: widths around the
    /// vectors', rows around the blocks (256), a partial last row and fewer codes than rows.
    #[test]
    fn codeword_shifts_are_the_scalar_loops() {
        for d in [1, 7, 16, 17] {
            for (rows, codes) in [(1, 1), (255, 255), (257, 257), (300, 290)] {
                let mut rng = Rng::new((d * 1000 + rows) as u64);
                let c = rng.normal_vec(5 * d);
                let idx: Vec<u32> = (0..codes).map(|i| (i * 3 % 5) as u32).collect();
                let r0 = rng.normal_vec(rows * d + d / 2);
                for sub in [true, false] {
                    let mut want = r0.clone();
                    for (ri, &j) in want.chunks_exact_mut(d).zip(&idx) {
                        for (a, &b) in ri.iter_mut().zip(&c[j as usize * d..][..d]) {
                            *a = if sub { *a - b } else { *a + b };
                        }
                    }
                    for isa in Isa::available() {
                        for threads in [1, 3] {
                            let pool = rayon::ThreadPoolBuilder::new()
                                .num_threads(threads)
                                .build()
                                .unwrap();
                            let mut got = r0.clone();
                            pool.install(|| {
                                if sub {
                                    crate::backend::cpu::subtract_codewords(
                                        isa, &mut got, &c, &idx, d,
                                    )
                                } else {
                                    crate::backend::cpu::add_codewords(isa, &mut got, &c, &idx, d)
                                }
                            });
                            let bits =
                                |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                            assert_eq!(bits(&got), bits(&want), "{isa:?} d {d} rows {rows}");
                        }
                    }
                }
            }
        }
    }

    /// The blocked greedy encoder gives the loop per stage's codes bit for bit, on every
    /// instruction set and thread count: codebooks that take the narrow, tall, few and
    /// tiled kernels, one and several stages, row counts around the blocks' edges.
    #[test]
    fn blocked_greedy_codes_are_those_of_each_stage() {
        let l2 = CacheSizes::detect().l2;
        for (i, &(d, stages, k)) in [
            (2, 3, 16),
            (8, 4, 256),
            (3, 2, 4),
            (16, 1, 64),
            (128, 3, 16),
        ]
        .iter()
        .enumerate()
        {
            let rq = model(d, stages, k, i as u64);
            let block = block_rows(l2, d);
            for n in [0, 1, 63, 65, block + 1, 2 * block + 5] {
                let x = Rng::new(50 + n as u64).normal_vec(n * d);
                for b in cpu_backends() {
                    // Bit for bit on each instruction set: scores fold or not by ISA.
                    let want = rq.encode_each(&b, &x, n).unwrap();
                    let got = rq.encode(&b, &x, 1).unwrap();
                    assert_eq!(
                        got,
                        want,
                        "d {d} S {stages} k {k} n {n} {} {}",
                        b.isa().as_str(),
                        b.threads()
                    );
                }
            }
        }
    }

    /// The blocked decoder against stage after stage over all rows, bit for bit, on every
    /// instruction set, with a codeword of -0.0 (0 + -0 is +0: the sum starts from zero),
    /// rows around the blocks' edges, a dropped partial row, and widths around the columns
    /// summed in registers at a time (64).
    #[test]
    fn decode_adds_stage_after_stage() {
        let shapes = [
            (1, 1, 2),
            (64, 1, 3),
            (130, 1, 2),
            (3, 2, 5),
            (63, 3, 7),
            (64, 2, 4),
            (65, 3, 4),
            (128, 4, 16),
            (8, 8, 256),
            (130, 2, 3),
        ];
        for (d, stages, k) in shapes {
            let mut rq = model(d, stages, k, d as u64);
            rq.codebooks[0] = -0.0;
            for n in [0, 1, DECODE_ROWS - 1, DECODE_ROWS + 1, 2 * DECODE_ROWS + 3] {
                let mut rng = Rng::new(n as u64);
                let len = n * stages + usize::from(stages > 1);
                let codes: Vec<u32> = (0..len)
                    .map(|i| {
                        if i == 0 {
                            0
                        } else {
                            (rng.uniform() * k as f64) as u32
                        }
                    })
                    .collect();
                let mut want = vec![0.0f32; n * d];
                for s in 0..stages {
                    for (i, o) in want.chunks_exact_mut(d).enumerate() {
                        let j = codes[i * stages + s] as usize;
                        for (v, &w) in o.iter_mut().zip(&rq.codebook(s)[j * d..][..d]) {
                            *v += w;
                        }
                    }
                }
                let got = rq.decode(&codes).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "d {d} S {stages} n {n}");
                for isa in Isa::available() {
                    let mut got = vec![f32::NAN; n * d];
                    let rows = &codes[..n * stages];
                    residual_decode(isa, &rq.codebooks, (stages, k, d), rows, &mut got).unwrap();
                    assert_eq!(bits(&got), bits(&want), "{isa:?} d {d} S {stages} n {n}");
                }
            }
        }
        let rq = model(2, 2, 3, 0);
        assert!(rq.decode(&[0u32, 3]).is_err());
        assert!(
            Rvq {
                codebooks: vec![0.0; 3],
                ..rq.clone()
            }
            .decode(&[0u32, 0])
            .is_err()
        );
        assert_eq!(
            Rvq {
                stages: 0,
                codebooks: vec![],
                ..rq
            }
            .decode::<u32>(&[])
            .unwrap(),
            Vec::<f32>::new()
        );
    }

    fn errors(rq: &Rvq, x: &[f32]) -> Vec<String> {
        let each = |b: &CpuBackend| rq.encode_each(b, x, x.len() / rq.d);
        same_errors(x, |b| rq.encode(b, x, 1), each)
    }

    /// Where a value is not finite the loop per stage gives the error, in its order: a NaN
    /// point, a bad codebook, an overflowing distance. (A residual cannot overflow unless a
    /// distance of the stage before did.)
    #[test]
    fn blocked_greedy_errors_are_the_loops() {
        let (d, stages, k) = (4, 3, 16);
        let n = 2 * block_rows(CacheSizes::detect().l2, d) + 3;
        let x = Rng::new(9).normal_vec(n * d);
        let rq = model(d, stages, k, 1);
        let mut nan = x.clone();
        nan[(n - 1) * d + 2] = f32::NAN;
        assert!(errors(&rq, &nan)[0].contains(&format!("index {}", (n - 1) * d + 2)));
        let mut bad = model(d, stages, k, 1);
        bad.codebooks[k * d + 3] = f32::INFINITY;
        assert!(errors(&bad, &x)[0].contains("codebook"));
        // No points: the codebook is still checked, as `ops::assign` checks it.
        assert!(errors(&bad, &[])[0].contains("codebook"));
        // A beam of 0 after the points' errors.
        for b in cpu_backends() {
            let e = bad.encode(&b, &nan, 0).unwrap_err().to_string();
            assert!(e.contains("points"), "{e}");
            assert!(
                rq.encode(&b, &x, 0)
                    .unwrap_err()
                    .to_string()
                    .contains("beam")
            );
        }
        let mut big = x.clone();
        big[(n - 3) * d + 1] = 1e30;
        assert_eq!(
            errors(&rq, &big),
            [Error::Overflow { row: n - 3 }.to_string()]
        );
        // Fields that disagree are errors, not panics; so are stages without points checked.
        let short = Rvq {
            codebooks: vec![0.0; 7],
            ..model(d, stages, k, 1)
        };
        for b in cpu_backends() {
            assert!(short.encode(&b, &x, 1).is_err());
            let none = Rvq {
                stages: 0,
                codebooks: vec![],
                ..model(d, stages, k, 1)
            };
            assert_eq!(none.encode(&b, &x, 1).unwrap(), Vec::<u32>::new());
            assert!(none.encode(&b, &nan, 1).is_err());
        }
    }
}
