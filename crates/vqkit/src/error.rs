//! One error type for the whole crate: every way a user's input or a device can fail.

use std::path::PathBuf;

/// Everything vqkit can report instead of panicking.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A buffer's length does not match the shape it is used with.
    #[error("{what}: expected {expected} elements, got {got}")]
    ShapeMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A flat slice whose length is not a multiple of the row width.
    #[error("{what}: length {len} is not a multiple of the dimension d = {d}")]
    RaggedRows {
        what: &'static str,
        len: usize,
        d: usize,
    },
    /// The vector dimension d is zero.
    #[error("the vector dimension d must be at least 1")]
    ZeroDimension,
    /// A codebook with no codewords.
    #[error("the codebook is empty (k = 0)")]
    EmptyCodebook,
    /// Fewer data points than requested clusters or codewords.
    #[error("k = {k} is larger than the number of points n = {n}")]
    KLargerThanN { k: usize, n: usize },
    /// NaN or an infinity in an input.
    #[error("{what} contains a non-finite value ({value}) at flat index {index}")]
    NonFinite {
        what: &'static str,
        index: usize,
        value: f32,
    },
    /// Finite inputs whose squared distances overflow f32.
    #[error(
        "squared distances overflow f32 (row {row}): rescale the data (|x|^2 must stay below ~3e38)"
    )]
    Overflow { row: usize },
    /// A code index outside 0..k.
    #[error("code {code} at row {row} is out of range for a codebook of k = {k}")]
    CodeOutOfRange { row: usize, code: u32, k: usize },
    /// Data whose vector dimension differs from the model's.
    #[error("the model expects vectors of d = {expected}, the data has d = {got}")]
    WrongDimension { expected: usize, got: usize },
    /// A parameter outside its valid range.
    #[error("invalid parameter {name}: {reason}")]
    InvalidParameter { name: &'static str, reason: String },
    /// Work whose buffers would not fit in the memory available (checked before allocating).
    #[error("{what} needs {} of memory; {} available", gib(*needed), available.map_or("less is".to_string(), |a| format!("{} is", gib(a as u128))))]
    OutOfMemory {
        what: &'static str,
        needed: u128,
        available: Option<u64>,
    },
    /// A file that cannot be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that was read but is not in the expected format (truncated, wrong dtype, ...).
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    /// A backend that is not compiled in, or has no usable device.
    #[error("backend {backend} is unavailable: {reason}")]
    BackendUnavailable {
        backend: &'static str,
        reason: String,
    },
    /// Work stopped between iterations because [`crate::interrupt`]'s hook asked for it
    /// (Ctrl-C in the Python package); nothing was returned or written.
    #[error("interrupted")]
    Interrupted,
    /// An error reported by a device driver or runtime.
    #[error("{backend} device error: {message}")]
    Device {
        backend: &'static str,
        message: String,
    },
}

/// `Result` with vqkit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidParameter {
            name,
            reason: reason.into(),
        }
    }

    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// The error of a chunk of rows, as the error of the whole input: for a chunk that
    /// starts `rows` rows of `d` values into the input, the row or flat index of a point
    /// (non-finite point values, overflowing distances) or of a code (out of range) is
    /// moved past the rows before the chunk. Other errors are returned as they are.
    pub fn after_rows(self, rows: usize, d: usize) -> Self {
        match self {
            Error::NonFinite {
                what: what @ "points",
                index,
                value,
            } => Error::NonFinite {
                what,
                index: index + rows * d,
                value,
            },
            Error::Overflow { row } => Error::Overflow { row: row + rows },
            Error::CodeOutOfRange { row, code, k } => Error::CodeOutOfRange {
                row: row + rows * d,
                code,
                k,
            },
            e => e,
        }
    }
}

/// Bytes as GiB with two decimals, for messages.
fn gib(bytes: u128) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}
