//! The tuning benchmark: tunes the products of three model families on this machine (the
//! bundled tiny transformer's, MiniLM's encoder and LLaMA-7B's decoder, FP6 e3m2 with f32 activations and FP6 e2m3 with int8
//! activations), then re-measures each tuned kernel table against the heuristic's for every M
//! bucket with `compare_tables` (the artifact's code, the runtime's call, fresh data) and prints
//! them side by side with the speed-up.
//!
//! `cargo run --release -p fpx-tune --example tune_bench -- [--budget SECONDS] [--family tiny|minilm|llama|all] [--rounds N] [--max-m M] [--noise]`
//! (`--noise` times the heuristic's table against itself: the noise floor of the comparison)
//! (scripts/bench-tune.sh runs it).

use std::time::Duration;

use fpx_llvm::{Activations, CpuTarget, QuantGemm};
use fpx_quant::Format;
use fpx_tune::{compare_tables, tune_cpu, CpuMachine, CpuTuneOptions, MBucket, Shape, TuneShape, TunedChoice, TuningDb};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    match args.iter().position(|a| a == name) {
        Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} needs a value")),
        None => default,
    }
}

fn product(format: Format, k: usize, n: usize, activations: Activations, uses: usize) -> TuneShape {
    TuneShape { gemm: QuantGemm { format, k, n, group_size: 0, activations }, uses }
}

fn family(name: &str) -> Vec<TuneShape> {
    let (d, f, uses) = match name {
        "tiny" => (64, 256, 2),
        "minilm" => (384, 1536, 6),
        "llama" => (4096, 11008, 32),
        other => panic!("unknown family '{other}' (tiny, minilm, llama, all)"),
    };
    vec![
        product(Format::Fp6E3M2, d, d, Activations::F32, 4 * uses),
        product(Format::Fp6E3M2, d, f, Activations::F32, uses),
        product(Format::Fp6E3M2, f, d, Activations::F32, uses),
        product(Format::Fp6E2M3, d, f, Activations::Int8, uses),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let budget: f64 = arg(&args, "--budget", 60.0);
    let rounds: usize = arg(&args, "--rounds", 25);
    let max_m: u64 = arg(&args, "--max-m", 512);
    let which: String = arg(&args, "--family", "all".to_string());
    // --noise: time the heuristic's table against itself instead of tuning (the noise floor).
    let noise = args.iter().any(|a| a == "--noise");
    let families: Vec<&str> = if which == "all" { vec!["tiny", "minilm", "llama"] } else { vec![which.as_str()] };
    let target = [CpuTarget::X86_64V4Vnni, CpuTarget::X86_64V3]
        .into_iter()
        .find(|t| fpx_artifact::missing_cpu_features(&fpx_llvm::target_features(*t).unwrap()).is_empty())
        .expect("an AVX2 CPU");
    let machine = CpuMachine::host();
    let buckets = MBucket::up_to(max_m);
    let default = fpx_llvm::default_tiling(target).unwrap();
    println!("tuning benchmark on {machine}, {target} code, budget {budget} s per family, {rounds} rounds per comparison");
    println!(
        "{:<8} {:<26} {:>8} {:<30} {:>13} {:>10} {:>8}",
        "family", "product", "M", "tuned choice", "heuristic µs", "tuned µs", "speed-up"
    );
    let mut all = Vec::new();
    for fam in families {
        let shapes = family(fam);
        if noise {
            for s in &shapes {
                let same = fpx_llvm::default_choices(default);
                for c in compare_tables(&s.gemm, target, &same, &buckets, rounds, 99).expect("compares") {
                    println!(
                        "{:<8} {:<26} {:>8} {:<30} {:>13.1} {:>10.1} {:>7.2}x",
                        fam,
                        Shape::of(&s.gemm).to_string(),
                        c.bucket.label(),
                        "heuristic vs itself",
                        c.heuristic_micros,
                        c.tuned_micros,
                        c.speedup()
                    );
                    all.push((fam, c, true));
                }
            }
            continue;
        }
        let options = CpuTuneOptions { target, buckets: buckets.clone(), budget: Duration::from_secs_f64(budget), seed: 11 };
        let report = tune_cpu(&shapes, &options, &mut |_| {}).expect("tuning runs");
        assert!(report.rejected.is_empty(), "rejected candidates: {:?}", report.rejected);
        let mut db = TuningDb::default();
        db.merge(report.entries());
        for s in &shapes {
            let table = db.cpu_table(&machine, target.name(), &s.gemm, default).table.expect("tuned");
            for c in compare_tables(&s.gemm, target, &table, &buckets, rounds, 99).expect("compares") {
                let chosen = report.results.iter().find(|r| r.gemm == s.gemm && r.bucket == c.bucket).expect("a result per bucket");
                let choice = if chosen.is_default { "heuristic".to_string() } else { TunedChoice::from(chosen.choice).to_string() };
                println!(
                    "{:<8} {:<26} {:>8} {:<30} {:>13.1} {:>10.1} {:>7.2}x",
                    fam,
                    Shape::of(&s.gemm).to_string(),
                    c.bucket.label(),
                    choice,
                    c.heuristic_micros,
                    c.tuned_micros,
                    c.speedup()
                );
                all.push((fam, c, chosen.is_default));
            }
        }
    }
    let n = all.len() as f64;
    let geo = (all.iter().map(|(_, c, _)| c.speedup().ln()).sum::<f64>() / n).exp();
    let min = all.iter().map(|(_, c, _)| c.speedup()).fold(f64::INFINITY, f64::min);
    println!("{} product x M cases: geometric-mean speed-up {geo:.2}x, lowest {min:.2}x", all.len());
    // Where the tuned choice is the heuristic's, both tables run the same kernel: their ratio is
    // the noise of the comparison itself.
    let same: Vec<f64> = all.iter().filter(|(_, _, same)| *same).map(|(_, c, _)| c.speedup()).collect();
    if !same.is_empty() {
        let (lo, hi) = same.iter().fold((f64::INFINITY, 0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        println!("noise floor (same kernel in both tables, {} cases): {lo:.2}x to {hi:.2}x", same.len());
    }
    let slower: Vec<_> = all.iter().filter(|(_, c, same)| !same && c.speedup() < 0.95).collect();
    let changed = all.iter().filter(|(_, _, same)| !same).count();
    if slower.is_empty() {
        println!("where tuning changed the kernel ({changed} cases), tuned is at least as fast as the heuristic (within 5 % noise) in every case");
    } else {
        for (fam, c, _) in &slower {
            println!("SLOWER beyond noise: {fam} {} M {}: {:.2}x", Shape::of(&c.gemm), c.bucket, c.speedup());
        }
    }
    let mut best = all.clone();
    best.sort_by(|a, b| b.1.speedup().total_cmp(&a.1.speedup()));
    for (fam, c, _) in best.iter().take(3) {
        println!("helped most: {fam} {} M {}: {:.2}x", Shape::of(&c.gemm), c.bucket, c.speedup());
    }
}
