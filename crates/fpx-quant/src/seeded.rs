//! SplitMix64: the small seeded generator fpx uses where a library needs reproducible random
//! numbers (LoRC's sketch matrix, the tuner's data, the fuzzer's inputs): the same seed gives
//! the same stream on every machine, with no dependency.

/// A SplitMix64 stream (Steele, Lea and Flood's 64-bit mixer over a Weyl sequence).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// The stream that starts after `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `(0, 1]` (53 bits; never 0, so its logarithm is finite).
    pub fn unit_open_below(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[-1, 1)` as `f32` (24 bits).
    pub fn signed_f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }

    /// A standard normal number (Box–Muller from two draws).
    pub fn normal(&mut self) -> f64 {
        let (a, b) = (self.unit_open_below(), self.unit_open_below());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values_and_ranges() {
        // SplitMix64's published first outputs for seed 0.
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(g.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        let mut g = SplitMix64::new(7);
        let (mut lo, mut hi, mut sum, mut sq) = (f64::MAX, f64::MIN, 0.0, 0.0);
        for _ in 0..20_000 {
            let u = g.unit_open_below();
            assert!(u > 0.0 && u <= 1.0);
            let s = g.signed_f32();
            assert!((-1.0..1.0).contains(&s));
            let z = g.normal();
            (lo, hi, sum, sq) = (lo.min(z), hi.max(z), sum + z, sq + z * z);
        }
        let (mean, var) = (sum / 20_000.0, sq / 20_000.0 - (sum / 20_000.0).powi(2));
        assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05 && lo < -3.0 && hi > 3.0, "{mean} {var} {lo} {hi}");
    }
}
