//! Picking the next token from logits: greedy, or sampled with temperature, top-k and top-p
//! (nucleus) from a seeded generator, so the same seed gives the same text.

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingOptions {
    /// Softmax temperature; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1: all).
    pub top_p: f32,
    /// Seed of the sampling generator.
    pub seed: u64,
}

impl Default for SamplingOptions {
    /// Greedy.
    fn default() -> Self {
        SamplingOptions { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

impl SamplingOptions {
    /// Checks the ranges: temperature finite and ≥ 0, top-p in (0, 1].
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!("temperature {} is not a finite number ≥ 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p {} is not in (0, 1]", self.top_p));
        }
        Ok(())
    }
}

/// Chooses tokens from logits as [`SamplingOptions`] say.
#[derive(Debug, Clone)]
pub struct Sampler {
    options: SamplingOptions,
    state: u64,
}

impl Sampler {
    /// A sampler seeded with `options.seed`.
    pub fn new(options: SamplingOptions) -> Sampler {
        Sampler { options, state: options.seed }
    }

    /// A uniform draw in [0, 1) (splitmix64).
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The index of the next token, or `None` when no logit is a number.
    pub fn pick(&mut self, logits: &[f32]) -> Option<usize> {
        if self.options.temperature == 0.0 {
            return argmax(logits);
        }
        // Candidates, most likely first (NaN never is a candidate; ties keep the lower index).
        let mut order: Vec<usize> = (0..logits.len()).filter(|&i| !logits[i].is_nan()).collect();
        if order.is_empty() {
            return None;
        }
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.options.top_k > 0 {
            order.truncate(self.options.top_k);
        }
        let t = f64::from(self.options.temperature);
        let top = f64::from(logits[order[0]]);
        let mut probs: Vec<f64> = order.iter().map(|&i| ((f64::from(logits[i]) - top) / t).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.options.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    cumulative += p;
                    cumulative >= f64::from(self.options.top_p)
                })
                .map_or(probs.len(), |i| i + 1);
            order.truncate(keep);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut u = self.uniform() * total;
        for (&i, &p) in order.iter().zip(&probs) {
            if u < p {
                return Some(i);
            }
            u -= p;
        }
        order.last().copied()
    }
}

/// The index of the largest logit (the first on ties; NaN ignored).
pub fn argmax(logits: &[f32]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &x) in logits.iter().enumerate() {
        if !x.is_nan() && best.is_none_or(|b| x > logits[b]) {
            best = Some(i);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_largest_and_skips_nan() {
        let mut s = Sampler::new(SamplingOptions::default());
        assert_eq!(s.pick(&[0.5, 2.0, f32::NAN, 2.0, -1.0]), Some(1));
        assert_eq!(s.pick(&[f32::NAN, f32::NAN]), None);
        assert_eq!(s.pick(&[]), None);
    }

    #[test]
    fn sampling_follows_the_softmax_and_its_filters() {
        let logits = [1.0f32, 2.0, 0.0, 3.0];
        let draws = 40_000;
        let count = |options: SamplingOptions| {
            let mut s = Sampler::new(options);
            let mut c = [0usize; 4];
            for _ in 0..draws {
                c[s.pick(&logits).unwrap()] += 1;
            }
            c.map(|n| n as f64 / draws as f64)
        };
        // Temperature 1, no filter: frequencies within 1.5% of the f64 softmax.
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        let f = count(SamplingOptions { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 3 });
        for i in 0..4 {
            assert!((f[i] - f64::from(logits[i]).exp() / z).abs() < 0.015, "{f:?}");
        }
        // Top-k 2 keeps tokens 3 and 1 only, in the ratio e^3 : e^2.
        let f = count(SamplingOptions { temperature: 1.0, top_k: 2, top_p: 1.0, seed: 4 });
        assert_eq!((f[0], f[2]), (0.0, 0.0));
        assert!((f[3] - 1.0 / (1.0 + (-1f64).exp())).abs() < 0.015, "{f:?}");
        // Top-p 0.6: token 3 alone has p = 0.64 ≥ 0.6.
        let f = count(SamplingOptions { temperature: 1.0, top_k: 0, top_p: 0.6, seed: 5 });
        assert_eq!(f[3], 1.0);
        // A low temperature is nearly greedy; the same seed repeats the same draws.
        let f = count(SamplingOptions { temperature: 0.05, top_k: 0, top_p: 1.0, seed: 6 });
        assert!(f[3] > 0.999);
        let o = SamplingOptions { temperature: 1.0, top_k: 0, top_p: 0.9, seed: 9 };
        let (mut a, mut b) = (Sampler::new(o), Sampler::new(o));
        let (ra, rb): (Vec<_>, Vec<_>) = (0..100).map(|_| (a.pick(&logits), b.pick(&logits))).unzip();
        assert_eq!(ra, rb);
    }

    #[test]
    fn options_out_of_range_are_refused() {
        let bad = |t: f32, p: f32| SamplingOptions { temperature: t, top_k: 0, top_p: p, seed: 0 }.validate().is_err();
        assert!(bad(-1.0, 1.0) && bad(f32::NAN, 1.0) && bad(f32::INFINITY, 1.0) && bad(1.0, 0.0) && bad(1.0, 1.5));
        assert!(!bad(0.0, 1.0) && !bad(0.7, 0.9));
    }
}
