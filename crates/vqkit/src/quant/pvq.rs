//! Product vector quantization (PVQ, Jegou et al. 2011).
//!
//! ```text
//! x = [x^(0) | x^(1) | ... | x^(M-1)],   x^(m) of d / M dimensions
//! a_m = argmin_j |x^(m) - C_m[j]|^2,     x^ = [C_0[a_0] | ... | C_{M-1}[a_{M-1}]]
//! ```
//!
//! Each sub-space is an independent k-means on the backend (fit and assignment); the only
//! host work is slicing the columns of each sub-space out of the rows.

use super::Decoder;
use super::kmeans::{Init, KMeans, KMeansConfig};
use super::model_io::TensorFile;
use super::{check_training, sub_seed};
use crate::backend::Shape;
use crate::backend::cpu::{DECODE_ROWS, product_codes, size};
use crate::backend::{
    Backend, Code, blocked_host, check_code_type, check_finite, check_len, narrow_codes,
};
use crate::error::{Error, Result};
use crate::ops::{assign, rows};
use rayon::prelude::*;

/// Hyper-parameters of [`Pvq::fit`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PvqConfig {
    /// Sub-vectors; must divide d.
    pub m: usize,
    /// Codewords per sub-space.
    pub k: usize,
    pub iters: usize,
    pub init: Init,
    pub seed: u64,
    pub max_points_per_centroid: usize,
}

impl PvqConfig {
    pub fn new(m: usize, k: usize) -> Self {
        PvqConfig {
            m,
            k,
            iters: 20,
            init: Init::KMeansPlusPlus,
            seed: 0,
            max_points_per_centroid: 256,
        }
    }

    /// The k-means configuration of sub-space `sub`.
    pub fn kmeans(&self, sub: usize) -> KMeansConfig {
        KMeansConfig {
            k: self.k,
            iters: self.iters,
            init: self.init,
            seed: sub_seed(self.seed, sub as u64),
            restarts: 1,
            tol: 0.0,
            max_points_per_centroid: self.max_points_per_centroid,
            progressive_dim_steps: 0,
            seed_points_per_centroid: 8,
            bounds: true,
        }
    }
}

/// A trained product quantizer.
#[derive(Clone, Debug, PartialEq)]
pub struct Pvq {
    pub d: usize,
    pub m: usize,
    pub k: usize,
    /// (m, k, d / m), row-major.
    pub codebooks: Vec<f32>,
}

/// Sub-vector `i` of `out` (`ds` floats) is `codebooks[(i % m) * k * ds + codes[i] * ds..]`:
/// PQ's decoding, and with `m = 1` that of a single codebook (k-means, VQ). Rows of `m`
/// codes in blocks of [`DECODE_ROWS`] on rayon's current pool; codewords of 1, 2, 4, 8
/// and 16 floats as fixed-size copies. The callers check the codes (below `k`) and that
/// `codebooks` holds `m * k * ds` and `out` `codes.len() * ds` floats.
pub(crate) fn copy_codewords<C: Code>(
    codebooks: &[f32],
    (m, k, ds): (usize, usize, usize),
    codes: &[C],
    out: &mut [f32],
) {
    if m == 0 || ds == 0 {
        return;
    }
    let sz = k * ds;
    let rows = |(o, c): (&mut [f32], &[C])| match ds {
        1 => copy_rows::<1, C>(codebooks, sz, m, c, o),
        2 => copy_rows::<2, C>(codebooks, sz, m, c, o),
        4 => copy_rows::<4, C>(codebooks, sz, m, c, o),
        8 => copy_rows::<8, C>(codebooks, sz, m, c, o),
        16 => copy_rows::<16, C>(codebooks, sz, m, c, o),
        _ => {
            for (o, c) in o.chunks_mut(m * ds).zip(c.chunks(m)) {
                for (s, (o, &j)) in o.chunks_exact_mut(ds).zip(c).enumerate() {
                    o.copy_from_slice(&codebooks[s * sz + j.index() * ds..][..ds]);
                }
            }
        }
    };
    let block = DECODE_ROWS.saturating_mul(m);
    out.par_chunks_mut(block.saturating_mul(ds))
        .zip(codes.par_chunks(block))
        .for_each(rows);
}

