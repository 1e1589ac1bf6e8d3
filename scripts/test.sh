#!/usr/bin/env bash
# Runs fpx's whole test suite: installs what is missing (scripts/setup.sh), checks formatting
# and clippy, runs `cargo test --workspace` (unit, integration and doc tests; the C API's example
# is built with the system C compiler and run there), then builds the Python package's wheel into
# the project venv and runs its pytest suite. Tests that need something absent (the ONNX node
# tests, ../shared/models, a GPU) skip with a printed reason.
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

# A one-off build gains nothing from incremental state, and it doubles the target folder (about
# 1.5 GB of 5 GB): a CI machine with little disk ran out of space on it. Set CARGO_INCREMENTAL=1
# to keep it when running the suite repeatedly on a workstation.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
mkdir -p "$target_dir"
free_kb=$(df -Pk "$target_dir" | awk 'NR == 2 { print $4 }')
echo "test: ${free_kb:-?} KiB free for $target_dir (a fresh build needs about 4 GiB)"
if [[ -n "${free_kb:-}" && "$free_kb" -lt 4194304 ]]; then
    echo "test: warning: less than 4 GiB free; the build may fail with 'No space left on device'" >&2
fi

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
# fpx-capi-header (cbindgen) is built on its own: in the same build its syn features would change
# every proc-macro, and the Python wheel below could not reuse this build.
# The libraries first: `cargo test` builds crates as rlibs only, and the C example test needs
# libfpx_c.so (the same package selection, so the same features: nothing is built twice).
echo "test: cargo build --workspace --exclude fpx-capi-header --lib"
if ! cargo build --workspace --exclude fpx-capi-header --lib; then
    summary "FAILED: cargo build --workspace --lib"
    exit 1
fi
# A C example test that cannot find libfpx_c.so or a C compiler fails here instead of skipping.
export FPX_REQUIRE="${FPX_REQUIRE:+$FPX_REQUIRE,}capi"
echo "test: cargo test --workspace --exclude fpx-capi-header $* (FPX_REQUIRE=$FPX_REQUIRE)"
if ! cargo test --workspace --exclude fpx-capi-header "$@"; then
    summary "FAILED: cargo test --workspace"
    exit 1
fi
echo "test: cargo run -p fpx-capi-header -- --check"
if ! cargo run -q -p fpx-capi-header -- --check; then
    summary "FAILED: the C header crates/fpx-capi/include/fpx.h is not what cbindgen generates"
    exit 1
fi

# The Python package: the wheel built from the test profile's crates (no second build of the
# stack), installed into .venv, tested against the CLI that cargo test just built.
echo "test: Python package (scripts/build-wheel.sh --dev, pytest crates/fpx-python/tests)"
if ! bash scripts/build-wheel.sh --dev; then
    summary "FAILED: building the Python wheel"
    exit 1
fi
if ! FPX_CLI="${CARGO_TARGET_DIR:-$ROOT/target}/debug/fpx" "$FPX_PYTHON" -m pytest -q -rs crates/fpx-python/tests; then
    summary "FAILED: pytest crates/fpx-python/tests"
    exit 1
fi
# The type stubs (python/fpx/_native.pyi) against the built module: names, signatures, defaults.
# Run from an empty folder, so that mypy sees only the installed package.
echo "test: mypy.stubtest fpx._native"
if ! (cd "$(mktemp -d)" && "$FPX_PYTHON" -m mypy.stubtest fpx._native); then
    summary "FAILED: the Python type stubs differ from the module (mypy.stubtest fpx._native)"
    exit 1
fi

summary "OK: formatting and clippy clean, cargo test --workspace, the Python tests and the stub check passed"
