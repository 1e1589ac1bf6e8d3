//! Int8-activation kernels for CPUs with AVX-512 VBMI and VNNI (Ice Lake, Zen 4 and later):
//! 512-bit vectors, each `i32` lane one output row, and three byte operations per 64 codes.
//!
//! Per half `j` a tile's low plane is two 64-byte vectors of lane words `(g, t)` (`g = 0..8`
//! in two halves of 4, `t = 0..4`); one `vpermt2q` per pair of `t` regroups them so that
//! 64-bit word `g` holds the words `(g, t)` and `(g, t + 1)`, and the high plane likewise.
//! Then, per `t`:
//!
//! 1. `vpmultishiftqb` picks, from the word `(g, t)`, row `g`'s codes e4, e0, e5, e1 into the
//!    first `i32` of 64-bit word `g` and row `g + 8`'s e6, e2, e7, e3 into the second: the
//!    columns `16j + 2t + [8, 0, 9, 1]`, the order of the activation codes
//!    ([`fpx_quant::act8::code_position`]). Each byte gets its nibble in bits 0..4; a second
//!    `vpmultishiftqb` on the high plane brings the 2-bit field to bits 4..6 (bit positions
//!    are layout constants, [`low_nibble_pos`] and [`high_field_pos`]);
//! 2. one `vpternlogd` merges them into the 6-bit code (bits 6..8 are ignored below);
//! 3. `vpermb` maps the code through a 64-entry table to the unsigned byte `value · units + 64`;
//! 4. `vpdpbusd` multiplies it by the 4 activation codes of `(j, t)`, broadcast from memory,
//!    adding into lane `2g + rs` the 4 products of row `g + 8 rs`.
//!
//! After the 8 `(j, t)` steps each lane holds its row's exact `i32` dot product over the
//! tile's 32 columns (the chain for `j = 0` starts at `-64 · Σ codes`, the correction); it is
//! converted once and multiplied by the activation scale: the AVX2 int8 kernels' operations
//! in their order, so both give bit-identical results (an artifact's outputs do not depend on
//! which of the two its CPU runs). When `m` is at most
//! [`DIRECT_ROWS`] every tile is decoded in registers and streamed once; otherwise
//! [`PANEL_TILES`] tiles at a time are decoded into an 8 KiB panel that blocks of
//! [`PANEL_ROWS`] rows reuse.
//!
//! Where two n-tiles lie side by side, the pair kernel ([`Gen::vn_pair_ntile`]) decodes both
//! into one 16 KiB panel and runs blocks of [`PAIR_ROWS`] rows over 32 columns: each broadcast
//! activation word feeds two `vpdpbusd`, halving the loads per product, which otherwise bind
//! before the multiply units do on cores with two load ports (Ice Lake). Its integer sums are
//! the same, so its outputs are bit-identical to the single n-tile kernel's.

use fpx_quant::act8::{int8_units, WEIGHT_OFFSET};
use fpx_quant::layout::{high_field_pos, low_nibble_pos, TILE_K, TILE_N};
use fpx_quant::{fold, Format};
use inkwell::types::VectorType;
use inkwell::values::{BasicValueEnum, FunctionValue, IntValue, PointerValue, VectorValue};

use super::decode::HALF_BYTES;
use super::int8::{Act8Rows, PanelRowArgs, I8_PANEL_TILES};
use super::{Gen, Plan, R};
use crate::target::Isa;
use crate::{Activations, LlvmError};

/// Rows of X up to which tiles are decoded in registers (8 code vectors, one `f32`
/// accumulator per row and two `i32` dot chains stay in the 32 vector registers).
pub(super) const DIRECT_ROWS: u32 = 8;
/// Rows of X per panel row block.
const PANEL_ROWS: u32 = 8;
/// Tiles per panel: 16 × 512 code bytes = 8 KiB, L1-resident with the activations. The AVX2
/// kernels' K blocks, so that both round their `f32` sums at the same tiles.
const PANEL_TILES: u64 = I8_PANEL_TILES;
/// Rows of X per block of the pair kernel ([`Gen::vn_pair_ntile`]): 6 rows × 2 n-tiles keep 12
/// `i32` dot chains and 12 `f32` accumulators in registers beside 2 code vectors and one
/// broadcast activation word.
const PAIR_ROWS: u32 = 6;
/// Code bytes of one decoded tile (one per weight): 8 vectors of 64.
const TILE_CODE_BYTES: u64 = (TILE_N * TILE_K) as u64;
/// Elements of a lane word in the byte order of the activation groups, per row set:
/// row `g` then row `g + 8` (see the module docs).
const ROW_SET_ELEMS: [[usize; 4]; 2] = [[4, 0, 5, 1], [6, 2, 7, 3]];

