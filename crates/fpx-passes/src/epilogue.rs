//! Epilogue fusion: what exporters write after a quantized product — a bias `Add`, an activation,
//! a gated MLP's `act(gate) × up`, a residual `Add` — moved into the `fpx:QuantMatMul` itself
//! ([`quant_matmul::Epilogue`]), so the runtime applies it to each block of the product while the
//! block is in cache instead of in separate passes over memory.
//!
//! Four rewrites, in this order, each only where the intermediate values feed nothing else:
//! 1. **bias**: `Add(QMM(x), c)` with a constant `c` of shape `[N]` (or `[1, …, 1, N]`) becomes
//!    the product's bias input (PyTorch's `Linear` on 3-D inputs exports as `MatMul` + `Add`);
//! 2. **activation**: `Relu(QMM)`, `Gelu(QMM)` (exact form) and SiLU `Mul(QMM, Sigmoid(QMM))`;
//! 3. **gated MLP**: `Mul(act(QMM_gate(x)), QMM_up(x))` with both products alike (format, K, N,
//!    groups, activations; neither with LoRC factors) becomes one product of twice the columns whose weight interleaves
//!    gate and up in blocks of [`GATE_BLOCK`] columns: x is read (and quantized) once, and the
//!    gate, up and activation intermediates never reach memory;
//! 4. **residual**: `Add(QMM, r)` (f32) becomes the product's residual input, added with the
//!    `Add`'s broadcasting (in place, per block, when `r` has Y's shape, as it has in a
//!    transformer's residual stream).
//!
//! The fused node keeps the replaced chain's output value, so later nodes and graph outputs
//! see no difference.

use crate::PassError;
use fpx_ir::ops::quant_matmul::{self, Activation, Epilogue, GATE_BLOCK, RESIDUAL_INPUT};
use fpx_ir::ops::OpRegistry;
use fpx_ir::pass::Pass;
use fpx_ir::{DType, Graph, IrError, Node, NodeId, Tensor, ValueId};
use fpx_quant::{layout, QuantGemm};
use std::sync::Arc;

/// The bias input slot of `fpx:QuantMatMul`.
const BIAS_INPUT: usize = 3;

/// Fuses bias adds, activations, gated MLPs and residual adds into the quantized products that
/// precede them (see the module docs). Run after the quantize rewrite.
pub struct FuseEpilogues;

impl Pass for FuseEpilogues {
    fn name(&self) -> &str {
        "fuse-epilogues"
    }

    fn run(&self, graph: &mut Graph, registry: &OpRegistry) -> Result<bool, IrError> {
        fuse_epilogues(graph, registry).map(|n| n > 0).map_err(|e| IrError::Invalid(e.to_string()))
    }
}

/// Runs the four rewrites of [`FuseEpilogues`]; returns how many chains were fused.
pub fn fuse_epilogues(graph: &mut Graph, registry: &OpRegistry) -> Result<usize, PassError> {
    // Shapes decide which residual adds are exact (no broadcasting).
    fpx_ir::verify::infer_types(graph, registry)?;
    let mut fused = 0;
    fused += rewrite_all(graph, match_bias, apply_bias)?;
    fused += rewrite_all(graph, match_activation, apply_activation)?;
    fused += rewrite_all(graph, match_gated, apply_gated)?;
    fused += rewrite_all(graph, match_residual, apply_residual)?;
    if fused > 0 {
        graph.remove_unused_constants();
    }
    Ok(fused)
}

/// Finds every match of `find` (over the graph as it is), then applies each.
fn rewrite_all<M>(
    graph: &mut Graph,
    find: fn(&Graph, NodeId) -> Option<M>,
    apply: fn(&mut Graph, M) -> Result<(), PassError>,
) -> Result<usize, PassError> {
    let matches: Vec<M> = graph.node_ids().into_iter().filter_map(|id| find(graph, id)).collect();
    let n = matches.len();
    for m in matches {
        apply(graph, m)?;
    }
    Ok(n)
}

/// A quantized product whose only reader is the node being matched.
struct Product {
    node: NodeId,
    gemm: QuantGemm,
    epilogue: Epilogue,
}

