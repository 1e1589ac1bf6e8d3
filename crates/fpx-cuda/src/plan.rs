//! The GPU half of an artifact (`fpx compile --target cuda|all`): for each architecture (sm_80
//! and sm_90), every quantized product gets a kernel table — a tile config per range of M, from
//! the auto-tuner's database where it has the product ([`TunedTables`]) and from
//! [`configs_by_m`] (the heuristic) elsewhere — and each distinct config is compiled once with
//! NVRTC into its own PTX module.

use crate::config::{configs_by_m, Act, Fp6Format};
use crate::{Arch, CudaError, GemmConfig};
use fpx_artifact::{GpuKernel, GpuTiles, NodeKernels, PtxCode, PtxModule};
use fpx_quant::{KernelTable, QuantGemm};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// The SM count fpx plans tiles for on each architecture (A100: 108, L40S: 142, H100 SXM: 132).
pub fn planned_sm_count(arch: Arch) -> usize {
    match arch {
        Arch::Sm80 => 108,
        Arch::Sm89 => 142,
        Arch::Sm90 => 132,
    }
}

/// Checks that the GPU GEMM can run `gemm` (FP6, one scale per output channel, f32
/// activations in the graph, which the GPU multiplies in FP16); the error names `node`.
pub fn gpu_format(node: &str, gemm: &QuantGemm) -> Result<Fp6Format, CudaError> {
    let format = Fp6Format::from_quant(gemm.format).ok_or_else(|| {
        CudaError::Config(format!(
            "node '{node}' has {} weights; the GPU GEMM takes fp6-e3m2 or fp6-e2m3 (compile with --weights fp6-e3m2|fp6-e2m3|fp6-auto, or --target cpu)",
            gemm.format.name()
        ))
    })?;
    if !gemm.per_channel() {
        return Err(CudaError::Config(format!(
            "node '{node}' is quantized with groups of {} along K; the GPU GEMM takes one scale per output channel (drop --group-size, or --target cpu)",
            gemm.group_size
        )));
    }
    if gemm.activations != fpx_quant::act8::Activations::F32 {
        return Err(CudaError::Config(format!(
            "node '{node}' takes {} activations; the GPU GEMM multiplies FP16 activations (use --target cpu for int8 activations)",
            gemm.activations
        )));
    }
    Ok(format)
}

/// A product's kernel table from tuning: per range of M the config and whether the tuner chose
/// it (rows it has no result for carry the heuristic's config, marked `false`).
pub type TunedTable = KernelTable<(GemmConfig, bool)>;

/// Where tuned kernel tables come from: for an architecture and a product, the table the tuning
/// database holds, or `None` to use the heuristic's ([`configs_by_m`]).
pub type TunedTables<'a> = &'a (dyn Fn(Arch, &QuantGemm) -> Option<TunedTable> + Sync);

/// No tuned tables: every product gets the heuristic's.
pub fn untuned(_: Arch, _: &QuantGemm) -> Option<TunedTable> {
    None
}

/// The GPU code of every architecture for the quantized products `gemms` (node name, product):
/// per architecture the PTX modules and, per node, its kernel table (`tuned`'s where it gives
/// one; each of its configs must be valid for the product).
pub fn ptx_code(gemms: &[(String, QuantGemm)], tuned: TunedTables<'_>) -> Result<Vec<PtxCode>, CudaError> {
    let mut out = Vec::new();
    for arch in Arch::ALL {
        let sm_count = planned_sm_count(arch);
        let mut kernels = Vec::with_capacity(gemms.len());
        let mut configs: BTreeMap<String, GemmConfig> = BTreeMap::new();
        for (node, gemm) in gemms {
            let format = gpu_format(node, gemm)?;
            let table = match tuned(arch, gemm) {
                Some(t) => t,
                None => configs_by_m(format, Act::F16, gemm.n, gemm.k, sm_count).map(|c| (c.clone(), false)),
            };
            let table = table.try_map(|(cfg, was_tuned)| {
                if (cfg.format, cfg.act, cfg.n, cfg.k) != (format, Act::F16, gemm.n, gemm.k) {
                    return Err(CudaError::Config(format!("node '{node}': a tuned GPU config ({cfg}) is for another product")));
                }
                cfg.validate()?;
                let kernel = cfg.kernel_name();
                configs.insert(kernel.clone(), cfg.clone());
                Ok::<_, CudaError>(GpuKernel {
                    module: kernel.clone(),
                    kernel,
                    // Split-K sums in the GEMM kernel itself (its last split block per output
                    // block); the artifact's reduce entry is from the two-launch design.
                    reduce: None,
                    tiles: GpuTiles::from(cfg),
                    tuned: *was_tuned,
                })
            })?;
            kernels.push(NodeKernels { node: node.clone(), table });
        }
        // NVRTC compiles independent programs in parallel; the result order is the map's.
        let modules = configs
            .par_iter()
            .map(|(name, cfg)| {
                let ptx = crate::compile_ptx(cfg, arch)?;
                let entries = vec![ptx.kernel.clone()];
                Ok(PtxModule { name: name.clone(), ptx: ptx.src.to_string(), entries })
            })
            .collect::<Result<Vec<_>, CudaError>>()?;
        out.push(PtxCode { arch: arch.sm().to_string(), sm_count: sm_count as u32, modules, kernels });
    }
    Ok(out)
}
