//! `vqkit`: benchmark, inspect and run the vector-quantization kernels from the shell.

mod cli;

use std::process::ExitCode;

/// Restores the default action of SIGPIPE (end the process quietly), which Rust's runtime
/// sets to "ignore": then `vqkit bench | head` stops when `head` is done, as any Unix tool
/// does, instead of panicking on the failed write.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    {
        unsafe extern "C" {
            fn signal(signum: std::ffi::c_int, handler: usize) -> usize;
        }
        const SIGPIPE: std::ffi::c_int = 13;
        const SIG_DFL: usize = 0;
        // SAFETY: signal() with SIG_DFL installs no Rust code as a handler; it only restores
        // the kernel's default disposition of SIGPIPE, before any thread is started.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    vqkit_nn::retain_freed_memory();
    match cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
