#!/usr/bin/env python3
"""Distributed k-means on Dask against single-machine vqkit.Kmeans and dask-ml's KMeans
(docs/dask.md). One run, the same data and starting centroids for all three, alternating
repetitions, medians.

  data       n x d float32, a seeded mixture of 4k Gaussians, chunked in row blocks
  single     vqkit.Kmeans(...).train(x, init_centroids=C0), every point (no subsampling)
  vqkit.dask vqkit.dask.Kmeans on a LocalCluster of W single-threaded worker processes
  dask-ml    dask_ml.cluster.KMeans(init=C0) on the same cluster (optional: --dask-ml)

Each prints seconds per fit, seconds per Lloyd iteration and the final objective over
all points; and, for the cost model, the seconds of one `partial_stats` call on one block
on one core.

    python3 scripts/dask_bench.py --n 1000000 --d 128 --k 1024 --iters 10 --reps 3 --dask-ml
"""

import argparse
import statistics
import time

import dask.array as da
import numpy as np
from distributed import Client, LocalCluster

import vqkit
import vqkit.dask as vd


def objective(x, c):
    return float(vqkit.assign(x, c)[0].astype(np.float64).sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dask-ml", action="store_true")
    a = ap.parse_args()

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4 * a.k, a.d)).astype(np.float32) * 2
    x = centres[rng.integers(0, len(centres), a.n)]
    x += rng.standard_normal(x.shape, dtype=np.float32)
    c0 = np.ascontiguousarray(x[rng.choice(a.n, a.k, replace=False)])
    rows = -(-a.n // a.blocks)
    gflop = 2 * a.n * a.k * a.d * a.iters / 1e9

    with LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=40) as cluster, Client(cluster) as client:
        client.run(vqkit.set_num_threads, 1)
        X = da.from_array(x, chunks=(rows, a.d)).persist()
        client.wait_for_workers(a.workers)
        vqkit.set_num_threads(a.workers)
        times = {"single": [], "vqkit.dask": [], "dask-ml": []}
        objs = {}
        for _ in range(a.reps):
            km = vqkit.Kmeans(a.d, a.k, niter=a.iters, max_points_per_centroid=0)
            t = time.perf_counter()
            km.train(x, init_centroids=c0)
            times["single"].append(time.perf_counter() - t)
            objs["single"] = objective(x, km.centroids)
            dk = vd.Kmeans(a.d, a.k, niter=a.iters)
            t = time.perf_counter()
            dk.train(X, init_centroids=c0)
            times["vqkit.dask"].append(time.perf_counter() - t)
            objs["vqkit.dask"] = objective(x, dk.centroids)
            if a.dask_ml:
                from dask_ml.cluster import KMeans as DaskMLKMeans

                m = DaskMLKMeans(n_clusters=a.k, init=c0, max_iter=a.iters, tol=0.0, random_state=0)
                t = time.perf_counter()
                m.fit(X)
                times["dask-ml"].append(time.perf_counter() - t)
                objs["dask-ml"] = objective(x, np.asarray(m.cluster_centers_, dtype=np.float32))
        one = x[:rows]
        vqkit.set_num_threads(1)
        vqkit.partial_stats(one, c0)
        t = time.perf_counter()
        vqkit.partial_stats(one, c0)
        block_s = time.perf_counter() - t

    print(f"n={a.n} d={a.d} k={a.k}, {a.iters} iterations, {a.workers} workers x 1 thread, "
          f"{a.blocks} blocks of {rows} rows, {a.reps} reps (medians)\n")
    print("| | seconds per fit | per iteration | GFLOP/s | objective | vs single |")
    print("|---|---:|---:|---:|---:|---:|")
    base = statistics.median(times["single"])
    for name, ts in times.items():
        if not ts:
            continue
        s = statistics.median(ts)
        print(f"| {name} | {s:.2f} | {s / a.iters:.3f} | {gflop / s:.0f} | {objs[name]:.6e} | {s / base:.2f}x time |")
    print(f"\none partial_stats call on one block ({rows} rows), one core: {block_s:.3f} s "
          f"({2 * rows * a.k * a.d / block_s / 1e9:.0f} GFLOP/s); result k x d x 8 = "
          f"{a.k * a.d * 8 / 2**20:.1f} MiB per block per iteration")


if __name__ == "__main__":
    main()
