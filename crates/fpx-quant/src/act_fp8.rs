//! FP8 activations (ZeroQuant-FP's W4A8): the numerics of quantizing activations to FP8 e4m3 or
//! e5m2 at run time, per row (token). This module is the definition — what a reference kernel
//! and the report compute, and what CPU and GPU kernels must match.
//!
//! Per row `r` of `X[m][k]`:
//! - the scale is `s = absmax / max`, `absmax` over the row's finite values and `max` the
//!   format's largest finite value (448 for e4m3, 57344 for e5m2), computed in `f32`; a row
//!   with no finite non-zero value gets `s = 1`;
//! - each value becomes the FP8 code nearest to `fl32(x / s)`, ties to the even code, saturating
//!   at `±max` (so `±∞` gives `±max`, as ONNX `QuantizeLinear` with `saturate = 1`); a NaN stays
//!   NaN (the format's canonical NaN code); every zero (and what rounds to zero) is code 0.
//!
//! Dequantized, a value is `decode(code) · s`. FP4 and FP6 weights times e4m3 activations are
//! exact in `f32` (at most 4 + 4 significant bits), so kernels can accumulate such products in
//! `f32` without rounding each one.

use crate::{Format, QuantError};

/// `X` quantized to FP8 per row: codes `[m][k]` and one scale per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Fp8Activations {
    /// `fp8-e4m3` or `fp8-e5m2`.
    pub format: Format,
    /// Rows (tokens).
    pub rows: usize,
    /// Columns.
    pub k: usize,
    /// One scale per row.
    pub scales: Vec<f32>,
    /// Codes, row-major.
    pub codes: Vec<u8>,
}

/// The canonical NaN code of an FP8 format: positive, every exponent and mantissa bit set
/// (`0x7f` in both e4m3 and e5m2).
pub fn nan_code(_format: Format) -> u8 {
    0x7f
}

impl Fp8Activations {
    /// Quantizes the `m × k` rows `x` to `format` (an FP8 format) as the module docs define.
    pub fn quantize(x: &[f32], m: usize, k: usize, format: Format) -> Result<Fp8Activations, QuantError> {
        if !matches!(format, Format::Fp8E4M3 | Format::Fp8E5M2) {
            return Err(QuantError::Shape { tensor: "activations".into(), message: format!("{format} is not an FP8 format") });
        }
        if x.len() != m * k {
            return Err(QuantError::Shape { tensor: "activations".into(), message: format!("{} values are not {m} x {k}", x.len()) });
        }
        let max = format.max_value() as f32;
        let mut scales = Vec::with_capacity(m);
        let mut codes = vec![0u8; m * k];
        for (row, out) in x.chunks(k.max(1)).zip(codes.chunks_mut(k.max(1))).take(m) {
            let absmax = row.iter().filter(|v| v.is_finite()).fold(0f32, |a, v| a.max(v.abs()));
            let s = if absmax > 0.0 { (absmax / max).max(f32::from_bits(1)) } else { 1.0 };
            scales.push(s);
            for (c, &v) in out.iter_mut().zip(row) {
                *c = if v.is_nan() { nan_code(format) } else { format.encode(v / s) };
            }
        }
        Ok(Fp8Activations { format, rows: m, k, scales, codes })
    }

