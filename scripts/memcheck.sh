#!/usr/bin/env bash
# Runs the CPU kernel, GEMM and convolution tests under valgrind memcheck: every unsafe
# SIMD micro-kernel and raw-pointer packing path, on the parity suite's remainder shapes,
# with invalid reads and writes (and uses of uninitialised values) as errors.
#
# Valgrind does not emulate AVX-512 and hides it from CPUID, so under it the CPU backend
# and the GEMM detect AVX2 + FMA and run their AVX2 and portable micro-kernels: the two
# paths this check covers. (The AVX-512 kernels are covered by the same tests natively.)
#
#   bash scripts/memcheck.sh            # exit 1 on the first valgrind error
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
command -v valgrind > /dev/null || { echo "memcheck: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }

# The test executables, built once in the dev profile (optimised, with debug info).
json="$(mktemp)"
trap 'rm -f "$json"' EXIT
cargo test --all-features --no-run --message-format=json \
    -p vqkit --lib --test cpu_backend --test gemm \
    -p vqkit-nn --test gradients --test masked_gemm > "$json"
mapfile -t exes < <(python3 - "$json" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"] + " " + m["executable"])
PY
)
# One test executable under valgrind; the log is kept in $TMPDIR.
check() {
    local name="$1" exe="$2" filter=()
    # The library's unit tests: only those of the CPU kernels (the backend, the GEMM's users).
    [ "$name" = "vqkit" ] && filter=(backend::cpu quant::linalg)
    local log="${TMPDIR:-/tmp}/memcheck-$name.log" start=$SECONDS
    if ! valgrind --tool=memcheck --error-exitcode=99 --leak-check=no --track-origins=yes \
        --quiet "$exe" --test-threads=1 -q "${filter[@]}" > "$log" 2>&1; then
        echo "memcheck: $name FAILED (log: $log)" >&2
        tail -40 "$log" >&2
        return 1
    fi
    echo "memcheck: $name clean ($(grep -o '[0-9]* passed' "$log" | tail -1), $((SECONDS - start)) s)"
}
export -f check
# Two at a time: valgrind runs each program on one core.
printf '%s\n' "${exes[@]}" | xargs -P 2 -I{} bash -c 'check {}'
