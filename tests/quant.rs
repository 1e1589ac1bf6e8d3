//! Weight quantization end to end on real models: the accuracy bars of the FP6 formats on
//! MiniLM's sentence embeddings, and the quantized path through the CLI.

use crate::common::npy;
use fpx::ir::Tensor;
use fpx::report::{cosine, parse_schemes};
use fpx_test_support::data::{shared_model_dir, workspace_root};
use fpx_test_support::{skip, Requirement, TempDir};

/// Mean over unmasked tokens of `[batch, seq, hidden]`: the sentence embedding.
fn mean_pool(h: &Tensor, mask: &Tensor) -> Vec<Vec<f64>> {
    let (b, s, d) = (h.shape()[0], h.shape()[1], h.shape()[2]);
    let (hv, mv) = (h.to_f64_vec(), mask.to_f64_vec());
    (0..b)
        .map(|i| {
            let mut e = vec![0.0; d];
            let count: f64 = (0..s).map(|t| mv[i * s + t]).sum();
            for t in 0..s {
                for j in 0..d {
                    e[j] += hv[(i * s + t) * d + j] * mv[i * s + t];
                }
            }
            e.iter().map(|x| x / count.max(1.0)).collect()
        })
        .collect()
}

#[test]
fn minilm_fp6_keeps_sentence_embeddings() {
    let Some(dir) = shared_model_dir("minilm-l6-v2") else {
        skip(Requirement::Models, "minilm_fp6_keeps_sentence_embeddings", "../shared/models/minilm-l6-v2 is absent");
        return;
    };
    let names = ["input_ids", "attention_mask", "token_type_ids"];
    let inputs: Vec<(String, Tensor)> = names.iter().map(|n| (n.to_string(), npy(&dir.join(format!("{n}.npy"))))).collect();
    let mask = npy(&dir.join("attention_mask.npy"));
    let reference = npy(&dir.join("ref_sentence_embedding.npy"));
    let d = reference.shape()[1];
    let want: Vec<Vec<f64>> = reference.to_f64_vec().chunks(d).map(|c| c.to_vec()).collect();
    let options = fpx::report::ReportOptions {
        schemes: parse_schemes("fp6-e3m2,fp6-e2m3,fp6-auto,int4,int4:g128", None, false, false).unwrap(),
        histogram_layer: None,
        pool_mask: Some("attention_mask".into()),
    };
    let report = fpx::report::accuracy_report(&dir.join("model.onnx"), inputs, &options).expect("report runs");
    let fp32_cos = {
        let e = mean_pool(&report.fp32[0].1, &mask);
        e.iter().zip(&want).map(|(a, b)| cosine(a, b)).sum::<f64>() / e.len() as f64
    };
    assert!(fp32_cos > 0.99999, "FP32 path must reproduce onnxruntime's embeddings: {fp32_cos}");
    let mut cos = std::collections::BTreeMap::new();
    for r in &report.schemes {
        let e = mean_pool(&r.values[0].1, &mask);
        let c = e.iter().zip(&want).map(|(a, b)| cosine(a, b)).sum::<f64>() / e.len() as f64;
        eprintln!("MiniLM mean embedding cosine vs FP32, {:<10} {c:.5} (weights {:.2} MB)", r.label, r.weight_bytes_out as f64 / 1e6);
        let pooled = r.outputs[0].pooled_cosine.expect("pooled over attention_mask");
        assert!((pooled - c).abs() < 2e-4, "report's pooled cosine vs fpx FP32 {pooled} ~ test's vs onnxruntime {c}");
        cos.insert(r.label.clone(), c);
    }
    assert!(cos["fp6-e3m2"] >= 0.992, "fp6-e3m2 {}", cos["fp6-e3m2"]);
    assert!(cos["fp6-e2m3"] >= 0.996, "fp6-e2m3 {}", cos["fp6-e2m3"]);
    let better = cos["fp6-e3m2"].max(cos["fp6-e2m3"]);
    assert!(cos["fp6-auto"] >= better - 0.0005, "fp6-auto {} vs best {better}", cos["fp6-auto"]);
    // INT4 must be clearly worse than FP6, or something is wrong with either.
    assert!(cos["int4"] < cos["fp6-e3m2"] && cos["int4:g128"] < cos["fp6-e2m3"], "{cos:?}");
    let fp6 = &report.schemes[0];
    assert_eq!(fp6.layers.len(), 36, "all 36 constant-weight MatMuls are quantized");
    let ratio = fp6.weight_bytes_in as f64 / fp6.weight_bytes_out as f64;
    assert!(ratio > 5.0 && ratio < 5.4, "FP6 stores 6 bits of 32 plus scales: ratio {ratio}");
}

