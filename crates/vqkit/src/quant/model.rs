//! Any trained model, as read from a file: one interface for `encode` and `decode`.

use super::avq::Avq;
use super::kmeans::KMeans;
use super::model_io::TensorFile;
use super::pvq::Pvq;
use super::rvq::Rvq;
use super::vq::VectorQuantizer;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::check_codes;
use std::path::Path;

/// A trained quantizer of any kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Model {
    KMeans(KMeans),
    Rvq(Rvq),
    Pvq(Pvq),
    Avq(Avq),
    /// A VQ-VAE layer's codebook (encode: nearest code under its distance).
    Vq(Box<VectorQuantizer>),
}

impl Model {
    /// The kind written to `vqkit.kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Model::KMeans(_) => "kmeans",
            Model::Rvq(_) => "rvq",
            Model::Pvq(_) => "pvq",
            Model::Avq(_) => "avq",
            Model::Vq(_) => "vq",
        }
    }

    /// The vector dimension the model quantizes.
    pub fn d(&self) -> usize {
        match self {
            Model::KMeans(m) => m.d,
            Model::Rvq(m) => m.d,
            Model::Pvq(m) => m.d,
            Model::Avq(m) => m.d,
            Model::Vq(m) => m.cfg.d,
        }
    }

    /// Codes per vector, and the codebook size each code indexes.
    pub fn code_shape(&self) -> (usize, usize) {
        match self {
            Model::KMeans(m) => (1, m.k()),
            Model::Rvq(m) => (m.stages, m.k),
            Model::Pvq(m) => (m.m, m.k),
            Model::Avq(m) => (m.m, m.k),
            Model::Vq(m) => (1, m.cfg.k),
        }
    }

    /// Codes of `x` (n, d) as an (n, width) row-major array. `beam` overrides the beam width
    /// of the models that search (RVQ, AVQ); others ignore it.
    pub fn encode<B: Backend>(&self, b: &B, x: &[f32], beam: Option<usize>) -> Result<Vec<u32>> {
        match self {
            Model::KMeans(m) => Ok(m.assign(b, x)?.indices),
            Model::Rvq(m) => m.encode(b, x, beam.unwrap_or(m.beam)),
            Model::Pvq(m) => m.encode(b, x),
            Model::Avq(m) => m.encode(x, beam.unwrap_or(m.beam)),
            Model::Vq(m) => m.encode(b, x),
        }
    }

    /// Reconstructions from codes (n, width).
    pub fn decode(&self, codes: &[u32]) -> Result<Vec<f32>> {
        let (width, k) = self.code_shape();
        if !codes.len().is_multiple_of(width) {
            return Err(Error::invalid(
                "codes",
                format!(
                    "{} codes do not make rows of {width} (codes per vector of this model)",
                    codes.len()
                ),
            ));
        }
        check_codes(codes, k)?;
        Ok(match self {
            Model::KMeans(m) => {
                let mut out = Vec::with_capacity(codes.len() * m.d);
                for &c in codes {
                    out.extend_from_slice(&m.centroids[c as usize * m.d..(c as usize + 1) * m.d]);
                }
                out
            }
            Model::Rvq(m) => m.decode(codes)?,
            Model::Pvq(m) => m.decode(codes)?,
            Model::Avq(m) => m.decode(codes)?,
            Model::Vq(m) => m.decode(codes)?,
        })
    }

    pub fn to_file(&self) -> TensorFile {
        match self {
            Model::KMeans(m) => m.to_file(None),
            Model::Rvq(m) => m.to_file(None),
            Model::Pvq(m) => m.to_file(None),
            Model::Avq(m) => m.to_file(None),
            Model::Vq(m) => m.to_file(),
        }
    }

    pub fn from_file(f: &TensorFile) -> Result<Self> {
        match f.kind()? {
            "kmeans" => Ok(Model::KMeans(KMeans::from_file(f)?)),
            "rvq" => Ok(Model::Rvq(Rvq::from_file(f)?)),
            "pvq" => Ok(Model::Pvq(Pvq::from_file(f)?)),
            "avq" => Ok(Model::Avq(Avq::from_file(f)?)),
            "vq" => Ok(Model::Vq(Box::new(VectorQuantizer::from_file(f)?))),
            other => Err(f.err(format!("unknown model kind `{other}`"))),
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        Self::from_file(&TensorFile::read(path)?)
    }

    /// Errors unless `d` is the model's dimension.
    pub fn check_dim(&self, d: usize) -> Result<()> {
        if d != self.d() {
            return Err(Error::WrongDimension {
                expected: self.d(),
                got: d,
            });
        }
        Ok(())
    }
}
