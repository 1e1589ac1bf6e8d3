//! The GPU search: per product and M bucket, from the heuristic's config, a local search over
//! neighbouring configs (one parameter changed; split-K over all its values), each batch
//! compiled together, checked, then timed; it moves to the best neighbour while that is at
//! least 3 % faster and stops at a local optimum or the bucket's time slice; the result is
//! confirmed against the heuristic's config head to head.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fpx_cuda::config::{blocks_per_sm, estimated_registers, split_score, TARGET_BLOCKS_PER_SM};
use fpx_cuda::{Arch, GemmConfig};
use fpx_quant::QuantGemm;

use super::{heuristic_for, GemmRunner, GpuEntry, GpuProblem, GpuTiling};
use crate::db::Shape;
use crate::timing::{beats, median};
use crate::{GpuMachine, MBucket, TuneError, TuneEvent, TuneShape};

/// A winner must beat the heuristic's config by this much head to head (as on the CPU).
const CONFIRM_MARGIN: f64 = 0.95;
/// The search moves to a neighbour that is at least this much faster.
const MOVE_MARGIN: f64 = 0.97;
/// Timed samples per candidate while searching, and paired rounds in the confirmation.
const SEARCH_SAMPLES: usize = 3;
const CONFIRM_ROUNDS: usize = 9;

/// What to tune on the GPU.
#[derive(Debug, Clone)]
pub struct GpuTuneOptions {
    /// The M buckets to tune.
    pub buckets: Vec<MBucket>,
    /// The whole search's time budget (compiling included); spent on products in proportion to
    /// the bytes of weight they stream.
    pub budget: Duration,
    /// Seeds the random weights and activations.
    pub seed: u64,
}

/// The result for one product and M bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuBucketResult {
    /// The product.
    pub gemm: QuantGemm,
    /// The bucket.
    pub bucket: MBucket,
    /// The config kept (the heuristic's unless a candidate beat it).
    pub config: GemmConfig,
    /// Whether the kept config is the heuristic's.
    pub is_default: bool,
    /// Time per call of the kept config (µs, summed over the bucket's sample M).
    pub micros: f64,
    /// Time of the heuristic's config, measured beside it.
    pub default_micros: f64,
    /// Candidates checked and timed.
    pub timed: usize,
}

/// A candidate that failed to compile, run, or match the reference: never timed, never kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuRejected {
    /// The product.
    pub gemm: QuantGemm,
    /// The candidate's tiling.
    pub candidate: GpuTiling,
    /// Why.
    pub reason: String,
}

/// What a GPU tuning run found.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuTuneReport {
    /// Where it ran.
    pub machine: GpuMachine,
    /// The PTX architecture tuned.
    pub arch: Arch,
    /// Per product and bucket.
    pub results: Vec<GpuBucketResult>,
    /// Candidates rejected.
    pub rejected: Vec<GpuRejected>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl GpuTuneReport {
    /// The database entries of the results.
    pub fn entries(&self) -> Vec<GpuEntry> {
        let round = |us: f64| (us * 100.0).round() / 100.0;
        self.results
            .iter()
            .map(|r| GpuEntry {
                machine: self.machine.clone(),
                arch: self.arch.sm().to_string(),
                template_checksum: fpx_cuda::template_checksum(),
                shape: Shape::of(&r.gemm),
                bucket: r.bucket,
                tiling: GpuTiling::of(&r.config),
                micros: round(r.micros),
                default_micros: round(r.default_micros),
            })
            .collect()
    }
}

