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
    /// Run a model (.onnx, or an .fpx artifact from `fpx compile`) on inputs from .npy files and
    /// write every output as DIR/<name>.npy.
    #[command(after_help = "Each output is written to DIR/<name>.npy, where every character of the output name that is \
not a letter or digit becomes '_' (e.g. 'last_hidden_state' -> last_hidden_state.npy, 'out:0' -> out_0.npy).\n\n\
Example:\n  fpx run model.onnx --input input_ids=ids.npy --input attention_mask=mask.npy --output-dir out/")]
    Run {
        /// The model: an .onnx file or an .fpx artifact.
        model: PathBuf,
        /// A graph input as NAME=FILE.npy; repeat for each input of the model.
        #[arg(short, long = "input", value_name = "NAME=FILE.npy")]
        inputs: Vec<String>,
        /// Folder for the outputs (created if missing).
        #[arg(short, long, value_name = "DIR")]
        output_dir: PathBuf,
        #[command(flatten)]
        device: DeviceArg,
        #[command(flatten)]
        quant: QuantArgs,
    },
    /// Compare weight schemes: run FP32 and each scheme on the same inputs and print, per scheme,
    /// each output's max-abs and relative error and cosine vs FP32, and per layer the weight
    /// relative RMSE. This is how to choose between FP6, FP4 and INT4.
    #[command(after_help = "Schemes are comma-separated; add ':gN' for a group size along K (e.g. int4:g128).\n\n\
Example:\n  fpx report model.onnx --input input_ids=ids.npy --input attention_mask=mask.npy --schemes fp6-e3m2,fp6-e2m3,int4,int4:g128 --html report.html")]
    Report(ReportArgs),
    /// Time a model in-process: median/min/max latency over repeated runs, and per matrix product
    /// its time and effective weight bandwidth (weight bytes / time).
    #[command(after_help = "Example:\n  fpx bench model.onnx --weights fp6-e3m2 --input input_ids=ids.npy --iters 50 --threads 2 --json")]
    Bench(BenchArgs),
    /// Measure this machine's memory read bandwidth (a max-reduction over a large buffer), the
    /// ceiling a weight-streaming kernel is compared with.
    Membw {
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Buffer size in GiB (use well above the last-level cache).
        #[arg(long, default_value_t = 1.0)]
        gib: f64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compile an ONNX model ahead of time into one .fpx artifact: weights quantized (FP6 by
    /// default), a CPU kernel generated with LLVM for each GEMM shape, everything checksummed.
    #[command(
        after_help = "Example:\n  fpx compile model.onnx -o model.fpx --weights fp6-e3m2 --cpu x86-64-v3\n  fpx run model.fpx --input x=x.npy --output-dir out/\n  fpx compile model.onnx -o fast.fpx --weights fp6-e2m3 --activations int8   # byte dot products\n\n\
An artifact contains native code: load only artifacts you trust."
    )]
    Compile(CompileArgs),
    /// Summarize a model: opsets, op counts, inputs/outputs, parameters, and every MatMul/Gemm
    /// with a constant weight (what quantization will rewrite).
    Inspect {
        /// The model: an .onnx file or an .fpx artifact.
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Write every PTX module of an artifact to DIR/<arch>/<module>.ptx (the folder is created).
        #[arg(long, value_name = "DIR")]
        dump_ptx: Option<PathBuf>,
    },
}

