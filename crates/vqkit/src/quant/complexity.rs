//! Bit rate and encoding complexity per vector, counted the way the NSVQ authors' calculator
//! counts them (four basic operations, weighted as in the ITU-T software tool library's
//! WMOPS: addition, multiplication and move weigh 1 in single precision and 2 in double,
//! a branch weighs 4):
//!
//! ```text
//! distances to K codewords of dim d:  additions K (2d - 1), multiplications K d
//! argmin over m values:               additions m - 1 (compare), moves m - 1
//! ```
//!
//! - VQ (K = 2^bits): distances to K, argmin over K, d moves (the codeword).
//! - RVQ (S stages of K): per stage distances to K, argmin over K, d moves; d additions per
//!   residual update (S - 1 of them); the reconstruction adds S - 1 vectors of d.
//! - PVQ (S = M sub-vectors of d / M): d moves to split and d to join; per sub-vector
//!   distances to K in d / M, argmin over K, d / M moves.
//! - AVQ (M codebooks of K, beam B): the first step searches all M K codewords and keeps B
//!   (B successive argmins); step `i` (1 <= i < M) forms B residuals (i B d moves and
//!   additions), searches the (M - i) K codewords of the codebooks not yet used for each
//!   (distances, and B selections out of each list), stores B^2 candidates (B^2 moves and
//!   B^2 d moves to quantize them, B^2 i d additions), evaluates their errors (B^2 (2d - 1)
//!   additions, B^2 (d + 1) multiplications), and keeps B (the last step keeps 1); branches
//!   count the `C(M, i) - 1` codebook-order cases.
//!
//! The published calculator loops over stages `1..S`, i.e. counts S - 1 stages for RVQ and
//! PVQ; a vector encoded with S stages does S searches, so **this calculator counts all S**
//! (the difference is one stage's search, K (2d - 1) + K - 1 additions and so on).
//! [`published`] gives the published calculator's figures as well, so that the paper's
//! can be matched: for RVQ, S - 1 searches, S - 2 residual updates and S - 1 reconstruction
//! additions of d (0 for a single stage); for PVQ, S - 1 sub-vector searches between the
//! 2 d moves; for AVQ the same counts as here. The published figures are these counts
//! divided by 10^6 (it calls them WMOPS).

use crate::error::{Error, Result};

/// Which quantizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Vq,
    Rvq,
    Pvq,
    Avq,
}

crate::impl_choice!(Method, "method", { Vq => "vq", Rvq => "rvq", Pvq => "pvq", Avq => "avq" });

/// Operation counts per encoded vector.
#[derive(Clone, Debug, PartialEq, Default, serde::Serialize)]
pub struct Complexity {
    pub bits_per_vector: f64,
    pub additions: f64,
    pub multiplications: f64,
    pub moves: f64,
    pub branches: f64,
    /// `additions + multiplications + moves` (weighted 1, or 2 in double precision) plus
    /// `4 branches`.
    pub weighted: f64,
}

impl Complexity {
    fn distances(&mut self, k: f64, d: f64, times: f64) {
        self.additions += times * k * (2.0 * d - 1.0);
        self.multiplications += times * k * d;
    }

    fn argmin(&mut self, m: f64) {
        self.additions += m - 1.0;
        self.moves += m - 1.0;
    }

    /// `pick` successive argmins over a shrinking list of `m`, `times` times.
    fn select(&mut self, m: f64, pick: usize, times: usize) {
        for _ in 0..times {
            for j in 0..pick {
                self.argmin(m - j as f64);
            }
        }
    }
}

