//! Additive vector quantization (AVQ; Babenko and Lempitsky 2014).
//!
//! ```text
//! x^ = sum_m C_m[a_m],   C_m (K, d) full-dimensional,   a = argmin |x - x^|^2  (beam search)
//! ```
//!
//! Encoding is a beam search over codebooks in any order: an entry is a partial sum over
//! the codebooks used so far; each step extends every entry by one codeword of a codebook it
//! has not used yet and keeps the B best distinct code sets. Scores come from inner-product
//! tables, so a step costs look-ups rather than d-dimensional residuals:
//!
//! ```text
//! |x - p - C_m[j]|^2 = |x - p|^2 - 2 x.C_m[j] + |C_m[j]|^2 + 2 sum_{m' used} C_m'[a_m'].C_m[j]
//! ```
//!
//! Training: codebooks start from RQ-K-means (greedy residual k-means, on the backend), then
//! alternate beam encoding with a joint least-squares update of every codebook
//! (`C = argmin |X - B C|^2`, B the n x MK one-hot code matrix, solved through the normal
//! equations `(B^T B + lambda I) C = B^T X` by Cholesky). NSVQ training instead of least
//! squares is in [`crate::quant::nsvq`]. Beam search and least squares run on the host: the
//! trait has no top-B or dense-solve kernel.

use super::Decoder;
use super::linalg::{dots, smallest, solve_spd};
use super::model_io::TensorFile;
use super::rvq::{Rvq, RvqConfig};
use super::{check_input, check_training, mse};
use crate::backend::{Backend, Code};
use crate::error::{Error, Result};
use crate::ops::check_codes;
use crate::quant::kmeans::Init;
use rayon::prelude::*;

/// Hyper-parameters of [`Avq::fit`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AvqConfig {
    /// Codebooks M.
    pub m: usize,
    /// Codewords per codebook.
    pub k: usize,
    /// Lloyd iterations of the RQ-K-means initialisation.
    pub iters: usize,
    pub init: Init,
    pub seed: u64,
    pub beam: usize,
    /// Encode / least-squares rounds after the initialisation.
    pub ls_rounds: usize,
    pub max_points_per_centroid: usize,
}

impl AvqConfig {
    pub fn new(m: usize, k: usize) -> Self {
        AvqConfig {
            m,
            k,
            iters: 20,
            init: Init::KMeansPlusPlus,
            seed: 0,
            beam: 4,
            ls_rounds: 3,
            max_points_per_centroid: 256,
        }
    }
}

/// A trained additive quantizer.
#[derive(Clone, Debug, PartialEq)]
pub struct Avq {
    pub d: usize,
    pub m: usize,
    pub k: usize,
    /// Default beam width for encoding.
    pub beam: usize,
    /// (m, k, d), row-major.
    pub codebooks: Vec<f32>,
}

/// A code not yet chosen in a partial encoding.
const UNUSED: u32 = u32::MAX;

impl Avq {
    pub fn codebook(&self, m: usize) -> &[f32] {
        let sz = self.k * self.d;
        &self.codebooks[m * sz..(m + 1) * sz]
    }

    /// RQ-K-means initialisation, then `ls_rounds` of beam encoding and least squares.
    /// `on_round(round, mse)` reports the training error after each round (round 0: the
    /// initialisation).
    pub fn fit<B: Backend>(
        b: &B,
        x: &[f32],
        d: usize,
        cfg: &AvqConfig,
        on_round: &mut dyn FnMut(usize, f64),
    ) -> Result<Avq> {
        check_training(x, d, cfg.k)?;
        if cfg.m == 0 || cfg.beam == 0 {
            return Err(Error::invalid("m, beam", "must be at least 1"));
        }
        let rcfg = RvqConfig {
            stages: cfg.m,
            k: cfg.k,
            iters: cfg.iters,
            init: cfg.init,
            seed: cfg.seed,
            beam: 1,
            shared: false,
            shared_rounds: 0,
            refine_rounds: 0,
            progressive_dim_steps: 10,
            max_points_per_centroid: cfg.max_points_per_centroid,
        };
        let rvq = Rvq::fit(b, x, d, &rcfg, &mut |_| {})?;
        let mut model = Avq::from_rvq(&rvq, cfg.beam);
        let mut codes = model.encode(x, cfg.beam)?;
        let mut err = mse(x, &model.decode(&codes)?, d);
        on_round(0, err);
        for round in 1..=cfg.ls_rounds {
            crate::interrupt::check()?;
            let before = model.codebooks.clone();
            model.least_squares(x, &codes)?;
            let new_codes = model.encode(x, cfg.beam)?;
            let new_err = mse(x, &model.decode(&new_codes)?, d);
            if new_err > err {
                // Least squares is optimal for the old codes, not the new ones; a rare
                // worse round is undone rather than kept.
                model.codebooks = before;
                on_round(round, err);
                break;
            }
            codes = new_codes;
            err = new_err;
            on_round(round, err);
        }
        Ok(model)
    }

