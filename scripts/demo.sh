#!/usr/bin/env bash
# fpx demo (the main job): installs what is missing, builds the `fpx` binary (release), runs the
# bundled example model (examples/tiny-transformer) on the FP32 path, compiles it to an FP6
# artifact and runs that, then prints accuracy vs onnxruntime FP32 and speed vs the FP32 path.
#
#   ./scripts/demo.sh
# Environment: FPX_DEMO_TOL (max abs error of the FP32 path vs onnxruntime, default 1e-3),
# FPX_DEMO_WEIGHTS (scheme, default fp6-e3m2), FPX_DEMO_CPU (x86-64-v3 | x86-64-v4 | native).
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
mkdir -p "$OUT/fp32" "$OUT/fp6"
FPX=target/release/fpx

echo "demo: 1. FP32 reference path: $FPX run $EX/model.onnx"
"$FPX" run "$EX/model.onnx" --input "input=$EX/input.npy" --output-dir "$OUT/fp32"

echo "demo: 2. compile to FP6: $FPX compile $EX/model.onnx -o $OUT/model.fpx --weights ${FPX_DEMO_WEIGHTS:-fp6-e3m2}"
"$FPX" compile "$EX/model.onnx" -o "$OUT/model.fpx" --weights "${FPX_DEMO_WEIGHTS:-fp6-e3m2}" --cpu "${FPX_DEMO_CPU:-auto}"

echo "demo: 3. run the artifact: $FPX run $OUT/model.fpx"
"$FPX" run "$OUT/model.fpx" --input "input=$EX/input.npy" --output-dir "$OUT/fp6"

echo "demo: 4. speed, in-process, 200 iterations each"
"$FPX" bench "$EX/model.onnx" --input "input=$EX/input.npy" --iters 200 --json > "$OUT/bench_fp32.json"
"$FPX" bench "$OUT/model.fpx" --input "input=$EX/input.npy" --iters 200 --json > "$OUT/bench_fp6.json"

"$FPX_PYTHON" - "$OUT" "$EX/ref_output.npy" "${FPX_DEMO_TOL:-1e-3}" <<'PY'
import json, sys
import numpy as np

out, ref_path, tol = sys.argv[1], sys.argv[2], float(sys.argv[3])
ref = np.load(ref_path).astype(np.float64).ravel()

def compare(path):
    got = np.load(path).astype(np.float64).ravel()
    err = float(np.max(np.abs(got - ref)))
    cos = float(got @ ref / (np.linalg.norm(got) * np.linalg.norm(ref)))
    return err, cos, bool(np.isfinite(got).all())

e32, c32, ok32 = compare(f"{out}/fp32/output.npy")
e6, c6, ok6 = compare(f"{out}/fp6/output.npy")
b32 = json.load(open(f"{out}/bench_fp32.json"))
b6 = json.load(open(f"{out}/bench_fp6.json"))
w6 = sum(k["weight_bytes"] for k in b6["kernels"] if k["op"] == "QuantMatMul")
print()
print(f"{'path':<28} {'max abs err':>12} {'cosine':>12} {'median latency':>16}")
print(f"{'FP32 (fpx run .onnx)':<28} {e32:>12.3g} {c32:>12.9f} {b32['median_us']:>13.1f} us")
print(f"{'FP6 artifact (fpx run .fpx)':<28} {e6:>12.3g} {c6:>12.9f} {b6['median_us']:>13.1f} us")
print(f"errors are vs onnxruntime 1.31.1 FP32; FP6 weights: {w6/1e3:.1f} KB; speed-up FP6 vs FP32 path: {b32['median_us']/b6['median_us']:.2f}x ({b6['threads']} threads)")
if not (ok32 and ok6) or e32 > tol or c6 < 0.99:
    sys.exit(f"demo: FAILED (FP32 max abs error {e32:.3g} > {tol:g}, or FP6 cosine {c6:.4f} < 0.99)")
print("demo: OK")
PY
