//! Rotary position embeddings as the exporters write them for LLaMA-family models
//! (`apply_rotary_pos_emb` of `transformers`: `q·cos + rotate_half(q)·sin`), seven nodes per
//! projection, fused into one `fpx:RotateHalf` (see `fpx_ir::ops::rotate_half`).

use crate::fuse::{int_list, pair, single_use_producer, use_counts};
use fpx_ir::ops::{rotate_half, OpRegistry, FPX_DOMAIN};
use fpx_ir::pass::Pass;
use fpx_ir::{Attribute, DType, Dim, Graph, Node, NodeId, ValueId};
use std::collections::HashMap;

/// Fuses `Add(Mul(x, cos), Mul(Concat(Neg(Slice(x, h, end)), Slice(x, 0, h), axis = -1), sin))`
/// into `fpx:RotateHalf(x, cos, sin, half = h)`. Accepted variants: the commutative operands in
/// either order, the slices' bounds as constant inputs or (before opset 10) attributes, `h` as
/// `x.shape[-1] / 2` computed in the graph (`Unsqueeze(Div(Gather(Shape(x), -1), 2))`, casts
/// between: the TorchScript exports; the fused node then cuts in the middle at run time), the
/// axis as `-1` or `rank - 1`, steps absent or 1, and `end` open (`i32::MAX` or more, the
/// exporters' "to the end") or at least the last dimension where that is known. `x` must be
/// f32. The shapes need not be known: the fused node computes any of them as the chain did (see
/// `fpx_ir::ops::rotate_half`). Only chains whose intermediates feed nothing else are
/// rewritten; the `Add`'s name and output value are kept.
pub struct FuseRotateHalf;

/// A matched chain: its nodes (removed), X, cos and sin, and where the last axis is cut
/// (`None`: in the middle, `D / 2` at run time).
struct RopeChain {
    nodes: Vec<NodeId>,
    x: ValueId,
    cos: ValueId,
    sin: ValueId,
    half: Option<i64>,
}

/// A slice bound: a constant, or `x.shape[-1] / 2` computed at run time (the TorchScript
/// exports' `x[..., : x.shape[-1] // 2]`).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Bound {
    Const(i64),
    Middle,
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
            if let Some(h) = chain.half {
                fused.attrs.insert("half".into(), Attribute::Int(h));
            }
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

/// Whether `axis` names the last axis of a value of rank `rank` (when known).
fn is_last_axis(axis: i64, rank: Option<usize>) -> bool {
    axis == -1 || rank.is_some_and(|r| axis == r as i64 - 1)
}

/// The value `v` with any `Cast`s to int64 before it seen through.
fn through_casts(graph: &Graph, mut v: ValueId) -> ValueId {
    while let Some((n, _)) = graph.value(v).producer {
        let node = graph.node(n);
        match (node.op_type.as_str(), node.inputs.first().copied().flatten()) {
            ("Cast", Some(src)) if node.attr_i("to", 0) == fpx_ir::onnx_code(DType::I64) => v = src,
            _ => break,
        }
    }
    v
}

/// Whether `v` is `Unsqueeze(Div(Gather(Shape(x), last axis), 2), [0])` (casts to int64
/// anywhere between): the last dimension of `x` halved, as a one-element tensor.
fn is_middle_of(graph: &Graph, v: ValueId, x: ValueId, rank: Option<usize>) -> bool {
    middle_of(graph, v, rank) == Some(x)
}

/// The `x` whose last dimension `v` halves (see [`is_middle_of`]).
fn middle_of(graph: &Graph, v: ValueId, rank: Option<usize>) -> Option<ValueId> {
    let producer =
        |v: ValueId, op: &str| graph.value(v).producer.map(|(n, _)| graph.node(n)).filter(|n| n.op_type == op && n.domain.is_empty());
    let unsq = producer(v, "Unsqueeze")?;
    let axes = int_list(graph, unsq, 1, "axes")?;
    let div = producer(through_casts(graph, unsq.inputs.first().copied().flatten()?), "Div")?;
    let (num, two) = pair(div)?;
    if axes != [0] || graph.constant(two).map(|t| t.to_i64_vec()) != Some(vec![2]) {
        return None;
    }
    let gather = producer(through_casts(graph, num), "Gather")?;
    let (shape_out, index) = pair(gather)?;
    let shape = producer(shape_out, "Shape")?;
    let index = graph.constant(index)?.to_i64_vec();
    let whole_shape = !shape.attrs.contains_key("start") && !shape.attrs.contains_key("end");
    let last = index.len() == 1 && is_last_axis(index[0], rank);
    (gather.attr_i("axis", 0) == 0 && whole_shape && last).then_some(shape.inputs.first().copied().flatten()).flatten()
}

/// A slice bound: input `k` of `node` (or its attribute `attr` before opset 10), a one-element
/// constant or the middle of `x`'s last axis.
fn bound(graph: &Graph, node: &Node, k: usize, attr: &str, x: ValueId, rank: Option<usize>) -> Option<Bound> {
    if let Some(v) = int_list(graph, node, k, attr) {
        return (v.len() == 1).then(|| Bound::Const(v[0]));
    }
    let v = node.inputs.get(k).copied().flatten()?;
    is_middle_of(graph, v, x, rank).then_some(Bound::Middle)
}

/// `(start, end)` of a step-1 `Slice` of `x` over its last axis.
fn last_axis_slice(graph: &Graph, node: &Node, x: ValueId, rank: Option<usize>) -> Option<(Bound, Bound)> {
    if node.inputs.first().copied().flatten() != Some(x) {
        return None;
    }
    let (start, end) = (bound(graph, node, 1, "starts", x, rank)?, bound(graph, node, 2, "ends", x, rank)?);
    let axes = int_list(graph, node, 3, "axes")?;
    let steps = match node.inputs.get(4).copied().flatten() {
        Some(v) => graph.constant(v)?.to_i64_vec(),
        None => vec![1],
    };
    (axes.len() == 1 && is_last_axis(axes[0], rank) && steps == [1]).then_some((start, end))
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

/// `Concat(Neg(Slice(x, h, end)), Slice(x, 0, h), axis = -1)` at `n_cat` with `x` f32, `end`
/// open and `h` a positive constant or the middle of the last axis: `(x, h, [Neg, upper Slice,
/// lower Slice])`.
fn match_rotation(graph: &Graph, uses: &HashMap<ValueId, usize>, n_cat: NodeId) -> Option<(ValueId, Option<i64>, [NodeId; 3])> {
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
    let (lo_start, cut) = last_axis_slice(graph, graph.node(n_lo), x, rank)?;
    let (hi_start, hi_end) = last_axis_slice(graph, graph.node(n_hi), x, rank)?;
    let open_end = match hi_end {
        Bound::Const(e) => e >= i32::MAX as i64 || last_dim.is_some_and(|d| e >= d as i64),
        Bound::Middle => false,
    };
    let half = match cut {
        Bound::Const(h) if h > 0 => Some(h),
        Bound::Middle => None,
        Bound::Const(_) => return None,
    };
    (lo_start == Bound::Const(0) && hi_start == cut && open_end).then_some((x, half, [n_neg, n_hi, n_lo]))
}
