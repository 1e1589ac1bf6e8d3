//! The quantize rewrite: MatMul / Gemm with a constant weight → `fpx:QuantMatMul`.
//!
//! `QuantMatMul(X[..., K], packed: uint8[bytes], scales: float[groups, N], bias?: float[N])`
//! (plus, with LoRC, the FP16 factors `U` `[K, r]` and `V` `[r, N]` as inputs 5 and 6)
//! with attributes `format`, `k`, `n`, `group_size` (0 = per channel) and optionally
//! `activations` (`int8`: X is first quantized per row and block of 32, `fpx_quant::act8`)
//! computes `Y = X · W + bias` where `W[k, n] = v(code[n, k]) · scales[k / group, n]` and `v` is the
//! code's bias-shifted FP16 value (`fpx_quant::fold`): the format's power-of-two factor is
//! already in `scales`, so kernels never multiply per weight.

use crate::weight_fetch::{Buffers, Fetched, WeightSource};
use crate::{PassError, QuantizeOptions};
use fpx_ir::ops::{quant_matmul, OpRegistry, FPX_DOMAIN};
use fpx_ir::pass::Pass;
use fpx_ir::{Attribute, Graph, IrError, Node, NodeId, StoredTensor, Tensor, ValueId};
use fpx_quant::layout::PackedShape;
use fpx_quant::lorc::{LowRank, QuantizedFactors};
use fpx_quant::{fold, quantize_values_packed, Format, QuantConfig, QuantGemm, QuantizedMatrix, WeightLayout, WeightValues};
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
    /// The rank of its LoRC correction (0: none); `rel_rmse` is then the error of the
    /// corrected weight `Q(W) + U · V`.
    pub lorc_rank: usize,
    /// Bytes of the LoRC factors (FP16, or codes and scales), counted in the summary's
    /// `weight_bytes_out`.
    pub lorc_bytes: usize,
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

/// The `(k, n)` of the product of weight `v`, used transposed or not.
fn weight_kn(graph: &Graph, v: ValueId, transposed: bool) -> (usize, usize) {
    let (_, shape) = graph.constant_type(v).expect("site weights are constants");
    if transposed {
        (shape[1], shape[0])
    } else {
        (shape[0], shape[1])
    }
}

/// Which key identifies a quantized weight: the constant and whether it is used transposed.
type WeightKey = (ValueId, bool);

/// The quantization kept for one weight, with the error of every format tried.
struct Choice {
    matrix: QuantizedMatrix,
    tried: Vec<(Format, f64)>,
    rel_rmse: f64,
    /// The LoRC factors as stored (FP16 values, or quantized codes), when asked for.
    lorc: Option<StoredFactors>,
}

/// One weight's LoRC factors: the values its products multiply (FP16-rounded or dequantized)
/// and, for a quantized storage, the codes the graph keeps.
struct StoredFactors {
    values: LowRank,
    codes: Option<QuantizedFactors>,
}

impl StoredFactors {
    /// Bytes the graph stores for them.
    fn bytes(&self) -> usize {
        self.codes.as_ref().map_or_else(|| self.values.f16_bytes(), QuantizedFactors::bytes)
    }
}

/// One weight quantized in a batch: its choice, its packed codes and its size as stored.
type QuantizedWeight = (WeightKey, Choice, Tensor, usize);

/// A quantized weight after the writer: its packed codes spilled (or kept), their size in
/// bytes, and the weight's size as stored.
type SpilledWeight = (WeightKey, Choice, PackedData, usize, usize);

/// A weight's packed codes: written to the compile's spill file already, or kept in memory
/// (no spill file attached, the codes small, or the spill write failed).
enum PackedData {
    Stored(StoredTensor),
    Memory(Tensor),
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
        let Some((dtype, shape)) = graph.constant_type(w) else { continue };
        if shape.len() != 2 || !dtype.is_float() || shape.contains(&0) {
            continue;
        }
        let transposed = n.op_type == "Gemm" && n.attr_i("transB", 0) != 0;
        out.push(WeightSite { node: id, weight: w, transposed });
    }
    Ok(out)
}

