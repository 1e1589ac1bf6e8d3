//! What an artifact holds, shared by the reader and the writer: the file's constants, the
//! section kinds, and the code entries (CPU shared objects, PTX modules) with each quantized
//! product's kernel table, converted to and from their manifest messages.

use crate::manifest as pb;
use fpx_ir::Graph;
use fpx_quant::act8::Activations;
use fpx_quant::{Format, KernelTable};
use std::collections::BTreeMap;
use std::fmt;

/// The format version this crate writes, and the only one it reads. Version 2 added kernels
/// that take int8 activations; version 3 replaced the fixed GEMV/GEMM kernel pair by a kernel
/// table per node (`CpuGemm`: max M, symbol, column split) and the GPU tile configuration's text
/// by a message (`GpuTiles`). A reader must refuse every other version: the same bytes mean
/// different things in them.
pub const FORMAT_VERSION: u32 = 3;

/// The first 8 bytes of every artifact.
pub const MAGIC: [u8; 8] = *b"FPX\0ART\0";

/// Length of the fixed header (magic, version, manifest length).
pub const HEADER_LEN: u64 = 16;

/// Every section starts at a multiple of this many bytes from the start of the file.
pub const SECTION_ALIGN: u64 = 64;

/// Rounds `n` up to the next multiple of [`SECTION_ALIGN`].
pub(crate) fn align_up(n: u64) -> Option<u64> {
    n.checked_add(SECTION_ALIGN - 1).map(|x| x / SECTION_ALIGN * SECTION_ALIGN)
}

/// Calls the macro `$callback` with every CPU feature an artifact may record, as
/// `"llvm name" => "recorded name"` pairs; the recorded names are `is_x86_feature_detected!`'s.
/// The one table of CPU feature names: fpx-llvm maps the features LLVM reports through it, and
/// the runtime detects the recorded ones (a macro, because detection takes literal names).
#[macro_export]
macro_rules! cpu_features {
    ($callback:ident) => {
        $callback! {
            "sse3" => "sse3",
            "ssse3" => "ssse3",
            "sse4.1" => "sse4.1",
            "sse4.2" => "sse4.2",
            "sse4a" => "sse4a",
            "popcnt" => "popcnt",
            "avx" => "avx",
            "avx2" => "avx2",
            "fma" => "fma",
            "f16c" => "f16c",
            "bmi" => "bmi1",
            "bmi2" => "bmi2",
            "lzcnt" => "lzcnt",
            "movbe" => "movbe",
            "adx" => "adx",
            "aes" => "aes",
            "pclmul" => "pclmulqdq",
            "sha" => "sha",
            "gfni" => "gfni",
            "vaes" => "vaes",
            "vpclmulqdq" => "vpclmulqdq",
            "avx512f" => "avx512f",
            "avx512bw" => "avx512bw",
            "avx512cd" => "avx512cd",
            "avx512dq" => "avx512dq",
            "avx512vl" => "avx512vl",
            "avx512vbmi" => "avx512vbmi",
            "avx512vbmi2" => "avx512vbmi2",
            "avx512vnni" => "avx512vnni",
            "avx512bitalg" => "avx512bitalg",
            "avx512vpopcntdq" => "avx512vpopcntdq",
            "avx512ifma" => "avx512ifma",
            "avx512bf16" => "avx512bf16",
            "avx512fp16" => "avx512fp16",
        }
    };
}

/// The CPU features in `features` (recorded names, [`cpu_features!`]) this machine lacks; unknown
/// names count as missing. The runtime refuses code that needs any; `fpx inspect` says whether
/// an artifact's code runs here.
pub fn missing_cpu_features(features: &[String]) -> Vec<String> {
    features.iter().filter(|f| !has_feature(f)).cloned().collect()
}

/// Whether this CPU has the recorded feature `f` (the names of `fpx_artifact::cpu_features!`;
/// any other name counts as missing).
#[cfg(target_arch = "x86_64")]
fn has_feature(f: &str) -> bool {
    macro_rules! detect {
        ($($llvm:literal => $name:tt),* $(,)?) => {
            match f {
                $($name => std::arch::is_x86_feature_detected!($name),)*
                _ => false,
            }
        };
    }
    crate::cpu_features!(detect)
}

