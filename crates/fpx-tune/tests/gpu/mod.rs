//! The GPU search's rules, checked where no GPU is: the same search driven through a stand-in
//! runner that computes every candidate's product on the CPU (decode-then-multiply, FP16
//! outputs) and reports times from a synthetic cost surface with a known optimum. A planted
//! candidate computes the product of the other FP6 format (what a mis-instantiated kernel
//! gives) and is made the fastest of all: it must be rejected and never kept. The database
//! side (merge, stale templates, damaged entries, the tables compile takes) uses the results.
//! `device` runs the search on a real GPU (skipped without one).

mod device;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use fpx_cuda::{Arch, Fp6Format, GemmConfig};
use fpx_quant::{Activations, Format, QuantGemm};
use fpx_tune::gpu::{heuristic_for, tune_gpu, tune_gpu_product, GemmRunner, GpuProblem, GpuTiling, GpuTuneOptions};
use fpx_tune::{DbError, GpuMachine, MBucket, TuneShape, TuningDb};
use half::f16;

fn gemm(format: Format, k: usize, n: usize) -> QuantGemm {
    QuantGemm { format, k, n, group_size: 0, activations: Activations::F32 }
}

fn machine() -> GpuMachine {
    GpuMachine { name: "Stand-in GPU".into(), capability: "9.0".into(), sm_count: 132, driver: "13.0".into() }
}

/// Computes on the CPU; times from `cost`.
struct HostRunner {
    codes: Vec<u8>,
    scales: Vec<f32>,
    x: Vec<(usize, Vec<f32>)>,
    gemm: Option<QuantGemm>,
    format: Option<Fp6Format>,
    k_pad: usize,
    planted: Option<GemmConfig>,
    cost: Box<dyn Fn(&GemmConfig) -> f64>,
    prepared: HashSet<GemmConfig>,
    timed: HashSet<GemmConfig>,
}

impl HostRunner {
    fn new(cost: impl Fn(&GemmConfig) -> f64 + 'static) -> HostRunner {
        HostRunner {
            codes: Vec::new(),
            scales: Vec::new(),
            x: Vec::new(),
            gemm: None,
            format: None,
            k_pad: 0,
            planted: None,
            cost: Box::new(cost),
            prepared: HashSet::new(),
            timed: HashSet::new(),
        }
    }
}

impl GemmRunner for HostRunner {
    fn machine(&self) -> GpuMachine {
        machine()
    }

    fn arch(&self) -> Arch {
        Arch::Sm90
    }

    fn set_problem(&mut self, problem: &mut GpuProblem, ms: &[usize]) -> Result<(), String> {
        self.codes = problem.codes().to_vec();
        self.scales = problem.scales().to_vec();
        self.k_pad = problem.k_pad();
        self.x = ms.iter().map(|&m| (m, problem.activations(m).iter().map(|&b| f16::from_bits(b).to_f32()).collect())).collect();
        self.gemm = Some(problem.gemm);
        self.format = Some(problem.format);
        self.prepared.clear();
        Ok(())
    }

    fn prepare(&mut self, cfgs: &[GemmConfig]) -> Vec<Result<(), String>> {
        cfgs.iter()
            .map(|c| {
                c.validate().map_err(|e| e.to_string())?;
                self.prepared.insert(c.clone());
                Ok(())
            })
            .collect()
    }

    fn run(&mut self, cfg: &GemmConfig, m: usize) -> Result<Vec<f32>, String> {
        assert!(self.prepared.contains(cfg), "run before prepare: {cfg}");
        let g = self.gemm.unwrap();
        let mut format = self.format.unwrap().quant_format();
        if self.planted.as_ref() == Some(cfg) {
            format = if format == Format::Fp6E3M2 { Format::Fp6E2M3 } else { Format::Fp6E3M2 };
        }
        let x = &self.x.iter().find(|(mm, _)| *mm == m).unwrap().1;
        let mut y = vec![0f32; m * g.n];
        for r in 0..m {
            for c in 0..g.n {
                let dot: f32 = (0..g.k).map(|i| x[r * self.k_pad + i] * format.decode(self.codes[c * g.k + i])).sum();
                y[r * g.n + c] = f16::from_f32(dot * self.scales[c]).to_f32();
            }
        }
        Ok(y)
    }

    fn time_us(&mut self, cfg: &GemmConfig, m: usize) -> Result<f64, String> {
        assert!(self.prepared.contains(cfg), "timed before prepare: {cfg}");
        assert_ne!(self.planted.as_ref(), Some(cfg), "a candidate that failed its check was timed");
        self.timed.insert(cfg.clone());
        Ok((self.cost)(cfg) * (1.0 + m as f64 / 1000.0))
    }
}

