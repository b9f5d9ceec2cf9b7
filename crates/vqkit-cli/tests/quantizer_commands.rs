//! Every training command, `encode` and `decode`, end to end on small files, and the errors
//! users get for bad input.

mod common;

use common::{decode_args, s, scratch as dir, text, vqkit};
use std::path::Path;
use vqkit::io::npy;

/// Runs `vqkit`: whether it succeeded, its stdout and its stderr.
fn run(args: &[&str]) -> (bool, String, String) {
    let o = vqkit(args);
    let (out, err) = text(&o);
    (o.status.success(), out, err)
}

/// The JSON object on the last line of `stdout`.
fn last_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim().lines().last().unwrap_or("")).expect("JSON last line")
}

fn write_points(path: &Path, n: usize, d: usize) -> Vec<f32> {
    let x = vqkit::rng::clustered(n, d, 10, 0.3, 1);
    npy::write_f32(path, &[n, d], &x).unwrap();
    x
}

#[test]
fn every_training_command_then_encode_and_decode() {
    let t = dir("train");
    let x = t.join("x.npy");
    write_points(&x, 400, 8);
    let cases: Vec<(&str, Vec<&str>, usize)> = vec![
        ("kmeans", vec!["kmeans", "-k", "6", "--iters", "5"], 1),
        (
            "kmeans-stream",
            vec!["kmeans", "-k", "6", "--stream", "--batch-size", "64"],
            1,
        ),
        (
            "rq",
            vec!["rq-kmeans", "--stages", "3", "-k", "8", "--beam", "2"],
            3,
        ),
        (
            "rq-shared",
            vec!["rq-kmeans", "--stages", "2", "-k", "8", "--shared"],
            2,
        ),
        ("pvq", vec!["pvq", "-m", "4", "-k", "8"], 4),
        // The largest codebook whose codes are one byte, and codes past one byte: written
        // and read back as uint16.
        (
            "pvq-256",
            vec!["pvq", "-m", "2", "-k", "256", "--iters", "2"],
            2,
        ),
        (
            "pvq-wide",
            vec!["pvq", "-m", "2", "-k", "300", "--iters", "3"],
            2,
        ),
        ("avq", vec!["avq", "-m", "2", "-k", "8", "--beam", "3"], 2),
        (
            "nsvq-rvq",
            vec![
                "nsvq", "--method", "rvq", "--stages", "2", "-k", "8", "--epochs", "2",
            ],
            2,
        ),
        (
            "nsvq-pvq",
            vec![
                "nsvq", "--method", "pvq", "--stages", "2", "-k", "8", "--epochs", "2",
            ],
            2,
        ),
        (
            "nsvq-avq",
            vec![
                "nsvq",
                "--method",
                "avq",
                "--stages",
                "2",
                "-k",
                "8",
                "--epochs",
                "1",
                "--optimizer",
                "sgd",
                "--lr",
                "0.01",
            ],
            2,
        ),
    ];
    for (name, args, width) in cases {
        let model = t.join(format!("{name}.safetensors"));
        let mut a = args.clone();
        a.extend(["-i", s(&x), "-o", s(&model), "--json", "--seed", "3"]);
        let (ok, out, err) = run(&a);
        assert!(ok, "{name}: {err}");
        let v = last_json(&out);
        assert!(v["mse"].as_f64().unwrap() >= 0.0, "{name}: {v}");
        assert!(v["seconds"].as_f64().is_some(), "{name}: {v}");
        if !name.starts_with("kmeans") {
            let rel = v["relative_error"].as_f64().unwrap();
            assert!(rel > 0.0 && rel < 1.0, "{name}: {v}");
        }
        let codes = t.join(format!("{name}-codes.npy"));
        let (ok, out, err) = run(&[
            "encode",
            "-m",
            s(&model),
            "-i",
            s(&x),
            "-o",
            s(&codes),
            "--json",
        ]);
        assert!(ok, "{name} encode: {err}");
        let enc = last_json(&out);
        let (shape, c) = npy::read_codes(&codes).unwrap();
        assert_eq!(shape, vec![400, width], "{name}");
        let wide = name == "pvq-wide";
        let want = if wide {
            npy::Dtype::U16
        } else {
            npy::Dtype::U8
        };
        assert_eq!(npy::read(&codes).unwrap().dtype, want, "{name}");
        let dtype = if wide { "uint16" } else { "uint8" };
        assert_eq!(enc["code_dtype"], dtype, "{name}");
        assert!(!wide || c.iter().any(|&c| c > 255), "{name}");
        // A type asked for: wider is written, narrower than the codebook refused before the
        // file is touched.
        let other = t.join(format!("{name}-codes-u32.npy"));
        let a = ["encode", "-m", s(&model), "-i", s(&x), "-o", s(&other)];
        let (ok, _, err) = run(&[&a[..], &["--code-dtype", "uint32"]].concat());
        assert!(ok, "{name} encode --code-dtype uint32: {err}");
        assert_eq!(npy::read(&other).unwrap().dtype, npy::Dtype::U32, "{name}");
        assert_eq!(npy::read_codes(&other).unwrap().1, c, "{name}");
        if wide {
            let before = std::fs::read(&other).unwrap();
            let (ok, _, err) = run(&[&a[..], &["--code-dtype", "uint8"]].concat());
            assert!(!ok && err.contains("do not fit u8 codes"), "{name}: {err}");
            assert_eq!(std::fs::read(&other).unwrap(), before, "{name}");
        }
        assert_eq!(c.len(), 400 * width);
        let back = t.join(format!("{name}-x.npy"));
        let (ok, _, err) = run(&decode_args(&model, &codes, &back));
        assert!(ok, "{name} decode: {err}");
        // In a pool of the threads asked for, the same bytes; none is refused, and leaves
        // the old output.
        let other = t.join(format!("{name}-x-threads.npy"));
        let a = [&decode_args(&model, &codes, &other)[..], &["--json"]].concat();
        for threads in ["1", "3"] {
            let (ok, out, err) = run(&[&a[..], &["--threads", threads]].concat());
            assert!(ok, "{name} decode --threads {threads}: {err}");
            assert_eq!(last_json(&out)["threads"].to_string(), threads, "{name}");
            let same = std::fs::read(&other).unwrap() == std::fs::read(&back).unwrap();
            assert!(same, "{name} --threads {threads}");
        }
        let (ok, _, err) = run(&[&a[..], &["--threads", "0"]].concat());
        assert!(!ok && err.contains("threads"), "{name}: {err}");
        let same = std::fs::read(&other).unwrap() == std::fs::read(&back).unwrap();
        assert!(same, "{name}: the old output kept");
        let y = npy::read_matrix(&back).unwrap();
        assert_eq!((y.rows, y.cols), (400, 8));
        let xm = npy::read_matrix(&x).unwrap();
        let e = vqkit::quant::mse(&xm.data, &y.data, 8);
        assert!(
            (e - enc["mse"].as_f64().unwrap()).abs() < 1e-6 * (1.0 + e),
            "{name}"
        );
    }
    // Per-iteration inertia lines precede the JSON line.
    let (ok, out, _) = run(&[
        "kmeans",
        "-k",
        "4",
        "--iters",
        "3",
        "-i",
        s(&x),
        "-o",
        s(&t.join("k.safetensors")),
    ]);
    assert!(ok);
    assert_eq!(out.lines().filter(|l| l.contains("inertia")).count(), 3);
    std::fs::remove_dir_all(&t).ok();
}

