//! The "bias shift": FP→FP16/BF16 conversion of a float code with shifts and masks only.
//!
//! Writing a code's exponent and mantissa bits straight into the low exponent bits and high
//! mantissa bits of a wider float gives that float the value `decode(code) × 2^(bias - B)`,
//! where `B` is the wide type's bias (15 for FP16, 127 for BF16) — for subnormal codes too,
//! because the wide type then sees them as its own subnormals. The constant factor
//! `2^(B - bias)` is the same for every code, so fpx folds it into the per-channel scale
//! (kept in FP32) and dequantization in the kernel is pure bit manipulation.
//!
//! | format | FP16 factor ([`f16_factor`]) | BF16 factor ([`bf16_factor`]) |
//! |---|---|---|
//! | fp6-e3m2 | 2^12 | 2^124 |
//! | fp6-e2m3, fp5-e2m2, fp4-e2m1 | 2^14 | 2^126 |
//! | fp8-e4m3 | 2^8 | 2^120 |
//! | fp8-e5m2 | 1 | 2^112 |
//!
//! BF16 has a catch: the shift ([`bf16_bits`]) turns FP6 subnormal codes into BF16
//! *subnormals*, which tensor cores flush to zero. fpx's BF16 GPU path therefore multiplies the
//! shifted value by [`bf16_factor`] in BF16 arithmetic before the MMA (one exact
//! `fma.rn.bf16x2` per register pair: BF16 FMAs keep subnormal inputs), so tensor cores see
//! the true magnitude, a normal BF16 or zero, and the scale keeps factor 1.
//!
//! All functions take a code in the low `bits()` bits (higher bits ignored) and panic for
//! integer formats, which have no exponent to shift.

use crate::Format;

/// `2^e` as an `f32` (normal range only).
fn pow2(e: i32) -> f32 {
    assert!((-126..=127).contains(&e));
    f32::from_bits(((e + 127) as u32) << 23)
}

/// `(sign bit, exponent+mantissa bits)` of a float code; panics for integer formats.
fn split(format: Format, code: u8) -> (u16, u16) {
    assert!(format.is_float(), "bias shift is defined for float formats only, not {format}");
    let code = (code & format.code_mask()) as u16;
    let low_bits = format.bits() - 1;
    (code >> low_bits, code & ((1 << low_bits) - 1))
}

/// FP16 bits of the bias-shifted code: `(sign << 15) | ((code & low_mask) << (10 - mbits))`.
/// Its value is `decode(code) / f16_factor(format)` exactly, subnormal codes included (e5m2
/// inf/NaN codes become FP16 inf/NaN). Panics for integer formats.
pub fn f16_bits(format: Format, code: u8) -> u16 {
    let (sign, low) = split(format, code);
    (sign << 15) | (low << (10 - format.mantissa_bits()))
}

/// The exact power of two `2^(15 - bias)` by which an [`f16_bits`] value must be multiplied
/// to get the code's value; fpx folds it into the FP32 scale. Panics for integer formats.
pub fn f16_factor(format: Format) -> f32 {
    assert!(format.is_float(), "no FP16 factor for {format}");
    pow2(15 - format.bias())
}

/// BF16 bits of the naive bias shift: `(sign << 15) | ((code & low_mask) << (7 - mbits))`,
/// value `decode(code) × 2^-(127 - bias)`. Subnormal codes become BF16 subnormals (see the
/// module docs); kept to document and test that hazard. Panics for integer formats.
pub fn bf16_bits(format: Format, code: u8) -> u16 {
    let (sign, low) = split(format, code);
    (sign << 15) | (low << (7 - format.mantissa_bits()))
}

/// The exact power of two `2^(127 - bias)` that turns a [`bf16_bits`] value into the code's
/// value (at most 2^126, so it fits in `f32`). Panics for integer formats.
pub fn bf16_factor(format: Format) -> f32 {
    assert!(format.is_float(), "no BF16 factor for {format}");
    pow2(127 - format.bias())
}

