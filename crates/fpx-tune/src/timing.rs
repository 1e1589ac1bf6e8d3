//! Timing candidates as the runtime calls them: warm-up, interleaved rounds (drift hits every
//! candidate alike), medians, and each call on the next of the fixture's weight copies.

use std::time::Instant;

use fpx_ir::ops::quant_matmul::Epilogue;
use fpx_runtime::native::NativeQmm;

use crate::fixture::{Fixture, SplitMix};

/// A timed sample lasts about this long (several calls when one is shorter): long enough that
/// a sample of a 10 µs product is not one scheduler hiccup.
pub(crate) const SAMPLE_SECONDS: f64 = 1e-3;
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
                qmm.run(x, None, *m, packed, &self.fixture.scales, None, None, &epilogue, None, y)
                    .expect("the bench's buffers match the product");
            }
            let start = Instant::now();
            for _ in 0..inner {
                let packed = &self.fixture.packed[self.next_copy];
                self.next_copy = (self.next_copy + 1) % self.fixture.packed.len();
                // The fixture's buffers match the product; an error would be a bug in the bench.
                qmm.run(x, None, *m, packed, &self.fixture.scales, None, None, &epilogue, None, y)
                    .expect("the bench's buffers match the product");
            }
            total += start.elapsed().as_secs_f64() / inner as f64;
        }
        total
    }

    /// Seconds per call summed over the sample M of each of `qmms`: medians over `rounds`
    /// interleaved rounds (each once per round, in turn) of `inner` calls.
    pub(crate) fn time(&mut self, qmms: &[&NativeQmm], inner: usize, rounds: usize) -> Vec<f64> {
        self.rounds(qmms, inner, rounds).into_iter().map(median).collect()
    }

    /// Every round's time of each of `qmms` (seconds per call summed over the sample M), the
    /// rounds interleaved as in [`Bench::time`].
    pub(crate) fn rounds(&mut self, qmms: &[&NativeQmm], inner: usize, rounds: usize) -> Vec<Vec<f64>> {
        let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); qmms.len()];
        for _ in 0..rounds.max(1) {
            for (j, q) in qmms.iter().enumerate() {
                samples[j].push(self.calls(q, inner));
            }
        }
        samples
    }
}

/// Whether `candidate` beats `baseline` by `margin` (e.g. 0.95) in paired rounds: the median of
/// the per-round ratios is at most `margin` and at least four rounds in five are faster. Pairs
/// taken in the same round see the same moment of a noisy machine, which separate medians do not.
pub(crate) fn beats(candidate: &[f64], baseline: &[f64], margin: f64) -> bool {
    let ratios: Vec<f64> = candidate.iter().zip(baseline).map(|(c, b)| c / b.max(1e-12)).collect();
    if ratios.is_empty() {
        return false;
    }
    let faster = ratios.iter().filter(|r| **r < 1.0).count();
    median(ratios.clone()) <= margin && 5 * faster >= 4 * ratios.len()
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candidate_must_win_most_paired_rounds_by_the_margin() {
        assert!(beats(&[9.0, 9.0, 9.0, 9.0, 9.0], &[10.0; 5], 0.95));
        // Faster by the margin in the median, but only in three rounds of five.
        assert!(!beats(&[9.0, 9.0, 9.0, 11.0, 11.0], &[10.0; 5], 0.95));
        // Faster every round, but not by the margin.
        assert!(!beats(&[9.8; 5], &[10.0; 5], 0.95));
        // A slow moment of the machine hits both of a pair alike.
        assert!(beats(&[9.0, 18.0, 9.0, 9.0, 9.0], &[10.0, 20.0, 10.0, 10.0, 10.0], 0.95));
        assert!(!beats(&[], &[], 0.95));
    }
}
