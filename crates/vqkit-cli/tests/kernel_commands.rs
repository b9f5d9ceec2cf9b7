//! The `vqkit` binary end to end: real files in, files and JSON out, and every bad input a
//! clear error with a non-zero exit, never a panic.

mod common;

use common::{fails_with, last_json, s, scratch, text, vqkit};
use std::path::{Path, PathBuf};
use vqkit::io::{fvecs, npy};
use vqkit::rng::Rng;

fn tmp(name: &str) -> PathBuf {
    scratch("kernels").join(name)
}

#[test]
fn assign_npy_and_fvecs_agree_with_the_reference() {
    let (n, k, d) = (300, 17, 9);
    let mut rng = Rng::new(11);
    let x = rng.normal_vec(n * d);
    let c = rng.normal_vec(k * d);
    let (xp, cp, out) = (tmp("x.npy"), tmp("c.fvecs"), tmp("codes.npy"));
    npy::write_f32(&xp, &[n, d], &x).unwrap();
    std::fs::write(&cp, fvecs::to_bytes(&c, d)).unwrap();
    let o = vqkit(&[
        "assign",
        "-i",
        s(&xp),
        "-c",
        s(&cp),
        "-o",
        s(&out),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = last_json(&o);
    assert_eq!(
        (j["n"].as_u64(), j["k"].as_u64(), j["d"].as_u64()),
        (Some(300), Some(17), Some(9))
    );
    assert!(j["seconds"].as_f64().unwrap() >= 0.0);
    let (shape, codes) = npy::read_codes(&out).unwrap();
    assert_eq!(shape, vec![n]);
    let (want, best) = vqkit::reference::distance_argmin(&x, &c, d);
    let mse = best.iter().sum::<f64>() / n as f64;
    assert!((j["mse"].as_f64().unwrap() - mse).abs() < 1e-4 * mse);
    // Random normal data has no near-ties at this size: the codes agree exactly.
    assert_eq!(codes, want);
}

/// `vqkit assign` writes its codes in the narrowest type that holds the codebook's indices
/// (uint8 to 256 codewords, uint16 past it), or the type `--code-dtype` names; a type too
/// narrow is refused before the output is touched.
#[test]
fn assign_writes_codes_in_their_width() {
    let (n, d) = (500, 3);
    let mut rng = Rng::new(21);
    let x = rng.normal_vec(n * d);
    let (xp, cp, out) = (tmp("w-x.npy"), tmp("w-c.npy"), tmp("w-codes.npy"));
    npy::write_f32(&xp, &[n, d], &x).unwrap();
    let assign_to = |out: &Path, extra: &[&str]| {
        let args = [&["assign", "-i", s(&xp), "-c", s(&cp), "-o", s(out)], extra].concat();
        vqkit(&[&args[..], &["--json"]].concat())
    };
    let assign = |extra: &[&str]| assign_to(&out, extra);
    for (k, dtype) in [(256, "uint8"), (257, "uint16")] {
        let mut c = rng.normal_vec(k * d);
        // The last codeword is the first point: a code of k - 1 in the output.
        c[(k - 1) * d..].copy_from_slice(&x[..d]);
        npy::write_f32(&cp, &[k, d], &c).unwrap();
        let (want, _) = vqkit::reference::distance_argmin(&x, &c, d);
        assert_eq!(want[0] as usize, k - 1);
        let o = assign(&[]);
        assert!(o.status.success(), "{:?}", text(&o));
        assert_eq!(last_json(&o)["code_dtype"], dtype, "k = {k}");
        let bytes = std::fs::read(&out).unwrap();
        if k == 256 {
            let narrow: Vec<u8> = want.iter().map(|&c| c as u8).collect();
            assert_eq!(bytes, npy::codes_bytes(&[n], &narrow), "k = {k}");
            // A type wider than auto's, asked for, is written.
            let o = assign(&["--code-dtype", "uint16"]);
            assert!(o.status.success(), "{:?}", text(&o));
            assert_eq!(last_json(&o)["code_dtype"], "uint16");
            let wide: Vec<u16> = want.iter().map(|&c| c as u16).collect();
            assert_eq!(std::fs::read(&out).unwrap(), npy::codes_bytes(&[n], &wide));
        } else {
            let narrow: Vec<u16> = want.iter().map(|&c| c as u16).collect();
            assert_eq!(bytes, npy::codes_bytes(&[n], &narrow), "k = {k}");
        }
        let o = assign(&["--code-dtype", "uint32"]);
        assert!(o.status.success(), "{:?}", text(&o));
        assert_eq!(last_json(&o)["code_dtype"], "uint32", "k = {k}");
        assert_eq!(std::fs::read(&out).unwrap(), npy::u32_bytes(&[n], &want));
    }
    // uint8 for 257 codewords: refused, and the uint32 codes written last are kept.
    let kept = std::fs::read(&out).unwrap();
    let o = assign(&["--code-dtype", "uint8"]);
    fails_with(&o, "257 codewords do not fit u8");
    assert_eq!(std::fs::read(&out).unwrap(), kept);
    // Refused before the output is created: into a directory that does not exist, the
    // error is still the type's, not the file's.
    let o = assign_to(
        &tmp("missing-dir").join("codes.npy"),
        &["--code-dtype", "uint8"],
    );
    fails_with(&o, "257 codewords do not fit u8");
}

#[test]
fn assign_reads_f16_and_u8_points() {
    // u8 pixels and their f16 encoding (exact for small integers) give the same codes.
    let (n, d) = (40, 4);
    let mut rng = Rng::new(3);
    let pix: Vec<u8> = (0..n * d).map(|_| rng.below(256) as u8).collect();
    let mut u8_file = b"\x93NUMPY\x01\x00".to_vec();
    let header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': ({n}, {d}), }}");
    let header = format!("{header:<117}\n");
    u8_file.extend_from_slice(&(header.len() as u16).to_le_bytes());
    u8_file.extend_from_slice(header.as_bytes());
    u8_file.extend_from_slice(&pix);
    let mut f16_file = b"\x93NUMPY\x01\x00".to_vec();
    let header = format!("{{'descr': '<f2', 'fortran_order': False, 'shape': ({n}, {d}), }}");
    let header = format!("{header:<117}\n");
    f16_file.extend_from_slice(&(header.len() as u16).to_le_bytes());
    f16_file.extend_from_slice(header.as_bytes());
    for &p in &pix {
        // An integer 0..=255 in f16: exponent and mantissa by hand.
        let h: u16 = if p == 0 {
            0
        } else {
            let e = 15 + (7 - p.leading_zeros() as u16);
            let m = ((p as u32) << (10 - (e - 15))) as u16 & 0x3ff;
            (e << 10) | m
        };
        f16_file.extend_from_slice(&h.to_le_bytes());
    }
    let (a, b, c) = (tmp("px.npy"), tmp("px16.npy"), tmp("cb.npy"));
    std::fs::write(&a, u8_file).unwrap();
    std::fs::write(&b, f16_file).unwrap();
    npy::write_f32(
        &c,
        &[3, d],
        &[0.0; 4]
            .iter()
            .chain(&[128.0; 4])
            .chain(&[255.0; 4])
            .cloned()
            .collect::<Vec<f32>>(),
    )
    .unwrap();
    let (oa, ob) = (tmp("ca.npy"), tmp("cb16.npy"));
    assert!(
        vqkit(&["assign", "-i", s(&a), "-c", s(&c), "-o", s(&oa)])
            .status
            .success()
    );
    assert!(
        vqkit(&["assign", "-i", s(&b), "-c", s(&c), "-o", s(&ob)])
            .status
            .success()
    );
    assert_eq!(npy::read_codes(&oa).unwrap(), npy::read_codes(&ob).unwrap());
}

#[test]
fn bad_files_are_clear_errors() {
    let c = tmp("ok_c.npy");
    npy::write_f32(&c, &[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    let out = tmp("never.npy");
    let run = |x: &Path| vqkit(&["assign", "-i", s(x), "-c", s(&c), "-o", s(&out)]);

    fails_with(&run(&tmp("missing.npy")), "missing.npy");

    let trunc = tmp("trunc.npy");
    let full = npy::f32_bytes(&[4, 3], &[1.0; 12]);
    std::fs::write(&trunc, &full[..full.len() - 5]).unwrap();
    fails_with(&run(&trunc), "truncated");

    let codes = tmp("ints.npy");
    npy::write_u32(&codes, &[4, 3], &[1; 12]).unwrap();
    fails_with(&run(&codes), "expected f32");

    let wrong_d = tmp("d4.npy");
    npy::write_f32(&wrong_d, &[2, 4], &[1.0; 8]).unwrap();
    fails_with(&run(&wrong_d), "d = 4");

    let nan = tmp("nan.npy");
    npy::write_f32(&nan, &[2, 3], &[1.0, f32::NAN, 0.0, 1.0, 2.0, 3.0]).unwrap();
    fails_with(&run(&nan), "non-finite");

    let fv = tmp("trunc.fvecs");
    let b = fvecs::to_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3);
    std::fs::write(&fv, &b[..b.len() - 2]).unwrap();
    fails_with(&run(&fv), "truncated");

    let txt = tmp("points.csv");
    std::fs::write(&txt, "1,2,3\n").unwrap();
    fails_with(&run(&txt), "unknown file type");

    assert!(!out.exists(), "no output is written when the input is bad");
}

#[test]
fn unavailable_backend_suggests_the_cpu() {
    // Not compiled in, or compiled in with no driver: either way a typed error that points
    // at the CPU. Only a machine with a working CUDA GPU has nothing to check here.
    let o = vqkit(&[
        "bench",
        "--backend",
        "cuda",
        "--n",
        "10",
        "--k",
        "2",
        "--d",
        "2",
        "--seconds",
        "0",
    ]);
    if o.status.success() {
        eprintln!("skipping: this machine has a working CUDA backend");
        return;
    }
    fails_with(&o, "--backend cpu");
}

#[test]
fn bench_prints_json_lines() {
    let o = vqkit(&[
        "bench",
        "--n",
        "500",
        "--k",
        "16",
        "--d",
        "8",
        "--seconds",
        "0.01",
        "--threads",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 4, "three ops and a summary: {out}");
    for (l, op) in lines.iter().zip(["assign", "ema", "kmeans"]) {
        assert_eq!(l["op"], op);
        assert!(l["median_s"].as_f64().unwrap() > 0.0);
        // The ceiling measured between rounds, in the op's own unit: the fraction is the
        // rounds' median of rate / ceiling, so it lies near the overall rate / ceiling.
        let ceiling = l["ceiling"].as_f64().unwrap();
        let fraction = l["ceiling_fraction"].as_f64().unwrap();
        let rate = l["gflops"].as_f64().or(l["gbps"].as_f64()).unwrap();
        assert!(ceiling > 0.0 && fraction > 0.0, "{l}");
        assert!(
            l["repeats"].as_u64().unwrap() >= 5,
            "one run per round at least: {l}"
        );
        let ratio = fraction / (rate / ceiling);
        assert!((0.1..10.0).contains(&ratio), "{l}");
    }
    assert_eq!(lines[3]["command"], "bench");
    assert!(lines[3]["seconds"].as_f64().unwrap() > 0.0);
}

#[test]
fn info_lists_backends_and_isa() {
    let o = vqkit(&["info", "--json"]);
    assert!(o.status.success());
    let j = last_json(&o);
    assert!(
        j["backends_compiled"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b == "cpu")
    );
    assert!(j["cpu"]["isa_used"].is_string());
}

/// `vqkit info` and `vqkit bench --backend cuda` (both argmin variants) on whatever CUDA
/// driver the loader finds: the stand-in of `kernels/emu/driver.sh` in CI, where
/// `VQKIT_REQUIRE_CUDA=1` makes a missing driver a failure.
#[test]
fn cuda_info_and_bench_run_where_a_driver_is_found() {
    let info = vqkit(&["info"]);
    assert!(info.status.success(), "{:?}", text(&info));
    let (out, _) = text(&info);
    if !out.contains("cuda driver: found") {
        let require = std::env::var("VQKIT_REQUIRE_CUDA").is_ok_and(|v| v == "1");
        assert!(
            !require,
            "VQKIT_REQUIRE_CUDA=1 but `vqkit info` says:\n{out}"
        );
        println!("skipped: no CUDA driver");
        return;
    }
    assert!(
        out.contains("cuda devices: ") && out.contains("[0] "),
        "{out}"
    );
    for variant in ["v1", "v2"] {
        let o = vqkit(&[
            "bench",
            "--backend",
            "cuda",
            "--variant",
            variant,
            "--n",
            "1000",
            "--k",
            "40",
            "--d",
            "12",
            "--seconds",
            "0.01",
            "--json",
        ]);
        let (stdout, stderr) = text(&o);
        assert!(o.status.success(), "{stderr}");
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        let results = &lines[..lines.len() - 1];
        let ops: Vec<&str> = results.iter().map(|r| r["op"].as_str().unwrap()).collect();
        assert_eq!(ops, ["assign", "ema", "kmeans"]);
        for r in results {
            let backend = r["backend"].as_str().unwrap();
            assert!(backend.starts_with("cuda"), "{backend}");
            assert_eq!(backend.contains("argmin v1"), variant == "v1", "{backend}");
            // Timed by CUDA events on the stream, not by the host clock.
            assert_eq!(r["timer"], "device", "{r}");
            assert!(r["median_s"].as_f64().unwrap() > 0.0, "{r}");
        }
        assert_eq!(last_json(&o)["results"], 3);
    }
}
