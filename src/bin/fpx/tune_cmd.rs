//! `fpx tune`: the auto-tuner over a model, with a progress bar and the table of what it chose.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fpx::tuning::{MBucket, Shape, TuneEvent, TuningDb};
use fpx::WeightScheme;

use crate::args::{Device, TuneArgs};
use crate::commands::quantize_options;

/// `fpx tune`.
pub fn tune(args: &TuneArgs) -> Result<()> {
    if let Some(model) = &args.model {
        fpx::check_model_file(model)?;
    }
    if !(args.budget.is_finite() && args.budget > 0.0) {
        bail!("--budget {}: give a positive number of seconds", args.budget);
    }
    if args.max_m == 0 {
        bail!("--max-m 0: give the largest M (rows of activations) to tune for, 1 or more");
    }
    let quantize = quantize_options(&args.quant, WeightScheme::Fixed(fpx::quant::Format::Fp6E3M2))?;
    if quantize.scheme == WeightScheme::None {
        bail!("--weights none: only quantized products have kernels to tune; pick a scheme (e.g. fp6-e3m2)");
    }
    let db = match &args.db {
        Some(p) => p.clone(),
        None => TuningDb::default_path().context("no default tuning database: set FPX_TUNING_DB or HOME, or pass --db FILE")?,
    };
    let options = fpx::TuneOptions {
        compile: fpx::CompileOptions { quantize, cpu: args.cpu, upcast_half: !args.keep_half_precision, ..Default::default() },
        buckets: MBucket::up_to(args.max_m),
        budget: Duration::from_secs_f64(args.budget),
        db: db.clone(),
    };
    let what = args.model.clone().unwrap_or_else(|| PathBuf::from("the --shape products"));
    match args.device {
        Device::Cpu => tune_cpu(args, &options, &what),
        Device::Cuda => tune_cuda(args, &options, &what),
    }
}

/// The progress bar of a tuning run on `place`.
fn progress_bar(quiet: bool, place: String) -> indicatif::ProgressBar {
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(1) };
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ({elapsed} of the budget)").expect("valid template"));
    bar.set_message(format!("tuning {place}"));
    bar
}

/// What the bar shows for an event.
fn show(bar: &indicatif::ProgressBar, place: &str, e: TuneEvent) {
    match e {
        TuneEvent::Compiling { index, total } => bar.set_message(format!("product {}/{total}: compiling candidates", index + 1)),
        TuneEvent::BucketDone { done, total } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(format!("timing candidates on {place}"));
        }
    }
}

/// One row of the final table.
struct Row {
    shape: String,
    nodes: usize,
    bucket: MBucket,
    chosen: String,
    micros: f64,
    default_micros: f64,
    timed: usize,
}

impl Row {
    /// The row of `gemm`'s result in `bucket` (`nodes` of the model compute it).
    fn new(
        gemm: &fpx::quant::QuantGemm,
        nodes: &std::collections::BTreeMap<fpx::quant::QuantGemm, Vec<String>>,
        bucket: MBucket,
        chosen: String,
        times: (f64, f64, usize),
    ) -> Row {
        let (micros, default_micros, timed) = times;
        Row {
            shape: Shape::of(gemm).to_string(),
            nodes: nodes.get(gemm).map_or(1, Vec::len),
            bucket,
            chosen,
            micros,
            default_micros,
            timed,
        }
    }
}

fn print_table(rows: &[Row], unit: &str) {
    println!(
        "{:<28} {:>5} {:>8} {:<34} {:>10} {:>10} {:>8} {:>6}",
        "product",
        "nodes",
        "M",
        "chosen",
        format!("time {unit}"),
        format!("default {unit}"),
        "speed-up",
        "tried"
    );
    for r in rows {
        println!(
            "{:<28} {:>5} {:>8} {:<34} {:>10.1} {:>10.1} {:>7.2}x {:>6}",
            r.shape,
            r.nodes,
            r.bucket.label(),
            r.chosen,
            r.micros,
            r.default_micros,
            r.default_micros / r.micros,
            r.timed
        );
    }
    let (tuned, default): (f64, f64) =
        rows.iter().fold((0.0, 0.0), |(t, d), r| (t + r.micros * r.nodes as f64, d + r.default_micros * r.nodes as f64));
    println!(
        "all products, each M range once: {tuned:.1} {unit} tuned vs {default:.1} {unit} heuristic ({:.2}x)",
        default / tuned.max(1e-9)
    );
}

