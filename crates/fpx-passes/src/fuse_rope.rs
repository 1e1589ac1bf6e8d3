//! Rotary position embeddings as the exporters write them for LLaMA-family models
//! (`apply_rotary_pos_emb` of `transformers`: `q·cos + rotate_half(q)·sin`), seven nodes per
//! projection, fused into one `fpx:RotateHalf` (see `fpx_ir::ops::rotate_half`).

use crate::fuse::{pair, single_use_producer, use_counts};
use fpx_ir::ops::{rotate_half, OpRegistry, FPX_DOMAIN};
use fpx_ir::pass::Pass;
use fpx_ir::{Attribute, DType, Dim, Graph, Node, NodeId, ValueId};
use std::collections::HashMap;

/// Fuses `Add(Mul(x, cos), Mul(Concat(Neg(Slice(x, h, end)), Slice(x, 0, h), axis = -1), sin))`
/// into `fpx:RotateHalf(x, cos, sin, half = h)`. Accepted variants: the commutative operands in
/// either order, the slices' bounds as constant inputs or (before opset 10) attributes, the axis
/// as `-1` or `rank - 1`, steps absent or 1, and `end` open (`i32::MAX` or more, the exporters'
/// "to the end") or at least the last dimension where that is known. `x` must be f32. The shapes
/// need not be known: the fused node computes any of them as the chain did (see
/// `fpx_ir::ops::rotate_half`). Only chains whose intermediates feed nothing else are rewritten;
/// the `Add`'s name and output value are kept.
pub struct FuseRotateHalf;

/// A matched chain: its nodes (removed), X, cos and sin, and where the last axis is cut.
struct RopeChain {
    nodes: Vec<NodeId>,
    x: ValueId,
    cos: ValueId,
    sin: ValueId,
    half: i64,
}

impl Pass for FuseRotateHalf {
    fn name(&self) -> &str {
        "fuse-rotate-half"
    }

    fn run(&self, graph: &mut Graph, _: &OpRegistry) -> fpx_ir::Result<bool> {
        let uses = use_counts(graph);
        let matches: Vec<(NodeId, RopeChain)> =
            graph.node_ids().into_iter().filter_map(|id| Some((id, match_rope(graph, &uses, id)?))).collect();
        for (last, chain) in &matches {
            let node = graph.node(*last);
            let (name, y) = (node.name.clone(), node.outputs[0]);
            for &n in &chain.nodes {
                graph.remove_node(n);
            }
            let mut fused = Node::new(name, rotate_half::OP_TYPE, 1, vec![Some(chain.x), Some(chain.cos), Some(chain.sin)], vec![y]);
            fused.domain = FPX_DOMAIN.into();
            fused.attrs.insert("half".into(), Attribute::Int(chain.half));
            graph.add_node(fused)?;
        }
        if !matches.is_empty() {
            graph.remove_unused_constants();
        }
        Ok(!matches.is_empty())
    }
}

/// Whether `x` is known to be f32.
fn is_f32(graph: &Graph, x: ValueId) -> bool {
    graph.value(x).ty.as_ref().is_some_and(|t| t.dtype == DType::F32)
}

/// The constant integers of input `k` of `node`, or of its attribute `attr` (Slice before opset 10).
fn ints(graph: &Graph, node: &Node, k: usize, attr: &str) -> Option<Vec<i64>> {
    match node.inputs.get(k).copied().flatten() {
        Some(v) => graph.constant(v).map(|t| t.to_i64_vec()),
        None if node.inputs.len() <= 1 => node.attr_ints(attr).map(|a| a.to_vec()),
        None => None,
    }
}

/// Whether `axis` names the last axis of a value of rank `rank` (when known).
fn is_last_axis(axis: i64, rank: Option<usize>) -> bool {
    axis == -1 || rank.is_some_and(|r| axis == r as i64 - 1)
}

