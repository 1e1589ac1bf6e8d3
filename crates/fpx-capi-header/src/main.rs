//! Writes the C API's header, `crates/fpx-capi/include/fpx.h`, from `crates/fpx-capi`'s code with
//! cbindgen (its settings: `crates/fpx-capi/cbindgen.toml`), or with `--check` fails when the
//! checked-in header differs from what cbindgen generates.
//!
//! ```text
//! cargo run -p fpx-capi-header            # regenerate the header
//! cargo run -p fpx-capi-header -- --check # what scripts/test.sh runs
//! ```

use std::path::Path;
use std::process::ExitCode;

/// The header cbindgen generates from the crate in `crate_dir` with its `cbindgen.toml`.
fn generate(crate_dir: &Path) -> Result<String, String> {
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .map_err(|e| format!("cannot read {}: {e}", crate_dir.join("cbindgen.toml").display()))?;
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .map_err(|e| format!("cbindgen cannot generate the header of {}: {e}", crate_dir.display()))?
        .write(&mut out);
    String::from_utf8(out).map_err(|e| format!("cbindgen wrote a header that is not UTF-8: {e}"))
}

fn main() -> ExitCode {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => {
            eprintln!("usage: fpx-capi-header [--check]  (unknown argument '{other}')");
            return ExitCode::from(2);
        }
    };
    // `cargo run` names this package's folder at run time; the compile-time one is the fallback
    // (a binary built from another checkout would otherwise check that checkout's header).
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), std::path::PathBuf::from);
    let crate_dir = manifest_dir.parent().expect("crates/").join("fpx-capi");
    let header = crate_dir.join("include/fpx.h");
    let generated = match generate(&crate_dir) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("fpx-capi-header: {e}");
            return ExitCode::FAILURE;
        }
    };
    let required =
        ["fpx_load", "fpx_inputs", "fpx_outputs", "fpx_run", "fpx_last_error", "fpx_free", "FPX_API_VERSION", "FPX_STATUS_PANIC"];
    if let Some(missing) = required.iter().find(|name| !generated.contains(*name)) {
        eprintln!("fpx-capi-header: the generated header lacks {missing}");
        return ExitCode::FAILURE;
    }
    if check {
        let checked_in = std::fs::read_to_string(&header).unwrap_or_default();
        if checked_in != generated {
            eprintln!(
                "fpx-capi-header: {} is out of date with crates/fpx-capi/src; regenerate it: cargo run -p fpx-capi-header",
                header.display()
            );
            return ExitCode::FAILURE;
        }
        println!("fpx-capi-header: {} is what cbindgen generates", header.display());
    } else if let Err(e) = std::fs::write(&header, &generated) {
        eprintln!("fpx-capi-header: cannot write {}: {e}", header.display());
        return ExitCode::FAILURE;
    } else {
        println!("fpx-capi-header: wrote {}", header.display());
    }
    ExitCode::SUCCESS
}
