//! The non-GEMM kernels a transformer graph needs on the GPU: elementwise and broadcast ops,
//! casts, LayerNormalization, Softmax, ReduceSum/ReduceMean, Gather and Transpose, in FP16 or
//! FP32 storage with FP32 math.
//!
//! Each family is one header-free template in `kernels-templates/` ([`OpFamily::template`]),
//! compiled as the shared prelude `ops_common.cuh` + the template + one generated
//! `extern "C" __global__` wrapper per [`OpKernel`] ([`family_source`]), with NVRTC per arch
//! ([`compile_family_ptx`], [`compile_ops_ptx`]; cached in memory like
//! [`compile_ptx`](crate::compile_ptx)). One PTX module per family; the executor loads each and
//! looks kernels up by [`OpKernel::name`].
//!
//! # Kernels and their arguments
//!
//! `T` is `fpx_u16` (FP16 bits) or `float`; `U` a copy unit of 1, 2, 4, 8 or 16 bytes; pointers
//! are device pointers (`CUdeviceptr`), `fpx_u64` is `u64`, `fpx_u32` is `u32`, `float` is `f32`,
//! `fpx_bcast` / `fpx_perm` are [`BcastArgs`] / [`PermArgs`] passed by value. Every block has
//! 256 threads; the grid comes from [`launch_config`]`(kernel, n, cols)` (no dynamic shared
//! memory; a grid with x = 0 means nothing to launch).
//!
//! | kernel | arguments | `n`, `cols` of [`launch_config`] |
//! |---|---|---|
//! | `fpx_{erf,gelu,gelu_tanh,relu,sigmoid,tanh,sqrt,reciprocal,neg,exp,log}_{f16,f32}` | `(const T* x, T* y, fpx_u64 n)` | elements, — |
//! | `fpx_{add,sub,mul,div,pow,max,min}_{f16,f32}` (same shape) | `(const T* a, const T* b, T* y, fpx_u64 n)` | elements, — |
//! | `fpx_{add,...,min}_bcast_{f16,f32}` | `(const T* a, const T* b, T* y, fpx_bcast s)` | `s.numel`, — |
//! | `fpx_cast_{f16_f32,f32_f16,i64_f32,i64_f16}` | `(const From* x, To* y, fpx_u64 n)` | elements, — |
//! | `fpx_layernorm_{f16,f32}` | `(const T* x, const T* gamma, const T* beta, T* y, fpx_u32 rows, fpx_u32 cols, float eps)` | rows, cols |
//! | `fpx_softmax_{f16,f32}` | `(const T* x, T* y, fpx_u32 rows, fpx_u32 cols)` | rows, cols |
//! | `fpx_reduce_{sum,mean}_{f16,f32}` | `(const T* x, T* y, fpx_u32 rows, fpx_u32 cols)` | rows, cols |
//! | `fpx_gather_{b8,b16,b32,b64,b128}` | `(const U* data, const fpx_i64* idx, U* y, fpx_u32 outer, fpx_u32 axis_dim, fpx_u32 n_idx, fpx_u32 inner, int* err)` | output units, — |
//! | `fpx_transpose_{b8,...,b128}` | `(const U* x, U* y, fpx_perm p)` | `p.numel`, — |
//! | `fpx_transpose_tile_{b8,...,b128}` | `(const U* x, U* y, fpx_u32 batch, fpx_u32 rows, fpx_u32 cols)` | batch × rows, cols |
//!
//! [`OpKernel::c_prototype`] gives each exact prototype. The planners turn ONNX shapes into
//! kernel choices and arguments: [`binary_plan`] (numpy broadcasting, dims merged, same-shape
//! fast path), [`transpose_plan`] (merged dims, tiled kernel when the innermost dim moves, wider
//! copy units, or a plain copy), [`gather_plan`] (wider copy units). Softmax, LayerNorm and the
//! reductions work on the last axis of a `[rows][cols]` view. `y` may alias an input of the
//! output's shape and type (in place) for the unary, binary, Softmax and LayerNorm kernels, not
//! for casts, reductions, gathers or transposes. Reshape needs no kernel (same bytes;
//! `cuMemcpyDtoD` when a copy is wanted). Launch requirements: buffers 16-byte aligned for the
//! `b128` units a planner picks (`cuMemAlloc` gives 256); a gather's `err` flag zeroed by the
//! caller beforehand.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::compile::{nvrtc_ptx, Ptx};
use crate::{Arch, CudaError};

/// The prelude every op family is compiled with (`kernels-templates/ops_common.cuh`).
pub const OPS_COMMON: &str = include_str!("../../../kernels-templates/ops_common.cuh");
/// `kernels-templates/elementwise.cu`.
pub const ELEMENTWISE_TEMPLATE: &str = include_str!("../../../kernels-templates/elementwise.cu");
/// `kernels-templates/layernorm.cu`.
pub const LAYERNORM_TEMPLATE: &str = include_str!("../../../kernels-templates/layernorm.cu");
/// `kernels-templates/softmax.cu`.
pub const SOFTMAX_TEMPLATE: &str = include_str!("../../../kernels-templates/softmax.cu");
/// `kernels-templates/reduce.cu`.
pub const REDUCE_TEMPLATE: &str = include_str!("../../../kernels-templates/reduce.cu");
/// `kernels-templates/gather.cu`.
pub const GATHER_TEMPLATE: &str = include_str!("../../../kernels-templates/gather.cu");
/// `kernels-templates/transpose.cu`.
pub const TRANSPOSE_TEMPLATE: &str = include_str!("../../../kernels-templates/transpose.cu");

/// Threads per block of every op kernel (the templates' `FPX_THREADS`, `__launch_bounds__`).
pub const OP_THREADS: u32 = 256;
/// The most blocks [`launch_config`] gives an element-parallel kernel (they loop grid-stride).
pub const MAX_GRID: u32 = 65535;
/// The most dims a broadcast or transpose has after merging (the templates' `FPX_MAX_RANK`).
pub const MAX_RANK: usize = 6;
/// The most elements (units) of the kernels with 32-bit index math.
pub const MAX_INDEXED: usize = u32::MAX as usize;

/// Storage type of the floating-point op kernels (the math is FP32 in both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Elem {
    /// IEEE half, raw bits (`fpx_u16`).
    F16,
    /// IEEE single (`float`).
    F32,
}

impl Elem {
    /// Both types.
    pub const ALL: [Elem; 2] = [Elem::F16, Elem::F32];

    /// Kernel name suffix (`f16`).
    pub fn tag(self) -> &'static str {
        match self {
            Elem::F16 => "f16",
            Elem::F32 => "f32",
        }
    }

    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Elem::F16 => 2,
            Elem::F32 => 4,
        }
    }

    /// Elements per 16-byte vector (the same-shape elementwise kernels' step).
    pub fn vec(self) -> u32 {
        16 / self.bytes() as u32
    }

    fn c_type(self) -> &'static str {
        match self {
            Elem::F16 => "fpx_u16",
            Elem::F32 => "float",
        }
    }

    fn traits(self) -> &'static str {
        match self {
            Elem::F16 => "fpx::F16",
            Elem::F32 => "fpx::F32",
        }
    }
}

/// Unary elementwise ops (FP32 math).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnaryOp {
    /// `erf(x)`.
    Erf,
    /// Gelu, `approximate = "none"`: `x/2 (1 + erf(x/√2))`.
    Gelu,
    /// Gelu, `approximate = "tanh"`: `x/2 (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
    GeluTanh,
    /// `max(x, 0)` (NaN gives 0, as fpx-runtime).
    Relu,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// `sqrt(x)`.
    Sqrt,
    /// `1 / x`.
    Reciprocal,
    /// `-x`.
    Neg,
    /// `exp(x)`.
    Exp,
    /// `ln(x)`.
    Log,
}

impl UnaryOp {
    /// Every unary op.
    pub const ALL: [UnaryOp; 11] = [
        UnaryOp::Erf,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Relu,
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
        UnaryOp::Sqrt,
        UnaryOp::Reciprocal,
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
    ];

    /// The template's op id (`fpx::unary_op<OP>`).
    pub fn id(self) -> u32 {
        self as u32
    }

    /// Kernel name part (`gelu_tanh`).
    pub fn tag(self) -> &'static str {
        match self {
            UnaryOp::Erf => "erf",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Relu => "relu",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Reciprocal => "reciprocal",
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
        }
    }
}

/// Binary elementwise ops (FP32 math; both inputs and the output of one type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
    /// `powf(a, b)`.
    Pow,
    /// Maximum, NaN-propagating.
    Max,
    /// Minimum, NaN-propagating.
    Min,
}

impl BinaryOp {
    /// Every binary op.
    pub const ALL: [BinaryOp; 7] =
        [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Pow, BinaryOp::Max, BinaryOp::Min];

    /// The template's op id (`fpx::binary_op<OP>`).
    pub fn id(self) -> u32 {
        self as u32
    }

    /// Kernel name part (`add`).
    pub fn tag(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Max => "max",
            BinaryOp::Min => "min",
        }
    }
}

/// The casts with a kernel (FP16 and FP32 either way; int64 masks to float).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CastOp {
    /// FP16 → FP32 (exact).
    F16ToF32,
    /// FP32 → FP16 (round to nearest even).
    F32ToF16,
    /// int64 → FP32 (round to nearest, as Rust's `as f32`).
    I64ToF32,
    /// int64 → FP16 (through FP32; exact wherever the result is finite).
    I64ToF16,
}

