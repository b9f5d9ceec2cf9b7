#!/usr/bin/env bash
# Runs every kernel of kernels/*.cu as host C++ under kernels/emu/emu.h (no GPU, no CUDA
# toolkit: g++ with C++20 only) and checks it against a double-precision reference.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${TMPDIR:-/tmp}/vqkit-emu"
mkdir -p "$out"
cxx="${CXX:-g++}"
flags=(-std=c++17 -O2 -Wall -Wno-unknown-pragmas -Wno-unused-function)
objs=()
for cu in "$here"/../*.cu; do
    o="$out/$(basename "${cu%.cu}").o"
    "$cxx" "${flags[@]}" -x c++ -include "$here/emu.h" -c "$cu" -o "$o"
    objs+=("$o")
done
"$cxx" "${flags[@]}" "$here/check.cpp" "$here/launch.cpp" "${objs[@]}" -o "$out/check"
"$out/check"
