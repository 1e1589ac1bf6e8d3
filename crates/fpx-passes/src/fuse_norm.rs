//! RMS normalization as the exporters write it for LLaMA-family models (`LlamaRMSNorm`,
//! Qwen2, Mistral): `w · (x · 1/√(mean(x²) + ε))` in seven nodes, fused into one ONNX
//! `RMSNormalization` (opset 23) that reads each row once and writes it once.

use crate::fuse::{int_list, pair, scalar, single_use_producer, use_counts};
use fpx_ir::ops::OpRegistry;
use fpx_ir::pass::Pass;
use fpx_ir::{Attribute, DType, Graph, Node, NodeId, ValueId};
use std::collections::HashMap;

/// Fuses `Mul(w, Mul(x, Div(1, Sqrt(Add(ReduceMean(Pow(x, 2), [-1]), ε)))))` into
/// `RMSNormalization(x, w, axis = -1, epsilon = ε)`. Accepted variants: `Mul(x, x)` for the
/// square, `Reciprocal` for `Div(1, ·)`, `Div(x, Sqrt(…))` for the product with the
/// reciprocal, the commutative operands in either order, the reduced axes as an attribute
/// (opsets before 18) or a constant input, and a no-op `Cast` to f32 before the weight (the
/// TorchScript export of an f32 model has one). `w` must be a constant of at most one dimension
/// (the norm's weight). Only chains whose intermediates feed nothing else are rewritten; the
/// last node's name and output value are kept.
pub struct FuseRmsNorm;

/// The ONNX opset that introduced `RMSNormalization`.
const RMS_NORM_OPSET: i64 = 23;

/// A matched chain: its nodes (removed), the normalized input, the weight and ε.
struct RmsChain {
    nodes: Vec<NodeId>,
    x: ValueId,
    weight: ValueId,
    eps: f32,
}

impl Pass for FuseRmsNorm {
    fn name(&self) -> &str {
        "fuse-rms-norm"
    }

    fn run(&self, graph: &mut Graph, _: &OpRegistry) -> fpx_ir::Result<bool> {
        let uses = use_counts(graph);
        let matches: Vec<(NodeId, RmsChain)> =
            graph.node_ids().into_iter().filter_map(|id| Some((id, match_rms(graph, &uses, id)?))).collect();
        for (last, chain) in &matches {
            let node = graph.node(*last);
            let (name, y) = (node.name.clone(), node.outputs[0]);
            for &n in &chain.nodes {
                graph.remove_node(n);
            }
            let mut fused = Node::new(name, "RMSNormalization", RMS_NORM_OPSET, vec![Some(chain.x), Some(chain.weight)], vec![y]);
            fused.attrs.insert("axis".into(), Attribute::Int(-1));
            fused.attrs.insert("epsilon".into(), Attribute::Float(chain.eps));
            graph.add_node(fused)?;
        }
        if !matches.is_empty() {
            graph.remove_unused_constants();
        }
        Ok(!matches.is_empty())
    }
}

/// Whether `v` is a constant equal to `want` (one element).
fn is_scalar(graph: &Graph, v: ValueId, want: f32) -> bool {
    scalar(graph, v) == Some(want)
}

/// Whether a `Cast` node casts an f32 value to f32 (changes nothing).
fn is_f32_to_f32(graph: &Graph, cast: &Node) -> bool {
    let input_f32 =
        cast.inputs.first().copied().flatten().is_some_and(|v| graph.value(v).ty.as_ref().is_some_and(|t| t.dtype == DType::F32));
    cast.attr_i("to", 0) == fpx_ir::onnx_code(DType::F32) && input_f32
}

/// Whether a `ReduceMean` node averages the last axis only, keeping it.
fn means_last_axis(graph: &Graph, node: &Node, x: ValueId) -> bool {
    if node.attr_i("keepdims", 1) != 1 {
        return false;
    }
    let Some(axes) = int_list(graph, node, 1, "axes") else { return false };
    let rank = graph.value(x).ty.as_ref().and_then(|t| t.rank());
    matches!(axes.as_slice(), [-1]) || (axes.len() == 1 && rank.is_some_and(|r| r >= 1 && axes[0] == r as i64 - 1))
}

