#!/usr/bin/env python3
"""Initialisation matters when there are many true clusters: FAISS's random start against
vqkit's k-means++ (built on the distance kernels) on Gaussian clusters.

    python3 scripts/init_benchmark.py [--n 100000 --d 128 --clusters 1000 --k 1024 --iters 20]

Data: `clusters` centres ~ N(0, 1) in d dimensions, points = centre + sigma N(0, I), seeded.
MSE is mean_i |x_i - c(x_i)|^2 in float64 for both; seconds are training time (vqkit's own
`seconds` field excludes reading the file). One run each on a possibly shared machine.
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import faiss
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bin", default="target/release/vqkit")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((a.clusters, a.d)).astype(np.float32)
    labels = rng.integers(0, a.clusters, a.n)
    x = centres[labels] + a.sigma * rng.standard_normal((a.n, a.d)).astype(np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    tmp = tempfile.mkdtemp(prefix="vqkit-init-")
    path = os.path.join(tmp, "x.npy")
    np.save(path, x)
    faiss.omp_set_num_threads(a.threads)
    rows = []
    km = faiss.Kmeans(a.d, a.k, niter=a.iters, seed=1, verbose=False)
    t = time.time()
    km.train(x)
    secs = time.time() - t
    _, idx = km.index.search(x, 1)
    diff = x.astype(np.float64) - km.centroids[idx[:, 0]]
    rows.append(("faiss.Kmeans (random init)", float((diff * diff).sum(1).mean()), secs))
    for init in ["random", "kmeans++"]:
        out = subprocess.run(
            [a.bin, "kmeans", "-i", path, "-k", str(a.k), "--iters", str(a.iters), "--init", init,
             "--threads", str(a.threads), "--seed", "1", "-o", os.path.join(tmp, "m.safetensors"),
             "--json"], check=True, capture_output=True, text=True).stdout
        v = json.loads(out.strip().splitlines()[-1])
        rows.append((f"vqkit kmeans --init {init}", v["mse"], v["seconds"]))
    print(f"n = {a.n}, d = {a.d}, {a.clusters} true clusters (sigma {a.sigma}, "
          f"true-partition MSE ~ {a.d * a.sigma ** 2:.1f}), k = {a.k}, {a.iters} iterations, "
          f"threads = {a.threads}")
    print(f"{'implementation':<32} {'mse':>10} {'seconds':>8}")
    for who, m, s in rows:
        print(f"{who:<32} {m:>10.2f} {s:>8.2f}")


if __name__ == "__main__":
    main()
