//! VQ-VAE and RQ-VAE models and training checkpoints: any bytes give a model (and an
//! optimiser state) or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use vqkit::quant::model_io::TensorFile;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = TensorFile::parse(data, Path::new("fuzz.safetensors")) else {
        return;
    };
    let _ = vqkit_nn::VqVae::from_file(&f);
    let _ = vqkit_nn::train::checkpoint_from_file(&f);
});
