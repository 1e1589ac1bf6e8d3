//! GEMM tile configs: what the template is instantiated with, the analytic default
//! ([`heuristic_config`]), the launch geometry and the generated source ([`instantiate`]).

use std::fmt::Write as _;

use crate::CudaError;
use fpx_artifact::{GpuActivations, GpuTiles};
use fpx_quant::KernelTable;

/// The CUDA template of the FP6 weight-only GEMM (`kernels-templates/fp6_gemm.cu`).
pub const FP6_GEMM_TEMPLATE: &str = include_str!("../../../kernels-templates/fp6_gemm.cu");

/// Output channels per layout tile (the MMA M; `fpx_quant::layout::TILE_N`).
const TILE_N: usize = fpx_quant::layout::TILE_N;
/// Reduction indices per layout tile (`fpx_quant::layout::TILE_K`).
const TILE_K: usize = fpx_quant::layout::TILE_K;
/// The shared memory a block may use without opting in (`cuFuncSetAttribute`), and the budget
/// [`heuristic_config`] keeps to.
pub const DEFAULT_SHARED_LIMIT: usize = 48 * 1024;
/// The largest dynamic shared memory per block on sm_80 (A100); the smallest of the targets.
pub const MAX_SHARED_BYTES: usize = 163 * 1024;

/// The FP6 weight format (the template's `FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fp6Format {
    /// 1 sign, 3 exponent, 2 mantissa bits (FORMAT 0).
    E3M2,
    /// 1 sign, 2 exponent, 3 mantissa bits (FORMAT 1).
    E2M3,
}

impl Fp6Format {
    /// The template parameter.
    pub fn template_arg(self) -> u32 {
        match self {
            Fp6Format::E3M2 => 0,
            Fp6Format::E2M3 => 1,
        }
    }

    /// The matching `fpx_quant` format.
    pub fn quant_format(self) -> fpx_quant::Format {
        match self {
            Fp6Format::E3M2 => fpx_quant::Format::Fp6E3M2,
            Fp6Format::E2M3 => fpx_quant::Format::Fp6E2M3,
        }
    }

    /// The FP6 format of an `fpx_quant` format, if it is one.
    pub fn from_quant(format: fpx_quant::Format) -> Option<Fp6Format> {
        match format {
            fpx_quant::Format::Fp6E3M2 => Some(Fp6Format::E3M2),
            fpx_quant::Format::Fp6E2M3 => Some(Fp6Format::E2M3),
            _ => None,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Fp6Format::E3M2 => "e3m2",
            Fp6Format::E2M3 => "e2m3",
        }
    }
}

/// The activation (and output) type (the template's `ACT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Act {
    /// FP16 activations, FP16 output (ACT 0).
    F16,
    /// BF16 activations, BF16 output (ACT 1); weights dequantized by the BF16 offset path.
    Bf16,
}

impl Act {
    /// The template parameter.
    pub fn template_arg(self) -> u32 {
        match self {
            Act::F16 => 0,
            Act::Bf16 => 1,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Act::F16 => "f16",
            Act::Bf16 => "bf16",
        }
    }
}

/// One instantiation of the FP6 GEMM `Y[M][N] = X[M][K] · dequant(W)[K][N]`: the GEMM's N and
/// K are compile-time constants, M is a kernel argument. A block has `warps` warps, each
/// owning `warp_ntiles` tiles of 16 output channels and all `m_tile` tokens; a pipeline stage
/// holds `k_tiles` tiles of 32 K; `stages` stages are in flight; `split_k` blocks share one
/// output tile's K range (FP32 workspace + reduction kernel).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GemmConfig {
    /// FP6 weight format.
    pub format: Fp6Format,
    /// Activation / output type.
    pub act: Act,
    /// Output channels (logical, unpadded).
    pub n: usize,
    /// Reduction length (logical, unpadded).
    pub k: usize,
    /// Tokens per block: 8, 16, 32 or 64.
    pub m_tile: usize,
    /// Warps per block (1..=8), stacked along N.
    pub warps: usize,
    /// 16-channel tiles per warp (1..=8).
    pub warp_ntiles: usize,
    /// 32-K tiles per pipeline stage (1, 2 or 4; 4 with 1 or an even number of warps).
    pub k_tiles: usize,
    /// cp.async pipeline stages (2..=8).
    pub stages: usize,
    /// K splits (>= 1; > 1 needs a split-K workspace: FP32 partials and per-block counters).
    pub split_k: usize,
}

impl GemmConfig {
    /// `n` rounded up to 16 (the layout's padding).
    pub fn n_pad(&self) -> usize {
        self.n.div_ceil(TILE_N) * TILE_N
    }

    /// `k` rounded up to 32 (the layout's padding; also the row stride of X).
    pub fn k_pad(&self) -> usize {
        self.k.div_ceil(TILE_K) * TILE_K
    }

    /// 16-channel tiles along N.
    pub fn n_tiles(&self) -> usize {
        self.n_pad() / TILE_N
    }

    /// 16-channel tiles per block.
    pub fn block_n_tiles(&self) -> usize {
        self.warps * self.warp_ntiles
    }

