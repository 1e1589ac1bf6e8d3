//! The GPU tuning benchmark: tunes the FP6 GEMM's tile configs for the LLaMA-2-7B linear shapes
//! (and MiniLM's) on GPU 0 for M = 1..256, then times, per shape and M, the kernel table an
//! untuned artifact carries (the heuristic's, `configs_by_m`) against the tuned one (from the
//! results, as `fpx compile --tuning-db` builds it) and cuBLAS FP16 (`cublasGemmEx`, what
//! `torch.matmul` calls) in one run, all from DRAM (L2 flushed before every timed launch), and
//! prints them side by side with the speed-ups. Before tuning it checks the checker on the
//! device: a kernel of the other FP6 format planted under a config must fail the reference check;
//! before timing, every tuned config is checked again at the M it is timed at. Either failure
//! ends the run with an error.
//!
//! `cargo run --release -p fpx-tune --example gpu_tune_bench -- [--budget SECONDS] [--quick] [--db FILE] [--reps N]`
//! (`scripts/gpu-check.sh` runs it; `--db` merges the results into a tuning database).

use std::time::Duration;

use fpx_cuda::config::configs_by_m;
use fpx_cuda::device::{Cublas, Gpu};
use fpx_cuda::{Act, Fp6Format};
use fpx_quant::{Activations, Format, QuantGemm};
use fpx_tune::gpu::{check_candidate, heuristic_for, tune_gpu, DeviceRunner, GemmRunner, GpuProblem, GpuTiling, GpuTuneOptions};
use fpx_tune::{MBucket, TuneShape, TuningDb};

const SHAPES: [(usize, usize); 5] = [(4096, 4096), (4096, 11008), (11008, 4096), (384, 1536), (1536, 384)];
const MS: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let budget: f64 = value("--budget").map_or(120.0, |v| v.parse().expect("--budget SECONDS"));
    let reps: usize = value("--reps").map_or(20, |v| v.parse().expect("--reps N"));
    let quick = args.iter().any(|a| a == "--quick");
    if let Err(e) = run(budget, reps, quick, value("--db")) {
        eprintln!("gpu_tune_bench: error: {e}");
        std::process::exit(1);
    }
}

