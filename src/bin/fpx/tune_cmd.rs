//! `fpx tune`: the auto-tuner over a model, with a progress bar and the table of what it chose.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fpx::tuning::{MBucket, TuneEvent, TuningDb};
use fpx::WeightScheme;

use crate::args::{Device, TuneArgs};
use crate::commands::quantize_options;

/// `fpx tune`.
pub fn tune(args: &TuneArgs) -> Result<()> {
    if let Some(model) = &args.model {
        fpx::check_model_file(model)?;
    }
    if args.device == Device::Cuda {
        fpx::cuda::driver_available().context("--device cuda")?;
        bail!(
            "--device cuda: GPU tuning is not built yet (the GPU GEMM's tile configs come from fpx's split-K heuristic); use --device cpu"
        );
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
    let level = fpx::host_level(args.cpu)?;
    let options = fpx::TuneOptions {
        compile: fpx::CompileOptions { quantize, cpu: args.cpu, upcast_half: !args.keep_half_precision, ..Default::default() },
        buckets: MBucket::up_to(args.max_m),
        budget: Duration::from_secs_f64(args.budget),
        db: db.clone(),
    };
    let bar = if args.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(1) };
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ({elapsed} of the budget)").expect("valid template"));
    bar.set_message(format!("tuning {level} kernels"));
    let mut progress = |e| match e {
        TuneEvent::Compiling { index, total } => bar.set_message(format!("product {}/{total}: compiling candidates", index + 1)),
        TuneEvent::BucketDone { done, total } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(format!("timing candidates on {level}"));
        }
    };
    let what = args.model.clone().unwrap_or_else(|| PathBuf::from("the --shape products"));
    let summary = match &args.model {
        Some(model) => fpx::tune(model, &options, &mut progress),
        None => fpx::tune_shapes(&args.shapes, &options, &mut progress),
    }
    .map_err(|e| fpx::Failure::new(fpx::Action::Tune, &what, e))?;
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
    println!(
        "{:<28} {:>5} {:>8} {:<30} {:>10} {:>10} {:>8} {:>6}",
        "product", "nodes", "M", "chosen", "time µs", "default µs", "speed-up", "tried"
    );
    for b in &r.results {
        let shape = fpx::tuning::Shape::of(&b.gemm);
        let nodes = summary.nodes.get(&b.gemm).map_or(0, Vec::len);
        let chosen = if b.is_default { "heuristic".to_string() } else { fpx::tuning::TunedChoice::from(b.choice).to_string() };
        println!(
            "{:<28} {:>5} {:>8} {:<30} {:>10.1} {:>10.1} {:>7.2}x {:>6}",
            shape.to_string(),
            nodes,
            b.bucket.label(),
            chosen,
            b.micros,
            b.default_micros,
            b.default_micros / b.micros,
            b.timed
        );
    }
    let weighted = |f: fn(&fpx::tuning::BucketResult) -> f64| -> f64 {
        r.results.iter().map(|b| f(b) * summary.nodes.get(&b.gemm).map_or(1, Vec::len) as f64).sum()
    };
    let (tuned, default) = (weighted(|b| b.micros), weighted(|b| b.default_micros));
    println!("all products, each M range once: {:.1} µs tuned vs {:.1} µs heuristic ({:.2}x)", tuned, default, default / tuned.max(1e-9));
    for x in &r.rejected {
        println!("rejected {} {}: {}", fpx::tuning::Shape::of(&x.gemm), x.candidate, x.reason);
    }
    println!(
        "tuning database: {} ({} entries, {} before); `fpx compile` uses it{}",
        summary.db.display(),
        summary.entries.1,
        summary.entries.0,
        if args.db.is_some() { format!(" with --tuning-db {}", summary.db.display()) } else { " by default".to_string() }
    );
    Ok(())
}
