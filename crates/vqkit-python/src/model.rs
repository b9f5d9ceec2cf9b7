//! Trained quantizers as one Python class, `vqkit._vqkit.Model`, over
//! [`vqkit::quant::model::Model`]: the same safetensors files as the CLI (`vqkit rq-kmeans
//! -o m.safetensors` loads here, and `.save` here writes what `vqkit encode` reads).

use crate::{AnyBackend, Job, VqkitError, codes_u32, matrix, on_backend, to_py};
use numpy::prelude::*;
use numpy::{PyArray1, PyArray2, PyArray3, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use vqkit::Backend;
use vqkit::Choice;
use vqkit::quant::avq::{Avq, AvqConfig};
use vqkit::quant::kmeans::{Init, KMeans};
use vqkit::quant::model::Model;
use vqkit::quant::nsvq::{self, NsvqConfig, NsvqMethod, Trained};
use vqkit::quant::pvq::{Pvq, PvqConfig};
use vqkit::quant::rvq::{Rvq, RvqConfig};
use vqkit::quant::sums::{RowSums, sq_diff};
use vqkit::quant::{code_stats, mean_sq_norm};

/// Work on models that needs a backend.
pub(crate) enum ModelJob<'a> {
    Rvq(&'a [f32], usize, RvqConfig),
    Pvq(&'a [f32], usize, PvqConfig),
    Avq(&'a [f32], usize, AvqConfig),
    Nsvq(&'a [f32], usize, NsvqConfig),
    Encode(&'a Model, &'a [f32], Option<usize>, CodesOut<'a>),
}

/// Where `ModelJob::Encode` writes its codes: a NumPy array's memory, of the width the
/// package returns.
pub(crate) enum CodesOut<'a> {
    U8(&'a mut [u8]),
    U16(&'a mut [u16]),
    U32(&'a mut [u32]),
}

/// The code types the package returns, each with its [`CodesOut`].
pub(crate) trait PyCode: vqkit::Code + numpy::Element {
    fn out(codes: &mut [Self]) -> CodesOut<'_>;
}

macro_rules! py_code {
    ($t:ty, $variant:ident) => {
        impl PyCode for $t {
            fn out(codes: &mut [$t]) -> CodesOut<'_> {
                CodesOut::$variant(codes)
            }
        }
    };
}

py_code!(u8, U8);
py_code!(u16, U16);
py_code!(u32, U32);

fn slice_err(e: numpy::AsSliceError) -> PyErr {
    VqkitError::new_err(format!("codes: {e}"))
}

pub(crate) enum ModelOut {
    Model(Model, Vec<f64>),
    Encoded,
}

impl ModelJob<'_> {
    pub(crate) fn run<B: Backend>(self, b: &B) -> vqkit::Result<ModelOut> {
        Ok(match self {
            ModelJob::Rvq(x, d, cfg) => {
                ModelOut::Model(Model::Rvq(Rvq::fit(b, x, d, &cfg, &mut |_| {})?), vec![])
            }
            ModelJob::Pvq(x, d, cfg) => {
                ModelOut::Model(Model::Pvq(Pvq::fit(b, x, d, &cfg, &mut |_| {})?), vec![])
            }
            ModelJob::Avq(x, d, cfg) => {
                let mut rounds = Vec::new();
                let m = Avq::fit(b, x, d, &cfg, &mut |_, e| rounds.push(e))?;
                ModelOut::Model(Model::Avq(m), rounds)
            }
            ModelJob::Nsvq(x, d, cfg) => {
                let mut epochs = Vec::new();
                let m = nsvq::train(b, x, d, &cfg, &mut |_, e| epochs.push(e))?;
                let m = match m {
                    Trained::Rvq(r) => Model::Rvq(r),
                    Trained::Pvq(p) => Model::Pvq(p),
                    Trained::Avq(a) => Model::Avq(a),
                };
                ModelOut::Model(m, epochs)
            }
            ModelJob::Encode(m, x, beam, out) => {
                match out {
                    CodesOut::U8(o) => m.encode_into(b, x, beam, o)?,
                    CodesOut::U16(o) => m.encode_into(b, x, beam, o)?,
                    CodesOut::U32(o) => m.encode_into(b, x, beam, o)?,
                }
                ModelOut::Encoded
            }
        })
    }
}

/// A trained quantizer (k-means, residual, product, additive; from vqkit's Python classes,
/// NSVQ, or a file the CLI wrote). Codes are (n, width) arrays of indices below `k`.
#[pyclass(name = "Model", module = "vqkit._vqkit", frozen)]
pub struct PyModel {
    model: Model,
    /// The training hyper-parameters, saved as the CLI saves them (`vqkit.config`).
    config: Option<String>,
}

fn fitted(py: Python<'_>, backend: &str, job: ModelJob<'_>) -> PyResult<(Model, Vec<f64>)> {
    match on_backend(py, backend, Job(move |b: &dyn AnyBackend| b.model(job)))? {
        ModelOut::Model(m, log) => Ok((m, log)),
        ModelOut::Encoded => Err(VqkitError::new_err("internal: a fit returned codes")),
    }
}

fn init(name: &str) -> PyResult<Init> {
    Init::from_name(name).map_err(to_py)
}

fn config(c: &impl serde::Serialize) -> Option<String> {
    serde_json::to_string(c).ok()
}

/// Residual quantizer (RQ-K-means): `stages` codebooks of `k` codewords.
#[pyfunction]
#[pyo3(signature = (x, stages, k, niter, seed, beam, shared, init_name, max_points_per_centroid, backend))]
#[allow(clippy::too_many_arguments)]
fn rq_fit(
    py: Python<'_>,
    x: PyReadonlyArray2<'_, f32>,
    stages: usize,
    k: usize,
    niter: usize,
    seed: u64,
    beam: usize,
    shared: bool,
    init_name: &str,
    max_points_per_centroid: usize,
    backend: &str,
) -> PyResult<PyModel> {
    let (xs, _, d) = matrix("x", &x)?;
    let cfg = RvqConfig {
        iters: niter,
        seed,
        beam,
        shared,
        init: init(init_name)?,
        max_points_per_centroid,
        ..RvqConfig::new(stages, k)
    };
    let config = config(&cfg);
    let (model, _) = fitted(py, backend, ModelJob::Rvq(xs, d, cfg))?;
    Ok(PyModel { model, config })
}

/// Product quantizer: `m` sub-spaces of `d / m` dimensions, `k` codewords each.
#[pyfunction]
#[pyo3(signature = (x, m, k, niter, seed, init_name, max_points_per_centroid, backend))]
#[allow(clippy::too_many_arguments)]
fn pq_fit(
    py: Python<'_>,
    x: PyReadonlyArray2<'_, f32>,
    m: usize,
    k: usize,
    niter: usize,
    seed: u64,
    init_name: &str,
    max_points_per_centroid: usize,
    backend: &str,
) -> PyResult<PyModel> {
    let (xs, _, d) = matrix("x", &x)?;
    let cfg = PvqConfig {
        iters: niter,
        seed,
        init: init(init_name)?,
        max_points_per_centroid,
        ..PvqConfig::new(m, k)
    };
    let config = config(&cfg);
    let (model, _) = fitted(py, backend, ModelJob::Pvq(xs, d, cfg))?;
    Ok(PyModel { model, config })
}

/// Additive quantizer: RQ-K-means start, then beam encoding and least squares; returns the
/// model and the training error after each round.
#[pyfunction]
#[pyo3(signature = (x, m, k, beam, niter, seed, ls_rounds, init_name, max_points_per_centroid, backend))]
#[allow(clippy::too_many_arguments)]
fn aq_fit(
    py: Python<'_>,
    x: PyReadonlyArray2<'_, f32>,
    m: usize,
    k: usize,
    beam: usize,
    niter: usize,
    seed: u64,
    ls_rounds: usize,
    init_name: &str,
    max_points_per_centroid: usize,
    backend: &str,
) -> PyResult<(PyModel, Vec<f64>)> {
    let (xs, _, d) = matrix("x", &x)?;
    let cfg = AvqConfig {
        beam,
        iters: niter,
        seed,
        ls_rounds,
        init: init(init_name)?,
        max_points_per_centroid,
        ..AvqConfig::new(m, k)
    };
    let config = config(&cfg);
    let (model, rounds) = fitted(py, backend, ModelJob::Avq(xs, d, cfg))?;
    Ok((PyModel { model, config }, rounds))
}

/// NSVQ training (noise substitution): the model and the training MSE after each epoch.
#[pyfunction]
#[pyo3(signature = (x, method, stages, k, epochs, batch, lr, seed, beam, init_iters, replace, backend))]
#[allow(clippy::too_many_arguments)]
fn nsvq_fit(
    py: Python<'_>,
    x: PyReadonlyArray2<'_, f32>,
    method: &str,
    stages: usize,
    k: usize,
    epochs: usize,
    batch: usize,
    lr: f32,
    seed: u64,
    beam: usize,
    init_iters: usize,
    replace: Option<(f32, usize)>,
    backend: &str,
) -> PyResult<(PyModel, Vec<f64>)> {
    let (xs, _, d) = matrix("x", &x)?;
    let cfg = NsvqConfig {
        epochs,
        batch,
        lr,
        seed,
        beam,
        init_iters,
        replace,
        ..NsvqConfig::new(NsvqMethod::from_name(method).map_err(to_py)?, stages, k)
    };
    let config = config(&cfg);
    let (model, epochs) = fitted(py, backend, ModelJob::Nsvq(xs, d, cfg))?;
    Ok((PyModel { model, config }, epochs))
}

/// A k-means model over given centroids (k, d), for saving.
#[pyfunction]
fn kmeans_model(centroids: PyReadonlyArray2<'_, f32>) -> PyResult<PyModel> {
    let (c, _, d) = matrix("centroids", &centroids)?;
    let m = KMeans::from_centroids(c.to_vec(), d).map_err(to_py)?;
    Ok(PyModel {
        model: Model::KMeans(m),
        config: None,
    })
}

/// A greedy residual quantizer over given codebooks (stages, k, d), for saving (the Dask
/// RQ trains its codebooks itself).
#[pyfunction]
fn rvq_model(codebooks: numpy::PyReadonlyArray3<'_, f32>) -> PyResult<PyModel> {
    let [stages, k, d] = [
        codebooks.shape()[0],
        codebooks.shape()[1],
        codebooks.shape()[2],
    ];
    if stages == 0 || k == 0 || d == 0 {
        return Err(VqkitError::new_err(format!(
            "codebooks must have a positive shape (stages, k, d); got ({stages}, {k}, {d})"
        )));
    }
    if !codebooks.is_c_contiguous() {
        return Err(VqkitError::new_err("codebooks must be C-contiguous"));
    }
    let c = codebooks
        .as_slice()
        .map_err(|e| VqkitError::new_err(format!("codebooks: {e}")))?;
    vqkit::ops::check_finite("codebooks", c).map_err(to_py)?;
    Ok(PyModel {
        model: Model::Rvq(Rvq {
            d,
            k,
            stages,
            shared: false,
            beam: 1,
            codebooks: c.to_vec(),
        }),
        config: None,
    })
}

/// Reads a model file written by `.save` or by the CLI.
#[pyfunction]
fn load(py: Python<'_>, path: PathBuf) -> PyResult<PyModel> {
    let model = py.detach(|| Model::load(&path)).map_err(to_py)?;
    Ok(PyModel {
        model,
        config: None,
    })
}

/// Error and code use after each stage (RQ, AQ: cumulative; PQ: per sub-space).
fn stage_stats(model: &Model, x: &[f32], codes: &[u32]) -> Vec<(f64, f64, f64)> {
    let (w, k) = model.code_shape();
    let d = model.d();
    let n = codes.len() / w.max(1);
    let column = |s: usize| -> Vec<u32> { (0..n).map(|i| codes[i * w + s]).collect() };
    let mut out = Vec::with_capacity(w);
    match model {
        Model::Rvq(_) | Model::Avq(_) | Model::KMeans(_) | Model::Vq(_) => {
            let mut r = x.to_vec();
            for s in 0..w {
                let cb = match model {
                    Model::Rvq(m) => m.codebook(s),
                    Model::Avq(m) => m.codebook(s),
                    Model::KMeans(m) => &m.centroids,
                    Model::Vq(m) => &m.codebook,
                    Model::Pvq(_) => unreachable!(),
                };
                let col = column(s);
                for (row, &c) in r.chunks_exact_mut(d).zip(&col) {
                    for (v, &q) in row
                        .iter_mut()
                        .zip(&cb[c as usize * d..(c as usize + 1) * d])
                    {
                        *v -= q;
                    }
                }
                let (perp, usage) = code_stats(&col, k);
                out.push((mean_sq_norm(&r, d), perp, usage));
            }
        }
        Model::Pvq(p) => {
            let ds = p.dsub();
            for s in 0..w {
                let cb = p.codebook(s);
                let col = column(s);
                let mut err = RowSums::new();
                err.add_rows(n, |i| {
                    let c = col[i] as usize;
                    sq_diff(&x[i * d + s * ds..][..ds], &cb[c * ds..][..ds])
                });
                let err = err.total() / n.max(1) as f64;
                let (perp, usage) = code_stats(&col, k);
                out.push((err, perp, usage));
            }
        }
    }
    out
}

impl PyModel {
    /// The rows of codes of `shape`, after checking their order and width.
    fn code_rows(&self, shape: &[usize], c_order: bool) -> PyResult<usize> {
        let w = self.model.code_shape().0;
        // `as_slice` takes Fortran order too, and would read the codes transposed.
        if !c_order {
            return Err(VqkitError::new_err(
                "codes must be C-contiguous (vqkit's Python functions convert them; this \
                 is the low-level module)",
            ));
        }
        if shape[1] != w {
            return Err(VqkitError::new_err(format!(
                "codes: expected {w} codes per vector for this {} model, got {}",
                self.model.kind(),
                shape[1]
            )));
        }
        Ok(shape[0])
    }

    /// [`PyModel::decode_codes`] of codes read where they are, without the GIL, as
    /// `matrix` reads points: no other thread may write them during the call.
    fn decode_in_place<'py, C: PyCode>(
        &self,
        py: Python<'py>,
        codes: &PyReadonlyArray2<'py, C>,
        out: Option<&Bound<'py, PyArray2<f32>>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let n = self.code_rows(codes.shape(), codes.is_c_contiguous())?;
        self.decode_codes(py, codes.as_slice().map_err(slice_err)?, n, out)
    }

    /// The reconstructions of `n` rows of codes, into `out` or a fresh array, on a pool of
    /// `set_num_threads`'s size (which the decoders' rayon loops then use). The decoder
    /// checks the codes' range.
    fn decode_codes<'py, C: PyCode>(
        &self,
        py: Python<'py>,
        c: &[C],
        n: usize,
        out: Option<&Bound<'py, PyArray2<f32>>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let (model, d) = (&self.model, self.model.d());
        let Some(o) = out else {
            let v = crate::run::compute(py, move || model.decode(c))?;
            return PyArray1::from_vec(py, v).reshape([n, d]);
        };
        if o.shape() != [n, d] {
            return Err(VqkitError::new_err(format!(
                "out: expected shape ({n}, {d}), got {:?}",
                o.shape()
            )));
        }
        if !o.is_c_contiguous() {
            return Err(VqkitError::new_err("out must be C-contiguous"));
        }
        // numpy's borrow checker refuses a read-only array, and one borrowed elsewhere.
        // Written without the GIL: no other thread may use it meanwhile.
        let mut rw = o
            .try_readwrite()
            .map_err(|e| VqkitError::new_err(format!("out: {e}")))?;
        let s = rw
            .as_slice_mut()
            .map_err(|e| VqkitError::new_err(format!("out: {e}")))?;
        // The borrow checker compares arrays of one base object only; two arrays over the
        // same buffer through different bases (`np.frombuffer` twice) pass it. The
        // decoders would then read codes they are overwriting.
        let (cr, sr) = (c.as_ptr_range(), s.as_ptr_range());
        if (cr.start as usize) < sr.end as usize && (sr.start as usize) < cr.end as usize {
            return Err(VqkitError::new_err("out shares memory with the codes"));
        }
        crate::run::compute(py, move || model.decode_into(c, s))?;
        Ok(o.clone())
    }

    /// The codes of `xs` as a fresh (n, width) array of `C`, written in place by the
    /// encoder without the GIL. The codes are allocated as `vqkit::resources::zeroed_lazy`
    /// allocates (refused with a typed error where they would not fit in memory; pages
    /// the kernel clears as the encoder first writes them) and handed to NumPy as they are.
    fn encode_as<'py, C: PyCode>(
        &self,
        py: Python<'py>,
        xs: &[f32],
        [n, w]: [usize; 2],
        beam: Option<usize>,
        backend: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let len = n.checked_mul(w).ok_or_else(|| {
            VqkitError::new_err(format!("codes: ({n}, {w}) overflow the address space"))
        })?;
        let mut codes = vqkit::resources::zeroed_lazy::<C>("the codes", len).map_err(to_py)?;
        let (model, out) = (&self.model, C::out(&mut codes));
        let job = Job(move |b: &dyn AnyBackend| b.model(ModelJob::Encode(model, xs, beam, out)));
        on_backend(py, backend, job)?;
        Ok(PyArray1::from_vec(py, codes).reshape([n, w])?.into_any())
    }
}

#[pymethods]
impl PyModel {
    /// `kmeans`, `rvq`, `pvq`, `avq` or `vq`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.model.kind()
    }

    /// The vector dimension.
    #[getter]
    fn d(&self) -> usize {
        self.model.d()
    }

    /// `(codes per vector, codewords per codebook)`.
    #[getter]
    fn code_shape(&self) -> (usize, usize) {
        self.model.code_shape()
    }

    /// The codebooks, float32 (codebooks, k, dimension of a codeword).
    #[getter]
    fn codebooks<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray3<f32>>> {
        let (v, shape) = match &self.model {
            Model::KMeans(m) => (m.centroids.clone(), [1, m.k(), m.d]),
            Model::Rvq(m) => (m.codebooks.clone(), [m.stages, m.k, m.d]),
            Model::Pvq(m) => (m.codebooks.clone(), [m.m, m.k, m.dsub()]),
            Model::Avq(m) => (m.codebooks.clone(), [m.m, m.k, m.d]),
            Model::Vq(m) => (m.codebook.clone(), [1, m.cfg.k, m.cfg.d]),
        };
        PyArray1::from_vec(py, v).reshape(shape)
    }

    /// Codes (n, width): uint8 with `code_bytes` 1, uint16 with 2, uint32 with 4 (an error
    /// where the model's codebooks hold more codewords than the type does). `beam`
    /// overrides the searching models' beam width. On the CPU, PQ's and greedy RQ's codes
    /// are written in that type as they are found; the others are found as uint32, then
    /// narrowed.
    #[pyo3(signature = (x, beam = None, backend = "cpu", code_bytes = 4))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f32>,
        beam: Option<usize>,
        backend: &str,
        code_bytes: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (xs, n, d) = matrix("x", &x)?;
        self.model.check_dim(d).map_err(to_py)?;
        let shape = [n, self.model.code_shape().0];
        match code_bytes {
            1 => self.encode_as::<u8>(py, xs, shape, beam, backend),
            2 => self.encode_as::<u16>(py, xs, shape, beam, backend),
            4 => self.encode_as::<u32>(py, xs, shape, beam, backend),
            b => Err(VqkitError::new_err(format!(
                "code_bytes must be 1, 2 or 4, got {b}"
            ))),
        }
    }

    /// Reconstructions (n, d) float32 from codes (n, width): uint8, uint16 or uint32, read
    /// in place (the package passes unsigned codes so), or int64. With `out`, a writable,
    /// C-contiguous float32 array of shape (n, d) that shares no memory with the codes, they
    /// are written there and `out` is returned; it is untouched where the call is refused
    /// (after a KeyboardInterrupt or an internal error its contents are unspecified).
    #[pyo3(signature = (codes, out = None))]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        codes: &Bound<'py, PyAny>,
        out: Option<Bound<'py, PyArray2<f32>>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let out = out.as_ref();
        if let Ok(c) = codes.extract::<PyReadonlyArray2<'py, u8>>() {
            self.decode_in_place(py, &c, out)
        } else if let Ok(c) = codes.extract::<PyReadonlyArray2<'py, u16>>() {
            self.decode_in_place(py, &c, out)
        } else if let Ok(c) = codes.extract::<PyReadonlyArray2<'py, u32>>() {
            self.decode_in_place(py, &c, out)
        } else {
            let c = codes.extract::<PyReadonlyArray2<'py, i64>>()?;
            let n = self.code_rows(c.shape(), c.is_c_contiguous())?;
            let k = self.model.code_shape().1;
            let wide = codes_u32(c.as_slice().map_err(slice_err)?, k)?;
            self.decode_codes(py, &wide, n, out)
        }
    }

    /// Per stage (RQ, AQ: after codebooks 0..=s; PQ: sub-space s): `mse`,
    /// `relative_error` (mse over the mean squared norm of `x`), `perplexity`, `usage`.
    fn stage_errors<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f32>,
        codes: PyReadonlyArray2<'py, i64>,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let (xs, n, d) = matrix("x", &x)?;
        self.model.check_dim(d).map_err(to_py)?;
        let (w, k) = self.model.code_shape();
        if codes.shape() != [n, w] {
            return Err(VqkitError::new_err(format!(
                "codes: expected shape ({n}, {w}), got {:?}",
                codes.shape()
            )));
        }
        let c = codes_u32(
            codes
                .as_slice()
                .map_err(|e| VqkitError::new_err(format!("codes: {e}")))?,
            k,
        )?;
        let model = &self.model;
        let stats = py.detach(|| stage_stats(model, xs, &c));
        let norm = mean_sq_norm(xs, d);
        stats
            .into_iter()
            .enumerate()
            .map(|(s, (mse, perplexity, usage))| {
                let dct = PyDict::new(py);
                dct.set_item("stage", s)?;
                dct.set_item("mse", mse)?;
                dct.set_item("relative_error", if norm > 0.0 { mse / norm } else { 0.0 })?;
                dct.set_item("perplexity", perplexity)?;
                dct.set_item("usage", usage)?;
                Ok(dct)
            })
            .collect()
    }

    /// Writes the model as the CLI does (safetensors, written atomically).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let mut f = self.model.to_file();
        if let Some(c) = &self.config {
            f.set("vqkit.config", c);
        }
        py.detach(|| f.write(&path)).map_err(to_py)
    }

    fn __repr__(&self) -> String {
        let (w, k) = self.model.code_shape();
        format!(
            "vqkit Model(kind={}, d={}, codebooks={w}, k={k})",
            self.model.kind(),
            self.model.d()
        )
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_function(wrap_pyfunction!(rq_fit, m)?)?;
    m.add_function(wrap_pyfunction!(pq_fit, m)?)?;
    m.add_function(wrap_pyfunction!(aq_fit, m)?)?;
    m.add_function(wrap_pyfunction!(nsvq_fit, m)?)?;
    m.add_function(wrap_pyfunction!(kmeans_model, m)?)?;
    m.add_function(wrap_pyfunction!(rvq_model, m)?)?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    Ok(())
}
