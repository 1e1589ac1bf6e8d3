//! The benchmark's check of a tuning: the tuned and the heuristic kernel tables of a product,
//! compiled by the CPU backend exactly as an artifact holds them (one shared object, the
//! tables' symbols), run through the runtime's product (which picks each table's kernel by M),
//! timed head to head in interleaved rounds at every sample M of each bucket, on a fresh weight
//! and fresh activations — a measurement independent of the search's own.

use fpx_llvm::{cpu_code_with, CpuChoice, CpuTarget, QuantGemm};
use fpx_quant::KernelTable;
use fpx_runtime::native::{NativeLibrary, NativeQmm};

use crate::fixture::Fixture;
use crate::timing::{Bench, SAMPLE_SECONDS};
use crate::{MBucket, TuneError};

/// Tuned against heuristic for one product and bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// The product.
    pub gemm: QuantGemm,
    /// The bucket.
    pub bucket: MBucket,
    /// Time per call of the tuned table (µs, mean over the bucket's sample M).
    pub tuned_micros: f64,
    /// Time per call of the heuristic table, measured beside it.
    pub heuristic_micros: f64,
}

impl Comparison {
    /// Heuristic time over tuned time.
    pub fn speedup(&self) -> f64 {
        self.heuristic_micros / self.tuned_micros.max(1e-12)
    }
}

/// Times `tuned` against the heuristic's table for `gemm` on `target` at each bucket's sample M,
/// `rounds` interleaved rounds each.
pub fn compare_tables(
    gemm: &QuantGemm,
    target: CpuTarget,
    tuned: &KernelTable<CpuChoice>,
    buckets: &[MBucket],
    rounds: usize,
    seed: u64,
) -> Result<Vec<Comparison>, TuneError> {
    let nodes = [("tuned".to_string(), *gemm, Some(tuned.clone())), ("heuristic".to_string(), *gemm, None)];
    let code = cpu_code_with(&nodes, target)?;
    // SAFETY: the library is fpx-llvm's output, just generated: plain functions.
    let lib = unsafe { NativeLibrary::load(&code.shared_object)? };
    let qmms =
        code.kernels.iter().map(|k| Ok(NativeQmm { gemm: *gemm, kernels: lib.bind(&k.table)? })).collect::<Result<Vec<_>, TuneError>>()?;
    let fixture = Fixture::new(gemm, seed, crate::last_level_cache_bytes())?;
    let mut out = Vec::new();
    for &bucket in buckets {
        let samples = bucket.samples();
        let mut bench = Bench::new(&fixture, &samples);
        let call = bench.warm_up(&qmms[1]).min(bench.warm_up(&qmms[0]));
        let inner = (SAMPLE_SECONDS / call.max(1e-9)).ceil().clamp(1.0, 1024.0) as usize;
        let times = bench.time(&[&qmms[0], &qmms[1]], inner, rounds);
        let per_call = |t: f64| t * 1e6 / samples.len() as f64;
        out.push(Comparison { gemm: *gemm, bucket, tuned_micros: per_call(times[0]), heuristic_micros: per_call(times[1]) });
    }
    drop(qmms);
    drop(lib);
    Ok(out)
}