    /// The values the codes stand for, `decode(code) · scale`, row-major.
    pub fn dequantized(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.k);
        for (r, row) in self.codes.chunks(self.k.max(1)).enumerate().take(self.rows) {
            out.extend(row.iter().map(|&c| self.format.decode(c) * self.scales[r]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpx_test_support::Rng;

    const FP8: [Format; 2] = [Format::Fp8E4M3, Format::Fp8E5M2];

    /// Every finite value of the format, from the bit layout alone (sign, exponent, mantissa),
    /// in f64: the reference's value list, independent of `Format::decode`.
    fn finite_values(format: Format) -> Vec<(u8, f64)> {
        let (e_bits, m_bits, bias) = match format {
            Format::Fp8E4M3 => (4, 3, 7),
            _ => (5, 2, 15),
        };
        let mut out = Vec::new();
        for code in 0..=255u8 {
            let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
            let e = ((code >> m_bits) & ((1 << e_bits) - 1)) as i32;
            let mant = (code & ((1 << m_bits) - 1)) as f64;
            let special = match format {
                Format::Fp8E4M3 => e == 15 && mant == 7.0,
                _ => e == 31,
            };
            if special {
                continue;
            }
            let v = if e == 0 { mant * 2f64.powi(1 - bias - m_bits) } else { (1.0 + mant / (1 << m_bits) as f64) * 2f64.powi(e - bias) };
            out.push((code, sign * v));
        }
        out
    }

    /// The reference: the code nearest to `q` (ties to the even code), saturating at ±max.
    fn nearest(values: &[(u8, f64)], q: f64) -> u8 {
        let mut best = values[0];
        for &(c, v) in values {
            let (d, bd) = ((v - q).abs(), (best.1 - q).abs());
            let tie_even = d == bd && (c & 1) == 0 && (best.0 & 1) == 1;
            // Zero of either sign is code 0 (the first of the two, which stays).
            if d < bd || tie_even {
                best = (c, v);
            }
        }
        best.0
    }

    #[test]
    fn every_fp8_code_round_trips() {
        for format in FP8 {
            let values = finite_values(format);
            assert_eq!(values.len(), if format == Format::Fp8E4M3 { 254 } else { 248 });
            for (code, v) in values {
                assert_eq!(format.decode(code) as f64, v, "{format} code {code:#04x}");
                // -0 (code 0x80) encodes as +0: fpx writes every zero as code 0.
                let want = if code == 0x80 { 0 } else { code };
                assert_eq!(format.encode(v as f32), want, "{format} value {v}");
            }
            assert!(format.decode(nan_code(format)).is_nan());
            assert_eq!(format.max_value(), finite_values(format).iter().map(|v| v.1).fold(0.0, f64::max));
        }
    }

    #[test]
    fn activations_match_an_independent_reference_with_saturation_and_specials() {
        let mut rng = Rng::new(81);
        for format in FP8 {
            let values = finite_values(format);
            let max = format.max_value() as f32;
            let (m, k) = (6, 97);
            let mut x: Vec<f32> = rng.normals(m * k).iter().map(|v| v * 3.0).collect();
            // Row 1: specials among ordinary values; row 2: all zero; row 3: tiny (subnormal
            // codes); row 4: huge; row 5: one value exactly halfway between two codes.
            x[k] = f32::INFINITY;
            x[k + 1] = f32::NEG_INFINITY;
            x[k + 2] = f32::NAN;
            x[k + 3] = -0.0;
            x[2 * k..3 * k].fill(0.0);
            x[3 * k..4 * k].iter_mut().for_each(|v| *v *= 1e-30);
            x[4 * k..5 * k].iter_mut().for_each(|v| *v *= 1e30);
            // Row 5: scale exactly 1 (absmax = max), then values halfway between two codes.
            x[5 * k..6 * k].iter_mut().for_each(|v| *v = v.clamp(-4.0, 4.0));
            x[5 * k] = max;
            let step = if format == Format::Fp8E4M3 { 0.125 } else { 0.25 };
            x[5 * k + 1] = 1.0 + step / 2.0; // between 1 (even code) and 1 + step: to 1
            x[5 * k + 2] = -(1.0 + 1.5 * step); // between 1 + step (odd) and 1 + 2 step (even): away
            let q = Fp8Activations::quantize(&x, m, k, format).unwrap();
            for r in 0..m {
                let row = &x[r * k..(r + 1) * k];
                let absmax = row.iter().filter(|v| v.is_finite()).fold(0f32, |a, v| a.max(v.abs()));
                let s = if absmax > 0.0 { absmax / max } else { 1.0 };
                assert_eq!(q.scales[r], s, "{format} row {r}");
                for (c, &v) in row.iter().enumerate() {
                    let got = q.codes[r * k + c];
                    let want = if v.is_nan() {
                        nan_code(format)
                    } else {
                        let t = (v / s) as f64; // fl32(x / s), then rounded in f64
                        nearest(&values, t.clamp(-max as f64, max as f64))
                    };
                    assert_eq!(got, want, "{format} row {r} col {c}: x = {v}, x/s = {}", v / s);
                }
            }
            // Saturation: ±∞ gives ±max; NaN stays NaN when dequantized; ties go to the even code.
            let dq = q.dequantized();
            assert_eq!(q.scales[5], 1.0);
            assert_eq!((dq[5 * k + 1], dq[5 * k + 2]), (1.0, -(1.0 + 2.0 * step)), "{format} ties");
            assert_eq!(dq[k], max * q.scales[1]);
            assert_eq!(dq[k + 1], -max * q.scales[1]);
            assert!(dq[k + 2].is_nan());
            assert!(dq[2 * k..3 * k].iter().all(|v| *v == 0.0));
            // Ordinary rows: error within half a step of the format (relative 2^-(m+1)).
            let rel = if format == Format::Fp8E4M3 { 1.0 / 16.0 } else { 1.0 / 8.0 };
            for (a, b) in x[..k].iter().zip(&dq[..k]) {
                assert!((a - b).abs() <= rel * a.abs() + q.scales[0] * 2f32.powi(-9), "{a} vs {b}");
            }
        }
        assert!(Fp8Activations::quantize(&[1.0], 1, 1, Format::Int8).unwrap_err().to_string().contains("is not an FP8 format"));
        assert!(Fp8Activations::quantize(&[1.0], 2, 1, Format::Fp8E4M3).is_err());
    }

    /// FP4/FP6 weights times e4m3 activations are exact in f32: every product of two codes'
    /// values equals its f64 product.
    #[test]
    fn fp4_and_fp6_times_e4m3_products_are_exact_in_f32() {
        let e4m3 = finite_values(Format::Fp8E4M3);
        for w in [Format::Fp4E2M1, Format::Fp6E2M3, Format::Fp6E3M2] {
            for wc in w.codes() {
                let wv = w.decode(wc);
                for &(_, a) in &e4m3 {
                    let p = wv * a as f32;
                    assert_eq!(p as f64, wv as f64 * a, "{w} {wv} x {a}");
                }
            }
        }
    }
}
