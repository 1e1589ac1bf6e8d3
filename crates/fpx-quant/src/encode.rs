//! Fast, exact encoding of the small float formats (FP4, FP5, FP6): the code is read off the
//! f32's bits (mantissa rounded to nearest even, the subnormal range on its grid, saturation),
//! branch-free so that a whole channel vectorizes — the same codes as [`Format::encode`], an
//! order of magnitude faster, which is what lets a compile quantize billions of weights quickly.

use crate::Format;

/// Values whose error and norm [`FloatEncoder::encode_scaled`] sums in f32 before adding them
/// to its f64 totals.
const SUM_BLOCK: usize = 256;

/// Encodes one ≤ 6-bit float format from the bits of an f32.
#[derive(Debug, Clone)]
pub struct FloatEncoder {
    /// The sign bit of a code.
    sign: u8,
    /// Mantissa bits and exponent bias of the format.
    mantissa_bits: u32,
    bias: i32,
    /// The largest magnitude code (saturation).
    max_magnitude: u32,
    /// The smallest normal value, `2^(1 - bias)`.
    min_normal: f32,
    /// `2^(m - emin)`: a value below the smallest normal times this is its subnormal code.
    subnormal_scale: f32,
    /// `2^(emin - m)`: the value of subnormal code 1.
    subnormal_step: f32,
}

impl FloatEncoder {
    /// The encoder of `format`; `None` for the integer and 8-bit formats (use [`Format::encode`]).
    pub fn new(format: Format) -> Option<FloatEncoder> {
        if !format.is_float() || format.bits() > 6 {
            return None;
        }
        let count = 1usize << (format.bits() - 1);
        let (m, bias) = (format.mantissa_bits(), format.bias());
        let emin = 1 - bias;
        Some(FloatEncoder {
            sign: 1 << (format.bits() - 1),
            mantissa_bits: m,
            bias,
            max_magnitude: count as u32 - 1,
            min_normal: 2f32.powi(emin),
            subnormal_scale: 2f32.powi(m as i32 - emin),
            subnormal_step: 2f32.powi(emin - m as i32),
        })
    }

    /// The code of `x` (not NaN): what [`Format::encode`] returns.
    #[inline(always)]
    pub fn encode(&self, x: f32) -> u8 {
        self.round(x).0
    }

