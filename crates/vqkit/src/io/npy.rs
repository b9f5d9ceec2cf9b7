//! NumPy `.npy`, versions 1.0 to 3.0, C order. Read: f32, f64, f16 and u8 matrices
//! (converted to f32), and integer code arrays. Write: f32 and u32 arrays.

use super::{Matrix, read_bytes, write_atomic};
use crate::error::{Error, Result};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

/// The element types vqkit reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F16,
    F32,
    F64,
    U8,
    I32,
    U32,
    I64,
    U64,
}

impl Dtype {
    fn parse(descr: &str) -> Result<(Dtype, bool), String> {
        // (kind+size, big-endian?). The first character, whatever its width in UTF-8 (a
        // byte index could fall inside a multi-byte one: found by fuzzing).
        let mut chars = descr.chars();
        let endian = chars.next().map(String::from).unwrap_or_default();
        let code = chars.as_str();
        let endian = endian.as_str();
        let big = match endian {
            "<" | "|" | "=" => false,
            ">" => true,
            _ => return Err(format!("unsupported dtype '{descr}'")),
        };
        let t = match code {
            "f2" => Dtype::F16,
            "f4" => Dtype::F32,
            "f8" => Dtype::F64,
            "u1" | "b1" => Dtype::U8,
            "i4" => Dtype::I32,
            "u4" => Dtype::U32,
            "i8" => Dtype::I64,
            "u8" => Dtype::U64,
            _ => return Err(format!("unsupported dtype '{descr}'")),
        };
        Ok((t, big))
    }

    fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::F16 => 2,
            Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }
}

/// A parsed `.npy`: its shape, dtype and raw little-endian element bytes.
#[derive(Clone, Debug)]
pub struct Array {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    bytes: Vec<u8>,
}

impl Array {
    /// Elements converted to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        let b = &self.bytes;
        match self.dtype {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            Dtype::U8 => b.iter().map(|&v| v as f32).collect(),
            Dtype::I32 | Dtype::U32 | Dtype::I64 | Dtype::U64 => {
                self.to_i128().into_iter().map(|v| v as f32).collect()
            }
        }
    }

    fn to_i128(&self) -> Vec<i128> {
        let b = &self.bytes;
        let w = |c: &[u8]| -> [u8; 8] {
            let mut a = [0u8; 8];
            a[..c.len()].copy_from_slice(c);
            a
        };
        match self.dtype {
            Dtype::U8 => b.iter().map(|&v| v as i128).collect(),
            Dtype::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i128)
                .collect(),
            Dtype::U32 => b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i128)
                .collect(),
            Dtype::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(w(c)) as i128)
                .collect(),
            Dtype::U64 => b
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(w(c)) as i128)
                .collect(),
            Dtype::F16 | Dtype::F32 | Dtype::F64 => Vec::new(),
        }
    }
}

/// IEEE half to single, exactly (subnormals, infinities and NaN included).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m * 2^-24, exact in f32.
            let v = m as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Reads and parses a `.npy` file.
pub fn read(path: &Path) -> Result<Array> {
    parse(&read_bytes(path)?).map_err(|reason| Error::format(path, reason))
}

/// Parses `.npy` bytes.
pub fn parse(bytes: &[u8]) -> Result<Array, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic bytes)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            let b = bytes.get(8..12).ok_or("truncated .npy header")?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let descr = dict_value(header, "descr").ok_or("the .npy header has no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let (dtype, big) = Dtype::parse(descr)?;
    match dict_value(header, "fortran_order") {
        Some("False") => {}
        Some("True") => {
            return Err("Fortran-order arrays are not supported: save with C order".into());
        }
        _ => return Err("the .npy header has no valid 'fortran_order'".into()),
    }
    let shape_text = dict_value(header, "shape").ok_or("the .npy header has no 'shape'")?;
    let shape = parse_shape(shape_text)?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &s| a.checked_mul(s))
        .ok_or("the .npy shape overflows")?;
    let nbytes = count
        .checked_mul(dtype.size())
        .ok_or("the .npy shape overflows")?;
    let body = &bytes[start + header_len..];
    if body.len() < nbytes {
        return Err(format!(
            "truncated: the header promises {nbytes} bytes of data, the file has {}",
            body.len()
        ));
    }
    let mut data = body[..nbytes].to_vec();
    if big && dtype.size() > 1 {
        for c in data.chunks_exact_mut(dtype.size()) {
            c.reverse();
        }
    }
    Ok(Array {
        shape,
        dtype,
        bytes: data,
    })
}

/// The raw text of a key's value in the header's Python dict literal.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[at + key.len() + 2..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

fn parse_shape(text: &str) -> Result<Vec<usize>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("bad shape {text}"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape {text}")))
        .collect()
}

