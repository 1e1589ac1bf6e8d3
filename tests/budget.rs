//! The tensor budget: models asking for huge tensors (a few bytes of ONNX can ask for
//! gigabytes) are refused before anything is allocated, with an error naming the node, its op,
//! the shape, the size and the budget — never an aborted process. No test here allocates more
//! than a few megabytes.

use fpx::ir::ndarray::{ArrayD, IxDyn};
use fpx::ir::{Tensor, TensorBudget};
use fpx::onnx::onnx_protobuf::TensorProto;
use fpx_test_support::data::workspace_root;
use fpx_test_support::onnx::{model, node, node_with, save, value, value_info, INT64};
use fpx_test_support::TempDir;
use std::path::{Path, PathBuf};
use std::process::Command;

/// An int64 initializer.
fn int64_tensor(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.dims = dims.to_vec();
    t.data_type = INT64;
    t.int64_data = values.to_vec();
    t
}

fn f32s(shape: &[usize], v: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::from(ArrayD::from_shape_vec(IxDyn(shape), vec![v; n]).unwrap())
}

/// `ConstantOfShape([2^31])`: 8 GiB of float from a model of about 160 bytes.
fn constant_of_shape_model(dir: &TempDir) -> PathBuf {
    let m = model(
        vec![node("ConstantOfShape", "huge", &["shape"], &["y"])],
        vec![],
        vec![value("y", &["?"])],
        vec![int64_tensor("shape", &[1], &[1 << 31])],
    );
    let path = dir.join("cos.onnx");
    save(&m, &path);
    path
}

/// `Expand(x, target)` with x a graph input of shape [1].
fn expand_model(dir: &TempDir, target: &[i64]) -> PathBuf {
    let m = model(
        vec![node("Expand", "grow", &["x", "target"], &["y"])],
        vec![value("x", &["1"])],
        vec![value("y", &["?", "?"])],
        vec![int64_tensor("target", &[target.len() as i64], target)],
    );
    let path = dir.join("expand.onnx");
    save(&m, &path);
    path
}

/// Asserts that `err` refuses node `name` (op `op`) of `shape`, naming the size and the way out.
fn refuses(err: &str, name: &str, op: &str, shape: &str, size: &str) {
    for needle in [&format!("node '{name}' ({op})"), shape, size, "tensor budget of 4 GiB", "FPX_MAX_TENSOR_BYTES"] {
        assert!(err.contains(needle), "'{needle}' not in: {err}");
    }
}

fn run_err(path: &Path, inputs: Vec<(String, Tensor)>) -> String {
    let m = fpx::open(path).expect("opens: the budget applies when the model runs");
    assert_eq!(m.budget(), TensorBudget::default(), "tests run without FPX_MAX_TENSOR_BYTES");
    m.run(inputs).expect_err("over the budget").to_string()
}

#[test]
fn constant_of_shape_over_the_budget_is_refused_not_folded() {
    let dir = TempDir::new("budget-cos");
    let path = constant_of_shape_model(&dir);
    assert!(std::fs::metadata(&path).unwrap().len() < 200);
    // Folding leaves the node alone (its inferred size is over the folding limit) ...
    let m = fpx::open(&path).unwrap();
    assert!(m.graph().node_ids().iter().any(|&n| m.graph().node(n).op_type == "ConstantOfShape"));
    // ... and running it is an error naming it.
    let err = run_err(&path, vec![]);
    refuses(&err, "huge", "ConstantOfShape", "[2147483648]", "8 GiB (8589934592 bytes)");
}

