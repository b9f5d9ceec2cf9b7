#!/usr/bin/env python3
"""PyTorch's formulations of vqkit's three kernels, timed on the inputs `vqkit bench
--save-inputs` wrote, for the GPU check (scripts/gpu_check/run.sh).

For each shape (n, k, d):
- assign: `torch.cdist` + argmin, and `addmm` with the codeword norms + argmin (||x||^2 is
  constant per row, so it is left out), both in row blocks that keep the block's n x k
  distance matrix near 1 GiB; and flash-kmeans' fused Triton assignment
  (`euclid_assign_triton`) where it imports;
- kmeans: one Lloyd step (assign as above, `index_add_` sums, `bincount` counts, divide),
  and flash-kmeans' `batch_kmeans_Euclid` per iteration (5 iterations from the same
  codebook, divided by 5) where it imports;
- ema: vqkit's EMA step (Laplace-smoothed, decay 0.99, eps 1e-5) with `bincount`,
  `index_add_` and `lerp_`, given the assignment.

FP32 throughout, TF32 off (vqkit's kernels are exact FP32): `allow_tf32 = False` for
PyTorch, TRITON_F32_DEFAULT=ieee for flash-kmeans' Triton kernels (its rows are labelled
with the precision they ran at). A flash-kmeans call that fails is reported as an error row. Each timing is the median of
at least 3 runs after a warm-up, by CUDA events on a GPU, by the host clock on a CPU. Also
measured: the device's FP32 matmul throughput (cuBLAS SGEMM, 8192^3) and its copy
bandwidth, as ceilings. Prints one JSON object per line.

usage: torch_bench.py --inputs DIR --n N --d D --ks K [K ...] [--seconds S] [--device cuda|cpu]
"""
import argparse
import ast
import json
import statistics
import sys
import time

import torch


def load_npy(path):
    """A little-endian float32 C-order .npy file as a tensor (no numpy needed)."""
    raw = open(path, "rb").read()
    if raw[:6] != b"\x93NUMPY":
        raise ValueError(f"{path}: not a .npy file")
    header_len = int.from_bytes(raw[8:10], "little") if raw[6] == 1 else \
        int.from_bytes(raw[8:12], "little")
    start = (10 if raw[6] == 1 else 12) + header_len
    header = ast.literal_eval(raw[start - header_len:start].decode("latin1"))
    if header["descr"] != "<f4" or header["fortran_order"]:
        raise ValueError(f"{path}: expected little-endian float32 in C order, got {header}")
    return torch.frombuffer(bytearray(raw[start:]), dtype=torch.float32).reshape(header["shape"])


def timer(device):
    """A function that times `f` (median seconds of >= 3 runs in about `seconds`)."""

    def run(f, seconds):
        f()  # warm-up (and compilation, for Triton)
        times = []
        start = time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - start < seconds and len(times) < 25):
            if device.type == "cuda":
                a = torch.cuda.Event(enable_timing=True)
                b = torch.cuda.Event(enable_timing=True)
                a.record()
                f()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b) * 1e-3)
            else:
                t = time.perf_counter()
                f()
                times.append(time.perf_counter() - t)
        return statistics.median(times), len(times)

    return run


