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

// ---------------------------------------------------------------------------------------------
// Tensors

#[test]
fn every_dtype_round_trips_through_raw_data() {
    let mut rng = Rng::new(0x5eed);
    for dtype in DType::ALL {
        for shape in [vec![2, 3, 4], vec![], vec![0, 5], vec![7]] {
            let t = random_tensor(dtype, &shape, &mut rng);
            let p = tensor_to_proto("w", &t);
            assert_eq!(p.raw_data.len(), t.len() * dtype.size_bytes(), "{dtype}");
            assert_eq!(p.dims, shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
            let back = tensor_from_proto(&p, None).unwrap();
            assert_eq!(back, t, "{dtype} {shape:?}");
            // Through serialized bytes too.
            let parsed = TensorProto::parse_from_bytes(&p.write_to_bytes().unwrap()).unwrap();
            assert_eq!(tensor_from_proto(&parsed, None).unwrap(), t, "{dtype} {shape:?}");
        }
    }
}

#[test]
fn every_dtype_round_trips_through_typed_fields() {
    let mut rng = Rng::new(42);
    for dtype in DType::ALL {
        for shape in [vec![3, 5], vec![]] {
            let t = random_tensor(dtype, &shape, &mut rng);
            let p = typed_proto("w", &t);
            assert!(p.raw_data.is_empty());
            assert_eq!(tensor_from_proto(&p, None).unwrap(), t, "{dtype} {shape:?}");
        }
    }
}

#[test]
fn raw_data_is_little_endian() {
    let mut p = TensorProto::new();
    p.name = "le".into();
    p.dims = vec![2];
    p.data_type = onnx_code(DType::I32) as i32;
    p.raw_data = vec![1, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff];
    assert_eq!(tensor_from_proto(&p, None).unwrap().to_i64_vec(), vec![1, -2]);
    let t = Tensor::U16(ArrayD::from_shape_vec(IxDyn(&[2]), vec![0x0102, 0xa0b0]).unwrap());
    assert_eq!(tensor_to_proto("u", &t).raw_data, vec![0x02, 0x01, 0xb0, 0xa0]);
}

#[test]
fn half_precision_bit_patterns_survive() {
    // 1.0, -2.0, +inf, the smallest negative subnormal, a NaN payload, -0.
    let h_bits = [0x3c00u16, 0xc000, 0x7c00, 0x8001, 0x7e01, 0x8000];
    let b_bits = [0x3f80u16, 0xc000, 0x7f80, 0x8001, 0x7fc1, 0x8000];
    let h = Tensor::F16(ArrayD::from_shape_vec(IxDyn(&[6]), h_bits.iter().map(|&b| f16::from_bits(b)).collect()).unwrap());
    let b = Tensor::BF16(ArrayD::from_shape_vec(IxDyn(&[6]), b_bits.iter().map(|&b| bf16::from_bits(b)).collect()).unwrap());
    for p in [tensor_to_proto("h", &h), typed_proto("h", &h)] {
        let Tensor::F16(a) = tensor_from_proto(&p, None).unwrap() else { panic!("not f16") };
        assert_eq!(a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), h_bits);
    }
    for p in [tensor_to_proto("b", &b), typed_proto("b", &b)] {
        let Tensor::BF16(a) = tensor_from_proto(&p, None).unwrap() else { panic!("not bf16") };
        assert_eq!(a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), b_bits);
    }
    assert_eq!(typed_proto("h", &h).int32_data[0], 0x3c00);
    assert_eq!(tensor_to_proto("h", &h).raw_data[..2], [0x00, 0x3c]);
}

#[test]
fn length_mismatch_names_the_tensor() {
    let t = f32_tensor(&[2, 3], vec![1.0; 6]);
    let mut p = tensor_to_proto("weights.0", &t);
    p.raw_data.pop();
    let e = tensor_from_proto(&p, None).unwrap_err().to_string();
    assert!(e.contains("weights.0") && e.contains("raw_data has 23 bytes") && e.contains("need 24"), "{e}");

    let mut p = typed_proto("bias", &t);
    p.dims = vec![7];
    let e = tensor_from_proto(&p, None).unwrap_err().to_string();
    assert!(matches!(tensor_from_proto(&p, None), Err(ImportError::Tensor { .. })));
    assert!(e.contains("bias") && e.contains("float_data has 6 values") && e.contains("need 7"), "{e}");

    // Data in the wrong typed field counts as missing.
    let mut p = typed_proto("ids", &Tensor::vec_i64(vec![1, 2, 3]));
    p.int32_data = vec![1, 2, 3];
    p.int64_data.clear();
    let e = tensor_from_proto(&p, None).unwrap_err().to_string();
    assert!(e.contains("ids") && e.contains("int64_data has 0 values"), "{e}");
}

