//! What kernels store and rebuild: the per-code value before scaling, and the constant
//! factor folded into the stored scales, so `decode(code) == stored_value(code) × storage_factor`
//! exactly and no kernel multiplies per weight by anything but the scale.

use crate::{bias_shift, Format};

/// The factor folded into stored scales: the bias-shift factor `2^(15 - bias)` for float
/// formats (their codes are rebuilt as FP16 bit patterns), 1 for integer formats.
pub fn storage_factor(format: Format) -> f32 {
    if format.is_float() {
        bias_shift::f16_factor(format)
    } else {
        1.0
    }
}

/// The value a kernel rebuilds from a code before scaling: the bias-shifted FP16 for float
/// formats, the signed integer for integer formats.
pub fn stored_value(format: Format, code: u8) -> f32 {
    if format.is_float() {
        half::f16::from_bits(bias_shift::f16_bits(format, code)).to_f32()
    } else {
        format.decode(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_value_times_factor_is_the_decoded_value_for_every_code() {
        for f in Format::ALL {
            for c in f.codes() {
                let v = stored_value(f, c) as f64 * storage_factor(f) as f64;
                assert_eq!(v, f.decode(c) as f64, "{} code {c:#x}", f.name());
            }
        }
    }
}
