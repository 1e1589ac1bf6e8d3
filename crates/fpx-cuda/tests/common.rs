//! What the fpx-cuda test modules share: finding NVRTC/ptxas, opening a GPU (or saying why a
//! test skips) and the linear-layer shapes. Every skip goes through
//! [`fpx_test_support::skip`] with [`Requirement::Gpu`], so `FPX_REQUIRE=gpu` turns it into a
//! failure (NVRTC and ptxas count as part of the GPU requirement).

use std::path::PathBuf;

use fpx_cuda::device::Gpu;
use fpx_cuda::{find_ptxas, load_nvrtc, set_cuda_home, Arch};
use fpx_test_support::{skip, Requirement};

/// (K, N) of the MiniLM and LLaMA-2 linear layers (the shapes).
pub const LINEAR_SHAPES: [(usize, usize); 10] = [
    (384, 384),
    (384, 1536),
    (1536, 384),
    (4096, 4096),
    (4096, 11008),
    (11008, 4096),
    (8192, 8192),
    (8192, 28672),
    (28672, 8192),
    (8192, 10240),
];

/// The CUDA home: FPX_CUDA_HOME, else the workspace's `.venv` (scripts/setup.sh installs the
/// NVRTC/ptxas 13.0 wheels there).
fn find_cuda_home() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("FPX_CUDA_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(h));
    }
    let venv_lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/lib");
    std::fs::read_dir(venv_lib)
        .ok()?
        .flatten()
        .map(|e| e.path().join("site-packages/nvidia/cu13"))
        .find(|p| p.join("lib/libnvrtc.so.13").is_file())
}

/// Loads NVRTC (from the CUDA home when one is found), or says why not.
pub fn nvrtc() -> Result<(), String> {
    if let Some(home) = find_cuda_home() {
        set_cuda_home(home);
    }
    load_nvrtc(None).map_err(|e| e.to_string())
}

/// NVRTC and ptxas, or why a compile-only test must skip.
pub fn toolchain() -> Result<(), String> {
    nvrtc()?;
    find_ptxas().ok_or("no ptxas on PATH, in FPX_CUDA_HOME/bin or the workspace .venv")?;
    Ok(())
}

/// Whether NVRTC and ptxas are ready; `false` after skipping `test` ([`Requirement::Gpu`]).
pub fn toolchain_or_skip(test: &str) -> bool {
    match toolchain() {
        Ok(()) => true,
        Err(why) => {
            skip(Requirement::Gpu, test, &why);
            false
        }
    }
}

/// GPU 0 (sm_80 or newer) with NVRTC loaded, or `None` after skipping `test`
/// ([`Requirement::Gpu`]).
pub fn open_gpu(test: &str) -> Option<(Gpu, Arch)> {
    let skipped = |why: String| {
        skip(Requirement::Gpu, test, &why);
        None
    };
    let gpu = match Gpu::open(0) {
        Ok(g) => g,
        Err(e) => return skipped(e.to_string()),
    };
    let Some(arch) = gpu.arch() else {
        return skipped(format!("{} has compute capability {}.{}, older than sm_80", gpu.name, gpu.capability.0, gpu.capability.1));
    };
    if let Err(e) = nvrtc() {
        return skipped(e);
    }
    Some((gpu, arch))
}
