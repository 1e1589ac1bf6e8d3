//! The `fpx` binary on good and bad input: every failure is a clear message and a non-zero
//! exit, never a panic.

use fpx::ir::Tensor;
use fpx::onnx::onnx_protobuf::tensor_proto::DataLocation;
use fpx::onnx::onnx_protobuf::StringStringEntryProto;
use fpx_test_support::data::workspace_root;
use fpx_test_support::onnx::{model, node, save, value};
use fpx_test_support::TempDir;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn fpx(args: &[&str]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_fpx")).args(args).output().expect("fpx runs");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// Asserts a clean failure whose message contains every one of `needles`.
fn fails_with(o: &Outcome, needles: &[&str]) {
    assert_eq!(o.code, Some(1), "expected exit 1; stderr: {}", o.stderr);
    assert!(!o.stderr.contains("panicked"), "panic: {}", o.stderr);
    assert!(o.stderr.starts_with("error: "), "stderr: {}", o.stderr);
    for n in needles {
        assert!(o.stderr.contains(n), "'{n}' not in: {}", o.stderr);
    }
}

fn example() -> PathBuf {
    workspace_root().join("examples/tiny-transformer")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn write_npy(path: &Path, t: &Tensor) {
    fpx::runtime::npy::write(path, t).expect("writes");
}

#[test]
fn run_writes_outputs_matching_onnxruntime() {
    let dir = TempDir::new("cli-run");
    let ex = example();
    let o =
        fpx(&["run", s(&ex.join("model.onnx")), "--input", &format!("input={}", s(&ex.join("input.npy"))), "--output-dir", s(dir.path())]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(o.stdout.contains("output: float [2, 7, 64]"), "{}", o.stdout);
    assert!(o.stdout.contains("ran in"), "{}", o.stdout);
    let got = crate::common::npy(&dir.join("output.npy"));
    let want = crate::common::npy(&ex.join("ref_output.npy"));
    let err = crate::common::max_abs_diff(&got, &want);
    assert!(err < 1e-4, "max abs error vs onnxruntime {err}");
}

#[test]
fn inspect_reports_weights_and_json() {
    let m = example().join("model.onnx");
    let o = fpx(&["inspect", s(&m)]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    for needle in
        ["ai.onnx=20", "input: float[batch, seq, 64]", "LayerNormalization", "matmuls with a constant weight", "MatMul W[64, 256]"]
    {
        assert!(o.stdout.contains(needle), "'{needle}' missing from:\n{}", o.stdout);
    }
    let j = fpx(&["inspect", s(&m), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).expect("valid JSON");
    assert_eq!(v["inputs"][0]["name"], "input");
    assert_eq!(v["opsets"][""], 20);
    let weights = v["weight_matmuls"].as_array().unwrap();
    assert!(weights.iter().any(|w| w["op"] == "MatMul" && w["weight_shape"] == serde_json::json!([64, 64])), "{weights:?}");
    assert!(weights.iter().any(|w| w["op"] == "Gemm" && w["transposed"] == true), "{weights:?}");
}

#[test]
fn output_names_are_sanitized() {
    assert_eq!(fpx::output_file_name("last_hidden_state"), "last_hidden_state.npy");
    assert_eq!(fpx::output_file_name("out:0/a.b"), "out_0_a_b.npy");
}

#[test]
fn garbage_and_truncated_models_are_rejected() {
    let dir = TempDir::new("cli-garbage");
    let garbage = dir.join("garbage.onnx");
    std::fs::write(&garbage, b"this is not a protobuf \xff\xfe\x00\x01").unwrap();
    fails_with(&fpx(&["run", s(&garbage), "-o", s(dir.path())]), &["garbage.onnx"]);
    let bytes = std::fs::read(example().join("model.onnx")).unwrap();
    let truncated = dir.join("truncated.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(&fpx(&["run", s(&truncated), "-o", s(dir.path())]), &["truncated.onnx"]);
    fails_with(&fpx(&["inspect", s(&truncated)]), &["truncated.onnx"]);
    fails_with(&fpx(&["run", s(&dir.join("missing.onnx")), "-o", s(dir.path())]), &["does not exist"]);
}

#[test]
fn bad_inputs_name_the_input() {
    let dir = TempDir::new("cli-inputs");
    let ex = example();
    let m = ex.join("model.onnx");
    let good = format!("input={}", s(&ex.join("input.npy")));
    let run = |extra: &[&str]| {
        let mut a = vec!["run", s(&m), "-o", s(dir.path())];
        a.extend_from_slice(extra);
        fpx(&a)
    };
    fails_with(&run(&[]), &["input 'input'", "missing"]);
    fails_with(&run(&["--input", &good, "--input", &good]), &["given more than once"]);
    let extra = format!("bogus={}", s(&ex.join("input.npy")));
    fails_with(&run(&["--input", &good, "--input", &extra]), &["'bogus'", "no such input", "'input'"]);
    fails_with(&run(&["--input", "input"]), &["NAME=FILE.npy"]);

    let mistyped = dir.join("ints.npy");
    write_npy(&mistyped, &Tensor::vec_i64(vec![1; 2 * 7 * 64]).reshape(&[2, 7, 64]).unwrap());
    fails_with(&run(&["--input", &format!("input={}", s(&mistyped))]), &["input 'input'", "float", "int64"]);
    let misshaped = dir.join("shape.npy");
    write_npy(&misshaped, &Tensor::from(fpx::ir::ndarray::ArrayD::<f32>::zeros(fpx::ir::ndarray::IxDyn(&[2, 7, 32]))));
    fails_with(&run(&["--input", &format!("input={}", s(&misshaped))]), &["input 'input'", "dimension 2 must be 64"]);
    let rank = dir.join("rank.npy");
    write_npy(&rank, &Tensor::from(fpx::ir::ndarray::ArrayD::<f32>::zeros(fpx::ir::ndarray::IxDyn(&[7, 64]))));
    fails_with(&run(&["--input", &format!("input={}", s(&rank))]), &["input 'input'", "rank 3"]);

    let not_npy = dir.join("not.npy");
    std::fs::write(&not_npy, b"col1,col2\n1,2\n").unwrap();
    fails_with(&run(&["--input", &format!("input={}", s(&not_npy))]), &["not.npy", "not a .npy file"]);
    fails_with(&run(&["--input", &format!("input={}", s(&dir.join("absent.npy")))]), &["absent.npy", "cannot read"]);
}

#[test]
fn unsupported_op_names_node_op_domain_and_opset() {
    let dir = TempDir::new("cli-op");
    let p = dir.join("m.onnx");
    save(&model(vec![node("Frobnicate", "frob_1", &["x"], &["y"])], vec![value("x", &["2"])], vec![value("y", &["2"])], vec![]), &p);
    fails_with(&fpx(&["run", s(&p), "-o", s(dir.path())]), &["frob_1", "Frobnicate", "domain ''", "opset 17"]);
}

#[test]
fn cyclic_graph_is_rejected() {
    let dir = TempDir::new("cli-cycle");
    let p = dir.join("m.onnx");
    let nodes = vec![node("Add", "a", &["x", "c"], &["b"]), node("Relu", "r", &["b"], &["c"])];
    save(&model(nodes, vec![value("x", &["2"])], vec![value("c", &["2"])], vec![]), &p);
    fails_with(&fpx(&["run", s(&p), "-o", s(dir.path())]), &["cycle"]);
}

#[test]
fn external_data_outside_the_model_folder_is_never_read() {
    let dir = TempDir::new("cli-ext");
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(dir.join("secret.bin"), [0u8; 16]).unwrap();
    for location in ["../secret.bin", s(&dir.join("secret.bin"))] {
        let mut w =
            fpx::onnx::tensor_to_proto("w", &Tensor::from(fpx::ir::ndarray::ArrayD::<f32>::zeros(fpx::ir::ndarray::IxDyn(&[2, 2]))));
        w.raw_data.clear();
        w.data_location = DataLocation::EXTERNAL.into();
        let mut e = StringStringEntryProto::new();
        e.key = "location".into();
        e.value = location.into();
        w.external_data.push(e);
        let p = models.join("m.onnx");
        save(
            &model(vec![node("MatMul", "mm", &["x", "w"], &["y"])], vec![value("x", &["1", "2"])], vec![value("y", &["1", "2"])], vec![w]),
            &p,
        );
        fails_with(&fpx(&["run", s(&p), "-o", s(dir.path())]), &["'w'", location]);
    }
}

#[test]
fn help_teaches() {
    let o = fpx(&["run", "--help"]);
    assert_eq!(o.code, Some(0));
    assert!(o.stdout.contains("NAME=FILE.npy") && o.stdout.contains("becomes '_'"), "{}", o.stdout);
    let o = fpx(&["--help"]);
    assert!(o.stdout.contains("inspect") && o.stdout.contains("run"), "{}", o.stdout);
}
