//! CPU targets: the LLVM target machine for each [`CpuTarget`], the features its code needs,
//! and the host checks a loader runs before it maps a library.

use std::sync::Once;

use inkwell::targets::{CodeModel, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple};
use inkwell::OptimizationLevel;

use crate::LlvmError;

/// The CPU a library is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpuTarget {
    /// The machine doing the compiling (`TargetMachine::get_host_cpu_name/features`): fastest
    /// here, not portable. AVX-512 code if the host has AVX-512 F/BW/DQ/VL (and 512-bit int8
    /// kernels with VBMI and VNNI where it has those too), else AVX2 code.
    Native,
    /// x86-64-v3: AVX2, FMA, F16C, BMI1/2 (Haswell, Zen 1 and later).
    X86_64V3,
    /// x86-64-v4: v3 plus AVX-512 F, BW, CD, DQ, VL (Skylake-X, Zen 4 and later).
    X86_64V4,
    /// x86-64-v4 plus AVX-512 VBMI and VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later): the
    /// portable way to the 512-bit int8-activation kernels.
    X86_64V4Vnni,
}

impl CpuTarget {
    /// Every target, in the order `--cpu` lists them.
    pub const ALL: [CpuTarget; 4] = [CpuTarget::X86_64V3, CpuTarget::X86_64V4, CpuTarget::X86_64V4Vnni, CpuTarget::Native];

    /// The name `--cpu` takes: `x86-64-v3`, `x86-64-v4`, `x86-64-v4-vnni` or `native`.
    pub fn name(self) -> &'static str {
        match self {
            CpuTarget::Native => "native",
            CpuTarget::X86_64V3 => "x86-64-v3",
            CpuTarget::X86_64V4 => "x86-64-v4",
            CpuTarget::X86_64V4Vnni => "x86-64-v4-vnni",
        }
    }
}

impl std::fmt::Display for CpuTarget {
    /// Writes [`CpuTarget::name`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for CpuTarget {
    type Err = String;

    /// Parses [`CpuTarget::name`].
    fn from_str(s: &str) -> Result<CpuTarget, String> {
        CpuTarget::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| {
            let names: Vec<&str> = CpuTarget::ALL.iter().map(|t| t.name()).collect();
            format!("unknown CPU target '{s}'; choose one of: {}", names.join(", "))
        })
    }
}

/// Instruction-set parameters the code generator specializes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Isa {
    /// `f32` lanes per vector register: 8 (AVX2) or 16 (AVX-512).
    pub w: u32,
    /// Rows of X per register block in the Gemv loop.
    pub gemv_rows: u32,
    /// Rows of X per register block in the panel (Gemm) loop.
    pub gemm_rows: u32,
    /// Tiles (of 32 K) per dequantized panel (2 KiB of `f32` each).
    pub panel_tiles: u32,
    /// Int8-activation kernels use 512-bit AVX-512 VBMI (`vpermb`, `vpmultishiftqb`) and
    /// VNNI (`vpdpbusd`) code; else 256-bit AVX2 code.
    pub vnni8: bool,
}

impl Isa {
    /// The blocking these parameters give.
    pub fn tiling(&self) -> crate::CpuTiling {
        crate::CpuTiling { gemv_rows: self.gemv_rows, gemm_rows: self.gemm_rows, panel_tiles: self.panel_tiles }
    }

    /// These parameters with `tiling`'s blocking.
    pub fn with_tiling(self, tiling: crate::CpuTiling) -> Isa {
        Isa { gemv_rows: tiling.gemv_rows, gemm_rows: tiling.gemm_rows, panel_tiles: tiling.panel_tiles, ..self }
    }

    fn avx2() -> Isa {
        Isa { w: 8, gemv_rows: 2, gemm_rows: 3, panel_tiles: 8, vnni8: false }
    }

    fn avx512() -> Isa {
        Isa { w: 16, gemv_rows: 4, gemm_rows: 6, panel_tiles: 8, vnni8: false }
    }
}

/// A configured LLVM target machine plus what fpx records about it.
pub(crate) struct Machine {
    /// The LLVM target machine (PIC, O3).
    pub tm: TargetMachine,
    /// The name the library records: the LLVM CPU name, or the named target's (`x86-64-v4-vnni`).
    pub cpu: String,
    /// Features the emitted code may use, as `is_x86_feature_detected!` names.
    pub required_features: Vec<String>,
    /// The code generator's parameters.
    pub isa: Isa,
}

