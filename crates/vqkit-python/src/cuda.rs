//! Device arrays in, device arrays out: vqkit's CUDA kernels on memory another engine owns
//! (PyTorch's CUDA tensors, CuPy's arrays), without a copy to the host.
//!
//! The Python layer reads each input's `__cuda_array_interface__` (version 3), checks its
//! type and contiguity, and passes the device address, shape and stream here. vqkit's CUDA
//! backend opens the device's primary context, where those engines allocate, waits for the
//! producer's stream, borrows the memory as its own buffers (never freeing it), runs the
//! kernels, and returns its outputs as [`DeviceArray`]s, which expose the same interface:
//! `torch.as_tensor(a, device="cuda")` takes one without a copy and keeps it alive.
//!
//! The backend is opened once per process: CUDA contexts do not survive `fork`.

use crate::{VqkitError, to_py};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::{Arc, Mutex};
use vqkit::Backend;
use vqkit::backend::Shape;
use vqkit::backend::cuda::{CudaBackend, CudaBuf};

static BACKEND: Mutex<Option<Arc<CudaBackend>>> = Mutex::new(None);

fn backend() -> PyResult<Arc<CudaBackend>> {
    let mut b = BACKEND.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(be) = b.as_ref() {
        return Ok(be.clone());
    }
    let be = Arc::new(CudaBackend::new(0).map_err(to_py)?);
    *b = Some(be.clone());
    Ok(be)
}

enum Data {
    F32(CudaBuf<f32>),
    /// Codes, exposed as int32 (every engine has it; they are below 2^31).
    I32(CudaBuf<u32>),
}

/// A vqkit output in device memory, owned by vqkit and freed when the last reference (a
/// torch tensor made from it, say) goes. Exposes `__cuda_array_interface__` version 3.
#[pyclass(name = "DeviceArray", module = "vqkit._vqkit", frozen)]
pub struct DeviceArray {
    backend: Arc<CudaBackend>,
    data: Data,
    len: usize,
}

#[pymethods]
impl DeviceArray {
    #[getter]
    fn __cuda_array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (ptr, typestr) = match &self.data {
            Data::F32(b) => (self.backend.device_address(b), "<f4"),
            Data::I32(b) => (self.backend.device_address(b), "<i4"),
        };
        let d = PyDict::new(py);
        d.set_item("shape", (self.len,))?;
        d.set_item("typestr", typestr)?;
        d.set_item("data", (ptr, false))?;
        d.set_item("version", 3)?;
        d.set_item("strides", py.None())?;
        // The work that wrote it is complete before it is returned: nothing to wait for.
        d.set_item("stream", py.None())?;
        Ok(d)
    }

    fn __len__(&self) -> usize {
        self.len
    }

    fn __repr__(&self) -> String {
        let t = match self.data {
            Data::F32(_) => "float32",
            Data::I32(_) => "int32",
        };
        format!(
            "vqkit DeviceArray({t}, {} elements, on {})",
            self.len,
            self.backend.name()
        )
    }
}

/// `(address, rows, columns, stream)` of a float32 C-contiguous device matrix, as the
/// Python layer read it from `__cuda_array_interface__` (stream 0: none given).
type Dev = (u64, usize, usize, u64);

fn wait(be: &CudaBackend, streams: &[u64]) -> vqkit::Result<()> {
    for &s in streams {
        if s != 0 {
            // SAFETY: a stream handle from `__cuda_array_interface__`, whose producer
            // guarantees it is live (or 1 / 2, the default streams).
            unsafe { be.wait_for_stream(s)? };
        }
    }
    Ok(())
}

fn non_finite(what: &'static str, v: &[f32]) -> vqkit::Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(row) => Err(vqkit::Error::invalid(
            "device input",
            format!("{what}: a non-finite value (NaN or infinity) or an f32 overflow at row {row}"),
        )),
    }
}

