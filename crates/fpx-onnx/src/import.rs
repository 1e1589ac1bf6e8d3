//! `ModelProto` → [`Graph`]: opsets, initializers, typed inputs and outputs, nodes with
//! attributes (checked against the op registry), `Constant` nodes folded into constants.

use crate::external::ExternalFiles;
use crate::tensor::{convert, dtype_name, initializer, Initializer};
use crate::ImportError;
use fpx_ir::ops::{OpRegistry, MAX_ONNX_OPSET};
use fpx_ir::{onnx_dtype, Attribute, Dim, Graph, IrError, Node, Tensor, TensorType, ValueId};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_shape_proto::dimension;
use onnx_protobuf::{type_proto, AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, ValueInfoProto};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// Parses and imports a serialized model; `what` names it in parse errors.
pub(crate) fn import(bytes: &[u8], base_dir: Option<&Path>, what: &str) -> Result<Graph, ImportError> {
    let parse_err = |message: String| ImportError::Parse { what: what.to_string(), message };
    let model = ModelProto::parse_from_bytes(bytes).map_err(|e| parse_err(format!("not a valid ONNX model: {e}")))?;
    if model.ir_version <= 0 {
        return Err(parse_err(format!("not a valid ONNX model: ir_version is {}", model.ir_version)));
    }
    let Some(gp) = model.graph.as_ref() else {
        return Err(parse_err("not a valid ONNX model: it has no graph".into()));
    };
    let mut graph = Graph::new(gp.name.clone());
    graph.opsets = opsets(&model.opset_import)?;
    let registry = OpRegistry::standard();
    build(&mut graph, gp, &registry, base_dir)?;
    fpx_ir::verify::infer_types(&mut graph, &registry)?;
    fpx_ir::verify::verify(&graph, &registry)?;
    Ok(graph)
}

/// The opset imports by domain (`ai.onnx` written as `""`), with the default domain's version checked.
fn opsets(imports: &[OperatorSetIdProto]) -> Result<BTreeMap<String, i64>, ImportError> {
    let mut out = BTreeMap::new();
    for o in imports {
        let domain = fpx_ir::canonical_domain(&o.domain).to_string();
        if let Some(prev) = out.insert(domain.clone(), o.version) {
            if prev != o.version {
                return Err(ImportError::Unsupported(format!(
                    "opset_import lists domain '{domain}' twice, with versions {prev} and {}",
                    o.version
                )));
            }
        }
    }
    if let Some(&v) = out.get("") {
        if !(1..=MAX_ONNX_OPSET).contains(&v) {
            return Err(ImportError::Unsupported(format!("the model imports ONNX opset {v}; fpx supports opsets 1 to {MAX_ONNX_OPSET}")));
        }
    }
    Ok(out)
}

/// Adds initializers, inputs, declared types, nodes and outputs of `gp` to `g`, then checks
/// that the graph is acyclic and every used value is defined.
fn build(g: &mut Graph, gp: &GraphProto, registry: &OpRegistry, base_dir: Option<&Path>) -> Result<(), ImportError> {
    if let Some(s) = gp.sparse_initializer.first() {
        let name = s.values.as_ref().map(|v| v.name.as_str()).unwrap_or("");
        return Err(ImportError::Unsupported(format!("sparse initializer '{name}': sparse tensors are not supported")));
    }
    let mut external = ExternalFiles::default();
    for t in &gp.initializer {
        if t.name.is_empty() {
            return Err(ImportError::Tensor { name: String::new(), message: "an initializer has no name".into() });
        }
        match initializer(t, base_dir, &mut external)? {
            Initializer::Loaded(data) => g.add_constant(&t.name, data)?,
            Initializer::Stored(data) => g.add_stored(&t.name, data)?,
        };
    }
    for vi in &gp.input {
        if vi.name.is_empty() {
            return Err(ImportError::Unsupported("a graph input has no name".into()));
        }
        // Before IR 4, initializers were also listed as graph inputs: they are constants here.
        if g.find_value(&vi.name).is_some_and(|id| g.constant(id).is_some()) {
            continue;
        }
        let ty = declared_type(vi, "graph input")?
            .ok_or_else(|| ImportError::Unsupported(format!("graph input '{}' has no tensor element type", vi.name)))?;
        g.add_input(&vi.name, ty)?;
    }
    for vi in &gp.value_info {
        declare(g, vi, "value_info entry")?;
    }
    for vi in &gp.output {
        if vi.name.is_empty() {
            return Err(ImportError::Unsupported("a graph output has no name".into()));
        }
        let id = declare(g, vi, "graph output")?;
        g.outputs.push(id);
    }

    let names = node_names(&gp.node);
    for (np, name) in gp.node.iter().zip(names) {
        add_node(g, np, name, registry, base_dir)?;
    }

    let order = g.topo_order()?;
    for id in order {
        let node = g.node(id);
        for v in node.inputs.iter().flatten() {
            if !g.is_defined(*v) {
                return Err(IrError::Undefined { value: g.value(*v).name.clone(), node: node.name.clone() }.into());
            }
        }
    }
    for &o in &g.outputs {
        if !g.is_defined(o) {
            return Err(IrError::Invalid(format!(
                "graph output '{}' is not defined by any node, graph input or initializer",
                g.value(o).name
            ))
            .into());
        }
    }
    Ok(())
}