#[test]
fn complexity_prints_the_table() {
    let (ok, out, err) = run(&[
        "complexity",
        "--method",
        "rvq",
        "--d",
        "128",
        "--stages",
        "4",
        "--bits",
        "8",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("multiplications") && out.contains("32"),
        "{out}"
    );
    let (ok, out, _) = run(&[
        "complexity",
        "--method",
        "avq",
        "--d",
        "16",
        "--stages",
        "3",
        "--bits",
        "4",
        "--beam",
        "2",
        "--json",
    ]);
    assert!(ok);
    assert_eq!(last_json(&out)["bits_per_vector"].as_f64(), Some(12.0));
}

#[test]
fn complexity_prints_the_published_figures_beside_its_own() {
    // d = 128, K = 32, S = 4: the published calculator gives 37978 operations for RVQ (it
    // counts 3 stages), 0 for a single stage; vqkit counts every stage.
    let args = |m: &str, st: &str| {
        run(&[
            "complexity",
            "--method",
            m,
            "--d",
            "128",
            "--stages",
            st,
            "--bits",
            "5",
            "--json",
        ])
    };
    let (ok, out, err) = args("rvq", "4");
    assert!(ok, "{err}");
    let v = last_json(&out);
    assert_eq!(v["published"]["weighted"].as_f64(), Some(37978.0));
    assert!(v["weighted"].as_f64().unwrap() > 37978.0);
    let (_, out, _) = args("rvq", "1");
    let v = last_json(&out);
    assert_eq!(v["published"]["weighted"].as_f64(), Some(0.0));
    assert!(v["weighted"].as_f64().unwrap() > 0.0);
    let (_, out, _) = args("vq", "1");
    assert!(last_json(&out)["published"].is_null());
    let (ok, out, _) = run(&[
        "complexity",
        "--method",
        "rvq",
        "--d",
        "128",
        "--stages",
        "4",
        "--bits",
        "5",
    ]);
    assert!(ok);
    let row = out.lines().find(|l| l.starts_with("weighted ops")).unwrap();
    assert!(row.trim_end().ends_with("37978"), "{row}");
    assert!(out.contains("0.037978"), "{out}");
}

#[test]
fn bad_input_gives_clear_errors() {
    let t = dir("bad");
    let x = t.join("x.npy");
    write_points(&x, 20, 4);
    let model = t.join("m.safetensors");
    let (ok, _, err) = run(&["kmeans", "-k", "30", "-i", s(&x), "-o", s(&model)]);
    assert!(
        !ok && err.contains("larger than the number of points"),
        "{err}"
    );
    // NaN in the data.
    let nan = t.join("nan.npy");
    let mut v = vec![0.5f32; 40];
    v[9] = f32::NAN;
    npy::write_f32(&nan, &[10, 4], &v).unwrap();
    let (ok, _, err) = run(&[
        "rq-kmeans",
        "--stages",
        "2",
        "-k",
        "2",
        "-i",
        s(&nan),
        "-o",
        s(&model),
    ]);
    assert!(!ok && err.contains("non-finite"), "{err}");
    // A model used on data of another dimension.
    let (ok, _, err) = run(&["kmeans", "-k", "3", "-i", s(&x), "-o", s(&model)]);
    assert!(ok, "{err}");
    let x5 = t.join("x5.npy");
    write_points(&x5, 20, 5);
    let codes = t.join("c.npy");
    let (ok, _, err) = run(&["encode", "-m", s(&model), "-i", s(&x5), "-o", s(&codes)]);
    assert!(!ok && err.contains("expects vectors of d = 4"), "{err}");
    // Codes out of range, and codes of the wrong width.
    npy::write_u32(&codes, &[2], &[0, 7]).unwrap();
    let (ok, _, err) = run(&decode_args(&model, &codes, &t.join("y.npy")));
    assert!(!ok && err.contains("out of range"), "{err}");
    npy::write_u32(&codes, &[2, 2], &[0, 1, 1, 0]).unwrap();
    let (ok, _, err) = run(&decode_args(&model, &codes, &t.join("y.npy")));
    assert!(!ok && err.contains("codes per vector"), "{err}");
    // A truncated model file.
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, _, err) = run(&["encode", "-m", s(&model), "-i", s(&x), "-o", s(&codes)]);
    assert!(!ok && err.contains("safetensors"), "{err}");
    // PVQ with M not dividing d.
    let (ok, _, err) = run(&["pvq", "-m", "3", "-k", "2", "-i", s(&x), "-o", s(&model)]);
    assert!(!ok && err.contains("do not divide"), "{err}");
    std::fs::remove_dir_all(&t).ok();
}

