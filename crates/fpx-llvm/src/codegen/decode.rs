//! Format decoders: how a tile's packed codes become FP16 bit patterns and then `f32`.
//!
//! [`Dequant`] holds a format's compile-time recipe (the FP6-LLM register trick, or the
//! `pshufb` byte method of [`Bytes`]); the [`Gen`] methods here load a tile's low- and
//! high-plane words, transpose them into T-vectors, rebuild each pair's FP16 bits, convert
//! them through a small stack buffer and hand every chunk to a sink ([`Gen::tile`]).

use fpx_quant::layout::{ELEMS, LANES, TILE_K, TILE_N};
use fpx_quant::{fold, Format};
use inkwell::values::{IntValue, PointerValue, VectorValue};

use super::{Gen, Plan, R};
use crate::LlvmError;

/// Bytes of one tile's low plane (4 bits per code).
const LOW_TILE_BYTES: u64 = (TILE_N * TILE_K / 2) as u64;
/// Bytes of one tile's high plane per bit of the high field (one bit per code).
const HIGH_LANE_BYTES: u64 = (TILE_N * TILE_K / 8) as u64;
/// Bytes of one half of a tile's low plane: a `u32` word per lane.
pub(super) const HALF_BYTES: u64 = 4 * LANES as u64;
/// Tiles ahead of the one being decoded whose packed codes the direct (few-row) kernels
/// prefetch into L1 ([`Gen::prefetch_tile_ahead`]): 4 KiB of low plane and up to 2 KiB of high
/// plane in flight. A decode step streams every weight once, and the hardware prefetcher alone
/// left the product kernels short of the read bandwidth: with this, the bench LLaMA's decode
/// step took 8-15 % less time at 1 and 2 threads (8 tiles was too close, 32 no better; the
/// non-temporal hint, which skips L2, made the products twice as slow). The panel kernels,
/// compute-bound, leave it to the hardware.
const PREFETCH_TILES: u64 = 16;
/// Bytes of a cache line: the step of the prefetches.
const LINE_BYTES: u64 = 64;
/// Pairs of a lane word: two elements of its fragment each.
const PAIRS: usize = ELEMS / 2;

/// How a format's codes become `f32`: both codes of a pair are assembled in the two 16-bit
/// halves of a 32-bit lane (low nibble at bit `nib`, the `h` high-plane bits right above it),
/// then turned into FP16 bits and converted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dequant {
    /// How the assembled bits become FP16.
    pub(super) kind: Kind,
    /// Code width.
    pub(super) bits: u32,
    /// High-plane bits per code (`bits - 4`).
    pub(super) h: u32,
    /// Bit of each 16-bit half where the low nibble goes.
    pub(super) nib: u32,
    /// The byte-table method, where the format allows it (see [`Bytes`]).
    pub(super) bytes: Option<Bytes>,
}

/// Byte-level dequantization with `pshufb` table lookups: every byte of a low-plane word is
/// split into its two nibbles, each nibble becomes the high byte of its code's FP16 (the low
/// byte being 0), and the four pairs of a word are then one mask or one 16-bit shift each.
#[derive(Debug, Clone, Copy)]
pub(super) enum Bytes {
    /// 4-bit formats: the table maps a code to the high byte of its FP16 value (exact: every
    /// FP4 and INT4 value has a zero low byte).
    Table([u8; 16]),
    /// FP6: the nibble is ORed with the high bits' byte `s << 7 | e << 4`, looked up from the
    /// high-plane fields; e2m3 then needs an arithmetic shift right by 1 and `mask`.
    Fp6 { shift: u32, mask: u16 },
}

/// How the assembled bits of a pair become FP16 bits.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    /// Float codes sit at the top of the half (sign at bit 15); an arithmetic shift right by
    /// `d` and the mask `mask` give the bias-shifted FP16 (`bias_shift::f16_bits`).
    Float { d: u32, mask: u16 },
    /// Integer codes sit at the bottom; `^ xor` gives the FP16 `1024 + v + 2^(bits-1)` exactly,
    /// and `offset` is subtracted after conversion.
    Int { xor: u16, offset: f32 },
}