/// Arguments of `fpx compile`.
#[derive(clap::Args)]
struct CompileArgs {
    /// The model: an .onnx file.
    model: PathBuf,
    /// Where to write the artifact (written to a temporary file, then renamed).
    #[arg(short, long, value_name = "OUT.fpx")]
    output: PathBuf,
    /// Weight scheme: fp6-e3m2 | fp6-e2m3 | fp6-auto | fp5-e2m2 | fp4-e2m1 | int4 | int8. fp6-auto picks, per
    /// layer, the 6-bit format with the lower weight error.
    #[arg(long, value_name = "SCHEME", default_value = "fp6-e3m2")]
    weights: String,
    /// Quantization group size along K (default: one scale per output channel).
    #[arg(long, value_name = "N")]
    group_size: Option<usize>,
    /// Search a clipping ratio per channel/group that minimizes the weight's squared error.
    #[arg(long)]
    scale_search: bool,
    /// Which code to generate: cpu (LLVM), cuda (PTX for sm_80 and sm_90 via NVRTC; needs FP6 weights with one scale
    /// per output channel, and NVRTC 13.0: scripts/setup.sh installs it), or all (both).
    #[arg(long, value_name = "cpu|cuda|all", default_value = "cpu")]
    target: String,
    /// The CPU the code is for: x86-64-v3 (AVX2+FMA+F16C, portable), x86-64-v4 (AVX-512), x86-64-v4-vnni (AVX-512 with
    /// VBMI and VNNI: Ice Lake, Zen 4 and later; fastest int8 activations), or native (this machine). The artifact
    /// records the features its code needs and refuses to load on a CPU without them.
    #[arg(long, value_name = "CPU", default_value = "x86-64-v3")]
    cpu: String,
    /// What the CPU kernels multiply the weights with: f32 (exact), or int8 (activations quantized per row and block
    /// of 32 columns at run time, like onnxruntime's MatMulNBits accuracy_level 4: about twice the multiply rate,
    /// with int8 rounding). int8 needs weights with small integer values (fp6-e2m3, fp4-e2m1 or int4) and --target cpu.
    #[arg(long, value_name = "f32|int8", default_value = "f32")]
    activations: String,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

/// Arguments of `fpx bench`.
#[derive(clap::Args)]
struct BenchArgs {
    /// The model: an .onnx file or an .fpx artifact.
    model: PathBuf,
    /// A graph input as NAME=FILE.npy; repeat for each input of the model.
    #[arg(short, long = "input", value_name = "NAME=FILE.npy")]
    inputs: Vec<String>,
    /// Measured iterations (after one warm-up run).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print JSON (field names carry their unit, e.g. median_us).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArg,
    #[command(flatten)]
    quant: QuantArgs,
}

/// `--device` of `fpx run` and `fpx bench`.
#[derive(clap::Args)]
struct DeviceArg {
    /// Where to run: cpu, or cuda (the GPU; whole-graph GPU execution is not built yet).
    #[arg(long, value_name = "cpu|cuda", default_value = "cpu")]
    device: String,
}

/// Arguments of `fpx report`.
#[derive(clap::Args)]
struct ReportArgs {
    /// The model: an .onnx file.
    model: PathBuf,
    /// A graph input as NAME=FILE.npy; repeat for each input of the model.
    #[arg(short, long = "input", value_name = "NAME=FILE.npy")]
    inputs: Vec<String>,
    /// Schemes to compare with FP32, comma-separated; each may end in ':gN' (group size N along K) and then ':a8'
    /// (int8 activations, as `--activations int8` artifacts run), e.g. fp6-e2m3:a8,int4:g128.
    #[arg(long, value_name = "LIST", default_value = fpx::report::DEFAULT_SCHEMES)]
    schemes: String,
    /// Group size along K for schemes without their own ':gN' (default: one scale per output channel).
    #[arg(long, value_name = "N")]
    group_size: Option<usize>,
    /// Search a clipping ratio per channel/group that minimizes the weight's squared error.
    #[arg(long)]
    scale_search: bool,
    /// Also write one self-contained HTML page with plots.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// The layer (node name) whose weight histogram the HTML page shows (default: the first).
    #[arg(long, value_name = "NODE")]
    layer: Option<String>,
    /// Also compare [batch, seq, dim] outputs mean-pooled over this [batch, seq] input
    /// (e.g. attention_mask): the sentence embedding an embedding model's user consumes.
    #[arg(long, value_name = "INPUT")]
    pool_mask: Option<String>,
}

/// Weight quantization flags shared by the commands that build a model.
#[derive(clap::Args)]
struct QuantArgs {
    /// Weight scheme for every MatMul/Gemm with a constant weight: fp6-e3m2 | fp6-e2m3 | fp6-auto |
    /// fp5-e2m2 | fp4-e2m1 | int4 | int8 | none. fp6-auto picks, per layer, the 6-bit format
    /// with the lower weight error.
    #[arg(long, value_name = "SCHEME", default_value = "none")]
    weights: String,
    /// Quantization group size along K (default: one scale per output channel).
    #[arg(long, value_name = "N")]
    group_size: Option<usize>,
    /// Search a clipping ratio per channel/group that minimizes the weight's squared error.
    #[arg(long)]
    scale_search: bool,
    /// What quantized products multiply the weights with: f32, or int8 (activations quantized per row and block of
    /// 32 columns, as int8 artifact kernels do; needs fp6-e2m3, fp5-e2m2, fp4-e2m1 or int4 weights).
    #[arg(long, value_name = "f32|int8", default_value = "f32")]
    activations: String,
}

impl QuantArgs {
    fn options(&self) -> Result<fpx::QuantizeOptions> {
        let scheme = fpx::WeightScheme::parse(&self.weights)?;
        let activations = parse_activations(&self.activations)?;
        let o = fpx::QuantizeOptions { scheme, group_size: self.group_size, scale_search: self.scale_search, activations };
        o.validate()?;
        Ok(o)
    }
}

fn parse_activations(s: &str) -> Result<fpx::Activations> {
    fpx::Activations::parse(s).with_context(|| format!("--activations '{s}': choose f32 or int8"))
}

fn read_inputs(inputs: &[String]) -> Result<Vec<(String, fpx::ir::Tensor)>> {
    let mut feeds = Vec::new();
    for spec in inputs {
        let (name, file) = parse_input(spec)?;
        let t = npy::read(&file).with_context(|| format!("cannot read input '{name}'"))?;
        feeds.push((name, t));
    }
    Ok(feeds)
}

fn parse_input(spec: &str) -> Result<(String, PathBuf)> {
    match spec.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => Ok((name.to_string(), PathBuf::from(file))),
        _ => bail!("--input '{spec}' must look like NAME=FILE.npy"),
    }
}

