//! The CPU search: for each product, the blockings worth trying are compiled into one shared
//! object; for each M bucket every distinct candidate (loop, blocking, thread count) is checked
//! against the f64 reference, then timed in interleaved rounds with successive halving; the
//! fastest is kept only if a final head-to-head against the heuristic's choice confirms it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fpx_llvm::{
    compile_cpu_kernels, default_choices, loop_shape, symbol_for, CpuChoice, CpuTarget, CpuTiling, LoopShape, QuantGemm, Variant,
};
use fpx_quant::KernelTable;
use fpx_runtime::native::{NativeKernel, NativeLibrary, NativeQmm, QmmFn};

use crate::db::{CpuEntry, Shape, TunedChoice};
use crate::fixture::Fixture;
use crate::timing::{beats, median, Bench};
use crate::{CpuMachine, MBucket, TuneError};

/// A candidate must beat the heuristic by 5 % in the final head-to-head (median of paired
/// rounds, and in four rounds of five) to be kept: repeated timing of the same kernels on a VM
/// differed by 3–7 %.
const CONFIRM_MARGIN: f64 = 0.95;
/// Rounds of the three phases: all candidates, the best third, best against the heuristic.
const ROUNDS: [usize; 3] = [3, 7, 15];

/// What to tune on the CPU.
#[derive(Debug, Clone)]
pub struct CpuTuneOptions {
    /// The CPU level the kernels are compiled for (the one this host runs).
    pub target: CpuTarget,
    /// The M buckets to tune.
    pub buckets: Vec<MBucket>,
    /// The whole search's time budget (compiling included); spent on products in proportion
    /// to the bytes of weight they stream.
    pub budget: Duration,
    /// Seeds the random weights and activations.
    pub seed: u64,
}

/// A product to tune and how many nodes of the model compute it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TuneShape {
    /// The product.
    pub gemm: QuantGemm,
    /// Nodes with this product (weights the budget).
    pub uses: usize,
}

/// A product's compiled candidate kernels: one per (variant, blocking), all in libraries kept
/// loaded while this lives.
pub struct KernelSet {
    kernels: Vec<(Variant, CpuTiling, QmmFn)>,
    _libraries: Vec<NativeLibrary>,
}

impl KernelSet {
    /// Compiles `gemm`'s `kernels` (variant, blocking) for `target`, in as many libraries as the
    /// thread pool has threads, side by side.
    pub fn compile(gemm: &QuantGemm, kernels: &[(Variant, CpuTiling)], target: CpuTarget) -> Result<KernelSet, TuneError> {
        use rayon::prelude::*;
        let default = fpx_llvm::default_tiling(target)?;
        let per = kernels.len().div_ceil(rayon::current_num_threads().max(1)).max(1);
        let parts = kernels
            .par_chunks(per)
            .map(|part| {
                let list: Vec<(QuantGemm, Variant, CpuTiling)> = part.iter().map(|(v, t)| (*gemm, *v, *t)).collect();
                let compiled = compile_cpu_kernels(&list, target)?;
                // SAFETY: the library is fpx-llvm's output, just generated: plain functions.
                let lib = unsafe { NativeLibrary::load(&compiled.shared_object)? };
                let fns = part
                    .iter()
                    .map(|(v, t)| Ok((*v, *t, lib.qmm(&symbol_for(gemm, *v, *t, default))?)))
                    .collect::<Result<Vec<_>, TuneError>>()?;
                Ok((lib, fns))
            })
            .collect::<Result<Vec<_>, TuneError>>()?;
        let mut set = KernelSet { kernels: Vec::new(), _libraries: Vec::new() };
        for (lib, fns) in parts {
            set.kernels.extend(fns);
            set._libraries.push(lib);
        }
        Ok(set)
    }

    /// Adds a kernel said to be `gemm`'s in `variant` and `tiling`, from `library` (kept
    /// loaded). For checking the checker: a kernel of another product is rejected.
    pub fn plant(&mut self, variant: Variant, tiling: CpuTiling, kernel: QmmFn, library: NativeLibrary) {
        self.kernels.retain(|(v, t, _)| !(*v == variant && *t == tiling));
        self.kernels.insert(0, (variant, tiling, kernel));
        self._libraries.push(library);
    }

    fn find(&self, variant: Variant, tiling: CpuTiling) -> Option<QmmFn> {
        self.kernels.iter().find(|(v, t, _)| *v == variant && *t == tiling).map(|k| k.2)
    }
}

/// The result for one product and M bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketResult {
    /// The product.
    pub gemm: QuantGemm,
    /// The bucket.
    pub bucket: MBucket,
    /// The choice kept (the heuristic's unless a candidate beat it).
    pub choice: CpuChoice,
    /// Whether the kept choice is the heuristic's.
    pub is_default: bool,
    /// Time per call of the kept choice (µs, mean over the bucket's sample M).
    pub micros: f64,
    /// Time per call of the heuristic's choice, measured beside it.
    pub default_micros: f64,
    /// Candidates timed.
    pub timed: usize,
}

