#!/usr/bin/env bash
# Held-out error of vqkit's NSVQ against the published code's choices, a few seeds each.
#
#   scripts/nsvq_choices.sh VQKIT DATA_DIR METHOD "COMMON FLAGS" NAME "FLAGS" [NAME "FLAGS" ...]
#
# DATA_DIR holds <set>_train.npy and <set>_test.npy for set in $SETS (default: f n, as
# written by scripts/nsvq_data.py). For every set and variant it runs `vqkit nsvq` with
# seeds $SEEDS (default 0 1 2) on one thread and prints one markdown row: set, method,
# variant, mean and spread (min..max) of the held-out MSE, mean training seconds.
set -euo pipefail
vqkit=$1 data=$2 method=$3 common=$4
shift 4
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for set in ${SETS:-f n}; do
  args=("$@")
  while ((${#args[@]})); do
    name=${args[0]} flags=${args[1]}
    args=("${args[@]:2}")
    vals=() secs=()
    for seed in ${SEEDS:-0 1 2}; do
      # shellcheck disable=SC2086 # the flags are words on purpose
      line=$("$vqkit" nsvq -i "$data/${set}_train.npy" --test "$data/${set}_test.npy" \
        --method "$method" $common $flags --seed "$seed" --threads 1 --json \
        -o "$out/m.safetensors" | tail -n 1)
      vals+=("$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["test_mse"])' "$line")")
      secs+=("$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["seconds"])' "$line")")
    done
    python3 - "$set" "$method" "$name" "${#vals[@]}" "${vals[@]}" "${secs[@]}" <<'PY'
import sys
s, m, name, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
v = [float(a) for a in sys.argv[5:5 + n]]
t = [float(a) for a in sys.argv[5 + n:]]
print(f"| {s} | {m} | {name} | {sum(v)/n:.4f} | {min(v):.4f}..{max(v):.4f} | {sum(t)/n:.1f} |")
PY
  done
done
