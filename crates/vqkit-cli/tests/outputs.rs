//! Outputs are written atomically: a write that fails (here, beyond a file-size limit set
//! with `ulimit -f`) is a clear error, and the file from the last good run is left whole.

mod common;

use common::{s, scratch, text, vqkit};
use std::process::Command;
use vqkit::io::npy;
use vqkit::rng::Rng;

#[test]
fn a_write_beyond_the_file_size_limit_fails_and_keeps_the_old_file() {
    let dir = scratch("outputs");
    // 80 KB of codes: k = 16 makes them uint8.
    let (n, k, d) = (80_000, 16, 4);
    let mut rng = Rng::new(5);
    let (xp, cp, out) = (dir.join("x.npy"), dir.join("c.npy"), dir.join("codes.npy"));
    npy::write_f32(&xp, &[n, d], &rng.normal_vec(n * d)).unwrap();
    npy::write_f32(&cp, &[k, d], &rng.normal_vec(k * d)).unwrap();
    let o = vqkit(&["assign", "-i", s(&xp), "-c", s(&cp), "-o", s(&out)]);
    assert!(o.status.success(), "{:?}", text(&o));
    let good = std::fs::read(&out).unwrap();
    assert!(good.len() > 64 * 1024);

    // The same command with another codebook, in a shell whose file-size limit (16 blocks)
    // is far below the 80 KB of codes.
    npy::write_f32(&cp, &[k, d], &rng.normal_vec(k * d)).unwrap();
    let o = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -f 16 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_vqkit"))
        .args(["assign", "-i", s(&xp), "-c", s(&cp), "-o", s(&out)])
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "killed instead of failing: {o:?}");
    assert!(
        err.contains("error:") && err.contains("codes.npy") && err.contains("File too large"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        good,
        "the old codes were damaged"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Work whose buffers cannot fit fails before allocating, saying how much it needs.
#[test]
fn work_beyond_the_memory_fails_early_with_the_sizes() {
    let o = vqkit(&[
        "bench",
        "--n",
        "100000000000",
        "--k",
        "16",
        "--d",
        "128",
        "--op",
        "assign",
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        err.contains("error:") && err.contains("needs") && err.contains("GiB"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "{err}"
    );
}
