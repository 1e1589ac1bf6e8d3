//! Tensors and parsing: every element type through raw and typed fields, and malformed model bytes.

use super::*;

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
