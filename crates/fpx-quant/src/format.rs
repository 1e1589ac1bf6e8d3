//! The weight number formats: their parameters, exact decoding and round-to-nearest-even,
//! saturating encoding.
//!
//! Float codes are sign-magnitude: in a `bits()`-wide code the top bit is the sign, then
//! `exponent_bits()` exponent bits, then `mantissa_bits()` mantissa bits. An exponent field
//! of 0 means a subnormal `mant/2^m × 2^(1-bias)`; otherwise the value is
//! `(1 + mant/2^m) × 2^(e-bias)`. Only the FP8 formats reserve codes (e4m3 "fn": `0x7f`/`0xff`
//! are NaN, no infinity; e5m2: exponent 31 is inf/NaN as in IEEE). Integer codes are two's
//! complement in the low `bits()` bits with a symmetric range (±7, ±127).

use std::fmt;

/// A weight number format fpx can quantize to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// FP6 1-3-2, bias 3, subnormals, no inf/NaN: ±28 max, 0.0625 smallest (FP6-LLM's default).
    Fp6E3M2,
    /// FP6 1-2-3, bias 1, subnormals, no inf/NaN: ±7.5 max, 0.125 smallest.
    Fp6E2M3,
    /// FP5 1-2-2, bias 1, no inf/NaN: ±7 max, 0.25 smallest.
    Fp5E2M2,
    /// FP4 1-2-1 (OCP MX "E2M1"), bias 1: ±6 max, 0.5 smallest.
    Fp4E2M1,
    /// FP8 1-4-3 "fn" (finite, no inf), bias 7: ±448 max; `0x7f`/`0xff` are NaN.
    Fp8E4M3,
    /// FP8 1-5-2, bias 15, IEEE-like (exponent 31 is inf/NaN): ±57344 max.
    Fp8E5M2,
    /// Symmetric 4-bit integer, −7..=7 (−8 is never produced).
    Int4,
    /// Symmetric 8-bit integer, −127..=127 (−128 is never produced).
    Int8,
}

/// `2^e` as an `f32`, exact for the exponents used here (normal f32 range).
#[inline]
fn pow2(e: i32) -> f32 {
    debug_assert!((-126..=127).contains(&e));
    f32::from_bits(((e + 127) as u32) << 23)
}

impl Format {
    /// Every format, in declaration order (for exhaustive tests and CLI help).
    pub const ALL: [Format; 8] =
        [Format::Fp6E3M2, Format::Fp6E2M3, Format::Fp5E2M2, Format::Fp4E2M1, Format::Fp8E4M3, Format::Fp8E5M2, Format::Int4, Format::Int8];

