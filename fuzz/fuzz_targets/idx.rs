//! IDX images and labels, gzipped or not: any bytes give images or labels of the sizes the
//! header states, or an error; a header that claims more than the data holds is refused
//! without allocating what it claims.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vqkit::io::idx;

fuzz_target!(|data: &[u8]| {
    if let Ok(im) = idx::parse_images(data, Some(64)) {
        assert_eq!(im.pixels.len(), im.count * im.rows * im.cols);
        assert!(im.count <= 64);
    }
    if let Ok(labels) = idx::parse_labels(data, Some(1000)) {
        assert!(labels.len() <= 1000);
    }
});
