//! `fpx:RotateHalf(X, cos, sin)`: `X·cos + rotate_half(X)·sin`, the rotary position embedding as
//! LLaMA-family exports write it (`apply_rotary_pos_emb` of `transformers`), where
//! `rotate_half(X) = Concat(-X[..., half:], X[..., :half])` over the last axis (slice bounds
//! clamped as ONNX `Slice` clamps them). Written by `fpx_passes::FuseRotateHalf` in place of the
//! seven nodes (two `Slice`s, `Neg`, `Concat`, two `Mul`s and `Add`) that the exporters emit per
//! projection; the kernel makes one pass over X instead of seven tensors.
//!
//! The products broadcast as ONNX `Mul` and `Add` do. The common case, `cos` and `sin`
//! broadcasting to X's shape (typically `[B, 1, S, D]` against X `[B, H, S, D]`) and
//! `D = 2·half`, runs row by row; anything else is computed op by op, so the node always means
//! what the seven did. Each half of `cos` and `sin` is used as given (the ONNX
//! `RotaryEmbedding` op instead takes half-width caches and assumes both halves equal), and every
//! element is computed as the unfused graph computes it, `x·c + (±x')·s` with each product
//! rounded, so the results are identical.

use super::{broadcast_dims, AttrSpec, InferCtx, FPX_DOMAIN};
use crate::{AttrKind, DType, Dim, Node, Result, TensorType};

/// The op type (domain [`FPX_DOMAIN`]).
pub const OP_TYPE: &str = "RotateHalf";

/// Its one attribute: `half`, where the last axis is cut (positive); absent, the middle, `D / 2`
/// rounded down at run time (the TorchScript exports compute it from the shape).
pub const ATTRS: &[AttrSpec] = &[AttrSpec { name: "half", kind: AttrKind::Int, required: false }];

/// Whether `node` is an `fpx:RotateHalf`.
pub fn is_rotate_half(node: &Node) -> bool {
    node.domain == FPX_DOMAIN && node.op_type == OP_TYPE
}

/// Shape and type inference: Y has X's element type (float, float16 or bfloat16, as `cos` and
/// `sin`) and the broadcast shape of X, `cos` and `sin`; `half` is positive.
pub fn infer(ctx: &InferCtx) -> Result<Vec<Option<TensorType>>> {
    if ctx.node.attrs.contains_key("half") && ctx.node.attr_i("half", 0) <= 0 {
        return Err(ctx.error("attribute 'half' must be positive"));
    }
    let Some(x) = ctx.input(0) else { return Ok(vec![None]) };
    if !matches!(x.dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(ctx.error(format!("X is {}; fpx:RotateHalf takes float, float16 or bfloat16", x.dtype)));
    }
    if x.shape.as_ref().is_some_and(|s| s.is_empty()) {
        return Err(ctx.error("X must have at least one dimension"));
    }
    let mut shape: Option<Vec<Dim>> = x.shape.clone();
    for (i, name) in [(1, "cos"), (2, "sin")] {
        let Some(t) = ctx.input(i) else {
            shape = None;
            continue;
        };
        if t.dtype != x.dtype {
            return Err(ctx.error(format!("{name} is {} but X is {}", t.dtype, x.dtype)));
        }
        shape = match (shape, t.shape.as_ref()) {
            (Some(s), Some(c)) => Some(broadcast_dims(&s, c).ok_or_else(|| ctx.error(format!("{name} does not broadcast with X")))?),
            _ => None,
        };
    }
    Ok(vec![Some(TensorType { dtype: x.dtype, shape })])
}

#[cfg(test)]
mod tests {
    use super::infer;
    use crate::ops::InferCtx;
    use crate::{Attribute, DType, Dim, Node, TensorType};

    fn node(half: i64) -> Node {
        let mut n = Node::new("rope", super::OP_TYPE, 1, vec![], vec![]);
        n.attrs.insert("half".into(), Attribute::Int(half));
        n
    }

    fn run(x: &[usize], c: &[usize], half: i64) -> Result<Option<TensorType>, String> {
        let (tx, tc) = (TensorType::fixed(DType::F32, x), TensorType::fixed(DType::F32, c));
        let n = node(half);
        let ctx = InferCtx { node: &n, inputs: vec![Some(&tx), Some(&tc), Some(&tc)], consts: vec![None; 3] };
        infer(&ctx).map(|mut v| v.remove(0)).map_err(|e| e.to_string())
    }

    #[test]
    fn output_is_the_broadcast_shape() {
        assert_eq!(run(&[2, 8, 5, 64], &[2, 1, 5, 64], 32).unwrap(), Some(TensorType::fixed(DType::F32, &[2, 8, 5, 64])));
        assert_eq!(run(&[1, 1, 5, 64], &[2, 8, 5, 64], 32).unwrap(), Some(TensorType::fixed(DType::F32, &[2, 8, 5, 64])));
        assert!(run(&[1, 8, 5, 64], &[3, 5, 64], 32).unwrap_err().contains("does not broadcast"));
        assert!(run(&[1, 8, 5, 64], &[5, 64], 0).unwrap_err().contains("'half'"));
        // Symbols carry through.
        let n = node(4);
        let sym = |s: &str| Dim::Sym(s.into());
        let x = TensorType { dtype: DType::F32, shape: Some(vec![sym("b"), Dim::Fixed(4), sym("s"), Dim::Fixed(8)]) };
        let c = TensorType { dtype: DType::F32, shape: Some(vec![sym("b"), Dim::Fixed(1), sym("s"), Dim::Fixed(8)]) };
        let ctx = InferCtx { node: &n, inputs: vec![Some(&x), Some(&c), Some(&c)], consts: vec![None; 3] };
        assert_eq!(infer(&ctx).unwrap()[0].as_ref(), Some(&x));
    }
}
