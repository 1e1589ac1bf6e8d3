//! The W4A8 GEMM of ZeroQuant-FP on FP8 tensor cores: FP4 (e2m1) weights times activations
//! quantized to FP8 (e4m3 or e5m2) per token with power-of-two scales
//! (`kernels-templates/w4a8_gemm.cu`, appended to the FP6 template whose copy pipeline it
//! shares).
//!
//! Two kernels per config: the row quantizer (FP16 `X` → FP8 codes, K-permuted so the GEMM's B
//! fragments are plain words, and one scale per row, `fpx_quant::act_fp8`'s definition) and
//! the GEMM (`mma.m16n8k32` with e4m3 weights made from the FP4 nibbles by bit placement, the
//! 2^6 it costs folded into the epilogue). FP8 `mma` needs sm_89 or newer: configs compile for
//! [`Arch::Sm89`] (native FP8 MMAs) and [`Arch::Sm90`] (where ptxas lowers them to FP16 MMAs on
//! unpacked bytes, see [`compile_ptx`]). Checked without a GPU (tests): NVRTC + ptxas for both with no spills,
//! the SASS main loop, and a CPU emulation of both kernels (fragment bytes bit-exact against
//! `fpx_quant`'s decoders). On a GPU, `device::GpuW4a8` runs the pair and the
//! `w4a8::device_` test (in `scripts/gpu-check.sh`) checks it against the CPU reference; not run
//! on a device yet, and its speed is unmeasured.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;

use crate::compile::nvrtc_ptx;
use crate::config::{
    heuristic_config, launch_geometry, Act, Fp6Format, GemmConfig, DEFAULT_SHARED_LIMIT, FP6_GEMM_TEMPLATE, MAX_SHARED_BYTES,
};
use crate::{Arch, CudaError, Ptx};

/// The W4A8 template (`kernels-templates/w4a8_gemm.cu`); instantiated after
/// [`FP6_GEMM_TEMPLATE`].
pub const W4A8_GEMM_TEMPLATE: &str = include_str!("../../../kernels-templates/w4a8_gemm.cu");

/// Threads per block of the row quantizer (one block per token row).
pub const QUANTIZE_THREADS: usize = 256;

/// The multiplier the GEMM applies to the FP16-storage-folded channel scale: the FP4 → e4m3
/// placement divides every weight by 2^6, the folded scale carries
/// `fpx_quant::fold::storage_factor(fp4-e2m1)` = 2^14 (the template's `w4a8_scale_adjust`).
pub const SCALE_ADJUST: f32 = 64.0 / 16384.0;

/// The activations' FP8 format (the template's `FP8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fp8Act {
    /// e4m3 (max 448), FP8 0.
    E4M3,
    /// e5m2 (max 57344), FP8 1.
    E5M2,
}

impl Fp8Act {
    /// The template parameter.
    pub fn template_arg(self) -> u32 {
        match self {
            Fp8Act::E4M3 => 0,
            Fp8Act::E5M2 => 1,
        }
    }

    /// The matching `fpx_quant` format.
    pub fn quant_format(self) -> fpx_quant::Format {
        match self {
            Fp8Act::E4M3 => fpx_quant::Format::Fp8E4M3,
            Fp8Act::E5M2 => fpx_quant::Format::Fp8E5M2,
        }
    }

    /// The FP8 activations of `fpx_quant`'s choice, if it is one.
    pub fn from_activations(a: fpx_quant::Activations) -> Option<Fp8Act> {
        match a {
            fpx_quant::Activations::Fp8E4M3 => Some(Fp8Act::E4M3),
            fpx_quant::Activations::Fp8E5M2 => Some(Fp8Act::E5M2),
            _ => None,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Fp8Act::E4M3 => "e4m3",
            Fp8Act::E5M2 => "e5m2",
        }
    }
}