    /// Output channels per block.
    pub fn block_n(&self) -> usize {
        self.block_n_tiles() * TILE_N
    }

    /// Pipeline steps over the whole K (`ceil(k_pad / (32 * k_tiles))`).
    pub fn k_steps(&self) -> usize {
        (self.k_pad() / TILE_K).div_ceil(self.k_tiles)
    }

    /// Threads per block.
    pub fn threads(&self) -> usize {
        self.warps * 32
    }

    /// Shared memory of one stage: both weight planes of the block's tiles plus the X slice
    /// (rows padded by 8 halves against bank conflicts). Mirrors `Gemm::STAGE_BYTES`; the
    /// instantiation `static_assert`s that the two agree.
    pub fn stage_bytes(&self) -> usize {
        let weights = self.block_n_tiles() * self.k_tiles * (256 + 128);
        let x = self.m_tile * (TILE_K * self.k_tiles + 8) * 2;
        weights + x
    }

    /// Dynamic shared memory per block (`stages * stage_bytes`).
    pub fn shared_bytes(&self) -> usize {
        self.stages * self.stage_bytes()
    }

    /// Bytes of FP32 split-K workspace for `m` tokens (0 when `split_k == 1`).
    pub fn workspace_bytes(&self, m: usize) -> usize {
        if self.split_k > 1 {
            self.split_k * m * self.n * 4
        } else {
            0
        }
    }

    /// The GEMM kernel's name, unique per config: e.g.
    /// `fpx_fp6_gemm_e3m2_f16_n4096_k4096_m8_w4x4_kt2_s3_sk12`.
    pub fn kernel_name(&self) -> String {
        let [n, k, m, w, wn, kt, s, sk] = self.sizes();
        format!("fpx_fp6_gemm_{}_{}_n{n}_k{k}_m{m}_w{w}x{wn}_kt{kt}_s{s}_sk{sk}", self.format.tag(), self.act.tag())
    }

    /// The numbers of the config in declaration order: n, k, m_tile, warps, warp_ntiles,
    /// k_tiles, stages, split_k (what names and `Display` spell out).
    fn sizes(&self) -> [usize; 8] {
        [self.n, self.k, self.m_tile, self.warps, self.warp_ntiles, self.k_tiles, self.stages, self.split_k]
    }

    /// Split-K arrival counters for `m` tokens: one per output block (grid x times grid y), 0
    /// when `split_k == 1`. They must be zero before the first launch; every launch leaves
    /// them zero.
    pub fn counter_slots(&self, m: usize) -> usize {
        if self.split_k > 1 {
            self.n_tiles().div_ceil(self.block_n_tiles()) * m.div_ceil(self.m_tile)
        } else {
            0
        }
    }

    /// Checks the config is one the template instantiates and that fits every target.
    pub fn validate(&self) -> Result<(), CudaError> {
        self.validate_tiling()?;
        if self.shared_bytes() > MAX_SHARED_BYTES {
            return Err(CudaError::Config(format!(
                "{} bytes of shared memory (at most {MAX_SHARED_BYTES}) in {self:?}",
                self.shared_bytes()
            )));
        }
        Ok(())
    }

    /// The checks of [`GemmConfig::validate`] but the shared-memory size: the tiling rules the
    /// copy streams and the pipeline share with the W4A8 GEMM ([`crate::w4a8`]), whose stages
    /// are smaller.
    pub fn validate_tiling(&self) -> Result<(), CudaError> {
        let bad = |what: String| Err(CudaError::Config(format!("{what} in {self:?}")));
        if self.n == 0 || self.k == 0 {
            return bad("n and k must be positive".into());
        }
        // First, before anything derived from them: channel and token indices are 32-bit ints
        // in the kernel (global offsets are 64-bit), and a file may hold any n and k.
        if self.n > fpx_quant::gemm::MAX_DIM || self.k > fpx_quant::gemm::MAX_DIM {
            return bad(format!("n = {} or k = {} is larger than {}", self.n, self.k, fpx_quant::gemm::MAX_DIM));
        }
        if !matches!(self.m_tile, 8 | 16 | 32 | 64) {
            return bad(format!("m_tile {} is not 8, 16, 32 or 64", self.m_tile));
        }
        if !(1..=8).contains(&self.warps) || !(1..=8).contains(&self.warp_ntiles) || !matches!(self.k_tiles, 1 | 2 | 4) {
            return bad("warps and warp_ntiles must be 1..=8, k_tiles 1, 2 or 4".into());
        }
        // The copy loops need the block's threads and a stage row's 16-byte chunks (16 per k-tile
        // of the low plane) to divide one another (`ChunkMap` in the template).
        if self.k_tiles == 4 && self.warps % 2 == 1 && self.warps > 1 {
            return bad(format!("k_tiles 4 needs 1 or an even number of warps, not {}", self.warps));
        }
        if !(2..=8).contains(&self.stages) {
            return bad(format!("stages {} is not 2..=8", self.stages));
        }
        if self.split_k == 0 || self.split_k > self.k_steps() {
            return bad(format!("split_k {} is not 1..={} (the K steps)", self.split_k, self.k_steps()));
        }
        Ok(())
    }
}

