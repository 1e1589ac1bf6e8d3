//! fpx-llvm: CPU kernels for fpx's quantized matrix product (`fpx:QuantMatMul`), generated with
//! LLVM through inkwell, emitted as one object and linked into a shared library.
//!
//! Each kernel is specialized to one [`QuantGemm`] (format, K, N, group size, activations): trip
//! counts, offsets and the dequantization bit tricks are compile-time constants. [`cpu_code`] is
//! the CPU backend: it takes a model's quantized products and returns one shared object with,
//! per node, a [`KernelTable`] (which kernel serves which M) — what the artifact stores and the
//! runtime picks from. Underneath, [`compile_cpu`] builds one module holding every requested
//! kernel in both [`Variant`]s, runs LLVM's O3 pipeline for a [`CpuTarget`], emits an object and
//! links it with `cc -shared`; a loader `dlopen`s it after checking that the host has every
//! feature in [`CompiledCpu::features`] (`fpx_artifact::missing_cpu_features`).
//!
//! # What a kernel computes
//!
//! `Y[m][n] = sum_k X[m][k] * W[k][n] + bias[n]` with
//! `W[k][n] = stored_value(format, code[n][k]) * scales[k / group_size][n]`
//! ([`fpx_quant::fold::stored_value`]; group size 0 = one group), the codes packed by
//! [`fpx_quant::layout::pack`]. X, scales, bias and Y are `f32`, row-major. Every
//! [`fpx_quant::Format`] has kernels (FP6 e3m2/e2m3, FP5, FP4, FP8 e4m3/e5m2, INT4, INT8), for
//! any K, N and group size (K and N need not be multiples of the tile or vector width).
//!
//! # C ABI
//!
//! ```c
//! void f(const float* x, int64_t m, const uint8_t* packed, const float* scales,
//!        const float* bias_or_null, float* y, int64_t n_begin, int64_t n_end);
//! ```
//!
//! computes `y[r][c]` for every row `r < m` and column `c` in `[n_begin, n_end)` (y's row stride
//! is N); `n_begin` must be a multiple of 16, `n_end` may be anything up to N. Columns outside
//! the range are not touched, so threads may split `[0, N)` at multiples of 16. `y` must not
//! overlap the inputs (the pointers are declared `noalias`); all but `bias` must be non-null,
//! with no alignment requirement beyond `f32`'s. Kernels are reentrant and use no heap (a
//! ~17 KiB stack frame at most).
//!
//! Kernels of a product with [`Activations::Int8`] (symbols with `_a8`) have the same signature,
//! but `x` points to an [`fpx_quant::act8::Int8Activations`] buffer for the `m` rows (scales,
//! corrections, permuted int8 codes) instead of `f32` rows. Kernels of a product with FP8
//! activations (`_f8e4m3`, `_f8e5m2`) are the `f32` kernels: the caller hands them the rows
//! rounded to FP8 ([`fpx_quant::act_fp8::round_rows`]: power-of-two scales, so the rounded
//! values are exact in `f32`), which they multiply like any `f32` rows.
//!
//! # How the kernels work
//!
//! The 4+2 layout ([`fpx_quant::layout`]) stores a 16 × 32 tile as 2 halves × 32 "lanes" of
//! 32-bit low-plane words plus one high-plane field per lane. A kernel loads a half's 32 words
//! and transposes them in registers (a 4 × 4 `vpunpck` transpose on AVX2, two-source
//! `vpermt2d` on AVX-512) so that each vector holds the lanes of one `t` — one pair of K
//! columns — for several output rows. It then rebuilds FP16 bit patterns without any
//! per-weight arithmetic:
//!
//! - FP6 (both flavours), FP4 and INT4: byte-level. Each low-plane byte is split into its two
//!   nibbles; FP4/INT4 nibbles go through a 16-entry `pshufb` table giving the high byte of the
//!   code's FP16 value (exact, the low byte is 0); for FP6 the high-plane fields are turned by
//!   four `pshufb` lookups per lane vector into bytes `s << 7 | e << 4` that are ORed onto the
//!   nibbles, which makes the e3m2 FP16 high byte directly (e2m3: one arithmetic shift and mask
//!   more). One mask or one 16-bit shift then yields each pair of FP16 values.
//! - FP5, FP8 and INT8: the FP6-LLM register trick — shifts put the low nibble and the high
//!   bits of both codes of a pair at the top of their 16-bit halves, an arithmetic shift and a
//!   mask do the bias shift ([`fpx_quant::bias_shift::f16_bits`]); integer codes use the FP16
//!   `0x6400 | u` (= 1024 + u) and one subtraction.
//!
//! The FP16 vectors go through a small stack buffer and are widened with `vcvtph2ps` from
//! memory (twice the throughput of the register form on Zen 3, and no `vextracti128`). Each
//! `f32` vector then holds (row, k-parity) lanes for 2 adjacent K columns: it multiplies a
//! 64-bit broadcast of `x[k], x[k+1]` and accumulates per row with FMA; no shuffles in the
//! inner loop. Scales (`f32`) are applied once per output and group, bias once.
//!
//! - [`Variant::Gemv`] (m ≤ 8): when `m` fits one register block of rows (2 on AVX2, 4 on
//!   AVX-512) and groups fall on tile boundaries, weights are dequantized in registers and
//!   streamed once; otherwise it uses the panel loop below, which also reads and dequantizes
//!   every weight once.
//! - [`Variant::Gemm`] (larger m): 8 tiles at a time are dequantized, scales applied, into a
//!   16 KiB L1-resident panel, then every block of rows (3 on AVX2, 6 on AVX-512) reuses it.
//!   Ragged groups (size not a multiple of 32) are handled here, per pair of K columns.
//! - Int8 activations, AVX2 (one loop for every `m`, 256-bit vectors also on AVX-512 without VNNI): 16 tiles at a
//!   time are decoded with the byte method into unsigned bytes `value · units + 64` (a
//!   `pshufb` table for 4-bit codes; for FP6 e2m3 a magnitude table, a select on the top
//!   exponent bit and `vpsignb` for the sign), regrouped so that each 32-bit lane holds 4 codes of one
//!   output row, into a 9 KiB panel. Blocks of 3 rows then take, per lane vector, a 32-bit
//!   broadcast of the matching 4 activation codes, `vpmaddubsw` (32 byte products) and
//!   `vpmaddwd` by ones into `i32`; per tile and row the correction (64 · the codes' sum) is
//!   subtracted and the activation scale (and grouped weight scales) applied in `f32`.
//! - Int8 activations on a target with AVX-512 VBMI and VNNI (`CpuTarget::Native` on Ice Lake,
//!   Zen 4 and later; 4- and 6-bit codes, tile-aligned groups): 512-bit code in which each
//!   `i32` lane is one output row. Per tile, `vpermt2q` regroups the lane words by `t`; per `t`
//!   two `vpmultishiftqb` pick each code's nibble and high-plane field, a `vpternlogd` merges
//!   them, `vpermb` maps the code to its unsigned byte and `vpdpbusd` multiplies it by the
//!   activation group broadcast from memory. Each tile's exact `i32` dot product is converted
//!   once, as in the AVX2 int8 kernels, so both give bit-identical results. `m ≤ 8` streams each
//!   tile once from registers; larger `m` decodes 16 tiles into an 8 KiB panel that blocks of
//!   8 rows reuse (see `codegen/vnni.rs`).

