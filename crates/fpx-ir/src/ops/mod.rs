//! The op schema registry: for each supported op, the opset range, arity, attributes and
//! shape/type inference. Kernels live elsewhere (fpx-runtime) and are keyed by the same names.

/// An optional attribute of a schema (a struct literal, so `&[...]` of them is a promoted
/// `'static`); used by the `defs*` tables below.
macro_rules! opt {
    ($name:literal, $kind:expr) => {
        $crate::ops::AttrSpec { name: $name, kind: $kind, required: false }
    };
}

/// A required attribute of a schema.
macro_rules! req {
    ($name:literal, $kind:expr) => {
        $crate::ops::AttrSpec { name: $name, kind: $kind, required: true }
    };
}

mod defs;
mod defs_indexing;
mod defs_nn;
pub mod einsum;
pub mod fused_attention;
mod infer;
mod infer_indexing;
mod infer_nn;
pub mod kv_append;
pub mod quant_gather;
pub mod quant_matmul;
pub mod rotate_half;

pub use infer::{broadcast_dims, normalize_axis};
pub use infer_nn::{conv_output_dim, AutoPad};

use crate::{AttrKind, Graph, IrError, Node, Result, Tensor, TensorType};
use std::collections::HashMap;
use std::ops::RangeInclusive;

/// The domain of fpx's own ops (`QuantMatMul`); its opset version is 1.
pub const FPX_DOMAIN: &str = "fpx";

/// The newest ONNX default-domain opset fpx accepts.
pub const MAX_ONNX_OPSET: i64 = 27;

/// What an op's inference function sees: the node, its input types, and constant inputs.
pub struct InferCtx<'a> {
    /// The node being inferred.
    pub node: &'a Node,
    /// Input types (`None`: omitted input or unknown type).
    pub inputs: Vec<Option<&'a TensorType>>,
    /// Constant input data, where the input is a constant.
    pub consts: Vec<Option<&'a Tensor>>,
}

impl<'a> InferCtx<'a> {
    /// The type of input `i`, if present and known.
    pub fn input(&self, i: usize) -> Option<&'a TensorType> {
        self.inputs.get(i).copied().flatten()
    }

    /// The constant data of input `i`, if it is a constant.
    pub fn konst(&self, i: usize) -> Option<&'a Tensor> {
        self.consts.get(i).copied().flatten()
    }

    /// A type error naming this node.
    pub fn error(&self, message: impl Into<String>) -> IrError {
        IrError::TypeMismatch { node: self.node.name.clone(), op: self.node.op_type.clone(), message: message.into() }
    }
}

/// Computes output types from input types; `None` for an output nothing can be said about.
pub type InferFn = fn(&InferCtx) -> Result<Vec<Option<TensorType>>>;

/// A declared attribute of an op.
#[derive(Debug, Clone, Copy)]
pub struct AttrSpec {
    /// Attribute name.
    pub name: &'static str,
    /// The kind its value must have.
    pub kind: AttrKind,
    /// Whether the node must carry it.
    pub required: bool,
}

/// The schema of one op.
#[derive(Clone)]
pub struct OpDef {
    /// Op type (`MatMul`).
    pub op_type: &'static str,
    /// Domain (`""` = ONNX default domain).
    pub domain: &'static str,
    /// Opset versions whose semantics fpx implements for this op.
    pub opsets: RangeInclusive<i64>,
    /// Allowed number of inputs (omitted optional inputs count as present slots).
    pub inputs: RangeInclusive<usize>,
    /// Allowed number of outputs.
    pub outputs: RangeInclusive<usize>,
    /// Declared attributes; any other attribute is an error.
    pub attrs: &'static [AttrSpec],
    /// Shape and type inference.
    pub infer: InferFn,
}

impl std::fmt::Debug for OpDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpDef({}:{} opsets {:?})", self.domain, self.op_type, self.opsets)
    }
}

/// All op schemas fpx knows, looked up by (domain, op type).
#[derive(Debug, Clone, Default)]
pub struct OpRegistry {
    defs: HashMap<(String, String), OpDef>,
}