#[cfg(test)]
// Binary literals are grouped sign_exponent_mantissa on purpose.
#[allow(clippy::unusual_byte_groupings)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    fn float_formats() -> impl Iterator<Item = Format> {
        Format::ALL.into_iter().filter(|f| f.is_float() && f.exponent_bits() <= 5)
    }

    #[test]
    fn factors() {
        let f16s: Vec<_> = float_formats().map(f16_factor).collect();
        assert_eq!(f16s, [4096.0, 16384.0, 16384.0, 16384.0, 256.0, 1.0]);
        assert_eq!(bf16_factor(Format::Fp6E3M2), 2f32.powi(124));
        assert_eq!(bf16_factor(Format::Fp6E2M3), 2f32.powi(126));
        assert_eq!(bf16_factor(Format::Fp8E4M3), 2f32.powi(120));
        assert_eq!(bf16_factor(Format::Fp8E5M2), 2f32.powi(112));
    }

    #[test]
    fn f16_bits_times_factor_is_exact() {
        for f in float_formats() {
            let factor = f16_factor(f) as f64;
            for c in f.codes() {
                let v = f16::from_bits(f16_bits(f, c)).to_f64() * factor;
                assert_eq!(v, f.decode(c) as f64, "{f} code {c:#x}");
            }
            // Higher bits ignored.
            assert_eq!(f16_bits(f, 0xff), f16_bits(f, f.code_mask()));
        }
        // e5m2 inf/NaN codes map to FP16 inf/NaN: e5m2 is FP16's top byte.
        assert!(f16::from_bits(f16_bits(Format::Fp8E5M2, 0x7c)).is_infinite());
        assert!(f16::from_bits(f16_bits(Format::Fp8E5M2, 0x7d)).is_nan());
        // e3m2 subnormals are FP16 subnormals and still exact.
        let sub = f16::from_bits(f16_bits(Format::Fp6E3M2, 0b0_000_01));
        assert_eq!(sub.classify(), std::num::FpCategory::Subnormal);
        assert_eq!(sub.to_f64() * 4096.0, 0.0625);
    }

    #[test]
    fn f16_bits_equals_fp6_llm_bit_trick() {
        for (f, shift) in [(Format::Fp6E3M2, 2), (Format::Fp6E2M3, 3)] {
            for c in 0..64u8 {
                let x = (c as u16) << 10;
                let trick = (x & 0x8000) | ((x & 0x7c00) >> shift);
                assert_eq!(f16_bits(f, c), trick, "{f} code {c:#x}");
            }
        }
    }

    #[test]
    fn bf16_bits_times_factor_is_exact() {
        for f in float_formats() {
            let factor = 2f64.powi(127 - f.bias());
            assert_eq!(bf16_factor(f) as f64, factor);
            for c in f.codes() {
                let v = bf16::from_bits(bf16_bits(f, c)).to_f64() * factor;
                assert_eq!(v, f.decode(c) as f64, "{f} code {c:#x}");
            }
        }
    }

    #[test]
    fn naive_bf16_makes_fp6_subnormals_bf16_subnormals() {
        // Why the BF16 path multiplies by bf16_factor first: tensor cores flush BF16 subnormals.
        for f in [Format::Fp6E3M2, Format::Fp6E2M3] {
            let m = f.mantissa_bits();
            let mut subnormal_codes = 0;
            for c in f.codes() {
                let low = c & (f.code_mask() >> 1);
                if low >> m == 0 && low != 0 {
                    let bits = bf16_bits(f, c);
                    assert_eq!((bits >> 7) & 0xff, 0, "{f} code {c:#x}: exponent field");
                    assert_eq!(bf16::from_bits(bits).classify(), std::num::FpCategory::Subnormal);
                    subnormal_codes += 1;
                }
            }
            assert_eq!(subnormal_codes, 2 * ((1 << m) - 1), "{f}");
        }
    }

    #[test]
    fn bf16_factor_times_shifted_code_is_a_normal_bf16_exactly() {
        // The GPU's BF16 path: bf16_bits, then one BF16 multiply by bf16_factor (exact, since a
        // power of two times a value with at most 3 significant bits that lands in the normal
        // range is representable).
        for f in float_formats() {
            if f.bias() > 127 - 1 || f.bits() > 6 {
                continue;
            }
            for c in f.codes() {
                let v = bf16::from_bits(bf16_bits(f, c)).to_f64() * bf16_factor(f) as f64;
                assert_eq!(v, f.decode(c) as f64, "{f} code {c:#x}");
                let b = bf16::from_f64(v);
                assert_eq!(b.to_f64(), v, "{f} code {c:#x}: not exact in BF16");
                assert!(b.is_normal() || v == 0.0, "{f} code {c:#x}: {v} is not a BF16 normal");
            }
        }
    }

    #[test]
    #[should_panic(expected = "float formats only")]
    fn int_formats_panic() {
        f16_bits(Format::Int4, 3);
    }
}