/// Whether `plan`'s kernels are this module's on `isa`: int8 activations, a target with VBMI and
/// VNNI, and 4- or 6-bit codes with an integer form in scale groups of whole tiles (or one).
pub(super) fn runs(isa: &Isa, plan: &Plan) -> bool {
    plan.spec.activations == Activations::Int8 && isa.vnni8 && fpx_quant::takes_int8_activations(plan.spec.format) && plan.tpg.is_some()
}

/// The `vpermb` table: code (low 6 bits of the index) to the unsigned byte `value · units + 64`;
/// and `1 / units`, which the scales take back.
fn code_table(format: Format) -> R<([u8; 64], f32)> {
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
    Ok((t, 1.0 / units))
}

/// `vpmultishiftqb` controls: byte `4 rs + i` of a 64-bit word gets the nibble of element
/// `ROW_SET_ELEMS[rs][i]` of the word's `i32` number `u` at bits 0..4.
fn nibble_controls(u: usize) -> [u8; 8] {
    std::array::from_fn(|b| (32 * u as u32 + 4 * low_nibble_pos(ROW_SET_ELEMS[b / 4][b % 4])) as u8)
}

/// `vpmultishiftqb` controls: the same bytes get the element's 2-bit high field (half `j`)
/// at bits 4..6 (the rotation wraps within the 64-bit word).
fn field_controls(j: usize, u: usize) -> [u8; 8] {
    std::array::from_fn(|b| ((32 * u as u32 + 2 * high_field_pos(j, ROW_SET_ELEMS[b / 4][b % 4]) + 60) % 64) as u8)
}

/// Output row (of the n-tile's 16) of `i32`/`f32` lane `l`: 64-bit word `g = l / 2`, row set
/// `rs = l % 2`.
fn lane_row(l: usize) -> usize {
    l / 2 + 8 * (l % 2)
}

/// Yields a tile's 8 code vectors, given the tile's index in the row block and in the n-tile's K.
type TileCodes<'s, 'm, 'ctx> = dyn FnMut(&Gen<'m, 'ctx>, IntValue<'ctx>, IntValue<'ctx>) -> R<Vec<VectorValue<'ctx>>> + 's;

/// A row block's inputs: the activation buffer `x` of `m` rows, the block's first row `r0` and
/// row count, and the K tiles `kt0 .. kt0 + count` it covers.
struct RowsIn<'ctx> {
    x: PointerValue<'ctx>,
    m: IntValue<'ctx>,
    r0: IntValue<'ctx>,
    rows: u32,
    kt0: IntValue<'ctx>,
    count: IntValue<'ctx>,
}

/// The shuffle from accumulator lanes ([`lane_row`]) to natural column order.
fn natural_order() -> Vec<u32> {
    (0..TILE_N).map(|n| (0..TILE_N).position(|l| lane_row(l) == n).expect("a lane per row") as u32).collect()
}

