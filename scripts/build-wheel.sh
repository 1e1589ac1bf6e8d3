#!/usr/bin/env bash
# Builds fpx's Python package (crates/fpx-python: PyO3, one abi3 wheel for CPython >= 3.9) with
# maturin and installs it into the project venv `.venv`.
#
#   ./scripts/build-wheel.sh            # release build: target/wheels/fpx-*.whl, installed
#   ./scripts/build-wheel.sh --dev      # the test profile's build (reuses `cargo test`'s crates)
#
# The wheel links the system's LLVM 19 (libLLVM.so.19.1, which `fpx.compile` uses), so it is
# tagged linux_x86_64, not manylinux: install it where LLVM 19 is (scripts/setup.sh puts it here).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

profile=release
case "${1:-}" in
    --dev) profile=dev ;;
    --release | "") ;;
    *) echo "usage: $0 [--dev|--release]" >&2; exit 2 ;;
esac

bash scripts/setup.sh >/dev/null
# shellcheck source=/dev/null
source .fpx-env
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$TARGET/wheels"
rm -f "$OUT"/fpx-*.whl
"$ROOT/.venv/bin/maturin" build --quiet --profile "$profile" -m crates/fpx-python/Cargo.toml -i "$FPX_PYTHON" \
    --compatibility linux --auditwheel skip --out "$OUT"
# maturin also leaves an empty manylinux-named file next to the wheel when it skips the audit.
find "$OUT" -name 'fpx-*manylinux*.whl' -size -1k -delete
wheel="$(ls "$OUT"/fpx-*-linux_x86_64.whl)"
PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore "$FPX_PYTHON" -m pip install -q --force-reinstall --no-deps "$wheel"
echo "build-wheel: installed $(basename "$wheel") ($profile) into .venv"
