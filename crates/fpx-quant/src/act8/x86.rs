//! The x86 forms of the row quantizer ([`super::RowMut::quantize_fast`], [`super::RowsMut::quantize_fast`]).

use super::{block_inverse, RowMut, BLOCK, WEIGHT_OFFSET};
use std::arch::x86_64::*;

/// [`RowMut::quantize_fast`]: the AVX-512 loop, else the portable one compiled for AVX2,
/// else the portable one.
pub(super) fn quantize_fast(row: RowMut<'_>, x: &[f32]) {
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl") {
        // SAFETY: the CPU has AVX-512 F, BW and VL (checked just above).
        unsafe { quantize_row(row, x) }
    } else if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { portable_avx2(row, x) }
    } else {
        row.quantize(x)
    }
}

/// [`RowMut::quantize`] (inlined) compiled for AVX2, which vectorizes it.
#[target_feature(enable = "avx2")]
unsafe fn portable_avx2(row: RowMut<'_>, x: &[f32]) {
    row.quantize(x)
}

/// [`RowMut::quantize`] in AVX-512; the CPU must have AVX-512 F, BW and VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn quantize_row(row: RowMut<'_>, x: &[f32]) {
    const ROUND: f32 = 12_582_912.0;
    // Within each 16-column half, byte 2i takes column 8 + i and byte 2i + 1 column i.
    const ORDER: [i8; 16] = [8, 0, 9, 1, 10, 2, 11, 3, 12, 4, 13, 5, 14, 6, 15, 7];
    // SAFETY: ORDER is 16 bytes.
    let order = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(ORDER.as_ptr().cast()) });
    let (round, lo, hi) = (_mm512_set1_ps(ROUND), _mm512_set1_ps(ROUND - 127.0), _mm512_set1_ps(ROUND + 127.0));
    let (abs_bits, round_bits) = (_mm512_set1_epi32(0x7fff_ffff), _mm512_set1_epi32(ROUND.to_bits() as i32));
    assert!(row.codes.len() * 4 >= x.len().div_ceil(BLOCK) * BLOCK && row.scales.len() >= x.len().div_ceil(BLOCK));
    for (b, cols) in x.chunks(BLOCK).enumerate() {
        // Columns past the row's end read as 0 (masked loads), as the portable loop pads.
        let (n0, n1) = (cols.len().min(16), cols.len().saturating_sub(16));
        let (m0, m1) = ((1u32 << n0).wrapping_sub(1) as u16, ((1u64 << n1) - 1) as u16);
        // SAFETY: the masks cover only the chunk's own columns.
        let (v0, v1) = unsafe { (_mm512_maskz_loadu_ps(m0, cols.as_ptr()), _mm512_maskz_loadu_ps(m1, cols.as_ptr().add(n0))) };
        // The largest |x| as bits (a NaN's exceed every number's), as in the portable loop.
        let a = _mm512_max_epu32(_mm512_and_si512(_mm512_castps_si512(v0), abs_bits), _mm512_and_si512(_mm512_castps_si512(v1), abs_bits));
        let absmax = f32::from_bits(_mm512_reduce_max_epu32(a));
        let scale = absmax / 127.0;
        let inv = block_inverse(scale);
        let (q0, q1) = if inv != 0.0 {
            let inv = _mm512_set1_ps(inv);
            let code = |v: __m512| {
                let y = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(_mm512_mul_ps(v, inv), round), lo), hi);
                _mm512_sub_epi32(_mm512_castps_si512(y), round_bits)
            };
            (code(v0), code(v1))
        } else {
            (_mm512_setzero_si512(), _mm512_setzero_si512())
        };
        let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        let bytes = _mm256_set_m128i(_mm512_cvtepi32_epi8(q1), _mm512_cvtepi32_epi8(q0));
        row.scales[b] = scale.to_bits();
        row.corrections[b] = (sum * WEIGHT_OFFSET) as u32;
        // SAFETY: block b's 8 code words are in `row.codes` (asserted above).
        unsafe { _mm256_storeu_si256(row.codes.as_mut_ptr().add(b * BLOCK / 4).cast(), _mm256_shuffle_epi8(bytes, order)) };
    }
}

/// Blocks one step of [`quantize_blocks`] quantizes together.
const BATCH: usize = 16;

/// Whether [`quantize_blocks`] runs on this CPU (AVX-512 F, BW, VL and VBMI).
fn has_batched() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vbmi")
}