impl<'m, 'ctx> Gen<'m, 'ctx> {
    /// A `<64 x i8>` constant repeating `vals`.
    fn bytes64(&self, vals: &[u8]) -> VectorValue<'ctx> {
        let i8t = self.ctx.i8_type();
        let v: Vec<IntValue<'ctx>> = (0..64).map(|i| i8t.const_int(vals[i % vals.len()] as u64, false)).collect();
        VectorType::const_vector(&v)
    }

    /// The 8 code vectors (`<64 x i8>` of unsigned weight bytes, lanes as [`lane_row`]) of
    /// tile `tile`; vector `4j + t` multiplies the activation codes of `(j, t)`.
    fn vn_codes(&self, plan: &Plan, table: &[u8; 64], packed: PointerValue<'ctx>, tile: IntValue<'ctx>) -> R<Vec<VectorValue<'ctx>>> {
        let bytes = self.ctx.i8_type().vec_type(64);
        let qwords = self.ctx.i64_type().vec_type(8);
        let load = |p: PointerValue<'ctx>, at: u64| -> R<VectorValue<'ctx>> {
            Ok(self.load(qwords, self.gep(p, self.i64c(at))?, 1)?.into_vector_value())
        };
        // Words (g, 2tp) and (g, 2tp + 1): 64-bit word 2 (g % 4) + tp of lane half g / 4.
        let regroup = |a: VectorValue<'ctx>, b: VectorValue<'ctx>, tp: u32| -> R<VectorValue<'ctx>> {
            let idx: Vec<u32> = (0..8).map(|g| 2 * (g % 4) + tp + 8 * (g / 4)).collect();
            Ok(self.b.build_bit_cast(self.shuf(a, b, &idx)?, bytes, "")?.into_vector_value())
        };
        let lo = self.low_plane(packed, tile)?;
        let high: Option<[VectorValue<'ctx>; 2]> = if plan.dq.h == 2 {
            let hi = self.high_plane(plan, packed, tile)?;
            let (h0, h1) = (load(hi, 0)?, load(hi, 64)?);
            Some([regroup(h0, h1, 0)?, regroup(h0, h1, 1)?])
        } else {
            None
        };
        let table = self.bytes64(table);
        let keep = self.bytes64(&[0x30]);
        let multishift = |ctl: &[u8; 8], v: VectorValue<'ctx>| {
            self.call_vec("llvm.x86.avx512.pmultishift.qb.512", &[self.bytes64(ctl).into(), v.into()])
        };
        let mut out = Vec::with_capacity(8);
        for j in 0..2 {
            let (l0, l1) = (load(lo, HALF_BYTES * j as u64)?, load(lo, HALF_BYTES * j as u64 + 64)?);
            for tp in 0..2 {
                let words = regroup(l0, l1, tp as u32)?;
                for u in 0..2 {
                    let nib = multishift(&nibble_controls(u), words)?;
                    let code = match &high {
                        Some(h) => {
                            let field = multishift(&field_controls(j, u), h[tp])?;
                            let f = self.b.build_and(field, keep, "")?;
                            let n = self.b.build_and(nib, self.b.build_not(keep, "")?, "")?;
                            self.b.build_or(f, n, "")?
                        }
                        None => nib,
                    };
                    out.push(self.call_vec("llvm.x86.avx512.permvar.qi.512", &[table.into(), code.into()])?);
                }
            }
        }
        Ok(out)
    }

    /// Grouped weights: a group's scales `s16` (natural order) times `1 / units`, in
    /// accumulator lane order ([`lane_row`]).
    fn vn_lane_scales(&self, s16: VectorValue<'ctx>, inv_units: f32) -> R<VectorValue<'ctx>> {
        let s16 = self.b.build_float_mul(s16, self.splat_f32(inv_units, TILE_N as u32), "")?;
        let idx: Vec<u32> = (0..TILE_N).map(|l| lane_row(l) as u32).collect();
        self.shuf(s16, s16, &idx)
    }

    /// Adds one tile's products for the row at `x` (tile index `tile`) to its `f32`
    /// accumulator `acc`: per output the tile's exact `i32` dot product, converted once and
    /// multiplied by the activation scale. `codes(i)` yields code vector `i`.
    fn vn_row_tile(
        &self,
        x: &Act8Rows<'ctx>,
        tile: IntValue<'ctx>,
        codes: &mut dyn FnMut(usize) -> R<VectorValue<'ctx>>,
        wscales: Option<VectorValue<'ctx>>,
        acc: VectorValue<'ctx>,
    ) -> R<VectorValue<'ctx>> {
        let i32t = self.ctx.i32_type();
        let at = self.mul(tile, 4)?;
        let c = self.load(i32t, self.gep(x.c, at)?, 4)?.into_int_value();
        let s = self.load(self.ctx.f32_type(), self.gep(x.s, at)?, 4)?;
        // Two chains (one per half) for latency; the first starts at minus the correction.
        let mut chains = [self.splat_scalar(self.b.build_int_neg(c, "")?.into(), self.vi32(16))?, self.vi32(16).const_zero()];
        for (j, chain) in chains.iter_mut().enumerate() {
            for t in 0..4 {
                let off = self.add(self.mul(tile, TILE_K as u64)?, self.i64c(16 * j as u64 + 4 * t as u64))?;
                let xg = self.load(i32t, self.gep(x.q, off)?, 1)?;
                let w = self.b.build_bit_cast(codes(4 * j + t)?, self.vi32(16), "")?;
                *chain =
                    self.call_vec("llvm.x86.avx512.vpdpbusd.512", &[(*chain).into(), w, self.splat_scalar(xg, self.vi32(16))?.into()])?;
            }
        }
        let dot = self.b.build_int_add(chains[0], chains[1], "")?;
        let f = self.b.build_signed_int_to_float(dot, self.vf32(16), "")?;
        let sv = self.splat_scalar(s, self.vf32(16))?;
        let scale = match wscales {
            Some(ws) => self.b.build_float_mul(sv, ws, "")?,
            None => sv,
        };
        self.fma(f, scale, acc)
    }

    /// A row block's sums over `count` tiles from K tile `kt0`: for each tile the code vectors
    /// from `codes(ti, tile)` (the tile relative to the block and to the n-tile's K) and every
    /// row's products (activations from memory as `vpdpbusd` broadcast operands); returns each
    /// row's 16 sums in natural column order (before the per-channel scales).
    fn vn_rows_sums(
        &self,
        f: FunctionValue<'ctx>,
        plan: &Plan,
        inv_units: f32,
        rin: &RowsIn<'ctx>,
        (scales, nt, ne): (PointerValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>),
        codes: &mut TileCodes<'_, 'm, 'ctx>,
    ) -> R<Vec<VectorValue<'ctx>>> {
        let kt = plan.kt;
        let n0 = self.mul(nt, TILE_N as u64)?;
        let xr: Vec<Act8Rows<'ctx>> =
            (0..rin.rows as u64).map(|r| self.act8_rows(rin.x, rin.m, self.add(rin.r0, self.i64c(r))?, kt)).collect::<R<_>>()?;
        let grouped = plan.groups > 1;
        let init: Vec<BasicValueEnum<'ctx>> = vec![self.fzero(16).into(); rin.rows as usize];
        // The columns' mask is made where it is used (per tile): made once before the loop it
        // stays live across it and costs a spill.
        let acc = self.for_loop(f, rin.kt0, self.add(rin.kt0, rin.count)?, init, &mut |g, tile, carried| {
            let ti = g.b.build_int_nsw_sub(tile, rin.kt0, "")?;
            let ws = if grouped {
                let s16 = g.scales16(plan, scales, g.tile_group(plan, tile)?, g.cols(plan, n0, ne)?)?;
                Some(g.vn_lane_scales(s16, inv_units)?)
            } else {
                None
            };
            let codes = codes(g, ti, tile)?;
            xr.iter()
                .zip(&carried)
                .map(|(x, acc)| Ok(g.vn_row_tile(x, tile, &mut |i| Ok(codes[i]), ws, acc.into_vector_value())?.into()))
                .collect()
        })?;
        let natural = natural_order();
        acc.iter().map(|a| self.shuf(a.into_vector_value(), a.into_vector_value(), &natural)).collect()
    }

    /// The n-tile function for `m ≤ DIRECT_ROWS`: every tile decoded in registers once, all
    /// rows accumulated from them.
    pub(super) fn vn_direct_ntile(&self, plan: &Plan, name: &str) -> R<FunctionValue<'ctx>> {
        let fname = format!("{name}.vn_direct");
        if let Some(f) = self.module.get_function(&fname) {
            return Ok(f);
        }
        let (table, inv_units) = code_table(plan.spec.format)?;
        let blocks: Vec<FunctionValue<'ctx>> =
            (1..=DIRECT_ROWS).map(|b| self.vn_direct_rows(plan, &table, inv_units, name, b)).collect::<R<_>>()?;
        self.direct_ntile_function(plan, &fname, &blocks)
    }

    /// The direct row block: `rows` rows of X against every tile of the n-tile, each decoded
    /// in registers.
    fn vn_direct_rows(&self, plan: &Plan, table: &[u8; 64], inv_units: f32, name: &str, rows: u32) -> R<FunctionValue<'ctx>> {
        let (p, i) = (self.ptr_t(), self.i64_t());
        let (f, a) = self.begin_function(&format!("{name}.vn_direct{rows}"), &[p, i, i, p, p, p, p, i, i], true);
        let (x, m, r0) = (a.ptr(0), a.int(1), a.int(2));
        let (packed, scales, bias, y) = (a.ptr(3), a.ptr(4), a.ptr(5), a.ptr(6));
        let (nt, ne) = (a.int(7), a.int(8));
        let tile0 = self.mul(nt, plan.kt)?;
        let cols = self.cols(plan, self.mul(nt, TILE_N as u64)?, ne)?;
        let out = self.int8_rows_out(f, plan, (scales, bias, y), self.ctx.bool_type().const_int(1, false), cols, inv_units)?;
        self.int8_direct_k_blocks(f, plan, &out, rows as usize, &mut |g, kt0, count| {
            let rows_in = RowsIn { x, m, r0, rows, kt0, count };
            g.vn_rows_sums(f, plan, inv_units, &rows_in, (scales, nt, ne), &mut |g, _, tile| {
                let tile = g.add(tile0, tile)?;
                g.prefetch_tile_ahead(plan, packed, tile)?;
                g.vn_codes(plan, table, packed, tile)
            })
        })?;
        self.end_function(f)
    }

    /// The n-tile function for any `m`: K in panels of [`PANEL_TILES`] decoded tiles, each
    /// consumed by every block of rows.
    pub(super) fn vn_panel_ntile(&self, plan: &Plan, name: &str) -> R<FunctionValue<'ctx>> {
        let fname = format!("{name}.vn_panel");
        if let Some(f) = self.module.get_function(&fname) {
            return Ok(f);
        }
        let (table, inv_units) = code_table(plan.spec.format)?;
        let blocks: Vec<FunctionValue<'ctx>> = (1..=PANEL_ROWS).map(|b| self.vn_panel_rows(plan, inv_units, name, b)).collect::<R<_>>()?;
        self.vn_panels(plan, &fname, 1, &table, &blocks)
    }

    /// The n-tile function `fname` over `width` adjacent n-tiles from `nt`: K in panels of
    /// [`PANEL_TILES`] tiles, tile `i` of n-tile `nt + c` decoded into panel slot `width · i + c`,
    /// then consumed by every block of rows (`blocks[b - 1]` for `b` rows).
    fn vn_panels(&self, plan: &Plan, fname: &str, width: u64, table: &[u8; 64], blocks: &[FunctionValue<'ctx>]) -> R<FunctionValue<'ctx>> {
        let (f, a) = self.ntile_function(fname);
        let panel = self.aligned_alloca(self.ctx.i8_type().array_type((width * PANEL_TILES * TILE_CODE_BYTES) as u32), "vnpanel")?;
        let tile0 = self.mul(a.nt, plan.kt)?;
        let mut decode = |g: &Self, i: IntValue<'ctx>, kt0: IntValue<'ctx>| {
            for c in 0..width {
                let tile = g.add(g.add(tile0, g.i64c(c * plan.kt))?, g.add(kt0, i)?)?;
                let codes = g.vn_codes(plan, table, a.packed, tile)?;
                let dst = g.gep(panel, g.add(g.mul(i, width * TILE_CODE_BYTES)?, g.i64c(c * TILE_CODE_BYTES))?)?;
                for (v, code) in codes.iter().enumerate() {
                    g.store(*code, g.gep(dst, g.i64c(64 * v as u64))?, 64)?;
                }
            }
            Ok(())
        };
        let mut head = |_: &Self, r0: IntValue<'ctx>| Ok([a.x.into(), a.m.into(), r0.into()]);
        self.int8_panel_loop(f, plan, &a, (panel, PANEL_TILES), blocks, &mut decode, &mut head)
    }

    /// The panel row block: `rows` rows against the panel's tiles; adds to y (or the bias,
    /// for the first panel).
    fn vn_panel_rows(&self, plan: &Plan, inv_units: f32, name: &str, rows: u32) -> R<FunctionValue<'ctx>> {
        let (p, i) = (self.ptr_t(), self.i64_t());
        let (f, a, PanelRowArgs { panel, kt0, count, first, scales, bias, y, nt, ne }) =
            self.int8_rows_function(&format!("{name}.vn_rows{rows}"), [p, i, i]);
        let (x, m, r0) = (a.ptr(0), a.int(1), a.int(2));
        let bytes = self.ctx.i8_type().vec_type(64);
        let rows_in = RowsIn { x, m, r0, rows, kt0, count };
        // The tile's 8 code vectors are loaded once and stay in registers for every row.
        let sums = self.vn_rows_sums(f, plan, inv_units, &rows_in, (scales, nt, ne), &mut |g, ti, _| {
            let src = g.gep(panel, g.mul(ti, TILE_CODE_BYTES)?)?;
            (0..8).map(|i| Ok(g.load(bytes, g.gep(src, g.i64c(64 * i as u64))?, 64)?.into_vector_value())).collect()
        })?;
        let cols = self.cols(plan, self.mul(nt, TILE_N as u64)?, ne)?;
        let out = self.int8_rows_out(f, plan, (scales, bias, y), first, cols, inv_units)?;
        for (r, vals) in sums.into_iter().enumerate() {
            self.int8_store_row(f, plan, &out, r, vals)?;
        }
        self.end_function(f)
    }
}

