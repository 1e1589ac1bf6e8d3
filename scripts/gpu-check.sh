#!/usr/bin/env bash
# fpx GPU check, in one call on a machine with an NVIDIA GPU (sm_80 or newer):
#   1. build the GPU test binaries and the GPU benchmark (or use prebuilt ones, see below);
#   2. run every GPU test: the FP6 GEMM vs the CPU reference (MiniLM + LLaMA-2 shapes, M 1..1000,
#      both formats, FP16 and BF16), the W4A8 pair (row quantizer + FP8-mma GEMM, 8.9 or newer) and
#      every op kernel vs its CPU reference;
#   3. compute-sanitizer memcheck and racecheck over the GEMM tests (a reduced set: the sanitizers
#      slow kernels down 10-100x);
#   4. the GPU tuner: its device test (a planted wrong kernel rejected, kept configs re-checked; it
#      links LLVM 19 for the CPU tuner, so it is skipped where libLLVM-19 is missing) and the tuning
#      benchmark (a planted kernel must fail the reference check; LLaMA-2 and MiniLM shapes tuned
#      for M = 1..256, then the untuned vs tuned kernel tables vs cuBLAS FP16, from DRAM, side by
#      side, each config checked again before it is timed; --tune-budget=SECONDS, default 120);
#   5. the GPU benchmark: fpx FP6 GEMM vs cuBLAS FP16 (cublasGemmEx, what torch.matmul calls) in
#      one run, timed from DRAM (L2 flushed before every timed launch, no host wait between
#      launches), beside the HBM floor and a back-to-back (L2-warm) column; plus torch.matmul
#      itself when python3 has torch;
#   6. one table at the end.
# FPX_REQUIRE=gpu is set for every test run, so a missing GPU, driver or NVRTC fails a test
# rather than skipping it.
# Whole-graph GPU execution (`fpx run --device cuda`, MiniLM on the GPU) is not built yet: the
# table says so rather than skipping silently.
#
#   scripts/gpu-check.sh                 # build if cargo is here, else use target/gpu-check/bin
#   scripts/gpu-check.sh --build-only    # on a build machine: put the binaries in target/gpu-check/bin
#   scripts/gpu-check.sh --quick         # fewer benchmark shapes, a shorter tuning budget
#   scripts/gpu-check.sh --tune-budget=300   # seconds for the tuning benchmark (default 120)
#
# A GPU machine without Rust: run `--build-only` on an x86-64 build machine, carry
# target/gpu-check to the GPU machine, run this script there. NVRTC (libnvrtc.so.13) and cuBLAS
# are found under FPX_CUDA_HOME, /usr/local/cuda and python3's nvidia-* wheels.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUTDIR="target/gpu-check"
BIN="$OUTDIR/bin"
LOG="$OUTDIR/logs"
BUILD_ONLY=0
QUICK=""
TUNE_BUDGET=120
for a in "$@"; do
    case "$a" in
        --build-only) BUILD_ONLY=1 ;;
        --quick) QUICK="--quick"; TUNE_BUDGET=40 ;;
        --tune-budget=*) TUNE_BUDGET="${a#--tune-budget=}" ;;
        -h|--help) sed -n 2,31p "$0"; exit 0 ;;
        *) echo "gpu-check: unknown option '$a' (see --help)" >&2; exit 2 ;;
    esac
done
mkdir -p "$BIN" "$LOG"