/// One instantiation of the W4A8 GEMM: the tiling fields mean what they mean in
/// [`GemmConfig`] (whose pipeline the kernel shares); a stage holds the FP4 tiles (256 bytes
/// each) and `m_tile` rows of `32 * k_tiles + 16` FP8 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct W4a8Config {
    /// Activation FP8 format.
    pub act: Fp8Act,
    /// Output channels (logical).
    pub n: usize,
    /// Reduction length (logical).
    pub k: usize,
    /// Tokens per block: 8, 16, 32 or 64.
    pub m_tile: usize,
    /// Warps per block (1..=8).
    pub warps: usize,
    /// 16-channel tiles per warp (1..=8).
    pub warp_ntiles: usize,
    /// 32-K tiles per pipeline stage (1, 2 or 4).
    pub k_tiles: usize,
    /// cp.async pipeline stages (2..=8).
    pub stages: usize,
    /// K splits (> 1 needs the split-K workspace of [`GemmConfig::workspace_bytes`]).
    pub split_k: usize,
}

impl W4a8Config {
    /// The config with `tiling`'s tiles, warps, stages and split.
    pub fn with_tiling(act: Fp8Act, tiling: &GemmConfig) -> W4a8Config {
        let t = tiling;
        W4a8Config {
            act,
            n: t.n,
            k: t.k,
            m_tile: t.m_tile,
            warps: t.warps,
            warp_ntiles: t.warp_ntiles,
            k_tiles: t.k_tiles,
            stages: t.stages,
            split_k: t.split_k,
        }
    }

    /// The analytic default for an `[n][k]` weight and `m` tokens on `sm_count` SMs: the FP6
    /// GEMM's tiling and split ([`heuristic_config`]; its model counts FP6 bytes, so the split
    /// is a starting point for the tuner, not a measured choice), with as many stages (at most
    /// 4) as fit in 48 KiB of the smaller W4A8 stage.
    pub fn heuristic(act: Fp8Act, n: usize, k: usize, m: usize, sm_count: usize) -> W4a8Config {
        let mut cfg = W4a8Config::with_tiling(act, &heuristic_config(n, k, m, sm_count));
        cfg.stages = (2..=4).rev().find(|&s| s * cfg.stage_bytes() <= DEFAULT_SHARED_LIMIT).unwrap_or(2);
        cfg
    }

    /// The tiling as a [`GemmConfig`] (FP6 fields set to e3m2 / FP16, unused): for the shared
    /// tiling rules, launch geometry and split-K buffers.
    pub fn tiling(&self) -> GemmConfig {
        GemmConfig {
            format: Fp6Format::E3M2,
            act: Act::F16,
            n: self.n,
            k: self.k,
            m_tile: self.m_tile,
            warps: self.warps,
            warp_ntiles: self.warp_ntiles,
            k_tiles: self.k_tiles,
            stages: self.stages,
            split_k: self.split_k,
        }
    }

    /// `k` rounded up to 32: the row length of the quantized `Xq`.
    pub fn k_pad(&self) -> usize {
        self.tiling().k_pad()
    }

    /// Shared memory of one stage (mirrors `W4a8Gemm::STAGE_BYTES`; the instantiation
    /// `static_assert`s that they agree).
    pub fn stage_bytes(&self) -> usize {
        self.warps * self.warp_ntiles * self.k_tiles * 256 + self.m_tile * (32 * self.k_tiles + 16)
    }

    /// Dynamic shared memory per GEMM block.
    pub fn shared_bytes(&self) -> usize {
        self.stages * self.stage_bytes()
    }

    /// The GEMM kernel's name, e.g. `fpx_w4a8_gemm_e4m3_n4096_k4096_m8_w4x4_kt2_s4_sk14`.
    pub fn kernel_name(&self) -> String {
        format!(
            "fpx_w4a8_gemm_{}_n{}_k{}_m{}_w{}x{}_kt{}_s{}_sk{}",
            self.act.tag(),
            self.n,
            self.k,
            self.m_tile,
            self.warps,
            self.warp_ntiles,
            self.k_tiles,
            self.stages,
            self.split_k
        )
    }

