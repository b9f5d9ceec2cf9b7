#!/usr/bin/env bash
# Regenerates kernels/ptx/*.ptx from kernels/*.cu with the pinned compiler:
#   NVRTC 12.0.140 (PyPI nvidia-cuda-nvrtc-cu12), PTX ISA 8.0, target compute_80.
# ISA 8.0 is what CUDA 12.0 emits, and a driver accepts PTX whose ISA is not newer than its
# own CUDA version: every CUDA 12.x or later driver (the test GPUs run 580 / CUDA 13.0)
# loads it and JIT-compiles it for its GPU (sm_80, sm_86, sm_89, sm_90, ...).
# ptxas from nvidia-cuda-nvcc-cu12 of the same release is installed alongside, for
# kernels/check_ptx.sh. Nothing goes into src/.
#
# usage: kernels/build_ptx.sh [OUT_DIR]   (default kernels/ptx)
# env:   VQKIT_CUDA_TOOLS  where the pinned wheels live (default ~/.cache/vqkit/cuda-12.0.140)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/ptx}"
source "$here/cuda_tools.sh"
mkdir -p "$out"
for cu in "$here"/*.cu; do
    stem="$(basename "${cu%.cu}")"
    python3 "$here/nvrtc_ptx.py" "$NVRTC_LIB" "$PTX_ARCH" "$cu" "$out/$stem.ptx"
done
