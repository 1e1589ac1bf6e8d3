//! The `fpx` binary on good and bad input: every failure is a clear message and a non-zero
//! exit, never a panic.

use fpx::ir::Tensor;
use fpx::onnx::onnx_protobuf::tensor_proto::DataLocation;
use fpx::onnx::onnx_protobuf::StringStringEntryProto;
use fpx_test_support::data::workspace_root;
use fpx_test_support::onnx::{model, node, save, value};
use fpx_test_support::TempDir;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn fpx(args: &[&str]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_fpx")).args(args).output().expect("fpx runs");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// Asserts a clean failure whose message contains every one of `needles`.
fn fails_with(o: &Outcome, needles: &[&str]) {
    assert_eq!(o.code, Some(1), "expected exit 1; stderr: {}", o.stderr);
    assert!(!o.stderr.contains("panicked"), "panic: {}", o.stderr);
    assert!(o.stderr.starts_with("error: "), "stderr: {}", o.stderr);
    for n in needles {
        assert!(o.stderr.contains(n), "'{n}' not in: {}", o.stderr);
    }
}

fn example() -> PathBuf {
    workspace_root().join("examples/tiny-transformer")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn write_npy(path: &Path, t: &Tensor) {
    fpx::runtime::npy::write(path, t).expect("writes");
}

#[test]
fn run_writes_outputs_matching_onnxruntime() {
    let dir = TempDir::new("cli-run");
    let ex = example();
    let o =
        fpx(&["run", s(&ex.join("model.onnx")), "--input", &format!("input={}", s(&ex.join("input.npy"))), "--output-dir", s(dir.path())]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(o.stdout.contains("output: float [2, 7, 64]"), "{}", o.stdout);
    assert!(o.stdout.contains("ran in"), "{}", o.stdout);
    let got = crate::common::npy(&dir.join("output.npy"));
    let want = crate::common::npy(&ex.join("ref_output.npy"));
    let err = crate::common::max_abs_diff(&got, &want);
    assert!(err < 1e-4, "max abs error vs onnxruntime {err}");
}

#[test]
fn inspect_reports_weights_and_json() {
    let m = example().join("model.onnx");
    let o = fpx(&["inspect", s(&m)]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    for needle in
        ["ai.onnx=20", "input: float[batch, seq, 64]", "LayerNormalization", "matmuls with a constant weight", "MatMul W[64, 256]"]
    {
        assert!(o.stdout.contains(needle), "'{needle}' missing from:\n{}", o.stdout);
    }
    let j = fpx(&["inspect", s(&m), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).expect("valid JSON");
    assert_eq!(v["inputs"][0]["name"], "input");
    assert_eq!(v["opsets"][""], 20);
    let weights = v["weight_matmuls"].as_array().unwrap();
    assert!(weights.iter().any(|w| w["op"] == "MatMul" && w["weight_shape"] == serde_json::json!([64, 64])), "{weights:?}");
    assert!(weights.iter().any(|w| w["op"] == "Gemm" && w["transposed"] == true), "{weights:?}");
}

#[test]
fn output_names_are_sanitized() {
    assert_eq!(fpx::output_file_name("last_hidden_state"), "last_hidden_state.npy");
    assert_eq!(fpx::output_file_name("out:0/a.b"), "out_0_a_b.npy");
}

#[test]
fn garbage_and_truncated_models_are_rejected() {
    let dir = TempDir::new("cli-garbage");
    let garbage = dir.join("garbage.onnx");
    std::fs::write(&garbage, b"this is not a protobuf \xff\xfe\x00\x01").unwrap();
    fails_with(&fpx(&["run", s(&garbage), "-o", s(dir.path())]), &["garbage.onnx"]);
    let bytes = std::fs::read(example().join("model.onnx")).unwrap();
    let truncated = dir.join("truncated.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(&fpx(&["run", s(&truncated), "-o", s(dir.path())]), &["truncated.onnx"]);
    fails_with(&fpx(&["inspect", s(&truncated)]), &["truncated.onnx"]);
    fails_with(&fpx(&["run", s(&dir.join("missing.onnx")), "-o", s(dir.path())]), &["does not exist"]);
}

#[test]
fn bad_inputs_name_the_input() {
    let dir = TempDir::new("cli-inputs");
    let ex = example();
    let m = ex.join("model.onnx");
    let good = format!("input={}", s(&ex.join("input.npy")));
    let run = |extra: &[&str]| {
        let mut a = vec!["run", s(&m), "-o", s(dir.path())];
        a.extend_from_slice(extra);
        fpx(&a)
    };
    fails_with(&run(&[]), &["input 'input'", "missing"]);
    fails_with(&run(&["--input", &good, "--input", &good]), &["given more than once"]);
    let extra = format!("bogus={}", s(&ex.join("input.npy")));
    fails_with(&run(&["--input", &good, "--input", &extra]), &["'bogus'", "no such input", "'input'"]);
    fails_with(&run(&["--input", "input"]), &["NAME=FILE.npy"]);

    let mistyped = dir.join("ints.npy");
    write_npy(&mistyped, &Tensor::vec_i64(vec![1; 2 * 7 * 64]).reshape(&[2, 7, 64]).unwrap());
    fails_with(&run(&["--input", &format!("input={}", s(&mistyped))]), &["input 'input'", "float", "int64"]);
    let misshaped = dir.join("shape.npy");
    write_npy(&misshaped, &Tensor::from(fpx::ir::ndarray::ArrayD::<f32>::zeros(fpx::ir::ndarray::IxDyn(&[2, 7, 32]))));
    fails_with(&run(&["--input", &format!("input={}", s(&misshaped))]), &["input 'input'", "dimension 2 must be 64"]);
    let rank = dir.join("rank.npy");
    write_npy(&rank, &Tensor::from(fpx::ir::ndarray::ArrayD::<f32>::zeros(fpx::ir::ndarray::IxDyn(&[7, 64]))));
    fails_with(&run(&["--input", &format!("input={}", s(&rank))]), &["input 'input'", "rank 3"]);

    let not_npy = dir.join("not.npy");
    std::fs::write(&not_npy, b"col1,col2\n1,2\n").unwrap();
    fails_with(&run(&["--input", &format!("input={}", s(&not_npy))]), &["not.npy", "not a .npy file"]);
    fails_with(&run(&["--input", &format!("input={}", s(&dir.join("absent.npy")))]), &["absent.npy", "cannot read"]);
}

#[test]
fn unsupported_op_names_node_op_domain_and_opset() {
    let dir = TempDir::new("cli-op");
    let p = dir.join("m.onnx");
    save(&model(vec![node("Frobnicate", "frob_1", &["x"], &["y"])], vec![value("x", &["2"])], vec![value("y", &["2"])], vec![]), &p);
    fails_with(&fpx(&["run", s(&p), "-o", s(dir.path())]), &["frob_1", "Frobnicate", "domain ''", "opset 17"]);
}

#[test]
fn cyclic_graph_is_rejected() {
    let dir = TempDir::new("cli-cycle");
    let p = dir.join("m.onnx");
    let nodes = vec![node("Add", "a", &["x", "c"], &["b"]), node("Relu", "r", &["b"], &["c"])];
    save(&model(nodes, vec![value("x", &["2"])], vec![value("c", &["2"])], vec![]), &p);
    fails_with(&fpx(&["run", s(&p), "-o", s(dir.path())]), &["cycle"]);
}

#[test]
fn external_data_outside_the_model_folder_is_never_read() {
    let dir = TempDir::new("cli-ext");
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(dir.join("secret.bin"), [0u8; 16]).unwrap();
    for location in ["../secret.bin", s(&dir.join("secret.bin"))] {
        let mut w =
            fpx::onnx::tensor_to_proto("w", &Tensor::from(fpx::ir::ndarray::ArrayD::<f32>::zeros(fpx::ir::ndarray::IxDyn(&[2, 2]))));
        w.raw_data.clear();
        w.data_location = DataLocation::EXTERNAL.into();
        let mut e = StringStringEntryProto::new();
        e.key = "location".into();
        e.value = location.into();
        w.external_data.push(e);
        let p = models.join("m.onnx");
        save(
            &model(vec![node("MatMul", "mm", &["x", "w"], &["y"])], vec![value("x", &["1", "2"])], vec![value("y", &["1", "2"])], vec![w]),
            &p,
        );
        fails_with(&fpx(&["run", s(&p), "-o", s(dir.path())]), &["'w'", location]);
    }
}

#[test]
fn help_teaches() {
    let o = fpx(&["run", "--help"]);
    assert_eq!(o.code, Some(0));
    assert!(o.stdout.contains("NAME=FILE.npy") && o.stdout.contains("becomes '_'"), "{}", o.stdout);
    let o = fpx(&["--help"]);
    assert!(o.stdout.contains("inspect") && o.stdout.contains("run"), "{}", o.stdout);
}

// ---------------------------------------------------------------------------------------------
// Bad input found by a sweep of the release binary: each is a clean refusal.

/// Runs fpx, killing it after `secs` seconds (a test of something that used to hang fails
/// instead of hanging the suite).
fn fpx_within(secs: u64, args: &[&str]) -> Outcome {
    use std::process::Stdio;
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_fpx")).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("fpx starts");
    let start = std::time::Instant::now();
    while child.try_wait().expect("waits").is_none() {
        if start.elapsed().as_secs() >= secs {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fpx {args:?} still running after {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// A refusal of a value: exit 1 (a value clap's parser refused) or 2 (a usage error), one
/// `error:` message containing `needles`, no panic, nothing on stdout.
fn refused(o: &Outcome, needles: &[&str]) {
    assert!(matches!(o.code, Some(1 | 2)), "expected exit 1 or 2, got {:?}; stderr: {}", o.code, o.stderr);
    assert!(!o.stderr.contains("panicked"), "panic: {}", o.stderr);
    assert!(o.stderr.starts_with("error: "), "stderr: {}", o.stderr);
    assert!(o.stdout.is_empty(), "stdout: {}", o.stdout);
    for n in needles {
        assert!(o.stderr.contains(n), "'{n}' not in: {}", o.stderr);
    }
}

#[test]
fn bench_and_membw_numbers_are_bounded() {
    let ex = example();
    let m = ex.join("model.onnx");
    let input = format!("input={}", s(&ex.join("input.npy")));
    let bench = |flag: &str, v: &str| fpx_within(60, &["bench", s(&m), "--input", &input, flag, v]);
    refused(&bench("--iters", "18446744073709551615"), &["--iters", "1000000"]);
    refused(&bench("--iters", "1000001"), &["--iters"]);
    refused(&bench("--iters", "0"), &["--iters"]);
    refused(&bench("--threads", "1000000"), &["--threads", "1024"]);
    refused(&bench("--threads", "0"), &["--threads"]);
    for gib in ["64.5", "NaN", "inf", "-1", "0", "-0", "lots"] {
        refused(&fpx_within(60, &["membw", "--gib", gib]), &["--gib"]);
    }
    refused(&fpx_within(60, &["membw", "--threads", "1000000"]), &["--threads"]);
    refused(&fpx_within(60, &["peak", "--threads", "0"]), &["--threads"]);
    let help = fpx(&["bench", "--help"]);
    assert!(help.stdout.contains("1 to 1000000") && help.stdout.contains("1 to 1024"), "{}", help.stdout);
}

#[test]
fn peak_reports_the_rates_of_the_loops_it_ran() {
    let o = fpx_within(60, &["peak", "--threads", "1", "--json"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("valid JSON");
    assert_eq!(v["threads"], 1);
    for (rate, instruction) in [("int8_gops", "int8_instruction"), ("f32_gflops", "f32_instruction")] {
        let name = v[instruction].as_str().expect("an instruction name");
        if name.starts_with("none") {
            println!("skipped {rate}: {name}");
            continue;
        }
        let r = v[rate].as_f64().expect("a rate");
        assert!(r > 0.0 && r.is_finite(), "{rate} = {r} ({name})");
    }
}

#[test]
fn bench_output_dir_writes_the_warm_up_outputs() {
    let dir = TempDir::new("cli-bench-out");
    let ex = example();
    let m = ex.join("model.onnx");
    let out = dir.join("out");
    let o = fpx(&[
        "bench",
        s(&m),
        "--input",
        &format!("input={}", s(&ex.join("input.npy"))),
        "--iters",
        "2",
        "--threads",
        "1",
        "--json",
        "-o",
        s(&out),
    ]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(o.stdout.trim_start().starts_with('{'), "stdout holds only the JSON: {}", o.stdout);
    let got = crate::common::npy(&out.join("output.npy"));
    let want = crate::common::npy(&ex.join("ref_output.npy"));
    let err = crate::common::max_abs_diff(&got, &want);
    assert!(err < 1e-4, "max abs error vs onnxruntime {err}");
    // As with `fpx run`: an output that would replace an input is refused before anything runs.
    let input = dir.join("output.npy");
    std::fs::copy(ex.join("input.npy"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let o = fpx(&["bench", s(&m), "--input", &format!("input={}", s(&input)), "--iters", "1", "-o", s(dir.path())]);
    fails_with(&o, &["output 'output'", "input 'input'"]);
    assert_eq!(std::fs::read(&input).unwrap(), before, "the input changed");
    fails_with(&fpx(&["bench", s(&m), "--input", &format!("input={}", s(&input)), "-o", s(&input)]), &["is not a folder"]);
}

#[test]
fn compile_never_replaces_its_model() {
    let dir = TempDir::new("cli-same-output");
    let m = dir.join("m.onnx");
    std::fs::copy(example().join("model.onnx"), &m).unwrap();
    let before = std::fs::read(&m).unwrap();
    fails_with(&fpx(&["compile", s(&m), "-o", s(&m), "-q"]), &["would replace the model", "m.onnx"]);
    // The same file under another spelling, a hard link and a symbolic link.
    let dotted = dir.path().join(".").join("m.onnx");
    fails_with(&fpx(&["compile", s(&m), "-o", s(&dotted), "-q"]), &["would replace the model"]);
    let hard = dir.join("hard.fpx");
    std::fs::hard_link(&m, &hard).unwrap();
    fails_with(&fpx(&["compile", s(&m), "-o", s(&hard), "-q"]), &["would replace the model", "hard.fpx"]);
    let soft = dir.join("soft.fpx");
    std::os::unix::fs::symlink(&m, &soft).unwrap();
    fails_with(&fpx(&["compile", s(&m), "-o", s(&soft), "-q"]), &["would replace the model", "soft.fpx"]);
    assert_eq!(std::fs::read(&m).unwrap(), before, "the model changed");
    fails_with(&fpx(&["compile", s(&m), "-o", s(dir.path()), "-q"]), &["is a folder"]);
    // Nor does report's HTML page.
    let input = format!("input={}", s(&example().join("input.npy")));
    fails_with(&fpx(&["report", s(&m), "--input", &input, "--html", s(&soft)]), &["--html", "the model"]);
    assert_eq!(std::fs::read(&m).unwrap(), before, "the model changed");
}

#[test]
fn a_missing_output_folder_is_named_once_before_compiling() {
    let dir = TempDir::new("cli-missing-folder");
    let out = dir.join("absent").join("x.fpx");
    let o = fpx(&["compile", s(&example().join("model.onnx")), "-o", s(&out), "-q"]);
    fails_with(&o, &["x.fpx", "does not exist"]);
    assert_eq!(o.stderr.matches("does not exist").count(), 1, "{}", o.stderr);
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    // A folder where no file can be created: the operating system's reason is said once.
    if Path::new("/proc").is_dir() {
        let o = fpx(&["compile", s(&example().join("model.onnx")), "-o", "/proc/x.fpx", "-q"]);
        fails_with(&o, &["/proc/x.fpx"]);
        assert_eq!(o.stderr.matches("os error").count(), 1, "{}", o.stderr);
    }
}

#[test]
fn run_outputs_never_overwrite_inputs() {
    let dir = TempDir::new("cli-run-overwrite");
    let ex = example();
    let m = dir.join("m.onnx");
    std::fs::copy(ex.join("model.onnx"), &m).unwrap();
    // The model's output 'output' goes to DIR/output.npy: here that is the input file.
    let input = dir.join("output.npy");
    std::fs::copy(ex.join("input.npy"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let o = fpx(&["run", s(&m), "--input", &format!("input={}", s(&input)), "-o", s(dir.path())]);
    fails_with(&o, &["output 'output'", "input 'input'", "output.npy"]);
    // Through a symbolic link from the output folder.
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::os::unix::fs::symlink(&input, out.join("output.npy")).unwrap();
    fails_with(&fpx(&["run", s(&m), "--input", &format!("input={}", s(&input)), "-o", s(&out)]), &["input 'input'"]);
    assert_eq!(std::fs::read(&input).unwrap(), before, "the input changed");
    // The model itself.
    let named = dir.join("output.npy.onnx");
    std::fs::copy(&m, &named).unwrap();
    let sneaky = dir.join("sneaky");
    std::fs::create_dir_all(&sneaky).unwrap();
    std::fs::hard_link(&named, sneaky.join("output.npy")).unwrap();
    fails_with(&fpx(&["run", s(&named), "--input", &format!("input={}", s(&ex.join("input.npy"))), "-o", s(&sneaky)]), &["the model"]);
}

#[test]
fn colliding_output_names_write_nothing() {
    let dir = TempDir::new("cli-collide");
    let input = dir.join("x.npy");
    write_npy(&input, &Tensor::from(fpx::ir::ndarray::ArrayD::<f32>::zeros(fpx::ir::ndarray::IxDyn(&[2]))));
    let feed = format!("x={}", s(&input));
    let p = dir.join("collide.onnx");
    let nodes = vec![node("Relu", "r", &["x"], &["a:b"]), node("Neg", "n", &["x"], &["a_b"])];
    save(&model(nodes, vec![value("x", &["2"])], vec![value("a:b", &["2"]), value("a_b", &["2"])], vec![]), &p);
    let out = dir.join("out");
    fails_with(&fpx(&["run", s(&p), "--input", &feed, "-o", s(&out)]), &["'a:b'", "'a_b'", "a_b.npy"]);
    assert!(!out.exists(), "the output folder was created");
    let p = dir.join("twice.onnx");
    save(
        &model(vec![node("Relu", "r", &["x"], &["y"])], vec![value("x", &["2"])], vec![value("y", &["2"]), value("y", &["2"])], vec![]),
        &p,
    );
    fails_with(&fpx(&["run", s(&p), "--input", &feed, "-o", s(&out)]), &["'y' twice"]);
    assert!(!out.exists(), "the output folder was created");
    // A good run leaves only the outputs (no temporary files).
    let p = dir.join("good.onnx");
    save(&model(vec![node("Relu", "r", &["x"], &["y"])], vec![value("x", &["2"])], vec![value("y", &["2"])], vec![]), &p);
    let o = fpx(&["run", s(&p), "--input", &feed, "-o", s(&out)]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["y.npy"]);
}

#[test]
fn initializers_listed_as_inputs_cannot_be_fed() {
    let dir = TempDir::new("cli-init-input");
    let w = fpx_test_support::onnx::float_tensor("w", &[2], &[1.0, 2.0]);
    let feed_file = dir.join("w.npy");
    write_npy(&feed_file, &Tensor::from(fpx::ir::ndarray::ArrayD::<f32>::zeros(fpx::ir::ndarray::IxDyn(&[2]))));
    let feed = format!("w={}", s(&feed_file));
    // No real inputs at all.
    let p = dir.join("none.onnx");
    save(&model(vec![node("Neg", "n", &["w"], &["y"])], vec![value("w", &["2"])], vec![value("y", &["2"])], vec![w.clone()]), &p);
    fails_with(&fpx(&["run", s(&p), "--input", &feed, "-o", s(&dir.join("o"))]), &["'w'", "constant", "takes no inputs"]);
    // One real input.
    let p = dir.join("one.onnx");
    save(
        &model(
            vec![node("Add", "a", &["x", "w"], &["y"])],
            vec![value("x", &["2"]), value("w", &["2"])],
            vec![value("y", &["2"])],
            vec![w],
        ),
        &p,
    );
    let x = format!("x={}", s(&feed_file));
    fails_with(&fpx(&["run", s(&p), "--input", &x, "--input", &feed, "-o", s(&dir.join("o"))]), &["'w'", "constant", "inputs are 'x'"]);
}

#[test]
fn compile_refuses_what_run_refuses() {
    use fpx_test_support::onnx::{float_tensor, value_info, INT64};
    let dir = TempDir::new("cli-unrunnable");
    let gemm = dir.join("gemm.onnx");
    let (b, c) = (float_tensor("b", &[4, 3], &[0.5; 12]), float_tensor("c", &[2], &[1.0, 2.0]));
    save(
        &model(
            vec![node("Gemm", "bad_gemm", &["a", "b", "c"], &["y"])],
            vec![value("a", &["1", "4"])],
            vec![value("y", &["1", "3"])],
            vec![b, c],
        ),
        &gemm,
    );
    let int_mm = dir.join("int.onnx");
    save(
        &model(
            vec![node("MatMul", "int_mm", &["x", "z"], &["y"])],
            vec![value_info("x", INT64, Some(&["2", "2"])), value_info("z", INT64, Some(&["2", "2"]))],
            vec![value_info("y", INT64, Some(&["2", "2"]))],
            vec![],
        ),
        &int_mm,
    );
    for (m, needles) in [(&gemm, ["bad_gemm", "does not broadcast"]), (&int_mm, ["int_mm", "int64"])] {
        let out = dir.join("x.fpx");
        fails_with(&fpx(&["compile", s(m), "-o", s(&out), "-q"]), &needles);
        assert!(!out.exists(), "an artifact was written");
        fails_with(&fpx(&["run", s(m), "-o", s(&dir.join("o"))]), &needles);
    }
}

#[test]
fn integer_division_by_zero_is_an_error_naming_the_node() {
    use fpx_test_support::onnx::{value_info, INT64};
    let dir = TempDir::new("cli-div0");
    let p = dir.join("div.onnx");
    let int = |n: &str| value_info(n, INT64, Some(&["3"]));
    save(&model(vec![node("Div", "the_div", &["x", "z"], &["y"])], vec![int("x"), int("z")], vec![int("y")], vec![]), &p);
    let (x, z) = (dir.join("x.npy"), dir.join("z.npy"));
    write_npy(&x, &Tensor::vec_i64(vec![6, 7, 8]));
    write_npy(&z, &Tensor::vec_i64(vec![2, 0, 4]));
    let out = dir.join("o");
    let args = |z: &Path| {
        vec![
            "run".to_string(),
            s(&p).into(),
            "--input".into(),
            format!("x={}", s(&x)),
            "--input".into(),
            format!("z={}", s(z)),
            "-o".into(),
            s(&out).into(),
        ]
    };
    let a = args(&z);
    fails_with(&fpx(&a.iter().map(String::as_str).collect::<Vec<_>>()), &["the_div", "division by zero"]);
    assert!(!out.exists());
    write_npy(&z, &Tensor::vec_i64(vec![2, -7, 4]));
    let a = args(&z);
    let o = fpx(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert_eq!(crate::common::npy(&out.join("y.npy")).len(), 3);
}
