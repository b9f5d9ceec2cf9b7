//! `assign`, `encode` and `decode` read their input a chunk of rows at a time: in any
//! chunks, in every input format, they give what the in-memory library calls give on the
//! whole file, bit for bit; under an address-space limit smaller than the input they still
//! run; bad files are typed errors that leave the previous output whole.

mod common;

use common::{decode_args, fails_with, last_json, s, scratch, text, vqkit};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use vqkit::backend::cpu::CpuBackend;
use vqkit::io::{self, fvecs, npy};
use vqkit::ops;
use vqkit::quant::model::Model;
use vqkit::quant::{mse, relative_error};
use vqkit::rng::Rng;

fn ok(o: &Output) {
    assert!(o.status.success(), "{:?}", text(o));
}

/// What encoding the whole input in memory gives: the codes as the `.npy` bytes `encode`
/// writes, the mse and the relative error.
fn encoded_in_memory(model: &Path, x: &Path) -> (Vec<u8>, f64, f64) {
    let m = Model::load(model).unwrap();
    let x = io::read_points(x).unwrap();
    let codes = m
        .encode(&CpuBackend::new(Some(2)).unwrap(), &x.data, None)
        .unwrap();
    let e = mse(&x.data, &m.decode(&codes).unwrap(), x.cols);
    let (width, k) = m.code_shape();
    let shape = [x.rows, width];
    // In the narrowest type that holds the codebook's indices, as `encode` writes them.
    let bytes = match k {
        0..=256 => npy::codes_bytes(&shape, &codes.iter().map(|&c| c as u8).collect::<Vec<_>>()),
        257..=65536 => {
            npy::codes_bytes(&shape, &codes.iter().map(|&c| c as u16).collect::<Vec<_>>())
        }
        _ => npy::u32_bytes(&shape, &codes),
    };
    (bytes, e, relative_error(e, &x.data, x.cols))
}

/// `.npy` bytes of `shape` (f32) in Fortran order: `data` is given in C order.
fn fortran_f32(n: usize, d: usize, data: &[f32]) -> Vec<u8> {
    let mut b = npy::header_f32(&[n, d]);
    let at = b.windows(5).position(|w| w == b"False").unwrap();
    b[at..at + 5].copy_from_slice(b"True ");
    for j in 0..d {
        for i in 0..n {
            b.extend(data[i * d + j].to_le_bytes());
        }
    }
    b
}

