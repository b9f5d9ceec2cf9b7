//! Product vector quantization (PVQ, Jegou et al. 2011).
//!
//! ```text
//! x = [x^(0) | x^(1) | ... | x^(M-1)],   x^(m) of d / M dimensions
//! a_m = argmin_j |x^(m) - C_m[j]|^2,     x^ = [C_0[a_0] | ... | C_{M-1}[a_{M-1}]]
//! ```
//!
//! Each sub-space is an independent k-means on the backend (fit and assignment); the only
//! host work is slicing the columns of each sub-space out of the rows.

use super::kmeans::{Init, KMeans, KMeansConfig};
use super::model_io::TensorFile;
use super::{check_input, check_training, sub_seed};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::{assign, check_codes};

/// Hyper-parameters of [`Pvq::fit`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PvqConfig {
    /// Sub-vectors; must divide d.
    pub m: usize,
    /// Codewords per sub-space.
    pub k: usize,
    pub iters: usize,
    pub init: Init,
    pub seed: u64,
    pub max_points_per_centroid: usize,
}

impl PvqConfig {
    pub fn new(m: usize, k: usize) -> Self {
        PvqConfig {
            m,
            k,
            iters: 20,
            init: Init::KMeansPlusPlus,
            seed: 0,
            max_points_per_centroid: 256,
        }
    }

    /// The k-means configuration of sub-space `sub`.
    pub fn kmeans(&self, sub: usize) -> KMeansConfig {
        KMeansConfig {
            k: self.k,
            iters: self.iters,
            init: self.init,
            seed: sub_seed(self.seed, sub as u64),
            restarts: 1,
            tol: 0.0,
            max_points_per_centroid: self.max_points_per_centroid,
            progressive_dim_steps: 0,
            seed_points_per_centroid: 8,
            bounds: true,
        }
    }
}

/// A trained product quantizer.
#[derive(Clone, Debug, PartialEq)]
pub struct Pvq {
    pub d: usize,
    pub m: usize,
    pub k: usize,
    /// (m, k, d / m), row-major.
    pub codebooks: Vec<f32>,
}

/// Columns `[sub * ds, (sub + 1) * ds)` of every row.
pub fn sub_columns(x: &[f32], d: usize, sub: usize, ds: usize) -> Vec<f32> {
    x.chunks_exact(d)
        .flat_map(|r| &r[sub * ds..(sub + 1) * ds])
        .copied()
        .collect()
}

impl Pvq {
    pub fn dsub(&self) -> usize {
        self.d / self.m
    }

    /// Sub-space `sub`'s codebook (k, d / m).
    pub fn codebook(&self, sub: usize) -> &[f32] {
        let sz = self.k * self.dsub();
        &self.codebooks[sub * sz..(sub + 1) * sz]
    }

    fn check_split(d: usize, m: usize) -> Result<()> {
        if m == 0 || !d.is_multiple_of(m) {
            return Err(Error::invalid(
                "m",
                format!("{m} sub-vectors do not divide d = {d}"),
            ));
        }
        Ok(())
    }

    /// Fits one k-means per sub-space; `on_sub` is called after each.
    pub fn fit<B: Backend>(
        b: &B,
        x: &[f32],
        d: usize,
        cfg: &PvqConfig,
        on_sub: &mut dyn FnMut(usize),
    ) -> Result<Pvq> {
        check_training(x, d, cfg.k)?;
        Self::check_split(d, cfg.m)?;
        let ds = d / cfg.m;
        let mut codebooks = Vec::with_capacity(cfg.k * d);
        for sub in 0..cfg.m {
            crate::interrupt::check()?;
            let xs = sub_columns(x, d, sub, ds);
            let (km, _) = KMeans::fit(b, &xs, ds, &cfg.kmeans(sub))?;
            codebooks.extend_from_slice(&km.centroids);
            on_sub(sub);
        }
        Ok(Pvq {
            d,
            m: cfg.m,
            k: cfg.k,
            codebooks,
        })
    }

    /// Codes (n, m), one nearest-codeword search per sub-space on the backend.
    pub fn encode<B: Backend>(&self, b: &B, x: &[f32]) -> Result<Vec<u32>> {
        let n = check_input(x, self.d)?;
        let ds = self.dsub();
        let mut codes = vec![0u32; n * self.m];
        for sub in 0..self.m {
            let xs = sub_columns(x, self.d, sub, ds);
            let a = assign(b, &xs, self.codebook(sub), ds)?;
            for (i, &c) in a.indices.iter().enumerate() {
                codes[i * self.m + sub] = c;
            }
        }
        Ok(codes)
    }

    pub fn decode(&self, codes: &[u32]) -> Result<Vec<f32>> {
        check_codes(codes, self.k)?;
        let ds = self.dsub();
        let mut out = Vec::with_capacity(codes.len() * ds);
        for (i, &c) in codes.iter().enumerate() {
            let cb = self.codebook(i % self.m);
            out.extend_from_slice(&cb[c as usize * ds..(c as usize + 1) * ds]);
        }
        Ok(out)
    }

    pub fn to_file(&self, cfg: Option<&PvqConfig>) -> TensorFile {
        let mut f = TensorFile::new("pvq");
        f.set("d", self.d);
        f.set("m", self.m);
        f.set("k", self.k);
        if let Some(c) = cfg {
            f.set("vqkit.config", serde_json::to_string(c).unwrap_or_default());
        }
        f.put(
            "codebooks",
            vec![self.m, self.k, self.dsub()],
            self.codebooks.clone(),
        );
        f
    }

    pub fn from_file(f: &TensorFile) -> Result<Self> {
        let d: usize = f.get("d")?;
        let m: usize = f.get("m")?;
        let k: usize = f.get("k")?;
        if d == 0 || k == 0 || m == 0 || !d.is_multiple_of(m) {
            return Err(f.err("d, m and k must be positive and m must divide d"));
        }
        let codebooks = f.tensor("codebooks", &[m, k, d / m])?.to_vec();
        Ok(Pvq { d, m, k, codebooks })
    }
}
