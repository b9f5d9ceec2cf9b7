//! `.fvecs` (TEXMEX): any bytes parse to a matrix whose every row has the file's d, or to
//! an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = vqkit::io::fvecs::parse(data) {
        assert_eq!(m.data.len(), m.rows * m.cols);
    }
});
