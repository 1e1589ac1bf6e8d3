//! The ahead-of-time path: `fpx compile` → one `.fpx` file → `fpx run`, through the library
//! (`fpx::compile`, `fpx::load`) and the CLI.

use crate::common::{max_abs_diff, npy, repo_root, shared_model_dir, skip, TempDir};
use fpx::ir::Tensor;
use fpx::quant::Format;
use fpx::report::{cosine, mean_pool};
use fpx::{CompileOptions, QuantizeOptions, WeightScheme};
use std::path::Path;

fn fpx_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fpx")).args(args).output().expect("fpx runs")
}

fn options(format: Format) -> CompileOptions {
    CompileOptions { quantize: QuantizeOptions::new(WeightScheme::Fixed(format)), ..CompileOptions::default() }
}

/// The artifact's outputs equal the in-memory reference QuantMatMul path of the same scheme.
fn artifact_matches_reference(model: &Path, inputs: Vec<(String, Tensor)>, opts: &CompileOptions, tol: f64) -> Vec<(String, Tensor)> {
    let compiled = fpx::compile(model, opts).expect("compiles");
    assert!(!compiled.contents.cpu.is_empty(), "CPU code was generated");
    let loaded = compiled.load().expect("loads");
    assert!(loaded.native_target().is_some(), "native kernels are in use");
    let got = loaded.run(inputs.clone()).expect("runs");
    let reference = fpx::Model::open_with(model, &opts.quantize).unwrap().run(inputs).unwrap();
    for ((n, a), (_, b)) in got.iter().zip(&reference) {
        let scale = b.to_f64_vec().iter().fold(0f64, |m, v| m.max(v.abs())).max(1.0);
        let err = max_abs_diff(a, b);
        assert!(err <= tol * scale, "{n}: artifact vs reference path {err} (scale {scale})");
    }
    got
}

#[test]
fn example_compiles_for_every_cpu_format_and_matches_the_reference_path() {
    let ex = repo_root().join("examples/tiny-transformer");
    let x = vec![("input".to_string(), npy(&ex.join("input.npy")))];
    for f in [Format::Fp6E3M2, Format::Fp6E2M3, Format::Fp5E2M2, Format::Fp4E2M1, Format::Int4, Format::Int8] {
        artifact_matches_reference(&ex.join("model.onnx"), x.clone(), &options(f), 1e-5);
    }
    let grouped = CompileOptions {
        quantize: QuantizeOptions { group_size: Some(32), ..QuantizeOptions::new(WeightScheme::Fp6Auto) },
        ..CompileOptions::default()
    };
    artifact_matches_reference(&ex.join("model.onnx"), x, &grouped, 1e-5);
}

#[test]
fn minilm_artifact_keeps_the_fp6_bars() {
    let Some(dir) = shared_model_dir("minilm-l6-v2") else {
        skip("minilm_artifact_keeps_the_fp6_bars", "../shared/models/minilm-l6-v2 is absent");
        return;
    };
    let inputs: Vec<(String, Tensor)> =
        ["input_ids", "attention_mask", "token_type_ids"].iter().map(|n| (n.to_string(), npy(&dir.join(format!("{n}.npy"))))).collect();
    let out = artifact_matches_reference(&dir.join("model.onnx"), inputs, &options(Format::Fp6E3M2), 1e-5);
    let mask = npy(&dir.join("attention_mask.npy"));
    let reference = npy(&dir.join("ref_sentence_embedding.npy"));
    let d = reference.shape()[1];
    let want: Vec<Vec<f64>> = reference.to_f64_vec().chunks(d).map(|c| c.to_vec()).collect();
    let got = mean_pool(&out[0].1, &mask).unwrap();
    let c = got.iter().zip(&want).map(|(a, b)| cosine(a, b)).sum::<f64>() / got.len() as f64;
    eprintln!("MiniLM fp6-e3m2 artifact: mean embedding cosine vs onnxruntime FP32 {c:.5}");
    assert!(c >= 0.992, "{c}");
}

