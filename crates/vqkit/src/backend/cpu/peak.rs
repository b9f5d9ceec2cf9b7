//! The machine's measured ceilings, so benchmarks report a fraction of what this CPU can
//! do rather than bare seconds: FMA throughput from register-only FMA chains, and read
//! bandwidth from a parallel sum, over a buffer larger than most caches ([`read_gbps`]) or
//! over as many bytes as the kernel it bounds, from wherever its repeated runs find them
//! ([`Probe::read_gbps`]).

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

/// Pieces per thread of a parallel FMA pass (see [`fma_pass`]).
const FMA_PIECES: usize = 8;

/// Peak f32 GFLOP/s (an FMA counts 2) on `threads` threads with the given instruction set:
/// the best of three passes. Where no pool of `threads` can be built, one thread's. An
/// `isa` this CPU lacks measures the portable loop (check [`Isa::supported`] first).
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

/// GFLOP/s of one pass: `iters` steps of the FMA chains for every thread of the current
/// rayon pool (on this thread alone if not `parallel`), timed from the start to the last
/// thread's end: on a loaded machine one worker may run two threads' shares one after the
/// other, which per-thread clocks would not see.
///
/// The threads' shares are cut into [`FMA_PIECES`] pieces each, which the pool's threads
/// take as they come free, as they take the kernels' row blocks. With one share per thread
/// a single slow thread (a vCPU the host deschedules, a worker woken late) held up the
/// whole pass while the kernels' other threads took its blocks over. On the 16 threads of
/// the H200 machine (docs/gpu-check.md) the probe measured 1096 to 1505 GFLOP/s from round
/// to round and `assign` and the k-means step ran at 99% to 115% of it.
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
    let t = Instant::now();
    // The sink, and the iterations run in all.
    let (sink, total): (f32, usize) = if parallel {
        let piece = iters.div_ceil(FMA_PIECES);
        let pieces = super::pool_threads(parallel) * FMA_PIECES;
        let sink = (0..pieces)
            .into_par_iter()
            .with_max_len(1)
            .map(|_| fma_chains(isa, piece))
            .sum();
        (sink, pieces * piece)
    } else {
        (fma_chains(isa, iters), iters)
    };
    let seconds = t.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    (total * lanes * 2) as f64 / seconds / 1e9
}

fn fma_chains(isa: Isa, iters: usize) -> f32 {
    match isa {
        // An `Isa` this CPU lacks (the enum is public: safe code can name any) runs the
        // portable loop.
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX-512F (the guard).
        Isa::Avx512 if isa.supported() => unsafe { x86::chains_avx512(iters) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX2 and FMA (the guard).
        Isa::Avx2 if isa.supported() => unsafe { x86::chains_avx2(iters) },
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

    /// Sums `c` with 8 independent 16-float accumulators.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sum_avx512(c: &[f32]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 8];
        let mut blocks = c.chunks_exact(128);
        for b in &mut blocks {
            for (l, a) in acc.iter_mut().enumerate() {
                // SAFETY: `b` holds 128 floats, 16 from 16 * l.
                *a = _mm512_add_ps(*a, unsafe { _mm512_loadu_ps(b.as_ptr().add(16 * l)) });
            }
        }
        let s = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, &v| _mm512_add_ps(s, v));
        _mm512_reduce_add_ps(s) + blocks.remainder().iter().sum::<f32>()
    }

    /// Sums `c` with 8 independent 8-float accumulators.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sum_avx2(c: &[f32]) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut blocks = c.chunks_exact(64);
        for b in &mut blocks {
            for (l, a) in acc.iter_mut().enumerate() {
                // SAFETY: `b` holds 64 floats, 8 from 8 * l.
                *a = _mm256_add_ps(*a, unsafe { _mm256_loadu_ps(b.as_ptr().add(8 * l)) });
            }
        }
        let s = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, &v| _mm256_add_ps(s, v));
        let mut out = [0.0f32; 8];
        // SAFETY: `out` holds 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum::<f32>() + blocks.remainder().iter().sum::<f32>()
    }
}

/// Floats in the buffer [`read_gbps`] sums: 256 MiB, larger than most caches.
const READ_FLOATS: usize = 64 << 20;

/// Memory read bandwidth in GB/s on `threads` threads, with the loads of the best
/// instruction set here: the best of three passes over 256 MiB (where no pool of `threads`
/// can be built, one thread's).
pub fn read_gbps(threads: usize) -> f64 {
    let buf = vec![1.0f32; READ_FLOATS];
    let isa = Isa::detect();
    in_pool(threads, |parallel| {
        (0..3)
            .map(|_| read_pass(isa, &buf, parallel).0)
            .fold(0.0, f64::max)
    })
}

/// Floats each thread sums at a time, at most: 256 KiB.
const READ_PART: usize = 1 << 16;

