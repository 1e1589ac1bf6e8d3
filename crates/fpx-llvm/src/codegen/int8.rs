//! Int8-activation kernels with 256-bit AVX2 byte dot products (also used on AVX-512
//! targets without VBMI and VNNI), and what they share with the 512-bit kernels of
//! [`super::vnni`]: the activation buffer's layout ([`Act8Rows`]), the panel loop of an n-tile
//! ([`Gen::int8_panel_loop`]), the row-block signature ([`PanelRowArgs`]) and the end of
//! each row ([`Gen::int8_store_row`]).
//!
//! Per n-tile, [`I8_PANEL_TILES`] tiles at a time are decoded with the byte method into
//! unsigned bytes `value · units + 64`, regrouped so that each 32-bit lane holds 4 codes of
//! one output row, into a 9 KiB panel; blocks of [`I8_ROWS`] rows then multiply them with
//! `vpmaddubsw` and `vpmaddwd` into `i32`, subtract the correction and apply the scales in
//! `f32`.

use fpx_quant::layout::{TILE_K, TILE_N};
use fpx_quant::{fold, Format};
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::{BasicValueEnum, FunctionValue, IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;

use super::builder::Params;
use super::decode::High;
use super::epilogue::{Cols, Prior};
use super::{Gen, NtileArgs, Plan, R};
use crate::LlvmError;

/// Where row `r`'s parts of an int8 activation buffer ([`fpx_quant::act8::Int8Activations`]
/// of `m` rows: all scales, all corrections, then all codes) start.
pub(super) struct Act8Rows<'ctx> {
    /// Codes: `32 · kt` bytes per row.
    pub(super) q: PointerValue<'ctx>,
    /// Scales: `kt` `f32` per row.
    pub(super) s: PointerValue<'ctx>,
    /// Corrections: `kt` `i32` per row.
    pub(super) c: PointerValue<'ctx>,
}

/// The parameters an int8 panel row block (of either family) takes after its three
/// activation parameters: the panel and its K tiles, and where the outputs go.
pub(super) struct PanelRowArgs<'ctx> {
    /// The decoded tiles.
    pub(super) panel: PointerValue<'ctx>,
    /// The K tile of the panel's first tile.
    pub(super) kt0: IntValue<'ctx>,
    /// Tiles in the panel.
    pub(super) count: IntValue<'ctx>,
    /// Whether the panel starts K (`i1`): add the bias, else what y holds.
    pub(super) first: IntValue<'ctx>,
    /// The weight scales.
    pub(super) scales: PointerValue<'ctx>,
    /// The bias (may be null).
    pub(super) bias: PointerValue<'ctx>,
    /// The block's first row of y.
    pub(super) y: PointerValue<'ctx>,
    /// The n-tile.
    pub(super) nt: IntValue<'ctx>,
    /// The end of the column range.
    pub(super) ne: IntValue<'ctx>,
}

/// How the rows of an int8 row block are finished ([`Gen::int8_store_row`]).
pub(super) struct RowsOut<'ctx> {
    /// The block's first row of y.
    y: PointerValue<'ctx>,
    /// What the outputs add to.
    prior: Prior<'ctx>,
    /// Per-channel weight scales times `1 / units` (`None` for grouped weights).
    per_channel: Option<VectorValue<'ctx>>,
}

