#!/usr/bin/env bash
# fpx demo (the main job): installs what is missing, builds the `fpx` binary (release), runs the
# bundled example model (examples/tiny-transformer) on the FP32 path, compiles it to an FP6
# artifact and runs that, then prints accuracy vs onnxruntime FP32 and speed vs the FP32 path;
# then shows where FP6 pays: one LLaMA-7B-sized product at one token (4096 x 11008, random
# weights), FP32 vs the FP6 artifact, speed and accuracy. About a minute in all.
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
# cargo builds where CARGO_TARGET_DIR says, when it is set.
FPX="${CARGO_TARGET_DIR:-target}/release/fpx"

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
PY

# A product the size of LLaMA-7B's MLP up-projection, at one token (a decode step reads every
# weight once): here the FP32 path streams 180 MB of weights, the FP6 artifact 34 MB.
BIG="$OUT/llama-up-proj"
echo
echo "demo: 5. where FP6 pays: y[1, 11008] = x[1, 4096] @ W[4096, 11008] (LLaMA-7B's MLP up-projection, one token)"
"$FPX_PYTHON" - "$BIG" <<'PY'
import os, sys
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(20261206)
w = (rng.standard_normal((4096, 11008), dtype=np.float32) * 0.02).astype(np.float32)
x = rng.standard_normal((1, 4096), dtype=np.float32)
graph = helper.make_graph(
    [helper.make_node("MatMul", ["x", "w"], ["y"], name="up_proj")], "llama_up_proj",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["tokens", 4096])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["tokens", 11008])],
    [numpy_helper.from_array(w, "w")])
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), f"{out}/model.onnx")
np.save(f"{out}/x.npy", x)
PY
"$FPX" compile "$BIG/model.onnx" -o "$BIG/model.fpx" --weights "${FPX_DEMO_WEIGHTS:-fp6-e3m2}" --cpu "${FPX_DEMO_CPU:-auto}" -q
"$FPX" bench "$BIG/model.onnx" --input "x=$BIG/x.npy" --iters 30 --json --output-dir "$BIG/fp32" > "$BIG/bench_fp32.json"
"$FPX" bench "$BIG/model.fpx" --input "x=$BIG/x.npy" --iters 30 --json --output-dir "$BIG/fp6" > "$BIG/bench_fp6.json"
"$FPX_PYTHON" - "$BIG" <<'PY'
import json, os, sys
import numpy as np

big = sys.argv[1]
b32, b6 = (json.load(open(f"{big}/bench_{p}.json")) for p in ("fp32", "fp6"))
y32 = np.load(f"{big}/fp32/y.npy").astype(np.float64).ravel()
y6 = np.load(f"{big}/fp6/y.npy").astype(np.float64).ravel()
cos = float(y6 @ y32 / (np.linalg.norm(y6) * np.linalg.norm(y32)))
mb32 = os.path.getsize(f"{big}/model.onnx") / 1e6
mb6 = os.path.getsize(f"{big}/model.fpx") / 1e6
print(f"{'path':<28} {'file MB':>10} {'median latency':>16} {'cosine vs FP32':>16}")
print(f"{'FP32 (fpx run .onnx)':<28} {mb32:>10.1f} {b32['median_us']:>13.1f} us {1.0:>16.6f}")
print(f"{'FP6 artifact (fpx run .fpx)':<28} {mb6:>10.1f} {b6['median_us']:>13.1f} us {cos:>16.6f}")
print(f"speed-up FP6 vs FP32 path at one token: {b32['median_us'] / b6['median_us']:.2f}x ({b6['threads']} threads), {mb32 / mb6:.1f}x smaller")
if not cos > 0.99:
    sys.exit(f"demo: FAILED (FP6 cosine {cos:.4f} < 0.99 on the LLaMA-sized product)")
PY
echo "demo: OK"
