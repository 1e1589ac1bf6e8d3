//! `fpx tune` → `fpx compile --tuning-db` → `fpx inspect` / `fpx run` end to end on the bundled
//! model with a small budget, and the database's failure modes as a user meets them: a damaged
//! database is refused by `tune` (and left as it was) and reported and skipped by `compile`.

use fpx_test_support::data::workspace_root;
use fpx_test_support::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fpx(args: &[&str]) -> Output {
    // No default database leaks in from the machine running the tests.
    Command::new(env!("CARGO_BIN_EXE_fpx")).args(args).env("FPX_TUNING_DB", "/nonexistent/fpx-tuning.json").output().expect("fpx runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn model() -> PathBuf {
    workspace_root().join("examples/tiny-transformer/model.onnx")
}

fn input() -> String {
    format!("input={}", s(&workspace_root().join("examples/tiny-transformer/input.npy")))
}

#[test]
fn tune_then_compile_uses_the_database_and_computes_the_same_outputs() {
    let dir = TempDir::new("cli-tune");
    let db = dir.join("tuning.json");
    let m = model();
    let o = fpx(&["tune", s(&m), "--budget", "8", "--max-m", "16", "--db", s(&db), "--cpu", "x86-64-v3", "-q"]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{err}");
    assert!(out.contains("tuned 3 products x 4 M ranges"), "{out}");
    for needle in ["product", "speed-up", "fp6-e3m2 64x256", "9-16", "tuning database:"] {
        assert!(out.contains(needle), "'{needle}' not in: {out}");
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&db).unwrap()).unwrap();
    assert_eq!(json["format"], "fpx-tuning-db");
    assert_eq!(json["cpu"].as_array().unwrap().len(), 12, "3 products x 4 buckets");
    assert_eq!(json["cpu"][0]["target"], "x86-64-v3");

    let tuned = dir.join("tuned.fpx");
    let o = fpx(&["compile", s(&m), "-o", s(&tuned), "--cpu", "x86-64-v3", "--tuning-db", s(&db), "-q"]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(out.contains("tuning: 13 of 13 products tuned for x86-64-v3 on this machine"), "{out}");
    let o = fpx(&["inspect", s(&tuned)]);
    let out = text(&o.stdout);
    assert!(out.contains("13 of 13 products use tuned kernels"), "{out}");
    assert!(out.contains(" tuned ") && out.contains(" heuristic "), "buckets above 16 keep the heuristic: {out}");
    let o = fpx(&["inspect", s(&tuned), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = json["cpu"][0]["kernels"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["tuned"] == true) && rows.iter().all(|r| r["config"].as_str().is_some_and(|c| c.contains(" v"))));

    // The tuned artifact computes what the untuned one does.
    let plain = dir.join("plain.fpx");
    let o = fpx(&["compile", s(&m), "-o", s(&plain), "--cpu", "x86-64-v3", "--no-tuning", "-q"]);
    assert!(o.status.success() && !text(&o.stdout).contains("tuning:"), "{}", text(&o.stdout));
    let run = |a: &Path, out: &Path| {
        let o = fpx(&["run", s(a), "--input", &input(), "--output-dir", s(out)]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        crate::common::npy(&out.join("output.npy"))
    };
    let (t, p) = (run(&tuned, &dir.join("t")), run(&plain, &dir.join("p")));
    crate::common::compare(&t, &p, 1e-5, 1e-6).unwrap();

    // An artifact's products can be tuned too (the ones it holds, whatever flags say).
    let db2 = dir.join("from-artifact.json");
    let o = fpx(&["tune", s(&plain), "--budget", "2", "--max-m", "1", "--db", s(&db2), "--cpu", "x86-64-v3", "-q"]);
    assert!(o.status.success() && text(&o.stdout).contains("tuned 3 products x 1 M ranges"), "{}", text(&o.stderr));

    // Or a list of products, merged into the same database.
    let o = fpx(&[
        "tune",
        "--shape",
        "fp6-e3m2:64x64",
        "--shape",
        "fp4-e2m1:128x64",
        "--budget",
        "2",
        "--max-m",
        "1",
        "--db",
        s(&db2),
        "--cpu",
        "x86-64-v3",
        "-q",
    ]);
    let out = text(&o.stdout);
    assert!(o.status.success() && out.contains("tuned 2 products x 1 M ranges of the --shape products"), "{out}{}", text(&o.stderr));
    assert!(out.contains("(4 CPU entries, 3 before)"), "one new product, one replaced: {out}");
    let o = fpx(&["tune", "--shape", "fp7:4x4", "--db", s(&db2)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("unknown weight format 'fp7'"), "{}", text(&o.stderr));
    let o = fpx(&["tune", "--db", s(&db2)]);
    assert_eq!(o.status.code(), Some(2), "a model or --shape is required: {}", text(&o.stderr));
}

#[test]
fn damaged_databases_stop_tune_and_are_skipped_by_compile() {
    let dir = TempDir::new("cli-tune-bad");
    let db = dir.join("tuning.json");
    let damaged = "{\"format\": \"fpx-tuning-db\", \"version\": 1, \"cpu\": [ {";
    std::fs::write(&db, damaged).unwrap();
    let m = model();
    let o = fpx(&["tune", s(&m), "--budget", "1", "--db", s(&db)]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot tune") && err.contains("is damaged: not valid JSON"), "{err}");
    assert_eq!(std::fs::read_to_string(&db).unwrap(), damaged, "never clobbered");

    let out = dir.join("m.fpx");
    let o = fpx(&["compile", s(&m), "-o", s(&out), "--tuning-db", s(&db), "-q"]);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("warning: the tuning database") && err.contains("compiling with fpx's heuristic kernel choices"), "{err}");
    let o = fpx(&["inspect", s(&out)]);
    assert!(!text(&o.stdout).contains(" tuned "), "{}", text(&o.stdout));

    let foreign = dir.join("package.json");
    std::fs::write(&foreign, "{\"name\": \"x\"}").unwrap();
    let o = fpx(&["compile", s(&m), "-o", s(&out), "--tuning-db", s(&foreign), "-q"]);
    assert!(o.status.success() && text(&o.stderr).contains("is not a tuning database this fpx reads"), "{}", text(&o.stderr));
    let o = fpx(&["compile", s(&m), "-o", s(&out), "--tuning-db", s(&dir.join("absent.json")), "-q"]);
    assert!(o.status.success() && text(&o.stderr).contains("does not exist"), "{}", text(&o.stderr));

    for (args, want) in [
        (vec!["--budget", "0"], "--budget 0: give a positive number of seconds"),
        (vec!["--max-m", "0"], "--max-m 0"),
        (vec!["--weights", "none"], "--weights none: only quantized products have kernels to tune"),
    ] {
        let mut all = vec!["tune", s(&m), "--db", s(&db)];
        all.extend(args);
        let o = fpx(&all);
        assert_eq!(o.status.code(), Some(1));
        assert!(text(&o.stderr).contains(want), "{}", text(&o.stderr));
    }
    let o = fpx(&["tune", s(&m), "--device", "cuda", "--db", s(&db)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("--device cuda"), "{}", text(&o.stderr));
}

/// GPU results in the database (as `fpx tune --device cuda` writes them) go into the sm_90 code of
/// `fpx compile --target cuda`: the tuned bucket's config, marked tuned in the artifact and by
/// `fpx inspect`, the heuristic's elsewhere and on sm_80; a result from another GEMM template is
/// ignored and counted.
#[test]
fn gpu_results_in_the_database_go_into_the_gpu_code() {
    use fpx::tuning::gpu::{heuristic_for, GpuEntry, GpuTiling};
    use fpx::tuning::{GpuMachine, MBucket, Shape, TuningDb};
    if let Err(e) = fpx::cuda::load_nvrtc(None) {
        return fpx_test_support::skip(
            fpx_test_support::Requirement::Gpu,
            "gpu_results_in_the_database_go_into_the_gpu_code",
            &format!("NVRTC is not loadable ({e}); scripts/setup.sh installs it"),
        );
    }
    let dir = TempDir::new("cli-tune-gpu");
    let m = model();
    let options = fpx::CompileOptions { target: fpx::Target::Cuda, ..Default::default() };
    let products = fpx::quantized_products(&fpx::compile(&m, &options).unwrap().contents.graph).unwrap();
    let mut shapes: Vec<fpx::quant::QuantGemm> = products.iter().map(|(_, g)| *g).collect();
    shapes.sort();
    shapes.dedup();
    assert_eq!(shapes.len(), 3);
    let gpu = GpuMachine { name: "Test GPU".into(), capability: "9.0".into(), sm_count: 132, driver: "13.0".into() };
    let format = fpx::cuda::Fp6Format::E3M2;
    // For M = 1: the heuristic's config with other stages (so the artifact shows which it took).
    let tuned_cfg = |g: &fpx::quant::QuantGemm| {
        let h = heuristic_for(g, format, MBucket::M1, 132);
        fpx::cuda::GemmConfig { stages: if h.stages == 2 { 3 } else { 2 }, ..h }
    };
    let entry = |g: &fpx::quant::QuantGemm, bucket: MBucket, checksum: String| GpuEntry {
        machine: gpu.clone(),
        arch: "sm_90".into(),
        template_checksum: checksum,
        shape: Shape::of(g),
        bucket,
        tiling: GpuTiling::of(&tuned_cfg(g)),
        micros: 10.0,
        default_micros: 12.0,
    };
    let mut db = TuningDb::default();
    db.merge_gpu(shapes.iter().map(|g| entry(g, MBucket::M1, fpx::cuda::template_checksum())));
    db.merge_gpu([entry(&shapes[0], MBucket::M9To16, "0123456789abcdef".into())]);
    let path = dir.join("tuning.json");
    db.save(&path).unwrap();

    let out = dir.join("gpu.fpx");
    let o = fpx(&["compile", s(&m), "-o", s(&out), "--target", "cuda", "--tuning-db", s(&path), "-q"]);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        stdout.contains(&format!("tuning: {n} of {n} products use sm_90 tile configs tuned on Test GPU", n = products.len())),
        "{stdout}"
    );
    assert!(stdout.contains("1 results from another GEMM template ignored"), "{stdout}");
    let artifact = fpx::artifact::Artifact::open(&out).unwrap();
    for code in artifact.ptx_code() {
        for node in code.kernels {
            let g = products.iter().find(|(n, _)| *n == node.node).unwrap().1;
            let rows = node.table.rows();
            if code.arch == "sm_90" {
                let (max_m, first) = &rows[0];
                assert_eq!(*max_m, 1, "{}: the tuned M = 1 row", node.node);
                assert!(first.tuned);
                assert_eq!(fpx::cuda::GemmConfig::try_from(&first.tiles).unwrap(), tuned_cfg(&g));
                assert!(rows[1..].iter().all(|(_, k)| !k.tuned), "only M = 1 was tuned");
            } else {
                assert!(rows.iter().all(|(_, k)| !k.tuned), "{} has no tuned results", code.arch);
            }
        }
    }
    let o = fpx(&["inspect", s(&out)]);
    let stdout = text(&o.stdout);
    assert!(stdout.contains(&format!("{n} of {n} products use tuned tile configs", n = products.len())), "{stdout}");
    assert!(stdout.contains("(tuned)") && stdout.contains("(heuristic)"), "{stdout}");
}
