//! The tuner end to end on small products: candidates checked before timing (a planted wrong
//! one rejected), results that make valid kernel tables, and the database's rules (merge,
//! stale checksums, damaged and foreign files).

mod gpu;

use std::time::{Duration, Instant};

use fpx_llvm::{compile_cpu_tiled, default_tiling, symbol_for, Activations, CpuChoice, CpuTarget, CpuTiling, QuantGemm, Variant};
use fpx_quant::Format;
use fpx_runtime::native::NativeLibrary;
use fpx_test_support::TempDir;
use fpx_tune::{tune_cpu, tune_product, CpuMachine, CpuTuneOptions, DbError, Fixture, KernelSet, MBucket, TuneShape, TuningDb};

const TARGET: CpuTarget = CpuTarget::X86_64V3;

fn gemm(format: Format, k: usize, n: usize) -> QuantGemm {
    QuantGemm { format, k, n, group_size: 0, activations: Activations::F32 }
}

#[test]
fn a_planted_wrong_candidate_is_rejected_and_never_kept() {
    let g = gemm(Format::Fp6E3M2, 256, 96);
    let default = default_tiling(TARGET).unwrap();
    let mut set = KernelSet::compile(&g, &[(Variant::Gemv, default), (Variant::Gemm, default)], TARGET).unwrap();
    // The kernel of another product with the same packed size (e2m3 codes read as e3m2):
    // memory-safe, fast, and wrong. Planted as a GEMV blocking the search would otherwise try.
    let wrong = gemm(Format::Fp6E2M3, 256, 96);
    let planted = CpuTiling { gemv_rows: 1, ..default };
    let compiled = compile_cpu_tiled(&[(wrong, planted)], TARGET).unwrap();
    // SAFETY: fpx-llvm's output, just generated.
    let lib = unsafe { NativeLibrary::load(&compiled.shared_object) }.unwrap();
    let f = lib.qmm(&symbol_for(&wrong, Variant::Gemv, planted, default)).unwrap();
    set.plant(Variant::Gemv, planted, f, lib);
    let fixture = Fixture::new(&g, 7, 1 << 20).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut done = 0;
    let found = tune_product(&fixture, &set, &[MBucket::M1], default, deadline, 1, &mut || done += 1);
    assert_eq!(done, 1);
    assert_eq!(found.rejected.len(), 1, "{:?}", found.rejected);
    let r = &found.rejected[0];
    assert_eq!(r.candidate, format!("gemv {planted}"));
    assert!(r.reason.contains("the reference gives"), "{}", r.reason);
    assert_eq!(found.buckets.len(), 1);
    assert_ne!(found.buckets[0].choice.tiling, planted, "a rejected candidate is never kept");
}

#[test]
fn tuning_a_small_model_gives_tables_never_slower_than_the_heuristic_and_merges() {
    let shapes =
        [TuneShape { gemm: gemm(Format::Fp6E3M2, 384, 384), uses: 4 }, TuneShape { gemm: gemm(Format::Fp4E2M1, 384, 1536), uses: 1 }];
    let options = CpuTuneOptions { target: TARGET, buckets: vec![MBucket::M1, MBucket::M9To16], budget: Duration::from_secs(6), seed: 3 };
    let mut events = 0;
    let report = tune_cpu(&shapes, &options, &mut |_| events += 1).unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_eq!(report.results.len(), 4);
    assert!(events >= 6);
    for r in &report.results {
        assert!(r.micros > 0.0 && r.default_micros > 0.0);
        assert!(r.timed >= 1);
        // Kept only when it won head to head by the margin; else the heuristic's.
        if r.is_default {
            assert_eq!(r.micros, r.default_micros);
        } else {
            assert!(r.micros <= 0.95 * r.default_micros, "{r:?}");
        }
    }
    let dir = TempDir::new("tune-db");
    let path = dir.join("sub").join("tuning.json");
    let mut db = TuningDb::default();
    db.merge(report.entries());
    db.save(&path).unwrap();
    let reread = TuningDb::open(&path).unwrap().unwrap();
    assert_eq!(reread, db);
    // Every product gets a table: tuned buckets from the database, the heuristic elsewhere.
    let machine = CpuMachine::host();
    let default = default_tiling(TARGET).unwrap();
    for s in &shapes {
        let lookup = db.cpu_table(&machine, TARGET.name(), &s.gemm, default);
        assert_eq!(lookup.tuned_buckets, 2);
        assert_eq!(lookup.stale, 0);
        let table = lookup.table.unwrap();
        let at = |m: usize| *table.pick(m);
        let tuned =
            |b: MBucket| CpuChoice { tuned: true, ..report.results.iter().find(|r| r.gemm == s.gemm && r.bucket == b).unwrap().choice };
        assert_eq!(at(1), tuned(MBucket::M1));
        assert_eq!(at(16), tuned(MBucket::M9To16));
        assert_eq!(at(9), tuned(MBucket::M9To16));
        assert_eq!(at(4), CpuChoice { variant: Variant::Gemv, tiling: default, threads: 0, tuned: false });
        assert_eq!(at(1000), CpuChoice { variant: Variant::Gemm, tiling: default, threads: 0, tuned: false });
    }
    // Tuning again merges: the same keys are replaced, other entries kept.
    let again = CpuTuneOptions { buckets: vec![MBucket::M1], budget: Duration::from_secs(2), ..options };
    let second = tune_cpu(&shapes[..1], &again, &mut |_| {}).unwrap();
    let mut merged = reread.clone();
    merged.merge(second.entries());
    assert_eq!(merged.cpu.len(), db.cpu.len(), "one key replaced, none added");
    let replaced = merged.cpu.iter().find(|e| e.shape.k == 384 && e.shape.n == 384 && e.bucket == MBucket::M1).unwrap();
    assert_eq!(replaced, &second.entries()[0]);
    let kept = merged.cpu.iter().filter(|e| e.shape.n == 1536).count();
    assert_eq!(kept, 2);
}

