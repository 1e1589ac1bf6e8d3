//! Graph-wide checks and inference: verifier and shape/type propagation.

use crate::ops::OpRegistry;
use crate::{Graph, IrError, Result};

/// Infers the type of every node output in topological order, refining declared types
/// (ONNX `value_info`) and failing where a declared type contradicts the inferred one.
pub fn infer_types(graph: &mut Graph, registry: &OpRegistry) -> Result<()> {
    for id in graph.topo_order()? {
        let node = graph.node(id).clone();
        let inferred = registry.infer_node(graph, &node)?;
        for (o, ty) in node.outputs.iter().zip(inferred) {
            let Some(ty) = ty else { continue };
            let merged = match &graph.value(*o).ty {
                None => ty,
                Some(declared) if declared.compatible(&ty) => declared.refine(&ty),
                Some(declared) => {
                    return Err(IrError::TypeMismatch {
                        node: node.name.clone(),
                        op: node.op_type.clone(),
                        message: format!("output '{}' is declared {declared} but inferred {ty}", graph.value(*o).name),
                    })
                }
            };
            graph.set_type(*o, Some(merged));
        }
    }
    Ok(())
}

/// Checks structural invariants: acyclic, every used value defined exactly once, graph
/// outputs defined, every node valid for its schema, and types that agree.
pub fn verify(graph: &Graph, registry: &OpRegistry) -> Result<()> {
    let order = graph.topo_order()?;
    for &id in &order {
        let node = graph.node(id);
        registry.check(node)?;
        for v in node.inputs.iter().flatten() {
            if !graph.is_defined(*v) {
                return Err(IrError::Undefined { value: graph.value(*v).name.clone(), node: node.name.clone() });
            }
        }
        for (slot, o) in node.outputs.iter().enumerate() {
            let val = graph.value(*o);
            if val.producer != Some((id, slot)) || graph.is_constant(*o) || graph.inputs.contains(o) {
                return Err(IrError::MultipleProducers { value: val.name.clone(), node: node.name.clone() });
            }
        }
        let inferred = registry.infer_node(graph, node)?;
        for (o, ty) in node.outputs.iter().zip(inferred) {
            if let (Some(ty), Some(have)) = (ty, &graph.value(*o).ty) {
                if !have.compatible(&ty) {
                    return Err(IrError::TypeMismatch {
                        node: node.name.clone(),
                        op: node.op_type.clone(),
                        message: format!("output '{}' has type {have} but inference gives {ty}", graph.value(*o).name),
                    });
                }
            }
        }
    }
    for o in &graph.outputs {
        if !graph.is_defined(*o) {
            return Err(IrError::Invalid(format!(
                "graph output '{}' is not defined by any node, input or initializer",
                graph.value(*o).name
            )));
        }
    }
    Ok(())
}
