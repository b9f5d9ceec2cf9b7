//! The machine's measured ceilings, so benchmarks report a fraction of what this CPU can
//! do rather than bare seconds: FMA throughput from register-only FMA chains, and memory
//! read bandwidth from a parallel sum over a buffer far larger than the caches.

use super::Isa;
use rayon::prelude::*;
use std::time::Instant;

/// Independent FMA chains per instruction set: at least latency x throughput (4 x 2 on
/// current x86 cores) to keep every FMA pipe busy, and few enough that the chains and the
/// two constants stay in registers: AVX-512 has 32 vector registers, AVX2 16 (16 chains
/// there spilled to the stack, and the "ceiling" came out below what assign reached).
const AVX512_CHAINS: usize = 16;
const AVX2_CHAINS: usize = 12;
/// The portable ceiling computes as the portable micro-kernels do, `acc += b * a` unfused
/// on arrays the compiler vectorizes for the build target: chains of PORTABLE_WIDTH floats.
const PORTABLE_CHAINS: usize = 8;
const PORTABLE_WIDTH: usize = 8;

/// FMA iterations per thread in one pass of [`fma_gflops`] (about 18 ms with AVX-512 on
/// the project's Zen 4 VM, at its 115 GFLOP/s per core).
const FMA_ITERS: usize = 4_000_000;
/// ... and in one pass of a [`Probe`] (about 4.5 ms there).
const PROBE_FMA_ITERS: usize = 1_000_000;

/// Peak f32 GFLOP/s (an FMA counts 2) on `threads` threads with the given instruction set:
/// the best of three passes. Where no pool of `threads` can be built, one thread's.
pub fn fma_gflops(isa: Isa, threads: usize) -> f64 {
    in_pool(threads, |parallel| {
        (0..3)
            .map(|_| fma_pass(isa, parallel, FMA_ITERS))
            .fold(0.0, f64::max)
    })
}

/// `f(true)` in a pool of `threads` threads; `f(false)` on this thread where one thread is
/// asked for or no pool can be built.
fn in_pool(threads: usize, f: impl FnOnce(bool) -> f64 + Send) -> f64 {
    let pool = (threads > 1)
        .then(|| rayon::ThreadPoolBuilder::new().num_threads(threads).build())
        .and_then(Result::ok);
    match pool {
        Some(p) => p.install(|| f(true)),
        None => f(false),
    }
}

/// GFLOP/s of one pass: `iters` steps of the FMA chains on every thread of the current
/// rayon pool at once (on this thread alone if not `parallel`), timed from the start to the
/// last thread's end: on a loaded machine one worker may run two threads' shares one after
/// the other, which per-thread clocks would not see.
///
/// # Panics
/// If this CPU lacks `isa` (an [`Isa`] can be named without detection).
fn fma_pass(isa: Isa, parallel: bool, iters: usize) -> f64 {
    assert!(isa.supported(), "{} is not supported here", isa.as_str());
    // Floats updated per iteration, each by one multiply and one add.
    let lanes = match isa {
        Isa::Avx512 => 16 * AVX512_CHAINS,
        Isa::Avx2 => 8 * AVX2_CHAINS,
        Isa::Portable => PORTABLE_WIDTH * PORTABLE_CHAINS,
    };
    let threads = super::pool_threads(parallel);
    let t = Instant::now();
    let sink: f32 = if parallel {
        (0..threads)
            .into_par_iter()
            .map(|_| fma_chains(isa, iters))
            .sum()
    } else {
        fma_chains(isa, iters)
    };
    let seconds = t.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    (threads * iters * lanes * 2) as f64 / seconds / 1e9
}

