//! Output epilogues shared by every kernel family: the scales of an n-tile's 16 columns
//! (natural order or permuted into accumulator lanes), the reduction of a row's accumulators
//! to its 16 outputs, the bias, and the (masked) loads and stores of y.

use fpx_quant::layout::TILE_N;
use inkwell::values::{FunctionValue, IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;

use super::{Gen, Plan, R};

/// The columns an n-tile function computes: the tile's first column `n0`, which of its 16
/// lanes are columns of W (`valid`), and the end of the requested column range (`ne`).
#[derive(Clone, Copy)]
pub(super) struct Cols<'ctx> {
    /// The first column of the n-tile.
    pub(super) n0: IntValue<'ctx>,
    /// `<16 x i1>`: lane `i` is a column of W (`n0 + i < N`).
    pub(super) valid: VectorValue<'ctx>,
    /// The end of the column range to compute (at most N).
    pub(super) ne: IntValue<'ctx>,
}

/// What a row block adds its outputs to: the bias when its block of K is the first
/// (`first`), else what y holds from the blocks before.
#[derive(Clone, Copy)]
pub(super) struct Prior<'ctx> {
    /// Whether the block of K is the first (`i1`).
    pub(super) first: IntValue<'ctx>,
    /// The n-tile's bias (zero if there is none).
    pub(super) bias16: VectorValue<'ctx>,
    /// The n-tile's columns.
    pub(super) cols: Cols<'ctx>,
}

