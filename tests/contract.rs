//! The quantized-product contract end to end: a `fpx:QuantMatMul` whose attributes do not form a
//! valid `QuantGemm` is refused by `compile` and `run` alike, naming the node; out-of-range
//! quantization options are refused by every command before any work.

use fpx::onnx::onnx_protobuf::{AttributeProto, ModelProto, TensorProto};
use fpx::quant::layout::PackedShape;
use fpx_test_support::onnx::{attr_int, attr_string, float_tensor, model_with_opsets, node_with, opset, save, value};
use fpx_test_support::TempDir;
use std::path::Path;

fn fpx_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fpx")).args(args).output().expect("fpx runs")
}

/// A model of one `fpx:QuantMatMul` (K = 64, N = 16, fp6-e3m2 planes of zeros) with `attrs`.
fn quant_matmul_model(attrs: Vec<AttributeProto>) -> ModelProto {
    let (k, n) = (64, 16);
    let mut packed = TensorProto::new();
    packed.name = "packed".into();
    let bytes = PackedShape::new(n, k, 6).total_bytes();
    packed.dims = vec![bytes as i64];
    packed.data_type = 2; // uint8
    packed.raw_data = vec![0u8; bytes];
    let scales = float_tensor("scales", &[1, n as i64], &vec![1.0; n]);
    let mut node = node_with("QuantMatMul", "qmm_bad", &["x", "packed", "scales"], &["y"], attrs);
    node.domain = "fpx".into();
    model_with_opsets(
        vec![node],
        vec![value("x", &["2", "64"])],
        vec![value("y", &["2", "16"])],
        vec![packed, scales],
        vec![opset("", 17), opset("fpx", 1)],
    )
}

fn good_attrs() -> Vec<AttributeProto> {
    vec![attr_string("format", "fp6-e3m2"), attr_int("k", 64), attr_int("n", 16), attr_int("group_size", 0)]
}

/// `fpx compile` and `fpx run` both fail with exit 1 and every one of `needles` in the message.
fn compile_and_run_refuse(model: &Path, dir: &TempDir, needles: &[&str]) {
    let x = dir.join("x.npy");
    fpx::runtime::npy::write(&x, &fpx::ir::Tensor::from(fpx::ir::ndarray::ArrayD::<f32>::zeros(fpx::ir::ndarray::IxDyn(&[2, 64]))))
        .unwrap();
    let m = model.to_str().unwrap();
    let runs = [
        fpx_cli(&["compile", m, "-o", dir.join("out.fpx").to_str().unwrap(), "-q"]),
        fpx_cli(&["run", m, "--input", &format!("x={}", x.display()), "-o", dir.path().to_str().unwrap()]),
    ];
    for (what, o) in ["compile", "run"].iter().zip(runs) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        for needle in needles {
            assert!(err.contains(needle) && !err.contains("panicked"), "{what}: '{needle}' not in {err}");
        }
    }
    assert!(!dir.join("out.fpx").exists(), "nothing written on failure");
}

#[test]
fn invalid_quant_matmul_attributes_are_refused_by_compile_and_run_naming_the_node() {
    let dir = TempDir::new("contract");
    // The well-formed node runs (the model is fine apart from what each case breaks).
    let good = dir.join("good.onnx");
    save(&quant_matmul_model(good_attrs()), &good);
    let x = vec![("x".to_string(), fpx::ir::Tensor::from(fpx::ir::ndarray::ArrayD::<f32>::ones(fpx::ir::ndarray::IxDyn(&[2, 64]))))];
    let y = fpx::open(&good).unwrap().run(x).unwrap();
    assert_eq!(y[0].1.shape(), [2, 16]);

    let cases: Vec<(&str, AttributeProto, &str)> = vec![
        ("format", attr_string("format", "fp7"), "unknown weight format 'fp7'"),
        ("negative group", attr_int("group_size", -1), "'group_size' = -1 must not be negative"),
        ("huge group", attr_int("group_size", 1 << 40), "must be at most"),
        ("activations", attr_string("activations", "int3"), "unknown activations 'int3'"),
        ("int8 with e3m2", attr_string("activations", "int8"), "fp6-e3m2 weights cannot take int8 activations"),
    ];
    for (case, attr, needle) in cases {
        let mut attrs: Vec<AttributeProto> = good_attrs().into_iter().filter(|a| a.name != attr.name).collect();
        attrs.push(attr);
        let path = dir.join(format!("{}.onnx", case.replace(' ', "_")));
        save(&quant_matmul_model(attrs), &path);
        compile_and_run_refuse(&path, &dir, &["node 'qmm_bad'", needle]);
    }
}

/// An artifact cannot carry such a node either: the writer refuses it, naming the node (the
/// reader's refusal of a crafted file is fpx-artifact's test).
#[test]
fn an_artifact_with_an_invalid_quant_matmul_is_not_written() {
    let model = fpx_test_support::data::workspace_root().join("examples/tiny-transformer/model.onnx");
    let mut contents = fpx::compile(&model, &fpx::CompileOptions::default()).unwrap().contents;
    let g = &mut contents.graph;
    let id = g.node_ids().into_iter().find(|&id| fpx::ir::ops::quant_matmul::is_quant_matmul(g.node(id))).unwrap();
    let name = g.node(id).name.clone();
    g.node_mut(id).attrs.insert("format".into(), fpx::ir::Attribute::String("fp7".into()));
    let err = fpx::artifact::to_bytes(&contents).unwrap_err().to_string();
    assert!(err.contains(&format!("node '{name}'")) && err.contains("unknown weight format 'fp7'"), "{err}");
}

#[test]
fn out_of_range_group_sizes_are_refused_by_every_command() {
    let ex = fpx_test_support::data::workspace_root().join("examples/tiny-transformer");
    let (model, input) = (ex.join("model.onnx"), format!("input={}", ex.join("input.npy").display()));
    let dir = TempDir::new("contract-group");
    let m = model.to_str().unwrap();
    let out = dir.path().to_str().unwrap();
    let huge = u64::MAX.to_string();
    for args in [
        vec!["compile", m, "-o", "/nonexistent/never.fpx", "--group-size", &huge],
        vec!["run", m, "--input", &input, "-o", out, "--weights", "int4", "--group-size", &huge],
        vec!["bench", m, "--input", &input, "--weights", "int4", "--group-size", &huge, "--iters", "1"],
    ] {
        let o = fpx_cli(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&format!("group size {huge} must be at most")), "{args:?}: {err}");
    }
}