    /// An AVQ with an RVQ's codebooks (every RVQ is an additive quantizer).
    pub fn from_rvq(r: &Rvq, beam: usize) -> Avq {
        Avq {
            d: r.d,
            m: r.stages,
            k: r.k,
            beam,
            codebooks: r.codebooks.clone(),
        }
    }

    /// Codes (n, m) by beam search of width `beam` (column `m` indexes codebook `m`).
    pub fn encode(&self, x: &[f32], beam: usize) -> Result<Vec<u32>> {
        let n = check_input(x, self.d)?;
        if beam == 0 {
            return Err(Error::invalid("beam", "must be at least 1"));
        }
        let (m, k, d) = (self.m, self.k, self.d);
        let mk = m * k;
        let norms: Vec<f32> = self
            .codebooks
            .chunks_exact(d)
            .map(|c| c.iter().map(|v| v * v).sum())
            .collect();
        // table[(m1 k + a) mk + (m2 k + j)] = C_m1[a] . C_m2[j]
        let mut table = vec![0.0f32; mk * mk];
        dots(&self.codebooks, &self.codebooks, d, &mut table);
        let mut codes = vec![0u32; n * m];
        const CHUNK: usize = 32;
        codes
            .par_chunks_mut(CHUNK * m)
            .enumerate()
            .try_for_each(|(ci, out)| {
                let i0 = ci * CHUNK;
                let rows = out.len() / m;
                let xs = &x[i0 * d..(i0 + rows) * d];
                let mut xc = vec![0.0f32; rows * mk];
                dots(xs, &self.codebooks, d, &mut xc);
                let mut search = Search::new(beam, m, k);
                for v in 0..rows {
                    let x0: f32 = xs[v * d..(v + 1) * d].iter().map(|t| t * t).sum();
                    let best = search
                        .run(x0, &xc[v * mk..(v + 1) * mk], &norms, &table)
                        .ok_or(Error::Overflow { row: i0 + v })?;
                    out[v * m..(v + 1) * m].copy_from_slice(best);
                }
                Ok(())
            })?;
        Ok(codes)
    }

    /// `x^_i = sum_s C_s[codes[i, s]]`, added to zero in codebook order, as
    /// [`Rvq::decode`] (the same kernel). (A last row of fewer than `m` codes is dropped.)
    pub fn decode<C: Code>(&self, codes: &[C]) -> Result<Vec<f32>> {
        Decoder::sums(&self.codebooks, (self.m, self.k, self.d)).decode(codes)
    }

    /// [`Avq::decode`] into `out`, which must hold `codes.len() / m * d` floats; everything
    /// is checked before anything is written.
    pub fn decode_into<C: Code>(&self, codes: &[C], out: &mut [f32]) -> Result<()> {
        Decoder::sums(&self.codebooks, (self.m, self.k, self.d)).decode_into(codes, out)
    }

    /// Replaces every codebook by the joint least-squares solution for fixed codes. Codewords
    /// no vector uses are left where they were (their rows of the system are regularised).
    pub fn least_squares(&mut self, x: &[f32], codes: &[u32]) -> Result<()> {
        let n = check_input(x, self.d)?;
        check_codes(codes, self.k)?;
        let (m, k, d) = (self.m, self.k, self.d);
        let p = m * k;
        let mut a = vec![0.0f64; p * p];
        let mut r = vec![0.0f64; p * d];
        for i in 0..n {
            let c = &codes[i * m..(i + 1) * m];
            let xi = &x[i * d..(i + 1) * d];
            for s in 0..m {
                let u = s * k + c[s] as usize;
                for t in 0..m {
                    a[u * p + t * k + c[t] as usize] += 1.0;
                }
                for (acc, &v) in r[u * d..(u + 1) * d].iter_mut().zip(xi) {
                    *acc += v as f64;
                }
            }
        }
        // Pull unused codewords towards their current value instead of towards zero:
        // (A + l I) C = R + l C_old, which leaves a row with no data at C_old.
        let mean_diag = (0..p).map(|i| a[i * p + i]).sum::<f64>() / p as f64;
        let lambda = 1e-6 * mean_diag.max(1e-12);
        for u in 0..p {
            for t in 0..d {
                r[u * d + t] += lambda * self.codebooks[u * d + t] as f64;
            }
            a[u * p + u] += lambda;
        }
        if !solve_spd(&mut a, &mut r, p, d, 0.0) {
            return Err(Error::invalid(
                "codes",
                "the least-squares system is singular or not finite",
            ));
        }
        if r.iter()
            .any(|v| !v.is_finite() || v.abs() > f32::MAX as f64)
        {
            return Err(Error::Overflow { row: 0 });
        }
        self.codebooks = r.iter().map(|&v| v as f32).collect();
        Ok(())
    }