/// A candidate whose output differed from the reference: never timed, never kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The product.
    pub gemm: QuantGemm,
    /// The candidate (`gemv v1 r1 p1`).
    pub candidate: String,
    /// Where its output differed.
    pub reason: String,
}

/// Everything one product's search found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProductResult {
    /// Per bucket.
    pub buckets: Vec<BucketResult>,
    /// Candidates rejected by the reference check.
    pub rejected: Vec<Rejected>,
}

/// What a CPU tuning run found.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTuneReport {
    /// Where it ran.
    pub machine: CpuMachine,
    /// The CPU level tuned.
    pub target: CpuTarget,
    /// Per product and bucket.
    pub results: Vec<BucketResult>,
    /// Candidates rejected by the reference check.
    pub rejected: Vec<Rejected>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl CpuTuneReport {
    /// The database entries of the results.
    pub fn entries(&self) -> Vec<CpuEntry> {
        self.results
            .iter()
            .map(|r| CpuEntry {
                machine: self.machine.clone(),
                target: self.target.name().to_string(),
                kernel_checksum: fpx_llvm::CODEGEN_CHECKSUM.to_string(),
                shape: Shape::of(&r.gemm),
                bucket: r.bucket,
                choice: TunedChoice::from(r.choice),
                // Hundredths of a µs: more is noise.
                micros: (r.micros * 100.0).round() / 100.0,
                default_micros: (r.default_micros * 100.0).round() / 100.0,
            })
            .collect()
    }
}

/// Progress of a tuning run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TuneEvent {
    /// Compiling the candidates of product `index` (of `total`).
    Compiling {
        /// Which product.
        index: usize,
        /// Products in all.
        total: usize,
    },
    /// A bucket is done; `done` of `total` (products × buckets).
    BucketDone {
        /// Finished so far.
        done: usize,
        /// In all.
        total: usize,
    },
}

/// Tunes every product of `shapes` on this machine within the budget.
pub fn tune_cpu(shapes: &[TuneShape], options: &CpuTuneOptions, progress: &mut dyn FnMut(TuneEvent)) -> Result<CpuTuneReport, TuneError> {
    let start = Instant::now();
    let machine = CpuMachine::host();
    let missing = fpx_artifact::missing_cpu_features(&fpx_llvm::target_features(options.target)?);
    if !missing.is_empty() {
        return Err(TuneError::Unsupported(format!(
            "this CPU cannot run {} code (it lacks {}); tune the level it runs",
            options.target,
            missing.join(", ")
        )));
    }
    if options.buckets.is_empty() {
        return Err(TuneError::Unsupported("no M bucket to tune".to_string()));
    }
    let default = fpx_llvm::default_tiling(options.target)?;
    let cache = crate::machine::last_level_cache_bytes();
    let weights: Vec<f64> = shapes.iter().map(|s| (s.gemm.packed_shape().total_bytes() * s.uses.max(1)) as f64).collect();
    let total = shapes.len() * options.buckets.len();
    let mut done = 0;
    let mut results = Vec::new();
    let mut rejected = Vec::new();
    for (i, shape) in shapes.iter().enumerate() {
        // A floor for every product, the rest by the bytes it streams; what earlier products
        // left unspent goes to the rest.
        let left = options.budget.saturating_sub(start.elapsed()).as_secs_f64();
        let remaining_weight: f64 = weights[i..].iter().sum::<f64>().max(1.0);
        let share = left * (0.3 / (shapes.len() - i) as f64 + 0.7 * weights[i] / remaining_weight);
        progress(TuneEvent::Compiling { index: i, total: shapes.len() });
        let deadline = Instant::now() + Duration::from_secs_f64(share.max(0.0));
        let kernels = candidate_kernels(&shape.gemm, default, &options.buckets, share);
        let set = KernelSet::compile(&shape.gemm, &kernels, options.target)?;
        let fixture = Fixture::new(&shape.gemm, options.seed ^ i as u64, cache)?;
        let found = tune_product(&fixture, &set, &options.buckets, default, deadline, options.seed, &mut || {
            done += 1;
            progress(TuneEvent::BucketDone { done, total });
        });
        results.extend(found.buckets);
        rejected.extend(found.rejected);
    }
    Ok(CpuTuneReport { machine, target: options.target, results, rejected, elapsed: start.elapsed() })
}

/// Seconds LLVM takes to generate and optimize one kernel (measured: 0.4 s, any K and N).
const COMPILE_SECONDS: f64 = 0.4;