fn run(budget: f64, reps: usize, quick: bool, db_path: Option<String>) -> Result<(), String> {
    let gpu = Gpu::open(0).map_err(|e| e.to_string())?;
    let mut runner = DeviceRunner::new(gpu)?;
    let machine = runner.machine();
    println!("GPU: {machine}, PTX {}", runner.arch());
    let shapes: &[(usize, usize)] = if quick { &SHAPES[..2] } else { &SHAPES };
    let products: Vec<TuneShape> = shapes
        .iter()
        .map(|&(k, n)| TuneShape {
            gemm: QuantGemm { format: Format::Fp6E3M2, k, n, group_size: 0, activations: Activations::F32 },
            uses: 1,
        })
        .collect();
    // The checker on the device: the e2m3 kernel under an e3m2 config computes another product.
    {
        let g = products[0].gemm;
        let mut problem = GpuProblem::new(&g, 2).map_err(|e| e.to_string())?;
        runner.set_problem(&mut problem, &[1, 16])?;
        let good = heuristic_for(&g, Fp6Format::E3M2, MBucket::M1, machine.sm_count);
        let planted = fpx_cuda::GemmConfig { stages: if good.stages > 2 { good.stages - 1 } else { 3 }, ..good.clone() };
        runner.plant(&planted, Fp6Format::E2M3);
        for r in runner.prepare(&[good.clone(), planted.clone()]) {
            r?;
        }
        check_candidate(&mut runner, &mut problem, &good, &[1, 16]).map_err(|e| format!("the heuristic's config fails its check: {e}"))?;
        match check_candidate(&mut runner, &mut problem, &planted, &[1, 16]) {
            Err(why) => println!("planted wrong kernel ({}) rejected: {why}", GpuTiling::of(&planted)),
            Ok(()) => return Err(format!("a planted wrong kernel ({}) passed the reference check", GpuTiling::of(&planted))),
        }
        runner.unplant(&planted);
    }
    let options = GpuTuneOptions { buckets: MBucket::up_to(256), budget: Duration::from_secs_f64(budget), seed: 0x5eed };
    let report = tune_gpu(&mut runner, &products, &options, &mut |_| {}).map_err(|e| e.to_string())?;
    println!("tuned {} products x {} M ranges in {:.0} s", products.len(), options.buckets.len(), report.elapsed.as_secs_f64());
    for r in &report.rejected {
        println!("rejected {}x{} {}: {}", r.gemm.k, r.gemm.n, r.candidate, r.reason);
    }
    let mut db = match &db_path {
        Some(p) => TuningDb::open(std::path::Path::new(p)).map_err(|e| e.to_string())?.unwrap_or_default(),
        None => TuningDb::default(),
    };
    db.merge_gpu(report.entries());
    if let Some(p) = &db_path {
        db.save(std::path::Path::new(p)).map_err(|e| e.to_string())?;
        println!("results merged into {p}");
    }

    let cublas = Cublas::new(runner.gpu()).map_err(|e| println!("cuBLAS column skipped: {e}")).ok();
    let mut flush = runner.gpu().l2_flush_buffer().map_err(|e| e.to_string())?;
    println!(
        "\n{:>12} {:>5} {:>12} {:>10} {:>9} {:>10} {:>11}  tuned config",
        "K x N", "M", "untuned us", "tuned us", "speed-up", "cuBLAS us", "vs cuBLAS"
    );
    let (mut slower, mut faster) = (0, 0);
    for p in &products {
        let g = p.gemm;
        let untuned = configs_by_m(Fp6Format::E3M2, Act::F16, g.n, g.k, machine.sm_count);
        let tuned = db.gpu_table(&machine, runner.arch(), &g, machine.sm_count).map_err(|e| e.to_string())?.table;
        let mut problem = GpuProblem::new(&g, 1).map_err(|e| e.to_string())?;
        runner.set_problem(&mut problem, &MS)?;
        // cuBLAS operands: X [m][k] (the problem's, k = k_pad here) and an FP16 W [k][n].
        let gpu = runner.gpu();
        let dx = gpu.upload(problem.activations(*MS.last().unwrap())).map_err(|e| e.to_string())?;
        let dw = gpu.upload(&vec![0x2000u16; g.k * g.n]).map_err(|e| e.to_string())?;
        let mut dy = gpu.zeros::<u16>(MS.last().unwrap() * g.n).map_err(|e| e.to_string())?;
        for &m in &MS {
            let base = untuned.pick(m).clone();
            let (cfg, was_tuned) = tuned.as_ref().map_or((base.clone(), false), |t| t.pick(m).clone());
            for r in runner.prepare(&[base.clone(), cfg.clone()]) {
                r?;
            }
            for c in [&base, &cfg] {
                check_candidate(&mut runner, &mut problem, c, &[m])
                    .map_err(|e| format!("{}x{} M={m} {}: {e}", g.k, g.n, GpuTiling::of(c)))?;
            }
            // Interleaved rounds; each sample is the median of the runner's cold launches.
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..reps.div_ceil(5).max(3) {
                a.push(runner.time_us(&base, m)?);
                b.push(runner.time_us(&cfg, m)?);
            }
            let (base_us, cfg_us) = (median(a), median(b));
            let gpu = runner.gpu();
            let cublas_us = match &cublas {
                Some(c) => Some(gpu.time_cold_us(reps, &mut flush, || c.hgemm(m, g.n, g.k, &dx, &dw, &mut dy)).map_err(|e| e.to_string())?),
                None => None,
            };
            slower += (cfg_us > base_us * 1.02) as usize;
            faster += (cfg_us < base_us * 0.98) as usize;
            println!(
                "{:>12} {:>5} {:>12.1} {:>10.1} {:>8.2}x {:>10} {:>11}  {}{}",
                format!("{}x{}", g.k, g.n),
                m,
                base_us,
                cfg_us,
                base_us / cfg_us,
                cublas_us.map_or("-".into(), |c| format!("{c:.1}")),
                cublas_us.map_or("-".into(), |c| format!("{:.2}x", c / cfg_us)),
                GpuTiling::of(&cfg),
                if was_tuned { "" } else { " (heuristic)" }
            );
        }
    }
    println!("tuned table faster than untuned (> 2 %): {faster} shape x M; slower (> 2 %): {slower}");
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
