//! NVRTC compilation of the op families to PTX, one module per (family, arch), cached in
//! memory like [`compile_ptx`](crate::compile_ptx).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::{family_source, OpFamily};
use crate::compile::{nvrtc_ptx, Ptx};
use crate::{Arch, CudaError};

/// PTX of one op family for one arch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsPtx {
    /// The family.
    pub family: OpFamily,
    /// The architecture it was compiled for (its kernels are `family.kernels()`).
    pub arch: Arch,
    /// The PTX source.
    pub src: Arc<str>,
}

impl OpsPtx {
    /// The module name (`fpx_ops_elementwise`).
    pub fn module_name(&self) -> String {
        self.family.module_name()
    }

    /// As the crate's [`Ptx`] (for [`ptxas_check`](crate::ptxas_check)); its `kernel` is the
    /// module name.
    pub fn to_ptx(&self) -> Ptx {
        Ptx { arch: self.arch, kernel: self.module_name(), src: self.src.clone() }
    }
}

/// The family sources are fixed at build time, so a family and an arch identify a module.
type OpsCacheKey = (OpFamily, Arch);

fn ops_cache() -> &'static Mutex<HashMap<OpsCacheKey, OpsPtx>> {
    static CACHE: OnceLock<Mutex<HashMap<OpsCacheKey, OpsPtx>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

static OPS_COMPILATIONS: AtomicU64 = AtomicU64::new(0);

/// Number of NVRTC compilations of op families this process has run (cache misses).
pub fn ops_nvrtc_compilations() -> u64 {
    OPS_COMPILATIONS.load(Ordering::Relaxed)
}

/// Compiles one family with NVRTC for `arch` (C++17, `compute_XX`, as the GEMM), cached in
/// memory per (family, arch). Errors: [`CudaError::NoNvrtc`], or
/// [`CudaError::Compile`] with NVRTC's log.
pub fn compile_family_ptx(family: OpFamily, arch: Arch) -> Result<OpsPtx, CudaError> {
    let key = (family, arch);
    if let Some(p) = ops_cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(p.clone());
    }
    let src = nvrtc_ptx(&family_source(family), &family.module_name(), arch, &OPS_COMPILATIONS)?;
    let out = OpsPtx { family, arch, src };
    ops_cache().lock().unwrap_or_else(|e| e.into_inner()).insert(key, out.clone());
    Ok(out)
}

/// Compiles every op family for `arch` ([`OpFamily::ALL`] order): one PTX module each.
pub fn compile_ops_ptx(arch: Arch) -> Result<Vec<OpsPtx>, CudaError> {
    OpFamily::ALL.iter().map(|&f| compile_family_ptx(f, arch)).collect()
}