/// The kernels (variant, blocking) worth compiling for `gemm` in `buckets`, most promising
/// first: both variants in the default blocking, then one parameter changed at a time (GEMV rows
/// for the GEMV loop; panel rows and panel size for the GEMM loop), then a few pairs; only those
/// that give some sample M a loop no earlier kernel gives, and as many as about 40 % of the
/// product's share of the budget compiles (on every thread).
pub fn candidate_kernels(gemm: &QuantGemm, default: CpuTiling, buckets: &[MBucket], share_seconds: f64) -> Vec<(Variant, CpuTiling)> {
    let d = default;
    let mut all = vec![(Variant::Gemv, d), (Variant::Gemm, d)];
    if fpx_llvm::tiling_applies(gemm) {
        for v in [d.gemv_rows - 1, d.gemv_rows + 1, d.gemv_rows * 2] {
            all.push((Variant::Gemv, CpuTiling { gemv_rows: v, ..d }));
        }
        for r in [d.gemm_rows + 1, d.gemm_rows - 1, d.gemm_rows + 2] {
            all.push((Variant::Gemm, CpuTiling { gemm_rows: r, ..d }));
        }
        for p in [d.panel_tiles * 2, d.panel_tiles / 2] {
            all.push((Variant::Gemm, CpuTiling { panel_tiles: p, ..d }));
        }
        for (r, p) in [(d.gemm_rows + 1, d.panel_tiles * 2), (d.gemm_rows + 1, d.panel_tiles / 2), (d.gemm_rows - 1, d.panel_tiles * 2)] {
            all.push((Variant::Gemm, CpuTiling { gemm_rows: r, panel_tiles: p, ..d }));
        }
    }
    let samples: Vec<usize> = buckets.iter().flat_map(|b| b.samples()).collect();
    let mut seen: HashSet<LoopShape> = HashSet::new();
    let mut out: Vec<(Variant, CpuTiling)> = Vec::new();
    for (v, t) in all {
        if !t.is_valid() || out.contains(&(v, t)) {
            continue;
        }
        let shapes: Vec<LoopShape> = samples.iter().map(|&m| loop_shape(gemm, v, t, m)).collect();
        let new = shapes.iter().any(|s| !seen.contains(s));
        if new || t == d {
            seen.extend(shapes);
            out.push((v, t));
        }
    }
    let threads = rayon::current_num_threads().max(1) as f64;
    let affordable = (share_seconds * 0.4 * threads / COMPILE_SECONDS).floor() as usize;
    out.truncate(affordable.max(2));
    out
}

/// The thread counts worth trying on a pool of `pool` threads: all (0), then 1, 2, 4, … below.
fn thread_options(pool: usize) -> Vec<u32> {
    let mut out = vec![0u32];
    let mut t = 1usize;
    while t < pool {
        out.push(t as u32);
        t *= 2;
    }
    out
}