/// Tunes every product of `shapes` on `runner` within the budget.
pub fn tune_gpu(
    runner: &mut dyn GemmRunner,
    shapes: &[TuneShape],
    options: &GpuTuneOptions,
    progress: &mut dyn FnMut(TuneEvent),
) -> Result<GpuTuneReport, TuneError> {
    let start = Instant::now();
    if options.buckets.is_empty() {
        return Err(TuneError::Unsupported("no M bucket to tune".to_string()));
    }
    let weights: Vec<f64> = shapes.iter().map(|s| (s.gemm.packed_shape().total_bytes() * s.uses.max(1)) as f64).collect();
    let total = shapes.len() * options.buckets.len();
    let mut done = 0;
    let mut results = Vec::new();
    let mut rejected = Vec::new();
    for (i, shape) in shapes.iter().enumerate() {
        let left = options.budget.saturating_sub(start.elapsed()).as_secs_f64();
        let remaining_weight: f64 = weights[i..].iter().sum::<f64>().max(1.0);
        let share = left * (0.3 / (shapes.len() - i) as f64 + 0.7 * weights[i] / remaining_weight);
        progress(TuneEvent::Compiling { index: i, total: shapes.len() });
        let deadline = Instant::now() + Duration::from_secs_f64(share.max(0.0));
        let mut problem = GpuProblem::new(&shape.gemm, options.seed ^ i as u64)?;
        let found = tune_gpu_product(runner, &mut problem, &options.buckets, deadline, &mut rejected, &mut || {
            done += 1;
            progress(TuneEvent::BucketDone { done, total });
        })?;
        results.extend(found);
    }
    Ok(GpuTuneReport { machine: runner.machine(), arch: runner.arch(), results, rejected, elapsed: start.elapsed() })
}

/// Searches one product's buckets until `deadline` (shared out evenly over the buckets left);
/// rejected candidates are added to `rejected`. A bucket whose heuristic config itself fails
/// gives no result (and a rejection saying so).
pub fn tune_gpu_product(
    runner: &mut dyn GemmRunner,
    problem: &mut GpuProblem,
    buckets: &[MBucket],
    deadline: Instant,
    rejected: &mut Vec<GpuRejected>,
    bucket_done: &mut dyn FnMut(),
) -> Result<Vec<GpuBucketResult>, TuneError> {
    let mut ms: Vec<usize> = buckets.iter().flat_map(|b| b.samples()).collect();
    ms.sort_unstable();
    ms.dedup();
    runner.set_problem(problem, &ms).map_err(|e| TuneError::Unsupported(format!("cannot set up {}: {e}", Shape::of(&problem.gemm))))?;
    let sm_count = runner.machine().sm_count;
    // Candidates that failed, with why (a failure at one M fails the config everywhere).
    let mut failed: HashMap<GemmConfig, String> = HashMap::new();
    let mut out = Vec::new();
    for (bi, &bucket) in buckets.iter().enumerate() {
        let slice = deadline.saturating_duration_since(Instant::now()) / (buckets.len() - bi) as u32;
        let mut search = BucketSearch {
            runner: &mut *runner,
            problem: &mut *problem,
            samples: bucket.samples(),
            failed: &mut failed,
            rejected: &mut *rejected,
            times: HashMap::new(),
        };
        let default = heuristic_for(&search.problem.gemm, search.problem.format, bucket, sm_count);
        if let Some(found) = search.run(default, Instant::now() + slice, sm_count) {
            out.push(GpuBucketResult { bucket, ..found });
        }
        bucket_done();
    }
    Ok(out)
}

/// One bucket's search state.
struct BucketSearch<'a> {
    runner: &'a mut dyn GemmRunner,
    problem: &'a mut GpuProblem,
    samples: Vec<usize>,
    failed: &'a mut HashMap<GemmConfig, String>,
    rejected: &'a mut Vec<GpuRejected>,
    /// Search-phase time (µs summed over the samples) of every candidate that passed.
    times: HashMap<GemmConfig, f64>,
}

