//! What each command does, given its parsed arguments: library calls plus the messages and
//! files a person sees. Every failure is an `anyhow` error with the file, input or node at fault.

use crate::args::{
    BenchArgs, BudgetArg, CompileArgs, Device, InspectArgs, MembwArgs, PeakArgs, QuantArgs, ReportArgs, RunArgs, RunModelArgs,
};
use anyhow::{bail, Context, Result};
use fpx::runtime::npy;
use fpx::{QuantizeOptions, WeightScheme};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The quantization options of `--weights/--group-size/--scale-search/--activations`, with
/// `default_scheme` when `--weights` is not given.
pub(crate) fn quantize_options(q: &QuantArgs, default_scheme: WeightScheme) -> Result<QuantizeOptions> {
    let o = QuantizeOptions {
        group_size: q.scales.group_size,
        scale_search: q.scales.scale_search,
        pow2_scales: q.scales.scale_pow2,
        activations: q.activations,
        lorc_rank: q.lorc,
        lorc_factors: q.lorc_factors,
        fuse_epilogues: !q.no_fused_epilogues,
        embeddings: q.embeddings.0,
        ..QuantizeOptions::new(q.weights.unwrap_or(default_scheme))
    };
    o.validate()?;
    Ok(o)
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

/// Opens an .onnx (quantized in memory as `quant` says) or an .fpx artifact; `announce`
/// prints what quantization did (off where stdout must hold only JSON).
fn open_model(args: &RunModelArgs, announce: bool) -> Result<fpx::Runnable> {
    open_model_at(&args.model.model, &args.budget, &args.quant, announce)
}

/// Opens the model at `path` with a budget and quantization options (in memory for an .onnx),
/// printing what quantization did when `announce`.
pub(crate) fn open_model_at(path: &Path, budget: &BudgetArg, quant: &QuantArgs, announce: bool) -> Result<fpx::Runnable> {
    fpx::check_model_file(path)?;
    let options = quantize_options(quant, WeightScheme::None)?;
    let mut model = fpx::open_with(path, &options).map_err(|e| fpx::Failure::new(fpx::Action::LoadModel, path, e))?;
    if let Some(b) = budget.max_tensor_bytes {
        model.set_budget(b);
    }
    if let Some(q) = model.quantization().filter(|_| announce) {
        println!(
            "weights: {} layers as {}, {:.2} MB -> {:.2} MB",
            q.layers.len(),
            options.scheme,
            q.weight_bytes_in as f64 / 1e6,
            q.weight_bytes_out as f64 / 1e6
        );
    }
    Ok(model)
}

/// `--device`: cpu runs; cuda says what is missing (no driver, or the executor) instead of
/// silently running on the CPU.
pub(crate) fn check_device(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda => {
            fpx::cuda::driver_available().context("--device cuda")?;
            bail!(
                "--device cuda: whole-graph GPU execution is not built yet (the GPU GEMM kernels are: scripts/gpu-check.sh tests and \
                 benchmarks them); use --device cpu"
            )
        }
    }
}

/// `fpx run`.
pub fn run(args: &RunArgs) -> Result<()> {
    let m = &args.model;
    check_device(m.device.device)?;
    let path = &m.model.model;
    let out_dir = &args.output_dir;
    if out_dir.exists() && !out_dir.is_dir() {
        bail!("--output-dir '{}' exists and is not a folder", out_dir.display());
    }
    let t0 = Instant::now();
    let model = open_model(m, true)?;
    let load = t0.elapsed();
    // Every output's file is decided, and checked against the model and the input files, before
    // anything runs or is written.
    let mut sources = vec![("the model".to_string(), path.clone())];
    for spec in &m.inputs.inputs {
        let (name, file) = parse_input(spec)?;
        sources.push((format!("input '{name}'"), file));
    }
    let files = output_files(model.graph(), out_dir, &sources)?;
    let feeds = read_inputs(&m.inputs.inputs)?;
    let t1 = Instant::now();
    let outputs = model.run(feeds).map_err(|e| fpx::Failure::new(fpx::Action::RunModel, path, e))?;
    let run_time = t1.elapsed();
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create output folder '{}'", out_dir.display()))?;
    write_outputs(&outputs, &files)?;
    for ((name, t), path) in outputs.iter().zip(&files) {
        println!("{name}: {} {:?} -> {}", t.dtype(), t.shape(), path.display());
    }
    println!("loaded in {:.1} ms, ran in {:.1} ms", load.as_secs_f64() * 1e3, run_time.as_secs_f64() * 1e3);
    Ok(())
}