/// A cost surface: 100 µs at the heuristic's config, each step of split-K towards `best.split_k`
/// and of stages towards `best.stages` 10 % faster; `planted` 50 % faster than anything.
fn surface(best: GemmConfig, planted: Option<GemmConfig>) -> impl Fn(&GemmConfig) -> f64 {
    const SPLITS: [usize; 8] = [1, 2, 3, 4, 6, 8, 12, 16];
    let rank = |s: usize| SPLITS.iter().position(|&x| x == s).unwrap_or(8) as f64;
    move |c: &GemmConfig| {
        if Some(c) == planted.as_ref() {
            return 20.0;
        }
        let steps = (rank(c.split_k) - rank(best.split_k)).abs() + (c.stages as f64 - best.stages as f64).abs();
        let others = [c.m_tile != best.m_tile, c.warps != best.warps, c.warp_ntiles != best.warp_ntiles, c.k_tiles != best.k_tiles]
            .iter()
            .filter(|&&x| x)
            .count() as f64;
        40.0 * (1.0 + 0.1 * steps + 0.2 * others)
    }
}

#[test]
fn the_search_walks_to_the_optimum_and_never_keeps_a_wrong_candidate() {
    let g = gemm(Format::Fp6E3M2, 512, 96);
    let mut problem = GpuProblem::new(&g, 11).unwrap();
    let default = heuristic_for(&g, Fp6Format::E3M2, MBucket::M1, 132);
    // Two steps of split-K and one of stages from the heuristic's config (the walk must move
    // twice); the planted config is one step away and would win on time.
    let split = if default.split_k >= 4 { 1 } else { 4 };
    let best = GemmConfig { split_k: split, stages: if default.stages == 2 { 3 } else { 2 }, ..default.clone() };
    best.validate().unwrap();
    let planted = GemmConfig { split_k: 2, ..default.clone() };
    assert_ne!(planted, default);
    let mut runner = HostRunner::new(surface(best.clone(), Some(planted.clone())));
    runner.planted = Some(planted.clone());
    let mut rejected = Vec::new();
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let found = tune_gpu_product(&mut runner, &mut problem, &[MBucket::M1], deadline, &mut rejected, &mut || done += 1).unwrap();
    assert_eq!(done, 1);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].candidate, GpuTiling::of(&planted));
    assert!(rejected[0].reason.contains("the reference gives"), "{}", rejected[0].reason);
    assert_eq!(found.len(), 1);
    let r = &found[0];
    assert_eq!(r.config, best, "the search stopped at {} (from {default})", r.config);
    assert!(!r.is_default && r.micros < r.default_micros * 0.95, "{r:?}");
    assert!(r.timed >= 3, "{r:?}");
    assert!(!runner.timed.contains(&planted));
}

#[test]
fn without_a_clear_winner_the_heuristic_is_kept() {
    let g = gemm(Format::Fp6E2M3, 384, 64);
    let mut problem = GpuProblem::new(&g, 5).unwrap();
    // Every config within 2 % of the others: nothing beats the heuristic by the 5 % margin.
    let mut runner = HostRunner::new(|c: &GemmConfig| 50.0 + (c.split_k + c.stages + c.warps) as f64 % 3.0 * 0.3);
    let mut rejected = Vec::new();
    let buckets = [MBucket::M1, MBucket::M9To16];
    let found =
        tune_gpu_product(&mut runner, &mut problem, &buckets, Instant::now() + Duration::from_secs(30), &mut rejected, &mut || {}).unwrap();
    assert!(rejected.is_empty());
    assert_eq!(found.len(), 2);
    for (r, b) in found.iter().zip(buckets) {
        assert!(r.is_default, "{r:?}");
        assert_eq!(r.config, heuristic_for(&g, Fp6Format::E2M3, b, 132));
        assert_eq!(r.bucket, b);
    }
}

#[test]
fn a_wrong_heuristic_config_gives_no_result_and_says_why() {
    let g = gemm(Format::Fp6E3M2, 256, 48);
    let mut problem = GpuProblem::new(&g, 2).unwrap();
    let mut runner = HostRunner::new(|_: &GemmConfig| 10.0);
    runner.planted = Some(heuristic_for(&g, Fp6Format::E3M2, MBucket::M1, 132));
    let mut rejected = Vec::new();
    let found =
        tune_gpu_product(&mut runner, &mut problem, &[MBucket::M1], Instant::now() + Duration::from_secs(5), &mut rejected, &mut || {})
            .unwrap();
    assert!(found.is_empty());
    assert_eq!(rejected.len(), 1);
}