    /// The row quantizer's kernel name, e.g. `fpx_fp8_quantize_rows_e4m3_k4096`.
    pub fn quantize_kernel_name(&self) -> String {
        format!("fpx_fp8_quantize_rows_{}_k{}", self.act.tag(), self.k)
    }

    /// Checks the config: the tiling rules of [`GemmConfig::validate_tiling`] and this
    /// kernel's shared memory.
    pub fn validate(&self) -> Result<(), CudaError> {
        self.tiling().validate_tiling()?;
        if self.shared_bytes() > MAX_SHARED_BYTES {
            return Err(CudaError::Config(format!(
                "{} bytes of shared memory (at most {MAX_SHARED_BYTES}) in {self:?}",
                self.shared_bytes()
            )));
        }
        Ok(())
    }

    /// `(grid, block, dynamic shared bytes)` of the GEMM for `m` tokens (as
    /// [`launch_geometry`]).
    pub fn launch_geometry(&self, m: usize) -> ([u32; 3], [u32; 3], u32) {
        let (grid, block, _) = launch_geometry(&self.tiling(), m);
        (grid, block, self.shared_bytes() as u32)
    }

    /// `(grid, block)` of the row quantizer for `m` tokens: one block per row.
    pub fn quantize_geometry(&self, m: usize) -> ([u32; 3], [u32; 3]) {
        ([m as u32, 1, 1], [QUANTIZE_THREADS as u32, 1, 1])
    }
}

/// The CUDA source for `cfg`: both templates, then the two `extern "C"` kernels:
///
/// ```text
/// quantize_kernel_name(const u16* X /* [M][K] FP16 */, u8* Xq /* [M][k_pad] */, float* xs /* [M] */, int M)
/// kernel_name(const u8* Xq, const float* xs, const u8* W, const float* scales, const float* bias_or_null,
///             u16* Y, float* partials_or_null, unsigned* counters_or_null, int M)
/// ```
pub fn instantiate(cfg: &W4a8Config) -> Result<String, CudaError> {
    cfg.validate()?;
    let mut src = String::with_capacity(FP6_GEMM_TEMPLATE.len() + W4A8_GEMM_TEMPLATE.len() + 1024);
    src.push_str(FP6_GEMM_TEMPLATE);
    src.push_str(W4A8_GEMM_TEMPLATE);
    let f = cfg.act.template_arg();
    let gemm = format!(
        "fpx::W4a8Gemm<{f}, {}, {}, {}, {}, {}, {}, {}, {}>",
        cfg.n, cfg.k, cfg.m_tile, cfg.warps, cfg.warp_ntiles, cfg.k_tiles, cfg.stages, cfg.split_k
    );
    let _ = write!(
        src,
        "\n// ---- instantiation generated by fpx-cuda ----\n\
         static_assert({gemm}::SHARED_BYTES == {shared}, \"fpx-cuda's shared-memory formula disagrees with the template\");\n\
         extern \"C\" __global__ void __launch_bounds__({qthreads}) {qname}(const fpx_u16* X, unsigned char* Xq, float* xs, int M) {{\n\
         \x20   fpx::QuantizeRows<{f}, {k}, {qthreads}>::run(X, Xq, xs, M);\n}}\n\
         extern \"C\" __global__ void __launch_bounds__({threads}) {name}(const unsigned char* Xq, const float* xs,\n\
         \x20   const unsigned char* W, const float* scales, const float* bias, fpx_u16* Y, float* ws, unsigned* counters, int M) {{\n\
         \x20   {gemm}::run(Xq, xs, W, scales, bias, Y, ws, counters, M);\n}}\n",
        shared = cfg.shared_bytes(),
        threads = cfg.warps * 32,
        qthreads = QUANTIZE_THREADS,
        qname = cfg.quantize_kernel_name(),
        name = cfg.kernel_name(),
        k = cfg.k,
    );
    Ok(src)
}

