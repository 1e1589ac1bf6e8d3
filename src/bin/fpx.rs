//! The `fpx` command line.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use fpx::runtime::npy;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "fpx",
    version,
    about = "Ahead-of-time compiler for weight-quantized (FP6) ONNX models",
    long_about = "fpx imports an ONNX model into its own graph IR, rewrites matrix products with constant \
weights into FP6 quantized products, generates kernels for each GEMM shape (CUDA and CPU) and writes one \
runnable artifact.\n\nToday: `fpx run` executes an .onnx model on the CPU reference executor (the FP32 path \
every quantized result is compared with), and `fpx inspect` summarizes a model.",
    after_help = "Examples:\n  fpx inspect model.onnx\n  fpx run model.onnx --input input_ids=ids.npy --input attention_mask=mask.npy --output-dir out/"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model on inputs from .npy files and write every output as DIR/<name>.npy.
    #[command(
        after_help = "Each output is written to DIR/<name>.npy, where every character of the output name that is \
not a letter or digit becomes '_' (e.g. 'last_hidden_state' -> last_hidden_state.npy, 'out:0' -> out_0.npy).\n\n\
Example:\n  fpx run model.onnx --input input_ids=ids.npy --input attention_mask=mask.npy --output-dir out/"
    )]
    Run {
        /// The model: an .onnx file.
        model: PathBuf,
        /// A graph input as NAME=FILE.npy; repeat for each input of the model.
        #[arg(short, long = "input", value_name = "NAME=FILE.npy")]
        inputs: Vec<String>,
        /// Folder for the outputs (created if missing).
        #[arg(short, long, value_name = "DIR")]
        output_dir: PathBuf,
    },
    /// Summarize a model: opsets, op counts, inputs/outputs, parameters, and every MatMul/Gemm
    /// with a constant weight (what quantization will rewrite).
    Inspect {
        /// The model: an .onnx file.
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn parse_input(spec: &str) -> Result<(String, PathBuf)> {
    match spec.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => {
            Ok((name.to_string(), PathBuf::from(file)))
        }
        _ => bail!("--input '{spec}' must look like NAME=FILE.npy"),
    }
}

fn check_model_path(model: &Path) -> Result<()> {
    if !model.exists() {
        bail!("model file '{}' does not exist", model.display());
    }
    match model.extension().and_then(|e| e.to_str()) {
        Some("onnx") => Ok(()),
        _ => bail!("'{}' is not an .onnx model (fpx run takes .onnx files; .fpx artifacts come with `fpx compile`)", model.display()),
    }
}

fn run(model_path: &Path, inputs: &[String], out_dir: &Path) -> Result<()> {
    check_model_path(model_path)?;
    let t0 = Instant::now();
    let model = fpx::Model::open(model_path)
        .with_context(|| format!("cannot load model '{}'", model_path.display()))?;
    let load = t0.elapsed();
    let mut feeds = Vec::new();
    for spec in inputs {
        let (name, file) = parse_input(spec)?;
        let t = npy::read(&file).with_context(|| format!("cannot read input '{name}'"))?;
        feeds.push((name, t));
    }
    let t1 = Instant::now();
    let outputs = model
        .run(feeds)
        .with_context(|| format!("cannot run model '{}'", model_path.display()))?;
    let run_time = t1.elapsed();
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create output folder '{}'", out_dir.display()))?;
    let mut used = std::collections::HashSet::new();
    for (name, t) in &outputs {
        let mut file = fpx::output_file_name(name);
        if !used.insert(file.clone()) {
            bail!("outputs '{name}' and another output map to the same file name '{file}'");
        }
        let path = out_dir.join(&file);
        npy::write(&path, t)?;
        file = path.display().to_string();
        println!("{name}: {} {:?} -> {file}", t.dtype(), t.shape());
    }
    println!(
        "loaded in {:.1} ms, ran in {:.1} ms",
        load.as_secs_f64() * 1e3,
        run_time.as_secs_f64() * 1e3
    );
    Ok(())
}

fn inspect(model_path: &Path, json: bool) -> Result<()> {
    check_model_path(model_path)?;
    let graph = fpx::onnx::load_model(model_path)
        .with_context(|| format!("cannot load model '{}'", model_path.display()))?;
    let mut summary = fpx::ModelSummary::of(&graph);
    // Weights behind constant subgraphs (a Transpose of an initializer, say) count too.
    let mut folded = graph;
    fpx::simplify(&mut folded).context("cannot simplify the graph")?;
    summary.weight_matmuls = fpx::weight_matmuls(&folded);
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.to_text());
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let res = match &cli.command {
        Command::Run {
            model,
            inputs,
            output_dir,
        } => run(model, inputs, output_dir),
        Command::Inspect { model, json } => inspect(model, *json),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