    /// The format's stable name, as used on the command line and in artifacts.
    pub fn name(self) -> &'static str {
        match self {
            Format::Fp6E3M2 => "fp6-e3m2",
            Format::Fp6E2M3 => "fp6-e2m3",
            Format::Fp5E2M2 => "fp5-e2m2",
            Format::Fp4E2M1 => "fp4-e2m1",
            Format::Fp8E4M3 => "fp8-e4m3",
            Format::Fp8E5M2 => "fp8-e5m2",
            Format::Int4 => "int4",
            Format::Int8 => "int8",
        }
    }

    /// The format with this [`name`](Format::name), or `None` (exact, case-sensitive match).
    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Width of a code in bits (the code lives in the low bits of a `u8`).
    pub fn bits(self) -> u32 {
        match self {
            Format::Fp6E3M2 | Format::Fp6E2M3 => 6,
            Format::Fp5E2M2 => 5,
            Format::Fp4E2M1 | Format::Int4 => 4,
            Format::Fp8E4M3 | Format::Fp8E5M2 | Format::Int8 => 8,
        }
    }

    /// Whether this is a floating-point (sign/exponent/mantissa) format.
    pub fn is_float(self) -> bool {
        !matches!(self, Format::Int4 | Format::Int8)
    }

    /// Number of exponent bits (0 for integer formats).
    pub fn exponent_bits(self) -> u32 {
        match self {
            Format::Fp6E3M2 => 3,
            Format::Fp6E2M3 | Format::Fp5E2M2 | Format::Fp4E2M1 => 2,
            Format::Fp8E4M3 => 4,
            Format::Fp8E5M2 => 5,
            Format::Int4 | Format::Int8 => 0,
        }
    }

    /// Number of mantissa (fraction) bits (0 for integer formats).
    pub fn mantissa_bits(self) -> u32 {
        match self {
            Format::Fp6E3M2 | Format::Fp5E2M2 | Format::Fp8E5M2 => 2,
            Format::Fp6E2M3 | Format::Fp8E4M3 => 3,
            Format::Fp4E2M1 => 1,
            Format::Int4 | Format::Int8 => 0,
        }
    }

    /// Exponent bias (0 for integer formats).
    pub fn bias(self) -> i32 {
        match self {
            Format::Fp6E3M2 => 3,
            Format::Fp6E2M3 | Format::Fp5E2M2 | Format::Fp4E2M1 => 1,
            Format::Fp8E4M3 => 7,
            Format::Fp8E5M2 => 15,
            Format::Int4 | Format::Int8 => 0,
        }
    }

    /// Largest finite magnitude; scales map a channel's absmax onto it.
    pub fn max_value(self) -> f64 {
        match self {
            Format::Fp6E3M2 => 28.0,
            Format::Fp6E2M3 => 7.5,
            Format::Fp5E2M2 => 7.0,
            Format::Fp4E2M1 => 6.0,
            Format::Fp8E4M3 => 448.0,
            Format::Fp8E5M2 => 57344.0,
            Format::Int4 => 7.0,
            Format::Int8 => 127.0,
        }
    }

    /// Mask of the code's `bits()` low bits (`0x3f` for FP6).
    pub fn code_mask(self) -> u8 {
        (((1u32) << self.bits()) - 1) as u8
    }

    /// The code of `+max_value()`, which saturating encoding returns for large inputs.
    pub fn max_code(self) -> u8 {
        match self {
            Format::Fp8E4M3 => 0x7e,
            Format::Fp8E5M2 => 0x7b,
            Format::Int4 => 7,
            Format::Int8 => 127,
            // No reserved codes: the largest positive code is all ones below the sign bit.
            _ => self.code_mask() >> 1,
        }
    }

    /// Whether `code` is a finite value this format can produce: it fits in `bits()` and is
    /// not an FP8 NaN/Inf code nor the asymmetric integer minimum (−8 / −128).
    pub fn is_valid_code(self, code: u8) -> bool {
        if code & !self.code_mask() != 0 {
            return false;
        }
        match self {
            Format::Fp8E4M3 => code & 0x7f != 0x7f,
            Format::Fp8E5M2 => (code >> 2) & 0x1f != 0x1f,
            Format::Int4 => code != 0x8,
            Format::Int8 => code != 0x80,
            _ => true,
        }
    }

    /// The exact value of `code` (only the low `bits()` bits are used). FP8 NaN codes give
    /// NaN, e5m2 infinity codes ±inf; the integer minimum (−8 / −128) decodes to itself.
    /// Every value is exact in `f32`.
    pub fn decode(self, code: u8) -> f32 {
        let code = code & self.code_mask();
        match self {
            Format::Int4 => (((code << 4) as i8) >> 4) as f32,
            Format::Int8 => code as i8 as f32,
            _ => self.decode_float(code),
        }
    }

    fn decode_float(self, code: u8) -> f32 {
        let m = self.mantissa_bits();
        let ebits = self.exponent_bits();
        let negative = (code >> (self.bits() - 1)) & 1 == 1;
        let exp = (code >> m) & ((1u8 << ebits) - 1);
        let mant = code & ((1u8 << m) - 1);
        let magnitude = match self {
            Format::Fp8E4M3 if exp == 15 && mant == 7 => f32::NAN,
            Format::Fp8E5M2 if exp == 31 => {
                if mant == 0 {
                    f32::INFINITY
                } else {
                    f32::NAN
                }
            }
            _ if exp == 0 => mant as f32 * pow2(1 - self.bias() - m as i32),
            _ => f32::from_bits((((exp as i32 - self.bias() + 127) as u32) << 23) | ((mant as u32) << (23 - m))),
        };
        if negative {
            -magnitude
        } else {
            magnitude
        }
    }

    /// The code nearest to `x`: round to nearest, ties to even (the code whose mantissa LSB is
    /// 0; for integers the even integer), saturating at ±`max_value()` (±inf included).
    /// NaN gives code 0 (callers reject NaN before encoding). A result of zero is always the
    /// code 0 (+0), also for negative inputs, so zeros are canonical.
    pub fn encode(self, x: f32) -> u8 {
        if x.is_nan() {
            return 0;
        }
        match self {
            Format::Int4 | Format::Int8 => {
                let max = self.max_value() as f32;
                let r = x.round_ties_even().clamp(-max, max) as i32;
                (r as u8) & self.code_mask()
            }
            _ => self.encode_float(x),
        }
    }

    fn encode_float(self, x: f32) -> u8 {
        let m = self.mantissa_bits() as i32;
        let bias = self.bias();
        let a = x.abs();
        let magnitude = if a >= self.max_value() as f32 {
            self.max_code()
        } else {
            let emin = 1 - bias; // exponent of the smallest normal
            if a < pow2(emin) {
                // Subnormal range: a grid of step 2^(emin - m); a result of 2^m is the smallest
                // normal (exponent field 1, mantissa 0), which the code arithmetic gives for free.
                (a * pow2(m - emin)).round_ties_even() as u8
            } else {
                // Here a >= 2^-14, a normal f32: its exponent is read from the bits.
                let e = ((a.to_bits() >> 23) as i32) - 127;
                // q in [2^m, 2^(m+1)): exact. Rounding up to 2^(m+1) carries into the exponent.
                let q = (a * pow2(m - e)).round_ties_even() as u8;
                ((((e + bias) as u8) << m) + q) - (1u8 << m)
            }
        };
        if magnitude == 0 {
            0
        } else if x.is_sign_negative() {
            magnitude | (1u8 << (self.bits() - 1))
        } else {
            magnitude
        }
    }

    /// Every valid code in increasing code order (see [`is_valid_code`](Format::is_valid_code)):
    /// for floats both zeros are included; FP8 NaN/Inf codes and −8 / −128 are not.
    pub fn codes(self) -> impl Iterator<Item = u8> {
        (0..=self.code_mask()).filter(move |&c| self.is_valid_code(c))
    }
}

