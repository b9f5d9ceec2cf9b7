#!/usr/bin/env bash
# Every test of the repository, Rust then Python: the README's test command, and the last
# step of .ci/run.
#
#   1. `cargo test --all-features`: the workspace's Rust tests (arguments to this script
#      are passed to it).
#   2. The Python package (crates/vqkit-python), built by maturin from this checkout into a
#      virtual environment under target/ with its test dependencies (pytest, torch,
#      faiss-cpu, vector-quantize-pytorch, from PyPI), then its pytest suite. The
#      extension is built in the dev profile, sharing the artifacts step 1 built; a user
#      installs the release build with `pip install ./crates/vqkit-python`.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --all-features "$@"

venv=target/python
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
# pip rebuilds and reinstalls a package from a local folder every time; the test
# dependencies install once.
MATURIN_PEP517_ARGS="--profile dev" "$venv/bin/python" -m pip install -q "./crates/vqkit-python[test]"
# The CLI round trips use the binary step 1 built.
VQKIT_BIN="$PWD/target/debug/vqkit" "$venv/bin/python" -m pytest -q crates/vqkit-python/tests
