//! `vqkit`: benchmark, inspect and run the vector-quantization kernels from the shell.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    vqkit_nn::retain_freed_memory();
    match cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
