//! `fpx-fuzz [--minutes N | --iterations N] [--target onnx|artifact|npy|all] [--seed S]`: fuzzes
//! each target in turn, prints executions per second and totals, and saves each crash under
//! `tests/data/fuzz/<target>/crash-<hash>`. Exits 1 if anything crashed. Live heap memory is
//! capped (`FPX_FUZZ_MEMORY_MIB`, default 2048): an input that needs more is saved to
//! `$TMPDIR/fpx-fuzz-over-memory-cap` and the process aborts.

use fpx_fuzz::memcap::CappedAllocator;
use fpx_fuzz::{fuzz, seeds, workspace_root, Budget, Target};
use std::process::ExitCode;
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator;

/// The default memory cap: far above what a reader needs for the fuzzer's inputs (kilobytes).
const DEFAULT_MEMORY_MIB: usize = 2048;

fn usage() -> ExitCode {
    eprintln!("usage: fpx-fuzz [--minutes N | --iterations N] [--target onnx|artifact|npy|all] [--seed S]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut minutes: Option<f64> = None;
    let mut iterations: Option<u64> = None;
    let mut targets = Target::ALL.to_vec();
    let mut seed = 1u64;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).map(String::as_str);
        match (args[i].as_str(), value) {
            ("--minutes", Some(v)) => match v.parse::<f64>() {
                Ok(m) if m > 0.0 && m.is_finite() => minutes = Some(m),
                _ => return usage(),
            },
            ("--iterations", Some(v)) => match v.parse() {
                Ok(n) => iterations = Some(n),
                Err(_) => return usage(),
            },
            ("--seed", Some(v)) => match v.parse() {
                Ok(s) => seed = s,
                Err(_) => return usage(),
            },
            ("--target", Some("all")) => targets = Target::ALL.to_vec(),
            ("--target", Some(v)) => match Target::parse(v) {
                Some(t) => targets = vec![t],
                None => return usage(),
            },
            _ => return usage(),
        }
        i += 2;
    }
    if minutes.is_none() && iterations.is_none() {
        minutes = Some(1.0);
    }
    let memory_mib = match std::env::var("FPX_FUZZ_MEMORY_MIB") {
        Ok(v) => match v.parse::<usize>() {
            Ok(m) if m > 0 => m,
            _ => {
                eprintln!("fpx-fuzz: FPX_FUZZ_MEMORY_MIB must be a positive number of MiB, not '{v}'");
                return ExitCode::from(2);
            }
        },
        Err(_) => DEFAULT_MEMORY_MIB,
    };
    let sink = std::env::temp_dir().join("fpx-fuzz-over-memory-cap");
    if let Err(e) = CappedAllocator::arm(memory_mib << 20, &sink) {
        eprintln!("fpx-fuzz: cannot create {}: {e}", sink.display());
        return ExitCode::from(2);
    }
    let budget = Budget { iterations, time: minutes.map(|m| Duration::from_secs_f64(m * 60.0)) };
    let mut crashed = false;
    for target in targets {
        let seeds = seeds(target);
        println!("fuzz {}: {} seeds, seed {seed}, {budget:?}", target.name(), seeds.len());
        let report = fuzz(target, &seeds, seed, budget);
        println!(
            "fuzz {}: {} executions in {:.1} s ({:.0}/s), {} accepted, slowest input {:.1} ms, {} crashes",
            target.name(),
            report.executions,
            report.elapsed.as_secs_f64(),
            report.per_second(),
            report.accepted,
            report.slowest.as_secs_f64() * 1e3,
            report.crashes.len()
        );
        let dir = workspace_root().join("tests/data/fuzz").join(target.name());
        for crash in &report.crashes {
            crashed = true;
            let path = dir.join(crash.file_name());
            let saved = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, &crash.input));
            match saved {
                Ok(()) => println!("  CRASH {}: {}", path.display(), crash.message),
                Err(e) => println!("  CRASH (not saved: {e}): {}", crash.message),
            }
        }
    }
    if crashed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
