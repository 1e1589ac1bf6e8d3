//! How the scale of one channel or group is chosen (see [`crate::scale`]'s docs): absmax, the
//! clipping-ratio search, and power-of-two scales, each judged by the squared error of the
//! dequantized values.

use crate::Format;

/// Decoded value of every code in `0..2^bits`, for fast error evaluation.
pub(crate) fn decode_table(format: Format) -> Vec<f32> {
    (0..=format.code_mask()).map(|c| format.decode(c)).collect()
}

/// The scale for clipping ratio `ratio`: `ratio * absmax / max`, never 0 (an absmax so small
/// that this underflows gets the smallest positive f32, and its weights then saturate) and
/// never so large that `max * s` overflows.
pub(crate) fn scale_for(format: Format, absmax: f32, ratio: f64) -> f32 {
    let s = ((ratio * absmax as f64 / format.max_value()) as f32).max(f32::from_bits(1));
    if (format.max_value() as f32 * s).is_finite() {
        s
    } else {
        // absmax near f32::MAX: round the scale down so `max * s` (a dequantized value) stays finite.
        f32::from_bits(s.to_bits() - 1)
    }
}

/// Squared error of quantizing `values` with scale `s`, in f64.
pub(crate) fn squared_error(format: Format, table: &[f32], values: &[f32], s: f32) -> f64 {
    values
        .iter()
        .map(|&v| {
            let dq = table[format.encode(v / s) as usize] * s;
            let d = v as f64 - dq as f64;
            d * d
        })
        .sum()
}

/// The scale of one (group, channel) whose largest magnitude is `absmax`: absmax, or the
/// least-squared-error clipping ratio.
pub(crate) fn choose_scale(format: Format, table: &[f32], values: &[f32], absmax: f32, search: bool, pow2: bool) -> f32 {
    if absmax == 0.0 {
        return 1.0;
    }
    if pow2 {
        return choose_pow2_scale(format, table, values, absmax, search);
    }
    let mut best = scale_for(format, absmax, 1.0);
    if !search {
        return best;
    }
    let mut best_err = squared_error(format, table, values, best);
    for i in 1..=50 {
        let s = scale_for(format, absmax, (100 - i) as f64 / 100.0);
        let err = squared_error(format, table, values, s);
        if err < best_err {
            (best, best_err) = (s, err);
        }
    }
    best
}

/// The power-of-two scale with the least squared error (see the module docs): candidates
/// `2^(e₀ − 3) ..= 2^e₀`, and with `search` the searched ratios' scales rounded down and up to
/// powers of two. Ties keep the larger exponent (less clipping).
fn choose_pow2_scale(format: Format, table: &[f32], values: &[f32], absmax: f32, search: bool) -> f32 {
    let top = pow2_ceil(scale_for(format, absmax, 1.0));
    let mut candidates: Vec<f32> = (0..4).map(|i| top / (1u32 << i) as f32).collect();
    if search {
        for i in 1..=50 {
            let s = scale_for(format, absmax, (100 - i) as f64 / 100.0);
            candidates.extend([pow2_floor(s), pow2_ceil(s)]);
        }
    }
    // Largest first, so that a tie keeps the larger exponent.
    candidates.retain(|s| s.is_finite() && *s > 0.0 && (format.max_value() as f32 * s).is_finite());
    candidates.sort_by(|a, b| b.total_cmp(a));
    candidates.dedup();
    let mut best = (f64::INFINITY, top);
    for s in candidates {
        let err = squared_error(format, table, values, s);
        if err < best.0 {
            best = (err, s);
        }
    }
    best.1
}

/// The largest power of two ≤ `s` (a positive finite f32; subnormals round to the smallest
/// normal power of two).
fn pow2_floor(s: f32) -> f32 {
    f32::from_bits(s.to_bits() & 0x7f80_0000).max(f32::MIN_POSITIVE)
}