    /// Encodes `values / s` into `codes` and returns the squared error of the dequantized
    /// values (`decode(code) · s`) and the squared norm of `values`, to about 1e-6 relative
    /// (the rounding of f32 sums over blocks of [`SUM_BLOCK`], added in f64): a diagnostic and
    /// a format chooser, not a bit-exact figure. Without branches per element, so it vectorizes.
    pub fn encode_scaled(&self, values: &[f32], s: f32, codes: &mut [u8]) -> (f64, f64) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above), all the function needs.
            #[allow(unsafe_code)]
            return unsafe { self.encode_scaled_avx2(values, s, codes) };
        }
        self.encode_scaled_portable(values, s, codes)
    }

    /// The same loop compiled for AVX2 (8 lanes a compare): safe code, `unsafe` only because
    /// it may run only where the CPU has AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[allow(unsafe_code)]
    unsafe fn encode_scaled_avx2(&self, values: &[f32], s: f32, codes: &mut [u8]) -> (f64, f64) {
        self.encode_scaled_portable(values, s, codes)
    }

    #[inline(always)]
    fn encode_scaled_portable(&self, values: &[f32], s: f32, codes: &mut [u8]) -> (f64, f64) {
        // Summed in the code's domain (`v / s` against the code's value, both bounded by the
        // format's range, so f32 cannot overflow) block by block in f32 lanes, each block's
        // sums scaled by `s²` into the f64 totals: f32 vector arithmetic per value, f64 only
        // per block.
        let s2 = s as f64 * s as f64;
        let (mut err, mut norm) = (0f64, 0f64);
        for (v, c) in values.chunks(SUM_BLOCK).zip(codes.chunks_mut(SUM_BLOCK)) {
            let (e, n) = self.encode_block(v, s, c);
            err += e as f64 * s2;
            norm += n as f64 * s2;
        }
        (err, norm)
    }

    /// Encodes up to [`SUM_BLOCK`] values `values / s` into `codes`; returns the squared error
    /// and norm in the code's domain.
    #[inline(always)]
    fn encode_block(&self, values: &[f32], s: f32, codes: &mut [u8]) -> (f32, f32) {
        // Eight lanes with their own sums (so the additions need not wait on each other).
        const LANES: usize = 8;
        let (mut err, mut norm) = ([0f32; LANES], [0f32; LANES]);
        let mut chunks_v = values.chunks_exact(LANES);
        let mut chunks_c = codes.chunks_exact_mut(LANES);
        for (v, out) in (&mut chunks_v).zip(&mut chunks_c) {
            for l in 0..LANES {
                let y = v[l] / s;
                let (c, q) = self.encode_value(y);
                out[l] = c;
                err[l] += (y - q) * (y - q);
                norm[l] += y * y;
            }
        }
        let (mut err, mut norm) = (err.iter().sum::<f32>(), norm.iter().sum::<f32>());
        for (&v, out) in chunks_v.remainder().iter().zip(chunks_c.into_remainder()) {
            let y = v / s;
            let (c, q) = self.encode_value(y);
            *out = c;
            err += (y - q) * (y - q);
            norm += y * y;
        }
        (err, norm)
    }

    /// The code of `y` and its value (signed).
    #[inline(always)]
    fn encode_value(&self, y: f32) -> (u8, f32) {
        let (c, magnitude) = self.round(y);
        let negative = ((c & self.sign != 0) as u32) << 31;
        (c, f32::from_bits(magnitude.to_bits() | negative))
    }

    /// The code of `y` (finite) and its decoded magnitude, by rounding the f32's bits: normal
    /// values round their mantissa to `m` bits (ties to even, a carry moving into the exponent),
    /// values below the smallest normal round on the subnormal grid; then saturate. The same
    /// result as `Format::encode`, in a dozen branch-free operations.
    #[inline(always)]
    fn round(&self, y: f32) -> (u8, f32) {
        let (m, bias) = (self.mantissa_bits, self.bias);
        let a = y.abs();
        let bits = a.to_bits();
        let shift = 23 - m;
        // Round to nearest even at bit `shift`, then drop the low bits: (f32 exponent << m) | mantissa.
        let rounded = (bits + ((1 << (shift - 1)) - 1) + ((bits >> shift) & 1)) >> shift;
        let exponent_offset = ((127 - bias) as u32) << m;
        let normal = rounded.saturating_sub(exponent_offset).min(self.max_magnitude);
        // Below the smallest normal: a multiple of the subnormal step, rounded by the 1.5 · 2^23
        // trick and read off the sum's bits (in that binade one unit is one ulp), not converted
        // with `as`, whose saturating semantics the compiler does lane by lane. Values at or above
        // the smallest normal give garbage here, which the select below discards.
        const ROUND: f32 = 12_582_912.0;
        let sub = (a * self.subnormal_scale + ROUND).to_bits().wrapping_sub(ROUND.to_bits());
        let magnitude = if a < self.min_normal { sub } else { normal };
        let value = if magnitude < (1 << m) {
            magnitude as f32 * self.subnormal_step
        } else {
            f32::from_bits((magnitude + exponent_offset) << shift)
        };
        let negative = y.is_sign_negative() & (magnitude != 0);
        (magnitude as u8 | if negative { self.sign } else { 0 }, value)
    }
}

/// Encodes `values / s` into the integer format `format` (round to nearest, ties to even,
/// saturating, as [`Format::encode`]) and returns the squared error and norm as
/// [`FloatEncoder::encode_scaled`] does; without branches per element, so it vectorizes.
pub fn encode_int_scaled(format: Format, values: &[f32], s: f32, codes: &mut [u8]) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above), all the function needs.
        #[allow(unsafe_code)]
        return unsafe { encode_int_scaled_avx2(format, values, s, codes) };
    }
    encode_int_scaled_portable(format, values, s, codes)
}

/// [`encode_int_scaled`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_code)]
unsafe fn encode_int_scaled_avx2(format: Format, values: &[f32], s: f32, codes: &mut [u8]) -> (f64, f64) {
    encode_int_scaled_portable(format, values, s, codes)
}

