#!/usr/bin/env bash
# fpx tuning benchmark: installs what is missing, builds the tuner's benchmark (release), tunes
# the bundled tiny transformer's, MiniLM's and LLaMA-7B's quantized products on this machine (FP6 e3m2 with f32 activations,
# FP6 e2m3 with int8 activations) within a budget, then re-measures every tuned kernel table
# against fpx's heuristic one, per product and M bucket (1, 2-4, ..., >256), as an artifact holds
# them and the runtime calls them, and prints the table with the speed-ups.
#
#   ./scripts/bench-tune.sh                               # three families, 60 s of tuning each
#   ./scripts/bench-tune.sh --family minilm --budget 20 --max-m 16
#   ./scripts/bench-tune.sh --rounds 25                   # longer comparisons, less noise
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh
# shellcheck source=/dev/null
source .fpx-env

command -v cargo >/dev/null 2>&1 || { echo "bench-tune: error: cargo not found (install Rust with rustup)" >&2; exit 1; }
exec cargo run --release -q -p fpx-tune --example tune_bench -- "$@"