/// The smallest power of two ≥ `s` (a positive finite f32), saturating at `2^127`.
fn pow2_ceil(s: f32) -> f32 {
    let floor = pow2_floor(s);
    if floor >= s || floor == f32::from_bits(0x7f00_0000) {
        floor
    } else {
        floor * 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{quantize, QuantConfig};
    use fpx_test_support::Rng;

    /// Power-of-two scales: every scale is an exact power of two, and it is the exponent with
    /// the least error among every exponent that could matter (checked exhaustively over a wide
    /// range, not only the candidates), for every format, on random and heavy-tailed groups.
    #[test]
    fn pow2_scales_pick_the_error_minimising_exponent() {
        let mut rng = Rng::new(44);
        for format in Format::ALL {
            let table = decode_table(format);
            for trial in 0..40 {
                let mut w = rng.normals(64);
                if trial % 2 == 1 {
                    w[trial % 64] *= 12.0; // an outlier: clipping it may pay
                }
                let scale = 10f32.powi(trial as i32 % 7 - 3);
                w.iter_mut().for_each(|v| *v *= scale);
                let absmax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                for search in [false, true] {
                    let s = choose_scale(format, &table, &w, absmax, search, true);
                    assert_eq!(s.to_bits() & 0x007f_ffff, 0, "{format}: {s} is not a power of two");
                    let err = squared_error(format, &table, &w, s);
                    let e = s.log2().round() as i32;
                    // Exponents from far below (heavy clipping) to far above (coarse steps).
                    for other in e - 12..=e + 12 {
                        let t = 2f32.powi(other);
                        if !(format.max_value() as f32 * t).is_finite() {
                            continue;
                        }
                        let other_err = squared_error(format, &table, &w, t);
                        assert!(err <= other_err * (1.0 + 1e-12), "{format} trial {trial}: 2^{e} err {err} > 2^{other} err {other_err}");
                    }
                    // Never worse than no clipping at all (the smallest non-clipping power of two).
                    let no_clip = pow2_ceil(scale_for(format, absmax, 1.0));
                    assert!(err <= squared_error(format, &table, &w, no_clip));
                }
            }
        }
        assert_eq!((pow2_floor(3.0), pow2_ceil(3.0), pow2_floor(4.0), pow2_ceil(4.0)), (2.0, 4.0, 4.0, 4.0));
        assert_eq!((pow2_floor(0.75), pow2_ceil(0.75)), (0.5, 1.0));
    }

    /// Through `quantize`: every stored scale of a pow-2 quantization is a power of two, the
    /// error is at most twice the absmax error's (a scale at most 2× off), and the scales
    /// folded with the format's storage factor stay powers of two (the bias shift is one too).
    #[test]
    fn pow2_quantization_keeps_powers_of_two_after_folding() {
        let mut rng = Rng::new(45);
        let (k, n) = (96, 40);
        let w = rng.normals(k * n);
        for format in [Format::Fp4E2M1, Format::Fp6E3M2, Format::Fp6E2M3, Format::Fp8E4M3] {
            for group_size in [None, Some(32)] {
                let plain = quantize("w", &w, k, n, &QuantConfig { group_size, ..QuantConfig::new(format) }).unwrap();
                let p2 = quantize("w", &w, k, n, &QuantConfig { group_size, pow2_scales: true, ..QuantConfig::new(format) }).unwrap();
                for s in &p2.scales {
                    assert_eq!(s.to_bits() & 0x007f_ffff, 0, "{format}: scale {s}");
                    let folded = s * crate::fold::storage_factor(format);
                    assert_eq!(folded.to_bits() & 0x007f_ffff, 0, "{format}: folded scale {folded}");
                }
                let (e_plain, e_p2) = (plain.relative_rmse(&w), p2.relative_rmse(&w));
                assert!(e_p2 <= 2.0 * e_plain + 1e-9, "{format} {group_size:?}: pow2 {e_p2} vs absmax {e_plain}");
            }
        }
    }
}
