//! Runs FP16 and BF16 graphs in `f32`: exports made for GPUs (`onnxconverter_common.float16`,
//! optimum `--dtype fp16`) hold 16-bit weights and compute in 16 bits between their inputs and
//! outputs; fpx's fast paths and quantized-product kernels compute in `f32`. This pass moves
//! every 16-bit float inside the graph to `f32` — constants converted once, `Cast`s to 16 bits
//! made casts to `f32`, value types retyped — and keeps the graph's interface: a 16-bit input
//! is cast to `f32` where it enters, a 16-bit output is cast back where it leaves (under its own
//! name). A table only `Gather` reads (an embedding) stays 16-bit, and so does the artifact's
//! copy of it: the rows gathered are cast. Results differ from a 16-bit execution by its
//! rounding: they are the `f32` twin's.

use fpx_ir::ops::OpRegistry;
use fpx_ir::pass::Pass;
use fpx_ir::{onnx_code, onnx_dtype, Attribute, DType, Graph, Node, TensorType, ValueId};
use std::sync::Arc;

/// The pass: see the module docs. Changes nothing in a graph without 16-bit floats.
pub struct UpcastHalfPrecision;

/// Whether `dtype` is a 16-bit float this pass moves to `f32`.
fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

/// The opset `Cast` nodes are made at (the graph's ONNX opset; `Cast` exists from 6 on).
fn cast_opset(graph: &Graph) -> i64 {
    graph.opset("").unwrap_or(13).max(6)
}

/// A `Cast(input) -> output` node named after `hint`.
fn cast_node(graph: &Graph, hint: &str, input: ValueId, output: ValueId, to: DType) -> Node {
    let mut node = Node::new(hint, "Cast", cast_opset(graph), vec![Some(input)], vec![output]);
    node.attrs.insert("to".into(), Attribute::Int(onnx_code(to)));
    node
}

/// `ty` with its element type replaced by `f32`.
fn as_f32(ty: &TensorType) -> TensorType {
    TensorType { dtype: DType::F32, ..ty.clone() }
}

impl Pass for UpcastHalfPrecision {
    fn name(&self) -> &str {
        "upcast-half-precision"
    }

