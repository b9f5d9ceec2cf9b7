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

/// Peak f32 GFLOP/s (an FMA counts 2) on `threads` threads with the given instruction set.
pub fn fma_gflops(isa: Isa, threads: usize) -> f64 {
    let iters = 4_000_000usize;
    // Floats updated per iteration, each by one multiply and one add.
    let lanes = match isa {
        Isa::Avx512 => 16 * AVX512_CHAINS,
        Isa::Avx2 => 8 * AVX2_CHAINS,
        Isa::Portable => PORTABLE_WIDTH * PORTABLE_CHAINS,
    };
    let run = |_| {
        let t = Instant::now();
        let sink = fma_chains(isa, iters);
        (t.elapsed().as_secs_f64(), sink)
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
    let best = (0..3)
        .map(|_| {
            let times: Vec<(f64, f32)> = match &pool {
                Ok(p) => p.install(|| (0..threads).into_par_iter().map(run).collect()),
                Err(_) => vec![run(0)],
            };
            let slowest = times.iter().map(|t| t.0).fold(0.0, f64::max);
            std::hint::black_box(times.iter().map(|t| t.1).sum::<f32>());
            slowest
        })
        .fold(f64::INFINITY, f64::min);
    (threads * iters * lanes * 2) as f64 / best / 1e9
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

/// Memory read bandwidth in GB/s on `threads` threads (best of three passes over 256 MiB).
pub fn read_gbps(threads: usize) -> f64 {
    let buf = vec![1.0f32; 64 << 20];
    let pass = || {
        let t = Instant::now();
        let s: f32 = buf
            .par_chunks(1 << 16)
            .map(|c| {
                let mut acc = [0.0f32; 16];
                for w in c.chunks_exact(16) {
                    for l in 0..16 {
                        acc[l] += w[l];
                    }
                }
                acc.iter().sum::<f32>()
            })
            .sum();
        std::hint::black_box(s);
        t.elapsed().as_secs_f64()
    };
    let best = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(p) => p.install(|| (0..3).map(|_| pass()).fold(f64::INFINITY, f64::min)),
        Err(_) => (0..3).map(|_| pass()).fold(f64::INFINITY, f64::min),
    };
    (buf.len() * 4) as f64 / best / 1e9
}