fn fma_chains(isa: Isa, iters: usize) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` other than Portable exists only after runtime detection.
        Isa::Avx512 => unsafe { x86::chains_avx512(iters) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::chains_avx2(iters) },
        _ => {
            // As the portable micro-kernels compute: `acc += b * a`, unfused (a scalar
            // `mul_add` without FMA in the target would call libm and measure nothing a
            // kernel does), with b loaded each step so that only the add is on the chain.
            let mut acc = [[0.0f32; PORTABLE_WIDTH]; PORTABLE_CHAINS];
            let b = [[0.999_999f32; PORTABLE_WIDTH]; 2];
            let a = std::hint::black_box(1e-3f32);
            for i in 0..iters {
                let row = std::hint::black_box(&b[i & 1]);
                for chain in acc.iter_mut() {
                    for (v, &x) in chain.iter_mut().zip(row) {
                        *v += x * a;
                    }
                }
            }
            acc.iter().flatten().sum()
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{AVX2_CHAINS, AVX512_CHAINS};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn chains_avx512(iters: usize) -> f32 {
        let mut a = [_mm512_set1_ps(1.0); AVX512_CHAINS];
        let (m, c) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        for _ in 0..iters {
            for v in a.iter_mut() {
                *v = _mm512_fmadd_ps(*v, m, c);
            }
        }
        a.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn chains_avx2(iters: usize) -> f32 {
        let mut a = [_mm256_set1_ps(1.0); AVX2_CHAINS];
        let (m, c) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        for _ in 0..iters {
            for v in a.iter_mut() {
                *v = _mm256_fmadd_ps(*v, m, c);
            }
        }
        let mut out = [0.0f32; 8];
        let s = a
            .iter()
            .fold(_mm256_setzero_ps(), |s, &v| _mm256_add_ps(s, v));
        // SAFETY: `out` holds 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum()
    }
}

/// Floats in the buffer the read ceiling sums: 256 MiB, far larger than the caches.
const READ_FLOATS: usize = 64 << 20;

/// Memory read bandwidth in GB/s on `threads` threads (best of three passes over 256 MiB;
/// where no pool of `threads` can be built, one thread's).
pub fn read_gbps(threads: usize) -> f64 {
    let buf = vec![1.0f32; READ_FLOATS];
    in_pool(threads, |parallel| {
        (0..3)
            .map(|_| read_pass(&buf, parallel))
            .fold(0.0, f64::max)
    })
}

/// GB/s of one sum over `buf`, in parallel on the current rayon pool or not.
fn read_pass(buf: &[f32], parallel: bool) -> f64 {
    let part = |c: &[f32]| {
        let mut acc = [0.0f32; 16];
        for w in c.chunks_exact(16) {
            for l in 0..16 {
                acc[l] += w[l];
            }
        }
        acc.iter().sum::<f32>()
    };
    let t = Instant::now();
    let s: f32 = if parallel {
        buf.par_chunks(1 << 16).map(part).sum()
    } else {
        buf.chunks(1 << 16).map(part).sum()
    };
    std::hint::black_box(s);
    std::mem::size_of_val(buf) as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// The ceilings measured again and again, next to the runs they bound: a benchmark calls
/// [`Probe::fma_gflops`] or [`Probe::read_gbps`] between its rounds, in the threads that
/// run its kernels (see `Backend::run_on_host`), and sets each round's rate against the
/// ceiling measured just after it. On a shared machine both move with the neighbours'
/// load, so a ceiling taken once, minutes away from the run, gave fractions from a third to
/// more than all of it. (A probe in a pool of its own measured half the FMA ceiling while
/// the kernels' pool still spun on the same two cores.)
///
/// Each call is a single pass (about 4.5 ms of FMA chains per thread here, or one sum over
/// 256 MiB), shorter than the best of three that [`fma_gflops`] and [`read_gbps`] take.
#[derive(Default)]
pub struct Probe {
    /// The read's buffer, filled on the first read and kept.
    buf: std::sync::OnceLock<Vec<f32>>,
}

impl Probe {
    pub fn new() -> Self {
        Self::default()
    }

    /// f32 FMA GFLOP/s now with `isa`'s chains: one pass, on every thread of the current
    /// rayon pool if `parallel`, else on this thread. Panics if this CPU lacks `isa`.
    pub fn fma_gflops(&self, isa: Isa, parallel: bool) -> f64 {
        fma_pass(isa, parallel, PROBE_FMA_ITERS)
    }

    /// Memory read GB/s now: one pass, as [`Probe::fma_gflops`] for the threads.
    pub fn read_gbps(&self, parallel: bool) -> f64 {
        read_pass(self.buf.get_or_init(|| vec![1.0f32; READ_FLOATS]), parallel)
    }
}