fn print_db(args: &TuneArgs, db: &std::path::Path, entries: (usize, usize), what: &str) {
    println!(
        "tuning database: {} ({} {what} entries, {} before); `fpx compile` uses it{}",
        db.display(),
        entries.1,
        entries.0,
        if args.db.is_some() { format!(" with --tuning-db {}", db.display()) } else { " by default".to_string() }
    );
}

/// `fpx tune --device cpu`.
fn tune_cpu(args: &TuneArgs, options: &fpx::TuneOptions, what: &std::path::Path) -> Result<()> {
    let level = fpx::host_level(args.cpu)?;
    let place = level.to_string();
    let bar = progress_bar(args.quiet, format!("{level} kernels"));
    let mut progress = |e| show(&bar, &place, e);
    let summary = match &args.model {
        Some(model) => fpx::tune(model, options, &mut progress),
        None => fpx::tune_shapes(&args.shapes, options, &mut progress),
    }
    .map_err(|e| fpx::Failure::new(fpx::Action::Tune, what, e))?;
    bar.finish_and_clear();
    let r = &summary.report;
    println!(
        "tuned {} products x {} M ranges of {} for {} on {} in {:.1} s",
        summary.nodes.len(),
        options.buckets.len(),
        what.display(),
        r.target,
        r.machine,
        r.elapsed.as_secs_f64()
    );
    let rows: Vec<Row> = r
        .results
        .iter()
        .map(|b| {
            let chosen = if b.is_default { "heuristic".to_string() } else { fpx::tuning::TunedChoice::from(b.choice).to_string() };
            Row::new(&b.gemm, &summary.nodes, b.bucket, chosen, (b.micros, b.default_micros, b.timed))
        })
        .collect();
    print_table(&rows, "µs");
    for x in &r.rejected {
        println!("rejected {} {}: {}", Shape::of(&x.gemm), x.candidate, x.reason);
    }
    print_db(args, &summary.db, summary.entries, "CPU");
    Ok(())
}

/// `fpx tune --device cuda`: on GPU 0.
fn tune_cuda(args: &TuneArgs, options: &fpx::TuneOptions, what: &std::path::Path) -> Result<()> {
    let gpu = fpx::cuda::device::Gpu::open(0).context("--device cuda")?;
    let mut runner = fpx::tuning::gpu::DeviceRunner::new(gpu).map_err(anyhow::Error::msg).context("--device cuda")?;
    let place = format!("{} ({})", runner.gpu().name, fpx::tuning::gpu::GemmRunner::arch(&runner));
    let bar = progress_bar(args.quiet, format!("GEMM tiles on {place}"));
    let mut progress = |e| show(&bar, &place, e);
    let summary = match &args.model {
        Some(model) => fpx::tune_gpu(model, options, &mut runner, &mut progress),
        None => fpx::tune_gpu_shapes(&args.shapes, options, &mut runner, &mut progress),
    }
    .map_err(|e| fpx::Failure::new(fpx::Action::Tune, what, e))?;
    bar.finish_and_clear();
    let r = &summary.report;
    println!(
        "tuned {} products x {} M ranges of {} for {} on {} in {:.1} s (times from DRAM: L2 flushed before each launch)",
        summary.nodes.len(),
        options.buckets.len(),
        what.display(),
        r.arch,
        r.machine,
        r.elapsed.as_secs_f64()
    );
    let rows: Vec<Row> = r
        .results
        .iter()
        .map(|b| {
            let tiling = fpx::tuning::gpu::GpuTiling::of(&b.config);
            let chosen = if b.is_default { format!("heuristic ({tiling})") } else { tiling.to_string() };
            Row::new(&b.gemm, &summary.nodes, b.bucket, chosen, (b.micros, b.default_micros, b.timed))
        })
        .collect();
    print_table(&rows, "µs");
    for x in &r.rejected {
        println!("rejected {} {}: {}", Shape::of(&x.gemm), x.candidate, x.reason);
    }
    print_db(args, &summary.db, summary.entries, "GPU");
    Ok(())
}
