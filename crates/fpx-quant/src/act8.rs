//! Int8 activations for the integer dot-product CPU kernels (`--activations int8`).
//!
//! Weight formats whose stored values are small integers in some power-of-two unit (FP6 e2m3
//! in eighths, FP4 e2m1 in halves, INT4) can multiply int8 activations with byte dot products
//! (`vpmaddubsw`, 32 multiply-adds per instruction on AVX2) instead of `f32` FMAs (8). Like
//! onnxruntime's `MatMulNBits` at `accuracy_level` 4, activations are quantized symmetrically
//! per row and per block of 32 K columns (one layout tile): `x ≈ scale · code`, `code` in
//! `-127..=127`, `scale = absmax / 127`.
//!
//! # The buffer a kernel reads ([`Int8Activations`])
//!
//! For `m` rows and `kt = ceil(k / 32)` blocks, 4-byte aligned, little-endian:
//! 1. `m · kt` `f32` scales, row-major;
//! 2. `m · kt` `i32` corrections: [`WEIGHT_OFFSET`] times the sum of the block's codes (the
//!    kernels multiply unsigned `weight + 64` by the signed code, then subtract this);
//! 3. `m · kt · 32` `i8` codes, block by block; inside a block the 32 columns are permuted so
//!    that 4-byte group `4j + t` holds columns `16j + 2t + [8, 0, 9, 1]` ([`code_position`]),
//!    the order in which the 4+2 layout's low-plane bytes carry one output row's codes.
//!    Columns past `k` are zero.

use crate::fold;
use crate::Format;

pub use crate::activations::Activations;

/// Columns per activation block (one layout tile along K).
pub const BLOCK: usize = 32;

/// What the kernels add to a weight's integer value to make it an unsigned byte.
pub const WEIGHT_OFFSET: i32 = 64;

/// Largest integer weight magnitude the byte kernels take: `(64 + 64) · 127 · 2` still fits
/// the `i16` sums of `vpmaddubsw`.
pub const MAX_WEIGHT_UNITS: f32 = 64.0;

/// The power of two `u` that makes every stored value of `format` an integer `v · u` with
/// `|v · u| <= 64`, or `None` if its values are not such integers (FP6 e3m2 spans 1/16 to 28:
/// 448 sixteenths; FP8 and INT8 are too wide as well). Whether a format may take int8
/// activations is [`crate::takes_int8_activations`], which also needs 4- or 6-bit codes.
pub fn int8_units(format: Format) -> Option<f32> {
    if format.bits() > 6 {
        return None;
    }
    let values: Vec<f32> = format.codes().map(|c| fold::stored_value(format, c)).collect();
    if values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let max = values.iter().fold(0f32, |a, v| a.max(v.abs()));
    if max == 0.0 {
        return None;
    }
    // The largest unit that keeps the maximum within 64; then check integrality.
    let units = 2f32.powi((MAX_WEIGHT_UNITS / max).log2().floor() as i32);
    let ok = values.iter().all(|v| {
        let s = v * units;
        s == s.round() && s.abs() <= MAX_WEIGHT_UNITS
    });
    ok.then_some(units)
}

/// Where column `col` (`0..32`) of a block sits among the block's 32 code bytes.
pub const fn code_position(col: usize) -> usize {
    let j = col / 16;
    let c = col % 16;
    let (t, within) = if c < 8 { (c / 2, [1, 3][c % 2]) } else { ((c - 8) / 2, [0, 2][c % 2]) };
    4 * (4 * j + t) + within
}

/// Activations quantized for an int8 kernel: the buffer its `x` pointer takes (see the
/// module docs for the layout).
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Activations {
    words: Vec<u32>,
    rows: usize,
    k: usize,
}

/// One row's parts of an [`Int8Activations`] buffer, to fill independently of other rows.
#[derive(Debug)]
pub struct RowMut<'a> {
    scales: &'a mut [u32],
    corrections: &'a mut [u32],
    codes: &'a mut [u32],
}

