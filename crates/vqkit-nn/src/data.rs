//! Image datasets as tensors: the IDX files of MNIST and Fashion-MNIST (read by
//! [`vqkit::io::idx`]) scaled to [0, 1] as NCHW tensors, and batches gathered from them.

use crate::tensor::{Layout, Tensor};
use std::path::Path;
use vqkit::io::idx::{self, IdxImages};
use vqkit::{Error, Result};

pub use vqkit::io::idx::DEFAULT_DATA_DIR;

/// The images as an NCHW tensor (n, 1, rows, cols), each byte `p` as `p / 255`.
pub fn to_tensor(images: &IdxImages) -> Tensor {
    Tensor {
        shape: [images.count, 1, images.rows, images.cols],
        layout: Layout::Nchw,
        data: images.pixels.iter().map(|&p| p as f32 / 255.0).collect(),
    }
}

/// One split of a dataset: images as (n, 1, rows, cols) in [0, 1], and labels if present.
#[derive(Clone, Debug)]
pub struct Split {
    pub images: Tensor,
    pub labels: Option<Vec<u8>>,
}

/// Split `prefix` ("train" or "t10k") of an MNIST-style directory, at most `limit` images
/// (see [`idx::load_split`]).
pub fn load_split(dir: &Path, prefix: &str, limit: Option<usize>) -> Result<Split> {
    let s = idx::load_split(dir, prefix, limit)?;
    Ok(Split {
        images: to_tensor(&s.images),
        labels: s.labels,
    })
}

/// The train and test splits of an MNIST-style directory.
pub fn load_dataset(dir: &Path, limit: Option<usize>) -> Result<(Split, Split)> {
    Ok((
        load_split(dir, "train", limit)?,
        load_split(dir, "t10k", limit)?,
    ))
}

/// Images `idx` of `x` (NCHW) as one batch, in that order.
pub fn gather(x: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let per = x.c() * x.h() * x.w();
    let mut data = Vec::with_capacity(idx.len() * per);
    for &i in idx {
        let img = x
            .data
            .get(i * per..(i + 1) * per)
            .ok_or_else(|| Error::invalid("batch", format!("image {i} of a set of {}", x.n())))?;
        data.extend_from_slice(img);
    }
    Tensor::from_vec([idx.len(), x.c(), x.h(), x.w()], data)
}

/// The variable that turns a missing dataset from a skip into a failure (CI sets it to 1).
pub const REQUIRE_DATA_VAR: &str = "VQKIT_REQUIRE_DATA";

/// The installed Fashion-MNIST directory ([`DEFAULT_DATA_DIR`]) for tests and examples that
/// need real images: `Ok(Some(dir))` when it is there, `Ok(None)` after printing why when it
/// is not, and an error instead when `VQKIT_REQUIRE_DATA=1`, so that a run that must test on
/// real data cannot pass by skipping.
pub fn installed_dataset() -> Result<Option<&'static Path>> {
    let dir = Path::new(DEFAULT_DATA_DIR);
    if dir.is_dir() {
        return Ok(Some(dir));
    }
    let why = format!("{DEFAULT_DATA_DIR} is absent (apt install dataset-fashion-mnist)");
    if std::env::var(REQUIRE_DATA_VAR).is_ok_and(|v| v == "1") {
        return Err(Error::invalid(
            "dataset",
            format!("{REQUIRE_DATA_VAR}=1 but {why}"),
        ));
    }
    println!("skipped: {why}");
    Ok(None)
}
