//! External data (confined to the model's folder) and the real model.

use super::*;

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

#[test]
fn fifos_and_devices_are_refused_at_once() {
    use fpx_test_support::special::{special_files, within_10s};
    let dir = TempDir::new("onnx-special");
    // As the model, and as a `.pb` tensor file.
    for (path, want) in special_files(&dir, "model.onnx") {
        let shown = path.display().to_string();
        let p = path.clone();
        let e = within_10s("load_model", move || load_model(&p).unwrap_err().to_string());
        assert!(e.contains(&shown) && e.contains(want), "{e}");
        let e = within_10s("load_tensor_pb", move || load_tensor_pb(&path).unwrap_err().to_string());
        assert!(e.contains(&shown) && e.contains(want), "{e}");
    }
    // As external data: a FIFO inside the model's folder, and a symlink to /dev/zero (which
    // resolves outside the folder).
    let ext = TempDir::new("onnx-special-ext");
    let status = std::process::Command::new("mkfifo").arg(ext.join("w.bin")).status().unwrap();
    assert!(status.success());
    std::os::unix::fs::symlink("/dev/zero", ext.join("zero.bin")).unwrap();
    for (location, want) in [("w.bin", "is a FIFO, not a regular file"), ("zero.bin", "outside the model's folder")] {
        external_model(ext.path(), location, None, None);
        let model_path = ext.join("model.onnx");
        let e = within_10s("load_model", move || load_model(&model_path).unwrap_err().to_string());
        assert!(e.contains(location) && e.contains(want), "{e}");
    }
}
