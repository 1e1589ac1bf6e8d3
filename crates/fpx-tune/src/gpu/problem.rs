//! What GPU candidates run on: a random FP6 weight of the product's shape (codes, true scales,
//! the packed 4+2 planes and the folded scales the kernel reads), random FP16 activations per
//! sample M, and the f64 reference every candidate's output is checked against before it is
//! timed (decode every code, multiply the FP16 activations in f64).

use std::collections::HashMap;

use fpx_cuda::Fp6Format;
use fpx_quant::layout::{pack, PackedShape};
use fpx_quant::seeded::SplitMix64;
use fpx_quant::QuantGemm;
use half::f16;

use crate::TuneError;

/// Rows and columns of an output the check compares at most: every one of a small output,
/// else a seeded sample plus the first and last of each (where tile edges and padding are).
const CHECK_ROWS: usize = 24;
const CHECK_COLS: usize = 96;
/// The check's tolerance: per element `|y − ref| ≤ TOL (|ref| + rms(ref))`, FP16 output
/// rounding and FP32 accumulation in any order stay well inside it; a wrong product does not.
const TOL: f64 = 2e-3;

/// One product's random problem for the GPU tuner.
pub struct GpuProblem {
    /// The product (FP6, per-channel scales, FP16 activations on the GPU).
    pub gemm: QuantGemm,
    /// Its GPU weight format.
    pub format: Fp6Format,
    /// FP6 codes, `[n][k]`.
    codes: Vec<u8>,
    /// True per-channel scales.
    scales: Vec<f32>,
    /// The 4+2 planes the kernel reads.
    pub packed: Vec<u8>,
    /// The scales with the format's bias-shift factor folded in (what the kernel reads).
    pub folded_scales: Vec<f32>,
    seed: u64,
    activations: HashMap<usize, Vec<u16>>,
}

impl GpuProblem {
    /// A seeded random problem for `gemm`, which must be an FP6 product the GPU GEMM takes.
    pub fn new(gemm: &QuantGemm, seed: u64) -> Result<GpuProblem, TuneError> {
        let format = fpx_cuda::plan::gpu_format("(tuning)", gemm).map_err(|e| TuneError::Unsupported(e.to_string()))?;
        let mut rng = SplitMix64::new(seed);
        let (n, k) = (gemm.n, gemm.k);
        let codes: Vec<u8> = (0..n * k).map(|_| (rng.next_u64() >> 58) as u8).collect();
        let spread = (k as f64).sqrt();
        let scales: Vec<f32> = (0..n).map(|_| ((0.25 + rng.unit_open_below()) / spread) as f32).collect();
        let packed = pack(&codes, &PackedShape::new(n, k, 6));
        let factor = fpx_quant::fold::storage_factor(format.quant_format());
        let folded_scales = scales.iter().map(|s| s * factor).collect();
        Ok(GpuProblem { gemm: *gemm, format, codes, scales, packed, folded_scales, seed, activations: HashMap::new() })
    }

    /// The FP6 codes, `[n][k]` (what a stand-in runner decodes).
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// The true per-channel scales.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Row stride of the activations: K rounded up to 32, the padding columns zero.
    pub fn k_pad(&self) -> usize {
        self.gemm.k.div_ceil(32) * 32
    }

    /// The FP16 activations (bits) for `m` rows, `[m][k_pad]`, the same on every call.
    pub fn activations(&mut self, m: usize) -> &[u16] {
        let (k, k_pad, seed) = (self.gemm.k, self.k_pad(), self.seed);
        self.activations.entry(m).or_insert_with(|| {
            let mut rng = SplitMix64::new(seed ^ 0xac7 ^ ((m as u64) << 20));
            let mut x = vec![0u16; m * k_pad];
            for row in x.chunks_mut(k_pad) {
                for v in &mut row[..k] {
                    *v = f16::from_f32(rng.signed_f32()).to_bits();
                }
            }
            x
        })
    }

    /// `y[row][col]` in f64 from the decoded codes and the FP16 activations of `m` rows.
    fn reference(&mut self, m: usize, row: usize, col: usize) -> f64 {
        let (k, k_pad) = (self.gemm.k, self.k_pad());
        let q = self.format.quant_format();
        let scale = self.scales[col] as f64;
        self.activations(m);
        let x = &self.activations[&m][row * k_pad..row * k_pad + k];
        let w = &self.codes[col * k..(col + 1) * k];
        let dot: f64 = x.iter().zip(w).map(|(&xv, &c)| f16::from_bits(xv).to_f64() * q.decode(c) as f64).sum();
        dot * scale
    }