/// The file of each graph output under `dir`, in graph order: an error when two outputs map to
/// the same file (or one is listed twice), or when a file would replace one of `sources` (what
/// it is, its path: the model and the input files).
fn output_files(graph: &fpx::ir::Graph, dir: &Path, sources: &[(String, PathBuf)]) -> Result<Vec<PathBuf>> {
    let mut by_file: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    let mut files = Vec::new();
    for &v in &graph.outputs {
        let name = graph.value(v).name.as_str();
        let file = fpx::output_file_name(name);
        if let Some(other) = by_file.insert(file.clone(), name) {
            if other == name {
                bail!("the model lists output '{name}' twice; each output is written to its own file");
            }
            bail!("outputs '{other}' and '{name}' would both be written to '{file}'; nothing was written");
        }
        let out = dir.join(&file);
        if out.is_dir() {
            bail!("output '{name}' would be written to '{}', which is a folder", out.display());
        }
        for (what, src) in sources {
            if fpx::same_file(&out, src) {
                bail!(
                    "output '{name}' would be written to '{}', which is {what} ('{}'); choose another --output-dir",
                    out.display(),
                    src.display()
                );
            }
        }
        files.push(out);
    }
    Ok(files)
}

/// Writes every output to a temporary file beside its destination, then renames them all into
/// place: a failure leaves no partial `.npy` (and removes the temporary files written so far).
fn write_outputs(outputs: &[(String, fpx::ir::Tensor)], files: &[PathBuf]) -> Result<()> {
    if outputs.len() != files.len() {
        bail!("the model returned {} outputs, but declares {}", outputs.len(), files.len());
    }
    let temp = |f: &Path| {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        f.with_file_name(format!(".{name}.{}.partial", std::process::id()))
    };
    let mut written: Vec<PathBuf> = Vec::new();
    let cleanup = |written: &[PathBuf]| written.iter().for_each(|t| drop(std::fs::remove_file(t)));
    for ((name, t), file) in outputs.iter().zip(files) {
        let tmp = temp(file);
        if let Err(e) = npy::write(&tmp, t) {
            cleanup(&written);
            return Err(e).with_context(|| format!("cannot write output '{name}' to '{}'", file.display()));
        }
        written.push(tmp);
    }
    for (i, file) in files.iter().enumerate() {
        if let Err(e) = std::fs::rename(&written[i], file) {
            cleanup(&written[i..]);
            return Err(e).with_context(|| format!("cannot write '{}'", file.display()));
        }
    }
    Ok(())
}

/// `fpx inspect`.
pub fn inspect(args: &InspectArgs) -> Result<()> {
    let path = &args.model.model;
    fpx::check_model_file(path)?;
    let artifact = fpx::is_artifact(path);
    if args.dump_ptx.is_some() && !artifact {
        bail!("--dump-ptx: '{}' is not an .fpx artifact (compile it with `fpx compile --target cuda` first)", path.display());
    }
    if artifact {
        let a = fpx::artifact::Artifact::open(path).with_context(|| format!("cannot open artifact '{}'", path.display()))?;
        if let Some(dir) = &args.dump_ptx {
            let written = dump_ptx_modules(&a, dir)?;
            eprintln!("wrote {written} PTX modules under {}", dir.display());
        }
        let graph = a.graph()?;
        let summary = fpx::ArtifactSummary::of(&a, &graph);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        } else {
            print!("{}", summary.to_text());
        }
        return Ok(());
    }
    let graph = fpx::onnx::load_model(path).with_context(|| format!("cannot load model '{}'", path.display()))?;
    let mut summary = fpx::ModelSummary::of(&graph);
    // Weights behind constant subgraphs (a Transpose of an initializer, say) count too.
    let mut folded = graph;
    fpx::simplify(&mut folded).context("cannot simplify the graph")?;
    summary.weight_matmuls = fpx::weight_matmuls(&folded);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.to_text());
    }
    Ok(())
}

