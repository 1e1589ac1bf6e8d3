//! The AVX2 int8 GEMV: for a few rows of X (at most [`DIRECT_ROWS`]), FP6 tiles decoded in
//! registers and multiplied where they are decoded, without the panel of [`super::int8`].
//!
//! The panel kernels multiply unsigned weight bytes `value · units + 64` by the signed
//! activation codes and subtract the offset's share afterwards; decoding, storing and
//! reloading those bytes costs more than the multiplication at one row. Here each code byte
//! gives its unsigned magnitude (two `pshufb` tables and a blend, [`Gen::fp6_magnitudes`]) and
//! its sign is moved onto the activation instead: `vpsignb` of the broadcast activation codes
//! by the code bytes, then `vpmaddubsw(magnitude, ±x)`. The products need no offset and no
//! correction, and since a magnitude is at most 64 and a code at most 127 in size, two
//! `vpmaddubsw` results add in 16 bits before one `vpmaddwd` widens them. Each tile's `i32`
//! dot products equal the panel kernels' (offset products minus the correction) exactly and
//! are converted and scaled in the same operations (those of [`super::vnni`]'s direct kernel
//! too); only the points where the `f32` sums over K are rounded differ, once K spans more
//! than one panel.
//!
//! Code generation order matters here: the decode of each T-vector is tied ([`Gen::tie`]) to
//! the products of the previous one, else the scheduler decodes the whole tile first and
//! spills it.

use fpx_quant::layout::{TILE_K, TILE_N};
use inkwell::values::{BasicValueEnum, FunctionValue, VectorValue};

use super::int8::{ByteDecode, ByteKind};
use super::{Gen, Plan, R};
use crate::LlvmError;

/// Rows of X up to which the direct kernel runs (each row costs a `vpsignb` per weight
/// vector, which the panel kernel shares between rows). On Zen 1 (4096², one thread) it beats
/// the panel loop up to 6 rows (5: 6.8 vs 7.7 ms, 6: 7.6 vs 8.6 ms) and ties at 8.
pub(super) const DIRECT_ROWS: u32 = 6;

/// Largest magnitude for which two `vpmaddubsw` sums (each of two products with codes up to
/// 127 in size) still add in 16 bits: `4 · 64 · 127 < 2^15`.
const PAIRED_MAGNITUDE: u8 = 64;

/// Whether `plan` has a direct int8 kernel on AVX2: FP6 codes with an integer form (sign and
/// magnitude) in scale groups of whole tiles (or one).
pub(super) fn runs(plan: &Plan) -> bool {
    plan.tpg.is_some() && matches!(ByteDecode::of(plan.spec.format).map(|d| d.kind), Ok(ByteKind::Fp6 { .. }))
}