/// Searches one product's buckets until `deadline` (shared out evenly over the buckets left).
pub fn tune_product(
    fixture: &Fixture,
    set: &KernelSet,
    buckets: &[MBucket],
    default: CpuTiling,
    deadline: Instant,
    seed: u64,
    bucket_done: &mut dyn FnMut(),
) -> ProductResult {
    let gemm = fixture.gemm;
    let heuristic = default_choices(default);
    let threads = thread_options(rayon::current_num_threads());
    let mut result = ProductResult::default();
    // The reference check, once per kernel and sample M.
    let mut failed: HashSet<(Variant, CpuTiling)> = HashSet::new();
    let mut checked: HashSet<(Variant, CpuTiling, usize)> = HashSet::new();
    let mut check = |variant: Variant, tiling: CpuTiling, f: QmmFn, m: usize, rejected: &mut Vec<Rejected>| -> bool {
        if failed.contains(&(variant, tiling)) {
            return false;
        }
        if checked.insert((variant, tiling, m)) {
            if let Err(reason) = fixture.verify(f, m, seed ^ ((m as u64) << 8)) {
                failed.insert((variant, tiling));
                rejected.push(Rejected { gemm, candidate: format!("{variant} {tiling}"), reason });
                return false;
            }
        }
        true
    };
    for (bi, bucket) in buckets.iter().enumerate() {
        let samples = bucket.samples();
        let default_choice = *heuristic.pick(bucket.range().1.min(1 << 20) as usize);
        // Distinct candidates: the heuristic's first, then each kernel on each thread count
        // whose loops at the sample M differ from every earlier one's.
        let mut seen: HashSet<(Vec<LoopShape>, u32)> = HashSet::new();
        let mut candidates: Vec<(CpuChoice, QmmFn)> = Vec::new();
        let key = |c: &CpuChoice| (samples.iter().map(|&m| loop_shape(&gemm, c.variant, c.tiling, m)).collect::<Vec<_>>(), c.threads);
        let mut options: Vec<CpuChoice> = vec![default_choice];
        for &t in &threads {
            for (v, tiling, _) in &set.kernels {
                options.push(CpuChoice { variant: *v, tiling: *tiling, threads: t, tuned: false });
            }
        }
        for c in options {
            let Some(f) = set.find(c.variant, c.tiling) else { continue };
            if !seen.insert(key(&c)) {
                continue;
            }
            if samples.iter().all(|&m| check(c.variant, c.tiling, f, m, &mut result.rejected)) {
                candidates.push((c, f));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now()).as_secs_f64();
        let slice = left / (buckets.len() - bi) as f64;
        if let Some(found) = search_bucket(fixture, &candidates, default_choice, &samples, slice) {
            result.buckets.push(BucketResult { gemm, bucket: *bucket, ..found });
        }
        bucket_done();
    }
    result
}

/// Times `candidates` (the heuristic's choice among them, unless it failed its check) at the
/// sample M within about `slice` seconds; `None` if the heuristic's choice is not among them.
fn search_bucket(
    fixture: &Fixture,
    candidates: &[(CpuChoice, QmmFn)],
    default_choice: CpuChoice,
    samples: &[usize],
    slice: f64,
) -> Option<BucketResult> {
    let default_at = candidates.iter().position(|(c, _)| *c == default_choice)?;
    let mut bench = Bench::new(fixture, samples);
    let qmms: Vec<NativeQmm> = candidates.iter().map(|c| qmm(fixture, c)).collect();
    // One call of the heuristic's choice per sample, after warming up: the unit of cost.
    let call = bench.warm_up(&qmms[default_at]);
    let inner = (crate::timing::SAMPLE_SECONDS / call.max(1e-9)).ceil().clamp(1.0, 1024.0) as usize;
    let round_cost = inner as f64 * call * samples.len() as f64;
    let cost = |n: usize| round_cost * (ROUNDS[0] * n + ROUNDS[1] * n.div_ceil(3).max(2) + ROUNDS[2] * 2) as f64;
    // As many candidates as the slice pays for (the heuristic's always, one more at least).
    let mut n = candidates.len();
    while n > 2 && cost(n) > slice {
        n -= 1;
    }
    let scale = (slice / cost(n)).clamp(1.0, 3.0);
    let rounds = ROUNDS.map(|r| (r as f64 * scale).round() as usize);
    let mut pool: Vec<usize> = (0..candidates.len()).filter(|&i| i != default_at).take(n.saturating_sub(1)).collect();
    pool.insert(0, default_at);
    let timed = pool.len();
    // Phase 1 and 2: all, then the best third (the heuristic's stays in).
    for (phase_rounds, first) in [(rounds[0], true), (rounds[1], false)] {
        let keep = |n: usize| if first { n.div_ceil(3).max(2) } else { 1 };
        let times = bench.time(&pick(&qmms, &pool), inner, phase_rounds);
        let mut order: Vec<usize> = (0..pool.len()).collect();
        order.sort_by(|&a, &b| times[a].total_cmp(&times[b]));
        let mut next: Vec<usize> = order.iter().take(keep(pool.len())).map(|&i| pool[i]).collect();
        if !next.contains(&default_at) {
            next.push(default_at);
        }
        next.sort_by_key(|&i| i != default_at);
        pool = next;
    }
    // Phase 3: the best against the heuristic's, head to head.
    let best = *pool.iter().find(|&&i| i != default_at).unwrap_or(&default_at);
    let pair = if best == default_at { vec![default_at] } else { vec![default_at, best] };
    let rounds_of = bench.rounds(&pick(&qmms, &pair), inner, rounds[2]);
    let default_time = median(rounds_of[0].clone());
    let (choice, time, is_default) = if pair.len() == 2 && beats(&rounds_of[1], &rounds_of[0], CONFIRM_MARGIN) {
        (candidates[best].0, median(rounds_of[1].clone()), false)
    } else {
        (default_choice, default_time, true)
    };
    Some(BucketResult {
        gemm: fixture.gemm,
        bucket: MBucket::of(samples[0] as u64),
        choice,
        is_default,
        micros: time * 1e6 / samples.len() as f64,
        default_micros: default_time * 1e6 / samples.len() as f64,
        timed,
    })
}

/// The runtime's product for a candidate: its kernel on its thread count.
fn qmm(fixture: &Fixture, (choice, f): &(CpuChoice, QmmFn)) -> NativeQmm {
    let kernel = NativeKernel { f: *f, column_split: fpx_quant::layout::TILE_N, threads: choice.threads as usize };
    NativeQmm { gemm: fixture.gemm, kernels: KernelTable::single(kernel) }
}

/// `all[i]` for each `i` of `pool`, in order.
fn pick<'a>(all: &'a [NativeQmm], pool: &[usize]) -> Vec<&'a NativeQmm> {
    pool.iter().map(|&i| &all[i]).collect()
}
