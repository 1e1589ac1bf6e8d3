//! `fpx compile --target cuda|all`: the GPU half of the artifact. Every quantized product gets,
//! per architecture (sm_80 and sm_90), a tile config per range of M from fpx-cuda's heuristic,
//! each config compiled once with NVRTC into its own PTX module.

use crate::Error;
use fpx_artifact::{GpuGemmEntry, PtxCode, PtxModule};
use fpx_cuda::config::{configs_by_m, Act, Fp6Format};
use fpx_cuda::{Arch, CudaError, GemmConfig};
use fpx_llvm::KernelSpec;
use rayon::prelude::*;
use std::collections::BTreeMap;

/// The SM count fpx plans tiles for on each architecture (A100: 108, H100 SXM: 132).
pub(crate) fn planned_sm_count(arch: Arch) -> usize {
    match arch {
        Arch::Sm80 => 108,
        Arch::Sm90 => 132,
    }
}

/// Checks that the GPU GEMM supports `spec` (FP6, one scale per output channel).
fn gpu_format(node: &str, spec: &KernelSpec) -> Result<Fp6Format, Error> {
    let format = Fp6Format::from_quant(spec.format).ok_or_else(|| {
        CudaError::Config(format!(
            "node '{node}' has {} weights; the GPU GEMM takes fp6-e3m2 or fp6-e2m3 (compile with --weights fp6-e3m2|fp6-e2m3|fp6-auto, or --target cpu)",
            spec.format.name()
        ))
    })?;
    if spec.group_size != 0 && spec.group_size < spec.k {
        return Err(CudaError::Config(format!(
            "node '{node}' is quantized with groups of {} along K; the GPU GEMM takes one scale per output channel (drop --group-size, or --target cpu)",
            spec.group_size
        ))
        .into());
    }
    Ok(format)
}

/// The PTX code of every architecture for the quantized products `nodes` (name, spec).
pub(crate) fn ptx_code(nodes: &[(String, KernelSpec)]) -> Result<Vec<PtxCode>, Error> {
    let mut out = Vec::new();
    for arch in Arch::ALL {
        let sm_count = planned_sm_count(arch);
        let mut gemms = Vec::new();
        let mut configs: BTreeMap<String, GemmConfig> = BTreeMap::new();
        for (node, spec) in nodes {
            let format = gpu_format(node, spec)?;
            for (max_m, cfg) in configs_by_m(format, Act::F16, spec.n, spec.k, sm_count) {
                let kernel = cfg.kernel_name();
                gemms.push(GpuGemmEntry {
                    node: node.clone(),
                    max_m: max_m as u64,
                    module: kernel.clone(),
                    kernel: kernel.clone(),
                    reduce: cfg.reduce_kernel_name().unwrap_or_default(),
                    config: cfg.to_string(),
                });
                configs.insert(kernel, cfg);
            }
        }
        // NVRTC compiles independent programs in parallel; the result order is the map's.
        let modules = configs
            .par_iter()
            .map(|(name, cfg)| {
                let ptx = fpx_cuda::compile_ptx(cfg, arch)?;
                let entries = std::iter::once(ptx.kernel.clone()).chain(ptx.reduce_kernel.clone()).collect();
                Ok(PtxModule { name: name.clone(), ptx: ptx.src.to_string(), entries })
            })
            .collect::<Result<Vec<_>, CudaError>>()?;
        out.push(PtxCode { arch: arch.sm().to_string(), sm_count: sm_count as u32, modules, gemms });
    }
    Ok(out)
}