impl<'m, 'ctx> Gen<'m, 'ctx> {
    /// The n-tile function for two n-tiles `nt` and `nt + 1` (the second with at least one
    /// column in range) and any `m`: K in panels of [`PANEL_TILES`] tiles of both n-tiles,
    /// decoded once and consumed by blocks of [`PAIR_ROWS`] rows.
    pub(super) fn vn_pair_ntile(&self, plan: &Plan, name: &str) -> R<FunctionValue<'ctx>> {
        let fname = format!("{name}.vn_pair");
        if let Some(f) = self.module.get_function(&fname) {
            return Ok(f);
        }
        let (table, inv_units) = code_table(plan.spec.format)?;
        let blocks: Vec<FunctionValue<'ctx>> = (1..=PAIR_ROWS).map(|b| self.vn_pair_rows(plan, inv_units, name, b)).collect::<R<_>>()?;
        self.vn_panels(plan, &fname, 2, &table, &blocks)
    }

    /// The pair row block: `rows` rows against the panel's tiles of two n-tiles. Per tile, code
    /// vector `v` of both n-tiles is loaded once, each row's activation word `(j, t) = (v / 4,
    /// v % 4)` is broadcast once and multiplied into both of its chains; after the tile's 8
    /// steps each chain, less the correction, is converted and scaled as [`Gen::vn_row_tile`]
    /// does (the same `i32` sums, so the same `f32` results).
    fn vn_pair_rows(&self, plan: &Plan, inv_units: f32, name: &str, rows: u32) -> R<FunctionValue<'ctx>> {
        let (p, i) = (self.ptr_t(), self.i64_t());
        let (f, a, PanelRowArgs { panel, kt0, count, first, scales, bias, y, nt, ne }) =
            self.int8_rows_function(&format!("{name}.vn_pair{rows}"), [p, i, i]);
        let (x, m, r0) = (a.ptr(0), a.int(1), a.int(2));
        let kt = plan.kt;
        let (i32t, f32t) = (self.ctx.i32_type(), self.ctx.f32_type());
        let n0 = [self.mul(nt, TILE_N as u64)?, self.add(self.mul(nt, TILE_N as u64)?, self.i64c(TILE_N as u64))?];
        let xr: Vec<Act8Rows<'ctx>> = (0..rows as u64).map(|r| self.act8_rows(x, m, self.add(r0, self.i64c(r))?, kt)).collect::<R<_>>()?;
        let grouped = plan.groups > 1;
        let init: Vec<BasicValueEnum<'ctx>> = vec![self.fzero(16).into(); 2 * rows as usize];
        let acc = self.for_loop(f, self.i64c(0), count, init, &mut |g, ti, carried| {
            let tile = g.add(kt0, ti)?;
            let src = g.gep(panel, g.mul(ti, 2 * TILE_CODE_BYTES)?)?;
            let mut chains = vec![g.vi32(16).const_zero(); 2 * rows as usize];
            for v in 0..8u64 {
                let w: Vec<BasicValueEnum<'ctx>> =
                    (0..2u64).map(|c| g.load(g.vi32(16), g.gep(src, g.i64c(c * TILE_CODE_BYTES + 64 * v))?, 64)).collect::<R<_>>()?;
                let within = 16 * (v / 4) + 4 * (v % 4);
                for (r, xrow) in xr.iter().enumerate() {
                    let off = g.add(g.mul(tile, TILE_K as u64)?, g.i64c(within))?;
                    let xb = g.splat_scalar(g.load(i32t, g.gep(xrow.q, off)?, 1)?, g.vi32(16))?;
                    for (c, wc) in w.iter().enumerate() {
                        let chain = &mut chains[2 * r + c];
                        *chain = g.call_vec("llvm.x86.avx512.vpdpbusd.512", &[(*chain).into(), *wc, xb.into()])?;
                    }
                }
            }
            let ws: Option<Vec<VectorValue<'ctx>>> = if grouped {
                let group = g.tile_group(plan, tile)?;
                Some(
                    n0.iter()
                        .map(|&n| g.vn_lane_scales(g.scales16(plan, scales, group, g.cols(plan, n, ne)?)?, inv_units))
                        .collect::<R<_>>()?,
                )
            } else {
                None
            };
            let mut out = Vec::with_capacity(2 * rows as usize);
            for (r, xrow) in xr.iter().enumerate() {
                let at = g.mul(tile, 4)?;
                let corr = g.splat_scalar(g.load(i32t, g.gep(xrow.c, at)?, 4)?, g.vi32(16))?;
                let sv = g.splat_scalar(g.load(f32t, g.gep(xrow.s, at)?, 4)?, g.vf32(16))?;
                for c in 0..2 {
                    let dot = g.b.build_int_sub(chains[2 * r + c], corr, "")?;
                    let fdot = g.b.build_signed_int_to_float(dot, g.vf32(16), "")?;
                    let scale = match &ws {
                        Some(ws) => g.b.build_float_mul(sv, ws[c], "")?,
                        None => sv,
                    };
                    out.push(g.fma(fdot, scale, carried[2 * r + c].into_vector_value())?.into());
                }
            }
            Ok(out)
        })?;
        let natural = natural_order();
        for (c, &n) in n0.iter().enumerate() {
            let cols = self.cols(plan, n, ne)?;
            let out = self.int8_rows_out(f, plan, (scales, bias, y), first, cols, inv_units)?;
            for r in 0..rows as usize {
                let a = acc[2 * r + c].into_vector_value();
                self.int8_store_row(f, plan, &out, r, self.shuf(a, a, &natural)?)?;
            }
        }
        self.end_function(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_pick_the_layout_bits() {
        // Row g's e4, e0, e5, e1 (nibbles at bits 4, 8, 20, 24 of the word), then row g + 8's
        // e6, e2, e7, e3 (bits 0, 12, 16, 28); the second word 32 bits up.
        assert_eq!(nibble_controls(0), [4, 8, 20, 24, 0, 12, 16, 28]);
        assert_eq!(nibble_controls(1), [36, 40, 52, 56, 32, 44, 48, 60]);
        // Half 1, e6 (pair 3, even): field at bit 0, rotated 4 up (60 wraps to bit 0 at bit 4).
        assert_eq!(field_controls(1, 0)[4], 60);
        assert_eq!(field_controls(1, 1)[4], 28);
        let mut rows: Vec<usize> = (0..TILE_N).map(lane_row).collect();
        rows.sort_unstable();
        assert_eq!(rows, (0..TILE_N).collect::<Vec<_>>());
    }

    #[test]
    fn code_tables_hold_offset_integers() {
        let (t, inv_units) = code_table(Format::Fp6E2M3).unwrap();
        assert_eq!(inv_units, 1.0 / int8_units(Format::Fp6E2M3).unwrap());
        assert_eq!(t[0], 64);
        // 0x0f: exponent 1, mantissa 7 = 1.875 → 15 units of 1/8; 0x2f is its negative.
        assert_eq!(t[0x0f], 64 + 15);
        assert_eq!(t[0x2f], 64 - 15);
        assert!(code_table(Format::Fp6E3M2).is_err());
    }
}
