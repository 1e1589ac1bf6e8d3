//! Folding the shape arithmetic of exported graphs where the dimensions are known.
//!
//! Exporters compute reshape targets at run time: `Shape(x) → Gather(i) → Unsqueeze → Concat →
//! Reshape`, dozens of chains per layer. With dynamic batch and sequence axes most of `x`'s
//! dimensions are symbolic, so constant folding cannot touch `Shape(x)`, yet the chain often reads
//! only a dimension that is known (the hidden size, the number of heads). [`FoldKnownShapes`]
//! replaces such reads by constants; constant folding then folds the rest of the chain, and what
//! remains at run time reads only the truly dynamic dimensions.

use fpx_ir::ops::{normalize_axis, OpRegistry};
use fpx_ir::pass::Pass;
use fpx_ir::{Dim, Graph, Node, Tensor, ValueId};
use std::sync::Arc;

/// Replaces by constants: `Shape(x)` when the dimensions it returns are known;
/// `Gather(Shape(x), indices)` and `Slice(Shape(x), …)` (constant indices or bounds, axis 0,
/// step 1) when the dimensions they pick are known, though others of `x` are not.
pub struct FoldKnownShapes;

impl Pass for FoldKnownShapes {
    fn name(&self) -> &str {
        "fold-known-shapes"
    }

    fn run(&self, graph: &mut Graph, _: &OpRegistry) -> fpx_ir::Result<bool> {
        let mut changed = false;
        for id in graph.topo_order()? {
            let node = graph.node(id);
            if !node.domain.is_empty() || node.outputs.len() != 1 {
                continue;
            }
            let folded = match node.op_type.as_str() {
                "Shape" => shape_dims(graph, node).and_then(|d| known(&d)).map(Tensor::vec_i64),
                "Gather" => fold_gather(graph, node),
                "Slice" => fold_slice(graph, node),
                _ => None,
            };
            if let Some(t) = folded {
                let node = graph.remove_node(id).expect("node exists");
                graph.set_constant(node.outputs[0], Arc::new(t));
                changed = true;
            }
        }
        Ok(changed)
    }
}

/// The dimensions `Shape` returns (its input's, from `start` to `end`), if the rank is known.
fn shape_dims(graph: &Graph, shape: &Node) -> Option<Vec<Dim>> {
    let x = shape.inputs.first().copied().flatten()?;
    let dims = graph.value(x).ty.as_ref()?.shape.as_ref()?;
    let r = dims.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (start, end) = (clamp(shape.attr_i("start", 0)), clamp(shape.attr_i("end", r)));
    Some(dims.get(start..end.max(start))?.to_vec())
}

/// The sizes as `i64`, if every one is known.
fn known(dims: &[Dim]) -> Option<Vec<i64>> {
    dims.iter().map(|d| d.fixed().and_then(|n| i64::try_from(n).ok())).collect()
}

/// The dimensions returned by the `Shape` node that produces `v`, if one does.
fn dims_of_shape_output(graph: &Graph, v: ValueId) -> Option<Vec<Dim>> {
    let (producer, _) = graph.value(v).producer?;
    let p = graph.node(producer);
    (p.domain.is_empty() && p.op_type == "Shape").then(|| shape_dims(graph, p)).flatten()
}

/// `Gather(Shape(x), constant indices)` along axis 0, when every picked dimension is known.
fn fold_gather(graph: &Graph, node: &Node) -> Option<Tensor> {
    let data = node.inputs.first().copied().flatten()?;
    let dims = dims_of_shape_output(graph, data)?;
    if normalize_axis(node.attr_i("axis", 0), 1)? != 0 {
        return None;
    }
    let indices = graph.constant(node.inputs.get(1).copied().flatten()?)?;
    if indices.rank() > 1 {
        return None;
    }
    let picked: Option<Vec<i64>> = indices
        .to_i64_vec()
        .iter()
        .map(|&i| {
            let i = normalize_axis(i, dims.len())?;
            dims[i].fixed().and_then(|n| i64::try_from(n).ok())
        })
        .collect();
    let picked = picked?;
    Some(if indices.rank() == 0 {
        Tensor::I64(fpx_ir::ndarray::ArrayD::from_elem(fpx_ir::ndarray::IxDyn(&[]), picked[0]))
    } else {
        Tensor::vec_i64(picked)
    })
}

/// `Slice(Shape(x), starts, ends[, axes[, steps]])` with constant bounds on axis 0 and step 1,
/// when every dimension in the slice is known (opset 10+ inputs; older attribute forms too).
fn fold_slice(graph: &Graph, node: &Node) -> Option<Tensor> {
    let data = node.inputs.first().copied().flatten()?;
    let dims = dims_of_shape_output(graph, data)?;
    let konst = |slot: usize| -> Option<Option<Vec<i64>>> {
        match node.inputs.get(slot).copied().flatten() {
            None => Some(None),
            Some(v) => graph.constant(v).map(|t| Some(t.to_i64_vec())),
        }
    };
    let (starts, ends, axes, steps) = if node.opset < 10 {
        (node.attr_ints("starts")?.to_vec(), node.attr_ints("ends")?.to_vec(), node.attr_ints("axes").map(<[i64]>::to_vec), None)
    } else {
        (konst(1)??, konst(2)??, konst(3)?, konst(4)?)
    };
    let one = |v: &Vec<i64>| v.len() == 1;
    if !one(&starts) || !one(&ends) || !axes.as_ref().is_none_or(|a| one(a) && (a[0] == 0 || a[0] == -1)) {
        return None;
    }
    if !steps.as_ref().is_none_or(|s| s.len() == 1 && s[0] == 1) {
        return None;
    }
    let n = dims.len() as i64;
    let clamp = |v: i64| (if v < 0 { v.saturating_add(n) } else { v }).clamp(0, n) as usize;
    let (start, end) = (clamp(starts[0]), clamp(ends[0]));
    Some(Tensor::vec_i64(known(dims.get(start..end.max(start))?)?))
}
