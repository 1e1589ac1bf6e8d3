//! `fpx:KvAppend(past, new)`: the KV-cache update of a decoder step, `Concat(past, new, axis)`
//! where `past` is a graph input and the result a graph output. It computes exactly what the
//! `Concat` does; the kernel appends into spare capacity of `past`'s buffer when the executor
//! hands it over, so a decode step neither copies nor reallocates the cache (see
//! `fpx_passes::AppendKvCache`, which writes these nodes).
//!
//! Inputs after the second are ordering-only: outputs of nodes that read `past` (its shape, for
//! the past length) and must therefore run before the append takes `past` over. The kernel ignores
//! them; they make every other reader of `past` come first in the executor's order.

use super::{AttrSpec, InferCtx, FPX_DOMAIN};
use crate::{AttrKind, Node, Result, TensorType};

/// The op type (domain [`FPX_DOMAIN`]).
pub const OP_TYPE: &str = "KvAppend";

/// Its one attribute: the axis that grows (as `Concat`'s `axis`, negative counts from the end).
pub const ATTRS: &[AttrSpec] = &[AttrSpec { name: "axis", kind: AttrKind::Int, required: true }];

/// Whether `node` is an `fpx:KvAppend`.
pub fn is_kv_append(node: &Node) -> bool {
    node.domain == FPX_DOMAIN && node.op_type == OP_TYPE
}

/// Shape inference: `Concat` of the first two inputs (the rest only order the graph).
pub fn infer(ctx: &InferCtx) -> Result<Vec<Option<TensorType>>> {
    let data = InferCtx {
        node: ctx.node,
        inputs: ctx.inputs.iter().take(2).copied().collect(),
        consts: ctx.consts.iter().take(2).copied().collect(),
    };
    super::infer::concat(&data)
}
