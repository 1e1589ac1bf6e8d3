//! The "4+2" bit-plane layout of packed weight codes: the one definition (with its inverse)
//! that the CPU kernels, the GPU kernels and the tests all use.
//!
//! Each code is split into its low 4 bits (the *low plane*) and its remaining `h = bits - 4`
//! top bits (the *high plane*; for FP6 the sign and the top exponent bit, as in FP6-LLM).
//! Both planes are ordered so that a GPU lane's 32-bit (or wider) aligned load yields exactly
//! the codes of its `mma.m16n8k16` A fragment, with no shuffles after the load. Weights are
//! the A operand (M = output channels), activations the B operand.
//!
//! # The definition
//!
//! The codes form an `[n][k]` matrix (output channel major), zero-padded to
//! `[n_pad][k_pad]` with `n_pad` a multiple of [`TILE_N`] = 16 and `k_pad` of [`TILE_K`] = 32.
//!
//! 1. **Tiles.** The padded matrix is cut into 16 × 32 tiles, numbered n-tile major:
//!    `tile = (row / 16) * (k_pad / 32) + col / 32`, so a warp owning 16 output channels
//!    streams along K through contiguous memory.
//! 2. **Fragments.** Inside a tile, `half j = (col % 32) / 16` selects the k16 MMA step. The
//!    m16n8k16 A-fragment mapping gives lane `l` (`g = l / 4`, `t = l % 4`) eight elements
//!    `e = 0..8` at `row(e) = g + 8 * ((e >> 1) & 1)` and
//!    `col(e) = 16 * j + 2 * t + (e & 1) + 8 * (e >> 2)`: e0,e1 at row g, cols 2t, 2t+1;
//!    e2,e3 at row g+8, same cols; e4,e5 at row g, cols 2t+8, 2t+9; e6,e7 at row g+8, cols
//!    2t+8, 2t+9. [`slot_of`] maps (row, col) to (tile, half, lane, elem);
//!    [`position_of`] is its inverse.
//! 3. **Low plane** (`code & 0xf`): per tile 64 little-endian `u32` words, word index
//!    `tile * 64 + j * 32 + l`. Element `e`'s nibble sits at bit `4 * p` with
//!    `p = [2, 3, 1, 0][e >> 1] + 4 * (e & 1)` ([`low_nibble_pos`]). A pair (e, e+1) forming
//!    one half2 register sits 16 bits apart, so `(w << 2) & 0x3c003c00` puts the nibbles of
//!    e0,e1 at bits 10..14 of each 16-bit half; `(w >> 2)` does e2,e3, `(w << 6)` e4,e5,
//!    `(w << 10)` e6,e7.
//! 4. **High plane** (`code >> 4`, `h` bits each): per tile and lane, the 16 codes of both
//!    halves take `16h` bits, stored per tile as 32 lanes × `2h` bytes, lane-major,
//!    little-endian (a `u16` for FP5, a `u32` for FP6, a `u64` for 8-bit formats). The code
//!    of (half j, element e) sits at bit `h * q` with
//!    `q = (7 - (4 * j + (e >> 1))) + 8 * (e & 1)` ([`high_field_pos`]). For FP6 (h = 2),
//!    `(w << (2 * (4 * j + pair))) & 0xc000c000` puts the two top bits of pair
//!    `pair = e >> 1` at bits 14..16 of each half (pair 0 of half 0 is already there; each
//!    further pair needs two more bits of shift).
//!
//! The packed buffer is the low plane followed by the high plane ([`pack`], [`unpack`]).
//! Bit ranges in these docs are half-open (`10..14` is bits 10, 11, 12 and 13).
//! For FP6, [`fp6_pair_to_f16x2`] combines the two planes and applies the bias shift: it is
//! the register-level extraction the GPU kernel mirrors.
//!
//! # Worked example
//!
//! FP6 e3m2, `n = 32`, `k = 64` (2 × 2 tiles: low plane 4 × 256 = 1024 bytes, high plane
//! 4 × 128 = 512 bytes). The code at (row 9, col 19) is `0b10_1101` (0x2d, value −1.25):
//!
//! - tile `(9 / 16) * 2 + 19 / 32 = 0`; in the tile r = 9, c = 19, so half `j = 1`, and
//!   `c - 16 = 3 = 2t + (e & 1) + 8 (e >> 2)` gives t = 1, e & 1 = 1, e >> 2 = 0;
//!   `r = 9 = g + 8 ((e >> 1) & 1)` gives g = 1, (e >> 1) & 1 = 1. So lane `4g + t = 5`,
//!   element `e = 3`.
//! - low nibble `0xd`: word `0 * 64 + 1 * 32 + 5 = 37` (bytes 148..152); `p = 3 + 4 = 7`,
//!   bits 28..32 of the word, i.e. the high nibble of byte 151.
//! - high bits `0b10`: lane 5's `u32` of tile 0 starts at high-plane byte `5 * 4 = 20`,
//!   packed byte 1044; `q = (7 - (4 + 1)) + 8 = 10`, bits 20..22 of that word, i.e. bits
//!   4..6 of packed byte 1046.
//! - in the kernel (lane 5, half 1, pair 1): `(w_low >> 2) & 0x3c003c00` moves bits 28..32
//!   to 26..30, `(w_high << 10) & 0xc000c000` moves bits 20..22 to 30..32, so the upper
//!   half of `x` is `0b101101 << 10 = 0xb400`; the e3m2 bias shift
//!   `(x & 0x8000) | ((x & 0x7c00) >> 2)` gives `0x8d00` = −1.25 × 2^-12 in FP16.