/// Takes a tile's code bytes per half `j` and T-vector `v` ([`Gen::i8_tile_bytes`]); may return
/// a value the next T-vector's decode must wait for.
pub(super) type TileBytesSink<'s, 'm, 'ctx> =
    dyn FnMut(&Gen<'m, 'ctx>, usize, usize, [VectorValue<'ctx>; 2]) -> R<Option<VectorValue<'ctx>>> + 's;

/// Gives a direct row block's 16 sums per row (natural order) over the K tiles `kt0 .. kt0 + count`.
pub(super) type BlockSums<'s, 'm, 'ctx> = dyn FnMut(&Gen<'m, 'ctx>, IntValue<'ctx>, IntValue<'ctx>) -> R<Vec<VectorValue<'ctx>>> + 's;

/// Bytes of one int8 panel tile: 16 vectors of 32 unsigned weight bytes (`weight + 64`), then
/// two vectors of `f32` scales in accumulator lane order (grouped weights only).
const I8_TILE_BYTES: u64 = I8_SCALES_AT + 4 * TILE_N as u64;
/// Where the scales start in an int8 panel tile (after one byte per weight).
const I8_SCALES_AT: u64 = (TILE_N * TILE_K) as u64;
/// Tiles per int8 panel (9 KiB: L1-resident with the activations), and the K block at whose
/// end every int8 kernel, panel or direct, folds its `f32` sums into the outputs
/// ([`Gen::int8_direct_k_blocks`]): so a row's outputs do not depend on the kernel or ISA.
pub(super) const I8_PANEL_TILES: u64 = 16;
/// Rows of X per int8 row block: 2 `f32` accumulators each, plus one row's 2 `i32` ones at a time
/// (3 measured at least as fast as 4 or 5 on Zen 3 and spills least).
const I8_ROWS: u32 = 3;

/// How a format's codes become unsigned weight bytes `value · units + 64` for the int8 kernels.
#[derive(Debug, Clone, Copy)]
pub(super) struct ByteDecode {
    /// `1 / units`: folded into the scales.
    pub(super) inv_units: f32,
    /// How a code byte becomes the weight byte.
    pub(super) kind: ByteKind,
}

/// The byte decoder of a code width.
#[derive(Debug, Clone, Copy)]
pub(super) enum ByteKind {
    /// 4-bit codes: one table from the code to `value · units + 64`.
    Table([u8; 16]),
    /// FP6: the code byte `s << 7 | e << 4 | low nibble` (as the byte method assembles it);
    /// magnitudes from `mag[e][nibble]` (`identity0`: `mag[0]` is the nibble itself), sign from bit 7.
    Fp6 { mag: [[u8; 16]; 2], identity0: bool },
}

impl ByteDecode {
    /// The byte decoder of `format` (an error if it has no integer form or is not 4 or 6 bits wide).
    pub(super) fn of(format: Format) -> R<ByteDecode> {
        let units = fpx_quant::act8::int8_units(format)
            .ok_or_else(|| LlvmError::Llvm(format!("{format} has no integer form for int8 activations")))?;
        let value = |c: u8| fold::stored_value(format, c) * units;
        let kind = match format.bits() {
            4 => {
                let mut t = [0u8; 16];
                for (c, e) in t.iter_mut().enumerate() {
                    *e = (value(c as u8) as i32 + fpx_quant::act8::WEIGHT_OFFSET) as u8;
                }
                ByteKind::Table(t)
            }
            6 => {
                let mut mag = [[0u8; 16]; 2];
                for (e, row) in mag.iter_mut().enumerate() {
                    for (l, m) in row.iter_mut().enumerate() {
                        let c = (16 * e + l) as u8;
                        let (v, neg) = (value(c), value(c | 0x20));
                        if v < 0.0 || (neg != -v && !(v == 0.0 && neg == 0.0)) {
                            return Err(LlvmError::Llvm(format!("{format}: code {c:#x} is not sign-magnitude")));
                        }
                        *m = v as u8;
                    }
                }
                let identity0 = mag[0].iter().enumerate().all(|(l, &m)| m as usize == l);
                ByteKind::Fp6 { mag, identity0 }
            }
            b => return Err(LlvmError::Llvm(format!("no byte decoder for {b}-bit codes"))),
        };
        Ok(ByteDecode { inv_units: 1.0 / units, kind })
    }
}

impl<'m, 'ctx> Gen<'m, 'ctx> {
    /// Row `r`'s parts of the int8 activation buffer `x` of `m` rows with `kt` blocks each.
    pub(super) fn act8_rows(&self, x: PointerValue<'ctx>, m: IntValue<'ctx>, r: IntValue<'ctx>, kt: u64) -> R<Act8Rows<'ctx>> {
        let blocks = self.b.build_int_nsw_mul(m, self.i64c(kt), "")?;
        let (corrections, codes) = (self.gep(x, self.mul(blocks, 4)?)?, self.gep(x, self.mul(blocks, 8)?)?);
        Ok(Act8Rows {
            q: self.gep(codes, self.mul(r, TILE_K as u64 * kt)?)?,
            s: self.gep(x, self.mul(r, 4 * kt)?)?,
            c: self.gep(corrections, self.mul(r, 4 * kt)?)?,
        })
    }

    /// Code bytes (see [`ByteKind`]) to unsigned weight bytes.
    fn decode_bytes(&self, dec: &ByteDecode, r: VectorValue<'ctx>) -> R<VectorValue<'ctx>> {
        let w = self.w();
        let to_bytes = |v: VectorValue<'ctx>| self.as_bytes(v);
        match dec.kind {
            ByteKind::Table(t) => to_bytes(self.pshufb(&t, self.b.build_bit_cast(r, self.vi32(w), "")?.into_vector_value())?),
            ByteKind::Fp6 { mag, identity0 } => {
                let (m, rb) = self.fp6_magnitudes(&mag, identity0, r)?;
                // vpsignb: the magnitude negated where the code's sign (bit 7) is set (a zero
                // code byte is +0, whose magnitude is 0 anyway).
                let signed = self.call_vec("llvm.x86.avx2.psign.b", &[m.into(), rb.into()])?;
                let off = self.splat_i8(fpx_quant::act8::WEIGHT_OFFSET as u8, 4 * w);
                Ok(self.b.build_int_add(signed, off, "")?)
            }
        }
    }

    /// FP6 code bytes `r` (`s << 7 | e << 4 | low nibble`) to their unsigned magnitudes
    /// `mag[e][nibble]`, and `r` as bytes (whose bit 7 is the sign).
    pub(super) fn fp6_magnitudes(
        &self,
        mag: &[[u8; 16]; 2],
        identity0: bool,
        r: VectorValue<'ctx>,
    ) -> R<(VectorValue<'ctx>, VectorValue<'ctx>)> {
        let w = self.w();
        let to_bytes = |v: VectorValue<'ctx>| self.as_bytes(v);
        let r32 = self.b.build_bit_cast(r, self.vi32(w), "")?.into_vector_value();
        let nib = self.and(r32, 0x0f0f_0f0f)?;
        let m0 = if identity0 { to_bytes(nib)? } else { to_bytes(self.pshufb(&mag[0], nib)?)? };
        let m1 = to_bytes(self.pshufb(&mag[1], nib)?)?;
        let zero = self.ctx.i8_type().vec_type(4 * w).const_zero();
        // The exponent bit (bit 4) moved to each byte's sign by a 16-bit shift (bits from the
        // neighbouring byte land below bit 7): one vpsllw, then vpblendvb.
        let e = self.b.build_int_compare(IntPredicate::SLT, to_bytes(self.shift16(r32, 3)?)?, zero, "")?;
        Ok((self.b.build_select(e, m1, m0, "")?.into_vector_value(), to_bytes(r)?))
    }

    /// Row (0..8) of each `i32` lane of a T-vector: the same for every T-vector on AVX2.
    pub(super) fn i8_lane_rows(&self) -> R<Vec<usize>> {
        let l = &self.lanes;
        let rows: Vec<usize> = l.order[0].iter().map(|w| w / 4).collect();
        for v in 0..l.nq {
            if l.order[v].iter().map(|w| w / 4).collect::<Vec<_>>() != rows || l.chunk_t(v, 0) != l.chunk_t(v, 1) {
                return Err(LlvmError::Llvm("int8 kernels need T-vectors of one t and fixed rows".into()));
            }
        }
        Ok(rows)
    }

    /// Hands `each(j, v, [row g, row g + 8])` the code bytes of tile `tile` (absolute) per half
    /// `j` and T-vector `v`: 4 codes per lane, columns `c + [8, 0, 9, 1]` (`c = 16j + 2t`), as
    /// [`ByteKind`] expects them. T-vector by T-vector, so that only one T-vector's high-plane
    /// bytes are live at a time (half by half, all four stay live and spill); a value `each`
    /// returns is computed before the next T-vector is decoded ([`Gen::tie`]).
    pub(super) fn i8_tile_bytes(
        &self,
        plan: &Plan,
        packed: PointerValue<'ctx>,
        tile: IntValue<'ctx>,
        each: &mut TileBytesSink<'_, 'm, 'ctx>,
    ) -> R<()> {
        let dq = plan.dq;
        let lo = self.low_plane(packed, tile)?;
        let high = if dq.h > 0 {
            match self.high_words(&dq, self.high_plane(plan, packed, tile)?)? {
                High::Fields(f) if dq.h == 2 => Some(f),
                _ => return Err(LlvmError::Llvm("int8 kernels decode 4- and 6-bit codes only".into())),
            }
        } else {
            None
        };
        let words = [self.low_words(lo, 0)?, self.low_words(lo, 1)?];
        let mut token: Option<VectorValue<'ctx>> = None;
        let after = |v: VectorValue<'ctx>, token: Option<VectorValue<'ctx>>| match token {
            Some(t) => self.tie(v, t),
            None => Ok(v),
        };
        for v in 0..self.lanes.nq {
            let sets = match &high {
                Some(h) => Some(self.fp6_sets(&[after(h[v], token)?])?[0]),
                None => None,
            };
            for (j, words) in words.iter().enumerate() {
                let low = after(words[v], token)?;
                let low_n = self.and(low, 0x0f0f_0f0f)?;
                let high_n = self.and(self.shift(low, -4)?, 0x0f0f_0f0f)?;
                let (bl, bh) = match sets {
                    Some(s) => {
                        let (sl, sh) = s[j];
                        (self.b.build_or(low_n, sl, "")?, self.b.build_or(high_n, sh, "")?)
                    }
                    None => (low_n, high_n),
                };
                // Word bytes: low nibbles [e6, e0, e7, e1], high nibbles [e4, e2, e5, e3]; row g
                // is [e4, e0, e5, e1], row g + 8 [e6, e2, e7, e3].
                if let Some(t) = each(self, j, v, [self.even_odd(bh, bl)?, self.even_odd(bl, bh)?])? {
                    token = Some(t);
                }
            }
        }
        Ok(())
    }

    /// Grouped weights: the scales of tile `kt`'s group times `1 / units`, as the two
    /// accumulators' lane order (`rows`) wants them.
    pub(super) fn i8_group_scales(
        &self,
        plan: &Plan,
        inv_units: f32,
        scales: PointerValue<'ctx>,
        kt: IntValue<'ctx>,
        cols: Cols<'ctx>,
        rows: &[usize],
    ) -> R<[VectorValue<'ctx>; 2]> {
        let w = self.w();
        let s16 = self.scales16(plan, scales, self.tile_group(plan, kt)?, cols)?;
        let half = |h: usize| -> R<VectorValue<'ctx>> {
            let idx: Vec<u32> = rows.iter().map(|&g| (g + 8 * h) as u32).collect();
            Ok(self.b.build_float_mul(self.shuf(s16, s16, &idx)?, self.splat_f32(inv_units, w), "")?)
        };
        Ok([half(0)?, half(1)?])
    }

    /// Decodes tile `kt` (relative to the n-tile) into int8 panel slot `dst`: the unsigned
    /// weight bytes of [`Gen::i8_tile_bytes`], then the grouped scales.
    #[allow(clippy::too_many_arguments)]
    fn i8_build(
        &self,
        plan: &Plan,
        dec: &ByteDecode,
        (packed, scales): (PointerValue<'ctx>, PointerValue<'ctx>),
        (tile0, kt): (IntValue<'ctx>, IntValue<'ctx>),
        cols: Cols<'ctx>,
        dst: PointerValue<'ctx>,
        rows: &[usize],
    ) -> R<()> {
        let w = self.w() as u64;
        self.i8_tile_bytes(plan, packed, self.add(tile0, kt)?, &mut |g, j, v, rows| {
            for (h, r) in rows.into_iter().enumerate() {
                let u = g.decode_bytes(dec, r)?;
                let at = ((j * g.lanes.nq + v) * 2 + h) as u64 * 4 * w;
                g.store(u, g.gep(dst, g.i64c(at))?, 32)?;
            }
            Ok(None)
        })?;
        if plan.groups > 1 {
            for (h, s) in self.i8_group_scales(plan, dec.inv_units, scales, kt, cols, rows)?.into_iter().enumerate() {
                self.store(s, self.gep(dst, self.i64c(I8_SCALES_AT + h as u64 * 4 * w))?, 32)?;
            }
        }
        Ok(())
    }

    /// The int8 n-tile loop: K in panels of [`I8_PANEL_TILES`] tiles, each decoded once and
    /// consumed by every block of rows.
    pub(super) fn i8_ntile(&self, plan: &Plan, name: &str) -> R<FunctionValue<'ctx>> {
        let fname = format!("{name}.i8");
        if let Some(f) = self.module.get_function(&fname) {
            return Ok(f);
        }
        let dec = ByteDecode::of(plan.spec.format)?;
        let lane_rows = self.i8_lane_rows()?;
        let rows = I8_ROWS;
        let blocks: Vec<FunctionValue<'ctx>> = (1..=rows).map(|b| self.i8_rows(plan, &dec, &lane_rows, name, b)).collect::<R<_>>()?;
        let (f, a) = self.ntile_function(&fname);
        let panel = self.aligned_alloca(self.ctx.i8_type().array_type((I8_PANEL_TILES * I8_TILE_BYTES) as u32), "i8panel")?;
        let n0 = self.mul(a.nt, TILE_N as u64)?;
        let tile0 = self.mul(a.nt, plan.kt)?;
        let cols = self.cols(plan, n0, a.ne)?;
        let mut decode = |g: &Self, i: IntValue<'ctx>, kt0: IntValue<'ctx>| {
            let dst = g.gep(panel, g.mul(i, I8_TILE_BYTES)?)?;
            g.i8_build(plan, &dec, (a.packed, a.scales), (tile0, g.add(kt0, i)?), cols, dst, &lane_rows)
        };
        let mut head = |g: &Self, r0: IntValue<'ctx>| {
            let xr = g.act8_rows(a.x, a.m, r0, plan.kt)?;
            Ok([xr.q.into(), xr.s.into(), xr.c.into()])
        };
        self.int8_panel_loop(f, plan, &a, (panel, I8_PANEL_TILES), &blocks, &mut decode, &mut head)
    }

    /// The int8 row block: `rows` rows of quantized X against the panel's tiles; per tile and
    /// row, byte dot products into `i32`, then the correction, the activation scale (and the
    /// tile's weight scales) into `f32`; finally adds to y (or the bias, for the first panel).
    fn i8_rows(&self, plan: &Plan, dec: &ByteDecode, lane_rows: &[usize], name: &str, rows: u32) -> R<FunctionValue<'ctx>> {
        let p = self.ptr_t();
        let (f, a, PanelRowArgs { panel, kt0, count, first, scales, bias, y, nt, ne }) =
            self.int8_rows_function(&format!("{name}.i8rows{rows}"), [p, p, p]);
        let (xq, xs, xc) = (a.ptr(0), a.ptr(1), a.ptr(2));
        let w = self.w();
        let kt = plan.kt;
        let grouped = plan.groups > 1;
        let bytes_t = self.ctx.i8_type().vec_type(4 * w);
        let pmaddubsw = self.intrinsic("llvm.x86.avx2.pmadd.ub.sw", &[])?;
        let pmaddwd = self.intrinsic("llvm.x86.avx2.pmadd.wd", &[])?;
        let ones = self.splat_i16(1, 2 * w);
        let rows_u = rows as usize;

        let yf0: Vec<BasicValueEnum<'ctx>> = vec![self.fzero(w).into(); 2 * rows_u];
        let yf = self.for_loop(f, self.i64c(0), count, yf0, &mut |g, ti, carried| {
            let tile = g.add(kt0, ti)?;
            let src = g.gep(panel, g.mul(ti, I8_TILE_BYTES)?)?;
            // Row by row, each reloading the panel from L1 through its own laundered pointer (else
            // LLVM merges the loads and keeps 16 panel vectors live across rows, spilling them):
            // only one row's `i32` accumulators are live next to the `f32` ones.
            let mut acc = vec![g.vi32(w).const_zero(); 2 * rows_u];
            for r in 0..rows_u {
                let src = g.launder(src)?;
                for q in 0..2 * g.lanes.nq {
                    let (j, v) = (q / g.lanes.nq, q % g.lanes.nq);
                    let t = g.lanes.chunk_t(v, 0) as u64;
                    let xoff = g.add(g.mul(tile, TILE_K as u64)?, g.i64c((4 * j as u64 + t) * 4 + r as u64 * TILE_K as u64 * kt))?;
                    let xd = g.load(g.ctx.i32_type(), g.gep(xq, xoff)?, 4)?;
                    let xb = g.as_bytes(g.splat_scalar(xd, g.vi32(w))?)?;
                    for h in 0..2 {
                        let at = g.i64c((q * 2 + h) as u64 * 4 * w as u64);
                        let wv = g.load(bytes_t, g.gep(src, at)?, 32)?;
                        let prod = g.call(pmaddubsw, &[wv, xb.into()])?.expect("returns").into_vector_value();
                        let sums = g.call(pmaddwd, &[prod.into(), ones.into()])?.expect("returns").into_vector_value();
                        acc[2 * r + h] = g.b.build_int_add(acc[2 * r + h], sums, "")?;
                    }
                }
            }
            let mut out = Vec::with_capacity(2 * rows_u);
            for r in 0..rows_u {
                let at = g.mul(g.add(tile, g.i64c(r as u64 * kt))?, 4)?;
                let c = g.load(g.ctx.i32_type(), g.gep(xc, at)?, 4)?;
                let s = g.load(g.ctx.f32_type(), g.gep(xs, at)?, 4)?;
                let (cv, sv) = (g.splat_scalar(c, g.vi32(w))?, g.splat_scalar(s, g.vf32(w))?);
                for h in 0..2 {
                    let a = g.b.build_int_sub(acc[2 * r + h], cv, "")?;
                    let af = g.b.build_signed_int_to_float(a, g.vf32(w), "")?;
                    let scale = if grouped {
                        let ws = g.load(g.vf32(w), g.gep(src, g.i64c(I8_SCALES_AT + h as u64 * 4 * w as u64))?, 32)?;
                        g.b.build_float_mul(sv, ws.into_vector_value(), "")?
                    } else {
                        sv
                    };
                    out.push(g.fma(af, scale, carried[2 * r + h].into_vector_value())?.into());
                }
            }
            Ok(out)
        })?;

        let cols = self.cols(plan, self.mul(nt, TILE_N as u64)?, ne)?;
        let out = self.int8_rows_out(f, plan, (scales, bias, y), first, cols, dec.inv_units)?;
        let nat = self.i8_natural_order(lane_rows);
        for r in 0..rows_u {
            let vals = self.shuf(yf[2 * r].into_vector_value(), yf[2 * r + 1].into_vector_value(), &nat)?;
            self.int8_store_row(f, plan, &out, r, vals)?;
        }
        self.end_function(f)
    }

    /// The shuffle of a row's two accumulators (lanes as `lane_rows`, see [`Gen::i8_lane_rows`])
    /// into its 16 outputs in natural order: output `n = lane_rows[f] + 8h` comes from lane
    /// `f` of accumulator `h`.
    pub(super) fn i8_natural_order(&self, lane_rows: &[usize]) -> Vec<u32> {
        let w = self.w() as usize;
        (0..TILE_N)
            .map(|n| {
                let (h, g) = (n / 8, n % 8);
                (h * w + lane_rows.iter().position(|&r| r == g).expect("every row has a lane")) as u32
            })
            .collect()
    }

    // ---------------------------------------------------------------- shared with vnni

    /// The n-tile function `fname` of a direct (register-decoding) int8 kernel: the rows in
    /// blocks of `blocks.len()`, block `b` calling `blocks[b - 1]` with `(x, m, r0, packed,
    /// scales, bias, y at row r0, nt, ne)`. Ends the function.
    pub(super) fn direct_ntile_function(&self, plan: &Plan, fname: &str, blocks: &[FunctionValue<'ctx>]) -> R<FunctionValue<'ctx>> {
        let (f, a) = self.ntile_function(fname);
        self.row_blocks_at(f, blocks.len() as u32, a.m, &mut |g, b, r0| {
            let yb = g.gep(a.y, g.mul(r0, 4 * plan.n())?)?;
            g.call(
                blocks[b as usize - 1],
                &[a.x.into(), a.m.into(), r0.into(), a.packed.into(), a.scales.into(), a.bias, yb.into(), a.nt.into(), a.ne.into()],
            )?;
            Ok(())
        })?;
        self.end_function(f)
    }

    /// The n-tile loop both int8 kernel families share: K in blocks of `per` tiles;
    /// `decode(i, kt0)` writes K tile `kt0 + i` into slot `i` of `panel`, then every block of
    /// rows (`blocks[b - 1]` for `b` rows) gets its activation arguments `head(r0)` and the
    /// panel's ([`PanelRowArgs`]). Ends the function.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn int8_panel_loop(
        &self,
        f: FunctionValue<'ctx>,
        plan: &Plan,
        a: &NtileArgs<'ctx>,
        (panel, per): (PointerValue<'ctx>, u64),
        blocks: &[FunctionValue<'ctx>],
        decode: &mut dyn FnMut(&Self, IntValue<'ctx>, IntValue<'ctx>) -> R<()>,
        head: &mut dyn FnMut(&Self, IntValue<'ctx>) -> R<[BasicValueEnum<'ctx>; 3]>,
    ) -> R<FunctionValue<'ctx>> {
        let kt = plan.kt;
        self.for_loop(f, self.i64c(0), self.i64c(kt.div_ceil(per)), vec![], &mut |g, kb, _| {
            let kt0 = g.mul(kb, per)?;
            let count = g.tiles_in_block(kb, per, kt)?;
            g.for_loop(f, g.i64c(0), count, vec![], &mut |g, i, _| {
                decode(g, i, kt0)?;
                Ok(vec![])
            })?;
            let first = g.b.build_int_compare(IntPredicate::EQ, kb, g.i64c(0), "")?;
            g.row_blocks_at(f, blocks.len() as u32, a.m, &mut |g, b, r0| {
                let [x0, x1, x2] = head(g, r0)?;
                let yb = g.gep(a.y, g.mul(r0, 4 * plan.n())?)?;
                let panel_args = [panel.into(), kt0.into(), count.into(), first.into(), a.scales.into(), a.bias, yb.into()];
                let args: Vec<BasicValueEnum<'ctx>> =
                    [x0, x1, x2].into_iter().chain(panel_args).chain([a.nt.into(), a.ne.into()]).collect();
                g.call(blocks[b as usize - 1], &args)?;
                Ok(())
            })?;
            Ok(vec![])
        })?;
        self.end_function(f)
    }

    /// Declares the int8 panel row-block function `name` (internal), positioned at its entry:
    /// three activation parameters of types `head`, then the panel's ([`PanelRowArgs`]).
    pub(super) fn int8_rows_function(
        &self,
        name: &str,
        head: [BasicMetadataTypeEnum<'ctx>; 3],
    ) -> (FunctionValue<'ctx>, Params<'ctx>, PanelRowArgs<'ctx>) {
        let (p, i) = (self.ptr_t(), self.i64_t());
        let b1 = self.ctx.bool_type().into();
        let [h0, h1, h2] = head;
        let (f, a) = self.begin_function(name, &[h0, h1, h2, p, i, i, b1, p, p, p, i, i], true);
        let (panel, kt0, count, first) = (a.ptr(3), a.int(4), a.int(5), a.int(6));
        let panel_args =
            PanelRowArgs { panel, kt0, count, first, scales: a.ptr(7), bias: a.ptr(8), y: a.ptr(9), nt: a.int(10), ne: a.int(11) };
        (f, a, panel_args)
    }

    /// How the rows of an int8 row block end: the bias (or y) they add to, and the
    /// per-channel scales times `1 / units` (for grouped weights the tile loop applied them).
    pub(super) fn int8_rows_out(
        &self,
        f: FunctionValue<'ctx>,
        plan: &Plan,
        (scales, bias, y): (PointerValue<'ctx>, PointerValue<'ctx>, PointerValue<'ctx>),
        first: IntValue<'ctx>,
        cols: Cols<'ctx>,
        inv_units: f32,
    ) -> R<RowsOut<'ctx>> {
        let prior = Prior { first, bias16: self.bias16(f, bias, cols)?, cols };
        let per_channel = if plan.groups > 1 {
            None
        } else {
            let s16 = self.scales16(plan, scales, self.i64c(0), cols)?;
            Some(self.b.build_float_mul(s16, self.splat_f32(inv_units, TILE_N as u32), "")?)
        };
        Ok(RowsOut { y, prior, per_channel })
    }

    /// Stores row `r` of an int8 row block: its 16 outputs `vals` (natural order, `f32`),
    /// times the per-channel scales, plus the bias or what y holds ([`Gen::y_or_bias`]).
    pub(super) fn int8_store_row(
        &self,
        f: FunctionValue<'ctx>,
        plan: &Plan,
        out: &RowsOut<'ctx>,
        r: usize,
        vals: VectorValue<'ctx>,
    ) -> R<()> {
        let yrow = self.gep(out.y, self.i64c(r as u64 * 4 * plan.n()))?;
        let old = self.y_or_bias(f, &out.prior, yrow)?;
        let vals = self.int8_fold(out, vals, old)?;
        self.store16(f, yrow, out.prior.cols, vals)
    }

    /// A K block's 16 sums `vals` (natural order) added to the outputs so far (`old`): times
    /// the per-channel scales, plus `old`.
    fn int8_fold(&self, out: &RowsOut<'ctx>, vals: VectorValue<'ctx>, old: VectorValue<'ctx>) -> R<VectorValue<'ctx>> {
        let vals = match out.per_channel {
            Some(s) => self.b.build_float_mul(vals, s, "")?,
            None => vals,
        };
        Ok(self.b.build_float_add(vals, old, "")?)
    }

    /// The K loop of a direct row block (`rows` rows, every tile decoded in registers): K in
    /// blocks of [`I8_PANEL_TILES`] tiles, `sums(kt0, count)` giving each row's 16 sums over a
    /// block (natural order), folded into running outputs ([`Gen::int8_fold`], from the bias)
    /// exactly as the panel loop folds them into y; then the rows are stored.
    pub(super) fn int8_direct_k_blocks(
        &self,
        f: FunctionValue<'ctx>,
        plan: &Plan,
        out: &RowsOut<'ctx>,
        rows: usize,
        sums: &mut BlockSums<'_, 'm, 'ctx>,
    ) -> R<()> {
        let (per, kt) = (I8_PANEL_TILES, plan.kt);
        let init: Vec<BasicValueEnum<'ctx>> = vec![out.prior.bias16.into(); rows];
        let run = self.for_loop(f, self.i64c(0), self.i64c(kt.div_ceil(per)), init, &mut |g, kb, carried| {
            let block = sums(g, g.mul(kb, per)?, g.tiles_in_block(kb, per, kt)?)?;
            block.into_iter().zip(&carried).map(|(v, old)| Ok(g.int8_fold(out, v, old.into_vector_value())?.into())).collect()
        })?;
        for (r, vals) in run.iter().enumerate() {
            let yrow = self.gep(out.y, self.i64c(r as u64 * 4 * plan.n()))?;
            self.store16(f, yrow, out.prior.cols, vals.into_vector_value())?;
        }
        Ok(())
    }
}