/// Quantizes one weight (its values as stored, laid out as `layout`) with every candidate format
/// and keeps the one with the least error.
/// Codes are packed into buffers from `buffers` as they are chosen, and a losing candidate's
/// go back there. Returns the choice (its matrix's `codes` empty) and its packed codes.
fn quantize_best(
    name: &str,
    values: WeightValues<'_>,
    layout: WeightLayout,
    k: usize,
    n: usize,
    opts: &QuantizeOptions,
    buffers: &Buffers,
) -> Result<(Choice, Vec<u8>), PassError> {
    let mut best: Option<(QuantizedMatrix, Vec<u8>, f64)> = None;
    let mut tried = Vec::new();
    for format in opts.candidates() {
        let cfg = QuantConfig { format, group_size: opts.group_size, scale_search: opts.scale_search, pow2_scales: opts.pow2_scales };
        let packed_bytes = PackedShape::new(n, k, format.bits()).total_bytes();
        let (q, packed, e) = quantize_values_packed(name, values, layout, k, n, &cfg, buffers.bytes(packed_bytes))?;
        tried.push((format, e));
        if best.as_ref().is_none_or(|(_, _, b)| e < *b) {
            if let Some((_, loser, _)) = best.replace((q, packed, e)) {
                buffers.give_bytes(loser);
            }
        } else {
            buffers.give_bytes(packed);
        }
    }
    let (matrix, packed, mut rel_rmse) = best.ok_or_else(|| PassError::Option("scheme 'none' quantizes nothing".into()))?;
    let lorc = match opts.lorc_rank {
        None => None,
        Some(rank) => {
            let error = fpx_quant::lorc::weight_error(&values, layout, &matrix, &packed);
            let (values, codes) = opts.lorc_factors.store(&LowRank::of(&error, k, n, rank)?)?;
            // The corrected weight's error, relative to ‖W‖ = ‖E‖ / rel_rmse.
            let left: f64 = error.iter().zip(values.reconstruct()).map(|(e, c)| (*e as f64 - c as f64).powi(2)).sum();
            let before: f64 = error.iter().map(|e| (*e as f64).powi(2)).sum();
            if before > 0.0 {
                rel_rmse *= (left / before).sqrt();
            }
            Some(StoredFactors { values, codes })
        }
    };
    Ok((Choice { matrix, tried, rel_rmse, lorc }, packed))
}

/// Bytes a weight of `elements` is budgeted while it is quantized: its bytes as stored (up to
/// 4 a value), codes and packed codes (about 2), with as much again for what the buffer pools
/// keep from weights of other sizes (the quantizer's f32 blocks are per worker and small).
fn working_set(elements: usize) -> usize {
    elements * 10
}

/// The batch read ahead, the one being quantized and the one being spilled share this much
/// memory (a weight larger than a third of it runs alone), so a compile's memory follows its
/// largest weights, not the model. Each weight's channels run in parallel too.
const WORKING_SET_BUDGET: usize = 256 << 20;

/// Splits `keys` into consecutive batches whose working sets add up to at most a third of the
/// budget (three batches are in memory at once: one read ahead, one quantized, the one before
/// being written to the spill file).
fn batches(keys: &[WeightKey], elements: impl Fn(&WeightKey) -> usize) -> Vec<&[WeightKey]> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, key) in keys.iter().enumerate() {
        let need = working_set(elements(key));
        if i > start && used + need > WORKING_SET_BUDGET / 3 {
            out.push(&keys[start..i]);
            (start, used) = (i, 0);
        }
        used += need;
    }
    if start < keys.len() {
        out.push(&keys[start..]);
    }
    out
}

fn f32_tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from(fpx_ir::ndarray::ArrayD::from_shape_vec(fpx_ir::ndarray::IxDyn(shape), v).expect("shape matches"))
}

/// An FP16 tensor of `shape` from `values · factor` (LoRC factors, FP16 values already).
fn f16_tensor(shape: &[usize], values: &[f32], factor: f32) -> Tensor {
    let v: Vec<fpx_ir::half::f16> = values.iter().map(|x| fpx_ir::half::f16::from_f32(x * factor)).collect();
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
    quantize_weights_with_progress(graph, opts, &mut |_, _| {})
}