fn binom(n: usize, k: usize) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// Counts for encoding one vector of dimension `d` with `stages` codebooks (VQ: 1) of
/// `2^bits` codewords each, beam width `beam` (AVQ only).
pub fn complexity(
    method: Method,
    d: usize,
    stages: usize,
    bits: u32,
    beam: usize,
    double_precision: bool,
) -> Result<Complexity> {
    if d == 0 {
        return Err(Error::ZeroDimension);
    }
    if stages == 0 {
        return Err(Error::invalid("stages", "must be at least 1"));
    }
    if bits == 0 || bits > 40 {
        return Err(Error::invalid("bits", "must be in 1..=40"));
    }
    let k = (1u64 << bits) as f64;
    let df = d as f64;
    let s = stages as f64;
    let mut c = Complexity::default();
    match method {
        Method::Vq => {
            c.distances(k, df, 1.0);
            c.argmin(k);
            c.moves += df;
            c.bits_per_vector = bits as f64;
        }
        Method::Rvq => {
            for i in 0..stages {
                c.distances(k, df, 1.0);
                c.argmin(k);
                c.moves += df;
                if i + 1 < stages {
                    c.additions += df; // residual update
                }
            }
            c.additions += (s - 1.0) * df; // reconstruction
            c.bits_per_vector = s * bits as f64;
        }
        Method::Pvq => {
            if !d.is_multiple_of(stages) {
                return Err(Error::invalid(
                    "stages",
                    format!("{stages} sub-vectors do not divide d = {d}"),
                ));
            }
            let ds = df / s;
            c.moves += df;
            for _ in 0..stages {
                c.distances(k, ds, 1.0);
                c.argmin(k);
                c.moves += ds;
            }
            c.moves += df;
            c.bits_per_vector = s * bits as f64;
        }
        Method::Avq => {
            if beam == 0 || beam as f64 > k {
                return Err(Error::invalid(
                    "beam",
                    format!("must be in 1..={k} (the codewords per codebook)"),
                ));
            }
            let b = beam as f64;
            c.distances(s * k, df, 1.0);
            c.select(s * k, beam, 1);
            c.moves += b;
            for i in 1..stages {
                let fi = i as f64;
                c.moves += fi * b * df;
                c.additions += fi * b * df;
                c.branches += binom(stages, i) - 1.0;
                c.distances((s - fi) * k, df, b);
                c.select((s - fi) * k, beam, beam);
                c.moves += b * b + b * b * df;
                c.additions += b * b * fi * df;
                c.additions += b * b * (2.0 * df - 1.0);
                c.multiplications += b * b * (df + 1.0);
                if i + 1 == stages {
                    c.argmin(b * b);
                } else {
                    c.select(b * b, beam, 1);
                    c.moves += b;
                }
            }
            c.bits_per_vector = s * bits as f64;
        }
    }
    let w = if double_precision { 2.0 } else { 1.0 };
    c.weighted = w * (c.additions + c.multiplications + c.moves) + 4.0 * c.branches;
    Ok(c)
}