build() {
    [ -f .fpx-env ] && source .fpx-env
    echo "gpu-check: building GPU tests and benchmark (release)"
    local json
    json=$(cargo test -p fpx-cuda --release --no-run --message-format=json --test cuda 2>"$LOG/build.err") || { cat "$LOG/build.err" >&2; return 1; }
    json="$json
$(cargo test -p fpx-tune --release --no-run --message-format=json --test tune 2>>"$LOG/build.err")" || { cat "$LOG/build.err" >&2; return 1; }
    cargo build -p fpx-cuda --release --example gpu_bench 2>>"$LOG/build.err" || { cat "$LOG/build.err" >&2; return 1; }
    cargo build -p fpx-tune --release --example gpu_tune_bench 2>>"$LOG/build.err" || { cat "$LOG/build.err" >&2; return 1; }
    echo "$json" | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | while read -r exe; do
        case "$(basename "$exe")" in
            cuda-*) cp "$exe" "$BIN/cuda_tests" ;;
            tune-*) cp "$exe" "$BIN/tune_tests" ;;
        esac
    done
    local target_dir="${CARGO_TARGET_DIR:-target}"
    cp "$target_dir/release/examples/gpu_bench" "$BIN/gpu_bench"
    cp "$target_dir/release/examples/gpu_tune_bench" "$BIN/gpu_tune_bench"
    # Without debug info the four binaries are ~7 MB (~200 MB with it): small enough to carry to a
    # GPU machine that has no Rust toolchain.
    if command -v strip >/dev/null 2>&1; then
        strip "$BIN"/cuda_tests "$BIN"/tune_tests "$BIN"/gpu_bench "$BIN"/gpu_tune_bench
    fi
    echo "gpu-check: binaries in $BIN: $(ls "$BIN" | tr '\n' ' ')"
}

if command -v cargo >/dev/null 2>&1; then
    build || { echo "gpu-check: build failed" >&2; exit 1; }
elif [ ! -x "$BIN/cuda_tests" ]; then
    echo "gpu-check: no cargo here and no prebuilt binaries in $BIN (run --build-only on a build machine and carry $OUTDIR)" >&2
    exit 1
fi
[ "$BUILD_ONLY" = 1 ] && exit 0

# CUDA libraries: NVRTC for compiling the templates, cuBLAS for the peer column.
add_lib_dir() { case ":${LD_LIBRARY_PATH:-}:" in *":$1:"*) ;; *) export LD_LIBRARY_PATH="$1${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;; esac; }
for d in "${FPX_CUDA_HOME:-/nonexistent}/lib" /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && add_lib_dir "$d"
done
if command -v python3 >/dev/null 2>&1; then
    for d in $(python3 - <<'EOF' 2>/dev/null
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
seen = set()
for r in roots:
    for lib in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True):
        if any(n in os.path.basename(lib) for n in ("nvrtc", "cublas")):
            seen.add(os.path.dirname(lib))
print("\n".join(sorted(seen)))
EOF
    ); do add_lib_dir "$d"; done
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu-check: GPU: /'

# On a GPU machine nothing may pass by skipping: a test that would print SKIP for want of a GPU,
# its driver or NVRTC fails instead (fpx_test_support::skip). Set FPX_REQUIRE yourself to widen it
# (e.g. FPX_REQUIRE=gpu,vnni,models).
export FPX_REQUIRE="${FPX_REQUIRE:-gpu}"
echo "gpu-check: FPX_REQUIRE=$FPX_REQUIRE"

declare -a ROWS
row() { ROWS+=("$(printf '%-46s %-8s %s' "$1" "$2" "$3")"); }

run_tests() { # binary name filter... (test-name filters of that test binary)
    local bin="$1"; shift
    local name="$1"; shift
    local log="$LOG/$name.log"
    # fpx-tune's test binary links LLVM 19 (its CPU half); a GPU machine without libLLVM-19 cannot
    # start it. The tuning benchmark below checks a planted kernel on the device without LLVM.
    local missing
    missing=$(ldd "$BIN/$bin" 2>/dev/null | grep "not found" | awk '{print $1}' | tr '\n' ' ')
    if [ -n "$missing" ]; then
        row "$name" "SKIPPED" "$bin needs ${missing}(not on this machine)"
        return
    fi
    RUST_TEST_NOCAPTURE=1 "$BIN/$bin" --test-threads=1 "$@" >"$log" 2>&1
    local rc=$?
    local summary
    summary=$(grep -E "^test result" "$log" | tail -1 | sed 's/test result: //')
    if grep -qE '(^|\.\.\. )SKIP ' "$log"; then
        row "$name" "SKIPPED" "$(grep -m1 -oE 'SKIP .*' "$log" | cut -c1-100)"
    elif [ $rc -eq 0 ]; then
        row "$name" "ok" "$summary"
    else
        row "$name" "FAILED" "$summary (see $log)"
    fi
    grep -E "^  K=|^GPU:" "$log" || true
}