/// Checks that `model` exists and is an .onnx file (or, where `artifact_ok`, an .fpx artifact).
fn check_model_file(model: &Path, artifact_ok: bool) -> Result<()> {
    if !model.exists() {
        bail!("model file '{}' does not exist", model.display());
    }
    match model.extension().and_then(|e| e.to_str()) {
        Some("onnx") => Ok(()),
        Some("fpx") if artifact_ok => Ok(()),
        _ if artifact_ok => bail!("'{}' is neither an .onnx model nor an .fpx artifact", model.display()),
        _ => bail!("'{}' is not an .onnx model", model.display()),
    }
}

fn check_model_path(model: &Path) -> Result<()> {
    check_model_file(model, false)
}

/// A model ready to run: an .onnx on the reference path, or a compiled artifact. One exists at
/// a time, so the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Runnable {
    Onnx(fpx::Model),
    Artifact(fpx::Loaded),
}

impl Runnable {
    /// Opens an .onnx (quantized in memory as `quant` says) or an .fpx artifact; `announce`
    /// prints what quantization did (off where stdout must hold only JSON).
    fn open(path: &Path, quant: &QuantArgs, announce: bool) -> Result<Runnable> {
        check_model_file(path, true)?;
        if is_artifact(path) {
            if quant.weights != "none" || quant.group_size.is_some() || quant.scale_search || quant.activations != "f32" {
                bail!(
                    "--weights/--group-size/--scale-search/--activations apply to .onnx models; '{}' was quantized when it was compiled",
                    path.display()
                );
            }
            let loaded = fpx::load(path).with_context(|| format!("cannot load artifact '{}'", path.display()))?;
            return Ok(Runnable::Artifact(loaded));
        }
        let options = quant.options()?;
        let model = fpx::Model::open_with(path, &options).with_context(|| format!("cannot load model '{}'", path.display()))?;
        if let Some(q) = model.quantization().filter(|_| announce) {
            println!(
                "weights: {} layers as {}, {:.2} MB -> {:.2} MB",
                q.layers.len(),
                options.scheme.name(),
                q.weight_bytes_in as f64 / 1e6,
                q.weight_bytes_out as f64 / 1e6
            );
        }
        Ok(Runnable::Onnx(model))
    }

    fn executor(&self) -> &fpx::runtime::CpuExecutor {
        match self {
            Runnable::Onnx(m) => m.executor(),
            Runnable::Artifact(a) => a.executor(),
        }
    }
}

/// `--device`: cpu runs; cuda says what is missing (no driver, or the executor) instead of
/// silently running on the CPU.
fn check_device(device: &str) -> Result<()> {
    match device {
        "cpu" => Ok(()),
        "cuda" => {
            fpx::cuda::driver_available().context("--device cuda")?;
            bail!(
                "--device cuda: whole-graph GPU execution is not built yet (the GPU GEMM kernels are: scripts/gpu-check.sh tests and \
                 benchmarks them); use --device cpu"
            )
        }
        other => bail!("--device '{other}': choose cpu or cuda"),
    }
}