/// The `fpx:QuantMatMul` producing `v`, if `v` is read exactly `reads` times and is not a graph
/// output.
fn product_of(graph: &Graph, v: ValueId, reads: usize) -> Option<Product> {
    let val = graph.value(v);
    let (node, _) = val.producer?;
    let n = graph.node(node);
    if !quant_matmul::is_quant_matmul(n) || val.consumers.len() != reads || graph.outputs.contains(&v) {
        return None;
    }
    let gemm = quant_matmul::read(n).ok()?;
    let epilogue = quant_matmul::epilogue(n, &gemm).ok()?;
    Some(Product { node, gemm, epilogue })
}

/// The two inputs of a standard-domain `op` node.
fn binary(graph: &Graph, id: NodeId, op: &str) -> Option<(ValueId, ValueId)> {
    let n = graph.node(id);
    if n.op_type != op || !n.domain.is_empty() || n.outputs.len() != 1 {
        return None;
    }
    match n.inputs.as_slice() {
        [Some(a), Some(b)] => Some((*a, *b)),
        _ => None,
    }
}

/// Replaces `product` and the chain `consumed` after it by `product` rewritten with `edit`,
/// writing the chain's output `out`.
fn replace(graph: &mut Graph, product: NodeId, consumed: &[NodeId], out: ValueId, edit: impl FnOnce(&mut Node)) -> Result<(), PassError> {
    let mut node = graph.node(product).clone();
    for &id in consumed {
        graph.remove_node(id);
    }
    graph.remove_node(product);
    node.outputs = vec![out];
    edit(&mut node);
    graph.add_node(node)?;
    Ok(())
}

/// Sets input `slot` of `node` to `v`, growing the input list if needed (and never shrinking
/// it: later slots, such as the LoRC factors, stay).
fn set_input(node: &mut Node, slot: usize, v: ValueId) {
    if node.inputs.len() <= slot {
        node.inputs.resize(slot + 1, None);
    }
    node.inputs[slot] = Some(v);
}

// ---- 1. bias -----------------------------------------------------------------------------

/// `Add(QMM(x), c)`: the product, the Add, and the bias vector.
type BiasMatch = (NodeId, NodeId, Vec<f32>);

fn match_bias(graph: &Graph, add: NodeId) -> Option<BiasMatch> {
    let (a, b) = binary(graph, add, "Add")?;
    for (y, c) in [(a, b), (b, a)] {
        let Some(p) = product_of(graph, y, 1) else { continue };
        let has_bias = graph.node(p.node).inputs.get(BIAS_INPUT).is_some_and(|b| b.is_some());
        if !p.epilogue.is_identity() || has_bias {
            continue;
        }
        let Some(t) = graph.constant(c) else { continue };
        let rank = graph.value(y).ty.as_ref().and_then(|t| t.shape.as_ref()).map(|s| s.len())?;
        let s = t.shape();
        // Only a per-column vector that does not broadcast Y to a larger shape.
        let per_column =
            t.dtype() == DType::F32 && s.len() <= rank && s.last() == Some(&p.gemm.n) && s[..s.len() - 1].iter().all(|&d| d == 1);
        if per_column {
            return Some((p.node, add, t.to_f32().iter().copied().collect()));
        }
    }
    None
}

fn apply_bias(graph: &mut Graph, (product, add, bias): BiasMatch) -> Result<(), PassError> {
    let out = graph.node(add).outputs[0];
    let name = format!("{}__bias", graph.node(product).name);
    let v = graph.fresh_value(&name);
    let n = bias.len();
    graph.set_constant(v, Arc::new(f32_vector(&[n], bias)));
    replace(graph, product, &[add], out, |node| {
        set_input(node, BIAS_INPUT, v);
    })
}

fn f32_vector(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from(fpx_ir::ndarray::ArrayD::from_shape_vec(fpx_ir::ndarray::IxDyn(shape), v).expect("shape matches"))
}

// ---- 2. activation -----------------------------------------------------------------------

/// The product, the nodes of the activation, and which activation.
type ActivationMatch = (NodeId, Vec<NodeId>, Activation);

