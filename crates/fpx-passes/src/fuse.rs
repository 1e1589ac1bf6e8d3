//! Operator fusion: rewrite op chains that exporters emit into the one op the runtime runs in a
//! single pass over memory.

use fpx_ir::ops::OpRegistry;
use fpx_ir::pass::Pass;
use fpx_ir::{DType, Graph, Node, NodeId, ValueId};
use std::collections::HashMap;

/// Fuses PyTorch's exact (erf) GELU, `Mul(Mul(x, Add(Erf(Div(x, √2)), 1)), 0.5)` with the
/// commutative operands in either order, into one ONNX `Gelu` node (opset 20, exact erf form).
/// Only chains whose intermediates feed nothing else are rewritten; the final node's name
/// and output value are kept, so graph outputs and later nodes see no difference.
pub struct FuseGelu;

/// The ONNX opset that introduced `Gelu`.
const GELU_OPSET: i64 = 20;

impl Pass for FuseGelu {
    fn name(&self) -> &str {
        "fuse-gelu"
    }

    fn run(&self, graph: &mut Graph, _: &OpRegistry) -> fpx_ir::Result<bool> {
        let uses = use_counts(graph);
        let mut matches = Vec::new();
        for id in graph.node_ids() {
            if let Some(m) = match_gelu(graph, &uses, id) {
                matches.push(m);
            }
        }
        for (chain, x) in &matches {
            let last = graph.node(chain[4]);
            let (name, y) = (last.name.clone(), last.outputs[0]);
            for &n in chain {
                graph.remove_node(n);
            }
            graph.add_node(Node::new(name, "Gelu", GELU_OPSET, vec![Some(*x)], vec![y]))?;
        }
        if !matches.is_empty() {
            graph.remove_unused_constants();
        }
        Ok(!matches.is_empty())
    }
}

/// How many node inputs and graph outputs read each value.
pub(crate) fn use_counts(graph: &Graph) -> HashMap<ValueId, usize> {
    let mut uses: HashMap<ValueId, usize> = HashMap::new();
    for id in graph.node_ids() {
        for v in graph.node(id).inputs.iter().flatten() {
            *uses.entry(*v).or_default() += 1;
        }
    }
    for v in &graph.outputs {
        *uses.entry(*v).or_default() += 1;
    }
    uses
}

/// The scalar value of `v` if it is a one-element f32 constant.
pub(crate) fn scalar(graph: &Graph, v: ValueId) -> Option<f32> {
    let t = graph.constant(v)?;
    (t.dtype() == DType::F32 && t.len() == 1).then(|| t.to_f64_vec()[0] as f32)
}

/// The node producing `v` if it is a `op` in the ONNX domain whose output feeds exactly one use.
pub(crate) fn single_use_producer(graph: &Graph, uses: &HashMap<ValueId, usize>, v: ValueId, op: &str) -> Option<NodeId> {
    let (n, _) = graph.value(v).producer?;
    let node = graph.node(n);
    (node.op_type == op && node.domain.is_empty() && node.outputs.len() == 1 && uses.get(&v) == Some(&1)).then_some(n)
}

/// A node's int list given as attribute `attr` (the older opsets' form: `Unsqueeze` axes before
/// 13, `Slice` bounds before 10, `ReduceMean` axes before 18) or as constant input `slot` (the
/// newer form); `None` when it is neither.
pub(crate) fn int_list(graph: &Graph, node: &Node, slot: usize, attr: &str) -> Option<Vec<i64>> {
    match node.attr_ints(attr) {
        Some(a) => Some(a.to_vec()),
        None => Some(graph.constant(node.inputs.get(slot).copied().flatten()?)?.to_i64_vec()),
    }
}

/// The two inputs of a binary node, if it has exactly two.
pub(crate) fn pair(node: &Node) -> Option<(ValueId, ValueId)> {
    match node.inputs.as_slice() {
        [Some(a), Some(b)] => Some((*a, *b)),
        _ => None,
    }
}

/// `(Div, Erf, Add, Mul, Mul)` node ids and `x` when `last` ends an erf-GELU chain.
fn match_gelu(graph: &Graph, uses: &HashMap<ValueId, usize>, last: NodeId) -> Option<([NodeId; 5], ValueId)> {
    // A constant matches its value in f32, or as a 16-bit export stores it (√2 in FP16 is
    // 1.4140625: an FP16 model computes that GELU, within its own precision).
    let close = |v: f32, want: f32| {
        (v - want).abs() <= 1e-6 * want.abs()
            || v == fpx_ir::half::f16::from_f32(want).to_f32()
            || v == fpx_ir::half::bf16::from_f32(want).to_f32()
    };
    let n5 = graph.node(last);
    if n5.op_type != "Mul" || !n5.domain.is_empty() {
        return None;
    }
    let (a, b) = pair(n5)?;
    // Mul(m, 0.5) in either order.
    let m = if scalar(graph, b).is_some_and(|s| close(s, 0.5)) {
        a
    } else if scalar(graph, a).is_some_and(|s| close(s, 0.5)) {
        b
    } else {
        return None;
    };
    let n4 = single_use_producer(graph, uses, m, "Mul")?;
    let (p, q) = pair(graph.node(n4))?;
    // Mul(x, Add(...)) in either order: the Add side is the one produced by an Add.
    for (x, s) in [(p, q), (q, p)] {
        let Some(n3) = single_use_producer(graph, uses, s, "Add") else { continue };
        let (e1, e2) = pair(graph.node(n3))?;
        let e = if scalar(graph, e2).is_some_and(|c| close(c, 1.0)) {
            e1
        } else if scalar(graph, e1).is_some_and(|c| close(c, 1.0)) {
            e2
        } else {
            continue;
        };
        let Some(n2) = single_use_producer(graph, uses, e, "Erf") else { continue };
        let d = graph.node(n2).inputs.first().copied().flatten()?;
        let Some(n1) = single_use_producer(graph, uses, d, "Div") else { continue };
        let (dx, dc) = pair(graph.node(n1))?;
        if dx != x || !scalar(graph, dc).is_some_and(|c| close(c, std::f32::consts::SQRT_2)) {
            continue;
        }
        if graph.value(x).ty.as_ref().is_some_and(|t| !t.dtype.is_float()) {
            return None;
        }
        return Some(([n1, n2, n3, n4, last], x));
    }
    None
}
