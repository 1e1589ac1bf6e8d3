//! A seeded random generator for tests.

/// Knuth's MMIX linear congruential generator with the seed mixed first, returning the high
/// 32 bits of the state (its best bits). Fast, dependency-free and identical on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator with the given seed (mixed, so that small seeds differ from the first draw).
    pub fn new(seed: u64) -> Rng {
        let mut g = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
        g.next_u32();
        g
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 32) as u32
    }

    /// The next 64 random bits (two draws).
    pub fn next_u64(&mut self) -> u64 {
        (u64::from(self.next_u32()) << 32) | u64::from(self.next_u32())
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        f64::from(self.next_u32()) / 4_294_967_296.0
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform in `[-1, 1)`, as `f32`.
    pub fn signed(&mut self) -> f32 {
        (self.uniform() * 2.0 - 1.0) as f32
    }

    /// Uniform integer in `[0, n)` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        ((self.uniform() * n as f64) as usize).min(n - 1)
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// `len` standard normal `f32` values.
    pub fn normals(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.normal() as f32).collect()
    }

    /// `len` values uniform in `[-1, 1)`.
    pub fn signeds(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.signed()).collect()
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u32() as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn same_seed_same_stream_and_ranges_hold() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u32> = (0..100).map(|_| a.next_u32()).collect();
        assert!(xs.iter().all(|&x| x == b.next_u32()));
        assert_ne!(Rng::new(1).next_u32(), Rng::new(2).next_u32());
        let mut g = Rng::new(3);
        for _ in 0..10_000 {
            let u = g.uniform();
            assert!((0.0..1.0).contains(&u));
            assert!(g.below(7) < 7);
            assert!((-1.0..1.0).contains(&g.signed()));
        }
        let mean = (0..20_000).map(|_| g.normal()).sum::<f64>() / 20_000.0;
        assert!(mean.abs() < 0.05, "normal mean {mean}");
    }
}
