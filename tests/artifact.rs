//! The ahead-of-time path: `fpx compile` → one `.fpx` file → `fpx run`, through the library
//! (`fpx::compile`, `fpx::open`) and the CLI.

use crate::common::{max_abs_diff, npy};
use fpx::ir::Tensor;
use fpx::llvm::Activations;
use fpx::quant::lorc::FactorStorage;
use fpx::quant::Format;
use fpx::report::{cosine, mean_pool};
use fpx::{CompileOptions, QuantizeOptions, WeightScheme};
use fpx_test_support::data::{shared_model_dir, workspace_root};
use fpx_test_support::{skip, Requirement, TempDir};
use std::path::Path;

fn fpx_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fpx")).args(args).output().expect("fpx runs")
}

fn options(format: Format) -> CompileOptions {
    CompileOptions { quantize: QuantizeOptions::new(WeightScheme::Fixed(format)), ..crate::common::compile_options() }
}

/// The artifact's outputs equal the in-memory reference QuantMatMul path of the same scheme
/// (and its kernels take the activations the options ask for).
fn artifact_matches_reference(model: &Path, inputs: Vec<(String, Tensor)>, opts: &CompileOptions, tol: f64) -> Vec<(String, Tensor)> {
    let compiled = fpx::compile(model, opts).expect("compiles");
    assert!(!compiled.contents.cpu.is_empty(), "CPU code was generated");
    let int8 = opts.quantize.activations == Activations::Int8;
    for k in &compiled.contents.cpu[0].kernels {
        let rows = k.table.rows();
        assert_eq!(rows.iter().map(|(m, _)| *m).collect::<Vec<_>>(), [fpx::llvm::GEMV_MAX_M, 0], "{}: gemv, then gemm", k.node);
        let tag = opts.quantize.activations.tag();
        assert!(rows.iter().all(|(_, e)| e.activations == opts.quantize.activations
            && e.symbol.contains("_a8_") == int8
            && (tag.is_empty() || e.symbol.contains(&format!("_{tag}_")))
            && e.column_split == 16));
    }
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
    let ex = workspace_root().join("examples/tiny-transformer");
    let x = vec![("input".to_string(), npy(&ex.join("input.npy")))];
    for f in [Format::Fp6E3M2, Format::Fp6E2M3, Format::Fp5E2M2, Format::Fp4E2M1, Format::Int4, Format::Int8] {
        artifact_matches_reference(&ex.join("model.onnx"), x.clone(), &options(f), 1e-5);
    }
    let grouped = CompileOptions {
        quantize: QuantizeOptions { group_size: Some(32), ..QuantizeOptions::new(WeightScheme::Fp6Auto) },
        ..crate::common::compile_options()
    };
    artifact_matches_reference(&ex.join("model.onnx"), x, &grouped, 1e-5);
}

/// MiniLM's inputs and onnxruntime's FP32 sentence embeddings, from `dir`.
struct MiniLm {
    inputs: Vec<(String, Tensor)>,
    mask: Tensor,
    embeddings: Vec<Vec<f64>>,
}

impl MiniLm {
    fn load(dir: &Path) -> MiniLm {
        let inputs =
            ["input_ids", "attention_mask", "token_type_ids"].iter().map(|n| (n.to_string(), npy(&dir.join(format!("{n}.npy"))))).collect();
        let reference = npy(&dir.join("ref_sentence_embedding.npy"));
        let d = reference.shape()[1];
        let embeddings = reference.to_f64_vec().chunks(d).map(|c| c.to_vec()).collect();
        MiniLm { inputs, mask: npy(&dir.join("attention_mask.npy")), embeddings }
    }

    /// Mean cosine of the mean-pooled `hidden` states vs the reference embeddings.
    fn cosine(&self, hidden: &Tensor) -> f64 {
        let got = mean_pool(hidden, &self.mask).unwrap();
        got.iter().zip(&self.embeddings).map(|(a, b)| cosine(a, b)).sum::<f64>() / got.len() as f64
    }
}