    /// Checks a candidate's output `y` (`[m][n]`, FP16 values as f32) against the f64
    /// reference: `Err` says where and by how much it differs.
    pub fn verify(&mut self, m: usize, y: &[f32]) -> Result<(), String> {
        let n = self.gemm.n;
        if y.len() != m * n {
            return Err(format!("the output has {} values, {m} x {n} expected", y.len()));
        }
        let mut rng = SplitMix64::new(self.seed ^ 0x5eed ^ m as u64);
        let mut pick = |len: usize, most: usize| -> Vec<usize> {
            if len <= most {
                return (0..len).collect();
            }
            let mut v: Vec<usize> = (0..most - 4).map(|_| (rng.next_u64() % len as u64) as usize).collect();
            v.extend([0, 1, len - 2, len - 1]);
            v
        };
        let rows = pick(m, CHECK_ROWS);
        let cols = pick(n, CHECK_COLS);
        for row in rows {
            let want: Vec<f64> = cols.iter().map(|&c| self.reference(m, row, c)).collect();
            let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len() as f64).sqrt();
            for (&c, w) in cols.iter().zip(&want) {
                let got = y[row * n + c] as f64;
                if !got.is_finite() || (got - w).abs() > TOL * (w.abs() + rms) {
                    return Err(format!("y[{row}][{c}] = {got} at M = {m}, the reference gives {w:.6} (rms {rms:.4})"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpx_quant::{Activations, Format};

    fn gemm(format: Format, k: usize, n: usize) -> QuantGemm {
        QuantGemm { format, k, n, group_size: 0, activations: Activations::F32 }
    }

    /// The product computed in f32 by decode-then-multiply over the whole output.
    fn product(p: &mut GpuProblem, m: usize, format: Format) -> Vec<f32> {
        let (n, k, k_pad) = (p.gemm.n, p.gemm.k, p.k_pad());
        let x: Vec<f32> = p.activations(m).iter().map(|&b| f16::from_bits(b).to_f32()).collect();
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let dot: f32 = (0..k).map(|i| x[r * k_pad + i] * format.decode(p.codes[c * k + i])).sum();
                y[r * n + c] = f16::from_f32(dot * p.scales[c]).to_f32();
            }
        }
        y
    }

    #[test]
    fn the_check_accepts_the_product_and_refuses_a_wrong_one() {
        let mut p = GpuProblem::new(&gemm(Format::Fp6E3M2, 200, 130), 9).unwrap();
        for m in [1, 5, 40] {
            let good = product(&mut p, m, Format::Fp6E3M2);
            p.verify(m, &good).unwrap();
            // The same codes read as the other FP6 format: the kind of wrong a mis-instantiated kernel gives.
            let wrong = product(&mut p, m, Format::Fp6E2M3);
            assert!(p.verify(m, &wrong).unwrap_err().contains("the reference gives"));
            // One element off at a tile edge.
            let mut edge = good.clone();
            edge[m * 130 - 1] += 0.05;
            assert!(p.verify(m, &edge).is_err());
            let mut nan = good.clone();
            nan[0] = f32::NAN;
            assert!(p.verify(m, &nan).is_err());
            assert!(p.verify(m, &good[1..]).unwrap_err().contains("values"));
        }
        // Activations: padded rows, padding zero, the same on every call.
        let x = p.activations(3).to_vec();
        assert_eq!(x.len(), 3 * 224);
        assert!(x.chunks(224).all(|r| r[200..].iter().all(|&v| v == 0) && r[..200].iter().any(|&v| v != 0)));
        assert_eq!(p.activations(3), &x[..]);
    }

    #[test]
    fn only_products_the_gpu_gemm_takes() {
        let e = GpuProblem::new(&gemm(Format::Int4, 64, 64), 1).err().unwrap();
        assert!(e.to_string().contains("fp6-e3m2 or fp6-e2m3"), "{e}");
        let mut g = gemm(Format::Fp6E2M3, 64, 64);
        g.group_size = 32;
        assert!(GpuProblem::new(&g, 1).is_err());
    }
}