#[test]
fn bad_dims_are_errors_not_panics() {
    let mut p = TensorProto::new();
    p.name = "neg".into();
    p.data_type = 1;
    p.dims = vec![2, -1];
    let e = tensor_from_proto(&p, None).unwrap_err().to_string();
    assert!(e.contains("'neg'") && e.contains("negative dimension -1"), "{e}");

    p.name = "huge".into();
    p.dims = vec![i64::MAX, i64::MAX, 4];
    let e = tensor_from_proto(&p, None).unwrap_err().to_string();
    assert!(e.contains("'huge'") && e.contains("too many elements"), "{e}");

    // Element count fits, byte count does not.
    p.dims = vec![1 << 62];
    p.data_type = 11;
    let e = tensor_from_proto(&p, None).unwrap_err().to_string();
    assert!(e.contains("'huge'") && e.contains("too many elements"), "{e}");

    // A large but representable count with no data: a mismatch, found before allocating.
    p.dims = vec![1 << 40];
    p.data_type = 1;
    let e = tensor_from_proto(&p, None).unwrap_err().to_string();
    assert!(e.contains("float_data has 0 values"), "{e}");
}

#[test]
fn unsupported_dtypes_name_tensor_and_type() {
    for (code, name) in [
        (8, "STRING"),
        (14, "COMPLEX64"),
        (15, "COMPLEX128"),
        (17, "FLOAT8E4M3FN"),
        (19, "FLOAT8E5M2"),
        (22, "INT4"),
        (23, "FLOAT4E2M1"),
        (0, "UNDEFINED"),
        (99, "code 99"),
    ] {
        let mut p = TensorProto::new();
        p.name = "odd".into();
        p.data_type = code;
        p.dims = vec![1];
        let e = tensor_from_proto(&p, None).unwrap_err().to_string();
        assert!(e.contains("'odd'") && e.contains(name) && e.contains("not supported"), "{e}");
    }
}

#[test]
fn load_tensor_pb_reads_a_file_and_rejects_garbage() {
    let dir = TempDir::new("pb");
    let t = f32_tensor(&[2, 2], vec![1.5, -2.0, 3.25, 0.0]);
    let path = dir.path().join("input_0.pb");
    std::fs::write(&path, tensor_to_proto("x", &t).write_to_bytes().unwrap()).unwrap();
    let (name, back) = load_tensor_pb(&path).unwrap();
    assert_eq!((name.as_str(), back), ("x", t));

    let bad = dir.path().join("bad.pb");
    std::fs::write(&bad, b"\xff\xff\xff\xff garbage").unwrap();
    let e = load_tensor_pb(&bad).unwrap_err();
    assert!(matches!(e, ImportError::Parse { .. }), "{e}");
    assert!(e.to_string().contains("bad.pb"), "{e}");

    let e = load_tensor_pb(&dir.path().join("missing.pb")).unwrap_err();
    assert!(matches!(e, ImportError::Io { .. }) && e.to_string().contains("missing.pb"), "{e}");
}

