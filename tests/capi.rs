//! The C API (`crates/fpx-capi`): the C example (`examples/c/run_model.c`), built with the system
//! C compiler against the checked-in header and `libfpx_c.so`, runs the bundled model with the
//! same result as the Rust API and reports a damaged artifact as an error, not a crash. (That the
//! header is what cbindgen generates is checked by `cargo run -p fpx-capi-header -- --check`,
//! which scripts/test.sh runs.)

use crate::common::{compile_options, npy};
use fpx_test_support::{data::workspace_root, skip, Requirement, TempDir};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The folder holding `libfpx_c.so`: this test binary's profile folder (target/<profile>), where
/// `cargo build` puts it (`cargo test` builds only the crate's rlib).
fn library_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?.to_path_buf();
    dir.join("libfpx_c.so").is_file().then_some(dir)
}

/// Builds the C example against the header and `libfpx_c.so`; None (with the skip printed) when
/// the library or a C compiler is missing.
fn build_example(dir: &Path) -> Option<PathBuf> {
    let Some(lib) = library_dir() else {
        skip(Requirement::Capi, "capi", "libfpx_c.so is not built beside this test (cargo build -p fpx-capi; scripts/test.sh builds it)");
        return None;
    };
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let exe = dir.join("run_model");
    let root = workspace_root();
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-I"])
        .arg(root.join("crates/fpx-capi/include"))
        .arg(root.join("examples/c/run_model.c"))
        .arg("-L")
        .arg(&lib)
        .arg("-lfpx_c")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lm")
        .arg("-o")
        .arg(&exe)
        .status();
    match status {
        Ok(s) => assert!(s.success(), "{cc} could not build examples/c/run_model.c"),
        Err(e) => {
            skip(Requirement::Capi, "capi", &format!("no C compiler '{cc}': {e}"));
            return None;
        }
    }
    Some(exe)
}

fn run(exe: &Path, args: &[&Path], tolerance: &str) -> (bool, String, String) {
    let out = Command::new(exe).args(args).arg(tolerance).output().expect("the example starts");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_c_example_runs_the_bundled_model_as_the_rust_api_does() {
    let dir = TempDir::new("capi");
    let Some(exe) = build_example(dir.path()) else { return };
    let example = workspace_root().join("examples/tiny-transformer");
    let artifact = dir.path().join("model.fpx");
    fpx::compile(&example.join("model.onnx"), &compile_options()).unwrap().save(&artifact).unwrap();

    // The Rust API's output, as the C program's reference: the two must agree bit for bit.
    let input = npy(&example.join("input.npy"));
    let rust = fpx::open(&artifact).unwrap().run(vec![("input".into(), input)]).unwrap().remove(0).1;
    let rust_npy = dir.path().join("rust_output.npy");
    fpx::runtime::npy::write(&rust_npy, &rust).unwrap();
    let (ok, stdout, stderr) = run(&exe, &[&artifact, &example.join("input.npy"), &rust_npy], "0");
    assert!(ok, "the C example failed:\n{stdout}{stderr}");
    assert!(stdout.contains("input input: dtype 1, [batch, seq, 64]"), "{stdout}");
    assert!(stdout.contains("output shape [2, 7, 64]") && stdout.contains("max_abs_diff 0 "), "{stdout}");

    // Against onnxruntime's FP32 output: FP6 weights move it a little, not more.
    let (ok, stdout, stderr) = run(&exe, &[&artifact, &example.join("input.npy"), &example.join("ref_output.npy")], "0.5");
    assert!(ok, "{stdout}{stderr}");
    let cosine: f64 = stdout.split("cosine ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap().parse().unwrap();
    assert!(cosine > 0.99, "FP6 vs FP32 cosine {cosine}");
    // A tolerance it does not meet fails the check: the comparison is real.
    let (ok, stdout, _) = run(&exe, &[&artifact, &example.join("input.npy"), &example.join("ref_output.npy")], "1e-9");
    assert!(!ok && stdout.contains("FAILED"), "{stdout}");
}

#[test]
fn a_damaged_artifact_is_an_error_code_and_a_message_not_a_crash() {
    let dir = TempDir::new("capi-damaged");
    let Some(exe) = build_example(dir.path()) else { return };
    let example = workspace_root().join("examples/tiny-transformer");
    let artifact = dir.path().join("model.fpx");
    fpx::compile(&example.join("model.onnx"), &compile_options()).unwrap().save(&artifact).unwrap();
    let bytes = std::fs::read(&artifact).unwrap();
    let truncated = dir.path().join("truncated.fpx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let corrupt = dir.path().join("corrupt.fpx");
    std::fs::write(&corrupt, &flipped).unwrap();
    let input = example.join("input.npy");
    for (file, expect) in [(&truncated, "damaged"), (&corrupt, "checksum"), (&dir.path().join("missing.fpx"), "missing.fpx")] {
        let out = Command::new(&exe).arg(file).arg(&input).arg(&input).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", file.display());
        assert!(stderr.starts_with("fpx_load failed: cannot load model '"), "{stderr}");
        assert!(stderr.contains(expect), "{}: {stderr}", file.display());
    }
}