impl BucketSearch<'_> {
    fn run(&mut self, default: GemmConfig, deadline: Instant, sm_count: usize) -> Option<GpuBucketResult> {
        let gemm = self.problem.gemm;
        // The cost per candidate (compile, check, time) is measured from here, the heuristic's
        // config included, so the first batch is cut to what the slice pays for too.
        let started = Instant::now();
        self.evaluate(std::slice::from_ref(&default));
        self.times.get(&default)?;
        let mut current = default.clone();
        let top_m = *self.samples.iter().max().unwrap_or(&1);
        loop {
            let mut batch: Vec<GemmConfig> =
                neighbours(&current, top_m).into_iter().filter(|c| !self.times.contains_key(c) && !self.failed.contains_key(c)).collect();
            if batch.is_empty() || Instant::now() >= deadline {
                break;
            }
            // Most promising first by the split-K model, so a cut batch keeps the likely best;
            // as many as the time left pays for at the cost per candidate seen so far.
            batch.sort_by(|a, b| model_score(b, top_m, sm_count).total_cmp(&model_score(a, top_m, sm_count)));
            let tried = (self.times.len() + self.failed.len()).max(1);
            let per = started.elapsed().as_secs_f64().max(1e-3) / tried as f64;
            let afford = (deadline.saturating_duration_since(Instant::now()).as_secs_f64() / per).floor() as usize;
            batch.truncate(afford.max(1));
            self.evaluate(&batch);
            let best = self.times.iter().min_by(|a, b| a.1.total_cmp(b.1)).map(|(c, t)| (c.clone(), *t));
            match best {
                Some((cfg, t)) if t < self.times[&current] * MOVE_MARGIN => current = cfg,
                _ => break,
            }
        }
        let timed = self.times.len();
        // The confirmation: paired rounds, the order alternating, each sample M.
        let pair = if current == default { vec![default.clone()] } else { vec![default.clone(), current.clone()] };
        let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); pair.len()];
        for r in 0..CONFIRM_ROUNDS {
            for j in 0..pair.len() {
                let j = if r % 2 == 0 { j } else { pair.len() - 1 - j };
                match self.sample(&pair[j]) {
                    Ok(t) => rounds[j].push(t),
                    Err(reason) => {
                        // A launch that failed while confirming: said, and the bucket left untuned.
                        self.rejected.push(GpuRejected { gemm, candidate: GpuTiling::of(&pair[j]), reason });
                        return None;
                    }
                }
            }
        }
        let default_time = median(rounds[0].clone());
        let (config, micros, is_default) = if pair.len() == 2 && beats(&rounds[1], &rounds[0], CONFIRM_MARGIN) {
            (current, median(rounds[1].clone()), false)
        } else {
            (default, default_time, true)
        };
        Some(GpuBucketResult {
            gemm,
            bucket: MBucket::of(self.samples[0] as u64),
            config,
            is_default,
            micros,
            default_micros: default_time,
            timed,
        })
    }

    /// Prepares, checks at every sample M, then times each of `cfgs`; failures are rejected.
    fn evaluate(&mut self, cfgs: &[GemmConfig]) {
        let prepared = self.runner.prepare(cfgs);
        for (cfg, ready) in cfgs.iter().zip(prepared) {
            let checked = ready.and_then(|_| {
                check_candidate(&mut *self.runner, &mut *self.problem, cfg, &self.samples)?;
                let mut samples = Vec::with_capacity(SEARCH_SAMPLES);
                for _ in 0..SEARCH_SAMPLES {
                    samples.push(self.sample(cfg)?);
                }
                Ok(median(samples))
            });
            match checked {
                Ok(t) => {
                    self.times.insert(cfg.clone(), t);
                }
                Err(reason) => {
                    self.rejected.push(GpuRejected { gemm: self.problem.gemm, candidate: GpuTiling::of(cfg), reason: reason.clone() });
                    self.failed.insert(cfg.clone(), reason);
                }
            }
        }
    }

    /// One timed sample of `cfg`: µs summed over the sample M.
    fn sample(&mut self, cfg: &GemmConfig) -> Result<f64, String> {
        let mut total = 0.0;
        for &m in &self.samples {
            total += self.runner.time_us(cfg, m)?;
        }
        Ok(total)
    }
}

/// The check every candidate passes before it is timed: prepared `cfg`'s output on `runner`'s
/// problem at each M of `ms` against `problem`'s f64 reference; `Err` says where it differs (or
/// why it could not run).
pub fn check_candidate(runner: &mut dyn GemmRunner, problem: &mut GpuProblem, cfg: &GemmConfig, ms: &[usize]) -> Result<(), String> {
    for &m in ms {
        let y = runner.run(cfg, m)?;
        problem.verify(m, &y)?;
    }
    Ok(())
}

