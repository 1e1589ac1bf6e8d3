//! What identifies a machine in the tuning database: results measured on one CPU hold for the
//! same CPU model, features and thread count.

/// The CPU a result was measured on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct CpuMachine {
    /// The CPU's model name (`/proc/cpuinfo`), e.g. `AMD EPYC 7551 32-Core Processor`.
    pub model: String,
    /// The CPU as LLVM names it, e.g. `znver1`.
    pub llvm_cpu: String,
    /// The features fpx's code may use that the CPU has (`is_x86_feature_detected!` names).
    pub features: Vec<String>,
    /// Threads the runtime's pool runs kernels on.
    pub threads: usize,
}

impl CpuMachine {
    /// This machine, with the current rayon pool's thread count.
    pub fn host() -> CpuMachine {
        let (llvm_cpu, features) = fpx_llvm::host_cpu();
        CpuMachine { model: cpu_model(), llvm_cpu, features, threads: rayon::current_num_threads() }
    }
}

impl std::fmt::Display for CpuMachine {
    /// `model (llvm cpu, N threads)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {} threads)", self.model, self.llvm_cpu, self.threads)
    }
}

/// The first `model name` of `/proc/cpuinfo`, or `unknown CPU`.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown CPU".to_string())
}

/// Bytes of the last-level cache (`/sys/devices/system/cpu/cpu0/cache`), or 32 MiB when the
/// system does not say: timing rotates its inputs through a set larger than this.
pub fn last_level_cache_bytes() -> usize {
    let mut best = 0usize;
    for i in 0..8 {
        let Ok(s) = std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cache/index{i}/size")) else { continue };
        let s = s.trim();
        let (num, mult) = match s.as_bytes().last() {
            Some(b'K') => (&s[..s.len() - 1], 1024),
            Some(b'M') => (&s[..s.len() - 1], 1 << 20),
            _ => (s, 1),
        };
        if let Ok(v) = num.parse::<usize>() {
            best = best.max(v * mult);
        }
    }
    if best == 0 {
        32 << 20
    } else {
        best
    }
}

/// The GPU a result was measured on: results hold for the same GPU model, SM count and driver.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuMachine {
    /// The device's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Compute capability, e.g. `9.0`.
    pub capability: String,
    /// Streaming multiprocessors.
    pub sm_count: usize,
    /// The CUDA version the driver supports, e.g. `13.0`.
    pub driver: String,
}

impl GpuMachine {
    /// The GPU `gpu` is.
    pub fn of(gpu: &fpx_cuda::device::Gpu) -> GpuMachine {
        GpuMachine {
            name: gpu.name.clone(),
            capability: format!("{}.{}", gpu.capability.0, gpu.capability.1),
            sm_count: gpu.sm_count,
            driver: gpu.driver.clone(),
        }
    }
}

impl std::fmt::Display for GpuMachine {
    /// `name (compute 9.0, 132 SMs, CUDA 13.0 driver)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (compute {}, {} SMs, CUDA {} driver)", self.name, self.capability, self.sm_count, self.driver)
    }
}
