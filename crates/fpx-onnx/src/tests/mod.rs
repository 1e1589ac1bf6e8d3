//! Unit tests: models and tensors are built in Rust with `onnx_protobuf`'s generated API.

use super::*;
use fpx_ir::half::{bf16, f16};
use fpx_ir::ndarray::{ArrayD, IxDyn};
use fpx_ir::{onnx_code, Attribute, DType, Dim, IrError, Tensor};
use fpx_test_support::data::{onnx_node_tests_dir, shared_model_dir};
use fpx_test_support::onnx::{
    attr, attr_float, attr_int, attr_ints, attr_string, attr_tensor, model, model_with_opsets, node, node_with, opset, value, value_info,
    FLOAT, INT64,
};
use fpx_test_support::{skip, Requirement, Rng, TempDir};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataLocation;
use onnx_protobuf::{
    type_proto, AttributeProto, GraphProto, Message, ModelProto, StringStringEntryProto, TensorProto, TypeProto, ValueInfoProto,
};
use protobuf::{EnumOrUnknown, MessageField};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// Helpers

/// A random tensor of `dtype`, using the type's whole range (negative, large, fractional values).
fn random_tensor(dtype: DType, shape: &[usize], rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    fn arr<T: fpx_ir::Elem>(shape: &[usize], v: Vec<T>) -> Tensor {
        Tensor::from(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
    }
    let mut bits = || rng.next_u64();
    match dtype {
        DType::F32 => arr(shape, (0..n).map(|_| (bits() as i64 as f64 / 1e17) as f32).collect()),
        DType::F64 => arr(shape, (0..n).map(|_| bits() as i64 as f64 / 1e15).collect()),
        DType::F16 => arr(shape, (0..n).map(|_| f16::from_bits(finite(bits() as u16, 0x7c00))).collect()),
        DType::BF16 => arr(shape, (0..n).map(|_| bf16::from_bits(finite(bits() as u16, 0x7f80))).collect()),
        DType::I8 => arr(shape, (0..n).map(|_| bits() as i8).collect()),
        DType::I16 => arr(shape, (0..n).map(|_| bits() as i16).collect()),
        DType::I32 => arr(shape, (0..n).map(|_| bits() as i32).collect()),
        DType::I64 => arr(shape, (0..n).map(|_| bits() as i64).collect()),
        DType::U8 => arr(shape, (0..n).map(|_| bits() as u8).collect()),
        DType::U16 => arr(shape, (0..n).map(|_| bits() as u16).collect()),
        DType::U32 => arr(shape, (0..n).map(|_| bits() as u32).collect()),
        DType::U64 => arr(shape, (0..n).map(|_| bits()).collect()),
        DType::Bool => arr(shape, (0..n).map(|_| bits() & 1 == 1).collect()),
    }
}

/// `bits` with the top exponent bit cleared if the exponent (`mask`) is all ones: any pattern
/// but inf/NaN (whose equality would fail), so all signs, subnormals and large values occur.
fn finite(bits: u16, mask: u16) -> u16 {
    if bits & mask == mask {
        bits & !0x4000
    } else {
        bits
    }
}

/// The same tensor stored in the typed field ONNX uses for its type (no raw_data).
fn typed_proto(name: &str, t: &Tensor) -> TensorProto {
    let mut p = TensorProto::new();
    p.name = name.into();
    p.dims = t.shape().iter().map(|&d| d as i64).collect();
    p.data_type = onnx_code(t.dtype()) as i32;
    match t {
        Tensor::F32(a) => p.float_data = a.iter().copied().collect(),
        Tensor::F64(a) => p.double_data = a.iter().copied().collect(),
        Tensor::F16(a) => p.int32_data = a.iter().map(|x| x.to_bits() as i32).collect(),
        Tensor::BF16(a) => p.int32_data = a.iter().map(|x| x.to_bits() as i32).collect(),
        Tensor::I8(a) => p.int32_data = a.iter().map(|&x| x as i32).collect(),
        Tensor::I16(a) => p.int32_data = a.iter().map(|&x| x as i32).collect(),
        Tensor::I32(a) => p.int32_data = a.iter().copied().collect(),
        Tensor::U8(a) => p.int32_data = a.iter().map(|&x| x as i32).collect(),
        Tensor::U16(a) => p.int32_data = a.iter().map(|&x| x as i32).collect(),
        Tensor::Bool(a) => p.int32_data = a.iter().map(|&x| x as i32).collect(),
        Tensor::I64(a) => p.int64_data = a.iter().copied().collect(),
        Tensor::U32(a) => p.uint64_data = a.iter().map(|&x| x as u64).collect(),
        Tensor::U64(a) => p.uint64_data = a.iter().copied().collect(),
    }
    p
}

fn f32_tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

/// A model computing `y = Relu(x)` on float [batch, 4] at `version` of the default domain.
fn relu_model(version: i64) -> ModelProto {
    model_with_opsets(
        vec![node("Relu", "relu", &["x"], &["y"])],
        vec![value("x", &["batch", "4"])],
        vec![value("y", &["batch", "4"])],
        vec![],
        vec![opset("", version)],
    )
}

fn import(m: &ModelProto) -> Result<fpx_ir::Graph, ImportError> {
    import_model_bytes(&m.write_to_bytes().unwrap(), None)
}

fn import_err(m: &ModelProto) -> String {
    match import(m) {
        Ok(_) => panic!("import should fail"),
        Err(e) => e.to_string(),
    }
}

fn node_named<'g>(g: &'g fpx_ir::Graph, name: &str) -> &'g fpx_ir::Node {
    let id = g.node_ids().into_iter().find(|&id| g.node(id).name == name).unwrap_or_else(|| panic!("no node '{name}'"));
    g.node(id)
}

/// The MiniLM model in `../shared/models`, if present.
fn minilm_path() -> Option<PathBuf> {
    shared_model_dir("minilm-l6-v2").map(|d| d.join("model.onnx"))
}

mod external;
mod graph;
mod ops;
mod tensors;
