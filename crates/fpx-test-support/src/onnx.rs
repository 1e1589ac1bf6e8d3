//! Small ONNX models built in Rust with `onnx-protobuf`'s generated API (no Python needed).

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::{
    type_proto, AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use protobuf::{EnumOrUnknown, MessageField};
use std::path::Path;

/// ONNX element type code of float.
pub const FLOAT: i32 = 1;
/// ONNX element type code of int64.
pub const INT64: i32 = 7;

/// A dimension: a number is fixed, a name symbolic, `"?"` neither.
pub fn dim(d: &str) -> Dimension {
    let mut x = Dimension::new();
    x.value = if d == "?" {
        None
    } else if let Ok(n) = d.parse::<i64>() {
        Some(dimension::Value::DimValue(n))
    } else {
        Some(dimension::Value::DimParam(d.into()))
    };
    x
}

/// A tensor value of element type `elem`; `dims: None` leaves the shape out.
pub fn value_info(name: &str, elem: i32, dims: Option<&[&str]>) -> ValueInfoProto {
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = elem;
    if let Some(dims) = dims {
        let mut s = TensorShapeProto::new();
        s.dim = dims.iter().map(|d| dim(d)).collect();
        tt.shape = MessageField::some(s);
    }
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(tt));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = MessageField::some(tp);
    v
}

/// A float tensor value with dims given as numbers or symbolic names.
pub fn value(name: &str, dims: &[&str]) -> ValueInfoProto {
    value_info(name, FLOAT, Some(dims))
}

/// A node of the default domain.
pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    node_with(op, name, inputs, outputs, vec![])
}

/// A node of the default domain with attributes.
pub fn node_with(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = name.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = outputs.iter().map(|s| s.to_string()).collect();
    n.attribute = attrs;
    n
}

/// An attribute of `kind` with no value set: the base of the typed builders below, and by
/// itself a kind without a builder (`GRAPH`, `FLOATS`, ...) or a malformed attribute.
pub fn attr(name: &str, kind: AttributeType) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = EnumOrUnknown::new(kind);
    a
}

/// An `INT` attribute.
pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    let mut a = attr(name, AttributeType::INT);
    a.i = v;
    a
}

/// A `FLOAT` attribute.
pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    let mut a = attr(name, AttributeType::FLOAT);
    a.f = v;
    a
}

/// A `STRING` attribute.
pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    let mut a = attr(name, AttributeType::STRING);
    a.s = v.as_bytes().to_vec();
    a
}

/// An `INTS` attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = attr(name, AttributeType::INTS);
    a.ints = v.to_vec();
    a
}

/// A `TENSOR` attribute.
pub fn attr_tensor(name: &str, t: TensorProto) -> AttributeProto {
    let mut a = attr(name, AttributeType::TENSOR);
    a.t = MessageField::some(t);
    a
}

/// An opset import.
pub fn opset(domain: &str, version: i64) -> OperatorSetIdProto {
    let mut o = OperatorSetIdProto::new();
    o.domain = domain.into();
    o.version = version;
    o
}

/// A float tensor stored in `float_data`.
pub fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.dims = dims.to_vec();
    t.data_type = FLOAT;
    t.float_data = values.to_vec();
    t
}

/// A model (IR version 8) with the given opset imports.
pub fn model_with_opsets(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
    opsets: Vec<OperatorSetIdProto>,
) -> ModelProto {
    let mut g = GraphProto::new();
    g.name = "test".into();
    g.node = nodes;
    g.input = inputs;
    g.output = outputs;
    g.initializer = inits;
    let mut m = ModelProto::new();
    m.ir_version = 8;
    m.opset_import = opsets;
    m.graph = MessageField::some(g);
    m
}

/// A model of the default domain at opset 17.
pub fn model(nodes: Vec<NodeProto>, inputs: Vec<ValueInfoProto>, outputs: Vec<ValueInfoProto>, inits: Vec<TensorProto>) -> ModelProto {
    model_with_opsets(nodes, inputs, outputs, inits, vec![opset("", 17)])
}

/// Writes a model to a file.
pub fn save(m: &ModelProto, path: &Path) {
    std::fs::write(path, m.write_to_bytes().expect("serializes")).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// A float tensor `name` of `dims` whose data lies in the external file `location` (relative
/// to the model's folder) at `offset`, as `onnx.save(..., save_as_external_data=True)` writes it.
pub fn external_float_tensor(name: &str, dims: &[i64], location: &str, offset: u64) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.dims = dims.to_vec();
    t.data_type = FLOAT;
    t.data_location = EnumOrUnknown::new(onnx_protobuf::tensor_proto::DataLocation::EXTERNAL);
    let bytes = 4 * dims.iter().product::<i64>() as u64;
    for (k, v) in [("location", location.to_string()), ("offset", offset.to_string()), ("length", bytes.to_string())] {
        let mut e = onnx_protobuf::StringStringEntryProto::new();
        e.key = k.into();
        e.value = v;
        t.external_data.push(e);
    }
    t
}