#[cfg(not(target_arch = "x86_64"))]
fn has_feature(_: &str) -> bool {
    false
}

/// What a section holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SectionKind {
    /// The data of one constant value (raw little-endian elements).
    Constant,
    /// A CPU shared object.
    CpuSharedObject,
    /// PTX for one GPU architecture.
    Ptx,
    /// Anything else.
    Other,
}

impl SectionKind {
    /// The kind of a section-table entry, if it is a valid one.
    pub(crate) fn from_pb(kind: i32) -> Option<SectionKind> {
        match pb::SectionKind::try_from(kind) {
            Ok(pb::SectionKind::Constant) => Some(SectionKind::Constant),
            Ok(pb::SectionKind::CpuSharedObject) => Some(SectionKind::CpuSharedObject),
            Ok(pb::SectionKind::Ptx) => Some(SectionKind::Ptx),
            Ok(pb::SectionKind::Other) => Some(SectionKind::Other),
            Ok(pb::SectionKind::Unspecified) | Err(_) => None,
        }
    }
}

impl fmt::Display for SectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SectionKind::Constant => "constant",
            SectionKind::CpuSharedObject => "cpu shared object",
            SectionKind::Ptx => "ptx",
            SectionKind::Other => "other",
        })
    }
}

/// One entry of the section table, as `fpx inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionInfo {
    /// A name for people: the constant's value name, or `cpu:<target>`.
    pub name: String,
    /// What the section holds.
    pub kind: SectionKind,
    /// Byte offset from the start of the file (a multiple of 64).
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// CRC-32 (IEEE) of the section's bytes.
    pub checksum: u32,
}

impl SectionInfo {
    /// The table entry of a manifest section (an invalid kind reads as [`SectionKind::Other`];
    /// the reader refuses it before).
    pub(crate) fn from_pb(s: &pb::Section) -> SectionInfo {
        SectionInfo {
            name: s.name.clone(),
            kind: SectionKind::from_pb(s.kind).unwrap_or(SectionKind::Other),
            offset: s.offset,
            length: s.length,
            checksum: s.crc32,
        }
    }

    /// The section's bytes, if they lie inside `file`.
    pub(crate) fn bytes_in<'a>(&self, file: &'a [u8]) -> Option<&'a [u8]> {
        let start = usize::try_from(self.offset).ok()?;
        let end = start.checked_add(usize::try_from(self.length).ok()?)?;
        file.get(start..end)
    }
}

/// One quantized product's kernels: the node they serve and which entry runs for which M.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeKernels<E> {
    /// The `fpx:QuantMatMul` node's name.
    pub node: String,
    /// Its kernels by M.
    pub table: KernelTable<E>,
}

/// One CPU kernel entry point (fpx-llvm's C ABI) and how the runtime calls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuKernel {
    /// The exported symbol.
    pub symbol: String,
    /// Threads split N at multiples of this (a positive multiple of the layout's 16-row tile).
    pub column_split: u32,
    /// What the kernel multiplies the weights with: `f32` rows or an int8 activation buffer.
    pub activations: Activations,
    /// Most threads the runtime splits N across; 0 = every thread of its pool. One thread can
    /// beat several on a small product, where waking the pool costs more than the work.
    pub threads: u32,
    /// How the kernel was generated and who chose it (`None` in artifacts written before this
    /// was recorded).
    pub config: Option<CpuConfig>,
}

/// Which loop structure a CPU kernel uses; both compute the same result for any M.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// Weights streamed once and dequantized in registers (small M).
    Gemv,
    /// Tiles dequantized once into an L1 panel reused over blocks of rows (larger M).
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

