//! Attention fusion: the exporters' scaled-dot-product attention subgraphs, and ONNX's own
//! `Attention` (opset 23), become one `fpx:Attention` node (`fpx_ir::ops::fused_attention`)
//! whose kernel streams over the keys instead of materialising `[B, H, Sq, Skv]` scores.

use crate::fuse::{int_list, scalar};
use fpx_ir::ops::{fused_attention, OpRegistry, FPX_DOMAIN};
use fpx_ir::pass::Pass;
use fpx_ir::{Attribute, DType, Graph, Node, NodeId, ValueId};

/// Fuses `MatMul(Softmax(MatMul(Q·a, Kᵀ·b)·c + mask), V)` (the scale factors `a`, `b`, `c` as
/// scalar `Mul`s or `Div`s, each optional; `+ mask` optional; Kᵀ a `Transpose` of K, the 3-D
/// transpose the dynamo exporter writes, or any other tensor; the exporters' NaN guard
/// `Where(IsNaN(p), 0, p)` after the Softmax optional) and opset-23 `Attention` nodes without
/// past, causal flag or softcap into `fpx:Attention`. Grouped-query expansions of K and V
/// (`Reshape(Expand(Unsqueeze(x, 2)))`) are folded into the kernel's head mapping. Only chains
/// whose intermediates feed nothing else are rewritten; the final node's name and output value
/// are kept. Masks computed in the graph stay as the fused node's input.
pub struct FuseAttention;

/// One rewrite: the nodes to drop and the node that replaces them.
struct Fusion {
    remove: Vec<NodeId>,
    node: Node,
}

impl Pass for FuseAttention {
    fn name(&self) -> &str {
        "fuse-attention"
    }

    fn run(&self, graph: &mut Graph, _: &OpRegistry) -> fpx_ir::Result<bool> {
        let mut fusions = Vec::new();
        for id in graph.node_ids() {
            let node = graph.node(id);
            if !node.domain.is_empty() {
                continue;
            }
            let found = match node.op_type.as_str() {
                "Softmax" => match_softmax_chain(graph, id),
                "Attention" => match_onnx_attention(graph, id),
                _ => None,
            };
            fusions.extend(found);
        }
        if fusions.is_empty() {
            return Ok(false);
        }
        let opset = *graph.opsets.entry(FPX_DOMAIN.to_string()).or_insert(1);
        for f in &mut fusions {
            fold_head_transposes(graph, f);
        }
        for mut f in fusions {
            for n in f.remove {
                graph.remove_node(n);
            }
            f.node.opset = opset;
            graph.add_node(f.node)?;
        }
        graph.remove_unused_constants();
        Ok(true)
    }
}

/// Folds the exporters' `Transpose`s into and out of heads into the fused node: when Q and V
/// are `Transpose(x, [0, 2, 1, 3])` of `[B, S, H, D]` projections and K is the same (or,
/// transposed, `Transpose(x, [0, 2, 3, 1])`), each read only here, the node reads the
/// projections at their row stride (`bshd_inputs`); when Y's only reader is a
/// `Transpose(Y, [0, 2, 1, 3])`, the node writes that layout itself (`bshd_output`). Each fold
/// removes a full copy of the tensor.
fn fold_head_transposes(graph: &Graph, f: &mut Fusion) {
    const TO_HEADS: [i64; 4] = [0, 2, 1, 3];
    let transposed_k = f.node.attr_i("k_transposed", 0) == 1;
    let from_heads = |v: Option<ValueId>, perm: &[i64]| -> Option<(NodeId, ValueId)> {
        let t = producer(graph, v?, "Transpose")?;
        let node = graph.node(t);
        (node.attr_ints("perm") == Some(perm)).then_some((t, input(node, 0)?)).filter(|(_, x)| rank(graph, *x) == Some(4))
    };
    let k_perm: &[i64] = if transposed_k { &[0, 2, 3, 1] } else { &TO_HEADS };
    let folded =
        (from_heads(input(&f.node, 0), &TO_HEADS), from_heads(input(&f.node, 1), k_perm), from_heads(input(&f.node, 2), &TO_HEADS));
    if let (Some(q), Some(k), Some(v)) = folded {
        for (i, (t, x)) in [q, k, v].into_iter().enumerate() {
            f.remove.push(t);
            f.node.inputs[i] = Some(x);
        }
        f.node.attrs.remove("k_transposed");
        f.node.attrs.insert("bshd_inputs".to_string(), Attribute::Int(1));
    }
    let y = f.node.outputs[0];
    let consumers = &graph.value(y).consumers;
    if consumers.len() == 1 && !graph.outputs.contains(&y) {
        let t = consumers[0];
        let node = graph.node(t);
        if node.op_type == "Transpose" && node.domain.is_empty() && node.attr_ints("perm") == Some(&TO_HEADS) && node.outputs.len() == 1 {
            f.remove.push(t);
            f.node.outputs[0] = node.outputs[0];
            f.node.attrs.insert("bshd_output".to_string(), Attribute::Int(1));
        }
    }
}