#[test]
fn nsvq_offers_the_published_choices() {
    let t = dir("nsvq-choices");
    let (x, y, m) = (t.join("x.npy"), t.join("y.npy"), t.join("m.safetensors"));
    write_points(&x, 300, 8);
    write_points(&y, 60, 8);
    let test_mse = |method: &str, flags: &[&str]| -> f64 {
        let base = [
            "nsvq",
            "--method",
            method,
            "--stages",
            "2",
            "-k",
            "8",
            "--epochs",
            "2",
            "--batch",
            "32",
            "--num-batches",
            "3",
            "--threads",
            "1",
            "--json",
            "-i",
            s(&x),
            "--test",
            s(&y),
            "-o",
            s(&m),
        ];
        let (ok, out, err) = run(&[&base[..], flags].concat());
        assert!(ok, "{flags:?}: {err}");
        last_json(&out)["test_mse"].as_f64().unwrap()
    };
    let plain = test_mse("pvq", &[]);
    assert!(plain.is_finite() && plain > 0.0);
    // The noise scope cannot change the quantizer's own gradient (see docs/nsvq.md).
    let per = test_mse("pvq", &["--noise", "per-subvector"]);
    assert!((per - plain).abs() <= 1e-4 * plain, "{per} vs {plain}");
    // A uniform start in +-1/K is another model than the k-means start.
    assert_ne!(test_mse("pvq", &["--init", "uniform"]), plain);
    for flags in [
        &["--pooled-replacement"][..],
        &["--stop-replacement"],
        &["--keep-moments"],
        &["--keep-adam-moments"],
    ] {
        assert!(test_mse("avq", flags).is_finite(), "{flags:?}");
    }
    let (ok, _, err) = run(&[
        "nsvq",
        "--method",
        "pvq",
        "--stages",
        "2",
        "-k",
        "8",
        "--pooled-replacement",
        "-i",
        s(&x),
        "-o",
        s(&m),
    ]);
    assert!(
        !ok && err.contains("pooled") && !err.contains("panicked"),
        "{err}"
    );
    std::fs::remove_dir_all(&t).ok();
}
