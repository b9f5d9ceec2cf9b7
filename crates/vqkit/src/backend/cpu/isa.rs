//! The one place vqkit asks the CPU what it can do. Every CPU kernel (distance-argmin,
//! the GEMM, the ceiling loops) chooses its micro-kernel from [`Isa`], detected here once
//! per process.

use std::sync::OnceLock;

/// The instruction set a CPU micro-kernel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isa {
    /// Plain Rust, vectorized by the compiler for the build target.
    Portable,
    /// AVX2 with FMA (x86-64).
    Avx2,
    /// AVX-512F (x86-64).
    Avx512,
}

/// What the CPU offers, detected once.
struct Features {
    /// The instruction sets of [`Isa`] it supports, slowest first.
    isas: Vec<Isa>,
    /// AVX (the 8 x 8 register transposes of the GEMM's packing).
    avx: bool,
}

fn features() -> &'static Features {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    FEATURES.get_or_init(|| {
        let mut isas = vec![Isa::Portable];
        #[cfg(not(target_arch = "x86_64"))]
        let avx = false;
        #[cfg(target_arch = "x86_64")]
        let avx = is_x86_feature_detected!("avx");
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                isas.push(Isa::Avx2);
            }
            if is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
        }
        Features { isas, avx }
    })
}

impl Isa {
    /// The best instruction set this CPU supports.
    pub fn detect() -> Isa {
        features().isas.last().copied().unwrap_or(Isa::Portable)
    }

    /// Every instruction set this CPU supports, slowest first.
    pub fn available() -> Vec<Isa> {
        features().isas.clone()
    }

    /// Whether this CPU supports `self`.
    pub fn supported(self) -> bool {
        features().isas.contains(&self)
    }
}

crate::impl_choice!(Isa, "isa", { Portable => "portable", Avx2 => "avx2", Avx512 => "avx512" });

/// Whether the CPU has AVX.
pub fn has_avx() -> bool {
    features().avx
}

/// A loop run in the build of an instruction set ([`in_isa`]): its `body` is
/// `#[inline(always)]`, and so is every method it calls (a closure or method the compiler
/// keeps apart is compiled for the baseline, SSE2, whatever its caller's build).
pub(crate) trait IsaLoop<A> {
    fn body(&self, a: A);
}

/// `l.body(a)` compiled for `isa`: the compiler vectorizes the same Rust for the widths
/// `isa` offers. For the accumulation of `cluster_sums`, AVX-512 does 8 widening converts
/// and adds per 64-byte line where SSE2 does 4 of each per 16 bytes, so the core runs far
/// enough ahead to keep memory busy.
/// An `isa` this CPU lacks (the enum is public: safe code can name any) runs the portable
/// build.
pub(crate) fn in_isa<A, L: IsaLoop<A>>(isa: Isa, l: &L, a: A) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX-512F (the guard).
        Isa::Avx512 if isa.supported() => unsafe { in_avx512(l, a) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX2 (the guard).
        Isa::Avx2 if isa.supported() => unsafe { in_avx2(l, a) },
        _ => l.body(a),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn in_avx512<A, L: IsaLoop<A>>(l: &L, a: A) {
    l.body(a)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn in_avx2<A, L: IsaLoop<A>>(l: &L, a: A) {
    l.body(a)
}
