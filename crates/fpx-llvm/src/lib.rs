//! fpx-llvm: CPU kernels for fpx's quantized matrix product (`fpx:QuantMatMul`), generated with
//! LLVM through inkwell, emitted as one object and linked into a shared library.
//!
//! Each kernel is specialized to one [`KernelSpec`] (format, K, N, group size): trip counts,
//! offsets and the dequantization bit tricks are compile-time constants. [`compile_cpu`] builds
//! one module holding every requested kernel in both [`Variant`]s, runs LLVM's O3 pipeline for
//! a [`CpuTarget`], emits an object and links it with `cc -shared`; the caller stores the
//! returned bytes (the artifact) and a loader `dlopen`s them after checking that the host has
//! every feature in [`CompiledCpu::features`] (fpx-runtime's `missing_cpu_features`).
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
//! Kernels of a spec with [`Activations::Int8`] (symbols with `_a8`) have the same signature,
//! but `x` points to an [`fpx_quant::act8::Int8Activations`] buffer for the `m` rows (scales,
//! corrections, permuted int8 codes) instead of `f32` rows.
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

use std::fmt;

use fpx_quant::Format;

pub use fpx_quant::act8::Activations;
pub use target::{host_cpu, CpuTarget};

/// Why kernels could not be generated, compiled or linked.
#[derive(Debug, thiserror::Error)]
pub enum LlvmError {
    /// The format has no CPU kernel.
    #[error("fpx-llvm has no CPU kernel for weight format {0}")]
    UnsupportedFormat(Format),
    /// A spec is malformed (an empty dimension, or too large for the kernels' 32-bit offsets).
    #[error("bad kernel spec {spec}: {message}")]
    BadSpec {
        /// The offending spec, as its Gemv symbol.
        spec: String,
        /// What is wrong with it.
        message: String,
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

/// Whether CPU kernels exist for `format` with `activations`: always for `f32`; for int8, the
/// formats whose stored values are integers of at most 64 units
/// ([`fpx_quant::act8::int8_units`]) and whose codes the byte decoder handles (4 and 6 bits):
/// FP6 e2m3, FP4 e2m1 and INT4.
pub fn has_kernel(format: Format, activations: Activations) -> bool {
    match activations {
        Activations::F32 => codegen::supports(format),
        Activations::Int8 => matches!(format.bits(), 4 | 6) && fpx_quant::act8::int8_units(format).is_some(),
    }
}

/// The compile-time shape of one quantized matrix product: what a kernel is specialized to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelSpec {
    /// Code format of the packed weight.
    pub format: Format,
    /// Reduction length (columns of X, rows of W).
    pub k: usize,
    /// Output channels (columns of W and Y).
    pub n: usize,
    /// Rows of K per scale group; 0 = one group (per output channel).
    pub group_size: usize,
    /// What the weights multiply.
    pub activations: Activations,
}

/// Which loop structure a kernel uses; both compute the same result for any `m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    /// For `m` in 1..=8: weights streamed once, dequantized in registers.
    Gemv,
    /// For larger `m`: tiles dequantized once into an L1 panel reused over blocks of rows.
    Gemm,
}

impl Variant {
    /// Both variants, in symbol order.
    pub const ALL: [Variant; 2] = [Variant::Gemv, Variant::Gemm];

    /// The symbol suffix: `gemv` or `gemm`.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Gemv => "gemv",
            Variant::Gemm => "gemm",
        }
    }
}

impl fmt::Display for Variant {
    /// Writes [`Variant::name`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl KernelSpec {
    /// The exported symbol of this spec's kernel, e.g. `fpx_qmm_fp6_e3m2_k384_n1536_g0_gemv`
    /// (int8 activations add `_a8` before the variant).
    pub fn symbol(&self, variant: Variant) -> String {
        let act = if self.activations == Activations::Int8 { "_a8" } else { "" };
        format!("fpx_qmm_{}_k{}_n{}_g{}{act}_{}", self.format.name().replace('-', "_"), self.k, self.n, self.group_size, variant.name())
    }

    /// The number of scale groups along K: `ceil(k / group_size)`, or 1 per channel.
    pub fn groups(&self) -> usize {
        if self.group_size == 0 {
            1
        } else {
            self.k.div_ceil(self.group_size)
        }
    }

    /// A sort key that orders specs deterministically.
    fn key(&self) -> (&'static str, usize, usize, usize, Activations) {
        (self.format.name(), self.k, self.n, self.group_size, self.activations)
    }

    /// Checks that a kernel can be generated for this spec ([`compile_cpu`] does it for every
    /// spec; callers that know which node a spec serves check first, to name it).
    pub fn validate(&self) -> Result<(), LlvmError> {
        let bad = |message: String| LlvmError::BadSpec { spec: self.symbol(Variant::Gemv), message };
        if self.k == 0 || self.n == 0 {
            return Err(bad(format!("K = {} and N = {} must be positive", self.k, self.n)));
        }
        if !codegen::supports(self.format) {
            return Err(LlvmError::UnsupportedFormat(self.format));
        }
        if self.activations == Activations::Int8 {
            if !has_kernel(self.format, self.activations) {
                return Err(bad(format!("{} weights have no int8-activation CPU kernel (fp6-e2m3, fp4-e2m1 and int4 have)", self.format)));
            }
            if !self.group_size.is_multiple_of(32) {
                return Err(bad(format!(
                    "int8-activation kernels need per-channel scales or groups that are a multiple of 32, not {}",
                    self.group_size
                )));
            }
        }
        // Offsets inside the kernels are computed in 64 bits, but lane masks and the row
        // stride of X use 32-bit arithmetic in places: keep every dimension well inside i32.
        let limit = 1usize << 30;
        let packed = fpx_quant::layout::PackedShape::new(self.n, self.k, self.format.bits()).total_bytes();
        if self.k >= limit || self.n >= limit || packed >= 1usize << 40 {
            return Err(bad("dimensions too large".to_string()));
        }
        Ok(())
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
    /// Every kernel in the library: its spec, variant and exported symbol.
    pub symbols: Vec<(KernelSpec, Variant, String)>,
}

/// Generates every kernel of `specs` (duplicates removed) in both variants for `target`, in
/// one module optimized at O3, emits one object and links it with `cc -shared`. The same specs
/// and target give byte-identical output (the specs are sorted first).
pub fn compile_cpu(specs: &[KernelSpec], target: CpuTarget) -> Result<CompiledCpu, LlvmError> {
    let mut specs: Vec<KernelSpec> = specs.to_vec();
    specs.sort_by(|a, b| a.key().cmp(&b.key()));
    specs.dedup();
    for s in &specs {
        s.validate()?;
    }
    let machine = target::machine(target)?;
    let object = codegen::compile_object(&specs, &machine)?;
    let shared_object = link::link_shared(&object)?;
    let symbols = specs.iter().flat_map(|s| Variant::ALL.map(|v| (*s, v, s.symbol(v)))).collect();
    Ok(CompiledCpu { target: machine.cpu.clone(), features: machine.required_features.clone(), shared_object, symbols })
}

/// The textual LLVM IR (before optimization) and the assembly (after O3) of `specs`' kernels
/// for `target`: for inspecting the generated code.
pub fn emit_ir_and_asm(specs: &[KernelSpec], target: CpuTarget) -> Result<(String, String), LlvmError> {
    for s in specs {
        s.validate()?;
    }
    let machine = target::machine(target)?;
    codegen::ir_and_asm(specs, &machine)
}
