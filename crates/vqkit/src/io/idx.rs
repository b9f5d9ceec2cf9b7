//! IDX files, the format of MNIST and Fashion-MNIST: a 4-byte magic (two zero bytes, a type
//! code, the number of dimensions), the dimensions as big-endian u32, then the data.
//! vqkit reads unsigned-byte files: labels (magic 0x00000801, one dimension) and images
//! (0x00000803, three dimensions), gzipped (detected by the gzip magic 1f 8b) or not.

use crate::error::{Error, Result};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A stack of u8 images, row-major: `pixels[(i * rows + y) * cols + x]`.
#[derive(Clone, Debug, PartialEq)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

const LABELS_MAGIC: u32 = 0x0000_0801;
const IMAGES_MAGIC: u32 = 0x0000_0803;

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens a file as a byte stream, through gzip when it starts with the gzip magic.
fn open(path: &Path) -> Result<Box<dyn Read>> {
    let f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    decompressed(f).map_err(|e| io_err(path, e))
}

/// `r` as a byte stream, through gzip when it starts with the gzip magic.
fn decompressed<'a>(mut r: impl Read + 'a) -> std::io::Result<Box<dyn Read + 'a>> {
    let mut head = [0u8; 2];
    let got = read_up_to(&mut r, &mut head)?;
    let prefix = std::io::Cursor::new(head[..got].to_vec());
    let stream = prefix.chain(r);
    if got == 2 && head == [0x1f, 0x8b] {
        Ok(Box::new(GzDecoder::new(stream)))
    } else {
        Ok(Box::new(stream))
    }
}

/// The name errors give to data parsed from memory.
const IN_MEMORY: &str = "<in memory>";

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Exactly `len` bytes, or a truncation error naming what was being read. A corrupt gzip
/// stream is reported as a format error too. The buffer grows with the data that arrives,
/// so a header that claims more than the file holds costs nothing before it is refused.
fn read_exact(r: &mut dyn Read, path: &Path, len: usize, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let got = (&mut *r)
        .take(len as u64)
        .read_to_end(&mut buf)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                Error::format(path, format!("corrupt gzip stream: {e}"))
            }
            _ => io_err(path, e),
        })?;
    if got < len {
        return Err(Error::format(
            path,
            format!("truncated IDX file: {what} needs {len} bytes, only {got} present"),
        ));
    }
    Ok(buf)
}

/// Reads the header; returns the dimensions after checking the magic.
fn header(r: &mut dyn Read, path: &Path, magic: u32, ndim: usize) -> Result<Vec<usize>> {
    let m = read_exact(r, path, 4, "the magic number")?;
    let got = u32::from_be_bytes([m[0], m[1], m[2], m[3]]);
    if got != magic {
        return Err(Error::format(
            path,
            format!(
                "not an IDX {} file: magic 0x{got:08x}, expected 0x{magic:08x}",
                if ndim == 1 { "label" } else { "image" }
            ),
        ));
    }
    let d = read_exact(r, path, 4 * ndim, "the dimensions")?;
    Ok(d.chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect())
}

/// Reads an image file (magic 0x0803); at most `limit` images when given (the rest of the
/// file is not decompressed).
pub fn read_images(path: &Path, limit: Option<usize>) -> Result<IdxImages> {
    images_from(&mut *open(path)?, path, limit)
}

/// [`read_images`] of a file's bytes held in memory (gzipped or not).
pub fn parse_images(bytes: &[u8], limit: Option<usize>) -> Result<IdxImages> {
    let path = Path::new(IN_MEMORY);
    images_from(
        &mut *decompressed(bytes).map_err(|e| io_err(path, e))?,
        path,
        limit,
    )
}

fn images_from(r: &mut dyn Read, path: &Path, limit: Option<usize>) -> Result<IdxImages> {
    let dims = header(&mut *r, path, IMAGES_MAGIC, 3)?;
    let (n, rows, cols) = (dims[0], dims[1], dims[2]);
    let count = limit.map_or(n, |l| l.min(n));
    let len = count
        .checked_mul(rows)
        .and_then(|v| v.checked_mul(cols))
        .ok_or_else(|| Error::format(path, "image dimensions overflow"))?;
    let pixels = read_exact(&mut *r, path, len, "the pixels")?;
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels,
    })
}

/// Reads a label file (magic 0x0801); at most `limit` labels when given.
pub fn read_labels(path: &Path, limit: Option<usize>) -> Result<Vec<u8>> {
    labels_from(&mut *open(path)?, path, limit)
}

/// [`read_labels`] of a file's bytes held in memory (gzipped or not).
pub fn parse_labels(bytes: &[u8], limit: Option<usize>) -> Result<Vec<u8>> {
    let path = Path::new(IN_MEMORY);
    labels_from(
        &mut *decompressed(bytes).map_err(|e| io_err(path, e))?,
        path,
        limit,
    )
}

fn labels_from(r: &mut dyn Read, path: &Path, limit: Option<usize>) -> Result<Vec<u8>> {
    let dims = header(&mut *r, path, LABELS_MAGIC, 1)?;
    let count = limit.map_or(dims[0], |l| l.min(dims[0]));
    read_exact(&mut *r, path, count, "the labels")
}

/// One split of a dataset: its images, and its labels if present.
#[derive(Clone, Debug)]
pub struct Split {
    pub images: IdxImages,
    pub labels: Option<Vec<u8>>,
}

/// The directory Debian's `dataset-fashion-mnist` installs.
pub const DEFAULT_DATA_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// `dir/name` or `dir/name.gz`, whichever exists (the plain file first).
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}

/// Loads split `prefix` ("train" or "t10k") of an MNIST-style directory, with the standard
/// file names `{prefix}-images-idx3-ubyte[.gz]` and `{prefix}-labels-idx1-ubyte[.gz]`
/// (labels optional). At most `limit` images when given.
pub fn load_split(dir: &Path, prefix: &str, limit: Option<usize>) -> Result<Split> {
    let name = format!("{prefix}-images-idx3-ubyte");
    let path = find(dir, &name).ok_or_else(|| Error::Io {
        path: dir.join(&name),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file (nor with .gz)"),
    })?;
    let images = read_images(&path, limit)?;
    let labels = match find(dir, &format!("{prefix}-labels-idx1-ubyte")) {
        Some(p) => {
            let l = read_labels(&p, Some(images.count))?;
            if l.len() != images.count {
                return Err(Error::format(
                    &p,
                    format!("{} labels for {} images", l.len(), images.count),
                ));
            }
            Some(l)
        }
        None => None,
    };
    Ok(Split { images, labels })
}

/// The train and test splits of an MNIST-style directory.
pub fn load_dataset(dir: &Path, limit: Option<usize>) -> Result<(Split, Split)> {
    Ok((
        load_split(dir, "train", limit)?,
        load_split(dir, "t10k", limit)?,
    ))
}
