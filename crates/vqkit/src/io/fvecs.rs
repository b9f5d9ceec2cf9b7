//! `.fvecs`: each vector is a little-endian i32 dimension followed by that many f32 values.

use super::{Matrix, read_bytes};
use crate::error::{Error, Result};
use std::path::Path;

/// Reads every vector of an `.fvecs` file; all must share one dimension.
pub fn read(path: &Path) -> Result<Matrix> {
    parse(&read_bytes(path)?).map_err(|reason| Error::format(path, reason))
}

/// Parses `.fvecs` bytes.
pub fn parse(bytes: &[u8]) -> Result<Matrix, String> {
    let mut data = Vec::new();
    let mut dim: Option<usize> = None;
    let mut rows = 0;
    let mut at = 0;
    while at < bytes.len() {
        let head = bytes.get(at..at + 4).ok_or_else(|| {
            format!(
                "truncated: {} stray bytes after vector {rows}",
                bytes.len() - at
            )
        })?;
        let d = i32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if d <= 0 {
            return Err(format!("vector {rows} declares dimension {d}"));
        }
        let d = d as usize;
        if let Some(prev) = dim.filter(|&p| p != d) {
            return Err(format!(
                "vector {rows} has dimension {d}, the first had {prev}"
            ));
        }
        dim = Some(d);
        let body = bytes
            .get(at + 4..at + 4 + 4 * d)
            .ok_or_else(|| format!("truncated inside vector {rows} (dimension {d})"))?;
        data.extend(
            body.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        at += 4 + 4 * d;
        rows += 1;
    }
    let cols = dim.ok_or("the file holds no vectors")?;
    Ok(Matrix { rows, cols, data })
}

/// Serialises rows of width `d` as `.fvecs` bytes.
pub fn to_bytes(data: &[f32], d: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / d.max(1) * (4 + 4 * d));
    for row in data.chunks_exact(d) {
        out.extend_from_slice(&(d as i32).to_le_bytes());
        for v in row {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = [1.0f32, -2.0, 3.5, 0.25, 8.0, 9.0];
        let m = parse(&to_bytes(&v, 3)).unwrap();
        assert_eq!((m.rows, m.cols), (2, 3));
        assert_eq!(m.data, v);
    }

    #[test]
    fn rejects_truncated_ragged_and_empty() {
        let b = to_bytes(&[1.0, 2.0, 3.0, 4.0], 2);
        assert!(parse(&b[..b.len() - 1]).unwrap_err().contains("truncated"));
        assert!(parse(&b[..2]).unwrap_err().contains("truncated"));
        let mut ragged = to_bytes(&[1.0, 2.0], 2);
        ragged.extend(to_bytes(&[1.0, 2.0, 3.0], 3));
        assert!(parse(&ragged).unwrap_err().contains("dimension 3"));
        assert!(parse(&[]).unwrap_err().contains("no vectors"));
        assert!(
            parse(&(-1i32).to_le_bytes())
                .unwrap_err()
                .contains("dimension -1")
        );
    }
}