fn run(model_path: &Path, inputs: &[String], out_dir: &Path, quant: &QuantArgs) -> Result<()> {
    let t0 = Instant::now();
    let model = Runnable::open(model_path, quant, true)?;
    let load = t0.elapsed();
    let feeds = read_inputs(inputs)?;
    let t1 = Instant::now();
    let outputs = model.executor().run(feeds).with_context(|| format!("cannot run model '{}'", model_path.display()))?;
    let run_time = t1.elapsed();
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create output folder '{}'", out_dir.display()))?;
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
    println!("loaded in {:.1} ms, ran in {:.1} ms", load.as_secs_f64() * 1e3, run_time.as_secs_f64() * 1e3);
    Ok(())
}

fn inspect(model_path: &Path, json: bool, dump_ptx: Option<&Path>) -> Result<()> {
    check_model_file(model_path, true)?;
    if dump_ptx.is_some() && !is_artifact(model_path) {
        bail!("--dump-ptx: '{}' is not an .fpx artifact (compile it with `fpx compile --target cuda` first)", model_path.display());
    }
    if is_artifact(model_path) {
        let a = fpx::artifact::Artifact::open(model_path).with_context(|| format!("cannot open artifact '{}'", model_path.display()))?;
        if let Some(dir) = dump_ptx {
            let written = dump_ptx_modules(&a, dir)?;
            eprintln!("wrote {written} PTX modules under {}", dir.display());
        }
        let graph = a.graph()?;
        let summary = fpx::ArtifactSummary::of(&a, &graph);
        if json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        } else {
            print!("{}", summary.to_text());
        }
        return Ok(());
    }
    let graph = fpx::onnx::load_model(model_path).with_context(|| format!("cannot load model '{}'", model_path.display()))?;
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

/// Writes every PTX module of `a` to `dir/<arch>/<module>.ptx`; returns how many.
fn dump_ptx_modules(a: &fpx::artifact::Artifact, dir: &Path) -> Result<usize> {
    let code = a.ptx_code();
    if code.is_empty() {
        bail!("--dump-ptx: the artifact has no GPU code (compile with `fpx compile --target cuda` or `--target all`)");
    }
    let mut written = 0;
    for p in &code {
        let sub = dir.join(p.arch);
        std::fs::create_dir_all(&sub).with_context(|| format!("cannot create folder '{}'", sub.display()))?;
        for m in &p.modules {
            // Module names come from the file: keep them to one plain path component.
            let safe: String = m.name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
            let path = sub.join(format!("{safe}.ptx"));
            std::fs::write(&path, m.ptx).with_context(|| format!("cannot write '{}'", path.display()))?;
            written += 1;
        }
    }
    Ok(written)
}

