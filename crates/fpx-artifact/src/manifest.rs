//! The manifest's protobuf messages, declared with `prost` derives (no `protoc` at build time).
//!
//! The same schema is written out in `artifact.proto` at the crate root; a test keeps the two
//! in sync (every message, field, tag, oneof and enum value must match). Write these
//! declarations in the style used here — one `#[prost(..., tag = "N")]` line right above each
//! field or oneof variant, oneofs in a module named after their message — or that test fails.

use std::collections::BTreeMap;

/// The whole manifest: what the file holds and where.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Manifest {
    /// Who wrote the file: `fpx <version>`.
    #[prost(string, tag = "1")]
    pub producer: String,
    /// The compiled graph.
    #[prost(message, optional, tag = "2")]
    pub graph: Option<Graph>,
    /// The section table, in file order.
    #[prost(message, repeated, tag = "3")]
    pub sections: Vec<Section>,
    /// Native CPU code, one entry per target.
    #[prost(message, repeated, tag = "4")]
    pub cpu_code: Vec<CpuCode>,
    /// PTX, one entry per GPU architecture.
    #[prost(message, repeated, tag = "5")]
    pub ptx_code: Vec<PtxCode>,
    /// Free-form key → value facts (e.g. the weight scheme).
    #[prost(btree_map = "string, string", tag = "6")]
    pub metadata: BTreeMap<String, String>,
}

/// A graph: its values (indexed by position), nodes in topological order, inputs and outputs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Graph {
    /// Graph name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Opset imports, sorted by domain.
    #[prost(message, repeated, tag = "2")]
    pub opset_imports: Vec<OpsetImport>,
    /// Every value of the graph; a value's index here is its id.
    #[prost(message, repeated, tag = "3")]
    pub values: Vec<Value>,
    /// Nodes, each after the producers of its inputs.
    #[prost(message, repeated, tag = "4")]
    pub nodes: Vec<Node>,
    /// Graph inputs (value indices).
    #[prost(uint32, repeated, tag = "5")]
    pub inputs: Vec<u32>,
    /// Graph outputs (value indices).
    #[prost(uint32, repeated, tag = "6")]
    pub outputs: Vec<u32>,
}

/// One opset import: domain (`""` = ONNX) and version.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OpsetImport {
    /// The domain.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// The version imported.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// A tensor value: its name, its static type if known, and where its data is if it is a constant.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    /// Name, unique in the graph.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Static type; absent when unknown.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TensorType>,
    /// Constant data; absent for non-constants.
    #[prost(message, optional, tag = "3")]
    pub constant: Option<Constant>,
}

/// Element type and (when the rank is known) dimensions.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorType {
    /// Element type as an ONNX `TensorProto.DataType` code.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// Dimensions; absent when even the rank is unknown.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<Shape>,
}

/// The dimensions of a tensor type.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Shape {
    /// One entry per axis.
    #[prost(message, repeated, tag = "1")]
    pub dims: Vec<Dim>,
}

/// One dimension: fixed, symbolic or unknown.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dim {
    /// Which kind of dimension.
    #[prost(oneof = "dim::Kind", tags = "1, 2, 3")]
    pub kind: Option<dim::Kind>,
}

/// The oneof of [`Dim`].
pub mod dim {
    /// Which kind of dimension.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// A known size.
        #[prost(uint64, tag = "1")]
        Fixed(u64),
        /// A named size bound at run time.
        #[prost(string, tag = "2")]
        Symbolic(String),
        /// Nothing is known (the flag's value is ignored).
        #[prost(bool, tag = "3")]
        Unknown(bool),
    }
}

/// Where a constant's data is: a section of raw little-endian elements.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Constant {
    /// Index into the section table.
    #[prost(uint32, tag = "1")]
    pub section: u32,
    /// Element type as an ONNX `TensorProto.DataType` code.
    #[prost(int32, tag = "2")]
    pub dtype: i32,
    /// Dimensions.
    #[prost(uint64, repeated, tag = "3")]
    pub shape: Vec<u64>,
}

/// One op.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Node {
    /// Node name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Op type.
    #[prost(string, tag = "2")]
    pub op_type: String,
    /// Op domain (`""` = ONNX).
    #[prost(string, tag = "3")]
    pub domain: String,
    /// The opset version of the domain the node was imported at.
    #[prost(int64, tag = "4")]
    pub opset: i64,
    /// Attributes, sorted by name.
    #[prost(message, repeated, tag = "5")]
    pub attributes: Vec<Attribute>,
    /// Inputs, in slot order.
    #[prost(message, repeated, tag = "6")]
    pub inputs: Vec<NodeInput>,
    /// Outputs (value indices).
    #[prost(uint32, repeated, tag = "7")]
    pub outputs: Vec<u32>,
}