mod codegen;
mod link;
mod target;

use fpx_artifact::{CpuCode, CpuConfig, CpuKernel, NodeKernels};
use fpx_quant::layout::TILE_N;
use fpx_quant::{Format, KernelTable};

pub use fpx_artifact::{CpuTiling, Variant};
pub use fpx_quant::act8::Activations;
pub use fpx_quant::QuantGemm;
pub use target::{host_cpu, CpuTarget};

/// Why kernels could not be generated, compiled or linked.
#[derive(Debug, thiserror::Error)]
pub enum LlvmError {
    /// The format has no CPU kernel.
    #[error("fpx-llvm has no CPU kernel for weight format {0}")]
    UnsupportedFormat(Format),
    /// A product has no kernel (an empty dimension, int8 activations with a format or groups
    /// that cannot take them, too large for the kernels' offsets).
    #[error("no CPU kernel for {gemm}: {message}")]
    BadGemm {
        /// The offending product, as its Gemv symbol.
        gemm: String,
        /// What is wrong with it.
        message: String,
    },
    /// A node's kernel cannot be generated.
    #[error("node '{node}': {source}")]
    Node {
        /// The `fpx:QuantMatMul` node.
        node: String,
        /// Why.
        #[source]
        source: Box<LlvmError>,
    },
    /// LLVM refused something: target lookup, IR verification, the pass pipeline or emission.
    #[error("LLVM: {0}")]
    Llvm(String),
    /// Linking the object into a shared library failed.
    #[error("linking the kernels with `cc -shared` failed: {0}")]
    Link(String),
    /// A temporary file could not be written or read.
    #[error("I/O error while building the shared library: {0}")]
    Io(#[from] std::io::Error),
}

impl From<inkwell::builder::BuilderError> for LlvmError {
    fn from(e: inkwell::builder::BuilderError) -> Self {
        LlvmError::Llvm(format!("IR builder: {e}"))
    }
}

/// A checksum of the kernel generator's sources (this crate's `src/`): kernels generated by
/// code with another checksum may differ, so the auto-tuner's results for them are stale.
pub const CODEGEN_CHECKSUM: &str = env!("FPX_LLVM_CODEGEN_CHECKSUM");

/// Largest M the [`Variant::Gemv`] kernel serves in [`default_choices`]; larger M take
/// [`Variant::Gemm`].
pub const GEMV_MAX_M: u64 = 8;

/// The exported symbol of `gemm`'s kernel in `variant`, e.g.
/// `fpx_qmm_fp6_e3m2_k384_n1536_g0_gemv` (other activations than `f32` add their tag before the
/// variant: `_a8` for int8, `_f8e4m3` for FP8 e4m3).
pub fn symbol(gemm: &QuantGemm, variant: Variant) -> String {
    let act = match gemm.activations.tag() {
        "" => String::new(),
        tag => format!("_{tag}"),
    };
    format!("fpx_qmm_{}_k{}_n{}_g{}{act}_{}", gemm.format.name().replace('-', "_"), gemm.k, gemm.n, gemm.group_size, variant.name())
}

/// The exported symbol of `gemm`'s kernel in `variant` with `tiling`: [`symbol`] when `tiling` is
/// the target's default (`default`), else with the blocking appended (`..._gemv_v1r4p16`), so
/// one library can hold a product's kernels in several blockings.
pub fn symbol_for(gemm: &QuantGemm, variant: Variant, tiling: CpuTiling, default: CpuTiling) -> String {
    let base = symbol(gemm, variant);
    if tiling == default || !tiling_applies(gemm) {
        base
    } else {
        format!("{base}_v{}r{}p{}", tiling.gemv_rows, tiling.gemm_rows, tiling.panel_tiles)
    }
}

/// The blocking fpx's heuristic uses on `target` (2 and 3 rows on AVX2, 4 and 6 on AVX-512,
/// panels of 8 tiles): what [`cpu_code`] generates and what tuning starts from.
pub fn default_tiling(target: CpuTarget) -> Result<CpuTiling, LlvmError> {
    Ok(target::machine(target)?.isa.tiling())
}

/// The CPU features `target`'s code requires (`is_x86_feature_detected!` names): what a loader
/// checks before it runs the code.
pub fn target_features(target: CpuTarget) -> Result<Vec<String>, LlvmError> {
    Ok(target::machine(target)?.required_features)
}

/// Whether a [`CpuTiling`] changes `gemm`'s kernels: the loops over `f32` rows take it (FP8
/// activations reach the kernels as rounded `f32` rows); the int8-activation loops have fixed
/// blocking (and keep the default symbol).
pub fn tiling_applies(gemm: &QuantGemm) -> bool {
    gemm.activations.kernels_read_f32()
}

/// The loop a kernel runs for a given M, as far as its speed goes: kernels of one product with
/// equal loop shapes for M run the same code, so the tuner times only one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoopShape {
    /// Weights dequantized in registers and streamed once for blocks of `rows` rows.
    Direct {
        /// Rows per register block.
        rows: u32,
    },
    /// Panels of `tiles` dequantized tiles reused by blocks of `rows` rows.
    Panel {
        /// Rows per register block.
        rows: u32,
        /// Tiles per panel.
        tiles: u32,
    },
    /// The int8-activation loops (fixed blocking; both variants run the same code).
    Int8,
}

