//! Helpers shared by the integration tests: locating test data, comparing tensors.

use fpx::ir::Tensor;
use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/models/<name>` beside the checkout, if present.
pub fn shared_model_dir(name: &str) -> Option<PathBuf> {
    let dir = repo_root().join("..").join("shared").join("models").join(name);
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
    let lib = repo_root().join(".venv").join("lib");
    for entry in std::fs::read_dir(lib).ok()?.flatten() {
        let p = entry.path().join("site-packages/onnx/backend/test/data/node");
        if p.is_dir() {
            return Some(p);
        }
    }
    None
}

/// Prints why a test is skipped (visible with the default test harness output capture off or
/// on failure; also on stderr for CI logs).
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIP {test}: {why}");
}

/// Compares `got` with `want`: same element type and shape; floats within
/// `atol + rtol * |want|` (NaN matches NaN), everything else exactly. Returns a description of the
/// first difference.
pub fn compare(got: &Tensor, want: &Tensor, rtol: f64, atol: f64) -> Result<(), String> {
    if got.dtype() != want.dtype() {
        return Err(format!("element type {} != expected {}", got.dtype(), want.dtype()));
    }
    if got.shape() != want.shape() {
        return Err(format!("shape {:?} != expected {:?}", got.shape(), want.shape()));
    }
    if want.dtype().is_float() {
        let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            let ok = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= atol + rtol * b.abs();
            if !ok {
                return Err(format!("element {i}: {a} != expected {b}"));
            }
        }
    } else {
        let (g, w) = (got.to_i64_vec(), want.to_i64_vec());
        if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i]) {
            return Err(format!("element {i}: {} != expected {}", g[i], w[i]));
        }
    }
    Ok(())
}

/// Largest absolute difference between two float tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.to_f64_vec().iter().zip(b.to_f64_vec()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Reads a `.npy` file that a test depends on.
pub fn npy(path: &Path) -> Tensor {
    fpx::runtime::npy::read(path).unwrap_or_else(|e| panic!("{e}"))
}

/// Builds small ONNX models in Rust for tests (no Python needed).
pub mod onnx_builder {
    use fpx::onnx::onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
    use fpx::onnx::onnx_protobuf::{
        type_proto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
        ValueInfoProto,
    };
    use protobuf::MessageField;
    use std::path::Path;

    /// ONNX element type code of float.
    pub const FLOAT: i32 = 1;

    /// A float tensor value with dims given as numbers or symbolic names.
    pub fn value(name: &str, dims: &[&str]) -> ValueInfoProto {
        let mut shape = TensorShapeProto::new();
        shape.dim = dims
            .iter()
            .map(|d| {
                let mut x = Dimension::new();
                x.value = Some(match d.parse::<i64>() {
                    Ok(n) => dimension::Value::DimValue(n),
                    Err(_) => dimension::Value::DimParam(d.to_string()),
                });
                x
            })
            .collect();
        let mut tt = type_proto::Tensor::new();
        tt.elem_type = FLOAT;
        tt.shape = MessageField::some(shape);
        let mut tp = TypeProto::new();
        tp.value = Some(type_proto::Value::TensorType(tt));
        let mut v = ValueInfoProto::new();
        v.name = name.into();
        v.type_ = MessageField::some(tp);
        v
    }

    /// A node without attributes.
    pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = name.into();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = outputs.iter().map(|s| s.to_string()).collect();
        n
    }

    /// A model of the default domain at opset 17.
    pub fn model(nodes: Vec<NodeProto>, inputs: Vec<ValueInfoProto>, outputs: Vec<ValueInfoProto>, inits: Vec<TensorProto>) -> ModelProto {
        let mut g = GraphProto::new();
        g.name = "test".into();
        g.node = nodes;
        g.input = inputs;
        g.output = outputs;
        g.initializer = inits;
        let mut o = OperatorSetIdProto::new();
        o.version = 17;
        let mut m = ModelProto::new();
        m.ir_version = 8;
        m.opset_import = vec![o];
        m.graph = MessageField::some(g);
        m
    }

    /// Writes a model to a file.
    pub fn save(m: &ModelProto, path: &Path) {
        std::fs::write(path, m.write_to_bytes().expect("serializes")).expect("writable");
    }
}

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `fpx-test-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!("fpx-test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    /// A path inside the folder.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
