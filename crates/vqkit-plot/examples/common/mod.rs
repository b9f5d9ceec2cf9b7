//! What every numbered example needs: where to write its figures, Fashion-MNIST (or a
//! clear message on how to install it), and a timer for its closing line.

#![allow(dead_code)] // each example uses its own share of these

use std::path::{Path, PathBuf};
use std::time::Instant;

pub type Res<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Runs an example's body: an error is printed as `error: ...` (its message, not its
/// debug form) with a failing exit status.
pub fn main(body: fn() -> Res) -> std::process::ExitCode {
    match body() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--out DIR` from the command line, else the repository's `docs/figures/` (created if
/// missing), wherever the example is run from.
pub fn out_dir() -> Res<PathBuf> {
    let args: Vec<String> = std::env::args().collect();
    let dir = match args.iter().position(|a| a == "--out") {
        Some(i) => PathBuf::from(args.get(i + 1).ok_or("--out needs a directory")?.as_str()),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/figures"),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir.canonicalize().unwrap_or(dir))
}

/// `--flag VALUE` parsed, or `default`.
pub fn arg<T: std::str::FromStr>(flag: &str, default: T) -> Res<T> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == flag) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{flag} needs a valid value").into()),
    }
}

/// Fashion-MNIST's first `n` training images (rows of 784 values in [0, 1]) and the
/// first `n_test` test images, from `--data DIR` or where Debian's
/// `dataset-fashion-mnist` package installs them.
pub fn fashion_mnist(n: usize, n_test: usize) -> Res<(Vec<f32>, Vec<f32>)> {
    let dir: PathBuf = arg("--data", PathBuf::from(vqkit::io::idx::DEFAULT_DATA_DIR))?;
    let (train, test) = vqkit::io::idx::load_dataset(&dir, Some(n.max(n_test))).map_err(|e| {
        format!(
            "{e}\nthis example needs Fashion-MNIST: install it with \
             `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; it goes to {}), \
             or pass `-- --data DIR` with its four IDX files",
            vqkit::io::idx::DEFAULT_DATA_DIR
        )
    })?;
    let f = |px: &[u8], m: usize| -> Vec<f32> {
        px[..m * 784].iter().map(|&v| v as f32 / 255.0).collect()
    };
    if train.images.count < n
        || test.images.count < n_test
        || train.images.rows * train.images.cols != 784
    {
        return Err("Fashion-MNIST is smaller than expected".into());
    }
    Ok((f(&train.images.pixels, n), f(&test.images.pixels, n_test)))
}

/// Prints what was written and how long the example took.
pub fn done(files: &[PathBuf], start: Instant) {
    for f in files {
        let kb = std::fs::metadata(f).map(|m| m.len() / 1024).unwrap_or(0);
        println!("wrote {} ({kb} KB)", f.display());
    }
    println!("done in {:.1} s", start.elapsed().as_secs_f64());
}
