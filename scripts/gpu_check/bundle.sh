#!/usr/bin/env bash
# Builds, on the development machine (x86-64 Linux), everything the GPU check needs and
# lays it out in one directory to carry to the GPU machine, which has no network and no
# Rust: the release `vqkit` binary (CUDA and WGPU compiled in), the CUDA and WGPU parity
# suites as test executables, the Vulkan loader (libvulkan.so.1) and the GL dispatch
# libraries the NVIDIA Vulkan driver links against, flash-kmeans from PyPI (pure Python;
# its Triton comes with the GPU machine's PyTorch), and the scripts. Prints the bundle's
# directory as its last line.
#
# The binaries need the glibc they were built against or newer (Debian 12 here: 2.36).
#
#   bash scripts/gpu_check/bundle.sh [DIR]      # default DIR: target/gpu-check
#   # carry DIR over, then on the GPU machine: bash DIR/run.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bundle="${1:-$root/target/gpu-check}"
cd "$root"
mkdir -p "$bundle/tests" "$bundle/lib" "$bundle/python"

cargo build --release -p vqkit-cli
cp target/release/vqkit "$bundle/vqkit"

# The parity suites, built in release as test executables; cargo names them by hash.
cargo test --release --all-features -p vqkit --test cuda_backend --test wgpu_backend \
    --no-run --message-format=json > "$bundle/tests/build.json"
python3 - "$bundle" <<'PY'
import json, shutil, sys
bundle = sys.argv[1]
for line in open(f"{bundle}/tests/build.json"):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], f"{bundle}/tests/{m['target']['name']}")
PY
rm "$bundle/tests/build.json"

# The Vulkan loader of this machine (Debian's libvulkan1): the GPU machine's NVIDIA driver
# provides the ICD it loads.
loader="$(ldconfig -p | awk '/libvulkan\.so\.1 .*x86-64/ {print $NF; exit}')"
if [ -n "$loader" ]; then
    cp -L "$loader" "$bundle/lib/libvulkan.so.1"
else
    echo "bundle: no libvulkan.so.1 here (apt-get install libvulkan1): WGPU will need the GPU machine's" >&2
fi

# The GL vendor-neutral dispatch libraries (Debian's libglvnd0, libglx0, libegl1, libgl1). The
# NVIDIA Vulkan driver, libGLX_nvidia.so.0, links against them, and a container's driver mount
# carries the driver without them: there the loader finds the ICD and cannot open it (seen on
# the first H200 run, docs/gpu-check.md).
glvnd="$(mktemp -d)"
if (cd "$glvnd" && apt-get download libglvnd0 libglx0 libegl1 libgl1 > /dev/null 2>&1); then
    for deb in "$glvnd"/*.deb; do dpkg -x "$deb" "$glvnd/root"; done
    for lib in libGLdispatch.so.0 libGLX.so.0 libEGL.so.1 libGL.so.1; do
        cp -L "$glvnd/root/usr/lib/x86_64-linux-gnu/$lib" "$bundle/lib/$lib"
    done
else
    echo "bundle: apt-get download of libglvnd0 libglx0 libegl1 libgl1 failed: the GPU machine must have them" >&2
fi
rm -rf "$glvnd"

# flash-kmeans, the fastest published GPU k-means, where PyPI serves it, and tqdm, which it
# imports (both pure Python).
tmp="$(mktemp -d)"
for pkg in flash-kmeans==0.3.1 tqdm; do
    if pip download -q --no-deps --only-binary :all: -d "$tmp" "$pkg" 2> "$tmp/err"; then
        for whl in "$tmp"/*.whl; do python3 -m zipfile -e "$whl" "$bundle/python"; done
        rm -f "$tmp"/*.whl
    else
        echo "bundle: $pkg could not be downloaded: $(tail -1 "$tmp/err")" >&2
    fi
done
rm -rf "$tmp"

cp scripts/gpu_check/run.sh scripts/gpu_check/torch_bench.py scripts/gpu_check/report.py \
    "$bundle/"
du -sh "$bundle" >&2
echo "$bundle"
