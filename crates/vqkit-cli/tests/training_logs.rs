//! `--log FILE` of the training commands: every line parses, the header names the command,
//! steps strictly increase, the final figures agree with what the command reports, and an
//! unwritable or full log ends the command with an error, not a panic.

mod common;

use common::{fails_with, fashion_mnist, last_json, s, scratch, text, vqkit};
use serde_json::Value;
use std::path::Path;
use std::process::Output;
use vqkit::io::npy;

fn write_points(path: &Path, n: usize, d: usize) {
    let x = vqkit::rng::clustered(n, d, 12, 0.3, 4);
    npy::write_f32(path, &[n, d], &x).unwrap();
}

fn ok(o: &Output) {
    let (out, err) = text(o);
    assert!(o.status.success(), "stdout: {out}\nstderr: {err}");
}

/// The lines of a log, checked for what every log holds: a header naming `command` first,
/// `log` lines with strictly increasing steps and non-decreasing times whose metrics are
/// numbers, nulls or arrays of them, and a summary last. Returns (header, logs, summary).
fn read_log(path: &Path, command: &str) -> (Value, Vec<Value>, Value) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n'), "the last line is complete");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(lines.len() >= 3, "{text}");
    let head = lines[0].clone();
    assert_eq!(head["kind"], "header");
    assert_eq!(head["command"], command);
    assert_eq!(head["version"], env!("CARGO_PKG_VERSION"));
    assert!(head["args"].is_object());
    let summary = lines[lines.len() - 1].clone();
    assert_eq!(summary["kind"], "summary");
    assert_eq!(summary["command"], command);
    let logs: Vec<Value> = lines[1..lines.len() - 1].to_vec();
    let (mut step, mut time) = (-1i64, 0.0f64);
    for l in &logs {
        assert_eq!(l["kind"], "log", "{l}");
        assert_eq!(l["command"], command);
        let st = l["step"].as_i64().expect("an integer step");
        assert!(st > step, "step {st} after {step}");
        step = st;
        let t = l["elapsed_s"].as_f64().expect("elapsed_s");
        assert!(t >= time);
        time = t;
        for (k, v) in l.as_object().unwrap() {
            if k == "kind" || k == "command" {
                continue;
            }
            let number = |v: &Value| v.is_number() || v.is_null();
            assert!(
                number(v) || v.as_array().is_some_and(|a| a.iter().all(number)),
                "{k}: {v}"
            );
        }
    }
    (head, logs, summary)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

#[test]
fn kmeans_logs_every_lloyd_iteration() {
    let d = scratch("log-kmeans");
    let (x, log) = (d.join("x.npy"), d.join("km.jsonl"));
    write_points(&x, 600, 6);
    let o = vqkit(&[
        "kmeans",
        "-i",
        s(&x),
        "-k",
        "5",
        "--iters",
        "6",
        "--restarts",
        "2",
        "--json",
        "--threads",
        "1",
        "-o",
        s(&d.join("m")),
        "--log",
        s(&log),
    ]);
    ok(&o);
    let v = last_json(&o);
    let (head, logs, sum) = read_log(&log, "kmeans");
    assert_eq!(head["args"]["k"], 5);
    assert!(logs.len() >= 2 && logs.len() <= 12, "{}", logs.len());
    assert!(logs.iter().any(|l| l["restart"] == 1));
    // The reported error is the kept restart's, after its last iteration: no more than any
    // inertia on the way (Lloyd never increases it), and the summary repeats it exactly.
    assert_eq!(sum["mse"], v["mse"]);
    let lowest = logs
        .iter()
        .map(|l| f(&l["objective"]))
        .fold(f64::MAX, f64::min);
    assert!(
        f(&v["mse"]) <= lowest * (1.0 + 1e-6),
        "{} > {lowest}",
        v["mse"]
    );
    for r in [0, 1] {
        let obj: Vec<f64> = logs
            .iter()
            .filter(|l| l["restart"] == r)
            .map(|l| f(&l["objective"]))
            .collect();
        assert!(
            obj.windows(2).all(|w| w[1] <= w[0] * (1.0 + 1e-6)),
            "{obj:?}"
        );
    }
}

#[test]
fn streaming_kmeans_logs_every_batch_with_its_epoch() {
    let d = scratch("log-stream");
    let (x, log) = (d.join("x.npy"), d.join("s.jsonl"));
    write_points(&x, 500, 4);
    let o = vqkit(&[
        "kmeans",
        "-i",
        s(&x),
        "-k",
        "4",
        "--stream",
        "--batch-size",
        "100",
        "--epochs",
        "3",
        "--json",
        "-o",
        s(&d.join("m")),
        "--log",
        s(&log),
    ]);
    ok(&o);
    let (_, logs, sum) = read_log(&log, "kmeans");
    assert_eq!(logs.len(), 15, "5 batches in each of 3 epochs");
    let epochs: Vec<i64> = logs.iter().map(|l| l["epoch"].as_i64().unwrap()).collect();
    assert_eq!(epochs, [[0; 5], [1; 5], [2; 5]].concat());
    assert_eq!(sum["mse"], last_json(&o)["mse"]);
    assert_eq!(sum["epoch_mse"].as_array().unwrap().len(), 3);
}

