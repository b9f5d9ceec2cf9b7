#!/usr/bin/env python3
"""The two data sets of docs/nsvq.md's measurements, as float32 .npy in OUT (default
/tmp/nsvqm):

- f_train.npy / f_test.npy: the first 5000 Fashion-MNIST training images and the first 2000
  test images, 784 pixels scaled to [0, 1] (read from Debian's gzipped IDX files);
- n_train.npy / n_test.npy: 10000 and 4000 vectors of N(0, I) in 32 dimensions (the
  distribution of the NSVQ paper's synthetic experiments), seed 0.

    python3 scripts/nsvq_data.py [OUT]
"""
import gzip
import os
import struct
import sys

import numpy as np

SRC = "/usr/share/datasets/fashion-mnist"


def images(name, count):
    with gzip.open(f"{SRC}/{name}-images-idx3-ubyte.gz", "rb") as f:
        data = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != 0x803 or n < count:
        raise SystemExit(f"{name}: not an IDX image file of at least {count} images")
    px = np.frombuffer(data, dtype=np.uint8, offset=16, count=count * rows * cols)
    return (px.reshape(count, rows * cols) / 255.0).astype(np.float32)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/nsvqm"
    os.makedirs(out, exist_ok=True)
    np.save(f"{out}/f_train.npy", images("train", 5000))
    np.save(f"{out}/f_test.npy", images("t10k", 2000))
    rng = np.random.default_rng(0)
    np.save(f"{out}/n_train.npy", rng.standard_normal((10000, 32)).astype(np.float32))
    np.save(f"{out}/n_test.npy", rng.standard_normal((4000, 32)).astype(np.float32))
    print(f"wrote {out}/{{f,n}}_{{train,test}}.npy")


if __name__ == "__main__":
    main()
