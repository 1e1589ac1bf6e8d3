//! The GPU search on a GPU: candidates compiled with NVRTC (in parallel, cached) and loaded,
//! run on the problem's weights and activations in device memory, and timed from DRAM with
//! CUDA events ([`Gpu::time_cold_us`]: L2 flushed before every timed launch).

use std::collections::HashMap;

use cudarc::driver::CudaSlice;
use fpx_cuda::device::{GemmOperands, Gpu, GpuGemm, SplitKWorkspace};
use fpx_cuda::{compile_ptx, Arch, Fp6Format, GemmConfig};
use half::f16;
use rayon::prelude::*;

use super::{GemmRunner, GpuProblem};
use crate::GpuMachine;

/// Launches per timed sample (their median): each follows an L2 flush.
const LAUNCHES_PER_SAMPLE: usize = 5;

/// The problem's operands on the device.
struct Operands {
    w: CudaSlice<u8>,
    scales: CudaSlice<f32>,
    x: HashMap<usize, CudaSlice<u16>>,
    y: CudaSlice<u16>,
    max_m: usize,
    n: usize,
}

/// A loaded candidate and its split-K workspace (for the problem's largest M).
struct Loaded {
    gemm: GpuGemm,
    ws: Option<SplitKWorkspace>,
}

/// Runs the GPU search's candidates on a GPU.
pub struct DeviceRunner {
    gpu: Gpu,
    arch: Arch,
    flush: CudaSlice<u8>,
    operands: Option<Operands>,
    loaded: HashMap<GemmConfig, Loaded>,
    planted: HashMap<GemmConfig, Fp6Format>,
}

impl DeviceRunner {
    /// A runner on `gpu` (compute capability 8.0 or newer).
    pub fn new(gpu: Gpu) -> Result<DeviceRunner, String> {
        let arch = gpu.arch().ok_or_else(|| {
            format!("{} has compute capability {}.{}; fpx's GPU GEMM needs 8.0 or newer", gpu.name, gpu.capability.0, gpu.capability.1)
        })?;
        let flush = gpu.l2_flush_buffer().map_err(|e| e.to_string())?;
        Ok(DeviceRunner { gpu, arch, flush, operands: None, loaded: HashMap::new(), planted: HashMap::new() })
    }

    /// The GPU.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// For checking the checker: `cfg` will run the kernel compiled for `format` instead of its
    /// own (the same layout read as the other FP6 format: memory-safe, and wrong).
    pub fn plant(&mut self, cfg: &GemmConfig, format: Fp6Format) {
        self.planted.insert(cfg.clone(), format);
        self.loaded.remove(cfg);
    }

    /// Undoes [`DeviceRunner::plant`]: `cfg` runs its own kernel again.
    pub fn unplant(&mut self, cfg: &GemmConfig) {
        self.planted.remove(cfg);
        self.loaded.remove(cfg);
    }

    fn operands(&mut self) -> Result<&mut Operands, String> {
        self.operands.as_mut().ok_or_else(|| "no problem set".to_string())
    }
}

impl GemmRunner for DeviceRunner {
    fn machine(&self) -> GpuMachine {
        GpuMachine::of(&self.gpu)
    }

    fn arch(&self) -> Arch {
        self.arch
    }

    fn set_problem(&mut self, problem: &mut GpuProblem, ms: &[usize]) -> Result<(), String> {
        let err = |e: fpx_cuda::CudaError| e.to_string();
        self.loaded.clear();
        self.operands = None;
        let max_m = ms.iter().copied().max().unwrap_or(1);
        let w = self.gpu.upload(&problem.packed).map_err(err)?;
        let scales = self.gpu.upload(&problem.folded_scales).map_err(err)?;
        let mut x = HashMap::new();
        for &m in ms {
            x.insert(m, self.gpu.upload(problem.activations(m)).map_err(err)?);
        }
        let y = self.gpu.zeros::<u16>(max_m * problem.gemm.n).map_err(err)?;
        self.operands = Some(Operands { w, scales, x, y, max_m, n: problem.gemm.n });
        Ok(())
    }

    fn prepare(&mut self, cfgs: &[GemmConfig]) -> Vec<Result<(), String>> {
        let arch = self.arch;
        let planted = &self.planted;
        // NVRTC compiles independent programs in parallel (and caches them).
        let ptx: Vec<_> = cfgs
            .par_iter()
            .map(|cfg| {
                let build = GemmConfig { format: planted.get(cfg).copied().unwrap_or(cfg.format), ..cfg.clone() };
                compile_ptx(&build, arch).map(|p| (build, p))
            })
            .collect();
        let max_m = self.operands.as_ref().map_or(1, |o| o.max_m);
        cfgs.iter()
            .zip(ptx)
            .map(|(cfg, compiled)| {
                if self.loaded.contains_key(cfg) {
                    return Ok(());
                }
                let (build, ptx) = compiled.map_err(|e| e.to_string())?;
                // The kernel is loaded under the candidate's config (its tiling is the same).
                let gemm = GpuGemm::from_ptx(&self.gpu, cfg, &ptx.src, &ptx.kernel, None).map_err(|e| e.to_string())?;
                debug_assert_eq!(GemmConfig { format: cfg.format, ..build }, *cfg);
                let ws = if cfg.split_k > 1 { Some(gemm.workspace(&self.gpu, max_m).map_err(|e| e.to_string())?) } else { None };
                self.loaded.insert(cfg.clone(), Loaded { gemm, ws });
                Ok(())
            })
            .collect()
    }

    fn run(&mut self, cfg: &GemmConfig, m: usize) -> Result<Vec<f32>, String> {
        let n = self.operands()?.n;
        // Poisoned first: an output the kernel does not write reads as NaN.
        let poison = vec![0xffffu16; m * n];
        let gpu = &self.gpu;
        let ops = self.operands.as_mut().ok_or("no problem set")?;
        gpu.stream().memcpy_htod(&poison, &mut ops.y).map_err(|e| format!("cannot copy to the GPU: {e:?}"))?;
        let loaded = self.loaded.get_mut(cfg).ok_or("the candidate was not prepared")?;
        let x = ops.x.get(&m).ok_or_else(|| format!("no activations for M = {m}"))?;
        loaded
            .gemm
            .launch(gpu, m, GemmOperands { x, w: &ops.w, scales: &ops.scales, bias: None, y: &mut ops.y, ws: loaded.ws.as_mut() })
            .map_err(|e| e.to_string())?;
        let y = gpu.download(&ops.y).map_err(|e| e.to_string())?;
        Ok(y[..m * n].iter().map(|&b| f16::from_bits(b).to_f32()).collect())
    }

    fn time_us(&mut self, cfg: &GemmConfig, m: usize) -> Result<f64, String> {
        let gpu = &self.gpu;
        let ops = self.operands.as_mut().ok_or("no problem set")?;
        let loaded = self.loaded.get_mut(cfg).ok_or("the candidate was not prepared")?;
        let x = ops.x.get(&m).ok_or_else(|| format!("no activations for M = {m}"))?;
        let (w, scales, y) = (&ops.w, &ops.scales, &mut ops.y);
        gpu.time_cold_us(LAUNCHES_PER_SAMPLE, &mut self.flush, || {
            loaded.gemm.launch(gpu, m, GemmOperands { x, w, scales, bias: None, y: &mut *y, ws: loaded.ws.as_mut() })
        })
        .map_err(|e| e.to_string())
    }
}