impl fmt::Display for Format {
    /// Writes [`Format::name`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
// Binary literals are grouped sign_exponent_mantissa on purpose.
#[allow(clippy::unusual_byte_groupings)]
mod tests {
    use super::*;
    use fpx_test_support::Rng;

    /// Independent reference decode in f64 from the textbook formula (not the bit tricks above).
    fn ref_decode(f: Format, code: u8) -> f64 {
        let code = code as u32 & ((1 << f.bits()) - 1);
        if !f.is_float() {
            let b = f.bits();
            let v = code as i64;
            return if v >= 1 << (b - 1) { (v - (1 << b)) as f64 } else { v as f64 };
        }
        let (eb, mb, bias) = (f.exponent_bits(), f.mantissa_bits(), f.bias());
        let sign = if (code >> (eb + mb)) & 1 == 1 { -1.0 } else { 1.0 };
        let e = (code >> mb) & ((1 << eb) - 1);
        let frac = (code & ((1 << mb) - 1)) as f64 / (1u32 << mb) as f64;
        let magnitude = if e == 0 { frac * 2f64.powi(1 - bias) } else { (1.0 + frac) * 2f64.powi(e as i32 - bias) };
        sign * magnitude
    }

    /// Brute-force nearest value with ties to the even code, saturating; the reference for encode.
    fn ref_encode_value(f: Format, x: f32) -> f64 {
        let x = x as f64;
        if x.is_infinite() {
            return x.signum() * f.max_value();
        }
        let mut best: Option<(f64, u8)> = None;
        for c in f.codes() {
            let d = (x - ref_decode(f, c)).abs();
            best = match best {
                None => Some((d, c)),
                Some((bd, bc)) => {
                    if d < bd || (d == bd && bc & 1 == 1 && c & 1 == 0) {
                        Some((d, c))
                    } else {
                        Some((bd, bc))
                    }
                }
            };
        }
        ref_decode(f, best.unwrap().1)
    }

    fn check_encode(f: Format, x: f32) {
        let c = f.encode(x);
        assert!(f.is_valid_code(c), "{f}: encode({x}) = {c:#x} is not a valid code");
        let got = f.decode(c) as f64;
        let want = ref_encode_value(f, x);
        assert_eq!(got, want, "{f}: encode({x:e}) = {c:#x} decodes to {got}, want {want}");
        if got == 0.0 {
            assert_eq!(c, 0, "{f}: zero must be the canonical +0 code");
        }
    }

