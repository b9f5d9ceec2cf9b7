//! How every computation leaves Python: without the GIL, on a thread pool of this process,
//! interruptible by Ctrl-C.
//!
//! - **GIL**: the work runs inside `Python::detach`, so other Python threads run meanwhile,
//!   and two Python threads calling vqkit at once compute in parallel.
//! - **Pools**: each call checks a rayon pool out of a per-process cache and returns it
//!   afterwards; two concurrent calls get two pools (each of [`threads`] workers, as two
//!   OpenMP teams would be), and the pools are reused across calls. Rayon's global pool is
//!   never used, and the cache remembers the process id: a child made by `os.fork`
//!   (multiprocessing, Dask's workers) holds the parent's pools without their threads, so
//!   it drops the cache (leaking it: joining threads that do not exist would hang) and
//!   builds its own.
//! - **Ctrl-C**: the job runs on a pool worker; the calling thread waits for it, and every
//!   [`POLL`] it takes the GIL for a moment and runs Python's signal handlers. When one
//!   raises (KeyboardInterrupt), the job is told to stop through
//!   [`vqkit::interrupt`], returns `Error::Interrupted` at its next check (between
//!   iterations), and the handler's exception is raised.

use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a waiting call looks for signals.
const POLL: Duration = Duration::from_millis(50);
/// Idle pools kept for reuse.
const MAX_IDLE: usize = 4;

/// Worker threads per call (0: all cores).
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Worker threads a call uses: [`set_threads`]'s value, or every core.
pub fn threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        t => t,
    }
}

pub fn set_threads(t: usize) {
    THREADS.store(t, Ordering::Relaxed);
}

struct Pools {
    pid: u32,
    idle: Vec<Arc<rayon::ThreadPool>>,
}

static POOLS: Mutex<Pools> = Mutex::new(Pools {
    pid: 0,
    idle: Vec::new(),
});

fn take_pool() -> vqkit::Result<Arc<rayon::ThreadPool>> {
    let want = threads();
    {
        let mut p = POOLS.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        if p.pid != pid {
            // Forked: these pools' threads live in the parent only.
            for pool in p.idle.drain(..) {
                std::mem::forget(pool);
            }
            p.pid = pid;
        }
        if let Some(i) = p.idle.iter().position(|q| q.current_num_threads() == want) {
            return Ok(p.idle.swap_remove(i));
        }
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(want)
        .thread_name(|i| format!("vqkit-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| vqkit::Error::BackendUnavailable {
            backend: "cpu",
            reason: format!("cannot start {want} threads: {e}"),
        })
}

fn give_pool(pool: Arc<rayon::ThreadPool>) {
    let mut p = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    if p.pid == std::process::id() && p.idle.len() < MAX_IDLE {
        p.idle.push(pool);
    }
}

/// Runs `job` without the GIL on a pool of this process, checking for signals while it
/// runs; vqkit's errors become Python exceptions (see [`crate::to_py`]).
pub fn compute<R: Send>(
    py: Python<'_>,
    job: impl FnOnce() -> vqkit::Result<R> + Send,
) -> PyResult<R> {
    let pool = take_pool().map_err(crate::to_py)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut raised: Option<PyErr> = None;
    let result = py.detach(|| {
        let (tx, rx) = mpsc::channel();
        pool.in_place_scope(|s| {
            let flag = stop.clone();
            s.spawn(move |_| {
                let r = vqkit::interrupt::with_hook(move || flag.load(Ordering::Relaxed), job);
                let _ = tx.send(r);
            });
            loop {
                match rx.recv_timeout(POLL) {
                    Ok(r) => break Some(r),
                    // The job panicked; the scope re-raises the panic when it ends.
                    Err(mpsc::RecvTimeoutError::Disconnected) => break None,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if raised.is_none()
                            && let Err(e) = Python::attach(|py| py.check_signals())
                        {
                            raised = Some(e);
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
        })
    });
    give_pool(pool);
    match (result, raised) {
        // A handler raised (KeyboardInterrupt): that is what the caller sees, even if the
        // job finished before it noticed.
        (Some(_), Some(e)) => Err(e),
        (Some(Ok(r)), None) => Ok(r),
        (Some(Err(e)), None) => Err(crate::to_py(e)),
        (None, _) => Err(pyo3::exceptions::PyRuntimeError::new_err(
            "vqkit: the computation panicked",
        )),
    }
}