def blocks(n, k):
    """Row blocks whose n x k float32 distance matrix is at most about 1 GiB."""
    rows = max(1, (1 << 28) // max(k, 1))
    return [(i, min(i + rows, n)) for i in range(0, n, rows)]


def assign_cdist(x, c, out):
    for i, j in blocks(x.shape[0], c.shape[0]):
        out[i:j] = torch.cdist(x[i:j], c).argmin(dim=1)


def assign_mm(x, c, c_sq, out):
    ct = c.t()
    for i, j in blocks(x.shape[0], c.shape[0]):
        out[i:j] = torch.addmm(c_sq, x[i:j], ct, alpha=-2.0).argmin(dim=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--d", type=int, required=True)
    ap.add_argument("--ks", type=int, nargs="+", required=True)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    time_it = timer(device)
    emit = lambda **kv: print(json.dumps(kv), flush=True)

    # The device and its measured ceilings.
    info = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, sm_count=p.multi_processor_count,
                    capability=f"{p.major}.{p.minor}", memory_gb=p.total_memory / 2**30)
    m = 8192 if device.type == "cuda" else 1024
    a = torch.randn(m, m, device=device)
    b = torch.randn(m, m, device=device)
    t, _ = time_it(lambda: torch.mm(a, b), args.seconds)
    info["sgemm_gflops"] = 2 * m**3 / t / 1e9
    big = torch.empty(1 << 28 if device.type == "cuda" else 1 << 24, device=device)
    dst = torch.empty_like(big)
    t, _ = time_it(lambda: dst.copy_(big), args.seconds)
    info["copy_gbps"] = 2 * big.numel() * 4 / t / 1e9  # read + write
    del a, b, big, dst
    try:
        import flash_kmeans  # noqa: F401
        from flash_kmeans.assign_euclid_triton import euclid_assign_triton
        from flash_kmeans.kmeans_triton_impl import batch_kmeans_Euclid
        info["flash_kmeans"] = getattr(flash_kmeans, "__version__", "imported")
        have_flash = device.type == "cuda"
        if not have_flash:
            info["flash_kmeans"] += " (not run: its Triton kernels need a CUDA device)"
    except Exception as e:  # not installed, or no Triton/CUDA here
        info["flash_kmeans"] = f"unavailable: {type(e).__name__}: {e}"
        have_flash = False
    # Triton computes fp32 dot products in TF32 unless TRITON_F32_DEFAULT=ieee (run.sh sets
    # it); the rows say which they got.
    import os
    precision = " [TF32]" if os.environ.get("TRITON_F32_DEFAULT", "tf32") != "ieee" else " [fp32]"
    info["triton_f32"] = os.environ.get("TRITON_F32_DEFAULT", "default (tf32)")
    emit(kind="device", **info)

    n, d = args.n, args.d
    for k in args.ks:
        x = load_npy(f"{args.inputs}/x_{n}x{d}_k{k}.npy").to(device)
        c = load_npy(f"{args.inputs}/c_{k}x{d}_n{n}.npy").to(device)
        c_sq = (c * c).sum(dim=1)
        idx = torch.empty(n, dtype=torch.int64, device=device)
        flops = 2.0 * n * k * d

        def result(op, impl, seconds, runs, work, unit):
            emit(kind="result", op=op, impl=impl, n=n, k=k, d=d, median_s=seconds, runs=runs,
                 **{unit: work / seconds / 1e9})

        def guarded(op, impl, work, timed):
            """A third-party timing that may fail (an API that changed, a Triton error):
            its failure is a row of its own, not the end of the run."""
            try:
                t, r = timed()
                result(op, impl + precision, t, r, work, "gflops")
            except Exception as e:
                emit(kind="error", op=op, impl=impl, k=k, error=f"{type(e).__name__}: {e}")

        t, r = time_it(lambda: assign_cdist(x, c, idx), args.seconds)
        result("assign", "torch.cdist+argmin", t, r, flops, "gflops")
        t, r = time_it(lambda: assign_mm(x, c, c_sq, idx), args.seconds)
        result("assign", "torch.addmm(norms)+argmin", t, r, flops, "gflops")
        if have_flash:
            x3, c3 = x[None], c[None]
            x_sq = (x * x).sum(dim=1)[None]
            out = torch.empty((1, n), dtype=torch.int32, device=device)
            guarded("assign", "flash-kmeans euclid_assign_triton", flops, lambda: time_it(
                lambda: euclid_assign_triton(x3, c3, x_sq=x_sq, out=out), args.seconds))

        def lloyd():
            assign_mm(x, c, c_sq, idx)
            sums = torch.zeros_like(c).index_add_(0, idx, x)
            counts = torch.bincount(idx, minlength=k).to(x.dtype)
            return torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], c)

        t, r = time_it(lloyd, args.seconds)
        result("kmeans", "torch addmm assign + index_add_ update", t, r, flops + n * d, "gflops")
        if have_flash:
            iters = 5

            def per_iteration():
                t, r = time_it(lambda: batch_kmeans_Euclid(
                    x[None], n_clusters=k, max_iters=iters, tol=0.0,
                    init_centroids=c[None].clone()), args.seconds)
                return t / iters, r

            guarded("kmeans", "flash-kmeans batch_kmeans_Euclid (per iteration)", flops + n * d,
                    per_iteration)

        assign_mm(x, c, c_sq, idx)
        decay, eps = 0.99, 1e-5
        size = torch.zeros(k, device=device)
        embed = c.clone()

        def ema():
            counts = torch.bincount(idx, minlength=k).to(x.dtype)
            batch = torch.zeros_like(c).index_add_(0, idx, x)
            size.lerp_(counts, 1 - decay)
            embed.lerp_(batch, 1 - decay)
            total = size.sum()
            smoothed = (size + eps) / (total + k * eps) * total
            return embed / smoothed[:, None]

        ema_bytes = 4.0 * (n * d + n + 2 * k + 3 * k * d)  # vqkit's Op::Ema::bytes
        t, r = time_it(ema, args.seconds)
        result("ema", "torch bincount + index_add_ + lerp_", t, r, ema_bytes, "gbps")
        del x, c, idx
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