impl Dequant {
    /// The recipe for `format`, or `None` if it has no CPU kernel.
    pub(super) fn of(format: Format) -> Option<Dequant> {
        let bits = format.bits();
        let h = bits - 4;
        let dq = match format {
            Format::Int4 => Dequant { kind: Kind::Int { xor: 0x6408, offset: 1032.0 }, bits, h, nib: 0, bytes: None },
            Format::Int8 => Dequant { kind: Kind::Int { xor: 0x6480, offset: 1152.0 }, bits, h, nib: 0, bytes: None },
            _ => {
                let m = format.mantissa_bits();
                let d = (6 + m).checked_sub(bits)?;
                let mask = 0x8000u32 | (((1u32 << (bits - 1)) - 1) << (10 - m));
                Dequant { kind: Kind::Float { d, mask: mask as u16 }, bits, h, nib: 16 - bits, bytes: None }
            }
        };
        let bytes = match (bits, dq.kind) {
            (4, _) => {
                let mut t = [0u8; 16];
                for (c, e) in t.iter_mut().enumerate() {
                    let h = if format.is_float() {
                        fpx_quant::bias_shift::f16_bits(format, c as u8)
                    } else {
                        f16_bits_exact(fold::stored_value(format, c as u8))?
                    };
                    if h & 0xff != 0 {
                        return Some(dq);
                    }
                    *e = (h >> 8) as u8;
                }
                Some(Bytes::Table(t))
            }
            (6, Kind::Float { d, mask }) if d >= 2 => Some(Bytes::Fp6 { shift: d - 2, mask }),
            _ => None,
        };
        Some(Dequant { bytes, ..dq })
    }
}

/// The FP16 bits of `v` if it is exactly representable as a normal FP16 or zero.
fn f16_bits_exact(v: f32) -> Option<u16> {
    if v == 0.0 {
        return Some(if v.is_sign_negative() { 0x8000 } else { 0 });
    }
    let b = v.to_bits();
    let sign = ((b >> 31) as u16) << 15;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    let mant = b & 0x7f_ffff;
    if !(1..31).contains(&exp) || mant & 0x1fff != 0 {
        return None;
    }
    Some(sign | ((exp as u16) << 10) | (mant >> 13) as u16)
}

/// `s << 7 | e << 4` for a 2-bit FP6 high-plane field `(s, e)`.
const fn fp6_high_byte(f: usize) -> u8 {
    ((((f >> 1) & 1) << 7) | ((f & 1) << 4)) as u8
}

/// pshufb table: the high byte of the field in bits 0..2 of the index.
const FP6_LOW_FIELD: [u8; 16] = {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = fp6_high_byte(i & 3);
        i += 1;
    }
    t
};

/// pshufb table: the high byte of the field in bits 2..4 of the index.
const FP6_HIGH_FIELD: [u8; 16] = {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = fp6_high_byte(i >> 2);
        i += 1;
    }
    t
};

/// One converted chunk, as enumerated in a tile.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChunkInfo {
    /// Half of the tile.
    pub(super) j: usize,
    /// T-vector.
    pub(super) v: usize,
    /// Pair.
    pub(super) p: usize,
    /// Chunk of the T-vector (0 or 1).
    pub(super) c: usize,
    /// Accumulator index.
    pub(super) a: usize,
    /// First of the chunk's two K columns within the tile.
    pub(super) col: u32,
    /// Position of the chunk in a panel tile (in vectors).
    pub(super) slot: usize,
}

/// The converted high-plane bits of a tile, transposed like the low-plane words.
pub(super) enum High<'ctx> {
    /// 4-bit formats: no high plane.
    None,
    /// One word per lane: pair `p` of half `j` has its even code's field at bit `h * q`,
    /// the odd code's at `h * q + 16` (`q = 7 - 4j - p`).
    Fields(Vec<VectorValue<'ctx>>),
    /// 8-bit formats: even codes' fields (bit `4q`) and odd codes' fields (bit `4q`) apart.
    Split(Vec<VectorValue<'ctx>>, Vec<VectorValue<'ctx>>),
}

/// A chunk handed to a sink: the converted `<W x float>` and where it belongs.
pub(super) struct Chunk<'ctx> {
    /// The converted values.
    pub(super) value: VectorValue<'ctx>,
    /// Which chunk of the tile they are.
    pub(super) info: ChunkInfo,
}

/// Where [`Gen::tile`] hands each converted chunk.
pub(super) type Sink<'s, 'ctx> = dyn FnMut(&Gen<'_, 'ctx>, Chunk<'ctx>) -> R<()> + 's;

/// Pair vectors in FP16 are converted from memory: `vcvtph2ps ymm, m128` runs at twice the
/// rate of the register form, which also needs a `vextracti128` per upper half. The pair is
/// stored through `store` and read back through `load`, the same stack buffer laundered by an
/// empty inline asm so that LLVM cannot forward the store into registers.
#[derive(Clone, Copy)]
pub(super) struct CvtBuf<'ctx> {
    /// Where the FP16 pairs are stored.
    store: PointerValue<'ctx>,
    /// The same buffer, laundered, where they are loaded from.
    load: PointerValue<'ctx>,
}

