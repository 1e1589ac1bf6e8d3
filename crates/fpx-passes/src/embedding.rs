//! Quantized embedding tables: `Gather(E[V, D], ids)` with a constant float table becomes
//! `fpx:QuantGather`, which dequantizes only the rows it reads. The table is stored as the
//! weight `W = Eᵀ[D, V]` of a quantized product (one output channel, and one scale, per token):
//! exactly the LM head of a model whose head is tied to its embedding, so when a quantized
//! product's weight equals `Eᵀ`, the lookup reads that product's packed weight and the model
//! holds one quantized copy.

use crate::PassError;
use fpx_ir::ops::{quant_gather, quant_matmul, FPX_DOMAIN};
use fpx_ir::{DType, Graph, Node, NodeId, Tensor, ValueId};
use fpx_quant::act8::Activations;
use fpx_quant::layout::{self, PackedShape};
use fpx_quant::{fold, quantize_channels, Format, QuantConfig, QuantGemm, QuantizedMatrix};
use std::sync::Arc;

/// Tables smaller than this (in elements) stay as they are by default: token-type tables and
/// the like are a few KiB.
pub const MIN_TABLE_ELEMENTS: usize = 1 << 16;

/// What happened to one embedding table.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingQuant {
    /// The table (constant value name).
    pub table: String,
    /// Rows (tokens) and row width.
    pub rows: usize,
    /// Row width.
    pub width: usize,
    /// Format of its codes.
    pub format: Format,
    /// The quantized product whose weight it shares (a tied LM head), if any.
    pub tied_with: Option<String>,
    /// Relative RMS error of the dequantized table.
    pub rel_rmse: f64,
    /// Bytes of the table as stored in the model.
    pub bytes_in: usize,
    /// Bytes added for it: codes and scales (only scales when shared with a product).
    pub bytes_out: usize,
}

/// A quantized product's weight that a tied table may share.
pub(crate) struct Head<'a> {
    /// The product node's name.
    pub node: String,
    /// The packed weight constant.
    pub packed: ValueId,
    /// Its quantization (scales and shape; the codes are in `packed` only).
    pub matrix: &'a QuantizedMatrix,
    /// The relative RMS error of its quantization (a tied table's, as the values are the same).
    pub rel_rmse: f64,
    /// The weight constant before quantization (`[k, n]`, or `[n, k]` when `transposed`).
    pub source: ValueId,
    /// Whether the product reads `source` transposed (a Gemm with `transB`).
    pub transposed: bool,
}

/// Whether `head`'s weight is the table `e[V, D]` transposed (equal values, element for element).
fn ties(graph: &Graph, head: &Head<'_>, table: ValueId, e: &Tensor) -> Result<bool, PassError> {
    let (v, d) = (e.shape()[0], e.shape()[1]);
    if head.matrix.k != d || head.matrix.n != v {
        return Ok(false);
    }
    if head.source == table {
        // One constant: the head reads it as [n, k] = [V, D] exactly when it transposes it.
        return Ok(head.transposed);
    }
    let Some(w) = graph.load_constant(head.source)? else { return Ok(false) };
    let equal = |a: f32, b: f32| a == b;
    let (w, e) = (f32_cow(&w), f32_cow(e));
    Ok(if head.transposed {
        // Stored [n, k] = [V, D]: the table itself.
        w.shape() == e.shape() && w.iter().zip(e.iter()).all(|(a, b)| equal(*a, *b))
    } else {
        w.shape() == [d, v] && w.t().iter().zip(e.iter()).all(|(a, b)| equal(*a, *b))
    })
}

/// An f32 view of a float tensor, copied only when it is not f32 already.
fn f32_cow(t: &Tensor) -> std::borrow::Cow<'_, fpx_ir::ndarray::ArrayD<f32>> {
    match t {
        Tensor::F32(a) => std::borrow::Cow::Borrowed(a),
        other => std::borrow::Cow::Owned(other.to_f32()),
    }
}

/// The tables `Gather` reads on axis 0 and nothing else reads: `(table, [gather nodes])`.
fn gathered_tables(graph: &Graph, min_elements: usize) -> Vec<(ValueId, Vec<NodeId>)> {
    let mut out = Vec::new();
    for v in graph.value_ids() {
        let value = graph.value(v);
        let Some((dtype, shape)) = graph.constant_type(v) else { continue };
        let len: usize = shape.iter().product();
        if shape.len() != 2 || !dtype.is_float() || len < min_elements.max(1) || graph.outputs.contains(&v) {
            continue;
        }
        let mut nodes: Vec<NodeId> = value.consumers.clone();
        nodes.dedup();
        let all_gathers = !nodes.is_empty()
            && nodes.iter().all(|&n| {
                let node = graph.node(n);
                let axis = node.attr_i("axis", 0);
                node.domain.is_empty()
                    && node.op_type == "Gather"
                    && (axis == 0 || axis == -2)
                    && node.inputs.first() == Some(&Some(v))
                    && node.inputs.get(1).is_some_and(|i| *i != Some(v))
            });
        // A 16-bit table (kept so by the FP16 upcast) qualifies when every row it gives is cast
        // to f32 right away: the lookup then gives f32 itself.
        let rows_cast = |n: &NodeId| {
            let rows = graph.node(*n).outputs[0];
            !graph.outputs.contains(&rows)
                && graph.value(rows).consumers.iter().all(|&c| {
                    let c = graph.node(c);
                    c.domain.is_empty() && c.op_type == "Cast" && c.attr_i("to", 0) == fpx_ir::onnx_code(DType::F32)
                })
        };
        if all_gathers && (dtype == DType::F32 || nodes.iter().all(rows_cast)) {
            out.push((v, nodes));
        }
    }
    out
}