/// Whether `v` is read by exactly one node input and is no graph output.
fn single_use(graph: &Graph, v: ValueId) -> bool {
    graph.value(v).consumers.len() == 1 && !graph.outputs.contains(&v)
}

/// The producer of `v` if it is an ONNX-domain `op` with one output that only one input reads.
fn producer(graph: &Graph, v: ValueId, op: &str) -> Option<NodeId> {
    let (n, _) = graph.value(v).producer?;
    let node = graph.node(n);
    (node.op_type == op && node.domain.is_empty() && node.outputs.len() == 1 && single_use(graph, v)).then_some(n)
}

/// Input `i` of `node` when present.
fn input(node: &Node, i: usize) -> Option<ValueId> {
    node.inputs.get(i).copied().flatten()
}

/// The rank of `v`, when inferred.
fn rank(graph: &Graph, v: ValueId) -> Option<usize> {
    graph.value(v).ty.as_ref()?.shape.as_ref().map(|s| s.len())
}

/// `v`'s element type, when inferred.
fn dtype(graph: &Graph, v: ValueId) -> Option<DType> {
    graph.value(v).ty.as_ref().map(|t| t.dtype)
}

/// Peels a scalar `Mul`/`Div` off `v`: `(x, factor, node)` when `v = x·c` or `x / c`.
fn peel_scale(graph: &Graph, v: ValueId) -> Option<(ValueId, f32, NodeId)> {
    if let Some(n) = producer(graph, v, "Mul") {
        let node = graph.node(n);
        let (a, b) = (input(node, 0)?, input(node, 1)?);
        if let Some(c) = scalar(graph, b) {
            return Some((a, c, n));
        }
        return scalar(graph, a).map(|c| (b, c, n));
    }
    let n = producer(graph, v, "Div")?;
    let node = graph.node(n);
    let c = scalar(graph, input(node, 1)?)?;
    (c != 0.0).then(|| (input(node, 0).expect("Div has two inputs"), 1.0 / c, n))
}

/// `v` with an optional scale peeled off, multiplying `scale` and recording the node.
fn strip_scale(graph: &Graph, v: ValueId, scale: &mut f32, removed: &mut Vec<NodeId>) -> ValueId {
    match peel_scale(graph, v) {
        Some((x, c, n)) => {
            *scale *= c;
            removed.push(n);
            x
        }
        None => v,
    }
}

/// Folds a grouped-query expansion `Reshape(Expand(Unsqueeze(x, axes=[2])))` of a 4-D `x`
/// into the kernel's head mapping: `x` and the three nodes, or `v` itself.
fn strip_head_expansion(graph: &Graph, v: ValueId, removed: &mut Vec<NodeId>) -> ValueId {
    let peel = || -> Option<(ValueId, [NodeId; 3])> {
        let reshape = producer(graph, v, "Reshape")?;
        let expand = producer(graph, input(graph.node(reshape), 0)?, "Expand")?;
        let unsqueeze = producer(graph, input(graph.node(expand), 0)?, "Unsqueeze")?;
        let x = input(graph.node(unsqueeze), 0)?;
        let axes = int_list(graph, graph.node(unsqueeze), 1, "axes")?;
        let expanded = graph.node(expand).outputs[0];
        let ok = matches!(axes.as_slice(), [2] | [-3])
            && rank(graph, x) == Some(4)
            && rank(graph, expanded) == Some(5)
            && rank(graph, v) == Some(4);
        // The expansion copies along the new axis only: no other axis of x is known to be 1
        // and broadcast (Expand can only grow axes of size 1).
        let same_other_axes = || {
            let (xs, es) = (shape(graph, x)?, shape(graph, expanded)?);
            Some([(0, 0), (1, 1), (2, 3), (3, 4)].iter().all(|&(a, b)| xs[a] == es[b] || xs[a] != fpx_ir::Dim::Fixed(1)))
        };
        (ok && same_other_axes() == Some(true)).then_some((x, [reshape, expand, unsqueeze]))
    };
    match peel() {
        Some((x, nodes)) => {
            removed.extend(nodes);
            x
        }
        None => v,
    }
}

