//! `vqkit._vqkit`: the Rust side of the vqkit Python package.
//!
//! This module is thin on purpose. Each function takes NumPy arrays that the Python layer
//! (`python/vqkit/__init__.py`) has already made float32 and C-contiguous (a no-op, and no
//! copy, when they were), borrows them as slices without copying, and runs one vqkit call
//! through [`run::compute`]: without the GIL, on a pool of this process, interruptible.
//! The names users know (FAISS's `Kmeans`, `ResidualQuantizer`, ...) live in the Python
//! layer, which is documented and typed; here each argument is spelled out.

mod cuda;
mod model;
mod run;

use numpy::prelude::*;
use numpy::{
    PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray1, PyReadwriteArray2,
};
use pyo3::exceptions::{
    PyFileNotFoundError, PyKeyboardInterrupt, PyMemoryError, PyOSError, PyPermissionError,
    PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use vqkit::backend::{BackendKind, BackendOptions, WithBackend, dispatch};
use vqkit::quant::kmeans::{Init, KMeans, KMeansConfig};
use vqkit::{Backend, Choice, EmaParams};

pyo3::create_exception!(
    vqkit._vqkit,
    VqkitError,
    PyValueError,
    "Invalid input to vqkit: a wrong shape, a non-finite value, k larger than n, a corrupt \
     model file, an unknown option. A ValueError."
);
pyo3::create_exception!(
    vqkit._vqkit,
    BackendError,
    PyRuntimeError,
    "A backend that is not compiled in or finds no device, or a device error."
);

/// vqkit's typed errors as Python exceptions: file errors as the `OSError` subclass Python
/// itself would raise, memory as `MemoryError`, devices as [`BackendError`], everything
/// about the input as [`VqkitError`] (a `ValueError`).
pub(crate) fn to_py(e: vqkit::Error) -> PyErr {
    use std::io::ErrorKind;
    use vqkit::Error as E;
    let msg = e.to_string();
    match &e {
        E::Io { source, .. } => match source.kind() {
            ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
            ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
            _ => PyOSError::new_err(msg),
        },
        E::OutOfMemory { .. } => PyMemoryError::new_err(msg),
        E::BackendUnavailable { .. } | E::Device { .. } => BackendError::new_err(msg),
        E::Interrupted => PyKeyboardInterrupt::new_err(msg),
        _ => VqkitError::new_err(msg),
    }
}

/// A borrowed (n, d) float32 C-contiguous array as a slice: no copy.
pub(crate) fn matrix<'a>(
    what: &str,
    a: &'a PyReadonlyArray2<'_, f32>,
) -> PyResult<(&'a [f32], usize, usize)> {
    if !a.is_c_contiguous() {
        return Err(VqkitError::new_err(format!(
            "{what} must be C-contiguous (vqkit's Python functions convert it; this is the \
             low-level module)"
        )));
    }
    let [n, d] = [a.shape()[0], a.shape()[1]];
    let s = a
        .as_slice()
        .map_err(|e| VqkitError::new_err(format!("{what}: {e}")))?;
    Ok((s, n, d))
}

fn backend(name: &str) -> PyResult<BackendKind> {
    BackendKind::from_name(name).map_err(to_py)
}

/// Runs a [`WithBackend`] job on the backend named `name`, through [`run::compute`].
pub(crate) fn on_backend<W: WithBackend + Send>(
    py: Python<'_>,
    name: &str,
    job: W,
) -> PyResult<W::Output>
where
    W::Output: Send,
{
    let kind = backend(name)?;
    // Inside a pool, `threads: None` means "this pool's threads".
    run::compute(py, move || {
        dispatch(kind, &BackendOptions::threads(None), job)
    })
}

/// A closure over any backend, as a [`WithBackend`] job: `Job(|b: &dyn AnyBackend| ...)`.
pub(crate) struct Job<F>(pub F);

impl<T, F: FnOnce(&dyn AnyBackend) -> vqkit::Result<T>> WithBackend for Job<F> {
    type Output = T;
    fn run<B: Backend>(self, backend: &B) -> vqkit::Result<T> {
        (self.0)(&Erased(backend))
    }
}