/// Writes every PTX module of `a` to `dir/<arch>/<module>.ptx`; returns how many. The reader has
/// checked that architectures and module names are plain file names.
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
            let path = sub.join(format!("{}.ptx", m.name));
            std::fs::write(&path, m.ptx).with_context(|| format!("cannot write '{}'", path.display()))?;
            written += 1;
        }
    }
    Ok(written)
}

/// `fpx report`.
pub fn report(args: &ReportArgs) -> Result<()> {
    fpx::check_model_file(&args.model)?;
    if let Some(html) = &args.html {
        let mut sources = vec![("the model".to_string(), args.model.clone())];
        for spec in &args.inputs.inputs {
            let (name, file) = parse_input(spec)?;
            sources.push((format!("input '{name}'"), file));
        }
        if let Some((what, src)) = sources.iter().find(|(_, src)| fpx::same_file(html, src)) {
            bail!(
                "--html '{}' is {what} ('{}'): writing the page there would replace it; choose another file",
                html.display(),
                src.display()
            );
        }
    }
    let options = fpx::report::ReportOptions {
        schemes: fpx::report::parse_schemes(&args.schemes, args.scales.group_size, args.scales.scale_search, args.scales.scale_pow2)?,
        histogram_layer: args.layer.clone(),
        pool_mask: args.pool_mask.clone(),
    };
    let feeds = read_inputs(&args.inputs.inputs)?;
    let r =
        fpx::report::accuracy_report(&args.model, feeds, &options).map_err(|e| fpx::Failure::new(fpx::Action::Report, &args.model, e))?;
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

/// `fpx bench`.
pub fn bench(args: &BenchArgs) -> Result<()> {
    let m = &args.model;
    check_device(m.device.device)?;
    let path = &m.model.model;
    if let Some(dir) = args.output_dir.as_ref().filter(|d| d.exists() && !d.is_dir()) {
        bail!("--output-dir '{}' exists and is not a folder", dir.display());
    }
    let model = open_model(m, !args.json)?;
    // As in `fpx run`: every output's file is checked against the model and the inputs first.
    let files = match &args.output_dir {
        Some(dir) => {
            let mut sources = vec![("the model".to_string(), path.clone())];
            for spec in &m.inputs.inputs {
                let (name, file) = parse_input(spec)?;
                sources.push((format!("input '{name}'"), file));
            }
            Some((dir, output_files(model.graph(), dir, &sources)?))
        }
        None => None,
    };
    let feeds = read_inputs(&m.inputs.inputs)?;
    let threads = args.threads.unwrap_or_else(default_threads);
    let (r, outputs) = fpx::bench::bench_with_outputs(model.executor(), &feeds, args.iters, threads)
        .with_context(|| format!("cannot run model '{}'", path.display()))?;
    if let Some((dir, files)) = &files {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create output folder '{}'", dir.display()))?;
        write_outputs(&outputs, files)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", r.to_text());
    }
    Ok(())
}

/// One worker thread per core, at most [`fpx::bench::MAX_THREADS`].
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(fpx::bench::MAX_THREADS)
}

