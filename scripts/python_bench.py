#!/usr/bin/env python3
"""Benchmarks of the Python package (docs/python.md): each comparison in one run,
alternating the two sides, medians.

  overhead  vqkit.assign from Python against the same call in Rust (`vqkit assign --json`,
            whose `seconds` time the host call without file reading), n=100,000 d=128 k=1024
  calls     vqkit.assign at small shapes (n=100,000, k=16 or 256, d from 2 to 32), where
            what a call does around the kernel shows: the median of 101 calls against the
            kernel alone (`vqkit bench`'s median, its buffers allocated once)
  pq        vqkit.ProductQuantizer.compute_codes against faiss.ProductQuantizer's, the same
            codebooks (vqkit's, copied into FAISS), n = 200,000 clustered vectors of d = 128,
            M x nbits in 16 x 8, 32 x 8, 64 x 4, 32 x 4; how many codes differ
  rq        the same for vqkit.ResidualQuantizer (greedy, its default) against
            faiss.ResidualQuantizer with max_beam_size = 1, M x nbits in 8 x 8, 4 x 4, 16 x 4;
            both reconstructions' MSE; for both, decode (each side its own codes) too,
            and vqkit's decode into one array reused from call to call (out=)
  kmeans    vqkit.Kmeans.train against faiss.Kmeans.train on real vectors (Fashion-MNIST
            train images, d = 784), same threads and iterations; objectives of both
  ema       vqkit.ema_update on NumPy arrays against the same step in PyTorch ops (bincount,
            index_add_, lerp_, as vector-quantize-pytorch's EMA does it), at a VQ-VAE
            batch (2048 x 512 x 64), 8192 x 1024 x 256 and 100,000 x 1024 x 128
  layer     vqkit.torch.VectorQuantize against vector-quantize-pytorch's, forward and
            backward in training mode, codebook 8192, dim 256, 32,768 vectors; and the peak
            memory of one step of each, each in a fresh process

Install the release build first (`pip install ./crates/vqkit-python`, plus faiss-cpu,
torch, vector-quantize-pytorch) and build the CLI (`cargo build --release`):

    python3 scripts/python_bench.py overhead kmeans ema layer --reps 5
    OPENBLAS_NUM_THREADS=1 python3 scripts/python_bench.py pq rq --reps 5 --threads 2
    OPENBLAS_NUM_THREADS=1 taskset -c 1 python3 scripts/python_bench.py calls --threads 1
"""