#[test]
fn expand_matmul_and_gather_over_the_budget_are_refused() {
    let dir = TempDir::new("budget-ops");
    let err = run_err(&expand_model(&dir, &[1 << 29, 4]), vec![("x".into(), f32s(&[1], 1.0))]);
    refuses(&err, "grow", "Expand", "[536870912, 4]", "8 GiB");

    // [65536, 1] x [1, 65536]: 512 KiB of operands, 16 GiB of product.
    let m = model(
        vec![node("MatMul", "outer", &["a", "b"], &["y"])],
        vec![value("a", &["65536", "1"]), value("b", &["1", "65536"])],
        vec![value("y", &["65536", "65536"])],
        vec![],
    );
    let path = dir.join("matmul.onnx");
    save(&m, &path);
    let err = run_err(&path, vec![("a".into(), f32s(&[65536, 1], 1.0)), ("b".into(), f32s(&[1, 65536], 1.0))]);
    refuses(&err, "outer", "MatMul", "[65536, 65536]", "16 GiB");

    // 2^20 indices into a table of rows of 65536 floats: 256 GiB.
    let m = model(
        vec![node_with("Gather", "lookup", &["table", "idx"], &["y"], vec![])],
        vec![value("table", &["1", "65536"]), value_info("idx", INT64, Some(&["1048576"]))],
        vec![value("y", &["1048576", "65536"])],
        vec![],
    );
    let path = dir.join("gather.onnx");
    save(&m, &path);
    let idx = Tensor::from(ArrayD::from_shape_vec(IxDyn(&[1 << 20]), vec![0i64; 1 << 20]).unwrap());
    let err = run_err(&path, vec![("table".into(), f32s(&[1, 65536], 1.0)), ("idx".into(), idx)]);
    refuses(&err, "lookup", "Gather", "[1048576, 65536]", "256 GiB");
}

#[test]
fn a_budget_set_on_the_model_applies_to_its_runs() {
    let dir = TempDir::new("budget-set");
    let path = expand_model(&dir, &[1024, 1024]); // 4 MiB
    let x = || vec![("x".to_string(), f32s(&[1], 2.0))];
    let mut m = fpx::open(&path).unwrap();
    let y = m.run(x()).unwrap();
    assert_eq!(y[0].1.shape(), &[1024, 1024]);
    m.set_budget(TensorBudget::new(1 << 20));
    let err = m.run(x()).unwrap_err().to_string();
    for needle in ["node 'grow' (Expand)", "[1024, 1024]", "4 MiB", "tensor budget of 1 MiB"] {
        assert!(err.contains(needle), "'{needle}' not in: {err}");
    }
}

fn fpx_cli(args: &[&str], budget: Option<&str>) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fpx"));
    cmd.args(args).env_remove(fpx::ir::budget::ENV_VAR);
    if let Some(b) = budget {
        cmd.env(fpx::ir::budget::ENV_VAR, b);
    }
    let out = cmd.output().expect("fpx runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked") && !stderr.contains("memory allocation"), "{stderr}");
    (out.status.code(), stderr)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn the_cli_inspects_and_refuses_to_run_a_huge_constant_of_shape() {
    let dir = TempDir::new("budget-cli-cos");
    let path = constant_of_shape_model(&dir);
    let (code, err) = fpx_cli(&["inspect", s(&path)], None);
    assert_eq!(code, Some(0), "inspect describes the model without materializing it: {err}");
    let (code, err) = fpx_cli(&["run", s(&path), "--output-dir", s(&dir.join("out"))], None);
    assert_eq!(code, Some(1), "{err}");
    refuses(&err, "huge", "ConstantOfShape", "[2147483648]", "8 GiB");
}

