#!/usr/bin/env bash
# The GPU check: one command for the first machine with an NVIDIA GPU. Run it from the
# bundle that scripts/gpu_check/bundle.sh built on the development machine (x86-64) and
# carried over, on a machine with the NVIDIA driver and Python with PyTorch:
#
#   bash run.sh [OUT_DIR]        # default OUT_DIR: ./out beside this script
#
# It records the device, runs the CUDA and WGPU parity suites, `vqkit bench` on the CUDA
# (both argmin variants), WGPU and CPU backends at n = 1,000,000, d = 128, k in {1024, 4096}
# (assign, k-means step, EMA), PyTorch's formulations on the same inputs
# (torch_bench.py), and writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md
# (report.py). Every step has a time limit and records its output and exit code; a step
# that fails is reported, not fatal. Budget: under 8 minutes on an H100.
#
# env: N (1000000), D (128), KS ("1024 4096"), SECONDS_PER (1: timing per kernel),
#      WGPU_BACKEND (vulkan), DEADLINE (480: seconds after which no step starts; each step's
#      limit is cut to the time left, so a lease of fixed length still gets its report).
#      The bundle's lib/ holds the Vulkan loader and the GL dispatch libraries, put first
#      on LD_LIBRARY_PATH; the NVIDIA driver supplies the Vulkan ICD and libcuda.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/out}"
mkdir -p "$out"
N="${N:-1000000}"
D="${D:-128}"
KS="${KS:-1024 4096}"
SECONDS_PER="${SECONDS_PER:-1}"
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export PYTHONPATH="$here/python${PYTHONPATH:+:$PYTHONPATH}"
# Triton's fp32 dot products in IEEE fp32, not TF32, so flash-kmeans is timed like for like.
export TRITON_F32_DEFAULT="${TRITON_F32_DEFAULT:-ieee}"
# Containers whose driver mount keeps the Vulkan ICD outside the loader's search path.
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ]; then
    export VK_DRIVER_FILES="$icd"
fi
DEADLINE="${DEADLINE:-480}"
start=$SECONDS

# step NAME LIMIT_SECONDS COMMAND...: output to OUT/NAME.txt, exit code to OUT/NAME.rc.
# Past DEADLINE a step is skipped (its output says so, its exit code is 124).
step() {
    local name="$1" limit="$2" left=$((DEADLINE - (SECONDS - start)))
    shift 2
    if [ "$left" -lt 5 ]; then
        printf '[%4ss] %s: skipped, past the deadline\n' "$((SECONDS - start))" "$name" \
            | tee -a "$out/log.txt"
        echo "skipped: past the deadline of ${DEADLINE} s" > "$out/$name.txt"
        echo 124 > "$out/$name.rc"
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    printf '[%4ss] %s\n' "$((SECONDS - start))" "$name" | tee -a "$out/log.txt"
    timeout "$limit" "$@" > "$out/$name.txt" 2>&1
    echo $? > "$out/$name.rc"
}

if command -v nvidia-smi > /dev/null; then
    step device 30 nvidia-smi \
        --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem \
        --format=csv,noheader
fi
step glibc 10 ldd --version
step info 60 "$here/vqkit" info
step cuda_suite 240 env VQKIT_REQUIRE_CUDA=1 "$here/tests/cuda_backend"
step wgpu_suite 240 env VQKIT_REQUIRE_WGPU=1 "$here/tests/wgpu_backend"
bench=(--n "$N" --d "$D" --seconds "$SECONDS_PER" --json)
for k in $KS; do
    step "bench_cpu_k$k" 240 "$here/vqkit" bench --backend cpu --k "$k" "${bench[@]}" \
        --save-inputs "$out/inputs"
    step "bench_cuda_k$k" 120 "$here/vqkit" bench --backend cuda --k "$k" "${bench[@]}"
    step "bench_cuda_v1_k$k" 120 "$here/vqkit" bench --backend cuda --variant v1 --op assign \
        --k "$k" "${bench[@]}"
    step "bench_wgpu_k$k" 120 "$here/vqkit" bench --backend wgpu --k "$k" "${bench[@]}"
done
# shellcheck disable=SC2086 # KS is a list of numbers
step torch 300 python3 "$here/torch_bench.py" --inputs "$out/inputs" --n "$N" --d "$D" \
    --ks $KS --seconds "$SECONDS_PER"
rm -rf "$out/inputs"
# The shapes outside the grid (docs/gpu-check.md, "Wide rows and million-codeword
# codebooks"): raw JSON lines in wide_*.txt, not in the report's tables.
for backend in cuda wgpu; do
    step "wide_${backend}_d4096" 180 "$here/vqkit" bench --backend "$backend" --op assign \
        --n 65536 --k 4096 --d 4096 --seconds "$SECONDS_PER" --json
    step "wide_${backend}_k1m" 180 "$here/vqkit" bench --backend "$backend" --op assign \
        --n 65536 --k 1048576 --d 32 --seconds "$SECONDS_PER" --json
done
python3 "$here/report.py" "$out"
printf '[%4ss] done: %s\n' "$((SECONDS - start))" "$out/gpu_check.md" | tee -a "$out/log.txt"
