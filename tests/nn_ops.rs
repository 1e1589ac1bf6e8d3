//! The NN ops added for exported vision, speech and LLaMA-style models (Conv 1-D to 3-D, the
//! normalizations, the activations, opset 23's RMSNormalization, RotaryEmbedding and Attention),
//! chained the way exports use them, against onnxruntime: `$FPX_PYTHON` builds the models with
//! onnx and runs them with onnxruntime (`tests/data/nn_ops_vs_onnxruntime.py`), and fpx runs the
//! same models through `fpx::Model` on the same inputs.

use crate::common::{compare, npy};
use fpx_test_support::data::workspace_root;
use fpx_test_support::{skip, Requirement, TempDir};
use std::process::Command;

#[test]
fn nn_op_blocks_match_onnxruntime() {
    let Ok(python) = std::env::var("FPX_PYTHON") else {
        skip(Requirement::Models, "nn_op_blocks_match_onnxruntime", "FPX_PYTHON is not set (source .fpx-env)");
        return;
    };
    let dir = TempDir::new("nn-ops-ort");
    let script = workspace_root().join("tests/data/nn_ops_vs_onnxruntime.py");
    let out = Command::new(&python).arg(&script).arg(dir.path()).output().expect("FPX_PYTHON runs");
    if out.status.code() == Some(3) {
        skip(Requirement::Models, "nn_op_blocks_match_onnxruntime", "onnx or onnxruntime is missing from FPX_PYTHON");
        return;
    }
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut models = dir.listing();
    models.sort();
    assert_eq!(models.len(), 5, "{models:?}");
    for name in models {
        let case = dir.join(&name);
        let files: Vec<String> = std::fs::read_dir(&case).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        let stem = |f: &str, prefix: &str| f.strip_prefix(prefix).and_then(|f| f.strip_suffix(".npy")).map(str::to_string);
        let inputs = files.iter().filter_map(|f| stem(f, "in_").map(|n| (n, npy(&case.join(f))))).collect();
        let model = fpx::Model::open(&case.join("model.onnx")).unwrap_or_else(|e| panic!("{name}: {e}"));
        let outputs = model.run(inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!outputs.is_empty());
        for (output, got) in outputs {
            let want = npy(&case.join(format!("ort_{output}.npy")));
            compare(&got, &want, 1e-4, 1e-5).unwrap_or_else(|e| panic!("{name} output '{output}': {e}"));
        }
    }
}