/// `fpx membw`.
pub fn membw(args: &MembwArgs) -> Result<()> {
    let threads = args.threads.unwrap_or_else(default_threads);
    let r =
        fpx::bench::read_bandwidth((args.gib * (1u64 << 30) as f64) as usize, threads).with_context(|| format!("--gib {}", args.gib))?;
    if args.json {
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

/// `fpx peak`.
pub fn peak(args: &PeakArgs) -> Result<()> {
    let threads = args.threads.unwrap_or_else(default_threads);
    let p = fpx::peak::measure(threads)?;
    if args.json {
        println!("{}", serde_json::to_string(&p)?);
    } else {
        println!("int8: {:.0} GOPS with {} ({} threads)", p.int8_gops, p.int8_instruction, p.threads);
        println!("f32:  {:.0} GFLOPS with {} ({} threads)", p.f32_gflops, p.f32_instruction, p.threads);
        println!("(a multiply-add counts as 2 operations; best of 3 passes of {:.2} s)", p.seconds);
    }
    Ok(())
}

/// The tuning database `fpx compile` uses and its file (`fpx::TuningSource`), none with
/// `--no-tuning`; why one could not be used goes to stderr.
fn compile_tuning(args: &CompileArgs) -> (Option<fpx::tuning::TuningDb>, Option<PathBuf>) {
    if args.no_tuning {
        return (None, None);
    }
    let source = fpx::TuningSource::resolve(args.tuning_db.as_deref());
    if let Some(w) = &source.warning {
        eprintln!("warning: {w}");
    }
    (source.db, source.path)
}

/// `fpx compile`.
pub fn compile(args: &CompileArgs) -> Result<()> {
    fpx::check_model_file(&args.model)?;
    let quantize = quantize_options(&args.quant, WeightScheme::Fixed(fpx::quant::Format::Fp6E3M2))?;
    if quantize.scheme == WeightScheme::None {
        bail!(
            "--weights none: an artifact holds quantized weights; pick a scheme (e.g. fp6-e3m2), or run the .onnx directly with `fpx run`"
        );
    }
    fpx::check_artifact_path(&args.output, &args.model, "-o")?;
    // Large intermediate constants spill next to the artifact, on the disk it goes to.
    let scratch_dir = match args.output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let (tuning, tuning_path) = compile_tuning(args);
    let options = fpx::CompileOptions {
        quantize,
        target: args.target,
        cpu: args.cpu,
        upcast_half: !args.keep_half_precision,
        scratch_dir: Some(scratch_dir),
        tuning,
    };
    let t0 = Instant::now();
    let bar = if args.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(fpx::Stage::ALL.len() as u64 + 1) };
    let stages = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("valid template");
    let bytes = indicatif::ProgressStyle::with_template("{bar:30} {msg}: {bytes}/{total_bytes} of weights, {bytes_per_sec}, {eta} left")
        .expect("valid template");
    bar.set_style(stages.clone());
    let mut stage_count = 0;
    // When the weights' quantization started and ended, for the quantizer's own rate.
    let (mut quantize_start, mut quantize_end) = (None, None);
    let compiled = fpx::compile_with_progress(&args.model, &options, |p| match p {
        fpx::Progress::Stage(stage) => {
            stage_count += 1;
            bar.set_style(stages.clone());
            bar.set_length(fpx::Stage::ALL.len() as u64 + 1);
            bar.set_position(stage_count);
            bar.set_message(stage.label());
        }
        // Weights quantized so far: the bar shows bytes and their rate while the stage lasts.
        fpx::Progress::Weights { done, total } => {
            if done == 0 {
                bar.set_style(bytes.clone());
                bar.set_length(total);
                bar.reset_eta();
                quantize_start = Some(Instant::now());
            }
            if done == total {
                quantize_end = Some(Instant::now());
            }
            bar.set_position(done);
        }
    })
    .map_err(|e| fpx::Failure::new(fpx::Action::Compile, &args.model, e))?;
    bar.set_style(stages);
    bar.set_length(fpx::Stage::ALL.len() as u64 + 1);
    bar.set_position(stage_count + 1);
    bar.set_message("write artifact");
    let written = compiled.save(&args.output).map_err(|e| fpx::Failure::new(fpx::Action::WriteArtifact, &args.output, e))?;
    bar.finish_and_clear();
    let q = &compiled.quantization;
    println!("compiled {} -> {} in {:.2} s", args.model.display(), args.output.display(), t0.elapsed().as_secs_f64());
    println!(
        "  weights: {} layers as {}, {:.2} MB -> {:.2} MB ({:.2}x smaller)",
        q.layers.len(),
        quantize.scheme,
        q.weight_bytes_in as f64 / 1e6,
        q.weight_bytes_out as f64 / 1e6,
        q.weight_bytes_in as f64 / q.weight_bytes_out.max(1) as f64
    );
    if let Some(path) = &tuning_path {
        let unused = |tuned: usize, stale: usize| tuned == 0 && stale == 0;
        if compiled.tuning.iter().all(|u| unused(u.tuned, u.stale_entries))
            && compiled.gpu_tuning.iter().all(|u| unused(u.tuned, u.stale_entries))
        {
            println!("  tuning: {} has no entries for this machine and these products; every kernel uses the heuristic", path.display());
        }
        for u in compiled.tuning.iter().filter(|u| u.tuned > 0 || u.stale_entries > 0) {
            let stale = if u.stale_entries > 0 {
                format!("; {} entries from another kernel generator ignored (run `fpx tune` again)", u.stale_entries)
            } else {
                String::new()
            };
            println!(
                "  tuning: {} of {} products tuned for {} on this machine ({}), the rest use the heuristic{stale}",
                u.tuned,
                u.products,
                u.target,
                path.display()
            );
            let shapes: Vec<String> = u.tuned_shapes.iter().map(|g| fpx::tuning::Shape::of(g).to_string()).collect();
            if !shapes.is_empty() {
                println!("    tuned shapes: {}", shapes.join(", "));
            }
        }
        for u in &compiled.gpu_tuning {
            let stale = if u.stale_entries > 0 {
                format!("; {} results from another GEMM template ignored (run `fpx tune --device cuda` again)", u.stale_entries)
            } else {
                String::new()
            };
            println!(
                "  tuning: {} of {} products use {} tile configs tuned on {} ({}), the rest the heuristic{stale}",
                u.tuned,
                u.products,
                u.arch,
                u.gpu,
                path.display()
            );
        }
    }
    let (weights, bytes) = fpx::weight_storage(&compiled.contents.graph);
    if weights > 0 {
        println!(
            "  overall: {weights} weights in {:.2} MB, {:.2} bits per weight",
            bytes as f64 / 1e6,
            8.0 * bytes as f64 / weights as f64
        );
    }
    for e in &q.embeddings {
        let how = match &e.tied_with {
            Some(head) => format!("shares the quantized weight of '{head}' (tied LM head)"),
            None => format!("{:.2} MB -> {:.2} MB", e.bytes_in as f64 / 1e6, e.bytes_out as f64 / 1e6),
        };
        println!("  embedding '{}' [{} x {}] as {} (rel. RMSE {:.4}): {how}", e.table, e.rows, e.width, e.format, e.rel_rmse);
    }
    for code in &compiled.contents.cpu {
        let int8 = match quantize.activations {
            fpx::Activations::F32 => "",
            fpx::Activations::Int8 => ", int8 activations (byte dot products)",
            fpx::Activations::Fp8E4M3 => ", FP8 e4m3 activations (rows rounded per token)",
            fpx::Activations::Fp8E5M2 => ", FP8 e5m2 activations (rows rounded per token)",
        };
        println!(
            "  cpu code: {} ({}), {} kernels for {} products{int8}, {:.1} KB shared object",
            code.target,
            code.features.join(","),
            compiled.kernels,
            code.kernels.len(),
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
    let seconds = t0.elapsed().as_secs_f64();
    let peak = fpx::peak_memory_bytes().map(|b| format!(", peak memory {:.0} MiB", b as f64 / (1u64 << 20) as f64)).unwrap_or_default();
    // The quantizer's rate: the weights' bytes over the time from reading the first to packing the last.
    let quantizer = match (quantize_start, quantize_end) {
        (Some(a), Some(b)) if b > a => {
            let s = (b - a).as_secs_f64();
            format!(" (quantizer {:.0} MB/s over {s:.1} s)", q.weight_bytes_in as f64 / 1e6 / s)
        }
        _ => String::new(),
    };
    println!("  speed: {:.0} MB/s of weights as stored{quantizer}{peak}", q.weight_bytes_in as f64 / 1e6 / seconds.max(1e-9));
    Ok(())
}