#[inline(always)]
fn encode_int_scaled_portable(format: Format, values: &[f32], s: f32, codes: &mut [u8]) -> (f64, f64) {
    assert!(matches!(format, Format::Int4 | Format::Int8), "encode_int_scaled takes an integer format");
    // 1.5 · 2^23: adding and subtracting it rounds |y| < 2^22 to an integer, ties to even
    // (`round_ties_even` is a library call on baseline x86-64).
    const ROUND: f32 = 12_582_912.0;
    let max = format.max_value() as f32;
    let mask = format.code_mask();
    let (mut err, mut norm) = (0f64, 0f64);
    for (&v, code) in values.iter().zip(codes.iter_mut()) {
        // Clamped first (which also keeps the rounding trick in range), then rounded.
        let q = ((v / s).clamp(-max, max) + ROUND) - ROUND;
        // `q` is an integer within ±127 and `q + ROUND` stays in ROUND's binade (one unit per
        // ulp): its bits give `q` in two's complement without a lane-by-lane `as` conversion.
        *code = ((q + ROUND).to_bits().wrapping_sub(ROUND.to_bits()) as u8) & mask;
        let d = v as f64 - (q * s) as f64;
        err += d * d;
        norm += v as f64 * v as f64;
    }
    (err, norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpx_test_support::Rng;

    /// `codes` are `format.encode(v / s)` and `(err, norm)` the error and norm sums of them.
    fn check_scaled(format: Format, values: &[f32], s: f32, codes: &[u8], (err, norm): (f64, f64)) {
        let (mut e, mut n) = (0f64, 0f64);
        for (&v, &c) in values.iter().zip(codes) {
            assert_eq!(c, format.encode(v / s), "{format:?}: v = {v:e}");
            let d = v as f64 - (format.decode(c) * s) as f64;
            e += d * d;
            n += v as f64 * v as f64;
        }
        assert!((err - e).abs() <= 1e-5 * e && (norm - n).abs() <= 1e-5 * n, "{format:?}: {err} vs {e}, {norm} vs {n}");
    }

    fn small_floats() -> [Format; 4] {
        [Format::Fp6E3M2, Format::Fp6E2M3, Format::Fp5E2M2, Format::Fp4E2M1]
    }

    #[test]
    fn bit_rounding_gives_format_encode_on_every_boundary_and_random_values() {
        let mut rng = Rng::new(17);
        for format in small_floats() {
            let enc = FloatEncoder::new(format).unwrap();
            let mut probes = vec![0.0f32, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE, 1e-30];
            // Every code's value and every midpoint, and the floats on either side of them.
            for c in format.codes() {
                let v = format.decode(c);
                for w in [v, (v + format.decode(c.wrapping_add(1) & format.code_mask())) / 2.0] {
                    for x in [w, f32::from_bits(w.to_bits().wrapping_add(1)), f32::from_bits(w.to_bits().wrapping_sub(1))] {
                        if x.is_finite() {
                            probes.extend([x, -x]);
                        }
                    }
                }
            }
            // Random values over the format's range and beyond, on a log scale.
            for _ in 0..200_000 {
                let x = (rng.uniform() as f32 * 2.0 - 1.0) * 2f32.powf(rng.range(-12.0, 8.0) as f32);
                probes.push(x);
            }
            for &x in &probes {
                assert_eq!(enc.encode(x), format.encode(x), "{format:?}: x = {x:e}");
            }
            // encode_scaled: same codes and the dequantized error, in chunks and the remainder.
            let values: Vec<f32> = probes.iter().copied().filter(|x| x.is_finite() && x.abs() < 1e6).collect();
            let s = 0.37f32;
            let mut codes = vec![0u8; values.len()];
            let sums = enc.encode_scaled(&values, s, &mut codes);
            check_scaled(format, &values, s, &codes, sums);
        }
        assert!(FloatEncoder::new(Format::Int4).is_none() && FloatEncoder::new(Format::Fp8E4M3).is_none());
    }

    #[test]
    fn integer_encoding_matches_format_encode_with_ties_and_saturation() {
        let mut rng = Rng::new(23);
        for format in [Format::Int4, Format::Int8] {
            let max = format.max_value() as f32;
            let s = 0.25f32;
            // Ties (k + 0.5) in and beyond range, both signs, and random values.
            let mut values: Vec<f32> = (-300..300).map(|i| (i as f32 + 0.5) * s).collect();
            values.extend((0..10_000).map(|_| (rng.uniform() as f32 * 2.0 - 1.0) * 2.0 * max * s));
            values.extend([0.0, -0.0, 1e-30, -1e30, 1e30]);
            let mut codes = vec![0u8; values.len()];
            let sums = encode_int_scaled(format, &values, s, &mut codes);
            check_scaled(format, &values, s, &codes, sums);
        }
    }
}