/// NVRTC compilations of W4A8 modules this process has run.
static COMPILATIONS: AtomicU64 = AtomicU64::new(0);

/// Instantiates `cfg` and compiles it with NVRTC for `arch`: the PTX module holds the GEMM
/// (`Ptx::kernel`) and the row quantizer ([`W4a8Config::quantize_kernel_name`]). FP8 `mma`
/// needs sm_89 or newer: [`Arch::Sm89`] runs it on FP8 tensor cores; on [`Arch::Sm90`] ptxas
/// lowers it to FP16 `HMMA.16816` pairs after unpacking the FP8 bytes (Hopper's FP8 tensor
/// throughput is reached through `wgmma` only); sm_80 is a [`CudaError::Config`].
pub fn compile_ptx(cfg: &W4a8Config, arch: Arch) -> Result<Ptx, CudaError> {
    if arch == Arch::Sm80 {
        return Err(CudaError::Config(format!(
            "the W4A8 GEMM ({}) uses FP8 mma, which {arch} does not have (sm_89 or newer)",
            cfg.kernel_name()
        )));
    }
    let src = instantiate(cfg)?;
    let kernel = cfg.kernel_name();
    let ptx = nvrtc_ptx(&src, &kernel, arch, &COMPILATIONS)?;
    Ok(Ptx { arch, kernel, src: ptx })
}

/// The column of `pos` (0..32) within its 32-column block of the quantized `Xq` row: the
/// quantizer stores column `16h + 2t + [8, 0, 9, 1][i]` at `pos = 16h + 4t + i`, so that MMA
/// slot (lane `t`, register `h`, byte `i`) meets the FP4 weight the layout gives that slot
/// (the template's `perm_column`).
pub fn perm_column(pos: usize) -> usize {
    let (h, t, i) = (pos >> 4, (pos >> 2) & 3, pos & 3);
    16 * h + 2 * t + [8, 0, 9, 1][i]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_permutation_is_a_bijection_per_block() {
        let mut seen = [false; 32];
        for pos in 0..32 {
            let c = perm_column(pos);
            assert!(!seen[c], "column {c} twice");
            seen[c] = true;
            // Position and column share the k16 half.
            assert_eq!(pos / 16, c / 16);
        }
    }

    #[test]
    fn heuristic_configs_validate_and_fit_48_kib() {
        for (n, k) in [(384, 384), (1536, 384), (4096, 4096), (28672, 8192), (100, 70)] {
            for m in [1, 16, 128] {
                for act in [Fp8Act::E4M3, Fp8Act::E5M2] {
                    let cfg = W4a8Config::heuristic(act, n, k, m, 132);
                    cfg.validate().unwrap();
                    assert!(cfg.shared_bytes() <= DEFAULT_SHARED_LIMIT, "{cfg:?}");
                    let fp6 = heuristic_config(n, k, m, 132);
                    assert!(cfg.stages >= fp6.stages, "the smaller stage never costs stages: {cfg:?}");
                    assert_eq!(cfg.launch_geometry(m).0, launch_geometry(&fp6, m).0);
                }
            }
        }
    }

    #[test]
    fn sm80_is_refused_with_the_reason() {
        let cfg = W4a8Config::heuristic(Fp8Act::E4M3, 64, 64, 1, 108);
        let e = compile_ptx(&cfg, Arch::Sm80).unwrap_err().to_string();
        assert!(e.contains("FP8 mma") && e.contains("sm_80"), "{e}");
    }

    #[test]
    fn bad_configs_are_errors() {
        let mut cfg = W4a8Config::heuristic(Fp8Act::E4M3, 64, 64, 1, 108);
        cfg.k_tiles = 3;
        assert!(instantiate(&cfg).is_err());
        cfg.k_tiles = 2;
        cfg.stages = 8;
        cfg.m_tile = 64;
        cfg.warps = 8;
        cfg.warp_ntiles = 8;
        assert!(cfg.validate().unwrap_err().to_string().contains("shared memory"));
    }
}