/// Which loop `gemm`'s kernel in `variant` with `tiling` runs for `m` rows (the dispatch each
/// exported kernel makes at run time; see [`codegen`]'s `kernel`).
pub fn loop_shape(gemm: &QuantGemm, variant: Variant, tiling: CpuTiling, m: usize) -> LoopShape {
    if !tiling_applies(gemm) {
        return LoopShape::Int8;
    }
    let aligned_groups = gemm.groups() == 1 || gemm.group_size.is_multiple_of(fpx_quant::layout::TILE_K);
    if variant == Variant::Gemv && aligned_groups && m <= tiling.gemv_rows as usize {
        LoopShape::Direct { rows: tiling.gemv_rows }
    } else {
        LoopShape::Panel { rows: tiling.gemm_rows, tiles: tiling.panel_tiles }
    }
}

/// One row of a chosen kernel table: the loop and blocking that serve a range of M, and the
/// most threads N is split across (0 = all). What the auto-tuner records per M bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CpuChoice {
    /// The loop.
    pub variant: Variant,
    /// The blocking (ignored where [`tiling_applies`] is false).
    pub tiling: CpuTiling,
    /// Most threads; 0 = every thread of the runtime's pool.
    pub threads: u32,
    /// Whether the auto-tuner chose this (recorded in the artifact; else the heuristic did).
    pub tuned: bool,
}