import argparse
import gzip
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def peak_bytes():
    """This process's peak resident memory (VmHWM), in bytes."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def median_ms(ts):
    return 1e3 * statistics.median(ts)


def overhead(reps, threads):
    import vqkit

    vqkit.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100_000, 128), dtype=np.float32)
    c = np.ascontiguousarray(x[rng.choice(len(x), 1024, replace=False)])
    cli = REPO / "target" / "release" / "vqkit"
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/x.npy", x)
        np.save(f"{tmp}/c.npy", c)
        vqkit.assign(x, c)  # warm: pools, pages
        py, rs = [], []
        for _ in range(reps):
            t = time.perf_counter()
            vqkit.assign(x, c)
            py.append(time.perf_counter() - t)
            out = subprocess.run(
                [str(cli), "assign", "-i", f"{tmp}/x.npy", "-c", f"{tmp}/c.npy", "-o",
                 f"{tmp}/codes.npy", "--threads", str(threads), "--json"],
                check=True, capture_output=True, text=True,
            )
            rs.append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
    p, r = median_ms(py), median_ms(rs)
    gflop = 2 * 100_000 * 1024 * 128 / 1e9
    print(f"| assign n=100000 d=128 k=1024, {threads} threads | {r:.1f} ms ({gflop / r * 1e3:.0f} GFLOP/s) "
          f"| {p:.1f} ms ({gflop / p * 1e3:.0f} GFLOP/s) | {100 * (p / r - 1):+.1f}% |")


def calls(threads):
    import vqkit

    vqkit.set_num_threads(threads)
    rng = np.random.default_rng(1)
    cli = REPO / "target" / "release" / "vqkit"
    for k, d in ((16, 2), (16, 8), (16, 32), (256, 8)):
        n = 100_000
        x = rng.standard_normal((n, d), dtype=np.float32)
        c = np.ascontiguousarray(x[rng.choice(n, k, replace=False)])
        vqkit.assign(x[:1000], c)  # warm: pools, pages
        py = []
        for _ in range(101):
            t = time.perf_counter()
            vqkit.assign(x, c)
            py.append(time.perf_counter() - t)
        out = subprocess.run(
            [str(cli), "bench", "--op", "assign", "--n", str(n), "--k", str(k), "--d", str(d),
             "--threads", str(threads), "--seconds", "0.3", "--json"],
            check=True, capture_output=True, text=True,
        )
        kernel = 1e3 * json.loads(out.stdout.splitlines()[0])["median_s"]
        p = median_ms(py)
        print(f"| assign n={n} k={k} d={d}, {threads} threads | {kernel:.3f} ms (the kernel) "
              f"| {p:.3f} ms | {p / kernel:.2f}x |")


def codecs(what, reps, threads):
    """PQ or greedy RQ codes of vqkit and FAISS from the same codebooks (vqkit's)."""
    # FAISS's OpenMP threads busy-wait after each call by default (see
    # scripts/compare_faiss_assign.py): set before FAISS loads, unless set already.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import faiss
    import vqkit

    vqkit.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(2)
    n, d = 200_000, 128
    centres = rng.standard_normal((1000, d), dtype=np.float32)
    x = centres[rng.integers(0, 1000, n)] + 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    shapes = ((16, 8), (32, 8), (64, 4), (32, 4)) if what == "pq" else ((8, 8), (4, 4), (16, 4))
    for m, nbits in shapes:
        if what == "pq":
            ours = vqkit.ProductQuantizer(d, m, nbits, niter=10)
            ours.train(x[:20_000])
            theirs = faiss.ProductQuantizer(d, m, nbits)
            books = np.ascontiguousarray(ours.codebooks).ravel()
            faiss.copy_array_to_vector(books, theirs.centroids)
        else:
            ours = vqkit.ResidualQuantizer(d, m, nbits, niter=10)
            ours.train(x[:20_000])
            theirs = faiss.ResidualQuantizer(d, m, nbits)
            theirs.max_beam_size = 1  # greedy, as vqkit's default beam
            theirs.train(x[:20_000])  # then its codebooks replaced by vqkit's
            books = np.ascontiguousarray(ours.codebooks).ravel()
            faiss.copy_array_to_vector(books, theirs.codebooks)
            theirs.compute_codebook_tables()
        ours.compute_codes(x[:1000]), theirs.compute_codes(x[:1000])  # warm: pools, pages
        tf, tv = [], []
        for _ in range(reps):
            t = time.perf_counter()
            cf = theirs.compute_codes(x)
            tf.append(time.perf_counter() - t)
            t = time.perf_counter()
            cv = ours.compute_codes(x)
            tv.append(time.perf_counter() - t)
        if nbits == 4:  # FAISS packs two codes a byte, the first in the low half
            cf = np.stack([cf & 15, cf >> 4], axis=2).reshape(n, m)
        differ = f"{int(np.sum(cv != cf))} of {cv.size} codes differ"
        if what == "rq":
            mse = [float(np.mean(np.sum((x - r) ** 2, axis=1)))
                   for r in (theirs.decode(theirs.compute_codes(x)), ours.decode(cv))]
            differ += f"; MSE {mse[0]:.4f} (FAISS) and {mse[1]:.4f}"
        f, v = median_ms(tf), median_ms(tv)
        name = "PQ" if what == "pq" else "RQ (greedy)"
        print(f"| {name} compute_codes n={n} d={d} M={m} nbits={nbits}, {threads} threads "
              f"| {f:.1f} ms | {v:.1f} ms | {f / v:.2f}x | ({differ})")
        # Each side decodes its own codes (the same codes but for the few that differ).
        # vqkit's decode also into one array reused from call to call (`out=`), which
        # spares the kernel's zeroing of a fresh array's pages.
        cf_packed = theirs.compute_codes(x)
        buf = np.empty((n, d), np.float32)
        tf, tv, to = [], [], []
        for _ in range(reps):
            t = time.perf_counter()
            theirs.decode(cf_packed)
            tf.append(time.perf_counter() - t)
            t = time.perf_counter()
            ours.decode(cv)
            tv.append(time.perf_counter() - t)
            t = time.perf_counter()
            ours.decode(cv, out=buf)
            to.append(time.perf_counter() - t)
        f, v, o = median_ms(tf), median_ms(tv), median_ms(to)
        print(f"| {name} decode n={n} d={d} M={m} nbits={nbits}, {threads} threads "
              f"| {f:.1f} ms | {v:.1f} ms | {f / v:.2f}x | |")
        print(f"| {name} decode into out= n={n} d={d} M={m} nbits={nbits}, {threads} threads "
              f"| {f:.1f} ms | {o:.1f} ms | {f / o:.2f}x | |")


def ema(reps, threads):
    # PyTorch's OpenMP threads busy-wait after each op by default and take the cores from
    # the vqkit call that follows (see scripts/compare_faiss_assign.py): set before torch
    # loads, unless set already.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    import vqkit

    vqkit.set_num_threads(threads)
    torch.set_num_threads(threads)
    decay, eps = 0.99, 1e-5
    for n, k, d in ((2048, 512, 64), (8192, 1024, 256), (100_000, 1024, 128)):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, d), dtype=np.float32)
        idx = rng.integers(0, k, n)
        start = rng.standard_normal((k, d), dtype=np.float32)
        ours = [np.zeros(k, np.float32), start.copy(), start.copy()]
        tx, ti = torch.from_numpy(x), torch.from_numpy(idx)
        theirs = [torch.zeros(k), torch.from_numpy(start.copy()), torch.from_numpy(start.copy())]

        def torch_step():
            size, esum, code = theirs
            counts = torch.bincount(ti, minlength=k).to(torch.float32)
            sums = torch.zeros(k, d).index_add_(0, ti, tx)
            size.lerp_(counts, 1 - decay)
            esum.lerp_(sums, 1 - decay)
            total = size.sum()
            code.copy_(esum / ((size + eps) / (total + k * eps) * total)[:, None])

        vqkit.ema_update(x, idx, *ours, decay=decay, eps=eps)  # warm: pools, pages
        torch_step()
        py, th = [], []
        for _ in range(reps):
            t = time.perf_counter()
            torch_step()
            th.append(time.perf_counter() - t)
            t = time.perf_counter()
            vqkit.ema_update(x, idx, *ours, decay=decay, eps=eps)
            py.append(time.perf_counter() - t)
        a, b = median_ms(py), median_ms(th)
        gbs = n * d * 4 / 1e6
        print(f"| ema_update n={n} k={k} d={d}, {threads} threads | {b:.3f} ms ({gbs / b:.1f} GB/s of x) "
              f"| {a:.3f} ms ({gbs / a:.1f} GB/s of x) | {b / a:.2f}x |")


