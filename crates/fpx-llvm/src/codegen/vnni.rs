//! Int8-activation kernels for CPUs with AVX-512 VBMI and VNNI (Ice Lake, Zen 4 and later):
//! 512-bit vectors, no transpose and no per-weight arithmetic beyond three byte operations.
//!
//! A 64-byte load of low-plane words (16 lanes of one half) holds, per lane, row `g`'s codes
//! e4, e0, e5, e1 and row `g + 8`'s e6, e2, e7, e3 — the columns `c + [8, 0, 9, 1]`
//! ([`fpx_quant::act8::code_position`]) in which the activation codes are stored. So per
//! lane vector and row set:
//!
//! 1. `vpmultishiftqb` picks each code's nibble from its word into bits 0..4 of a byte, and
//!    a second one picks its high-plane field from the lane's high word into bits 4..6 (the
//!    bit positions are constants of the layout, [`low_nibble_pos`] and [`high_field_pos`]);
//! 2. one `vpternlogd` merges them into the 6-bit code (bits 6..8 are ignored below);
//! 3. `vpermb` looks the code up in a 64-entry table of unsigned bytes `value · units + 64`;
//! 4. `vpdpbusd` multiplies 64 of those by the 16-byte activation group of the half (broadcast
//!    to every 128-bit lane) and adds each lane's 4 products to an `i32` accumulator, which
//!    starts at `-correction / 4` (each output's 4 lanes share the `64 · Σ codes` correction).
//!
//! Per tile and row the 4 `i32` accumulators (16 lanes: 4 rows × 4 column groups) are
//! converted and multiplied by the activation scale (and grouped weight scales) into `f32`
//! ones; the column groups are summed once per n-tile. When `m` is at most
//! [`DIRECT_ROWS`] every tile is decoded in registers and streamed once; otherwise
//! [`PANEL_TILES`] tiles at a time are decoded into an 8 KiB panel that blocks of
//! [`PANEL_ROWS`] rows reuse.

use fpx_quant::act8::{int8_units, WEIGHT_OFFSET};
use fpx_quant::layout::{high_field_pos, low_nibble_pos};
use inkwell::types::VectorType;
use inkwell::values::{BasicValueEnum, FunctionValue, IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;

use super::{fold, Gen, LlvmError, Plan, LOW_TILE_BYTES, R};
use fpx_quant::Format;

/// Rows of X up to which tiles are decoded in registers (8 code vectors and 4 `f32`
/// accumulators per row stay in the 32 vector registers).
pub(super) const DIRECT_ROWS: u32 = 2;
/// Rows of X per panel row block.
const PANEL_ROWS: u32 = 4;
/// Tiles per panel: 16 × 512 code bytes = 8 KiB, L1-resident with the activations.
const PANEL_TILES: u64 = 16;
/// Code bytes of one decoded tile: 8 vectors of 64.
const TILE_CODE_BYTES: u64 = 512;
/// Elements of a lane word in the byte order of the activation groups, per row set:
/// row `g` then row `g + 8` (see the module docs).
const ROW_SET_ELEMS: [[usize; 4]; 2] = [[4, 0, 5, 1], [6, 2, 7, 3]];

/// Whether `plan` has a VNNI kernel: 4- or 6-bit codes with an integer form, and scale
/// groups that are whole tiles (or one group).
pub(super) fn supported(plan: &Plan) -> bool {
    matches!(plan.spec.format.bits(), 4 | 6) && plan.tpg.is_some() && code_table(plan.spec.format).is_ok()
}

/// The `vpermb` table: code (low 6 bits of the index) to the unsigned byte `value · units + 64`.
fn code_table(format: Format) -> R<[u8; 64]> {
    let units = int8_units(format).ok_or_else(|| LlvmError::Llvm(format!("{format} has no integer form for int8 activations")))?;
    let mask = (1u8 << format.bits()) - 1;
    let mut t = [0u8; 64];
    for (i, e) in t.iter_mut().enumerate() {
        let v = fold::stored_value(format, i as u8 & mask) * units + WEIGHT_OFFSET as f32;
        if v.fract() != 0.0 || !(0.0..=255.0).contains(&v) {
            return Err(LlvmError::Llvm(format!("{format}: code {i:#x} has no unsigned byte form ({v})")));
        }
        *e = v as u8;
    }
    Ok(t)
}

/// `vpmultishiftqb` controls putting the nibble of each element of row set `rs` at bits 0..4.
fn nibble_controls(rs: usize) -> [u8; 8] {
    std::array::from_fn(|b| (32 * (b / 4) as u32 + 4 * low_nibble_pos(ROW_SET_ELEMS[rs][b % 4])) as u8)
}

/// `vpmultishiftqb` controls putting the 2-bit high field of each element of row set `rs`
/// (half `j`) at bits 4..6 (the rotation wraps within the 64-bit word).
fn field_controls(j: usize, rs: usize) -> [u8; 8] {
    std::array::from_fn(|b| ((32 * (b / 4) as u32 + 2 * high_field_pos(j, ROW_SET_ELEMS[rs][b % 4]) + 60) % 64) as u8)
}

/// Index of the code vector for (half, lane half, row set) in a decoded tile.
fn code_index(j: usize, lh: usize, rs: usize) -> usize {
    (j * 2 + lh) * 2 + rs
}

/// Where the pieces of the activation buffer for row block `r0` start.
struct XRows<'ctx> {
    /// Codes: `32 · kt` bytes per row.
    q: PointerValue<'ctx>,
    /// Scales: `kt` `f32` per row.
    s: PointerValue<'ctx>,
    /// Corrections: `kt` `i32` per row.
    c: PointerValue<'ctx>,
}