#[test]
fn minilm_artifact_keeps_the_fp6_bars() {
    let Some(dir) = shared_model_dir("minilm-l6-v2") else {
        skip(Requirement::Models, "minilm_artifact_keeps_the_fp6_bars", "../shared/models/minilm-l6-v2 is absent");
        return;
    };
    let case = MiniLm::load(&dir);
    let out = artifact_matches_reference(&dir.join("model.onnx"), case.inputs.clone(), &options(Format::Fp6E3M2), 1e-5);
    let c = case.cosine(&out[0].1);
    eprintln!("MiniLM fp6-e3m2 artifact: mean embedding cosine vs onnxruntime FP32 {c:.5}");
    assert!(c >= 0.992, "{c}");
}

fn int8(format: Format) -> CompileOptions {
    let quantize = QuantizeOptions { activations: Activations::Int8, ..QuantizeOptions::new(WeightScheme::Fixed(format)) };
    CompileOptions { quantize, ..crate::common::compile_options() }
}

/// Relative RMS difference of two outputs.
fn rel_rms(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

#[test]
fn int8_activations_stay_close_to_the_f32_artifact() {
    let ex = workspace_root().join("examples/tiny-transformer");
    let x = vec![("input".to_string(), npy(&ex.join("input.npy")))];
    let model = ex.join("model.onnx");
    for f in [Format::Fp6E2M3, Format::Fp4E2M1, Format::Int4] {
        let exact = fpx::compile(&model, &options(f)).unwrap().load().unwrap().run(x.clone()).unwrap();
        // The int8 kernels equal the reference path with int8 activations ...
        let approx = artifact_matches_reference(&model, x.clone(), &int8(f), 1e-5);
        // ... and stay close to f32 activations.
        for ((n, a), (_, b)) in approx.iter().zip(&exact) {
            let rel = rel_rms(a, b);
            eprintln!("tiny-transformer {f} int8 vs f32 activations, {n}: relative RMS {rel:.2e}");
            assert!(rel > 0.0 && rel < 2e-2, "{f} {n}: {rel}");
        }
    }
}

/// FP8 activations (ZeroQuant-FP's W4A8): the artifact's kernels equal the reference path (which
/// rounds X from FP8 codes), the rounding is visible but small, and e4m3 (3 mantissa bits) is
/// closer to f32 activations than e5m2 (2 bits).
#[test]
fn fp8_activations_match_the_reference_path() {
    let ex = workspace_root().join("examples/tiny-transformer");
    let x = vec![("input".to_string(), npy(&ex.join("input.npy")))];
    let model = ex.join("model.onnx");
    for f in [Format::Fp4E2M1, Format::Fp6E3M2] {
        let weights = QuantizeOptions { pow2_scales: true, ..QuantizeOptions::new(WeightScheme::Fixed(f)) };
        let f32_opts = CompileOptions { quantize: weights, ..crate::common::compile_options() };
        let exact = fpx::compile(&model, &f32_opts).unwrap().load().unwrap().run(x.clone()).unwrap();
        let mut rels = Vec::new();
        for act in [Activations::Fp8E4M3, Activations::Fp8E5M2] {
            let quantize = QuantizeOptions { activations: act, ..weights };
            let got = artifact_matches_reference(&model, x.clone(), &CompileOptions { quantize, ..crate::common::compile_options() }, 1e-5);
            let rel = rel_rms(&got[0].1, &exact[0].1);
            eprintln!("tiny-transformer {f} {act} vs f32 activations: relative RMS {rel:.2e}");
            assert!(rel > 0.0 && rel < 0.1, "{f} {act}: {rel}");
            rels.push(rel);
        }
        assert!(rels[0] < rels[1], "{f}: e4m3 {} vs e5m2 {}", rels[0], rels[1]);
    }
}

/// LoRC (`--lorc RANK`): the artifact's products add the stored correction exactly as the
/// reference path does, the model moves closer to FP32 as the rank grows, `fpx inspect` shows
/// the bytes the factors add, and GPU targets are refused.
#[test]
fn lorc_artifacts_match_the_reference_path_and_inspect_shows_the_bytes() {
    let ex = workspace_root().join("examples/tiny-transformer");
    let x = vec![("input".to_string(), npy(&ex.join("input.npy")))];
    let model = ex.join("model.onnx");
    let fp32 = fpx::Model::open(&model).unwrap().run(x.clone()).unwrap();
    let mut last = f64::INFINITY;
    for rank in [None, Some(4), Some(16)] {
        let quantize = QuantizeOptions { lorc_rank: rank, ..QuantizeOptions::new(WeightScheme::Fixed(Format::Fp4E2M1)) };
        let got = artifact_matches_reference(&model, x.clone(), &CompileOptions { quantize, ..crate::common::compile_options() }, 1e-5);
        let rel = rel_rms(&got[0].1, &fp32[0].1);
        eprintln!("tiny-transformer fp4-e2m1, LoRC rank {rank:?}: relative RMS vs FP32 {rel:.4}");
        assert!(rel < last, "rank {rank:?}: {rel} after {last}");
        last = rel;
    }
    // Factors stored as FP8 / FP6 codes: the artifact decodes them as the reference path does,
    // and keeps (nearly) all of the FP16 factors' gain.
    for storage in [FactorStorage::Quantized(Format::Fp8E4M3), FactorStorage::Quantized(Format::Fp6E2M3)] {
        let quantize =
            QuantizeOptions { lorc_rank: Some(16), lorc_factors: storage, ..QuantizeOptions::new(WeightScheme::Fixed(Format::Fp4E2M1)) };
        let got = artifact_matches_reference(&model, x.clone(), &CompileOptions { quantize, ..crate::common::compile_options() }, 1e-5);
        let rel = rel_rms(&got[0].1, &fp32[0].1);
        eprintln!("tiny-transformer fp4-e2m1, LoRC rank 16, {} factors: relative RMS vs FP32 {rel:.4}", storage.name());
        assert!(rel < 1.05 * last, "{}: {rel} vs f16 factors {last}", storage.name());
    }
    let dir = TempDir::new("lorc");
    let out = dir.join("m.fpx");
    let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
    let c = fpx_cli(&["compile", m, "-o", o, "--weights", "fp4-e2m1", "--lorc", "8", "--cpu", "x86-64-v3"]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let text = String::from_utf8_lossy(&fpx_cli(&["inspect", o]).stdout).to_string();
    assert!(text.contains("lorc_rank: 8") && text.contains("products corrected at rank 8 by f16 factors"), "{text}");
    let f16_bytes = std::fs::metadata(&out).unwrap().len();
    let c = fpx_cli(&["compile", m, "-o", o, "--weights", "fp4-e2m1", "--lorc", "8", "--lorc-factors", "fp8-e4m3", "--cpu", "x86-64-v3"]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let text = String::from_utf8_lossy(&fpx_cli(&["inspect", o]).stdout).to_string();
    assert!(text.contains("lorc_factors: fp8-e4m3") && text.contains("products corrected at rank 8 by fp8-e4m3 factors"), "{text}");
    assert!(std::fs::metadata(&out).unwrap().len() < f16_bytes, "FP8 factors take fewer bytes");
    let bad = fpx_cli(&["compile", m, "-o", o, "--lorc-factors", "int4", "--lorc", "8"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown LoRC factor storage 'int4'"));
    let bad = fpx_cli(&["compile", m, "-o", o, "--lorc-factors", "fp8-e4m3"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("need a LoRC rank"), "{}", String::from_utf8_lossy(&bad.stderr));
    let gpu = fpx_cli(&["compile", m, "-o", o, "--lorc", "8", "--target", "cuda"]);
    let err = String::from_utf8_lossy(&gpu.stderr);
    assert!(!gpu.status.success() && err.contains("--lorc") && err.contains("--target cpu"), "{err}");
}

/// `--cpu native` artifacts load on the machine that compiled them (they record every feature
/// LLVM reports for the host) and equal the reference path; on a CPU with AVX-512 VBMI and VNNI
/// the int8 artifact runs the 512-bit int8 kernels.
#[test]
fn native_artifacts_load_on_this_host() {
    let ex = workspace_root().join("examples/tiny-transformer");
    let x = vec![("input".to_string(), npy(&ex.join("input.npy")))];
    for opts in [options(Format::Fp6E3M2), int8(Format::Fp6E2M3), int8(Format::Int4)] {
        let opts = CompileOptions { cpu: fpx::CpuLevels::Only(fpx::llvm::CpuTarget::Native), ..opts };
        artifact_matches_reference(&ex.join("model.onnx"), x.clone(), &opts, 1e-5);
    }
    // The portable VNNI target: recorded by name; where it runs, it equals the reference path
    // and gives exactly the outputs of the AVX2 int8 kernels.
    let opts = CompileOptions { cpu: fpx::CpuLevels::Only(fpx::llvm::CpuTarget::X86_64V4Vnni), ..int8(Format::Fp6E2M3) };
    let compiled = fpx::compile(&ex.join("model.onnx"), &opts).unwrap();
    assert_eq!(compiled.contents.cpu[0].target, "x86-64-v4-vnni");
    match fpx::runtime::native::missing_cpu_features(&compiled.contents.cpu[0].features) {
        missing if missing.is_empty() => {
            let vnni = artifact_matches_reference(&ex.join("model.onnx"), x.clone(), &opts, 1e-5);
            let v3 = CompileOptions { cpu: fpx::CpuLevels::Only(fpx::llvm::CpuTarget::X86_64V3), ..int8(Format::Fp6E2M3) };
            let avx2 = fpx::compile(&ex.join("model.onnx"), &v3).unwrap().load().unwrap().run(x).unwrap();
            assert_eq!(vnni, avx2, "512-bit VNNI and AVX2 int8 kernels must agree bit for bit");
        }
        missing => {
            skip(Requirement::Vnni, "native_artifacts_load_on_this_host (x86-64-v4-vnni part)", &format!("this CPU lacks {missing:?}"))
        }
    }
}

/// The default artifact carries x86-64-v4-vnni and x86-64-v3 code, fastest first; the loader
/// runs the first this CPU supports (VNNI code on an AVX-512 VBMI + VNNI host, AVX2 code
/// elsewhere), which gives exactly what an artifact of that level alone gives, and the reference
/// path's outputs.
#[test]
fn default_artifacts_carry_two_cpu_levels_and_load_the_best() {
    let ex = workspace_root().join("examples/tiny-transformer");
    let x = vec![("input".to_string(), npy(&ex.join("input.npy")))];
    let opts = CompileOptions { cpu: fpx::CpuLevels::Auto, ..int8(Format::Fp6E2M3) };
    assert_eq!(opts.cpu, fpx::CpuLevels::Auto);
    let compiled = fpx::compile(&ex.join("model.onnx"), &opts).unwrap();
    let targets: Vec<&str> = compiled.contents.cpu.iter().map(|c| c.target.as_str()).collect();
    assert_eq!(targets, ["x86-64-v4-vnni", "x86-64-v3"]);
    let vnni_host = ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512vbmi", "avx512vnni"]
        .iter()
        .all(|f| fpx::runtime::native::missing_cpu_features(&[f.to_string()]).is_empty());
    let picked = if vnni_host { "x86-64-v4-vnni" } else { "x86-64-v3" };
    let loaded = compiled.load().unwrap();
    assert_eq!(loaded.native_target(), Some(picked));
    let level = if vnni_host { fpx::llvm::CpuTarget::X86_64V4Vnni } else { fpx::llvm::CpuTarget::X86_64V3 };
    let alone = fpx::compile(&ex.join("model.onnx"), &CompileOptions { cpu: fpx::CpuLevels::Only(level), ..opts.clone() }).unwrap();
    assert_eq!(loaded.run(x.clone()).unwrap(), alone.load().unwrap().run(x.clone()).unwrap());
    artifact_matches_reference(&ex.join("model.onnx"), x, &opts, 1e-5);
    // `--cpu` parses both forms.
    assert_eq!("auto".parse::<fpx::CpuLevels>(), Ok(fpx::CpuLevels::Auto));
    assert_eq!("x86-64-v3".parse::<fpx::CpuLevels>(), Ok(fpx::CpuLevels::Only(fpx::llvm::CpuTarget::X86_64V3)));
    assert!("x86-64-v9".parse::<fpx::CpuLevels>().unwrap_err().contains("choose auto"));
}

#[test]
fn int8_activations_on_minilm_keep_the_embedding() {
    let Some(dir) = shared_model_dir("minilm-l6-v2") else {
        skip(Requirement::Models, "int8_activations_on_minilm_keep_the_embedding", "../shared/models/minilm-l6-v2 is absent");
        return;
    };
    let case = MiniLm::load(&dir);
    let cos = |opts: &CompileOptions| {
        let out = fpx::compile(&dir.join("model.onnx"), opts).unwrap().load().unwrap().run(case.inputs.clone()).unwrap();
        case.cosine(&out[0].1)
    };
    let exact = cos(&options(Format::Fp6E2M3));
    // Against the reference path with int8 activations: the two differ by f32 rounding in each
    // product, which can move an activation across an int8 rounding boundary in the next one,
    // so whole-model outputs agree less tightly than the kernels (tested to 1e-4 per product).
    let opts = int8(Format::Fp6E2M3);
    let out = fpx::compile(&dir.join("model.onnx"), &opts).unwrap().load().unwrap().run(case.inputs.clone()).unwrap();
    let reference = fpx::Model::open_with(&dir.join("model.onnx"), &opts.quantize).unwrap().run(case.inputs.clone()).unwrap();
    let (approx, reference_cos) = (case.cosine(&out[0].1), case.cosine(&reference[0].1));
    let diff = max_abs_diff(&out[0].1, &reference[0].1);
    eprintln!("MiniLM fp6-e2m3 int8 activations: artifact vs reference path max abs {diff:.2e}, embedding cosine {approx:.5} vs {reference_cos:.5}");
    assert!(diff < 0.1 && (approx - reference_cos).abs() < 1e-4, "{diff} {approx} {reference_cos}");
    // fp6-auto with int8 activations can only pick e2m3, so it is the same model.
    let auto = QuantizeOptions { activations: Activations::Int8, ..QuantizeOptions::new(WeightScheme::Fp6Auto) };
    assert_eq!(cos(&CompileOptions { quantize: auto, ..crate::common::compile_options() }), approx);
    eprintln!("MiniLM fp6-e2m3: mean embedding cosine vs onnxruntime FP32 {exact:.5} (f32 activations), {approx:.5} (int8)");
    assert!(approx >= 0.99 && approx >= exact - 0.003, "int8 {approx} vs f32 {exact}");
}

#[test]
fn int8_activations_with_unsuitable_weights_name_the_node() {
    let model = workspace_root().join("examples/tiny-transformer/model.onnx");
    let err = fpx::compile(&model, &int8(Format::Fp6E3M2)).unwrap_err().to_string();
    assert!(err.contains("--activations int8 needs weights with small integer values") && err.contains("fp6-e3m2 has none"), "{err}");
    // FP5 values fit int8, but no CPU kernel decodes them for it: the node is named.
    let err = fpx::compile(&model, &int8(Format::Fp5E2M2)).unwrap_err().to_string();
    assert!(err.contains("fp5-e2m2 has none") && err.contains("fp6-e2m3, fp4-e2m1 or int4"), "{err}");
    let mut grouped = int8(Format::Int4);
    grouped.quantize.group_size = Some(48);
    let err = fpx::compile(&model, &grouped).unwrap_err().to_string();
    assert!(err.contains("groups that are a multiple of 32, not 48"), "{err}");
    let gpu = CompileOptions { target: fpx::Target::All, ..int8(Format::Fp6E2M3) };
    assert!(fpx::compile(&model, &gpu).unwrap_err().to_string().contains("int8 activations are for CPU code"));
    let o = fpx_cli(&["compile", model.to_str().unwrap(), "-o", "/nonexistent/x.fpx", "--activations", "int9"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("choose f32, int8, fp8-e4m3 or fp8-e5m2"));
    // The CLI's help lists the formats from the one rule.
    let help = String::from_utf8_lossy(&fpx_cli(&["compile", "--help"]).stdout).to_string();
    assert!(help.contains(&format!("({})", fpx::quant::gemm::int8_format_list())), "{help}");
}

/// On an .onnx, `fpx run --weights fp6-e2m3 --activations int8` runs the reference path of
/// int8 activations.
#[test]
fn cli_runs_int8_activations_on_the_reference_path() {
    let ex = workspace_root().join("examples/tiny-transformer");
    let model = ex.join("model.onnx");
    let dir = TempDir::new("a8-run");
    let input = format!("input={}", ex.join("input.npy").display());
    let (m, out) = (model.to_str().unwrap(), dir.path().to_str().unwrap());
    let o = fpx_cli(&["run", m, "--input", &input, "--output-dir", out, "--weights", "fp6-e2m3", "--activations", "int8"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a8 = npy(&dir.join("output.npy"));
    let x = vec![("input".to_string(), npy(&ex.join("input.npy")))];
    let reference = fpx::Model::open_with(&model, &int8(Format::Fp6E2M3).quantize).unwrap().run(x.clone()).unwrap();
    assert_eq!(max_abs_diff(&a8, &reference[0].1), 0.0, "the CLI runs the same reference path");
    let f32_out = fpx::Model::open_with(&model, &options(Format::Fp6E2M3).quantize).unwrap().run(x).unwrap();
    assert!(max_abs_diff(&a8, &f32_out[0].1) > 0.0, "int8 activations change the result");
}

#[test]
fn same_model_and_options_give_a_byte_identical_artifact() {
    let m = workspace_root().join("examples/tiny-transformer/model.onnx");
    let dir = TempDir::new("art-det");
    let (a, b) = (dir.join("a.fpx"), dir.join("b.fpx"));
    for p in [&a, &b] {
        let o = fpx_cli(&["compile", m.to_str().unwrap(), "-o", p.to_str().unwrap(), "-q"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(dir.listing(), ["a.fpx", "b.fpx"], "no temporary files left");
}

#[test]
fn cli_compile_run_inspect_and_bench_an_artifact() {
    let ex = workspace_root().join("examples/tiny-transformer");
    let dir = TempDir::new("art-cli");
    let art = dir.join("m.fpx");
    let input = format!("input={}", ex.join("input.npy").display());
    let o = fpx_cli(&["compile", ex.join("model.onnx").to_str().unwrap(), "-o", art.to_str().unwrap(), "--weights", "fp6-e2m3", "-q"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && stdout.contains("13 layers as fp6-e2m3") && stdout.contains("cpu code: x86-64-v3"), "{stdout}");
    let o = fpx_cli(&["run", art.to_str().unwrap(), "--input", &input, "-o", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = cosine(&npy(&dir.join("output.npy")).to_f64_vec(), &npy(&ex.join("ref_output.npy")).to_f64_vec());
    assert!(c > 0.99, "artifact output vs FP32 onnxruntime: cosine {c}");
    let o = fpx_cli(&["inspect", art.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "format version 3",
        "activations: f32",
        "weights: fp6-e2m3",
        "cpu shared object",
        "runs on this machine",
        ": [f32 activations, columns split at 16, epilogue gelu]",
        "M 1..=8        gemv v2 r3 p8    all threads  heuristic fpx_qmm_fp6_e2m3_k64_n256_g0_gemv",
        "M >= 9         gemm v2 r3 p8    all threads  heuristic fpx_qmm_fp6_e2m3_k64_n256_g0_gemm",
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
    let o = fpx_cli(&["run", art.to_str().unwrap(), "--weights", "int4", "--input", &input, "-o", dir.path().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("quantized when it was compiled"));
}

#[test]
fn damaged_foreign_and_unrunnable_artifacts_are_clear_errors() {
    let ex = workspace_root().join("examples/tiny-transformer");
    let dir = TempDir::new("art-bad");
    let compiled = fpx::compile(&ex.join("model.onnx"), &CompileOptions::default()).unwrap();
    let good = dir.join("good.fpx");
    compiled.save(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let input = format!("input={}", ex.join("input.npy").display());
    let check = |name: &str, data: &[u8], needle: &str| {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        let o = fpx_cli(&["run", p.to_str().unwrap(), "--input", &input, "-o", dir.path().to_str().unwrap()]);
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
    for code in &mut alien.cpu {
        code.features.push("no-such-feature".into());
    }
    let p = dir.join("alien.fpx");
    fpx::artifact::write(&p, &alien).unwrap();
    let o = fpx_cli(&["run", p.to_str().unwrap(), "--input", &input, "-o", dir.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() == Some(1) && err.contains("no-such-feature") && err.contains("recompile"), "{err}");
}

/// `--target all`: PTX for sm_80 and sm_90 in the artifact, one config per M range per node
/// (exactly the heuristic's), `inspect --dump-ptx` writes modules that ptxas accepts, and the
/// CPU side runs exactly as a CPU-only artifact.
#[test]
fn gpu_code_goes_into_the_artifact() {
    if let Err(e) = fpx::cuda::load_nvrtc(None) {
        return skip(
            Requirement::Gpu,
            "gpu_code_goes_into_the_artifact",
            &format!("NVRTC is not loadable ({e}); scripts/setup.sh installs it"),
        );
    }
    let ex = workspace_root().join("examples/tiny-transformer");
    let model = ex.join("model.onnx");
    let dir = TempDir::new("art-gpu");
    let (all, cpu_only) = (dir.join("all.fpx"), dir.join("cpu.fpx"));
    let o = fpx_cli(&["compile", model.to_str().unwrap(), "-o", all.to_str().unwrap(), "--target", "all", "-q"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for needle in ["cpu code: x86-64-v3", "gpu code: sm_80 (tiles planned for 108 SMs)", "gpu code: sm_90 (tiles planned for 132 SMs)"] {
        assert!(stdout.contains(needle), "'{needle}' missing from:\n{stdout}");
    }
    assert!(fpx_cli(&["compile", model.to_str().unwrap(), "-o", cpu_only.to_str().unwrap(), "-q"]).status.success());

    let a = fpx::artifact::Artifact::open(&all).unwrap();
    let graph = a.graph().unwrap();
    let shapes: Vec<(String, usize, usize)> = graph
        .node_ids()
        .into_iter()
        .map(|id| graph.node(id))
        .filter(|n| fpx::ir::ops::quant_matmul::is_quant_matmul(n))
        .map(|n| {
            let g = fpx::ir::ops::quant_matmul::read(n).unwrap();
            (n.name.clone(), g.n, g.k)
        })
        .collect();
    assert_eq!(shapes.len(), 13);
    let code = a.ptx_code();
    assert_eq!(code.iter().map(|p| p.arch).collect::<Vec<_>>(), ["sm_80", "sm_90"]);
    for p in &code {
        for (node, n, k) in &shapes {
            let want = fpx::cuda::config::configs_by_m(fpx::cuda::Fp6Format::E3M2, fpx::cuda::Act::F16, *n, *k, p.sm_count as usize);
            let got = &p.kernels.iter().find(|g| &g.node == node).expect("a kernel table per node").table;
            assert_eq!(got.rows().len(), want.rows().len(), "{node} on {}", p.arch);
            for ((max_m, g), (want_m, cfg)) in got.rows().iter().zip(want.rows()) {
                assert_eq!(max_m, want_m);
                assert_eq!(&fpx::cuda::GemmConfig::try_from(&g.tiles).unwrap(), cfg);
                assert_eq!(g.kernel, cfg.kernel_name());
                let module = p.modules.iter().find(|m| m.name == g.module).expect("module");
                assert!(module.ptx.contains(&format!(".entry {}(", g.kernel)), "{} lacks its entry", g.module);
            }
        }
    }

    let dump = dir.join("ptx");
    let o = fpx_cli(&["inspect", all.to_str().unwrap(), "--dump-ptx", dump.to_str().unwrap()]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("gpu code: sm_90"), "{}", String::from_utf8_lossy(&o.stderr));
    for p in &code {
        let files: Vec<_> = std::fs::read_dir(dump.join(p.arch)).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), p.modules.len());
        // One module per architecture through ptxas (the fpx-cuda tests cover every config).
        if fpx::cuda::find_ptxas().is_some() {
            let m = &p.modules[0];
            let arch = if p.arch == "sm_80" { fpx::cuda::Arch::Sm80 } else { fpx::cuda::Arch::Sm90 };
            assert_eq!(m.entries.len(), 1, "one entry per module: split-K finishes inside the GEMM");
            let ptx = fpx::cuda::Ptx {
                arch,
                kernel: m.entries[0].clone(),
                src: std::fs::read_to_string(dump.join(p.arch).join(format!("{}.ptx", m.name))).unwrap().into(),
            };
            let report = fpx::cuda::ptxas_check(&ptx, arch).unwrap();
            assert!(report.kernels.iter().all(|k| k.spill_stores == 0 && k.spill_loads == 0), "{report:?}");
        }
    }

    // The PTX does not change what runs on the CPU.
    let input = format!("input={}", ex.join("input.npy").display());
    let (out_all, out_cpu) = (dir.join("out-all"), dir.join("out-cpu"));
    for (art, out) in [(&all, &out_all), (&cpu_only, &out_cpu)] {
        let o = fpx_cli(&["run", art.to_str().unwrap(), "--input", &input, "-o", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(std::fs::read(out_all.join("output.npy")).unwrap(), std::fs::read(out_cpu.join("output.npy")).unwrap());
}

/// What the GPU GEMM cannot take is refused at compile time, naming the node; `--dump-ptx`
/// without GPU code says so.
#[test]
fn gpu_target_errors_name_the_node_and_the_fix() {
    let ex = workspace_root().join("examples/tiny-transformer");
    let model = ex.join("model.onnx");
    let dir = TempDir::new("art-gpu-err");
    let out = dir.join("x.fpx");
    for (extra, needle) in [
        (&["--weights", "int4"][..], "has int4 weights; the GPU GEMM takes fp6-e3m2 or fp6-e2m3"),
        (&["--group-size", "32"][..], "is quantized with groups of 32 along K; the GPU GEMM takes one scale per output channel"),
    ] {
        let mut args = vec!["compile", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "--target", "cuda", "-q"];
        args.extend_from_slice(extra);
        let o = fpx_cli(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle) && err.contains("node '"), "{args:?}: {err}");
        assert!(!out.exists(), "nothing is written on failure");
    }
    assert!(fpx_cli(&["compile", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "-q"]).status.success());
    let o = fpx_cli(&["inspect", out.to_str().unwrap(), "--dump-ptx", dir.join("ptx").to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("the artifact has no GPU code"));
    let o = fpx_cli(&["inspect", model.to_str().unwrap(), "--dump-ptx", dir.join("ptx").to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("is not an .fpx artifact"));
    // --device cuda never falls back to the CPU silently: no driver, or no executor yet.
    let input = format!("input={}", ex.join("input.npy").display());
    for cmd in ["run", "bench"] {
        let mut args = vec![cmd, out.to_str().unwrap(), "--input", &input, "--device", "cuda"];
        let o_dir = dir.join("o");
        if cmd == "run" {
            args.extend(["-o", o_dir.to_str().unwrap()]);
        }
        let o = fpx_cli(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && (err.contains("no CUDA driver found") || err.contains("not built yet")), "{cmd}: {err}");
    }
}

#[test]
fn open_refuses_fifos_and_devices_at_once() {
    use fpx_test_support::special::{special_files, within_10s};
    let dir = TempDir::new("open-special");
    // Named as a model and as an artifact: `is_artifact` must not block, and both readers refuse.
    for name in ["model.onnx", "model.fpx"] {
        for (path, want) in special_files(&dir, name) {
            let shown = path.display().to_string();
            let p = path.clone();
            assert!(!within_10s("is_artifact", move || fpx::is_artifact(&p)) || name.ends_with(".fpx"));
            let e = within_10s("fpx::open", move || fpx::open(&path).unwrap_err().to_string());
            assert!(e.contains(&shown) && e.contains(want), "{name}: {e}");
        }
    }
}

/// `fpx::weight_storage` counts a quantized weight as the `k × n` values it stands for: the
/// tiny transformer compiled to FP6 holds as many weights as its float constants had, in 6 bits
/// each plus scales and the float constants left (so between 6 and 32 bits per weight, and
/// fewer bytes than the FP32 model).
#[test]
fn weight_storage_counts_quantized_weights_by_what_they_stand_for() {
    let ex = workspace_root().join("examples/tiny-transformer");
    let mut original = fpx::onnx::load_model(&ex.join("model.onnx")).unwrap();
    fpx::simplify(&mut original).unwrap();
    let (w32, b32) = fpx::weight_storage(&original);
    assert_eq!(b32, 4 * w32, "an FP32 model: 4 bytes per weight");
    let compiled = fpx::compile(&ex.join("model.onnx"), &options(Format::Fp6E2M3)).unwrap();
    let (w6, b6) = fpx::weight_storage(&compiled.contents.graph);
    assert_eq!(w6, w32, "quantized weights count as k x n");
    let bits = 8.0 * b6 as f64 / w6 as f64;
    assert!(bits > 6.0 && bits < 32.0 && b6 < b32, "{bits} bits per weight, {b6} vs {b32} bytes");
}