#[test]
fn the_environment_variable_sets_the_budget() {
    let dir = TempDir::new("budget-cli-env");
    let path = expand_model(&dir, &[1024, 1024]); // a 4 MiB output
    let x = dir.join("x.npy");
    fpx::runtime::npy::write(&x, &f32s(&[1], 3.0)).unwrap();
    let (input, out) = (format!("x={}", s(&x)), dir.join("out"));
    let run = |budget: Option<&str>| fpx_cli(&["run", s(&path), "--input", &input, "--output-dir", s(&out)], budget);
    let (code, err) = run(Some("1M"));
    assert_eq!(code, Some(1), "{err}");
    for needle in ["node 'grow' (Expand)", "[1024, 1024]", "4 MiB", "tensor budget of 1 MiB", "FPX_MAX_TENSOR_BYTES"] {
        assert!(err.contains(needle), "'{needle}' not in: {err}");
    }
    let (code, err) = run(Some("4194304"));
    assert_eq!(code, Some(0), "exactly 4 MiB fits: {err}");
    let (code, err) = run(None);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run(Some("lots"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("invalid tensor budget 'lots'") && err.contains("FPX_MAX_TENSOR_BYTES"), "{err}");
    // The command-line option says the same for one run (and wins over the environment).
    let with_flag = |flag: &str, env: Option<&str>| {
        fpx_cli(&["run", s(&path), "--input", &input, "--output-dir", s(&out), "--max-tensor-bytes", flag], env)
    };
    let (code, err) = with_flag("1MiB", None);
    assert!(code == Some(1) && err.contains("node 'grow' (Expand)") && err.contains("tensor budget of 1 MiB"), "{err}");
    let (code, err) = with_flag("8M", Some("1M"));
    assert_eq!(code, Some(0), "the flag raises the budget: {err}");
}

/// The bundled example runs to the same outputs under the default budget and under one just
/// large enough for it; a tiny budget refuses it, so the budget reaches the kernels it uses.
#[test]
fn the_example_runs_identically_within_the_budget() {
    let ex = workspace_root().join("examples/tiny-transformer");
    let input = fpx::runtime::npy::read(&ex.join("input.npy")).unwrap();
    let mut m = fpx::open(&ex.join("model.onnx")).unwrap();
    let want = m.run(vec![("input".into(), input.clone())]).unwrap();
    m.set_budget(TensorBudget::new(1 << 20));
    let got = m.run(vec![("input".into(), input.clone())]).unwrap();
    assert_eq!(want.len(), got.len());
    for ((n1, a), (n2, b)) in want.iter().zip(&got) {
        assert_eq!((n1, a.shape()), (n2, b.shape()));
        assert_eq!(a.to_f64_vec(), b.to_f64_vec(), "output {n1}");
    }
    m.set_budget(TensorBudget::new(64));
    let err = m.run(vec![("input".into(), input)]).unwrap_err().to_string();
    assert!(err.contains("more than the tensor budget of 64 bytes"), "{err}");
}

/// Quantized products are checked too: the reference QuantMatMul kernel and the natively
/// compiled one (N comes from the node, so the output size is the node's to claim).
#[test]
fn quantized_products_are_checked_on_both_paths() {
    let dir = TempDir::new("budget-qmm");
    let w: Vec<f32> = (0..64 * 64).map(|k| ((k * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let m = model(
        vec![node("MatMul", "mm", &["x", "w"], &["y"])],
        vec![value("x", &["m", "64"])],
        vec![value("y", &["m", "64"])],
        vec![fpx_test_support::onnx::float_tensor("w", &[64, 64], &w)],
    );
    let path = dir.join("mm.onnx");
    save(&m, &path);
    let quantize = fpx::QuantizeOptions::new(fpx::WeightScheme::Fixed(fpx::quant::Format::Fp6E3M2));
    let x = || vec![("x".to_string(), f32s(&[256, 64], 0.5))]; // a 64 KiB output
    let small = TensorBudget::new(32 << 10);
    let check = |err: String| {
        for needle in ["(QuantMatMul)", "[256, 64]", "64 KiB", "tensor budget of 32 KiB"] {
            assert!(err.contains(needle), "'{needle}' not in: {err}");
        }
    };
    let mut reference = fpx::Model::open_with(&path, &quantize).unwrap();
    assert_eq!(reference.run(x()).unwrap()[0].1.shape(), &[256, 64]);
    reference.set_budget(small);
    check(reference.run(x()).unwrap_err().to_string());
    let opts = fpx::CompileOptions { quantize, ..crate::common::compile_options() };
    let mut native = fpx::compile(&path, &opts).unwrap().load().unwrap();
    assert!(native.native_target().is_some(), "native kernels are in use");
    assert_eq!(native.run(x()).unwrap()[0].1.shape(), &[256, 64]);
    native.set_budget(small);
    check(native.run(x()).unwrap_err().to_string());
}
