//! The GEMM with a convolution's tap mask ([`vqkit_nn::conv::TapMask`]) against the f64
//! reference: masked products skip only products that are zero, on every ISA this CPU has.

use vqkit::backend::cpu::Isa;
use vqkit::backend::cpu::gemm::{MatRef, Parallelism, sgemm_masked, sgemm_masked_with, sgemm_with};
use vqkit::reference;
use vqkit::rng::Rng;
use vqkit_nn::conv::{Dim, TapMask};

/// One masked product against the f64 reference, on every ISA this CPU has, serial and
/// parallel (the reference made once: under valgrind's memcheck it costs more than the
/// products). Where B carries both taps and pixels, its entries at invalid pairs are zero
/// (the promise a mask makes) and C is compared in full; where C carries both (taps on M),
/// only its entries at valid pairs are compared.
fn check_masked(
    (taps, pixels): (Dim, Dim),
    (channels, images): (usize, usize),
    (m, n, k): (usize, usize, usize),
    tb: bool,
    acc: bool,
    density: f64,
) {
    let mut rng = Rng::new((m * 7919 + n * 31 + k) as u64 ^ (channels * 131 + images) as u64);
    let size = |d: Dim| match d {
        Dim::M => m,
        Dim::N => n,
        Dim::K => k,
    };
    let ntaps = size(taps).div_ceil(channels);
    let npix = size(pixels).div_ceil(images);
    let valid: Vec<u64> = (0..npix)
        .map(|_| (0..ntaps).fold(0, |v, t| v | ((rng.uniform() < density) as u64) << t))
        .collect();
    let live = |i: usize, j: usize, p: usize| {
        let at = |d: Dim| match d {
            Dim::M => i,
            Dim::N => j,
            Dim::K => p,
        };
        valid[at(pixels) / images] >> (at(taps) / channels) & 1 == 1
    };
    let a = rng.normal_vec(m * k);
    let mut b = rng.normal_vec(k * n);
    // B stored as (k, n), or as (n, k) when transposed.
    let at = |p: usize, j: usize| if tb { j * k + p } else { p * n + j };
    if taps != Dim::M {
        // B carries both taps and pixels: the products the mask rules out are zero there,
        // as a column matrix is zero where a tap reads padding.
        for p in 0..k {
            for j in 0..n {
                if !live(0, j, p) {
                    b[at(p, j)] = 0.0;
                }
            }
        }
    }
    let (am, bm) = (MatRef::row_major(&a, k), MatRef::operand(&b, k, n, tb));
    let a64: Vec<f64> = a.iter().map(|&v| v as f64).collect();
    let b64: Vec<f64> = (0..k * n).map(|t| b[at(t / n, t % n)] as f64).collect();
    let want = reference::gemm(m, n, k, &a64, &b64);
    let init = rng.normal_vec(m * n);
    let mask = TapMask::new(taps, channels, pixels, images, &valid).unwrap();
    for isa in Isa::available() {
        for par in [Parallelism::None, Parallelism::Rayon] {
            let mut c = if acc {
                init.clone()
            } else {
                vec![f32::NAN; m * n]
            };
            sgemm_masked_with(isa, par, m, n, k, am, bm, &mut c, n, acc, Some(&mask)).unwrap();
            for i in 0..m {
                for j in 0..n {
                    if taps == Dim::M && !live(i, j, 0) {
                        continue;
                    }
                    let w = if acc { init[i * n + j] as f64 } else { 0.0 } + want[i * n + j];
                    let got = c[i * n + j] as f64;
                    let tol = 4e-5 * (k as f64).sqrt().max(1.0) + 1e-6 * w.abs();
                    assert!(
                        (got - w).abs() <= tol,
                        "{isa:?} {par:?} taps {taps:?} x{channels} pixels {pixels:?} \
                         x{images} {m}x{n}x{k} tb={tb} acc={acc} density {density} at \
                         ({i},{j}): {got} vs {w}"
                    );
                }
            }
        }
    }
}