/// The one spelling of a domain: ONNX's default domain may be written `""` or `"ai.onnx"`;
/// both become `""`. Every lookup by domain (schemas, kernels, opset imports) goes through this.
pub fn canonical_domain(d: &str) -> &str {
    if d == "ai.onnx" {
        ""
    } else {
        d
    }
}

impl OpRegistry {
    /// An empty registry.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The registry of every built-in op.
    pub fn standard() -> Self {
        let mut r = Self::empty();
        for def in defs::standard_defs() {
            r.register(def);
        }
        r
    }

    /// Adds (or replaces) a schema.
    pub fn register(&mut self, def: OpDef) {
        self.defs.insert((def.domain.to_string(), def.op_type.to_string()), def);
    }

    /// The schema for an op, if registered.
    pub fn get(&self, domain: &str, op_type: &str) -> Option<&OpDef> {
        self.defs.get(&(canonical_domain(domain).to_string(), op_type.to_string()))
    }

    /// All schemas, sorted by domain and op type.
    pub fn defs(&self) -> Vec<&OpDef> {
        let mut v: Vec<&OpDef> = self.defs.values().collect();
        v.sort_by_key(|d| (d.domain, d.op_type));
        v
    }

    /// Checks a node against its schema: known op, opset in range, arity, attributes.
    pub fn check(&self, node: &Node) -> Result<&OpDef> {
        let def = self.get(&node.domain, &node.op_type).ok_or_else(|| IrError::UnknownOp {
            node: node.name.clone(),
            op: node.op_type.clone(),
            domain: node.domain.clone(),
            opset: node.opset,
        })?;
        if !def.opsets.contains(&node.opset) {
            return Err(IrError::UnsupportedOpset {
                node: node.name.clone(),
                op: node.op_type.clone(),
                domain: node.domain.clone(),
                opset: node.opset,
                min: *def.opsets.start(),
                max: *def.opsets.end(),
            });
        }
        let arity = |what: &str, n: usize, r: &RangeInclusive<usize>| -> Result<()> {
            if r.contains(&n) {
                return Ok(());
            }
            let expected = if *r.end() == usize::MAX {
                format!("at least {}", r.start())
            } else if r.start() == r.end() {
                format!("{}", r.start())
            } else {
                format!("{} to {}", r.start(), r.end())
            };
            Err(IrError::BadArity {
                node: node.name.clone(),
                op: node.op_type.clone(),
                message: format!("has {n} {what}, expected {expected}"),
            })
        };
        arity("inputs", node.inputs.len(), &def.inputs)?;
        arity("outputs", node.outputs.len(), &def.outputs)?;
        let bad = |message: String| IrError::BadAttribute { node: node.name.clone(), op: node.op_type.clone(), opset: node.opset, message };
        for (name, value) in &node.attrs {
            match def.attrs.iter().find(|s| s.name == name) {
                None => return Err(bad(format!("unknown attribute '{name}'"))),
                Some(spec) if spec.kind != value.kind() => {
                    return Err(bad(format!("attribute '{name}' must be of kind {}, found {}", spec.kind, value.kind())));
                }
                Some(_) => {}
            }
        }
        for spec in def.attrs.iter().filter(|s| s.required) {
            if !node.attrs.contains_key(spec.name) {
                return Err(bad(format!("required attribute '{}' is missing", spec.name)));
            }
        }
        Ok(def)
    }

    /// Infers the output types of one node of `graph` from its inputs.
    pub fn infer_node(&self, graph: &Graph, node: &Node) -> Result<Vec<Option<TensorType>>> {
        let def = self.check(node)?;
        let inputs = node.inputs.iter().map(|v| v.and_then(|v| graph.value(v).ty.as_ref())).collect();
        let consts = node.inputs.iter().map(|v| v.and_then(|v| graph.constant(v).map(|t| &**t))).collect();
        let ctx = InferCtx { node, inputs, consts };
        let mut out = (def.infer)(&ctx)?;
        out.resize(node.outputs.len(), None);
        Ok(out)
    }
}