#[test]
fn backend_node_test_tensor_loads() {
    let Some(dir) = onnx_node_tests_dir() else {
        skip(
            Requirement::Models,
            "backend_node_test_tensor_loads",
            "ONNX backend node tests not found (set FPX_ONNX_NODE_TESTS or run scripts/setup.sh)",
        );
        return;
    };
    let (name, t) = load_tensor_pb(&dir.join("test_add/test_data_set_0/input_0.pb")).unwrap();
    assert_eq!(name, "x");
    assert_eq!((t.dtype(), t.shape()), (DType::F32, &[3usize, 4, 5][..]));
    assert!(t.to_f64_vec().iter().any(|&v| v != 0.0));
    // The node test's model imports too.
    let g = load_model(&dir.join("test_add/model.onnx")).unwrap();
    assert_eq!(g.node_count(), 1);
    assert_eq!(g.inputs.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Parsing

#[test]
fn garbage_bytes_are_parse_errors() {
    for bytes in [&b""[..], b"this is not an onnx model", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x08"] {
        let e = import_model_bytes(bytes, None).unwrap_err();
        assert!(matches!(e, ImportError::Parse { .. }), "{e}");
        assert!(e.to_string().contains("not a valid ONNX model"), "{e}");
    }
    // A message with an ir_version but no graph parses, and is still rejected.
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let e = import_model_bytes(&m.write_to_bytes().unwrap(), None).unwrap_err();
    assert!(matches!(e, ImportError::Parse { .. }) && e.to_string().contains("no graph"), "{e}");
}

#[test]
fn random_and_damaged_bytes_never_panic() {
    let mut rng = Rng::new(7);
    for len in [1usize, 2, 5, 16, 100, 1000] {
        for _ in 0..20 {
            let bytes = rng.bytes(len);
            assert!(import_model_bytes(&bytes, None).is_err());
        }
    }
    // Every truncation and many single-byte corruptions of a valid model.
    let mut m = relu_model(17);
    m.graph.as_mut().unwrap().initializer.push(tensor_to_proto("unused", &f32_tensor(&[2], vec![1.0, 2.0])));
    let good = m.write_to_bytes().unwrap();
    assert!(import_model_bytes(&good, None).is_ok());
    for cut in 0..good.len() {
        let _ = import_model_bytes(&good[..cut], None);
    }
    for _ in 0..2000 {
        let mut b = good.clone();
        let i = rng.below(b.len());
        b[i] = rng.next_u32() as u8;
        let _ = import_model_bytes(&b, None);
    }
}

#[test]
fn truncated_real_model_is_a_parse_error() {
    let Some(path) = minilm_path() else {
        skip(Requirement::Models, "truncated_real_model_is_a_parse_error", "../shared/models/minilm-l6-v2 is absent");
        return;
    };
    use std::io::Read;
    let mut head = vec![0u8; 1000];
    std::fs::File::open(&path).unwrap().read_exact(&mut head).unwrap();
    let e = import_model_bytes(&head, None).unwrap_err();
    assert!(matches!(e, ImportError::Parse { .. }), "{e}");

    let dir = TempDir::new("trunc");
    let p = dir.path().join("cut.onnx");
    std::fs::write(&p, &head).unwrap();
    let e = load_model(&p).unwrap_err().to_string();
    assert!(e.contains("cut.onnx") && e.contains("not a valid ONNX model"), "{e}");
}

#[test]
fn missing_file_is_an_io_error() {
    let e = load_model(Path::new("/nonexistent/fpx/model.onnx")).unwrap_err();
    assert!(matches!(e, ImportError::Io { .. }) && e.to_string().contains("/nonexistent/fpx/model.onnx"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Opsets, ops and attributes

#[test]
fn simple_model_imports_with_opsets_and_symbolic_dims() {
    let mut m = relu_model(17);
    m.opset_import.push(opset("ai.onnx.ml", 3));
    let g = import(&m).unwrap();
    assert_eq!(g.name, "test");
    assert_eq!(g.opsets.get(""), Some(&17));
    assert_eq!(g.opsets.get("ai.onnx.ml"), Some(&3));
    assert_eq!(g.node_count(), 1);
    let x = g.inputs[0];
    let ty = g.value(x).ty.as_ref().unwrap();
    assert_eq!((ty.dtype, ty.shape.clone()), (DType::F32, Some(vec![Dim::Sym("batch".into()), Dim::Fixed(4)])));
    let y = g.value(g.outputs[0]).ty.clone().unwrap();
    assert_eq!(y.shape, Some(vec![Dim::Sym("batch".into()), Dim::Fixed(4)]));
    let n = node_named(&g, "relu");
    assert_eq!((n.op_type.as_str(), n.domain.as_str(), n.opset), ("Relu", "", 17));
}

#[test]
fn ai_onnx_domain_is_the_default_domain() {
    let mut m = relu_model(17);
    m.opset_import = vec![opset("ai.onnx", 14)];
    m.graph.as_mut().unwrap().node[0].domain = "ai.onnx".into();
    let g = import(&m).unwrap();
    assert_eq!(g.opsets.get(""), Some(&14));
    assert_eq!(node_named(&g, "relu").domain, "");
}

#[test]
fn unknown_and_missing_dims_and_shapes() {
    let m = model(vec![node("Relu", "r", &["x"], &["y"])], vec![value("x", &["?", "n", "3"])], vec![value_info("y", FLOAT, None)], vec![]);
    let g = import(&m).unwrap();
    assert_eq!(g.value(g.inputs[0]).ty.as_ref().unwrap().shape, Some(vec![Dim::Unknown, Dim::Sym("n".into()), Dim::Fixed(3)]));
    // The output declared no shape; inference gives the input's.
    assert_eq!(g.value(g.outputs[0]).ty.as_ref().unwrap().shape, Some(vec![Dim::Unknown, Dim::Sym("n".into()), Dim::Fixed(3)]));

    let m = model(vec![node("Relu", "r", &["x"], &["y"])], vec![value_info("x", FLOAT, None)], vec![value_info("y", FLOAT, None)], vec![]);
    let g = import(&m).unwrap();
    assert_eq!(g.value(g.inputs[0]).ty.as_ref().unwrap().shape, None);
}

#[test]
fn unknown_op_with_a_subgraph_is_reported_as_unknown_op() {
    let mut body = attr("body", AttributeType::GRAPH);
    body.g = MessageField::some(GraphProto::new());
    let m = model(
        vec![node_with("Loop", "loop", &["n", "", "x"], &["y"], vec![body])],
        vec![value_info("n", INT64, Some(&[])), value("x", &["2"])],
        vec![value_info("y", FLOAT, None)],
        vec![],
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, ImportError::Ir(IrError::UnknownOp { .. })), "{e}");
    assert!(e.to_string().contains("'Loop'"), "{e}");
}

#[test]
fn unknown_op_names_node_op_domain_and_opset() {
    let m = model(vec![node("FooBar", "mystery", &["x"], &["y"])], vec![value("x", &["2"])], vec![value_info("y", FLOAT, None)], vec![]);
    let e = import(&m).unwrap_err();
    assert!(matches!(e, ImportError::Ir(IrError::UnknownOp { .. })), "{e}");
    let e = e.to_string();
    assert!(e.contains("'mystery'") && e.contains("'FooBar'") && e.contains("domain ''") && e.contains("opset 17"), "{e}");

    // A custom domain that is imported: unknown op naming the domain.
    let mut m = m.clone();
    m.opset_import.push(opset("com.example", 2));
    m.graph.as_mut().unwrap().node[0].domain = "com.example".into();
    let e = import_err(&m);
    assert!(e.contains("'mystery'") && e.contains("'FooBar'") && e.contains("domain 'com.example'") && e.contains("opset 2"), "{e}");

    // A domain that is not imported: names the node and domain.
    m.opset_import.pop();
    let e = import_err(&m);
    assert!(e.contains("'mystery'") && e.contains("FooBar") && e.contains("com.example") && e.contains("opset_import"), "{e}");
}

#[test]
fn unsupported_opsets_are_clear_errors() {
    let e = import(&relu_model(fpx_ir::ops::MAX_ONNX_OPSET + 1)).unwrap_err();
    assert!(matches!(e, ImportError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains(&format!("ONNX opset {}", fpx_ir::ops::MAX_ONNX_OPSET + 1)), "{e}");
    let e = import_err(&relu_model(0));
    assert!(e.contains("ONNX opset 0"), "{e}");

    // The op exists but not at this opset: Gelu is opset 20+.
    let m = model(vec![node("Gelu", "g", &["x"], &["y"])], vec![value("x", &["2"])], vec![value_info("y", FLOAT, None)], vec![]);
    let e = import(&m).unwrap_err();
    assert!(matches!(e, ImportError::Ir(IrError::UnsupportedOpset { .. })), "{e}");
    let e = e.to_string();
    assert!(e.contains("'g'") && e.contains("Gelu") && e.contains("opset 17"), "{e}");

    // Two different versions for one domain.
    let mut m = relu_model(17);
    m.opset_import.push(opset("ai.onnx", 13));
    assert!(import_err(&m).contains("twice"));
}

#[test]
fn bad_attributes_name_node_op_and_opset() {
    let softmax = |a: AttributeProto| {
        model_with_opsets(
            vec![node_with("Softmax", "sm", &["x"], &["y"], vec![a])],
            vec![value("x", &["2", "3"])],
            vec![value_info("y", FLOAT, None)],
            vec![],
            vec![opset("", 13)],
        )
    };
    // Wrong kind for a known attribute (checked by the registry).
    let e = import(&softmax(attr_float("axis", 1.0))).unwrap_err();
    assert!(matches!(e, ImportError::Ir(IrError::BadAttribute { .. })), "{e}");
    let e = e.to_string();
    assert!(e.contains("'sm'") && e.contains("Softmax") && e.contains("opset 13") && e.contains("axis"), "{e}");
    // Unknown attribute.
    let e = import_err(&softmax(attr_int("axes", 1)));
    assert!(e.contains("unknown attribute 'axes'"), "{e}");
    // Attribute kinds fpx does not take.
    let mut g = attr("body", AttributeType::GRAPH);
    g.g = MessageField::some(GraphProto::new());
    let e = import(&softmax(g)).unwrap_err();
    assert!(matches!(e, ImportError::Ir(IrError::BadAttribute { .. })), "{e}");
    assert!(e.to_string().contains("'sm'") && e.to_string().contains("GRAPH"), "{e}");
    for kind in
        [AttributeType::GRAPHS, AttributeType::SPARSE_TENSOR, AttributeType::TYPE_PROTO, AttributeType::TENSORS, AttributeType::UNDEFINED]
    {
        let e = import_err(&softmax(attr("a", kind)));
        assert!(e.contains("'sm'") && e.contains("Softmax") && e.contains("'a'"), "{e}");
    }
    // A reference to a function attribute.
    let mut r = attr_int("axis", 1);
    r.ref_attr_name = "outer_axis".into();
    let e = import_err(&softmax(r));
    assert!(e.contains("'sm'") && e.contains("outer_axis"), "{e}");
    // A TENSOR attribute without a tensor.
    let e = import_err(&softmax(attr("axis", AttributeType::TENSOR)));
    assert!(e.contains("holds no tensor"), "{e}");
    // Good attribute: kept.
    let g = import(&softmax(attr_int("axis", 0))).unwrap();
    assert_eq!(node_named(&g, "sm").attrs.get("axis"), Some(&Attribute::Int(0)));
}

#[test]
fn attributes_of_every_supported_kind_convert() {
    let m = model_with_opsets(
        vec![
            node_with("Gelu", "g", &["x"], &["a"], vec![attr_string("approximate", "tanh")]),
            node_with("Transpose", "t", &["a"], &["b"], vec![attr_ints("perm", &[1, 0])]),
            node_with("LeakyRelu", "l", &["b"], &["c"], vec![attr_float("alpha", 0.25)]),
            node_with(
                "ConstantOfShape",
                "cs",
                &["shape"],
                &["d"],
                vec![attr_tensor("value", tensor_to_proto("", &Tensor::vec_i64(vec![3])))],
            ),
        ],
        vec![value("x", &["2", "3"])],
        vec![value_info("c", FLOAT, None), value_info("d", INT64, None)],
        vec![tensor_to_proto("shape", &Tensor::vec_i64(vec![2, 2]))],
        vec![opset("", 20)],
    );
    let g = import(&m).unwrap();
    assert_eq!(node_named(&g, "g").attr_s("approximate", ""), "tanh");
    assert_eq!(node_named(&g, "t").attr_ints("perm"), Some(&[1i64, 0][..]));
    assert_eq!(node_named(&g, "l").attr_f("alpha", 0.0), 0.25);
    assert_eq!(node_named(&g, "cs").attr_tensor("value"), Some(&Tensor::vec_i64(vec![3])));
    let c = g.value(g.outputs[0]).ty.clone().unwrap();
    assert_eq!(c.fixed_dims(), Some(vec![3, 2]));
    assert_eq!(g.value(g.outputs[1]).ty.clone().unwrap(), fpx_ir::TensorType::fixed(DType::I64, &[2, 2]));
}

#[test]
fn bad_attribute_tensor_is_named_after_node_and_attribute() {
    let mut t = tensor_to_proto("", &Tensor::vec_i64(vec![3]));
    t.raw_data.pop();
    let m = model(
        vec![node_with("ConstantOfShape", "cs", &["shape"], &["d"], vec![attr_tensor("value", t)])],
        vec![],
        vec![value_info("d", INT64, None)],
        vec![tensor_to_proto("shape", &Tensor::vec_i64(vec![2]))],
    );
    let e = import_err(&m);
    assert!(e.contains("tensor 'cs.value'"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Graph structure

#[test]
fn cyclic_graph_is_an_error_naming_a_node() {
    let m = model(
        vec![node("Add", "p", &["x", "b"], &["a"]), node("Neg", "q", &["a"], &["b"])],
        vec![value("x", &["2"])],
        vec![value_info("a", FLOAT, None)],
        vec![],
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, ImportError::Ir(IrError::Cycle { .. })), "{e}");
    let e = e.to_string();
    assert!(e.contains("cycle through node") && (e.contains("'p'") || e.contains("'q'")), "{e}");
}

#[test]
fn undefined_values_are_errors_naming_value_and_node() {
    let m = model(vec![node("Relu", "r", &["nowhere"], &["y"])], vec![], vec![value_info("y", FLOAT, None)], vec![]);
    let e = import_err(&m);
    assert!(e.contains("'nowhere'") && e.contains("'r'"), "{e}");

    let m = model(vec![], vec![value("x", &["2"])], vec![value_info("ghost", FLOAT, None)], vec![]);
    let e = import_err(&m);
    assert!(e.contains("graph output 'ghost'"), "{e}");

    // Two nodes defining one value.
    let m = model(
        vec![node("Relu", "r1", &["x"], &["y"]), node("Neg", "r2", &["x"], &["y"])],
        vec![value("x", &["2"])],
        vec![value_info("y", FLOAT, None)],
        vec![],
    );
    let e = import_err(&m);
    assert!(e.contains("'y'") && e.contains("'r2'"), "{e}");
}

#[test]
fn node_names_are_generated_and_made_unique() {
    let m = model(
        vec![
            node("Relu", "", &["x"], &["a"]),
            node("Neg", "dup", &["a"], &["b"]),
            node("Abs", "dup", &["b"], &["c"]),
            node("Relu", "Relu_0", &["c"], &["d"]),
            node("Neg", "", &["d"], &["e"]),
        ],
        vec![value("x", &["2"])],
        vec![value_info("e", FLOAT, None)],
        vec![],
    );
    let g = import(&m).unwrap();
    let mut names: Vec<String> = g.node_ids().into_iter().map(|id| g.node(id).name.clone()).collect();
    names.sort();
    // The generated `Relu_0` yields to the node explicitly named so.
    assert_eq!(names, ["Neg_4", "Relu_0", "Relu_0_1", "dup", "dup_1"]);
    assert_eq!(node_named(&g, "Relu_0").inputs, vec![g.find_value("c")]);
    assert_eq!(node_named(&g, "dup_1").op_type, "Abs");
}

#[test]
fn initializers_listed_as_inputs_are_constants_and_omitted_inputs_are_none() {
    let w = f32_tensor(&[2], vec![0.5, -1.0]);
    let m = model_with_opsets(
        vec![node("Clip", "clip", &["x", "", "hi"], &["y"]), node("Mul", "mul", &["y", "w"], &["z"])], // Old IR: the initializer `w` is listed as a graph input too.
        vec![value("x", &["2"]), value("w", &["2"]), value("hi", &[])],
        vec![value("z", &["2"])],
        vec![tensor_to_proto("w", &w)],
        vec![opset("", 13)],
    );
    let g = import(&m).unwrap();
    let names: Vec<&str> = g.inputs.iter().map(|&v| g.value(v).name.as_str()).collect();
    assert_eq!(names, ["x", "hi"]);
    let wid = g.find_value("w").unwrap();
    assert_eq!(g.constant(wid).map(|t| (**t).clone()), Some(w));
    let clip = node_named(&g, "clip");
    assert_eq!(clip.inputs, vec![g.find_value("x"), None, g.find_value("hi")]);
}

#[test]
fn empty_output_names_are_omitted_optional_outputs() {
    let m = model(
        vec![node_with("LayerNormalization", "ln", &["x", "s"], &["y", "", ""], vec![attr_float("epsilon", 1e-5)])],
        vec![value("x", &["b", "4"])],
        vec![value_info("y", FLOAT, None)],
        vec![tensor_to_proto("s", &f32_tensor(&[4], vec![1.0; 4]))],
    );
    let g = import(&m).unwrap();
    assert_eq!(node_named(&g, "ln").outputs.len(), 1);
    assert_eq!(g.value(g.outputs[0]).ty.clone().unwrap().shape, Some(vec![Dim::Sym("b".into()), Dim::Fixed(4)]));
}

#[test]
fn non_tensor_inputs_are_rejected_by_name() {
    let mut seq = ValueInfoProto::new();
    seq.name = "items".into();
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::SequenceType(type_proto::Sequence::new()));
    seq.type_ = MessageField::some(tp);
    let m = model(vec![], vec![seq], vec![], vec![]);
    let e = import_err(&m);
    assert!(e.contains("'items'") && e.contains("sequence"), "{e}");

    let m = model(vec![], vec![value_info("s", 8, Some(&["2"]))], vec![], vec![]);
    let e = import_err(&m);
    assert!(e.contains("'s'") && e.contains("STRING"), "{e}");

    let mut untyped = ValueInfoProto::new();
    untyped.name = "u".into();
    let m = model(vec![], vec![untyped], vec![], vec![]);
    assert!(import_err(&m).contains("'u'"));
}

#[test]
fn declared_types_that_contradict_inference_are_errors() {
    let m = model(vec![node("Relu", "r", &["x"], &["y"])], vec![value("x", &["2", "3"])], vec![value("y", &["2", "5"])], vec![]);
    let e = import_err(&m);
    assert!(e.contains("'r'") && e.contains("'y'"), "{e}");
}

#[test]
fn bad_initializers_are_named() {
    let mut t = tensor_to_proto("emb", &f32_tensor(&[2], vec![1.0, 2.0]));
    t.dims = vec![3];
    let mut m = relu_model(17);
    m.graph.as_mut().unwrap().initializer.push(t);
    let e = import(&m).unwrap_err();
    assert!(matches!(e, ImportError::Tensor { .. }) && e.to_string().contains("'emb'"), "{e}");

    let mut m = relu_model(17);
    let dup = tensor_to_proto("w", &f32_tensor(&[1], vec![1.0]));
    m.graph.as_mut().unwrap().initializer.extend([dup.clone(), dup]);
    let e = import_err(&m);
    assert!(e.contains("'w'") && e.contains("more than once"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Constant nodes

#[test]
fn constant_nodes_become_constants() {
    let c = f32_tensor(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
    let m = model(
        vec![
            node_with("Constant", "c0", &[], &["k"], vec![attr_tensor("value", tensor_to_proto("k", &c))]),
            node("Add", "add", &["x", "k"], &["y"]),
            node_with("Constant", "c1", &[], &["s"], vec![attr_float("value_float", 0.5)]),
            node("Mul", "mul", &["y", "s"], &["z"]),
            node_with("Constant", "c2", &[], &["shape"], vec![attr_ints("value_ints", &[4])]),
            node("Reshape", "rs", &["z", "shape"], &["r"]),
            node_with("Constant", "c3", &[], &["i"], vec![attr_int("value_int", 7)]),
            node_with(
                "Constant",
                "c4",
                &[],
                &["fs"],
                vec![{
                    let mut a = attr("value_floats", AttributeType::FLOATS);
                    a.floats = vec![1.5, 2.5];
                    a
                }],
            ),
        ],
        vec![value("x", &["2", "2"])],
        vec![value_info("r", FLOAT, None), value_info("i", INT64, None), value_info("fs", FLOAT, None)],
        vec![],
    );
    let g = import(&m).unwrap();
    assert_eq!(g.node_count(), 3);
    assert!(g.node_ids().iter().all(|&id| g.node(id).op_type != "Constant"));
    let k = |name: &str| g.constant(g.find_value(name).unwrap()).map(|t| (**t).clone()).unwrap();
    assert_eq!(k("k"), c);
    assert_eq!(k("s"), Tensor::scalar_f32(0.5));
    assert_eq!(k("shape"), Tensor::vec_i64(vec![4]));
    assert_eq!(k("i"), Tensor::I64(ArrayD::from_elem(IxDyn(&[]), 7)));
    assert_eq!(k("fs"), f32_tensor(&[2], vec![1.5, 2.5]));
    // Reshape to a constant shape: inference sees the folded constant.
    assert_eq!(g.value(g.outputs[0]).ty.clone().unwrap().fixed_dims(), Some(vec![4]));
}

#[test]
fn bad_constant_nodes_name_the_node() {
    let mk = |attrs: Vec<AttributeProto>| {
        model(vec![node_with("Constant", "konst", &[], &["k"], attrs)], vec![], vec![value_info("k", FLOAT, None)], vec![])
    };
    let e = import_err(&mk(vec![]));
    assert!(e.contains("'konst'") && e.contains("exactly one"), "{e}");
    let e = import_err(&mk(vec![attr_float("value_float", 1.0), attr_int("value_int", 1)]));
    assert!(e.contains("'konst'"), "{e}");
    let e = import_err(&mk(vec![attr_string("value_string", "hi")]));
    assert!(e.contains("'konst'") && e.contains("value_string"), "{e}");
    let mut sp = attr("sparse_value", AttributeType::SPARSE_TENSOR);
    sp.sparse_tensor = MessageField::some(onnx_protobuf::SparseTensorProto::new());
    let e = import_err(&mk(vec![sp]));
    assert!(e.contains("'konst'") && e.contains("sparse_value"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// External data

/// Writes `model.onnx` into `dir` with an initializer `w` ([2, 3] f32) stored externally at
/// `location`, and returns the tensor.
fn external_model(dir: &Path, location: &str, offset: Option<u64>, length: Option<u64>) -> Tensor {
    let w = f32_tensor(&[2, 3], vec![0.5, -1.0, 2.0, 3.5, -4.25, 8.0]);
    let mut p = tensor_to_proto("w", &w);
    p.raw_data.clear();
    p.data_location = EnumOrUnknown::new(DataLocation::EXTERNAL);
    let mut entry = |k: &str, v: String| {
        let mut e = StringStringEntryProto::new();
        e.key = k.into();
        e.value = v;
        p.external_data.push(e);
    };
    entry("location", location.into());
    if let Some(o) = offset {
        entry("offset", o.to_string());
    }
    if let Some(l) = length {
        entry("length", l.to_string());
    }
    let m =
        model(vec![node("Mul", "mul", &["x", "w"], &["y"])], vec![value("x", &["2", "3"])], vec![value_info("y", FLOAT, None)], vec![p]);
    std::fs::write(dir.join("model.onnx"), m.write_to_bytes().unwrap()).unwrap();
    w
}

/// The 24 bytes of the external tensor, after `pad` bytes of padding.
fn external_bytes(w: &Tensor, pad: usize) -> Vec<u8> {
    let mut b = vec![0xaa; pad];
    b.extend(tensor_to_proto("w", w).raw_data);
    b
}

#[test]
fn external_data_inside_the_folder_loads() {
    let dir = TempDir::new("ext-ok");
    let w = external_model(dir.path(), "weights.bin", Some(8), Some(24));
    std::fs::write(dir.path().join("weights.bin"), external_bytes(&w, 8)).unwrap();
    let g = load_model(&dir.path().join("model.onnx")).unwrap();
    assert_eq!(g.constant(g.find_value("w").unwrap()).map(|t| (**t).clone()), Some(w.clone()));

    // In a subfolder, without offset and length, through `./`.
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/w.bin"), external_bytes(&w, 0)).unwrap();
    external_model(dir.path(), "./data/w.bin", None, None);
    let g = load_model(&dir.path().join("model.onnx")).unwrap();
    assert_eq!(g.constant(g.find_value("w").unwrap()).map(|t| (**t).clone()), Some(w));
}

#[test]
fn external_data_errors_name_tensor_and_file() {
    let dir = TempDir::new("ext-bad");
    let model_path = dir.path().join("model.onnx");
    let w = external_model(dir.path(), "weights.bin", None, None);
    // Missing file.
    let e = load_model(&model_path).unwrap_err();
    assert!(matches!(e, ImportError::ExternalData { .. }), "{e}");
    let e = e.to_string();
    assert!(e.contains("'w'") && e.contains("weights.bin") && e.contains("not found"), "{e}");
    // Too short.
    std::fs::write(dir.path().join("weights.bin"), &external_bytes(&w, 0)[..20]).unwrap();
    let e = load_model(&model_path).unwrap_err().to_string();
    assert!(e.contains("'w'") && e.contains("beyond the end") && e.contains("20 bytes"), "{e}");
    // Offset beyond the file.
    std::fs::write(dir.path().join("weights.bin"), external_bytes(&w, 0)).unwrap();
    external_model(dir.path(), "weights.bin", Some(4), None);
    let e = load_model(&model_path).unwrap_err().to_string();
    assert!(e.contains("'w'") && e.contains("offset 4"), "{e}");
    // Length that disagrees with the dims.
    external_model(dir.path(), "weights.bin", None, Some(16));
    let e = load_model(&model_path).unwrap_err().to_string();
    assert!(e.contains("'length' is 16"), "{e}");
    // Unparsable offset.
    external_model(dir.path(), "weights.bin", None, None);
    let mut m = ModelProto::parse_from_bytes(&std::fs::read(&model_path).unwrap()).unwrap();
    m.graph.as_mut().unwrap().initializer[0].external_data.push({
        let mut e = StringStringEntryProto::new();
        e.key = "offset".into();
        e.value = "-3".into();
        e
    });
    std::fs::write(&model_path, m.write_to_bytes().unwrap()).unwrap();
    let e = load_model(&model_path).unwrap_err().to_string();
    assert!(e.contains("'offset' is '-3'"), "{e}");
    // A folder, not a file.
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    external_model(dir.path(), "sub", None, None);
    let e = load_model(&model_path).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    // No location.
    external_model(dir.path(), "", None, None);
    let e = load_model(&model_path).unwrap_err().to_string();
    assert!(e.contains("no 'location'"), "{e}");
}

#[test]
fn external_data_without_a_folder_is_an_error() {
    let dir = TempDir::new("ext-bytes");
    let w = external_model(dir.path(), "weights.bin", None, None);
    std::fs::write(dir.path().join("weights.bin"), external_bytes(&w, 0)).unwrap();
    let bytes = std::fs::read(dir.path().join("model.onnx")).unwrap();
    let e = import_model_bytes(&bytes, None).unwrap_err();
    assert!(matches!(e, ImportError::ExternalData { .. }) && e.to_string().contains("without a folder"), "{e}");
    // With the folder given, it loads.
    assert!(import_model_bytes(&bytes, Some(dir.path())).is_ok());
}

#[test]
fn external_data_outside_the_folder_is_rejected() {
    let root = TempDir::new("ext-escape");
    let inner = root.path().join("model");
    std::fs::create_dir(&inner).unwrap();
    let w = external_model(&inner, "x", None, None);
    // A valid data file outside the model's folder: it must never be used.
    let outside = root.path().join("secret.bin");
    std::fs::write(&outside, external_bytes(&w, 0)).unwrap();
    let model_path = inner.join("model.onnx");

    let cases = [
        (outside.to_str().unwrap().to_string(), "absolute"),
        ("../secret.bin".to_string(), "'..'"),
        ("data/../../secret.bin".to_string(), "'..'"),
    ];
    for (location, why) in cases {
        external_model(&inner, &location, None, None);
        let e = load_model(&model_path).unwrap_err();
        assert!(matches!(e, ImportError::ExternalData { .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains("'w'") && e.contains(why) && e.contains("inside the model's folder"), "{location}: {e}");
    }
    // `..` that would stay inside is rejected as well (no `..` at all).
    std::fs::write(inner.join("x"), external_bytes(&w, 0)).unwrap();
    std::fs::create_dir(inner.join("d")).unwrap();
    external_model(&inner, "d/../x", None, None);
    assert!(load_model(&model_path).unwrap_err().to_string().contains("'..'"));

    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&outside, inner.join("link.bin")).unwrap();
        external_model(&inner, "link.bin", None, None);
        let e = load_model(&model_path).unwrap_err().to_string();
        assert!(e.contains("'w'") && e.contains("outside the model's folder"), "{e}");
        // A symlinked folder pointing outside.
        std::os::unix::fs::symlink(root.path(), inner.join("up")).unwrap();
        external_model(&inner, "up/secret.bin", None, None);
        let e = load_model(&model_path).unwrap_err().to_string();
        assert!(e.contains("outside the model's folder"), "{e}");
        // A symlink that stays inside is fine.
        std::os::unix::fs::symlink(inner.join("x"), inner.join("alias.bin")).unwrap();
        external_model(&inner, "alias.bin", None, None);
        assert!(load_model(&model_path).is_ok());
    }
}

// ---------------------------------------------------------------------------------------------
// The real model

#[test]
fn minilm_imports() {
    let Some(path) = minilm_path() else {
        skip(Requirement::Models, "minilm_imports", "../shared/models/minilm-l6-v2 is absent");
        return;
    };
    let g = load_model(&path).unwrap();
    assert_eq!(g.opsets.get(""), Some(&17));
    // 516 nodes, of which 160 Constants became constant values.
    assert_eq!(g.node_count(), 516 - 160);
    let count = |op: &str| g.node_ids().into_iter().filter(|&id| g.node(id).op_type == op).count();
    assert_eq!((count("MatMul"), count("Add"), count("LayerNormalization"), count("Constant")), (48, 63, 13, 0));
    let sym = |s: &str| Dim::Sym(s.into());
    let inputs: Vec<(&str, fpx_ir::TensorType)> =
        g.inputs.iter().map(|&v| (g.value(v).name.as_str(), g.value(v).ty.clone().unwrap())).collect();
    let bs = fpx_ir::TensorType { dtype: DType::I64, shape: Some(vec![sym("batch"), sym("seq")]) };
    assert_eq!(inputs, vec![("input_ids", bs.clone()), ("attention_mask", bs.clone()), ("token_type_ids", bs)]);
    assert_eq!(g.outputs.len(), 1);
    let out = g.value(g.outputs[0]);
    assert_eq!(out.name, "last_hidden_state");
    assert_eq!(out.ty, Some(fpx_ir::TensorType { dtype: DType::F32, shape: Some(vec![sym("batch"), sym("seq"), Dim::Fixed(384)]) }));
    // 22.7M parameters, in initializers and folded Constant nodes.
    let params = g.parameter_count();
    assert!((22_500_000..23_000_000).contains(&params), "{params}");
    // 36 MatMuls read a constant weight.
    let const_w = g
        .node_ids()
        .into_iter()
        .filter(|&id| g.node(id).op_type == "MatMul" && g.node(id).inputs[1].is_some_and(|v| g.constant(v).is_some()))
        .count();
    assert_eq!(const_w, 36);
}

/// Every model and data file of the ONNX backend node tests either imports or is a clean
/// error, never a panic (in the importer or in fpx-ir's inference). `FPX_ONNX_VERBOSE=1`
/// prints each error.
#[test]
fn every_backend_node_test_imports_or_fails_cleanly() {
    let Some(dir) = onnx_node_tests_dir() else {
        skip(
            Requirement::Models,
            "every_backend_node_test_imports_or_fails_cleanly",
            "ONNX backend node tests not found (set FPX_ONNX_NODE_TESTS or run scripts/setup.sh)",
        );
        return;
    };
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    let (mut ok, mut failed, mut panicked) = (0, 0, Vec::new());
    for case in &cases {
        let model = case.join("model.onnx");
        match std::panic::catch_unwind(|| load_model(&model)) {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                failed += 1;
                let s = e.to_string();
                if std::env::var_os("FPX_ONNX_VERBOSE").is_some() {
                    println!("{}: {s}", case.file_name().unwrap().to_string_lossy());
                }
            }
            Err(_) => panicked.push(case.clone()),
        }
        for pb in std::fs::read_dir(case.join("test_data_set_0")).into_iter().flatten().flatten() {
            if std::panic::catch_unwind(|| load_tensor_pb(&pb.path())).is_err() {
                panicked.push(pb.path());
            }
        }
    }
    println!("{} node tests: {ok} import, {failed} fail cleanly", cases.len());
    assert!(panicked.is_empty(), "import panicked on {panicked:?}");
}
