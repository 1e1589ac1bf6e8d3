#!/usr/bin/env bash
# Runs fpx's whole test suite: installs what is missing (scripts/setup.sh), checks formatting,
# then `cargo test --workspace` (unit, integration and doc tests). Tests that need something
# absent (the ONNX node tests, ../shared/models, a GPU) skip with a printed reason.
#
#   ./scripts/test.sh                 # everything
#   ./scripts/test.sh -- --nocapture  # extra arguments go to `cargo test`
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh
# shellcheck source=/dev/null
source .fpx-env
command -v cargo >/dev/null 2>&1 || { echo "test: error: cargo not found (install Rust with rustup)" >&2; exit 1; }

start=$SECONDS
summary() { printf 'test: %s (%ds)\n' "$1" "$((SECONDS - start))"; }

echo "test: cargo fmt --all -- --check"
if ! cargo fmt --all -- --check; then
    summary "FAILED: formatting differs (run: cargo fmt --all)"
    exit 1
fi

echo "test: cargo clippy --workspace --all-targets -- -D warnings"
if ! cargo clippy --workspace --all-targets -- -D warnings; then
    summary "FAILED: clippy warnings"
    exit 1
fi

# Show what tests print (skip reasons, measured errors, the node-test tally) even when they pass.
export RUST_TEST_NOCAPTURE=1
echo "test: cargo test --workspace $*"
if ! cargo test --workspace "$@"; then
    summary "FAILED: cargo test --workspace"
    exit 1
fi

summary "OK: formatting clean, cargo test --workspace passed"