def fashion_train():
    raw = gzip.open(FASHION).read()
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255.0


def kmeans(reps, threads, k):
    import faiss
    import vqkit

    faiss.omp_set_num_threads(threads)
    vqkit.set_num_threads(threads)
    x = np.ascontiguousarray(fashion_train())
    n, d = x.shape
    ours_t, theirs_t, ours_o, theirs_o = [], [], [], []
    for rep in range(reps):
        km = vqkit.Kmeans(d, k, niter=20, seed=rep)
        t = time.perf_counter()
        km.train(x)
        ours_t.append(time.perf_counter() - t)
        ours_o.append(float(vqkit.assign(x, km.centroids)[0].astype(np.float64).sum()))
        fk = faiss.Kmeans(d, k, niter=20, seed=rep)
        t = time.perf_counter()
        fk.train(x)
        theirs_t.append(time.perf_counter() - t)
        theirs_o.append(float(vqkit.assign(x, fk.centroids)[0].astype(np.float64).sum()))
    a, b = statistics.median(ours_t), statistics.median(theirs_t)
    print(f"| Fashion-MNIST n={n} d={d} k={k}, 20 iter, {threads} threads | {b:.2f} s, objective "
          f"{statistics.median(theirs_o):.5g} | {a:.2f} s, objective {statistics.median(ours_o):.5g} "
          f"| {b / a:.2f}x |")