/// Reads a 2-D `.npy` of floats or bytes as an f32 matrix (a 1-D array is one column).
pub fn read_matrix(path: &Path) -> Result<Matrix> {
    let a = read(path)?;
    let (rows, cols) = match a.shape[..] {
        [n, d] => (n, d),
        [n] => (n, 1),
        _ => {
            return Err(Error::format(
                path,
                format!("expected a 2-D array of points, got shape {:?}", a.shape),
            ));
        }
    };
    if matches!(a.dtype, Dtype::I32 | Dtype::U32 | Dtype::I64 | Dtype::U64) {
        return Err(Error::format(
            path,
            format!("expected f32, f64, f16 or u8 points, got {:?}", a.dtype),
        ));
    }
    Ok(Matrix {
        rows,
        cols,
        data: a.to_f32(),
    })
}

/// Reads integer codes (any integer dtype, values in 0..2^32) with their shape.
pub fn read_codes(path: &Path) -> Result<(Vec<usize>, Vec<u32>)> {
    let a = read(path)?;
    if matches!(a.dtype, Dtype::F16 | Dtype::F32 | Dtype::F64) {
        return Err(Error::format(
            path,
            format!("expected integer codes, got {:?}", a.dtype),
        ));
    }
    let v = a.to_i128();
    if let Some(bad) = v.iter().find(|&&c| !(0..=u32::MAX as i128).contains(&c)) {
        return Err(Error::format(path, format!("code {bad} is out of range")));
    }
    Ok((a.shape, v.into_iter().map(|c| c as u32).collect()))
}

fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|s| s.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut text = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that the data starts on a 64-byte boundary, ending in a newline.
    let total = MAGIC.len() + 4 + text.len() + 1;
    text.push_str(&" ".repeat((64 - total % 64) % 64));
    text.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

/// `.npy` bytes for an f32 array.
pub fn f32_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let mut out = header("<f4", shape);
    out.extend_from_slice(bytemuck::cast_slice(data));
    out
}

/// `.npy` bytes for a u32 array.
pub fn u32_bytes(shape: &[usize], data: &[u32]) -> Vec<u8> {
    let mut out = header("<u4", shape);
    out.extend_from_slice(bytemuck::cast_slice(data));
    out
}

/// Writes an f32 array.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write_atomic(path, &f32_bytes(shape, data))
}

/// Writes a u32 array.
pub fn write_u32(path: &Path, shape: &[usize], data: &[u32]) -> Result<()> {
    write_atomic(path, &u32_bytes(shape, data))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_multibyte_character_in_the_dtype_is_an_error_not_a_panic() {
        // Found by `cargo fuzz run npy`: the dtype's first character was sliced by byte.
        let header = "{'descr': '\u{679}f8', 'fortran_order': False, 'shape': (1,), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend([0u8; 8]);
        let e = super::parse(&bytes).unwrap_err();
        assert!(e.contains("unsupported dtype"), "{e}");
    }

    use super::*;

    #[test]
    fn round_trips_f32_and_u32() {
        let v = [1.5f32, -2.0, 0.0, 7.25, 3.0, 4.0];
        let a = parse(&f32_bytes(&[2, 3], &v)).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.to_f32(), v);
        let c = parse(&u32_bytes(&[3], &[0, 5, u32::MAX])).unwrap();
        assert_eq!(c.shape, vec![3]);
        assert_eq!(c.to_i128(), vec![0, 5, u32::MAX as i128]);
        // The header pads the data to a 64-byte boundary: 24 bytes of data follow.
        assert_eq!(f32_bytes(&[2, 3], &v).len() % 64, 24);
    }

    #[test]
    fn converts_f16_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn rejects_bad_files() {
        let good = f32_bytes(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        assert!(
            parse(&good[..good.len() - 2])
                .unwrap_err()
                .contains("truncated")
        );
        assert!(parse(b"hello world").unwrap_err().contains("magic"));
        assert!(parse(&good[..20]).unwrap_err().contains("truncated"));
        let fortran = String::from_utf8_lossy(&good).replace("False", "True ");
        assert!(parse(fortran.as_bytes()).is_err());
        let mut strange = good.clone();
        let at = strange.windows(3).position(|w| w == b"<f4").unwrap();
        strange[at + 1] = b'c';
        assert!(parse(&strange).unwrap_err().contains("unsupported dtype"));
    }

    #[test]
    fn reads_big_endian() {
        let mut b = header(">f4", &[2]);
        b.extend_from_slice(&1.5f32.to_be_bytes());
        b.extend_from_slice(&(-3.0f32).to_be_bytes());
        assert_eq!(parse(&b).unwrap().to_f32(), vec![1.5, -3.0]);
    }
}
