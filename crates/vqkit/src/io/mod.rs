//! Reading and writing the formats users hand us: `.npy` (NumPy) and `.fvecs` (the TEXMEX
//! format of the SIFT and GIST benchmarks). Every failure is a typed [`Error`] naming the
//! file: missing, unreadable, truncated, wrong dtype or shape. Every file is written
//! atomically ([`write_atomic`]).

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

/// Writes `bytes` to `path` so that a reader, or a run that was killed, sees the old file
/// or the new one and never a part of either: the bytes go to a temporary file in the same
/// directory (`.NAME.tmp-PID-N`), are flushed to the disk, and the file is renamed over
/// `path`, which the file system does in one step; the directory is then flushed too, so
/// that the rename survives a crash. Every file vqkit writes (models, checkpoints, codes,
/// images) goes through here.
///
/// A write that fails (a full disk, a file-size limit, a directory that cannot be written)
/// is an [`Error::Io`] naming `path`, removes the temporary file and leaves `path` as it
/// was. A process killed between creating the temporary file and the rename leaves that
/// file behind (its name says which process wrote it); `path` is still whole.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let err = |source: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = path.file_name().ok_or_else(|| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file name",
        ))
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    // The rename is done; flushing the directory makes it durable. Some file systems
    // cannot open or sync a directory: the file is in place either way.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("vqkit-io-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect()
    }

    #[test]
    fn atomic_writes_replace_the_file_and_leave_nothing_behind() {
        let dir = scratch("atomic");
        let p = dir.join("model.bin");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_is_an_error_and_leaves_the_old_file() {
        let dir = scratch("failed");
        let p = dir.join("model.bin");
        write_atomic(&p, b"old").unwrap();
        // A directory where the file should be cannot be replaced by a file.
        let blocked = dir.join("blocked");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        match write_atomic(&blocked, b"new") {
            Err(Error::Io { path, .. }) => assert_eq!(path, blocked),
            other => panic!("expected an I/O error, got {other:?}"),
        }
        assert!(blocked.join("inside").is_dir());
        // A missing directory.
        let missing = dir.join("no/such/dir/model.bin");
        assert!(matches!(
            write_atomic(&missing, b"new"),
            Err(Error::Io { .. })
        ));
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
