#!/usr/bin/env python3
"""FAISS and vqkit side by side on the same .npy data, one run each.

    python3 scripts/fashion_to_npy.py --out /tmp/fashion
    cargo build --release
    python3 scripts/compare_faiss.py --data /tmp/fashion/train.npy [--threads 2] [--only kmeans,rq,pq]

For every method both sides' reconstructions are scored the same way, in float64 numpy:
mse = mean_i |x_i - x^_i|^2 and relative error = mse / mean_i |x_i|^2. FAISS's figures come
from its own decode; vqkit's from the `mse` and `relative_error` in the `--json` line of its
CLI (computed by decoding its codes, in f64). Seconds: FAISS train (+ encode for RQ and PQ,
since vqkit's figure includes encoding the data); vqkit's own `seconds` field, which excludes
reading the file. The machine may be shared: timings are single runs and noisy.
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import faiss
import numpy as np


def mse(x, y):
    d = x.astype(np.float64) - y.astype(np.float64)
    return float((d * d).sum(1).mean())


def vqkit(binary, args):
    out = subprocess.run([binary] + args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--bin", default="target/release/vqkit")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--pq-m", type=int, default=8)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--only", default="kmeans,rq,pq")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    faiss.omp_set_num_threads(a.threads)
    x = np.ascontiguousarray(np.load(a.data).astype(np.float32))
    n, d = x.shape
    norm = float((x.astype(np.float64) ** 2).sum(1).mean())
    only = a.only.split(",")
    tmp = tempfile.mkdtemp(prefix="vqkit-cmp-")
    model = os.path.join(tmp, "m.safetensors")
    common = ["-i", a.data, "-o", model, "--json", "--threads", str(a.threads),
              "--seed", str(a.seed)]
    rows = []

    def add(method, who, m, secs, note=""):
        rows.append((method, who, m, m / norm, secs, note))

    if "kmeans" in only:
        km = faiss.Kmeans(d, a.k, niter=a.iters, seed=a.seed, verbose=False)
        t = time.time()
        km.train(x)
        secs = time.time() - t
        _, idx = km.index.search(x, 1)
        add(f"k-means k={a.k} it={a.iters}", "faiss.Kmeans (random init)",
            mse(x, km.centroids[idx[:, 0]]), secs)
        for init in ["random", "kmeans++"]:
            r = vqkit(a.bin, ["kmeans", "-k", str(a.k), "--iters", str(a.iters), "--init", init]
                      + common)
            add(f"k-means k={a.k} it={a.iters}", f"vqkit kmeans --init {init}", r["mse"],
                r["seconds"])

    if "rq" in only:
        nbits = int(np.log2(a.k))
        for beam in [1, a.beam]:
            rq = faiss.ResidualQuantizer(d, a.stages, nbits)
            rq.max_beam_size = beam
            rq.cp.niter = a.iters
            rq.cp.seed = a.seed
            t = time.time()
            rq.train(x)
            codes = rq.compute_codes(x)
            secs = time.time() - t
            add(f"RQ {a.stages}x{a.k}", f"faiss.ResidualQuantizer max_beam_size={beam}",
                mse(x, rq.decode(codes)), secs)
            r = vqkit(a.bin, ["rq-kmeans", "--stages", str(a.stages), "-k", str(a.k),
                              "--iters", str(a.iters), "--beam", str(beam)] + common)
            add(f"RQ {a.stages}x{a.k}", f"vqkit rq-kmeans --beam {beam}", r["mse"], r["seconds"])

    if "pq" in only:
        nbits = int(np.log2(a.k))
        pq = faiss.ProductQuantizer(d, a.pq_m, nbits)
        pq.cp.niter = a.iters
        pq.cp.seed = a.seed
        t = time.time()
        pq.train(x)
        codes = pq.compute_codes(x)
        secs = time.time() - t
        add(f"PQ M={a.pq_m} k={a.k}", "faiss.ProductQuantizer", mse(x, pq.decode(codes)), secs)
        r = vqkit(a.bin, ["pvq", "-m", str(a.pq_m), "-k", str(a.k), "--iters", str(a.iters)]
                  + common)
        add(f"PQ M={a.pq_m} k={a.k}", "vqkit pvq", r["mse"], r["seconds"])

    print(f"data {a.data}: n = {n}, d = {d}, mean |x|^2 = {norm:.1f}, threads = {a.threads}")
    print(f"{'method':<22} {'implementation':<42} {'mse':>12} {'rel.err':>9} {'seconds':>8}")
    for method, who, m, rel, secs, note in rows:
        print(f"{method:<22} {who:<42} {m:>12.2f} {rel:>9.5f} {secs:>8.2f} {note}")


if __name__ == "__main__":
    main()