/// [`quantize_weights`], calling `progress(done, total)` with the bytes of weights (as the
/// model stores them) quantized so far, after each batch: what a progress bar with a rate shows.
pub fn quantize_weights_with_progress(
    graph: &mut Graph,
    opts: &QuantizeOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<QuantSummary, PassError> {
    opts.validate()?;
    let mut summary = QuantSummary::default();
    // Scheme `none` keeps every weight as it is, embedding tables too (the FP32 reference).
    if opts.scheme.candidates().is_empty() {
        return Ok(summary);
    }
    let sites = weight_sites(graph)?;
    // Every rewritten product must be one fpx can run, whichever candidate format a weight
    // gets: check them all before the graph changes, so an error leaves the graph as it was.
    for site in &sites {
        let (k, n) = weight_kn(graph, site.weight, site.transposed);
        for format in opts.candidates() {
            let gemm = QuantGemm { format, k, n, group_size: opts.group_size.unwrap_or(0), activations: opts.activations };
            gemm.validate().map_err(|source| PassError::Gemm { node: graph.node(site.node).name.clone(), source })?;
        }
    }
    // Quantize each distinct weight once: in batches that fit the working-set budget, each
    // batch's weights (and each weight's channels) in parallel, the next batch read meanwhile,
    // each batch's packed weights written to the spill file (when the graph has one) on a writer
    // thread while the next batch is quantized.
    let mut keys: Vec<WeightKey> = sites.iter().map(|s| (s.weight, s.transposed)).collect();
    keys.sort();
    keys.dedup();
    let elements = |&(v, _): &WeightKey| graph.constant_type(v).map_or(0, |(_, s)| s.iter().product());
    let plan = batches(&keys, elements);
    let sizes: HashMap<WeightKey, usize> = keys.iter().map(|k| (*k, graph.constant_stored_bytes(k.0).unwrap_or(0))).collect();
    let total = sizes.values().sum::<usize>() as u64;
    let mut done_bytes = 0u64;
    progress(0, total);
    let mut done: HashMap<WeightKey, Quantized> = HashMap::new();
    let mut created = Vec::new();
    // Each batch's data is fetched on a reader thread while the batch before it is quantized.
    let sources: Vec<Vec<WeightSource>> = plan
        .iter()
        .map(|batch| batch.iter().map(|&(v, _)| WeightSource::of(graph, v).expect("site weights are constants")).collect())
        .collect();
    let buffers = Buffers::default();
    let fetch_batch = |i: usize| -> Result<Vec<Fetched>, IrError> { sources[i].iter().map(|s| s.fetch(&buffers)).collect() };
    // Each batch's packed weights are written to the spill file on a writer thread while the
    // next batch is quantized, then added to the graph.
    let spiller = graph.spiller();
    let spill_batch = |quantized: Vec<QuantizedWeight>| -> Vec<SpilledWeight> {
        quantized
            .into_iter()
            .map(|(key, choice, packed, bytes_in)| {
                let bytes = packed.len();
                let packed = match spiller.spill(&packed) {
                    Some(Ok(stored)) => {
                        if let Tensor::U8(a) = packed {
                            // Written to the spill file: its buffer packs a later weight.
                            buffers.give_bytes(a.into_raw_vec_and_offset().0);
                        }
                        PackedData::Stored(stored)
                    }
                    _ => PackedData::Memory(packed),
                };
                (key, choice, packed, bytes, bytes_in)
            })
            .collect()
    };
    let mut add_to_graph = |graph: &mut Graph, spilled: Vec<SpilledWeight>| {
        for (key, choice, packed, bytes, bytes_in) in spilled {
            let name = format!("{}__{}", graph.value(key.0).name, choice.matrix.format.name());
            let pv = graph.fresh_value(&name);
            match packed {
                PackedData::Stored(stored) => graph.set_stored(pv, stored),
                PackedData::Memory(t) => graph.set_constant(pv, Arc::new(t)),
            }
            created.push(pv);
            summary.weight_bytes_in += bytes_in;
            summary.weight_bytes_out += bytes + choice.matrix.scales.len() * 4 + choice.lorc.as_ref().map_or(0, StoredFactors::bytes);
            done.insert(key, Quantized { choice, packed: pv });
        }
    };
    let result = std::thread::scope(|scope| {
        let (fetch_batch, spill_batch) = (&fetch_batch, &spill_batch);
        let mut ahead = (!plan.is_empty()).then(|| scope.spawn(move || fetch_batch(0)));
        let mut writing: Option<std::thread::ScopedJoinHandle<Vec<SpilledWeight>>> = None;
        for (i, batch) in plan.iter().enumerate() {
            let fetched = ahead.take().expect("a batch is being read").join().expect("the weight reader does not panic")?;
            if i + 1 < plan.len() {
                ahead = Some(scope.spawn(move || fetch_batch(i + 1)));
            }
            let quantized = batch
                .par_iter()
                .zip(fetched)
                .map(|(&(v, tr), fetched)| {
                    let (k, n) = weight_kn(graph, v, tr);
                    let choice =
                        fetched.with_values(tr, |values, layout| quantize_best(&graph.value(v).name, values, layout, k, n, opts, &buffers));
                    fetched.recycle(&buffers);
                    let (choice, packed) = choice?;
                    Ok(((v, tr), choice, Tensor::from(fpx_ir::ndarray::Array1::from_vec(packed).into_dyn()), sizes[&(v, tr)]))
                })
                .collect::<Result<Vec<QuantizedWeight>, PassError>>()?;
            if let Some(w) = writing.take() {
                add_to_graph(graph, w.join().expect("the weight writer does not panic"));
            }
            writing = Some(scope.spawn(move || spill_batch(quantized)));
            done_bytes += batch.iter().map(|k| sizes[k] as u64).sum::<u64>();
            progress(done_bytes, total);
        }
        if let Some(w) = writing.take() {
            add_to_graph(graph, w.join().expect("the weight writer does not panic"));
        }
        Ok::<(), PassError>(())
    });
    // The reused buffers go before the embedding tables are read.
    drop(buffers);
    if let Err(e) = result {
        for v in created {
            graph.clear_constant(v);
        }
        return Err(e);
    }
    let mut gemms: HashMap<NodeId, QuantGemm> = HashMap::new();
    for site in &sites {
        let m = &done[&(site.weight, site.transposed)].choice.matrix;
        let gemm = QuantGemm { format: m.format, k: m.k, n: m.n, group_size: m.group_size.unwrap_or(0), activations: opts.activations };
        gemms.insert(site.node, gemm);
    }
    let fpx_opset = *graph.opsets.entry(FPX_DOMAIN.to_string()).or_insert(1);
    let mut scales_cache: BTreeMap<(WeightKey, u32), ValueId> = BTreeMap::new();
    let mut lorc_cache: BTreeMap<(WeightKey, u32), (ValueId, ValueId, Option<ValueId>)> = BTreeMap::new();
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
        if let Some(stored) = &q.choice.lorc {
            let key = ((site.weight, site.transposed), alpha.to_bits());
            let (u, v, s) = match lorc_cache.get(&key) {
                Some(&uvs) => uvs,
                None => {
                    let base = graph.value(q.packed).name.clone();
                    let (u, v) = (graph.fresh_value(&format!("{base}__lorc_u")), graph.fresh_value(&format!("{base}__lorc_v")));
                    // Gemm's alpha scales the product, the correction too (through V).
                    let s = match &stored.codes {
                        None => {
                            let lr = &stored.values;
                            graph.set_constant(u, Arc::new(f16_tensor(&[lr.k, lr.rank], &lr.u, 1.0)));
                            graph.set_constant(v, Arc::new(f16_tensor(&[lr.rank, lr.n], &lr.v, alpha)));
                            None
                        }
                        Some(c) => {
                            graph.set_constant(u, Arc::new(crate::embedding::bytes_tensor(c.u_codes.clone())));
                            graph.set_constant(v, Arc::new(crate::embedding::bytes_tensor(c.v_codes.clone())));
                            let mut scales = c.scales.clone();
                            scales[c.rank..].iter_mut().for_each(|x| *x *= alpha);
                            let s = graph.fresh_value(&format!("{base}__lorc_scales"));
                            graph.set_constant(s, Arc::new(f32_tensor(&[2, c.rank], scales)));
                            Some(s)
                        }
                    };
                    lorc_cache.insert(key, (u, v, s));
                    (u, v, s)
                }
            };
            let last = if s.is_some() { quant_matmul::LORC_SCALES_INPUT } else { quant_matmul::LORC_V_INPUT };
            qm.inputs.resize(last + 1, None);
            qm.inputs[quant_matmul::LORC_U_INPUT] = Some(u);
            qm.inputs[quant_matmul::LORC_V_INPUT] = Some(v);
            if let Some(s) = s {
                qm.inputs[quant_matmul::LORC_SCALES_INPUT] = Some(s);
            }
            quant_matmul::set_lorc_storage(&mut qm, opts.lorc_factors);
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
            lorc_rank: q.choice.lorc.as_ref().map_or(0, |l| l.values.rank),
            lorc_bytes: q.choice.lorc.as_ref().map_or(0, StoredFactors::bytes),
        });
    }
    if let Some(format) = opts.embeddings {
        let heads: Vec<crate::embedding::Head<'_>> = done
            .iter()
            .map(|(&(v, tr), q)| crate::embedding::Head {
                node: summary.layers.iter().find(|l| l.weight == graph.value(v).name).map(|l| l.node.clone()).unwrap_or_default(),
                packed: q.packed,
                matrix: &q.choice.matrix,
                rel_rmse: q.choice.rel_rmse,
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