impl<'m, 'ctx> Gen<'m, 'ctx> {
    fn bytes64(&self, vals: &[u8]) -> VectorValue<'ctx> {
        let i8t = self.ctx.i8_type();
        let v: Vec<IntValue<'ctx>> = (0..64).map(|i| i8t.const_int(vals[i % vals.len()] as u64, false)).collect();
        VectorType::const_vector(&v)
    }

    fn call_vec(&self, name: &str, args: &[BasicValueEnum<'ctx>]) -> R<VectorValue<'ctx>> {
        let f = self.intrinsic(name, &[])?;
        Ok(self.call(f, args)?.expect("intrinsic returns").into_vector_value())
    }

    /// The 8 code vectors (`<64 x i8>`, unsigned weight bytes) of tile `tile`, in
    /// [`code_index`] order.
    fn vn_codes(&self, plan: &Plan, table: &[u8; 64], packed: PointerValue<'ctx>, tile: IntValue<'ctx>) -> R<Vec<VectorValue<'ctx>>> {
        let bytes = self.ctx.i8_type().vec_type(64);
        let lo = self.gep(packed, self.mul(tile, LOW_TILE_BYTES)?)?;
        let high: Option<Vec<VectorValue<'ctx>>> = if plan.dq.h == 2 {
            let hi = self.gep(packed, self.add(self.i64c(plan.low_bytes), self.mul(tile, 128)?)?)?;
            Some((0..2).map(|lh| Ok(self.load(bytes, self.gep(hi, self.i64c(64 * lh))?, 1)?.into_vector_value())).collect::<R<_>>()?)
        } else {
            None
        };
        let table = self.bytes64(table);
        let keep = self.bytes64(&[0x30]);
        let mut out = vec![bytes.const_zero(); 8];
        for j in 0..2 {
            for lh in 0..2 {
                let words = self.load(bytes, self.gep(lo, self.i64c(128 * j as u64 + 64 * lh as u64))?, 1)?.into_vector_value();
                for rs in 0..2 {
                    let nib =
                        self.call_vec("llvm.x86.avx512.pmultishift.qb.512", &[self.bytes64(&nibble_controls(rs)).into(), words.into()])?;
                    let code = match &high {
                        Some(h) => {
                            let ctl = self.bytes64(&field_controls(j, rs));
                            let field = self.call_vec("llvm.x86.avx512.pmultishift.qb.512", &[ctl.into(), h[lh].into()])?;
                            let f = self.b.build_and(field, keep, "")?;
                            let n = self.b.build_and(nib, self.b.build_not(keep, "")?, "")?;
                            self.b.build_or(f, n, "")?
                        }
                        None => nib,
                    };
                    out[code_index(j, lh, rs)] = self.call_vec("llvm.x86.avx512.permvar.qi.512", &[table.into(), code.into()])?;
                }
            }
        }
        Ok(out)
    }

    /// The 16 activation codes of half `j` of tile `tile` of the row at `xq`, in every
    /// 128-bit lane, as `<16 x i32>`.
    fn vn_xgroup(&self, xq: PointerValue<'ctx>, tile: IntValue<'ctx>, j: u64) -> R<VectorValue<'ctx>> {
        let v16 = self.ctx.i8_type().vec_type(16);
        let x = self.load(v16, self.gep(xq, self.add(self.mul(tile, 32)?, self.i64c(16 * j))?)?, 1)?.into_vector_value();
        let idx: Vec<u32> = (0..64).map(|i| i % 16).collect();
        let b = self.shuf(x, x, &idx)?;
        Ok(self.b.build_bit_cast(b, self.vi32(16), "")?.into_vector_value())
    }

    /// Grouped weights: the scales of tile `tile`'s group (times `1 / units`) in the lane
    /// order of each `f32` accumulator (lane `i` of accumulator `(lh, rs)` is row `4 lh + i / 4 + 8 rs`).
    fn vn_group_scales(
        &self,
        plan: &Plan,
        scales: PointerValue<'ctx>,
        tile: IntValue<'ctx>,
        n0: IntValue<'ctx>,
        inv_units: f32,
    ) -> R<Vec<VectorValue<'ctx>>> {
        let tpg = plan.tpg.expect("supported plans have tile-aligned groups");
        let grp = self.b.build_int_unsigned_div(tile, self.i64c(tpg), "")?;
        let valid = self.lanes_below(self.b.build_int_nsw_sub(self.i64c(plan.n()), n0, "")?)?;
        let s16 = self.b.build_float_mul(self.scales16(plan, scales, grp, n0, valid)?, self.splat_f32(inv_units, 16), "")?;
        (0..4)
            .map(|a| {
                let (lh, rs) = (a / 2, a % 2);
                let idx: Vec<u32> = (0..16).map(|i| (4 * lh + i / 4 + 8 * rs) as u32).collect();
                self.shuf(s16, s16, &idx)
            })
            .collect()
    }

    /// Adds one tile's products for the row at `x` (tile index `tile`) to its 4 `f32`
    /// accumulators `acc` (index `2 lh + rs`). `codes(i)` yields code vector `i`.
    fn vn_row_tile(
        &self,
        x: &XRows<'ctx>,
        tile: IntValue<'ctx>,
        codes: &mut dyn FnMut(usize) -> R<VectorValue<'ctx>>,
        wscales: Option<&[VectorValue<'ctx>]>,
        acc: &mut [VectorValue<'ctx>],
    ) -> R<()> {
        let at = self.mul(tile, 4)?;
        let c = self.load(self.ctx.i32_type(), self.gep(x.c, at)?, 4)?.into_int_value();
        let quarter = self.b.build_right_shift(c, self.ctx.i32_type().const_int(2, false), true, "")?;
        let init = self.splat_scalar(self.b.build_int_neg(quarter, "")?.into(), self.vi32(16))?;
        let s = self.load(self.ctx.f32_type(), self.gep(x.s, at)?, 4)?;
        let sv = self.splat_scalar(s, self.vf32(16))?;
        let xs = [self.vn_xgroup(x.q, tile, 0)?, self.vn_xgroup(x.q, tile, 1)?];
        for lh in 0..2 {
            for rs in 0..2 {
                let mut dot = init;
                for (j, xj) in xs.iter().enumerate() {
                    let w = self.b.build_bit_cast(codes(code_index(j, lh, rs))?, self.vi32(16), "")?;
                    dot = self.call_vec("llvm.x86.avx512.vpdpbusd.512", &[dot.into(), w, (*xj).into()])?;
                }
                let a = 2 * lh + rs;
                let f = self.b.build_signed_int_to_float(dot, self.vf32(16), "")?;
                let scale = match wscales {
                    Some(ws) => self.b.build_float_mul(sv, ws[a], "")?,
                    None => sv,
                };
                acc[a] = self.fma(f, scale, acc[a])?;
            }
        }
        Ok(())
    }

    /// Sums the column groups of one row's 4 accumulators: the 16 outputs in natural order.
    fn vn_reduce(&self, acc: &[VectorValue<'ctx>]) -> R<VectorValue<'ctx>> {
        let even: Vec<u32> = (0..16).map(|i| 2 * i).collect();
        let odd: Vec<u32> = (0..16).map(|i| 2 * i + 1).collect();
        let pairs = |a: VectorValue<'ctx>, b: VectorValue<'ctx>| -> R<VectorValue<'ctx>> {
            Ok(self.b.build_float_add(self.shuf(a, b, &even)?, self.shuf(a, b, &odd)?, "")?)
        };
        // Lane i of (lh, rs): row 4 lh + i / 4 + 8 rs, column group i % 4.
        let rows_of_set = |rs: usize| pairs(acc[rs], acc[2 + rs]);
        pairs(rows_of_set(0)?, rows_of_set(1)?)
    }

    /// Writes one row's 16 outputs: `acc` reduced, times the per-channel scales if given, plus
    /// the bias (when `first`) or what y holds.
    #[allow(clippy::too_many_arguments)]
    fn vn_finish(
        &self,
        f: FunctionValue<'ctx>,
        acc: &[VectorValue<'ctx>],
        per_channel: Option<VectorValue<'ctx>>,
        first: IntValue<'ctx>,
        bias16: VectorValue<'ctx>,
        yrow: PointerValue<'ctx>,
        (n0, ne): (IntValue<'ctx>, IntValue<'ctx>),
    ) -> R<()> {
        let mut vals = self.vn_reduce(acc)?;
        if let Some(s) = per_channel {
            vals = self.b.build_float_mul(vals, s, "")?;
        }
        let old = self.if_then(f, self.b.build_not(first, "")?, vec![bias16.into()], &mut |g| Ok(vec![g.load16(yrow, n0, ne)?.into()]))?;
        let vals = self.b.build_float_add(vals, old[0].into_vector_value(), "")?;
        self.store16(f, yrow, n0, ne, vals)
    }

    /// The per-channel scales times `1 / units` (`None` for grouped weights).
    fn vn_per_channel(&self, plan: &Plan, scales: PointerValue<'ctx>, n0: IntValue<'ctx>, inv_units: f32) -> R<Option<VectorValue<'ctx>>> {
        if plan.groups > 1 {
            return Ok(None);
        }
        let valid = self.lanes_below(self.b.build_int_nsw_sub(self.i64c(plan.n()), n0, "")?)?;
        let s16 = self.scales16(plan, scales, self.i64c(0), n0, valid)?;
        Ok(Some(self.b.build_float_mul(s16, self.splat_f32(inv_units, 16), "")?))
    }

    /// The activation buffer pointers of row `r0` (the buffer holds `m` rows).
    fn vn_xrows(&self, x: PointerValue<'ctx>, m: IntValue<'ctx>, r0: IntValue<'ctx>, kt: u64) -> R<XRows<'ctx>> {
        let blocks = self.b.build_int_nsw_mul(m, self.i64c(kt), "")?;
        let (s, c, q) = (x, self.gep(x, self.mul(blocks, 4)?)?, self.gep(x, self.mul(blocks, 8)?)?);
        Ok(XRows {
            q: self.gep(q, self.mul(r0, 32 * kt)?)?,
            s: self.gep(s, self.mul(r0, 4 * kt)?)?,
            c: self.gep(c, self.mul(r0, 4 * kt)?)?,
        })
    }

    fn xrows_next(&self, x: &XRows<'ctx>, r: u64, kt: u64) -> R<XRows<'ctx>> {
        Ok(XRows {
            q: self.gep(x.q, self.i64c(32 * kt * r))?,
            s: self.gep(x.s, self.i64c(4 * kt * r))?,
            c: self.gep(x.c, self.i64c(4 * kt * r))?,
        })
    }

    /// The n-tile function for `m ≤ DIRECT_ROWS`: every tile decoded in registers once, all
    /// rows accumulated from them.
    pub(super) fn vn_direct_ntile(&self, plan: &Plan, name: &str) -> R<FunctionValue<'ctx>> {
        let fname = format!("{name}.vn_direct");
        if let Some(f) = self.module.get_function(&fname) {
            return Ok(f);
        }
        let table = code_table(plan.spec.format)?;
        let inv_units = 1.0 / int8_units(plan.spec.format).expect("checked by code_table");
        let blocks: Vec<FunctionValue<'ctx>> =
            (1..=DIRECT_ROWS).map(|b| self.vn_direct_rows(plan, &table, inv_units, name, b)).collect::<R<_>>()?;
        let (f, a) = self.ntile_function(&fname);
        self.row_blocks_at(f, DIRECT_ROWS, a.m, &mut |g, b, r0| {
            let yb = g.gep(a.y, g.mul(r0, 4 * plan.n())?)?;
            g.call(
                blocks[b as usize - 1],
                &[a.x.into(), a.m.into(), r0.into(), a.packed.into(), a.scales.into(), a.bias, yb.into(), a.nt.into(), a.ne.into()],
            )?;
            Ok(())
        })?;
        self.b.build_return(None)?;
        Ok(f)
    }

    fn vn_direct_rows(&self, plan: &Plan, table: &[u8; 64], inv_units: f32, name: &str, rows: u32) -> R<FunctionValue<'ctx>> {
        let (p, i) = (self.ptr_t(), self.i64_t());
        let f = self.function(&format!("{name}.vn_direct{rows}"), &[p, i, i, p, p, p, p, i, i], true);
        self.b.position_at_end(self.block(f, "entry"));
        let arg = |k: u32| f.get_nth_param(k).expect("param");
        let (x, m, r0) = (arg(0).into_pointer_value(), arg(1).into_int_value(), arg(2).into_int_value());
        let (packed, scales, bias, y) =
            (arg(3).into_pointer_value(), arg(4).into_pointer_value(), arg(5).into_pointer_value(), arg(6).into_pointer_value());
        let (nt, ne) = (arg(7).into_int_value(), arg(8).into_int_value());
        let kt = plan.kt;
        let n0 = self.mul(nt, 16)?;
        let tile0 = self.mul(nt, kt)?;
        let x0 = self.vn_xrows(x, m, r0, kt)?;
        let xr: Vec<XRows<'ctx>> = (0..rows as u64).map(|r| self.xrows_next(&x0, r, kt)).collect::<R<_>>()?;
        let grouped = plan.groups > 1;
        let init: Vec<BasicValueEnum<'ctx>> = vec![self.fzero(16).into(); 4 * rows as usize];
        let acc = self.for_loop(f, self.i64c(0), self.i64c(kt), init, &mut |g, t, carried| {
            let codes = g.vn_codes(plan, table, packed, g.add(tile0, t)?)?;
            let ws = if grouped { Some(g.vn_group_scales(plan, scales, t, n0, inv_units)?) } else { None };
            let mut acc: Vec<VectorValue<'ctx>> = carried.iter().map(|v| v.into_vector_value()).collect();
            for (r, x) in xr.iter().enumerate() {
                g.vn_row_tile(x, t, &mut |i| Ok(codes[i]), ws.as_deref(), &mut acc[4 * r..4 * r + 4])?;
            }
            Ok(acc.into_iter().map(Into::into).collect())
        })?;
        let valid = self.lanes_below(self.b.build_int_nsw_sub(self.i64c(plan.n()), n0, "")?)?;
        let bias16 = self.bias16(f, bias, n0, valid)?;
        let per_channel = self.vn_per_channel(plan, scales, n0, inv_units)?;
        let first = self.ctx.bool_type().const_int(1, false);
        for r in 0..rows as usize {
            let a: Vec<VectorValue<'ctx>> = acc[4 * r..4 * r + 4].iter().map(|v| v.into_vector_value()).collect();
            let yrow = self.gep(y, self.i64c(r as u64 * 4 * plan.n()))?;
            self.vn_finish(f, &a, per_channel, first, bias16, yrow, (n0, ne))?;
        }
        self.b.build_return(None)?;
        Ok(f)
    }

    /// The n-tile function for any `m`: K in panels of [`PANEL_TILES`] decoded tiles, each
    /// consumed by every block of rows.
    pub(super) fn vn_panel_ntile(&self, plan: &Plan, name: &str) -> R<FunctionValue<'ctx>> {
        let fname = format!("{name}.vn_panel");
        if let Some(f) = self.module.get_function(&fname) {
            return Ok(f);
        }
        let table = code_table(plan.spec.format)?;
        let inv_units = 1.0 / int8_units(plan.spec.format).expect("checked by code_table");
        let blocks: Vec<FunctionValue<'ctx>> = (1..=PANEL_ROWS).map(|b| self.vn_panel_rows(plan, inv_units, name, b)).collect::<R<_>>()?;
        let (f, a) = self.ntile_function(&fname);
        let panel = self.aligned_alloca(self.ctx.i8_type().array_type((PANEL_TILES * TILE_CODE_BYTES) as u32), "vnpanel")?;
        let kt = plan.kt;
        let tile0 = self.mul(a.nt, kt)?;
        self.for_loop(f, self.i64c(0), self.i64c(kt.div_ceil(PANEL_TILES)), vec![], &mut |g, kb, _| {
            let kt0 = g.mul(kb, PANEL_TILES)?;
            let count = g.tiles_in_block(kb, PANEL_TILES, kt)?;
            g.for_loop(f, g.i64c(0), count, vec![], &mut |g, i, _| {
                let codes = g.vn_codes(plan, &table, a.packed, g.add(tile0, g.add(kt0, i)?)?)?;
                let dst = g.gep(panel, g.mul(i, TILE_CODE_BYTES)?)?;
                for (v, c) in codes.iter().enumerate() {
                    g.store(*c, g.gep(dst, g.i64c(64 * v as u64))?, 64)?;
                }
                Ok(vec![])
            })?;
            let first = g.b.build_int_compare(IntPredicate::EQ, kb, g.i64c(0), "")?;
            g.row_blocks_at(f, PANEL_ROWS, a.m, &mut |g, b, r0| {
                let args = [
                    a.x.into(),
                    a.m.into(),
                    r0.into(),
                    panel.into(),
                    kt0.into(),
                    count.into(),
                    first.into(),
                    a.scales.into(),
                    a.bias,
                    g.gep(a.y, g.mul(r0, 4 * plan.n())?)?.into(),
                    a.nt.into(),
                    a.ne.into(),
                ];
                g.call(blocks[b as usize - 1], &args)?;
                Ok(())
            })?;
            Ok(vec![])
        })?;
        self.b.build_return(None)?;
        Ok(f)
    }

    /// The panel row block: `rows` rows against the panel's tiles; adds to y (or the bias,
    /// for the first panel).
    fn vn_panel_rows(&self, plan: &Plan, inv_units: f32, name: &str, rows: u32) -> R<FunctionValue<'ctx>> {
        let (p, i) = (self.ptr_t(), self.i64_t());
        let b1 = self.ctx.bool_type().into();
        let f = self.function(&format!("{name}.vn_rows{rows}"), &[p, i, i, p, i, i, b1, p, p, p, i, i], true);
        self.b.position_at_end(self.block(f, "entry"));
        let arg = |k: u32| f.get_nth_param(k).expect("param");
        let (x, m, r0, panel) =
            (arg(0).into_pointer_value(), arg(1).into_int_value(), arg(2).into_int_value(), arg(3).into_pointer_value());
        let (kt0, count, first) = (arg(4).into_int_value(), arg(5).into_int_value(), arg(6).into_int_value());
        let (scales, bias, y) = (arg(7).into_pointer_value(), arg(8).into_pointer_value(), arg(9).into_pointer_value());
        let (nt, ne) = (arg(10).into_int_value(), arg(11).into_int_value());
        let kt = plan.kt;
        let n0 = self.mul(nt, 16)?;
        let x0 = self.vn_xrows(x, m, r0, kt)?;
        let xr: Vec<XRows<'ctx>> = (0..rows as u64).map(|r| self.xrows_next(&x0, r, kt)).collect::<R<_>>()?;
        let grouped = plan.groups > 1;
        let bytes = self.ctx.i8_type().vec_type(64);
        let init: Vec<BasicValueEnum<'ctx>> = vec![self.fzero(16).into(); 4 * rows as usize];
        let acc = self.for_loop(f, self.i64c(0), count, init, &mut |g, ti, carried| {
            let tile = g.add(kt0, ti)?;
            let src = g.gep(panel, g.mul(ti, TILE_CODE_BYTES)?)?;
            let ws = if grouped { Some(g.vn_group_scales(plan, scales, tile, n0, inv_units)?) } else { None };
            let mut acc: Vec<VectorValue<'ctx>> = carried.iter().map(|v| v.into_vector_value()).collect();
            for (r, x) in xr.iter().enumerate() {
                // Each row reloads the codes through its own laundered pointer: they feed
                // `vpdpbusd` from memory instead of 8 registers kept live across rows.
                let src = g.launder(src)?;
                let mut codes =
                    |i: usize| -> R<VectorValue<'ctx>> { Ok(g.load(bytes, g.gep(src, g.i64c(64 * i as u64))?, 64)?.into_vector_value()) };
                g.vn_row_tile(x, tile, &mut codes, ws.as_deref(), &mut acc[4 * r..4 * r + 4])?;
            }
            Ok(acc.into_iter().map(Into::into).collect())
        })?;
        let valid = self.lanes_below(self.b.build_int_nsw_sub(self.i64c(plan.n()), n0, "")?)?;
        let bias16 = self.bias16(f, bias, n0, valid)?;
        let per_channel = self.vn_per_channel(plan, scales, n0, inv_units)?;
        for r in 0..rows as usize {
            let a: Vec<VectorValue<'ctx>> = acc[4 * r..4 * r + 4].iter().map(|v| v.into_vector_value()).collect();
            let yrow = self.gep(y, self.i64c(r as u64 * 4 * plan.n()))?;
            self.vn_finish(f, &a, per_channel, first, bias16, yrow, (n0, ne))?;
        }
        self.b.build_return(None)?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_pick_the_layout_bits() {
        // Row g of a lane holds e4, e0, e5, e1 (nibbles at bits 4, 8, 20, 24 of the word).
        assert_eq!(nibble_controls(0), [4, 8, 20, 24, 36, 40, 52, 56]);
        assert_eq!(nibble_controls(1), [0, 12, 16, 28, 32, 44, 48, 60]);
        // Half 1, pair 3, even code: field at bit 0, rotated 4 up (60 wraps to bit 0 at bit 4).
        assert_eq!(field_controls(1, 1)[0], 60);
        assert_eq!(field_controls(1, 1)[4], 28);
    }

    #[test]
    fn code_tables_hold_offset_integers() {
        let t = code_table(Format::Fp6E2M3).unwrap();
        assert_eq!(t[0], 64);
        // 0x0f: exponent 1, mantissa 7 = 1.875 → 15 units of 1/8; 0x2f is its negative.
        assert_eq!(t[0x0f], 64 + 15);
        assert_eq!(t[0x2f], 64 - 15);
        assert!(code_table(Format::Fp6E3M2).is_err());
    }
}
