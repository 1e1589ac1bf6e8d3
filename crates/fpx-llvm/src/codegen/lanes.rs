//! The lane bookkeeping of the in-register transpose: which low-plane words of a tile half
//! each T-vector holds after the shuffles, and which output row each `f32` lane of each
//! accumulator stands for (see the [`super`] docs for the vocabulary).

use fpx_quant::layout::LANES;

/// The lane bookkeeping of the in-register transpose for a vector width.
pub(super) struct Lanes {
    /// `f32` lanes per vector (8 or 16).
    pub(super) w: usize,
    /// T-vectors per half (`LANES / w`).
    pub(super) nq: usize,
    /// The transpose as a program of two-source shuffles on `<w x i32>` registers: inputs are
    /// registers `0..nq` (words `w*a .. w*a + w`), each step appends a register.
    pub(super) program: Vec<(usize, usize, Vec<u32>)>,
    /// Registers holding the T-vectors, in order.
    pub(super) outputs: Vec<usize>,
    /// Lane (word index in the half) of each T-vector element.
    pub(super) order: Vec<Vec<usize>>,
    /// Row sets (distinct accumulators per parity of `p`): 2 on AVX2, 1 on AVX-512.
    pub(super) nrs: usize,
    /// Row (0..8) of each float lane of a chunk, per row set.
    pub(super) rows: Vec<Vec<usize>>,
}

impl Lanes {
    /// The transpose for `w`-lane vectors (8 or 16), checked on construction.
    pub(super) fn new(w: usize) -> Lanes {
        let nq = LANES / w;
        let (program, outputs) = if w == 8 {
            // The classic 4x4 transpose of 32-bit elements within each 128-bit chunk.
            const LO32: [u32; 8] = [0, 8, 1, 9, 4, 12, 5, 13];
            const HI32: [u32; 8] = [2, 10, 3, 11, 6, 14, 7, 15];
            const LO64: [u32; 8] = [0, 1, 8, 9, 4, 5, 12, 13];
            const HI64: [u32; 8] = [2, 3, 10, 11, 6, 7, 14, 15];
            let p = vec![
                (0, 1, LO32.to_vec()),
                (0, 1, HI32.to_vec()),
                (2, 3, LO32.to_vec()),
                (2, 3, HI32.to_vec()),
                (4, 6, LO64.to_vec()),
                (4, 6, HI64.to_vec()),
                (5, 7, LO64.to_vec()),
                (5, 7, HI64.to_vec()),
            ];
            (p, vec![8, 9, 10, 11])
        } else {
            assert_eq!(w, 16, "vector width must be 8 or 16");
            // Two-source permutes (vpermt2d): T-vector q holds t = 2q (g = 0..8) then t = 2q + 1.
            let idx = |q: usize| (0..16).map(|i| (4 * (i % 8) + 2 * q + i / 8) as u32).collect::<Vec<_>>();
            (vec![(0, 1, idx(0)), (0, 1, idx(1))], vec![2, 3])
        };
        // Simulate the program on word indices.
        let mut regs: Vec<Vec<usize>> = (0..nq).map(|a| (w * a..w * a + w).collect()).collect();
        for (a, b, mask) in &program {
            let cat: Vec<usize> = regs[*a].iter().chain(regs[*b].iter()).copied().collect();
            regs.push(mask.iter().map(|&i| cat[i as usize]).collect());
        }
        let order: Vec<Vec<usize>> = outputs.iter().map(|&r| regs[r].clone()).collect();
        let nrs = if w == 8 { 2 } else { 1 };
        let mut lanes = Lanes { w, nq, program, outputs, order, nrs, rows: vec![Vec::new(); nrs] };
        // Every chunk must have one t, and chunks of one row set the same rows in the same order.
        for v in 0..nq {
            for c in 0..2 {
                let words = &lanes.order[v][c * w / 2..(c + 1) * w / 2];
                assert!(words.iter().all(|l| l % 4 == words[0] % 4), "chunk ({v}, {c}) mixes t");
                let rows: Vec<usize> = (0..w).map(|f| words[f / 2] / 4).collect();
                let rs = lanes.row_set(c);
                if lanes.rows[rs].is_empty() {
                    lanes.rows[rs] = rows;
                } else {
                    assert_eq!(lanes.rows[rs], rows, "row set {rs} differs between chunks");
                }
            }
        }
        let mut all: Vec<usize> = (0..nrs).flat_map(|rs| lanes.rows[rs].iter().step_by(2).copied()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>(), "row sets must cover rows 0..8 once");
        lanes
    }

    /// The row set of chunk `c`.
    pub(super) fn row_set(&self, c: usize) -> usize {
        if self.nrs == 2 {
            c
        } else {
            0
        }
    }

    /// `t` of chunk `c` of T-vector `v`.
    pub(super) fn chunk_t(&self, v: usize, c: usize) -> usize {
        self.order[v][c * self.w / 2] % 4
    }

    /// Accumulators per row of X: (parity of `p`) × row sets.
    pub(super) fn nacc(&self) -> usize {
        2 * self.nrs
    }

    /// Output row (0..16) of float lane `l` of accumulator `a`.
    pub(super) fn acc_row(&self, a: usize, l: usize) -> usize {
        self.rows[a % self.nrs][l] + 8 * (a / self.nrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpx_quant::layout::TILE_N;

    #[test]
    fn transpose_orders_lanes_by_t() {
        for w in [8, 16] {
            let l = Lanes::new(w);
            let mut seen: Vec<usize> = l.order.iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..LANES).collect::<Vec<_>>(), "w {w}");
            // Every (accumulator, lane) is a distinct (row, parity).
            let mut rows: Vec<(usize, usize)> =
                (0..l.nacc()).flat_map(|a| (0..w).map(move |f| (a, f))).map(|(a, f)| (l.acc_row(a, f), f % 2)).collect();
            rows.sort_unstable();
            rows.dedup();
            assert_eq!(rows.len(), 2 * TILE_N, "w {w}");
        }
        let l = Lanes::new(8);
        assert_eq!(l.order[0], [0, 8, 16, 24, 4, 12, 20, 28]);
    }
}