/// K from Kᵀ: `(K, transposed?)`. A `Transpose` swapping the last two axes, or the dynamo
/// exporter's `Reshape(Transpose(Reshape(K, [N, S, D]), [0, 2, 1]), [B, H, D, S])`, is peeled;
/// otherwise Kᵀ itself is the kernel's (transposed) K.
fn strip_key_transpose(graph: &Graph, kt: ValueId, removed: &mut Vec<NodeId>) -> (ValueId, bool) {
    if let Some(t) = producer(graph, kt, "Transpose") {
        let node = graph.node(t);
        if node.attr_ints("perm") == Some(&[0, 1, 3, 2]) {
            if let Some(k) = input(node, 0) {
                removed.push(t);
                return (k, false);
            }
        }
    }
    let peel = || -> Option<(ValueId, [NodeId; 3])> {
        let outer = producer(graph, kt, "Reshape")?;
        let t = producer(graph, input(graph.node(outer), 0)?, "Transpose")?;
        if graph.node(t).attr_ints("perm") != Some(&[0, 2, 1]) {
            return None;
        }
        let flat = input(graph.node(t), 0)?;
        let inner = producer(graph, flat, "Reshape")?;
        let k = input(graph.node(inner), 0)?;
        // K [B, H, S, D] flattened to [B·H, S, D] (S and D kept), transposed, and unflattened
        // to [B, H, D, S].
        let (ks, fs, ts) = (shape(graph, k)?, shape(graph, flat)?, shape(graph, kt)?);
        let known = |d: &fpx_ir::Dim| d.fixed().is_some() || matches!(d, fpx_ir::Dim::Sym(_));
        let same = |a: &fpx_ir::Dim, b: &fpx_ir::Dim| known(a) && a == b;
        let ok = ks.len() == 4
            && fs.len() == 3
            && ts.len() == 4
            && same(&fs[1], &ks[2])
            && same(&fs[2], &ks[3])
            && same(&ts[0], &ks[0])
            && same(&ts[1], &ks[1])
            && same(&ts[2], &ks[3])
            && same(&ts[3], &ks[2]);
        ok.then_some((k, [outer, t, inner]))
    };
    match peel() {
        Some((k, nodes)) => {
            removed.extend(nodes);
            (k, false)
        }
        None => (kt, true),
    }
}

/// `v`'s inferred dimensions.
fn shape(graph: &Graph, v: ValueId) -> Option<&Vec<fpx_ir::Dim>> {
    graph.value(v).ty.as_ref()?.shape.as_ref()
}

