//! `fpx:Attention`: one node for the attention subgraphs exporters emit (scaled Q·Kᵀ, an
//! additive or boolean mask, Softmax, ·V), written by `fpx_passes::FuseAttention`.
//!
//! `Attention(Q[B, Hq, Sq, D], K, V[B, Hkv, Skv, Dv], mask?) -> Y[B, Hq, Sq, Dv]` where K is
//! `[B, Hkv, Skv, D]`, or `[B, Hkv, D, Skv]` when `k_transposed` = 1. Query head `h` reads
//! key/value head `h / (Hq / Hkv)` (grouped-query attention). Scores are `scale · Q·Kᵀ`
//! (`scale` defaults to `1/√D`) plus the mask broadcast to `[B, Hq, Sq, Skv]` (a float mask is
//! added; a bool mask adds 0 where true and -inf where false), then a softmax over the keys.
//! A query whose every score is -inf gets `Y = 0` when `zero_masked_rows` = 1 and NaN
//! otherwise, as the unfused graph does.

use super::{AttrSpec, InferCtx, FPX_DOMAIN};
use crate::{AttrKind, DType, Dim, Node, Result, TensorType};

/// The op type of fpx's fused attention (domain [`FPX_DOMAIN`]).
pub const OP_TYPE: &str = "Attention";

/// The attributes of `fpx:Attention`, as its schema declares them.
pub const ATTRS: &[AttrSpec] = &[
    AttrSpec { name: "scale", kind: AttrKind::Float, required: false },
    AttrSpec { name: "k_transposed", kind: AttrKind::Int, required: false },
    AttrSpec { name: "zero_masked_rows", kind: AttrKind::Int, required: false },
];

/// Whether `node` is an `fpx:Attention`.
pub fn is_fused_attention(node: &Node) -> bool {
    node.domain == FPX_DOMAIN && node.op_type == OP_TYPE
}

/// Shape and type inference: Y is `[B, Hq, Sq, Dv]` in Q's type.
pub fn infer(ctx: &InferCtx) -> Result<Vec<Option<TensorType>>> {
    let node = ctx.node;
    for flag in ["k_transposed", "zero_masked_rows"] {
        if !(0..=1).contains(&node.attr_i(flag, 0)) {
            return Err(ctx.error(format!("attribute '{flag}' must be 0 or 1")));
        }
    }
    let Some(q) = ctx.input(0) else { return Ok(vec![None]) };
    if !matches!(q.dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(ctx.error(format!("Q is {}; fpx:Attention takes float, float16 or bfloat16", q.dtype)));
    }
    for i in [1, 2] {
        if let Some(t) = ctx.input(i).filter(|t| t.dtype != q.dtype) {
            return Err(ctx.error(format!("input {i} is {} but Q is {}", t.dtype, q.dtype)));
        }
    }
    if let Some(m) = ctx.input(3).filter(|m| m.dtype != DType::Bool && !m.dtype.is_float()) {
        return Err(ctx.error(format!("the mask must be bool or float, found {}", m.dtype)));
    }
    let rank4 = |i: usize| -> Result<Option<&Vec<Dim>>> {
        match ctx.input(i).and_then(|t| t.shape.as_ref()) {
            Some(s) if s.len() != 4 => Err(ctx.error(format!("input {i} must be 4-D, found rank {}", s.len()))),
            s => Ok(s),
        }
    };
    let (qs, _, vs) = (rank4(0)?, rank4(1)?, rank4(2)?);
    if let Some(m) = ctx.input(3).and_then(|t| t.shape.as_ref()).filter(|s| s.len() > 4) {
        return Err(ctx.error(format!("the mask must have rank 4 or less, found {}", m.len())));
    }
    let shape = qs.map(|q| vec![q[0].clone(), q[1].clone(), q[2].clone(), vs.map_or(Dim::Unknown, |v| v[3].clone())]);
    Ok(vec![Some(TensorType { dtype: q.dtype, shape })])
}
