//! Scales and quantization of a MatMul weight.
//!
//! The weight is the ONNX MatMul right operand `w: [k][n]` (row-major); each column is one
//! output channel. Each (group, channel) gets a scale `s` and each weight the code
//! `format.encode(w / s)`; the dequantized value is `decode(code) * s`.
//!
//! - absmax: `s = absmax / format.max_value()` over the (group, channel), so the largest
//!   weight maps onto the format's largest value; an all-zero group/channel gets `s = 1`.
//! - scale search (`scale_search: true`): clipping ratios `r = 1.00, 0.99, ..., 0.50`
//!   (`s = r * absmax / max`) are tried and the one with the least squared error of the
//!   dequantized values is kept (ties: the larger `r`). `r = 1` is absmax, so the search is
//!   never worse than absmax.
//! - power-of-two scales (`pow2_scales: true`, ZeroQuant-FP's constraint, so that scaling is an
//!   exponent add): `s = 2^e`, with `e` the exponent among `e₀ − 3 ..= e₀` (`2^e₀` the smallest
//!   power of two ≥ the absmax scale, so `e₀` never clips) whose dequantized values have the
//!   least squared error (ties: the larger `e`). Combined with the scale search, the exponents
//!   of the searched ratios' scales, rounded both ways, are candidates too.
//! - groups: `group_size: None` is one group over all of K (per-channel, "coarse grain");
//!   `Some(g)` splits K into `ceil(k / g)` groups of `g` rows, the last possibly shorter.

use crate::channel_major::{channel_block_into, WeightValues};
use crate::layout::{PackedShape, TilePacker, TILE_N};
use crate::scale_choice::{choose_scale, decode_table};
use crate::{Format, QuantError};

/// How to quantize a weight matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantConfig {
    /// The code format.
    pub format: Format,
    /// Rows of K per scale group; `None` = one scale per output channel.
    pub group_size: Option<usize>,
    /// Search clipping ratios for the least-squared-error scale instead of plain absmax.
    pub scale_search: bool,
    /// Constrain every scale to a power of two (the exponent with the least error).
    pub pow2_scales: bool,
}

impl QuantConfig {
    /// `format` with one absmax scale per output channel.
    pub fn new(format: Format) -> QuantConfig {
        QuantConfig { format, group_size: None, scale_search: false, pow2_scales: false }
    }
}

/// A quantized weight: codes in output-channel-major order plus the real scales.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedMatrix {
    /// The code format.
    pub format: Format,
    /// Reduction length (rows of the original `[k][n]` weight).
    pub k: usize,
    /// Output channels (columns of the original weight).
    pub n: usize,
    /// The group size used (`None` = per-channel).
    pub group_size: Option<usize>,
    /// Codes, `[n][k]` row-major (transposed relative to the weight, ready for [`crate::layout::pack`]).
    pub codes: Vec<u8>,
    /// Scales, `[groups][n]`: the real per-(group, channel) scale, no bias-shift factor folded in.
    pub scales: Vec<f32>,
}

/// Quantizes the MatMul weight `w` (`[k][n]` row-major, channel = column) named
/// `tensor_name` (used in errors). Fails on a length mismatch or empty dimension, on a
/// group size of 0, and on any NaN/inf weight (reporting the first, in row-major order).
pub fn quantize(tensor_name: &str, w: &[f32], k: usize, n: usize, cfg: &QuantConfig) -> Result<QuantizedMatrix, QuantError> {
    check_weight(tensor_name, w, k, n, cfg)?;
    Ok(quantize_values(tensor_name, WeightValues::F32(w), WeightLayout::InputMajor, k, n, cfg, Vec::new())?.0)
}

/// [`quantize`] for a weight already channel-major: `wt` is `[n][k]` (an ONNX Gemm's `transB`
/// weight, an embedding table), so no transposed copy is made. Also returns the relative RMS
/// error of the dequantized weight ([`QuantizedMatrix::relative_rmse`]), computed as the codes
/// are chosen. Channels are quantized in parallel.
pub fn quantize_channels(
    tensor_name: &str,
    wt: &[f32],
    k: usize,
    n: usize,
    cfg: &QuantConfig,
) -> Result<(QuantizedMatrix, f64), QuantError> {
    quantize_values(tensor_name, WeightValues::F32(wt), WeightLayout::ChannelMajor, k, n, cfg, Vec::new())
}

