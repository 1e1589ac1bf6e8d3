//! Weights as f32 `[n][k]` (each output channel's weights contiguous), the layout codes are
//! chosen in, made in one parallel pass from the `[k][n]` weight as a model stores it:
//! f32, or FP16/BF16 little-endian bytes converted while they are transposed (no f32 copy of
//! the stored layout is made). The output buffer is the caller's, so a compile quantizing
//! hundreds of weights reuses one allocation instead of faulting in fresh pages per weight.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

/// A weight's values as stored: f32, or 16-bit floats as little-endian bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightValues<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// f32 values as little-endian bytes (ONNX's FP32 raw data, read from a file).
    F32Le(&'a [u8]),
    /// IEEE binary16, two little-endian bytes each (ONNX's FP16 raw data).
    F16(&'a [u8]),
    /// bfloat16, two little-endian bytes each.
    Bf16(&'a [u8]),
}

impl WeightValues<'_> {
    /// How many values.
    pub fn len(&self) -> usize {
        match self {
            WeightValues::F32(v) => v.len(),
            WeightValues::F32Le(b) => b.len() / 4,
            WeightValues::F16(b) | WeightValues::Bf16(b) => b.len() / 2,
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values `start..start + out.len()` as f32 into `out` (F16C where the CPU has it).
    fn convert(&self, start: usize, out: &mut [f32]) {
        match self {
            WeightValues::F32(v) => out.copy_from_slice(&v[start..start + out.len()]),
            WeightValues::F32Le(b) => {
                let bytes = &b[start * 4..(start + out.len()) * 4];
                for (o, s) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                }
            }
            WeightValues::F16(b) => half_chunks(&b[start * 2..(start + out.len()) * 2], out, f16::from_bits),
            WeightValues::Bf16(b) => half_chunks(&b[start * 2..(start + out.len()) * 2], out, bf16::from_bits),
        }
    }
}

/// Values converted per step of [`half_chunks`] (a stack buffer of 16-bit values).
const HALF_STEP: usize = 64;

/// Converts little-endian 16-bit floats `bytes` into `out`, [`HALF_STEP`] at a time through a
/// stack buffer (whose slice conversion uses F16C where the CPU has it).
fn half_chunks<T>(bytes: &[u8], out: &mut [f32], from_bits: fn(u16) -> T)
where
    T: Copy + Default,
    [T]: HalfFloatSliceExt,
{
    let mut buf = [T::default(); HALF_STEP];
    for (b, o) in bytes.chunks(HALF_STEP * 2).zip(out.chunks_mut(HALF_STEP)) {
        for (d, s) in buf.iter_mut().zip(b.chunks_exact(2)) {
            *d = from_bits(u16::from_le_bytes([s[0], s[1]]));
        }
        buf[..o.len()].convert_to_f32_slice(o);
    }
}

/// Makes `out` exactly `len` long without writing what will be overwritten (a reused buffer
/// is truncated; only a growing one is filled).
fn sized(out: &mut Vec<f32>, len: usize) {
    if out.len() >= len {
        out.truncate(len);
    } else {
        out.resize(len, 0.0);
    }
}

/// Channels per parallel task of the transpose.
const BLOCK: usize = 64;
/// Rows converted and written together: each channel gets 32 contiguous bytes per write.
const STRIP: usize = 8;

/// The `[k][n]` row-major weight `w` as `[n][k]` f32 in `out` (its old contents replaced):
/// blocks of 64 channels in parallel, eight rows at a time.
pub fn channel_major_into(w: WeightValues<'_>, k: usize, n: usize, out: &mut Vec<f32>) {
    assert_eq!(w.len(), k * n, "channel_major: {} values for [{k}][{n}]", w.len());
    sized(out, k * n);
    if out.is_empty() {
        return;
    }
    out.par_chunks_mut(k * BLOCK).enumerate().for_each(|(block, out)| {
        let c0 = block * BLOCK;
        let width = out.len() / k;
        let mut strip = [[0f32; BLOCK]; STRIP];
        let full = k - k % STRIP;
        for r0 in (0..full).step_by(STRIP) {
            for (i, row) in strip.iter_mut().enumerate() {
                w.convert((r0 + i) * n + c0, &mut row[..width]);
            }
            for j in 0..width {
                let dst: &mut [f32; STRIP] = (&mut out[j * k + r0..j * k + r0 + STRIP]).try_into().expect("a strip");
                *dst = std::array::from_fn(|i| strip[i][j]);
            }
        }
        for r in full..k {
            w.convert(r * n + c0, &mut strip[0][..width]);
            for j in 0..width {
                out[j * k + r] = strip[0][j];
            }
        }
    });
}

/// The `[k][n]` row-major weight `w` as `[n][k]` (each channel's weights contiguous).
pub fn channel_major(w: &[f32], k: usize, n: usize) -> Vec<f32> {
    let mut out = Vec::new();
    channel_major_into(WeightValues::F32(w), k, n, &mut out);
    out
}

/// `w` as f32 in the same order into `out` (its old contents replaced), in parallel: for a
/// weight stored channel-major already (a Gemm's `transB` weight).
pub fn to_f32_into(w: WeightValues<'_>, out: &mut Vec<f32>) {
    const CHUNK: usize = 1 << 16;
    sized(out, w.len());
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| w.convert(i * CHUNK, o));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 8.0
            })
            .collect()
    }

    fn transpose(w: &[f32], k: usize, n: usize) -> Vec<f32> {
        (0..n).flat_map(|c| (0..k).map(move |r| w[r * n + c])).collect()
    }

    #[test]
    fn transposes_f32_and_16_bit_weights_of_ragged_shapes() {
        for (k, n) in [(1, 1), (7, 3), (8, 64), (9, 65), (33, 130), (70, 200)] {
            let w = values(k * n, (k * 1000 + n) as u64);
            assert_eq!(channel_major(&w, k, n), transpose(&w, k, n), "f32 [{k}][{n}]");
            let le: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            let mut out = Vec::new();
            channel_major_into(WeightValues::F32Le(&le), k, n, &mut out);
            assert_eq!(out, transpose(&w, k, n), "f32 bytes [{k}][{n}]");
            to_f32_into(WeightValues::F32Le(&le), &mut out);
            assert_eq!(out, w, "f32 bytes as is");
            let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let hb: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
            let hf: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
            let b: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let bb: Vec<u8> = b.iter().flat_map(|v| v.to_le_bytes()).collect();
            let bf: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
            // A reused buffer, longer than needed and full of other values.
            let mut out = vec![f32::NAN; k * n + 5];
            channel_major_into(WeightValues::F16(&hb), k, n, &mut out);
            assert_eq!(out, transpose(&hf, k, n), "f16 [{k}][{n}]");
            channel_major_into(WeightValues::Bf16(&bb), k, n, &mut out);
            assert_eq!(out, transpose(&bf, k, n), "bf16 [{k}][{n}]");
            to_f32_into(WeightValues::F16(&hb), &mut out);
            assert_eq!(out, hf, "f16 as is");
            to_f32_into(WeightValues::Bf16(&bb), &mut out);
            assert_eq!(out, bf, "bf16 as is");
        }
    }

    #[test]
    fn special_16_bit_values_convert_exactly() {
        // Subnormals, infinities, NaN, signed zeros: every FP16 bit pattern.
        let all: Vec<u8> = (0..=u16::MAX).flat_map(|b| b.to_le_bytes()).collect();
        let mut out = Vec::new();
        to_f32_into(WeightValues::F16(&all), &mut out);
        for (bits, v) in (0..=u16::MAX).zip(&out) {
            let want = f16::from_bits(bits).to_f32();
            assert!(want.to_bits() == v.to_bits() || (want.is_nan() && v.is_nan()), "f16 {bits:#06x}: {v} vs {want}");
        }
        to_f32_into(WeightValues::Bf16(&all), &mut out);
        for (bits, v) in (0..=u16::MAX).zip(&out) {
            let want = bf16::from_bits(bits).to_f32();
            assert!(want.to_bits() == v.to_bits() || (want.is_nan() && v.is_nan()), "bf16 {bits:#06x}: {v} vs {want}");
        }
    }
}
