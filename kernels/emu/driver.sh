#!/usr/bin/env bash
# Builds the CUDA stand-in driver (driver.cpp: the driver API over the kernels of
# kernels/*.cu emulated on the host) as libcuda.so.1, with g++ only, and prints as its last
# line the directory that holds it. Any vqkit binary or test then runs its CUDA backend
# on it:
#
#   LD_LIBRARY_PATH="$(bash kernels/emu/driver.sh | tail -1)" target/release/vqkit info
#
# env: VQKIT_STANDIN_DIR (output directory; default $TMPDIR/vqkit-cuda-standin),
#      CXX (default g++). At run time VQKIT_STANDIN_MEMORY_MB sets the device's memory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${VQKIT_STANDIN_DIR:-${TMPDIR:-/tmp}/vqkit-cuda-standin}"
mkdir -p "$out"
cxx="${CXX:-g++}"
# Export the driver's entry points (cu*) and nothing else.
printf '{ global: cu*; local: *; };\n' > "$out/exports.map"
"$cxx" -std=c++17 -O2 -g -Wall -Wno-unknown-pragmas -Wno-unused-function \
    -fPIC -shared -fvisibility=hidden -Wl,-soname,libcuda.so.1 \
    -Wl,--version-script="$out/exports.map" \
    "$here/driver.cpp" "$here/launch.cpp" -o "$out/libcuda.so.1.tmp"
mv "$out/libcuda.so.1.tmp" "$out/libcuda.so.1"
ln -sf libcuda.so.1 "$out/libcuda.so"
echo "$out"