impl CastOp {
    /// Every cast.
    pub const ALL: [CastOp; 4] = [CastOp::F16ToF32, CastOp::F32ToF16, CastOp::I64ToF32, CastOp::I64ToF16];

    /// Kernel name part (`f16_f32`).
    pub fn tag(self) -> &'static str {
        match self {
            CastOp::F16ToF32 => "f16_f32",
            CastOp::F32ToF16 => "f32_f16",
            CastOp::I64ToF32 => "i64_f32",
            CastOp::I64ToF16 => "i64_f16",
        }
    }

    /// (source C type, source traits, destination C type, destination traits).
    fn types(self) -> (&'static str, &'static str, Elem) {
        match self {
            CastOp::F16ToF32 => ("fpx_u16", "fpx::F16", Elem::F32),
            CastOp::F32ToF16 => ("float", "fpx::F32", Elem::F16),
            CastOp::I64ToF32 => ("fpx_i64", "fpx::I64", Elem::F32),
            CastOp::I64ToF16 => ("fpx_i64", "fpx::I64", Elem::F16),
        }
    }
}

/// Reductions over the last axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReduceOp {
    /// ReduceSum.
    Sum,
    /// ReduceMean.
    Mean,
}

impl ReduceOp {
    /// Both reductions.
    pub const ALL: [ReduceOp; 2] = [ReduceOp::Sum, ReduceOp::Mean];

    /// Kernel name part (`sum`).
    pub fn tag(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
        }
    }
}

/// The unit a data-movement kernel (gather, transpose) copies: any element type of that size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Width {
    /// 1 byte.
    B8,
    /// 2 bytes.
    B16,
    /// 4 bytes.
    B32,
    /// 8 bytes.
    B64,
    /// 16 bytes (one vector access; needs 16-byte aligned buffers).
    B128,
}

impl Width {
    /// Every width, narrowest first.
    pub const ALL: [Width; 5] = [Width::B8, Width::B16, Width::B32, Width::B64, Width::B128];

    /// Bytes per unit.
    pub fn bytes(self) -> usize {
        1 << self as usize
    }

    /// The width of `bytes` (1, 2, 4, 8 or 16).
    pub fn from_bytes(bytes: usize) -> Result<Width, OpShapeError> {
        Width::ALL.into_iter().find(|w| w.bytes() == bytes).ok_or(OpShapeError::ElemSize(bytes))
    }

    /// Kernel name part (`b128`).
    pub fn tag(self) -> &'static str {
        match self {
            Width::B8 => "b8",
            Width::B16 => "b16",
            Width::B32 => "b32",
            Width::B64 => "b64",
            Width::B128 => "b128",
        }
    }

    fn c_type(self) -> &'static str {
        match self {
            Width::B8 => "fpx_u8",
            Width::B16 => "fpx_u16",
            Width::B32 => "fpx_u32",
            Width::B64 => "fpx_u64",
            Width::B128 => "fpx_u128",
        }
    }
}

/// A kernel template file: the unit of compilation (one PTX module each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpFamily {
    /// `elementwise.cu`: unary, binary (same shape and broadcast), casts.
    Elementwise,
    /// `layernorm.cu`.
    LayerNorm,
    /// `softmax.cu`.
    Softmax,
    /// `reduce.cu`: ReduceSum, ReduceMean.
    Reduce,
    /// `gather.cu`.
    Gather,
    /// `transpose.cu`: general and tiled.
    Transpose,
}

impl OpFamily {
    /// Every family.
    pub const ALL: [OpFamily; 6] =
        [OpFamily::Elementwise, OpFamily::LayerNorm, OpFamily::Softmax, OpFamily::Reduce, OpFamily::Gather, OpFamily::Transpose];

    /// The PTX module's name: `fpx_ops_<name>`.
    pub fn module_name(self) -> String {
        format!("fpx_ops_{}", self.name())
    }

    /// Short name (`layernorm`); the module is [`OpFamily::module_name`].
    pub fn name(self) -> &'static str {
        match self {
            OpFamily::Elementwise => "elementwise",
            OpFamily::LayerNorm => "layernorm",
            OpFamily::Softmax => "softmax",
            OpFamily::Reduce => "reduce",
            OpFamily::Gather => "gather",
            OpFamily::Transpose => "transpose",
        }
    }

    /// The template text (without the prelude).
    pub fn template(self) -> &'static str {
        match self {
            OpFamily::Elementwise => ELEMENTWISE_TEMPLATE,
            OpFamily::LayerNorm => LAYERNORM_TEMPLATE,
            OpFamily::Softmax => SOFTMAX_TEMPLATE,
            OpFamily::Reduce => REDUCE_TEMPLATE,
            OpFamily::Gather => GATHER_TEMPLATE,
            OpFamily::Transpose => TRANSPOSE_TEMPLATE,
        }
    }

    /// Every kernel instantiated in this family's module.
    pub fn kernels(self) -> Vec<OpKernel> {
        let e = Elem::ALL;
        match self {
            OpFamily::Elementwise => {
                let mut v: Vec<OpKernel> = UnaryOp::ALL.iter().flat_map(|&op| e.map(|elem| OpKernel::Unary { op, elem })).collect();
                v.extend(BinaryOp::ALL.iter().flat_map(|&op| e.map(|elem| OpKernel::Binary { op, elem })));
                v.extend(BinaryOp::ALL.iter().flat_map(|&op| e.map(|elem| OpKernel::BinaryBcast { op, elem })));
                v.extend(CastOp::ALL.map(OpKernel::Cast));
                v
            }
            OpFamily::LayerNorm => e.map(OpKernel::LayerNorm).to_vec(),
            OpFamily::Softmax => e.map(OpKernel::Softmax).to_vec(),
            OpFamily::Reduce => ReduceOp::ALL.iter().flat_map(|&op| e.map(|elem| OpKernel::Reduce { op, elem })).collect(),
            OpFamily::Gather => Width::ALL.map(OpKernel::Gather).to_vec(),
            OpFamily::Transpose => {
                let mut v = Width::ALL.map(OpKernel::Transpose).to_vec();
                v.extend(Width::ALL.map(OpKernel::TransposeTile));
                v
            }
        }
    }
}

/// One op kernel instantiation (one `extern "C"` entry). See the module docs for arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKernel {
    /// `fpx_<op>_<elem>(const T* x, T* y, fpx_u64 n)`.
    Unary {
        /// The op.
        op: UnaryOp,
        /// Storage type.
        elem: Elem,
    },
    /// `fpx_<op>_<elem>(const T* a, const T* b, T* y, fpx_u64 n)`: all of `n` elements.
    Binary {
        /// The op.
        op: BinaryOp,
        /// Storage type.
        elem: Elem,
    },
    /// `fpx_<op>_bcast_<elem>(const T* a, const T* b, T* y, fpx_bcast s)`: see [`BcastArgs`].
    BinaryBcast {
        /// The op.
        op: BinaryOp,
        /// Storage type.
        elem: Elem,
    },
    /// `fpx_cast_<from>_<to>(const From* x, To* y, fpx_u64 n)`.
    Cast(CastOp),
    /// `fpx_layernorm_<elem>(const T* x, const T* gamma, const T* beta, T* y, fpx_u32 rows, fpx_u32 cols, float eps)`.
    LayerNorm(Elem),
    /// `fpx_softmax_<elem>(const T* x, T* y, fpx_u32 rows, fpx_u32 cols)`.
    Softmax(Elem),
    /// `fpx_reduce_<op>_<elem>(const T* x, T* y, fpx_u32 rows, fpx_u32 cols)`.
    Reduce {
        /// Sum or mean.
        op: ReduceOp,
        /// Storage type.
        elem: Elem,
    },
    /// `fpx_gather_<w>(const U* data, const fpx_i64* idx, U* y, fpx_u32 outer, fpx_u32 axis_dim, fpx_u32 n_idx, fpx_u32 inner, int* err)`.
    Gather(Width),
    /// `fpx_transpose_<w>(const U* x, U* y, fpx_perm p)`: see [`PermArgs`].
    Transpose(Width),
    /// `fpx_transpose_tile_<w>(const U* x, U* y, fpx_u32 batch, fpx_u32 rows, fpx_u32 cols)`.
    TransposeTile(Width),
}

/// How a kernel's grid is derived (see [`launch_config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Geometry {
    /// Grid-stride over `n` elements, `vec` per thread step: 1-D blocks of 256,
    /// `min(ceil(ceil(n / vec) / 256), 65535)` blocks. `n < 2^32` when `indexed32`.
    Elements {
        /// Elements one thread handles per step (a 16-byte vector, or 1).
        vec: u32,
        /// The kernel decomposes indices in 32 bits.
        indexed32: bool,
    },
    /// One row of `cols` per `TX` threads ([`row_threads`]), `256 / TX` rows per block:
    /// block `(TX, 256 / TX)`, `ceil(rows / (256 / TX))` blocks.
    Rows,
    /// 32 × 32 tiles of a `(batch * rows) × cols` matrix: block `(32, 8)`, grid
    /// `(ceil(cols / 32), min(ceil(batch * rows / 32), 65535))`, rows grid-stride.
    Tiles,
}