    fn run(&self, graph: &mut Graph, _: &OpRegistry) -> fpx_ir::Result<bool> {
        let half_type = |g: &Graph, v: ValueId| g.value(v).ty.as_ref().filter(|t| is_half(t.dtype)).cloned();
        // Values that keep their 16-bit type: the graph's inputs and outputs, and gathered tables.
        let mut interface: Vec<ValueId> = Vec::new();
        let mut changed = false;

        // Inputs: consumers read an f32 copy.
        for input in graph.inputs.clone() {
            let Some(ty) = half_type(graph, input) else { continue };
            interface.push(input);
            if graph.value(input).consumers.is_empty() {
                continue;
            }
            let name = graph.value(input).name.clone();
            let inner = graph.fresh_value(&format!("{name}/f32"));
            graph.set_type(inner, Some(as_f32(&ty)));
            let outputs_before = graph.outputs.clone();
            graph.replace_all_uses(input, inner);
            graph.outputs = outputs_before;
            graph.add_node(cast_node(graph, &format!("{name}/upcast"), input, inner, DType::F32))?;
            changed = true;
        }

        // Outputs made by a node: the node makes an f32 value, a Cast makes the output.
        for slot in 0..graph.outputs.len() {
            let out = graph.outputs[slot];
            let Some(ty) = half_type(graph, out) else { continue };
            interface.push(out);
            let Some((producer, at)) = graph.value(out).producer else { continue };
            let name = graph.value(out).name.clone();
            let inner = graph.fresh_value(&format!("{name}/f32"));
            graph.set_type(inner, Some(as_f32(&ty)));
            let mut node = graph.remove_node(producer).expect("the producer exists");
            node.outputs[at] = inner;
            graph.add_node(node)?;
            let outputs_before = graph.outputs.clone();
            graph.replace_all_uses(out, inner);
            graph.outputs = outputs_before;
            graph.add_node(cast_node(graph, &format!("{name}/downcast"), inner, out, ty.dtype))?;
            changed = true;
        }

        // Tables only `Gather` reads (embeddings) stay 16-bit, as large as they were: each
        // Gather reads its rows in 16 bits and a Cast makes them f32.
        for id in graph.value_ids().collect::<Vec<_>>() {
            let value = graph.value(id);
            let Some(dtype) = graph.constant_type(id).map(|(d, _)| d).filter(|&d| is_half(d)) else { continue };
            let gathers = value.consumers.clone();
            let only_gathered = !gathers.is_empty()
                && gathers.iter().all(|&n| {
                    let node = graph.node(n);
                    node.domain.is_empty() && node.op_type == "Gather" && node.inputs.iter().skip(1).all(|v| *v != Some(id))
                });
            if !only_gathered || graph.outputs.contains(&id) {
                continue;
            }
            interface.push(id);
            let mut seen = Vec::new();
            for n in gathers {
                if seen.contains(&n) {
                    continue;
                }
                seen.push(n);
                let out = graph.node(n).outputs[0];
                let name = graph.value(out).name.clone();
                let rows = graph.fresh_value(&format!("{name}/{}", dtype.name()));
                graph.set_type(rows, graph.value(out).ty.as_ref().map(|t| TensorType { dtype, ..t.clone() }));
                let mut node = graph.remove_node(n).expect("the Gather exists");
                node.outputs[0] = rows;
                graph.add_node(node)?;
                graph.add_node(cast_node(graph, &format!("{name}/upcast"), rows, out, DType::F32))?;
                interface.push(rows);
            }
            changed = true;
        }

        // Constants, then every other value's type.
        for id in graph.value_ids().collect::<Vec<_>>() {
            if interface.contains(&id) {
                continue;
            }
            if let Some(data) = graph.value(id).constant.clone() {
                if is_half(data.dtype()) {
                    graph.set_constant(id, Arc::new(data.cast(DType::F32)));
                    changed = true;
                }
            } else if let Some(stored) = graph.stored(id).filter(|s| is_half(s.dtype())) {
                // Left in its file, converted when it is read.
                graph.set_stored(id, stored.cast(DType::F32));
                changed = true;
            } else if let Some(ty) = half_type(graph, id) {
                graph.set_type(id, Some(as_f32(&ty)));
                changed = true;
            }
        }

        // Attributes that choose a 16-bit output type.
        for id in graph.node_ids() {
            let node = graph.node(id);
            let mut edits: Vec<(String, Attribute)> = Vec::new();
            if node.domain.is_empty() && node.op_type == "Cast" {
                let to = node.attr_i("to", 0);
                if onnx_dtype(to).is_some_and(is_half) && !interface.contains(&node.outputs[0]) {
                    edits.push(("to".into(), Attribute::Int(onnx_code(DType::F32))));
                }
            }
            for (name, attr) in &node.attrs {
                if let Attribute::Tensor(t) = attr {
                    if is_half(t.dtype()) {
                        edits.push((name.clone(), Attribute::Tensor(t.cast(DType::F32))));
                    }
                }
            }
            if !edits.is_empty() {
                let node = graph.node_mut(id);
                for (name, attr) in edits {
                    node.attrs.insert(name, attr);
                }
                changed = true;
            }
        }
        // Casts that became f32 to f32 are dropped (their readers read the input).
        for id in if changed { graph.node_ids() } else { Vec::new() } {
            let node = graph.node(id);
            let (Some(Some(input)), Some(&out)) = (node.inputs.first(), node.outputs.first()) else { continue };
            let input = *input;
            let is_f32 = |v: ValueId| graph.value(v).ty.as_ref().is_some_and(|t| t.dtype == DType::F32);
            if !(node.domain.is_empty() && node.op_type == "Cast" && node.attr_i("to", 0) == onnx_code(DType::F32) && is_f32(input)) {
                continue;
            }
            if !graph.outputs.contains(&out) {
                graph.remove_node(id);
                graph.replace_all_uses(out, input);
                changed = true;
            } else if let Some((producer, at)) = graph.value(input).producer {
                // A graph output: its producer makes it directly, and the input's other readers
                // read it (so `present.N = Concat(..)` is seen as such by the KV-cache rewrite).
                if !graph.outputs.contains(&input) {
                    graph.remove_node(id);
                    let mut p = graph.remove_node(producer).expect("the producer exists");
                    p.outputs[at] = out;
                    graph.add_node(p)?;
                    graph.replace_all_uses(input, out);
                    changed = true;
                }
            }
        }
        Ok(changed)
    }
}

/// Runs [`UpcastHalfPrecision`] and re-infers the graph's types; whether it changed anything.
pub fn upcast_half_precision(graph: &mut Graph) -> fpx_ir::Result<bool> {
    let registry = OpRegistry::standard();
    let changed = UpcastHalfPrecision.run(graph, &registry)?;
    if changed {
        fpx_ir::verify::infer_types(graph, &registry)?;
        fpx_ir::verify::verify(graph, &registry)?;
    }
    Ok(changed)
}
