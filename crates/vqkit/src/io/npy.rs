//! NumPy `.npy`, versions 1.0 to 3.0, C order or Fortran order (transposed on read). Read:
//! f32, f64, f16 and u8 matrices (converted to f32), and integer code arrays (8 to 64 bits,
//! signed or not). Write: f32 and u32 arrays, whole ([`write_f32`], [`write_u32`]) or a
//! header first and the rows after ([`header_f32`], [`header_u32`], [`Writer`], which also
//! writes codes of any [`Code`] type).

use super::{AtomicFile, Matrix, read_bytes, write_atomic};
use crate::backend::Code;
use crate::error::{Error, Result};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

/// The element types vqkit reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dtype {
    F16,
    F32,
    F64,
    U8,
    I8,
    U16,
    I16,
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
            "i1" => Dtype::I8,
            "u2" => Dtype::U16,
            "i2" => Dtype::I16,
            "i4" => Dtype::I32,
            "u4" => Dtype::U32,
            "i8" => Dtype::I64,
            "u8" => Dtype::U64,
            _ => return Err(format!("unsupported dtype '{descr}'")),
        };
        Ok((t, big))
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::U8 | Dtype::I8 => 1,
            Dtype::F16 | Dtype::U16 | Dtype::I16 => 2,
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
            Dtype::I8
            | Dtype::U16
            | Dtype::I16
            | Dtype::I32
            | Dtype::U32
            | Dtype::I64
            | Dtype::U64 => {
                let mut out = Vec::with_capacity(b.len() / self.dtype.size());
                let Ok(()) = each_int::<std::convert::Infallible>(self.dtype, b, |_, v| {
                    out.push(v as f32);
                    Ok(())
                });
                out
            }
        }
    }
}

/// Calls `f(i, v)` for each integer element `v` of little-endian `bytes` of `dtype`, `i`
/// its index, in order, until `f` returns an error; nothing for a float dtype. The one
/// decoding of every integer dtype, monomorphized per dtype and caller: an iterator behind
/// a `Box<dyn>`, as this was, took 12% of a one-thread `vqkit decode` (`perf record`).
pub(crate) fn each_int<E>(
    dtype: Dtype,
    bytes: &[u8],
    mut f: impl FnMut(usize, i128) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    fn run<const N: usize, E>(
        b: &[u8],
        dec: impl Fn([u8; N]) -> i128,
        f: &mut impl FnMut(usize, i128) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        for (at, c) in b.chunks_exact(N).enumerate() {
            f(at, dec(c.try_into().expect("N bytes")))?;
        }
        Ok(())
    }
    match dtype {
        Dtype::U8 => run::<1, E>(bytes, |c| c[0] as i128, &mut f),
        Dtype::I8 => run::<1, E>(bytes, |c| c[0] as i8 as i128, &mut f),
        Dtype::U16 => run::<2, E>(bytes, |c| u16::from_le_bytes(c) as i128, &mut f),
        Dtype::I16 => run::<2, E>(bytes, |c| i16::from_le_bytes(c) as i128, &mut f),
        Dtype::U32 => run::<4, E>(bytes, |c| u32::from_le_bytes(c) as i128, &mut f),
        Dtype::I32 => run::<4, E>(bytes, |c| i32::from_le_bytes(c) as i128, &mut f),
        Dtype::U64 => run::<8, E>(bytes, |c| u64::from_le_bytes(c) as i128, &mut f),
        Dtype::I64 => run::<8, E>(bytes, |c| i64::from_le_bytes(c) as i128, &mut f),
        Dtype::F16 | Dtype::F32 | Dtype::F64 => Ok(()),
    }
}

/// Appends the integer elements of little-endian `bytes` of `dtype` to `out` as codes, or
/// stops at the first outside `0..2^32` and returns its index among `bytes`' elements and
/// its value; nothing for a float dtype. Unsigned types of 32 bits or fewer, whose every
/// value fits, are widened in a loop without a check, which vectorizes; the others go
/// through [`each_int`] and its check.
pub(crate) fn extend_codes(
    dtype: Dtype,
    bytes: &[u8],
    out: &mut Vec<u32>,
) -> std::result::Result<(), (usize, i128)> {
    fn widen<const N: usize>(b: &[u8], out: &mut Vec<u32>, f: impl Fn([u8; N]) -> u32) {
        out.extend(b.chunks_exact(N).map(|c| f(c.try_into().expect("N bytes"))));
    }
    match dtype {
        Dtype::U8 => widen::<1>(bytes, out, |c| c[0] as u32),
        Dtype::U16 => widen::<2>(bytes, out, |c| u16::from_le_bytes(c) as u32),
        Dtype::U32 => widen::<4>(bytes, out, u32::from_le_bytes),
        _ => {
            return each_int(dtype, bytes, |at, v| match u32::try_from(v) {
                Ok(c) => {
                    out.push(c);
                    Ok(())
                }
                Err(_) => Err((at, v)),
            });
        }
    }
    Ok(())
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

/// What a `.npy` header says: the element type and byte order, the memory order, the
/// shape, and where the data starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub dtype: Dtype,
    /// Big-endian elements (`>`): swapped to little-endian when read.
    pub big_endian: bool,
    /// Fortran (column-major) order: the first index varies fastest.
    pub fortran: bool,
    pub shape: Vec<usize>,
    /// Byte offset of the first element.
    pub data_start: usize,
    /// Bytes of data the shape promises.
    pub data_len: usize,
}