/// How a weight's values are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[k][n]` row-major, as an ONNX MatMul's right operand: a channel is a column.
    InputMajor,
    /// `[n][k]`, each channel's weights contiguous (a Gemm's `transB` weight, an embedding table).
    ChannelMajor,
}

/// Quantizes the `k × n` weight `w` as stored (f32, or FP16/BF16/f32 little-endian bytes, in
/// either layout) like [`quantize_channels`], codes into the reused `codes`. Blocks of channels
/// are converted and transposed into a cache-sized buffer, checked and encoded there, in
/// parallel: no channel-major f32 copy of the whole weight is made, so each value crosses
/// memory once. A non-finite value is reported at its `[k][n]` position, the first in channel
/// order.
pub fn quantize_values(
    tensor_name: &str,
    w: WeightValues<'_>,
    layout: WeightLayout,
    k: usize,
    n: usize,
    cfg: &QuantConfig,
    codes: Vec<u8>,
) -> Result<(QuantizedMatrix, f64), QuantError> {
    check_shape(tensor_name, w.len(), k, n, cfg)?;
    let mut codes = codes;
    // Every code is written, so a reused buffer needs no clearing.
    if codes.len() >= n * k {
        codes.truncate(n * k);
    } else {
        codes.resize(n * k, 0);
    }
    let (mut q, rel_rmse) = quantize_blocks(tensor_name, &w, layout, k, n, cfg, CodesOut::Codes(&mut codes))?;
    q.codes = codes;
    Ok((q, rel_rmse))
}

/// [`quantize_values`] that packs as it goes: each block's codes are packed into the 4+2
/// planes ([`crate::layout::pack`]'s bytes, written into the reused `packed`) while they are
/// still in cache, and no `[n][k]` code array is made. Returns the matrix's scales and shape
/// with its `codes` empty (they are in the packed bytes), the packed bytes and the relative
/// RMS error.
pub fn quantize_values_packed(
    tensor_name: &str,
    w: WeightValues<'_>,
    layout: WeightLayout,
    k: usize,
    n: usize,
    cfg: &QuantConfig,
    mut packed: Vec<u8>,
) -> Result<(QuantizedMatrix, Vec<u8>, f64), QuantError> {
    check_shape(tensor_name, w.len(), k, n, cfg)?;
    let shape = PackedShape::new(n, k, cfg.format.bits());
    let packer = TilePacker::new(&shape);
    if packer.high_row_bytes() == 0 {
        // 4-bit codes: a low plane only; quantized, then packed.
        let (mut q, rel_rmse) = quantize_values(tensor_name, w, layout, k, n, cfg, Vec::new())?;
        crate::layout::pack_into(&q.codes, &shape, &mut packed);
        q.codes = Vec::new();
        return Ok((q, packed, rel_rmse));
    }
    packer.size(&mut packed);
    let (q, rel_rmse) = quantize_blocks(tensor_name, &w, layout, k, n, cfg, CodesOut::Packed(&packer, &mut packed))?;
    Ok((q, packed, rel_rmse))
}

/// The checks every entry point makes: a non-empty `k × n` weight of `len` values and a group
/// size other than 0.
fn check_shape(tensor_name: &str, len: usize, k: usize, n: usize, cfg: &QuantConfig) -> Result<(), QuantError> {
    let shape_error = |message: String| QuantError::Shape { tensor: tensor_name.to_string(), message };
    if k == 0 || n == 0 {
        return Err(shape_error(format!("weight shape [{k}, {n}] has an empty dimension")));
    }
    if k.checked_mul(n) != Some(len) {
        return Err(shape_error(format!("weight has {len} values, expected {k} x {n}")));
    }
    if cfg.group_size == Some(0) {
        return Err(QuantError::BadGroupSize { tensor: tensor_name.to_string(), group: 0, k });
    }
    Ok(())
}

/// [`check_shape`], and finite values (the first bad one reported in row-major `[k][n]` order).
fn check_weight(tensor_name: &str, w: &[f32], k: usize, n: usize, cfg: &QuantConfig) -> Result<(), QuantError> {
    check_shape(tensor_name, w.len(), k, n, cfg)?;
    use rayon::prelude::*;
    // Chunks in parallel (one value per task would cost more than the test), each tested with
    // a fold rather than a short-circuiting `any` so that it vectorizes.
    const CHUNK: usize = 1 << 16;
    let bad_chunk = w.par_chunks(CHUNK).position_first(|c| !all_finite(c));
    if let Some(i) = bad_chunk.map(|c| c * CHUNK + w[c * CHUNK..].iter().position(|v| !v.is_finite()).expect("a non-finite value")) {
        return Err(QuantError::NonFinite { tensor: tensor_name.to_string(), row: i / n, col: i % n, value: w[i] });
    }
    Ok(())
}