/// [`quantize_blocks`] where this CPU runs it (returns whether it did).
pub(super) fn quantize_blocks_batched(x: &[f32], scales: &mut [u32], corrections: &mut [u32], codes: &mut [u32]) -> bool {
    if !has_batched() {
        return false;
    }
    // SAFETY: the CPU has what `quantize_blocks` needs (checked just above).
    unsafe { quantize_blocks(x, scales, corrections, codes) };
    true
}

/// Quantizes the whole blocks of `x` (a multiple of 32 values, consecutive blocks of any rows)
/// into `scales`, `corrections` and `codes` (one entry, one entry and 8 words per block):
/// 16 blocks at a step, with their absolute maxima and code sums reduced together (a
/// transpose-and-reduce over 16 vectors instead of one horizontal reduction per block), their
/// scales and inverses as one vector, and the codes of two blocks narrowed by two saturating
/// packs and put in [`super::code_position`] order by one `vpermb`; the remaining blocks one
/// at a time. The same operations per value as [`RowMut::quantize`], so bit-identical results.
///
/// # Safety
/// The CPU must have what [`has_batched`] checks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx2")]
pub(super) unsafe fn quantize_blocks(x: &[f32], scales: &mut [u32], corrections: &mut [u32], codes: &mut [u32]) {
    let blocks = x.len() / BLOCK;
    assert!(x.len().is_multiple_of(BLOCK) && scales.len() >= blocks && corrections.len() >= blocks && codes.len() >= blocks * BLOCK / 4);
    let full = blocks - blocks % BATCH;
    for b in (0..full).step_by(BATCH) {
        // SAFETY: blocks b .. b + 16 are within every slice (asserted above).
        unsafe {
            batch(
                x.as_ptr().add(b * BLOCK),
                scales.as_mut_ptr().add(b),
                corrections.as_mut_ptr().add(b),
                codes.as_mut_ptr().add(b * BLOCK / 4),
            )
        };
    }
    if full < blocks {
        let row = RowMut {
            scales: &mut scales[full..blocks],
            corrections: &mut corrections[full..blocks],
            codes: &mut codes[full * BLOCK / 4..blocks * BLOCK / 4],
        };
        // SAFETY: the CPU has AVX-512 F, BW and VL (the caller's contract).
        unsafe { quantize_row(row, &x[full * BLOCK..]) };
    }
}

/// `vpermb` indices from the bytes of `packs(packs(A, B), packs(C, D))` (byte `16 l + 4 s + e`
/// is element `4 l + e` of source `s`: A, B the first block's columns 0..16 and 16..32, C, D
/// the second's) to two blocks' code bytes in [`super::code_position`] order.
const PACKED_TO_CODES: [u8; 64] = {
    let mut idx = [0u8; 64];
    let mut col = 0;
    while col < 2 * BLOCK {
        let (block, c) = (col / BLOCK, col % BLOCK);
        let source = 2 * block + c / 16;
        let e = c % 16;
        idx[block * BLOCK + super::code_position(c)] = (16 * (e / 4) + 4 * source + e % 4) as u8;
        col += 1;
    }
    idx
};

/// Lane `i` of the result is `op` over all 16 lanes of `v[i]` (`op` associative and
/// commutative: integer max and sum). Four levels of pairwise shuffles, each halving the
/// vectors, then one permutation into lane order.
#[target_feature(enable = "avx512f")]
fn transpose_reduce(v: [__m512i; 16], op: impl Fn(__m512i, __m512i) -> __m512i) -> __m512i {
    // Level 1: 128-bit quarters 0, 1 of the result hold v[2j]'s halves combined, 2, 3 v[2j + 1]'s.
    let l1: [__m512i; 8] = std::array::from_fn(|j| {
        let (x, y) = (v[2 * j], v[2 * j + 1]);
        op(_mm512_shuffle_i32x4::<0x44>(x, y), _mm512_shuffle_i32x4::<0xEE>(x, y))
    });
    // Level 2: quarter q holds 4 partials of v[4j + q].
    let l2: [__m512i; 4] = std::array::from_fn(|j| {
        let (x, y) = (l1[2 * j], l1[2 * j + 1]);
        op(_mm512_shuffle_i32x4::<0x88>(x, y), _mm512_shuffle_i32x4::<0xDD>(x, y))
    });
    let ps = _mm512_castsi512_ps;
    let si = _mm512_castps_si512;
    // Level 3: quarter q holds 2 partials of v[8j + q], then 2 of v[8j + 4 + q].
    let l3: [__m512i; 2] = std::array::from_fn(|j| {
        let (x, y) = (ps(l2[2 * j]), ps(l2[2 * j + 1]));
        op(si(_mm512_shuffle_ps::<0x44>(x, y)), si(_mm512_shuffle_ps::<0xEE>(x, y)))
    });
    // Level 4: lane 4q + i holds v[4i + q].
    let (x, y) = (ps(l3[0]), ps(l3[1]));
    let r = op(si(_mm512_shuffle_ps::<0x88>(x, y)), si(_mm512_shuffle_ps::<0xDD>(x, y)));
    _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), r)
}

