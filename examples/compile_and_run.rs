//! Using fpx as a library, as a deployment toolchain would: compile an ONNX model to an `.fpx`
//! artifact ahead of time, then load the artifact and run it.
//!
//! ```text
//! cargo run --release --example compile_and_run -- examples/tiny-transformer/model.onnx \
//!     input=examples/tiny-transformer/input.npy
//! ```

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, feeds) = match args.split_first() {
        Some((m, rest)) if !rest.is_empty() => (m.clone(), rest.to_vec()),
        _ => return Err("usage: compile_and_run MODEL.onnx NAME=INPUT.npy [NAME=INPUT.npy ...]".into()),
    };

    // 1. Compile: FP6 e3m2 weights, CPU kernels for any AVX2 machine (the defaults).
    let compiled = fpx::compile(Path::new(&model), &fpx::CompileOptions::default())?;
    let artifact = std::env::temp_dir().join("compile_and_run_example.fpx");
    let written = compiled.save(&artifact)?;
    println!("wrote {} ({} bytes, {} kernels)", artifact.display(), written.bytes, compiled.kernels);

    // 2. Load and run (in a deployment this happens elsewhere, from the file alone).
    let loaded = fpx::open(&artifact)?;
    let mut inputs = Vec::new();
    for f in &feeds {
        let (name, path) = f.split_once('=').ok_or("inputs look like NAME=FILE.npy")?;
        inputs.push((name.to_string(), fpx::runtime::npy::read(Path::new(path))?));
    }
    for (name, tensor) in loaded.run(inputs)? {
        println!("{name}: {} {:?}", tensor.dtype(), tensor.shape());
    }
    std::fs::remove_file(&artifact)?;
    Ok(())
}
