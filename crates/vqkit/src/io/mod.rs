//! Reading and writing the formats users hand us: `.npy` (NumPy) and `.fvecs`, `.bvecs`,
//! `.ivecs` (the TEXMEX formats of the SIFT1B, GIST and ANN benchmarks), whole
//! ([`read_points`]) or a chunk of rows at a time ([`rows::RowReader`]). Every failure is a
//! typed [`Error`] naming the file: missing, unreadable, truncated, ragged, wrong dtype or
//! shape. Every file is written atomically ([`write_atomic`], or [`AtomicFile`] for a file
//! written piece by piece).

pub mod fvecs;
pub mod idx;
pub mod npy;
pub mod png;
pub mod rows;

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

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
/// images) goes through here or through [`AtomicFile`], which does the same for a file
/// written in pieces.
///
/// A write that fails (a full disk, a file-size limit, a directory that cannot be written)
/// is an [`Error::Io`] naming `path`, removes the temporary file and leaves `path` as it
/// was. A process killed between creating the temporary file and the rename leaves that
/// file behind (its name says which process wrote it); `path` is still whole.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write(bytes)?;
    f.commit()
}

/// A file written in pieces that appears at its path only when [`commit`](Self::commit)
/// renames it there, as [`write_atomic`] does for a file written at once: until then the
/// pieces go to a temporary file beside it, which is removed if the writer is dropped
/// uncommitted (an error halfway through a command). `path` keeps its old contents until
/// the commit.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl AtomicFile {
    /// Creates the temporary file in `path`'s directory.
    pub fn create(path: &Path) -> Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = path.file_name().ok_or_else(|| Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
        })?;
        let tmp = dir_of(path).join(format!(
            ".{}.tmp-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
        })
    }

    fn err(&self, source: std::io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let written = match self.file.as_mut() {
            Some(f) => f.write_all(bytes),
            None => Ok(()),
        };
        written.map_err(|e| self.err(e))
    }

    /// Flushes the file to the disk and renames it over the path.
    pub fn commit(mut self) -> Result<()> {
        let Some(f) = self.file.take() else {
            return Ok(());
        };
        let done = (|| {
            let f = f.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&self.tmp, &self.path)
        })();
        if let Err(e) = done {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(self.err(e));
        }
        // The rename is done; flushing the directory makes it durable. Some file systems
        // cannot open or sync a directory: the file is in place either way.
        if let Ok(d) = std::fs::File::open(dir_of(&self.path)) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            // Uncommitted: the pieces are abandoned, unflushed.
            let (_, _) = f.into_parts();
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The directory a path's file lies in (`.` for a bare name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Reads every point of a file into memory: `.npy` (2-D, or 1-D as one column; f32, f16,
/// f64 or u8, converted to f32; C or Fortran order), `.fvecs`, `.bvecs` or `.ivecs`. It
/// reads through a [`rows::RowReader`], so it holds the points and one chunk of the file,
/// never the file's bytes whole beside them.
pub fn read_points(path: &Path) -> Result<Matrix> {
    rows::RowReader::open(path)?.read_all()
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
    fn a_file_written_in_pieces_appears_only_when_committed() {
        let dir = scratch("pieces");
        let p = dir.join("codes.npy");
        write_atomic(&p, b"old").unwrap();
        let mut f = AtomicFile::create(&p).unwrap();
        f.write(b"new, ").unwrap();
        f.write(b"in pieces").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(leftovers(&dir).len(), 1);
        f.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new, in pieces");
        // Dropped before the commit (an error halfway): the old file, no temporary file.
        let mut f = AtomicFile::create(&p).unwrap();
        f.write(&[7u8; 3 << 20]).unwrap();
        drop(f);
        assert_eq!(std::fs::read(&p).unwrap(), b"new, in pieces");
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