echo "gpu-check: GPU tests"
run_tests cuda_tests "GEMM vs CPU reference" gpu::
run_tests cuda_tests "W4A8 GEMM (FP8 mma) vs CPU reference" w4a8::device_
run_tests cuda_tests "op kernels vs CPU reference" gpu_ops::
run_tests tune_tests "GPU tuner on the device (planted kernel)" gpu::device::

if command -v compute-sanitizer >/dev/null 2>&1; then
    for tool in memcheck racecheck; do
        log="$LOG/sanitizer-$tool.log"
        echo "gpu-check: compute-sanitizer --tool $tool"
        compute-sanitizer --tool "$tool" --error-exitcode 3 "$BIN/cuda_tests" --test-threads=1 gpu::undersized_operands_are_refused gpu::bf16_activations_match_the_reference >"$log" 2>&1
        rc=$?
        errs=$(grep -Eo "ERROR SUMMARY: [0-9]+ error" "$log" | tail -1)
        if [ $rc -eq 0 ]; then row "compute-sanitizer $tool (GEMM tests)" "ok" "${errs:-no summary}"; else row "compute-sanitizer $tool (GEMM tests)" "FAILED" "${errs:-rc $rc} (see $log)"; fi
    done
else
    row "compute-sanitizer" "SKIPPED" "compute-sanitizer not on PATH"
fi

row "MiniLM end to end on the GPU" "NOT BUILT" "whole-graph CUDA executor (fpx run --device cuda) does not exist yet"

bench_row() { # name exit-status log summary-line-pattern output-file
    if [ "$2" -eq 0 ]; then
        row "$1" "ok" "$(grep -E "$4" "$3") ($5)"
    elif grep -q "no CUDA driver found" "$3"; then
        row "$1" "SKIPPED" "no CUDA driver on this machine"
    else
        row "$1" "FAILED" "see $3"
    fi
}

echo "gpu-check: tuning benchmark (budget $TUNE_BUDGET s)"
"$BIN/gpu_tune_bench" $QUICK --budget "$TUNE_BUDGET" --db "$OUTDIR/tuning.json" 2>&1 | tee "$LOG/gpu_tune_bench.log"
bench_row "tuned vs untuned vs cuBLAS" "${PIPESTATUS[0]}" "$LOG/gpu_tune_bench.log" '^tuned table faster' "$OUTDIR/tuning.json"

echo "gpu-check: benchmark"
"$BIN/gpu_bench" $QUICK --json "$OUTDIR/gpu_bench.json" 2>&1 | tee "$LOG/gpu_bench.log"
bench_row "benchmark fpx vs cuBLAS" "${PIPESTATUS[0]}" "$LOG/gpu_bench.log" '^targets missed' "$OUTDIR/gpu_bench.json"
if command -v python3 >/dev/null 2>&1 && python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    python3 - "$QUICK" <<'EOF' | tee "$LOG/torch.log"
import sys, torch
shapes = [(4096, 4096), (4096, 11008)] if sys.argv[1] == "--quick" else \
    [(4096, 4096), (4096, 11008), (11008, 4096), (8192, 8192), (8192, 28672), (28672, 8192), (8192, 10240), (384, 1536), (1536, 384)]
print("torch.matmul FP16 (same shapes; median of 50 after warm-up)")
for k, n in shapes:
    w = torch.randn(k, n, device="cuda", dtype=torch.float16)
    for m in (1, 2, 4, 8, 16, 32, 128):
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        for _ in range(5):
            torch.matmul(x, w)
        times = []
        for _ in range(50):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record(); torch.matmul(x, w); e.record(); e.synchronize()
            times.append(s.elapsed_time(e) * 1e3)
        times.sort()
        print(f"{k:>6}x{n:<6} M={m:<4} {times[len(times)//2]:9.1f} us")
EOF
    row "torch.matmul FP16 reference timings" "ok" "$LOG/torch.log"
else
    row "torch.matmul FP16 reference timings" "SKIPPED" "python3 with CUDA torch not found"
fi

echo
echo "================ fpx gpu-check summary ================"
printf '%s\n' "${ROWS[@]}"
if printf '%s\n' "${ROWS[@]}" | grep -q " FAILED "; then exit 1; fi