/// Checks that a kernel can be generated for `gemm`: a valid product
/// ([`QuantGemm::validate`]: dimensions, int8 formats and groups), a format the code generator
/// handles, and a packed weight the kernels' offsets can address. [`compile_cpu`] checks every
/// product; [`cpu_code`] names the node of the one at fault.
pub fn check(gemm: &QuantGemm) -> Result<(), LlvmError> {
    let bad = |message: String| LlvmError::BadGemm { gemm: symbol(gemm, Variant::Gemv), message };
    gemm.validate().map_err(|e| bad(e.to_string()))?;
    if !codegen::supports(gemm.format) {
        return Err(LlvmError::UnsupportedFormat(gemm.format));
    }
    // Offsets inside the kernels are computed in 64 bits, but lane masks and the row stride of
    // X use 32-bit arithmetic in places: QuantGemm keeps K and N within 2^30; the packed weight
    // must stay well inside 64-bit offsets too.
    if gemm.packed_shape().total_bytes() >= 1usize << 40 {
        return Err(bad("the packed weight is too large".to_string()));
    }
    Ok(())
}

/// The heuristic's choices with the target's default blocking: GEMV up to [`GEMV_MAX_M`] rows,
/// GEMM above, on every thread.
pub fn default_choices(tiling: CpuTiling) -> KernelTable<CpuChoice> {
    let choice = |variant| CpuChoice { variant, tiling, threads: 0, tuned: false };
    KernelTable::new(vec![(GEMV_MAX_M, choice(Variant::Gemv)), (0, choice(Variant::Gemm))]).expect("ascending, ends unbounded")
}

/// The artifact's entry for `choice` of `gemm` (`default` = the target's blocking).
fn cpu_kernel(gemm: &QuantGemm, choice: CpuChoice, default: CpuTiling) -> CpuKernel {
    let tiling = if tiling_applies(gemm) { choice.tiling } else { default };
    CpuKernel {
        symbol: symbol_for(gemm, choice.variant, tiling, default),
        column_split: TILE_N as u32,
        activations: gemm.activations,
        threads: choice.threads,
        config: Some(CpuConfig { variant: choice.variant, tiling, tuned: choice.tuned }),
    }
}

/// Kernels compiled for one CPU target, linked into one shared library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledCpu {
    /// The LLVM CPU name the code was compiled for (e.g. `x86-64-v3`, or the host's `znver3`).
    pub target: String,
    /// The CPU features the code requires, as `is_x86_feature_detected!` names (e.g. `avx2`).
    pub features: Vec<String>,
    /// The shared library (ELF `.so`) holding every kernel.
    pub shared_object: Vec<u8>,
    /// Every kernel in the library: its product, variant and exported symbol.
    pub symbols: Vec<(QuantGemm, Variant, String)>,
}

/// Generates every kernel of `gemms` (duplicates removed) in both variants for `target`, in
/// one module optimized at O3, emits one object and links it with `cc -shared`. The same
/// products and target give byte-identical output (they are sorted first).
pub fn compile_cpu(gemms: &[QuantGemm], target: CpuTarget) -> Result<CompiledCpu, LlvmError> {
    let tiling = default_tiling(target)?;
    let kernels: Vec<(QuantGemm, CpuTiling)> = gemms.iter().map(|g| (*g, tiling)).collect();
    compile_cpu_tiled(&kernels, target)
}