/// The register and cache blocking of the `f32`-activation CPU kernels: what the auto-tuner
/// searches besides the loop and the thread count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct CpuTiling {
    /// Rows of X per register block in the GEMV loop (M up to this streams the weights from
    /// registers; larger M takes the panel loop).
    pub gemv_rows: u32,
    /// Rows of X per register block in the panel loop.
    pub gemm_rows: u32,
    /// Tiles (of 32 K, 2 KiB of `f32` each) per dequantized panel.
    pub panel_tiles: u32,
}

impl CpuTiling {
    /// The largest value of each parameter a kernel may be generated with (register blocks
    /// beyond this spill; a panel beyond this leaves L1).
    pub const MAX: CpuTiling = CpuTiling { gemv_rows: 8, gemm_rows: 12, panel_tiles: 32 };

    /// Whether every parameter is between 1 and [`CpuTiling::MAX`].
    pub fn is_valid(&self) -> bool {
        let within = |v: u32, max: u32| (1..=max).contains(&v);
        within(self.gemv_rows, Self::MAX.gemv_rows)
            && within(self.gemm_rows, Self::MAX.gemm_rows)
            && within(self.panel_tiles, Self::MAX.panel_tiles)
    }
}

impl fmt::Display for CpuTiling {
    /// `gemv rows 2, gemm rows 3, panel 8 tiles` as `v2 r3 p8`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{} r{} p{}", self.gemv_rows, self.gemm_rows, self.panel_tiles)
    }
}

/// How one CPU kernel entry was generated: its loop, its blocking, and whether the auto-tuner
/// chose them (else fpx's heuristic did).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CpuConfig {
    /// The loop.
    pub variant: Variant,
    /// The blocking.
    pub tiling: CpuTiling,
    /// Chosen by the auto-tuner.
    pub tuned: bool,
}

/// Native CPU code for one target: a shared object and the kernels it exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuCode {
    /// The CPU the code was generated for (as LLVM names it, e.g. `x86-64-v3`).
    pub target: String,
    /// CPU features the code requires (e.g. `avx2`, `fma`).
    pub features: Vec<String>,
    /// The shared object's bytes.
    pub shared_object: Vec<u8>,
    /// Per quantized product, its kernels by M.
    pub kernels: Vec<NodeKernels<CpuKernel>>,
}

/// The activation (and output) type of a GPU GEMM kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpuActivations {
    /// FP16.
    F16,
    /// BF16.
    Bf16,
}

/// The tile configuration a GPU GEMM kernel was instantiated with (fpx-cuda's `GemmConfig`,
/// which converts to and from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GpuTiles {
    /// Weight format.
    pub format: Format,
    /// Activation and output type.
    pub activations: GpuActivations,
    /// Output channels.
    pub n: u64,
    /// Reduction length.
    pub k: u64,
    /// Tokens per block.
    pub m_tile: u32,
    /// Warps per block, stacked along N.
    pub warps: u32,
    /// 16-channel tiles per warp.
    pub warp_ntiles: u32,
    /// 32-K tiles per pipeline stage.
    pub k_tiles: u32,
    /// `cp.async` pipeline stages.
    pub stages: u32,
    /// Blocks sharing one output tile's K range.
    pub split_k: u32,
}

/// One GPU GEMM kernel: where it is and how it was tiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuKernel {
    /// The module holding the kernels.
    pub module: String,
    /// The GEMM entry point.
    pub kernel: String,
    /// Legacy split-K reduction entry point: `None` from this fpx on (split-K finishes inside the
    /// GEMM kernel); `Some` marks GPU code from an older fpx, which the GPU runtime refuses.
    pub reduce: Option<String>,
    /// The tile configuration.
    pub tiles: GpuTiles,
    /// Chosen by the auto-tuner (else fpx's heuristic did).
    pub tuned: bool,
}

/// GPU code for one architecture.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PtxCode {
    /// The architecture, e.g. `sm_90`.
    pub arch: String,
    /// The SM count the tile heuristic assumed when choosing configs.
    pub sm_count: u32,
    /// PTX modules (names unique within the architecture).
    pub modules: Vec<PtxModule>,
    /// Per quantized product, its GEMM kernels by M.
    pub kernels: Vec<NodeKernels<GpuKernel>>,
}

