//! Fast, exact encoding of the small float formats (FP4, FP5, FP6): a code's magnitude is the
//! number of rounding thresholds at or below `|x|`, so a whole channel is encoded with
//! compares and adds that vectorize — the same codes as [`Format::encode`] (round to nearest,
//! ties to even, saturating, zero canonical), several times faster, which is what lets a
//! compile quantize billions of weights quickly.

use crate::Format;

/// Thresholds per encoder (a 6-bit format has 32 magnitudes, so 31 thresholds; the rest are NaN).
const SLOTS: usize = 32;

/// Encodes one ≤ 6-bit float format by counting thresholds.
#[derive(Debug, Clone)]
pub struct ThresholdEncoder {
    /// `|x| >= thresholds[i]` means the magnitude is above code `i`: the midpoint between
    /// magnitudes `i` and `i + 1`, or the next float above it where a tie rounds down (to the
    /// even code `i`). Unused slots are NaN (no value reaches them, not even +∞).
    thresholds: [f32; SLOTS],
    /// `magnitudes[i + 1] - magnitudes[i]`: summing those whose threshold `|x|` reaches gives
    /// the decoded magnitude exactly (every partial sum is a code's value).
    steps: [f32; SLOTS],
    /// The sign bit of a code.
    sign: u8,
}

impl ThresholdEncoder {
    /// The encoder of `format`; `None` for the integer and 8-bit formats (use [`Format::encode`]).
    pub fn new(format: Format) -> Option<ThresholdEncoder> {
        if !format.is_float() || format.bits() > 6 {
            return None;
        }
        let count = 1usize << (format.bits() - 1);
        let magnitudes: Vec<f32> = (0..count as u8).map(|c| format.decode(c)).collect();
        let mut thresholds = [f32::NAN; SLOTS];
        let mut steps = [0f32; SLOTS];
        for i in 0..count - 1 {
            let (lo, hi) = (magnitudes[i], magnitudes[i + 1]);
            // Exact: the values have a few significant bits, their mean one more.
            let mid = (lo + hi) / 2.0;
            // A tie goes to the even code: up when `i + 1` is even, else down.
            thresholds[i] = if (i + 1) % 2 == 0 { mid } else { f32::from_bits(mid.to_bits() + 1) };
            steps[i] = hi - lo;
        }
        Some(ThresholdEncoder { thresholds, steps, sign: 1 << (format.bits() - 1) })
    }

    /// The code of `x` (not NaN): what [`Format::encode`] returns.
    #[inline(always)]
    pub fn encode(&self, x: f32) -> u8 {
        let a = x.abs();
        let mut c = 0u8;
        for t in self.thresholds {
            c += (a >= t) as u8;
        }
        if c != 0 && x.is_sign_negative() {
            c | self.sign
        } else {
            c
        }
    }

    /// Encodes `values / s` into `codes` and returns the squared error of the dequantized
    /// values (`decode(code) · s`, in f32, as the kernels compute it) and the squared norm of
    /// `values`, both summed in f64. Written without branches per element so that it vectorizes.
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
        const LANES: usize = 8;
        let (mut err, mut norm) = (0f64, 0f64);
        let mut chunks_v = values.chunks_exact(LANES);
        let mut chunks_c = codes.chunks_exact_mut(LANES);
        let steps: [u32; SLOTS] = self.steps.map(f32::to_bits);
        for (v, out) in (&mut chunks_v).zip(&mut chunks_c) {
            let v: [f32; LANES] = v.try_into().expect("a chunk of LANES");
            let y: [f32; LANES] = std::array::from_fn(|l| v[l] / s);
            let a: [f32; LANES] = y.map(f32::abs);
            let mut count = [0u32; LANES];
            let mut magnitude = [0f32; LANES];
            for (&t, &step) in self.thresholds.iter().zip(&steps) {
                for l in 0..LANES {
                    // All ones where |y| reaches the threshold: count it and add its step.
                    let up = ((a[l] >= t) as u32).wrapping_neg();
                    count[l] = count[l].wrapping_sub(up);
                    magnitude[l] += f32::from_bits(up & step);
                }
            }
            let mut e = 0f64;
            let mut n = 0f64;
            for l in 0..LANES {
                let negative = y[l].is_sign_negative() & (count[l] != 0);
                out[l] = count[l] as u8 | if negative { self.sign } else { 0 };
                let dq = f32::from_bits(magnitude[l].to_bits() | (negative as u32) << 31) * s;
                let d = v[l] as f64 - dq as f64;
                e += d * d;
                n += v[l] as f64 * v[l] as f64;
            }
            err += e;
            norm += n;
        }
        for (&v, out) in chunks_v.remainder().iter().zip(chunks_c.into_remainder()) {
            let y = v / s;
            *out = self.encode(y);
            let a = y.abs();
            let magnitude: f32 = self.thresholds.iter().zip(&self.steps).map(|(t, step)| if a >= *t { *step } else { 0.0 }).sum();
            let dq = if *out & self.sign != 0 { -magnitude } else { magnitude } * s;
            let d = v as f64 - dq as f64;
            err += d * d;
            norm += v as f64 * v as f64;
        }
        (err, norm)
    }
}

/// Encodes `values / s` into the integer format `format` (round to nearest, ties to even,
/// saturating, as [`Format::encode`]) and returns the squared error and norm as
/// [`ThresholdEncoder::encode_scaled`] does; without branches per element, so it vectorizes.
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
        *code = (q as i32 as u8) & mask;
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

    fn small_floats() -> [Format; 4] {
        [Format::Fp6E3M2, Format::Fp6E2M3, Format::Fp5E2M2, Format::Fp4E2M1]
    }

    #[test]
    fn thresholds_give_format_encode_on_every_boundary_and_random_values() {
        let mut rng = Rng::new(17);
        for format in small_floats() {
            let enc = ThresholdEncoder::new(format).unwrap();
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
            let (err, norm) = enc.encode_scaled(&values, s, &mut codes);
            let (mut e, mut n) = (0f64, 0f64);
            for (&v, &c) in values.iter().zip(&codes) {
                assert_eq!(c, format.encode(v / s), "{format:?}: v = {v:e}");
                let d = v as f64 - (format.decode(c) * s) as f64;
                e += d * d;
                n += v as f64 * v as f64;
            }
            assert!((err - e).abs() <= 1e-9 * e && (norm - n).abs() <= 1e-9 * n, "{format:?}: {err} vs {e}, {norm} vs {n}");
        }
        assert!(ThresholdEncoder::new(Format::Int4).is_none() && ThresholdEncoder::new(Format::Fp8E4M3).is_none());
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
            let (err, norm) = encode_int_scaled(format, &values, s, &mut codes);
            let (mut e, mut n) = (0f64, 0f64);
            for (&v, &c) in values.iter().zip(&codes) {
                assert_eq!(c, format.encode(v / s), "{format:?}: v = {v:e}");
                let d = v as f64 - (format.decode(c) * s) as f64;
                e += d * d;
                n += v as f64 * v as f64;
            }
            assert!((err - e).abs() <= 1e-9 * e && (norm - n).abs() <= 1e-9 * n, "{format:?}");
        }
    }
}