/// One input slot of a node: a value index, or nothing for an omitted optional input.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeInput {
    /// The value read; absent for an omitted optional input.
    #[prost(uint32, optional, tag = "1")]
    pub value: Option<u32>,
}

/// A named attribute of a node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Attribute {
    /// Attribute name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The value.
    #[prost(oneof = "attribute::Value", tags = "2, 3, 4, 5, 6, 7, 8")]
    pub value: Option<attribute::Value>,
}

/// The oneof of [`Attribute`].
pub mod attribute {
    /// An attribute value, one per `fpx_ir::Attribute` kind (single-letter names as in ONNX's `AttributeProto`).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// A float.
        #[prost(float, tag = "2")]
        F(f32),
        /// An integer.
        #[prost(int64, tag = "3")]
        I(i64),
        /// A string.
        #[prost(string, tag = "4")]
        S(String),
        /// A tensor, stored inline.
        #[prost(message, tag = "5")]
        T(super::TensorData),
        /// A list of floats.
        #[prost(message, tag = "6")]
        Floats(super::Floats),
        /// A list of integers.
        #[prost(message, tag = "7")]
        Ints(super::Ints),
        /// A list of strings.
        #[prost(message, tag = "8")]
        Strings(super::Strings),
    }
}

/// A tensor stored inline: raw little-endian elements (bool as one byte).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorData {
    /// Element type as an ONNX `TensorProto.DataType` code.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// Dimensions.
    #[prost(uint64, repeated, tag = "2")]
    pub shape: Vec<u64>,
    /// The elements.
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
}

/// A list of floats (a oneof cannot hold a repeated field directly).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Floats {
    /// The values.
    #[prost(float, repeated, tag = "1")]
    pub values: Vec<f32>,
}

/// A list of integers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ints {
    /// The values.
    #[prost(int64, repeated, tag = "1")]
    pub values: Vec<i64>,
}

/// A list of strings.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Strings {
    /// The values.
    #[prost(string, repeated, tag = "1")]
    pub values: Vec<String>,
}

/// One entry of the section table.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Section {
    /// A name for people (the constant's value name, `cpu:<target>`, ...).
    #[prost(string, tag = "1")]
    pub name: String,
    /// What the section holds.
    #[prost(enumeration = "SectionKind", tag = "2")]
    pub kind: i32,
    /// Byte offset from the start of the file (a multiple of 64).
    #[prost(uint64, tag = "3")]
    pub offset: u64,
    /// Length in bytes.
    #[prost(uint64, tag = "4")]
    pub length: u64,
    /// CRC-32 (IEEE) of the section's bytes.
    #[prost(fixed32, tag = "5")]
    pub crc32: u32,
}

/// What a section holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SectionKind {
    /// Never written; rejected on read.
    Unspecified = 0,
    /// The data of one constant value.
    Constant = 1,
    /// A CPU shared object.
    CpuSharedObject = 2,
    /// PTX for one GPU architecture.
    Ptx = 3,
    /// Anything else.
    Other = 4,
}

/// Native CPU code for one target.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CpuCode {
    /// Target CPU name (as LLVM names it).
    #[prost(string, tag = "1")]
    pub target: String,
    /// CPU features the code requires.
    #[prost(string, repeated, tag = "2")]
    pub features: Vec<String>,
    /// The section holding the shared object.
    #[prost(uint32, tag = "3")]
    pub section: u32,
    /// Per node, the kernel for each range of M (ascending `max_m`, the last 0 = any).
    #[prost(message, repeated, tag = "4")]
    pub gemms: Vec<CpuGemm>,
}

/// The kernel one node calls for M up to `max_m`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CpuGemm {
    /// The node's name.
    #[prost(string, tag = "1")]
    pub node: String,
    /// Largest M this kernel is chosen for; 0 = any larger M.
    #[prost(uint64, tag = "2")]
    pub max_m: u64,
    /// The exported kernel.
    #[prost(string, tag = "3")]
    pub symbol: String,
    /// Threads split N at multiples of this.
    #[prost(uint32, tag = "4")]
    pub column_split: u32,
    /// What the kernel multiplies the weights with.
    #[prost(enumeration = "Activations", tag = "5")]
    pub activations: i32,
    /// Most threads the runtime splits N across; 0 = every thread of its pool.
    #[prost(uint32, tag = "6")]
    pub threads: u32,
    /// How the kernel was generated; absent in artifacts written before it was recorded.
    #[prost(message, optional, tag = "7")]
    pub config: Option<CpuConfig>,
}