use crate::Format;

/// Output channels per tile: the M of `mma.m16n8k16` (weights are the A operand).
pub const TILE_N: usize = 16;
/// Reduction indices per tile: two k16 MMA steps ("halves").
pub const TILE_K: usize = 32;
/// Lanes of a warp; each holds one A fragment per half.
pub const LANES: usize = 32;
/// Elements of a lane's A fragment per half (four half2 registers).
pub const ELEMS: usize = 8;

/// The shape of a packed code matrix: logical `[n][k]`, padded `[n_pad][k_pad]`, code width.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedShape {
    /// Output channels (rows of the code matrix).
    pub n: usize,
    /// Reduction length (columns of the code matrix).
    pub k: usize,
    /// Code width: 4, 5, 6 or 8.
    pub bits: u32,
    /// `n` rounded up to a multiple of [`TILE_N`].
    pub n_pad: usize,
    /// `k` rounded up to a multiple of [`TILE_K`].
    pub k_pad: usize,
}

impl PackedShape {
    /// The packed shape of an `[n][k]` matrix of `bits`-wide codes. Panics unless `bits` is
    /// 4, 5, 6 or 8 (the widths the planes support).
    pub fn new(n: usize, k: usize, bits: u32) -> PackedShape {
        assert!(matches!(bits, 4 | 5 | 6 | 8), "packed codes must be 4, 5, 6 or 8 bits wide, not {bits}");
        PackedShape { n, k, bits, n_pad: n.div_ceil(TILE_N) * TILE_N, k_pad: k.div_ceil(TILE_K) * TILE_K }
    }

    /// Number of tiles along K (`k_pad / 32`): the stride between n-tiles, in tiles.
    pub fn k_tiles(&self) -> usize {
        self.k_pad / TILE_K
    }

    /// Number of tiles: `(n_pad / 16) * (k_pad / 32)`.
    pub fn tiles(&self) -> usize {
        (self.n_pad / TILE_N) * self.k_tiles()
    }

    /// Bits per code in the high plane (`bits - 4`; 0 for 4-bit codes).
    pub fn high_bits(&self) -> u32 {
        self.bits - 4
    }

    /// Low-plane size: 4 bits per code, 256 bytes per tile.
    pub fn low_plane_bytes(&self) -> usize {
        self.tiles() * 256
    }

    /// Bytes of one lane's high-plane field in one tile (`2h`: 16 codes × h bits).
    pub fn high_lane_bytes(&self) -> usize {
        2 * self.high_bits() as usize
    }

    /// High-plane size: `bits - 4` bits per code, `64 * (bits - 4)` bytes per tile.
    pub fn high_plane_bytes(&self) -> usize {
        self.tiles() * 64 * self.high_bits() as usize
    }

    /// Size of the packed buffer: low plane then high plane.
    pub fn total_bytes(&self) -> usize {
        self.low_plane_bytes() + self.high_plane_bytes()
    }
}

/// Where a code lives in the packed planes: tile, k16 half, warp lane and fragment element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot {
    /// Tile index (n-tile major, then k-tile).
    pub tile: usize,
    /// Which k16 MMA step of the tile (0 or 1).
    pub half: usize,
    /// Warp lane (0..32) whose A fragment holds the code.
    pub lane: usize,
    /// Element of that lane's fragment (0..8).
    pub elem: usize,
}

/// The slot of the code at (`row_n`, `col_k`) of the padded matrix (see the module docs).
/// Panics if the position is outside `[n_pad][k_pad]`.
pub fn slot_of(shape: &PackedShape, row_n: usize, col_k: usize) -> Slot {
    assert!(
        row_n < shape.n_pad && col_k < shape.k_pad,
        "position ({row_n}, {col_k}) outside the padded [{}][{}] matrix",
        shape.n_pad,
        shape.k_pad
    );
    let tile = (row_n / TILE_N) * shape.k_tiles() + col_k / TILE_K;
    let (r, c) = (row_n % TILE_N, col_k % TILE_K);
    let half = c / 16;
    let cc = c % 16;
    let (g, row_hi) = (r % 8, r / 8);
    let (t, col_lo, col_hi) = ((cc % 8) / 2, cc % 2, cc / 8);
    Slot { tile, half, lane: 4 * g + t, elem: col_lo + 2 * row_hi + 4 * col_hi }
}

