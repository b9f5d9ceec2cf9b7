//! `vqkit train-vqvae` and `vqkit reconstruct` end to end on a small real Fashion-MNIST
//! subset: train, resume from the checkpoint, reconstruct, and the errors of bad options.

mod common;

use common::{fashion_mnist, s, scratch, vqkit};
use std::path::PathBuf;
use vqkit::quant::model_io::TensorFile;

fn tmp(tag: &str) -> PathBuf {
    scratch(&format!("vqvae-{tag}"))
}

#[test]
fn cli_trains_resumes_and_reconstructs() {
    let Some(data) = fashion_mnist() else {
        return;
    };
    let dir = tmp("cli");
    let model = dir.join("m.safetensors");
    let m = model.to_str().unwrap();
    let common = [
        "train-vqvae",
        "--model",
        "rqvae",
        "--levels",
        "2",
        "--limit",
        "64",
        "--batch",
        "16",
        "--codebook",
        "16",
        "--hidden-dims",
        "8",
        "16",
        "--residual-layers",
        "1",
        "--residual-hidden",
        "4",
        "--embedding-dim",
        "8",
        "--threads",
        "2",
        "--json",
        "-o",
        m,
    ];
    let out = vqkit(&[&common[..], &["--epochs", "1"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["levels"], 2);
    assert_eq!(v["usage"].as_array().unwrap().len(), 2);
    assert!(v["test_psnr"].as_f64().unwrap() > 5.0, "{last}");
    assert!(v["test_ssim"].as_f64().unwrap().is_finite());
    assert_eq!(v["bits_per_image"].as_f64().unwrap(), 2.0 * 49.0 * 4.0);
    assert_eq!(
        v["compression_ratio"].as_f64().unwrap(),
        784.0 * 8.0 / 392.0
    );
    assert!(stdout.contains("epoch 1/1"));
    // Piped output: no progress-bar escape sequences.
    assert!(!stdout.contains('\u{1b}'));

    // Resume for a second epoch from the checkpoint.
    let model2 = dir.join("m2.safetensors");
    let mut resumed: Vec<&str> = common.to_vec();
    let at = resumed.len() - 1;
    resumed[at] = model2.to_str().unwrap();
    let out = vqkit(&[&resumed[..], &["--epochs", "2", "--resume", m]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("epoch 2/2") && !stdout.contains("epoch 1/2"),
        "{stdout}"
    );
    let f = TensorFile::read(&model2).unwrap();
    assert_eq!(f.get::<usize>("train.epoch").unwrap(), 2);

    // Reconstruction grid: originals + 2 levels, 8 images at scale 1 with 2 px padding.
    let png = dir.join("grid.png");
    let out = vqkit(&[
        "reconstruct",
        "-m",
        m,
        "-i",
        s(data),
        "-n",
        "8",
        "--scale",
        "1",
        "-o",
        png.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((w, h), (8 * 30 + 2, 3 * 30 + 2));

    // Bad inputs: a corrupt checkpoint, a non-IDX image file, a VQ-VAE with levels.
    let junk = dir.join("junk");
    std::fs::write(&junk, b"\x00\x00\x08\x03garbage").unwrap();
    let out = vqkit(&[
        "reconstruct",
        "-m",
        junk.to_str().unwrap(),
        "-i",
        m,
        "-o",
        "x.png",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("safetensors"));
    let out = vqkit(&[
        "reconstruct",
        "-m",
        m,
        "-i",
        junk.to_str().unwrap(),
        "-o",
        "x.png",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));
    let out = vqkit(&["train-vqvae", "--levels", "3", "-o", m]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("levels"));
    let out = vqkit(&["train-vqvae", "--data", dir.to_str().unwrap(), "-o", m]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("train-images-idx3-ubyte"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Kills `train-vqvae` with SIGKILL at many moments (seeded, spread over a whole run, so
/// some land while a checkpoint is being written), and after each kill checks that the
/// checkpoint left behind, if any, loads, then resumes from it; the last resume runs to the
/// end. A checkpoint is rewritten after every epoch, atomically.
#[test]
fn killed_runs_leave_loadable_checkpoints_and_resume_to_the_end() {
    use std::time::{Duration, Instant};
    let Some(data) = fashion_mnist() else {
        return;
    };
    let dir = tmp("kill");
    let ckpt = dir.join("ckpt.safetensors");
    let epochs = 10;
    let args = |resume: bool| {
        let mut a: Vec<String> = [
            "train-vqvae",
            "--data",
            s(data),
            "--limit",
            "64",
            "--batch",
            "32",
            "--threads",
            "2",
            "--json",
            "-o",
            s(&ckpt),
        ]
        .iter()
        .map(|v| v.to_string())
        .collect();
        a.extend(["--epochs".to_string(), epochs.to_string()]);
        if resume {
            a.extend(["--resume".to_string(), s(&ckpt).to_string()]);
        }
        a
    };
    // How long a whole run takes here, to spread the kills over it.
    let t = Instant::now();
    let full = vqkit(&args(false).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        full.status.success(),
        "{}",
        String::from_utf8_lossy(&full.stderr)
    );
    let whole = t.elapsed();
    std::fs::remove_file(&ckpt).unwrap();

    let mut rng = vqkit::rng::Rng::new(17);
    let (mut kills, mut mid_write, mut loaded) = (0, 0, 0);
    for _ in 0..16 {
        let resume = ckpt.exists();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vqkit"))
            .args(args(resume))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let at = whole.mul_f64(rng.uniform());
        std::thread::sleep(at.min(Duration::from_secs(30)));
        let killed = child.try_wait().unwrap().is_none();
        if killed {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        // A kill between creating the temporary file and the rename leaves that file.
        for e in std::fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name();
            if name.to_string_lossy().contains(".tmp-") {
                mid_write += 1;
                std::fs::remove_file(dir.join(name)).unwrap();
            }
        }
        if ckpt.exists() {
            let c = vqkit_nn::train::load_checkpoint(&ckpt)
                .unwrap_or_else(|e| panic!("the checkpoint left by a kill does not load: {e}"));
            assert!((1..=epochs).contains(&c.epoch), "epoch {}", c.epoch);
            loaded += 1;
            if !killed {
                // The run finished: start the next one afresh, to be killed again.
                assert_eq!(c.epoch, epochs);
                std::fs::remove_file(&ckpt).unwrap();
            }
        }
    }
    println!(
        "{kills} kills over {whole:?} runs, {mid_write} during a checkpoint write, {loaded} \
         checkpoints loaded"
    );
    assert!(
        kills >= 8,
        "only {kills} of 16 runs were still going when killed"
    );
    // The last resume runs to the end and reports every epoch done.
    let resume = ckpt.exists();
    let o = vqkit(&args(resume).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = vqkit_nn::train::load_checkpoint(&ckpt).unwrap();
    assert_eq!(c.epoch, epochs);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A model too large for the machine is refused before any of it is allocated.
#[test]
fn a_model_beyond_the_memory_is_refused_with_its_size() {
    let Some(data) = fashion_mnist() else {
        return;
    };
    let dir = tmp("huge");
    let out = dir.join("m.safetensors");
    for args in [
        ["--codebook", "2000000000", "--embedding-dim", "64"],
        ["--embedding-dim", "100000000", "--codebook", "8"],
    ] {
        let o = vqkit(
            &[
                &[
                    "train-vqvae",
                    "--data",
                    s(data),
                    "--limit",
                    "64",
                    "-o",
                    s(&out),
                ][..],
                &args[..],
            ]
            .concat(),
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("needs") && err.contains("GiB"), "{err}");
        assert!(!err.contains("memory allocation of"), "{err}");
        assert!(!out.exists());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