impl RowMut<'_> {
    /// Quantizes one row of `k` activations into this row's scales, corrections and codes.
    /// Inlined, so that a caller compiled for a wider vector ISA ([`RowMut::quantize_fast`]'s AVX2 form)
    /// vectorizes it; the results do not depend on the ISA.
    #[inline(always)]
    pub fn quantize(self, row: &[f32]) {
        for (b, cols) in row.chunks(BLOCK).enumerate() {
            // Full blocks by value (a fixed-size copy); the last, partial one zero-padded.
            let v: [f32; BLOCK] = cols.try_into().unwrap_or_else(|_| {
                let mut v = [0f32; BLOCK];
                v[..cols.len()].copy_from_slice(cols);
                v
            });
            let (scale, sum, bytes) = quantize_block(&v);
            self.scales[b] = scale.to_bits();
            self.corrections[b] = (sum * WEIGHT_OFFSET) as u32;
            for (w, four) in self.codes[b * BLOCK / 4..(b + 1) * BLOCK / 4].iter_mut().zip(bytes.chunks_exact(4)) {
                *w = u32::from_le_bytes([four[0], four[1], four[2], four[3]]);
            }
        }
    }

    /// [`RowMut::quantize`] in the widest form this CPU runs, bit-identical every way (no fused
    /// operations, the same rounding): AVX-512 (F/BW/VL), where one block of 32 columns is two
    /// vectors whose absolute maximum and code sum are reduced in registers and whose codes are
    /// narrowed and reordered by `vpmovdb` and one `vpshufb`; else the portable loop compiled
    /// for AVX2; else the portable loop as it is.
    pub fn quantize_fast(self, row: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        return x86::quantize_fast(self, row);
        #[cfg(not(target_arch = "x86_64"))]
        self.quantize(row)
    }
}

/// Consecutive rows' parts of an [`Int8Activations`] buffer, to fill independently of other
/// rows: a thread's share of a product's activations.
#[derive(Debug)]
pub struct RowsMut<'a> {
    scales: &'a mut [u32],
    corrections: &'a mut [u32],
    codes: &'a mut [u32],
    k: usize,
}

impl RowsMut<'_> {
    /// Rows held.
    pub fn rows(&self) -> usize {
        self.scales.len() / self.k.div_ceil(BLOCK).max(1)
    }

    /// Quantizes `x` (these rows' `rows × k` activations, row-major) as [`RowMut::quantize`]
    /// does row by row, bit for bit. When `k` is a multiple of 32 the rows' blocks lie back to
    /// back in `x` and in the buffer, and on AVX-512 VBMI CPUs they are quantized 16 at a time
    /// across row ends (MiniLM's K = 384 is 12 blocks a row); otherwise row by row with
    /// [`RowMut::quantize_fast`].
    pub fn quantize_fast(self, x: &[f32]) {
        let (k, rows) = (self.k, self.rows());
        assert_eq!(x.len(), rows * k, "x must be the rows' {rows} x {k} activations");
        #[cfg(target_arch = "x86_64")]
        if k.is_multiple_of(BLOCK) && x86::quantize_blocks_batched(x, self.scales, self.corrections, self.codes) {
            return;
        }
        for (row, values) in self.into_rows().zip(x.chunks(k)) {
            row.quantize_fast(values);
        }
    }
}