/// Bytes of the file needed to parse its header: the whole header when `prefix` (the first
/// 12 bytes or more) has a valid magic and version.
pub fn header_len(prefix: &[u8]) -> Result<usize, String> {
    if prefix.len() < 10 || &prefix[..6] != MAGIC {
        return Err("not a .npy file (bad magic bytes)".into());
    }
    match prefix[6] {
        1 => Ok(10 + u16::from_le_bytes([prefix[8], prefix[9]]) as usize),
        2 | 3 => {
            let b = prefix.get(8..12).ok_or("truncated .npy header")?;
            Ok(12 + u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        }
        v => Err(format!("unsupported .npy version {v}")),
    }
}

/// Parses the header at the start of `bytes` (the data need not follow).
pub fn parse_header(bytes: &[u8]) -> Result<Header, String> {
    let end = header_len(bytes)?;
    let start = if bytes[6] == 1 { 10 } else { 12 };
    let header = bytes.get(start..end).ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let descr = dict_value(header, "descr").ok_or("the .npy header has no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let (dtype, big_endian) = Dtype::parse(descr)?;
    let fortran = match dict_value(header, "fortran_order") {
        Some("False") => false,
        Some("True") => true,
        _ => return Err("the .npy header has no valid 'fortran_order'".into()),
    };
    let shape_text = dict_value(header, "shape").ok_or("the .npy header has no 'shape'")?;
    let shape = parse_shape(shape_text)?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &s| a.checked_mul(s))
        .ok_or("the .npy shape overflows")?;
    let data_len = count
        .checked_mul(dtype.size())
        .ok_or("the .npy shape overflows")?;
    Ok(Header {
        dtype,
        big_endian,
        fortran,
        shape,
        data_start: end,
        data_len,
    })
}

/// Parses `.npy` bytes. A Fortran-order array of one or two dimensions is transposed to C
/// order.
pub fn parse(bytes: &[u8]) -> Result<Array, String> {
    let h = parse_header(bytes)?;
    let nbytes = h.data_len;
    let body = &bytes[h.data_start..];
    if body.len() < nbytes {
        return Err(format!(
            "truncated: the header promises {nbytes} bytes of data, the file has {}",
            body.len()
        ));
    }
    let size = h.dtype.size();
    let mut data = match (h.fortran, &h.shape[..]) {
        (false, _) | (true, [] | [_]) => body[..nbytes].to_vec(),
        (true, &[rows, cols]) if nbytes > 0 => {
            // Column j of the file is the j-th run of `rows` elements.
            let mut out = vec![0u8; nbytes];
            for (j, col) in body[..nbytes].chunks_exact(rows * size).enumerate() {
                for (i, v) in col.chunks_exact(size).enumerate() {
                    out[(i * cols + j) * size..][..size].copy_from_slice(v);
                }
            }
            out
        }
        (true, [_, _]) => Vec::new(),
        (true, _) => {
            return Err(
                "Fortran-order arrays of more than two dimensions are not supported".into(),
            );
        }
    };
    if h.big_endian && size > 1 {
        swap_bytes(&mut data, size);
    }
    Ok(Array {
        shape: h.shape,
        dtype: h.dtype,
        bytes: data,
    })
}

/// Reverses every `size`-byte element of `data` (big-endian to little-endian).
pub(crate) fn swap_bytes(data: &mut [u8], size: usize) {
    for c in data.chunks_exact_mut(size) {
        c.reverse();
    }
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
    // Listed by what is allowed, as `RowReader::expect_points`: a new integer dtype is
    // refused as points, not converted.
    if !matches!(a.dtype, Dtype::F16 | Dtype::F32 | Dtype::F64 | Dtype::U8) {
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
    let mut codes = Vec::new();
    crate::resources::grow("the codes", &mut codes, a.bytes.len() / a.dtype.size())?;
    if let Err((_, bad)) = extend_codes(a.dtype, &a.bytes, &mut codes) {
        return Err(Error::format(path, format!("code {bad} is out of range")));
    }
    Ok((a.shape, codes))
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

/// The header of an f32 `.npy` of `shape`, for data written after it.
pub fn header_f32(shape: &[usize]) -> Vec<u8> {
    header("<f4", shape)
}

/// The header of a u32 `.npy` of `shape`, for data written after it.
pub fn header_u32(shape: &[usize]) -> Vec<u8> {
    header(code_dtype::<u32>().1, shape)
}

/// `.npy` bytes for an f32 array.
pub fn f32_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let mut out = header("<f4", shape);
    out.extend_from_slice(bytemuck::cast_slice(data));
    out
}

/// The `.npy` element type of codes of type `C`, and its `descr`.
fn code_dtype<C: Code>() -> (Dtype, &'static str) {
    match std::mem::size_of::<C>() {
        1 => (Dtype::U8, "|u1"),
        2 => (Dtype::U16, "<u2"),
        _ => (Dtype::U32, "<u4"),
    }
}

/// `.npy` bytes for codes of type `C`.
pub fn codes_bytes<C: Code>(shape: &[usize], data: &[C]) -> Vec<u8> {
    let mut out = header(code_dtype::<C>().1, shape);
    out.extend_from_slice(bytemuck::cast_slice(data));
    out
}

/// `.npy` bytes for a u32 array.
pub fn u32_bytes(shape: &[usize], data: &[u32]) -> Vec<u8> {
    codes_bytes(shape, data)
}

/// Writes an f32 array.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write_atomic(path, &f32_bytes(shape, data))
}

/// Writes a u32 array.
pub fn write_u32(path: &Path, shape: &[usize], data: &[u32]) -> Result<()> {
    write_atomic(path, &u32_bytes(shape, data))
}

/// A `.npy` written a piece at a time: the header first (the shape is known before the
/// data), then the elements in C order, into an [`AtomicFile`] that appears at its path
/// only when [`finish`](Self::finish) finds every promised element written.
pub struct Writer {
    file: AtomicFile,
    dtype: Dtype,
    expected: usize,
    written: usize,
}

impl Writer {
    /// An f32 `.npy` of `shape`.
    pub fn f32(path: &Path, shape: &[usize]) -> Result<Self> {
        Self::create(path, Dtype::F32, &header_f32(shape), shape)
    }

    /// A u32 `.npy` of `shape`.
    pub fn u32(path: &Path, shape: &[usize]) -> Result<Self> {
        Self::codes::<u32>(path, shape)
    }

    /// A `.npy` of `shape` holding codes of type `C` (`|u1`, `<u2` or `<u4`).
    pub fn codes<C: Code>(path: &Path, shape: &[usize]) -> Result<Self> {
        let (dtype, descr) = code_dtype::<C>();
        Self::create(path, dtype, &header(descr, shape), shape)
    }

    fn create(path: &Path, dtype: Dtype, header: &[u8], shape: &[usize]) -> Result<Self> {
        let expected = shape
            .iter()
            .try_fold(1usize, |a, &s| a.checked_mul(s))
            .ok_or_else(|| Error::invalid("shape", format!("{shape:?} overflows")))?;
        let mut file = AtomicFile::create(path)?;
        file.write(header)?;
        Ok(Writer {
            file,
            dtype,
            expected,
            written: 0,
        })
    }

    fn push(&mut self, dtype: Dtype, len: usize, bytes: &[u8]) -> Result<()> {
        if dtype != self.dtype {
            return Err(Error::invalid(
                "a .npy's elements",
                format!("{dtype:?} pushed to a file of {:?}", self.dtype),
            ));
        }
        let written = self
            .written
            .checked_add(len)
            .filter(|&w| w <= self.expected);
        let Some(written) = written else {
            return Err(Error::ShapeMismatch {
                what: "elements written to a .npy",
                expected: self.expected,
                got: self.written.saturating_add(len),
            });
        };
        self.written = written;
        self.file.write(bytes)
    }

    /// Appends f32 elements (little-endian).
    pub fn push_f32(&mut self, data: &[f32]) -> Result<()> {
        self.push(Dtype::F32, data.len(), bytemuck::cast_slice(data))
    }

    /// Appends u32 elements (little-endian).
    pub fn push_u32(&mut self, data: &[u32]) -> Result<()> {
        self.push_codes(data)
    }

    /// Appends codes of type `C` (little-endian), to a writer made by [`Writer::codes`]
    /// for `C`.
    pub fn push_codes<C: Code>(&mut self, data: &[C]) -> Result<()> {
        self.push(code_dtype::<C>().0, data.len(), bytemuck::cast_slice(data))
    }

    /// Renames the file into place, if every element the shape promised was written.
    pub fn finish(self) -> Result<()> {
        if self.written != self.expected {
            return Err(Error::ShapeMismatch {
                what: "elements written to a .npy",
                expected: self.expected,
                got: self.written,
            });
        }
        self.file.commit()
    }
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

    /// An array's integer elements, widened.
    fn ints(a: &Array) -> Vec<i128> {
        let mut v = Vec::new();
        let Ok(()) = each_int::<std::convert::Infallible>(a.dtype, &a.bytes, |_, x| {
            v.push(x);
            Ok(())
        });
        v
    }

    #[test]
    fn round_trips_f32_and_u32() {
        let v = [1.5f32, -2.0, 0.0, 7.25, 3.0, 4.0];
        let a = parse(&f32_bytes(&[2, 3], &v)).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.to_f32(), v);
        let c = parse(&u32_bytes(&[3], &[0, 5, u32::MAX])).unwrap();
        assert_eq!(c.shape, vec![3]);
        assert_eq!(ints(&c), vec![0, 5, u32::MAX as i128]);
        // The header pads the data to a 64-byte boundary: 24 bytes of data follow.
        assert_eq!(f32_bytes(&[2, 3], &v).len() % 64, 24);
    }

    #[test]
    fn a_file_written_in_pieces_is_the_file_written_at_once() {
        let dir = std::env::temp_dir().join(format!("vqkit-npy-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("codes.npy");
        let mut w = Writer::u32(&p, &[3, 2]).unwrap();
        w.push_u32(&[1, 2, 3]).unwrap();
        w.push_u32(&[4, 5, 6]).unwrap();
        assert!(w.push_u32(&[7]).is_err());
        w.finish().unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            u32_bytes(&[3, 2], &[1, 2, 3, 4, 5, 6])
        );
        // Short of the shape: no file replaces the good one.
        let mut w = Writer::f32(&p, &[2]).unwrap();
        w.push_f32(&[1.0]).unwrap();
        assert!(matches!(w.finish(), Err(Error::ShapeMismatch { .. })));
        assert_eq!(
            std::fs::read(&p).unwrap(),
            u32_bytes(&[3, 2], &[1, 2, 3, 4, 5, 6])
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
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
        let mut strange = good.clone();
        let at = strange.windows(3).position(|w| w == b"<f4").unwrap();
        strange[at + 1] = b'c';
        assert!(parse(&strange).unwrap_err().contains("unsupported dtype"));
    }

    /// The header of `bytes` rewritten to say Fortran order (same length).
    fn as_fortran(mut bytes: Vec<u8>) -> Vec<u8> {
        let at = bytes.windows(5).position(|w| w == b"False").unwrap();
        bytes[at..at + 5].copy_from_slice(b"True ");
        bytes
    }

    #[test]
    fn transposes_fortran_order() {
        // (2, 3) in Fortran order: column 0 (1, 4), column 1 (2, 5), column 2 (3, 6).
        let bytes = as_fortran(f32_bytes(&[2, 3], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]));
        let a = parse(&bytes).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.to_f32(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert!(
            parse(&as_fortran(f32_bytes(&[0, 3], &[])))
                .unwrap()
                .to_f32()
                .is_empty()
        );
        let three_d = as_fortran(f32_bytes(&[1, 2, 2], &[0.0; 4]));
        assert!(parse(&three_d).unwrap_err().contains("Fortran"));
    }

    #[test]
    fn reads_big_endian() {
        let mut b = header(">f4", &[2]);
        b.extend_from_slice(&1.5f32.to_be_bytes());
        b.extend_from_slice(&(-3.0f32).to_be_bytes());
        assert_eq!(parse(&b).unwrap().to_f32(), vec![1.5, -3.0]);
    }
}

#[cfg(test)]
mod code_tests {
    use super::*;
    use crate::io::rows::RowReader;

    /// Codes of 8 and 16 bits, signed or not, little- or big-endian, read by `read_codes`
    /// and by the streaming reader (`vqkit decode`'s) as the same u32 values; a negative
    /// code is an error naming it; `Writer::codes` and `codes_bytes` write what they read.
    #[test]
    fn narrow_integer_codes_are_read_in_every_byte_order() {
        let dir = std::env::temp_dir().join(format!("vqkit-npy-codes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let values: Vec<u32> = vec![0, 1, 127, 200, 255, 3];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("|u1", values.iter().map(|&v| v as u8).collect()),
            (
                "<u2",
                values
                    .iter()
                    .flat_map(|&v| (v as u16 + 300).to_le_bytes())
                    .collect(),
            ),
            (
                ">u2",
                values
                    .iter()
                    .flat_map(|&v| (v as u16 + 300).to_be_bytes())
                    .collect(),
            ),
            (
                "<i2",
                values
                    .iter()
                    .flat_map(|&v| (v as i16).to_le_bytes())
                    .collect(),
            ),
            (
                ">i2",
                values
                    .iter()
                    .flat_map(|&v| (v as i16).to_be_bytes())
                    .collect(),
            ),
            (
                "|i1",
                values
                    .iter()
                    .map(|&v| (v as u8 & 0x7f) as i8 as u8)
                    .collect(),
            ),
        ];
        for (descr, data) in cases {
            let want: Vec<u32> = match descr {
                "<u2" | ">u2" => values.iter().map(|v| v + 300).collect(),
                "|i1" => values.iter().map(|v| v & 0x7f).collect(),
                _ => values.clone(),
            };
            let mut bytes = header(descr, &[3, 2]);
            bytes.extend(&data);
            let path = dir.join("c.npy");
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(
                read_codes(&path).unwrap(),
                (vec![3, 2], want.clone()),
                "{descr}"
            );
            let mut r = RowReader::open(&path).unwrap();
            let mut got = Vec::new();
            assert_eq!(r.next_codes(2, &mut got).unwrap(), 2, "{descr}");
            assert_eq!(got, want[..4], "{descr}");
        }
        // Negative codes (sign-extended, not read as large unsigned ones), in both readers.
        let cases = [
            (
                "<i2",
                [5i16, -2].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            ("|i1", vec![5u8, (-2i8) as u8]),
        ];
        for (descr, data) in cases {
            let mut bytes = header(descr, &[2]);
            bytes.extend::<Vec<u8>>(data);
            let path = dir.join("neg.npy");
            std::fs::write(&path, &bytes).unwrap();
            let e = read_codes(&path).unwrap_err().to_string();
            assert!(e.contains("code -2 is out of range"), "{descr}: {e}");
            let mut r = RowReader::open(&path).unwrap();
            let e = r.next_codes(2, &mut Vec::new()).unwrap_err().to_string();
            assert!(
                e.contains("code -2 (row 1) is out of range"),
                "{descr}: {e}"
            );
        }
        // Fortran order: the file's columns, read back as C-order rows.
        let mut bytes = header("<u2", &[2, 3]);
        let at = bytes.windows(5).position(|w| w == b"False").unwrap();
        bytes[at..at + 5].copy_from_slice(b"True ");
        bytes.extend([1u16, 4, 2, 5, 3, 600].iter().flat_map(|v| v.to_le_bytes()));
        let path = dir.join("f.npy");
        std::fs::write(&path, &bytes).unwrap();
        let want = vec![1, 2, 3, 4, 5, 600];
        assert_eq!(read_codes(&path).unwrap(), (vec![2, 3], want.clone()));
        let mut got = Vec::new();
        RowReader::open(&path)
            .unwrap()
            .next_codes(2, &mut got)
            .unwrap();
        assert_eq!(got, want);
        // Narrow integers other than u8 are codes, not points, in both readers.
        for descr in ["<u2", "<i2", "|i1"] {
            let mut bytes = header(descr, &[2, 1]);
            bytes.extend([0u8; 4]);
            let path = dir.join("p.npy");
            std::fs::write(&path, &bytes).unwrap();
            let e = read_matrix(&path).unwrap_err().to_string();
            assert!(
                e.contains("expected f32, f64, f16 or u8 points"),
                "{descr}: {e}"
            );
            let e = RowReader::open(&path).unwrap().expect_points().unwrap_err();
            assert!(e.to_string().contains("points"), "{descr}: {e}");
        }
        // Written by the streaming writer and whole: the same bytes, read back.
        let codes: Vec<u16> = vec![0, 300, 65535, 7];
        let path = dir.join("w.npy");
        let mut w = Writer::codes::<u16>(&path, &[2, 2]).unwrap();
        w.push_codes(&codes[..2]).unwrap();
        assert!(w.push_codes(&[1u8, 2]).is_err(), "a u8 push to a u16 file");
        w.push_codes(&codes[2..]).unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes, codes_bytes(&[2, 2], &codes));
        let want: Vec<u32> = codes.iter().map(|&c| c.into()).collect();
        assert_eq!(read_codes(&path).unwrap(), (vec![2, 2], want));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
