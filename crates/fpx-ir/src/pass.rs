//! Graph passes: the [`Pass`] trait, the [`PassManager`], and the basic cleanup passes.

use crate::ops::OpRegistry;
use crate::{verify, Graph, Node, NodeId, Result, Tensor};
use std::collections::HashSet;
use std::sync::Arc;

/// A graph rewrite. `run` returns whether it changed anything.
pub trait Pass {
    /// Short name for logs and errors.
    fn name(&self) -> &str;
    /// Rewrites the graph in place.
    fn run(&self, graph: &mut Graph, registry: &OpRegistry) -> Result<bool>;
}

/// Runs passes in order and verifies the graph after each one, so a broken rewrite is caught
/// where it happens.
#[derive(Default)]
pub struct PassManager {
    passes: Vec<Box<dyn Pass>>,
}

impl PassManager {
    /// An empty pipeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a pass.
    pub fn with(mut self, pass: impl Pass + 'static) -> Self {
        self.passes.push(Box::new(pass));
        self
    }

    /// Runs every pass once; returns the names of those that changed the graph.
    pub fn run(&self, graph: &mut Graph, registry: &OpRegistry) -> Result<Vec<String>> {
        let mut changed = Vec::new();
        for p in &self.passes {
            if p.run(graph, registry)? {
                changed.push(p.name().to_string());
            }
            verify::verify(graph, registry).map_err(|e| crate::IrError::Invalid(format!("after pass '{}': {e}", p.name())))?;
        }
        Ok(changed)
    }
}

/// Removes nodes none of whose outputs reach a graph output.
pub struct DeadNodeElimination;

impl Pass for DeadNodeElimination {
    fn name(&self) -> &str {
        "dead-node-elimination"
    }

    fn run(&self, graph: &mut Graph, _: &OpRegistry) -> Result<bool> {
        let mut live: HashSet<NodeId> = HashSet::new();
        let mut stack: Vec<NodeId> = graph.outputs.iter().filter_map(|o| graph.value(*o).producer.map(|p| p.0)).collect();
        while let Some(n) = stack.pop() {
            if live.insert(n) {
                stack.extend(graph.node(n).inputs.iter().flatten().filter_map(|v| graph.value(*v).producer.map(|p| p.0)));
            }
        }
        let dead: Vec<NodeId> = graph.node_ids().into_iter().filter(|n| !live.contains(n)).collect();
        for &n in &dead {
            graph.remove_node(n);
        }
        let dropped = graph.remove_unused_constants();
        Ok(!dead.is_empty() || dropped > 0)
    }
}

/// Evaluates one node on constant inputs; implemented by the runtime's CPU executor and
/// handed to [`ConstantFolding`], so the IR needs no kernels of its own.
pub trait NodeEvaluator {
    /// Computes the node's outputs from its inputs (`None` for omitted optional inputs).
    fn evaluate(&self, node: &Node, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>, String>;
}

/// Replaces every node whose inputs are all constants by constants holding its outputs.
/// Nodes larger than `max_elements` outputs are left alone (folding must not bloat the model).
pub struct ConstantFolding<E: NodeEvaluator> {
    /// Evaluates nodes (the runtime's CPU kernels).
    pub evaluator: E,
    /// Largest output, in elements, worth folding.
    pub max_elements: usize,
}

impl<E: NodeEvaluator> Pass for ConstantFolding<E> {
    fn name(&self) -> &str {
        "constant-folding"
    }

    fn run(&self, graph: &mut Graph, _: &OpRegistry) -> Result<bool> {
        let mut changed = false;
        for id in graph.topo_order()? {
            let node = graph.node(id);
            let inputs: Vec<Option<Arc<Tensor>>> = node.inputs.iter().map(|v| v.and_then(|v| graph.constant(v).cloned())).collect();
            if node.inputs.iter().zip(&inputs).any(|(v, c)| v.is_some() && c.is_none()) {
                continue;
            }
            let refs: Vec<Option<&Tensor>> = inputs.iter().map(|c| c.as_deref()).collect();
            let Ok(outs) = self.evaluator.evaluate(node, &refs) else {
                continue;
            };
            if outs.len() != node.outputs.len() || outs.iter().any(|t| t.len() > self.max_elements) {
                continue;
            }
            let node = graph.remove_node(id).expect("node exists");
            for (o, t) in node.outputs.iter().zip(outs) {
                graph.set_constant(*o, Arc::new(t));
            }
            changed = true;
        }
        Ok(changed)
    }
}
