#!/usr/bin/env bash
# Every test of the repository, Rust then Python: the README's test command, and the last
# step of .ci/run.
#
#   1. `cargo test --all-features`: the workspace's Rust tests (arguments to this script
#      are passed to it).
#   2. The Python package's pytest suite (crates/vqkit-python/tests), in a virtual
#      environment under target/ holding the test dependencies from PyPI (pytest, torch,
#      faiss-cpu, vector-quantize-pytorch, dask; read from pyproject.toml's `test` extra),
#      against the package staged from this checkout: python/vqkit with the extension
#      built by cargo into the same target directory, target/debug/lib_vqkit.so. (Maturin
#      builds for an explicit target triple, in a target directory of its own, so it
#      would compile every dependency again; `pip install ./crates/vqkit-python` is what
#      users run, and builds the release wheel.)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --all-features "$@"

venv=target/python
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
"$venv/bin/python" -c "import tomllib" 2>/dev/null || "$venv/bin/python" -m pip install -q tomli
"$venv/bin/python" - <<'PY' > "$venv/requirements.txt"
try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib
with open("crates/vqkit-python/pyproject.toml", "rb") as f:
    p = tomllib.load(f)["project"]
print("\n".join(p["dependencies"] + p["optional-dependencies"]["test"]))
PY
"$venv/bin/python" -m pip install -q -r "$venv/requirements.txt"

"$venv/bin/python" -m pip uninstall -q -y vqkit 2>/dev/null || true  # an earlier pip install
cargo build -q --all-features -p vqkit-python
stage=target/python/stage
rm -rf "$stage" && mkdir -p "$stage/vqkit"
cp crates/vqkit-python/python/vqkit/*.py crates/vqkit-python/python/vqkit/py.typed "$stage/vqkit/"
cp target/debug/lib_vqkit.so "$stage/vqkit/_vqkit.abi3.so"
# The CLI round trips use the binary step 1 built.
VQKIT_BIN="$PWD/target/debug/vqkit" PYTHONPATH="$PWD/$stage" \
  "$venv/bin/python" -m pytest -q crates/vqkit-python/tests
