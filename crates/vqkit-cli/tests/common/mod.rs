//! What every test of the `vqkit` binary needs: running it, scratch files, its JSON line,
//! its failures, and the real dataset (or the reason a test cannot run).

#![allow(dead_code)] // each test file uses its own share of these

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `vqkit` binary built for these tests.
pub fn vqkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vqkit"))
        .args(args)
        .output()
        .expect("the vqkit binary runs")
}

/// A scratch directory of this process for test `tag`, under the target directory's `tmp`
/// (cargo's `CARGO_TARGET_TMPDIR`), where what a test leaves behind (the shared directories
/// of a test binary, a failed test's files) goes with `cargo clean` instead of piling up in
/// the system's temporary directory. Emptied on its first use in the process: a process
/// id seen before (another run, another container) does not hand a test old files. The
/// tests of one binary that share a tag share the directory.
pub fn scratch(tag: &str) -> PathBuf {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("vqkit-cli-{tag}-{}", std::process::id()));
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.iter().any(|t| t == tag) {
        let _ = std::fs::remove_dir_all(&dir);
        seen.push(tag.to_string());
    }
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// `vqkit decode -m model -i codes -o out`'s arguments, for a test to extend.
pub fn decode_args<'a>(model: &'a Path, codes: &'a Path, out: &'a Path) -> [&'a str; 7] {
    ["decode", "-m", s(model), "-i", s(codes), "-o", s(out)]
}

/// A path as the `&str` a command line takes.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Standard output and standard error as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The last line of standard output, parsed as the JSON object `--json` prints.
pub fn last_json(o: &Output) -> serde_json::Value {
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line {line:?} is not JSON: {e}"))
}

/// Asserts that the command failed with an `error:` line containing `needle`, and did not
/// panic.
pub fn fails_with(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure, got success");
    assert!(
        err.contains("error:") && err.contains(needle),
        "stderr: {err}"
    );
    assert!(!err.contains("panicked"), "stderr: {err}");
}

/// The installed Fashion-MNIST directory, or `None` after saying why it is absent; with
/// `VQKIT_REQUIRE_DATA=1` (set in CI) a missing dataset fails the test instead.
pub fn fashion_mnist() -> Option<&'static Path> {
    vqkit_nn::data::installed_dataset().expect("the dataset")
}
