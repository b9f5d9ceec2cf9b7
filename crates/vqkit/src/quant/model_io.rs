//! Model files in safetensors, the format PyTorch users already load
//! (`safetensors.torch.load_file`): f32 tensors by name, and the hyper-parameters as string
//! metadata. Every model file carries `vqkit.kind` (`kmeans`, `rvq`, `pvq`, `avq`, `vq`) and
//! `vqkit.format` (currently `1`); a file that lacks them, is truncated, or whose tensors
//! disagree with its metadata is a typed [`Error::Format`] naming the file.
//!
//! Tensor layouts (row-major, as PyTorch would hold them):
//! - `kmeans`: `centroids` (k, d).
//! - `rvq`: `codebooks` (S, K, d); a shared codebook is stored once per stage all the same,
//!   so readers need no special case, and `shared = true` in the metadata.
//! - `pvq`: `codebooks` (M, K, d / M).
//! - `avq`: `codebooks` (M, K, d).
//! - `vq`: `codebook` (K, d), `cluster_size` (K), `embed_sum` (K, d).

use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView, serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The version written to `vqkit.format`.
pub const FORMAT_VERSION: &str = "1";

/// An in-memory safetensors file of f32 tensors and string metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorFile {
    pub meta: BTreeMap<String, String>,
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Where it was read from, for error messages.
    pub path: PathBuf,
}

impl TensorFile {
    /// An empty file for a model of kind `kind`.
    pub fn new(kind: &str) -> Self {
        let mut f = TensorFile::default();
        f.set("vqkit.kind", kind);
        f.set("vqkit.format", FORMAT_VERSION);
        f
    }

    pub fn set(&mut self, key: &str, value: impl ToString) {
        self.meta.insert(key.to_string(), value.to_string());
    }

    pub fn put(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) {
        self.tensors.insert(name.to_string(), (shape, data));
    }

    /// The model kind recorded in the file.
    pub fn kind(&self) -> Result<&str> {
        self.meta
            .get("vqkit.kind")
            .map(String::as_str)
            .ok_or_else(|| self.err("no `vqkit.kind` in the metadata: not a vqkit model file"))
    }

    /// A format error naming this file.
    pub fn err(&self, reason: impl Into<String>) -> Error {
        Error::format(&self.path, reason)
    }

    /// A metadata value parsed as `T`.
    pub fn get<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        let v = self
            .meta
            .get(key)
            .ok_or_else(|| self.err(format!("metadata `{key}` is missing")))?;
        v.parse()
            .map_err(|_| self.err(format!("metadata `{key}` = {v:?} cannot be parsed")))
    }

    /// A tensor with its shape checked against `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<&[f32]> {
        let (s, data) = self
            .tensors
            .get(name)
            .ok_or_else(|| self.err(format!("tensor `{name}` is missing")))?;
        if s != shape {
            return Err(self.err(format!(
                "tensor `{name}` has shape {s:?}, the metadata implies {shape:?}"
            )));
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(self.err(format!(
                "tensor `{name}` has a non-finite value at flat index {i}"
            )));
        }
        Ok(data)
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(k, (s, d))| (k.clone(), s.clone(), bytemuck::cast_slice(d).to_vec()))
            .collect();
        let mut views = Vec::with_capacity(bytes.len());
        for (k, s, b) in &bytes {
            let v = TensorView::new(Dtype::F32, s.clone(), b)
                .map_err(|e| self.err(format!("tensor `{k}`: {e}")))?;
            views.push((k.clone(), v));
        }
        let meta: HashMap<String, String> = self.meta.clone().into_iter().collect();
        serialize(views, Some(meta)).map_err(|e| self.err(e.to_string()))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let mut f = self.clone();
        f.path = path.to_path_buf();
        crate::io::write_atomic(path, &f.to_bytes()?)
    }

    pub fn read(path: &Path) -> Result<Self> {
        Self::parse(&crate::io::read_bytes(path)?, path)
    }

    /// Parses safetensors bytes; `path` only names the source in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::format(path, reason);
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let mut f = TensorFile {
            path: path.to_path_buf(),
            meta: header
                .metadata()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            ..Default::default()
        };
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor `{name}` is {:?}; vqkit models hold f32",
                    view.dtype()
                )));
            }
            // The byte slice may be unaligned for f32: copy through from_le_bytes.
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            f.tensors.insert(name, (view.shape().to_vec(), data));
        }
        let kind = f.kind()?;
        let version = f.meta.get("vqkit.format").map(String::as_str);
        if version != Some(FORMAT_VERSION) {
            return Err(bad(format!(
                "model format {version:?} of kind {kind}; this vqkit reads format {FORMAT_VERSION}"
            )));
        }
        Ok(f)
    }
}
