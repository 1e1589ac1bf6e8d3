//! Graph passes: the [`Pass`] trait, the [`PassManager`], and the basic cleanup passes.

use crate::ops::OpRegistry;
use crate::{verify, Graph, Node, NodeId, Result, Tensor, TensorBudget};
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
///
/// A node is folded only when shape inference gives every output a fully known shape that
/// holds at most `max_elements` elements and fits `budget` — checked *before* the node is
/// evaluated, so a model asking for a huge constant (`ConstantOfShape([2^31])`) is left alone
/// instead of being materialized. A node whose output size is unknown is not folded.
pub struct ConstantFolding<E: NodeEvaluator> {
    /// Evaluates nodes (the runtime's CPU kernels, which check their own allocations against the
    /// same budget).
    pub evaluator: E,
    /// Largest output, in elements, worth folding (folding must not bloat the model).
    pub max_elements: usize,
    /// Largest output, in bytes, folding may create.
    pub budget: TensorBudget,
}

impl<E: NodeEvaluator> ConstantFolding<E> {
    /// Whether every output of `node` has a known size within `max_elements` and the budget.
    fn small_enough(&self, graph: &Graph, registry: &OpRegistry, node: &Node) -> bool {
        let Ok(types) = registry.infer_node(graph, node) else { return false };
        types.len() == node.outputs.len()
            && types.iter().all(|ty| {
                let Some((ty, dims)) = ty.as_ref().and_then(|t| Some((t, t.fixed_dims()?))) else { return false };
                self.budget.check(ty.dtype, &dims).is_ok_and(|n| n <= self.max_elements)
            })
    }
}

impl<E: NodeEvaluator> Pass for ConstantFolding<E> {
    fn name(&self) -> &str {
        "constant-folding"
    }

    fn run(&self, graph: &mut Graph, registry: &OpRegistry) -> Result<bool> {
        let mut changed = false;
        for id in graph.topo_order()? {
            let node = graph.node(id);
            if node.inputs.iter().flatten().any(|&v| !graph.is_constant(v)) {
                continue;
            }
            if !self.small_enough(graph, registry, node) {
                continue;
            }
            // File-kept inputs (a large weight a Transpose or Cast reads) are read now, one node at a time.
            let inputs: Vec<Option<Arc<Tensor>>> =
                node.inputs.iter().map(|v| v.map(|v| graph.load_constant(v)).transpose().map(Option::flatten)).collect::<Result<_>>()?;
            let refs: Vec<Option<&Tensor>> = inputs.iter().map(|c| c.as_deref()).collect();
            let Ok(outs) = self.evaluator.evaluate(node, &refs) else {
                continue;
            };
            // Inference and the kernel should agree; a kernel that returns more is not trusted.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, TensorType};

    /// An evaluator that must not be called: folding decides from inferred types first.
    struct MustNotEvaluate;

    impl NodeEvaluator for MustNotEvaluate {
        fn evaluate(&self, node: &Node, _: &[Option<&Tensor>]) -> Result<Vec<Tensor>, String> {
            panic!("node '{}' was evaluated", node.name)
        }
    }

    /// Counts its calls and makes a float tensor of the shape its (constant) input gives.
    struct Fills(std::cell::Cell<usize>);

    impl NodeEvaluator for Fills {
        fn evaluate(&self, _: &Node, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>, String> {
            self.0.set(self.0.get() + 1);
            let shape: Vec<usize> = inputs[0].expect("shape").to_i64_vec().iter().map(|&d| d as usize).collect();
            Ok(vec![Tensor::from(crate::ndarray::ArrayD::<f32>::zeros(crate::ndarray::IxDyn(&shape)))])
        }
    }

    fn constant_of_shape(dims: Vec<i64>) -> Graph {
        let mut g = Graph::new("cos");
        g.opsets.insert(String::new(), 17);
        let shape = g.add_constant("shape", Tensor::vec_i64(dims)).unwrap();
        let y = g.value_named("y");
        g.add_node(Node::new("huge", "ConstantOfShape", 17, vec![Some(shape)], vec![y])).unwrap();
        g.outputs.push(y);
        g
    }

    #[test]
    fn folding_checks_the_inferred_size_before_evaluating() {
        let registry = OpRegistry::standard();
        // 2^31 floats: over the element limit and the budget; never evaluated.
        let mut g = constant_of_shape(vec![1 << 31]);
        assert!(!ConstantFolding { evaluator: MustNotEvaluate, max_elements: 1 << 20, budget: TensorBudget::default() }
            .run(&mut g, &registry)
            .unwrap());
        assert_eq!(g.node_count(), 1);
        // Within the element limit but over the byte budget: not evaluated either.
        let mut g = constant_of_shape(vec![64, 64]);
        assert!(!ConstantFolding { evaluator: MustNotEvaluate, max_elements: 1 << 20, budget: TensorBudget::new(1024) }
            .run(&mut g, &registry)
            .unwrap());
        // Within both: evaluated once and folded.
        let mut g = constant_of_shape(vec![4, 8]);
        let f = ConstantFolding { evaluator: Fills(Default::default()), max_elements: 1 << 20, budget: TensorBudget::default() };
        assert!(f.run(&mut g, &registry).unwrap());
        assert_eq!((f.evaluator.0.get(), g.node_count()), (1, 0));
        let y = g.outputs[0];
        assert_eq!(g.value(y).ty, Some(TensorType::fixed(DType::F32, &[4, 8])));
    }
}