/// Nearest codeword of each row of `x` (n, d) in `codebook` (k, d), both in device memory:
/// `(D float32 (n,), I int32 (n,))` as device arrays.
#[pyfunction]
pub fn cuda_assign(py: Python<'_>, x: Dev, codebook: Dev) -> PyResult<(DeviceArray, DeviceArray)> {
    let (xp, n, d, xs) = x;
    let (cp, k, dc, cs) = codebook;
    if d != dc {
        return Err(to_py(vqkit::Error::WrongDimension {
            expected: dc,
            got: d,
        }));
    }
    let be = backend()?;
    let shape = Shape::new(n, k, d);
    shape.validate().map_err(to_py)?;
    let b = be.clone();
    let (idx, dist) = py
        .detach(move || -> vqkit::Result<_> {
            wait(&b, &[xs, cs])?;
            // SAFETY: the Python layer checked, from `__cuda_array_interface__`, that both
            // are float32 C-contiguous device arrays of these shapes; they are borrowed
            // only for the duration of this call, during which Python holds them.
            let xb = unsafe { b.borrow_device::<f32>(xp, n * d)? };
            let cb = unsafe { b.borrow_device::<f32>(cp, k * d)? };
            let mut norms = b.zeros::<f32>(k)?;
            b.codeword_norms(&cb, k, d, &mut norms)?;
            let mut idx = b.zeros::<u32>(n)?;
            let mut dist = b.zeros::<f32>(n)?;
            b.distance_argmin(&xb, &cb, &norms, shape, &mut idx, &mut dist)?;
            // NaN or infinity anywhere shows in a squared norm (the kernel's clamped
            // distances would hide it): checked on 4(n + k) bytes brought back, not on the
            // inputs. The norm kernel reads x once, a 1/k-th of what the argmin reads.
            let mut xnorms = b.zeros::<f32>(n)?;
            b.codeword_norms(&xb, n, d, &mut xnorms)?;
            non_finite("codebook", &b.download(&norms)?)?;
            non_finite("points", &b.download(&xnorms)?)?;
            non_finite("points (squared distances)", &b.download(&dist)?)?;
            Ok((idx, dist))
        })
        .map_err(to_py)?;
    Ok((
        DeviceArray {
            backend: be.clone(),
            data: Data::F32(dist),
            len: n,
        },
        DeviceArray {
            backend: be,
            data: Data::I32(idx),
            len: n,
        },
    ))
}

/// One EMA step in place on device memory: `cluster_size` (k,), `embed_sum` and
/// `codebook` (k, d) float32, for the rows of `x` (n, d) assigned to `indices` (n,)
/// int32 (as [`cuda_assign`] returns them).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn cuda_ema_update(
    py: Python<'_>,
    x: Dev,
    indices: (u64, usize, u64),
    cluster_size: (u64, usize, u64),
    embed_sum: Dev,
    codebook: Dev,
    decay: f32,
    eps: f32,
) -> PyResult<()> {
    let (xp, n, d, xs) = x;
    let (ip, ni, is) = indices;
    let (sp, k, ss) = cluster_size;
    let (ep, ke, de, es) = embed_sum;
    let (cp, kc, dc, cs) = codebook;
    if ni != n || ke != k || kc != k || de != d || dc != d {
        return Err(VqkitError::new_err(format!(
            "device EMA update: shapes disagree: x ({n}, {d}), indices ({ni},), cluster_size \
             ({k},), embed_sum ({ke}, {de}), codebook ({kc}, {dc})"
        )));
    }
    let params = vqkit::EmaParams { decay, eps };
    params.validate().map_err(to_py)?;
    let be = backend()?;
    py.detach(move || -> vqkit::Result<()> {
        wait(&be, &[xs, is, ss, es, cs])?;
        // SAFETY: shapes and dtypes checked by the Python layer from
        // `__cuda_array_interface__` and against each other above; borrowed for this call.
        let xb = unsafe { be.borrow_device::<f32>(xp, n * d)? };
        let ib = unsafe { be.borrow_device::<u32>(ip, n)? };
        let mut sb = unsafe { be.borrow_device::<f32>(sp, k)? };
        let mut eb = unsafe { be.borrow_device::<f32>(ep, k * d)? };
        let mut cb = unsafe { be.borrow_device::<f32>(cp, k * d)? };
        be.ema_update(
            &xb,
            &ib,
            Shape::new(n, k, d),
            params,
            &mut sb,
            &mut eb,
            &mut cb,
        )?;
        be.synchronize()
    })
    .map_err(to_py)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<DeviceArray>()?;
    m.add_function(wrap_pyfunction!(cuda_assign, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_ema_update, m)?)?;
    Ok(())
}
