//! Real models end to end through the library (the same path as `fpx run`).

use crate::common::{max_abs_diff, npy};
use fpx_test_support::data::{shared_model_dir, workspace_root};
use fpx_test_support::{skip, Requirement};

#[test]
fn minilm_matches_onnxruntime() {
    let Some(dir) = shared_model_dir("minilm-l6-v2") else {
        skip(
            Requirement::Models,
            "minilm_matches_onnxruntime",
            "../shared/models/minilm-l6-v2 is absent (it sits beside the checkout in CI)",
        );
        return;
    };
    let model = fpx::Model::open(&dir.join("model.onnx")).expect("MiniLM imports");
    let inputs =
        ["input_ids", "attention_mask", "token_type_ids"].iter().map(|n| (n.to_string(), npy(&dir.join(format!("{n}.npy"))))).collect();
    let out = model.run(inputs).expect("MiniLM runs");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "last_hidden_state");
    let want = npy(&dir.join("ref_last_hidden_state.npy"));
    let err = max_abs_diff(&out[0].1, &want);
    eprintln!("MiniLM last_hidden_state max abs error vs onnxruntime: {err:.3e}");
    assert!(err <= 1e-4, "max abs error {err}");
}

#[test]
fn bundled_example_matches_onnxruntime_at_another_shape_too() {
    let ex = workspace_root().join("examples/tiny-transformer");
    let model = fpx::Model::open(&ex.join("model.onnx")).expect("example imports");
    let out = model.run(vec![("input".into(), npy(&ex.join("input.npy")))]).expect("runs");
    let err = max_abs_diff(&out[0].1, &npy(&ex.join("ref_output.npy")));
    assert!(err < 1e-4, "max abs error {err}");
    // Symbolic batch and seq: a different shape runs too and keeps its shape.
    let x = npy(&ex.join("input.npy"));
    let sub = x.reshape(&[1, 14, 64]).unwrap();
    let out = model.run(vec![("input".into(), sub)]).expect("runs at [1, 14, 64]");
    assert_eq!(out[0].1.shape(), &[1, 14, 64]);
}