#[test]
fn same_model_and_options_give_a_byte_identical_artifact() {
    let m = repo_root().join("examples/tiny-transformer/model.onnx");
    let dir = TempDir::new("art-det");
    let (a, b) = (dir.join("a.fpx"), dir.join("b.fpx"));
    for p in [&a, &b] {
        let o = fpx_cli(&["compile", m.to_str().unwrap(), "-o", p.to_str().unwrap(), "-q"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 2, "no temporary files left: {leftovers:?}");
}

#[test]
fn cli_compile_run_inspect_and_bench_an_artifact() {
    let ex = repo_root().join("examples/tiny-transformer");
    let dir = TempDir::new("art-cli");
    let art = dir.join("m.fpx");
    let input = format!("input={}", ex.join("input.npy").display());
    let o = fpx_cli(&["compile", ex.join("model.onnx").to_str().unwrap(), "-o", art.to_str().unwrap(), "--weights", "fp6-e2m3", "-q"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && stdout.contains("13 layers as fp6-e2m3") && stdout.contains("cpu code: x86-64-v3"), "{stdout}");
    let o = fpx_cli(&["run", art.to_str().unwrap(), "--input", &input, "-o", dir.0.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = cosine(&npy(&dir.join("output.npy")).to_f64_vec(), &npy(&ex.join("ref_output.npy")).to_f64_vec());
    assert!(c > 0.99, "artifact output vs FP32 onnxruntime: cosine {c}");
    let o = fpx_cli(&["inspect", art.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "format version 1",
        "weights: fp6-e2m3",
        "cpu shared object",
        "runs on this machine",
        "fpx_qmm_fp6_e2m3_k64_n256_g0_gemv",
        "QuantMatMul",
    ] {
        assert!(text.contains(needle), "'{needle}' missing from:\n{text}");
    }
    let o = fpx_cli(&["bench", art.to_str().unwrap(), "--input", &input, "--iters", "3", "--threads", "1", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    assert!(v["median_us"].as_f64().unwrap() > 0.0);
    let k = v["kernels"].as_array().unwrap().iter().find(|k| k["op"] == "QuantMatMul").expect("a QuantMatMul kernel");
    assert_eq!(k["native"], true);
    assert!(k["weight_bytes"].as_u64().unwrap() > 0 && k["weight_gb_per_s"].as_f64().unwrap() > 0.0);
    let o = fpx_cli(&["run", art.to_str().unwrap(), "--weights", "int4", "--input", &input, "-o", dir.0.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("quantized when it was compiled"));
}

#[test]
fn damaged_foreign_and_unrunnable_artifacts_are_clear_errors() {
    let ex = repo_root().join("examples/tiny-transformer");
    let dir = TempDir::new("art-bad");
    let compiled = fpx::compile(&ex.join("model.onnx"), &CompileOptions::default()).unwrap();
    let good = dir.join("good.fpx");
    compiled.save(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let input = format!("input={}", ex.join("input.npy").display());
    let check = |name: &str, data: &[u8], needle: &str| {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        let o = fpx_cli(&["run", p.to_str().unwrap(), "--input", &input, "-o", dir.0.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(needle) && !err.contains("panicked"), "{name}: '{needle}' not in {err}");
    };
    check("truncated.fpx", &bytes[..bytes.len() / 2], "truncated.fpx");
    let mut flipped = bytes.clone();
    let mid = bytes.len() - 100;
    flipped[mid] ^= 0x40;
    check("flipped.fpx", &flipped, "checksum");
    check("foreign.fpx", &std::fs::read(ex.join("model.onnx")).unwrap(), "foreign.fpx");
    let mut newer = bytes.clone();
    newer[8] = 99;
    check("newer.fpx", &newer, "version");
    // Code for a CPU this machine is not: the loader refuses it by name.
    let mut alien = compiled.contents.clone();
    alien.cpu[0].features.push("no-such-feature".into());
    let p = dir.join("alien.fpx");
    fpx::artifact::write(&p, &alien).unwrap();
    let o = fpx_cli(&["run", p.to_str().unwrap(), "--input", &input, "-o", dir.0.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() == Some(1) && err.contains("no-such-feature") && err.contains("recompile"), "{err}");
}