impl std::fmt::Display for GemmConfig {
    /// `format=e3m2 act=f16 n=384 k=384 m_tile=8 warps=4 warp_ntiles=4 k_tiles=2 stages=4 split_k=3`:
    /// how `fpx inspect` shows a config (the artifact stores it as a [`GpuTiles`] message).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const KEYS: [&str; 8] = ["n", "k", "m_tile", "warps", "warp_ntiles", "k_tiles", "stages", "split_k"];
        write!(f, "format={} act={}", self.format.tag(), self.act.tag())?;
        for (key, v) in KEYS.iter().zip(self.sizes()) {
            write!(f, " {key}={v}")?;
        }
        Ok(())
    }
}

impl From<&GemmConfig> for GpuTiles {
    /// The config as the artifact stores it.
    fn from(c: &GemmConfig) -> GpuTiles {
        let small = |v: usize| u32::try_from(v).expect("a validated config's tile counts are small");
        GpuTiles {
            format: c.format.quant_format(),
            activations: match c.act {
                Act::F16 => GpuActivations::F16,
                Act::Bf16 => GpuActivations::Bf16,
            },
            n: c.n as u64,
            k: c.k as u64,
            m_tile: small(c.m_tile),
            warps: small(c.warps),
            warp_ntiles: small(c.warp_ntiles),
            k_tiles: small(c.k_tiles),
            stages: small(c.stages),
            split_k: small(c.split_k),
        }
    }
}

impl TryFrom<&GpuTiles> for GemmConfig {
    type Error = CudaError;

