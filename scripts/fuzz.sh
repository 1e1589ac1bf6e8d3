#!/usr/bin/env bash
# Fuzzes fpx's readers (crates/fpx-fuzz): the ONNX importer, the artifact reader and the .npy
# reader, each for N minutes, from seeded mutations of the bundled example and tests/data/fuzz/.
# Prints executions per second and totals per target; a crash's input is saved under
# tests/data/fuzz/<target>/crash-<hash> (commit it with the fix: the test suite replays it).
#
#   ./scripts/fuzz.sh --minutes 5                       # every target, 5 minutes each
#   ./scripts/fuzz.sh --minutes 1 --target npy --seed 7
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ -f .fpx-env ] && source .fpx-env

minutes=1 target=all seed=1
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) minutes="$2"; shift 2 ;;
        --target) target="$2"; shift 2 ;;
        --seed) seed="$2"; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "fuzz: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$target" in onnx|artifact|npy|all) ;; *) echo "fuzz: --target is onnx, artifact, npy or all" >&2; exit 2 ;; esac

# The release profile by default (the fuzzer's speed is its reach); FPX_FUZZ_PROFILE=dev reuses
# a test build instead of compiling the dependencies again.
exec cargo run --profile "${FPX_FUZZ_PROFILE:-release}" --quiet -p fpx-fuzz -- --minutes "$minutes" --target "$target" --seed "$seed"
