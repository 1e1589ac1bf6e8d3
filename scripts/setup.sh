#!/usr/bin/env bash
# Installs what fpx needs to build and test, if it is missing, and writes `.fpx-env`.
#
#   ./scripts/setup.sh            # then: source .fpx-env
#
# Idempotent: a second run only checks (about a second) and rewrites `.fpx-env`.
#   - LLVM 19 (Debian packages; inkwell / llvm-sys 191 builds against it)
#   - the project venv `.venv`: numpy, onnx 1.22.0 (ships the ONNX backend node tests),
#     onnxruntime 1.31.1 (the reference executor), CUDA 13.0 NVRTC / ptxas / runtime wheels,
#     maturin 1.16.0 (builds the Python package's wheel), pytest 9.2.0 (its tests) and mypy 2.4.1
#     (stubtest: its type stubs match the module)
#   - rustfmt (for `cargo fmt --check`), when rustup is there and the component is missing
# Environment knobs: PYTHON (interpreter used to create the venv, default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' (not root, and no sudo); install it by hand and re-run"
    fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* by hand (Debian 12 package names)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# ---------------------------------------------------------------------------------------------
# (a) LLVM 19
LLVM_PKGS=(llvm-19-dev libpolly-19-dev libzstd-dev zlib1g-dev libz3-dev libxml2-dev libffi-dev)
if command -v llvm-config-19 >/dev/null 2>&1; then
    say "LLVM 19 present ($(llvm-config-19 --version))"
else
    say "installing LLVM 19 (${LLVM_PKGS[*]})"
    apt_install "${LLVM_PKGS[@]}"
    command -v llvm-config-19 >/dev/null 2>&1 || die "llvm-config-19 still missing after apt-get install"
    say "LLVM 19 installed ($(llvm-config-19 --version))"
fi
LLVM_PREFIX="$(llvm-config-19 --prefix)"

# ---------------------------------------------------------------------------------------------
# (b) Python venv with the pinned test oracles and the CUDA 13.0 wheels
VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
PIP_PKGS=(numpy onnx==1.22.0 onnxruntime==1.31.1 onnxconverter-common==1.16.0 maturin==1.16.0 pytest==9.2.0 mypy==2.4.1)
# nvdisasm: PyPI has no 13.0 wheel; 13.2.51 (the oldest) disassembles ptxas 13.0's sm_80/sm_90
# cubins for the GEMM's static SASS budgets (fpx_cuda::sass).
PIP_NODEPS_PKGS=(nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvdisasm==13.2.51)

if [ -x "$VPY" ] && ! "$VPY" -c 'pass' >/dev/null 2>&1; then
    say "existing .venv is broken (its interpreter does not run); recreating it"
    rm -rf "$VENV"
fi
if [ ! -x "$VPY" ]; then
    BASE_PY="${PYTHON:-python3}"
    command -v "$BASE_PY" >/dev/null 2>&1 || die "$BASE_PY not found: install Python 3 (with the venv module)"
    say "creating .venv with $("$BASE_PY" --version 2>&1)"
    if ! "$BASE_PY" -m venv "$VENV" 2>/dev/null; then
        # Debian ships ensurepip separately.
        rm -rf "$VENV"
        pyver="$("$BASE_PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        say "python venv module unusable; installing python${pyver}-venv"
        apt_install "python${pyver}-venv"
        "$BASE_PY" -m venv "$VENV" || die "could not create $VENV"
    fi
fi

# Prints the pinned requirements that are not installed (empty output = all present).
# Reads package metadata only (no imports of the packages), so it takes well under a second.
missing_pkgs() {
    "$VPY" - "${PIP_PKGS[@]}" "${PIP_NODEPS_PKGS[@]}" <<'EOF'
import sys
from importlib import metadata
for req in sys.argv[1:]:
    name, _, want = req.partition("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        print(req)
        continue
    if want and have != want:
        print(req)
EOF
}

missing="$(missing_pkgs)"
if [ -z "$missing" ]; then
    say "python packages present (numpy, onnx 1.22.0, onnxruntime 1.31.1, onnxconverter-common 1.16.0, maturin, pytest, mypy, CUDA 13.0 NVRTC/nvcc/runtime wheels, nvdisasm 13.2)"
else
    say "installing python packages into .venv: $(echo $missing)"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
    "$VPY" -m pip install -q "${PIP_PKGS[@]}"
    # --no-deps: the nvcc wheel otherwise pulls CUDA 13.5 packages, whose PTX ISA ptxas 13.0 rejects.
    "$VPY" -m pip install -q --no-deps "${PIP_NODEPS_PKGS[@]}"
    missing="$(missing_pkgs)"
    [ -z "$missing" ] || die "still missing after pip install: $missing"
    say "python packages installed"
fi

SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
NODE_TESTS="$SITE/onnx/backend/test/data/node"
CUDA_HOME="$SITE/nvidia/cu13"
[ -d "$NODE_TESTS" ] || die "ONNX backend node tests not found at $NODE_TESTS"
[ -e "$CUDA_HOME/lib/libnvrtc.so.13" ] || die "libnvrtc.so.13 not found under $CUDA_HOME/lib"
[ -x "$CUDA_HOME/bin/ptxas" ] || die "ptxas not found under $CUDA_HOME/bin"
[ -x "$CUDA_HOME/bin/nvdisasm" ] || die "nvdisasm not found under $CUDA_HOME/bin"

# ---------------------------------------------------------------------------------------------
# rustfmt (scripts/test.sh runs `cargo fmt --check`); rustup's minimal profile lacks it.
if command -v rustc >/dev/null 2>&1; then
    if rustfmt --version >/dev/null 2>&1; then
        say "Rust present ($(rustc --version | cut -d' ' -f1-2), rustfmt)"
    elif command -v rustup >/dev/null 2>&1; then
        say "adding the rustfmt component"
        rustup component add rustfmt >/dev/null
    else
        say "warning: rustfmt missing and no rustup to add it"
    fi
else
    say "warning: no Rust toolchain on PATH (install rustup); the build and tests need it"
fi

# ---------------------------------------------------------------------------------------------
# (c) .fpx-env
tmp="$(mktemp "$ROOT/.fpx-env.XXXXXX")"
cat >"$tmp" <<EOF
# Written by scripts/setup.sh; source it: \`source .fpx-env\`. Do not edit (re-run setup instead).
export LLVM_SYS_191_PREFIX="$LLVM_PREFIX"
export FPX_PYTHON="$VPY"
export FPX_ONNX_NODE_TESTS="$NODE_TESTS"
export FPX_CUDA_HOME="$CUDA_HOME"
# The Python package (crates/fpx-python, PyO3): built for the venv's interpreter as an extension
# module that leaves Python's symbols to the interpreter. maturin sets the same two, so its build
# and cargo's share every compiled crate.
export PYO3_PYTHON="$VPY"
export PYO3_BUILD_EXTENSION_MODULE=1
# libnvrtc.so.13 has no RUNPATH: it finds libnvrtc-builtins through LD_LIBRARY_PATH. ptxas is in bin/.
case ":\${LD_LIBRARY_PATH:-}:" in
    *":\$FPX_CUDA_HOME/lib:"*) ;;
    *) export LD_LIBRARY_PATH="\$FPX_CUDA_HOME/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" ;;
esac
case ":\$PATH:" in
    *":\$FPX_CUDA_HOME/bin:"*) ;;
    *) export PATH="\$FPX_CUDA_HOME/bin:\$PATH" ;;
esac
EOF
mv -f "$tmp" "$ROOT/.fpx-env"
say "wrote .fpx-env (source it: source .fpx-env)"
