//! The `f32`-activation loops: Gemv streams each n-tile's weights once through registers
//! for a block of rows ([`Gen::direct_ntile`]); the panel loop ([`Gen::panel_ntile`], Gemm
//! and Gemv with ragged groups) dequantizes blocks of tiles, scales applied, into an
//! L1-resident panel that every block of rows reuses.

use fpx_quant::layout::{TILE_K, TILE_N};
use inkwell::values::{BasicValueEnum, FunctionValue, IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;

use super::decode::ChunkInfo;
use super::epilogue::{Cols, Prior};
use super::{Gen, NtileArgs, Plan, R};

/// Bytes of one tile of dequantized `f32` values in a panel (16 × 32 × 4).
const PANEL_TILE_BYTES: u64 = (TILE_N * TILE_K * 4) as u64;
/// Valid columns of a full tile.
const FULL: u32 = TILE_K as u32;

impl<'m, 'ctx> Gen<'m, 'ctx> {
    /// `[x[col], x[col + 1]]` broadcast to `W` lanes (the second 0 past the valid columns).
    fn xpair(&self, xrow: PointerValue<'ctx>, kt: IntValue<'ctx>, col: u32, kvalid: u32) -> R<VectorValue<'ctx>> {
        let off = self.mul(self.add(self.mul(kt, TILE_K as u64)?, self.i64c(col as u64))?, 4)?;
        let p = self.gep(xrow, off)?;
        let v2 = self.vf32(2);
        let pair = if col + 1 < kvalid {
            self.load(v2, p, 4)?.into_vector_value()
        } else {
            let x = self.load(self.ctx.f32_type(), p, 4)?;
            self.b.build_insert_element(v2.const_zero(), x, self.ctx.i32_type().const_zero(), "")?
        };
        let idx: Vec<u32> = (0..self.w()).map(|i| i % 2).collect();
        self.shuf(pair, pair, &idx)
    }

    /// Calls `call(b, xb, yb)` (row-block functions for `b` rows, `b` in `1..=rows`) over
    /// the `f32` rows of X and Y: full blocks of `rows` in a loop, then the remainder.
    fn row_blocks(
        &self,
        f: FunctionValue<'ctx>,
        plan: &Plan,
        rows: u32,
        m: IntValue<'ctx>,
        (x, y): (PointerValue<'ctx>, PointerValue<'ctx>),
        call: &mut dyn FnMut(&Self, u32, PointerValue<'ctx>, PointerValue<'ctx>) -> R<()>,
    ) -> R<()> {
        self.row_blocks_at(f, rows, m, &mut |g, b, r0| {
            let xb = g.gep(x, g.mul(r0, 4 * plan.k())?)?;
            let yb = g.gep(y, g.mul(r0, 4 * plan.n())?)?;
            call(g, b, xb, yb)
        })
    }

    /// Gemv: for one n-tile, every block of rows streams the whole K of the tile column,
    /// dequantizing in registers.
    pub(super) fn direct_ntile(&self, plan: &Plan, name: &str) -> R<FunctionValue<'ctx>> {
        let rows = self.isa.gemv_rows;
        let blocks: Vec<FunctionValue<'ctx>> = (1..=rows).map(|b| self.direct_rows(plan, name, b)).collect::<R<_>>()?;
        let (f, NtileArgs { x, m, packed, scales, bias, y, nt, ne }) = self.ntile_function(&format!("{name}.direct"));
        self.row_blocks(f, plan, rows, m, (x, y), &mut |g, b, xb, yb| {
            g.call(blocks[b as usize - 1], &[xb.into(), packed.into(), scales.into(), bias, yb.into(), nt.into(), ne.into()])?;
            Ok(())
        })?;
        self.end_function(f)
    }

    /// The accumulators of every row as carried values.
    fn flat(acc: &[Vec<VectorValue<'ctx>>]) -> Vec<BasicValueEnum<'ctx>> {
        acc.iter().flatten().map(|&v| v.into()).collect()
    }

    /// [`Gen::flat`] undone for `rows` rows.
    fn unflat(&self, rows: u32, v: &[BasicValueEnum<'ctx>]) -> Vec<Vec<VectorValue<'ctx>>> {
        let nacc = self.lanes.nacc();
        (0..rows as usize).map(|r| (0..nacc).map(|a| v[r * nacc + a].into_vector_value()).collect()).collect()
    }

    /// Zero accumulators for `rows` rows.
    fn zero_acc(&self, rows: u32) -> Vec<Vec<VectorValue<'ctx>>> {
        vec![vec![self.fzero(self.w()); self.lanes.nacc()]; rows as usize]
    }

    /// The Gemv row block: `rows` rows of X against one n-tile, all of K.
    fn direct_rows(&self, plan: &Plan, name: &str, rows: u32) -> R<FunctionValue<'ctx>> {
        let (p, i) = (self.ptr_t(), self.i64_t());
        let (f, a) = self.begin_function(&format!("{name}.rows{rows}"), &[p, p, p, p, p, i, i], true);
        let (x, packed, scales, bias, y) = (a.ptr(0), a.ptr(1), a.ptr(2), a.ptr(3), a.ptr(4));
        let (nt, ne) = (a.int(5), a.int(6));
        let n0 = self.mul(nt, TILE_N as u64)?;
        let tile0 = self.mul(nt, plan.kt)?;
        let cols = self.cols(plan, n0, ne)?;
        let xrows: Vec<PointerValue<'ctx>> = (0..rows as u64).map(|r| self.gep(x, self.i64c(r * 4 * plan.k()))).collect::<R<_>>()?;
        let tpg = plan.tpg.expect("direct path needs tile-aligned groups");
        let cvt = self.cvt_buf()?;

        // The tile body: FMAs of every chunk into its row's accumulator.
        let tile = |g: &Self, acc: &mut Vec<Vec<VectorValue<'ctx>>>, kt: IntValue<'ctx>, kvalid: u32| -> R<()> {
            let t = g.add(tile0, kt)?;
            g.prefetch_tile_ahead(plan, packed, t)?;
            g.tile(plan, packed, cvt, t, kvalid, &mut |g, ch| {
                for (r, xr) in xrows.iter().enumerate() {
                    let xv = g.xpair(*xr, kt, ch.info.col, kvalid)?;
                    acc[r][ch.info.a] = g.fma(ch.value, xv, acc[r][ch.info.a])?;
                }
                Ok(())
            })
        };
        // Tiles [first, first + count) of full columns (a loop), then optionally the tail tile.
        let group_body = |g: &Self, first: IntValue<'ctx>, count: u64, tail: bool| -> R<Vec<Vec<VectorValue<'ctx>>>> {
            let mut acc = g.zero_acc(rows);
            if count > 0 {
                let end = g.add(first, g.i64c(count))?;
                let out = g.for_loop(f, first, end, Self::flat(&acc), &mut |g, kt, carried| {
                    let mut acc = g.unflat(rows, &carried);
                    tile(g, &mut acc, kt, FULL)?;
                    Ok(Self::flat(&acc))
                })?;
                acc = g.unflat(rows, &out);
            }
            if tail {
                tile(g, &mut acc, g.i64c(plan.kt - 1), plan.krem)?;
            }
            Ok(acc)
        };
        let flush = |g: &Self, yacc: &mut Vec<Vec<VectorValue<'ctx>>>, acc: &[Vec<VectorValue<'ctx>>], group: IntValue<'ctx>| -> R<()> {
            let s = g.scales_per_acc(g.scales16(plan, scales, group, cols)?)?;
            for (yr, ar) in yacc.iter_mut().zip(acc) {
                for a in 0..ar.len() {
                    yr[a] = g.fma(ar[a], s[a], yr[a])?;
                }
            }
            Ok(())
        };

        let has_tail = plan.krem < FULL;
        let full_groups = plan.ft / tpg;
        let rem_tiles = plan.ft - full_groups * tpg;
        let mut yacc = self.zero_acc(rows);
        if full_groups > 0 {
            let out = self.for_loop(f, self.i64c(0), self.i64c(full_groups), Self::flat(&yacc), &mut |g, gi, carried| {
                let mut yacc = g.unflat(rows, &carried);
                let first = g.mul(gi, tpg)?;
                let acc = group_body(g, first, tpg, false)?;
                flush(g, &mut yacc, &acc, gi)?;
                Ok(Self::flat(&yacc))
            })?;
            yacc = self.unflat(rows, &out);
        }
        if rem_tiles > 0 || has_tail {
            let acc = group_body(self, self.i64c(full_groups * tpg), rem_tiles, has_tail)?;
            flush(self, &mut yacc, &acc, self.i64c(full_groups))?;
        }
        let bias16 = self.bias16(f, bias, cols)?;
        for (r, yr) in yacc.iter().enumerate() {
            let vals = self.b.build_float_add(self.reduce(yr)?, bias16, "")?;
            let yrow = self.gep(y, self.i64c(r as u64 * 4 * plan.n()))?;
            self.store16(f, yrow, cols, vals)?;
        }
        self.end_function(f)
    }

    /// Gemm (and Gemv with ragged groups): per n-tile, blocks of tiles are dequantized with
    /// their scales into a panel, then every block of rows of X consumes the panel.
    pub(super) fn panel_ntile(&self, plan: &Plan, name: &str) -> R<FunctionValue<'ctx>> {
        let rows = self.isa.gemm_rows;
        let blocks: Vec<FunctionValue<'ctx>> = (1..=rows).map(|b| self.panel_rows(plan, name, b)).collect::<R<_>>()?;
        let (f, NtileArgs { x, m, packed, scales, bias, y, nt, ne }) = self.ntile_function(&format!("{name}.panel"));
        let kct = self.isa.panel_tiles as u64;
        let panel = self.aligned_alloca(self.ctx.f32_type().array_type((kct * PANEL_TILE_BYTES / 4) as u32), "panel")?;
        let cvt = self.cvt_buf()?;
        let n0 = self.mul(nt, TILE_N as u64)?;
        let tile0 = self.mul(nt, plan.kt)?;
        let cols = self.cols(plan, n0, ne)?;
        // Per-channel scales are the same for every tile: permute them once.
        let per_channel =
            if plan.groups == 1 { Some(self.scales_per_acc(self.scales16(plan, scales, self.i64c(0), cols)?)?) } else { None };
        let lanes = &self.lanes;
        let w = lanes.w as u64;

        // Dequantizes tile `kt` into panel slot `at` (both i64), scales applied.
        let build = |g: &Self, kt: IntValue<'ctx>, at: IntValue<'ctx>, kvalid: u32| -> R<()> {
            let dst = g.gep(panel, g.mul(at, PANEL_TILE_BYTES)?)?;
            let tile_scales = match (&per_channel, plan.tpg) {
                (Some(s), _) => Some(s.clone()),
                (None, Some(_)) => Some(g.scales_per_acc(g.scales16(plan, scales, g.tile_group(plan, kt)?, cols)?)?),
                (None, None) => None,
            };
            let tile = g.add(tile0, kt)?;
            g.tile(plan, packed, cvt, tile, kvalid, &mut |g, ch| {
                let s = match &tile_scales {
                    Some(s) => s[ch.info.a],
                    None => g.ragged_scales(plan, scales, kt, ch.info, cols)?,
                };
                let v = g.b.build_float_mul(ch.value, s, "")?;
                g.store(v, g.gep(dst, g.i64c(ch.info.slot as u64 * w * 4))?, w as u32 * 4)
            })
        };

        let has_tail = plan.krem < FULL;
        let nkb = plan.kt.div_ceil(kct);
        self.for_loop(f, self.i64c(0), self.i64c(nkb), vec![], &mut |g, kb, _| {
            let kt0 = g.mul(kb, kct)?;
            // Full tiles in this block.
            let nfull = g.tiles_in_block(kb, kct, plan.ft)?;
            g.for_loop(f, g.i64c(0), nfull, vec![], &mut |g, i, _| {
                build(g, g.add(kt0, i)?, i, FULL)?;
                Ok(vec![])
            })?;
            let last = g.b.build_int_compare(IntPredicate::EQ, kb, g.i64c(nkb - 1), "")?;
            let tail = if has_tail { last } else { g.ctx.bool_type().const_zero() };
            if has_tail {
                g.if_then(f, tail, vec![], &mut |g| {
                    build(g, g.i64c(plan.kt - 1), nfull, plan.krem)?;
                    Ok(vec![])
                })?;
            }
            let first = g.b.build_int_compare(IntPredicate::EQ, kb, g.i64c(0), "")?;
            g.row_blocks(f, plan, rows, m, (x, y), &mut |g, b, xb, yb| {
                g.call(
                    blocks[b as usize - 1],
                    &[xb.into(), panel.into(), kt0.into(), nfull.into(), tail.into(), first.into(), bias, yb.into(), nt.into(), ne.into()],
                )?;
                Ok(())
            })?;
            Ok(vec![])
        })?;
        self.end_function(f)
    }

    /// Scales for one chunk when groups do not align with tiles: each of its two columns
    /// takes its own group's scales.
    fn ragged_scales(
        &self,
        plan: &Plan,
        scales: PointerValue<'ctx>,
        kt: IntValue<'ctx>,
        ch: ChunkInfo,
        cols: Cols<'ctx>,
    ) -> R<VectorValue<'ctx>> {
        let c0 = self.add(self.mul(kt, TILE_K as u64)?, self.i64c(ch.col as u64))?;
        let group_of = |col: IntValue<'ctx>| -> R<IntValue<'ctx>> {
            let g = self.b.build_int_unsigned_div(col, self.i64c(plan.group), "")?;
            let last = self.i64c(plan.groups - 1);
            let over = self.b.build_int_compare(IntPredicate::UGT, g, last, "")?;
            Ok(self.b.build_select(over, last, g, "")?.into_int_value())
        };
        let ga = group_of(c0)?;
        let gb = group_of(self.add(c0, self.i64c(1))?)?;
        let sa = self.scales16(plan, scales, ga, cols)?;
        let sb = self.scales16(plan, scales, gb, cols)?;
        let l = &self.lanes;
        let idx: Vec<u32> = (0..l.w).map(|f| (l.acc_row(ch.a, f) + TILE_N * (f % 2)) as u32).collect();
        self.shuf(sa, sb, &idx)
    }

    /// The panel row block: `rows` rows of X against the panel's tiles; adds the result to y
    /// (or to the bias, for the first block of K).
    fn panel_rows(&self, plan: &Plan, name: &str, rows: u32) -> R<FunctionValue<'ctx>> {
        let (p, i) = (self.ptr_t(), self.i64_t());
        let b1 = self.ctx.bool_type().into();
        let (f, a) = self.begin_function(&format!("{name}.prows{rows}"), &[p, p, i, i, b1, b1, p, p, i, i], true);
        let (x, panel, kt0, nfull) = (a.ptr(0), a.ptr(1), a.int(2), a.int(3));
        let (tail, first, bias, y) = (a.int(4), a.int(5), a.ptr(6), a.ptr(7));
        let (nt, ne) = (a.int(8), a.int(9));
        let xrows: Vec<PointerValue<'ctx>> = (0..rows as u64).map(|r| self.gep(x, self.i64c(r * 4 * plan.k()))).collect::<R<_>>()?;
        let w = self.w();

        let consume = |g: &Self, acc: &mut Vec<Vec<VectorValue<'ctx>>>, at: IntValue<'ctx>, kt: IntValue<'ctx>, kvalid: u32| -> R<()> {
            let src = g.gep(panel, g.mul(at, PANEL_TILE_BYTES)?)?;
            for ch in g.chunks(kvalid) {
                let wv = g.load(g.vf32(w), g.gep(src, g.i64c(ch.slot as u64 * w as u64 * 4))?, w * 4)?.into_vector_value();
                for (r, xr) in xrows.iter().enumerate() {
                    let xv = g.xpair(*xr, kt, ch.col, kvalid)?;
                    acc[r][ch.a] = g.fma(wv, xv, acc[r][ch.a])?;
                }
            }
            Ok(())
        };
        let acc0 = self.zero_acc(rows);
        let out = self.for_loop(f, self.i64c(0), nfull, Self::flat(&acc0), &mut |g, i, carried| {
            let mut acc = g.unflat(rows, &carried);
            consume(g, &mut acc, i, g.add(kt0, i)?, FULL)?;
            Ok(Self::flat(&acc))
        })?;
        let mut acc = self.unflat(rows, &out);
        if plan.krem < FULL {
            let out = self.if_then(f, tail, Self::flat(&acc), &mut |g| {
                let mut acc = g.unflat(rows, &Self::flat(&acc));
                consume(g, &mut acc, nfull, g.i64c(plan.kt - 1), plan.krem)?;
                Ok(Self::flat(&acc))
            })?;
            acc = self.unflat(rows, &out);
        }
        let cols = self.cols(plan, self.mul(nt, TILE_N as u64)?, ne)?;
        let prior = Prior { first, bias16: self.bias16(f, bias, cols)?, cols };
        for (r, ar) in acc.iter().enumerate() {
            let yrow = self.gep(y, self.i64c(r as u64 * 4 * plan.n()))?;
            let old = self.y_or_bias(f, &prior, yrow)?;
            let vals = self.b.build_float_add(self.reduce(ar)?, old, "")?;
            self.store16(f, yrow, cols, vals)?;
        }
        self.end_function(f)
    }
}