fn match_activation(graph: &Graph, id: NodeId) -> Option<ActivationMatch> {
    let n = graph.node(id);
    if !n.domain.is_empty() || n.outputs.len() != 1 {
        return None;
    }
    let plain = |p: &Product| p.epilogue.is_identity();
    match n.op_type.as_str() {
        "Relu" | "Gelu" => {
            if n.op_type == "Gelu" && n.attr_s("approximate", "none") != "none" {
                return None;
            }
            let x = n.inputs.first().copied().flatten()?;
            let p = product_of(graph, x, 1).filter(plain)?;
            let act = if n.op_type == "Relu" { Activation::Relu } else { Activation::Gelu };
            Some((p.node, vec![id], act))
        }
        "Mul" => {
            // SiLU: Mul(y, Sigmoid(y)) in either order; y read by exactly these two nodes.
            let (a, b) = binary(graph, id, "Mul")?;
            for (y, s) in [(a, b), (b, a)] {
                let Some((sig, _)) = graph.value(s).producer else { continue };
                let sn = graph.node(sig);
                let is_sigmoid = sn.op_type == "Sigmoid" && sn.domain.is_empty() && sn.inputs.first() == Some(&Some(y));
                if !is_sigmoid || graph.value(s).consumers.len() != 1 || graph.outputs.contains(&s) {
                    continue;
                }
                let Some(p) = product_of(graph, y, 2).filter(plain) else { continue };
                return Some((p.node, vec![sig, id], Activation::Silu));
            }
            None
        }
        _ => None,
    }
}

fn apply_activation(graph: &mut Graph, (product, chain, act): ActivationMatch) -> Result<(), PassError> {
    let out = graph.node(*chain.last().expect("a chain")).outputs[0];
    replace(graph, product, &chain, out, |node| {
        quant_matmul::write_epilogue(node, &Epilogue { activation: Some(act), ..Epilogue::default() })
    })
}

// ---- 3. gated MLP ------------------------------------------------------------------------

/// `Mul(act(QMM_gate(x)), QMM_up(x))`: the gate product, the up product, the Mul.
type GatedMatch = (NodeId, NodeId, NodeId);

fn match_gated(graph: &Graph, mul: NodeId) -> Option<GatedMatch> {
    let (a, b) = binary(graph, mul, "Mul")?;
    if a == b {
        return None;
    }
    for (g, u) in [(a, b), (b, a)] {
        let (Some(gate), Some(up)) = (product_of(graph, g, 1), product_of(graph, u, 1)) else { continue };
        let gate_ok = gate.epilogue.activation.is_some() && !gate.epilogue.gated && !gate.epilogue.residual;
        let same_x = graph.node(gate.node).inputs.first() == graph.node(up.node).inputs.first();
        let weights = |id: NodeId| {
            let n = graph.node(id);
            let c = |slot: usize| n.inputs.get(slot).copied().flatten().and_then(|v| graph.constant_type(v));
            let bias_constant = n.inputs.get(BIAS_INPUT).copied().flatten().is_none_or(|v| graph.constant(v).is_some());
            // Products with LoRC factors stay apart (their corrections are per product).
            let no_lorc = n.inputs.get(quant_matmul::LORC_U_INPUT).copied().flatten().is_none();
            bias_constant && no_lorc && matches!((c(1).map(|t| t.0), c(2).map(|t| t.0)), (Some(DType::U8), Some(DType::F32)))
        };
        let alike = gate.gemm == up.gemm && gate.gemm.n.is_multiple_of(GATE_BLOCK) && weights(gate.node) && weights(up.node);
        if gate_ok && up.epilogue.is_identity() && same_x && alike {
            return Some((gate.node, up.node, mul));
        }
    }
    None
}

// The gated weight's blocks of columns are whole rows of tiles, copied as packed.
const _: () = assert!(GATE_BLOCK == layout::TILE_N);