#[test]
fn rq_kmeans_logs_every_stage_iteration() {
    let d = scratch("log-rq");
    let (x, log) = (d.join("x.npy"), d.join("rq.jsonl"));
    write_points(&x, 500, 8);
    let o = vqkit(&[
        "rq-kmeans",
        "-i",
        s(&x),
        "--stages",
        "3",
        "-k",
        "4",
        "--iters",
        "5",
        "--progressive-dim-steps",
        "0",
        "--json",
        "--threads",
        "1",
        "-o",
        s(&d.join("m")),
        "--log",
        s(&log),
    ]);
    ok(&o);
    let v = last_json(&o);
    let (_, logs, sum) = read_log(&log, "rq-kmeans");
    let stages: Vec<i64> = logs.iter().map(|l| l["stage"].as_i64().unwrap()).collect();
    assert!(stages.windows(2).all(|w| w[1] >= w[0]));
    assert_eq!((stages[0], stages[stages.len() - 1]), (0, 2));
    assert!(logs.len() <= 15);
    assert_eq!(sum["mse"], v["mse"]);
    assert_eq!(sum["stage_mse"].as_array().unwrap().len(), 3);
    assert_eq!(sum["stage_mse"][2], v["per_stage"][2]["mse"]);
    // Each stage's inertia is the error after that stage: the final error is at most the
    // last stage's last inertia (the centroids moved once more after it).
    let last = f(&logs[logs.len() - 1]["objective"]);
    assert!(f(&v["mse"]) <= last * (1.0 + 1e-6), "{} > {last}", v["mse"]);
    // Each stage removes error: its last inertia is below the previous stage's last.
    let last_of = |st: i64| f(&logs.iter().rev().find(|l| l["stage"] == st).unwrap()["objective"]);
    assert!(last_of(2) < last_of(1) && last_of(1) < last_of(0));
}