/// The operations the bindings run, object-safe so that one closure serves every backend.
pub(crate) trait AnyBackend {
    fn assign(&self, x: &[f32], c: &[f32], d: usize) -> vqkit::Result<vqkit::ops::Assignment>;
    fn partial_stats(
        &self,
        x: &[f32],
        c: &[f32],
        d: usize,
    ) -> vqkit::Result<vqkit::ops::PartialStats>;
    fn kmeans(
        &self,
        x: &[f32],
        d: usize,
        cfg: &KMeansConfig,
        init: Option<&[f32]>,
        on_iter: &mut dyn FnMut(&vqkit::quant::kmeans::IterLog),
    ) -> vqkit::Result<(KMeans, vqkit::quant::kmeans::FitReport)>;
    fn ema(
        &self,
        x: &[f32],
        idx: &[u32],
        d: usize,
        params: EmaParams,
        state: (&mut [f32], &mut [f32], &mut [f32]),
    ) -> vqkit::Result<()>;
    fn model(&self, job: model::ModelJob<'_>) -> vqkit::Result<model::ModelOut>;
    fn name(&self) -> String;
}

pub(crate) struct Erased<'a, B: Backend>(&'a B);

impl<B: Backend> AnyBackend for Erased<'_, B> {
    fn assign(&self, x: &[f32], c: &[f32], d: usize) -> vqkit::Result<vqkit::ops::Assignment> {
        vqkit::ops::assign(self.0, x, c, d)
    }
    fn partial_stats(
        &self,
        x: &[f32],
        c: &[f32],
        d: usize,
    ) -> vqkit::Result<vqkit::ops::PartialStats> {
        vqkit::ops::partial_stats(self.0, x, c, d)
    }
    fn kmeans(
        &self,
        x: &[f32],
        d: usize,
        cfg: &KMeansConfig,
        init: Option<&[f32]>,
        on_iter: &mut dyn FnMut(&vqkit::quant::kmeans::IterLog),
    ) -> vqkit::Result<(KMeans, vqkit::quant::kmeans::FitReport)> {
        match init {
            Some(c) => KMeans::refine(self.0, x, d, c, cfg, on_iter),
            None => KMeans::fit_with(self.0, x, d, cfg, on_iter),
        }
    }
    fn ema(
        &self,
        x: &[f32],
        idx: &[u32],
        d: usize,
        params: EmaParams,
        state: (&mut [f32], &mut [f32], &mut [f32]),
    ) -> vqkit::Result<()> {
        vqkit::ops::ema_update_in_place(self.0, x, idx, d, params, state)
    }
    fn model(&self, job: model::ModelJob<'_>) -> vqkit::Result<model::ModelOut> {
        job.run(self.0)
    }
    fn name(&self) -> String {
        self.0.name()
    }
}

/// Codes from NumPy's int64 (PyTorch's `long`) as vqkit's u32, checked against `k`.
///
/// The check is one branch-free pass and the conversion another, both vectorized; only a
/// batch with a code out of range is walked again for the first one. The per-element
/// `Result` of a single pass did not vectorize: 100,000 codes took 84 us against 30 us
/// (a standalone copy of both, `rustc -O`, 200 calls, 3 runs), beside an EMA step of about
/// 450 us at k = 256, d = 32 on two threads.
pub(crate) fn codes_u32(idx: &[i64], k: usize) -> PyResult<Vec<u32>> {
    // A negative code is above every k as u64.
    if idx.iter().fold(true, |ok, &c| ok & ((c as u64) < k as u64)) {
        return Ok(idx.iter().map(|&c| c as u32).collect());
    }
    idx.iter()
        .enumerate()
        .map(|(row, &c)| {
            if c >= 0 && (c as u64) < k as u64 {
                Ok(c as u32)
            } else {
                Err(VqkitError::new_err(format!(
                    "code {c} at row {row} is out of range for a codebook of k = {k}"
                )))
            }
        })
        .collect()
}

/// `(D, I)` as NumPy arrays.
type Searched<'py> = (Bound<'py, PyArray1<f32>>, Bound<'py, PyArray1<i64>>);
/// `(sums, counts, inertia)` as NumPy arrays and a float.
type Stats<'py> = (Bound<'py, PyArray2<f64>>, Bound<'py, PyArray1<i64>>, f64);

