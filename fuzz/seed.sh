#!/usr/bin/env bash
# Seeds the fuzz corpora (corpus/<target>/) from real files: Fashion-MNIST's IDX files
# (Debian's dataset-fashion-mnist), .npy and .fvecs points made from its images, and
# models and a checkpoint that vqkit trains on them. Small files only: the fuzzer mutates
# what it is given. Run once; the corpora are committed and grow by fuzzing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data=/usr/share/datasets/fashion-mnist
vqkit="$here/../target/release/vqkit"
[ -x "$vqkit" ] || (cd "$here/.." && cargo build --release -p vqkit-cli)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for t in npy fvecs idx models checkpoint; do mkdir -p "$here/corpus/$t"; done

python3 - "$data" "$tmp" "$here/corpus" <<'PY'
import gzip, struct, sys
data, tmp, corpus = sys.argv[1:]
raw = gzip.open(f"{data}/t10k-images-idx3-ubyte.gz").read()
n, rows, cols = 24, 28, 28
images = raw[16:16 + n * rows * cols]
header = struct.pack(">IIII", 0x803, n, rows, cols)
open(f"{corpus}/idx/images-24.idx", "wb").write(header + images)
open(f"{corpus}/idx/images-4.idx.gz", "wb").write(
    gzip.compress(struct.pack(">IIII", 0x803, 4, rows, cols) + images[:4 * rows * cols]))
labels = gzip.open(f"{data}/t10k-labels-idx1-ubyte.gz").read()
open(f"{corpus}/idx/labels-100.idx", "wb").write(struct.pack(">II", 0x801, 100) + labels[8:108])
open(f"{corpus}/idx/labels-20.idx.gz", "wb").write(
    gzip.compress(struct.pack(">II", 0x801, 20) + labels[8:28]))

def npy(path, descr, shape, payload):
    head = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        descr, "".join(f"{s}, " for s in shape) if len(shape) == 1 else ", ".join(map(str, shape)))
    head += " " * (63 - (10 + len(head)) % 64) + "\n"
    open(path, "wb").write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head.encode() + payload)

# 8 images as vectors of 49 (7 x 7 corners), in each dtype the reader takes.
px = [images[i * 784 + (r * 28 + c)] for i in range(8) for r in range(7) for c in range(7)]
npy(f"{corpus}/npy/u8.npy", "|u1", (8, 49), bytes(px))
npy(f"{corpus}/npy/f32.npy", "<f4", (8, 49), struct.pack(f"<{len(px)}f", *[p / 255 for p in px]))
npy(f"{corpus}/npy/f64.npy", "<f8", (8, 49), struct.pack(f"<{len(px)}d", *[p / 255 for p in px]))
npy(f"{corpus}/npy/f16.npy", "<f2", (8, 49), struct.pack(f"<{len(px)}e", *[p / 255 for p in px]))
npy(f"{corpus}/npy/codes.npy", "<u4", (8,), struct.pack("<8I", *range(8)))
npy(f"{tmp}/points.npy", "<f4", (400, 16),
    struct.pack("<6400f", *[images[i] / 255 for i in range(6400)]))
with open(f"{corpus}/fvecs/points.fvecs", "wb") as f:
    for i in range(6):
        f.write(struct.pack("<i", 16) + struct.pack("<16f", *[p / 255 for p in px[i * 16:i * 16 + 16]]))
PY

x="$tmp/points.npy"
"$vqkit" kmeans -i "$x" -k 8 --iters 3 -o "$here/corpus/models/kmeans.safetensors" > /dev/null
"$vqkit" rq-kmeans -i "$x" --stages 2 -k 4 -o "$here/corpus/models/rvq.safetensors" > /dev/null
"$vqkit" pvq -i "$x" -m 2 -k 4 -o "$here/corpus/models/pvq.safetensors" > /dev/null
"$vqkit" avq -i "$x" -m 2 -k 4 --beam 2 -o "$here/corpus/models/avq.safetensors" > /dev/null
"$vqkit" train-vqvae --data "$data" --limit 32 --batch 16 --codebook 8 --hidden-dims 4 8 \
    --residual-layers 1 --residual-hidden 2 --embedding-dim 4 --threads 1 \
    -o "$here/corpus/checkpoint/vqvae.safetensors" > /dev/null
"$vqkit" train-vqvae --data "$data" --model rqvae --levels 2 --limit 32 --batch 16 \
    --codebook 8 --hidden-dims 4 8 --residual-layers 1 --residual-hidden 2 \
    --embedding-dim 4 --threads 1 -o "$here/corpus/checkpoint/rqvae.safetensors" > /dev/null
ls -la "$here"/corpus/*