    #[test]
    fn names_round_trip() {
        let names: Vec<_> = Format::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["fp6-e3m2", "fp6-e2m3", "fp5-e2m2", "fp4-e2m1", "fp8-e4m3", "fp8-e5m2", "int4", "int8"]);
        for f in Format::ALL {
            assert_eq!(Format::parse(f.name()), Some(f));
            assert_eq!(f.to_string(), f.name());
        }
        assert_eq!(Format::parse("fp6"), None);
        assert_eq!(Format::parse("FP6-E3M2"), None);
    }

    #[test]
    fn parameters() {
        let bits: Vec<_> = Format::ALL.iter().map(|f| f.bits()).collect();
        assert_eq!(bits, [6, 6, 5, 4, 8, 8, 4, 8]);
        for f in Format::ALL {
            if f.is_float() {
                assert_eq!(1 + f.exponent_bits() + f.mantissa_bits(), f.bits());
            } else {
                assert_eq!((f.exponent_bits(), f.mantissa_bits(), f.bias()), (0, 0, 0));
            }
            // max_value is the largest valid value, reached by max_code, symmetric.
            let max = f.codes().map(|c| ref_decode(f, c)).fold(f64::MIN, f64::max);
            let min = f.codes().map(|c| ref_decode(f, c)).fold(f64::MAX, f64::min);
            assert_eq!(max, f.max_value(), "{f}");
            assert_eq!(min, -f.max_value(), "{f}");
            assert_eq!(f.decode(f.max_code()) as f64, f.max_value(), "{f}");
        }
        let smallest = |f: Format| f.codes().map(|c| ref_decode(f, c)).filter(|&v| v > 0.0).fold(f64::MAX, f64::min);
        assert_eq!(smallest(Format::Fp6E3M2), 0.0625);
        assert_eq!(smallest(Format::Fp6E2M3), 0.125);
        assert_eq!(smallest(Format::Fp5E2M2), 0.25);
        assert_eq!(smallest(Format::Fp4E2M1), 0.5);
        assert_eq!(smallest(Format::Fp8E4M3), 2f64.powi(-9));
        assert_eq!(smallest(Format::Fp8E5M2), 2f64.powi(-16));
    }

    #[test]
    fn code_counts() {
        let counts: Vec<_> = Format::ALL.iter().map(|f| f.codes().count()).collect();
        // FP8 e4m3: 2 NaN codes; e5m2: 8 inf/NaN codes; ints: the asymmetric minimum.
        assert_eq!(counts, [64, 64, 32, 16, 254, 248, 15, 255]);
        for f in Format::ALL {
            assert!(f.codes().all(|c| f.decode(c).is_finite()), "{f}");
        }
    }

    #[test]
    fn decode_matches_reference_formula() {
        for f in Format::ALL {
            for code in 0..=255u8 {
                let got = f.decode(code);
                let low = code & f.code_mask();
                if f.is_valid_code(low) || !f.is_float() {
                    assert_eq!(got as f64, ref_decode(f, code), "{f} code {code:#x}");
                }
                // Higher bits are ignored.
                assert_eq!(got.to_bits(), f.decode(low).to_bits(), "{f} code {code:#x}");
            }
        }
        assert!(Format::Fp8E4M3.decode(0x7f).is_nan());
        assert!(Format::Fp8E4M3.decode(0xff).is_nan());
        assert_eq!(Format::Fp8E5M2.decode(0x7c), f32::INFINITY);
        assert_eq!(Format::Fp8E5M2.decode(0xfc), f32::NEG_INFINITY);
        assert!(Format::Fp8E5M2.decode(0x7d).is_nan());
        assert_eq!(Format::Int4.decode(0x8), -8.0);
        assert_eq!(Format::Int4.decode(0xf), -1.0);
        assert_eq!(Format::Int8.decode(0x80), -128.0);
        // Spot values: e3m2 0b0_011_01 = 1.25, e2m3 0b1_00_111 = -0.875.
        assert_eq!(Format::Fp6E3M2.decode(0b0_011_01), 1.25);
        assert_eq!(Format::Fp6E2M3.decode(0b1_00_111), -0.875);
        assert_eq!(Format::Fp6E3M2.decode(0b1_000_00), 0.0); // -0 == 0
    }

