#!/usr/bin/env python3
"""The Dask engine's cost per task for vqkit.dask's Lloyd step (docs/dask.md): one
iteration of `lloyd_stats` on tiny blocks (so the kernels cost nothing), for 100, 1000
and 4000 blocks, on a LocalCluster of two single-threaded worker processes; median of 3.

    python3 scripts/dask_scheduler_cost.py
"""
import time, numpy as np, dask.array as da, vqkit, vqkit.dask as vd
from distributed import Client, LocalCluster
if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40) as cl, Client(cl) as c:
        c.run(vqkit.set_num_threads, 1)
        x = np.random.default_rng(0).standard_normal((40_000, 8), dtype=np.float32)
        for blocks in (100, 1000, 4000):
            X = da.from_array(x, chunks=(len(x) // blocks, 8)).persist()
            C = x[:8].copy()
            vd.lloyd_stats(X, C)
            ts = []
            for _ in range(3):
                t = time.perf_counter(); vd.lloyd_stats(X, C); ts.append(time.perf_counter() - t)
            t = sorted(ts)[1]
            print(f"{blocks} blocks: {t:.3f} s per iteration, {2*blocks-1} tasks, {t/(2*blocks-1)*1e3:.2f} ms per task")
