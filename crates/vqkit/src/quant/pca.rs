//! Principal components on the host, for progressive-dimension k-means: the covariance by
//! the tiled inner-product kernel of [`super::linalg`], and a symmetric eigen-decomposition
//! (Householder reduction to tridiagonal form, then the implicit QL iteration with Wilkinson
//! shifts; Golub and Van Loan, ch. 8) in f64.

// Matrix algorithms read best in index form (`v[at(k, j)]`, `d[k]`), as in the literature.
#![allow(clippy::needless_range_loop)]

use super::linalg::dots;

/// Mean and principal axes of a point set.
#[derive(Clone, Debug, PartialEq)]
pub struct Pca {
    pub d: usize,
    pub mean: Vec<f32>,
    /// (d, d): row `i` is the unit axis of the i-th largest variance.
    pub axes: Vec<f32>,
    /// Variances along the axes, largest first.
    pub variances: Vec<f64>,
}

impl Pca {
    /// Fits the axes of `x` (rows of `d`; at least one row).
    pub fn fit(x: &[f32], d: usize) -> Pca {
        let n = x.len() / d;
        let mut mean = vec![0.0f64; d];
        for r in x.chunks_exact(d) {
            for (m, &v) in mean.iter_mut().zip(r) {
                *m += v as f64;
            }
        }
        let mean: Vec<f32> = mean.iter().map(|&m| (m / n.max(1) as f64) as f32).collect();
        // Centred columns (d, n), so that the covariance is one inner-product table.
        let mut cols = vec![0.0f32; d * n];
        for (i, r) in x.chunks_exact(d).enumerate() {
            for t in 0..d {
                cols[t * n + i] = r[t] - mean[t];
            }
        }
        let mut cov32 = vec![0.0f32; d * d];
        dots(&cols, &cols, n, &mut cov32);
        let cov: Vec<f64> = cov32.iter().map(|&v| v as f64 / n.max(1) as f64).collect();
        let (vals, vecs) = sym_eigen(&cov, d);
        // Largest first.
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
        let mut axes = Vec::with_capacity(d * d);
        for &j in &order {
            axes.extend(vecs[j * d..(j + 1) * d].iter().map(|&v| v as f32));
        }
        Pca {
            d,
            mean,
            axes,
            variances: order.iter().map(|&j| vals[j].max(0.0)).collect(),
        }
    }

    /// `y_i = A (x_i - mean)`: coordinates along the axes, (n, d).
    pub fn project(&self, x: &[f32]) -> Vec<f32> {
        let d = self.d;
        let centred: Vec<f32> = x
            .chunks_exact(d)
            .flat_map(|r| r.iter().zip(&self.mean).map(|(&v, &m)| v - m))
            .collect();
        let mut out = vec![0.0f32; centred.len()];
        dots(&centred, &self.axes, d, &mut out);
        out
    }

    /// `x_i = A^T y_i + mean` for rows `y` of `d` coordinates.
    pub fn unproject(&self, y: &[f32]) -> Vec<f32> {
        let d = self.d;
        let mut out = Vec::with_capacity(y.len());
        for r in y.chunks_exact(d) {
            let mut v: Vec<f64> = self.mean.iter().map(|&m| m as f64).collect();
            for (t, &c) in r.iter().enumerate() {
                if c != 0.0 {
                    for (o, &a) in v.iter_mut().zip(&self.axes[t * d..(t + 1) * d]) {
                        *o += c as f64 * a as f64;
                    }
                }
            }
            out.extend(v.iter().map(|&x| x as f32));
        }
        out
    }
}

/// Eigenvalues and unit eigenvectors (as rows, (n, n)) of the symmetric matrix `a` (n, n).
pub fn sym_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    if n == 0 {
        return (Vec::new(), Vec::new());
    }
    // Householder tridiagonalisation: q accumulates the reflections so that a = q t q^T,
    // t with diagonal `diag` and off-diagonal `off` (off[i] couples i-1, i).
    let mut q = a.to_vec();
    let mut diag = vec![0.0f64; n];
    let mut off = vec![0.0f64; n];
    tridiagonalise(&mut q, n, &mut diag, &mut off);
    // QL works on rows of w = q^T (each rotation mixes two contiguous rows), which is
    // exactly the transposed storage `tridiagonalise` leaves.
    ql_implicit(&mut diag, &mut off, &mut q, n);
    (diag, q)
}

