//! The quantize rewrite: MatMul / Gemm with a constant weight → `fpx:QuantMatMul`.
//!
//! `QuantMatMul(X[..., K], packed: uint8[bytes], scales: float[groups, N], bias?: float[N])`
//! with attributes `format`, `k`, `n`, `group_size` (0 = per channel) and optionally
//! `activations` (`int8`: X is first quantized per row and block of 32, `fpx_quant::act8`)
//! computes `Y = X · W + bias` where `W[k, n] = v(code[n, k]) · scales[k / group, n]` and `v` is the
//! code's bias-shifted FP16 value (`fpx_quant::fold`): the format's power-of-two factor is
//! already in `scales`, so kernels never multiply per weight.

use crate::{PassError, QuantizeOptions};
use fpx_ir::ops::{quant_matmul, OpRegistry, FPX_DOMAIN};
use fpx_ir::pass::Pass;
use fpx_ir::{Attribute, Graph, IrError, Node, NodeId, Tensor, ValueId};
use fpx_quant::layout::{self, PackedShape};
use fpx_quant::{fold, quantize, Format, QuantConfig, QuantGemm, QuantizedMatrix};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// What happened to one MatMul/Gemm.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerQuant {
    /// Node name.
    pub node: String,
    /// `MatMul` or `Gemm`.
    pub op: String,
    /// Name of the weight tensor.
    pub weight: String,
    /// Reduction size.
    pub k: usize,
    /// Output channels.
    pub n: usize,
    /// The format chosen.
    pub format: Format,
    /// Relative RMSE of the dequantized weight: ‖W − Ŵ‖ / ‖W‖.
    pub rel_rmse: f64,
    /// Every format tried, with its error (more than one for `fp6-auto`).
    pub tried: Vec<(Format, f64)>,
}

/// The result of quantizing a graph's weights.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuantSummary {
    /// One entry per rewritten node, in graph order.
    pub layers: Vec<LayerQuant>,
    /// Bytes of the original weights (in their stored type), each distinct weight once.
    pub weight_bytes_in: usize,
    /// Bytes of packed codes plus scales, each distinct weight once.
    pub weight_bytes_out: usize,
    /// The embedding tables quantized (see [`QuantizeOptions::embeddings`]).
    pub embeddings: Vec<crate::EmbeddingQuant>,
}

/// A MatMul/Gemm the quantize rewrite applies to: its weight (input 1) is a constant 2-D float
/// matrix with elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightSite {
    /// The MatMul or Gemm node.
    pub node: NodeId,
    /// The constant weight.
    pub weight: ValueId,
    /// Whether the weight is used transposed (a Gemm with `transB`).
    pub transposed: bool,
}

/// Which key identifies a quantized weight: the constant and whether it is used transposed.
type WeightKey = (ValueId, bool);

/// The quantization kept for one weight, with the error of every format tried.
struct Choice {
    matrix: QuantizedMatrix,
    tried: Vec<(Format, f64)>,
    rel_rmse: f64,
}

struct Quantized {
    choice: Choice,
    packed: ValueId,
}

/// Every MatMul/Gemm the quantize rewrite applies to, in topological order: what `fpx inspect`
/// lists and `fpx report` plots, so they show exactly what quantization will rewrite.
pub fn weight_sites(graph: &Graph) -> Result<Vec<WeightSite>, IrError> {
    let mut out = Vec::new();
    for id in graph.topo_order()? {
        let n = graph.node(id);
        if !n.domain.is_empty() || !(n.op_type == "MatMul" || n.op_type == "Gemm") {
            continue;
        }
        let Some(w) = n.inputs.get(1).copied().flatten() else { continue };
        let Some(t) = graph.constant(w) else { continue };
        if t.rank() != 2 || !t.dtype().is_float() || t.is_empty() {
            continue;
        }
        let transposed = n.op_type == "Gemm" && n.attr_i("transB", 0) != 0;
        out.push(WeightSite { node: id, weight: w, transposed });
    }
    Ok(out)
}

/// The weight as `[k][n]` f32 (transposing a Gemm `transB` weight).
fn weight_kn(t: &Tensor, transposed: bool) -> (Vec<f32>, usize, usize) {
    let a = t.to_f32();
    let (r, c) = (t.shape()[0], t.shape()[1]);
    if transposed {
        let v = a.t().iter().copied().collect();
        (v, c, r)
    } else {
        (a.iter().copied().collect(), r, c)
    }
}

/// Quantizes one weight with every candidate format and keeps the one with the least error.
fn quantize_best(name: &str, w: &[f32], k: usize, n: usize, opts: &QuantizeOptions) -> Result<Choice, PassError> {
    let mut best: Option<(QuantizedMatrix, f64)> = None;
    let mut tried = Vec::new();
    for format in opts.candidates() {
        let q = quantize(name, w, k, n, &QuantConfig { format, group_size: opts.group_size, scale_search: opts.scale_search })?;
        let e = q.relative_rmse(w);
        tried.push((format, e));
        if best.as_ref().is_none_or(|(_, b)| e < *b) {
            best = Some((q, e));
        }
    }
    let (matrix, rel_rmse) = best.ok_or_else(|| PassError::Option("scheme 'none' quantizes nothing".into()))?;
    Ok(Choice { matrix, tried, rel_rmse })
}