/// One PTX module.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PtxModule {
    /// Its name (unique within its architecture).
    pub name: String,
    /// The PTX text.
    pub ptx: String,
    /// Its kernel entry points.
    pub entries: Vec<String>,
}

/// Everything an artifact holds.
#[derive(Debug, Clone, Default)]
pub struct ArtifactContents {
    /// The compiled graph (constants included).
    pub graph: Graph,
    /// Native CPU code, one entry per target.
    pub cpu: Vec<CpuCode>,
    /// GPU code, one entry per architecture.
    pub ptx: Vec<PtxCode>,
    /// Free-form facts (e.g. `weights` → `fp6-auto`), stored sorted by key.
    pub metadata: BTreeMap<String, String>,
}

/// What [`crate::write`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteSummary {
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Number of sections in it.
    pub sections: usize,
}

/// The producer string written into every artifact.
pub(crate) fn producer() -> String {
    format!("fpx {}", env!("CARGO_PKG_VERSION"))
}

// ---------------------------------------------------------------------------------------------
// Kernel tables ⇄ their manifest rows. Decoding checks only what the types need; the rules
// that involve the rest of the file (sections, modules, unique nodes) are in `validate.rs`.

/// `(node, max_m, entry)` rows grouped per node, in first-appearance order, each group checked
/// to be a [`KernelTable`] (ascending `max_m`, the last 0) and listed in one run.
pub(crate) fn group_rows<E>(rows: impl IntoIterator<Item = (String, u64, E)>) -> Result<Vec<NodeKernels<E>>, String> {
    let mut groups: Vec<(String, Vec<(u64, E)>)> = Vec::new();
    for (node, max_m, e) in rows {
        match groups.last_mut() {
            Some((last, list)) if *last == node => list.push((max_m, e)),
            _ => {
                if groups.iter().any(|(n, _)| *n == node) {
                    return Err(format!("the kernels of node '{node}' are not listed together"));
                }
                groups.push((node, vec![(max_m, e)]));
            }
        }
    }
    groups
        .into_iter()
        .map(|(node, rows)| {
            let table = KernelTable::new(rows).map_err(|e| format!("node '{node}': {e}"))?;
            Ok(NodeKernels { node, table })
        })
        .collect()
}

/// The manifest rows of `kernels`, node by node.
fn rows<E, R>(kernels: &[NodeKernels<E>], mut row: impl FnMut(&str, u64, &E) -> R) -> Vec<R> {
    let mut out = Vec::new();
    for k in kernels {
        for (max_m, e) in k.table.rows() {
            out.push(row(&k.node, *max_m, e));
        }
    }
    out
}

impl CpuKernel {
    fn to_pb(&self, node: &str, max_m: u64) -> pb::CpuGemm {
        let activations = match self.activations {
            Activations::F32 => pb::Activations::F32,
            Activations::Int8 => pb::Activations::Int8,
            Activations::Fp8E4M3 => pb::Activations::Fp8E4m3,
            Activations::Fp8E5M2 => pb::Activations::Fp8E5m2,
        };
        pb::CpuGemm {
            node: node.to_string(),
            max_m,
            symbol: self.symbol.clone(),
            column_split: self.column_split,
            activations: activations as i32,
            threads: self.threads,
            config: self.config.map(|c| pb::CpuConfig {
                variant: match c.variant {
                    Variant::Gemv => 0,
                    Variant::Gemm => 1,
                },
                gemv_rows: c.tiling.gemv_rows,
                gemm_rows: c.tiling.gemm_rows,
                panel_tiles: c.tiling.panel_tiles,
                tuned: c.tuned,
            }),
        }
    }

