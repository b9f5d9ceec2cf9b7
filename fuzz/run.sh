#!/usr/bin/env bash
# Runs every fuzz target over its committed corpus for SECONDS each (default 20), with
# AddressSanitizer, failing on the first crash, panic, leak or out-of-memory. CI runs it
# briefly; the corpora were grown by longer runs (see docs/robustness.md).
#
#   bash fuzz/run.sh [SECONDS]          # needs cargo-fuzz (cargo install cargo-fuzz)
#
# cargo fuzz passes nightly-only flags (-Zsanitizer); RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them, so no second toolchain is needed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
seconds="${1:-20}"
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for target in npy fvecs idx models checkpoint rows; do
    mkdir -p "corpus/$target"
    printf 'fuzz %s: ' "$target"
    log="$(mktemp)"
    if ! cargo fuzz run -O "$target" "corpus/$target" -- -max_total_time="$seconds" \
        -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 > "$log" 2>&1; then
        echo "FAILED"
        grep -E "panicked|ERROR|SUMMARY|artifact" "$log" | head -20 >&2
        exit 1
    fi
    grep -E "^stat::number_of_executed_units|^#[0-9]+ +DONE" "$log" | tail -1
    rm -f "$log"
done
