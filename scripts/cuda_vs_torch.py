#!/usr/bin/env python3
"""PyTorch baselines for vqkit's CUDA `assign` (fused distance + argmin), for the speed
target: vqkit >= 1.5x PyTorch's best formulation and >= 50% of FP32 FMA peak.

Run beside vqkit on the same GPU, e.g.
    python3 scripts/cuda_vs_torch.py --n 1000000 --d 128 --k 1024 4096
    vqkit bench --backend cuda --n 1000000 --d 128 --k 1024 --json

Formulations (all FP32, TF32 off so the comparison is FP32 against FP32):
  cdist     torch.cdist(x, c).argmin(1)                      (the one-liner)
  mm_norms  (|c|^2 - 2 x @ c.T).argmin(1), |c|^2 precomputed  (what vqkit computes, unfused)
  mm_chunk  mm_norms over row chunks, so the n x k matrix stays in L2 (best effort)
Each is timed with CUDA events over --iters runs after --warmup runs, inputs seeded normal
(never zeros). GFLOP/s counts 2*n*k*d flops (the matrix product), as vqkit's bench does.
"""
import argparse
import json
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--k", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=65536, help="rows per chunk for mm_chunk")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    a = ap.parse_args()

    try:
        import torch
    except ImportError:
        print("cuda_vs_torch: PyTorch is not installed (pip install torch)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("cuda_vs_torch: no CUDA device visible to PyTorch", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(a.n, a.d, device=dev, generator=gen) + 0.5

    for k in a.k:
        c = torch.randn(k, a.d, device=dev, generator=gen) + 0.5
        cn = (c * c).sum(1)

        def cdist():
            return torch.cdist(x, c).argmin(1)

        def mm_norms():
            return torch.addmm(cn, x, c.T, beta=1.0, alpha=-2.0).argmin(1)

        def mm_chunk():
            out = torch.empty(a.n, dtype=torch.long, device=dev)
            for s in range(0, a.n, a.chunk):
                xs = x[s : s + a.chunk]
                out[s : s + a.chunk] = torch.addmm(cn, xs, c.T, beta=1.0, alpha=-2.0).argmin(1)
            return out

        ref = None
        for label, f in [("cdist", cdist), ("mm_norms", mm_norms), ("mm_chunk", mm_chunk)]:
            try:
                for _ in range(a.warmup):
                    f()
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(a.iters):
                    idx = f()
                end.record()
                torch.cuda.synchronize()
                ms = start.elapsed_time(end) / a.iters
            except torch.cuda.OutOfMemoryError:
                print(f"{label}: out of memory at n={a.n} k={k}", file=sys.stderr)
                torch.cuda.empty_cache()
                continue
            if ref is None:
                ref = idx
            agree = (idx == ref).float().mean().item()
            gflops = 2.0 * a.n * k * a.d / (ms * 1e-3) / 1e9
            row = {"device": name, "impl": f"torch/{label}", "n": a.n, "k": k, "d": a.d,
                   "ms": round(ms, 4), "gflops": round(gflops, 1), "agree_with_cdist": round(agree, 6)}
            if a.json:
                print(json.dumps(row))
            else:
                print(f"{name}  torch/{label:9s} n={a.n} k={k} d={a.d}: {ms:8.3f} ms  {gflops:8.1f} GFLOP/s"
                      f"  (indices agree with cdist: {agree:.4%})")
            del idx
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
