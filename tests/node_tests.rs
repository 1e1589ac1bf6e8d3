//! The ONNX backend node tests shipped in the onnx 1.22.0 wheel, run as a suite: every case
//! whose ops fpx supports runs through the same path as `fpx run` (import, simplify, CPU
//! executor) and is compared with the stored outputs (rtol 1e-3, atol 1e-5; integers and
//! bools exactly). Cases that cannot pass are listed with a reason in
//! `tests/data/node_test_exclusions.txt`; a listed case that passes fails the suite, so the
//! list stays true.

use crate::common::compare;
use fpx::ir::ops::OpRegistry;
use fpx::onnx::onnx_protobuf::{Message, ModelProto};
use fpx_test_support::data::{onnx_node_tests_dir, workspace_root};
use fpx_test_support::{skip, Requirement};
use std::collections::BTreeMap;
use std::path::Path;

const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-5;

/// `test_name -> reason` from the committed exclusion list.
fn exclusions() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(workspace_root().join("tests/data/node_test_exclusions.txt")).expect("exclusion list exists");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, reason) = l.split_once('#').unwrap_or_else(|| panic!("exclusion '{l}' has no '# reason'"));
            let reason = reason.trim();
            assert!(!reason.is_empty(), "exclusion '{l}' has an empty reason");
            (name.trim().to_string(), reason.to_string())
        })
        .collect()
}

/// True when every node of the case's model is an op fpx registers (the suite's scope).
fn in_scope(model: &Path, registry: &OpRegistry) -> bool {
    let Ok(bytes) = std::fs::read(model) else {
        return false;
    };
    let Ok(m) = ModelProto::parse_from_bytes(&bytes) else {
        return false;
    };
    let g = m.graph.get_or_default();
    !g.node.is_empty() && g.node.iter().all(|n| registry.get(&n.domain, &n.op_type).is_some())
}

/// Runs one case; `Err` describes the failure.
fn run_case(dir: &Path) -> Result<(), String> {
    let model = fpx::Model::open(&dir.join("model.onnx")).map_err(|e| format!("load: {e}"))?;
    let data = dir.join("test_data_set_0");
    let read = |prefix: &str| -> Result<Vec<fpx::ir::Tensor>, String> {
        let mut out = Vec::new();
        for i in 0.. {
            let p = data.join(format!("{prefix}_{i}.pb"));
            if !p.exists() {
                break;
            }
            out.push(fpx::onnx::load_tensor_pb(&p).map_err(|e| format!("{prefix}_{i}.pb: {e}"))?.1);
        }
        Ok(out)
    };
    let inputs = read("input")?;
    let expected = read("output")?;
    let names: Vec<String> = model.graph().inputs.iter().map(|&v| model.graph().value(v).name.clone()).collect();
    if names.len() != inputs.len() {
        return Err(format!("model has {} inputs, test data {}", names.len(), inputs.len()));
    }
    let outputs = model.run(names.into_iter().zip(inputs).collect()).map_err(|e| format!("run: {e}"))?;
    if outputs.len() != expected.len() {
        return Err(format!("{} outputs, expected {}", outputs.len(), expected.len()));
    }
    for (k, ((name, got), want)) in outputs.iter().zip(&expected).enumerate() {
        compare(got, want, RTOL, ATOL).map_err(|e| format!("output {k} '{name}': {e}"))?;
    }
    Ok(())
}

#[test]
fn onnx_backend_node_tests() {
    let Some(root) = onnx_node_tests_dir() else {
        skip(
            Requirement::Models,
            "onnx_backend_node_tests",
            "ONNX node tests not found: set FPX_ONNX_NODE_TESTS or run scripts/setup.sh (installs onnx==1.22.0 into .venv)",
        );
        return;
    };
    let registry = OpRegistry::standard();
    let excluded = exclusions();
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .expect("node test folder is readable")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    cases.sort();
    let (mut passed, mut failed, mut skipped, mut out_of_scope) = (Vec::new(), Vec::new(), 0usize, 0usize);
    let mut unexpected_pass = Vec::new();
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        if !in_scope(&dir.join("model.onnx"), &registry) {
            out_of_scope += 1;
            continue;
        }
        let result = std::panic::catch_unwind(|| run_case(dir)).unwrap_or_else(|_| Err("PANIC".to_string()));
        match (result, excluded.contains_key(&name)) {
            (Ok(()), false) => passed.push(name),
            (Ok(()), true) => unexpected_pass.push(name),
            (Err(_), true) => skipped += 1,
            (Err(e), false) => failed.push(format!("{name}: {e}")),
        }
    }
    let stale: Vec<&String> = excluded.keys().filter(|n| !cases.iter().any(|c| c.ends_with(n.as_str()))).collect();
    for f in &failed {
        eprintln!("FAIL {f}");
    }
    eprintln!(
        "onnx node tests: {} passed, {} failed ({} excluded with a reason, {} cases use ops outside fpx's set)",
        passed.len(),
        failed.len(),
        skipped,
        out_of_scope
    );
    assert!(failed.is_empty(), "{} node tests failed (see FAIL lines above)", failed.len());
    assert!(unexpected_pass.is_empty(), "excluded cases now pass; remove them from the exclusion list: {unexpected_pass:?}");
    assert!(stale.is_empty(), "exclusion list names cases that do not exist: {stale:?}");
    assert!(passed.len() > 300, "only {} node tests ran; is the onnx 1.22.0 test data complete?", passed.len());
}
