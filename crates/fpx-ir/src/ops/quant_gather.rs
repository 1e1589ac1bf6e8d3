//! `fpx:QuantGather(packed: uint8[bytes], scales: float[groups, N], indices: int[...])`: an
//! embedding lookup from a quantized table. The table is stored as a [`QuantGemm`] weight
//! `W[K, N]` = the embedding `E[N, K]` transposed (one output channel per token, its scale per
//! row of `E`), with `fpx:QuantMatMul`'s weight attributes (`format`, `k`, `n`, `group_size`;
//! read by [`super::quant_matmul::read`]). Output `[..indices, K]`: row `indices[i]` of `E`,
//! dequantized (negative indices count from the end, as ONNX `Gather`). The same packed weight
//! is the LM head of a model whose embedding and head are tied, so one quantized copy serves
//! both (`fpx_passes::QuantizeEmbeddings`).

use super::{AttrSpec, InferCtx, FPX_DOMAIN};
use crate::DType;
use crate::{Dim, Node, Result, TensorType};

/// The op type (domain [`FPX_DOMAIN`]).
pub const OP_TYPE: &str = "QuantGather";

/// Its attributes: the weight's, as `fpx:QuantMatMul` has them.
pub const ATTRS: &[AttrSpec] = &super::quant_matmul::WEIGHT_ATTRS;

/// Whether `node` is an `fpx:QuantGather`.
pub fn is_quant_gather(node: &Node) -> bool {
    node.domain == FPX_DOMAIN && node.op_type == OP_TYPE
}

/// Shape inference: `indices`' shape followed by K, in `f32`.
pub fn infer(ctx: &InferCtx) -> Result<Vec<Option<TensorType>>> {
    let gemm = super::quant_matmul::read(ctx.node)?;
    let Some(idx) = ctx.input(2) else { return Ok(vec![Some(TensorType::unranked(DType::F32))]) };
    if !matches!(idx.dtype, DType::I32 | DType::I64) {
        return Err(ctx.error(format!("indices must be int32 or int64, got {idx}")));
    }
    let shape = idx.shape.as_ref().map(|s| s.iter().cloned().chain([Dim::Fixed(gemm.k)]).collect());
    Ok(vec![Some(TensorType { dtype: DType::F32, shape })])
}
