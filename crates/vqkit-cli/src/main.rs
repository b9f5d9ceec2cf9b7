//! `vqkit`: benchmark, inspect and run the vector-quantization kernels from the shell.

mod cli;

use std::process::ExitCode;

/// Two signal dispositions a command-line tool wants:
/// - SIGPIPE back to its default (end the process quietly), which Rust's runtime sets to
///   "ignore": `vqkit bench | head` then stops when `head` is done, as any Unix tool does,
///   instead of panicking on the failed write;
/// - SIGXFSZ ignored, so that a write beyond a file-size limit (`ulimit -f`) fails with an
///   error vqkit reports (and the atomic write leaves the old file), instead of the signal
///   killing the process in the middle of it.
fn set_signal_dispositions() {
    #[cfg(target_os = "linux")]
    {
        unsafe extern "C" {
            fn signal(signum: std::ffi::c_int, handler: usize) -> usize;
        }
        const SIGPIPE: std::ffi::c_int = 13;
        const SIGXFSZ: std::ffi::c_int = 25;
        const SIG_DFL: usize = 0;
        const SIG_IGN: usize = 1;
        // SAFETY: signal() with SIG_DFL or SIG_IGN installs no Rust code as a handler; it
        // only sets the kernel's disposition of the signal, before any thread is started.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
            signal(SIGXFSZ, SIG_IGN);
        }
    }
}

fn main() -> ExitCode {
    set_signal_dispositions();
    vqkit_nn::retain_freed_memory();
    match cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
