//! The fuzzer in CI: every target for a bounded number of iterations with a fixed seed, and every
//! saved input under `tests/data/fuzz/` replayed (none may panic).

use fpx_fuzz::memcap::CappedAllocator;
use fpx_fuzz::{fuzz, run_caught, saved_inputs, seeds, Budget, Target};

/// Live heap bytes are capped here too, so an input that makes a reader allocate without end
/// aborts this test binary (its input saved to `$TMPDIR/fpx-fuzz-tests-over-memory-cap`) instead
/// of exhausting the CI machine.
#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator;

fn arm_memory_cap() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let sink = std::env::temp_dir().join("fpx-fuzz-tests-over-memory-cap");
        CappedAllocator::arm(1 << 30, &sink).expect("the memory-cap file can be created");
    });
}

/// Iterations per target: seconds, not minutes, on two cores in the dev profile.
const ITERATIONS: u64 = 3000;

#[test]
fn every_seed_is_accepted() {
    for target in Target::ALL {
        for (i, s) in seeds(target).iter().enumerate() {
            let ok = run_caught(target, s).unwrap_or_else(|m| panic!("{} seed {i} panics: {m}", target.name()));
            // Saved regression inputs are expected to be refused; the made seeds come first.
            if i < 2 {
                assert!(ok, "{} seed {i} is refused", target.name());
            }
        }
    }
}

#[test]
fn a_bounded_fixed_seed_run_finds_no_crash() {
    arm_memory_cap();
    for target in Target::ALL {
        let report = fuzz(target, &seeds(target), 12, Budget { iterations: Some(ITERATIONS), time: None });
        assert_eq!(report.executions, ITERATIONS);
        let crashes: Vec<String> = report.crashes.iter().map(|c| format!("{}: {}", c.file_name(), c.message)).collect();
        assert!(crashes.is_empty(), "{} crashed:\n{}", target.name(), crashes.join("\n"));
        println!("{}: {} executions, {} accepted, {:.0}/s", target.name(), report.executions, report.accepted, report.per_second());
    }
}

#[test]
fn saved_inputs_do_not_panic() {
    arm_memory_cap();
    let mut replayed = 0;
    for target in Target::ALL {
        for (path, bytes) in saved_inputs(target) {
            CappedAllocator::running(&bytes);
            if let Err(m) = run_caught(target, &bytes) {
                panic!("{} panics: {m}", path.display());
            }
            replayed += 1;
        }
    }
    assert!(replayed > 0, "tests/data/fuzz/ holds regression inputs");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let seeds = seeds(Target::Npy);
    let budget = Budget { iterations: Some(200), time: None };
    let (a, b) = (fuzz(Target::Npy, &seeds, 5, budget), fuzz(Target::Npy, &seeds, 5, budget));
    assert_eq!(a.accepted, b.accepted);
}

#[test]
fn manifest_mutations_keep_the_checksum_valid() {
    // Most mutated artifacts must get past the manifest checksum, or the target only tests it.
    let seeds = seeds(Target::Artifact);
    let mut rng = fpx_fuzz::Rng::new(3);
    let mut past_checksum = 0;
    for i in 0..200 {
        let mut input = seeds[i % seeds.len()].clone();
        fpx_fuzz::mutate_for(Target::Artifact, &mut rng, &mut input, &seeds, 1 << 22);
        match fpx_artifact::Artifact::from_bytes(input, "m.fpx") {
            Err(fpx_artifact::ArtifactError::ChecksumMismatch { section, .. }) if section == "the manifest" => {}
            _ => past_checksum += 1,
        }
    }
    assert!(past_checksum > 100, "only {past_checksum} of 200 mutated artifacts got past the manifest checksum");
}