/// `.bvecs` / `.ivecs` bytes: each row an i32 dimension, then its values as `elem` bytes.
fn vecs(data: &[f32], d: usize, elem: impl Fn(f32) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    for row in data.chunks_exact(d) {
        out.extend((d as i32).to_le_bytes());
        for &v in row {
            out.extend(elem(v));
        }
    }
    out
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

fn train(dir: &Path, x: &Path, name: &str, args: &[&str]) -> PathBuf {
    let model = dir.join(format!("{name}.safetensors"));
    let mut a = args.to_vec();
    a.extend(["-i", s(x), "-o", s(&model), "--seed", "4"]);
    ok(&vqkit(&a));
    model
}

#[test]
fn chunks_of_any_size_give_the_in_memory_codes_figures_and_reconstructions() {
    let dir = scratch("stream-chunks");
    let (n, d) = (5003, 8);
    let x = dir.join("x.npy");
    let data = vqkit::rng::clustered(n, d, 12, 0.3, 7);
    npy::write_f32(&x, &[n, d], &data).unwrap();
    let models = [
        ("kmeans", vec!["kmeans", "-k", "16", "--iters", "4"]),
        (
            "rq",
            vec!["rq-kmeans", "--stages", "3", "-k", "8", "--beam", "2"],
        ),
        ("pvq", vec!["pvq", "-m", "4", "-k", "8"]),
        ("avq", vec!["avq", "-m", "2", "-k", "8", "--beam", "3"]),
    ];
    for (name, args) in &models {
        let model = train(&dir, &x, name, args);
        let (want, want_mse, want_rel) = encoded_in_memory(&model, &x);
        for chunk in ["1", "777", "5003", "100000"] {
            let codes = dir.join(format!("{name}-{chunk}.npy"));
            let o = vqkit(&[
                "encode",
                "-m",
                s(&model),
                "-i",
                s(&x),
                "-o",
                s(&codes),
                "--chunk-rows",
                chunk,
                "--json",
            ]);
            ok(&o);
            let v = last_json(&o);
            assert_eq!(
                std::fs::read(&codes).unwrap(),
                want,
                "{name} in chunks of {chunk}"
            );
            // The same f64 sums in the same order: equal, not merely close.
            assert_eq!(v["mse"].as_f64(), Some(want_mse), "{name} {chunk}: {v}");
            assert_eq!(
                v["relative_error"].as_f64(),
                Some(want_rel),
                "{name} {chunk}"
            );
            assert_eq!(v["n"].as_u64(), Some(n as u64));
            // Decoding in chunks: the library's reconstructions of all the codes at once.
            let back = dir.join(format!("{name}-{chunk}-back.npy"));
            let args = decode_args(&model, &codes, &back);
            ok(&vqkit(&[&args[..], &["--chunk-rows", chunk]].concat()));
            let m = Model::load(&model).unwrap();
            let (_, all) = npy::read_codes(&codes).unwrap();
            assert_eq!(
                std::fs::read(&back).unwrap(),
                npy::f32_bytes(&[n, d], &m.decode(&all).unwrap()),
                "{name} decoded in chunks of {chunk}"
            );
        }
    }
    // assign: the codes and the mean squared distance of ops::assign on the whole file.
    let c = dir.join("c.npy");
    npy::write_f32(&c, &[37, d], &Rng::new(9).normal_vec(37 * d)).unwrap();
    let a = ops::assign(
        &CpuBackend::new(Some(2)).unwrap(),
        &data,
        &io::read_points(&c).unwrap().data,
        d,
    )
    .unwrap();
    for chunk in ["1", "384", "1000", "5003"] {
        let out = dir.join(format!("assign-{chunk}.npy"));
        let o = vqkit(&[
            "assign",
            "-i",
            s(&x),
            "-c",
            s(&c),
            "-o",
            s(&out),
            "--chunk-rows",
            chunk,
            "--json",
        ]);
        ok(&o);
        // 37 codewords: uint8 codes.
        let narrow: Vec<u8> = a.indices.iter().map(|&c| c as u8).collect();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            npy::codes_bytes(&[n], &narrow),
            "assign in chunks of {chunk}"
        );
        assert_eq!(last_json(&o)["mse"].as_f64(), Some(a.mse()), "{chunk}");
    }
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bvecs_ivecs_and_fortran_order_npy_give_the_c_order_results() {
    let dir = scratch("stream-formats");
    let (n, d) = (1000, 16);
    // Whole numbers in 0..=255, exact in every format.
    let mut rng = Rng::new(3);
    let data: Vec<f32> = (0..n * d).map(|_| rng.below(256) as f32).collect();
    let c_order = dir.join("c.npy");
    npy::write_f32(&c_order, &[n, d], &data).unwrap();
    let files = [
        ("f.npy", fortran_f32(n, d, &data)),
        ("x.fvecs", fvecs::to_bytes(&data, d)),
        ("x.bvecs", vecs(&data, d, |v| vec![v as u8])),
        (
            "x.ivecs",
            vecs(&data, d, |v| (v as i32).to_le_bytes().to_vec()),
        ),
    ];
    let model = train(&dir, &c_order, "km", &["kmeans", "-k", "8", "--iters", "3"]);
    let codebook = dir.join("codebook.npy");
    let Model::KMeans(km) = Model::load(&model).unwrap() else {
        panic!("a k-means model")
    };
    npy::write_f32(&codebook, &[8, d], &km.centroids).unwrap();
    let run = |cmd: &str, input: &Path, out: &Path| {
        let (flag, other) = match cmd {
            "assign" => ("-c", &codebook),
            _ => ("-m", &model),
        };
        let o = vqkit(&[
            cmd,
            "-i",
            s(input),
            flag,
            s(other),
            "-o",
            s(out),
            "--chunk-rows",
            "300",
            "--json",
        ]);
        ok(&o);
        (std::fs::read(out).unwrap(), last_json(&o)["mse"].clone())
    };
    let (want_codes, want_mse) = run("encode", &c_order, &dir.join("want.npy"));
    let (want_assign, want_assign_mse) = run("assign", &c_order, &dir.join("want-a.npy"));
    assert_eq!(
        npy::read_codes(&dir.join("want.npy")).unwrap().1,
        npy::read_codes(&dir.join("want-a.npy")).unwrap().1,
        "k-means codes are the nearest codewords"
    );
    for (name, bytes) in &files {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let (codes, m) = run("encode", &p, &dir.join("got.npy"));
        assert!(codes == want_codes && m == want_mse, "encode {name}: {m}");
        let (codes, m) = run("assign", &p, &dir.join("got-a.npy"));
        assert!(
            codes == want_assign && m == want_assign_mse,
            "assign {name}"
        );
        assert_eq!(
            io::read_points(&p).unwrap().data,
            data,
            "read_points of {name}"
        );
    }
    // Codes as .ivecs decode as the .npy codes do.
    let (_, codes) = npy::read_codes(&dir.join("want.npy")).unwrap();
    let codes_f32: Vec<f32> = codes.iter().map(|&c| c as f32).collect();
    let iv = dir.join("codes.ivecs");
    std::fs::write(
        &iv,
        vecs(&codes_f32, 1, |v| (v as i32).to_le_bytes().to_vec()),
    )
    .unwrap();
    let (a, b) = (dir.join("a.npy"), dir.join("b.npy"));
    for (input, out) in [(&dir.join("want.npy"), &a), (&iv, &b)] {
        ok(&vqkit(&decode_args(&model, input, out)));
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_and_ragged_files_are_typed_errors_that_leave_the_old_output() {
    let dir = scratch("stream-bad");
    let (n, d) = (50, 4);
    let data: Vec<f32> = (0..n * d).map(|v| (v % 7) as f32).collect();
    let x = dir.join("x.npy");
    npy::write_f32(&x, &[n, d], &data).unwrap();
    let model = train(&dir, &x, "km", &["kmeans", "-k", "3", "--iters", "2"]);
    let out = dir.join("codes.npy");
    ok(&vqkit(&[
        "encode",
        "-m",
        s(&model),
        "-i",
        s(&x),
        "-o",
        s(&out),
    ]));
    let good = std::fs::read(&out).unwrap();
    let encode = |p: &Path| {
        let o = vqkit(&[
            "encode",
            "-m",
            s(&model),
            "-i",
            s(p),
            "-o",
            s(&out),
            "--chunk-rows",
            "1",
        ]);
        assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
        o
    };
    let bvecs = vecs(&data, d, |v| vec![v as u8]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "trunc.bvecs",
            bvecs[..bvecs.len() - 3].to_vec(),
            "truncated or ragged",
        ),
        // A 5-dimensional row among 4-dimensional ones.
        (
            "ragged.fvecs",
            {
                let mut b = fvecs::to_bytes(&data[..8], d);
                b.extend(fvecs::to_bytes(&[1.0; 5], 5));
                b.extend(fvecs::to_bytes(&data[..8], d));
                b
            },
            "truncated or ragged",
        ),
        // Rows of 2 and 6 values among rows of 4: a whole number of 8-byte rows, found as
        // the rows are read, in the second chunk.
        (
            "sly.bvecs",
            {
                let mut b = vecs(&data[..8], d, |v| vec![v as u8]);
                b.extend(vecs(&[1.0; 2], 2, |v| vec![v as u8]));
                b.extend(vecs(&[1.0; 6], 6, |v| vec![v as u8]));
                b.extend(vecs(&data[..8], d, |v| vec![v as u8]));
                b
            },
            "vector 2 has dimension 2, the first had 4",
        ),
        (
            "neg.ivecs",
            (-3i32).to_le_bytes().repeat(4),
            "vector 0 declares dimension -3",
        ),
        (
            "trunc-f.npy",
            {
                let f = fortran_f32(n, d, &data);
                f[..f.len() - 1].to_vec()
            },
            "truncated",
        ),
        (
            "three.npy",
            npy::f32_bytes(&[2, 2, 1], &[1.0; 4]),
            "expected a 2-D array",
        ),
        (
            "ints.npy",
            npy::u32_bytes(&[n, d], &[1; 200]),
            "expected f32, f64, f16 or u8",
        ),
        // A NaN in row 37, the 38th chunk of one row: its index in the whole file.
        (
            "nan.npy",
            {
                let mut v = data.clone();
                v[37 * d + 2] = f32::NAN;
                npy::f32_bytes(&[n, d], &v)
            },
            "non-finite value (NaN) at flat index 150",
        ),
    ];
    for (name, bytes, needle) in &cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let o = encode(&p);
        fails_with(&o, needle);
        if !needle.starts_with("non-finite") {
            fails_with(&o, name);
        }
        assert_eq!(std::fs::read(&out).unwrap(), good, "{name}: the old codes");
        assert!(leftovers(&dir).is_empty(), "{name}: {:?}", leftovers(&dir));
    }
    // assign and decode refuse the same way.
    let sly = dir.join("sly.bvecs");
    let c = dir.join("c.npy");
    npy::write_f32(&c, &[3, d], &data[..12]).unwrap();
    let o = vqkit(&[
        "assign",
        "-i",
        s(&sly),
        "-c",
        s(&c),
        "-o",
        s(&out),
        "--chunk-rows",
        "2",
    ]);
    fails_with(&o, "vector 2 has dimension 2");
    let bad_codes = dir.join("codes.ivecs");
    std::fs::write(
        &bad_codes,
        vecs(&[0.0, 1.0, 2.0, 7.0], 1, |v| {
            (v as i32).to_le_bytes().to_vec()
        }),
    )
    .unwrap();
    let y = dir.join("y.npy");
    npy::write_f32(&y, &[1], &[5.0]).unwrap();
    let args = decode_args(&model, &bad_codes, &y);
    let o = vqkit(&[&args[..], &["--chunk-rows", "2"]].concat());
    fails_with(&o, "code 7 at row 3 is out of range");
    let o = vqkit(&decode_args(&model, &x, &y));
    fails_with(&o, "expected integer codes");
    assert_eq!(npy::read_matrix(&y).unwrap().data, [5.0]);
    assert_eq!(std::fs::read(&out).unwrap(), good);
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `encode` of a 256 MiB `.npy` in a shell whose address space (`ulimit -v`) is half the
/// file: the codes and figures of the in-memory library path on the same file, while the
/// same command made to take the file as one chunk fails, with a typed error, for want of
/// memory; then a run killed while it writes its codes leaves those codes whole. The binary's own mappings need about 30 MiB of address space (a small file
/// encodes under `ulimit -v 30000`, not under 20000), and streaming this file with the
/// default chunk about 80 MiB (measured with the dev build); the GPU libraries are loaded
/// only for their backends. The limited runs use one thread (see below) and one malloc
/// arena.
#[test]
fn streaming_encode_runs_in_an_address_space_half_the_size_of_its_input_and_survives_a_kill() {
    let dir = scratch("stream-limit");
    let (n, d) = (1 << 20, 64);
    let x = dir.join("big.npy");
    // 256 blocks of 4096 rows: one block of normals, scaled differently in each block.
    let block = Rng::new(11).normal_vec(4096 * d);
    let mut w = npy::Writer::f32(&x, &[n, d]).unwrap();
    for b in 0..256 {
        let scale = 1.0 + b as f32 / 64.0;
        w.push_f32(&block.iter().map(|v| v * scale).collect::<Vec<_>>())
            .unwrap();
    }
    w.finish().unwrap();
    let file_kib = std::fs::metadata(&x).unwrap().len() / 1024;
    let limit = (file_kib / 2).to_string();
    let small = dir.join("small.npy");
    npy::write_f32(&small, &[4096, d], &block).unwrap();
    let model = train(&dir, &small, "km", &["kmeans", "-k", "32", "--iters", "3"]);
    let limited = |chunk_rows: Option<&str>| {
        let out = dir.join("codes.npy");
        let mut c = Command::new("sh");
        c.env("MALLOC_ARENA_MAX", "1")
            .arg("-c")
            .arg(r#"ulimit -v "$0" && exec "$@""#)
            .arg(&limit)
            .arg(env!("CARGO_BIN_EXE_vqkit"))
            .args([
                "encode",
                "-m",
                s(&model),
                "-i",
                s(&x),
                "-o",
                s(&out),
                "--json",
                // One thread: glibc gives every thread that allocates an arena of 64 MiB
                // of address space, which would count against the limit, not the data.
                "--threads",
                "1",
            ]);
        if let Some(r) = chunk_rows {
            c.args(["--chunk-rows", r]);
        }
        (c.output().unwrap(), out)
    };
    // The whole file as one chunk does not fit: a clear error, not an abort.
    let (o, _) = limited(Some(&n.to_string()));
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    fails_with(&o, "a chunk of rows needs");
    // Streamed, it does.
    let (o, out) = limited(None);
    ok(&o);
    let v = last_json(&o);
    let (want, want_mse, want_rel) = encoded_in_memory(&model, &x);
    assert!(
        std::fs::read(&out).unwrap() == want,
        "the streamed codes differ"
    );
    assert_eq!(v["mse"].as_f64(), Some(want_mse), "{v}");
    assert_eq!(v["relative_error"].as_f64(), Some(want_rel), "{v}");

    // Fitting on the same file under the same limit: every row does not fit (a typed
    // error), a sample of rows read a chunk at a time does, and gives the model the same
    // command gives without the limit.
    let fit = |limit: Option<&str>, extra: &[&str], out: &Path| {
        let mut c = Command::new("sh");
        c.env("MALLOC_ARENA_MAX", "1")
            .arg("-c")
            .arg(r#"ulimit -v "$0" && exec "$@""#)
            .arg(limit.unwrap_or("unlimited"))
            .arg(env!("CARGO_BIN_EXE_vqkit"))
            .args([
                "rq-kmeans",
                "-i",
                s(&x),
                "--stages",
                "2",
                "-k",
                "16",
                "--iters",
                "3",
            ])
            .args(["--seed", "4", "--threads", "1", "-o", s(out), "--json"])
            .args(extra);
        c.output().unwrap()
    };
    let (rq_limited, rq_free) = (
        dir.join("rq-limited.safetensors"),
        dir.join("rq.safetensors"),
    );
    let o = fit(Some(&limit), &[], &rq_limited);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    fails_with(&o, "memory");
    let (a, b) = (
        fit(Some(&limit), &["--sample", "20000"], &rq_limited),
        fit(None, &["--sample", "20000"], &rq_free),
    );
    ok(&a);
    ok(&b);
    assert_eq!(last_json(&a)["mse"], last_json(&b)["mse"]);
    assert_eq!(last_json(&a)["n"].as_u64(), Some(20000));
    // The same codebooks: the same codes for the small file. (The files' bytes may differ:
    // safetensors orders its metadata keys as they come.)
    let codes = |m: &Path| encoded_in_memory(m, &small).0;
    assert!(codes(&rq_limited) == codes(&rq_free));

    // Killed halfway through writing the codes of another model: the codes of this run
    // stay whole at the path; only the temporary file of the killed process is left. As
    // u32 (4 MiB of codes): the output is written through a 1 MiB buffer, and the 1 MiB of
    // u8 codes reached the file only at the end, just before the rename.
    let other = train(&dir, &small, "km8", &["kmeans", "-k", "8", "--iters", "2"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vqkit"))
        .args(["encode", "-m", s(&other), "-i", s(&x), "-o", s(&out)])
        .args(["--chunk-rows", "1024", "--code-dtype", "uint32"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let tmp = format!(".codes.npy.tmp-{}-", child.id());
    let started = std::time::Instant::now();
    let partial = loop {
        let part = std::fs::read_dir(&dir).unwrap().find_map(|e| {
            let e = e.unwrap();
            let grown = e.metadata().unwrap().len() > 64 << 10;
            (e.file_name().to_string_lossy().starts_with(&tmp) && grown).then(|| e.path())
        });
        if let Some(p) = part {
            break p;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it was seen"
        );
        assert!(
            started.elapsed().as_secs() < 60,
            "no partial codes after 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        std::fs::read(&out).unwrap() == want,
        "the killed run damaged the codes"
    );
    std::fs::remove_file(partial).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