/// A 1-D `u8` constant.
pub(crate) fn bytes_tensor(b: Vec<u8>) -> Tensor {
    let n = b.len();
    Tensor::from(fpx_ir::ndarray::ArrayD::from_shape_vec(fpx_ir::ndarray::IxDyn(&[n]), b).expect("1-D"))
}

/// Rewrites every gathered table of at least `min_elements` into `fpx:QuantGather`s:
/// sharing a head's packed weight where the head's weight is the table transposed, else
/// quantized per row as `format`.
pub(crate) fn quantize_embeddings(
    graph: &mut Graph,
    format: Format,
    min_elements: usize,
    heads: &[Head<'_>],
) -> Result<Vec<EmbeddingQuant>, PassError> {
    let mut out = Vec::new();
    let fpx_opset = *graph.opsets.entry(FPX_DOMAIN.to_string()).or_insert(1);
    for (table, gathers) in gathered_tables(graph, min_elements) {
        let t = graph.load_constant(table)?.expect("a constant");
        // The table `[V, D]` is already `Eᵀ` channel-major: channel = row.
        let (n, k) = (t.shape()[0], t.shape()[1]);
        let name = graph.value(table).name.clone();
        let bytes_in = graph.constant_stored_bytes(table).unwrap_or(0);
        let mut tied = None;
        for h in heads {
            if ties(graph, h, table, &t)? {
                tied = Some(h);
                break;
            }
        }
        let (packed, matrix, tied_with, rel_rmse, bytes_out) = match tied {
            Some(h) => (h.packed, h.matrix.clone(), Some(h.node.clone()), h.rel_rmse, h.matrix.scales.len() * 4),
            None => {
                let (mut m, e) = {
                    let a = f32_cow(&t);
                    let copy: Vec<f32>;
                    let wt = match a.as_slice() {
                        Some(s) => s,
                        None => {
                            copy = a.iter().copied().collect();
                            &copy
                        }
                    };
                    quantize_channels(&name, wt, k, n, &QuantConfig::new(format))?
                };
                drop(t);
                let shape = PackedShape::new(n, k, format.bits());
                let packed = layout::pack(&m.codes, &shape);
                m.codes = Vec::new();
                let bytes_out = packed.len() + m.scales.len() * 4;
                let pv = graph.fresh_value(&format!("{name}__{}", format.name()));
                graph.set_constant(pv, Arc::new(bytes_tensor(packed)));
                (pv, m, None, e, bytes_out)
            }
        };
        let gemm = QuantGemm { format: matrix.format, k, n, group_size: matrix.group_size.unwrap_or(0), activations: Activations::F32 };
        gemm.validate().map_err(|source| PassError::Gemm { node: name.clone(), source })?;
        let factor = fold::storage_factor(matrix.format);
        let scales = graph.fresh_value(&format!("{name}__rows_scales"));
        let sv: Vec<f32> = matrix.scales.iter().map(|s| s * factor).collect();
        let st = fpx_ir::ndarray::ArrayD::from_shape_vec(fpx_ir::ndarray::IxDyn(&[matrix.groups(), n]), sv).expect("shape");
        graph.set_constant(scales, Arc::new(Tensor::from(st)));
        for g in gathers {
            let node = graph.remove_node(g).expect("the Gather exists");
            let inputs = vec![Some(packed), Some(scales), node.inputs[1]];
            let mut q = Node::new(node.name.clone(), quant_gather::OP_TYPE, fpx_opset, inputs, node.outputs.clone());
            q.domain = FPX_DOMAIN.to_string();
            quant_matmul::write(&mut q, &gemm);
            let rows = node.outputs[0];
            let ty = graph.value(rows).ty.clone().map(|t| fpx_ir::TensorType { dtype: DType::F32, ..t });
            graph.set_type(rows, ty);
            graph.add_node(q)?;
        }
        out.push(EmbeddingQuant { table: name, rows: n, width: k, format: matrix.format, tied_with, rel_rmse, bytes_in, bytes_out });
    }
    Ok(out)
}
