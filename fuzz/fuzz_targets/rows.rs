//! The chunked row reader (`io::rows::RowReader`) on any file: the first byte picks the
//! format (`.npy`, `.fvecs`, `.bvecs`, `.ivecs`), the rest is the file. Opening, reading
//! in chunks of 1 to 4 rows, and reading a sample of rows give rows or a typed error, never
//! a panic, a hang or a huge allocation, and chunked reads agree with whole reads. Files of
//! integers are read as codes too (`next_codes`: every integer dtype, either byte order, C
//! or Fortran order), in chunks that agree with the whole `.npy` reader's codes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use vqkit::io::rows::RowReader;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let ext = ["npy", "fvecs", "bvecs", "ivecs"][pick as usize % 4];
    let chunk = 1 + (pick as usize / 4) % 4;
    let path = std::env::temp_dir().join(format!("vqkit-fuzz-rows-{}.{ext}", std::process::id()));
    let Ok(mut f) = std::fs::File::create(&path) else {
        return;
    };
    if f.write_all(body).is_err() {
        return;
    }
    drop(f);
    if let Ok(mut r) = RowReader::open(&path) {
        let (n, d) = (r.rows(), r.d());
        let mut part = Vec::new();
        let mut rows = Vec::new();
        let mut seen = 0;
        while let Ok(got) = r.next_chunk(chunk, &mut part) {
            if got == 0 {
                break;
            }
            assert_eq!(part.len(), got * d);
            rows.extend_from_slice(&part);
            seen += got;
        }
        assert!(seen <= n);
        if seen == n && n > 0 {
            // Whole file readable in chunks: a sample reads the same rows.
            let pickd = [0, n / 2, n - 1];
            let mut want: Vec<usize> = pickd.to_vec();
            want.dedup();
            if let Ok(m) = r.read_rows(&want) {
                for (k, &i) in want.iter().enumerate() {
                    let got = &m.data[k * d..(k + 1) * d];
                    let exp = &rows[i * d..(i + 1) * d];
                    assert!(got.iter().zip(exp).all(|(a, b)| a.to_bits() == b.to_bits()));
                }
            }
        }
        if r.expect_codes().is_ok() && r.rewind().is_ok() {
            codes(&mut r, chunk, ext == "npy", &path);
        }
    }
    let _ = std::fs::remove_file(&path);
});

/// The file's codes in chunks of `chunk` rows: each chunk holds rows x d codes, and a
/// `.npy` reads whole through `npy::read_codes` exactly when it reads to the end in
/// chunks, to the same codes.
fn codes(r: &mut RowReader, chunk: usize, npy: bool, path: &std::path::Path) {
    let (n, d) = (r.rows(), r.d());
    let (mut part, mut all) = (Vec::new(), Vec::new());
    let mut seen = 0;
    let whole_file = loop {
        match r.next_codes(chunk, &mut part) {
            Ok(0) => break true,
            Ok(got) => {
                assert_eq!(part.len(), got * d);
                all.extend_from_slice(&part);
                seen += got;
            }
            Err(_) => break false,
        }
    };
    assert!(seen <= n);
    assert!(!whole_file || seen == n);
    if npy {
        match vqkit::io::npy::read_codes(path) {
            Ok((_, whole)) => {
                assert!(whole_file, "read whole, not in chunks");
                assert_eq!(whole, all);
            }
            Err(e) => assert!(!whole_file, "read in chunks, not whole: {e}"),
        }
    }
}