impl OpKernel {
    /// Every kernel of every family.
    pub fn all() -> Vec<OpKernel> {
        OpFamily::ALL.iter().flat_map(|f| f.kernels()).collect()
    }

    /// The family (module) that holds this kernel.
    pub fn family(&self) -> OpFamily {
        match self {
            OpKernel::Unary { .. } | OpKernel::Binary { .. } | OpKernel::BinaryBcast { .. } | OpKernel::Cast(_) => OpFamily::Elementwise,
            OpKernel::LayerNorm(_) => OpFamily::LayerNorm,
            OpKernel::Softmax(_) => OpFamily::Softmax,
            OpKernel::Reduce { .. } => OpFamily::Reduce,
            OpKernel::Gather(_) => OpFamily::Gather,
            OpKernel::Transpose(_) | OpKernel::TransposeTile(_) => OpFamily::Transpose,
        }
    }

    /// The `extern "C"` entry name (`fpx_add_bcast_f16`).
    pub fn name(&self) -> String {
        match self {
            OpKernel::Unary { op, elem } => format!("fpx_{}_{}", op.tag(), elem.tag()),
            OpKernel::Binary { op, elem } => format!("fpx_{}_{}", op.tag(), elem.tag()),
            OpKernel::BinaryBcast { op, elem } => format!("fpx_{}_bcast_{}", op.tag(), elem.tag()),
            OpKernel::Cast(c) => format!("fpx_cast_{}", c.tag()),
            OpKernel::LayerNorm(e) => format!("fpx_layernorm_{}", e.tag()),
            OpKernel::Softmax(e) => format!("fpx_softmax_{}", e.tag()),
            OpKernel::Reduce { op, elem } => format!("fpx_reduce_{}_{}", op.tag(), elem.tag()),
            OpKernel::Gather(w) => format!("fpx_gather_{}", w.tag()),
            OpKernel::Transpose(w) => format!("fpx_transpose_{}", w.tag()),
            OpKernel::TransposeTile(w) => format!("fpx_transpose_tile_{}", w.tag()),
        }
    }

    /// The C parameter list, in launch order.
    pub fn params(&self) -> String {
        match *self {
            OpKernel::Unary { elem, .. } => format!("const {t}* x, {t}* y, fpx_u64 n", t = elem.c_type()),
            OpKernel::Binary { elem, .. } => format!("const {t}* a, const {t}* b, {t}* y, fpx_u64 n", t = elem.c_type()),
            OpKernel::BinaryBcast { elem, .. } => format!("const {t}* a, const {t}* b, {t}* y, fpx_bcast s", t = elem.c_type()),
            OpKernel::Cast(c) => {
                let (from, _, to) = c.types();
                format!("const {from}* x, {}* y, fpx_u64 n", to.c_type())
            }
            OpKernel::LayerNorm(e) => {
                format!("const {t}* x, const {t}* gamma, const {t}* beta, {t}* y, fpx_u32 rows, fpx_u32 cols, float eps", t = e.c_type())
            }
            OpKernel::Softmax(e) | OpKernel::Reduce { elem: e, .. } => {
                format!("const {t}* x, {t}* y, fpx_u32 rows, fpx_u32 cols", t = e.c_type())
            }
            OpKernel::Gather(w) => format!(
                "const {u}* data, const fpx_i64* idx, {u}* y, fpx_u32 outer, fpx_u32 axis_dim, fpx_u32 n_idx, fpx_u32 inner, int* err",
                u = w.c_type()
            ),
            OpKernel::Transpose(w) => format!("const {u}* x, {u}* y, fpx_perm p", u = w.c_type()),
            OpKernel::TransposeTile(w) => format!("const {u}* x, {u}* y, fpx_u32 batch, fpx_u32 rows, fpx_u32 cols", u = w.c_type()),
        }
    }

    /// The C prototype (`void fpx_add_f16(const fpx_u16* a, ...)`).
    pub fn c_prototype(&self) -> String {
        format!("void {}({})", self.name(), self.params())
    }

    /// The call of the template function that the wrapper makes.
    fn body(&self) -> String {
        match *self {
            OpKernel::Unary { op, elem } => format!("fpx::unary<{}, {}>(x, y, n)", elem.traits(), op.id()),
            OpKernel::Binary { op, elem } => format!("fpx::binary<{}, {}>(a, b, y, n)", elem.traits(), op.id()),
            OpKernel::BinaryBcast { op, elem } => format!("fpx::binary_bcast<{}, {}>(a, b, y, s)", elem.traits(), op.id()),
            OpKernel::Cast(c) => {
                let (_, from, to) = c.types();
                format!("fpx::cast<{from}, {}>(x, y, n)", to.traits())
            }
            OpKernel::LayerNorm(e) => format!("fpx::layernorm<{}>(x, gamma, beta, y, rows, cols, eps)", e.traits()),
            OpKernel::Softmax(e) => format!("fpx::softmax<{}>(x, y, rows, cols)", e.traits()),
            OpKernel::Reduce { op, elem } => format!("fpx::reduce<{}, {}>(x, y, rows, cols)", elem.traits(), op == ReduceOp::Mean),
            OpKernel::Gather(w) => format!("fpx::gather<{}>(data, idx, y, outer, axis_dim, n_idx, inner, err)", w.c_type()),
            OpKernel::Transpose(w) => format!("fpx::transpose<{}>(x, y, p)", w.c_type()),
            OpKernel::TransposeTile(w) => format!("fpx::transpose_tile<{}>(x, y, batch, rows, cols)", w.c_type()),
        }
    }

    /// The generated `extern "C" __global__` wrapper.
    pub fn wrapper(&self) -> String {
        format!(
            "extern \"C\" __global__ void __launch_bounds__({OP_THREADS}) {}({}) {{\n    {};\n}}\n",
            self.name(),
            self.params(),
            self.body()
        )
    }

    /// How its grid is derived.
    pub fn geometry(&self) -> Geometry {
        match self {
            OpKernel::Unary { elem, .. } | OpKernel::Binary { elem, .. } => Geometry::Elements { vec: elem.vec(), indexed32: false },
            OpKernel::Cast(_) => Geometry::Elements { vec: 1, indexed32: false },
            OpKernel::BinaryBcast { .. } | OpKernel::Gather(_) | OpKernel::Transpose(_) => Geometry::Elements { vec: 1, indexed32: true },
            OpKernel::LayerNorm(_) | OpKernel::Softmax(_) | OpKernel::Reduce { .. } => Geometry::Rows,
            OpKernel::TransposeTile(_) => Geometry::Tiles,
        }
    }
}

impl std::fmt::Display for OpKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Shapes or sizes the op kernels cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpShapeError {
    /// Two shapes that numpy broadcasting rejects.
    #[error("shapes {a:?} and {b:?} do not broadcast")]
    Broadcast {
        /// First input's shape.
        a: Vec<usize>,
        /// Second input's shape.
        b: Vec<usize>,
    },
    /// More than [`MAX_RANK`] dims remain after merging.
    #[error("{what}: {rank} dims after merging adjacent ones, at most {MAX_RANK}")]
    Rank {
        /// The op.
        what: &'static str,
        /// The merged rank.
        rank: usize,
    },
    /// A size beyond the kernels' 32-bit index math or the launch limits.
    #[error("{what}: {count} is too large (at most {max})")]
    TooLarge {
        /// What was counted.
        what: &'static str,
        /// The count.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Not a permutation of `0..rank`.
    #[error("{perm:?} is not a permutation of the {rank} dims")]
    Perm {
        /// The permutation.
        perm: Vec<usize>,
        /// The tensor's rank.
        rank: usize,
    },
    /// An axis outside `-rank..rank`.
    #[error("axis {axis} is out of range for rank {rank}")]
    Axis {
        /// The axis as given.
        axis: i64,
        /// The tensor's rank.
        rank: usize,
    },
    /// An element size the copy kernels have no unit for.
    #[error("element size {0} is not 1, 2, 4, 8 or 16 bytes")]
    ElemSize(usize),
}

fn too_large(what: &'static str, count: usize, max: usize) -> Result<(), OpShapeError> {
    if count > max {
        Err(OpShapeError::TooLarge { what, count, max })
    } else {
        Ok(())
    }
}

/// Threads per row (`TX`) of the row kernels for `cols` columns: the power of two nearest
/// above `cols / 8`, clamped to 32..=256 (about 8 columns per thread and pass).
pub fn row_threads(cols: usize) -> u32 {
    cols.div_ceil(8).next_power_of_two().clamp(32, OP_THREADS as usize) as u32
}

/// `(grid, block, dynamic shared bytes)` for `kernel` on `n` work items (elements or units
/// for the element-parallel kernels, rows for the row kernels, batch × rows for the tiled
/// transpose) of `cols` columns (row kernels and tiled transpose only; ignored otherwise). See
/// [`Geometry`]. `n == 0` gives grid x = 0: nothing to launch. Errors when a count exceeds the
/// kernel's index math (2^32 - 1 units, 2^31 - 1 rows or columns).
pub fn launch_config(kernel: &OpKernel, n: usize, cols: usize) -> Result<([u32; 3], [u32; 3], u32), OpShapeError> {
    let grid_for = |units: usize| units.div_ceil(OP_THREADS as usize).min(MAX_GRID as usize) as u32;
    match kernel.geometry() {
        Geometry::Elements { vec, indexed32 } => {
            if indexed32 {
                too_large("elements", n, MAX_INDEXED)?;
            }
            Ok(([grid_for(n.div_ceil(vec as usize)), 1, 1], [OP_THREADS, 1, 1], 0))
        }
        Geometry::Rows => {
            too_large("rows", n, i32::MAX as usize)?;
            too_large("columns", cols, i32::MAX as usize)?;
            let tx = row_threads(cols);
            let ty = OP_THREADS / tx;
            Ok(([n.div_ceil(ty as usize) as u32, 1, 1], [tx, ty, 1], 0))
        }
        Geometry::Tiles => {
            too_large("batch x rows", n, MAX_INDEXED)?;
            too_large("columns", cols, i32::MAX as usize)?;
            too_large("elements", n.saturating_mul(cols), MAX_INDEXED)?;
            if n == 0 || cols == 0 {
                return Ok(([0, 1, 1], [32, 8, 1], 0));
            }
            Ok(([cols.div_ceil(32) as u32, n.div_ceil(32).min(MAX_GRID as usize) as u32, 1], [32, 8, 1], 0))
        }
    }
}

/// The `fpx_bcast` argument of the `_bcast` kernels (same layout): `dims[0]` is the innermost
/// output dim; `sa` / `sb` the inputs' element strides per output dim, 0 where broadcast.
/// Output element `i` (row-major) has digits `c_d = (i / (dims[0]···dims[d-1])) % dims[d]` for
/// `d < rank` and reads `a[Σ c_d sa[d]]`, `b[Σ c_d sb[d]]`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BcastArgs {
    /// Dims in use (0..=6).
    pub rank: u32,
    /// Output elements.
    pub numel: u32,
    /// Output dims, innermost first.
    pub dims: [u32; MAX_RANK],
    /// `a`'s strides per output dim.
    pub sa: [u32; MAX_RANK],
    /// `b`'s strides per output dim.
    pub sb: [u32; MAX_RANK],
}

