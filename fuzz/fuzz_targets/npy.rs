//! `.npy` header and body: any bytes parse to an array or to an error, and a parsed array
//! converts to points or codes or to an error, never a panic, a hang or a huge allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = vqkit::io::npy::parse(data) {
        let values = a.to_f32();
        let elements: usize = a.shape.iter().product();
        assert_eq!(values.len(), elements, "shape {:?}", a.shape);
    }
});
