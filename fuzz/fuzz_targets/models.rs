//! Safetensors model files of every kind (k-means, RVQ, PVQ, AVQ, VQ layer): any bytes give
//! a model or an error, and a model that loads encodes a vector and decodes the codes, or
//! says why not.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use vqkit::backend::cpu::CpuBackend;
use vqkit::quant::model::Model;
use vqkit::quant::model_io::TensorFile;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = TensorFile::parse(data, Path::new("fuzz.safetensors")) else {
        return;
    };
    let Ok(m) = Model::from_file(&f) else {
        return;
    };
    let (width, _) = m.code_shape();
    if m.d() <= 4096 && width <= 4096 {
        let cpu = CpuBackend::new(Some(1)).expect("a serial CPU backend");
        if let Ok(codes) = m.encode(&cpu, &vec![0.5f32; m.d()], None) {
            assert_eq!(codes.len(), width);
            let x = m.decode(&codes).expect("a model decodes its own codes");
            assert_eq!(x.len(), m.d());
        }
    }
});