/// The inverse of [`slot_of`]: the (row, col) of the padded matrix that `slot` holds.
/// Panics if the slot is out of range for `shape`.
pub fn position_of(shape: &PackedShape, slot: Slot) -> (usize, usize) {
    assert!(slot.tile < shape.tiles() && slot.half < 2 && slot.lane < LANES && slot.elem < ELEMS, "slot {slot:?} out of range");
    let (g, t, e) = (slot.lane / 4, slot.lane % 4, slot.elem);
    let row = g + 8 * ((e >> 1) & 1);
    let col = 16 * slot.half + 2 * t + (e & 1) + 8 * (e >> 2);
    let (tile_n, tile_k) = (slot.tile / shape.k_tiles(), slot.tile % shape.k_tiles());
    (tile_n * TILE_N + row, tile_k * TILE_K + col)
}

/// `p` such that element `elem`'s low nibble sits at bit `4 * p` of its low-plane word.
pub const fn low_nibble_pos(elem: usize) -> u32 {
    [2, 3, 1, 0][elem >> 1] + 4 * (elem as u32 & 1)
}

/// `q` such that the high bits of (`half`, `elem`) sit at bit `h * q` of the lane's
/// high-plane field.
pub const fn high_field_pos(half: usize, elem: usize) -> u32 {
    (7 - (4 * half as u32 + (elem as u32 >> 1))) + 8 * (elem as u32 & 1)
}

/// Byte offset in the packed buffer of the low-plane `u32` word of (tile, half, lane).
pub fn low_word_offset(tile: usize, half: usize, lane: usize) -> usize {
    4 * (tile * 64 + half * 32 + lane)
}

/// Byte offset in the packed buffer of `lane`'s high-plane field (`2h` bytes) in `tile`.
pub fn high_field_offset(shape: &PackedShape, tile: usize, lane: usize) -> usize {
    shape.low_plane_bytes() + tile * 64 * shape.high_bits() as usize + lane * shape.high_lane_bytes()
}

/// Packs `codes` (`[n][k]` row-major, output channel major; only the low `bits` bits of each
/// are used) into the 4+2 planes: `total_bytes()` bytes, low plane then high plane.
/// Padding codes are 0. Panics if `codes.len() != n * k`.
pub fn pack(codes: &[u8], shape: &PackedShape) -> Vec<u8> {
    let mut out = Vec::new();
    pack_into(codes, shape, &mut out);
    out
}

/// [`pack`] into `out`, a buffer from an earlier weight (its contents are replaced, its
/// allocation kept when large enough).
pub fn pack_into(codes: &[u8], shape: &PackedShape, out: &mut Vec<u8>) {
    use rayon::prelude::*;
    assert_eq!(codes.len(), shape.n * shape.k, "pack: {} codes for a [{}][{}] matrix", codes.len(), shape.n, shape.k);
    let packer = TilePacker::new(shape);
    packer.size(out);
    if out.is_empty() {
        return;
    }
    // Tiles are n-tile major in both planes: each row of 16 channels fills its own byte ranges,
    // so the rows are packed in parallel.
    let (low, high) = out.split_at_mut(shape.low_plane_bytes());
    if packer.h > 0 {
        low.par_chunks_mut(packer.low_row_bytes())
            .zip(high.par_chunks_mut(packer.high_row_bytes()))
            .enumerate()
            .for_each(|(nt, (l, hi))| packer.pack_tile_row(nt, codes, 0, l, hi));
    } else {
        low.par_chunks_mut(packer.low_row_bytes()).enumerate().for_each(|(nt, l)| packer.pack_tile_row(nt, codes, 0, l, &mut []));
    }
}

/// Packs codes into the 4+2 planes one row of tiles (16 channels) at a time, so a quantizer
/// can pack a block of channels while its codes are still in cache ([`crate::quantize_values_packed`]).
/// Built once per shape: where each in-tile position goes, and for whole tiles, where each
/// packed byte's fields come from.
#[derive(Debug, Clone)]
pub struct TilePacker {
    shape: PackedShape,
    /// High-plane bits per code.
    h: usize,
    /// Per in-tile position (r, c): byte and shift in the tile's low-plane bytes and in its
    /// high-plane bytes (the same for every tile).
    places: [[(u16, u8, u16, u8); TILE_K]; TILE_N],
    /// For whole tiles, the same map read the other way: where each low-plane byte's two
    /// nibbles and each high-plane byte's `8 / h` fields come from, as offsets into the codes
    /// from the tile's first code. Gathering builds each byte once instead of or-ing every code
    /// into its byte.
    low_from: Vec<[usize; 2]>,
    high_from: Vec<[usize; 8]>,
}