const V3_FEATURES: [&str; 13] =
    ["sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "lzcnt", "movbe"];
const V4_EXTRA: [&str; 5] = ["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"];
/// What the 512-bit int8 kernels need beyond x86-64-v4.
const VNNI_EXTRA: [&str; 2] = ["avx512vbmi", "avx512vnni"];

/// LLVM feature names and the names an artifact records them under (the one table,
/// `fpx_artifact::cpu_features!`); host features not in it do not affect the code fpx generates
/// and are not recorded.
const FEATURE_NAMES: &[(&str, &str)] = {
    macro_rules! pairs {
        ($($llvm:literal => $name:literal),* $(,)?) => {
            &[$(($llvm, $name)),*]
        };
    }
    fpx_artifact::cpu_features!(pairs)
};

/// The host CPU as LLVM names it, and the features [`CpuTarget::Native`] code would require.
pub fn host_cpu() -> (String, Vec<String>) {
    init();
    let name = TargetMachine::get_host_cpu_name().to_string();
    let features = host_features(&TargetMachine::get_host_cpu_features().to_string());
    (name, features)
}

/// The recorded (`is_x86_feature_detected!`) names of the `+` features in an LLVM feature string.
fn host_features(llvm_features: &str) -> Vec<String> {
    let enabled: Vec<&str> = llvm_features.split(',').filter_map(|f| f.strip_prefix('+')).collect();
    FEATURE_NAMES.iter().filter(|(llvm, _)| enabled.contains(llvm)).map(|(_, rust)| rust.to_string()).collect()
}

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| Target::initialize_x86(&InitializationConfig::default()));
}

/// The target machine, required features and code-generation parameters for `target`.
pub(crate) fn machine(target: CpuTarget) -> Result<Machine, LlvmError> {
    init();
    let (cpu, llvm_features, required, isa) = match target {
        CpuTarget::X86_64V3 => ("x86-64-v3".to_string(), String::new(), V3_FEATURES.to_vec(), Isa::avx2()),
        CpuTarget::X86_64V4 => {
            let required = V3_FEATURES.iter().chain(V4_EXTRA.iter()).copied().collect();
            ("x86-64-v4".to_string(), String::new(), required, Isa::avx512())
        }
        CpuTarget::X86_64V4Vnni => {
            let required = V3_FEATURES.iter().chain(V4_EXTRA.iter()).chain(VNNI_EXTRA.iter()).copied().collect();
            ("x86-64-v4".to_string(), "+avx512vbmi,+avx512vnni".to_string(), required, Isa { vnni8: true, ..Isa::avx512() })
        }
        CpuTarget::Native => {
            let cpu = TargetMachine::get_host_cpu_name().to_string();
            let features = TargetMachine::get_host_cpu_features().to_string();
            let names = host_features(&features);
            let has = |f: &str| names.iter().any(|n| n == f);
            if !(has("avx2") && has("fma") && has("f16c")) {
                return Err(LlvmError::Llvm(format!("the host CPU ({cpu}) lacks AVX2, FMA or F16C, which fpx's CPU kernels need")));
            }
            let isa = if V4_EXTRA.iter().all(|f| has(f)) {
                Isa { vnni8: VNNI_EXTRA.iter().all(|f| has(f)), ..Isa::avx512() }
            } else {
                Isa::avx2()
            };
            let required = names.iter().map(String::as_str).collect::<Vec<_>>();
            let tm = create(&cpu, &features)?;
            return Ok(Machine { tm, required_features: required.iter().map(|s| s.to_string()).collect(), cpu, isa });
        }
    };
    let tm = create(&cpu, &llvm_features)?;
    let cpu = if target == CpuTarget::X86_64V4Vnni { "x86-64-v4-vnni".to_string() } else { cpu };
    Ok(Machine { tm, cpu, required_features: required.iter().map(|s| s.to_string()).collect(), isa })
}

fn create(cpu: &str, features: &str) -> Result<TargetMachine, LlvmError> {
    let triple = TargetTriple::create("x86_64-unknown-linux-gnu");
    let target = Target::from_triple(&triple).map_err(|e| LlvmError::Llvm(format!("x86-64 target: {e}")))?;
    target
        .create_target_machine(&triple, cpu, features, OptimizationLevel::Aggressive, RelocMode::PIC, CodeModel::Default)
        .ok_or_else(|| LlvmError::Llvm(format!("cannot create a target machine for CPU {cpu}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_strings_map_to_detect_names() {
        let f = host_features("+avx2,-avx512f,+bmi,+fma,+f16c,+cx16,+pclmul");
        assert_eq!(f, ["avx2", "fma", "f16c", "bmi1", "pclmulqdq"]);
    }
}
