#!/usr/bin/env python3
"""Convert Fashion-MNIST (gzipped IDX, Debian's dataset-fashion-mnist) to float32 .npy.

    python3 scripts/fashion_to_npy.py [--out /tmp/fashion] [--subset 10000]

Writes train.npy (60000, 784) and t10k.npy (10000, 784), pixel values 0..255 as float32,
and train_<subset>.npy with the first `subset` training images.
"""
import argparse
import gzip
import os
import struct

import numpy as np

SRC = "/usr/share/datasets/fashion-mnist"


def read_idx_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != 0x00000803:
        raise SystemExit(f"{path}: magic {magic:#x} is not an IDX u8 image file")
    pixels = np.frombuffer(data, dtype=np.uint8, offset=16)
    if pixels.size != n * rows * cols:
        raise SystemExit(f"{path}: truncated ({pixels.size} of {n * rows * cols} bytes)")
    return pixels.reshape(n, rows * cols).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/fashion")
    ap.add_argument("--subset", type=int, default=10000)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    train = read_idx_images(f"{SRC}/train-images-idx3-ubyte.gz")
    test = read_idx_images(f"{SRC}/t10k-images-idx3-ubyte.gz")
    np.save(f"{a.out}/train.npy", train)
    np.save(f"{a.out}/t10k.npy", test)
    np.save(f"{a.out}/train_{a.subset}.npy", train[: a.subset])
    print(f"wrote {a.out}/train.npy {train.shape}, t10k.npy {test.shape}, train_{a.subset}.npy")


if __name__ == "__main__":
    main()
