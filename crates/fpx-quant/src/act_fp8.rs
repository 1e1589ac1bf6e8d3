//! FP8 activations (ZeroQuant-FP's W4A8): the numerics of quantizing activations to FP8 e4m3 or
//! e5m2 at run time, per row (token), with power-of-two scales. This module is the definition —
//! what the reference kernel and the report compute, and what CPU and GPU kernels must match.
//!
//! Per row `r` of `X[m][k]`:
//! - the scale is the smallest power of two `s = 2^e` with `absmax / s <= max`, `absmax` over
//!   the row's finite values and `max` the format's largest finite value (448 for e4m3, 57344
//!   for e5m2), `e` clamped to `-126..=127` (normal `f32` scales); a row with no finite non-zero
//!   value gets `s = 1`;
//! - each value becomes the FP8 code nearest to `x / s` (exact: a power-of-two division), ties
//!   to the even code, saturating at `±max` (so `±∞` gives `±max`, as ONNX `QuantizeLinear` with
//!   `saturate = 1`); a NaN stays NaN (the format's canonical NaN code); every zero (and what
//!   rounds to zero) is code 0.
//!
//! Dequantized, a value is `decode(code) · s`, **exact in `f32`**: the scale is a power of two.
//! So a kernel that multiplies the dequantized rows in `f32` multiplies exactly the FP8 values
//! (shifted by `e`), and FP4 and FP6 weights times e4m3 activations are exact products in `f32`
//! (at most 4 + 4 significant bits): the only rounding left is the `f32` accumulation. Why a
//! power of two costs nothing here: a floating-point grid is the same relative grid at every
//! scale, so a non-power-of-two scale only moves where the range ends (by less than a binade);
//! [`Fp8Activations::quantize`] keeps the whole range below `max`, the top binade included.

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
    /// One scale per row, each a power of two.
    pub scales: Vec<f32>,
    /// Codes, row-major.
    pub codes: Vec<u8>,
}

/// The canonical NaN code of an FP8 format: positive, every exponent and mantissa bit set
/// (`0x7f` in both e4m3 and e5m2).
pub fn nan_code(_format: Format) -> u8 {
    0x7f
}

/// Checks that `format` is an FP8 format and `x` holds `m × k` values.
fn check(x: &[f32], m: usize, k: usize, format: Format) -> Result<(), QuantError> {
    if !matches!(format, Format::Fp8E4M3 | Format::Fp8E5M2) {
        return Err(QuantError::Shape { tensor: "activations".into(), message: format!("{format} is not an FP8 format") });
    }
    if Some(x.len()) != m.checked_mul(k) {
        return Err(QuantError::Shape { tensor: "activations".into(), message: format!("{} values are not {m} x {k}", x.len()) });
    }
    Ok(())
}

/// The scale of one row (see the module docs): the smallest power of two `s` in
/// `2^-126..=2^127` with `absmax / s <= max`, or 1 for a row with no finite non-zero value.
pub fn row_scale(row: &[f32], format: Format) -> f32 {
    let absmax = row.iter().filter(|v| v.is_finite()).fold(0f32, |a, v| a.max(v.abs()));
    if absmax == 0.0 {
        return 1.0;
    }
    let max = format.max_value();
    // In f64 every candidate `max · 2^e` is exact, so the comparison is too.
    let mut e = (absmax as f64 / max).log2().ceil() as i32;
    while e > -126 && absmax as f64 <= max * 2f64.powi(e - 1) {
        e -= 1;
    }
    while absmax as f64 > max * 2f64.powi(e) {
        e += 1;
    }
    2f32.powi(e.clamp(-126, 127))
}

/// `t` rounded to `format`'s grid (an FP8 format), ties to even, saturating at `±max`, as an
/// `f32` (exact); NaN stays NaN and a zero result is `+0`. The same value as
/// `format.decode(format.encode(t))` for non-NaN `t`, with arithmetic only ([`Fp8Grid`]).
#[inline]
pub fn round_to_fp8(t: f32, format: Format) -> f32 {
    Fp8Grid::new(format).round(t)
}

/// The grid of an FP8 format, for rounding many values ([`Fp8Grid::round`]) without a branch:
/// the step at `t` is `2^(max(exponent(t), emin) − mantissa bits)`, a power of two built from
/// bits, so `t · 2^-step` rounded to an integer and multiplied back is exact; saturation is a
/// clamp (which keeps NaN).
#[derive(Debug, Clone, Copy)]
pub struct Fp8Grid {
    mantissa_bits: i32,
    emin: i32,
    max: f32,
}

impl Fp8Grid {
    /// The grid of `format` (an FP8 format).
    pub fn new(format: Format) -> Fp8Grid {
        Fp8Grid { mantissa_bits: format.mantissa_bits() as i32, emin: 1 - format.bias(), max: format.max_value() as f32 }
    }

    /// `t` rounded to the grid (see [`round_to_fp8`]).
    #[inline(always)]
    pub fn round(&self, t: f32) -> f32 {
        // f32 exponent of |t| (zero and f32 subnormals read -127: far below every FP8 step; NaN
        // and ∞ read 128), raised to the format's smallest normal exponent.
        let e = (((t.to_bits() >> 23) & 0xff) as i32 - 127).max(self.emin) - self.mantissa_bits;
        // 2^e and 2^-e: both normal f32 for every e here (-24..=126).
        let step = f32::from_bits(((e + 127) as u32) << 23);
        let inverse = f32::from_bits(((127 - e) as u32) << 23);
        ((t * inverse).round_ties_even() * step).clamp(-self.max, self.max) + 0.0
    }
}

