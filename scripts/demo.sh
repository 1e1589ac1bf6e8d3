#!/usr/bin/env bash
# fpx demo: installs what is missing, builds the `fpx` binary (release), runs the bundled
# example model (examples/tiny-transformer) through `fpx run` and compares its output with
# the committed onnxruntime reference.
#
#   ./scripts/demo.sh
# Environment: FPX_DEMO_TOL (max abs error allowed vs onnxruntime, default 1e-3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh
# shellcheck source=/dev/null
source .fpx-env
command -v cargo >/dev/null 2>&1 || { echo "demo: error: cargo not found (install Rust with rustup)" >&2; exit 1; }

EX=examples/tiny-transformer
OUT=out/demo

echo "demo: cargo build --release --bin fpx"
cargo build --release --bin fpx

rm -rf "$OUT"
mkdir -p "$OUT"
echo "demo: target/release/fpx run $EX/model.onnx --input input=$EX/input.npy --output-dir $OUT"
t0=$(date +%s%N)
target/release/fpx run "$EX/model.onnx" --input "input=$EX/input.npy" --output-dir "$OUT"
t1=$(date +%s%N)
wall_ms=$(( (t1 - t0) / 1000000 ))

"$FPX_PYTHON" - "$OUT/output.npy" "$EX/ref_output.npy" "${FPX_DEMO_TOL:-1e-3}" "$wall_ms" <<'PY'
import sys
import numpy as np

got_path, ref_path, tol, wall_ms = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
got = np.load(got_path)
ref = np.load(ref_path)
if got.shape != ref.shape or got.dtype != ref.dtype:
    sys.exit(f"demo: FAILED: {got_path} is {got.dtype}{list(got.shape)}, reference {ref.dtype}{list(ref.shape)}")
a = got.astype(np.float64).ravel()
b = ref.astype(np.float64).ravel()
err = float(np.max(np.abs(a - b)))
cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
print(f"demo: output {got.dtype}{list(got.shape)}  vs onnxruntime 1.31.1: max abs error {err:.3g}, cosine {cos:.9f}")
print(f"demo: fpx run wall time {wall_ms} ms (process start, model import, run, .npy write)")
if not np.isfinite(a).all() or err > tol:
    sys.exit(f"demo: FAILED: max abs error {err:.3g} > tolerance {tol:g}")
print("demo: OK")
PY