    fn from_pb(g: &pb::CpuGemm) -> Result<CpuKernel, String> {
        let activations = match pb::Activations::try_from(g.activations) {
            Ok(pb::Activations::F32) => Activations::F32,
            Ok(pb::Activations::Int8) => Activations::Int8,
            Ok(pb::Activations::Fp8E4m3) => Activations::Fp8E4M3,
            Ok(pb::Activations::Fp8E5m2) => Activations::Fp8E5M2,
            Err(_) => return Err(format!("node '{}': unknown activations code {}", g.node, g.activations)),
        };
        let config = match &g.config {
            None => None,
            Some(c) => {
                let variant = match c.variant {
                    0 => Variant::Gemv,
                    1 => Variant::Gemm,
                    v => return Err(format!("node '{}': unknown CPU kernel variant {v}", g.node)),
                };
                let tiling = CpuTiling { gemv_rows: c.gemv_rows, gemm_rows: c.gemm_rows, panel_tiles: c.panel_tiles };
                Some(CpuConfig { variant, tiling, tuned: c.tuned })
            }
        };
        Ok(CpuKernel { symbol: g.symbol.clone(), column_split: g.column_split, activations, threads: g.threads, config })
    }
}

/// The manifest's CPU kernel rows of `kernels`.
pub(crate) fn cpu_rows(kernels: &[NodeKernels<CpuKernel>]) -> Vec<pb::CpuGemm> {
    rows(kernels, |node, m, k| k.to_pb(node, m))
}

/// The CPU kernel tables of a manifest entry.
pub(crate) fn cpu_tables(c: &pb::CpuCode) -> Result<Vec<NodeKernels<CpuKernel>>, String> {
    let rows = c.gemms.iter().map(|g| Ok((g.node.clone(), g.max_m, CpuKernel::from_pb(g)?))).collect::<Result<Vec<_>, String>>()?;
    group_rows(rows)
}

impl GpuTiles {
    fn to_pb(self) -> pb::GpuTiles {
        let activations = match self.activations {
            GpuActivations::F16 => pb::GpuActivations::F16,
            GpuActivations::Bf16 => pb::GpuActivations::Bf16,
        };
        pb::GpuTiles {
            format: self.format.name().to_string(),
            activations: activations as i32,
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

    fn from_pb(t: &pb::GpuTiles) -> Result<GpuTiles, String> {
        let format = Format::parse(&t.format).ok_or_else(|| format!("unknown weight format '{}'", t.format))?;
        let activations = match pb::GpuActivations::try_from(t.activations) {
            Ok(pb::GpuActivations::F16) => GpuActivations::F16,
            Ok(pb::GpuActivations::Bf16) => GpuActivations::Bf16,
            Err(_) => return Err(format!("unknown GPU activations code {}", t.activations)),
        };
        Ok(GpuTiles {
            format,
            activations,
            n: t.n,
            k: t.k,
            m_tile: t.m_tile,
            warps: t.warps,
            warp_ntiles: t.warp_ntiles,
            k_tiles: t.k_tiles,
            stages: t.stages,
            split_k: t.split_k,
        })
    }
}

/// The manifest's GPU GEMM rows of `kernels`.
pub(crate) fn gpu_rows(kernels: &[NodeKernels<GpuKernel>]) -> Vec<pb::GpuGemm> {
    rows(kernels, |node, max_m, g| pb::GpuGemm {
        node: node.to_string(),
        max_m,
        module: g.module.clone(),
        kernel: g.kernel.clone(),
        reduce: g.reduce.clone().unwrap_or_default(),
        tiles: Some(g.tiles.to_pb()),
        tuned: g.tuned,
    })
}

/// The GPU kernel tables of a manifest entry.
pub(crate) fn gpu_tables(p: &pb::PtxCode) -> Result<Vec<NodeKernels<GpuKernel>>, String> {
    let rows = p
        .gemms
        .iter()
        .map(|g| {
            let tiles = g.tiles.as_ref().ok_or_else(|| format!("node '{}' has a GEMM without its tile configuration", g.node))?;
            let tiles = GpuTiles::from_pb(tiles).map_err(|e| format!("node '{}': {e}", g.node))?;
            let reduce = (!g.reduce.is_empty()).then(|| g.reduce.clone());
            Ok((g.node.clone(), g.max_m, GpuKernel { module: g.module.clone(), kernel: g.kernel.clone(), reduce, tiles, tuned: g.tuned }))
        })
        .collect::<Result<Vec<_>, String>>()?;
    group_rows(rows)
}