impl<'m, 'ctx> Gen<'m, 'ctx> {
    /// The n-tile function for `m ≤ DIRECT_ROWS`: every tile decoded in registers once and
    /// multiplied with each row.
    pub(super) fn i8_direct_ntile(&self, plan: &Plan, name: &str) -> R<FunctionValue<'ctx>> {
        let fname = format!("{name}.i8direct");
        if let Some(f) = self.module.get_function(&fname) {
            return Ok(f);
        }
        let dec = ByteDecode::of(plan.spec.format)?;
        let lane_rows = self.i8_lane_rows()?;
        let blocks: Vec<FunctionValue<'ctx>> =
            (1..=DIRECT_ROWS).map(|b| self.i8_direct_rows(plan, &dec, &lane_rows, name, b)).collect::<R<_>>()?;
        self.direct_ntile_function(plan, &fname, &blocks)
    }

    /// The direct row block: `rows` rows of X against every tile of the n-tile.
    fn i8_direct_rows(&self, plan: &Plan, dec: &ByteDecode, lane_rows: &[usize], name: &str, rows: u32) -> R<FunctionValue<'ctx>> {
        let ByteKind::Fp6 { mag, identity0 } = dec.kind else {
            return Err(LlvmError::Llvm(format!("no direct int8 kernel for {}", plan.spec.format)));
        };
        let paired = mag.iter().flatten().all(|&m| m <= PAIRED_MAGNITUDE);
        let (p, i) = (self.ptr_t(), self.i64_t());
        let (f, a) = self.begin_function(&format!("{name}.i8direct{rows}"), &[p, i, i, p, p, p, p, i, i], true);
        let (x, m, r0) = (a.ptr(0), a.int(1), a.int(2));
        let (packed, scales, bias, y) = (a.ptr(3), a.ptr(4), a.ptr(5), a.ptr(6));
        let (nt, ne) = (a.int(7), a.int(8));
        let kt = plan.kt;
        let w = self.w();
        let grouped = plan.groups > 1;
        let rows_u = rows as usize;
        let n0 = self.mul(nt, TILE_N as u64)?;
        let tile0 = self.mul(nt, kt)?;
        let xr = (0..rows as u64).map(|r| self.act8_rows(x, m, self.add(r0, self.i64c(r))?, kt)).collect::<R<Vec<_>>>()?;
        let ones = self.splat_i16(1, 2 * w);
        let i32t = self.ctx.i32_type();

        let cols = self.cols(plan, n0, ne)?;
        let first = self.ctx.bool_type().const_int(1, false);
        let out = self.int8_rows_out(f, plan, (scales, bias, y), first, cols, dec.inv_units)?;
        let nat = self.i8_natural_order(lane_rows);
        self.int8_direct_k_blocks(f, plan, &out, rows_u, &mut |g, kt0, count| {
            let init: Vec<BasicValueEnum<'ctx>> = vec![g.fzero(w).into(); 2 * rows_u];
            let acc = g.for_loop(f, kt0, g.add(kt0, count)?, init, &mut |g, k, carried| {
                let ws =
                    if grouped { Some(g.i8_group_scales(plan, dec.inv_units, scales, k, g.cols(plan, n0, ne)?, lane_rows)?) } else { None };
                // Per row and accumulator half: the `i32` dot products so far, and a 16-bit sum
                // waiting for its partner.
                let mut dots: Vec<[Option<VectorValue<'ctx>>; 2]> = vec![[None, None]; rows_u];
                let mut pending: Vec<[Option<VectorValue<'ctx>>; 2]> = vec![[None, None]; rows_u];
                g.prefetch_tile_ahead(plan, packed, g.add(tile0, k)?)?;
                g.i8_tile_bytes(plan, packed, g.add(tile0, k)?, &mut |g, j, v, bytes| {
                    let t = g.lanes.chunk_t(v, 0) as u64;
                    let xoff = g.add(g.mul(k, TILE_K as u64)?, g.i64c((4 * j as u64 + t) * 4))?;
                    let mut last = None;
                    let codes = [g.fp6_magnitudes(&mag, identity0, bytes[0])?, g.fp6_magnitudes(&mag, identity0, bytes[1])?];
                    for (r, xr) in xr.iter().enumerate() {
                        let xd = g.load(i32t, g.gep(xr.q, xoff)?, 4)?;
                        let xb = g.as_bytes(g.splat_scalar(xd, g.vi32(w))?)?;
                        for (h, code) in codes.iter().enumerate() {
                            let (magnitude, sign) = *code;
                            let signed_x = g.call_vec("llvm.x86.avx2.psign.b", &[xb.into(), sign.into()])?;
                            let prod = g.call_vec("llvm.x86.avx2.pmadd.ub.sw", &[magnitude.into(), signed_x.into()])?;
                            last = Some(prod);
                            let sum16 = match pending[r][h].take() {
                                // Two products added in 16 bits (no overflow: see [`PAIRED_MAGNITUDE`]).
                                Some(prev) => g.b.build_int_add(prev, prod, "")?,
                                None if paired => {
                                    pending[r][h] = Some(prod);
                                    continue;
                                }
                                None => prod,
                            };
                            let wide = g.call_vec("llvm.x86.avx2.pmadd.wd", &[sum16.into(), ones.into()])?;
                            dots[r][h] = Some(match dots[r][h] {
                                Some(d) => g.b.build_int_add(d, wide, "")?,
                                None => wide,
                            });
                        }
                    }
                    Ok(last)
                })?;
                let mut out = Vec::with_capacity(2 * rows_u);
                for (r, xr) in xr.iter().enumerate() {
                    let s = g.load(g.ctx.f32_type(), g.gep(xr.s, g.mul(k, 4)?)?, 4)?;
                    let sv = g.splat_scalar(s, g.vf32(w))?;
                    for (h, dot) in dots[r].into_iter().enumerate() {
                        let dot = dot.expect("every tile has products");
                        let af = g.b.build_signed_int_to_float(dot, g.vf32(w), "")?;
                        let scale = match ws {
                            Some(ws) => g.b.build_float_mul(sv, ws[h], "")?,
                            None => sv,
                        };
                        out.push(g.fma(af, scale, carried[2 * r + h].into_vector_value())?.into());
                    }
                }
                Ok(out)
            })?;
            (0..rows_u).map(|r| g.shuf(acc[2 * r].into_vector_value(), acc[2 * r + 1].into_vector_value(), &nat)).collect()
        })?;
        self.end_function(f)
    }
}