// SAFETY: a plain `repr(C)` struct of u32s, laid out as the template's `fpx_bcast` (80 bytes,
// checked by a static_assert there and a test here).
unsafe impl cudarc::driver::DeviceRepr for BcastArgs {}

/// The `fpx_perm` argument of `fpx_transpose_<w>` (same layout): `dims[0]` is the innermost
/// output dim, `strides[d]` the input's unit stride along output dim `d`; output unit `i` reads
/// `x[Σ c_d strides[d]]` with the digits of [`BcastArgs`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PermArgs {
    /// Dims in use (0..=6).
    pub rank: u32,
    /// Output units.
    pub numel: u32,
    /// Output dims, innermost first.
    pub dims: [u32; MAX_RANK],
    /// Input strides per output dim.
    pub strides: [u32; MAX_RANK],
}

// SAFETY: a plain `repr(C)` struct of u32s, laid out as the template's `fpx_perm` (56 bytes).
unsafe impl cudarc::driver::DeviceRepr for PermArgs {}

/// Row-major element strides of `shape`.
fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// Merges `(size, strides...)` dims given innermost first: drops size-1 dims and folds a dim
/// into the one inside it when every stride continues it (`outer == inner * inner_size`).
fn merge_dims<const K: usize>(dims: impl Iterator<Item = (usize, [usize; K])>) -> Vec<(usize, [usize; K])> {
    let mut out: Vec<(usize, [usize; K])> = Vec::new();
    for (size, st) in dims {
        if size == 1 {
            continue;
        }
        if let Some((gs, gst)) = out.last_mut() {
            if (0..K).all(|k| st[k] == gst[k] * *gs) {
                *gs *= size;
                continue;
            }
        }
        out.push((size, st));
    }
    out
}

/// Numpy broadcasting of two shapes: right-aligned, each pair of dims equal or one of them 1.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, OpShapeError> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], d: usize| if d + s.len() >= rank { s[d + s.len() - rank] } else { 1 };
    (0..rank)
        .map(|d| match (dim(a, d), dim(b, d)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            _ => Err(OpShapeError::Broadcast { a: a.to_vec(), b: b.to_vec() }),
        })
        .collect()
}

/// The [`BcastArgs`] for `a op b` (numpy broadcasting), with size-1 dims dropped and adjacent
/// dims merged where both inputs stay contiguous (or broadcast) across them. Errors: shapes
/// that do not broadcast, more than [`MAX_RANK`] dims after merging, 2^32 or more elements.
pub fn broadcast_args(a: &[usize], b: &[usize]) -> Result<BcastArgs, OpShapeError> {
    let out = broadcast_shape(a, b)?;
    let numel: usize = out.iter().product();
    too_large("broadcast output elements", numel, MAX_INDEXED)?;
    if numel == 0 {
        return Ok(BcastArgs::default());
    }
    let rank = out.len();
    let strides = |s: &[usize]| -> Vec<usize> {
        let cs = contiguous_strides(s);
        (0..rank)
            .map(|d| match (d + s.len()).checked_sub(rank) {
                Some(i) if s[i] != 1 => cs[i],
                _ => 0,
            })
            .collect()
    };
    let (sa, sb) = (strides(a), strides(b));
    let merged = merge_dims((0..rank).rev().map(|d| (out[d], [sa[d], sb[d]])));
    if merged.len() > MAX_RANK {
        return Err(OpShapeError::Rank { what: "broadcast", rank: merged.len() });
    }
    let mut args = BcastArgs { rank: merged.len() as u32, numel: numel as u32, ..Default::default() };
    for (d, (size, [x, y])) in merged.into_iter().enumerate() {
        (args.dims[d], args.sa[d], args.sb[d]) = (size as u32, x as u32, y as u32);
    }
    Ok(args)
}

/// How to run one binary elementwise node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryPlan {
    /// [`OpKernel::Binary`] when both inputs are the output's shape after merging (pass
    /// `numel` as `n`), else [`OpKernel::BinaryBcast`] (pass `args`).
    pub kernel: OpKernel,
    /// The output shape.
    pub out_shape: Vec<usize>,
    /// Output elements.
    pub numel: usize,
    /// The broadcast argument (also filled for the same-shape kernel).
    pub args: BcastArgs,
}

impl BinaryPlan {
    /// [`launch_config`] for this plan.
    pub fn launch(&self) -> Result<([u32; 3], [u32; 3], u32), OpShapeError> {
        launch_config(&self.kernel, self.numel, 0)
    }
}

/// Plans `a op b` for [`Elem`] `elem`: the same-shape kernel where it applies, else the broadcast
/// kernel with [`broadcast_args`].
pub fn binary_plan(op: BinaryOp, elem: Elem, a: &[usize], b: &[usize]) -> Result<BinaryPlan, OpShapeError> {
    let out_shape = broadcast_shape(a, b)?;
    let numel: usize = out_shape.iter().product();
    let args = broadcast_args(a, b)?;
    let same = args.rank == 0 || (args.rank == 1 && args.sa[0] == 1 && args.sb[0] == 1);
    let kernel = if same { OpKernel::Binary { op, elem } } else { OpKernel::BinaryBcast { op, elem } };
    Ok(BinaryPlan { kernel, out_shape, numel, args })
}

/// How to run one Transpose node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransposePlan {
    /// The permutation moves no data: the output is the input's bytes (alias or copy them).
    Copy {
        /// Bytes of the tensor.
        bytes: usize,
    },
    /// `fpx_transpose_tile_<w>(x, y, batch, rows, cols)`: `y[b][c][r] = x[b][r][c]`.
    Tile {
        /// [`OpKernel::TransposeTile`].
        kernel: OpKernel,
        /// Matrices.
        batch: u32,
        /// Input rows per matrix.
        rows: u32,
        /// Input columns per matrix.
        cols: u32,
    },
    /// `fpx_transpose_<w>(x, y, args)`.
    General {
        /// [`OpKernel::Transpose`] with the (possibly widened) unit.
        kernel: OpKernel,
        /// The argument, in units of the kernel's width.
        args: PermArgs,
    },
}

impl TransposePlan {
    /// [`launch_config`] for this plan; `None` for [`TransposePlan::Copy`].
    pub fn launch(&self) -> Option<([u32; 3], [u32; 3], u32)> {
        match self {
            TransposePlan::Copy { .. } => None,
            TransposePlan::Tile { kernel, batch, rows, cols } => {
                launch_config(kernel, *batch as usize * *rows as usize, *cols as usize).ok()
            }
            TransposePlan::General { kernel, args } => launch_config(kernel, args.numel as usize, 0).ok(),
        }
    }
}