/// Whether every value is finite (a fold, so that it vectorizes).
fn all_finite(values: &[f32]) -> bool {
    values.iter().fold(true, |ok, v| ok & v.is_finite())
}

/// Channels converted and quantized per parallel task: each task's f32 block (`k` values a
/// channel) stays in cache between conversion and encoding, and 64 FP16 channels are two
/// 64-byte lines of each stored row (measured best of 32, 64 and 128 on LLaMA shapes).
const CHANNELS_PER_TASK: usize = 64;

/// One channel's result: its scales (one per group), squared error and norm, and its first
/// non-finite value (row, value), if any.
type ChannelResult = (Vec<f32>, f64, f64, Option<(usize, f32)>);

/// Where [`quantize_blocks`] puts the codes.
enum CodesOut<'a> {
    /// `[n][k]` codes.
    Codes(&'a mut [u8]),
    /// Packed by rows of tiles as each block is done (its codes still in cache), into the
    /// 4+2 planes `packed` (`total_bytes()` long; codes of more than 4 bits, so that the high
    /// plane has bytes in every row of tiles).
    Packed(&'a TilePacker, &'a mut [u8]),
}

/// Quantizes the shape-checked weight block by block: codes (or packed codes) into `out`,
/// scales and the relative RMS error (the returned matrix's `codes` are empty), or the error
/// of the first non-finite value in channel order.
fn quantize_blocks(
    tensor_name: &str,
    w: &WeightValues<'_>,
    layout: WeightLayout,
    k: usize,
    n: usize,
    cfg: &QuantConfig,
    out: CodesOut<'_>,
) -> Result<(QuantizedMatrix, f64), QuantError> {
    use rayon::prelude::*;
    let format = cfg.format;
    let group = cfg.group_size.unwrap_or(k);
    let groups = k.div_ceil(group);
    let table = decode_table(format);
    let fast = crate::encode::FloatEncoder::new(format);
    let quantize_channel = |codes: &mut [u8], w: &[f32]| -> ChannelResult {
        let (mut err, mut norm) = (0f64, 0f64);
        let mut scales = Vec::with_capacity(groups);
        for (codes, values) in codes.chunks_mut(group).zip(w.chunks(group)) {
            // One pass finds the group's absmax and whether it is all finite.
            let (absmax, finite) = values.iter().fold((0f32, true), |(m, ok), v| (m.max(v.abs()), ok & v.is_finite()));
            if !finite {
                let row = w.iter().position(|v| !v.is_finite()).expect("a non-finite value");
                return (vec![1.0; groups], 0.0, 0.0, Some((row, w[row])));
            }
            let s = choose_scale(format, &table, values, absmax, cfg.scale_search, cfg.pow2_scales);
            scales.push(s);
            let (e, n) = if let Some(fast) = &fast {
                fast.encode_scaled(values, s, codes)
            } else if matches!(format, Format::Int4 | Format::Int8) {
                crate::encode::encode_int_scaled(format, values, s, codes)
            } else {
                let (mut e, mut n) = (0f64, 0f64);
                for (code, &v) in codes.iter_mut().zip(values) {
                    *code = format.encode(v / s);
                    let d = v as f64 - (table[*code as usize] * s) as f64;
                    e += d * d;
                    n += v as f64 * v as f64;
                }
                (e, n)
            };
            err += e;
            norm += n;
        }
        (scales, err, norm, None)
    };
    // A block of channels converted into `buffer` (unless it is f32 channel-major already)
    // and quantized into `codes`: per channel, in order.
    let quantize_block = |block: usize, codes: &mut [u8], buffer: &mut Vec<f32>| -> Vec<ChannelResult> {
        let (c0, width) = (block * CHANNELS_PER_TASK, codes.len() / k);
        let values: &[f32] = match (w, layout) {
            (WeightValues::F32(v), WeightLayout::ChannelMajor) => &v[c0 * k..(c0 + width) * k],
            _ => {
                buffer.resize(width * k, 0.0);
                channel_block_into(w, k, n, layout == WeightLayout::ChannelMajor, c0, width, &mut buffer[..width * k]);
                &buffer[..width * k]
            }
        };
        codes.chunks_mut(k).zip(values.chunks(k)).map(|(codes, w)| quantize_channel(codes, w)).collect()
    };
    let per_block: Vec<Vec<ChannelResult>> = match out {
        CodesOut::Codes(codes) => codes
            .par_chunks_mut(k * CHANNELS_PER_TASK)
            .enumerate()
            .map_init(Vec::new, |buffer, (block, codes)| quantize_block(block, codes, buffer))
            .collect(),
        CodesOut::Packed(packer, packed) => {
            // Two rows of tiles a block; each block's codes go to a scratch buffer of the task's.
            const ROWS: usize = CHANNELS_PER_TASK / TILE_N;
            let (low, high) = packed.split_at_mut(packer.low_row_bytes() * n.div_ceil(TILE_N));
            low.par_chunks_mut(packer.low_row_bytes() * ROWS)
                .zip(high.par_chunks_mut(packer.high_row_bytes() * ROWS))
                .enumerate()
                .map_init(
                    || (Vec::new(), Vec::new()),
                    |(buffer, codes): &mut (Vec<f32>, Vec<u8>), (block, (low, high))| {
                        let width = CHANNELS_PER_TASK.min(n - block * CHANNELS_PER_TASK);
                        codes.resize(width * k, 0);
                        let result = quantize_block(block, &mut codes[..width * k], buffer);
                        for row in 0..ROWS {
                            let nt = block * ROWS + row;
                            if nt * TILE_N >= n {
                                break;
                            }
                            let low = &mut low[row * packer.low_row_bytes()..(row + 1) * packer.low_row_bytes()];
                            let high = &mut high[row * packer.high_row_bytes()..(row + 1) * packer.high_row_bytes()];
                            packer.pack_tile_row(nt, codes, block * CHANNELS_PER_TASK, low, high);
                        }
                        result
                    },
                )
                .collect()
        }
    };
    let mut scales = vec![0f32; groups * n];
    let (mut err, mut norm) = (0f64, 0f64);
    for (col, (s, e, w, non_finite)) in per_block.into_iter().flatten().enumerate() {
        if let Some((row, value)) = non_finite {
            return Err(QuantError::NonFinite { tensor: tensor_name.to_string(), row, col, value });
        }
        for (gi, s) in s.into_iter().enumerate() {
            scales[gi * n + col] = s;
        }
        err += e;
        norm += w;
    }
    let rel_rmse = if norm == 0.0 { 0.0 } else { (err / norm).sqrt() };
    Ok((QuantizedMatrix { format, k, n, group_size: cfg.group_size, codes: Vec::new(), scales }, rel_rmse))
}

