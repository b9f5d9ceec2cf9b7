//! Image-quality metrics for reconstructions in [0, 1]: MSE, PSNR and SSIM.

/// `10 log10(1 / mse)` for images with range 1 (mse floored at 1e-12).
pub fn psnr(mse: f64) -> f64 {
    10.0 * (1.0 / mse.max(1e-12)).log10()
}

/// Mean SSIM (Wang et al. 2004) of one single-channel `h x w` image pair with data range 1:
/// an 11 x 11 Gaussian window (sigma 1.5), C1 = (0.01)^2, C2 = (0.03)^2, averaged over the
/// valid window positions (no padding), as the paper does. Images smaller than the window use a window cut to their size.
pub fn ssim(a: &[f32], b: &[f32], h: usize, w: usize) -> f64 {
    const C1: f64 = 0.01 * 0.01;
    const C2: f64 = 0.03 * 0.03;
    let k = 11.min(h).min(w);
    let sigma = 1.5f64;
    let c = (k as f64 - 1.0) / 2.0;
    let g1: Vec<f64> = (0..k)
        .map(|i| (-((i as f64 - c).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f64 = g1.iter().sum();
    let g1: Vec<f64> = g1.iter().map(|v| v / s).collect();
    let (oh, ow) = (h + 1 - k, w + 1 - k);
    let mut total = 0.0;
    for y in 0..oh {
        for x in 0..ow {
            let (mut ma, mut mb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for dy in 0..k {
                for dx in 0..k {
                    let wgt = g1[dy] * g1[dx];
                    let i = (y + dy) * w + x + dx;
                    let (p, q) = (a[i] as f64, b[i] as f64);
                    ma += wgt * p;
                    mb += wgt * q;
                    saa += wgt * p * p;
                    sbb += wgt * q * q;
                    sab += wgt * p * q;
                }
            }
            let (va, vb, cov) = (saa - ma * ma, sbb - mb * mb, sab - ma * mb);
            total += ((2.0 * ma * mb + C1) * (2.0 * cov + C2))
                / ((ma * ma + mb * mb + C1) * (va + vb + C2));
        }
    }
    total / (oh * ow).max(1) as f64
}
