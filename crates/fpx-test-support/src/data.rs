//! Where optional test data lives.

use std::path::PathBuf;

/// The workspace root (two folders above this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}

/// `../shared/models/<name>` beside the checkout, if it holds a `model.onnx`.
pub fn shared_model_dir(name: &str) -> Option<PathBuf> {
    let dir = workspace_root().join("..").join("shared").join("models").join(name);
    dir.join("model.onnx").is_file().then_some(dir)
}

/// The ONNX backend node tests of the onnx 1.22.0 wheel: `$FPX_ONNX_NODE_TESTS`, or the
/// project venv's copy.
pub fn onnx_node_tests_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FPX_ONNX_NODE_TESTS") {
        let p = PathBuf::from(p);
        if p.is_dir() {
            return Some(p);
        }
    }
    let lib = workspace_root().join(".venv").join("lib");
    for entry in std::fs::read_dir(lib).ok()?.flatten() {
        let p = entry.path().join("site-packages/onnx/backend/test/data/node");
        if p.is_dir() {
            return Some(p);
        }
    }
    None
}
