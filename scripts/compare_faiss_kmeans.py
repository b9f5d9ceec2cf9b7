#!/usr/bin/env python3
"""vqkit's `kmeans` (its default start) beside `faiss.Kmeans` on real vectors: same data,
same k, iterations, threads and points per centroid; runs alternating, medians.

    pip install faiss-cpu numpy safetensors
    python3 scripts/fashion_to_npy.py --out /tmp/fashion
    cargo build --release
    python3 scripts/compare_faiss_kmeans.py --data /tmp/fashion/train.npy --k 1024 4096 --reps 3

Both train on at most 256 points per centroid (FAISS's default subsample, vqkit's
`--max-points-per-centroid` default) for `--iters` Lloyd iterations and neither stops early
(vqkit `--tol 0`, its default). Inertia is scored the same way for both, in float64 numpy on
the whole file: mean_i min_j |x_i - c_j|^2, with the nearest centroid found by FAISS's exact
search. vqkit's seconds are its own `seconds` field (training, excluding file reading),
FAISS's the wall time of `train`. `init s` is vqkit's seeding time (`init_seconds`).
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import faiss
import numpy as np
from safetensors.numpy import load_file


def inertia(x, c):
    index = faiss.IndexFlatL2(c.shape[1])
    index.add(c.astype(np.float32))
    _, ids = index.search(x, 1)
    diff = x.astype(np.float64) - c[ids[:, 0]].astype(np.float64)
    return float((diff * diff).sum(1).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="float32 .npy, one vector per row")
    ap.add_argument("--bin", default="target/release/vqkit")
    ap.add_argument("--k", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--extra", default="", help="extra vqkit kmeans flags, e.g. '--init random'")
    ap.add_argument("--json", action="store_true", help="one JSON object per result line")
    args = ap.parse_args()

    x = np.load(args.data).astype(np.float32)
    n, d = x.shape
    faiss.omp_set_num_threads(args.threads)
    out = os.path.join(tempfile.mkdtemp(prefix="vqkit-km-"), "m.safetensors")
    if not args.json:
        print(f"{args.data}: n = {n}, d = {d}, {args.iters} iterations, {args.threads} threads, "
              f"{args.reps} alternating runs, medians")
        print(f"{'k':>5}  {'faiss s':>8} {'inertia':>12}  {'vqkit s':>8} {'init s':>7} "
              f"{'inertia':>12}  {'speedup':>7}  {'inertia ratio':>13}")
    for k in args.k:
        tf, tv, ti, jf, jv = [], [], [], [], []
        for r in range(args.reps):
            km = faiss.Kmeans(d, k, niter=args.iters, seed=args.seed + r, max_points_per_centroid=256)
            t = time.perf_counter()
            km.train(x)
            tf.append(time.perf_counter() - t)
            jf.append(inertia(x, km.centroids))
            cmd = [args.bin, "kmeans", "-i", args.data, "-k", str(k), "--iters", str(args.iters),
                   "--threads", str(args.threads), "--seed", str(args.seed + r), "-o", out,
                   "--json"] + args.extra.split()
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rep = json.loads(res.stdout.strip().splitlines()[-1])
            tv.append(rep["seconds"])
            ti.append(rep.get("init_seconds", float("nan")))
            jv.append(inertia(x, load_file(out)["centroids"]))
        row = dict(k=k, n=n, d=d, iters=args.iters, threads=args.threads,
                   faiss_s=statistics.median(tf), faiss_inertia=statistics.median(jf),
                   vqkit_s=statistics.median(tv), vqkit_init_s=statistics.median(ti),
                   vqkit_inertia=statistics.median(jv))
        row["speedup"] = row["faiss_s"] / row["vqkit_s"]
        row["inertia_ratio"] = row["vqkit_inertia"] / row["faiss_inertia"]
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{k:>5}  {row['faiss_s']:>8.2f} {row['faiss_inertia']:>12.1f}  "
                  f"{row['vqkit_s']:>8.2f} {row['vqkit_init_s']:>7.2f} {row['vqkit_inertia']:>12.1f}  "
                  f"{row['speedup']:>6.2f}x  {row['inertia_ratio']:>13.4f}", flush=True)


if __name__ == "__main__":
    main()
