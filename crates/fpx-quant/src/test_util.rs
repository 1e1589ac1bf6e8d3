//! Deterministic random data for tests: a 64-bit LCG with fixed seeds (no dev-dependencies).

/// Knuth's MMIX linear congruential generator; the high 32 bits are used as output.
pub struct Lcg(u64);

impl Lcg {
    /// A generator with the given seed (mixed so that small seeds differ quickly).
    pub fn new(seed: u64) -> Lcg {
        let mut g = Lcg(seed ^ 0x9e37_79b9_7f4a_7c15);
        g.next_u32();
        g
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 32) as u32
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.next_u32() as f64 / 4_294_967_296.0
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// `len` standard normal f32 values.
    pub fn normals(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.normal() as f32).collect()
    }
}
