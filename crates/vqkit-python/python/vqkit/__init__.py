"""vqkit: vector quantization on hand-written kernels.

FAISS's names where FAISS has the thing::

    import numpy as np, vqkit
    x = np.random.default_rng(0).standard_normal((100_000, 128), dtype=np.float32)
    km = vqkit.Kmeans(128, 1024, niter=20, seed=1)
    km.train(x)                      # the final objective; km.obj per iteration
    D, I = km.assign(x)              # squared distances (float32), indices (int64)

- :class:`Kmeans`, :class:`ResidualQuantizer`, :class:`ProductQuantizer`,
  :class:`AdditiveQuantizer`: ``train``, ``compute_codes``, ``decode``, ``save``.
- :func:`assign`: the exact nearest codeword, fused (the n x k distance matrix is never
  formed); :func:`partial_stats`: one shard's Lloyd statistics, for distributed k-means.
- :func:`train_nsvq`, :func:`complexity`, :func:`backends`, :func:`load`.
- ``vqkit.torch``: ``VectorQuantize`` and ``ResidualVQ`` layers for PyTorch.

Arrays: float32 C-contiguous input is read where it lies, without a copy; any other
dtype or memory order is converted once. CPU PyTorch tensors are accepted as they are.
Every computation releases the GIL (two Python threads compute in parallel), runs on
vqkit's own thread pool (``set_num_threads``; a child made by ``os.fork`` builds its own),
and a long training stops with ``KeyboardInterrupt`` on Ctrl-C. Bad input raises
:class:`VqkitError` (a ``ValueError``) with vqkit's message; missing files raise
``FileNotFoundError``, devices :class:`BackendError`.

Model files are the CLI's safetensors files: ``vqkit rq-kmeans ... -o m.safetensors``
loads with :func:`load`, and ``.save`` writes what ``vqkit encode`` reads.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from . import _vqkit
from ._vqkit import (
    BackendError,
    DeviceArray,
    Model,
    VqkitError,
    __version__,
    get_num_threads,
    set_num_threads,
)

__all__ = [
    "AdditiveQuantizer",
    "BackendError",
    "DeviceArray",
    "Kmeans",
    "Model",
    "ProductQuantizer",
    "ResidualQuantizer",
    "VqkitError",
    "assign",
    "backends",
    "complexity",
    "ema_update",
    "get_num_threads",
    "load",
    "partial_stats",
    "set_num_threads",
    "train_nsvq",
]

ArrayLike = Any  # numpy arrays, CPU torch tensors, anything np.asarray accepts
PathLike = Union[str, "os.PathLike[str]"]


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _matrix(x: ArrayLike, name: str = "x", d: Optional[int] = None) -> np.ndarray:
    """``x`` as a float32 C-contiguous (n, d) array; the same memory when it already is."""
    if _is_torch(x):
        if x.device.type != "cpu":
            raise VqkitError(
                f"{name} is a tensor on {x.device}; vqkit's NumPy functions take CPU "
                "tensors (move it with .cpu())"
            )
        x = x.detach().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise VqkitError(f"{name} must be a 2-D array (n, d); got shape {a.shape}")
    if a.dtype.kind not in "fiub":
        raise VqkitError(f"{name} has dtype {a.dtype}; vqkit needs numbers")
    if d is not None and a.shape[1] != d:
        raise VqkitError(f"{name} has d = {a.shape[1]}; this quantizer expects d = {d}")
    # Arrays unpickled from another process (Dask, multiprocessing) can be misaligned:
    # those, like other dtypes and orders, are copied once; aligned float32 C order is not.
    return np.require(a, dtype=np.float32, requirements=["C_CONTIGUOUS", "ALIGNED"])


def _codes(codes: ArrayLike, width: int) -> np.ndarray:
    if _is_torch(codes):
        codes = codes.detach().cpu().numpy()
    c = np.asarray(codes)
    if c.ndim == 1 and width == 1:
        c = c[:, None]
    if c.ndim != 2:
        raise VqkitError(f"codes must be a 2-D array (n, {width}); got shape {c.shape}")
    if c.dtype.kind not in "iu":
        raise VqkitError(f"codes have dtype {c.dtype}; expected integers")
    # Unsigned codes of up to 32 bits (compute_codes's) go as they are, read in place: as
    # int64 they were a copy up to eight times their size, then another to u32 in Rust; as
    # uint32, PQ's decode at M = 64 took 60% longer from uint8 codes than from uint32.
    unsigned = c.dtype.kind == "u" and c.dtype.itemsize <= 4
    dtype = c.dtype.newbyteorder("=") if unsigned else np.dtype(np.int64)
    return np.require(c, dtype=dtype, requirements=["C_CONTIGUOUS", "ALIGNED"])


def _code_dtype(nbits: int) -> np.dtype:
    return np.dtype(np.uint8 if nbits <= 8 else np.uint16 if nbits <= 16 else np.uint32)


def _nbits(nbits: int) -> int:
    if not isinstance(nbits, (int, np.integer)) or not 1 <= nbits <= 24:
        raise VqkitError(f"nbits must be an integer in 1..=24, got {nbits!r}")
    return int(nbits)


def _cai(x: Any) -> Optional[Dict[str, Any]]:
    """``x.__cuda_array_interface__`` for device arrays (CUDA torch tensors, CuPy), else None."""
    if _is_torch(x) and x.requires_grad:
        x = x.detach()
    return getattr(x, "__cuda_array_interface__", None)


def _device(x: Any, name: str, ndim: int, typestr: str = "<f4") -> Tuple[int, ...]:
    """``(address, *shape, stream)`` of a C-contiguous device array, from its
    ``__cuda_array_interface__``; an error for anything else."""
    cai = _cai(x)
    if cai is None:
        raise VqkitError(f"{name} is not a device array; pass every array on the device or none")
    shape = tuple(int(s) for s in cai["shape"])
    if len(shape) != ndim:
        raise VqkitError(f"{name} must have {ndim} dimension(s); got shape {shape}")
    if cai["typestr"] != typestr:
        raise VqkitError(f"{name} has typestr {cai['typestr']}; vqkit's CUDA path needs {typestr}")
    strides = cai.get("strides")
    item = int(typestr[2:])
    if strides is not None:
        expect = tuple(item * int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(ndim))
        if tuple(strides) != expect and int(np.prod(shape)) > 1:
            raise VqkitError(f"{name} must be C-contiguous (call .contiguous())")
    if cai.get("mask") is not None:
        raise VqkitError(f"{name} is a masked array")
    stream = cai.get("stream") or 0
    return (int(cai["data"][0]), *shape, int(stream))


def assign(x: ArrayLike, codebook: ArrayLike, backend: str = "cpu") -> Tuple[Any, Any]:
    """Nearest codeword of every row of ``x`` (n, d) in ``codebook`` (k, d).

    Returns ``(D, I)``: squared Euclidean distances (float32, shape (n,)) and indices
    (int64, shape (n,)), as FAISS's ``IndexFlatL2(d).search(x, 1)`` gives them (without
    its trailing axis of 1). The distances and the argmin are fused: no n x k matrix.
    ``backend``: ``"cpu"`` (default), ``"wgpu"`` or ``"cuda"``.

    Device arrays (anything with ``__cuda_array_interface__``: CUDA torch tensors, CuPy
    arrays; float32, C-contiguous) run on vqkit's CUDA kernels where they lie, without a
    copy to the host, and the results stay on the device: torch tensors (int64 indices)
    for torch input, else :class:`DeviceArray` objects (float32 and int32) that any engine
    takes through the same interface.
    """
    if _cai(x) is not None or _cai(codebook) is not None:
        D, I = _vqkit.cuda_assign(_device(x, "x", 2), _device(codebook, "codebook", 2))
        if _is_torch(x):
            import torch

            return torch.as_tensor(D, device=x.device), torch.as_tensor(I, device=x.device).long()
        return D, I
    c = _matrix(codebook, "codebook")
    return _vqkit.assign(_matrix(x, "x", c.shape[1]), c, backend)


def ema_update(
    x: Any, indices: Any, cluster_size: Any, embed_sum: Any, codebook: Any,
    decay: float = 0.99, eps: float = 1e-5, backend: str = "cpu",
) -> None:
    """One EMA codebook step, in place, for the rows of ``x`` (n, d) assigned to
    ``indices`` (n,)::

        cluster_size <- decay * cluster_size + (1 - decay) * counts
        embed_sum    <- decay * embed_sum    + (1 - decay) * per-code sums of x
        codebook     <- embed_sum / Laplace-smoothed cluster_size

    Host arrays: float32 C-contiguous NumPy arrays (or CPU tensors) updated where they lie,
    int64 indices. Device arrays (``__cuda_array_interface__``): float32, int32 indices
    (as :func:`assign` returns them for device input).

    A refused step (a code out of range, a NaN or infinity in ``x``) raises
    :class:`VqkitError` and leaves the arrays as they were. On the host nothing is copied:
    the step runs on the arrays themselves, and a KeyboardInterrupt during it is raised
    once the step is applied.
    """
    if _cai(x) is not None:
        _vqkit.cuda_ema_update(
            _device(x, "x", 2), _device(indices, "indices", 1, "<i4"),
            _device(cluster_size, "cluster_size", 1), _device(embed_sum, "embed_sum", 2),
            _device(codebook, "codebook", 2), float(decay), float(eps),
        )
        return
    arrays = []
    for name, a in (("cluster_size", cluster_size), ("embed_sum", embed_sum), ("codebook", codebook)):
        if _is_torch(a):
            a = a.detach().numpy()
        if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable):
            raise VqkitError(f"{name} must be a writeable float32 C-contiguous array (it is updated in place)")
        arrays.append(a)
    idx = indices.detach().numpy() if _is_torch(indices) else np.asarray(indices)
    _vqkit.ema_update(_matrix(x, "x"), np.ascontiguousarray(idx, dtype=np.int64), *arrays,
                      float(decay), float(eps), backend)


def partial_stats(
    x: ArrayLike, centroids: ArrayLike, backend: str = "cpu"
) -> Tuple[np.ndarray, np.ndarray, float]:
    """One shard's share of a Lloyd step: ``(sums, counts, inertia)``.

    ``sums`` (k, d) float64 are the per-cluster sums of the shard's points, ``counts``
    (k,) int64 their sizes, ``inertia`` the sum of squared distances to the nearest
    centroid. Summed over shards, ``sums / counts[:, None]`` are the next centroids. Every
    number is accumulated in a fixed order, so the result does not depend on the threads.
    """
    c = _matrix(centroids, "centroids")
    return _vqkit.partial_stats(_matrix(x, "x", c.shape[1]), c, backend)


def backends() -> List[Dict[str, Any]]:
    """Every backend: ``name``, ``compiled``, ``available`` and its ``device`` or ``reason``."""
    return _vqkit.backends()


def complexity(
    method: str, d: int, stages: int, bits: int, beam: int = 1, double_precision: bool = False
) -> Dict[str, float]:
    """Operations per encoded vector for ``method`` in ``vq``, ``rvq``, ``pvq``, ``avq``
    (the NSVQ paper's calculator, counting all ``stages``): additions, multiplications,
    moves, branches and their weighted sum, and the bits per vector."""
    return _vqkit.complexity(method, d, stages, bits, beam, double_precision)


class Kmeans:
    """k-means with FAISS's interface (``faiss.Kmeans``).

    ``init``: ``"kmeans++"`` (D^2 seeding on a subsample) or ``"random"`` (k distinct
    points). ``nredo`` runs keep the lowest objective. Above ``max_points_per_centroid * k``
    points, a seeded random subset of that size is trained on (FAISS's default of 256).
    """

    def __init__(
        self,
        d: int,
        k: int,
        niter: int = 20,
        seed: int = 1234,
        init: str = "kmeans++",
        nredo: int = 1,
        max_points_per_centroid: int = 256,
        backend: str = "cpu",
        verbose: bool = False,
    ) -> None:
        self.d, self.k, self.niter, self.seed = int(d), int(k), int(niter), int(seed)
        self.init, self.nredo, self.backend, self.verbose = init, int(nredo), backend, verbose
        self.max_points_per_centroid = int(max_points_per_centroid)
        self.centroids: Optional[np.ndarray] = None
        #: The objective (sum of squared distances) at each iteration's assignment.
        self.obj: np.ndarray = np.zeros(0)

    def train(self, x: ArrayLike, init_centroids: Optional[ArrayLike] = None) -> float:
        """Fits the centroids; returns the objective of the last iteration, as FAISS does.

        With ``init_centroids`` (k, d), Lloyd iterations start from them: no seeding, no
        subsampling, one run.
        """
        xm = _matrix(x, "x", self.d)
        start = None if init_centroids is None else _matrix(init_centroids, "init_centroids", self.d)
        c, obj, _ = _vqkit.kmeans_fit(
            xm, self.k, self.niter, self.seed, self.init, self.nredo,
            self.max_points_per_centroid, self.backend, self.verbose, start,
        )
        self.centroids, self.obj = c, np.asarray(obj, dtype=np.float64)
        return float(self.obj[-1]) if self.obj.size else 0.0

    def assign(self, x: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
        """``(D, I)`` of the nearest centroid, as :func:`assign`."""
        return assign(x, self._trained(), self.backend)

    def _trained(self) -> np.ndarray:
        if self.centroids is None:
            raise VqkitError("this Kmeans is not trained: call train(x) first")
        return self.centroids

    def save(self, path: PathLike) -> None:
        """Writes the centroids as ``vqkit kmeans -o`` does (safetensors, atomically)."""
        _vqkit.kmeans_model(self._trained()).save(os.fspath(path))

    def __repr__(self) -> str:
        state = "trained" if self.centroids is not None else "untrained"
        return f"vqkit.Kmeans(d={self.d}, k={self.k}, niter={self.niter}, {state})"


class _Codec:
    """What every multi-codebook quantizer shares: codes, decoding, errors, files."""

    model: Optional[Model]
    d: int
    M: int
    nbits: int
    backend: str
    #: After ``train``: per stage (or sub-space), ``mse``, ``relative_error``,
    #: ``perplexity`` and ``usage`` on the training vectors.
    stage_errors: List[Dict[str, float]]

    def _init(self, d: int, M: int, nbits: int, backend: str, niter: int = 20, seed: int = 0,
              init: str = "kmeans++", max_points_per_centroid: int = 256) -> None:
        self.d, self.M, self.nbits, self.backend = int(d), int(M), _nbits(nbits), backend
        self.niter, self.seed, self.init = int(niter), int(seed), init
        self.max_points_per_centroid = int(max_points_per_centroid)
        self.model = None
        self.stage_errors = []

    @property
    def k(self) -> int:
        """Codewords per codebook, ``2 ** nbits``."""
        return 1 << self.nbits

    def _trained(self) -> Model:
        if self.model is None:
            raise VqkitError(f"this {type(self).__name__} is not trained: call train(x) first")
        return self.model

    def _finish(self, model: Model, x: np.ndarray) -> None:
        self.model = model
        codes = model.encode(x, None, self.backend)
        self.stage_errors = model.stage_errors(x, codes.astype(np.int64))

    @property
    def codebooks(self) -> np.ndarray:
        """The codebooks, float32 (M, k, dimension of a codeword)."""
        return self._trained().codebooks

    def compute_codes(self, x: ArrayLike) -> np.ndarray:
        """Codes (n, M), uint8 up to 8 bits, uint16 up to 16, uint32 beyond."""
        m = self._trained()
        width = _code_dtype(self.nbits).itemsize
        return m.encode(_matrix(x, "x", self.d), self._beam(), self.backend, width)

    def _beam(self) -> Optional[int]:
        return getattr(self, "beam", None)

    def decode(self, codes: ArrayLike, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Reconstructions (n, d) float32 of codes (n, M).

        With ``out``, a writable, C-contiguous float32 NumPy array of shape (n, d) that
        shares no memory with ``codes``, they are written there and ``out`` is returned. It
        is untouched where the call is refused (after a KeyboardInterrupt or an internal
        error its contents are unspecified). For batch after batch into one buffer: a fresh
        array's pages are zeroed by the kernel as they are first written, which costs about
        half of a decode at d = 128 (docs/performance.md). No other thread may use ``out``
        during the call, nor write ``codes``: unsigned codes of up to 32 bits (those
        ``compute_codes`` returns) are read where they lie, without the GIL.
        """
        c = _codes(codes, self.M)
        if out is None:
            return self._trained().decode(c)
        if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.ndim != 2:
            what = (f"a {out.ndim}-D {out.dtype} array" if isinstance(out, np.ndarray)
                    else type(out).__name__)
            raise VqkitError(f"out must be a 2-D float32 NumPy array; got {what}")
        return self._trained().decode(c, out)

    def save(self, path: PathLike) -> None:
        """Writes the model as the CLI does (safetensors, atomically)."""
        self._trained().save(os.fspath(path))

    def __repr__(self) -> str:
        state = "trained" if self.model is not None else "untrained"
        return f"vqkit.{type(self).__name__}(d={self.d}, M={self.M}, nbits={self.nbits}, {state})"


class ResidualQuantizer(_Codec):
    """Residual quantizer trained as RQ-K-means (``faiss.ResidualQuantizer(d, M, nbits)``).

    Stage ``s`` is a k-means on the residuals of stages ``0..s``; ``beam`` > 1 trains and
    encodes with beam search; ``shared`` uses one codebook for every stage.
    """

    def __init__(
        self,
        d: int,
        M: int,
        nbits: int,
        beam: int = 1,
        shared: bool = False,
        niter: int = 20,
        seed: int = 0,
        init: str = "kmeans++",
        max_points_per_centroid: int = 256,
        backend: str = "cpu",
    ) -> None:
        self._init(d, M, nbits, backend, niter, seed, init, max_points_per_centroid)
        self.beam, self.shared = int(beam), bool(shared)

    def train(self, x: ArrayLike) -> None:
        xm = _matrix(x, "x", self.d)
        m = _vqkit.rq_fit(
            xm, self.M, self.k, self.niter, self.seed, self.beam, self.shared,
            self.init, self.max_points_per_centroid, self.backend,
        )
        self._finish(m, xm)


class ProductQuantizer(_Codec):
    """Product quantizer (``faiss.ProductQuantizer(d, M, nbits)``): ``M`` sub-vectors of
    ``d / M`` dimensions, one k-means codebook each."""

    def __init__(
        self,
        d: int,
        M: int,
        nbits: int,
        niter: int = 20,
        seed: int = 0,
        init: str = "kmeans++",
        max_points_per_centroid: int = 256,
        backend: str = "cpu",
    ) -> None:
        if M < 1 or d % M:
            raise VqkitError(f"M = {M} sub-vectors do not divide d = {d}")
        self._init(d, M, nbits, backend, niter, seed, init, max_points_per_centroid)

    @property
    def dsub(self) -> int:
        return self.d // self.M

    def train(self, x: ArrayLike) -> None:
        xm = _matrix(x, "x", self.d)
        m = _vqkit.pq_fit(
            xm, self.M, self.k, self.niter, self.seed, self.init,
            self.max_points_per_centroid, self.backend,
        )
        self._finish(m, xm)


class AdditiveQuantizer(_Codec):
    """Additive quantizer: ``M`` full-dimensional codebooks whose codewords add up, encoded
    by beam search; trained from RQ-K-means by rounds of encoding and least squares."""

    def __init__(
        self,
        d: int,
        M: int,
        nbits: int,
        beam: int = 4,
        ls_rounds: int = 3,
        niter: int = 20,
        seed: int = 0,
        init: str = "kmeans++",
        max_points_per_centroid: int = 256,
        backend: str = "cpu",
    ) -> None:
        self._init(d, M, nbits, backend, niter, seed, init, max_points_per_centroid)
        self.beam, self.ls_rounds = int(beam), int(ls_rounds)
        #: Training error after the initialisation (entry 0) and each least-squares round.
        self.round_errors: List[float] = []

    def train(self, x: ArrayLike) -> None:
        xm = _matrix(x, "x", self.d)
        m, rounds = _vqkit.aq_fit(
            xm, self.M, self.k, self.beam, self.niter, self.seed, self.ls_rounds,
            self.init, self.max_points_per_centroid, self.backend,
        )
        self.round_errors = list(rounds)
        self._finish(m, xm)


_CLASSES = {"rvq": ResidualQuantizer, "pvq": ProductQuantizer, "avq": AdditiveQuantizer}


def _wrap(model: Model, backend: str = "cpu") -> Union[Kmeans, _Codec, Model]:
    """A trained :class:`Model` as the class that trains its kind."""
    width, k = model.code_shape
    nbits = k.bit_length() - 1
    if model.kind == "kmeans":
        km = Kmeans(model.d, k, backend=backend)
        km.centroids = np.ascontiguousarray(model.codebooks[0])
        return km
    cls = _CLASSES.get(model.kind)
    if cls is None or (1 << nbits) != k:
        return model
    q = cls.__new__(cls)
    _Codec._init(q, model.d, width, nbits, backend)
    if cls is not ProductQuantizer:
        q.beam = None  # the beam width saved with the model
    q.model = model
    return q


def load(path: PathLike, backend: str = "cpu") -> Union[Kmeans, ResidualQuantizer, ProductQuantizer, AdditiveQuantizer, Model]:
    """Reads a model written by ``.save`` or by the CLI, as the class that trains its kind
    (a plain :class:`Model` for a VQ-VAE codebook or a codebook size not a power of two)."""
    return _wrap(_vqkit.load(os.fspath(path)), backend)


def train_nsvq(
    x: ArrayLike,
    method: str = "rvq",
    M: int = 2,
    nbits: int = 8,
    epochs: int = 5,
    batch: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    beam: int = 4,
    init_iters: int = 10,
    replace: Optional[Tuple[float, int]] = (0.01, 100),
    backend: str = "cpu",
) -> Tuple[Union[ResidualQuantizer, ProductQuantizer, AdditiveQuantizer], List[float]]:
    """Trains a residual (``"rvq"``), product (``"pvq"``) or additive (``"avq"``)
    quantizer by NSVQ (noise substitution, Adam); returns it and the training MSE after
    each epoch. ``replace = (discard_threshold, num_batches)`` replaces rarely used
    codewords every ``num_batches`` batches; ``None`` turns that off."""
    xm = _matrix(x, "x")
    model, epochs_mse = _vqkit.nsvq_fit(
        xm, method, int(M), 1 << _nbits(nbits), int(epochs), int(batch), float(lr), int(seed),
        int(beam), int(init_iters), replace, backend,
    )
    q = _wrap(model, backend)
    if not isinstance(q, _Codec):
        raise VqkitError(f"NSVQ returned an unexpected model: {model!r}")
    q._finish(model, xm)
    return q, list(epochs_mse)