/// [`copy_codewords`] for codewords of `W` floats: `out`'s rows of `m * W` from `codes`'
/// rows of `m`, sub-space `s`'s codebook at `codebooks[s * sz..]`.
fn copy_rows<const W: usize, C: Code>(
    codebooks: &[f32],
    sz: usize,
    m: usize,
    codes: &[C],
    out: &mut [f32],
) {
    for (o, c) in out.chunks_mut(m * W).zip(codes.chunks(m)) {
        for (s, (o, &j)) in o.chunks_exact_mut(W).zip(c).enumerate() {
            let o: &mut [f32; W] = o.try_into().expect("W floats");
            *o = codebooks[s * sz + j.index() * W..][..W]
                .try_into()
                .expect("W floats");
        }
    }
}

/// Columns `[sub * ds, (sub + 1) * ds)` of every row.
pub fn sub_columns(x: &[f32], d: usize, sub: usize, ds: usize) -> Vec<f32> {
    x.chunks_exact(d)
        .flat_map(|r| &r[sub * ds..(sub + 1) * ds])
        .copied()
        .collect()
}

impl Pvq {
    pub fn dsub(&self) -> usize {
        self.d / self.m
    }

    /// Sub-space `sub`'s codebook (k, d / m).
    pub fn codebook(&self, sub: usize) -> &[f32] {
        let sz = self.k * self.dsub();
        &self.codebooks[sub * sz..(sub + 1) * sz]
    }

    fn check_split(d: usize, m: usize) -> Result<()> {
        if m == 0 || !d.is_multiple_of(m) {
            return Err(Error::invalid(
                "m",
                format!("{m} sub-vectors do not divide d = {d}"),
            ));
        }
        Ok(())
    }

    /// Fits one k-means per sub-space; `on_sub` is called after each.
    pub fn fit<B: Backend>(
        b: &B,
        x: &[f32],
        d: usize,
        cfg: &PvqConfig,
        on_sub: &mut dyn FnMut(usize),
    ) -> Result<Pvq> {
        check_training(x, d, cfg.k)?;
        Self::check_split(d, cfg.m)?;
        let ds = d / cfg.m;
        let mut codebooks = Vec::with_capacity(cfg.k * d);
        for sub in 0..cfg.m {
            crate::interrupt::check()?;
            let xs = sub_columns(x, d, sub, ds);
            let (km, _) = KMeans::fit(b, &xs, ds, &cfg.kmeans(sub))?;
            codebooks.extend_from_slice(&km.centroids);
            on_sub(sub);
        }
        Ok(Pvq {
            d,
            m: cfg.m,
            k: cfg.k,
            codebooks,
        })
    }

    /// Codes (n, m), one nearest-codeword search per sub-space on the backend.
    ///
    /// On a backend whose memory is the host's (the CPU), in blocks of rows, every sub-space
    /// searched while a block is in cache (`product_codes`): the same codes and errors as
    /// the search per sub-space, which at n = 200,000, d = 128, M = 64, k = 16 read x 64
    /// times from memory (see docs/performance.md).
    pub fn encode<B: Backend>(&self, b: &B, x: &[f32]) -> Result<Vec<u32>> {
        self.check_model()?;
        let n = rows("points", x, self.d)?;
        if blocked_host(b).is_some() {
            let len = size("codes", &[n, self.m])?;
            let mut codes = crate::resources::zeroed_lazy("the codes", len)?;
            if let Some(done) = self.encode_host(b, x, n, &mut codes) {
                return done.map(|()| codes);
            }
        }
        check_finite("points", x)?;
        self.encode_each(b, x, n)
    }

