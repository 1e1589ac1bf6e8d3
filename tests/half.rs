//! FP16 exports (`tests/data/half`, made by `scripts/zoo/make_fp16.py` from zoo fixtures: weights
//! and compute in FP16, inputs and outputs FP32, as `onnxconverter_common.float16` and
//! half-precision model exports give them). `fpx compile` runs them in `f32`
//! (`fpx_passes::UpcastHalfPrecision`): the compiled graph must be the FP32 twin's (the same
//! ops but the interface casts, no 16-bit tensor but gathered tables), match onnxruntime's FP16
//! outputs within FP16 precision, and keep FP6 accuracy; with `upcast_half: false` the 16-bit
//! graph still runs (reference kernels) and matches too.

use crate::zoo::{first_line, measure, read_json, zoo_dir, Fixture};
use fpx::ir::{DType, Graph};
use fpx::quant::Format;
use fpx::{CompileOptions, QuantizeOptions, WeightScheme};
use fpx_test_support::data::workspace_root;
use std::collections::BTreeMap;

/// fpx's f32 computation against onnxruntime's FP16 one: max |Δ| / max |reference|.
const VS_FP16_MAX_REL_ERR: f64 = 2e-2;
/// ... and their cosine.
const VS_FP16_MIN_COSINE: f64 = 0.9999;
/// An fp6-e2m3 artifact of the FP16 model against onnxruntime's FP16 outputs (as the zoo).
const FP6_MIN_COSINE: f64 = 0.99;

/// Op types and how often they occur, without `Cast` (the interface casts differ).
fn op_counts(g: &Graph) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for id in g.node_ids() {
        let op = &g.node(id).op_type;
        if op != "Cast" {
            *m.entry(op.clone()).or_default() += 1;
        }
    }
    m
}

/// Values of `g` that hold 16-bit floats and are not the interface: must be gathered tables
/// (constants only `Gather` reads) or the rows a `Gather` reads from them.
fn stray_half_values(g: &Graph) -> Vec<String> {
    let half = |v| g.value(v).ty.as_ref().is_some_and(|t| matches!(t.dtype, DType::F16 | DType::BF16));
    g.value_ids()
        .filter(|&v| half(v) && !g.inputs.contains(&v) && !g.outputs.contains(&v))
        .filter(|&v| g.value(v).producer.is_some() || g.value(v).constant.is_some())
        .filter(|&v| {
            let gathered_table = g.value(v).constant.is_some() && g.value(v).consumers.iter().all(|&n| g.node(n).op_type == "Gather");
            let gathered_rows = g.value(v).producer.is_some_and(|(n, _)| g.node(n).op_type == "Gather")
                && g.value(v).consumers.iter().all(|&n| g.node(n).op_type == "Cast");
            !(gathered_table || gathered_rows)
        })
        .map(|v| g.value(v).name.clone())
        .collect()
}

#[test]
fn fp16_exports_compile_to_the_f32_twin_and_match_onnxruntime() {
    let dir = workspace_root().join("tests").join("data").join("half");
    let index = read_json(&dir.join("manifest.json"));
    let names: Vec<String> = index["fixtures"].as_array().expect("fixtures").iter().map(|f| f.as_str().unwrap().to_string()).collect();
    assert!(names.len() >= 2, "the FP16 fixtures are in the repository");
    let mut problems = Vec::new();
    println!("\n{:<30} {:>11} {:>10} {:>11} {:>11}", "fixture", "rel err f32", "cos f32", "fp6 cosine", "fp6 16-bit");
    for name in &names {
        let fixture = Fixture::load(&dir.join(name));
        let manifest = read_json(&dir.join(name).join("manifest.json"));
        let twin = zoo_dir().join(manifest["fp16_of"].as_str().expect("fp16_of")).join("model.onnx");
        let fp6 =
            CompileOptions { quantize: QuantizeOptions::new(WeightScheme::Fixed(Format::Fp6E2M3)), ..crate::common::compile_options() };

        // In f32 (the reference executor on the upcast graph): onnxruntime's FP16 outputs
        // within FP16 precision.
        let mut graph = fpx::onnx::load_model(&fixture.model).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(fpx::passes::upcast_half_precision(&mut graph).unwrap(), "{name}: nothing to upcast");
        fpx::simplify(&mut graph).unwrap();
        let executor = fpx::runtime::CpuExecutor::new(graph).unwrap();
        let (err, cos) = measure(&fixture, |i| executor.run(i).map_err(first_line)).unwrap_or_else(|e| panic!("{name}: {e}"));
        if !(err <= VS_FP16_MAX_REL_ERR && cos >= VS_FP16_MIN_COSINE) {
            problems.push(format!("{name}: f32 vs onnxruntime FP16: rel err {err:.2e}, cosine {cos:.6}"));
        }

        // Compiled with FP6 weights: the FP32 twin's artifact graph, FP6 accuracy.
        let compiled = fpx::compile(&fixture.model, &fp6).unwrap_or_else(|e| panic!("{name}: {e}"));
        let stray = stray_half_values(&compiled.contents.graph);
        if !stray.is_empty() {
            problems.push(format!("{name}: 16-bit values left inside: {stray:?}"));
        }
        let twin_graph = fpx::compile(&twin, &fp6).unwrap_or_else(|e| panic!("{name} twin: {e}")).contents.graph;
        let (ops, twin_ops) = (op_counts(&compiled.contents.graph), op_counts(&twin_graph));
        if ops != twin_ops {
            problems.push(format!("{name}: ops {ops:?} differ from the FP32 twin's {twin_ops:?}"));
        }
        let loaded6 = compiled.load().unwrap();
        let (_, cos6) = measure(&fixture, |i| loaded6.run(i).map_err(first_line)).unwrap_or_else(|e| panic!("{name} fp6: {e}"));
        if cos6.is_nan() || cos6 < FP6_MIN_COSINE {
            problems.push(format!("{name}: fp6-e2m3 cosine {cos6:.5} < {FP6_MIN_COSINE}"));
        }

        // Kept in 16 bits: still runs (the reference kernels), as accurate.
        let kept =
            fpx::compile(&fixture.model, &CompileOptions { upcast_half: false, ..fp6 }).unwrap_or_else(|e| panic!("{name} kept: {e}"));
        let g = &kept.contents.graph;
        let kept_half = g.value_ids().filter(|&v| g.value(v).ty.as_ref().is_some_and(|t| t.dtype == DType::F16)).count();
        let kept = kept.load().unwrap();
        let (_, kcos) = measure(&fixture, |i| kept.run(i).map_err(first_line)).unwrap_or_else(|e| panic!("{name} kept: {e}"));
        if kcos.is_nan() || kcos < FP6_MIN_COSINE || kept_half == 0 {
            problems.push(format!("{name}: kept 16-bit: fp6 cosine {kcos:.5}, {kept_half} FP16 values"));
        }
        println!("{name:<30} {err:>11.2e} {cos:>10.6} {cos6:>11.5} {kcos:>11.5}");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