fn fpx(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fpx")).args(args).output().expect("fpx runs")
}

#[test]
fn cli_runs_quantized_and_reports_with_html() {
    let ex = workspace_root().join("examples/tiny-transformer");
    let (m, i) = (ex.join("model.onnx"), format!("input={}", ex.join("input.npy").display()));
    let dir = TempDir::new("quant-cli");
    let out = fpx(&["run", m.to_str().unwrap(), "--input", &i, "-o", dir.path().to_str().unwrap(), "--weights", "fp6-e2m3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("weights: 13 layers as fp6-e2m3"), "{stdout}");
    let got = npy(&dir.join("output.npy"));
    let want = npy(&ex.join("ref_output.npy"));
    let c = cosine(&got.to_f64_vec(), &want.to_f64_vec());
    assert!(c > 0.99 && c < 1.0, "quantized output is close to, but not exactly, FP32: cosine {c}");

    // bench --json prints only JSON, even when it quantizes first.
    let out = fpx(&["bench", m.to_str().unwrap(), "--input", &i, "--weights", "fp6-e3m2", "--iters", "2", "--json"]);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert!(v["kernels"].as_array().unwrap().iter().any(|k| k["op"] == "QuantMatMul" && k["native"] == false));

    let html = dir.join("r.html");
    let out = fpx(&["report", m.to_str().unwrap(), "--input", &i, "--schemes", "fp6-e3m2,int4:g32", "--html", html.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for needle in ["fp6-e3m2", "int4:g32", "cosine", "per-layer weight relative RMSE"] {
        assert!(stdout.contains(needle), "'{needle}' missing:\n{stdout}");
    }
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.starts_with("<!doctype html>") && page.contains("<svg") && page.contains("fp6-e2m3") && !page.contains("<script src"),
        "self-contained page with plots"
    );

    for (args, needle) in [
        (vec!["--weights", "fp7"], "unknown weight scheme 'fp7'"),
        (vec!["--weights", "int4", "--group-size", "0"], "group size must be at least 1"),
    ] {
        let mut a = vec!["run", m.to_str().unwrap(), "--input", &i, "-o", dir.path().to_str().unwrap()];
        a.extend(args);
        let out = fpx(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(needle) && !err.contains("panicked"), "{err}");
    }
}

/// `fpx report` with ZeroQuant-FP's schemes (modifiers in any order): FP8 activations, power-of-two
/// scales and LoRC rows, each with its bytes per parameter; LoRC lowers the error and adds bytes.
#[test]
fn report_compares_w4a8_schemes_with_lorc_and_bytes_per_parameter() {
    let ex = workspace_root().join("examples/tiny-transformer");
    let (m, i) = (ex.join("model.onnx"), format!("input={}", ex.join("input.npy").display()));
    let schemes = "fp4-e2m1:fp8:p2,fp4-e2m1:lorc8:p2:fp8,fp4-e2m1:fp8:lorc8@fp8-e4m3:p2,int4:g32";
    let out = fpx(&["report", m.to_str().unwrap(), "--input", &i, "--schemes", schemes]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.lines().nth(2).is_some_and(|h| h.trim_end().ends_with("B/param")), "{stdout}");
    // scheme, output, max_abs, rel_err, cosine, row_cos, pooled_cos, weights, ratio, B/param.
    let row = |label: &str| -> (f64, f64) {
        let line = stdout.lines().find(|l| l.split_whitespace().next() == Some(label)).unwrap_or_else(|| panic!("{label}:\n{stdout}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols[3].parse().unwrap(), cols[9].parse().unwrap())
    };
    let (plain, lorc, int4) = (row("fp4-e2m1:fp8:p2"), row("fp4-e2m1:lorc8:p2:fp8"), row("int4:g32"));
    assert!(lorc.0 < plain.0 && lorc.1 > plain.1, "LoRC: less error, more bytes: {lorc:?} vs {plain:?}");
    // FP8 factors: about the same error as FP16 ones for fewer bytes.
    let fp8 = row("fp4-e2m1:fp8:lorc8@fp8-e4m3:p2");
    assert!(fp8.0 < plain.0 && fp8.1 < lorc.1 && fp8.1 > plain.1, "{fp8:?} vs {lorc:?} and {plain:?}");
    assert!((plain.1 - 0.5).abs() < 0.05 && int4.1 > plain.1, "{plain:?} {int4:?}");
    let bad = fpx(&["report", m.to_str().unwrap(), "--input", &i, "--schemes", "fp4-e2m1:lorcx"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("the rank after ':lorc' must be a number"));
    let bad = fpx(&["report", m.to_str().unwrap(), "--input", &i, "--schemes", "fp4-e2m1:lorc8@int4"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown LoRC factor storage 'int4'"));
}

#[test]
fn nan_weight_is_an_error_naming_the_tensor() {
    use fpx_test_support::onnx::{model, node, save, value};
    let dir = TempDir::new("quant-nan");
    let mut w = vec![0.5f32; 8];
    w[3] = f32::NAN;
    let wt = fpx::onnx::tensor_to_proto(
        "proj.weight",
        &Tensor::from(fpx::ir::ndarray::ArrayD::from_shape_vec(fpx::ir::ndarray::IxDyn(&[4, 2]), w).unwrap()),
    );
    let p = dir.join("nan.onnx");
    save(
        &model(
            vec![node("MatMul", "proj", &["x", "proj.weight"], &["y"])],
            vec![value("x", &["1", "4"])],
            vec![value("y", &["1", "2"])],
            vec![wt],
        ),
        &p,
    );
    let x = dir.join("x.npy");
    fpx::runtime::npy::write(&x, &Tensor::from(fpx::ir::ndarray::ArrayD::<f32>::ones(fpx::ir::ndarray::IxDyn(&[1, 4])))).unwrap();
    let out = fpx(&[
        "run",
        p.to_str().unwrap(),
        "--input",
        &format!("x={}", x.display()),
        "-o",
        dir.path().to_str().unwrap(),
        "--weights",
        "fp6-e3m2",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("'proj.weight'") && err.contains("NaN") && !err.contains("panicked"), "{err}");
}

/// `--scale-pow2` end to end: every scale of the compiled artifact (bias shift folded in) is a
/// power of two, the artifact records it, and its outputs equal the reference path's with the
/// same options (and stay close to FP32).
#[test]
fn pow2_scales_compile_to_powers_of_two_and_run() {
    use fpx::{CompileOptions, QuantizeOptions, WeightScheme};
    let ex = workspace_root().join("examples/tiny-transformer");
    let quantize = QuantizeOptions {
        pow2_scales: true,
        group_size: Some(32),
        ..QuantizeOptions::new(WeightScheme::Fixed(fpx::quant::Format::Fp4E2M1))
    };
    let compiled = fpx::compile(&ex.join("model.onnx"), &CompileOptions { quantize, ..crate::common::compile_options() }).unwrap();
    assert_eq!(compiled.contents.metadata.get("scale_pow2").map(String::as_str), Some("true"));
    let graph = &compiled.contents.graph;
    let mut checked = 0;
    for id in graph.node_ids() {
        let node = graph.node(id);
        if !fpx::ir::ops::quant_matmul::is_quant_matmul(node) {
            continue;
        }
        let scales = graph.load_constant(node.inputs[2].unwrap()).unwrap().expect("constant scales");
        for s in scales.to_f32().iter() {
            assert_eq!(s.to_bits() & 0x007f_ffff, 0, "node '{}': scale {s} is not a power of two", node.name);
        }
        checked += 1;
    }
    assert_eq!(checked, 13);
    let input = npy(&ex.join("input.npy"));
    let artifact = compiled.load().unwrap();
    let got = artifact.run(vec![("input".to_string(), input.clone())]).unwrap().remove(0).1;
    let reference = fpx::Model::open_with(&ex.join("model.onnx"), &quantize).unwrap();
    let want = reference.run(vec![("input".to_string(), input.clone())]).unwrap().remove(0).1;
    crate::common::compare(&got, &want, 1e-4, 1e-5).unwrap();
    let fp32 = fpx::Model::open(&ex.join("model.onnx")).unwrap().run(vec![("input".to_string(), input)]).unwrap().remove(0).1;
    let c = cosine(&got.to_f64_vec(), &fp32.to_f64_vec());
    assert!(c > 0.98, "cosine vs FP32 {c}");
}