    /// [`Pvq::encode`] into `out`: n x m codes of type `C`, which must hold `k` indices
    /// (`u8` up to 256 codewords). The model's fields, the points' shape, the codes' length
    /// and their type are checked, in that order, before anything is written; after an
    /// error from the values of the points or the codebooks (a NaN, an infinity, an
    /// overflow) `out`'s contents are unspecified. On the CPU the codes are written in `C`
    /// as they are found: 8-bit codes of many vectors take a byte each, and a caller that
    /// encodes batch after batch into one buffer pays once for its pages. A device's codes
    /// are found as `u32`, then narrowed.
    pub fn encode_into<B: Backend, C: Code>(&self, b: &B, x: &[f32], out: &mut [C]) -> Result<()> {
        self.check_model()?;
        let n = rows("points", x, self.d)?;
        check_len("codes", out.len(), size("codes", &[n, self.m])?)?;
        check_code_type::<C>(self.k)?;
        if let Some(done) = self.encode_host(b, x, n, out) {
            return done;
        }
        check_finite("points", x)?;
        narrow_codes(&self.encode_each(b, x, n)?, out)
    }

    /// The codes of `n` points into `out` in blocks of rows (`product_codes`) on a backend
    /// whose memory is the host's; `None` on others.
    fn encode_host<B: Backend, C: Code>(
        &self,
        b: &B,
        x: &[f32],
        n: usize,
        out: &mut [C],
    ) -> Option<Result<()>> {
        let isa = blocked_host(b)?;
        let (m, k) = (self.m, self.k);
        let run = |par| product_codes(isa, par, x, self.d, &self.codebooks, (m, k), out);
        let work = n.saturating_mul(k).saturating_mul(self.d);
        let done = b.run_on_host(work, run)?;
        // A point with a NaN or an infinity fails the search, and is then found first, as if
        // checked before it: x is not read for one in a pass of its own. Memory's errors
        // are not the points'.
        Some(done.map_err(|e| match e {
            Error::OutOfMemory { .. } => e,
            e => check_finite("points", x).err().unwrap_or(e),
        }))
    }

    /// Errors for fields that disagree: `m` not dividing `d`, no codewords, codebooks of
    /// another length than (m, k, d / m).
    fn check_model(&self) -> Result<()> {
        Self::check_split(self.d, self.m)?;
        Shape::new(0, self.k, self.dsub()).validate()?;
        let want = size("codebooks", &[self.m, self.k, self.dsub()])?;
        crate::backend::check_len("codebooks", self.codebooks.len(), want)
    }

    /// [`Pvq::encode`] as a device runs it: one search of all rows per sub-space.
    fn encode_each<B: Backend>(&self, b: &B, x: &[f32], n: usize) -> Result<Vec<u32>> {
        self.check_model()?;
        let ds = self.dsub();
        let mut codes = vec![0u32; size("codes", &[n, self.m])?];
        for sub in 0..self.m {
            let xs = sub_columns(x, self.d, sub, ds);
            let a = assign(b, &xs, self.codebook(sub), ds)?;
            for (i, &c) in a.indices.iter().enumerate() {
                codes[i * self.m + sub] = c;
            }
        }
        Ok(codes)
    }

    /// Reconstructions (n, d) of codes (n, m), row-major: each code's codeword copied into
    /// its sub-vector. (A last row of fewer than m codes gives as many sub-vectors.)
    ///
    /// Rows in blocks on rayon's current pool (called outside one, rayon's global pool: every
    /// core, whatever a backend's thread count), codewords of 1, 2, 4, 8 and 16 floats as
    /// fixed-size copies. A copy per code through `extend_from_slice`, on one thread, made
    /// `ProductQuantizer.decode` from Python take three to five times FAISS's at n =
    /// 200,000, M = 64, k = 16 (docs/performance.md).
    pub fn decode<C: Code>(&self, codes: &[C]) -> Result<Vec<f32>> {
        self.check_model()?;
        self.decoder().decode(codes)
    }

    /// [`Pvq::decode`] into `out`, which must hold `codes.len() * d / m` floats; everything
    /// is checked before anything is written.
    pub fn decode_into<C: Code>(&self, codes: &[C], out: &mut [f32]) -> Result<()> {
        self.check_model()?;
        self.decoder().decode_into(codes, out)
    }

