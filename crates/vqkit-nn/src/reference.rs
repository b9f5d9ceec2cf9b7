//! The f64 scalar references of the neural-network core: plain loops, no tiling, every sum
//! in f64. The tests and benchmarks compare the layers against these and nothing else, and
//! the gradient checks take central finite differences through them. The GEMM's reference
//! is the core library's ([`vqkit::reference::gemm`]), re-exported here.

pub use vqkit::reference::gemm;

/// The geometry of a 2-d convolution window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

/// Direct convolution (cross-correlation, as PyTorch's `conv2d`).
/// x: (n, cin, h, w), weight: (cout, cin, k, k), bias: (cout) or empty;
/// out: (n, cout, oh, ow) with `oh = (h + 2p - k) / s + 1`.
pub fn conv2d(
    x: &[f64],
    xs: [usize; 4],
    weight: &[f64],
    bias: &[f64],
    cout: usize,
    g: ConvGeom,
) -> (Vec<f64>, [usize; 4]) {
    let [n, cin, h, w] = xs;
    let ConvGeom {
        kernel: k,
        stride: s,
        padding: p,
    } = g;
    let oh = (h + 2 * p - k) / s + 1;
    let ow = (w + 2 * p - k) / s + 1;
    let mut y = vec![0.0; n * cout * oh * ow];
    for b in 0..n {
        for co in 0..cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = if bias.is_empty() { 0.0 } else { bias[co] };
                    for ci in 0..cin {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky) as isize - p as isize;
                                let ix = (ox * s + kx) as isize - p as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                acc += weight[((co * cin + ci) * k + ky) * k + kx]
                                    * x[((b * cin + ci) * h + iy as usize) * w + ix as usize];
                            }
                        }
                    }
                    y[((b * cout + co) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    (y, [n, cout, oh, ow])
}

/// Direct transposed convolution (PyTorch's `conv_transpose2d`): every input pixel scatters
/// its weighted kernel into the output. x: (n, cin, h, w), weight: (cin, cout, k, k);
/// out: (n, cout, oh, ow) with `oh = (h - 1) s - 2p + k + output_padding`.
pub fn conv_transpose2d(
    x: &[f64],
    xs: [usize; 4],
    weight: &[f64],
    bias: &[f64],
    cout: usize,
    g: ConvGeom,
    output_padding: usize,
) -> (Vec<f64>, [usize; 4]) {
    let [n, cin, h, w] = xs;
    let ConvGeom {
        kernel: k,
        stride: s,
        padding: p,
    } = g;
    let oh = (h - 1) * s + k + output_padding - 2 * p;
    let ow = (w - 1) * s + k + output_padding - 2 * p;
    let mut y = vec![0.0; n * cout * oh * ow];
    for b in 0..n {
        for co in 0..cout {
            if !bias.is_empty() {
                y[(b * cout + co) * oh * ow..(b * cout + co + 1) * oh * ow].fill(bias[co]);
            }
        }
        for ci in 0..cin {
            for iy in 0..h {
                for ix in 0..w {
                    let xv = x[((b * cin + ci) * h + iy) * w + ix];
                    for co in 0..cout {
                        for ky in 0..k {
                            for kx in 0..k {
                                let oy = (iy * s + ky) as isize - p as isize;
                                let ox = (ix * s + kx) as isize - p as isize;
                                if oy < 0 || ox < 0 || oy >= oh as isize || ox >= ow as isize {
                                    continue;
                                }
                                y[((b * cout + co) * oh + oy as usize) * ow + ox as usize] +=
                                    xv * weight[((ci * cout + co) * k + ky) * k + kx];
                            }
                        }
                    }
                }
            }
        }
    }
    (y, [n, cout, oh, ow])
}

/// `max(x, 0)` elementwise.
pub fn relu(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| v.max(0.0)).collect()
}

/// Mean squared error `mean((x - target)^2)`.
pub fn mse(x: &[f64], target: &[f64]) -> f64 {
    x.iter()
        .zip(target)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        / x.len().max(1) as f64
}