/// The published calculator's counts for the same quantizer (see the module doc); `None`
/// for VQ, which it has no calculator for. Inputs are checked as [`complexity`] checks them.
pub fn published(
    method: Method,
    d: usize,
    stages: usize,
    bits: u32,
    beam: usize,
    double_precision: bool,
) -> Result<Option<Complexity>> {
    let own = complexity(method, d, stages, bits, beam, double_precision)?;
    let k = (1u64 << bits) as f64;
    let df = d as f64;
    let s = stages as f64;
    let mut c = Complexity {
        bits_per_vector: own.bits_per_vector,
        ..Complexity::default()
    };
    match method {
        Method::Vq => return Ok(None),
        Method::Avq => return Ok(Some(own)),
        Method::Rvq => {
            for i in 1..stages {
                c.distances(k, df, 1.0);
                c.argmin(k);
                c.moves += df;
                if i + 1 < stages {
                    c.additions += df;
                }
            }
            c.additions += (s - 1.0) * df;
        }
        Method::Pvq => {
            let ds = df / s;
            c.moves += df;
            for _ in 1..stages {
                c.distances(k, ds, 1.0);
                c.argmin(k);
                c.moves += ds;
            }
            c.moves += df;
        }
    }
    let w = if double_precision { 2.0 } else { 1.0 };
    c.weighted = w * (c.additions + c.multiplications + c.moves) + 4.0 * c.branches;
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_figures_match_the_published_calculator() {
        // The weighted counts the published complexity.py computes (its printed WMOPS times
        // 10^6) for d = 128, K = 32, S = 4, beam 8, single precision, and d = K = 16, S = 1.
        let p = |m, d, s, bits, beam| published(m, d, s, bits, beam, false).unwrap().unwrap();
        assert_eq!(p(Method::Avq, 128, 4, 5, 8).weighted, 824170.0);
        assert_eq!(p(Method::Rvq, 128, 4, 5, 1).weighted, 37978.0);
        assert_eq!(p(Method::Pvq, 128, 4, 5, 1).weighted, 9658.0);
        assert_eq!(p(Method::Rvq, 16, 1, 4, 1).weighted, 0.0);
        assert_eq!(p(Method::Pvq, 16, 1, 4, 1).weighted, 32.0);
        let dbl = published(Method::Rvq, 128, 4, 5, 1, true).unwrap().unwrap();
        assert_eq!(dbl.weighted, 2.0 * 37978.0);
        assert!(published(Method::Vq, 16, 1, 4, 1, false).unwrap().is_none());
        assert!(published(Method::Pvq, 10, 3, 4, 1, false).is_err());
    }

    #[test]
    fn published_rvq_and_pvq_leave_out_one_stage() {
        let (d, bits) = (32usize, 6u32);
        let (k, df) = (64.0, d as f64);
        for s in [2, 3, 5] {
            let own = complexity(Method::Rvq, d, s, bits, 1, false).unwrap();
            let p = published(Method::Rvq, d, s, bits, 1, false)
                .unwrap()
                .unwrap();
            // One search (distances, argmin, codeword move) and one residual update fewer.
            assert_eq!(own.multiplications - p.multiplications, k * df);
            assert_eq!(
                own.additions - p.additions,
                k * (2.0 * df - 1.0) + k - 1.0 + df
            );
            assert_eq!(own.moves - p.moves, k - 1.0 + df);
            assert_eq!(own.bits_per_vector, p.bits_per_vector);
        }
        let own = complexity(Method::Pvq, d, 4, bits, 1, false).unwrap();
        let p = published(Method::Pvq, d, 4, bits, 1, false)
            .unwrap()
            .unwrap();
        assert_eq!(own.multiplications - p.multiplications, k * df / 4.0);
        let a = complexity(Method::Avq, d, 3, bits, 2, false).unwrap();
        assert_eq!(
            published(Method::Avq, d, 3, bits, 2, false).unwrap(),
            Some(a)
        );
    }

    #[test]
    fn vq_counts_by_hand() {
        // K = 4, d = 2: distances 4 * 3 additions + 8 multiplications, argmin 3 + 3, 2 moves.
        let c = complexity(Method::Vq, 2, 1, 2, 1, false).unwrap();
        assert_eq!(c.additions, 15.0);
        assert_eq!(c.multiplications, 8.0);
        assert_eq!(c.moves, 5.0);
        assert_eq!(c.bits_per_vector, 2.0);
        assert_eq!(c.weighted, 28.0);
    }

    #[test]
    fn rvq_counts_every_stage() {
        let one = complexity(Method::Vq, 16, 1, 4, 1, false).unwrap();
        let rvq = complexity(Method::Rvq, 16, 3, 4, 1, false).unwrap();
        assert_eq!(rvq.multiplications, 3.0 * one.multiplications);
        assert_eq!(rvq.bits_per_vector, 12.0);
        // Three searches, two residual updates, two reconstruction additions.
        assert_eq!(rvq.additions, 3.0 * one.additions + 4.0 * 16.0);
    }

    #[test]
    fn pvq_needs_a_divisor_and_avq_a_valid_beam() {
        assert!(complexity(Method::Pvq, 10, 3, 4, 1, false).is_err());
        assert!(complexity(Method::Avq, 8, 2, 2, 5, false).is_err());
        let a1 = complexity(Method::Avq, 8, 3, 4, 1, false).unwrap();
        let a4 = complexity(Method::Avq, 8, 3, 4, 4, false).unwrap();
        assert!(a4.weighted > a1.weighted);
    }
}