/// The exporters' decomposed attention ending in the `Softmax` node `softmax`.
fn match_softmax_chain(graph: &Graph, softmax: NodeId) -> Option<Fusion> {
    let sm = graph.node(softmax);
    let (scores, p) = (input(sm, 0)?, *sm.outputs.first()?);
    if sm.outputs.len() != 1 || rank(graph, scores).is_some_and(|r| r != 4) || !matches!(sm.attr_i("axis", -1), -1 | 3) {
        return None;
    }
    if dtype(graph, scores).is_some_and(|d| !matches!(d, DType::F32 | DType::F16 | DType::BF16)) {
        return None;
    }
    let mut removed = vec![softmax];
    // Forward: MatMul(p, V), or the NaN guard Where(IsNaN(p), 0, p) first.
    let consumers = &graph.value(p).consumers;
    if graph.outputs.contains(&p) {
        return None;
    }
    let (weights, zero_masked_rows) = match consumers.as_slice() {
        [_] => (p, false),
        [a, b] => {
            let (isnan, guard) = if graph.node(*a).op_type == "IsNaN" { (*a, *b) } else { (*b, *a) };
            let (i, w) = (graph.node(isnan), graph.node(guard));
            let flag = *i.outputs.first()?;
            let guarded = i.op_type == "IsNaN"
                && i.domain.is_empty()
                && w.op_type == "Where"
                && w.domain.is_empty()
                && single_use(graph, flag)
                && input(w, 0) == Some(flag)
                && input(w, 1).and_then(|z| scalar(graph, z)) == Some(0.0)
                && input(w, 2) == Some(p);
            if !guarded {
                return None;
            }
            removed.extend([isnan, guard]);
            (*w.outputs.first()?, true)
        }
        _ => return None,
    };
    let [pv] = graph.value(weights).consumers.as_slice() else { return None };
    let pv_node = graph.node(*pv);
    if pv_node.op_type != "MatMul" || !pv_node.domain.is_empty() || input(pv_node, 0) != Some(weights) || graph.outputs.contains(&weights) {
        return None;
    }
    let v = input(pv_node, 1)?;
    removed.push(*pv);
    // Backward: optional mask Add, optional scale, the Q·Kᵀ MatMul.
    let mut scale = 1.0f32;
    let qk_of = |v: ValueId, scale: &mut f32, removed: &mut Vec<NodeId>| -> Option<NodeId> {
        let x = match peel_scale(graph, v) {
            Some((x, c, n)) => {
                *scale *= c;
                removed.push(n);
                x
            }
            None => v,
        };
        producer(graph, x, "MatMul")
    };
    let (qk, mask) = match producer(graph, scores, "Add") {
        Some(add) => {
            let node = graph.node(add);
            let (a, b) = (input(node, 0)?, input(node, 1)?);
            removed.push(add);
            let attempt = |s: ValueId, m: ValueId| {
                let (mut sc, mut rm) = (1.0, Vec::new());
                qk_of(s, &mut sc, &mut rm).map(|n| (n, m, sc, rm))
            };
            let (n, m, sc, rm) = attempt(a, b).or_else(|| attempt(b, a))?;
            scale *= sc;
            removed.extend(rm);
            (n, Some(m))
        }
        None => (qk_of(scores, &mut scale, &mut removed)?, None),
    };
    if mask.is_some_and(|m| rank(graph, m).is_some_and(|r| r > 4)) {
        return None;
    }
    removed.push(qk);
    let qk_node = graph.node(qk);
    let q = strip_scale(graph, input(qk_node, 0)?, &mut scale, &mut removed);
    let kt = strip_scale(graph, input(qk_node, 1)?, &mut scale, &mut removed);
    // Exporters' shape arithmetic often leaves ranks unknown: only a known other rank stops it
    // (the kernel refuses operands that are not 4-D).
    if [q, kt, v].iter().any(|&x| rank(graph, x).is_some_and(|r| r != 4)) {
        return None;
    }
    let (k, k_transposed) = strip_key_transpose(graph, kt, &mut removed);
    // K and V lose their head expansion together or not at all (their head counts must agree).
    let (k, v) = if k_transposed {
        (k, v)
    } else {
        let mut peeled = Vec::new();
        let (k2, v2) = (strip_head_expansion(graph, k, &mut peeled), strip_head_expansion(graph, v, &mut peeled));
        if (k2 == k) == (v2 == v) {
            removed.extend(peeled);
            (k2, v2)
        } else {
            (k, v)
        }
    };
    let mut node = Node::new(
        pv_node.name.clone(),
        fused_attention::OP_TYPE,
        1,
        vec![Some(q), Some(k), Some(v), mask],
        vec![*pv_node.outputs.first()?],
    );
    node.domain = FPX_DOMAIN.to_string();
    node.attrs.insert("scale".into(), Attribute::Float(scale));
    node.attrs.insert("k_transposed".into(), Attribute::Int(k_transposed as i64));
    node.attrs.insert("zero_masked_rows".into(), Attribute::Int(zero_masked_rows as i64));
    Some(Fusion { remove: removed, node })
}

/// ONNX `Attention` (opset 23+) on 4-D Q, K, V with at most a mask: no past, causal flag,
/// softcap or extra outputs.
fn match_onnx_attention(graph: &Graph, id: NodeId) -> Option<Fusion> {
    let node = graph.node(id);
    let plain = node.outputs.len() == 1
        && node.inputs.len() <= 4
        && node.attr_i("is_causal", 0) == 0
        && node.attr_f("softcap", 0.0) == 0.0
        && (0..3).all(|i| input(node, i).is_some_and(|x| rank(graph, x) == Some(4)))
        && matches!(dtype(graph, input(node, 0)?), Some(DType::F32 | DType::F16 | DType::BF16))
        && input(node, 3).is_none_or(|m| rank(graph, m).is_some_and(|r| r <= 4));
    if !plain {
        return None;
    }
    let mut removed = vec![id];
    let k = strip_head_expansion(graph, input(node, 1)?, &mut removed);
    let v = strip_head_expansion(graph, input(node, 2)?, &mut removed);
    let mut fused = Node::new(
        node.name.clone(),
        fused_attention::OP_TYPE,
        1,
        vec![input(node, 0), Some(k), Some(v), input(node, 3)],
        node.outputs.clone(),
    );
    fused.domain = FPX_DOMAIN.to_string();
    if let Some(Attribute::Float(s)) = node.attrs.get("scale") {
        fused.attrs.insert("scale".into(), Attribute::Float(*s));
    }
    // ONNX's Attention in fpx gives fully masked queries all-zero weights.
    fused.attrs.insert("zero_masked_rows".into(), Attribute::Int(1));
    Some(Fusion { remove: removed, node: fused })
}