impl<'m, 'ctx> Gen<'m, 'ctx> {
    /// The columns of the n-tile at `n0`, computed up to `ne`.
    pub(super) fn cols(&self, plan: &Plan, n0: IntValue<'ctx>, ne: IntValue<'ctx>) -> R<Cols<'ctx>> {
        let valid = self.lanes_below(self.b.build_int_nsw_sub(self.i64c(plan.n()), n0, "")?)?;
        Ok(Cols { n0, valid, ne })
    }

    /// Natural-order scales of group `g` for the n-tile's 16 columns (zero past N).
    pub(super) fn scales16(&self, plan: &Plan, scales: PointerValue<'ctx>, g: IntValue<'ctx>, cols: Cols<'ctx>) -> R<VectorValue<'ctx>> {
        let off = self.mul(self.add(self.mul(g, plan.n())?, cols.n0)?, 4)?;
        self.masked_load(self.gep(scales, off)?, cols.valid)
    }

    /// The scale group of K tile `kt`, for groups of whole tiles.
    pub(super) fn tile_group(&self, plan: &Plan, kt: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let tpg = plan.tpg.expect("groups of whole tiles");
        Ok(self.b.build_int_unsigned_div(kt, self.i64c(tpg), "")?)
    }

    /// The 16 scales permuted into the lane layout of each accumulator.
    pub(super) fn scales_per_acc(&self, s16: VectorValue<'ctx>) -> R<Vec<VectorValue<'ctx>>> {
        let l = &self.lanes;
        (0..l.nacc())
            .map(|a| {
                let idx: Vec<u32> = (0..l.w).map(|f| l.acc_row(a, f) as u32).collect();
                self.shuf(s16, s16, &idx)
            })
            .collect()
    }

    /// Sums the accumulators of one row of X into its 16 outputs (natural order).
    pub(super) fn reduce(&self, acc: &[VectorValue<'ctx>]) -> R<VectorValue<'ctx>> {
        let l = &self.lanes;
        let w = l.w;
        // Output rows [w/2 * s, w/2 * (s + 1)) ... come from exactly two accumulators.
        let per = w; // outputs per group of two accumulators
        let mut parts = Vec::new();
        for s in 0..TILE_N / per {
            let rows = s * per..(s + 1) * per;
            let srcs: Vec<usize> = (0..l.nacc()).filter(|&a| (0..w).any(|f| rows.contains(&l.acc_row(a, f)))).collect();
            assert_eq!(srcs.len(), 2, "each output group comes from two accumulators");
            let find = |row: usize, parity: usize| -> u32 {
                for (k, &a) in srcs.iter().enumerate() {
                    for f in 0..w {
                        if f % 2 == parity && l.acc_row(a, f) == row {
                            return (k * w + f) as u32;
                        }
                    }
                }
                unreachable!("row {row} parity {parity} not found")
            };
            let even: Vec<u32> = rows.clone().map(|r| find(r, 0)).collect();
            let odd: Vec<u32> = rows.clone().map(|r| find(r, 1)).collect();
            let e = self.shuf(acc[srcs[0]], acc[srcs[1]], &even)?;
            let o = self.shuf(acc[srcs[0]], acc[srcs[1]], &odd)?;
            parts.push(self.b.build_float_add(e, o, "")?);
        }
        if parts.len() == 1 {
            Ok(parts[0])
        } else {
            self.shuf(parts[0], parts[1], &(0..TILE_N as u32).collect::<Vec<_>>())
        }
    }

    /// The bias for the n-tile's 16 columns (zero if `bias` is null or past N).
    pub(super) fn bias16(&self, f: FunctionValue<'ctx>, bias: PointerValue<'ctx>, cols: Cols<'ctx>) -> R<VectorValue<'ctx>> {
        let present = self.b.build_is_not_null(bias, "")?;
        let out = self.if_then(f, present, vec![self.fzero(TILE_N as u32).into()], &mut |g| {
            let p = g.gep(bias, g.mul(cols.n0, 4)?)?;
            Ok(vec![g.masked_load(p, cols.valid)?.into()])
        })?;
        Ok(out[0].into_vector_value())
    }

    /// What the row at `yrow` adds its outputs to: the bias in the first block of K, else what
    /// y holds (from an earlier block).
    pub(super) fn y_or_bias(&self, f: FunctionValue<'ctx>, prior: &Prior<'ctx>, yrow: PointerValue<'ctx>) -> R<VectorValue<'ctx>> {
        let Prior { first, bias16, cols } = *prior;
        let old = self.if_then(f, self.b.build_not(first, "")?, vec![bias16.into()], &mut |g| Ok(vec![g.load16(yrow, cols)?.into()]))?;
        Ok(old[0].into_vector_value())
    }

    /// Stores the 16 outputs `vals` at `yrow + n0`, only columns below `ne`.
    pub(super) fn store16(&self, f: FunctionValue<'ctx>, yrow: PointerValue<'ctx>, cols: Cols<'ctx>, vals: VectorValue<'ctx>) -> R<()> {
        let Cols { n0, ne: n_end, .. } = cols;
        let p = self.gep(yrow, self.mul(n0, 4)?)?;
        let end = self.add(n0, self.i64c(TILE_N as u64))?;
        let full = self.b.build_int_compare(IntPredicate::SLE, end, n_end, "")?;
        let fb = self.block(f, "store.full");
        let pb = self.block(f, "store.part");
        let done = self.block(f, "store.done");
        self.b.build_conditional_branch(full, fb, pb)?;
        self.b.position_at_end(fb);
        self.store(vals, p, 4)?;
        self.b.build_unconditional_branch(done)?;
        self.b.position_at_end(pb);
        let mask = self.lanes_below(self.b.build_int_nsw_sub(n_end, n0, "")?)?;
        self.masked_store(vals, p, mask)?;
        self.b.build_unconditional_branch(done)?;
        self.b.position_at_end(done);
        Ok(())
    }

    /// Loads y's 16 values at `yrow + n0` (columns from `ne` on read as 0).
    pub(super) fn load16(&self, yrow: PointerValue<'ctx>, cols: Cols<'ctx>) -> R<VectorValue<'ctx>> {
        let p = self.gep(yrow, self.mul(cols.n0, 4)?)?;
        let mask = self.lanes_below(self.b.build_int_nsw_sub(cols.ne, cols.n0, "")?)?;
        self.masked_load(p, mask)
    }
}