/// Slots of the conversion buffer (one per pair of a T-vector).
const CVT_SLOTS: u64 = PAIRS as u64;

impl<'m, 'ctx> Gen<'m, 'ctx> {
    /// The low-plane words of (absolute) tile `tile` in `packed`.
    pub(super) fn low_plane(&self, packed: PointerValue<'ctx>, tile: IntValue<'ctx>) -> R<PointerValue<'ctx>> {
        self.gep(packed, self.mul(tile, LOW_TILE_BYTES)?)
    }

    /// The high-plane fields of (absolute) tile `tile` in `packed` (formats wider than 4 bits).
    pub(super) fn high_plane(&self, plan: &Plan, packed: PointerValue<'ctx>, tile: IntValue<'ctx>) -> R<PointerValue<'ctx>> {
        self.gep(packed, self.add(self.i64c(plan.low_bytes), self.mul(tile, HIGH_LANE_BYTES * plan.dq.h as u64)?)?)
    }

    /// Prefetches (into every cache level) both planes of the tile [`PREFETCH_TILES`] after
    /// `tile`: the tiles of an n-tile, and the n-tiles, follow one another in `packed`, so this
    /// runs ahead of the stream that every kernel decodes. Past the last tile it touches the high
    /// plane or the bytes after `packed`, which a prefetch may: it never faults.
    pub(super) fn prefetch_tile_ahead(&self, plan: &Plan, packed: PointerValue<'ctx>, tile: IntValue<'ctx>) -> R<()> {
        let ahead = self.add(tile, self.i64c(PREFETCH_TILES))?;
        let lo = self.mul(ahead, LOW_TILE_BYTES)?;
        for line in (0..LOW_TILE_BYTES).step_by(LINE_BYTES as usize) {
            self.prefetch(packed, self.add(lo, self.i64c(line))?, 3)?;
        }
        let high_bytes = HIGH_LANE_BYTES * plan.dq.h as u64;
        let hi = self.add(self.i64c(plan.low_bytes), self.mul(ahead, high_bytes)?)?;
        for line in (0..high_bytes).step_by(LINE_BYTES as usize) {
            self.prefetch(packed, self.add(hi, self.i64c(line))?, 3)?;
        }
        Ok(())
    }

    /// Applies the transpose program to `inputs` (`32 / W` vectors of `W` words).
    fn transpose(&self, inputs: Vec<VectorValue<'ctx>>) -> R<Vec<VectorValue<'ctx>>> {
        let mut regs = inputs;
        for (a, b, mask) in &self.lanes.program {
            let r = self.shuf(regs[*a], regs[*b], mask)?;
            regs.push(r);
        }
        Ok(self.lanes.outputs.iter().map(|&r| regs[r]).collect())
    }

    /// The 32 low-plane words of half `j` of the tile at `lo`, transposed.
    pub(super) fn low_words(&self, lo: PointerValue<'ctx>, j: u64) -> R<Vec<VectorValue<'ctx>>> {
        let w = self.w() as u64;
        let mut v = Vec::new();
        for a in 0..LANES as u64 / w {
            let p = self.gep(lo, self.i64c(HALF_BYTES * j + 4 * w * a))?;
            v.push(self.load(self.vi32(self.w()), p, 1)?.into_vector_value());
        }
        self.transpose(v)
    }

    /// The high-plane fields of the tile at `hi` (see [`High`]).
    pub(super) fn high_words(&self, dq: &Dequant, hi: PointerValue<'ctx>) -> R<High<'ctx>> {
        let w = self.w();
        let groups = (LANES / w as usize) as u64;
        match dq.h {
            0 => Ok(High::None),
            1 => {
                let mut v = Vec::new();
                for a in 0..groups {
                    let p = self.gep(hi, self.i64c(2 * w as u64 * a))?;
                    let x = self.load(self.ctx.i16_type().vec_type(w), p, 1)?.into_vector_value();
                    v.push(self.b.build_int_z_extend(x, self.vi32(w), "")?);
                }
                // Spread the 16 one-bit fields so that the odd codes' bits are 16 above the even ones'.
                let mut out = Vec::new();
                for t in self.transpose(v)? {
                    let lo = self.and(t, 0xff)?;
                    let hi = self.shift(self.and(t, 0xff00)?, 8)?;
                    out.push(self.b.build_or(lo, hi, "")?);
                }
                Ok(High::Fields(out))
            }
            2 => {
                let mut v = Vec::new();
                for a in 0..groups {
                    let p = self.gep(hi, self.i64c(4 * w as u64 * a))?;
                    v.push(self.load(self.vi32(w), p, 1)?.into_vector_value());
                }
                Ok(High::Fields(self.transpose(v)?))
            }
            4 => {
                let (mut even, mut odd) = (Vec::new(), Vec::new());
                let ev: Vec<u32> = (0..w).map(|i| 2 * i).collect();
                let od: Vec<u32> = (0..w).map(|i| 2 * i + 1).collect();
                for a in 0..groups {
                    let p = self.gep(hi, self.i64c(8 * w as u64 * a))?;
                    let x = self.load(self.vi32(2 * w), p, 1)?.into_vector_value();
                    even.push(self.shuf(x, x, &ev)?);
                    odd.push(self.shuf(x, x, &od)?);
                }
                Ok(High::Split(self.transpose(even)?, self.transpose(odd)?))
            }
            h => Err(LlvmError::Llvm(format!("no high-plane handling for {h} bits"))),
        }
    }

    /// The two codes of pair `p` (half `j`) of T-vector `v`, as FP16 bits in `<2W x i16>`.
    fn pair_f16(&self, dq: &Dequant, low: VectorValue<'ctx>, high: &High<'ctx>, v: usize, j: u32, p: u32) -> R<VectorValue<'ctx>> {
        let pos = [2, 3, 1, 0][p as usize];
        let lo = self.shift(low, dq.nib as i32 - 4 * pos)?;
        let q = 7 - (4 * j + p) as i32;
        let top = (dq.nib + 4) as i32;
        let x = match high {
            High::None => lo,
            High::Fields(f) => {
                let hi = self.shift(f[v], top - dq.h as i32 * q)?;
                let m = ((1u32 << dq.h) - 1) << top;
                self.select_bits(lo, hi, m | (m << 16))?
            }
            High::Split(e, o) => {
                let he = self.shift(e[v], top - 4 * q)?;
                let ho = self.shift(o[v], top + 16 - 4 * q)?;
                let hi = self.select_bits(he, ho, 0xffff_0000)?;
                let m = 0xfu32 << top;
                self.select_bits(lo, hi, m | (m << 16))?
            }
        };
        let w = self.w();
        let i16v = self.ctx.i16_type().vec_type(2 * w);
        match dq.kind {
            Kind::Float { d, mask } => {
                let mut x16 = self.b.build_bit_cast(x, i16v, "")?.into_vector_value();
                if d > 0 {
                    x16 = self.b.build_right_shift(x16, self.splat_i16(d as u16, 2 * w), true, "")?;
                }
                Ok(self.b.build_and(x16, self.splat_i16(mask, 2 * w), "")?)
            }
            Kind::Int { xor, .. } => {
                let cm = (1u32 << dq.bits) - 1;
                let x = self.and(x, cm | (cm << 16))?;
                let x = self.b.build_xor(x, self.splat_i32(xor as u32 | ((xor as u32) << 16), w), "")?;
                Ok(self.b.build_bit_cast(x, i16v, "")?.into_vector_value())
            }
        }
    }

    /// A conversion buffer in the current function's entry block (see [`CvtBuf`]).
    pub(super) fn cvt_buf(&self) -> R<CvtBuf<'ctx>> {
        let w = self.w();
        let store = self.aligned_alloca(self.ctx.i16_type().array_type(2 * w * CVT_SLOTS as u32), "cvtbuf")?;
        Ok(CvtBuf { store, load: self.launder(store)? })
    }

    /// Both chunks of a pair's FP16 bits as `<W x float>` (minus `offset` if given), converted
    /// from memory through `buf` slot `slot`.
    fn convert_pair(&self, buf: CvtBuf<'ctx>, slot: u64, f16: VectorValue<'ctx>, offset: Option<f32>) -> R<[VectorValue<'ctx>; 2]> {
        let w = self.w() as u64;
        let at = self.i64c(slot % CVT_SLOTS * 4 * w);
        self.store(f16, self.gep(buf.store, at)?, 32)?;
        let mut out = Vec::with_capacity(2);
        for c in 0..2u64 {
            let p = self.gep(buf.load, self.i64c(slot % CVT_SLOTS * 4 * w + 2 * w * c))?;
            let halves = self.load(self.ctx.f16_type().vec_type(w as u32), p, 16)?.into_vector_value();
            let f = self.b.build_float_ext(halves, self.vf32(w as u32), "")?;
            out.push(match offset {
                None => f,
                Some(o) => self.b.build_float_sub(f, self.splat_f32(o, w as u32), "")?,
            });
        }
        Ok([out[0], out[1]])
    }

    /// FP6 byte method: per T-vector of the high plane, the bytes to OR into the low and the
    /// high nibbles of each half's words: `[(low, high); 2]` (index = half).
    pub(super) fn fp6_sets(&self, high: &[VectorValue<'ctx>]) -> R<Vec<[(VectorValue<'ctx>, VectorValue<'ctx>); 2]>> {
        let mut out = Vec::new();
        for &hv in high {
            let low_i = self.and(hv, 0x0f0f_0f0f)?;
            let high_i = self.and(self.shift(hv, -4)?, 0x0f0f_0f0f)?;
            // Byte k of a: the field at bits 0..2 of H byte k; b: bits 6..8; c: 2..4; d: 4..6.
            let a = self.pshufb(&FP6_LOW_FIELD, low_i)?;
            let b = self.pshufb(&FP6_HIGH_FIELD, high_i)?;
            let c = self.pshufb(&FP6_HIGH_FIELD, low_i)?;
            let d = self.pshufb(&FP6_LOW_FIELD, high_i)?;
            // Half 0 reads H bytes 1 (even codes) and 3 (odd), half 1 bytes 0 and 2. Word byte 0
            // holds pairs 3 (low nibble) and 2, byte 1 pairs 0 and 1, bytes 2 and 3 the odd codes.
            // Even bytes from the first vector, odd bytes from the second (vpblendvb).
            let blend = |x: VectorValue<'ctx>, y: VectorValue<'ctx>| -> R<VectorValue<'ctx>> {
                Ok(self.b.build_bit_cast(self.even_odd(x, y)?, self.vi32(self.w()), "")?.into_vector_value())
            };
            let half0 = (blend(self.shift16(a, -8)?, b)?, blend(self.shift16(c, -8)?, d)?);
            let half1 = (blend(a, self.shift16(b, 8)?)?, blend(c, self.shift16(d, 8)?)?);
            out.push([half0, half1]);
        }
        Ok(out)
    }

    /// Byte method: the four pairs' FP16 bits (`<2W x i16>`) of one T-vector of low-plane words.
    fn byte_pairs(
        &self,
        bytes: Bytes,
        low: VectorValue<'ctx>,
        sets: Option<(VectorValue<'ctx>, VectorValue<'ctx>)>,
    ) -> R<[VectorValue<'ctx>; 4]> {
        let low_n = self.and(low, 0x0f0f_0f0f)?;
        let high_n = self.and(self.shift(low, -4)?, 0x0f0f_0f0f)?;
        let (bl, bh) = match (bytes, sets) {
            (Bytes::Table(t), _) => (self.pshufb(&t, low_n)?, self.pshufb(&t, high_n)?),
            (Bytes::Fp6 { .. }, Some((sl, sh))) => (self.b.build_or(low_n, sl, "")?, self.b.build_or(high_n, sh, "")?),
            (Bytes::Fp6 { .. }, None) => return Err(LlvmError::Llvm("FP6 byte method without high-plane bytes".into())),
        };
        // Bytes per word: low nibbles [e6, e0, e7, e1], high nibbles [e4, e2, e5, e3].
        let pairs = [self.and(bl, 0xff00_ff00)?, self.and(bh, 0xff00_ff00)?, self.shift16(bh, 8)?, self.shift16(bl, 8)?];
        let w = self.w();
        let i16v = self.ctx.i16_type().vec_type(2 * w);
        let mut out = Vec::with_capacity(4);
        for p in pairs {
            let mut x = self.b.build_bit_cast(p, i16v, "")?.into_vector_value();
            if let Bytes::Fp6 { shift, mask } = bytes {
                if shift > 0 {
                    x = self.b.build_right_shift(x, self.splat_i16(shift as u16, 2 * w), true, "")?;
                    x = self.b.build_and(x, self.splat_i16(mask, 2 * w), "")?;
                }
            }
            out.push(x);
        }
        Ok([out[0], out[1], out[2], out[3]])
    }

    /// The chunks of a tile with `kvalid` valid columns, in emission order.
    pub(super) fn chunks(&self, kvalid: u32) -> Vec<ChunkInfo> {
        let l = &self.lanes;
        let mut out = Vec::new();
        for j in 0..2 {
            for v in 0..l.nq {
                for p in 0..PAIRS {
                    for c in 0..2 {
                        let t = l.chunk_t(v, c);
                        let col = (16 * j + 8 * (p >> 1) + 2 * t) as u32;
                        let slot = ((j * l.nq + v) * PAIRS + p) * 2 + c;
                        if col < kvalid {
                            out.push(ChunkInfo { j, v, p, c, a: (p & 1) * l.nrs + l.row_set(c), col, slot });
                        }
                    }
                }
            }
        }
        out
    }

    /// Dequantizes the tile `tile` (absolute tile index) and hands every chunk with a valid
    /// column to `sink`.
    pub(super) fn tile(
        &self,
        plan: &Plan,
        packed: PointerValue<'ctx>,
        cvt: CvtBuf<'ctx>,
        tile: IntValue<'ctx>,
        kvalid: u32,
        sink: &mut Sink<'_, 'ctx>,
    ) -> R<()> {
        let dq = plan.dq;
        let lo = self.low_plane(packed, tile)?;
        let high = if dq.h > 0 { self.high_words(&dq, self.high_plane(plan, packed, tile)?)? } else { High::None };
        let chunks = self.chunks(kvalid);
        let sets = match (&dq.bytes, &high) {
            (Some(Bytes::Fp6 { .. }), High::Fields(f)) => Some(self.fp6_sets(f)?),
            _ => None,
        };
        let offset = match (dq.bytes, dq.kind) {
            (None, Kind::Int { offset, .. }) => Some(offset),
            _ => None,
        };
        let mut words: Option<(usize, Vec<VectorValue<'ctx>>)> = None;
        let mut byte_pairs: Option<((usize, usize), [VectorValue<'ctx>; 4])> = None;
        let mut i = 0;
        while i < chunks.len() {
            let ch = chunks[i];
            if words.as_ref().map(|(j, _)| *j) != Some(ch.j) {
                words = Some((ch.j, self.low_words(lo, ch.j as u64)?));
            }
            let low = words.as_ref().expect("loaded").1[ch.v];
            let f16 = match dq.bytes {
                Some(bytes) => {
                    if byte_pairs.as_ref().map(|(k, _)| *k) != Some((ch.j, ch.v)) {
                        let s = sets.as_ref().map(|s| s[ch.v][ch.j]);
                        byte_pairs = Some(((ch.j, ch.v), self.byte_pairs(bytes, low, s)?));
                    }
                    byte_pairs.as_ref().expect("computed").1[ch.p]
                }
                None => self.pair_f16(&dq, low, &high, ch.v, ch.j as u32, ch.p as u32)?,
            };
            let values = self.convert_pair(cvt, (ch.v * PAIRS + ch.p) as u64, f16, offset)?;
            while i < chunks.len() && (chunks[i].j, chunks[i].v, chunks[i].p) == (ch.j, ch.v, ch.p) {
                sink(self, Chunk { value: values[chunks[i].c], info: chunks[i] })?;
                i += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequant_constants() {
        let dq = Dequant::of(Format::Fp6E3M2).unwrap();
        assert!(matches!(dq.kind, Kind::Float { d: 2, mask: 0x9f00 }));
        assert_eq!((dq.nib, dq.h), (10, 2));
        let dq = Dequant::of(Format::Fp6E2M3).unwrap();
        assert!(matches!(dq.kind, Kind::Float { d: 3, mask: 0x8f80 }));
        let dq = Dequant::of(Format::Fp4E2M1).unwrap();
        assert!(matches!(dq.kind, Kind::Float { d: 3, mask: 0x8e00 }));
        assert!(Format::ALL.iter().all(|&f| super::super::supports(f)));
        for f in [Format::Fp6E3M2, Format::Fp6E2M3, Format::Fp4E2M1, Format::Int4] {
            assert!(Dequant::of(f).unwrap().bytes.is_some(), "{f} should use the byte method");
        }
        let Some(Bytes::Table(t)) = Dequant::of(Format::Int4).unwrap().bytes else { panic!() };
        assert_eq!((t[1], t[7], t[9], t[15]), (0x3c, 0x47, 0xc7, 0xbc)); // 1, 7, -7, -1
        assert_eq!(f16_bits_exact(-2.0), Some(0xc000));
        assert_eq!(f16_bits_exact(1.0 / 3.0), None);
    }
}