fn f32_tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from(fpx_ir::ndarray::ArrayD::from_shape_vec(fpx_ir::ndarray::IxDyn(shape), v).expect("shape matches"))
}

/// Scales folded for the kernels: the format's bias-shift factor times `alpha`, as `[groups, n]`.
fn folded_scales(q: &QuantizedMatrix, alpha: f32) -> Tensor {
    let f = fold::storage_factor(q.format) * alpha;
    f32_tensor(&[q.groups(), q.n], q.scales.iter().map(|s| s * f).collect())
}

/// A constant `C` of a Gemm as a per-channel bias `beta * C` of length `n`, if it broadcasts so.
fn bias_vector(c: &Tensor, beta: f32, n: usize) -> Option<Vec<f32>> {
    let ok = match c.shape() {
        [] => true,
        [d] => *d == n || *d == 1,
        [1, d] => *d == n || *d == 1,
        _ => false,
    };
    if !ok {
        return None;
    }
    let v = c.to_f32();
    let vals: Vec<f32> = v.iter().copied().collect();
    Some((0..n).map(|j| beta * vals[if vals.len() == 1 { 0 } else { j }]).collect())
}

/// Rewrites every MatMul/Gemm with a constant weight into `fpx:QuantMatMul`. Weights shared
/// by several nodes are quantized once. Returns per-layer errors and byte counts.
pub fn quantize_weights(graph: &mut Graph, opts: &QuantizeOptions) -> Result<QuantSummary, PassError> {
    opts.validate()?;
    let mut summary = QuantSummary::default();
    // Scheme `none` keeps every weight as it is, embedding tables too (the FP32 reference).
    if opts.scheme.candidates().is_empty() {
        return Ok(summary);
    }
    let sites = weight_sites(graph)?;
    // Quantize each distinct weight once, in parallel.
    let mut keys: Vec<WeightKey> = sites.iter().map(|s| (s.weight, s.transposed)).collect();
    keys.sort();
    keys.dedup();
    let results: Vec<Result<(WeightKey, Choice, usize), PassError>> = keys
        .par_iter()
        .map(|&(v, tr)| {
            let t = graph.constant(v).expect("site weights are constants");
            let (w, k, n) = weight_kn(t, tr);
            let choice = quantize_best(&graph.value(v).name, &w, k, n, opts)?;
            Ok(((v, tr), choice, t.len() * t.dtype().size_bytes()))
        })
        .collect();
    let results = results.into_iter().collect::<Result<Vec<_>, PassError>>()?;
    // Every rewritten product must be one fpx can run: check them all before the graph changes,
    // so an error leaves the graph as it was.
    let mut gemms: HashMap<NodeId, QuantGemm> = HashMap::new();
    for site in &sites {
        let (_, choice, _) =
            results.iter().find(|(key, _, _)| *key == (site.weight, site.transposed)).expect("every site's weight was quantized");
        let m = &choice.matrix;
        let gemm = QuantGemm { format: m.format, k: m.k, n: m.n, group_size: m.group_size.unwrap_or(0), activations: opts.activations };
        gemm.validate().map_err(|source| PassError::Gemm { node: graph.node(site.node).name.clone(), source })?;
        gemms.insert(site.node, gemm);
    }
    let mut done: HashMap<WeightKey, Quantized> = HashMap::new();
    for (key, choice, bytes_in) in results {
        let matrix = &choice.matrix;
        let shape = PackedShape::new(matrix.n, matrix.k, matrix.format.bits());
        let packed = layout::pack(&matrix.codes, &shape);
        let bytes = packed.len();
        let name = format!("{}__{}", graph.value(key.0).name, matrix.format.name());
        let pv = graph.fresh_value(&name);
        graph.set_constant(
            pv,
            Arc::new(Tensor::from(fpx_ir::ndarray::ArrayD::from_shape_vec(fpx_ir::ndarray::IxDyn(&[bytes]), packed).expect("1-D"))),
        );
        summary.weight_bytes_in += bytes_in;
        summary.weight_bytes_out += bytes + matrix.scales.len() * 4;
        done.insert(key, Quantized { choice, packed: pv });
    }
    let fpx_opset = *graph.opsets.entry(FPX_DOMAIN.to_string()).or_insert(1);
    let mut scales_cache: BTreeMap<(WeightKey, u32), ValueId> = BTreeMap::new();
    for site in sites {
        let node = graph.node(site.node).clone();
        let q = &done[&(site.weight, site.transposed)];
        let m = &q.choice.matrix;
        let is_gemm = node.op_type == "Gemm";
        let alpha = if is_gemm { node.attr_f("alpha", 1.0) } else { 1.0 };
        let beta = if is_gemm { node.attr_f("beta", 1.0) } else { 1.0 };
        let scales = match scales_cache.get(&((site.weight, site.transposed), alpha.to_bits())) {
            Some(&v) => v,
            None => {
                let v = graph.fresh_value(&format!("{}__scales", graph.value(q.packed).name));
                graph.set_constant(v, Arc::new(folded_scales(m, alpha)));
                scales_cache.insert(((site.weight, site.transposed), alpha.to_bits()), v);
                v
            }
        };
        graph.remove_node(site.node);
        let mut x = node.inputs[0];
        let mut extra = Vec::new();
        if is_gemm && node.attr_i("transA", 0) != 0 {
            let xt = graph.fresh_value(&format!("{}__a_t", node.name));
            let mut t = Node::new(format!("{}__transpose_a", node.name), "Transpose", graph.opset("").unwrap_or(13), vec![x], vec![xt]);
            t.attrs.insert("perm".into(), Attribute::Ints(vec![1, 0]));
            extra.push(t);
            x = Some(xt);
        }
        let c = if is_gemm { node.inputs.get(2).copied().flatten() } else { None };
        let bias = c.and_then(|c| graph.constant(c).and_then(|t| bias_vector(t, beta, m.n)));
        let bias_value = bias.map(|b| {
            let v = graph.fresh_value(&format!("{}__bias", node.name));
            graph.set_constant(v, Arc::new(f32_tensor(&[m.n], b)));
            v
        });
        // A C that is not a constant per-channel vector is added after the product.
        let add_c = c.filter(|_| bias_value.is_none());
        let y = node.outputs[0];
        let qm_out = if add_c.is_some() { graph.fresh_value(&format!("{}__qmm", node.name)) } else { y };
        let mut qm = Node::new(node.name.clone(), quant_matmul::OP_TYPE, fpx_opset, vec![x, Some(q.packed), Some(scales)], vec![qm_out]);
        qm.domain = FPX_DOMAIN.to_string();
        if let Some(b) = bias_value {
            qm.inputs.push(Some(b));
        }
        quant_matmul::write(&mut qm, &gemms[&site.node]);
        extra.push(qm);
        if let Some(c) = add_c {
            let opset = graph.opset("").unwrap_or(13);
            let mut c_in = c;
            if beta != 1.0 {
                let bv = graph.fresh_value(&format!("{}__beta", node.name));
                graph.set_constant(
                    bv,
                    Arc::new(Tensor::scalar_f32(beta).cast(graph.value(c).ty.as_ref().map(|t| t.dtype).unwrap_or(fpx_ir::DType::F32))),
                );
                let scaled = graph.fresh_value(&format!("{}__beta_c", node.name));
                extra.push(Node::new(format!("{}__scale_c", node.name), "Mul", opset, vec![Some(c), Some(bv)], vec![scaled]));
                c_in = scaled;
            }
            extra.push(Node::new(format!("{}__add_c", node.name), "Add", opset, vec![Some(qm_out), Some(c_in)], vec![y]));
        }
        for n in extra {
            graph.add_node(n)?;
        }
        summary.layers.push(LayerQuant {
            node: node.name.clone(),
            op: node.op_type.clone(),
            weight: graph.value(site.weight).name.clone(),
            k: m.k,
            n: m.n,
            format: m.format,
            rel_rmse: q.choice.rel_rmse,
            tried: q.choice.tried.clone(),
        });
    }
    if let Some(format) = opts.embeddings {
        let heads: Vec<crate::embedding::Head<'_>> = done
            .iter()
            .map(|(&(v, tr), q)| crate::embedding::Head {
                node: summary.layers.iter().find(|l| l.weight == graph.value(v).name).map(|l| l.node.clone()).unwrap_or_default(),
                packed: q.packed,
                matrix: &q.choice.matrix,
                source: v,
                transposed: tr,
            })
            .collect();
        let embeddings = crate::embedding::quantize_embeddings(graph, format, opts.embedding_min_elements, &heads)?;
        summary.embeddings = embeddings;
    }
    graph.remove_unused_constants();
    if opts.fuse_epilogues && !summary.layers.is_empty() {
        crate::fuse_epilogues(graph, &OpRegistry::standard())?;
    }
    Ok(summary)
}

/// [`quantize_weights`] as a [`Pass`] for the pass manager.
pub struct QuantizeWeights(pub QuantizeOptions);

impl Pass for QuantizeWeights {
    fn name(&self) -> &str {
        "quantize-weights"
    }

    fn run(&self, graph: &mut Graph, _: &OpRegistry) -> Result<bool, IrError> {
        let s = quantize_weights(graph, &self.0).map_err(|e| IrError::Invalid(e.to_string()))?;
        Ok(!s.layers.is_empty())
    }
}