/// Records the type a `ValueInfoProto` declares (if any) on the value of that name.
fn declare(g: &mut Graph, vi: &ValueInfoProto, what: &str) -> Result<ValueId, ImportError> {
    let ty = declared_type(vi, what)?;
    let id = g.value_named(&vi.name);
    if let Some(ty) = ty {
        let merged = match &g.value(id).ty {
            None => ty,
            Some(have) if have.compatible(&ty) => have.refine(&ty),
            Some(have) => return Err(IrError::Invalid(format!("{what} '{}' is declared {ty}, but it is {have}", vi.name)).into()),
        };
        g.set_type(id, Some(merged));
    }
    Ok(id)
}

/// The tensor type a `ValueInfoProto` declares; `None` when it declares no element type.
fn declared_type(vi: &ValueInfoProto, what: &str) -> Result<Option<TensorType>, ImportError> {
    let Some(tp) = vi.type_.as_ref() else {
        return Ok(None);
    };
    let tt = match &tp.value {
        None => return Ok(None),
        Some(type_proto::Value::TensorType(tt)) => tt,
        Some(other) => {
            let kind = match other {
                type_proto::Value::SequenceType(_) => "a sequence",
                type_proto::Value::MapType(_) => "a map",
                type_proto::Value::OptionalType(_) => "an optional",
                type_proto::Value::SparseTensorType(_) => "a sparse tensor",
                _ => "not a tensor",
            };
            return Err(ImportError::Unsupported(format!("{what} '{}' is {kind}; fpx supports dense tensors only", vi.name)));
        }
    };
    if tt.elem_type == 0 {
        return Ok(None);
    }
    let dtype = onnx_dtype(i64::from(tt.elem_type)).ok_or_else(|| {
        ImportError::Unsupported(format!(
            "{what} '{}' has element type {}, which fpx does not support",
            vi.name,
            dtype_name(i64::from(tt.elem_type))
        ))
    })?;
    let shape = match tt.shape.as_ref() {
        None => None,
        Some(s) => Some(
            s.dim
                .iter()
                .enumerate()
                .map(|(i, d)| match &d.value {
                    Some(dimension::Value::DimValue(v)) => usize::try_from(*v).map(Dim::Fixed).map_err(|_| {
                        ImportError::Unsupported(format!(
                            "{what} '{}' declares dimension {i} as {v}; a dimension must be 0 or more (or a name for a variable one)",
                            vi.name
                        ))
                    }),
                    Some(dimension::Value::DimParam(p)) if !p.is_empty() => Ok(Dim::Sym(p.clone())),
                    _ => Ok(Dim::Unknown),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Some(TensorType { dtype, shape }))
}

/// Unique, non-empty node names: a node's own name if free, else `Op_index` (with a suffix if taken).
fn node_names(nodes: &[NodeProto]) -> Vec<String> {
    let explicit: HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).filter(|n| !n.is_empty()).collect();
    let mut used: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        let base = if n.name.is_empty() { format!("{}_{i}", n.op_type) } else { n.name.clone() };
        let mut name = base.clone();
        let mut k = 1;
        // A generated or suffixed name must not take a name some other node has explicitly.
        while used.contains(&name) || (name != n.name && explicit.contains(name.as_str())) {
            name = format!("{base}_{k}");
            k += 1;
        }
        used.insert(name.clone());
        out.push(name);
    }
    out
}

/// Converts one node, checks it against its schema, and adds it (or, for `Constant`, its value).
fn add_node(g: &mut Graph, np: &NodeProto, name: String, registry: &OpRegistry, base_dir: Option<&Path>) -> Result<(), ImportError> {
    let domain = fpx_ir::canonical_domain(&np.domain).to_string();
    let opset = g.opset(&domain).ok_or_else(|| {
        let shown = if domain.is_empty() { "the ONNX default domain ''".to_string() } else { format!("domain '{domain}'") };
        ImportError::Unsupported(format!("node '{name}' ({}) is in {shown}, which the model's opset_import does not list", np.op_type))
    })?;
    let bad = |message: String| IrError::BadAttribute { node: name.clone(), op: np.op_type.clone(), opset, message };
    // An unknown op or opset is the error to report, even when an attribute (a subgraph of
    // `Loop`, say) could not be converted either.
    let bare = Node {
        name: name.clone(),
        op_type: np.op_type.clone(),
        domain: domain.clone(),
        opset,
        attrs: BTreeMap::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
    };
    if let Err(e @ (IrError::UnknownOp { .. } | IrError::UnsupportedOpset { .. })) = registry.check(&bare) {
        return Err(e.into());
    }
    let mut attrs = BTreeMap::new();
    for a in &np.attribute {
        let v = attribute(a, &name, base_dir, &bad)?;
        if attrs.insert(a.name.clone(), v).is_some() {
            return Err(bad(format!("attribute '{}' appears twice", a.name)).into());
        }
    }
    let inputs = np.input.iter().map(|s| (!s.is_empty()).then(|| g.value_named(s))).collect();
    // Trailing empty output names are omitted optional outputs; inner ones get fresh, unused values.
    let n_out = np.output.iter().rposition(|s| !s.is_empty()).map_or(0, |p| p + 1);
    let outputs = np.output[..n_out]
        .iter()
        .enumerate()
        .map(|(i, s)| if s.is_empty() { g.fresh_value(&format!("{name}__unused_output{i}")) } else { g.value_named(s) })
        .collect();
    let node = Node { name: name.clone(), op_type: np.op_type.clone(), domain, opset, attrs, inputs, outputs };
    registry.check(&node)?;
    if node.domain.is_empty() && node.op_type == "Constant" {
        let value = constant_value(&node, &bad)?;
        g.add_constant(&np.output[0], value)?;
    } else {
        g.add_node(node)?;
    }
    Ok(())
}

/// The tensor a (checked) `Constant` node produces.
fn constant_value(node: &Node, bad: &dyn Fn(String) -> IrError) -> Result<Tensor, IrError> {
    let mut it = node.attrs.iter();
    let (Some((_, v)), None) = (it.next(), it.next()) else {
        return Err(bad("Constant needs exactly one of the attributes value, value_float, value_floats, value_int, value_ints".into()));
    };
    Ok(match v {
        Attribute::Tensor(t) => t.clone(),
        Attribute::Float(f) => Tensor::scalar_f32(*f),
        Attribute::Floats(v) => Tensor::from(
            fpx_ir::ndarray::ArrayD::from_shape_vec(fpx_ir::ndarray::IxDyn(&[v.len()]), v.clone()).map_err(|e| bad(e.to_string()))?,
        ),
        Attribute::Int(i) => Tensor::from(fpx_ir::ndarray::ArrayD::from_elem(fpx_ir::ndarray::IxDyn(&[]), *i)),
        Attribute::Ints(v) => Tensor::vec_i64(v.clone()),
        Attribute::String(_) | Attribute::Strings(_) => return Err(bad("string constants are not supported".into())),
    })
}

/// Converts one attribute; kinds fpx has no use for (graphs, sparse tensors, types) are errors.
fn attribute(a: &AttributeProto, node: &str, base_dir: Option<&Path>, bad: &dyn Fn(String) -> IrError) -> Result<Attribute, ImportError> {
    if !a.ref_attr_name.is_empty() {
        return Err(bad(format!(
            "attribute '{}' refers to function attribute '{}', which is only allowed inside functions",
            a.name, a.ref_attr_name
        ))
        .into());
    }
    let kind = a.type_.enum_value().map_err(|code| bad(format!("attribute '{}' has unknown type code {code}", a.name)))?;
    Ok(match kind {
        AttributeType::FLOAT => Attribute::Float(a.f),
        AttributeType::INT => Attribute::Int(a.i),
        AttributeType::STRING => Attribute::String(String::from_utf8_lossy(&a.s).into_owned()),
        AttributeType::FLOATS => Attribute::Floats(a.floats.clone()),
        AttributeType::INTS => Attribute::Ints(a.ints.clone()),
        AttributeType::STRINGS => Attribute::Strings(a.strings.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect()),
        AttributeType::TENSOR => {
            let t = a.t.as_ref().ok_or_else(|| bad(format!("attribute '{}' is of kind TENSOR but holds no tensor", a.name)))?;
            let tname = if t.name.is_empty() { format!("{node}.{}", a.name) } else { t.name.clone() };
            Attribute::Tensor(convert(t, &tname, base_dir)?)
        }
        AttributeType::UNDEFINED => return Err(bad(format!("attribute '{}' has no type", a.name)).into()),
        other => return Err(bad(format!("attribute '{}' is of kind {other:?}, which fpx does not support", a.name)).into()),
    })
}