impl TilePacker {
    /// The packer of `shape`.
    pub fn new(shape: &PackedShape) -> TilePacker {
        let h = shape.high_bits() as usize;
        let mut places = [[(0u16, 0u8, 0u16, 0u8); TILE_K]; TILE_N];
        for (r, row) in places.iter_mut().enumerate() {
            for (c, place) in row.iter_mut().enumerate() {
                let s = slot_of(&PackedShape::new(TILE_N, TILE_K, shape.bits), r, c);
                let bit = 4 * low_nibble_pos(s.elem) as usize;
                let low = low_word_offset(0, s.half, s.lane) + bit / 8;
                let hbit = h * high_field_pos(s.half, s.elem) as usize;
                let high = s.lane * shape.high_lane_bytes() + hbit / 8;
                *place = (low as u16, (bit % 8) as u8, high as u16, (hbit % 8) as u8);
            }
        }
        let mut low_from = vec![[0usize; 2]; 256];
        let mut high_from = vec![[0usize; 8]; 64 * h];
        for (r, row) in places.iter().enumerate() {
            for (c, &(lo, ls, hi, hs)) in row.iter().enumerate() {
                let offset = r * shape.k + c;
                low_from[lo as usize][ls as usize / 4] = offset;
                if let Some(field) = (hs as usize).checked_div(h) {
                    high_from[hi as usize][field] = offset;
                }
            }
        }
        TilePacker { shape: shape.clone(), h, places, low_from, high_from }
    }

    /// Low-plane bytes of one row of tiles (16 channels).
    pub fn low_row_bytes(&self) -> usize {
        self.shape.k_tiles() * 256
    }

    /// High-plane bytes of one row of tiles (0 for 4-bit codes).
    pub fn high_row_bytes(&self) -> usize {
        self.shape.k_tiles() * 64 * self.h
    }

    /// Makes `out` exactly `total_bytes()` long without clearing it (every byte is written by
    /// packing all rows of tiles).
    pub fn size(&self, out: &mut Vec<u8>) {
        let total = self.shape.total_bytes();
        if out.len() >= total {
            out.truncate(total);
        } else {
            out.resize(total, 0);
        }
    }

    /// Packs row of tiles `nt` (channels `16 nt..`) into its low-plane bytes `low` and
    /// high-plane bytes `high`, from `codes`: `[rows][k]` codes whose first row is channel
    /// `first_channel`. Every byte of `low` and `high` is written (padding as 0).
    pub fn pack_tile_row(&self, nt: usize, codes: &[u8], first_channel: usize, low: &mut [u8], high: &mut [u8]) {
        let (shape, h) = (&self.shape, self.h);
        let mask = ((1u32 << shape.bits) - 1) as u8;
        let fields = 8usize.checked_div(h).unwrap_or(0);
        let high_mask = ((1u32 << h) - 1) as u8;
        let rows = nt * TILE_N..((nt + 1) * TILE_N).min(shape.n);
        let at = |row: usize, col: usize| (row - first_channel) * shape.k + col;
        for kt in 0..shape.k_tiles() {
            let (low, high) = (&mut low[kt * 256..(kt + 1) * 256], &mut high[kt * 64 * h..(kt + 1) * 64 * h]);
            let cols = kt * TILE_K..((kt + 1) * TILE_K).min(shape.k);
            if rows.len() == TILE_N && cols.len() == TILE_K {
                let tile = &codes[at(rows.start, cols.start)..];
                for (byte, [a, b]) in low.iter_mut().zip(&self.low_from) {
                    *byte = (tile[*a] & 0xf) | (tile[*b] & 0xf) << 4;
                }
                for (byte, from) in high.iter_mut().zip(&self.high_from) {
                    *byte = from[..fields].iter().enumerate().fold(0, |acc, (f, &o)| acc | ((tile[o] >> 4) & high_mask) << (f * h));
                }
                continue;
            }
            // A tile cut by the matrix's edge: each code or-ed into place, the padding left 0.
            low.fill(0);
            high.fill(0);
            for row in rows.clone() {
                let places = &self.places[row % TILE_N];
                let chunk = &codes[at(row, cols.start)..at(row, cols.end)];
                for (&code, &(lo, ls, hi, hs)) in chunk.iter().zip(places) {
                    let code = code & mask;
                    low[lo as usize] |= (code & 0xf) << ls;
                    if h > 0 {
                        // h divides 8, so a field never straddles a byte.
                        high[hi as usize] |= (code >> 4) << hs;
                    }
                }
            }
        }
    }
}