fn report(args: &ReportArgs) -> Result<()> {
    check_model_path(&args.model)?;
    let options = fpx::report::ReportOptions {
        schemes: fpx::report::parse_schemes(&args.schemes, args.group_size, args.scale_search)?,
        histogram_layer: args.layer.clone(),
        pool_mask: args.pool_mask.clone(),
    };
    let feeds = read_inputs(&args.inputs)?;
    let r = fpx::report::accuracy_report(&args.model, feeds, &options)
        .with_context(|| format!("cannot report on '{}'", args.model.display()))?;
    print!("{}", r.to_text());
    if let Some(path) = &args.html {
        let tmp = path.with_extension("html.tmp");
        std::fs::write(&tmp, r.to_html())
            .and_then(|_| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write '{}'", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

fn bench(args: &BenchArgs) -> Result<()> {
    if args.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let model = Runnable::open(&args.model, &args.quant, !args.json)?;
    let feeds = read_inputs(&args.inputs)?;
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let r = fpx::bench::bench(model.executor(), &feeds, args.iters, threads)
        .with_context(|| format!("cannot run model '{}'", args.model.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", r.to_text());
    }
    Ok(())
}

fn membw(threads: Option<usize>, gib: f64, json: bool) -> Result<()> {
    if !(gib > 0.0 && gib <= 64.0) {
        bail!("--gib must be in (0, 64]");
    }
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let r = fpx::bench::read_bandwidth((gib * (1u64 << 30) as f64) as usize, threads)?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "read bandwidth: {:.2} GB/s ({} threads, {:.2} GiB, best of {} passes)",
            r.gb_per_s,
            r.threads,
            r.bytes as f64 / (1u64 << 30) as f64,
            r.passes
        );
    }
    Ok(())
}

fn compile(args: &CompileArgs) -> Result<()> {
    check_model_path(&args.model)?;
    let scheme = fpx::WeightScheme::parse(&args.weights)?;
    if scheme == fpx::WeightScheme::None {
        bail!(
            "--weights none: an artifact holds quantized weights; pick a scheme (e.g. fp6-e3m2), or run the .onnx directly with `fpx run`"
        );
    }
    let target = match args.target.as_str() {
        "cpu" => fpx::Target::Cpu,
        "cuda" => fpx::Target::Cuda,
        "all" => fpx::Target::All,
        other => bail!("--target '{other}': choose cpu, cuda or all"),
    };
    let cpu = match args.cpu.as_str() {
        "native" => fpx::llvm::CpuTarget::Native,
        "x86-64-v3" => fpx::llvm::CpuTarget::X86_64V3,
        "x86-64-v4" => fpx::llvm::CpuTarget::X86_64V4,
        "x86-64-v4-vnni" => fpx::llvm::CpuTarget::X86_64V4Vnni,
        other => bail!("--cpu '{other}': choose native, x86-64-v3, x86-64-v4 or x86-64-v4-vnni"),
    };
    let activations = parse_activations(&args.activations)?;
    let options = fpx::CompileOptions {
        quantize: fpx::QuantizeOptions { scheme, group_size: args.group_size, scale_search: args.scale_search, activations },
        target,
        cpu,
    };
    let t0 = Instant::now();
    let bar = if args.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(fpx::Stage::ALL.len() as u64 + 1) };
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("valid template"));
    let compiled = fpx::compile_with_progress(&args.model, &options, |stage| {
        bar.set_message(stage.label());
        bar.inc(1);
    })
    .with_context(|| format!("cannot compile '{}'", args.model.display()))?;
    bar.set_message("write artifact");
    let written = compiled.save(&args.output).with_context(|| format!("cannot write '{}'", args.output.display()))?;
    bar.inc(1);
    bar.finish_and_clear();
    let q = &compiled.quantization;
    println!("compiled {} -> {} in {:.2} s", args.model.display(), args.output.display(), t0.elapsed().as_secs_f64());
    println!(
        "  weights: {} layers as {}, {:.2} MB -> {:.2} MB ({:.2}x smaller)",
        q.layers.len(),
        scheme.name(),
        q.weight_bytes_in as f64 / 1e6,
        q.weight_bytes_out as f64 / 1e6,
        q.weight_bytes_in as f64 / q.weight_bytes_out.max(1) as f64
    );
    for code in &compiled.contents.cpu {
        let int8 = if activations == fpx::Activations::Int8 { ", int8 activations (byte dot products)" } else { "" };
        println!(
            "  cpu code: {} ({}), {} distinct kernels x 2 variants{int8}, {:.1} KB shared object",
            code.target,
            code.features.join(","),
            compiled.kernels,
            code.shared_object.len() as f64 / 1e3
        );
    }
    for code in &compiled.contents.ptx {
        let bytes: usize = code.modules.iter().map(|m| m.ptx.len()).sum();
        println!(
            "  gpu code: {} (tiles planned for {} SMs), {} PTX modules, {:.1} KB of PTX",
            code.arch,
            code.sm_count,
            code.modules.len(),
            bytes as f64 / 1e3
        );
    }
    println!("  artifact: {:.2} MB in {} sections", written.bytes as f64 / 1e6, written.sections);
    Ok(())
}

/// `.fpx` artifacts are run from their compiled form; anything else must be an .onnx model.
fn is_artifact(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("fpx")
}

fn main() {
    // Die quietly on a closed pipe (`fpx inspect m.onnx | head`) instead of panicking in println!.
    // SAFETY: setting a signal disposition to its default at start-up, before any threads exist.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let res = match &cli.command {
        Command::Run { model, inputs, output_dir, device, quant } => {
            check_device(&device.device).and_then(|_| run(model, inputs, output_dir, quant))
        }
        Command::Report(args) => report(args),
        Command::Bench(args) => check_device(&args.device.device).and_then(|_| bench(args)),
        Command::Compile(args) => compile(args),
        Command::Membw { threads, gib, json } => membw(*threads, *gib, *json),
        Command::Inspect { model, json, dump_ptx } => inspect(model, *json, dump_ptx.as_deref()),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
