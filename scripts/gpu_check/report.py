#!/usr/bin/env python3
"""Turns the outputs of scripts/gpu_check/run.sh (one directory) into gpu_check.json and
gpu_check.md: the device, the parity suites, and every kernel's time on vqkit's CUDA, WGPU
and CPU backends and in PyTorch's formulations, with GFLOP/s, % of FP32 peak, GB/s and
vqkit CUDA's speed-up over each, and whether the issue's targets are met.

usage: report.py OUT_DIR
"""
import glob
import json
import os
import re
import sys

# FP32 lanes per SM by compute capability (NVIDIA's tuning guides): sm_80 has 64, the
# later parts 128.
FP32_LANES = {"8.0": 64, "8.6": 128, "8.7": 128, "8.9": 128, "9.0": 128, "10.0": 128,
              "12.0": 128}


def read(out, name):
    path = os.path.join(out, name)
    return open(path).read() if os.path.exists(path) else ""


def rc(out, name):
    text = read(out, name + ".rc").strip()
    return int(text) if text.lstrip("-").isdigit() else None


def json_lines(text):
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def suite(out, name):
    text = read(out, name + ".txt")
    m = re.findall(r"test result: (\w+)\. (\d+) passed; (\d+) failed", text)
    code = rc(out, name)
    if not m:
        last = text.strip().splitlines()[-1:] or ["no output"]
        return {"status": "did not run", "exit": code, "detail": last[0][:300]}
    status, passed, failed = m[-1]
    return {"status": status, "passed": int(passed), "failed": int(failed), "exit": code}