/// Two packed weights of the same `shape` (`n` a multiple of [`TILE_N`]) merged into one of
/// `2n` channels whose channels alternate in blocks of [`TILE_N`]: `a`'s first 16, `b`'s first
/// 16, `a`'s next 16, … — what [`pack`] gives for the interleaved codes, built by copying whole
/// rows of tiles (tiles are n-tile major in both planes), without unpacking a code.
/// Panics if `n` is not a multiple of 16 or a buffer is not `shape.total_bytes()` long.
pub fn interleave_tile_rows(a: &[u8], b: &[u8], shape: &PackedShape) -> Vec<u8> {
    assert!(shape.n.is_multiple_of(TILE_N), "interleave_tile_rows: n = {} is not a multiple of {TILE_N}", shape.n);
    assert!(
        a.len() == shape.total_bytes() && b.len() == shape.total_bytes(),
        "interleave_tile_rows: buffers are not {} bytes",
        shape.total_bytes()
    );
    let mut out = Vec::with_capacity(2 * shape.total_bytes());
    let n_tiles = shape.n_pad / TILE_N;
    let low = shape.low_plane_bytes();
    for (start, plane) in [(0, low), (low, shape.high_plane_bytes())] {
        let row = plane / n_tiles.max(1);
        for t in 0..n_tiles {
            let range = start + t * row..start + (t + 1) * row;
            out.extend_from_slice(&a[range.clone()]);
            out.extend_from_slice(&b[range]);
        }
    }
    out
}

/// The inverse of [`pack`]: the `[n][k]` codes (padding dropped). Panics if
/// `packed.len() != total_bytes()`.
pub fn unpack(packed: &[u8], shape: &PackedShape) -> Vec<u8> {
    assert_eq!(packed.len(), shape.total_bytes(), "unpack: {} bytes for a packed shape of {} bytes", packed.len(), shape.total_bytes());
    (0..shape.n).flat_map(|row| (0..shape.k).map(move |col| code_at(packed, shape, row, col))).collect()
}

/// The `k` codes of output channel (row) `row` alone: what an embedding lookup reads from a
/// table stored transposed. Panics if `row >= n` or `packed.len() != total_bytes()`.
pub fn unpack_row(packed: &[u8], shape: &PackedShape, row: usize) -> Vec<u8> {
    let mut out = vec![0u8; shape.k];
    unpack_row_into(packed, shape, row, &mut out);
    out
}

/// [`unpack_row`] into `out` (`k` codes). A row's codes sit at the same places in every k-tile
/// of its n-tile, so the places of one k-tile's 32 columns are worked out once and the tiles
/// are read at a fixed stride. Panics as [`unpack_row`] does, or if `out.len() != k`.
pub fn unpack_row_into(packed: &[u8], shape: &PackedShape, row: usize, out: &mut [u8]) {
    assert_eq!(packed.len(), shape.total_bytes(), "unpack_row: {} bytes for a packed shape of {} bytes", packed.len(), shape.total_bytes());
    assert!(row < shape.n, "unpack_row: row {row} of {}", shape.n);
    assert_eq!(out.len(), shape.k, "unpack_row: room for {} codes, the row has {}", out.len(), shape.k);
    let h = shape.high_bits() as usize;
    let high_mask = ((1u32 << h) - 1) as u8;
    // Per column of a k-tile: (low byte, low shift, high byte, high shift), the bytes relative
    // to the k-tile's first low word and first high field.
    let first = slot_of(shape, row, 0);
    let places: Vec<(usize, u32, usize, u32)> = (0..TILE_K)
        .map(|c| {
            let s = slot_of(shape, row, c);
            let bit = 4 * low_nibble_pos(s.elem) as usize;
            let low = low_word_offset(s.tile, s.half, s.lane) + bit / 8 - low_word_offset(first.tile, 0, 0);
            let hbit = h * high_field_pos(s.half, s.elem) as usize;
            let high = high_field_offset(shape, s.tile, s.lane) + hbit / 8 - high_field_offset(shape, first.tile, 0);
            (low, (bit % 8) as u32, high, (hbit % 8) as u32)
        })
        .collect();
    let (low_stride, high_stride) = (low_word_offset(1, 0, 0), 64 * h);
    for (j, cols) in out.chunks_mut(TILE_K).enumerate() {
        let low_base = low_word_offset(first.tile + j, 0, 0);
        debug_assert_eq!(low_base, low_word_offset(first.tile, 0, 0) + j * low_stride);
        let high_base = high_field_offset(shape, first.tile, 0) + j * high_stride;
        for (o, &(low, ls, high, hs)) in cols.iter_mut().zip(&places) {
            let mut code = (packed[low_base + low] >> ls) & 0xf;
            if h > 0 {
                code |= ((packed[high_base + high] >> hs) & high_mask) << 4;
            }
            *o = code;
        }
    }
}

