#!/usr/bin/env bash
# CI check of the shipped PTX (no GPU needed; a clean Debian machine with python3 + pip):
#  1. installs the pinned compilers from PyPI into a cache dir if absent (kernels/cuda_tools.sh),
#  2. regenerates kernels/ptx/*.ptx into a temp dir and fails if the committed PTX differs,
#  3. runs `ptxas -v` for sm_80 and sm_90 on every module and fails if a hot kernel uses a
#     stack frame, spills, or local memory.
# usage: kernels/check_ptx.sh        env: VQKIT_CUDA_TOOLS (cache dir, see cuda_tools.sh)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/cuda_tools.sh"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Kernels that must never touch local memory: everything that runs per point or per row.
hot="distance_argmin_v2 codeword_norms radix_histogram radix_scatter scan_reduce scan_exclusive scan_apply group_bounds segment_partials finalize_sums kmeans_update ema_sizes ema_codebook"

"$here/build_ptx.sh" "$tmp/ptx"
stale=0
for f in "$tmp"/ptx/*.ptx; do
    name="$(basename "$f")"
    if ! cmp -s "$f" "$here/ptx/$name"; then
        echo "check_ptx: kernels/ptx/$name is stale: run kernels/build_ptx.sh and commit it" >&2
        diff -u "$here/ptx/$name" "$f" | head -20 >&2 || true
        stale=1
    fi
done
for f in "$here"/ptx/*.ptx; do
    [ -f "$tmp/ptx/$(basename "$f")" ] || { echo "check_ptx: $f has no source in kernels/" >&2; stale=1; }
done

bad=0
for arch in sm_80 sm_90; do
    for f in "$here"/ptx/*.ptx; do
        "$PTXAS" -v -arch="$arch" "$f" -o "$tmp/out.cubin" 2> "$tmp/log"
        # ptxas -v prints, per kernel: "Compiling entry function 'NAME' for 'ARCH'", then
        # "N bytes stack frame, N bytes spill stores, N bytes spill loads", then "Used N registers".
        awk -v arch="$arch" -v hot=" $hot " '
            /Compiling entry function/ { match($0, /\x27[^\x27]+\x27/); k = substr($0, RSTART + 1, RLENGTH - 2) }
            /bytes stack frame/ {
                frame = $1 + 0; st = $5 + 0; ld = $9 + 0
            }
            /Used [0-9]+ registers/ {
                regs = $5
                flag = ""
                if ((frame || st || ld) && index(hot, " " k " ")) { flag = "  <-- local memory in a hot kernel"; bad = 1 }
                printf "%-6s %-20s %3d regs, stack %d B, spill st/ld %d/%d B%s\n", arch, k, regs, frame, st, ld, flag
            }
            END { exit bad }' "$tmp/log" || bad=1
    done
done
if [ "$stale" -ne 0 ] || [ "$bad" -ne 0 ]; then
    echo "check_ptx: FAILED" >&2
    exit 1
fi
echo "check_ptx: PTX up to date; no stack, spills or local memory in hot kernels (sm_80, sm_90)"
