//! Any trained model, as read from a file: one interface for `encode` and `decode`.

use super::Decoder;
use super::avq::Avq;
use super::kmeans::KMeans;
use super::model_io::TensorFile;
use super::pvq::Pvq;
use super::rvq::Rvq;
use super::vq::VectorQuantizer;
use crate::backend::cpu::size;
use crate::backend::{Backend, Code, check_code_type, check_len, narrow_codes};
use crate::error::{Error, Result};
use std::path::Path;

/// A trained quantizer of any kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Model {
    KMeans(KMeans),
    Rvq(Rvq),
    Pvq(Pvq),
    Avq(Avq),
    /// A VQ-VAE layer's codebook (encode: nearest code under its distance).
    Vq(Box<VectorQuantizer>),
}

impl Model {
    /// The kind written to `vqkit.kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Model::KMeans(_) => "kmeans",
            Model::Rvq(_) => "rvq",
            Model::Pvq(_) => "pvq",
            Model::Avq(_) => "avq",
            Model::Vq(_) => "vq",
        }
    }

    /// The vector dimension the model quantizes.
    pub fn d(&self) -> usize {
        match self {
            Model::KMeans(m) => m.d,
            Model::Rvq(m) => m.d,
            Model::Pvq(m) => m.d,
            Model::Avq(m) => m.d,
            Model::Vq(m) => m.cfg.d,
        }
    }

    /// Codes per vector, and the codebook size each code indexes.
    pub fn code_shape(&self) -> (usize, usize) {
        match self {
            Model::KMeans(m) => (1, m.k()),
            Model::Rvq(m) => (m.stages, m.k),
            Model::Pvq(m) => (m.m, m.k),
            Model::Avq(m) => (m.m, m.k),
            Model::Vq(m) => (1, m.cfg.k),
        }
    }

    /// Codes of `x` (n, d) as an (n, width) row-major array. `beam` overrides the beam width
    /// of the models that search (RVQ, AVQ); others ignore it.
    pub fn encode<B: Backend>(&self, b: &B, x: &[f32], beam: Option<usize>) -> Result<Vec<u32>> {
        match self {
            Model::KMeans(m) => Ok(m.assign(b, x)?.indices),
            Model::Rvq(m) => m.encode(b, x, beam.unwrap_or(m.beam)),
            Model::Pvq(m) => m.encode(b, x),
            Model::Avq(m) => m.encode(x, beam.unwrap_or(m.beam)),
            Model::Vq(m) => m.encode(b, x),
        }
    }

    /// [`Model::encode`] into `out`: n x width codes of type `C`, which must hold the
    /// codebook's indices (`u8` up to 256 codewords). The points' shape, the codes' length
    /// and their type are checked before anything is written (PQ and RQ: see
    /// [`Pvq::encode_into`], [`Rvq::encode_into`]); after an error from the values of the
    /// points or the codebooks `out`'s contents are unspecified. On the CPU, PQ's codes and
    /// greedy RQ's are written in `C` as they are found; the others are found as `u32` and
    /// then narrowed (an error, before anything is written, for a code `C` does not hold).
    pub fn encode_into<B: Backend, C: Code>(
        &self,
        b: &B,
        x: &[f32],
        beam: Option<usize>,
        out: &mut [C],
    ) -> Result<()> {
        match self {
            Model::Rvq(m) => m.encode_into(b, x, beam.unwrap_or(m.beam), out),
            Model::Pvq(m) => m.encode_into(b, x, out),
            _ => {
                let (width, k) = self.code_shape();
                let n = crate::ops::rows("points", x, self.d())?;
                check_len("codes", out.len(), size("codes", &[n, width])?)?;
                check_code_type::<C>(k)?;
                narrow_codes(&self.encode(b, x, beam)?, out)
            }
        }
    }

    /// Reconstructions (n, d) from codes (n, width), row-major.
    pub fn decode<C: Code>(&self, codes: &[C]) -> Result<Vec<f32>> {
        self.check_width(codes)?;
        match self {
            Model::KMeans(m) => kmeans_decoder(m).decode(codes),
            Model::Rvq(m) => m.decode(codes),
            Model::Pvq(m) => m.decode(codes),
            Model::Avq(m) => m.decode(codes),
            Model::Vq(m) => m.decode(codes),
        }
    }

    /// [`Model::decode`] into `out`, which must hold n x d floats; everything is checked
    /// before anything is written. For callers that decode batch after batch: a fresh
    /// output's pages are zeroed by the kernel when first written, which can cost as much
    /// as the decoding (docs/performance.md).
    pub fn decode_into<C: Code>(&self, codes: &[C], out: &mut [f32]) -> Result<()> {
        self.check_width(codes)?;
        match self {
            Model::KMeans(m) => kmeans_decoder(m).decode_into(codes, out),
            Model::Rvq(m) => m.decode_into(codes, out),
            Model::Pvq(m) => m.decode_into(codes, out),
            Model::Avq(m) => m.decode_into(codes, out),
            Model::Vq(m) => m.decode_into(codes, out),
        }
    }

    /// Whole rows of codes.
    fn check_width<C: Code>(&self, codes: &[C]) -> Result<()> {
        let (width, _) = self.code_shape();
        if !codes.len().is_multiple_of(width) {
            return Err(Error::invalid(
                "codes",
                format!(
                    "{} codes do not make rows of {width} (codes per vector of this model)",
                    codes.len()
                ),
            ));
        }
        Ok(())
    }

    pub fn to_file(&self) -> TensorFile {
        match self {
            Model::KMeans(m) => m.to_file(None),
            Model::Rvq(m) => m.to_file(None),
            Model::Pvq(m) => m.to_file(None),
            Model::Avq(m) => m.to_file(None),
            Model::Vq(m) => m.to_file(),
        }
    }

    pub fn from_file(f: &TensorFile) -> Result<Self> {
        match f.kind()? {
            "kmeans" => Ok(Model::KMeans(KMeans::from_file(f)?)),
            "rvq" => Ok(Model::Rvq(Rvq::from_file(f)?)),
            "pvq" => Ok(Model::Pvq(Pvq::from_file(f)?)),
            "avq" => Ok(Model::Avq(Avq::from_file(f)?)),
            "vq" => Ok(Model::Vq(Box::new(VectorQuantizer::from_file(f)?))),
            other => Err(f.err(format!("unknown model kind `{other}`"))),
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        Self::from_file(&TensorFile::read(path)?)
    }

    /// Errors unless `d` is the model's dimension.
    pub fn check_dim(&self, d: usize) -> Result<()> {
        if d != self.d() {
            return Err(Error::WrongDimension {
                expected: self.d(),
                got: d,
            });
        }
        Ok(())
    }
}