    fn decoder(&self) -> Decoder<'_> {
        Decoder::copies("codebooks", &self.codebooks, (self.m, self.k, self.dsub()))
    }

    pub fn to_file(&self, cfg: Option<&PvqConfig>) -> TensorFile {
        let mut f = TensorFile::new("pvq");
        f.set("d", self.d);
        f.set("m", self.m);
        f.set("k", self.k);
        if let Some(c) = cfg {
            f.set("vqkit.config", serde_json::to_string(c).unwrap_or_default());
        }
        f.put(
            "codebooks",
            vec![self.m, self.k, self.dsub()],
            self.codebooks.clone(),
        );
        f
    }

    pub fn from_file(f: &TensorFile) -> Result<Self> {
        let d: usize = f.get("d")?;
        let m: usize = f.get("m")?;
        let k: usize = f.get("k")?;
        if d == 0 || k == 0 || m == 0 || !d.is_multiple_of(m) {
            return Err(f.err("d, m and k must be positive and m must divide d"));
        }
        let codebooks = f.tensor("codebooks", &[m, k, d / m])?.to_vec();
        Ok(Pvq { d, m, k, codebooks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{CacheSizes, CpuBackend, block_rows};
    use crate::quant::test_support::{cpu_backends, same_errors};
    use crate::rng::Rng;

    fn model(d: usize, m: usize, k: usize, seed: u64) -> Pvq {
        Pvq {
            d,
            m,
            k,
            codebooks: Rng::new(seed).normal_vec(k * d),
        }
    }

    /// The blocked host encoder gives the codes of one search per sub-space, bit for bit, on
    /// every instruction set and thread count: sub-vectors of every fixed-size copy (1, 2,
    /// 4, 8, 16 floats) and others (3, 17, 32), codebooks that take the narrow, tall, few,
    /// cols and tiled kernels, and row counts around the blocks' edges (a last block of
    /// one row against 256 codewords of 32 takes the cols kernel, the whole search not).
    #[test]
    fn blocked_codes_are_those_of_each_sub_space() {
        let l2 = CacheSizes::detect().l2;
        let shapes = [
            (6, 6, 3),
            (8, 4, 16),
            (8, 1, 256),
            (12, 4, 5),
            (16, 4, 256),
            (128, 64, 16),
            (128, 16, 256),
            (34, 2, 300),
            (64, 2, 4096),
            (32, 2, 16),
            (128, 4, 256),
        ];
        for (i, &(d, m, k)) in shapes.iter().enumerate() {
            let pq = model(d, m, k, i as u64);
            let block = block_rows(l2, d);
            for n in [0, 1, 63, 64, 65, block - 1, block + 1, 2 * block + 5] {
                if n * k * d > 1 << 26 {
                    continue;
                }
                let x = Rng::new(100 + n as u64).normal_vec(n * d);
                for b in cpu_backends() {
                    // Bit for bit on each instruction set: scores fold or not by ISA.
                    let want = pq.encode_each(&b, &x, n).unwrap();
                    let got = pq.encode(&b, &x).unwrap();
                    assert_eq!(
                        got,
                        want,
                        "d {d} m {m} k {k} n {n} {} {}",
                        b.isa().as_str(),
                        b.threads()
                    );
                }
            }
        }
    }

    fn errors(pq: &Pvq, x: &[f32]) -> Vec<String> {
        let each = |b: &CpuBackend| pq.encode_each(b, x, x.len() / pq.d);
        same_errors(x, |b| pq.encode(b, x), each)
    }

    /// The first error of the searches per sub-space, in their order: a NaN or an infinity
    /// in the points first, then by sub-space a bad codebook or the first row whose
    /// distance overflows, whichever block it falls in.
    #[test]
    fn blocked_errors_are_the_first_of_each_sub_space() {
        let (d, m, k) = (8, 4, 16);
        let n = 3 * 4096 + 7;
        let x = Rng::new(3).normal_vec(n * d);
        // An overflow in sub-space 1 in the first block, and in sub-space 0 in the last.
        let mut big = x.clone();
        big[10 * d + 2] = 1e30;
        big[(n - 2) * d] = 1e30;
        let pq = model(d, m, k, 7);
        assert_eq!(
            errors(&pq, &big),
            [Error::Overflow { row: n - 2 }.to_string()]
        );
        // Two in one block: sub-space 0's, at a later row, comes first.
        let mut two = big.clone();
        two[20 * d] = 1e30;
        assert_eq!(errors(&pq, &two), [Error::Overflow { row: 20 }.to_string()]);
        // A NaN point comes first, wherever it is.
        let mut nan = big.clone();
        nan[(n - 1) * d + 7] = f32::NAN;
        let e = errors(&pq, &nan);
        assert!(e.len() == 1 && e[0].contains("points"), "{e:?}");
        let mut inf = x.clone();
        inf[5 * d + 3] = f32::INFINITY;
        assert!(errors(&pq, &inf)[0].contains(&format!("index {}", 5 * d + 3)));
        // A bad codebook in sub-space 2: after the overflows of 0 and 1, before that of 3.
        let mut bad = model(d, m, k, 7);
        bad.codebooks[2 * k * 2 + 5] = f32::NAN;
        bad.codebooks[3 * k * 2 + 9] = f32::NAN;
        assert_eq!(
            errors(&bad, &big),
            [Error::Overflow { row: n - 2 }.to_string()]
        );
        let mut late = x.clone();
        late[4 * d + 7] = 1e30;
        let e = errors(&bad, &late);
        assert!(e.len() == 1 && e[0].contains("codebook"), "{e:?}");
        // The first bad codebook's, sub-space 2's (index 5 of it), not sub-space 3's.
        assert!(e[0].contains("index 5"), "{e:?}");
        // A model whose fields disagree is an error, not a panic.
        let short = Pvq {
            codebooks: vec![0.0; 5],
            ..model(d, m, k, 1)
        };
        for b in cpu_backends() {
            assert!(short.encode(&b, &x).is_err());
        }
        let ragged = Pvq {
            m: 3,
            ..model(d, m, k, 1)
        };
        assert!(ragged.encode(&cpu_backends()[0], &x).is_err());
    }
}

#[cfg(test)]
mod decode_tests {
    use super::*;
    use crate::rng::Rng;

    /// The blocked decoder against a copy per code, for every fixed-size width and others,
    /// rows around the blocks' edges and a last row of fewer than m codes.
    #[test]
    fn decode_copies_each_codeword() {
        for (d, m, k) in [
            (6, 6, 3),
            (8, 4, 16),
            (16, 2, 5),
            (32, 2, 7),
            (24, 8, 9),
            (34, 2, 300),
        ] {
            let ds = d / m;
            let pq = Pvq {
                d,
                m,
                k,
                codebooks: Rng::new(d as u64).normal_vec(m * k * ds),
            };
            for n in [0, 1, DECODE_ROWS - 1, DECODE_ROWS + 1, 2 * DECODE_ROWS + 3] {
                let mut rng = Rng::new(n as u64);
                let len = (n * m).saturating_sub(usize::from(n > 0));
                let codes: Vec<u32> = (0..len)
                    .map(|_| (rng.uniform() * k as f64) as u32)
                    .collect();
                let mut want = vec![];
                for (i, &c) in codes.iter().enumerate() {
                    want.extend_from_slice(&pq.codebook(i % m)[c as usize * ds..][..ds]);
                }
                assert_eq!(pq.decode(&codes).unwrap(), want, "d {d} m {m} n {n}");
            }
        }
        let pq = Pvq {
            d: 4,
            m: 2,
            k: 2,
            codebooks: vec![0.0; 4],
        };
        assert!(pq.decode(&[0u32, 2]).is_err());
        assert!(Pvq { m: 3, ..pq.clone() }.decode(&[0u32]).is_err());
        assert!(
            Pvq {
                codebooks: vec![0.0; 3],
                ..pq
            }
            .decode(&[0u32])
            .is_err()
        );
    }
}
