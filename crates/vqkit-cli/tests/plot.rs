//! `vqkit plot` over hand-written JSON-lines logs: the PNG it writes has the requested
//! size, several runs share a figure, and a malformed log fails naming its file and line.

mod common;

use common::{fails_with, s, scratch, text, vqkit};

const KMEANS: &str = r#"{"kind":"header","command":"kmeans","version":"0.1.0","args":{"k":16}}
{"kind":"log","command":"kmeans","step":0,"elapsed_s":0.01,"objective":10.5,"mse":1.2}
{"kind":"log","command":"kmeans","step":1,"elapsed_s":0.02,"objective":6.25,"mse":0.8}
{"kind":"log","command":"kmeans","step":2,"elapsed_s":0.03,"objective":5.0,"mse":null}
{"kind":"summary","command":"kmeans","objective":5.0}
"#;

const VQVAE: &str = r#"{"kind":"header","command":"train-vqvae","version":"0.1.0","args":{}}
{"kind":"log","command":"train-vqvae","step":10,"epoch":0,"elapsed_s":1.0,"loss":0.9,"perplexity":[12.0,30.0],"usage":[0.5,0.9],"images_per_s":800}
{"kind":"log","command":"train-vqvae","step":20,"epoch":0,"elapsed_s":2.0,"loss":0.5,"perplexity":[14.0,35.0],"usage":[0.6,0.95],"images_per_s":820}
{"kind":"log","command":"train-vqvae","step":30,"epoch":1,"elapsed_s":3.0,"loss":0.4,"perplexity":[15.0,36.0],"usage":[0.7,0.97],"images_per_s":810}
"#;

/// The `(width, height)` in a PNG's IHDR, after checking the signature and chunk type.
fn png_size(path: &std::path::Path) -> (u32, u32) {
    let b = std::fs::read(path).expect("the PNG was written");
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&b[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
    assert_eq!(&b[b.len() - 8..b.len() - 4], b"IEND", "a complete file");
    (be(16), be(20))
}

#[test]
fn plot_draws_one_or_several_logs_at_the_requested_size() {
    let dir = scratch("plot");
    let (a, b) = (dir.join("kmeans.jsonl"), dir.join("vqvae.jsonl"));
    std::fs::write(&a, KMEANS).unwrap();
    std::fs::write(&b, VQVAE).unwrap();

    let out = dir.join("one.png");
    let o = vqkit(&[
        "plot",
        s(&a),
        "-o",
        s(&out),
        "--width",
        "640",
        "--height",
        "480",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(png_size(&out), (640, 480));
    let (stdout, _) = text(&o);
    assert!(stdout.contains("mse, objective"), "{stdout}");

    // Two runs on one figure, a chosen metric with its levels, epoch as x, log y.
    let out = dir.join("two.png");
    let o = vqkit(&[
        "plot",
        s(&b),
        s(&b),
        "-o",
        s(&out),
        "--metric",
        "perplexity,loss",
        "--x",
        "epoch",
        "--label",
        "run1,run2",
        "--log-y",
        "--width",
        "900",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    // Two panels on one row of the default 380 pixels.
    assert_eq!(png_size(&out), (900, 380));
    let (stdout, _) = text(&o);
    assert!(
        stdout.contains("perplexity, loss") && stdout.contains("2 logs"),
        "{stdout}"
    );
}

#[test]
fn plot_reports_bad_logs_and_options_clearly() {
    let dir = scratch("plot-bad");
    let out = dir.join("x.png");
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, format!("{}{{\"kind\":\"log\",\"step\":3,\n", KMEANS)).unwrap();
    fails_with(
        &vqkit(&["plot", s(&bad), "-o", s(&out)]),
        "bad.jsonl:6: not JSON",
    );
    assert!(!out.exists());

    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    fails_with(
        &vqkit(&["plot", s(&empty), "-o", s(&out)]),
        "empty.jsonl:1: no \"kind\":\"log\" record",
    );

    let missing = dir.join("missing.jsonl");
    fails_with(
        &vqkit(&["plot", s(&missing), "-o", s(&out)]),
        "missing.jsonl",
    );

    let good = dir.join("good.jsonl");
    std::fs::write(&good, KMEANS).unwrap();
    fails_with(
        &vqkit(&["plot", s(&good), "-o", s(&out), "--metric", "loss"]),
        "metrics present: mse, objective",
    );
    fails_with(
        &vqkit(&["plot", s(&good), "-o", s(&out), "--x", "epoch"]),
        "no record has \"epoch\"",
    );
    fails_with(
        &vqkit(&["plot", s(&good), "-o", s(&out), "--x", "time"]),
        "expected step, epoch or elapsed_s",
    );
    fails_with(
        &vqkit(&["plot", s(&good), "-o", s(&out), "--label", "a,b"]),
        "2 labels for 1 files",
    );
    fails_with(
        &vqkit(&["plot", s(&good), "-o", s(&out), "--width", "0"]),
        "figure size",
    );
    fails_with(
        &vqkit(&["plot", s(&good), "-o", "/nonexistent-vqkit-dir/x.png"]),
        "/nonexistent-vqkit-dir",
    );
    // A metric with no value > 0 keeps a linear axis under --log-y instead of failing.
    let zero = dir.join("zero.jsonl");
    std::fs::write(&zero, "{\"kind\":\"log\",\"step\":1,\"loss\":0}\n").unwrap();
    let o = vqkit(&["plot", s(&zero), "-o", s(&out), "--log-y"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(
        text(&o).0.contains("loss (linear: no value > 0)"),
        "{:?}",
        text(&o)
    );
    assert_eq!(png_size(&out), (1200, 380));
}