    #[test]
    fn encode_representable_values_and_midpoints() {
        for f in Format::ALL {
            let mut values: Vec<f64> = f.codes().map(|c| ref_decode(f, c)).collect();
            values.sort_by(f64::total_cmp);
            values.dedup();
            for v in &values {
                check_encode(f, *v as f32);
                // Exact values round-trip to a code of the same value.
                assert_eq!(f.decode(f.encode(*v as f32)) as f64, *v, "{f}");
            }
            for w in values.windows(2) {
                let mid = (w[0] + w[1]) / 2.0;
                assert_eq!(mid as f32 as f64, mid, "midpoints are exact in f32");
                check_encode(f, mid as f32); // the tie
                check_encode(f, next_toward(mid as f32, w[0] as f32));
                check_encode(f, next_toward(mid as f32, w[1] as f32));
            }
            // Half the smallest subnormal ties to zero; just above rounds away from zero.
            let tiny = values.iter().copied().find(|&v| v > 0.0).unwrap();
            assert_eq!(f.encode((tiny / 2.0) as f32), 0, "{f}");
            assert_eq!(f.encode((-tiny / 2.0) as f32), 0, "{f}");
        }
    }

    /// The f32 adjacent to `x` in the direction of `toward`.
    fn next_toward(x: f32, toward: f32) -> f32 {
        if x == 0.0 {
            return f32::from_bits(1).copysign(toward);
        }
        let bits = x.to_bits();
        if (toward > x) == (x > 0.0) {
            f32::from_bits(bits + 1)
        } else {
            f32::from_bits(bits - 1)
        }
    }

    #[test]
    fn encode_matches_brute_force_on_random_inputs() {
        let mut rng = Rng::new(7);
        for f in Format::ALL {
            let tiny = f.codes().map(|c| ref_decode(f, c)).filter(|&v| v > 0.0).fold(f64::MAX, f64::min);
            let (lo, hi) = ((tiny / 8.0).log2(), (f.max_value() * 4.0).log2());
            for i in 0..20_000 {
                let magnitude = if i % 2 == 0 {
                    // log-uniform from far below the smallest subnormal to far above max
                    (lo + (hi - lo) * rng.uniform()).exp2()
                } else {
                    // uniform over the representable range (and a bit beyond)
                    rng.uniform() * f.max_value() * 1.1
                };
                let sign = if rng.next_u32() & 1 == 0 { 1.0 } else { -1.0 };
                check_encode(f, (sign * magnitude) as f32);
            }
        }
    }

    #[test]
    fn encode_saturates_and_handles_special_inputs() {
        for f in Format::ALL {
            let max = f.max_value() as f32;
            for x in [max * 1.01, max * 1000.0, f32::MAX, f32::INFINITY] {
                assert_eq!(f.encode(x), f.max_code(), "{f} {x}");
                assert_eq!(f.decode(f.encode(-x)), -max, "{f} {x}");
            }
            assert_eq!(f.encode(f32::NAN), 0, "{f}");
            assert_eq!(f.encode(-f32::NAN), 0, "{f}");
            assert_eq!(f.encode(0.0), 0, "{f}");
            assert_eq!(f.encode(-0.0), 0, "{f}");
            assert_eq!(f.encode(f32::from_bits(1)), 0, "{f}"); // f32 subnormal
            assert_eq!(f.encode(-f32::MIN_POSITIVE), 0, "{f}");
        }
        // Integer ties go to the even integer.
        let i4 = Format::Int4;
        for (x, want) in [(0.5, 0.0), (1.5, 2.0), (2.5, 2.0), (-2.5, -2.0), (-3.5, -4.0), (6.5, 6.0)] {
            assert_eq!(i4.decode(i4.encode(x)), want, "int4 {x}");
        }
        assert_eq!(i4.encode(-100.0), 0x9); // -7, never -8
        assert_eq!(Format::Int8.encode(-1000.0), 0x81); // -127, never -128
                                                        // Float ties: e3m2 between 1.0 (mant 00) and 1.25 (mant 01) → 1.0; 1.375 → 1.5 (mant 10).
        assert_eq!(Format::Fp6E3M2.decode(Format::Fp6E3M2.encode(1.125)), 1.0);
        assert_eq!(Format::Fp6E3M2.decode(Format::Fp6E3M2.encode(1.375)), 1.5);
        // Tie between the largest subnormal (0.1875) and the smallest normal (0.25) → 0.25.
        assert_eq!(Format::Fp6E3M2.decode(Format::Fp6E3M2.encode(0.21875)), 0.25);
        // e4m3: 464 is the tie between 448 and (non-existent) 480: saturation keeps 448.
        assert_eq!(Format::Fp8E4M3.decode(Format::Fp8E4M3.encode(464.0)), 448.0);
    }
}
