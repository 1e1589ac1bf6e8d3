//! The graph of a manifest: values, types, attributes and nodes rebuilt into an `fpx_ir::Graph`,
//! with every index, element type and shape checked. Used by the reader and, to prove that what
//! it writes reads back, by the writer.

use crate::data::{checked_shape, dtype_from_code, tensor_from_bytes};
use crate::manifest as pb;
use crate::{ArtifactError, SectionInfo, SectionKind};
use fpx_ir::stored::{ByteSource, SPILL_MIN_BYTES};
use fpx_ir::{Attribute, DType, Dim, Graph, Node, StoredTensor, Tensor, TensorType, ValueId};
use std::collections::BTreeMap;
use std::sync::Arc;

fn dtype(what: &str, code: i32, who: &dyn Fn() -> String) -> Result<DType, ArtifactError> {
    dtype_from_code(code).ok_or_else(|| ArtifactError::corrupt(what, format!("{} has an unknown element type code {code}", who())))
}

fn type_from_pb(what: &str, t: &pb::TensorType, value: &str) -> Result<TensorType, ArtifactError> {
    let dtype = dtype(what, t.dtype, &|| format!("the type of value '{value}'"))?;
    let shape = match &t.shape {
        None => None,
        Some(s) => Some(
            s.dims
                .iter()
                .enumerate()
                .map(|(j, d)| match &d.kind {
                    Some(pb::dim::Kind::Fixed(n)) => usize::try_from(*n)
                        .map(Dim::Fixed)
                        .map_err(|_| ArtifactError::corrupt(what, format!("dimension {j} of value '{value}' ({n}) is too large"))),
                    Some(pb::dim::Kind::Symbolic(s)) => Ok(Dim::Sym(s.clone())),
                    Some(pb::dim::Kind::Unknown(_)) => Ok(Dim::Unknown),
                    None => Err(ArtifactError::corrupt(
                        what,
                        format!("dimension {j} of value '{value}' is neither fixed, symbolic nor unknown"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(TensorType { dtype, shape })
}

fn attr_from_pb(what: &str, a: &pb::Attribute, node: &str) -> Result<Attribute, ArtifactError> {
    use pb::attribute::Value as V;
    Ok(match &a.value {
        None => return Err(ArtifactError::corrupt(what, format!("attribute '{}' of node '{node}' has no value", a.name))),
        Some(V::F(x)) => Attribute::Float(*x),
        Some(V::I(x)) => Attribute::Int(*x),
        Some(V::S(s)) => Attribute::String(s.clone()),
        Some(V::Floats(v)) => Attribute::Floats(v.values.clone()),
        Some(V::Ints(v)) => Attribute::Ints(v.values.clone()),
        Some(V::Strings(v)) => Attribute::Strings(v.values.clone()),
        Some(V::T(t)) => {
            let who = || format!("tensor attribute '{}' of node '{node}'", a.name);
            let dt = dtype(what, t.dtype, &who)?;
            let tensor = checked_shape(dt, &t.shape, t.data.len() as u64)
                .and_then(|shape| tensor_from_bytes(dt, &shape, &t.data))
                .map_err(|m| ArtifactError::corrupt(what, format!("{}: {m}", who())))?;
            Attribute::Tensor(tensor)
        }
    })
}

/// What [`build_graph`] does with constants' data (the file's bytes).
#[derive(Clone, Copy)]
pub(crate) enum Constants<'a> {
    /// Copy it into tensors.
    Load(&'a [u8]),
    /// Leave large `uint8` constants (packed weights) in the file's bytes as [`StoredTensor`]s
    /// that kernels read in place; copy the rest into tensors.
    Map(&'a Arc<dyn ByteSource>),
    /// Only check it (bools are 0 or 1); stand in empty tensors.
    Check(&'a [u8]),
    /// There is no data yet (the writer checking its own manifest); stand in empty tensors.
    Skip,
}

/// Rebuilds the graph from the manifest, checking every index, element type and shape first.
pub(crate) fn build_graph(
    what: &str,
    m: &pb::Manifest,
    sections: &[SectionInfo],
    constants: Constants<'_>,
) -> Result<Graph, ArtifactError> {
    let corrupt = |msg: String| ArtifactError::corrupt(what, msg);
    let g = m.graph.as_ref().ok_or_else(|| corrupt("the manifest has no graph".into()))?;
    let mut graph = Graph::new(g.name.clone());
    for o in &g.opset_imports {
        if graph.opsets.insert(o.domain.clone(), o.version).is_some() {
            return Err(corrupt(format!("the graph imports domain '{}' twice", o.domain)));
        }
    }

    let n_values = g.values.len();
    if u32::try_from(n_values).is_err() {
        return Err(corrupt(format!("the graph has {n_values} values, more than 2^32")));
    }
    let value = |i: u32, who: &dyn Fn() -> String| -> Result<ValueId, ArtifactError> {
        if (i as usize) < n_values {
            Ok(ValueId(i))
        } else {
            Err(corrupt(format!("{} refers to value #{i}, but the graph has only {n_values} values", who())))
        }
    };

    for (i, v) in g.values.iter().enumerate() {
        let id = graph.value_named(&v.name);
        if id.0 as usize != i {
            return Err(corrupt(format!("values #{} and #{i} are both named '{}'", id.0, v.name)));
        }
        let ty = v.r#type.as_ref().map(|t| type_from_pb(what, t, &v.name)).transpose()?;
        if let Some(c) = &v.constant {
            let who = format!("the constant '{}'", v.name);
            let s = sections.get(c.section as usize).ok_or_else(|| {
                corrupt(format!("{who} refers to section #{}, but there are only {} sections", c.section, sections.len()))
            })?;
            if s.kind != SectionKind::Constant {
                return Err(corrupt(format!(
                    "{who} refers to section #{} '{}', which holds a {}, not a constant",
                    c.section, s.name, s.kind
                )));
            }
            let dt = dtype(what, c.dtype, &|| who.clone())?;
            let shape =
                checked_shape(dt, &c.shape, s.length).map_err(|e| corrupt(format!("{who} (section #{} '{}'): {e}", c.section, s.name)))?;
            let bytes = |data| s.bytes_in(data).ok_or_else(|| corrupt(format!("{who}: section #{} lies outside the file", c.section)));
            if let Constants::Map(source) = constants {
                let data = source.mapped().expect("an artifact's bytes are in memory");
                if dt == DType::U8 && s.length >= SPILL_MIN_BYTES as u64 {
                    bytes(data)?;
                    graph.set_stored(id, StoredTensor::new(source.clone(), s.offset, dt, shape));
                } else {
                    let t = tensor_from_bytes(dt, &shape, bytes(data)?).map_err(|e| corrupt(format!("{who}: {e}")))?;
                    graph.set_constant(id, Arc::new(t));
                }
                graph.set_type(id, ty);
                continue;
            }
            let tensor = match constants {
                Constants::Map(_) => unreachable!("handled above"),
                Constants::Load(data) => tensor_from_bytes(dt, &shape, bytes(data)?).map_err(|e| corrupt(format!("{who}: {e}")))?,
                Constants::Check(data) => {
                    if dt == DType::Bool && bytes(data)?.iter().any(|&b| b > 1) {
                        return Err(corrupt(format!("{who}: a bool element is neither 0 nor 1")));
                    }
                    Tensor::zeros(dt, &[0])
                }
                Constants::Skip => Tensor::zeros(dt, &[0]),
            };
            graph.set_constant(id, Arc::new(tensor));
        }
        graph.set_type(id, ty);
    }

    graph.inputs = g.inputs.iter().map(|&i| value(i, &|| "a graph input".into())).collect::<Result<_, _>>()?;
    graph.outputs = g.outputs.iter().map(|&i| value(i, &|| "a graph output".into())).collect::<Result<_, _>>()?;

    // Which node (by position) produces each value, to check the topological order.
    let mut producer: Vec<Option<usize>> = vec![None; n_values];
    for (k, n) in g.nodes.iter().enumerate() {
        for &o in &n.outputs {
            let o = value(o, &|| format!("an output of node '{}'", n.name))?;
            if let Some(p) = producer[o.0 as usize].replace(k) {
                return Err(corrupt(format!(
                    "value '{}' is produced by both node '{}' and node '{}'",
                    g.values[o.0 as usize].name, g.nodes[p].name, n.name
                )));
            }
        }
    }

    for (k, n) in g.nodes.iter().enumerate() {
        let who = || format!("an input of node '{}'", n.name);
        let mut inputs = Vec::with_capacity(n.inputs.len());
        for slot in &n.inputs {
            let v = slot.value.map(|i| value(i, &who)).transpose()?;
            if let Some(v) = v {
                if let Some(p) = producer[v.0 as usize].filter(|&p| p >= k) {
                    return Err(corrupt(format!(
                        "the nodes are not in topological order: node '{}' reads value '{}' before node '{}' produces it",
                        n.name, g.values[v.0 as usize].name, g.nodes[p].name
                    )));
                }
            }
            inputs.push(v);
        }
        let outputs = n.outputs.iter().map(|&o| ValueId(o)).collect();
        let mut attrs = BTreeMap::new();
        for a in &n.attributes {
            if attrs.insert(a.name.clone(), attr_from_pb(what, a, &n.name)?).is_some() {
                return Err(corrupt(format!("node '{}' has attribute '{}' twice", n.name, a.name)));
            }
        }
        let node =
            Node { name: n.name.clone(), op_type: n.op_type.clone(), domain: n.domain.clone(), opset: n.opset, attrs, inputs, outputs };
        graph.add_node(node).map_err(|source| ArtifactError::Ir { what: what.into(), source })?;
    }
    Ok(graph)
}
