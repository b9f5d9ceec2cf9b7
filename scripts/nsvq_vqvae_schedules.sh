#!/usr/bin/env bash
# Test-set figures of a small VQ-VAE with the NSVQ quantizer under each replacement
# schedule (docs/nsvq.md), seeds $SEEDS (default 0 1 2), one thread:
#
#   scripts/nsvq_vqvae_schedules.sh VQKIT [more train-vqvae flags]
#
# One markdown row per schedule: test MSE mean and min..max, test PSNR, codebook usage.
set -euo pipefail
vqkit=$1
shift
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for schedule in frequent published; do
  lines=()
  for seed in ${SEEDS:-0 1 2}; do
    lines+=("$("$vqkit" train-vqvae --quantizer nsvq --nsvq-schedule "$schedule" \
      --limit 16000 --batch 16 --epochs 2 --codebook 64 --hidden-dims 16 32 \
      --residual-layers 1 --residual-hidden 8 --embedding-dim 16 --seed "$seed" \
      --threads 1 --json -o "$out/m.safetensors" "$@" | tail -n 1)")
  done
  python3 - "$schedule" "${lines[@]}" <<'PY'
import json, sys
runs = [json.loads(l) for l in sys.argv[2:]]
mse = [r["test_mse"] for r in runs]
psnr = sum(r["test_psnr"] for r in runs) / len(runs)
usage = sum(r["usage"][0] for r in runs) / len(runs)
perp = sum(r["perplexity"][0] for r in runs) / len(runs)
print(f"| {sys.argv[1]} | {sum(mse)/len(mse):.5f} | {min(mse):.5f}..{max(mse):.5f} "
      f"| {psnr:.2f} | {perp:.1f} | {usage:.3f} |")
PY
done