/// `(D, I)`: the squared distance to, and index of, the nearest codeword of every row of
/// `x`, as float32 and int64 arrays (FAISS's `search(x, 1)` without its trailing axis).
#[pyfunction]
#[pyo3(signature = (x, codebook, backend = "cpu"))]
fn assign<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    codebook: PyReadonlyArray2<'py, f32>,
    backend: &str,
) -> PyResult<Searched<'py>> {
    let (xs, _, d) = matrix("x", &x)?;
    let (cs, _, dc) = matrix("codebook", &codebook)?;
    check_dims(d, dc)?;
    let a = on_backend(
        py,
        backend,
        Job(move |b: &dyn AnyBackend| b.assign(xs, cs, d)),
    )?;
    let idx: Vec<i64> = a.indices.iter().map(|&i| i as i64).collect();
    Ok((
        PyArray1::from_vec(py, a.distances),
        PyArray1::from_vec(py, idx),
    ))
}

fn check_dims(d: usize, dc: usize) -> PyResult<()> {
    if d != dc {
        return Err(to_py(vqkit::Error::WrongDimension {
            expected: dc,
            got: d,
        }));
    }
    Ok(())
}

/// One shard's Lloyd statistics: `(sums (k, d) float64, counts (k,) int64, inertia)`.
#[pyfunction]
#[pyo3(signature = (x, centroids, backend = "cpu"))]
fn partial_stats<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    centroids: PyReadonlyArray2<'py, f32>,
    backend: &str,
) -> PyResult<Stats<'py>> {
    let (xs, _, d) = matrix("x", &x)?;
    let (cs, k, dc) = matrix("centroids", &centroids)?;
    check_dims(d, dc)?;
    let s = on_backend(
        py,
        backend,
        Job(move |b: &dyn AnyBackend| b.partial_stats(xs, cs, d)),
    )?;
    let counts: Vec<i64> = s.counts.iter().map(|&c| c as i64).collect();
    Ok((
        PyArray1::from_vec(py, s.sums).reshape([k, d])?,
        PyArray1::from_vec(py, counts),
        s.inertia,
    ))
}

/// k-means: `(centroids (k, d), objective per iteration, training points)`. With
/// `init_centroids`, Lloyd iterations from them (no seeding, no subsampling, one run).
#[pyfunction]
#[pyo3(signature = (x, k, niter, seed, init, nredo, max_points_per_centroid, backend, verbose, init_centroids = None))]
#[allow(clippy::too_many_arguments)]
fn kmeans_fit<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    k: usize,
    niter: usize,
    seed: u64,
    init: &str,
    nredo: usize,
    max_points_per_centroid: usize,
    backend: &str,
    verbose: bool,
    init_centroids: Option<PyReadonlyArray2<'py, f32>>,
) -> PyResult<(Bound<'py, PyArray2<f32>>, Vec<f64>, usize)> {
    let (xs, _, d) = matrix("x", &x)?;
    let start = match &init_centroids {
        Some(c) => {
            let (cs, _, dc) = matrix("init_centroids", c)?;
            check_dims(d, dc)?;
            Some(cs)
        }
        None => None,
    };
    let cfg = KMeansConfig {
        iters: niter,
        init: Init::from_name(init).map_err(to_py)?,
        seed,
        restarts: nredo,
        max_points_per_centroid,
        ..KMeansConfig::new(k)
    };
    let (km, report) = on_backend(
        py,
        backend,
        Job(move |b: &dyn AnyBackend| {
            let mut log = |it: &vqkit::quant::kmeans::IterLog| {
                if verbose {
                    let line = format!(
                        "vqkit k-means: run {} iteration {} objective {:.6e} (per point {:.6e}){}",
                        it.restart,
                        it.iter,
                        it.mse * xs.len() as f64 / d as f64,
                        it.mse,
                        if it.repaired > 0 {
                            format!(", {} empty clusters split", it.repaired)
                        } else {
                            String::new()
                        }
                    );
                    Python::attach(|py| {
                        let _ = py
                            .import("builtins")
                            .and_then(|m| m.call_method1("print", (line,)));
                    });
                }
            };
            b.kmeans(xs, d, &cfg, start, &mut log)
        }),
    )?;
    let n_train = report.n_train as f64;
    let obj = report.history[report.best_restart]
        .iter()
        .map(|m| m * n_train)
        .collect();
    let k = km.k();
    Ok((
        PyArray1::from_vec(py, km.centroids).reshape([k, d])?,
        obj,
        report.n_train,
    ))
}