    pub fn to_file(&self, cfg: Option<&AvqConfig>) -> TensorFile {
        let mut f = TensorFile::new("avq");
        f.set("d", self.d);
        f.set("m", self.m);
        f.set("k", self.k);
        f.set("beam", self.beam);
        if let Some(c) = cfg {
            f.set("vqkit.config", serde_json::to_string(c).unwrap_or_default());
        }
        f.put(
            "codebooks",
            vec![self.m, self.k, self.d],
            self.codebooks.clone(),
        );
        f
    }

    pub fn from_file(f: &TensorFile) -> Result<Self> {
        let d: usize = f.get("d")?;
        let m: usize = f.get("m")?;
        let k: usize = f.get("k")?;
        let beam: usize = f.get("beam")?;
        if d == 0 || m == 0 || k == 0 || beam == 0 {
            return Err(f.err("d, m, k and beam must be positive"));
        }
        let codebooks = f.tensor("codebooks", &[m, k, d])?.to_vec();
        Ok(Avq {
            d,
            m,
            k,
            beam,
            codebooks,
        })
    }
}

/// Scratch space for one vector's beam search.
struct Search {
    beam: usize,
    m: usize,
    k: usize,
    /// Entries: distance and codes (m each; UNUSED where not chosen).
    dist: Vec<f32>,
    codes: Vec<u32>,
    next_dist: Vec<f32>,
    next_codes: Vec<u32>,
    scores: Vec<f32>,
    top: Vec<(f32, u32)>,
}

impl Search {
    fn new(beam: usize, m: usize, k: usize) -> Self {
        Search {
            beam,
            m,
            k,
            dist: Vec::new(),
            codes: Vec::new(),
            next_dist: Vec::new(),
            next_codes: Vec::new(),
            scores: Vec::new(),
            top: Vec::new(),
        }
    }

    /// The best code set for one vector with `|x|^2 = x0` and `xc = x . C_all` (m k), or
    /// `None` when no candidate has a finite distance (the data or the codebooks overflow
    /// f32: found by fuzzing model files).
    fn run(&mut self, x0: f32, xc: &[f32], norms: &[f32], table: &[f32]) -> Option<&[u32]> {
        let (m, k) = (self.m, self.k);
        let mk = m * k;
        self.dist.clear();
        self.codes.clear();
        self.dist.push(x0);
        self.codes.extend(std::iter::repeat_n(UNUSED, m));
        for _step in 0..m {
            self.scores.clear();
            for e in 0..self.dist.len() {
                let base = self.dist[e];
                let ec = &self.codes[e * m..(e + 1) * m];
                // One row of m k scores per entry; used codebooks score +inf.
                let start = self.scores.len();
                self.scores.extend(
                    xc.iter()
                        .zip(norms)
                        .map(|(&xcj, &nj)| base - 2.0 * xcj + nj),
                );
                let row = &mut self.scores[start..start + mk];
                for (s, &a) in ec.iter().enumerate() {
                    if a == UNUSED {
                        continue;
                    }
                    let trow = &table[(s * k + a as usize) * mk..(s * k + a as usize + 1) * mk];
                    for (sc, &t) in row.iter_mut().zip(trow) {
                        *sc += 2.0 * t;
                    }
                    row[s * k..(s + 1) * k].fill(f32::INFINITY);
                }
            }
            // Extra candidates so that duplicate code sets (the same codewords reached in
            // another order) can be dropped and B distinct ones still kept.
            smallest(&self.scores, self.beam * m.max(1), &mut self.top);
            self.next_dist.clear();
            self.next_codes.clear();
            for &(sc, flat) in &self.top {
                if !sc.is_finite() {
                    break;
                }
                if self.next_dist.len() == self.beam {
                    break;
                }
                let (e, col) = (flat as usize / mk, flat as usize % mk);
                let (s, j) = (col / k, col % k);
                let start = self.next_codes.len();
                self.next_codes
                    .extend_from_slice(&self.codes[e * m..(e + 1) * m]);
                self.next_codes[start + s] = j as u32;
                let dup = (0..self.next_dist.len()).any(|o| {
                    self.next_codes[o * m..(o + 1) * m] == self.next_codes[start..start + m]
                });
                if dup {
                    self.next_codes.truncate(start);
                } else {
                    self.next_dist.push(sc);
                }
            }
            std::mem::swap(&mut self.dist, &mut self.next_dist);
            std::mem::swap(&mut self.codes, &mut self.next_codes);
            if self.dist.is_empty() {
                return None;
            }
        }
        self.codes.get(..m)
    }
}