impl<'a> RowsMut<'a> {
    /// The chunk's rows, in order. (A chunk has at least one block a row:
    /// [`Int8Activations::row_chunks_mut`] makes none otherwise.)
    fn into_rows(self) -> impl Iterator<Item = RowMut<'a>> {
        let kt = self.k.div_ceil(BLOCK);
        self.scales
            .chunks_mut(kt)
            .zip(self.corrections.chunks_mut(kt))
            .zip(self.codes.chunks_mut(kt * BLOCK / 4))
            .map(|((scales, corrections), codes)| RowMut { scales, corrections, codes })
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86;

/// `1 / scale` for a block's codes, or 0 (all codes 0) when the scale is 0, NaN or infinite,
/// or so small (subnormal) that its inverse overflows: such a block's values are below
/// `127 · 2^-126` and 0 stands for them.
#[inline(always)]
fn block_inverse(scale: f32) -> f32 {
    let inv = 1.0 / scale;
    if scale > 0.0 && inv.is_finite() {
        inv
    } else {
        0.0
    }
}

/// One block: its scale (NaN if it holds a NaN, infinite if an infinity), the sum of its codes
/// and the code bytes in [`code_position`] order. Written without branches per element so
/// that it vectorizes.
#[inline(always)]
fn quantize_block(v: &[f32; BLOCK]) -> (f32, i32, [u8; BLOCK]) {
    // 1.5 · 2^23: adding and subtracting it rounds |v| < 2^22 to the nearest integer, ties
    // to even (f32::round is a library call on baseline x86-64).
    const ROUND: f32 = 12_582_912.0;
    // The largest |x| as bits: a NaN's exceed every number's, so a NaN makes the scale NaN.
    let absmax = f32::from_bits(v.iter().fold(0u32, |m, x| m.max(x.to_bits() & 0x7fff_ffff)));
    let scale = absmax / 127.0;
    let inv = block_inverse(scale);
    let mut q = [0i32; BLOCK];
    if inv != 0.0 {
        // Every x is finite here. x · inv + ROUND is ROUND + n exactly, n the rounded integer,
        // whose bits are ROUND's plus n: no float-to-int conversion (which does not vectorize).
        for (q, x) in q.iter_mut().zip(v) {
            let y = (x * inv + ROUND).clamp(ROUND - 127.0, ROUND + 127.0);
            *q = y.to_bits() as i32 - ROUND.to_bits() as i32;
        }
    }
    let sum = q.iter().sum();
    // code_position: per half of 16 columns, byte 2i holds column 8 + i and byte 2i + 1 column i.
    let mut bytes = [0u8; BLOCK];
    for half in 0..2 {
        for i in 0..8 {
            bytes[16 * half + 2 * i] = q[16 * half + 8 + i] as u8;
            bytes[16 * half + 2 * i + 1] = q[16 * half + i] as u8;
        }
    }
    (scale, sum, bytes)
}

impl Int8Activations {
    /// Quantizes the `m × k` row-major `x` per row and block of 32 columns, rounding to
    /// nearest (ties to even). A block whose absolute maximum is 0 gets scale 0; a NaN or an
    /// infinity makes its block's scale NaN or infinite, so it shows in the output as it would
    /// in `f32`.
    pub fn quantize(x: &[f32], m: usize, k: usize) -> Int8Activations {
        assert_eq!(x.len(), m * k, "x must be m × k");
        let mut q = Int8Activations::zeroed(m, k);
        if let Some(all) = q.row_chunks_mut(m.max(1)).pop() {
            all.quantize_fast(x);
        }
        q
    }

    /// A buffer for `m × k` activations, all codes and scales zero; fill it through
    /// [`Int8Activations::rows_mut`] (e.g. from several threads).
    pub fn zeroed(m: usize, k: usize) -> Int8Activations {
        Int8Activations { words: vec![0u32; Self::words_for(m, k)], rows: m, k }
    }

    /// The 32-bit words a buffer for `m × k` activations takes.
    pub fn words_for(m: usize, k: usize) -> usize {
        let blocks = m * k.div_ceil(BLOCK);
        2 * blocks + blocks * BLOCK / 4
    }

    /// [`Int8Activations::zeroed`] in the memory of `words` (a buffer kept from an earlier
    /// product, of any length): no allocation when it is large enough.
    pub fn zeroed_in(m: usize, k: usize, mut words: Vec<u32>) -> Int8Activations {
        words.clear();
        words.resize(Self::words_for(m, k), 0);
        Int8Activations { words, rows: m, k }
    }

    /// Hands the buffer's memory back (for [`Int8Activations::zeroed_in`]), leaving this empty.
    pub fn take_words(&mut self) -> Vec<u32> {
        self.rows = 0;
        std::mem::take(&mut self.words)
    }

    /// Rows of activations held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (the K of the product) per row.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Every row's parts of the buffer, in row order, to fill independently.
    pub fn rows_mut(&mut self) -> Vec<RowMut<'_>> {
        let rows = self.rows.max(1);
        self.row_chunks_mut(rows).into_iter().flat_map(RowsMut::into_rows).collect()
    }