impl QuantizedMatrix {
    /// Number of scale groups along K: `ceil(k / group_size)`, or 1 per-channel.
    pub fn groups(&self) -> usize {
        match self.group_size {
            None => 1,
            Some(g) => self.k.div_ceil(g),
        }
    }

    /// The scale applying to weight (`row_k`, `col_n`) of the original `[k][n]` matrix.
    pub fn scale(&self, row_k: usize, col_n: usize) -> f32 {
        let group = self.group_size.map_or(0, |g| row_k / g);
        self.scales[group * self.n + col_n]
    }

    /// The dequantized weight, `[k][n]` like the original: `decode(code) * scale` in f32
    /// (exactly what a reference kernel computes).
    pub fn dequantize(&self) -> Vec<f32> {
        let table = decode_table(self.format);
        let mut out = vec![0f32; self.k * self.n];
        for col in 0..self.n {
            for row in 0..self.k {
                let code = self.codes[col * self.k + row];
                out[row * self.n + col] = table[(code & self.format.code_mask()) as usize] * self.scale(row, col);
            }
        }
        out
    }

    /// Relative RMS error against the original weight `w` (`[k][n]`):
    /// `sqrt(sum (w - dq)^2 / sum w^2)`, 0 if `w` is all zero. Panics if `w.len() != k * n`.
    pub fn relative_rmse(&self, w: &[f32]) -> f64 {
        assert_eq!(w.len(), self.k * self.n, "relative_rmse: weight length mismatch");
        let (mut err, mut norm) = (0f64, 0f64);
        for (&a, &b) in w.iter().zip(&self.dequantize()) {
            let d = a as f64 - b as f64;
            err += d * d;
            norm += a as f64 * a as f64;
        }
        if norm == 0.0 {
            0.0
        } else {
            (err / norm).sqrt()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpx_test_support::Rng;

    fn cfg(format: Format, group_size: Option<usize>, scale_search: bool) -> QuantConfig {
        QuantConfig { format, group_size, scale_search, pow2_scales: false }
    }

    /// Half the gap between the representable neighbours around `q` (|q| <= max).
    fn half_gap(format: Format, q: f64) -> f64 {
        let mut values: Vec<f64> = format.codes().map(|c| format.decode(c) as f64).collect();
        values.sort_by(f64::total_cmp);
        values.dedup();
        let i = values.partition_point(|&v| v <= q);
        if i == 0 || i == values.len() {
            return 0.0; // q is ±max exactly
        }
        (values[i] - values[i - 1]) / 2.0
    }

    #[test]
    fn error_is_at_most_half_a_step() {
        let mut rng = Rng::new(1);
        for format in Format::ALL {
            for (group, search) in [(None, false), (Some(16), false), (None, true)] {
                let (k, n) = (64, 24);
                let w = rng.normals(k * n);
                let q = quantize("w", &w, k, n, &cfg(format, group, search)).unwrap();
                assert_eq!(q.codes.len(), n * k);
                assert_eq!(q.scales.len(), q.groups() * n);
                let dq = q.dequantize();
                for row in 0..k {
                    for col in 0..n {
                        let s = q.scale(row, col);
                        let x = w[row * n + col] / s;
                        let code = q.codes[col * k + row];
                        assert!(format.is_valid_code(code));
                        let v = format.decode(code);
                        assert_eq!(dq[row * n + col], v * s);
                        if (x.abs() as f64) <= format.max_value() {
                            let err = (v as f64 - x as f64).abs();
                            assert!(err <= half_gap(format, x as f64), "{format} x={x} v={v}");
                        } else {
                            // Clipping, or absmax / (absmax / max) rounding a hair above max.
                            let rounding = (x.abs() as f64) <= format.max_value() * (1.0 + 1e-6);
                            assert!(search || rounding, "{format}: {x} beyond max");
                            assert_eq!(v.abs() as f64, format.max_value());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn absmax_scales() {
        let (k, n) = (3, 2);
        let w = [1.0, -0.5, -2.8, 0.25, 0.5, 0.0];
        let q = quantize("w", &w, k, n, &cfg(Format::Fp6E3M2, None, false)).unwrap();
        assert_eq!(q.scales, [0.1, 0.5 / 28.0]);
        // The channel's absmax weight maps to ±max exactly.
        // codes are [n][k]: codes[1] is channel 0, row 1 (-2.8); codes[3] channel 1, row 0 (-0.5).
        assert_eq!(q.codes[1], Format::Fp6E3M2.encode(-28.0));
        assert_eq!(q.codes[3], Format::Fp6E3M2.encode(-28.0));
        assert_eq!(q.codes[4], Format::Fp6E3M2.encode(14.0));
    }

    #[test]
    fn scale_search_never_worse_and_helps_heavy_tails() {
        let mut rng = Rng::new(2);
        let (k, n) = (256, 32);
        let gaussian = rng.normals(k * n);
        let mut heavy = rng.normals(k * n);
        for v in heavy.iter_mut() {
            if rng.below(100) == 0 {
                *v *= 12.0; // a few outliers per channel
            }
        }
        for format in Format::ALL {
            for group in [None, Some(64)] {
                for (name, w) in [("gaussian", &gaussian), ("heavy", &heavy)] {
                    let plain = quantize("w", w, k, n, &cfg(format, group, false)).unwrap();
                    let searched = quantize("w", w, k, n, &cfg(format, group, true)).unwrap();
                    // Per (group, channel): never worse.
                    let (dp, ds) = (plain.dequantize(), searched.dequantize());
                    let g = group.unwrap_or(k);
                    for col in 0..n {
                        for gi in 0..k.div_ceil(g) {
                            let err = |dq: &[f32]| -> f64 {
                                (gi * g..((gi + 1) * g).min(k)).map(|r| (w[r * n + col] as f64 - dq[r * n + col] as f64).powi(2)).sum()
                            };
                            assert!(err(&ds) <= err(&dp), "{format} {name} col {col} group {gi}");
                        }
                    }
                    let (ep, es) = (plain.relative_rmse(w), searched.relative_rmse(w));
                    assert!(es <= ep, "{format} {name} {group:?}: {es} > {ep}");
                    if name == "heavy" {
                        assert!(es < ep, "{format} heavy {group:?}: search should help ({es} vs {ep})");
                    }
                }
            }
        }
    }

    #[test]
    fn non_finite_weights_are_named() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut w = vec![0.5f32; 4 * 3];
            w[2 * 3 + 1] = bad;
            w[3 * 3 + 2] = bad; // only the first is reported
            let err = quantize("layer.0.weight", &w, 4, 3, &cfg(Format::Fp6E3M2, None, false)).unwrap_err();
            match &err {
                QuantError::NonFinite { tensor, row, col, value } => {
                    assert_eq!((tensor.as_str(), *row, *col), ("layer.0.weight", 2, 1));
                    assert_eq!(value.to_bits(), bad.to_bits());
                }
                e => panic!("unexpected {e:?}"),
            }
            let msg = err.to_string();
            assert!(msg.contains("layer.0.weight") && msg.contains("[2, 1]"), "{msg}");
        }
    }

    #[test]
    fn bad_group_and_shapes_rejected() {
        let w = vec![1.0f32; 12];
        let err = quantize("t", &w, 4, 3, &cfg(Format::Int4, Some(0), false)).unwrap_err();
        assert!(matches!(err, QuantError::BadGroupSize { group: 0, k: 4, .. }), "{err:?}");
        assert!(err.to_string().contains("'t'"));
        let err = quantize("t", &w, 5, 3, &cfg(Format::Int4, None, false)).unwrap_err();
        assert!(matches!(err, QuantError::Shape { .. }), "{err:?}");
        assert!(err.to_string().contains("12 values"), "{err}");
        let err = quantize("t", &[], 0, 3, &cfg(Format::Int4, None, false)).unwrap_err();
        assert!(matches!(err, QuantError::Shape { .. }), "{err:?}");
        // A group larger than K is one group.
        let q = quantize("t", &w, 4, 3, &cfg(Format::Int4, Some(1000), false)).unwrap();
        assert_eq!(q.groups(), 1);
    }

    #[test]
    fn channel_major_input_gives_the_same_codes_scales_and_error() {
        let mut rng = Rng::new(41);
        // More channels than one parallel task takes, a ragged last group, scale search on and off.
        for (k, n, group, search) in [(70, 150, Some(32), false), (64, 129, None, true), (33, 1, Some(8), true)] {
            let w: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
            let mut wt = vec![0f32; k * n];
            for r in 0..k {
                for c in 0..n {
                    wt[c * k + r] = w[r * n + c];
                }
            }
            for format in [Format::Fp6E3M2, Format::Fp6E2M3, Format::Int4] {
                let c = cfg(format, group, search);
                let a = quantize("w", &w, k, n, &c).unwrap();
                let (b, e) = quantize_channels("w", &wt, k, n, &c).unwrap();
                assert_eq!(a, b, "{format:?} k={k} n={n}");
                // Into buffers left over from other weights, shorter and longer, full of other codes.
                for reused in [vec![0xaa; 5], vec![0x55; k * n + 17]] {
                    let (r, re) = quantize_values("w", WeightValues::F32(&wt), WeightLayout::ChannelMajor, k, n, &c, reused).unwrap();
                    assert_eq!((r, re), (b.clone(), e), "{format:?} k={k} n={n} reused");
                }
                let reference = a.relative_rmse(&w);
                // The encoder sums in f32 blocks: about 1e-6 relative.
                assert!((e - reference).abs() <= 1e-6 * reference, "{format:?}: {e} vs {reference}");
                assert!(e > 0.0);
            }
        }
        let mut bad = vec![0.5f32; 6];
        bad[4] = f32::NAN;
        // [n=2][k=3]: element 4 is channel 1, row 1.
        let err = quantize_channels("w", &bad, 3, 2, &cfg(Format::Fp6E3M2, None, false)).unwrap_err().to_string();
        assert!(err.contains('w') && err.contains("NaN"), "{err}");
    }

    #[test]
    fn stored_16_bit_and_f32_values_in_either_layout_quantize_as_their_f32_channels() {
        use half::{bf16, f16};
        let mut rng = Rng::new(43);
        // Whole 8 × 8 tiles, ragged rows and channels, more channels than one task takes.
        for (k, n) in [(64, 96), (70, 75), (9, 200), (3, 5)] {
            let w: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
            let h: Vec<u8> = w.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
            let b: Vec<u8> = w.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect();
            let le: Vec<u8> = w.iter().flat_map(|&v| v.to_le_bytes()).collect();
            let as_f32 = |bytes: &[u8], half: bool| -> Vec<f32> {
                bytes
                    .chunks_exact(2)
                    .map(|p| {
                        let bits = u16::from_le_bytes([p[0], p[1]]);
                        if half {
                            f16::from_bits(bits).to_f32()
                        } else {
                            bf16::from_bits(bits).to_f32()
                        }
                    })
                    .collect()
            };
            let cases = [
                ("f16", WeightValues::F16(&h), as_f32(&h, true)),
                ("bf16", WeightValues::Bf16(&b), as_f32(&b, false)),
                ("f32 bytes", WeightValues::F32Le(&le), w.clone()),
                ("f32", WeightValues::F32(&w), w.clone()),
            ];
            for (name, values, floats) in cases {
                for layout in [WeightLayout::InputMajor, WeightLayout::ChannelMajor] {
                    // The same values read as [k][n] or as [n][k] (then their transpose is [k][n]).
                    let (kk, nn) = if layout == WeightLayout::InputMajor { (k, n) } else { (n, k) };
                    let mut wt = vec![0f32; k * n];
                    for r in 0..kk {
                        for c in 0..nn {
                            if layout == WeightLayout::InputMajor {
                                wt[c * kk + r] = floats[r * nn + c];
                            } else {
                                wt[c * kk + r] = floats[c * kk + r];
                            }
                        }
                    }
                    let c = cfg(Format::Fp6E3M2, None, false);
                    let want = quantize_channels("w", &wt, kk, nn, &c).unwrap();
                    let got = quantize_values("w", values, layout, kk, nn, &c, vec![0x77; 3]).unwrap();
                    assert_eq!(got, want, "{name} {layout:?} [{k}][{n}]");
                }
            }
        }
        // A NaN at [k=5][n=2] position (3, 1) of an input-major FP16 weight is reported there.
        let mut w = [f16::from_f32(0.25); 10];
        w[3 * 2 + 1] = f16::NAN;
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let err =
            quantize_values("w", WeightValues::F16(&bytes), WeightLayout::InputMajor, 5, 2, &cfg(Format::Fp6E3M2, None, false), Vec::new())
                .unwrap_err();
        assert!(matches!(err, QuantError::NonFinite { row: 3, col: 1, .. }), "{err}");
    }

    #[test]
    fn packing_while_quantizing_gives_the_codes_packed_afterwards() {
        use half::f16;
        let mut rng = Rng::new(47);
        // Whole and cut tiles (n not a multiple of 16 or 32, k not of 32), one block and several.
        for (k, n) in [(64, 64), (70, 75), (33, 16), (5, 3), (96, 100)] {
            let w: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
            let h: Vec<u8> = w.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
            for format in Format::ALL {
                for (values, layout) in
                    [(WeightValues::F32(&w), WeightLayout::InputMajor), (WeightValues::F16(&h), WeightLayout::ChannelMajor)]
                {
                    let c = cfg(format, None, false);
                    let (want, want_e) = quantize_values("w", values, layout, k, n, &c, Vec::new()).unwrap();
                    let want_packed = crate::layout::pack(&want.codes, &PackedShape::new(n, k, format.bits()));
                    // Into reused buffers, shorter and longer, full of other bytes.
                    for reused in [vec![0xa5; 7], vec![0x5a; want_packed.len() + 9]] {
                        let (q, packed, e) = quantize_values_packed("w", values, layout, k, n, &c, reused).unwrap();
                        assert_eq!(packed, want_packed, "{format:?} {layout:?} [{k}][{n}]");
                        assert_eq!((&q.scales, q.codes.len(), e), (&want.scales, 0, want_e), "{format:?} {layout:?} [{k}][{n}]");
                    }
                }
            }
        }
        let mut bad = vec![0.5f32; 40 * 33];
        bad[7 * 33 + 20] = f32::INFINITY;
        let err = quantize_values_packed(
            "w",
            WeightValues::F32(&bad),
            WeightLayout::InputMajor,
            40,
            33,
            &cfg(Format::Fp6E2M3, None, false),
            Vec::new(),
        )
        .unwrap_err();
        assert!(matches!(err, QuantError::NonFinite { row: 7, col: 20, .. }), "{err}");
    }

    #[test]
    fn ragged_last_group() {
        let mut rng = Rng::new(5);
        let (k, n) = (100, 8);
        let mut w = rng.normals(k * n);
        // Make the last group (rows 96..100) of channel 3 much smaller than the rest.
        for r in 96..100 {
            w[r * n + 3] *= 0.01;
        }
        let format = Format::Fp6E3M2;
        let q = quantize("w", &w, k, n, &cfg(format, Some(32), false)).unwrap();
        assert_eq!(q.groups(), 4);
        assert_eq!(q.scales.len(), 4 * n);
        for col in 0..n {
            for gi in 0..4 {
                let rows = gi * 32..((gi + 1) * 32).min(k);
                let absmax = rows.clone().map(|r| w[r * n + col].abs()).fold(0f32, f32::max);
                assert_eq!(q.scales[gi * n + col], (absmax as f64 / 28.0) as f32);
                for r in rows {
                    assert_eq!(q.scale(r, col), q.scales[gi * n + col]);
                }
            }
        }
        assert!(q.scales[3 * n + 3] < 0.05 * q.scales[2 * n + 3]);
        assert!(q.relative_rmse(&w) < 0.1);
        let searched = quantize("w", &w, k, n, &cfg(format, Some(32), true)).unwrap();
        assert!(searched.relative_rmse(&w) <= q.relative_rmse(&w));
    }

    #[test]
    fn all_zero_channel() {
        let (k, n) = (8, 3);
        let mut w = vec![0f32; k * n];
        for r in 0..k {
            w[r * n] = r as f32 - 3.0;
            w[r * n + 2] = if r % 2 == 0 { -0.0 } else { 0.0 };
        }
        for format in Format::ALL {
            for search in [false, true] {
                let q = quantize("w", &w, k, n, &cfg(format, Some(4), search)).unwrap();
                assert!(q.codes[k..].iter().all(|&c| c == 0), "{format}");
                for gi in 0..2 {
                    assert_eq!(q.scales[gi * n + 1], 1.0);
                    assert_eq!(q.scales[gi * n + 2], 1.0);
                }
                let dq = q.dequantize();
                assert!(dq.iter().all(|v| v.is_finite()));
                for r in 0..k {
                    assert_eq!(dq[r * n + 1], 0.0);
                    assert_eq!(dq[r * n + 2], 0.0);
                }
            }
        }
        let q = quantize("w", &[0.0; 6], 2, 3, &cfg(Format::Fp6E3M2, None, true)).unwrap();
        assert_eq!(q.relative_rmse(&[0.0; 6]), 0.0);
    }

    #[test]
    fn tiny_and_huge_weights_stay_finite() {
        for format in Format::ALL {
            for search in [false, true] {
                let w = [f32::from_bits(1), -f32::from_bits(3), 1e-39, f32::MAX, -f32::MAX, 1.0];
                let q = quantize("w", &w, 3, 2, &cfg(format, Some(1), search)).unwrap();
                assert!(q.scales.iter().all(|s| s.is_finite() && *s > 0.0), "{format} {:?}", q.scales);
                assert!(q.dequantize().iter().all(|v| v.is_finite()), "{format}");
            }
        }
    }

    /// Relative RMSE of per-channel quantization of N(0, 1) weights of shape [384][384].
    fn gaussian_rmse(format: Format, search: bool) -> f64 {
        let mut rng = Rng::new(384);
        let w = rng.normals(384 * 384);
        let q = quantize("w", &w, 384, 384, &cfg(format, None, search)).unwrap();
        q.relative_rmse(&w)
    }

    #[test]
    fn fp6_beats_int4_on_gaussian_weights() {
        let e3m2 = gaussian_rmse(Format::Fp6E3M2, false);
        let int4 = gaussian_rmse(Format::Int4, false);
        assert!(e3m2 < 0.5 * int4, "e3m2 {e3m2} vs int4 {int4}");
        assert!((0.02..0.08).contains(&e3m2), "e3m2 {e3m2}");
        assert!(int4 > 0.1, "int4 {int4}");
    }

    /// Prints the table in the crate report: `cargo test -p fpx-quant -- --nocapture rmse_table`.
    #[test]
    fn rmse_table() {
        for format in Format::ALL {
            let (plain, searched) = (gaussian_rmse(format, false), gaussian_rmse(format, true));
            println!("{:>9}  absmax {plain:.4}  search {searched:.4}", format.name());
            assert!(searched <= plain);
        }
    }
}