/// The configs one step from `cfg` for up to `m` tokens: split-K at each of its values; one
/// more or fewer stage; k-tiles, warps and tiles per warp doubled or halved (and warps ± 1);
/// the next token tile up or down (not below the one holding `m`, at most 64). Only valid
/// configs, without `cfg` itself or repeats.
pub fn neighbours(cfg: &GemmConfig, m: usize) -> Vec<GemmConfig> {
    let first_tile = [8, 16, 32, 64].into_iter().find(|&t| t >= m).unwrap_or(64);
    let mut out: Vec<GemmConfig> = Vec::new();
    let mut add = |c: GemmConfig| {
        if c != *cfg && c.m_tile >= first_tile && c.validate().is_ok() && !out.contains(&c) {
            out.push(c);
        }
    };
    for split_k in [1, 2, 3, 4, 6, 8, 12, 16] {
        add(GemmConfig { split_k, ..cfg.clone() });
    }
    for stages in [cfg.stages.saturating_sub(1), cfg.stages + 1] {
        add(GemmConfig { stages, ..cfg.clone() });
    }
    for k_tiles in [cfg.k_tiles * 2, cfg.k_tiles / 2] {
        add(GemmConfig { k_tiles, ..cfg.clone() });
    }
    for warps in [cfg.warps * 2, cfg.warps / 2, cfg.warps + 1, cfg.warps.saturating_sub(1)] {
        add(GemmConfig { warps, ..cfg.clone() });
    }
    for warp_ntiles in [cfg.warp_ntiles * 2, cfg.warp_ntiles / 2] {
        add(GemmConfig { warp_ntiles, ..cfg.clone() });
    }
    for m_tile in [cfg.m_tile * 2, cfg.m_tile / 2] {
        add(GemmConfig { m_tile, ..cfg.clone() });
    }
    out
}

/// The heuristic's model of how well `cfg` keeps the GPU's memory busy at `m` tokens
/// ([`split_score`]): the search's ordering of a batch, not a prediction of time.
fn model_score(cfg: &GemmConfig, m: usize, sm_count: usize) -> f64 {
    let blocks = cfg.n_tiles().div_ceil(cfg.block_n_tiles()) * m.max(1).div_ceil(cfg.m_tile);
    let slots = sm_count.max(1) * TARGET_BLOCKS_PER_SM.min(blocks_per_sm(cfg, estimated_registers(cfg)).max(1));
    let weight_bytes = fpx_quant::layout::PackedShape::new(cfg.n, cfg.k, 6).total_bytes();
    split_score(blocks, cfg.split_k, slots, weight_bytes, m.max(1), cfg.n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpx_cuda::heuristic_config;

    #[test]
    fn neighbours_are_valid_distinct_one_step_configs() {
        for (n, k, m) in [(4096, 4096, 1), (11008, 4096, 16), (384, 1536, 128), (1536, 384, 512), (40, 100, 3)] {
            let cfg = heuristic_config(n, k, m, 132);
            let nbs = neighbours(&cfg, m);
            assert!(!nbs.is_empty(), "{cfg}");
            for (i, c) in nbs.iter().enumerate() {
                c.validate().unwrap();
                assert_ne!(c, &cfg);
                assert!(!nbs[..i].contains(c), "{c} twice");
                assert!(c.m_tile >= m.min(64), "{c}: a token tile below M = {m}");
                let changed = [
                    c.m_tile != cfg.m_tile,
                    c.warps != cfg.warps,
                    c.warp_ntiles != cfg.warp_ntiles,
                    c.k_tiles != cfg.k_tiles,
                    c.stages != cfg.stages,
                    c.split_k != cfg.split_k,
                ];
                assert_eq!(changed.iter().filter(|&&x| x).count(), 1, "{c} vs {cfg}");
                assert_eq!((c.n, c.k, c.format, c.act), (cfg.n, cfg.k, cfg.format, cfg.act));
            }
            // Split-K is explored over all its values that the K steps allow.
            let splits: Vec<usize> = nbs.iter().filter(|c| c.split_k != cfg.split_k).map(|c| c.split_k).collect();
            let allowed = [1, 2, 3, 4, 6, 8, 12, 16].into_iter().filter(|&s| s != cfg.split_k && s <= cfg.k_steps()).count();
            assert_eq!(splits.len(), allowed, "{cfg}: {splits:?}");
        }
    }
}
