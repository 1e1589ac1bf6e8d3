#!/usr/bin/env bash
# fpx CPU benchmark: installs what is missing, builds the `fpx` binary (release), then prints the
# read bandwidth of this machine, fpx FP6 (e3m2) matrix-product kernels vs onnxruntime FP32 MatMul
# and int4 MatMulNBits (accuracy_level 0 and 4), MiniLM end to end, and an LLM decoder with KV cache
# (decode step and prefill vs onnxruntime FP32 / dynamic int8 / int4) (scripts/bench_cpu.py).
#
#   ./scripts/bench-cpu.sh                          # full run (several minutes on 2 cores)
#   ./scripts/bench-cpu.sh --quick                  # 4096x4096, M in 1, 8; LLM 2 layers, past 128 (a few minutes)
#   ./scripts/bench-cpu.sh --quick --no-kernels --no-minilm   # only the LLM section
#   ./scripts/bench-cpu.sh --shapes 4096x4096 --threads 1 --json bench.json
#   ./scripts/bench-cpu.sh --help                   # every option
#
# Models and inputs are cached in --workdir (default /tmp/fpx-bench).
# Environment: FPX_BENCH_SKIP_BUILD=1 skips `cargo build` (uses whatever binary --fpx names).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh
# shellcheck source=/dev/null
source .fpx-env

if [ "${FPX_BENCH_SKIP_BUILD:-0}" != "1" ]; then
    command -v cargo >/dev/null 2>&1 || { echo "bench-cpu: error: cargo not found (install Rust with rustup)" >&2; exit 1; }
    echo "bench-cpu: cargo build --release --bin fpx"
    cargo build --release --bin fpx
fi

exec "$FPX_PYTHON" scripts/bench_cpu.py "$@"
