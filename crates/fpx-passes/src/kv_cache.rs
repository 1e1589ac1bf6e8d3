//! The KV-cache rewrite: a decoder step's `Concat(past, new)` — `past` a graph input, the result
//! a graph output (`past_key_values.N.key` → `present.N.key`) — becomes `fpx:KvAppend`, which
//! computes the same tensor but appends into spare room of `past`'s buffer when the executor hands
//! it over, so a generation step neither copies nor reallocates the cache.

use fpx_ir::ops::{kv_append, OpRegistry, FPX_DOMAIN};
use fpx_ir::pass::Pass;
use fpx_ir::{Attribute, Graph, Node, NodeId, ValueId};
use petgraph::algo::has_path_connecting;

/// The value `v` copies: through `Identity` nodes and one-input `Concat`s (the TorchScript
/// exporter wraps a cache input in one), back to where the data comes from.
fn through_identities(graph: &Graph, mut v: ValueId) -> ValueId {
    while let Some((producer, _)) = graph.value(v).producer {
        let n = graph.node(producer);
        let copies = n.domain.is_empty() && (n.op_type == "Identity" || n.op_type == "Concat") && n.inputs.len() == 1;
        match (copies, n.inputs.first().copied().flatten()) {
            (true, Some(src)) => v = src,
            _ => break,
        }
    }
    v
}

/// Rewrites every cache `Concat` (two inputs; the first a graph input, not a constant, possibly
/// through identities; the output a graph output) into `fpx:KvAppend` with the same axis, name and
/// output, reading the graph input directly.
pub struct AppendKvCache;

impl Pass for AppendKvCache {
    fn name(&self) -> &str {
        "append-kv-cache"
    }

    fn run(&self, graph: &mut Graph, _: &OpRegistry) -> fpx_ir::Result<bool> {
        let mut found = Vec::new();
        for id in graph.node_ids() {
            let n = graph.node(id);
            if !(n.domain.is_empty() && n.op_type == "Concat" && n.inputs.len() == 2 && n.outputs.len() == 1) {
                continue;
            }
            let (Some(past), Some(_)) = (n.inputs[0], n.inputs[1]) else { continue };
            let past = through_identities(graph, past);
            let is_cache = graph.inputs.contains(&past) && !graph.is_constant(past) && graph.outputs.contains(&n.outputs[0]);
            if is_cache {
                found.push((id, past));
            }
        }
        if found.is_empty() {
            return Ok(false);
        }
        let fpx_opset = *graph.opsets.entry(FPX_DOMAIN.to_string()).or_insert(1);
        for (id, past) in found {
            // Readers of an identity copy of `past` read `past` itself (the copy then dies).
            let mut v = graph.node(id).inputs[0].expect("checked");
            while v != past && !graph.outputs.contains(&v) {
                let (producer, _) = graph.value(v).producer.expect("an identity's output");
                let source = graph.node(producer).inputs[0].expect("an identity has its input");
                graph.replace_all_uses(v, source);
                v = source;
            }
            // Every other reader of `past` that does not depend on the append runs before it, so
            // the append is the last reader and may take `past` over.
            let readers: Vec<NodeId> = graph.value(past).consumers.iter().copied().filter(|&r| r != id).collect();
            let mut order = Vec::new();
            for r in readers {
                if !has_path_connecting(graph.dag(), id, r, None) {
                    if let Some(&out) = graph.node(r).outputs.first() {
                        order.push(Some(out));
                    }
                }
            }
            let concat = graph.remove_node(id).expect("node exists");
            let mut inputs = vec![Some(past), concat.inputs[1]];
            inputs.extend(order);
            let mut append = Node::new(concat.name.clone(), kv_append::OP_TYPE, fpx_opset, inputs, concat.outputs.clone());
            append.domain = FPX_DOMAIN.to_string();
            append.attrs.insert("axis".into(), Attribute::Int(concat.attr_i("axis", 0)));
            graph.add_node(append)?;
        }
        Ok(true)
    }
}