/// Plans ONNX `Transpose(perm)` of a contiguous `shape` of `elem_bytes`-byte elements
/// (output dim `i` is input dim `perm[i]`). Size-1 dims are dropped and output dims that are
/// adjacent in the input merged; then: nothing moves → [`TransposePlan::Copy`]; a stack of
/// 2-D transposes (the innermost dim moves) → [`TransposePlan::Tile`]; otherwise
/// [`TransposePlan::General`], whose unit is widened up to 16 bytes when the innermost dim
/// stays innermost (e.g. `[B,S,H,64]` FP16 → `[B,H,S,64]` copies 16-byte units).
pub fn transpose_plan(shape: &[usize], perm: &[usize], elem_bytes: usize) -> Result<TransposePlan, OpShapeError> {
    let width = Width::from_bytes(elem_bytes)?;
    let rank = shape.len();
    let mut seen = vec![false; rank];
    if perm.len() != rank || perm.iter().any(|&p| p >= rank || std::mem::replace(&mut seen[p], true)) {
        return Err(OpShapeError::Perm { perm: perm.to_vec(), rank });
    }
    let numel: usize = shape.iter().product();
    too_large("transpose elements", numel, MAX_INDEXED)?;
    let bytes = numel * elem_bytes;
    let cs = contiguous_strides(shape);
    let merged = merge_dims(perm.iter().rev().map(|&p| (shape[p], [cs[p]])));
    if numel == 0 || merged.is_empty() || (merged.len() == 1 && merged[0].1[0] == 1) {
        return Ok(TransposePlan::Copy { bytes });
    }
    if merged.len() > MAX_RANK {
        return Err(OpShapeError::Rank { what: "transpose", rank: merged.len() });
    }
    // Output (innermost first) d0, d1[, d2] with input strides 1 along d1: the input is
    // [d2][d0][d1] (batch d2) and the output [d2][d1][d0].
    let tile = match merged.as_slice() {
        [(d0, [s0]), (d1, [1])] if *s0 == *d1 => Some((1, *d0, *d1)),
        [(d0, [s0]), (d1, [1]), (d2, [s2])] if *s0 == *d1 && *s2 == d0 * d1 => Some((*d2, *d0, *d1)),
        _ => None,
    };
    if let Some((batch, rows, cols)) = tile {
        return Ok(TransposePlan::Tile {
            kernel: OpKernel::TransposeTile(width),
            batch: batch as u32,
            rows: rows as u32,
            cols: cols as u32,
        });
    }
    // Widen: when the innermost output dim is the input's innermost (stride 1), every other
    // stride is a multiple of its size, so units of up to 16 bytes dividing its bytes work.
    let (d0, [s0]) = merged[0];
    let unit = if s0 == 1 { 1 << (d0 * elem_bytes).trailing_zeros().min(4) } else { elem_bytes };
    let k = unit / elem_bytes;
    let mut args = PermArgs { rank: merged.len() as u32, numel: (numel / k) as u32, ..Default::default() };
    for (d, (size, [st])) in merged.into_iter().enumerate() {
        let (size, st) = if k == 1 {
            (size, st)
        } else if d == 0 {
            (size / k, 1)
        } else {
            (size, st / k)
        };
        (args.dims[d], args.strides[d]) = (size as u32, st as u32);
    }
    Ok(TransposePlan::General { kernel: OpKernel::Transpose(Width::from_bytes(unit)?), args })
}

/// How to run one Gather node: the arguments of `fpx_gather_<w>` after `data`, `idx`, `y`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatherPlan {
    /// [`OpKernel::Gather`] with the (possibly widened) unit.
    pub kernel: OpKernel,
    /// The output shape: `data[..axis] ++ indices ++ data[axis + 1..]`.
    pub out_shape: Vec<usize>,
    /// Product of the dims before the axis.
    pub outer: u32,
    /// The gathered dim's size.
    pub axis_dim: u32,
    /// Number of indices.
    pub n_idx: u32,
    /// Units per gathered slice (product of the dims after the axis, in units).
    pub inner: u32,
    /// Output units (`outer * n_idx * inner`): the `n` of [`launch_config`].
    pub units: usize,
}

impl GatherPlan {
    /// [`launch_config`] for this plan.
    pub fn launch(&self) -> Result<([u32; 3], [u32; 3], u32), OpShapeError> {
        launch_config(&self.kernel, self.units, 0)
    }
}

/// Plans ONNX `Gather(data, indices, axis)` for `elem_bytes`-byte elements; the unit is widened
/// up to 16 bytes when the bytes of one gathered slice allow.
pub fn gather_plan(data_shape: &[usize], axis: i64, indices_shape: &[usize], elem_bytes: usize) -> Result<GatherPlan, OpShapeError> {
    Width::from_bytes(elem_bytes)?;
    let rank = data_shape.len();
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a >= rank as i64 {
        return Err(OpShapeError::Axis { axis, rank });
    }
    let a = a as usize;
    let outer: usize = data_shape[..a].iter().product();
    let inner: usize = data_shape[a + 1..].iter().product();
    let n_idx: usize = indices_shape.iter().product();
    let slice_bytes = inner * elem_bytes;
    let unit = if slice_bytes == 0 { elem_bytes } else { 1 << slice_bytes.trailing_zeros().min(4) };
    let inner_units = slice_bytes / unit;
    let units = outer.saturating_mul(n_idx).saturating_mul(inner_units);
    too_large("gather output units", units, MAX_INDEXED)?;
    too_large("gather dims", outer.max(data_shape[a]).max(n_idx).max(inner_units), MAX_INDEXED)?;
    let mut out_shape = data_shape[..a].to_vec();
    out_shape.extend_from_slice(indices_shape);
    out_shape.extend_from_slice(&data_shape[a + 1..]);
    Ok(GatherPlan {
        kernel: OpKernel::Gather(Width::from_bytes(unit)?),
        out_shape,
        outer: outer as u32,
        axis_dim: data_shape[a] as u32,
        n_idx: n_idx as u32,
        inner: inner_units as u32,
        units,
    })
}

/// The full CUDA source of one family: the prelude, the template, and one wrapper per kernel.
pub fn family_source(family: OpFamily) -> String {
    let kernels = family.kernels();
    let mut src = String::with_capacity(OPS_COMMON.len() + family.template().len() + 256 * kernels.len());
    src.push_str(OPS_COMMON);
    src.push('\n');
    src.push_str(family.template());
    let _ = writeln!(src, "\n// ---- {} wrappers generated by fpx-cuda ----", family.name());
    for k in &kernels {
        src.push_str(&k.wrapper());
    }
    src
}

/// PTX of one op family for one arch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsPtx {
    /// The family.
    pub family: OpFamily,
    /// The architecture it was compiled for (its kernels are `family.kernels()`).
    pub arch: Arch,
    /// The PTX source.
    pub src: Arc<str>,
}

impl OpsPtx {
    /// The module name (`fpx_ops_elementwise`).
    pub fn module_name(&self) -> String {
        self.family.module_name()
    }

    /// As the crate's [`Ptx`] (for [`ptxas_check`](crate::ptxas_check)); its `kernel` is the
    /// module name.
    pub fn to_ptx(&self) -> Ptx {
        Ptx { arch: self.arch, kernel: self.module_name(), reduce_kernel: None, src: self.src.clone() }
    }
}

/// The family sources are fixed at build time, so a family and an arch identify a module.
type OpsCacheKey = (OpFamily, Arch);

fn ops_cache() -> &'static Mutex<HashMap<OpsCacheKey, OpsPtx>> {
    static CACHE: OnceLock<Mutex<HashMap<OpsCacheKey, OpsPtx>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

static OPS_COMPILATIONS: AtomicU64 = AtomicU64::new(0);

/// Number of NVRTC compilations of op families this process has run (cache misses).
pub fn ops_nvrtc_compilations() -> u64 {
    OPS_COMPILATIONS.load(Ordering::Relaxed)
}

/// Compiles one family with NVRTC for `arch` (C++17, `compute_XX`, as the GEMM), cached in
/// memory per (family, arch). Errors: [`CudaError::NoNvrtc`], or
/// [`CudaError::Compile`] with NVRTC's log.
pub fn compile_family_ptx(family: OpFamily, arch: Arch) -> Result<OpsPtx, CudaError> {
    let key = (family, arch);
    if let Some(p) = ops_cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(p.clone());
    }
    let src = nvrtc_ptx(&family_source(family), &family.module_name(), arch, &OPS_COMPILATIONS)?;
    let out = OpsPtx { family, arch, src };
    ops_cache().lock().unwrap_or_else(|e| e.into_inner()).insert(key, out.clone());
    Ok(out)
}

