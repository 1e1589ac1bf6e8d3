//! The op families and their source text: the kernel templates, the ops and storage types
//! they are instantiated for, every [`OpKernel`] with its name and C prototype, and
//! [`family_source`] (prelude + template + generated `extern "C"` wrappers).

use std::fmt::Write as _;

use super::{OpShapeError, OP_THREADS};

/// The prelude every op family is compiled with (`kernels-templates/ops_common.cuh`).
pub const OPS_COMMON: &str = include_str!("../../../../kernels-templates/ops_common.cuh");
/// `kernels-templates/elementwise.cu`.
pub const ELEMENTWISE_TEMPLATE: &str = include_str!("../../../../kernels-templates/elementwise.cu");
/// `kernels-templates/layernorm.cu`.
pub const LAYERNORM_TEMPLATE: &str = include_str!("../../../../kernels-templates/layernorm.cu");
/// `kernels-templates/softmax.cu`.
pub const SOFTMAX_TEMPLATE: &str = include_str!("../../../../kernels-templates/softmax.cu");
/// `kernels-templates/reduce.cu`.
pub const REDUCE_TEMPLATE: &str = include_str!("../../../../kernels-templates/reduce.cu");
/// `kernels-templates/gather.cu`.
pub const GATHER_TEMPLATE: &str = include_str!("../../../../kernels-templates/gather.cu");
/// `kernels-templates/transpose.cu`.
pub const TRANSPOSE_TEMPLATE: &str = include_str!("../../../../kernels-templates/transpose.cu");

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
    /// `fpx_<op>_bcast_<elem>(const T* a, const T* b, T* y, fpx_bcast s)`: see [`BcastArgs`](super::BcastArgs).
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
    /// `fpx_transpose_<w>(const U* x, U* y, fpx_perm p)`: see [`PermArgs`](super::PermArgs).
    Transpose(Width),
    /// `fpx_transpose_tile_<w>(const U* x, U* y, fpx_u32 batch, fpx_u32 rows, fpx_u32 cols)`.
    TransposeTile(Width),
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
}

impl std::fmt::Display for OpKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
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