/// Householder reduction of the symmetric `v` (n, n) in place to `q`, with `d` the diagonal
/// and `e` the sub-diagonal of the tridiagonal matrix (`e[0] = 0`).
fn tridiagonalise(v: &mut [f64], n: usize, d: &mut [f64], e: &mut [f64]) {
    // Stored transposed (element (i, j) at j n + i): every O(n^3) loop below walks down a
    // column, which is then contiguous. The input is symmetric, so it reads the same.
    let at = |i: usize, j: usize| j * n + i;
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
    }
    for i in (1..n).rev() {
        let scale: f64 = d[..i].iter().map(|x| x.abs()).sum();
        let mut h = 0.0;
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
                v[at(j, i)] = 0.0;
            }
        } else {
            for k in 0..i {
                d[k] /= scale;
                h += d[k] * d[k];
            }
            let f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            e[..i].fill(0.0);
            for j in 0..i {
                let f = d[j];
                v[at(j, i)] = f;
                let mut g = e[j] + v[at(j, j)] * f;
                for k in j + 1..i {
                    g += v[at(k, j)] * d[k];
                    e[k] += v[at(k, j)] * f;
                }
                e[j] = g;
            }
            let mut f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                let (f, g) = (d[j], e[j]);
                for k in j..i {
                    v[at(k, j)] -= f * e[k] + g * d[k];
                }
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    // Accumulate the reflections.
    for i in 0..n - 1 {
        v[at(n - 1, i)] = v[at(i, i)];
        v[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[at(k, i + 1)] / h;
            }
            for j in 0..=i {
                let mut g = 0.0;
                for k in 0..=i {
                    g += v[at(k, i + 1)] * v[at(k, j)];
                }
                for k in 0..=i {
                    v[at(k, j)] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
        v[at(n - 1, j)] = 0.0;
    }
    v[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
}

/// Implicit QL on the tridiagonal (`d`, `e`), applying the rotations to the rows of `w`.
fn ql_implicit(d: &mut [f64], e: &mut [f64], w: &mut [f64], n: usize) {
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1 = 0.0f64;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n {
            if e[m].abs() <= eps * tst1 {
                break;
            }
            m += 1;
        }
        if m > l {
            // At most a few dozen sweeps converge in practice; the cap guards NaN input.
            for _ in 0..64 {
                let g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let h = g - d[l];
                for x in d.iter_mut().skip(l + 2) {
                    *x -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0, 1.0, 1.0);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0, 0.0);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    let g = c * e[i];
                    let h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    let (lo, hi) = w.split_at_mut((i + 1) * n);
                    let wi = &mut lo[i * n..];
                    let wi1 = &mut hi[..n];
                    for (a, b) in wi.iter_mut().zip(wi1.iter_mut()) {
                        let h = *b;
                        *b = s * *a + c * h;
                        *a = c * *a - s * h;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn eigen_decomposition_reconstructs_the_matrix() {
        let mut rng = Rng::new(3);
        for n in [1, 2, 5, 17] {
            let m: Vec<f64> = (0..n * n).map(|_| rng.normal()).collect();
            let mut a = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..n {
                    a[i * n + j] = m[i * n + j] + m[j * n + i];
                }
            }
            let (vals, vecs) = sym_eigen(&a, n);
            for k in 0..n {
                let v = &vecs[k * n..(k + 1) * n];
                let norm: f64 = v.iter().map(|x| x * x).sum();
                assert!((norm - 1.0).abs() < 1e-9);
                for i in 0..n {
                    let av: f64 = (0..n).map(|j| a[i * n + j] * v[j]).sum();
                    assert!((av - vals[k] * v[i]).abs() < 1e-8, "n {n} k {k}");
                }
            }
        }
    }

    #[test]
    fn pca_orders_axes_by_variance_and_round_trips() {
        let mut rng = Rng::new(4);
        let d = 3;
        let x: Vec<f32> = (0..500)
            .flat_map(|_| {
                let a = rng.normal() as f32;
                [
                    5.0 * a,
                    0.1 * rng.normal() as f32,
                    a + 0.5 * rng.normal() as f32,
                ]
            })
            .collect();
        let p = Pca::fit(&x, d);
        assert!(p.variances[0] > p.variances[1] && p.variances[1] > p.variances[2]);
        let back = p.unproject(&p.project(&x));
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() < 1e-4);
        }
    }
}