#[test]
fn entries_of_another_kernel_generator_are_stale_and_ignored() {
    let g = gemm(Format::Fp6E3M2, 64, 32);
    let machine = CpuMachine::host();
    let default = default_tiling(TARGET).unwrap();
    let entry = fpx_tune::CpuEntry {
        machine: machine.clone(),
        target: TARGET.name().to_string(),
        kernel_checksum: fpx_llvm::CODEGEN_CHECKSUM.to_string(),
        shape: fpx_tune::Shape::of(&g),
        bucket: MBucket::M1,
        choice: fpx_tune::TunedChoice { variant: Variant::Gemm, tiling: CpuTiling { gemm_rows: 4, ..default }, threads: 1 },
        micros: 1.0,
        default_micros: 2.0,
    };
    let mut db = TuningDb::default();
    db.merge([entry.clone()]);
    let lookup = db.cpu_table(&machine, TARGET.name(), &g, default);
    assert_eq!((lookup.tuned_buckets, lookup.stale), (1, 0));
    assert_eq!(*lookup.table.as_ref().unwrap().pick(1), entry.choice.into());
    // A changed generator: the same entry under another checksum is stale.
    db.cpu[0].kernel_checksum = "0000000000000000".to_string();
    let lookup = db.cpu_table(&machine, TARGET.name(), &g, default);
    assert_eq!((lookup.tuned_buckets, lookup.stale, lookup.table), (0, 1, None));
    // Another machine's or level's entries do not apply here.
    db.cpu[0].kernel_checksum = fpx_llvm::CODEGEN_CHECKSUM.to_string();
    let other = CpuMachine { threads: machine.threads + 1, ..machine.clone() };
    assert_eq!(db.cpu_table(&other, TARGET.name(), &g, default).table, None);
    assert_eq!(db.cpu_table(&machine, "x86-64-v4", &g, default).table, None);
}

#[test]
fn damaged_and_foreign_databases_are_clear_errors() {
    let dir = TempDir::new("tune-bad-db");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    assert!(TuningDb::open(&dir.join("absent.json")).unwrap().is_none());
    let cases = [
        ("truncated.json", "{\"format\": \"fpx-tuning-db\", \"version\": 1, \"cpu\": [", "is damaged: not valid JSON"),
        ("other.json", "{\"name\": \"package.json\"}", "is not a tuning database this fpx reads: it has no \"format\""),
        ("future.json", "{\"format\": \"fpx-tuning-db\", \"version\": 9, \"cpu\": []}", "it is version 9, this fpx reads version 1"),
        ("badentry.json", "{\"format\": \"fpx-tuning-db\", \"version\": 1, \"cpu\": [{\"machine\": 3}]}", "is damaged: invalid type"),
    ];
    for (name, text, want) in cases {
        let path = write(name, text);
        let err = TuningDb::open(&path).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(name) && msg.contains(want), "{name}: {msg}");
        assert!(matches!(err, DbError::Damaged { .. } | DbError::Foreign { .. }));
    }
    // A folder is not a database.
    assert!(matches!(TuningDb::open(&dir.join(".")), Err(DbError::Read { .. })));
}