/// The loop and blocking a CPU kernel was generated with, and where that choice came from.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CpuConfig {
    /// 0 = GEMV loop (weights streamed once, dequantized in registers), 1 = GEMM (panel) loop.
    #[prost(uint32, tag = "1")]
    pub variant: u32,
    /// Rows per register block of the GEMV loop.
    #[prost(uint32, tag = "2")]
    pub gemv_rows: u32,
    /// Rows per register block of the panel loop.
    #[prost(uint32, tag = "3")]
    pub gemm_rows: u32,
    /// Tiles of 32 K per dequantized panel.
    #[prost(uint32, tag = "4")]
    pub panel_tiles: u32,
    /// Chosen by the auto-tuner (else by fpx's heuristic).
    #[prost(bool, tag = "5")]
    pub tuned: bool,
}

/// What a CPU kernel multiplies its weights with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Activations {
    /// `f32` rows.
    F32 = 0,
    /// An int8 activation buffer.
    Int8 = 1,
    /// `f32` rows rounded to FP8 e4m3 per row (a power-of-two scale each).
    Fp8E4m3 = 2,
    /// `f32` rows rounded to FP8 e5m2 per row.
    Fp8E5m2 = 3,
}

/// GPU code for one architecture: PTX modules and each node's GEMM kernels per range of M.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PtxCode {
    /// The architecture, e.g. `sm_90`.
    #[prost(string, tag = "1")]
    pub arch: String,
    /// The SM count the tile heuristic assumed.
    #[prost(uint32, tag = "2")]
    pub sm_count: u32,
    /// The PTX modules (names unique within the architecture).
    #[prost(message, repeated, tag = "3")]
    pub modules: Vec<PtxModule>,
    /// Per node, the GEMM kernel for each range of M (ascending `max_m`, the last 0 = any).
    #[prost(message, repeated, tag = "4")]
    pub gemms: Vec<GpuGemm>,
}

/// One PTX module: a section of PTX text and its entry points.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PtxModule {
    /// The module's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The section holding the PTX text.
    #[prost(uint32, tag = "2")]
    pub section: u32,
    /// Its kernel entry points.
    #[prost(string, repeated, tag = "3")]
    pub entries: Vec<String>,
}

/// The GEMM kernel one node launches for M up to `max_m`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GpuGemm {
    /// The node's name.
    #[prost(string, tag = "1")]
    pub node: String,
    /// Largest M this kernel is chosen for; 0 = any larger M.
    #[prost(uint64, tag = "2")]
    pub max_m: u64,
    /// The module holding the kernels.
    #[prost(string, tag = "3")]
    pub module: String,
    /// The GEMM entry point.
    #[prost(string, tag = "4")]
    pub kernel: String,
    /// Legacy split-K reduction entry point: empty since split-K finishes inside the GEMM; a
    /// non-empty one marks GPU code from an older fpx, which `fpx_cuda::device::GpuGemm` refuses.
    #[prost(string, tag = "5")]
    pub reduce: String,
    /// The tile configuration the kernel was instantiated with.
    #[prost(message, optional, tag = "6")]
    pub tiles: Option<GpuTiles>,
    /// Chosen by the auto-tuner (`fpx tune --device cuda`) rather than fpx's heuristic; absent
    /// (false) in artifacts written before GPU tuning existed.
    #[prost(bool, tag = "7")]
    pub tuned: bool,
}

/// The tile configuration of one GPU GEMM kernel.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GpuTiles {
    /// Weight format name.
    #[prost(string, tag = "1")]
    pub format: String,
    /// Activation and output type.
    #[prost(enumeration = "GpuActivations", tag = "2")]
    pub activations: i32,
    /// Output channels.
    #[prost(uint64, tag = "3")]
    pub n: u64,
    /// Reduction length.
    #[prost(uint64, tag = "4")]
    pub k: u64,
    /// Tokens per block.
    #[prost(uint32, tag = "5")]
    pub m_tile: u32,
    /// Warps per block.
    #[prost(uint32, tag = "6")]
    pub warps: u32,
    /// 16-channel tiles per warp.
    #[prost(uint32, tag = "7")]
    pub warp_ntiles: u32,
    /// 32-K tiles per pipeline stage.
    #[prost(uint32, tag = "8")]
    pub k_tiles: u32,
    /// Pipeline stages.
    #[prost(uint32, tag = "9")]
    pub stages: u32,
    /// K splits.
    #[prost(uint32, tag = "10")]
    pub split_k: u32,
}

/// The activation type of a GPU GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum GpuActivations {
    /// FP16 activations and output.
    F16 = 0,
    /// BF16 activations and output.
    Bf16 = 1,
}
