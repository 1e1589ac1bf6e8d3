//! What `fpx inspect` reports about a model.

use fpx_ir::{Graph, TensorType};
use serde::Serialize;
use std::collections::BTreeMap;

/// A MatMul/Gemm whose weight is a constant: the candidates for quantization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightMatmul {
    /// `MatMul` or `Gemm`.
    pub op: String,
    /// Weight shape as stored.
    pub weight_shape: Vec<usize>,
    /// Whether the weight is used transposed (Gemm `transB = 1`).
    pub transposed: bool,
    /// How many nodes have this op and weight shape.
    pub count: usize,
}

/// A named tensor and its static type, rendered as text.
#[derive(Debug, Clone, Serialize)]
pub struct IoSpec {
    /// Value name.
    pub name: String,
    /// Type like `float[batch, seq, 384]`.
    #[serde(rename = "type")]
    pub ty: String,
}

/// A summary of a model: opsets, op counts, inputs/outputs, parameters, weight matmuls.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    /// Graph name.
    pub name: String,
    /// Opset imports (domain `""` is ONNX).
    pub opsets: BTreeMap<String, i64>,
    /// Node count per op type.
    pub op_counts: BTreeMap<String, usize>,
    /// Total nodes.
    pub nodes: usize,
    /// Graph inputs.
    pub inputs: Vec<IoSpec>,
    /// Graph outputs.
    pub outputs: Vec<IoSpec>,
    /// Elements over all constants.
    pub parameters: usize,
    /// MatMul/Gemm nodes with a constant weight, grouped by shape.
    pub weight_matmuls: Vec<WeightMatmul>,
}

/// MatMul/Gemm nodes whose weight (input 1) is a constant, grouped by op and weight shape.
pub fn weight_matmuls(graph: &Graph) -> Vec<WeightMatmul> {
    let mut groups: BTreeMap<(String, Vec<usize>, bool), usize> = BTreeMap::new();
    for id in graph.node_ids() {
        let n = graph.node(id);
        if n.op_type == "MatMul" || n.op_type == "Gemm" {
            if let Some(w) = n.inputs.get(1).copied().flatten().and_then(|v| graph.constant(v)) {
                let transposed = n.op_type == "Gemm" && n.attr_i("transB", 0) != 0;
                *groups.entry((n.op_type.clone(), w.shape().to_vec(), transposed)).or_insert(0) += 1;
            }
        }
    }
    groups.into_iter().map(|((op, weight_shape, transposed), count)| WeightMatmul { op, weight_shape, transposed, count }).collect()
}

fn type_text(ty: &Option<TensorType>) -> String {
    ty.as_ref().map(|t| t.to_string()).unwrap_or_else(|| "?".into())
}

impl ModelSummary {
    /// Summarizes a graph.
    pub fn of(graph: &Graph) -> ModelSummary {
        let mut op_counts = BTreeMap::new();
        for id in graph.node_ids() {
            *op_counts.entry(graph.node(id).op_type.clone()).or_insert(0) += 1;
        }
        let io = |ids: &[fpx_ir::ValueId]| {
            ids.iter().map(|&v| IoSpec { name: graph.value(v).name.clone(), ty: type_text(&graph.value(v).ty) }).collect()
        };
        ModelSummary {
            name: graph.name.clone(),
            opsets: graph.opsets.clone(),
            op_counts,
            nodes: graph.node_count(),
            inputs: io(&graph.inputs),
            outputs: io(&graph.outputs),
            parameters: graph.parameter_count(),
            weight_matmuls: weight_matmuls(graph),
        }
    }

    /// Human-readable report.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "model: {}", if self.name.is_empty() { "(unnamed)" } else { &self.name });
        let opsets: Vec<String> = self.opsets.iter().map(|(d, v)| format!("{}={v}", if d.is_empty() { "ai.onnx" } else { d })).collect();
        let _ = writeln!(s, "opsets: {}", opsets.join(", "));
        let _ = writeln!(s, "inputs:");
        for i in &self.inputs {
            let _ = writeln!(s, "  {}: {}", i.name, i.ty);
        }
        let _ = writeln!(s, "outputs:");
        for o in &self.outputs {
            let _ = writeln!(s, "  {}: {}", o.name, o.ty);
        }
        let _ = writeln!(s, "parameters: {} ({:.2} MB as f32)", self.parameters, self.parameters as f64 * 4.0 / 1e6);
        let _ = writeln!(s, "nodes: {}", self.nodes);
        let mut ops: Vec<_> = self.op_counts.iter().collect();
        ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (op, n) in ops {
            let _ = writeln!(s, "  {op:<24} {n}");
        }
        let total: usize = self.weight_matmuls.iter().map(|w| w.count).sum();
        let _ = writeln!(s, "matmuls with a constant weight: {total}");
        for w in &self.weight_matmuls {
            let _ = writeln!(s, "  {} x {} W{:?}{}", w.count, w.op, w.weight_shape, if w.transposed { " (transB)" } else { "" });
        }
        s
    }
}
