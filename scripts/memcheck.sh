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

# The test executables in the dev profile (optimised, with debug info): those of the whole
# workspace's `cargo test --all-features`, which CI has built just before, picked out here.
# (Selecting them with `-p vqkit --lib --test ...` changed the features cargo unified, and
# compiled the core crate and its dependents again: 4 to 5 minutes of CI.)
json="$(mktemp)" list="$(mktemp)"
trap 'rm -f "$json" "$list"' EXIT
cargo test --all-features --no-run --message-format=json > "$json"
# Into a file rather than through a process substitution, so that a failure stops the script.
python3 - "$json" > "$list" <<'PY'
import json, sys
# (package, target): the core library's unit tests, the CPU backend's suite, the GEMM's;
# the network crate's unit tests, gradient checks and masked GEMMs.
wanted = {("vqkit", "vqkit"), ("vqkit", "cpu_backend"), ("vqkit", "gemm"),
          ("vqkit-nn", "vqkit_nn"), ("vqkit-nn", "gradients"), ("vqkit-nn", "masked_gemm")}
found = set()
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if not m["profile"]["test"]:
        continue
    # package_id names the package: "path+file:///.../dir#name@version", or
    # "path+file:///.../name#version" where the folder is the name, or (older cargo)
    # "name version (path+file:///...)".
    pid = m["package_id"]
    if "#" in pid:
        path, _, tail = pid.partition("#")
        package = tail.split("@")[0] if "@" in tail else path.rstrip("/").split("/")[-1]
    else:
        package = pid.split(" ")[0]
    key = (package, m["target"]["name"])
    if key in wanted and key not in found:
        found.add(key)
        print(m["target"]["name"] + " " + m["executable"])
missing = wanted - found
if missing:
    sys.exit(f"memcheck: no test executable for {sorted(missing)}")
PY
mapfile -t exes < "$list"
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