/// Quantizes the 16 blocks at `x` (see [`quantize_blocks`]).
///
/// # Safety
/// `x` holds 512 values, `scales` and `corrections` 16 entries, `codes` 128 words; the CPU has
/// what [`has_batched`] checks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx2")]
unsafe fn batch(x: *const f32, scales: *mut u32, corrections: *mut u32, codes: *mut u32) {
    const ROUND: f32 = 12_582_912.0;
    let (round, lo, hi) = (_mm512_set1_ps(ROUND), _mm512_set1_ps(ROUND - 127.0), _mm512_set1_ps(ROUND + 127.0));
    let (abs_bits, round_bits) = (_mm512_set1_epi32(0x7fff_ffff), _mm512_set1_epi32(ROUND.to_bits() as i32));
    // The largest |x| of each block as bits (a NaN's exceed every number's), as the portable
    // loop. Values are loaded again for the codes (from L1) rather than held in 32 registers.
    // SAFETY (every load below): x holds 32 vectors (the caller's contract).
    let load = |i: usize| unsafe { _mm512_loadu_ps(x.add(16 * i)) };
    let abs = |i: usize| _mm512_and_si512(_mm512_castps_si512(load(i)), abs_bits);
    let mut maxes = [_mm512_setzero_si512(); 16];
    for (b, m) in maxes.iter_mut().enumerate() {
        *m = _mm512_max_epu32(abs(2 * b), abs(2 * b + 1));
    }
    let absmax = _mm512_castsi512_ps(transpose_reduce(maxes, |a, b| _mm512_max_epu32(a, b)));
    let scale = _mm512_div_ps(absmax, _mm512_set1_ps(127.0));
    // The blocks that get codes: where block_inverse is not 0, i.e. 0 < 1 / scale < ∞ (a zero,
    // subnormal-small, NaN or infinite scale fails one of the two).
    let inv = _mm512_div_ps(_mm512_set1_ps(1.0), scale);
    let live =
        _mm512_cmp_ps_mask::<_CMP_GT_OQ>(inv, _mm512_setzero_ps()) & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(inv, _mm512_set1_ps(f32::INFINITY));
    // SAFETY: PACKED_TO_CODES is 64 bytes.
    let order = unsafe { _mm512_loadu_si512(PACKED_TO_CODES.as_ptr().cast()) };
    // Codes, two blocks at a time (a block with no inverse gets zeros, as in the portable
    // loop), packed and stored; each block's two code vectors summed for its correction.
    let mut sums = [_mm512_setzero_si512(); 16];
    for pair in 0..BATCH / 2 {
        let mut q = [_mm512_setzero_si512(); 4];
        for (h, qh) in q.iter_mut().enumerate() {
            let b = 2 * pair + h / 2;
            let keep: __mmask16 = if live >> b & 1 != 0 { 0xffff } else { 0 };
            let inv_b = _mm512_permutexvar_ps(_mm512_set1_epi32(b as i32), inv);
            let y = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(_mm512_mul_ps(load(4 * pair + h), inv_b), round), lo), hi);
            *qh = _mm512_maskz_sub_epi32(keep, _mm512_castps_si512(y), round_bits);
        }
        sums[2 * pair] = _mm512_add_epi32(q[0], q[1]);
        sums[2 * pair + 1] = _mm512_add_epi32(q[2], q[3]);
        let bytes = _mm512_packs_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3]));
        // SAFETY: two blocks' 16 code words, within the 128 (the caller's contract).
        unsafe { _mm512_storeu_si512(codes.add(16 * pair).cast(), _mm512_permutexvar_epi8(order, bytes)) };
    }
    let sums = transpose_reduce(sums, |a, b| _mm512_add_epi32(a, b));
    // SAFETY: 16 entries each at scales and corrections, 128 code words (the caller's contract);
    // unaligned stores.
    unsafe {
        _mm512_storeu_ps(scales.cast(), scale);
        _mm512_storeu_si512(corrections.cast(), _mm512_slli_epi32::<6>(sums));
    }
    const _: () = assert!(WEIGHT_OFFSET == 1 << 6);
}
