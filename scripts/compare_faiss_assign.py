#!/usr/bin/env python3
"""vqkit's CPU distance-argmin beside FAISS's exhaustive L2 search for k = 1 (IndexFlatL2),
on the same seeded clustered data, at the same thread count, runs alternating, medians.

    pip install faiss-cpu numpy
    cargo build --release
    python3 scripts/compare_faiss_assign.py --threads 1 2 --reps 5
    python3 scripts/compare_faiss_assign.py --grid wide --threads 2 --reps 3
    python3 scripts/compare_faiss_assign.py --via python --grid wide --threads 2 --reps 3
    python3 scripts/compare_faiss_assign.py --via python --grid wide --d 8 --k 256 --json

The data are drawn from one seeded generator, shape after shape: a shape picked with --d
and --k gets other points than the same shape in the whole grid (the same distribution).

With --json each line also holds every run's seconds (`faiss_runs_s`, `vqkit_runs_s`):
on a shared VM one run in a few can take twice its time (a core taken by another tenant),
and with three runs such a pair can move the median.

`--grid wide` covers the shapes of `vqkit bench --grid wide`: d in 2..2048, k in 16..262,144,
n = clamp(2e10 / (2 k d), 256, 100,000) rows per shape (`vqkit::bench::wide_rows`). Where
k > n the codebook is drawn from the same clusters as the points instead of from them.

How vqkit is timed (`--via`):
- `cli` (the default): the `seconds` that `vqkit assign --json` reports, the computation
  through the backend (copy-in, norms, argmin, copy-out), not file reading. Each run is a
  fresh process, so it includes what a first call pays (thread pool start, page faults on
  new buffers); for calls of a few milliseconds that is most of the time.
- `python`: `vqkit.assign(x, codebook)` from the Python package (`pip install
  ./crates/vqkit-python`, or a staged build on PYTHONPATH), in this process, warmed up
  like FAISS, returning the same (distances, indices). Both sides are timed the same way.

FAISS's time is `index.search(x, 1)`, in this process, after a warm-up call.

FAISS's OpenMP threads busy-wait after each search (libgomp's default wait policy); run
alternating in one process, they took the CPU from the vqkit call that followed: on 2
cores, 100,000 x 16 x 2 went from 0.7 ms alone to 1.2 ms after a search, and 100,000 x
256 x 8 from 4.0 to 7.5 ms, while FAISS's own times did not change with the policy. So
this script sets OMP_WAIT_POLICY=PASSIVE (before FAISS loads) unless it is set already.
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when libgomp loads, with FAISS
import faiss  # noqa: E402
import numpy as np  # noqa: E402


def clustered(n, d, clusters, sigma, rng):
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    labels = rng.integers(0, clusters, n)
    return centres[labels] + sigma * rng.standard_normal((n, d), dtype=np.float32)


WIDE_D = [2, 8, 32, 128, 512, 2048]
WIDE_K = [16, 256, 4096, 65536, 262144]


def wide_rows(k, d):
    """As vqkit::bench::wide_rows: about 2e10 flops a run, 256 to 100,000 rows."""
    return min(max(int(2e10 / (2.0 * k * d)), 256), 100_000)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vqkit", default="target/release/vqkit")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, nargs="+",
                    help="default 32 128; with --grid wide, only these of its d")
    ap.add_argument("--k", type=int, nargs="+",
                    help="default 256 1024 4096; with --grid wide, only these of its k")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="one JSON object per result line")
    ap.add_argument("--grid", choices=["default", "wide"], default="default",
                    help="wide: the d x k grid of `vqkit bench --grid wide` (overrides --n; --d "
                         "and --k pick from it)")
    ap.add_argument("--via", choices=["cli", "python"], default="cli",
                    help="time vqkit through its CLI (a process per run) or its Python package "
                         "(in this process, as FAISS)")
    args = ap.parse_args()
    if args.via == "python":
        try:
            import vqkit
        except ImportError as e:
            raise SystemExit(f"--via python needs the vqkit package (pip install "
                             f"./crates/vqkit-python): {e}")
    if args.grid == "wide":
        ds, ks = args.d or WIDE_D, args.k or WIDE_K
        if set(ds) - set(WIDE_D) or set(ks) - set(WIDE_K):
            raise SystemExit(f"--grid wide has d in {WIDE_D} and k in {WIDE_K} only")
        shapes = [(wide_rows(k, d), d, k) for d in WIDE_D for k in WIDE_K if d in ds and k in ks]
    else:
        shapes = [(args.n, d, k) for d in args.d or [32, 128] for k in args.k or [256, 1024, 4096]]

    rng = np.random.default_rng(42)
    tmp = tempfile.mkdtemp(prefix="vqkit-faiss-")
    header = (f"{'thr':>3} {'n':>6} {'d':>4} {'k':>6}  {'faiss ms':>9} {'GFLOP/s':>8}  "
              f"{'vqkit ms':>9} {'GFLOP/s':>8}  {'speedup':>7}  {'same code':>9}")
    if not args.json:
        print(f"{args.reps} alternating runs each, medians; vqkit via {args.via}, "
              f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
        print(header)
    for threads in args.threads:
        faiss.omp_set_num_threads(threads)
        if args.via == "python":
            vqkit.set_num_threads(threads)
        for n, d, k in shapes:
            if k <= n:
                x = clustered(n, d, max(k // 4, 1), 0.3, rng)
                c = x[rng.choice(n, k, replace=False)].copy()
            else:
                both = clustered(n + k, d, max(k // 4, 1), 0.3, rng)
                x, c = both[:n].copy(), both[n:].copy()
            index = faiss.IndexFlatL2(d)
            index.add(c)
            index.search(x[:1000], 1)  # warm-up
            if args.via == "python":
                vqkit.assign(x[:1000], c)  # warm-up

                def run_vqkit():
                    t = time.perf_counter()
                    _, codes = vqkit.assign(x, c)
                    return time.perf_counter() - t, codes
            else:
                xp, cp, op = (os.path.join(tmp, f) for f in ("x.npy", "c.npy", "codes.npy"))
                np.save(xp, x)
                np.save(cp, c)
                cmd = [args.vqkit, "assign", "-i", xp, "-c", cp, "-o", op,
                       "--threads", str(threads), "--json"]
                subprocess.run(cmd, check=True, capture_output=True)  # warm-up

                def run_vqkit():
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
                    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"], None
            tf, tv = [], []
            for _ in range(args.reps):
                t = time.perf_counter()
                dist, ids = index.search(x, 1)
                tf.append(time.perf_counter() - t)
                seconds, ours = run_vqkit()
                tv.append(seconds)
            if ours is None:
                ours = np.load(op)
            same = float(np.mean(ours == ids[:, 0]))
            mf, mv = statistics.median(tf), statistics.median(tv)
            flops = 2.0 * n * k * d
            row = dict(threads=threads, n=n, d=d, k=k, faiss_s=mf, vqkit_s=mv,
                       faiss_gflops=flops / mf / 1e9, vqkit_gflops=flops / mv / 1e9,
                       speedup=mf / mv, same_code=same,
                       faiss_runs_s=tf, vqkit_runs_s=tv)
            if args.json:
                print(json.dumps(row))
            else:
                print(f"{threads:>3} {n:>6} {d:>4} {k:>6}  {mf*1e3:>9.1f} {row['faiss_gflops']:>8.1f}  "
                      f"{mv*1e3:>9.1f} {row['vqkit_gflops']:>8.1f}  {row['speedup']:>6.2f}x  "
                      f"{same:>9.4f}", flush=True)


if __name__ == "__main__":
    main()
