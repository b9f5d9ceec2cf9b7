//! 8-bit grayscale and RGB PNG writing (reconstruction grids, vqkit-plot's figures): the signature, IHDR, one IDAT
//! of zlib-compressed scanlines (filter type 0 on every row) and IEND, each chunk with its
//! CRC-32. flate2, already a dependency for gzipped IDX files, supplies zlib and the CRC.

use crate::error::{Error, Result};
use flate2::{Compression, Crc, write::ZlibEncoder};
use std::io::Write;
use std::path::Path;

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let mut crc = Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend(kind);
    out.extend(data);
    out.extend(crc.sum().to_be_bytes());
}

/// The PNG bytes of a `width x height` grayscale image, `pixels[y * width + x]`.
pub fn encode_gray(width: usize, height: usize, pixels: &[u8]) -> Result<Vec<u8>> {
    encode(width, height, 1, pixels)
}

/// The PNG bytes of a `width x height` 8-bit RGB image, `pixels[3 * (y * width + x) + c]`
/// (what a plotting library's bitmap buffer holds).
pub fn encode_rgb(width: usize, height: usize, pixels: &[u8]) -> Result<Vec<u8>> {
    encode(width, height, 3, pixels)
}

/// 8-bit gray (`channels` 1) or RGB (3) pixels, row by row.
fn encode(width: usize, height: usize, channels: usize, pixels: &[u8]) -> Result<Vec<u8>> {
    if width == 0 || height == 0 || width > u32::MAX as usize || height > u32::MAX as usize {
        return Err(Error::invalid("png size", format!("{width} x {height}")));
    }
    let stride = width
        .checked_mul(channels)
        .filter(|s| s.checked_mul(height).is_some())
        .ok_or_else(|| Error::invalid("png size", format!("{width} x {height}")))?;
    crate::backend::check_len("png pixels", pixels.len(), stride * height)?;
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend((width as u32).to_be_bytes());
    ihdr.extend((height as u32).to_be_bytes());
    // Bit depth 8, colour type 0 (gray) or 2 (RGB), deflate, adaptive filtering, no
    // interlace.
    let colour_type = if channels == 3 { 2 } else { 0 };
    ihdr.extend([8, colour_type, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
    let mut raw = Vec::with_capacity((stride + 1) * height);
    for row in pixels.chunks_exact(stride) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let zlib_err = |e: std::io::Error| Error::invalid("png", e.to_string());
    z.write_all(&raw).map_err(zlib_err)?;
    let idat = z.finish().map_err(zlib_err)?;
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    Ok(out)
}

/// Writes a grayscale PNG to `path`.
pub fn write_gray(path: &Path, width: usize, height: usize, pixels: &[u8]) -> Result<()> {
    super::write_atomic(path, &encode_gray(width, height, pixels)?)
}

/// Tiles `rows` rows of equally sized single-channel images (values in [0, 1], clamped)
/// into one picture with `pad` pixels of mid-gray between them. Each row holds up to
/// `cols` images of `h x w`, `row[i][(j * h + y) * w + x]`.
pub fn grid(
    rows: &[Vec<f32>],
    cols: usize,
    h: usize,
    w: usize,
    pad: usize,
) -> (usize, usize, Vec<u8>) {
    let width = cols * (w + pad) + pad;
    let height = rows.len() * (h + pad) + pad;
    let mut px = vec![128u8; width * height];
    for (r, imgs) in rows.iter().enumerate() {
        for (j, img) in imgs.chunks_exact(h * w).take(cols).enumerate() {
            let (oy, ox) = (pad + r * (h + pad), pad + j * (w + pad));
            for y in 0..h {
                for x in 0..w {
                    let v = (img[y * w + x].clamp(0.0, 1.0) * 255.0).round() as u8;
                    px[(oy + y) * width + ox + x] = v;
                }
            }
        }
    }
    (width, height, px)
}
