//! Reading and writing the formats users hand us: `.npy` (NumPy) and `.fvecs` (the TEXMEX
//! format of the SIFT and GIST benchmarks). Every failure is a typed [`Error`] naming the
//! file: missing, unreadable, truncated, wrong dtype or shape.

pub mod fvecs;
pub mod idx;
pub mod npy;
pub mod png;

use crate::error::{Error, Result};
use std::path::Path;

/// A dense row-major f32 matrix read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

/// Reads a file into bytes, with the path in the error.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes bytes to a file, with the path in the error.
pub(crate) fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads points from `.npy` (2-D; f32, f16, f64 or u8, converted to f32) or `.fvecs`.
pub fn read_points(path: &Path) -> Result<Matrix> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => npy::read_matrix(path),
        Some("fvecs") => fvecs::read(path),
        _ => Err(Error::format(
            path,
            "unknown file type: expected a .npy or .fvecs file",
        )),
    }
}