/// The chain ending at `last`, if it is one (see [`FuseRmsNorm`]).
fn match_rms(graph: &Graph, uses: &HashMap<ValueId, usize>, last: NodeId) -> Option<RmsChain> {
    let top = graph.node(last);
    if top.op_type != "Mul" || !top.domain.is_empty() {
        return None;
    }
    let (a, b) = pair(top)?;
    for (weight, normed) in [(a, b), (b, a)] {
        // In memory or file-kept (a large model's external data): its type, without reading it.
        let Some((dtype, shape)) = graph.constant_type(weight) else { continue };
        if shape.len() > 1 || !dtype.is_float() {
            continue;
        }
        // LlamaRMSNorm computes in f32 and casts back (`.to(input_dtype)`): in an f32 model that
        // cast is a no-op, seen through (and removed with the chain).
        let (normed, cast) = match single_use_producer(graph, uses, normed, "Cast") {
            Some(c) if is_f32_to_f32(graph, graph.node(c)) => (graph.node(c).inputs[0]?, Some(c)),
            _ => (normed, None),
        };
        let Some((x, mut nodes, sqrt_out)) = normalized(graph, uses, normed) else { continue };
        nodes.extend(cast);
        let n_sqrt = single_use_producer(graph, uses, sqrt_out, "Sqrt")?;
        let added = graph.node(n_sqrt).inputs.first().copied().flatten()?;
        let n_add = single_use_producer(graph, uses, added, "Add")?;
        let (p, q) = pair(graph.node(n_add))?;
        let (mean, eps) = match (scalar(graph, p), scalar(graph, q)) {
            (None, Some(e)) => (p, e),
            (Some(e), None) => (q, e),
            _ => return None,
        };
        let n_mean = single_use_producer(graph, uses, mean, "ReduceMean")?;
        let squared = graph.node(n_mean).inputs.first().copied().flatten()?;
        if !means_last_axis(graph, graph.node(n_mean), x) {
            return None;
        }
        let n_square = single_use_producer(graph, uses, squared, "Pow").or_else(|| single_use_producer(graph, uses, squared, "Mul"))?;
        let sq = graph.node(n_square);
        let squares_x = match (sq.op_type.as_str(), pair(sq)?) {
            ("Pow", (base, exponent)) => base == x && is_scalar(graph, exponent, 2.0),
            (_, (l, r)) => l == x && r == x,
        };
        if !squares_x || graph.value(x).ty.as_ref().is_some_and(|t| !t.dtype.is_float()) {
            return None;
        }
        nodes.extend([n_sqrt, n_add, n_mean, n_square, last]);
        return Some(RmsChain { nodes, x, weight, eps });
    }
    None
}

/// `x · r` where `r = 1/s` (`Div(1, s)` or `Reciprocal(s)`), or `x / s`, producing `normed`
/// (single use): `x`, the nodes, and `s`.
fn normalized(graph: &Graph, uses: &HashMap<ValueId, usize>, normed: ValueId) -> Option<(ValueId, Vec<NodeId>, ValueId)> {
    if let Some(n_div) = single_use_producer(graph, uses, normed, "Div") {
        let (x, s) = pair(graph.node(n_div))?;
        return Some((x, vec![n_div], s));
    }
    let n_mul = single_use_producer(graph, uses, normed, "Mul")?;
    let (p, q) = pair(graph.node(n_mul))?;
    for (x, r) in [(p, q), (q, p)] {
        if let Some(n_recip) = single_use_producer(graph, uses, r, "Reciprocal") {
            let s = graph.node(n_recip).inputs.first().copied().flatten()?;
            return Some((x, vec![n_mul, n_recip], s));
        }
        if let Some(n_div) = single_use_producer(graph, uses, r, "Div") {
            let (one, s) = pair(graph.node(n_div))?;
            if is_scalar(graph, one, 1.0) {
                return Some((x, vec![n_mul, n_div], s));
            }
        }
    }
    None
}