    /// The config an artifact stored, validated ([`GemmConfig::validate`]).
    fn try_from(t: &GpuTiles) -> Result<GemmConfig, CudaError> {
        let format = Fp6Format::from_quant(t.format)
            .ok_or_else(|| CudaError::Config(format!("the GPU GEMM takes fp6-e3m2 or fp6-e2m3 weights, not {}", t.format)))?;
        let size = |v: u64| usize::try_from(v).map_err(|_| CudaError::Config(format!("{v} does not fit this machine's usize")));
        let cfg = GemmConfig {
            format,
            act: match t.activations {
                GpuActivations::F16 => Act::F16,
                GpuActivations::Bf16 => Act::Bf16,
            },
            n: size(t.n)?,
            k: size(t.k)?,
            m_tile: t.m_tile as usize,
            warps: t.warps as usize,
            warp_ntiles: t.warp_ntiles as usize,
            k_tiles: t.k_tiles as usize,
            stages: t.stages as usize,
            split_k: t.split_k as usize,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The largest M of each bucket the artifact compiles a GEMM config for; larger M use the
/// config chosen for [`LARGE_M`].
pub const M_BUCKETS: [usize; 4] = [8, 16, 32, 64];

/// The M the heuristic is asked about for "any larger M".
pub const LARGE_M: usize = 512;

/// The GEMM configs an artifact carries for one `[n][k]` weight on a GPU with `sm_count` SMs,
/// as a kernel table: one config per bucket of M (ascending, the last for any larger M);
/// buckets whose config equals the next bucket's are merged into it. The runtime picks from it
/// with [`KernelTable::pick`], as it does for the CPU kernels.
pub fn configs_by_m(format: Fp6Format, act: Act, n: usize, k: usize, sm_count: usize) -> KernelTable<GemmConfig> {
    let with = |m: usize| GemmConfig { format, act, ..heuristic_config(n, k, m, sm_count) };
    let mut rows: Vec<(u64, GemmConfig)> = Vec::new();
    for (max_m, cfg) in M_BUCKETS.iter().map(|&m| (m as u64, with(m))).chain([(0, with(LARGE_M))]) {
        match rows.last_mut() {
            Some(last) if last.1 == cfg => last.0 = max_m,
            _ => rows.push((max_m, cfg)),
        }
    }
    KernelTable::new(rows).expect("buckets ascend and end with the unbounded one")
}

/// Wave efficiency of `blocks` equal blocks on `slots` places that run one block each at a
/// time (SMs, or SMs times resident blocks per SM): `blocks / (ceil(blocks / slots) * slots)`.
pub fn wave_efficiency(blocks: usize, slots: usize) -> f64 {
    let slots = slots.max(1);
    if blocks == 0 {
        return 0.0;
    }
    blocks as f64 / (blocks.div_ceil(slots) * slots) as f64
}

/// Resident blocks per SM the split-K plan aims for: one 4-warp block per SM cannot issue the
/// ~650 instructions per 12 KiB K step fast enough to keep up with HBM (one warp per
/// scheduler), two can (FP6-LLM's rule, in effect).
pub const TARGET_BLOCKS_PER_SM: usize = 2;

/// Per-SM limits of the smallest target (sm_80, A100): what [`blocks_per_sm`] assumes.
pub const SM_SHARED_BYTES: usize = 164 * 1024;
/// 32-bit registers per SM (sm_80 and sm_90).
pub const SM_REGISTERS: usize = 64 * 1024;
/// Resident threads per SM (sm_80 and sm_90).
pub const SM_THREADS: usize = 2048;

/// Registers per thread the heuristic assumes for `cfg` before ptxas has counted them: the FP32
/// accumulators, one k-tile's weight words, the activation fragments, the copy streams and a
/// fixed 40 for addresses, indices and the epilogue. ptxas's counts for the heuristic's configs
/// stay at or below it (checked by the SASS report test).
pub fn estimated_registers(cfg: &GemmConfig) -> usize {
    let mb = cfg.m_tile / 8;
    (4 * cfg.warp_ntiles * mb + 3 * cfg.warp_ntiles + 2 * mb + 15 + 40).min(255)
}

/// Blocks of `cfg` an SM holds at once, given `registers` per thread: the least of the shared
/// memory, register file and thread limits ([`SM_SHARED_BYTES`], [`SM_REGISTERS`] in
/// allocation units of 256 per warp, [`SM_THREADS`]), at most 32.
pub fn blocks_per_sm(cfg: &GemmConfig, registers: usize) -> usize {
    let by_shared = SM_SHARED_BYTES / cfg.shared_bytes().max(1);
    let regs_per_warp = (registers.max(1) * 32).div_ceil(256) * 256;
    let by_regs = SM_REGISTERS / (regs_per_warp * cfg.warps);
    let by_threads = SM_THREADS / cfg.threads();
    by_shared.min(by_regs).min(by_threads).min(32)
}

/// How well `splits` K splits of `blocks` output blocks use the GPU, in (0, 1]: the wave
/// efficiency over `slots` (SMs times the resident blocks aimed for), times the share of the
/// DRAM traffic that is weights rather than split-K partial sums (each split writes and the
/// reduction reads `m * n` FP32 values).
pub fn split_score(blocks: usize, splits: usize, slots: usize, weight_bytes: usize, m: usize, n: usize) -> f64 {
    let partials = if splits > 1 { 2 * splits * m * n * 4 } else { 0 };
    wave_efficiency(blocks * splits, slots) * weight_bytes as f64 / (weight_bytes + partials) as f64
}

/// The analytic default config for an `[n][k]` weight and `m` tokens on a GPU with `sm_count`
/// SMs (format e3m2, FP16 activations; set `format` / `act` on the result, they do not change
/// the tiling).
///
/// - token tile: the smallest of 8, 16, 32, 64 that holds `m` (64 beyond);
/// - tiles per warp: 4 (64 channels, as FP6-LLM) up to 32 tokens, 2 for 64 tokens, so the
///   FP32 accumulators stay at 64 registers per thread; up to 4 warps (fewer when N is small);
/// - 2 k-tiles (64 K) per stage, as FP6-LLM; the most stages (at most 4) within 48 KiB of
///   shared memory, at least 2;
/// - split-K from a parallelism model: `slots` = SMs x min([`TARGET_BLOCKS_PER_SM`], the
///   blocks an SM holds ([`blocks_per_sm`] with [`estimated_registers`])); among splits
///   1..=min(32, K steps / 2) (every split at least 2 steps, so its pipeline fills), the
///   smallest whose [`split_score`] reaches [`TARGET_SPLIT_SCORE`], else the best.
pub fn heuristic_config(n: usize, k: usize, m: usize, sm_count: usize) -> GemmConfig {
    let m_tile = [8, 16, 32, 64].into_iter().find(|&t| t >= m).unwrap_or(64);
    let warp_ntiles = if m_tile <= 32 { 4 } else { 2 };
    let n_tiles = n.div_ceil(TILE_N).max(1);
    let warps = n_tiles.div_ceil(warp_ntiles).clamp(1, 4);
    let k_tiles = if k.div_ceil(TILE_K) >= 2 { 2 } else { 1 };
    let mut cfg = GemmConfig { format: Fp6Format::E3M2, act: Act::F16, n, k, m_tile, warps, warp_ntiles, k_tiles, stages: 2, split_k: 1 };
    cfg.stages = (2..=4).rev().find(|&s| s * cfg.stage_bytes() <= DEFAULT_SHARED_LIMIT).unwrap_or(2);
    let blocks = n_tiles.div_ceil(cfg.block_n_tiles()) * m.max(1).div_ceil(m_tile);
    let slots = sm_count.max(1) * TARGET_BLOCKS_PER_SM.min(blocks_per_sm(&cfg, estimated_registers(&cfg)).max(1));
    let weight_bytes = fpx_quant::layout::PackedShape::new(n, k, 6).total_bytes();
    cfg.split_k = split_k_rule((cfg.k_steps() / 2).clamp(1, 32), |s| split_score(blocks, s, slots, weight_bytes, m.max(1), n));
    cfg
}

/// The score a split-K choice must reach for [`split_k_rule`] to stop looking (FP6-LLM's 0.8
/// wave efficiency, here on the model's [`split_score`]).
pub const TARGET_SPLIT_SCORE: f64 = 0.8;

/// The split-K choice (see [`heuristic_config`]): the smallest split in `1..=max_split` whose
/// `score` reaches [`TARGET_SPLIT_SCORE`], else the best-scoring one (the smallest on ties).
pub fn split_k_rule(max_split: usize, score: impl Fn(usize) -> f64) -> usize {
    let max_split = max_split.max(1);
    if let Some(s) = (1..=max_split).find(|&s| score(s) >= TARGET_SPLIT_SCORE) {
        return s;
    }
    let mut best = 1;
    for s in 2..=max_split {
        if score(s) > score(best) {
            best = s;
        }
    }
    best
}

/// The configs a GPU tuner may time for an `[n][k]` weight and `m` tokens (issue 17's search
/// space; the heuristic's choice is always among them): token tiles from the one holding `m`
/// (at most 64) up; warps 1..=8, no more than N's n-tiles need; 1, 2, 4 or 8 tiles per warp
/// with at most 64 FP32 accumulators per thread; 1, 2 or 4 k-tiles per stage; 2..=4 stages;
/// split-K 1, 2, 3, 4, 6, 8, 12, 16 (at most the K steps); every config [`GemmConfig::validate`]s.
pub fn search_space(n: usize, k: usize, m: usize) -> Vec<GemmConfig> {
    let first_tile = [8, 16, 32, 64].into_iter().find(|&t| t >= m).unwrap_or(64);
    let n_tiles = n.div_ceil(TILE_N).max(1);
    let mut out = Vec::new();
    for m_tile in [8, 16, 32, 64].into_iter().filter(|&t| t >= first_tile) {
        for warp_ntiles in [1, 2, 4, 8].into_iter().filter(|&w| w * m_tile <= 128) {
            for warps in 1..=n_tiles.div_ceil(warp_ntiles).min(8) {
                for k_tiles in [1, 2, 4] {
                    for stages in 2..=4 {
                        for split_k in [1, 2, 3, 4, 6, 8, 12, 16] {
                            let cfg = GemmConfig {
                                format: Fp6Format::E3M2,
                                act: Act::F16,
                                n,
                                k,
                                m_tile,
                                warps,
                                warp_ntiles,
                                k_tiles,
                                stages,
                                split_k,
                            };
                            if cfg.validate().is_ok() {
                                out.push(cfg);
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// The most blocks a grid's y and z dimensions take.
pub const MAX_GRID_YZ: usize = 65535;

/// `(grid, block, dynamic shared bytes)` of the GEMM kernel for `m` tokens: grid x over token
/// tiles (fastest: the blocks that read the same weights run together), y over blocks of
/// `block_n()` channels, z over K splits. `m == 0` gives a grid with x = 0: nothing to launch.
/// Shared memory above 48 KiB needs `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` set
/// before the launch; y above [`MAX_GRID_YZ`] cannot launch (N over a million channels).
pub fn launch_geometry(cfg: &GemmConfig, m: usize) -> ([u32; 3], [u32; 3], u32) {
    let grid = [m.div_ceil(cfg.m_tile) as u32, cfg.n_tiles().div_ceil(cfg.block_n_tiles()) as u32, cfg.split_k as u32];
    (grid, [cfg.threads() as u32, 1, 1], cfg.shared_bytes() as u32)
}

/// The CUDA source for `cfg`: the template followed by the `extern "C"` kernel `kernel_name()`,
/// with a `static_assert` that the template's shared-memory size equals
/// [`GemmConfig::shared_bytes`]. Kernel signature:
///
/// ```text
/// name(const u16* X, const u8* W, const float* scales, const float* bias_or_null, u16* Y,
///      float* partials_or_null, unsigned* counters_or_null, int M)
/// ```
pub fn instantiate(cfg: &GemmConfig) -> Result<String, CudaError> {
    cfg.validate()?;
    let mut src = String::with_capacity(FP6_GEMM_TEMPLATE.len() + 1024);
    src.push_str(FP6_GEMM_TEMPLATE);
    let (f, a) = (cfg.format.template_arg(), cfg.act.template_arg());
    let gemm = format!(
        "fpx::Gemm<{f}, {a}, {}, {}, {}, {}, {}, {}, {}, {}>",
        cfg.n, cfg.k, cfg.m_tile, cfg.warps, cfg.warp_ntiles, cfg.k_tiles, cfg.stages, cfg.split_k
    );
    let name = cfg.kernel_name();
    let _ = write!(
        src,
        "\n// ---- instantiation generated by fpx-cuda ----\n\
         static_assert({gemm}::SHARED_BYTES == {shared}, \"fpx-cuda's shared-memory formula disagrees with the template\");\n\
         extern \"C\" __global__ void __launch_bounds__({threads}) {name}(const fpx_u16* X, const unsigned char* W, const float* scales,\n\
         \x20   const float* bias, fpx_u16* Y, float* ws, unsigned* counters, int M) {{\n\
         \x20   {gemm}::run(X, W, scales, bias, Y, ws, counters, M);\n}}\n",
        shared = cfg.shared_bytes(),
        threads = cfg.threads(),
    );
    Ok(src)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays the kernel's epilogue mapping (block, warp, tile, lane, accumulator element →
    /// token, channel, with the kernel's guards) over the launch grid: every output element of
    /// `[m][n]` must be written exactly once, and every K step must belong to exactly one split.
    fn assert_covers(cfg: &GemmConfig, m: usize) {
        let (grid, block, shared) = launch_geometry(cfg, m);
        assert_eq!(block, [cfg.threads() as u32, 1, 1]);
        assert_eq!(shared as usize, cfg.shared_bytes());
        let mut hits = vec![0u8; m * cfg.n];
        for by in 0..grid[0] as usize {
            for bx in 0..grid[1] as usize {
                let (nt0, m0) = (bx * cfg.block_n_tiles(), by * cfg.m_tile);
                for warp in 0..cfg.warps {
                    for lane in 0..32 {
                        let (g, t) = (lane / 4, lane % 4);
                        for i in 0..cfg.warp_ntiles {
                            for hrow in 0..2 {
                                let ch = (nt0 + warp * cfg.warp_ntiles + i) * 16 + g + 8 * hrow;
                                if ch >= cfg.n {
                                    continue;
                                }
                                for mb in 0..cfg.m_tile / 8 {
                                    for q in 0..2 {
                                        let tok = m0 + mb * 8 + 2 * t + q;
                                        if tok < m {
                                            hits[tok * cfg.n + ch] += 1;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some(bad) = hits.iter().position(|&h| h != 1) {
            panic!("output ({}, {}) written {} times by {cfg:?} for m = {m}", bad / cfg.n, bad % cfg.n, hits[bad]);
        }
        // Split-K: contiguous step ranges, the remainder spread over the first splits (the
        // template's STEPS_BASE / STEPS_REM), cover 0..steps once and differ by at most a step.
        let steps = cfg.k_steps();
        let (base, rem) = (steps / cfg.split_k, steps % cfg.split_k);
        let mut step_hits = vec![0u8; steps];
        for z in 0..grid[2] as usize {
            let (begin, count) = (z * base + z.min(rem), base + usize::from(z < rem));
            assert!(count >= 1 && count <= base + 1, "{cfg:?}: split {z} runs {count} steps");
            for h in &mut step_hits[begin..begin + count] {
                *h += 1;
            }
        }
        assert!(step_hits.iter().all(|&h| h == 1), "{cfg:?}: K steps {step_hits:?}");
        assert!(cfg.k_steps() * cfg.k_tiles * 32 >= cfg.k_pad());
        if cfg.split_k > 1 {
            assert_eq!(cfg.counter_slots(m), (grid[0] * grid[1]) as usize, "{cfg:?}: a counter per output block");
        } else {
            assert_eq!(cfg.counter_slots(m), 0);
        }
    }

    #[test]
    fn launch_geometry_covers_every_output_for_awkward_shapes() {
        for n in [1, 15, 16, 17, 100, 255, 257, 383, 384, 1000, 1536] {
            for k in [1, 31, 33, 70, 384, 1000] {
                for m in [1, 2, 7, 8, 9, 15, 17, 33, 63, 65, 100, 129] {
                    for sms in [108, 132] {
                        let cfg = heuristic_config(n, k, m, sms);
                        cfg.validate().unwrap();
                        assert_covers(&cfg, m);
                        // A config tuned for another M still covers this M.
                        assert_covers(&heuristic_config(n, k, 1, sms), m);
                        assert_covers(&heuristic_config(n, k, 128, sms), m);
                    }
                }
            }
        }
        // Hand-made tilings with more warps / fewer tiles per warp.
        for (warps, wnt) in [(1, 1), (3, 2), (8, 1), (2, 8)] {
            let cfg = GemmConfig { warps, warp_ntiles: wnt, ..heuristic_config(1000, 1000, 40, 108) };
            assert_covers(&cfg, 40);
            assert_covers(&cfg, 3);
        }
        let cfg = heuristic_config(384, 384, 16, 108);
        assert_eq!(launch_geometry(&cfg, 0).0[0], 0, "m = 0: nothing to launch");
        assert_eq!(cfg.counter_slots(0), 0);
    }

    #[test]
    fn split_k_plan_on_a100_and_h100() {
        assert_eq!(wave_efficiency(108, 108), 1.0);
        assert_eq!(wave_efficiency(109, 108), 109.0 / 216.0);
        assert_eq!(wave_efficiency(0, 108), 0.0);
        // The heuristic's 4-warp tiles fit at least the 2 blocks per SM the plan aims for.
        let c = heuristic_config(4096, 4096, 16, 132);
        assert!(blocks_per_sm(&c, estimated_registers(&c)) >= TARGET_BLOCKS_PER_SM);
        assert_eq!(blocks_per_sm(&c, 255), 2, "255 registers x 128 threads: 2 blocks of 64K");
        // 4096 x 4096, one token: 16 blocks, 2 slots per SM. H100 (264 slots): 14 splits give
        // 224 / 264 = 0.85 (13: 0.79); A100 (216 slots): 12 give 192 / 216 = 0.89 (11: 0.81,
        // less the partial-sum traffic: 0.79). About twice FP6-LLM's one-block-per-SM rule (7, 6).
        let split = |n, k, m, sms| heuristic_config(n, k, m, sms).split_k;
        assert_eq!((split(4096, 4096, 1, 132), split(4096, 4096, 1, 108)), (14, 12));
        // N = 28672: 112 blocks; H100: 2 splits fill 224 / 264 = 0.85.
        assert_eq!(split(28672, 8192, 1, 132), 2);
        // K = 28672, N = 8192: 32 blocks; H100: 7 splits, 224 / 264.
        assert_eq!(split(8192, 28672, 1, 132), 7);
        // 16 tokens of 4096 x 4096 on H100: the FP32 partial sums (2 x 16 x 4096 x 4 bytes per
        // split) cost traffic, nothing reaches 0.8, the best score wins (16 splits, 0.58).
        assert_eq!(split(4096, 4096, 16, 132), 16);
        let blocks16 = 16;
        let w = fpx_quant::layout::PackedShape::new(4096, 4096, 6).total_bytes();
        assert!(split_score(blocks16, 16, 264, w, 16, 4096) > split_score(blocks16, 8, 264, w, 16, 4096));
        // 128 tokens of 8192 x 28672: 64-token tiles, 8 n-tiles per block: 224 x 2 = 448 blocks.
        let c = heuristic_config(28672, 8192, 128, 108);
        assert_eq!((c.m_tile, c.block_n_tiles(), c.split_k), (64, 8, 1));
        // MiniLM 384 x 384: 2 blocks, 6 K steps: at most 3 splits (2 steps each).
        assert_eq!(split(384, 384, 1, 108), 3);
        // The rule: smallest reaching the target, else the best (smallest on ties), never 0.
        assert_eq!(split_k_rule(8, |s| s as f64 / 10.0), 8);
        assert_eq!(split_k_rule(8, |s| if s >= 3 { 0.85 } else { 0.5 }), 3);
        assert_eq!(split_k_rule(4, |_| 0.5), 1);
        assert_eq!(split_k_rule(0, |_| 0.5), 1);
        for (k, n) in [(384, 384), (4096, 11008), (28672, 8192)] {
            for m in [1, 16, 128] {
                for sms in [108, 132] {
                    let c = heuristic_config(n, k, m, sms);
                    assert!(c.split_k >= 1 && c.split_k <= (c.k_steps() / 2).max(1));
                    assert!(c.shared_bytes() <= DEFAULT_SHARED_LIMIT);
                    assert!(search_space(n, k, m).contains(&GemmConfig { split_k: 1, ..c.clone() }), "{c}");
                }
            }
        }
    }

    #[test]
    fn search_space_is_valid_and_holds_the_heuristic_tiling() {
        for (n, k, m) in [(384, 384, 1), (40, 200, 17), (4096, 4096, 16), (100, 70, 100)] {
            let space = search_space(n, k, m);
            assert!(!space.is_empty());
            for c in &space {
                c.validate().unwrap();
                assert!(c.warp_ntiles * c.m_tile <= 128, "{c}: more than 64 accumulators");
                assert!(c.m_tile >= m.min(64));
            }
            let unique: std::collections::HashSet<_> = space.iter().collect();
            assert_eq!(unique.len(), space.len());
            let h = heuristic_config(n, k, m, 132);
            let tiling = GemmConfig { split_k: 1, ..h.clone() };
            assert!(space.contains(&tiling), "{h}");
        }
        assert_eq!(search_space(4096, 4096, 1).len(), search_space(4096, 4096, 8).len());
    }

    #[test]
    fn heuristic_tiles() {
        let m_tiles: Vec<usize> =
            [1, 8, 9, 16, 17, 32, 33, 64, 65, 1000].iter().map(|&m| heuristic_config(4096, 4096, m, 132).m_tile).collect();
        assert_eq!(m_tiles, [8, 8, 16, 16, 32, 32, 64, 64, 64, 64]);
        // Small N: fewer warps, not idle ones.
        let c = heuristic_config(32, 64, 1, 108);
        assert_eq!((c.warps, c.warp_ntiles, c.k_tiles), (1, 4, 2));
        assert_eq!(heuristic_config(16, 16, 1, 108).k_tiles, 1);
        // Stage count: as many as fit in 48 KiB (3 for the usual tiles).
        assert_eq!(heuristic_config(4096, 4096, 16, 108).stages, 3);
        assert_eq!(heuristic_config(4096, 4096, 16, 108).shared_bytes(), 3 * (16 * 2 * 384 + 16 * 72 * 2));
    }

    #[test]
    fn validate_rejects_bad_configs() {
        let good = heuristic_config(4096, 4096, 16, 108);
        good.validate().unwrap();
        let cases = [
            GemmConfig { m_tile: 24, ..good.clone() },
            GemmConfig { warps: 0, ..good.clone() },
            GemmConfig { warps: 9, ..good.clone() },
            GemmConfig { k_tiles: 5, ..good.clone() },
            GemmConfig { stages: 1, ..good.clone() },
            GemmConfig { split_k: 0, ..good.clone() },
            GemmConfig { split_k: 65, ..good.clone() },
            GemmConfig { n: 0, ..good.clone() },
            GemmConfig { warps: 8, warp_ntiles: 8, k_tiles: 4, stages: 8, ..good.clone() },
        ];
        for c in cases {
            let e = c.validate().unwrap_err();
            assert!(matches!(e, CudaError::Config(_)), "{c:?}");
            assert!(instantiate(&c).is_err());
        }
    }

    #[test]
    fn instantiation_names_and_source() {
        let c = heuristic_config(4096, 4096, 1, 108);
        assert_eq!(c.kernel_name(), "fpx_fp6_gemm_e3m2_f16_n4096_k4096_m8_w4x4_kt2_s3_sk12");
        let src = instantiate(&c).unwrap();
        assert!(src.starts_with(FP6_GEMM_TEMPLATE));
        assert!(src.contains("extern \"C\" __global__ void __launch_bounds__(128) fpx_fp6_gemm_e3m2_f16_n4096_k4096_m8_w4x4_kt2_s3_sk12("));
        assert!(src.contains("fpx::Gemm<0, 0, 4096, 4096, 8, 4, 4, 2, 3, 12>::run("));
        assert!(
            src.contains(&format!("static_assert(fpx::Gemm<0, 0, 4096, 4096, 8, 4, 4, 2, 3, 12>::SHARED_BYTES == {}", c.shared_bytes()))
        );
        assert!(src.contains("float* ws, unsigned* counters, int M)") && !src.contains("_reduce("));
        assert_eq!(c.counter_slots(16), 32, "16 blocks of 256 channels x 2 token tiles of 8");
        assert_eq!(c.workspace_bytes(16), 12 * 16 * 4096 * 4);
        let c = GemmConfig { format: Fp6Format::E2M3, act: Act::Bf16, split_k: 1, ..c };
        assert_eq!(c.kernel_name(), "fpx_fp6_gemm_e2m3_bf16_n4096_k4096_m8_w4x4_kt2_s3_sk1");
        assert_eq!(c.counter_slots(16), 0);
        assert_eq!(c.workspace_bytes(16), 0);
        let src = instantiate(&c).unwrap();
        assert!(
            src.contains("fpx::Gemm<1, 1, 4096, 4096, 8, 4, 4, 2, 3, 1>::run(")
                && src.contains("::run(X, W, scales, bias, Y, ws, counters, M);")
        );
        assert_eq!(Fp6Format::from_quant(fpx_quant::Format::Fp6E2M3), Some(Fp6Format::E2M3));
        assert_eq!(Fp6Format::from_quant(fpx_quant::Format::Int4), None);
        assert_eq!(Fp6Format::E3M2.quant_format(), fpx_quant::Format::Fp6E3M2);
    }

    #[test]
    fn configs_round_trip_through_the_artifact_message_and_bad_ones_are_refused() {
        for (n, k) in [(384, 384), (1536, 384), (4096, 11008), (28672, 8192), (100, 40)] {
            for m in [1, 8, 16, 33, 64, 1000] {
                for sm in [108, 132] {
                    let mut cfg = heuristic_config(n, k, m, sm);
                    cfg.format = if m % 2 == 0 { Fp6Format::E2M3 } else { Fp6Format::E3M2 };
                    cfg.act = if sm == 108 { Act::Bf16 } else { Act::F16 };
                    let tiles = GpuTiles::from(&cfg);
                    assert_eq!(GemmConfig::try_from(&tiles).unwrap(), cfg, "{cfg}");
                }
            }
        }
        let good = GpuTiles::from(&heuristic_config(384, 384, 8, 132));
        for (bad, why) in [
            (GpuTiles { format: fpx_quant::Format::Int4, ..good }, "not int4"),
            (GpuTiles { m_tile: 12, ..good }, "m_tile 12 is not 8, 16, 32 or 64"),
            (GpuTiles { stages: 1, ..good }, "stages 1 is not 2..=8"),
            (GpuTiles { split_k: 0, ..good }, "split_k 0 is not"),
            (GpuTiles { n: 0, ..good }, "n and k must be positive"),
            (GpuTiles { k: u64::MAX, ..good }, "is larger than"),
            (GpuTiles { n: 1 << 31, ..good }, "is larger than"),
        ] {
            let e = GemmConfig::try_from(&bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn m_buckets_cover_every_m_with_the_heuristic_choice() {
        for (n, k) in [(384, 384), (384, 1536), (4096, 4096), (8192, 28672)] {
            for sm in [108, 132] {
                let table = configs_by_m(Fp6Format::E3M2, Act::F16, n, k, sm);
                let rows = table.rows();
                let maxes: Vec<usize> = rows[..rows.len() - 1].iter().map(|(m, _)| *m as usize).collect();
                assert!(maxes.iter().all(|m| M_BUCKETS.contains(m)), "{maxes:?}");
                for m in 1..=300 {
                    let picked = table.pick(m);
                    // The bucket's config is the heuristic's for the bucket's upper end.
                    let bucket = M_BUCKETS.iter().copied().find(|&b| m <= b).unwrap_or(LARGE_M);
                    assert_eq!(picked, &heuristic_config(n, k, bucket, sm), "n={n} k={k} m={m} sm={sm}");
                    assert!(picked.m_tile >= m.min(64));
                }
            }
        }
    }
}