LAYER = dict(codebook_size=8192, dim=256, n=32_768)


def layer_step(which, steps):
    """Forward and backward of one layer in training mode; returns the seconds per step."""
    import torch

    torch.manual_seed(0)
    k, d, n = LAYER["codebook_size"], LAYER["dim"], LAYER["n"]
    if which == "vqkit":
        from vqkit.torch import VectorQuantize
        layer = VectorQuantize(dim=d, codebook_size=k).train()
    else:
        from vector_quantize_pytorch import VectorQuantize
        layer = VectorQuantize(dim=d, codebook_size=k, rotation_trick=False).train()
    x = torch.randn(8, n // 8, d)
    ts = []
    for _ in range(steps):
        xi = x.clone().requires_grad_()
        t = time.perf_counter()
        q, _, loss = layer(xi)
        (q.sum() + loss).backward()
        ts.append(time.perf_counter() - t)
    return ts


def layer(reps, threads):
    import torch

    torch.set_num_threads(threads)
    import vqkit
    vqkit.set_num_threads(threads)
    ours, theirs = [], []
    for _ in range(reps):
        ours += layer_step("vqkit", 1)
        theirs += layer_step("vector-quantize-pytorch", 1)
    a, b = statistics.median(ours), statistics.median(theirs)
    mem = {}
    for which in ("vqkit", "vector-quantize-pytorch"):
        # VmHWM, the peak resident memory of this process image (ru_maxrss would carry
        # the parent's peak over into the child).
        code = (f"import sys; sys.path.insert(0, {str(REPO / 'scripts')!r}); import python_bench as p, torch; "
                f"torch.set_num_threads({threads}); base = p.peak_bytes(); "
                f"p.layer_step({which!r}, 1); print(p.peak_bytes() - base)")
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        mem[which] = int(out.stdout.split()[-1]) / 2**20
    nk = LAYER["n"] * LAYER["codebook_size"] * 4 / 2**20
    print(f"| VectorQuantize fwd+bwd, K=8192 dim=256 n=32768, {threads} threads | {b:.2f} s, peak +{mem['vector-quantize-pytorch']:.0f} MiB "
          f"| {a:.2f} s, peak +{mem['vqkit']:.0f} MiB | {b / a:.2f}x |  (one n x k f32 matrix: {nk:.0f} MiB)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="+",
                    choices=["overhead", "calls", "pq", "rq", "kmeans", "ema", "layer"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--k", type=int, default=1024)
    a = ap.parse_args()
    print(f"| benchmark | reference | vqkit (Python) | ratio |\n|---|---|---|---|")
    for w in a.what:
        if w == "overhead":
            overhead(a.reps, a.threads)
        elif w == "calls":
            calls(a.threads)
        elif w in ("pq", "rq"):
            codecs(w, a.reps, a.threads)
        elif w == "kmeans":
            kmeans(a.reps, a.threads, a.k)
        elif w == "ema":
            ema(a.reps, a.threads)
        else:
            layer(a.reps, a.threads)


if __name__ == "__main__":
    main()