    /// The buffer's rows in chunks of `rows_per_chunk` consecutive rows (the last may be
    /// shorter), to fill independently; none when a row has no blocks.
    pub fn row_chunks_mut(&mut self, rows_per_chunk: usize) -> Vec<RowsMut<'_>> {
        let (k, kt) = (self.k, self.k_blocks());
        let blocks = self.rows * kt;
        let (scales, rest) = self.words.split_at_mut(blocks);
        let (corrections, codes) = rest.split_at_mut(blocks);
        if kt == 0 || rows_per_chunk == 0 {
            return Vec::new();
        }
        let per = rows_per_chunk * kt;
        scales
            .chunks_mut(per)
            .zip(corrections.chunks_mut(per))
            .zip(codes.chunks_mut(per * BLOCK / 4))
            .map(|((scales, corrections), codes)| RowsMut { scales, corrections, codes, k })
            .collect()
    }

    /// The buffer, as the kernels' `x` argument.
    pub fn as_ptr(&self) -> *const f32 {
        self.words.as_ptr().cast()
    }

    /// Blocks per row.
    pub fn k_blocks(&self) -> usize {
        self.k.div_ceil(BLOCK)
    }

    /// The scale of block `b` of row `r`.
    pub fn scale(&self, r: usize, b: usize) -> f32 {
        f32::from_bits(self.words[r * self.k_blocks() + b])
    }

    /// The stored correction of block `b` of row `r`.
    pub fn correction(&self, r: usize, b: usize) -> i32 {
        let blocks = self.rows * self.k_blocks();
        self.words[blocks + r * self.k_blocks() + b] as i32
    }

    /// The code of element `(r, col)`.
    pub fn code(&self, r: usize, col: usize) -> i8 {
        let blocks = self.rows * self.k_blocks();
        let (b, c) = (col / BLOCK, col % BLOCK);
        let byte = (r * self.k_blocks() + b) * BLOCK + code_position(c);
        self.words[2 * blocks + byte / 4].to_le_bytes()[byte % 4] as i8
    }

    /// The activations the codes stand for (`scale · code`), `m × k` row-major: what an int8
    /// kernel multiplies in effect, for references.
    pub fn dequantized(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.k);
        for r in 0..self.rows {
            for c in 0..self.k {
                out.push(self.scale(r, c / BLOCK) * self.code(r, c) as f32);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout;

    #[test]
    fn units_of_the_byte_formats() {
        // e2m3 stored values are multiples of 1/8 of their largest binade, e2m1 of 1/2, int4 integers.
        for f in [Format::Fp6E2M3, Format::Fp5E2M2, Format::Fp4E2M1, Format::Int4] {
            let u = int8_units(f).unwrap_or_else(|| panic!("{f} should take int8 activations"));
            let max = f.codes().map(|c| (fold::stored_value(f, c) * u).abs()).fold(0f32, f32::max);
            assert!(max <= 64.0 && max > 32.0 || f == Format::Int4, "{f}: max {max}");
        }
        for f in [Format::Fp6E3M2, Format::Fp8E4M3, Format::Fp8E5M2, Format::Int8] {
            assert_eq!(int8_units(f), None, "{f}");
        }
    }

    #[test]
    fn the_fast_row_quantizer_matches_the_portable_one_bit_for_bit() {
        let mut rng = fpx_test_support::Rng::new(77);
        for k in [1, 5, 16, 17, 31, 32, 33, 64, 100, 384, 1537] {
            for special in [None, Some(0.0), Some(f32::NAN), Some(f32::INFINITY), Some(-f32::INFINITY), Some(1e-40)] {
                let mut x: Vec<f32> = rng.normals(k).iter().map(|v| v * 8.0).collect();
                // A zero block, and one special value in another.
                x.iter_mut().take(32.min(k / 2)).for_each(|v| *v = 0.0);
                if let Some(v) = special {
                    x[k - 1] = v;
                }
                let (mut a, mut b) = (Int8Activations::zeroed(1, k), Int8Activations::zeroed(1, k));
                a.rows_mut().pop().unwrap().quantize(&x);
                b.rows_mut().pop().unwrap().quantize_fast(&x);
                assert_eq!(a.words, b.words, "k {k}, special {special:?}");
            }
        }
    }

    /// The portable quantizer, row by row: the reference the fast forms must equal bit for bit.
    fn portable(x: &[f32], m: usize, k: usize) -> Int8Activations {
        let mut q = Int8Activations::zeroed(m, k);
        for (r, row) in q.rows_mut().into_iter().enumerate() {
            row.quantize(&x[r * k..(r + 1) * k]);
        }
        q
    }

    #[test]
    fn chunks_of_rows_match_the_portable_quantizer_bit_for_bit() {
        // Blocks per row around the 16-block steps of the batched form, rows whose blocks make
        // partial steps across row ends, and K that is not a multiple of 32 (row by row).
        let mut rng = fpx_test_support::Rng::new(91);
        let specials = [0.0, f32::NAN, f32::INFINITY, -f32::INFINITY, 1e-40, -1e-42, 3e38, f32::MIN_POSITIVE];
        for (m, k) in [(1, 32), (1, 512), (1, 544), (3, 384), (5, 160), (2, 1536), (16, 32), (7, 2048), (4, 70), (2, 1000), (33, 96)] {
            for case in 0..4 {
                let mut x: Vec<f32> = rng.normals(m * k).iter().map(|v| v * [1.0, 8.0, 1e-3, 300.0][case]).collect();
                // Whole zero blocks and special values in a few others.
                for b in (0..m * k / 32).step_by(5) {
                    x[b * 32..(b * 32 + 32).min(m * k)].iter_mut().for_each(|v| *v = 0.0);
                }
                for (i, &v) in specials.iter().enumerate() {
                    if case > 0 && (i * 97 + case * 31) * 13 < m * k {
                        x[(i * 97 + case * 31) * 13] = v;
                    }
                }
                let want = portable(&x, m, k);
                for per in [1, 2, 3, m] {
                    let mut got = Int8Activations::zeroed_in(m, k, vec![0xdead_beef; 9]);
                    let chunks = got.row_chunks_mut(per);
                    assert_eq!(chunks.len(), m.div_ceil(per));
                    let mut r0 = 0;
                    for c in chunks {
                        let rows = c.rows();
                        c.quantize_fast(&x[r0 * k..(r0 + rows) * k]);
                        r0 += rows;
                    }
                    assert_eq!(r0, m);
                    if got.words != want.words {
                        let i = got.words.iter().zip(&want.words).position(|(a, b)| a != b).unwrap();
                        let blocks = m * k.div_ceil(32);
                        panic!(
                            "m {m}, k {k}, case {case}, {per} rows a chunk: word {i} of {} (blocks {blocks}): got {:#x} want {:#x}",
                            got.words.len(),
                            got.words[i],
                            want.words[i]
                        );
                    }
                }
                assert!(Int8Activations::quantize(&x, m, k).words == want.words, "m {m}, k {k}, case {case}");
            }
        }
        assert!(Int8Activations::zeroed(3, 0).row_chunks_mut(2).is_empty());
    }

    #[test]
    fn a_reused_buffer_gives_the_same_activations_as_a_fresh_one() {
        let (m, k) = (3, 70);
        let x = fpx_test_support::Rng::new(5).normals(m * k);
        let want = Int8Activations::quantize(&x, m, k);
        for dirty in [Vec::new(), vec![0xdead_beef; 7], vec![0xdead_beef; 4 * Int8Activations::words_for(m, k)]] {
            let mut q = Int8Activations::zeroed_in(m, k, dirty);
            for (r, row) in q.rows_mut().into_iter().enumerate() {
                row.quantize(&x[r * k..(r + 1) * k]);
            }
            assert_eq!(q, want);
            let words = q.take_words();
            assert_eq!(words.len(), Int8Activations::words_for(m, k));
            assert_eq!(q.rows(), 0);
        }
    }

    #[test]
    fn block_bytes_follow_code_position() {
        let mut v = [0f32; BLOCK];
        for (c, x) in v.iter_mut().enumerate() {
            *x = c as f32 - 15.0;
        }
        v[31] = 127.0; // scale 1: every code is its column's value
        let (scale, sum, bytes) = quantize_block(&v);
        assert_eq!(scale, 1.0);
        assert_eq!(sum, v.iter().map(|&x| x as i32).sum::<i32>());
        for (c, &x) in v.iter().enumerate() {
            assert_eq!(bytes[code_position(c)] as i8, x as i8, "column {c}");
        }
    }

    #[test]
    fn code_positions_follow_the_low_plane_rows() {
        let mut seen: Vec<usize> = (0..32).map(code_position).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..32).collect::<Vec<_>>());
        // Group 4j + t holds row g's elements e4, e0, e5, e1 of lane (j, t) in that order.
        for j in 0..2 {
            for t in 0..4 {
                for (i, e) in [4usize, 0, 5, 1].into_iter().enumerate() {
                    let shape = layout::PackedShape::new(16, 32, 6);
                    let slot = layout::Slot { tile: 0, half: j, lane: t, elem: e };
                    let (row, col) = layout::position_of(&shape, slot);
                    assert_eq!(row, 0);
                    assert_eq!(code_position(col), 4 * (4 * j + t) + i, "j {j} t {t} e {e}");
                }
            }
        }
    }

    #[test]
    fn quantize_round_trips_within_half_a_step() {
        let (m, k) = (3, 75);
        let mut s = 0x1234_5678u64;
        let x: Vec<f32> = (0..m * k)
            .map(|i| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                if i == 7 {
                    0.0
                } else {
                    u * (1 + i % 5) as f32
                }
            })
            .collect();
        let q = Int8Activations::quantize(&x, m, k);
        assert_eq!(q.k_blocks(), 3);
        let back = q.dequantized();
        for r in 0..m {
            for b in 0..3 {
                let cols = b * 32..((b + 1) * 32).min(k);
                let absmax = cols.clone().map(|c| x[r * k + c].abs()).fold(0f32, f32::max);
                assert_eq!(q.scale(r, b), absmax / 127.0);
                let sum: i32 = cols.clone().map(|c| q.code(r, c) as i32).sum();
                assert_eq!(q.correction(r, b), 64 * sum);
                assert!(cols.clone().any(|c| q.code(r, c).abs() == 127), "the absmax maps to ±127");
                for c in cols {
                    let err = (back[r * k + c] - x[r * k + c]).abs();
                    assert!(err <= q.scale(r, b) * 0.5 * (1.0 + 1e-5), "({r}, {c}): {err}");
                }
            }
        }
        // Padding columns of the last block (row 0) are zero codes.
        let blocks = 9;
        for c in 75 % 32..32 {
            let byte = 2 * 32 + code_position(c);
            assert_eq!(q.words[2 * blocks + byte / 4].to_le_bytes()[byte % 4], 0, "pad column {c}");
        }
    }

    #[test]
    fn rows_filled_in_any_order_give_the_same_buffer() {
        let (m, k) = (5, 70);
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0).collect();
        let mut q = Int8Activations::zeroed(m, k);
        let mut rows = q.rows_mut();
        assert_eq!(rows.len(), m);
        while let Some(row) = rows.pop() {
            let r = rows.len();
            row.quantize(&x[r * k..(r + 1) * k]);
        }
        assert_eq!(q, Int8Activations::quantize(&x, m, k));
        assert!(Int8Activations::zeroed(3, 0).rows_mut().is_empty());
    }

    #[test]
    fn all_zero_and_nan_blocks() {
        let mut x = vec![0f32; 64];
        x[40] = f32::NAN;
        let q = Int8Activations::quantize(&x, 1, 64);
        assert_eq!(q.scale(0, 0), 0.0);
        assert!((0..32).all(|c| q.code(0, c) == 0));
        assert!(q.scale(0, 1).is_nan());
        assert!(q.dequantized()[33].is_nan(), "a NaN poisons its block");
    }
}