def main():
    out = sys.argv[1]
    report = {"device": {}, "suites": {}, "results": [], "targets": []}
    smi = read(out, "device.txt").strip()
    if smi and rc(out, "device") == 0:
        f = [s.strip() for s in smi.splitlines()[0].split(",")]
        keys = ["name", "driver", "memory", "max_sm_clock", "max_mem_clock"]
        report["device"].update(dict(zip(keys, f)))
    report["device"]["vqkit_info"] = read(out, "info.txt").strip()
    torch_rows = json_lines(read(out, "torch.txt"))
    for r in torch_rows:
        if r.get("kind") == "device":
            report["device"]["torch"] = r
    t = report["device"].get("torch", {})
    peak = None
    clock = re.match(r"(\d+)", report["device"].get("max_sm_clock", ""))
    if clock and t.get("sm_count") and t.get("capability") in FP32_LANES:
        peak = t["sm_count"] * FP32_LANES[t["capability"]] * 2 * int(clock.group(1)) * 1e6 / 1e9
    report["device"]["fp32_peak_gflops"] = peak
    bandwidth = t.get("copy_gbps")

    report["suites"]["cuda"] = suite(out, "cuda_suite")
    report["suites"]["wgpu"] = suite(out, "wgpu_suite")

    for path in sorted(glob.glob(os.path.join(out, "bench_*.txt"))):
        for r in json_lines(open(path).read()):
            if "op" not in r:
                continue
            impl = "vqkit " + r["backend"]
            report["results"].append({
                "op": r["op"], "k": r["k"], "n": r["n"], "d": r["d"], "impl": impl,
                "median_s": r["median_s"], "gflops": r.get("gflops"), "gbps": r.get("gbps"),
                "timer": r.get("timer"), "vqkit": True,
                "backend": r["backend"].split(" ")[0],
                "v1": "argmin v1" in r["backend"],
            })
    report["errors"] = [r for r in torch_rows if r.get("kind") == "error"]
    for r in torch_rows:
        if r.get("kind") == "result":
            report["results"].append({
                "op": r["op"], "k": r["k"], "n": r["n"], "d": r["d"], "impl": r["impl"],
                "median_s": r["median_s"], "gflops": r.get("gflops"), "gbps": r.get("gbps"),
                "timer": "events" if t.get("device", "").startswith("cuda") else "host",
                "vqkit": False, "backend": "torch", "v1": False,
            })

    def shipped(op, k, backend):
        for r in report["results"]:
            if r["vqkit"] and r["op"] == op and r["k"] == k and r["backend"] == backend and not r["v1"]:
                return r
        return None

    for r in report["results"]:
        if r["gflops"] is not None and peak:
            r["pct_fp32_peak"] = 100 * r["gflops"] / peak
        if r["gbps"] is not None and bandwidth:
            r["pct_copy_bandwidth"] = 100 * r["gbps"] / bandwidth
        ref = shipped(r["op"], r["k"], "cuda")
        if ref and ref["median_s"] > 0:
            r["vqkit_cuda_speedup"] = r["median_s"] / ref["median_s"]

    # The targets (n = 1M, d = 128, k in {1024, 4096}).
    for k in sorted({r["k"] for r in report["results"]}):
        cuda = shipped("assign", k, "cuda")
        wgpu = shipped("assign", k, "wgpu")
        torch_best = min((r for r in report["results"]
                          if r["backend"] == "torch" and r["op"] == "assign" and r["k"] == k
                          and not r["impl"].startswith("flash")),
                         key=lambda r: r["median_s"], default=None)
        ema = shipped("ema", k, "cuda")
        def target(what, value, goal, ok):
            report["targets"].append({"k": k, "target": what, "value": value, "goal": goal,
                                      "met": ok})
        if cuda and torch_best:
            s = torch_best["median_s"] / cuda["median_s"]
            target("CUDA assign vs PyTorch's best", f"{s:.2f}x", ">= 1.5x", s >= 1.5)
        if cuda and cuda.get("pct_fp32_peak") is not None:
            p = cuda["pct_fp32_peak"]
            target("CUDA assign, % of FP32 peak", f"{p:.0f}%", ">= 50%", p >= 50)
        if ema and ema.get("pct_copy_bandwidth") is not None:
            p = ema["pct_copy_bandwidth"]
            target("CUDA EMA, % of measured copy bandwidth", f"{p:.0f}%", ">= 60%", p >= 60)
        if wgpu and cuda:
            s = cuda["median_s"] / wgpu["median_s"]
            target("WGPU assign speed relative to CUDA", f"{s:.2f}", ">= 0.5", s >= 0.5)
        if wgpu and torch_best:
            s = torch_best["median_s"] / wgpu["median_s"]
            target("WGPU assign vs PyTorch's best", f"{s:.2f}x", "> 1x", s > 1)

    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1)

    dev = report["device"]
    lines = ["# vqkit GPU check", ""]
    lines.append(f"Device: {dev.get('name', t.get('name', 'unknown'))}, driver "
                 f"{dev.get('driver', '?')}, compute capability {t.get('capability', '?')}, "
                 f"{t.get('sm_count', '?')} SMs, max SM clock {dev.get('max_sm_clock', '?')}.")
    fmt = lambda v, p=1: "-" if v is None else f"{v:.{p}f}"
    lines.append(f"FP32 peak (SMs x FP32 lanes x 2 x max clock): {fmt(peak, 0)} GFLOP/s; "
                 f"measured SGEMM (torch.mm, TF32 off; 8192^3 on a GPU): {fmt(t.get('sgemm_gflops'), 0)} "
                 f"GFLOP/s; measured copy bandwidth (read + write): {fmt(bandwidth, 0)} GB/s. "
                 f"PyTorch {t.get('torch', '?')}; flash-kmeans: {t.get('flash_kmeans', '?')}.")
    lines += ["", "| suite | result |", "|---|---|"]
    for name, s in report["suites"].items():
        if "passed" in s:
            lines.append(f"| {name} parity suite | {s['status']}: {s['passed']} passed, "
                         f"{s['failed']} failed |")
        else:
            lines.append(f"| {name} parity suite | {s['status']} (exit {s['exit']}): "
                         f"{s.get('detail', '')} |")
    for op in ["assign", "kmeans", "ema"]:
        rows = [r for r in report["results"] if r["op"] == op]
        if not rows:
            continue
        n, d = rows[0]["n"], rows[0]["d"]
        lines += ["", f"## {op} (n = {n:,}, d = {d})", "",
                  "| k | implementation | median ms | GFLOP/s | % FP32 peak | GB/s | "
                  "% copy bw | vqkit CUDA speed-up | timer |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in sorted(rows, key=lambda r: (r["k"], not r["vqkit"], r["median_s"])):
            lines.append(
                f"| {r['k']} | {r['impl']} | {r['median_s'] * 1e3:.3f} | {fmt(r['gflops'])} | "
                f"{fmt(r.get('pct_fp32_peak'), 0)} | {fmt(r['gbps'])} | "
                f"{fmt(r.get('pct_copy_bandwidth'), 0)} | "
                f"{fmt(r.get('vqkit_cuda_speedup'), 2)} | {r['timer']} |")
    if report["errors"]:
        lines += ["", "Failed timings: " + "; ".join(
            f"{e['impl']} (k = {e['k']}): {e['error']}" for e in report["errors"])]
    if report["targets"]:
        lines += ["", "## Targets", "", "| k | target | value | goal | met |",
                  "|---:|---|---:|---|---|"]
        for tg in report["targets"]:
            lines.append(f"| {tg['k']} | {tg['target']} | {tg['value']} | {tg['goal']} | "
                         f"{'yes' if tg['met'] else 'no'} |")
    lines += ["", "Speed-up: the implementation's median time over vqkit CUDA's (v2) at the "
              "same shape; above 1, vqkit CUDA is faster. GPU times come from CUDA events "
              "(vqkit's `timer: device`, PyTorch's `torch.cuda.Event`)."]
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
