//! Timing candidates as the runtime calls them: warm-up, interleaved rounds (drift hits every
//! candidate alike), medians, and each call on the next of the fixture's weight copies.

use std::time::Instant;

use fpx_ir::ops::quant_matmul::Epilogue;
use fpx_runtime::native::NativeQmm;

use crate::fixture::{Fixture, SplitMix};

/// A timed sample lasts about this long (several calls when one is shorter).
pub(crate) const SAMPLE_SECONDS: f64 = 300e-6;
/// Calls shorter than this get one untimed call before each timed sample: candidates differ in
/// thread count, and the pool's workers fall asleep while a one-thread candidate runs, so the
/// next candidate's first call would pay their wake-up — a cost of the interleaving, not of it.
const SETTLE_BELOW_SECONDS: f64 = 2e-3;

/// The timing bench for one product and bucket: activations per sample M, one output buffer,
/// and the rotation through the weight copies.
pub(crate) struct Bench<'a> {
    fixture: &'a Fixture,
    samples: Vec<(usize, Vec<f32>)>,
    y: Vec<f32>,
    next_copy: usize,
    /// Whether a timed sample starts with an untimed call ([`SETTLE_BELOW_SECONDS`]).
    settle: bool,
}

impl<'a> Bench<'a> {
    pub(crate) fn new(fixture: &'a Fixture, samples: &[usize]) -> Bench<'a> {
        let k = fixture.gemm.k;
        let mut rng = SplitMix::new(samples.iter().map(|&m| m as u64).sum());
        let samples: Vec<(usize, Vec<f32>)> = samples.iter().map(|&m| (m, rng.signed_vec(m * k))).collect();
        let rows = samples.iter().map(|s| s.0).max().unwrap_or(1);
        Bench { fixture, samples, y: vec![0f32; rows * fixture.gemm.n], next_copy: 0, settle: true }
    }

    /// Seconds of one call (averaged over the sample M) of `qmm`, after three warm-up calls;
    /// decides whether timed samples settle first.
    pub(crate) fn warm_up(&mut self, qmm: &NativeQmm) -> f64 {
        self.settle = false;
        for _ in 0..3 {
            self.calls(qmm, 1);
        }
        let best = (0..3).map(|_| self.calls(qmm, 1)).fold(f64::INFINITY, f64::min) / self.samples.len() as f64;
        self.settle = best < SETTLE_BELOW_SECONDS;
        best
    }

    /// Runs `qmm` `inner` times at every sample M (after one untimed call when settling), each
    /// call on the next weight copy; returns seconds per call summed over the sample M.
    fn calls(&mut self, qmm: &NativeQmm, inner: usize) -> f64 {
        let mut total = 0.0;
        let epilogue = Epilogue::default();
        for (m, x) in &self.samples {
            let y = &mut self.y[..m * self.fixture.gemm.n];
            if self.settle {
                let packed = &self.fixture.packed[self.next_copy];
                qmm.run(x, None, *m, packed, &self.fixture.scales, None, &epilogue, None, y)
                    .expect("the bench's buffers match the product");
            }
            let start = Instant::now();
            for _ in 0..inner {
                let packed = &self.fixture.packed[self.next_copy];
                self.next_copy = (self.next_copy + 1) % self.fixture.packed.len();
                // The fixture's buffers match the product; an error would be a bug in the bench.
                qmm.run(x, None, *m, packed, &self.fixture.scales, None, &epilogue, None, y)
                    .expect("the bench's buffers match the product");
            }
            total += start.elapsed().as_secs_f64() / inner as f64;
        }
        total
    }

    /// Seconds per call summed over the sample M of each of `qmms`: medians over `rounds`
    /// interleaved rounds (each once per round, in turn) of `inner` calls.
    pub(crate) fn time(&mut self, qmms: &[&NativeQmm], inner: usize, rounds: usize) -> Vec<f64> {
        let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); qmms.len()];
        for _ in 0..rounds.max(1) {
            for (j, q) in qmms.iter().enumerate() {
                samples[j].push(self.calls(q, inner));
            }
        }
        samples.into_iter().map(median).collect()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