#[test]
fn masked_gemm_skips_only_zero_products() {
    // The three placements of a convolution GEMM, channel and image counts that do and do
    // not divide MR, NR and KC, masks from empty to full (an all-invalid column panel must
    // come out zero, or untouched when accumulating), a long k that is split into parts.
    let placements = [(Dim::K, Dim::N), (Dim::N, Dim::K), (Dim::M, Dim::N)];
    for (pi, &(taps, pixels)) in placements.iter().enumerate() {
        for (ci, &(channels, images)) in [(1, 1), (3, 5), (32, 32), (64, 7), (48, 16)]
            .iter()
            .enumerate()
        {
            for (di, &density) in [0.0, 0.3, 0.8, 1.0].iter().enumerate() {
                let ntaps = [9, 16, 4, 25][(pi + ci + di) % 4];
                let tap_len = ntaps * channels;
                let pix_len = [49, 7, 30][(ci + di) % 3] * images;
                let other = [17, 130, 8][(pi + di) % 3];
                let (m, n, k) = match (taps, pixels) {
                    (Dim::K, Dim::N) => (other, pix_len, tap_len),
                    (Dim::N, Dim::K) => (other, tap_len, pix_len),
                    _ => (tap_len, pix_len, other),
                };
                let (tb, acc) = ((ci + di) % 2 == 1, (pi + ci + di) % 2 == 0);
                check_masked(
                    (taps, pixels),
                    (channels, images),
                    (m, n, k),
                    tb,
                    acc,
                    density,
                );
            }
        }
    }
    // Split along k: a small C over a long masked k.
    check_masked((Dim::N, Dim::K), (16, 32), (64, 16, 6272), true, false, 0.7);
    check_masked((Dim::K, Dim::N), (70, 1), (9, 20, 4480), false, true, 0.5);
}

#[test]
fn bad_masks_are_typed_errors() {
    let valid = [u64::MAX; 4];
    assert!(TapMask::new(Dim::K, 1, Dim::K, 1, &valid).is_err());
    assert!(TapMask::new(Dim::M, 1, Dim::K, 1, &valid).is_err());
    assert!(TapMask::new(Dim::K, 0, Dim::N, 1, &valid).is_err());
    let (a, b) = (vec![0.0f32; 8 * 65], vec![0.0f32; 65 * 8]);
    let mut c = vec![0.0f32; 64];
    let (am, bm) = (MatRef::row_major(&a, 65), MatRef::row_major(&b, 8));
    // 65 taps of one channel do not fit 64 bits; 8 pixels of one image need 8 entries.
    let too_many = TapMask::new(Dim::K, 1, Dim::N, 2, &valid).unwrap();
    assert!(sgemm_masked(8, 8, 65, am, bm, &mut c, 8, false, Some(&too_many)).is_err());
    let short = TapMask::new(Dim::K, 5, Dim::N, 1, &valid).unwrap();
    assert!(sgemm_masked(8, 8, 65, am, bm, &mut c, 8, false, Some(&short)).is_err());
}

#[test]
fn split_products_leave_dead_tiles_untouched() {
    // The split-k partial sums live in a buffer each thread keeps between products. With
    // the taps on M a part leaves the tiles its mask rules out unwritten, so an all-dead
    // product accumulated into C must change nothing, even right after a product (on the
    // same thread: no parallelism) that left other sums in that buffer.
    let (m, n, k) = (8, 40, 1100);
    let mut rng = Rng::new(17);
    let a = rng.normal_vec(m * k);
    let b = rng.normal_vec(k * n);
    let (am, bm) = (MatRef::row_major(&a, k), MatRef::row_major(&b, n));
    let dead = vec![0u64; n / 4];
    let mask = TapMask::new(Dim::M, 2, Dim::N, 4, &dead).unwrap();
    for isa in Isa::available() {
        let mut c = vec![0.0; m * n];
        sgemm_with(isa, Parallelism::None, m, n, k, am, bm, &mut c, n, false).unwrap();
        assert!(c.iter().all(|v| v.is_finite()) && c.iter().any(|&v| v != 0.0));
        let init = rng.normal_vec(m * n);
        let mut c = init.clone();
        sgemm_masked_with(
            isa,
            Parallelism::None,
            m,
            n,
            k,
            am,
            bm,
            &mut c,
            n,
            true,
            Some(&mask),
        )
        .unwrap();
        assert_eq!(c, init, "{isa:?}");
    }
}
