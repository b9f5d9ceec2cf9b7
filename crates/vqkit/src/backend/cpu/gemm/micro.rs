//! The GEMM's micro-kernels, one per instruction set, and the block sizes each is run with.
//! A micro-kernel keeps an MR x NR tile of C in registers over a KC slice of k.

use super::super::Isa;

/// A micro-kernel: `C[0..MR][0..NR] (+)= sum_p a[p][0..MR] (x) b[p][0..NR]` over `kc` steps,
/// C at `c` with row stride `ldc`.
type Kernel = unsafe fn(
    kc: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
);

pub(super) struct Spec {
    pub(super) kernel: Kernel,
    pub(super) mr: usize,
    pub(super) nr: usize,
    pub(super) kc: usize,
    pub(super) mc: usize,
    pub(super) nc: usize,
}

pub(super) fn spec_for(isa: Isa) -> Spec {
    match isa {
        Isa::Portable => Spec {
            kernel: kernel_portable,
            mr: PORTABLE_MR,
            nr: PORTABLE_NR,
            kc: 256,
            mc: 128,
            nc: 3072,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Spec {
            kernel: x86::kernel_avx2,
            mr: x86::AVX2_MR,
            nr: x86::AVX2_NR,
            kc: 256,
            mc: 120,
            nc: 3072,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Spec {
            kernel: x86::kernel_avx512,
            mr: x86::AVX512_MR,
            nr: x86::AVX512_NR,
            kc: 128,
            mc: 128,
            nc: 3072,
        },
        #[cfg(not(target_arch = "x86_64"))]
        _ => spec_for(Isa::Portable),
    }
}

/// Runs the micro-kernel on one tile of `rows x cols` (at most MR x NR) at `c`.
///
/// # Safety
/// `c` must point to a `rows x cols` region with row stride `ldc` that no one else touches;
/// `ap` holds `kc * MR` floats, `bp` KC rows of NR floats `ldb` apart.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn micro(
    s: &Spec,
    kc: usize,
    ap: &[f32],
    bp: &[f32],
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    acc: bool,
) {
    debug_assert!(ap.len() >= kc * s.mr && bp.len() >= (kc - 1) * ldb + s.nr);
    if rows == s.mr && cols == s.nr {
        // SAFETY: a whole tile, in bounds by the caller's contract; the kernel's ISA was
        // detected before this spec was chosen.
        unsafe { (s.kernel)(kc, ap.as_ptr(), bp.as_ptr(), ldb, c, ldc, acc) };
        return;
    }
    let mut tmp = [0.0f32; MAX_TILE];
    // SAFETY: tmp holds MR x NR <= MAX_TILE floats with row stride NR.
    unsafe {
        (s.kernel)(
            kc,
            ap.as_ptr(),
            bp.as_ptr(),
            ldb,
            tmp.as_mut_ptr(),
            s.nr,
            false,
        )
    };
    for i in 0..rows {
        for j in 0..cols {
            // SAFETY: i < rows, j < cols: inside the caller's region.
            unsafe {
                let d = c.add(i * ldc + j);
                *d = if acc {
                    *d + tmp[i * s.nr + j]
                } else {
                    tmp[i * s.nr + j]
                };
            }
        }
    }
}

/// The largest MR x NR of any variant.
const MAX_TILE: usize = 8 * 48;

const PORTABLE_MR: usize = 4;
const PORTABLE_NR: usize = 16;

/// v1: plain Rust; fixed-size arrays let the compiler keep the tile in vector registers.
///
/// # Safety
/// `a`: kc x MR floats, `b`: kc rows of NR floats `ldb` apart, `c`: an MR x NR tile with row
/// stride `ldc`.
unsafe fn kernel_portable(
    kc: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    const MR: usize = PORTABLE_MR;
    const NR: usize = PORTABLE_NR;
    // SAFETY: the caller guarantees the lengths above.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, kc * MR),
            std::slice::from_raw_parts(b, (kc - 1) * ldb + NR),
        )
    };
    let mut t = [[0.0f32; NR]; MR];
    for (p, ap) in a.chunks_exact(MR).enumerate() {
        let bp: &[f32; NR] = b[p * ldb..][..NR].try_into().expect("NR floats");
        for r in 0..MR {
            for l in 0..NR {
                t[r][l] += ap[r] * bp[l];
            }
        }
    }
    for (r, row) in t.iter().enumerate() {
        // SAFETY: row r < MR of the caller's tile, NR wide.
        let cr = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), NR) };
        for (o, &v) in cr.iter_mut().zip(row) {
            *o = if acc { *o + v } else { v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    /// 8 x 8 transpose: rows of `src` (8 floats, `ss` apart) become columns of `dst`.
    ///
    /// # Safety
    /// AVX detected; `src` and `dst` hold 8 rows of 8 floats at strides `ss` and `ds`.
    #[target_feature(enable = "avx")]
    pub(crate) unsafe fn transpose8_avx(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        // SAFETY: rows r < 8 of 8 floats each, inside both buffers by the caller's contract.
        unsafe {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
            for (i, v) in transpose8_regs(r).iter().enumerate() {
                _mm256_storeu_ps(dst.add(i * ds), *v);
            }
        }
    }

    /// The 8 x 8 transpose of eight vectors in registers: element j of vector i becomes
    /// element i of vector j.
    ///
    /// # Safety
    /// The caller is compiled for AVX (this is inlined into it).
    #[inline(always)]
    pub(crate) unsafe fn transpose8_regs(r: [__m256; 8]) -> [__m256; 8] {
        // SAFETY: register operations only, on AVX by the caller's contract.
        unsafe {
            // Interleave pairs of rows, then pairs of pairs, then swap 128-bit halves.
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ]
        }
    }

    pub(super) const AVX2_MR: usize = 6;
    pub(super) const AVX2_NR: usize = 16;
    pub(super) const AVX512_MR: usize = 8;
    pub(super) const AVX512_NR: usize = 48;

    /// v2: 6 rows x 16 columns (two ymm).
    ///
    /// # Safety
    /// AVX2 and FMA detected; `a`: kc x 6 floats, `b`: kc rows of 16 floats `ldb` apart,
    /// `c`: a 6 x 16 tile.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_avx2(
        kc: usize,
        a: *const f32,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        acc_c: bool,
    ) {
        const MR: usize = AVX2_MR;
        const _: () = assert!(AVX2_NR == 2 * 8);
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        // SAFETY (all pointer accesses): p < kc, r < MR, h < 2: inside the caller's buffers.
        unsafe {
            for p in 0..kc {
                let bp = b.add(p * ldb);
                let b0 = _mm256_loadu_ps(bp);
                let b1 = _mm256_loadu_ps(bp.add(8));
                let ap = a.add(p * MR);
                for (r, t) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*ap.add(r));
                    t[0] = _mm256_fmadd_ps(av, b0, t[0]);
                    t[1] = _mm256_fmadd_ps(av, b1, t[1]);
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (h, &v) in row.iter().enumerate() {
                    let cp = c.add(r * ldc + h * 8);
                    let v = if acc_c {
                        _mm256_add_ps(_mm256_loadu_ps(cp), v)
                    } else {
                        v
                    };
                    _mm256_storeu_ps(cp, v);
                }
            }
        }
    }

    /// v3: 8 rows x 48 columns (three zmm).
    ///
    /// # Safety
    /// AVX-512F detected; `a`: kc x 8 floats, `b`: kc rows of 48 floats `ldb` apart,
    /// `c`: an 8 x 48 tile.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernel_avx512(
        kc: usize,
        a: *const f32,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        acc_c: bool,
    ) {
        const MR: usize = AVX512_MR;
        const _: () = assert!(AVX512_NR == 3 * 16);
        let mut acc = [[_mm512_setzero_ps(); 3]; MR];
        // SAFETY (all pointer accesses): p < kc, r < MR, h < 3: inside the caller's buffers.
        unsafe {
            for p in 0..kc {
                let bp = b.add(p * ldb);
                let b0 = _mm512_loadu_ps(bp);
                let b1 = _mm512_loadu_ps(bp.add(16));
                let b2 = _mm512_loadu_ps(bp.add(32));
                let ap = a.add(p * MR);
                for (r, t) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ap.add(r));
                    t[0] = _mm512_fmadd_ps(av, b0, t[0]);
                    t[1] = _mm512_fmadd_ps(av, b1, t[1]);
                    t[2] = _mm512_fmadd_ps(av, b2, t[2]);
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (h, &v) in row.iter().enumerate() {
                    let cp = c.add(r * ldc + h * 16);
                    let v = if acc_c {
                        _mm512_add_ps(_mm512_loadu_ps(cp), v)
                    } else {
                        v
                    };
                    _mm512_storeu_ps(cp, v);
                }
            }
        }
    }
}