/// [`compile_cpu`] for products in given blockings: every `(product, tiling)` pair (duplicates
/// removed; the tiling of an int8-activation product is the target's default) in both variants,
/// exported as [`symbol_for`] names. A tiling outside `1..=`[`CpuTiling::MAX`] is an error.
pub fn compile_cpu_tiled(kernels: &[(QuantGemm, CpuTiling)], target: CpuTarget) -> Result<CompiledCpu, LlvmError> {
    let each: Vec<(QuantGemm, Variant, CpuTiling)> = kernels.iter().flat_map(|&(g, t)| Variant::ALL.map(|v| (g, v, t))).collect();
    compile_cpu_kernels(&each, target)
}

/// The most general form of [`compile_cpu`]: exactly the listed kernels (product, variant,
/// blocking; duplicates removed, an int8-activation product's blocking the target's default),
/// exported as [`symbol_for`] names. The auto-tuner compiles only the variant a blocking
/// changes.
pub fn compile_cpu_kernels(kernels: &[(QuantGemm, Variant, CpuTiling)], target: CpuTarget) -> Result<CompiledCpu, LlvmError> {
    let machine = target::machine(target)?;
    let default = machine.isa.tiling();
    let mut kernels: Vec<(QuantGemm, Variant, CpuTiling)> =
        kernels.iter().map(|&(g, v, t)| (g, v, if tiling_applies(&g) { t } else { default })).collect();
    kernels.sort();
    kernels.dedup();
    for (g, v, t) in &kernels {
        check(g)?;
        if !t.is_valid() {
            let message = format!("the blocking {t} is outside 1..={}", CpuTiling::MAX);
            return Err(LlvmError::BadGemm { gemm: symbol(g, *v), message });
        }
    }
    let object = codegen::compile_object(&kernels, default, &machine)?;
    let shared_object = link::link_shared(&object)?;
    let symbols = kernels.iter().map(|(g, v, t)| (*g, *v, symbol_for(g, *v, *t, default))).collect();
    Ok(CompiledCpu { target: machine.cpu.clone(), features: machine.required_features.clone(), shared_object, symbols })
}

/// The CPU backend: the code for a model's quantized products `gemms` (node name, product) on
/// `target`, as the artifact stores it — one shared object and, per node, its kernel table.
/// An error names the node whose kernel cannot be generated.
pub fn cpu_code(gemms: &[(String, QuantGemm)], target: CpuTarget) -> Result<CpuCode, LlvmError> {
    let unplanned: Vec<(String, QuantGemm, Option<KernelTable<CpuChoice>>)> = gemms.iter().map(|(n, g)| (n.clone(), *g, None)).collect();
    cpu_code_with(&unplanned, target)
}

/// [`cpu_code`] with chosen kernel tables: a node with `Some(table)` gets exactly those loops,
/// blockings and thread counts (each row recorded as tuned or not, as it says), a node with
/// `None` the heuristic's ([`default_choices`]).
pub fn cpu_code_with(gemms: &[(String, QuantGemm, Option<KernelTable<CpuChoice>>)], target: CpuTarget) -> Result<CpuCode, LlvmError> {
    let default = default_tiling(target)?;
    let mut kernels = Vec::new();
    let mut tables = Vec::with_capacity(gemms.len());
    for (node, g, planned) in gemms {
        let at_node = |e: LlvmError| LlvmError::Node { node: node.clone(), source: Box::new(e) };
        check(g).map_err(at_node)?;
        let choices = planned.clone().unwrap_or_else(|| default_choices(default));
        for (_, c) in choices.rows() {
            if tiling_applies(g) && !c.tiling.is_valid() {
                return Err(at_node(LlvmError::BadGemm {
                    gemm: symbol(g, c.variant),
                    message: format!("the blocking {} is outside 1..={}", c.tiling, CpuTiling::MAX),
                }));
            }
            kernels.push((*g, c.variant, c.tiling));
        }
        let table = choices.map(|c| cpu_kernel(g, *c, default));
        tables.push(NodeKernels { node: node.clone(), table });
    }
    // Exactly the kernels the tables name (for the heuristic's, both variants).
    let compiled = compile_cpu_kernels(&kernels, target)?;
    Ok(CpuCode { target: compiled.target, features: compiled.features, shared_object: compiled.shared_object, kernels: tables })
}

/// The textual LLVM IR (before optimization) and the assembly (after O3) of `gemms`' kernels
/// for `target`: for inspecting the generated code.
pub fn emit_ir_and_asm(gemms: &[QuantGemm], target: CpuTarget) -> Result<(String, String), LlvmError> {
    for g in gemms {
        check(g)?;
    }
    let machine = target::machine(target)?;
    codegen::ir_and_asm(gemms, &machine)
}