/// Tunes two products over two buckets, merges the results, and reads them back as compile does.
#[test]
fn results_merge_into_the_database_and_make_the_tables_compile_uses() {
    let shapes =
        [TuneShape { gemm: gemm(Format::Fp6E3M2, 512, 96), uses: 3 }, TuneShape { gemm: gemm(Format::Fp6E2M3, 256, 160), uses: 1 }];
    let mut runner = HostRunner::new(|c: &GemmConfig| 30.0 * (1.0 + 0.2 * (c.split_k as f64 - 3.0).abs()) * (1.0 + 0.1 * c.stages as f64));
    let options = GpuTuneOptions { buckets: vec![MBucket::M1, MBucket::M17To32], budget: Duration::from_secs(30), seed: 7 };
    let mut events = 0;
    let report = tune_gpu(&mut runner, &shapes, &options, &mut |_| events += 1).unwrap();
    assert_eq!(report.results.len(), 4);
    assert!(events >= 6);
    assert_eq!(report.machine, machine());
    let entries = report.entries();
    assert!(entries.iter().all(|e| e.arch == "sm_90" && e.template_checksum == fpx_cuda::template_checksum()));

    let dir = fpx_test_support::TempDir::new("gpu-tune-db");
    let path = dir.join("tuning.json");
    let mut db = TuningDb::default();
    db.merge_gpu(entries.clone());
    db.save(&path).unwrap();
    let mut db = TuningDb::open(&path).unwrap().unwrap();
    assert_eq!(db.gpu, entries);
    // Tuning again replaces same-key entries and keeps the rest.
    let mut again = entries[0].clone();
    again.micros = 1.0;
    let mut other_gpu = entries[1].clone();
    other_gpu.machine.name = "Another GPU".into();
    db.merge_gpu([again.clone(), other_gpu]);
    assert_eq!(db.gpu.len(), 5);
    assert_eq!(db.gpu[0], again);

    let products: Vec<QuantGemm> = shapes.iter().map(|s| s.gemm).collect();
    assert_eq!(db.gpu_for(Arch::Sm90, &products), Some(machine()), "the GPU with results for most products");
    assert_eq!(db.gpu_for(Arch::Sm80, &products), None);
    for (i, s) in shapes.iter().enumerate() {
        let lookup = db.gpu_table(&machine(), Arch::Sm90, &s.gemm, 132).unwrap();
        assert_eq!(lookup.tuned_buckets, 2);
        let table = lookup.table.unwrap();
        for r in report.results.iter().filter(|r| r.gemm == s.gemm) {
            let m = r.bucket.range().1 as usize;
            let (cfg, tuned) = table.pick(m);
            assert_eq!(cfg, &r.config, "product {i} bucket {}", r.bucket);
            assert!(*tuned);
        }
        // Buckets without a result: the untuned artifact's config for that M, marked untuned.
        for m in [5, 300] {
            let (cfg, tuned) = table.pick(m);
            assert!(!tuned);
            let untuned = fpx_cuda::config::configs_by_m(cfg.format, fpx_cuda::Act::F16, s.gemm.n, s.gemm.k, 132);
            assert_eq!(cfg, untuned.pick(m), "M = {m}");
        }
    }
    // Another template's results are stale: counted, not used.
    for e in &mut db.gpu {
        e.template_checksum = "0000000000000000".into();
    }
    let lookup = db.gpu_table(&machine(), Arch::Sm90, &shapes[0].gemm, 132).unwrap();
    assert_eq!((lookup.table.is_none(), lookup.stale), (true, 2));
    assert_eq!(db.gpu_for(Arch::Sm90, &products), None);
}

#[test]
fn damaged_gpu_entries_are_named_and_old_files_read() {
    let dir = fpx_test_support::TempDir::new("gpu-tune-bad");
    let path = dir.join("tuning.json");
    let entry = |tiling: &str, arch: &str| {
        format!(
            r#"{{"format": "fpx-tuning-db", "version": 1, "cpu": [], "gpu": [{{"machine": {{"name": "G", "capability": "9.0", "sm_count": 132, "driver": "13.0"}}, "arch": "{arch}", "template_checksum": "x", "shape": {{"format": "fp6-e3m2", "k": 4096, "n": 4096, "group_size": 0, "activations": "f32"}}, "bucket": "1", "tiling": {tiling}, "micros": 1.0, "default_micros": 2.0}}]}}"#
        )
    };
    let good = r#"{"m_tile": 8, "warps": 4, "warp_ntiles": 4, "k_tiles": 2, "stages": 3, "split_k": 4}"#;
    std::fs::write(&path, entry(good, "sm_90")).unwrap();
    assert_eq!(TuningDb::open(&path).unwrap().unwrap().gpu.len(), 1);
    for (text, want) in [
        (
            entry(&good.replace("\"m_tile\": 8", "\"m_tile\": 12"), "sm_90"),
            "GPU entry 0: invalid GEMM config: m_tile 12 is not 8, 16, 32 or 64",
        ),
        (entry(good, "sm_75"), "GPU entry 0: unknown GPU architecture 'sm_75'"),
        (entry(&good.replace("\"split_k\": 4", "\"split_k\": 4, \"extra\": 1"), "sm_90"), "unknown field `extra`"),
    ] {
        std::fs::write(&path, text).unwrap();
        match TuningDb::open(&path) {
            Err(DbError::Damaged { message, .. }) => assert!(message.contains(want), "{message}"),
            other => panic!("{want}: {other:?}"),
        }
    }
    // A file from before GPU tuning (no "gpu" field) reads with no GPU entries.
    std::fs::write(&path, r#"{"format": "fpx-tuning-db", "version": 1, "cpu": []}"#).unwrap();
    assert!(TuningDb::open(Path::new(&path)).unwrap().unwrap().gpu.is_empty());
}
