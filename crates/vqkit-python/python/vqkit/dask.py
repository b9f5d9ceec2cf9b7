"""k-means and RQ-K-means on Dask: vqkit's kernels on data no machine holds.

The classes mirror the single-machine ones (same constructor arguments, ``.train(X)``,
``.centroids``, ``.obj``, ``.compute_codes``, ``.decode``), take a 2-D Dask array and
never gather it: every Lloyd step maps :func:`vqkit.partial_stats` (the fused assignment
and per-cluster sums in float64) over the blocks, where they lie, and reduces the
per-block results in a fixed binary tree over the block order::

    iteration:   (sums_b, counts_b, inertia_b) = partial_stats(X_b, C)     on the workers
                 S, N, I = ((b0 + b1) + (b2 + b3)) + ...                   fixed tree
                 C_j <- S_j / N_j  (empty clusters split, as on one machine)  on the client

Each addition is in float64 and in the same order whichever worker ran which block, so
a fit is bit-identical from run to run, with 1 or 100 workers, and after a worker dies
and Dask recomputes its blocks. Per iteration the client sends the centroids (k x d
float32) and receives, per block, k x d float64 sums: the cost model in docs/dask.md.

It runs on whatever Dask scheduler is current: a ``dask.distributed.Client`` (a
``LocalCluster`` or workers on many machines), or Dask's local schedulers.

Reading data where it lies: :func:`read_npy` (``.npy`` shards, memory-mapped on the
workers), :func:`read_zarr`; writing codes: :func:`to_npy_shards`, or ``.to_zarr``.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import dask
import dask.array as da
import numpy as np

from . import Kmeans as _LocalKmeans
from . import VqkitError, _code_dtype, _codes, _nbits, _vqkit, assign, partial_stats

__all__ = ["Kmeans", "ResidualQuantizer", "read_npy", "read_zarr", "to_npy_shards"]


def _prepare(X: Any, d: Optional[int] = None) -> da.Array:
    """``X`` as a 2-D float32 Dask array with whole rows per block."""
    if not isinstance(X, da.Array):
        X = da.from_array(np.asarray(X))
    if X.ndim != 2:
        raise VqkitError(f"X must be a 2-D Dask array (n, d); got shape {X.shape}")
    if d is not None and X.shape[1] != d:
        raise VqkitError(f"X has d = {X.shape[1]}; this quantizer expects d = {d}")
    if X.dtype != np.float32:
        X = X.astype(np.float32)
    if len(X.chunks[1]) > 1:
        X = X.rechunk({1: -1})
    return X


def _blocks(X: da.Array) -> List[Any]:
    return list(X.to_delayed().ravel())


def _stats(block: np.ndarray, centroids: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float]:
    if len(block) == 0:
        k, d = centroids.shape
        return np.zeros((k, d)), np.zeros(k, np.int64), 0.0
    return partial_stats(block, centroids)


def _add(a: Tuple, b: Tuple) -> Tuple:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def tree_reduce(parts: Sequence[Any], combine: Callable[[Any, Any], Any]) -> Any:
    """``parts`` combined pairwise in a fixed binary tree over their order: the result
    does not depend on which worker computed which part, or when."""
    parts = list(parts)
    if not parts:
        raise VqkitError("X has no blocks")
    while len(parts) > 1:
        parts = [
            dask.delayed(combine, pure=True)(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
            for i in range(0, len(parts), 2)
        ]
    return parts[0]


def lloyd_stats(X: da.Array, centroids: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float]:
    """One distributed assignment: ``(sums (k, d) float64, counts (k,), inertia)`` over X."""
    c = dask.delayed(np.ascontiguousarray(centroids, dtype=np.float32), pure=True)
    parts = [dask.delayed(_stats, pure=True)(b, c) for b in _blocks(X)]
    return dask.compute(tree_reduce(parts, _add))[0]


def _split_empty(c: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> int:
    """Empty clusters take half of a large one (chosen with probability proportional to
    ``size - 1``, as on one machine and in FAISS): its centroid, nudged apart by a
    relative 1/1024 in opposite directions."""
    sizes = counts.astype(np.float64)
    empty = np.flatnonzero(counts == 0)
    for j in empty:
        w = np.maximum(sizes - 1, 0)
        if w.sum() <= 0:
            break
        m = rng.choice(len(sizes), p=w / w.sum())
        e = np.where(rng.random(c.shape[1]) < 0.5, -1.0, 1.0).astype(np.float32) / 1024
        c[j] = c[m] * (1 + e)
        c[m] = c[m] * (1 - e)
        half = np.floor(sizes[m] / 2)
        sizes[j], sizes[m] = half, sizes[m] - half
    return len(empty)


def _sample(X: da.Array, m: int, seed: int) -> np.ndarray:
    """``m`` distinct rows of X chosen by one seeded draw, gathered (only their blocks are
    read)."""
    n = X.shape[0]
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(m, n), replace=False))
    return np.ascontiguousarray(X[rows].compute(), dtype=np.float32)


class Kmeans:
    """Distributed k-means with :class:`vqkit.Kmeans`'s interface.

    ``init``: ``"kmeans++"`` runs D^2 seeding on a seeded sample of
    ``k * sample_points_per_centroid`` rows (k-means++ on a sample); ``"random"`` takes k
    rows of that sample. ``train(X, init_centroids=C)`` starts from given centroids.
    ``callback(iteration, objective)`` is called after each Lloyd step.
    """

    def __init__(
        self,
        d: int,
        k: int,
        niter: int = 20,
        seed: int = 1234,
        init: str = "kmeans++",
        sample_points_per_centroid: int = 32,
        verbose: bool = False,
    ) -> None:
        if init not in ("kmeans++", "random"):
            raise VqkitError(f"unknown init '{init}'; expected kmeans++ or random")
        self.d, self.k, self.niter, self.seed, self.init = int(d), int(k), int(niter), int(seed), init
        self.sample_points_per_centroid = int(sample_points_per_centroid)
        self.verbose = verbose
        self.centroids: Optional[np.ndarray] = None
        #: The objective (sum of squared distances over X) at each iteration's assignment.
        self.obj: np.ndarray = np.zeros(0)
        #: Empty clusters split over the fit.
        self.repaired = 0

    def _seed_centroids(self, X: da.Array) -> np.ndarray:
        if X.shape[0] < self.k:
            raise VqkitError(f"k = {self.k} is larger than the number of points n = {X.shape[0]}")
        s = _sample(X, self.k * max(self.sample_points_per_centroid, 1), self.seed)
        if self.init == "random":
            pick = np.random.default_rng(self.seed + 1).choice(len(s), self.k, replace=False)
            return np.ascontiguousarray(s[np.sort(pick)])
        km = _LocalKmeans(self.d, self.k, niter=0, seed=self.seed, init="kmeans++", max_points_per_centroid=0)
        km.train(s)
        assert km.centroids is not None
        return km.centroids

    def train(
        self,
        X: Any,
        init_centroids: Optional[Any] = None,
        callback: Optional[Callable[[int, float], None]] = None,
    ) -> float:
        """Fits the centroids on the Dask array X; returns the last iteration's objective."""
        X = _prepare(X, self.d)
        if init_centroids is None:
            c = self._seed_centroids(X)
        else:
            c = np.array(init_centroids, dtype=np.float32, order="C")
            if c.shape != (self.k, self.d):
                raise VqkitError(f"init_centroids must have shape ({self.k}, {self.d}); got {c.shape}")
        rng = np.random.default_rng(self.seed)
        obj: List[float] = []
        prev: Optional[Tuple[float, np.ndarray]] = None
        self.repaired = 0
        for it in range(self.niter):
            sums, counts, inertia = lloyd_stats(X, c)
            obj.append(float(inertia))
            new = c.copy()
            full = counts > 0
            new[full] = (sums[full] / counts[full, None]).astype(np.float32)
            repaired = _split_empty(new, counts, rng) if (~full).any() else 0
            self.repaired += repaired
            if self.verbose:
                print(f"vqkit.dask k-means: iteration {it} objective {inertia:.6e}")
            if callback is not None:
                callback(it, float(inertia))
            # A fixed point, as on one machine: the same objective and cluster sizes twice.
            if repaired == 0 and prev is not None and prev[0] == inertia and np.array_equal(prev[1], counts):
                c = new
                break
            prev = (float(inertia), counts) if repaired == 0 else None
            c = new
        self.centroids, self.obj = c, np.asarray(obj)
        return float(self.obj[-1]) if self.obj.size else 0.0

    def assign(self, X: Any) -> Tuple[da.Array, da.Array]:
        """``(D, I)`` as Dask arrays, computed block by block."""
        c = self._trained()
        X = _prepare(X, self.d)
        D = X.map_blocks(lambda b: assign(b, c)[0], drop_axis=1, dtype=np.float32)
        I = X.map_blocks(lambda b: assign(b, c)[1], drop_axis=1, dtype=np.int64)
        return D, I

    def _trained(self) -> np.ndarray:
        if self.centroids is None:
            raise VqkitError("this Kmeans is not trained: call train(X) first")
        return self.centroids

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Writes the centroids as ``vqkit kmeans -o`` does."""
        _vqkit.kmeans_model(self._trained()).save(os.fspath(path))


def _residual(block: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    if len(block) == 0:
        return block
    return block - codebook[assign(block, codebook)[1]]


def _encode(block: np.ndarray, codebooks: np.ndarray, dtype: np.dtype) -> np.ndarray:
    # The single-machine encoder: every stage run on a block of rows while it is in cache,
    # the codes written in their dtype; the codes of the loop per stage (assign, then the
    # residual less its codeword, in float32), bit for bit.
    x = _aligned(block)
    return _model(codebooks).encode(x, None, "cpu", np.dtype(dtype).itemsize)


def _decode(codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    # Codes of up to 32 unsigned bits are read in place; others are checked and converted.
    # Codes read back through read_npy are float32: converted where they are integers.
    c = np.asarray(codes)
    if c.dtype.kind == "b":
        c = c.astype(np.uint8)
    elif c.dtype.kind == "f":
        whole = c.astype(np.int64)
        if not np.array_equal(whole, c):
            raise VqkitError("codes must be integers; these floats are not")
        c = whole
    return _model(codebooks).decode(_codes(c, len(codebooks)))


def _aligned(a: np.ndarray) -> np.ndarray:
    # Arrays unpickled on a worker can be misaligned: copied once then.
    return np.require(a, dtype=np.float32, requirements=["C_CONTIGUOUS", "ALIGNED"])


def _model(codebooks: np.ndarray) -> Any:
    return _vqkit.rvq_model(_aligned(codebooks))


class ResidualQuantizer:
    """Distributed RQ-K-means with :class:`vqkit.ResidualQuantizer`'s interface (greedy
    encoding): stage ``s`` is a distributed k-means on the residuals of stages ``0..s``,
    computed block by block on the workers from the earlier codebooks (and kept there,
    ``persist``-ed, while the stage trains), never on the client."""

    def __init__(
        self,
        d: int,
        M: int,
        nbits: int,
        niter: int = 20,
        seed: int = 0,
        init: str = "kmeans++",
        sample_points_per_centroid: int = 32,
    ) -> None:
        self.d, self.M, self.nbits = int(d), int(M), _nbits(nbits)
        self.niter, self.seed, self.init = int(niter), int(seed), init
        self.sample_points_per_centroid = int(sample_points_per_centroid)
        self.codebooks: Optional[np.ndarray] = None
        #: Per stage: ``mse`` (mean squared norm of the residual) and ``relative_error``.
        self.stage_errors: List[dict] = []

    @property
    def k(self) -> int:
        return 1 << self.nbits

    def train(self, X: Any) -> None:
        X = _prepare(X, self.d)
        n = X.shape[0]
        norm = float(da.sum(X.astype(np.float64) ** 2).compute()) / max(n, 1)
        books: List[np.ndarray] = []
        self.stage_errors = []
        R = X
        for s in range(self.M):
            km = Kmeans(self.d, self.k, self.niter, seed=self.seed + 1000 * s, init=self.init,
                        sample_points_per_centroid=self.sample_points_per_centroid)
            km.train(R)
            c = km._trained()
            books.append(c)
            R = R.map_blocks(_residual, c, dtype=np.float32)
            R = R.persist()
            mse = float(da.sum(R.astype(np.float64) ** 2).compute()) / max(n, 1)
            self.stage_errors.append({"stage": s, "mse": mse, "relative_error": mse / norm if norm else 0.0})
        self.codebooks = np.stack(books)

    def _trained(self) -> np.ndarray:
        if self.codebooks is None:
            raise VqkitError("this ResidualQuantizer is not trained: call train(X) first")
        return self.codebooks

    def compute_codes(self, X: Any) -> da.Array:
        """Codes (n, M) as a Dask array, encoded block by block."""
        books = self._trained()
        X = _prepare(X, self.d)
        dt = _code_dtype(self.nbits)
        return X.map_blocks(_encode, books, dt, chunks=(X.chunks[0], (self.M,)), dtype=dt)

    def decode(self, codes: Any) -> da.Array:
        """Reconstructions (n, d) as a Dask array."""
        books = self._trained()
        if not isinstance(codes, da.Array):
            codes = da.from_array(np.asarray(codes))
        if codes.ndim != 2 or codes.shape[1] != self.M:
            raise VqkitError(f"codes must have shape (n, {self.M}); got {codes.shape}")
        codes = codes.rechunk({1: -1})
        return codes.map_blocks(_decode, books, chunks=(codes.chunks[0], (self.d,)), dtype=np.float32)

    def to_local(self) -> Any:
        """The trained quantizer as a single-machine :class:`vqkit.ResidualQuantizer`
        (which saves it in the CLI's format)."""
        from . import ResidualQuantizer as Local, _wrap

        q = _wrap(_vqkit.rvq_model(self._trained()))
        assert isinstance(q, Local)
        q.stage_errors = list(self.stage_errors)
        return q

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        self.to_local().save(path)


def _by_number(name: str) -> List[Union[int, str]]:
    # Runs of digits compared as numbers: lexical order put 10.npy before 2.npy.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _load_rows(path: str, start: int, stop: int) -> np.ndarray:
    a = np.load(path, mmap_mode="r")
    return np.ascontiguousarray(a[start:stop], dtype=np.float32)


def read_npy(paths: Union[str, Sequence[str]], rows_per_block: int = 65_536) -> da.Array:
    """A Dask array over ``.npy`` shards (a list, a glob pattern, or a directory of
    ``*.npy``), concatenated in name order, numbers by value (``2.npy`` before ``10.npy``,
    as :func:`to_npy_shards` numbers them). Each block is a range of rows that the worker
    computing it reads from a memory map of its shard: the client reads only headers."""
    if isinstance(paths, str):
        pattern = os.path.join(paths, "*.npy") if os.path.isdir(paths) else paths
        paths = sorted(glob.glob(pattern), key=_by_number)
    if not paths:
        raise FileNotFoundError("no .npy shards found")
    blocks = []
    d = None
    for p in paths:
        a = np.load(p, mmap_mode="r")
        if a.ndim != 2:
            raise VqkitError(f"{p}: shape {a.shape} is not (n, d)")
        if d is not None and a.shape[1] != d:
            raise VqkitError(f"{p}: d = {a.shape[1]}, earlier shards have d = {d}")
        d = a.shape[1]
        for start in range(0, a.shape[0], rows_per_block):
            stop = min(start + rows_per_block, a.shape[0])
            blocks.append(da.from_delayed(dask.delayed(_load_rows, pure=True)(p, start, stop),
                                          shape=(stop - start, d), dtype=np.float32))
    return da.concatenate(blocks, axis=0)


def read_zarr(url: str, component: Optional[str] = None) -> da.Array:
    """A Dask array over a zarr store (local path or URL), chunked as stored."""
    return da.from_zarr(url, component=component)


def to_npy_shards(codes: da.Array, directory: str) -> None:
    """Writes a Dask array as one ``.npy`` shard per block (``dask.array.to_npy_stack``),
    each by the worker that computed it."""
    da.to_npy_stack(directory, codes, axis=0)