/// A k-means model's codes decoded: each code's centroid.
fn kmeans_decoder(m: &KMeans) -> Decoder<'_> {
    Decoder::copies("centroids", &m.centroids, (1, m.k(), m.d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{CpuBackend, DECODE_ROWS};
    use crate::quant::test_support::cpu_backends;
    use crate::quant::vq::VqConfig;
    use crate::rng::Rng;

    /// One model of each kind, d = 6, k = 5, with random codebooks.
    fn models() -> Vec<Model> {
        let (d, k) = (6, 5);
        let mut rng = Rng::new(3);
        let mut vq = VectorQuantizer::new(VqConfig::new(k, d)).unwrap();
        vq.codebook = rng.normal_vec(k * d);
        vec![
            Model::KMeans(KMeans::from_centroids(rng.normal_vec(k * d), d).unwrap()),
            Model::Rvq(Rvq {
                d,
                k,
                stages: 3,
                shared: false,
                beam: 1,
                codebooks: rng.normal_vec(3 * k * d),
            }),
            Model::Pvq(Pvq {
                d,
                m: 3,
                k,
                codebooks: rng.normal_vec(3 * k * 2),
            }),
            Model::Avq(Avq {
                d,
                m: 2,
                k,
                beam: 1,
                codebooks: rng.normal_vec(2 * k * d),
            }),
            Model::Vq(Box::new(vq)),
        ]
    }

    /// Row by row: each code's codeword, summed from zero in code order (RQ, AQ) or laid
    /// side by side (PQ).
    fn reference(model: &Model, codes: &[u32]) -> Vec<f32> {
        let (w, _) = model.code_shape();
        let d = model.d();
        let word = |book: &[f32], j: u32, len: usize| book[j as usize * len..][..len].to_vec();
        codes
            .chunks(w.max(1))
            .flat_map(|c| match model {
                Model::KMeans(m) => word(&m.centroids, c[0], d),
                Model::Vq(m) => word(&m.codebook, c[0], d),
                Model::Pvq(m) => (0..w)
                    .flat_map(|s| word(m.codebook(s), c[s], m.dsub()))
                    .collect(),
                Model::Rvq(_) | Model::Avq(_) => {
                    let book = |s: usize| match model {
                        Model::Rvq(m) => m.codebook(s).to_vec(),
                        Model::Avq(m) => m.codebook(s).to_vec(),
                        _ => unreachable!(),
                    };
                    let mut row = vec![0.0f32; d];
                    for (s, &j) in c.iter().enumerate() {
                        for (a, b) in row.iter_mut().zip(word(&book(s), j, d)) {
                            *a += b;
                        }
                    }
                    row
                }
            })
            .collect()
    }

    /// `encode_into` in u8, u16 and u32 gives `encode`'s codes for every kind of model, on
    /// every CPU backend (ISA and 1 or 2 threads), greedy and with a beam, rows around the
    /// blocked encoders' blocks and the largest codebook each type holds; it refuses a
    /// type too narrow for the codebook and an output of the wrong length, leaving the
    /// output as it was, and gives `encode`'s error for a NaN in the points.
    #[test]
    fn encode_into_writes_each_code_type() {
        fn same<C: Code + Into<u32>>(b: &CpuBackend, m: &Model, x: &[f32], beam: Option<usize>) {
            let want = m.encode(b, x, beam).unwrap();
            let mut got = vec![C::default(); want.len()];
            m.encode_into(b, x, beam, &mut got).unwrap();
            let got: Vec<u32> = got.into_iter().map(Into::into).collect();
            assert_eq!(got, want, "{} {} {beam:?} {}", m.kind(), C::NAME, x.len());
        }
        fn refused<C: Code + PartialEq>(b: &CpuBackend, m: &Model, x: &[f32], len: usize) {
            let mut out = vec![C::narrow(1); len];
            assert!(
                m.encode_into(b, x, None, &mut out).is_err(),
                "{} {}",
                m.kind(),
                C::NAME
            );
            assert!(
                out.iter().all(|&c| c == C::narrow(1)),
                "{} {}",
                m.kind(),
                C::NAME
            );
        }
        let mut rng = Rng::new(9);
        let mut all = models();
        // PQ and greedy RQ write the codes in their type: codebooks of 256 codewords fill
        // u8, 257 and 300 need u16.
        for k in [256, 257, 300] {
            let codebooks = rng.normal_vec(2 * k * 4);
            all.push(Model::Pvq(Pvq {
                d: 8,
                m: 2,
                k,
                codebooks: codebooks.clone(),
            }));
            let (shared, beam) = (false, 1);
            all.push(Model::Rvq(Rvq {
                d: 4,
                k,
                stages: 2,
                shared,
                beam,
                codebooks,
            }));
        }
        // The models that narrow u32 codes, past u8.
        let centroids = rng.normal_vec(257 * 4);
        all.push(Model::KMeans(KMeans::from_centroids(centroids, 4).unwrap()));
        let codebooks = rng.normal_vec(2 * 300 * 4);
        all.push(Model::Avq(Avq {
            d: 4,
            m: 2,
            k: 300,
            beam: 1,
            codebooks,
        }));
        for b in cpu_backends() {
            for m in &all {
                let (w, k) = m.code_shape();
                let d = m.d();
                for n in [0, 1, 4099] {
                    let x = rng.normal_vec(n * d);
                    for beam in [None, Some(2)] {
                        if k <= 256 {
                            same::<u8>(&b, m, &x, beam);
                        }
                        same::<u16>(&b, m, &x, beam);
                        same::<u32>(&b, m, &x, beam);
                    }
                }
                let x = rng.normal_vec(3 * d);
                refused::<u32>(&b, m, &x, 3 * w - 1);
                refused::<u32>(&b, m, &x, 3 * w + 1);
                refused::<u16>(&b, m, &x[..3 * d - 1], 3 * w);
                if k > 256 {
                    refused::<u8>(&b, m, &x, 3 * w);
                }
                let mut bad = x.clone();
                bad[d + 1] = f32::NAN;
                let want = m.encode(&b, &bad, None).unwrap_err().to_string();
                let mut out = vec![0u16; 3 * w];
                let got = m.encode_into(&b, &bad, None, &mut out).unwrap_err();
                assert_eq!(got.to_string(), want, "{}", m.kind());
            }
        }
        // A VQ layer whose codebook has more rows than its k: codes past u8 are refused,
        // not truncated, and nothing is written.
        let (d, k) = (4, 5);
        let mut vq = VectorQuantizer::new(VqConfig::new(k, d)).unwrap();
        vq.codebook = rng.normal_vec(300 * d);
        let x = vq.codebook[280 * d..283 * d].to_vec();
        let model = Model::Vq(Box::new(vq));
        let b = CpuBackend::new(Some(1)).unwrap();
        assert_eq!(model.encode(&b, &x, None).unwrap(), [280, 281, 282]);
        let mut out = [7u8; 3];
        let e = model
            .encode_into(&b, &x, None, &mut out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("code 280 at 0 does not fit u8 codes"), "{e}");
        assert_eq!(out, [7; 3]);
    }

    /// `decode` and `decode_into` give the reference's bits for every kind of model, from
    /// u32, u16 and u8 codes, rows around the decoders' blocks; `decode_into` refuses an
    /// output of the wrong length, a code out of range and a partial row, and leaves the
    /// output as it was.
    #[test]
    fn decode_into_is_decode_and_checks_first() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for model in models() {
            let (w, k) = model.code_shape();
            let (d, kind) = (model.d(), model.kind());
            for n in [0, 1, DECODE_ROWS + 1, 3 * DECODE_ROWS] {
                let mut rng = Rng::new(n as u64);
                let codes: Vec<u32> = (0..n * w)
                    .map(|_| (rng.uniform() * k as f64) as u32)
                    .collect();
                let want = reference(&model, &codes);
                assert_eq!(want.len(), n * d);
                assert_eq!(
                    bits(&model.decode(&codes).unwrap()),
                    bits(&want),
                    "{kind} n {n}"
                );
                let mut got = vec![f32::NAN; n * d];
                model.decode_into(&codes, &mut got).unwrap();
                assert_eq!(bits(&got), bits(&want), "{kind} n {n}");
                // Narrow codes, read as they are.
                let narrow: Vec<u8> = codes.iter().map(|&c| c as u8).collect();
                assert_eq!(
                    bits(&model.decode(&narrow).unwrap()),
                    bits(&want),
                    "{kind} n {n}"
                );
                let narrow: Vec<u16> = codes.iter().map(|&c| c as u16).collect();
                let mut got = vec![f32::NAN; n * d];
                model.decode_into(&narrow, &mut got).unwrap();
                assert_eq!(bits(&got), bits(&want), "{kind} n {n}");
            }
            let codes = vec![1u32; 2 * w];
            let mut out_of_range = codes.clone();
            out_of_range[2 * w - 1] = k as u32;
            let bad: [(&[u32], usize); 4] = [
                (&codes, 2 * d - 1),
                (&codes, 2 * d + 1),
                (&out_of_range, 2 * d),
                (&codes[..2 * w - 1], 2 * d),
            ];
            for (i, (c, len)) in bad.into_iter().enumerate() {
                let mut out = vec![7.0f32; len];
                assert!(model.decode_into(c, &mut out).is_err(), "{kind} case {i}");
                assert!(out.iter().all(|&v| v == 7.0), "{kind} case {i}");
                let c: Vec<u8> = c.iter().map(|&c| c as u8).collect();
                assert!(
                    model.decode_into(&c, &mut out).is_err(),
                    "{kind} case {i} u8"
                );
                assert!(out.iter().all(|&v| v == 7.0), "{kind} case {i} u8");
            }
            // The error names the code as it was given.
            let e = model.decode(&[k as u8; 8][..w]).unwrap_err().to_string();
            assert!(e.contains(&format!("code {k} ")), "{kind}: {e}");
        }
        // Codes past u8, read as u16, in models whose codebooks have 300 codewords.
        let mut rng = Rng::new(5);
        let codebooks = rng.normal_vec(2 * 300 * 3);
        let pq = Pvq {
            d: 6,
            m: 2,
            k: 300,
            codebooks: codebooks.clone(),
        };
        let rq = Rvq {
            d: 3,
            k: 300,
            stages: 2,
            shared: false,
            beam: 1,
            codebooks,
        };
        for model in [Model::Pvq(pq), Model::Rvq(rq)] {
            let wide: Vec<u32> = (0..600).map(|i| (i * 7 + 3) % 300).collect();
            let narrow: Vec<u16> = wide.iter().map(|&c| c as u16).collect();
            let want = reference(&model, &wide);
            assert_eq!(bits(&model.decode(&narrow).unwrap()), bits(&want));
            assert!(model.decode(&[300u16, 0]).is_err());
        }
    }
}