impl Fp8Activations {
    /// Quantizes the `m × k` rows `x` to `format` (an FP8 format) as the module docs define.
    pub fn quantize(x: &[f32], m: usize, k: usize, format: Format) -> Result<Fp8Activations, QuantError> {
        check(x, m, k, format)?;
        let mut scales = Vec::with_capacity(m);
        let mut codes = vec![0u8; m * k];
        for (row, out) in x.chunks(k.max(1)).zip(codes.chunks_mut(k.max(1))).take(m) {
            let s = row_scale(row, format);
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

/// `x` (`m × k`) rounded to FP8 per row in place of `out`: the values of
/// `Fp8Activations::quantize(x, m, k, format)?.dequantized()`, bit for bit, computed without
/// codes ([`round_to_fp8`]): what the runtime hands the `f32` kernels of a product with FP8
/// activations.
pub fn round_rows(x: &[f32], m: usize, k: usize, format: Format, out: &mut [f32]) -> Result<(), QuantError> {
    check(x, m, k, format)?;
    if out.len() != x.len() {
        return Err(QuantError::Shape {
            tensor: "activations".into(),
            message: format!("the output has {} values, not {m} x {k}", out.len()),
        });
    }
    for (row, o) in x.chunks(k.max(1)).zip(out.chunks_mut(k.max(1))) {
        round_row(row, format, o);
    }
    Ok(())
}

/// One row of [`round_rows`]. Inlined, so that a caller compiled for a wider vector ISA (the
/// runtime's AVX2 version) vectorizes it; the results do not depend on the ISA.
#[inline(always)]
pub fn round_row(row: &[f32], format: Format, out: &mut [f32]) {
    let s = row_scale(row, format);
    // 1 / s is exact (a power of two), so multiplying by it equals dividing by s.
    let (inverse, grid) = (1.0 / s, Fp8Grid::new(format));
    for (o, &v) in out.iter_mut().zip(row) {
        *o = grid.round(v * inverse) * s;
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
                // The smallest power of two with absmax / s <= max, found by counting in f64.
                let s = if absmax > 0.0 {
                    let mut e = 200i32;
                    while e > -126 && (absmax as f64) <= max as f64 * 2f64.powi(e - 1) {
                        e -= 1;
                    }
                    2f64.powi(e) as f32
                } else {
                    1.0
                };
                assert_eq!(q.scales[r], s, "{format} row {r}");
                assert!(absmax / s <= max && (absmax == 0.0 || s == 2f32.powi(-126) || absmax / s > max / 2.0));
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

    /// `round_to_fp8` is `decode(encode(t))` on a sweep of every 4099th f32 bit pattern and on
    /// every value halfway between two neighbouring FP8 values, one f32 step either side.
    #[test]
    fn rounding_without_codes_matches_encode_then_decode() {
        for format in FP8 {
            let want = |t: f32| if t.is_nan() { f32::NAN } else { format.decode(format.encode(t)) };
            let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
            let mut checked = 0;
            for bits in (0..=u32::MAX).step_by(4099) {
                let t = f32::from_bits(bits);
                assert!(same(round_to_fp8(t, format), want(t)), "{format} {t:e} ({bits:#x})");
                checked += 1;
            }
            let mut values: Vec<f64> = finite_values(format).into_iter().map(|(_, v)| v).collect();
            values.sort_by(f64::total_cmp);
            for w in values.windows(2) {
                let mid = ((w[0] + w[1]) / 2.0) as f32;
                for t in [mid, f32::from_bits(mid.to_bits() + 1), f32::from_bits(mid.to_bits().max(1) - 1)] {
                    assert!(same(round_to_fp8(t, format), want(t)), "{format} near the midpoint {mid:e}: {t:e}");
                    checked += 3;
                }
            }
            assert!(checked > 1_000_000);
        }
    }

    /// `round_rows` gives `quantize(..).dequantized()` bit for bit, specials included; the scales
    /// are powers of two, so dequantizing is exact.
    #[test]
    fn rounded_rows_equal_dequantized_codes() {
        let mut rng = Rng::new(82);
        for format in FP8 {
            let (m, k) = (5, 131);
            let mut x: Vec<f32> = rng.normals(m * k).iter().map(|v| v * 7.0).collect();
            x[3] = f32::INFINITY;
            x[4] = f32::NAN;
            x[5] = -0.0;
            x[k..2 * k].iter_mut().for_each(|v| *v *= 1e-38);
            x[2 * k..3 * k].fill(0.0);
            x[3 * k..4 * k].iter_mut().for_each(|v| *v *= 3e37);
            let q = Fp8Activations::quantize(&x, m, k, format).unwrap();
            assert!(q.scales.iter().all(|s| s.to_bits() & 0x007f_ffff == 0), "{format}: powers of two {:?}", q.scales);
            let mut out = vec![0f32; m * k];
            round_rows(&x, m, k, format, &mut out).unwrap();
            for (i, (a, b)) in out.iter().zip(q.dequantized()).enumerate() {
                assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{format} at {i}: {a:e} vs {b:e} (x = {:e})", x[i]);
            }
            assert!(round_rows(&x, m, k, format, &mut out[1..]).is_err());
        }
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