fn apply_gated(graph: &mut Graph, (gate, up, mul): GatedMatch) -> Result<(), PassError> {
    let (gn, un) = (graph.node(gate).clone(), graph.node(up).clone());
    let gemm = quant_matmul::read(&gn)?;
    let activation = quant_matmul::epilogue(&gn, &gemm)?.activation;
    let input = |node: &Node, slot: usize| -> Result<Option<Arc<Tensor>>, IrError> {
        Ok(match node.inputs.get(slot).copied().flatten() {
            Some(v) => graph.load_constant(v)?,
            None => None,
        })
    };
    let (Some(gp), Some(gs), Some(up_p), Some(us)) = (input(&gn, 1)?, input(&gn, 2)?, input(&un, 1)?, input(&un, 2)?) else {
        return Err(IrError::Invalid(format!("'{}' and '{}' have weights that are not constants", gn.name, un.name)).into());
    };
    let n = gemm.n;
    let shape = gemm.packed_shape();
    let bytes = |t: &Tensor| match t {
        Tensor::U8(a) if a.len() == shape.total_bytes() => a.as_slice().map(|s| s.to_vec()),
        _ => None,
    };
    let (Some(gc), Some(uc)) = (bytes(&gp), bytes(&up_p)) else {
        return Err(IrError::Invalid(format!(
            "'{}' and '{}' have packed weights that are not {} uint8 bytes",
            gn.name,
            un.name,
            shape.total_bytes()
        ))
        .into());
    };
    drop((gp, up_p));
    // Rows of the code matrix are output columns: interleave them in blocks of GATE_BLOCK
    // (= TILE_N: whole rows of tiles, copied as they are packed).
    let packed = layout::interleave_tile_rows(&gc, &uc, &shape);
    drop((gc, uc));
    let wide = QuantGemm { n: 2 * n, ..gemm };
    let interleave = |g: &[f32], u: &[f32], rows: usize| -> Vec<f32> {
        let mut out = Vec::with_capacity(2 * g.len());
        for r in 0..rows {
            for block in 0..n / GATE_BLOCK {
                let cols = r * n + block * GATE_BLOCK..r * n + (block + 1) * GATE_BLOCK;
                out.extend_from_slice(&g[cols.clone()]);
                out.extend_from_slice(&u[cols]);
            }
        }
        out
    };
    let groups = gemm.groups();
    let floats = |t: &Tensor| t.to_f32().iter().copied().collect::<Vec<f32>>();
    let scales = interleave(&floats(&gs), &floats(&us), groups);
    let bias_of = |node: &Node| -> Result<Vec<f32>, IrError> { Ok(input(node, BIAS_INPUT)?.map_or_else(|| vec![0f32; n], |t| floats(&t))) };
    let has_bias = gn.inputs.get(BIAS_INPUT).is_some_and(|b| b.is_some()) || un.inputs.get(BIAS_INPUT).is_some_and(|b| b.is_some());
    let bias = if has_bias { Some(interleave(&bias_of(&gn)?, &bias_of(&un)?, 1)) } else { None };

    let name = format!("{}__gated", gn.name);
    let pv = graph.fresh_value(&format!("{name}__packed"));
    let bytes = packed.len();
    graph.set_constant(
        pv,
        Arc::new(Tensor::from(fpx_ir::ndarray::ArrayD::from_shape_vec(fpx_ir::ndarray::IxDyn(&[bytes]), packed).expect("1-D"))),
    );
    let sv = graph.fresh_value(&format!("{name}__scales"));
    graph.set_constant(sv, Arc::new(f32_vector(&[groups, 2 * n], scales)));
    let bv = bias.map(|b| {
        let v = graph.fresh_value(&format!("{name}__bias"));
        graph.set_constant(v, Arc::new(f32_vector(&[2 * n], b)));
        v
    });
    let out = graph.node(mul).outputs[0];
    graph.remove_node(mul);
    graph.remove_node(up);
    replace(graph, gate, &[], out, |node| {
        node.name = name;
        node.inputs = vec![gn.inputs[0], Some(pv), Some(sv)];
        if let Some(b) = bv {
            node.inputs.push(Some(b));
        }
        quant_matmul::write(node, &wide);
        quant_matmul::write_epilogue(node, &Epilogue { activation, gated: true, residual: false });
    })
}

// ---- 4. residual -------------------------------------------------------------------------

/// `Add(QMM, r)`: the product, the Add, and `r`.
type ResidualMatch = (NodeId, NodeId, ValueId);

fn match_residual(graph: &Graph, add: NodeId) -> Option<ResidualMatch> {
    let (a, b) = binary(graph, add, "Add")?;
    if a == b {
        return None;
    }
    let out_ty = graph.value(graph.node(add).outputs[0]).ty.clone()?;
    for (y, r) in [(a, b), (b, a)] {
        let Some(p) = product_of(graph, y, 1) else { continue };
        if p.epilogue.residual || graph.constant(r).is_some() {
            continue;
        }
        // Any f32 residual: one of Y's shape is added in place, another with broadcasting.
        let (Some(yt), Some(rt)) = (&graph.value(y).ty, &graph.value(r).ty) else { continue };
        if yt.dtype == DType::F32 && rt.dtype == DType::F32 && out_ty.dtype == DType::F32 {
            return Some((p.node, add, r));
        }
    }
    None
}

fn apply_residual(graph: &mut Graph, (product, add, r): ResidualMatch) -> Result<(), PassError> {
    let out = graph.node(add).outputs[0];
    replace(graph, product, &[add], out, |node| {
        set_input(node, RESIDUAL_INPUT, r);
    })
}
