"""Shared fixtures: seeded data, and the CLI binary for the round trips."""

import os
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def blobs():
    """20,000 points of d = 32 around 64 seeded centres, float32 C-contiguous."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((64, 32)).astype(np.float32) * 4
    labels = rng.integers(0, 64, 20_000)
    x = centres[labels] + rng.standard_normal((20_000, 32)).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


@pytest.fixture(scope="session")
def cli():
    """The `vqkit` binary: $VQKIT_BIN, or the workspace's debug or release build.

    A missing binary fails the tests that need it (build it with `cargo build -p
    vqkit-cli`); the README's test command builds it first.
    """
    candidates = [os.environ.get("VQKIT_BIN")] + [
        str(REPO / "target" / p / "vqkit") for p in ("debug", "release")
    ]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    pytest.fail("no vqkit binary: set VQKIT_BIN or run `cargo build -p vqkit-cli`")


FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


@pytest.fixture(scope="session")
def fashion():
    """Real vectors: the 10,000 Fashion-MNIST test images, every 4th pixel (d = 196), in
    [0, 1]. From Debian's `dataset-fashion-mnist` (`.ci/run` installs it); elsewhere the
    tests that need it skip, unless VQKIT_REQUIRE_DATA=1 makes that a failure."""
    import gzip

    if not FASHION.exists():
        msg = f"{FASHION} not installed (Debian: apt-get install dataset-fashion-mnist)"
        if os.environ.get("VQKIT_REQUIRE_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    raw = gzip.open(FASHION).read()
    x = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255.0
    return np.ascontiguousarray(x[:, ::4])
