//! Weights as f32 `[n][k]` (each output channel's weights contiguous), the layout codes are
//! chosen in, made block by block of channels from the weight as a model stores it: f32, or
//! FP16/BF16 little-endian bytes converted while they are transposed. The quantizer converts
//! each block into a small buffer of its own just before encoding it
//! ([`crate::quantize_values`]), so no channel-major copy of a whole weight is made.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

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

    /// Bytes per stored value.
    fn value_bytes(&self) -> usize {
        match self {
            WeightValues::F32(_) | WeightValues::F32Le(_) => 4,
            WeightValues::F16(_) | WeightValues::Bf16(_) => 2,
        }
    }

    /// Where the stored values start.
    fn base_ptr(&self) -> *const u8 {
        match self {
            WeightValues::F32(v) => v.as_ptr().cast(),
            WeightValues::F32Le(b) | WeightValues::F16(b) | WeightValues::Bf16(b) => b.as_ptr(),
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

/// Channels per pass through the scalar transpose's stack strip.
const BLOCK: usize = 64;
/// Rows converted and written together: each channel gets 32 contiguous bytes per write.
const STRIP: usize = 8;

/// Channels `c0..c0 + width` of the weight `w` as f32 into `out` (`width` runs of `k` values,
/// `out.len() == width * k`): a quantizer's working block, converted (and transposed when the
/// weight is `[k][n]`) where it is used, so no channel-major copy of the whole weight is made.
/// `channel_major` says `w` is `[n][k]` already (a Gemm's `transB` weight).
pub fn channel_block_into(w: &WeightValues<'_>, k: usize, n: usize, channel_major: bool, c0: usize, width: usize, out: &mut [f32]) {
    assert!(
        w.len() == k * n && c0 + width <= n && out.len() == width * k,
        "channel_block_into: channels {c0}..{} of [{k}][{n}] into {}",
        c0 + width,
        out.len()
    );
    if channel_major {
        w.convert(c0 * k, out);
        return;
    }
    // Whole 8 × 8 tiles in registers where the CPU has AVX2 and F16C; the rest (ragged rows
    // and channels) through a stack strip.
    let (tiled_rows, tiled_channels) = x86::transpose_tiles(w, k, n, c0, width, out);
    let first = if tiled_channels == width { tiled_rows } else { 0 };
    transpose_rows(w, k, n, c0, first, out);
}

/// Rows `first..k` of the channels from `c0` that `out` holds (`out.len() / k` of them) into
/// `out`, eight rows at a time through a stack strip.
fn transpose_rows(w: &WeightValues<'_>, k: usize, n: usize, c0: usize, first: usize, out: &mut [f32]) {
    // Channels per pass through the strip.
    for (part, out) in out.chunks_mut(k * BLOCK).enumerate() {
        let (c0, width) = (c0 + part * BLOCK, out.len() / k);
        let mut strip = [[0f32; BLOCK]; STRIP];
        let full = first + (k - first) / STRIP * STRIP;
        for r0 in (first..full).step_by(STRIP) {
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
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    /// No vector transpose on this architecture: nothing done.
    pub(super) fn transpose_tiles(_: &super::WeightValues<'_>, _: usize, _: usize, _: usize, _: usize, _: &mut [f32]) -> (usize, usize) {
        (0, 0)
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    //! The transpose's hot loop in AVX2 + F16C: eight rows of eight channels are loaded (and
    //! converted to f32) as eight vectors, transposed in registers and stored as eight
    //! channels' runs of eight rows, 32 bytes each.
    use super::WeightValues;
    use std::arch::x86_64::*;

    /// Transposes the whole 8 × 8 tiles of channels `c0..c0 + width` of the `[k][n]` weight `w`
    /// into `out` (`width` channels of `k`), and returns how many rows and channels that covered
    /// (both multiples of 8; `(0, 0)` on a CPU without AVX2 and F16C).
    pub(super) fn transpose_tiles(w: &WeightValues<'_>, k: usize, n: usize, c0: usize, width: usize, out: &mut [f32]) -> (usize, usize) {
        let (rows, channels) = (k / 8 * 8, width / 8 * 8);
        if rows == 0 || channels == 0 || !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")) {
            return (0, 0);
        }
        assert!(w.len() == k * n && c0 + width <= n && out.len() >= width * k, "transpose_tiles: a block outside the weight");
        // SAFETY: the CPU has AVX2 and F16C (checked above), and every load and store is in
        // bounds: rows < k, channels c0 + j < c0 + width <= n, and out holds width * k values.
        unsafe { tiles(w, k, n, c0, rows, channels, out) };
        (rows, channels)
    }

    /// Eight values from index `at` of `w` as f32.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(w: &WeightValues<'_>, at: usize) -> __m256 {
        // SAFETY (all arms): the caller keeps at + 8 within w's values.
        unsafe {
            match w {
                WeightValues::F32(v) => _mm256_loadu_ps(v.as_ptr().add(at)),
                WeightValues::F32Le(b) => _mm256_loadu_ps(b.as_ptr().add(at * 4).cast()),
                WeightValues::F16(b) => _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(at * 2).cast())),
                WeightValues::Bf16(b) => {
                    let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(b.as_ptr().add(at * 2).cast()));
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wide))
                }
            }
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    unsafe fn tiles(w: &WeightValues<'_>, k: usize, n: usize, c0: usize, rows: usize, channels: usize, out: &mut [f32]) {
        let dst = out.as_mut_ptr();
        for r0 in (0..rows).step_by(8) {
            // The rows two strips ahead (a 64-byte line per 32 FP16 channels): the stride between
            // rows, a whole row of the weight, is one the hardware prefetcher follows late.
            if r0 + 24 <= rows {
                let bytes = w.value_bytes();
                for i in 16..24 {
                    for line in (0..channels * bytes).step_by(64) {
                        // SAFETY: prefetching is a hint; the address is within w (row < rows).
                        unsafe { _mm_prefetch::<_MM_HINT_T0>(w.base_ptr().add(((r0 + i) * n + c0) * bytes + line).cast()) };
                    }
                }
            }
            for j0 in (0..channels).step_by(8) {
                // SAFETY: rows r0..r0 + 8 <= k and channels c0 + j0 + 8 <= n (the caller's
                // bounds); the stores go to channels j0..j0 + 8 < width, rows r0..r0 + 8.
                unsafe {
                    let at = r0 * n + c0 + j0;
                    let r: [__m256; 8] = std::array::from_fn(|i| load8(w, at + i * n));
                    // Interleave pairs, then quads, then halves: the standard 8 × 8 transpose.
                    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                    let c = [
                        _mm256_permute2f128_ps::<0x20>(u0, u4),
                        _mm256_permute2f128_ps::<0x20>(u1, u5),
                        _mm256_permute2f128_ps::<0x20>(u2, u6),
                        _mm256_permute2f128_ps::<0x20>(u3, u7),
                        _mm256_permute2f128_ps::<0x31>(u0, u4),
                        _mm256_permute2f128_ps::<0x31>(u1, u5),
                        _mm256_permute2f128_ps::<0x31>(u2, u6),
                        _mm256_permute2f128_ps::<0x31>(u3, u7),
                    ];
                    for (j, v) in c.into_iter().enumerate() {
                        _mm256_storeu_ps(dst.add((j0 + j) * k + r0), v);
                    }
                }
            }
        }
    }
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

    /// All channels of `w` through [`channel_block_into`], in blocks of `width` (the last
    /// possibly narrower), each into a buffer full of other values first.
    fn blocks(w: WeightValues<'_>, k: usize, n: usize, channel_major: bool, width: usize) -> Vec<f32> {
        let mut out = Vec::new();
        for c0 in (0..n).step_by(width) {
            let mut block = vec![f32::NAN; width.min(n - c0) * k];
            channel_block_into(&w, k, n, channel_major, c0, block.len() / k, &mut block);
            out.extend(block);
        }
        out
    }

    #[test]
    fn transposes_f32_and_16_bit_weights_of_ragged_shapes() {
        for (k, n) in [(1, 1), (7, 3), (8, 64), (9, 65), (33, 130), (70, 200)] {
            let w = values(k * n, (k * 1000 + n) as u64);
            let le: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let hb: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
            let hf: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
            let b: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let bb: Vec<u8> = b.iter().flat_map(|v| v.to_le_bytes()).collect();
            let bf: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
            let cases = [
                ("f32", WeightValues::F32(&w), &w),
                ("f32 bytes", WeightValues::F32Le(&le), &w),
                ("f16", WeightValues::F16(&hb), &hf),
                ("bf16", WeightValues::Bf16(&bb), &bf),
            ];
            for (name, values, floats) in cases {
                // Whole-width blocks, blocks of 8 (each block's first channel c0 > 0) and of 24
                // (whole tiles and a ragged tail per block).
                for width in [n, 8, 24] {
                    assert_eq!(blocks(values, k, n, false, width), transpose(floats, k, n), "{name} [{k}][{n}] by {width}");
                    assert_eq!(&blocks(values, k, n, true, width), floats, "{name} as is, by {width}");
                }
            }
        }
    }

    #[test]
    fn every_16_bit_pattern_transposes_exactly_through_the_tiles() {
        // All 65,536 patterns as a [256][256] weight: whole 8 × 8 tiles (the AVX2 + F16C path
        // where the CPU has it), subnormals, infinities, NaNs, signed zeros.
        let all: Vec<u8> = (0..=u16::MAX).flat_map(|b| b.to_le_bytes()).collect();
        let same = |got: f32, want: f32| got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan());
        for (values, to_f32) in [
            (WeightValues::F16(&all), (|b| f16::from_bits(b).to_f32()) as fn(u16) -> f32),
            (WeightValues::Bf16(&all), |b| bf16::from_bits(b).to_f32()),
        ] {
            let out = blocks(values, 256, 256, false, 64);
            for r in 0..256 {
                for c in 0..256 {
                    let bits = (r * 256 + c) as u16;
                    assert!(same(out[c * 256 + r], to_f32(bits)), "{bits:#06x}: {} vs {}", out[c * 256 + r], to_f32(bits));
                }
            }
        }
    }

    #[test]
    fn special_16_bit_values_convert_exactly() {
        // Subnormals, infinities, NaN, signed zeros: every FP16 bit pattern.
        let all: Vec<u8> = (0..=u16::MAX).flat_map(|b| b.to_le_bytes()).collect();
        let out = blocks(WeightValues::F16(&all), 1, all.len() / 2, true, 4096);
        for (bits, v) in (0..=u16::MAX).zip(&out) {
            let want = f16::from_bits(bits).to_f32();
            assert!(want.to_bits() == v.to_bits() || (want.is_nan() && v.is_nan()), "f16 {bits:#06x}: {v} vs {want}");
        }
        let out = blocks(WeightValues::Bf16(&all), 1, all.len() / 2, true, 4096);
        for (bits, v) in (0..=u16::MAX).zip(&out) {
            let want = bf16::from_bits(bits).to_f32();
            assert!(want.to_bits() == v.to_bits() || (want.is_nan() && v.is_nan()), "bf16 {bits:#06x}: {v} vs {want}");
        }
    }
}