/// `(data, start, end)` of a step-1 `Slice` over the last axis, the bounds as written.
fn last_axis_slice(graph: &Graph, node: &Node, rank: Option<usize>) -> Option<(ValueId, i64, i64)> {
    let data = node.inputs.first().copied().flatten()?;
    let (starts, ends) = (ints(graph, node, 1, "starts")?, ints(graph, node, 2, "ends")?);
    let axes = ints(graph, node, 3, "axes")?;
    let steps = match node.inputs.get(4).copied().flatten() {
        Some(v) => graph.constant(v)?.to_i64_vec(),
        None => vec![1],
    };
    let single = starts.len() == 1 && ends.len() == 1 && axes.len() == 1 && steps == [1];
    (single && is_last_axis(axes[0], rank)).then_some((data, starts[0], ends[0]))
}

/// The chain ending at the `Add` `last`, if it is one (see [`FuseRotateHalf`]).
fn match_rope(graph: &Graph, uses: &HashMap<ValueId, usize>, last: NodeId) -> Option<RopeChain> {
    let top = graph.node(last);
    if top.op_type != "Add" || !top.domain.is_empty() {
        return None;
    }
    let (a, b) = pair(top)?;
    for (x_cos, rot_sin) in [(a, b), (b, a)] {
        let (Some(n_xc), Some(n_rs)) = (single_use_producer(graph, uses, x_cos, "Mul"), single_use_producer(graph, uses, rot_sin, "Mul"))
        else {
            continue;
        };
        let (r1, r2) = pair(graph.node(n_rs))?;
        for (rot, sin) in [(r1, r2), (r2, r1)] {
            let Some(n_cat) = single_use_producer(graph, uses, rot, "Concat") else { continue };
            let Some((x, half, [n_neg, n_hi, n_lo])) = match_rotation(graph, uses, n_cat) else { continue };
            let (p, q) = pair(graph.node(n_xc))?;
            let cos = match (p == x, q == x) {
                (true, false) => q,
                (false, true) => p,
                _ => continue,
            };
            return Some(RopeChain { nodes: vec![n_lo, n_hi, n_neg, n_cat, n_xc, n_rs, last], x, cos, sin, half });
        }
    }
    None
}

/// `Concat(Neg(Slice(x, h, end)), Slice(x, 0, h), axis = -1)` at `n_cat` with `x` f32 and
/// `end` open: `(x, h, [Neg, upper Slice, lower Slice])`.
fn match_rotation(graph: &Graph, uses: &HashMap<ValueId, usize>, n_cat: NodeId) -> Option<(ValueId, i64, [NodeId; 3])> {
    let cat = graph.node(n_cat);
    let (neg_out, lo_out) = pair(cat)?;
    let n_neg = single_use_producer(graph, uses, neg_out, "Neg")?;
    let hi_out = graph.node(n_neg).inputs.first().copied().flatten()?;
    let (n_hi, n_lo) = (single_use_producer(graph, uses, hi_out, "Slice")?, single_use_producer(graph, uses, lo_out, "Slice")?);
    let x = graph.node(n_lo).inputs.first().copied().flatten()?;
    if !is_f32(graph, x) {
        return None;
    }
    let dims = graph.value(x).ty.as_ref().and_then(|t| t.shape.clone());
    let rank = dims.as_ref().map(|d| d.len());
    let last_dim = dims.as_ref().and_then(|d| d.last()).and_then(Dim::fixed);
    if !is_last_axis(cat.attr_i("axis", 0), rank) {
        return None;
    }
    let (lo_x, lo_start, half) = last_axis_slice(graph, graph.node(n_lo), rank)?;
    let (hi_x, hi_start, hi_end) = last_axis_slice(graph, graph.node(n_hi), rank)?;
    let open_end = hi_end >= i32::MAX as i64 || last_dim.is_some_and(|d| hi_end >= d as i64);
    (lo_x == x && hi_x == x && lo_start == 0 && half > 0 && hi_start == half && open_end).then_some((x, half, [n_neg, n_hi, n_lo]))
}