/// One EMA codebook step, in place: `cluster_size (k,)`, `embed_sum (k, d)` and
/// `codebook (k, d)` are float32 arrays updated where they lie (PyTorch buffers viewed
/// through NumPy), for the points `x` assigned to `indices` (int64).
#[pyfunction]
#[pyo3(signature = (x, indices, cluster_size, embed_sum, codebook, decay, eps, backend = "cpu"))]
#[allow(clippy::too_many_arguments)]
fn ema_update<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    indices: PyReadonlyArray1<'py, i64>,
    mut cluster_size: PyReadwriteArray1<'py, f32>,
    mut embed_sum: PyReadwriteArray2<'py, f32>,
    mut codebook: PyReadwriteArray2<'py, f32>,
    decay: f32,
    eps: f32,
    backend: &str,
) -> PyResult<()> {
    let (xs, _, d) = matrix("x", &x)?;
    let k = codebook.shape()[0];
    let idx = codes_u32(
        indices
            .as_slice()
            .map_err(|e| VqkitError::new_err(format!("indices: {e}")))?,
        k,
    )?;
    let mut slices = [
        ("cluster_size", cluster_size.as_slice_mut()),
        ("embed_sum", embed_sum.as_slice_mut()),
        ("codebook", codebook.as_slice_mut()),
    ]
    .into_iter()
    .map(|(what, s)| s.map_err(|e| VqkitError::new_err(format!("{what}: {e}"))));
    let (size, esum, code) = (
        slices.next().unwrap_or_else(|| unreachable!())?,
        slices.next().unwrap_or_else(|| unreachable!())?,
        slices.next().unwrap_or_else(|| unreachable!())?,
    );
    let params = EmaParams { decay, eps };
    // The arrays are updated where they lie, with no copies (a refused step leaves them
    // as they were). An interrupt does not cut the step short: KeyboardInterrupt is
    // raised after it, the step applied.
    on_backend(
        py,
        backend,
        Job(move |b: &dyn AnyBackend| b.ema(xs, &idx, d, params, (size, esum, code))),
    )
}

/// Every backend vqkit knows: whether this build has it, and whether it runs here (with
/// the device it found, or why not).
#[pyfunction]
fn backends(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let mut out = Vec::new();
    for &kind in BackendKind::ALL {
        let d = PyDict::new(py);
        d.set_item("name", kind.as_str())?;
        d.set_item("compiled", kind.compiled())?;
        match on_backend(
            py,
            kind.as_str(),
            Job(move |b: &dyn AnyBackend| Ok(b.name())),
        ) {
            Ok(device) => {
                d.set_item("available", true)?;
                d.set_item("device", device)?;
            }
            Err(e) => {
                d.set_item("available", false)?;
                d.set_item("reason", e.value(py).to_string())?;
            }
        }
        out.push(d);
    }
    Ok(out)
}

/// Worker threads each call uses; 0 restores the default, every core.
#[pyfunction]
fn set_num_threads(n: usize) {
    run::set_threads(n);
}

#[pyfunction]
fn get_num_threads() -> usize {
    run::threads()
}

/// Operation counts per encoded vector (the NSVQ paper's complexity calculator).
#[pyfunction]
#[pyo3(signature = (method, d, stages, bits, beam = 1, double_precision = false))]
fn complexity<'py>(
    py: Python<'py>,
    method: &str,
    d: usize,
    stages: usize,
    bits: u32,
    beam: usize,
    double_precision: bool,
) -> PyResult<Bound<'py, PyDict>> {
    use vqkit::quant::complexity::{Method, complexity};
    let m = Method::from_name(method).map_err(to_py)?;
    let c = complexity(m, d, stages, bits, beam, double_precision).map_err(to_py)?;
    let out = PyDict::new(py);
    out.set_item("bits_per_vector", c.bits_per_vector)?;
    out.set_item("additions", c.additions)?;
    out.set_item("multiplications", c.multiplications)?;
    out.set_item("moves", c.moves)?;
    out.set_item("branches", c.branches)?;
    out.set_item("weighted", c.weighted)?;
    Ok(out)
}

#[pymodule]
fn _vqkit(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("VqkitError", m.py().get_type::<VqkitError>())?;
    m.add("BackendError", m.py().get_type::<BackendError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(assign, m)?)?;
    m.add_function(wrap_pyfunction!(partial_stats, m)?)?;
    m.add_function(wrap_pyfunction!(kmeans_fit, m)?)?;
    m.add_function(wrap_pyfunction!(ema_update, m)?)?;
    m.add_function(wrap_pyfunction!(backends, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(complexity, m)?)?;
    model::register(m)?;
    cuda::register(m)?;
    Ok(())
}