#[test]
fn nsvq_logs_intervals_and_epochs_that_match_its_output() {
    let d = scratch("log-nsvq");
    let (x, y, log) = (d.join("x.npy"), d.join("y.npy"), d.join("n.jsonl"));
    write_points(&x, 700, 8);
    write_points(&y, 100, 8);
    let o = vqkit(&[
        "nsvq",
        "-i",
        s(&x),
        "--method",
        "rvq",
        "--stages",
        "2",
        "-k",
        "8",
        "--epochs",
        "3",
        "--batch",
        "64",
        "--num-batches",
        "4",
        "--log-every",
        "4",
        "--test",
        s(&y),
        "--json",
        "--threads",
        "1",
        "-o",
        s(&d.join("m")),
        "--log",
        s(&log),
    ]);
    ok(&o);
    let (stdout, _) = text(&o);
    let v = last_json(&o);
    let (head, logs, sum) = read_log(&log, "nsvq");
    assert_eq!(head["args"]["method"], "rvq");
    assert_eq!(head["args"]["lr"].to_string(), "0.001");
    // 11 batches an epoch: lines after batches 4 and 8, and at the epoch's end (batch 11).
    let steps: Vec<i64> = logs.iter().map(|l| l["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, [3, 7, 10, 14, 18, 21, 25, 29, 32]);
    let printed: Vec<f64> = stdout
        .lines()
        .filter_map(|l| l.split("train mse ").nth(1))
        .map(|t| t.trim().parse().unwrap())
        .collect();
    let logged: Vec<f64> = logs
        .iter()
        .filter(|l| !l["train_mse"].is_null())
        .map(|l| f(&l["train_mse"]))
        .collect();
    assert_eq!(logged.len(), 3);
    for (p, l) in printed.iter().zip(&logged) {
        assert!((p - l).abs() <= 1e-6 * l.abs().max(1.0), "{p} vs {l}");
    }
    for l in &logs {
        assert_eq!(l["perplexity"].as_array().unwrap().len(), 2);
        assert_eq!(l["usage"].as_array().unwrap().len(), 2);
        let rep = l["dead_replaced"].as_array().unwrap();
        assert!(rep.iter().all(|r| r.as_u64().is_some_and(|r| r <= 8)));
        assert!(f(&l["loss"]) > 0.0 && f(&l["points_per_s"]) > 0.0);
    }
    assert_eq!(sum["mse"], v["mse"]);
    assert_eq!(sum["test_mse"], v["test_mse"]);
    assert!(f(&v["test_mse"]) > 0.0);
}

#[test]
fn train_vqvae_logs_batches_epochs_and_test_figures() {
    let Some(data) = fashion_mnist() else {
        return;
    };
    let d = scratch("log-vqvae");
    let log = d.join("v.jsonl");
    let o = vqkit(&[
        "train-vqvae",
        "--data",
        s(data),
        "--model",
        "rqvae",
        "--levels",
        "2",
        "--limit",
        "96",
        "--batch",
        "16",
        "--epochs",
        "2",
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
        "--quantizer",
        "nsvq",
        "--log-every",
        "2",
        "--threads",
        "2",
        "--json",
        "-o",
        s(&d.join("m")),
        "--log",
        s(&log),
    ]);
    ok(&o);
    let (stdout, _) = text(&o);
    let v = last_json(&o);
    let (_, logs, sum) = read_log(&log, "train-vqvae");
    // 6 batches an epoch: lines after batches 2 and 4, and the epoch's line at batch 6.
    let steps: Vec<i64> = logs.iter().map(|l| l["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, [1, 3, 5, 7, 9, 11]);
    let printed: Vec<f64> = stdout
        .lines()
        .filter(|l| l.starts_with("epoch "))
        .map(|l| {
            l.split("loss ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
        })
        .map(|t| t.parse().unwrap())
        .collect();
    let logged: Vec<f64> = logs
        .iter()
        .filter(|l| !l["epoch_loss"].is_null())
        .map(|l| f(&l["epoch_loss"]))
        .collect();
    assert_eq!(printed.len(), 2);
    assert_eq!(logged.len(), 2);
    for (p, l) in printed.iter().zip(&logged) {
        assert!((p - l).abs() <= 5e-6, "{p} vs {l}");
    }
    for l in &logs {
        assert_eq!(l["perplexity"].as_array().unwrap().len(), 2);
        assert_eq!(l["dead_replaced"].as_array().unwrap().len(), 2);
        // NSVQ has no commitment loss: the loss is the reconstruction loss.
        assert_eq!(f(&l["commit_loss"]), 0.0);
        assert!((f(&l["loss"]) - f(&l["recon_loss"])).abs() < 1e-9);
    }
    assert_eq!(sum["test_mse"], v["test_mse"]);
    assert_eq!(sum["usage"], v["usage"]);
}

#[test]
fn an_unwritable_log_ends_the_command_before_training() {
    let d = scratch("log-bad");
    let x = d.join("x.npy");
    write_points(&x, 200, 4);
    let model = d.join("m");
    for bad in [
        d.join("no-such-dir").join("l.jsonl"),
        d.clone(),
        Path::new("/dev/full").to_path_buf(),
    ] {
        for args in [
            vec!["kmeans", "-k", "3", "-i", s(&x)],
            vec!["rq-kmeans", "--stages", "2", "-k", "3", "-i", s(&x)],
            vec![
                "nsvq",
                "--method",
                "pvq",
                "--stages",
                "2",
                "-k",
                "3",
                "-i",
                s(&x),
            ],
            vec!["train-vqvae", "--data", s(&d), "--limit", "8"],
        ] {
            let o = vqkit(&[&args[..], &["-o", s(&model), "--log", s(&bad)][..]].concat());
            fails_with(&o, s(&bad));
            assert!(!model.exists(), "{args:?}: no model after a failed log");
        }
    }
}

#[test]
fn a_log_that_fills_up_mid_run_stops_the_command_with_its_error() {
    let d = scratch("log-full");
    let (x, log) = (d.join("x.npy"), d.join("n.jsonl"));
    write_points(&x, 2000, 4);
    let model = d.join("m");
    // A 2 KiB file-size limit: the header fits, the lines of 60 epochs do not.
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 2 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_vqkit"))
        .args([
            "nsvq",
            "--method",
            "rvq",
            "--stages",
            "2",
            "-k",
            "4",
            "--epochs",
            "60",
            "--batch",
            "500",
            "--threads",
            "1",
            "-i",
            s(&x),
            "-o",
            s(&model),
            "--log",
            s(&log),
        ])
        .output()
        .unwrap();
    fails_with(&o, s(&log));
    assert!(!model.exists());
    // The header and the lines before the limit are there (the last one may be cut at the
    // limit); no summary was written.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.len() <= 2048);
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(lines.len() >= 2, "{text}");
    assert_eq!(lines[0]["kind"], "header");
    assert!(lines[1..].iter().all(|l| l["kind"] == "log"));
}