/// GB/s of one sum over `buf`, in parallel on the current rayon pool or not, and the
/// seconds it took. In parallel the buffer is cut into at most [`READ_PART`] floats a task,
/// fewer where that would leave a thread idle.
fn read_pass(isa: Isa, buf: &[f32], parallel: bool) -> (f64, f64) {
    let threads = super::pool_threads(parallel);
    let part = buf
        .len()
        .div_ceil(threads)
        .next_multiple_of(128)
        .clamp(128, READ_PART);
    let t = Instant::now();
    let s: f32 = if parallel {
        buf.par_chunks(part).map(|c| sum(isa, c)).sum()
    } else {
        sum(isa, buf)
    };
    std::hint::black_box(s);
    let seconds = t.elapsed().as_secs_f64();
    (std::mem::size_of_val(buf) as f64 / seconds / 1e9, seconds)
}

/// The sum of `c`, with enough independent vector adds that the loads, not the adds'
/// latency, bound it (a single chain of 16-byte adds reads at most 16 bytes a cycle, below
/// what L2 and L3 deliver).
fn sum(isa: Isa, c: &[f32]) -> f32 {
    match isa {
        // An `Isa` this CPU lacks (the enum is public: safe code can name any) runs the
        // portable loop.
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX-512F (the guard).
        Isa::Avx512 if isa.supported() => unsafe { x86::sum_avx512(c) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX2 and FMA (the guard).
        Isa::Avx2 if isa.supported() => unsafe { x86::sum_avx2(c) },
        _ => {
            let mut acc = [0.0f32; 64];
            let mut blocks = c.chunks_exact(64);
            for w in &mut blocks {
                for (a, &v) in acc.iter_mut().zip(w) {
                    *a += v;
                }
            }
            acc.iter().sum::<f32>() + blocks.remainder().iter().sum::<f32>()
        }
    }
}

/// The least time the timed passes of [`Probe::read_gbps`] take together, and the most of
/// them.
const PROBE_READ_SECONDS: f64 = 2e-3;
const PROBE_READ_PASSES: usize = 256;

/// The ceilings measured again and again, next to the runs they bound: a benchmark calls
/// [`Probe::fma_gflops`] or [`Probe::read_gbps`] between its rounds, in the threads that
/// run its kernels (see `Backend::run_on_host`), and sets each round's rate against the
/// ceiling measured just after it. On a shared machine both move with the neighbours'
/// load, so a ceiling taken once, minutes away from the run, gave fractions from a third to
/// more than all of it. (A probe in a pool of its own measured half the FMA ceiling while
/// the kernels' pool still spun on the same two cores.)
///
/// An FMA call is a single pass (about 4.5 ms of FMA chains per thread on the project's
/// Zen 4 VM), shorter than the best of three that [`fma_gflops`] takes. A read call reads
/// as many bytes as the kernel it bounds, the way its repeated runs read them: see
/// [`Probe::read_gbps`].
#[derive(Default)]
pub struct Probe {
    /// The read's buffer, grown to the largest footprint asked for and kept.
    buf: std::sync::Mutex<Vec<f32>>,
}

impl Probe {
    pub fn new() -> Self {
        Self::default()
    }

    /// f32 FMA GFLOP/s now with `isa`'s chains: one pass, on every thread of the current
    /// rayon pool if `parallel`, else on this thread. An `isa` this CPU lacks measures the
    /// portable loop.
    pub fn fma_gflops(&self, isa: Isa, parallel: bool) -> f64 {
        fma_pass(isa, parallel, PROBE_FMA_ITERS)
    }

    /// Read GB/s now over a buffer of `bytes` (at least 512, rounded up to whole floats),
    /// summed with `isa`'s loads, as [`Probe::fma_gflops`] for the threads: one untimed
    /// pass, then the median of timed passes (at least 3, and 2 ms of them up to 256).
    ///
    /// A benchmark's runs follow each other, so a kernel's inputs sit in whichever cache
    /// holds them when its next run starts; a sum over more bytes than the caches hold
    /// measured a lower ceiling than that kernel could beat. On a 2-core Xeon VM with
    /// 4 MiB of L2 and a large L3, the EMA step at n = 100,000, k = 256, d = 128 read its
    /// 51 MB at 29.5 GB/s against "22 GB/s" from 256 MiB: 142% of its ceiling
    /// (`vqkit bench --op ema --threads 2`, at e7b4efa). So the probe reads the kernel's
    /// footprint, warmed the same way. Panics if this CPU lacks `isa`.
    pub fn read_gbps(&self, isa: Isa, bytes: usize, parallel: bool) -> f64 {
        assert!(isa.supported(), "{} is not supported here", isa.as_str());
        let floats = bytes.div_ceil(4).max(128);
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        if buf.len() < floats {
            buf.resize(floats, 1.0);
        }
        let buf = &buf[..floats];
        read_pass(isa, buf, parallel);
        let (mut rates, mut spent) = (Vec::new(), 0.0);
        while rates.len() < 3 || (spent < PROBE_READ_SECONDS && rates.len() < PROBE_READ_PASSES) {
            let (rate, seconds) = read_pass(isa, buf, parallel);
            rates.push(rate);
            spent += seconds;
        }
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    }
}
