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
//!
//! With `bshd_inputs` = 1, Q, K and V come as the projections' reshapes `[B, S, H, D]` (token
//! major, K not transposed) instead of `[B, H, S, D]`: the exporters' `Transpose`s into heads
//! are folded into the node (`fpx_passes::FuseAttention`) and the kernel reads rows at their
//! stride. With `bshd_output` = 1, Y is `[B, Sq, Hq, Dv]`: the `Transpose` back to tokens that
//! precedes the output projection's reshape, folded the same way.

use super::{AttrSpec, InferCtx, FPX_DOMAIN};
use crate::{AttrKind, DType, Dim, Node, Result, TensorType};

/// The op type of fpx's fused attention (domain [`FPX_DOMAIN`]).
pub const OP_TYPE: &str = "Attention";

/// The attributes of `fpx:Attention`, as its schema declares them.
pub const ATTRS: &[AttrSpec] = &[
    AttrSpec { name: "scale", kind: AttrKind::Float, required: false },
    AttrSpec { name: "k_transposed", kind: AttrKind::Int, required: false },
    AttrSpec { name: "zero_masked_rows", kind: AttrKind::Int, required: false },
    AttrSpec { name: "bshd_inputs", kind: AttrKind::Int, required: false },
    AttrSpec { name: "bshd_output", kind: AttrKind::Int, required: false },
];

/// Whether `node` is an `fpx:Attention`.
pub fn is_fused_attention(node: &Node) -> bool {
    node.domain == FPX_DOMAIN && node.op_type == OP_TYPE
}

/// Shape and type inference: Y is `[B, Hq, Sq, Dv]` (`[B, Sq, Hq, Dv]` with `bshd_output`) in
/// Q's type.
pub fn infer(ctx: &InferCtx) -> Result<Vec<Option<TensorType>>> {
    let node = ctx.node;
    for flag in ["k_transposed", "zero_masked_rows", "bshd_inputs", "bshd_output"] {
        if !(0..=1).contains(&node.attr_i(flag, 0)) {
            return Err(ctx.error(format!("attribute '{flag}' must be 0 or 1")));
        }
    }
    let (bshd_in, bshd_out) = (node.attr_i("bshd_inputs", 0) == 1, node.attr_i("bshd_output", 0) == 1);
    if bshd_in && node.attr_i("k_transposed", 0) == 1 {
        return Err(ctx.error("'bshd_inputs' takes K as [B, Skv, Hkv, D]: it cannot be combined with 'k_transposed'"));
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
    // Q's batch, heads and queries, in the layout it comes in.
    let (b, h, sq) = match qs {
        Some(q) if bshd_in => (q[0].clone(), q[2].clone(), q[1].clone()),
        Some(q) => (q[0].clone(), q[1].clone(), q[2].clone()),
        None => return Ok(vec![Some(TensorType { dtype: q.dtype, shape: None })]),
    };
    let dv = vs.map_or(Dim::Unknown, |v| v[3].clone());
    let shape = Some(if bshd_out { vec![b, sq, h, dv] } else { vec![b, h, sq, dv] });
    Ok(vec![Some(TensorType { dtype: q.dtype, shape })])
}

#[cfg(test)]
mod tests {
    use crate::ops::{OpRegistry, FPX_DOMAIN};
    use crate::{verify, Attribute, DType, Dim, Graph, Node, TensorType};

    /// Y's inferred shape for Q/K/V of these shapes and these int attributes (or the error).
    fn infer(shapes: [&[usize]; 3], attrs: &[(&str, i64)]) -> Result<Vec<Dim>, String> {
        let mut g = Graph::new("a");
        let ins: Vec<_> =
            ["q", "k", "v"].iter().zip(shapes).map(|(n, s)| Some(g.add_input(n, TensorType::fixed(DType::F32, s)).unwrap())).collect();
        let y = g.value_named("y");
        let mut node = Node::new("att", super::OP_TYPE, 1, ins, vec![y]);
        node.domain = FPX_DOMAIN.into();
        node.attrs.extend(attrs.iter().map(|(k, v)| (k.to_string(), Attribute::Int(*v))));
        g.add_node(node).unwrap();
        g.opsets.insert(FPX_DOMAIN.into(), 1);
        verify::infer_types(&mut g, &OpRegistry::standard()).map_err(|e| e.to_string())?;
        Ok(g.value(y).ty.clone().unwrap().shape.unwrap())
    }

    #[test]
    fn token_major_layouts_change_where_heads_and_rows_are() {
        let f = |v: &[usize]| v.iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>();
        // [B, H, S, D] in and out.
        assert_eq!(infer([&[2, 8, 5, 16], &[2, 4, 9, 16], &[2, 4, 9, 12]], &[]).unwrap(), f(&[2, 8, 5, 12]));
        // [B, S, H, D] in: Y [B, H, S, Dv]; and out: Y [B, S, H, Dv].
        let bshd: [&[usize]; 3] = [&[2, 5, 8, 16], &[2, 9, 4, 16], &[2, 9, 4, 12]];
        assert_eq!(infer(bshd, &[("bshd_inputs", 1)]).unwrap(), f(&[2, 8, 5, 12]));
        assert_eq!(infer(bshd, &[("bshd_inputs", 1), ("bshd_output", 1)]).unwrap(), f(&[2, 5, 8, 12]));
        let e = infer(bshd, &[("bshd_inputs", 1), ("k_transposed", 1)]).unwrap_err();
        assert!(e.contains("cannot be combined with 'k_transposed'"), "{e}");
        assert!(infer(bshd, &[("bshd_output", 2)]).unwrap_err().contains("'bshd_output' must be 0 or 1"));
    }
}