/// The code at (`row`, `col`) of the packed planes.
fn code_at(packed: &[u8], shape: &PackedShape, row: usize, col: usize) -> u8 {
    let h = shape.high_bits() as usize;
    let s = slot_of(shape, row, col);
    let bit = 4 * low_nibble_pos(s.elem) as usize;
    let mut code = (packed[low_word_offset(s.tile, s.half, s.lane) + bit / 8] >> (bit % 8)) & 0xf;
    if h > 0 {
        let high_mask = ((1u32 << h) - 1) as u8;
        let bit = h * high_field_pos(s.half, s.elem) as usize;
        let byte = packed[high_field_offset(shape, s.tile, s.lane) + bit / 8];
        code |= ((byte >> (bit % 8)) & high_mask) << 4;
    }
    code
}

/// Register-level FP6 → FP16x2 extraction, exactly as the GPU kernel does it: from a lane's
/// low-plane word for `half` (`tile * 64 + half * 32 + lane`) and its high-plane `u32`, build
/// the half2 holding elements `2 * pair` (low 16 bits) and `2 * pair + 1` (high 16 bits) as
/// bias-shifted FP16 bits ([`crate::bias_shift::f16_bits`]; multiply by `f16_factor`).
/// Panics unless `format` is FP6 (e3m2 or e2m3), `half < 2` and `pair < 4`.
pub fn fp6_pair_to_f16x2(low_word: u32, high_word: u32, half: usize, pair: usize, format: Format) -> u32 {
    let exp_shift = match format {
        Format::Fp6E3M2 => 2,
        Format::Fp6E2M3 => 3,
        _ => panic!("fp6_pair_to_f16x2 needs an FP6 format, not {format}"),
    };
    assert!(half < 2 && pair < 4, "half {half} / pair {pair} out of range");
    let low = match pair {
        0 => low_word << 2,
        1 => low_word >> 2,
        2 => low_word << 6,
        _ => low_word << 10,
    } & 0x3c00_3c00;
    let high = (high_word << (2 * (4 * half + pair))) & 0xc000_c000;
    // Two 6-bit codes at bits 10..16 of each 16-bit half; now the bias shift.
    let x = low | high;
    (x & 0x8000_8000) | ((x & 0x7c00_7c00) >> exp_shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bias_shift::f16_bits;
    use fpx_test_support::Rng;

    fn random_codes(rng: &mut Rng, len: usize, bits: u32) -> Vec<u8> {
        (0..len).map(|_| (rng.next_u32() & ((1 << bits) - 1)) as u8).collect()
    }

    #[test]
    fn sizes() {
        let s = PackedShape::new(17, 33, 6);
        assert_eq!((s.n_pad, s.k_pad, s.tiles()), (32, 64, 4));
        assert_eq!((s.low_plane_bytes(), s.high_plane_bytes(), s.total_bytes()), (1024, 512, 1536));
        let s = PackedShape::new(384, 1536, 6);
        assert_eq!(s.tiles(), 24 * 48);
        // 6 bits per code exactly when nothing is padded.
        assert_eq!(s.total_bytes(), 384 * 1536 * 6 / 8);
        for (bits, per_tile) in [(4, 256), (5, 320), (6, 384), (8, 512)] {
            let s = PackedShape::new(16, 32, bits);
            assert_eq!(s.total_bytes(), per_tile, "bits {bits}");
            assert_eq!(s.total_bytes() * 8, 16 * 32 * bits as usize);
        }
        let s = PackedShape::new(1, 1, 4);
        assert_eq!((s.tiles(), s.high_plane_bytes(), s.total_bytes()), (1, 0, 256));
        let s = PackedShape::new(0, 0, 8);
        assert_eq!(s.total_bytes(), 0);
    }

    /// Every row read alone equals that row of the whole unpack (each width, ragged shapes).
    #[test]
    fn rows_unpack_alone_as_in_the_whole() {
        let mut rng = Rng::new(77);
        for bits in [4, 5, 6, 8] {
            for (n, k) in [(1, 1), (17, 33), (40, 100), (33, 384)] {
                let shape = PackedShape::new(n, k, bits);
                let codes = random_codes(&mut rng, n * k, bits);
                let packed = pack(&codes, &shape);
                for row in 0..n {
                    assert_eq!(unpack_row(&packed, &shape, row), codes[row * k..(row + 1) * k], "bits {bits} [{n}][{k}] row {row}");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "4, 5, 6 or 8")]
    fn bad_bits_panics() {
        PackedShape::new(16, 32, 7);
    }

    #[test]
    fn slot_of_is_a_bijection() {
        let shape = PackedShape::new(40, 70, 6); // 3 x 3 tiles
        let mut seen = std::collections::HashSet::new();
        for row in 0..shape.n_pad {
            for col in 0..shape.k_pad {
                let s = slot_of(&shape, row, col);
                assert!(s.tile < shape.tiles() && s.half < 2 && s.lane < 32 && s.elem < 8);
                assert!(seen.insert(s), "slot {s:?} used twice");
                assert_eq!(position_of(&shape, s), (row, col));
            }
        }
        assert_eq!(seen.len(), shape.tiles() * 2 * 32 * 8);
        // Within a tile the low nibble positions and the high field positions are each a
        // permutation, so no two codes overlap in a word.
        let mut p: Vec<_> = (0..8).map(low_nibble_pos).collect();
        p.sort();
        assert_eq!(p, (0..8).collect::<Vec<_>>());
        let mut q: Vec<_> = (0..2).flat_map(|j| (0..8).map(move |e| high_field_pos(j, e))).collect();
        q.sort();
        assert_eq!(q, (0..16).collect::<Vec<_>>());
    }

    #[test]
    fn fragment_mapping_matches_mma_spec() {
        // PTX ISA m16n8k16 A fragment (.f16): a_i for lane l, groupID g = l/4, tid t = l%4:
        // row = g for a0,a1,a4,a5 and g+8 for a2,a3,a6,a7; col = 2t + (i&1) for i < 4, +8 for i >= 4.
        let shape = PackedShape::new(16, 32, 6);
        for lane in 0..32 {
            for elem in 0..8 {
                for half in 0..2 {
                    let (g, t) = (lane / 4, lane % 4);
                    let row = if matches!(elem, 0 | 1 | 4 | 5) { g } else { g + 8 };
                    let col = 16 * half + 2 * t + (elem & 1) + if elem >= 4 { 8 } else { 0 };
                    assert_eq!(slot_of(&shape, row, col), Slot { tile: 0, half, lane, elem });
                }
            }
        }
    }

    #[test]
    fn worked_example_from_docs() {
        let shape = PackedShape::new(32, 64, 6);
        assert_eq!((shape.low_plane_bytes(), shape.high_plane_bytes()), (1024, 512));
        let s = slot_of(&shape, 9, 19);
        assert_eq!(s, Slot { tile: 0, half: 1, lane: 5, elem: 3 });
        let mut codes = vec![0u8; 32 * 64];
        codes[9 * 64 + 19] = 0b10_1101;
        assert_eq!(Format::Fp6E3M2.decode(0b10_1101), -1.25);
        let packed = pack(&codes, &shape);
        let nonzero: Vec<(usize, u8)> = packed.iter().enumerate().filter(|(_, &b)| b != 0).map(|(i, &b)| (i, b)).collect();
        assert_eq!(nonzero, [(151, 0xd0), (1046, 0b10 << 4)]);
        assert_eq!(low_word_offset(0, 1, 5), 148);
        assert_eq!(high_field_offset(&shape, 0, 5), 1044);
        let w_low = u32::from_le_bytes(packed[148..152].try_into().unwrap());
        let w_high = u32::from_le_bytes(packed[1044..1048].try_into().unwrap());
        let x = fp6_pair_to_f16x2(w_low, w_high, 1, 1, Format::Fp6E3M2);
        assert_eq!(x, 0x8d00 << 16);
        assert_eq!(half::f16::from_bits(0x8d00).to_f32() * 4096.0, -1.25);
        // The same in-tile position in a later tile: (25, 51) of a [40][70] matrix is tile
        // 1 * 3 + 1 = 4, same half/lane/elem.
        let shape = PackedShape::new(40, 70, 6);
        assert_eq!(slot_of(&shape, 25, 51), Slot { tile: 4, half: 1, lane: 5, elem: 3 });
    }

    #[test]
    fn interleaved_tile_rows_are_the_packed_interleaved_codes() {
        let mut rng = Rng::new(9);
        for bits in [4, 5, 6, 8] {
            for (n, k) in [(16, 32), (48, 70), (32, 100)] {
                let shape = PackedShape::new(n, k, bits);
                let mask = ((1u32 << bits) - 1) as u8;
                let a: Vec<u8> = (0..n * k).map(|_| rng.next_u32() as u8 & mask).collect();
                let b: Vec<u8> = (0..n * k).map(|_| rng.next_u32() as u8 & mask).collect();
                let mut merged = Vec::new();
                for block in 0..n / TILE_N {
                    let rows = block * TILE_N * k..(block + 1) * TILE_N * k;
                    merged.extend_from_slice(&a[rows.clone()]);
                    merged.extend_from_slice(&b[rows]);
                }
                let expected = pack(&merged, &PackedShape::new(2 * n, k, bits));
                assert_eq!(interleave_tile_rows(&pack(&a, &shape), &pack(&b, &shape), &shape), expected, "bits {bits}, [{n}][{k}]");
            }
        }
    }

    #[test]
    fn pack_unpack_round_trip() {
        let mut rng = Rng::new(42);
        let shapes = [(1, 1), (15, 31), (16, 32), (17, 33), (3, 100), (384, 1536), (100, 7)];
        for bits in [4, 5, 6, 8] {
            for (n, k) in shapes {
                let shape = PackedShape::new(n, k, bits);
                let codes = random_codes(&mut rng, n * k, bits);
                let packed = pack(&codes, &shape);
                assert_eq!(packed.len(), shape.total_bytes());
                assert_eq!(unpack(&packed, &shape), codes, "({n}, {k}) bits {bits}");
                // Into a buffer left over from another weight: the same bytes.
                let mut reused = vec![0xff; shape.total_bytes() / 2 + 3];
                pack_into(&codes, &shape, &mut reused);
                assert_eq!(reused, packed, "({n}, {k}) bits {bits} reused");
            }
        }
    }

    #[test]
    fn padding_is_zero_and_high_bits_ignored() {
        // All-ones codes: every bit of the planes outside the padding is set.
        for bits in [4, 5, 6, 8] {
            let (n, k) = (17, 33);
            let shape = PackedShape::new(n, k, bits);
            let packed = pack(&vec![0xff; n * k], &shape);
            assert_eq!(unpack(&packed, &shape), vec![((1u32 << bits) - 1) as u8; n * k]);
            let ones: u32 = packed.iter().map(|b| b.count_ones()).sum();
            assert_eq!(ones as usize, n * k * bits as usize, "bits {bits}");
        }
    }

    #[test]
    fn planes_match_the_definition_directly() {
        // Read every code back through the documented word/field formulas for each h.
        let mut rng = Rng::new(3);
        for bits in [5, 6, 8] {
            let shape = PackedShape::new(33, 65, bits);
            let codes = random_codes(&mut rng, 33 * 65, bits);
            let packed = pack(&codes, &shape);
            let h = bits - 4;
            for row in 0..33 {
                for col in 0..65 {
                    let s = slot_of(&shape, row, col);
                    let o = low_word_offset(s.tile, s.half, s.lane);
                    let w = u32::from_le_bytes(packed[o..o + 4].try_into().unwrap());
                    let low = (w >> (4 * low_nibble_pos(s.elem))) & 0xf;
                    let o = high_field_offset(&shape, s.tile, s.lane);
                    let field = match h {
                        1 => u16::from_le_bytes(packed[o..o + 2].try_into().unwrap()) as u64,
                        2 => u32::from_le_bytes(packed[o..o + 4].try_into().unwrap()) as u64,
                        _ => u64::from_le_bytes(packed[o..o + 8].try_into().unwrap()),
                    };
                    let high = (field >> (h * high_field_pos(s.half, s.elem))) & ((1 << h) - 1);
                    assert_eq!((high << 4) as u32 | low, codes[row * 65 + col] as u32);
                }
            }
        }
    }

    #[test]
    fn fp6_register_extraction_matches_f16_bits() {
        let mut rng = Rng::new(11);
        for format in [Format::Fp6E3M2, Format::Fp6E2M3] {
            let shape = PackedShape::new(48, 96, 6); // 9 tiles
            let codes = random_codes(&mut rng, 48 * 96, 6);
            let packed = pack(&codes, &shape);
            for tile in 0..shape.tiles() {
                for lane in 0..LANES {
                    let o = high_field_offset(&shape, tile, lane);
                    let high = u32::from_le_bytes(packed[o..o + 4].try_into().unwrap());
                    for half in 0..2 {
                        let o = low_word_offset(tile, half, lane);
                        let low = u32::from_le_bytes(packed[o..o + 4].try_into().unwrap());
                        for pair in 0..4 {
                            let x = fp6_pair_to_f16x2(low, high, half, pair, format);
                            for (i, bits) in [x as u16, (x >> 16) as u16].into_iter().enumerate() {
                                let slot = Slot { tile, half, lane, elem: 2 * pair + i };
                                let (r, c) = position_of(&shape, slot);
                                let code = codes[r * 96 + c];
                                assert_eq!(bits, f16_bits(format, code), "{slot:?}");
                            }
                        }
                    }
                }
            }
        }
    }
}