/// Compiles every op family for `arch` ([`OpFamily::ALL`] order): one PTX module each.
pub fn compile_ops_ptx(arch: Arch) -> Result<Vec<OpsPtx>, CudaError> {
    OpFamily::ALL.iter().map(|&f| compile_family_ptx(f, arch)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                let j = self.below(i + 1);
                v.swap(i, j);
            }
        }
    }

    /// The kernels' digit decomposition (`binary_bcast`, `transpose`): output index `i` →
    /// offset per stride array.
    fn replay_offsets<const K: usize>(i: usize, rank: u32, dims: &[u32; MAX_RANK], strides: [&[u32; MAX_RANK]; K]) -> [u32; K] {
        let (mut r, mut off) = (i as u32, [0u32; K]);
        for d in 0..MAX_RANK {
            if d < rank as usize {
                let q = r / dims[d];
                let c = r - q * dims[d];
                for k in 0..K {
                    off[k] += c * strides[k][d];
                }
                r = q;
            }
        }
        off
    }

    /// Multi-index of row-major `i` in `shape`.
    fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; shape.len()];
        for d in (0..shape.len()).rev() {
            idx[d] = i % shape[d];
            i /= shape[d];
        }
        idx
    }

    /// Numpy's rule, naively: the flat offset in `s` of output multi-index `idx`.
    fn naive_bcast_offset(idx: &[usize], s: &[usize]) -> usize {
        let skip = idx.len() - s.len();
        let cs = contiguous_strides(s);
        (0..s.len()).map(|d| if s[d] == 1 { 0 } else { idx[skip + d] * cs[d] }).sum()
    }

    fn random_shape(rng: &mut Rng, max_rank: usize) -> Vec<usize> {
        (0..rng.below(max_rank + 1)).map(|_| [1, 1, 2, 3, 4, 5, 7][rng.below(7)]).collect()
    }

    #[test]
    fn broadcast_args_replayed_match_numpy_broadcasting() {
        let mut rng = Rng(0x5eed_0001);
        let mut ranks = BTreeSet::new();
        for case in 0..3000 {
            let out = random_shape(&mut rng, 7);
            // Inputs: the output's trailing dims, some set to 1, some leading dims dropped.
            let derive = |rng: &mut Rng| -> Vec<usize> {
                let drop = rng.below(out.len() + 1).min(if rng.below(2) == 0 { 0 } else { out.len() });
                out[drop..].iter().map(|&d| if rng.below(3) == 0 { 1 } else { d }).collect()
            };
            let (a, b) = (derive(&mut rng), derive(&mut rng));
            let shape = broadcast_shape(&a, &b).unwrap();
            let args = match broadcast_args(&a, &b) {
                Ok(args) => args,
                Err(OpShapeError::Rank { rank, .. }) => {
                    assert!(rank > MAX_RANK && shape.len() > MAX_RANK, "case {case}: {a:?} {b:?}");
                    continue;
                }
                Err(e) => panic!("case {case}: {a:?} {b:?}: {e}"),
            };
            ranks.insert(args.rank);
            let numel: usize = shape.iter().product();
            assert_eq!(args.numel as usize, numel);
            if numel > 0 {
                assert_eq!(args.dims[..args.rank as usize].iter().map(|&d| d as usize).product::<usize>(), numel);
            }
            for i in 0..numel {
                let idx = unravel(i, &shape);
                let [oa, ob] = replay_offsets(i, args.rank, &args.dims, [&args.sa, &args.sb]);
                assert_eq!(
                    (oa as usize, ob as usize),
                    (naive_bcast_offset(&idx, &a), naive_bcast_offset(&idx, &b)),
                    "case {case}: {a:?} {b:?} i={i}"
                );
            }
            let plan = binary_plan(BinaryOp::Add, Elem::F16, &a, &b).unwrap();
            assert_eq!(plan.out_shape, shape);
            if plan.kernel == (OpKernel::Binary { op: BinaryOp::Add, elem: Elem::F16 }) {
                let (ea, eb): (usize, usize) = (a.iter().product(), b.iter().product());
                assert_eq!((ea, eb), (numel, numel), "same-shape kernel for {a:?} {b:?}");
            }
        }
        assert!(ranks.contains(&0) && ranks.contains(&1) && ranks.contains(&4), "ranks seen: {ranks:?}");
        // Typical transformer cases merge to few dims.
        let bias = broadcast_args(&[2, 128, 384], &[384]).unwrap();
        assert_eq!((bias.rank, &bias.dims[..2], &bias.sa[..2], &bias.sb[..2]), (2, &[384, 256][..], &[1, 384][..], &[1, 0][..]));
        let mask = broadcast_args(&[2, 12, 128, 128], &[2, 1, 1, 128]).unwrap();
        assert_eq!((mask.rank, &mask.dims[..3], &mask.sb[..3]), (3, &[128, 1536, 2][..], &[1, 0, 128][..]));
        let same = binary_plan(BinaryOp::Mul, Elem::F32, &[4, 5], &[1, 4, 5]).unwrap();
        assert_eq!((same.kernel, same.numel), (OpKernel::Binary { op: BinaryOp::Mul, elem: Elem::F32 }, 20));
        let scalar = binary_plan(BinaryOp::Div, Elem::F16, &[3, 7], &[]).unwrap();
        assert_eq!(scalar.kernel, OpKernel::BinaryBcast { op: BinaryOp::Div, elem: Elem::F16 });
        assert_eq!((scalar.args.rank, scalar.args.sb[0]), (1, 0));
        // Errors, never panics.
        assert!(matches!(broadcast_args(&[2, 3], &[4, 3]), Err(OpShapeError::Broadcast { .. })));
        let alt = [2, 1, 2, 1, 2, 1, 2, 1];
        let alt_b = [1, 2, 1, 2, 1, 2, 1, 2];
        assert!(matches!(broadcast_args(&alt, &alt_b), Err(OpShapeError::Rank { rank: 8, .. })));
        assert!(matches!(broadcast_args(&[1 << 20, 1 << 12], &[1]), Err(OpShapeError::TooLarge { .. })));
        assert_eq!(broadcast_args(&[0, 3], &[3]).unwrap().numel, 0);
        assert_eq!(broadcast_shape(&[1, 0], &[5, 1]).unwrap(), [5, 0]);
    }

    /// Replays the same-shape elementwise kernels' loops (vector part when every pointer is
    /// aligned, then the scalar tail grid-stride) for one launch; returns hits per element.
    fn replay_elementwise(n: usize, vec: usize, aligned: bool, grid: u32) -> Vec<u8> {
        let mut hits = vec![0u8; n];
        let step = grid as usize * OP_THREADS as usize;
        for t in 0..step {
            let mut done = 0;
            if aligned {
                let nv = n / vec;
                let mut v = t;
                while v < nv {
                    for h in &mut hits[v * vec..(v + 1) * vec] {
                        *h += 1;
                    }
                    v += step;
                }
                done = nv * vec;
            }
            let mut i = done + t;
            while i < n {
                hits[i] += 1;
                i += step;
            }
        }
        hits
    }

    #[test]
    fn elementwise_launches_cover_every_element_once() {
        for kernel in [
            OpKernel::Unary { op: UnaryOp::Gelu, elem: Elem::F16 },
            OpKernel::Binary { op: BinaryOp::Add, elem: Elem::F32 },
            OpKernel::Cast(CastOp::F16ToF32),
            OpKernel::BinaryBcast { op: BinaryOp::Mul, elem: Elem::F16 },
        ] {
            let Geometry::Elements { vec, .. } = kernel.geometry() else { panic!() };
            for n in [1, 7, 8, 9, 255, 256, 257, 2047, 2048, 2049, 100_003] {
                let (grid, block, shared) = launch_config(&kernel, n, 0).unwrap();
                assert_eq!((block, shared, grid[1], grid[2]), ([OP_THREADS, 1, 1], 0, 1, 1));
                assert!(grid[0] >= 1 && grid[0] <= MAX_GRID);
                for aligned in [true, false] {
                    for g in [grid[0], 1, 3] {
                        let hits = replay_elementwise(n, vec as usize, aligned && vec > 1, g);
                        assert!(hits.iter().all(|&h| h == 1), "{kernel} n={n} aligned={aligned} grid={g}");
                    }
                }
            }
            assert_eq!(launch_config(&kernel, 0, 0).unwrap().0[0], 0, "n = 0: nothing to launch");
            let (big, _, _) = launch_config(&kernel, 1 << 31, 0).unwrap();
            assert_eq!(big[0], MAX_GRID);
        }
        assert_eq!(launch_config(&OpKernel::Unary { op: UnaryOp::Exp, elem: Elem::F16 }, 8 * 256 * 3, 0).unwrap().0, [3, 1, 1]);
        assert!(matches!(
            launch_config(&OpKernel::BinaryBcast { op: BinaryOp::Add, elem: Elem::F32 }, 1 << 32, 0),
            Err(OpShapeError::TooLarge { .. })
        ));
        assert!(launch_config(&OpKernel::Unary { op: UnaryOp::Exp, elem: Elem::F32 }, 1 << 33, 0).is_ok());
    }

    #[test]
    fn row_launches_cover_every_row_and_column_once() {
        for kernel in
            [OpKernel::LayerNorm(Elem::F16), OpKernel::Softmax(Elem::F32), OpKernel::Reduce { op: ReduceOp::Mean, elem: Elem::F16 }]
        {
            for rows in [1, 2, 3, 7, 8, 9, 31, 33, 100] {
                for cols in [0, 1, 7, 31, 32, 33, 64, 100, 128, 384, 1000, 1536, 2049, 4096, 5000] {
                    let (grid, block, shared) = launch_config(&kernel, rows, cols).unwrap();
                    let (tx, ty) = (block[0] as usize, block[1] as usize);
                    assert_eq!((block[0] * block[1], block[2], shared, grid[1], grid[2]), (OP_THREADS, 1, 0, 1, 1));
                    assert!(tx.is_power_of_two() && (32..=256).contains(&tx), "rows of whole warps");
                    let mut hits = vec![0u8; rows * cols];
                    let mut row_owner = vec![0u8; rows];
                    for bx in 0..grid[0] as usize {
                        for y in 0..ty {
                            // RowPos: row = blockIdx.x * blockDim.y + threadIdx.y; n = row < rows ? cols : 0.
                            let row = bx * ty + y;
                            let n = if row < rows { cols } else { 0 };
                            if row < rows {
                                row_owner[row] += 1;
                            }
                            for x in 0..tx {
                                let mut c = x;
                                while c < n {
                                    hits[row * cols + c] += 1;
                                    c += tx;
                                }
                            }
                        }
                    }
                    assert!(row_owner.iter().all(|&h| h == 1), "{kernel} rows={rows} cols={cols}");
                    assert!(hits.iter().all(|&h| h == 1), "{kernel} rows={rows} cols={cols}");
                }
            }
        }
        assert_eq!([1, 256, 384, 1024, 2048, 4096, 32000].map(row_threads), [32, 32, 64, 128, 256, 256, 256]);
        assert_eq!(launch_config(&OpKernel::Softmax(Elem::F16), 0, 128).unwrap().0[0], 0);
        assert!(launch_config(&OpKernel::Softmax(Elem::F16), 1 << 31, 8).is_err());
    }

    /// Naive ONNX Transpose on bytes.
    fn naive_transpose(x: &[u8], shape: &[usize], perm: &[usize], eb: usize) -> Vec<u8> {
        let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        let cs = contiguous_strides(shape);
        let numel: usize = shape.iter().product();
        let mut y = vec![0u8; numel * eb];
        for i in 0..numel {
            let idx = unravel(i, &out_shape);
            let src: usize = (0..perm.len()).map(|d| idx[d] * cs[perm[d]]).sum();
            y[i * eb..(i + 1) * eb].copy_from_slice(&x[src * eb..(src + 1) * eb]);
        }
        y
    }

    /// Runs a transpose plan on the CPU the way the kernels index; every output unit must be
    /// written exactly once.
    fn replay_transpose(plan: &TransposePlan, x: &[u8]) -> Vec<u8> {
        let mut y = vec![0u8; x.len()];
        let mut hits = vec![0u8; x.len()];
        match plan {
            TransposePlan::Copy { bytes } => {
                assert_eq!(*bytes, x.len());
                return x.to_vec();
            }
            TransposePlan::General { kernel, args } => {
                let OpKernel::Transpose(w) = kernel else { panic!("{kernel}") };
                let u = w.bytes();
                assert_eq!(args.numel as usize * u, x.len());
                let (grid, block, _) = plan.launch().unwrap();
                let step = (grid[0] * block[0]) as usize;
                for t in 0..step {
                    let mut i = t;
                    while i < args.numel as usize {
                        let [off] = replay_offsets(i, args.rank, &args.dims, [&args.strides]);
                        let off = off as usize;
                        y[i * u..(i + 1) * u].copy_from_slice(&x[off * u..(off + 1) * u]);
                        hits[i * u] += 1;
                        i += step;
                    }
                }
                for i in 0..args.numel as usize {
                    assert_eq!(hits[i * u], 1, "{plan:?}: unit {i}");
                }
            }
            TransposePlan::Tile { kernel, batch, rows, cols } => {
                let OpKernel::TransposeTile(w) = kernel else { panic!("{kernel}") };
                let (u, batch, rows, cols) = (w.bytes(), *batch as usize, *rows as usize, *cols as usize);
                assert_eq!(batch * rows * cols * u, x.len());
                let (grid, block, _) = plan.launch().unwrap();
                assert_eq!(block, [32, 8, 1]);
                let total = batch * rows;
                for bx in 0..grid[0] as usize {
                    for by in 0..grid[1] as usize {
                        let c0 = bx * 32;
                        let mut r0 = by * 32;
                        while r0 < total {
                            // Read phase: tile[ty + j][tx] = x[gr * cols + c0 + tx].
                            let mut tile: Vec<Option<&[u8]>> = vec![None; 32 * 33];
                            for ty in 0..8 {
                                for tx in 0..32 {
                                    for j in (0..32).step_by(8) {
                                        let gr = r0 + ty + j;
                                        if gr < total && c0 + tx < cols {
                                            let src = gr * cols + c0 + tx;
                                            tile[(ty + j) * 33 + tx] = Some(&x[src * u..(src + 1) * u]);
                                        }
                                    }
                                }
                            }
                            // Write phase: y[b][c][r] = tile[tx][ty + j].
                            for ty in 0..8 {
                                for tx in 0..32 {
                                    for j in (0..32).step_by(8) {
                                        let (c, gr) = (c0 + ty + j, r0 + tx);
                                        if gr < total && c < cols {
                                            let (b, r) = (gr / rows, gr % rows);
                                            let dst = (b * cols + c) * rows + r;
                                            let v = tile[tx * 33 + ty + j].expect("tile entry read before it was loaded");
                                            y[dst * u..(dst + 1) * u].copy_from_slice(v);
                                            hits[dst * u] += 1;
                                        }
                                    }
                                }
                            }
                            r0 += grid[1] as usize * 32;
                        }
                    }
                }
                for i in 0..batch * rows * cols {
                    assert_eq!(hits[i * u], 1, "{plan:?}: unit {i}");
                }
            }
        }
        y
    }

    #[test]
    fn transpose_plans_replayed_match_a_naive_transpose() {
        let mut rng = Rng(0x5eed_0002);
        let mut kinds = BTreeSet::new();
        for case in 0..1500 {
            let shape: Vec<usize> = (0..1 + rng.below(6)).map(|_| [1, 2, 3, 4, 5, 8, 33][rng.below(7)]).collect();
            let mut perm: Vec<usize> = (0..shape.len()).collect();
            rng.shuffle(&mut perm);
            let eb = [1, 2, 4, 8][rng.below(4)];
            let numel: usize = shape.iter().product();
            if numel > 200_000 {
                continue;
            }
            let x: Vec<u8> = (0..numel * eb).map(|_| rng.next() as u8).collect();
            let plan = transpose_plan(&shape, &perm, eb).unwrap_or_else(|e| panic!("case {case}: {e}"));
            kinds.insert(match &plan {
                TransposePlan::Copy { .. } => "copy".to_string(),
                TransposePlan::Tile { kernel, .. } | TransposePlan::General { kernel, .. } => kernel.name(),
            });
            assert_eq!(
                replay_transpose(&plan, &x),
                naive_transpose(&x, &shape, &perm, eb),
                "case {case}: {shape:?} {perm:?} x{eb}: {plan:?}"
            );
        }
        for k in ["copy", "fpx_transpose_tile_b8", "fpx_transpose_tile_b64", "fpx_transpose_b8", "fpx_transpose_b128"] {
            assert!(kinds.contains(k), "{k} never planned: {kinds:?}");
        }
        // Attention: heads split ([B,S,H,D] -> [B,H,S,D]) copies 128-byte rows as 16-byte units;
        // K^T ([B,S,H,D] -> [B,H,D,S]) is a stack of B 2-D transposes of [S][H*D]. Neither moves.
        let split = transpose_plan(&[2, 128, 12, 64], &[0, 2, 1, 3], 2).unwrap();
        let TransposePlan::General { kernel, args } = &split else { panic!("{split:?}") };
        assert_eq!(
            (*kernel, args.rank, &args.dims[..4], &args.strides[..4]),
            (OpKernel::Transpose(Width::B128), 4, &[8, 128, 12, 2][..], &[1, 96, 8, 12288][..])
        );
        let kt = transpose_plan(&[2, 128, 12, 64], &[0, 2, 3, 1], 2).unwrap();
        assert_eq!(kt, TransposePlan::Tile { kernel: OpKernel::TransposeTile(Width::B16), batch: 2, rows: 128, cols: 768 });
        assert_eq!(transpose_plan(&[1, 5, 1, 3], &[2, 0, 1, 3], 4).unwrap(), TransposePlan::Copy { bytes: 60 });
        assert_eq!(transpose_plan(&[], &[], 4).unwrap(), TransposePlan::Copy { bytes: 4 });
        // Errors, never panics.
        assert!(matches!(transpose_plan(&[2, 3], &[0, 0], 4), Err(OpShapeError::Perm { .. })));
        assert!(matches!(transpose_plan(&[2, 3], &[0, 2], 4), Err(OpShapeError::Perm { .. })));
        assert!(matches!(transpose_plan(&[2, 3], &[1], 4), Err(OpShapeError::Perm { .. })));
        assert!(matches!(transpose_plan(&[2, 3], &[1, 0], 3), Err(OpShapeError::ElemSize(3))));
        let shape7 = [2, 2, 2, 2, 2, 2, 2];
        assert!(matches!(transpose_plan(&shape7, &[6, 5, 4, 3, 2, 1, 0], 2), Err(OpShapeError::Rank { rank: 7, .. })));
        assert!(matches!(transpose_plan(&[1 << 20, 1 << 13], &[1, 0], 2), Err(OpShapeError::TooLarge { .. })));
    }

    #[test]
    fn gather_plans_replayed_match_a_naive_gather() {
        let mut rng = Rng(0x5eed_0003);
        let mut widths = BTreeSet::new();
        for case in 0..600 {
            let data_shape: Vec<usize> = (0..1 + rng.below(4)).map(|_| [1, 2, 3, 4, 6, 8][rng.below(6)]).collect();
            let rank = data_shape.len();
            let axis = rng.below(rank) as i64 - if rng.below(2) == 0 { rank as i64 } else { 0 };
            let a = axis.rem_euclid(rank as i64) as usize;
            let idx_shape: Vec<usize> = (0..rng.below(3)).map(|_| 1 + rng.below(3)).collect();
            let n_idx: usize = idx_shape.iter().product();
            let dim = data_shape[a] as i64;
            let oob = rng.below(4) == 0;
            let idx: Vec<i64> = (0..n_idx)
                .map(|_| {
                    if oob && rng.below(3) == 0 {
                        dim + rng.below(2) as i64 * (-3 * dim)
                    } else {
                        rng.below(2 * dim as usize) as i64 - dim
                    }
                })
                .collect();
            let eb = [1, 2, 4, 8][rng.below(4)];
            let numel: usize = data_shape.iter().product();
            let data: Vec<u8> = (0..numel * eb).map(|_| rng.next() as u8).collect();
            let plan = gather_plan(&data_shape, axis, &idx_shape, eb).unwrap();
            let OpKernel::Gather(w) = plan.kernel else { panic!() };
            widths.insert(w);
            // Naive.
            let (outer, inner) = (data_shape[..a].iter().product::<usize>(), data_shape[a + 1..].iter().product::<usize>());
            let mut want = Vec::new();
            let mut want_err = false;
            for o in 0..outer {
                for &k in &idx {
                    let k = if k < 0 { k + dim } else { k };
                    if k < 0 || k >= dim {
                        want_err = true;
                        want.resize(want.len() + inner * eb, 0);
                    } else {
                        let s = (o * dim as usize + k as usize) * inner * eb;
                        want.extend_from_slice(&data[s..s + inner * eb]);
                    }
                }
            }
            assert_eq!(plan.out_shape.iter().product::<usize>() * eb, want.len());
            // Kernel replay.
            let u = w.bytes();
            let (grid, block, _) = plan.launch().unwrap();
            let step = (grid[0] * block[0]) as usize;
            let mut y = vec![0xAAu8; plan.units * u];
            let mut err = 0;
            let mut hits = vec![0u8; plan.units];
            for t in 0..step {
                let mut i = t;
                while i < plan.units {
                    let r = i as u32;
                    let (inn, tt) = (r % plan.inner, r / plan.inner);
                    let (j, o) = (tt % plan.n_idx, tt / plan.n_idx);
                    let mut k = idx[j as usize];
                    if k < 0 {
                        k += plan.axis_dim as i64;
                    }
                    if k < 0 || k >= plan.axis_dim as i64 {
                        y[i * u..(i + 1) * u].fill(0);
                        err |= 1;
                    } else {
                        let s = ((o as usize * plan.axis_dim as usize + k as usize) * plan.inner as usize + inn as usize) * u;
                        y[i * u..(i + 1) * u].copy_from_slice(&data[s..s + u]);
                    }
                    hits[i] += 1;
                    i += step;
                }
            }
            assert!(hits.iter().all(|&h| h == 1), "case {case}");
            assert_eq!((y, err == 1), (want, want_err), "case {case}: {data_shape:?} axis {axis} {idx:?} x{eb}: {plan:?}");
        }
        assert!(widths.contains(&Width::B128) && widths.contains(&Width::B8), "{widths:?}");
        // Embedding lookup: [vocab, 384] FP16 rows copied as 48 units of 16 bytes.
        let emb = gather_plan(&[30522, 384], 0, &[2, 128], 2).unwrap();
        assert_eq!(
            (emb.kernel, emb.out_shape.as_slice(), emb.outer, emb.axis_dim, emb.n_idx, emb.inner),
            (OpKernel::Gather(Width::B128), &[2, 128, 384][..], 1, 30522, 256, 48)
        );
        assert!(matches!(gather_plan(&[3, 4], 2, &[1], 4), Err(OpShapeError::Axis { axis: 2, rank: 2 })));
        assert!(matches!(gather_plan(&[3, 4], -3, &[1], 4), Err(OpShapeError::Axis { .. })));
        assert!(matches!(gather_plan(&[], 0, &[1], 4), Err(OpShapeError::Axis { .. })));
        assert!(matches!(gather_plan(&[3, 4], 0, &[1], 5), Err(OpShapeError::ElemSize(5))));
        assert!(matches!(gather_plan(&[2, 1 << 20], 0, &[1 << 15], 4), Err(OpShapeError::TooLarge { .. })));
        assert_eq!(gather_plan(&[3, 4], 1, &[0], 4).unwrap().units, 0);
    }

    /// The CPU replays above transcribe these lines of the templates; if they change, the
    /// replays must too.
    #[test]
    fn replays_mirror_the_template_text() {
        for (text, needles) in [
            (
                ELEMENTWISE_TEMPLATE,
                &[
                    "const fpx_u32 q = r / s.dims[d], c = r - q * s.dims[d];",
                    "oa += c * s.sa[d];",
                    "ob += c * s.sb[d];",
                    "if (aligned16(a) && aligned16(b) && aligned16(y)) {",
                    "const fpx_u64 nv = n / E::VEC;",
                    "done = nv * E::VEC;",
                    "for (fpx_u64 i = done + i0; i < n; i += step)",
                    "static_assert(sizeof(fpx_bcast) == 80",
                ][..],
            ),
            (
                TRANSPOSE_TEMPLATE,
                &[
                    "off += (r - q * p.dims[d]) * p.strides[d];",
                    "if (gr < total && c0 + tx < cols) tile[ty + j][tx] = x[gr * cols + c0 + tx];",
                    "const fpx_u32 b = (fpx_u32)gr / rows, r = (fpx_u32)gr - b * rows;",
                    "y[((fpx_u64)b * cols + c) * rows + r] = tile[tx][ty + j];",
                    "for (fpx_u64 r0 = (fpx_u64)blockIdx.y * 32; r0 < total; r0 += (fpx_u64)gridDim.y * 32) {",
                    "static_assert(sizeof(fpx_perm) == 56",
                ][..],
            ),
            (
                GATHER_TEMPLATE,
                &[
                    "const fpx_u32 in = r % inner, t = r / inner;",
                    "const fpx_u32 j = t % n_idx, o = t / n_idx;",
                    "if (k < 0) k += axis_dim;",
                    "y[i] = data[((fpx_u64)o * axis_dim + (fpx_u64)k) * inner + in];",
                ][..],
            ),
            (
                OPS_COMMON,
                &[
                    "row = blockIdx.x * blockDim.y + threadIdx.y;",
                    "n = row < rows ? cols : 0;",
                    "#define FPX_THREADS 256",
                    "#define FPX_MAX_RANK 6",
                ][..],
            ),
        ] {
            for needle in needles {
                assert!(text.contains(needle), "template changed: {needle}");
            }
        }
        for t in [LAYERNORM_TEMPLATE, SOFTMAX_TEMPLATE, REDUCE_TEMPLATE] {
            assert!(t.contains("for (fpx_u32 c = threadIdx.x; c < p.n; c += blockDim.x)"));
        }
        assert_eq!(std::mem::size_of::<BcastArgs>(), 80);
        assert_eq!(std::mem::size_of::<PermArgs>(), 56);
        assert_eq!(OP_THREADS, 256);
    }

    #[test]
    fn kernel_names_are_unique_and_sources_hold_every_wrapper() {
        let all = OpKernel::all();
        let names: BTreeSet<String> = all.iter().map(OpKernel::name).collect();
        assert_eq!(names.len(), all.len());
        assert_eq!(all.len(), 22 + 14 + 14 + 4 + 2 + 2 + 4 + 5 + 10);
        for name in [
            "fpx_add_f16",
            "fpx_add_bcast_f32",
            "fpx_gelu_tanh_f16",
            "fpx_cast_i64_f32",
            "fpx_layernorm_f16",
            "fpx_softmax_f32",
            "fpx_reduce_mean_f16",
            "fpx_gather_b128",
            "fpx_transpose_tile_b16",
        ] {
            assert!(names.contains(name), "{name}");
        }
        for family in OpFamily::ALL {
            let src = family_source(family);
            assert!(src.starts_with(OPS_COMMON) && src.contains(family.template()));
            for k in family.kernels() {
                assert_eq!(k.family(), family);
                assert!(src.contains(&format!("__launch_bounds__(256) {}(", k.name())), "{k}");
            }
        }
        assert_eq!(
            OpKernel::LayerNorm(Elem::F16).c_prototype(),
            "void fpx_layernorm_f16(const fpx_u16* x, const fpx_u16* gamma, const fpx_u16* beta, fpx_u16* y, fpx_u32 rows, fpx_u32 cols, float eps)"
        );
        assert_eq!(
            OpKernel::BinaryBcast { op: BinaryOp::Pow, elem: Elem::F32 }.wrapper(),
            "extern \"C\" __global__ void __launch_bounds__(256) fpx_pow_bcast_f32(const float* a, const float* b, float* y, fpx_bcast s) {\n    fpx::binary_bcast<fpx::F32, 4>(a, b, y, s);\n}\n"
        );
        assert_eq!(OpKernel::Cast(CastOp::I64ToF16).wrapper().lines().nth(1), Some("    fpx::cast<fpx::I64, fpx::F16>(x, y, n);"));
        assert_eq!(OpFamily::LayerNorm.module_name(), "fpx_ops_layernorm");
    }
}
