//! IDX reading (plain and gzipped, typed errors for missing, truncated, wrong-magic and
//! corrupt files) and a training smoke test of the encoder -> decoder autoencoder on a small
//! real Fashion-MNIST subset.

use flate2::{Compression, write::GzEncoder};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use vqkit::Error;
use vqkit::io::idx;
use vqkit::rng::Rng;
use vqkit_nn::data;
use vqkit_nn::{Adam, ConvNetConfig, Decoder, Encoder, Layer, Tensor, autoencoder_step};

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vqkit-idx-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    dims.iter().for_each(|d| v.extend(d.to_be_bytes()));
    v.extend_from_slice(data);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn idx_reads_plain_and_gzipped_with_limits() {
    let dir = tmp_dir("ok");
    let pixels: Vec<u8> = (0..3 * 4 * 5).map(|i| (i * 7 % 256) as u8).collect();
    let img = idx_bytes(0x803, &[3, 4, 5], &pixels);
    let lab = idx_bytes(0x801, &[3], &[7, 0, 9]);
    write(&dir.join("plain.idx"), &img);
    write(&dir.join("packed.gz"), &gz(&img));
    for name in ["plain.idx", "packed.gz"] {
        let r = idx::read_images(&dir.join(name), None).unwrap();
        assert_eq!((r.count, r.rows, r.cols), (3, 4, 5));
        assert_eq!(r.pixels, pixels);
        let first = idx::read_images(&dir.join(name), Some(2)).unwrap();
        assert_eq!(first.pixels, pixels[..40]);
    }
    let t = data::to_tensor(&idx::read_images(&dir.join("plain.idx"), None).unwrap());
    assert_eq!(t.shape, [3, 1, 4, 5]);
    assert_eq!(t.data[1], 7.0 / 255.0);
    assert!(t.data.iter().all(|&v| (0.0..=1.0).contains(&v)));

    // A directory with the standard names: train plain, t10k gzipped.
    write(&dir.join("train-images-idx3-ubyte"), &img);
    write(&dir.join("train-labels-idx1-ubyte"), &lab);
    write(&dir.join("t10k-images-idx3-ubyte.gz"), &gz(&img));
    write(&dir.join("t10k-labels-idx1-ubyte.gz"), &gz(&lab));
    let (train, test) = data::load_dataset(&dir, None).unwrap();
    assert_eq!(train.images, test.images);
    assert_eq!(train.labels.as_deref(), Some(&[7u8, 0, 9][..]));
    let small = data::load_split(&dir, "t10k", Some(1)).unwrap();
    assert_eq!(
        (small.images.shape, small.labels),
        ([1, 1, 4, 5], Some(vec![7]))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn idx_bad_files_are_typed_errors() {
    let dir = tmp_dir("bad");
    let is_format = |r: Result<idx::IdxImages, Error>, needle: &str| match r {
        Err(Error::Format { reason, .. }) => assert!(reason.contains(needle), "{reason}"),
        other => panic!("expected a format error with '{needle}', got {other:?}"),
    };
    // Missing file: an I/O error naming the path.
    match idx::read_images(&dir.join("absent"), None) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("absent")),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    // Wrong magic: a label file read as images, and vice versa.
    let lab = idx_bytes(0x801, &[2], &[1, 2]);
    write(&dir.join("labels"), &lab);
    is_format(idx::read_images(&dir.join("labels"), None), "magic");
    let img = idx_bytes(0x803, &[2, 2, 2], &[0; 8]);
    write(&dir.join("images"), &img);
    assert!(matches!(
        idx::read_labels(&dir.join("images"), None),
        Err(Error::Format { .. })
    ));
    // Truncated pixels, truncated header, empty file; plain and gzipped.
    let short = idx_bytes(0x803, &[3, 2, 2], &[0; 10]);
    write(&dir.join("short"), &short);
    is_format(idx::read_images(&dir.join("short"), None), "truncated");
    write(&dir.join("short.gz"), &gz(&short));
    is_format(idx::read_images(&dir.join("short.gz"), None), "truncated");
    write(&dir.join("head"), &short[..9]);
    is_format(idx::read_images(&dir.join("head"), None), "truncated");
    write(&dir.join("empty"), &[]);
    is_format(idx::read_images(&dir.join("empty"), None), "truncated");
    // A gzip magic followed by garbage.
    write(
        &dir.join("corrupt.gz"),
        &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xfe, 0xfd, 1, 2],
    );
    assert!(matches!(
        idx::read_images(&dir.join("corrupt.gz"), None),
        Err(Error::Format { .. })
    ));
    // A directory without the standard files.
    assert!(matches!(
        data::load_split(&dir, "train", None),
        Err(Error::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn autoencoder_loss_falls_on_real_fashion_mnist() {
    let Some(dir) = data::installed_dataset().unwrap() else {
        return;
    };
    let t0 = Instant::now();
    let data = data::load_split(dir, "t10k", Some(256)).unwrap().images;
    assert_eq!(data.shape, [256, 1, 28, 28]);
    let cfg = ConvNetConfig {
        in_channels: 1,
        hidden_dims: vec![16, 32],
        num_residual_layers: 1,
        residual_hidden: 8,
        embedding_dim: 8,
    };
    let mut rng = Rng::new(1);
    let mut enc = Encoder::new(&cfg, &mut rng).unwrap();
    let mut dec = Decoder::new(&cfg, &mut rng).unwrap();
    let mut opt = Adam::new(2e-3);
    let batch = 32;
    let img = 28 * 28;
    let batch_at = |b: usize| {
        let s = (b % (256 / batch)) * batch;
        Tensor::from_vec(
            [batch, 1, 28, 28],
            data.data[s * img..(s + batch) * img].to_vec(),
        )
        .unwrap()
    };
    // Two stride-2 convolutions take 28 x 28 images to 7 x 7 latents.
    assert_eq!(enc.forward(&batch_at(0)).unwrap().shape, [batch, 8, 7, 7]);
    let mut losses = Vec::new();
    for step in 0..16 {
        let loss = autoencoder_step(&mut enc, &mut dec, &mut opt, &batch_at(step)).unwrap();
        assert!(loss.is_finite());
        losses.push(loss);
    }
    let first: f32 = losses[..4].iter().sum::<f32>() / 4.0;
    let last: f32 = losses[losses.len() - 4..].iter().sum::<f32>() / 4.0;
    println!("losses {losses:?}; {:.2} s", t0.elapsed().as_secs_f64());
    assert!(last < 0.6 * first, "loss did not fall: {first} -> {last}");
}
