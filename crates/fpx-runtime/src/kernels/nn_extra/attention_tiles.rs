//! The whole-row attention path in AVX-512 (encoders and prefill: several query rows of one head
//! over at most a thousand keys), in place of two small general GEMMs and scalar softmax loops.
//!
//! Per task (one head's query rows): K is transposed once into rows of keys (`Kᵀ`, sixteen-key
//! blocks by an in-register 16 × 16 transpose); the scores of 12 query rows × 16 keys are summed
//! in registers, each `Kᵀ` vector loaded once for the 12 rows; the softmax runs over each row's
//! live keys with a vector `exp`; `P·V` keeps a block of output rows × up to 64 columns in
//! registers over the keys. A row's live keys end at
//! its last key whose mask is above [`DEAD`]: every key after it (a causal mask's future, the
//! padding of a shorter sentence) has weight exactly 0 — its score plus a mask at or below
//! `-1e30` is at least `1e30` below the row's maximum, and `e^x` of that is 0 in f32 — so
//! those keys are neither multiplied nor exponentiated, which halves a causal prefill's work.
//!
//! [`whole_rows`] returns `false` where it does not apply (no AVX-512, value heads other than
//! 16, 32, 64 or 128 wide, K rows whose head size is not a multiple of 16, a row with no live
//! key: the caller's general path keeps the exact semantics of those).

use super::attention_blocks::Rows;

/// A mask value at or below this gives its key weight exactly 0 whenever the row has a key
/// above it (see the module docs).
pub(super) const DEAD: f32 = -1e30;

/// One whole-row task: `n` query rows of one head against `skv` keys and values.
pub(super) struct Task<'a> {
    /// Query rows: row `r`'s `d` values at `r · q.stride`.
    pub(super) q: Rows<'a>,
    /// Query rows in the task.
    pub(super) n: usize,
    /// Head size of Q and K.
    pub(super) d: usize,
    /// Keys: `skv` rows of `d` values, or with `k_transposed` `d` rows of `skv` values.
    pub(super) k: Rows<'a>,
    /// Whether K is stored transposed (`[D, Skv]` per head).
    pub(super) k_transposed: bool,
    /// Values: `skv` rows of `dv` values.
    pub(super) v: Rows<'a>,
    /// Keys (and values).
    pub(super) skv: usize,
    /// Head size of V (and Y).
    pub(super) dv: usize,
    /// The additive mask: row `r`'s value for key `j` at `r · rows.stride + j · key_stride`
    /// (`key_stride` 0: one value for every key).
    pub(super) mask: Option<(Rows<'a>, usize)>,
    /// The factor on `q·k`.
    pub(super) scale: f32,
}

impl Task<'_> {
    /// Keys `[0, live)` of query row `r` can have weight; every key after them has weight 0.
    fn live_keys(&self, r: usize) -> usize {
        let Some((m, key_stride)) = self.mask else { return self.skv };
        let row = &m.data[r * m.stride..];
        if key_stride == 0 {
            return if row[0] <= DEAD { 0 } else { self.skv };
        }
        // From the end, sixteen keys at a time while all are dead (a causal row's future).
        let mut end = self.skv;
        while end >= 16 && row[end - 16..end].iter().fold(true, |dead, &m| dead & (m <= DEAD)) {
            end -= 16;
        }
        // A NaN mask value is live (it makes the row NaN, as in the unfused graph).
        (0..end).rev().find(|&j| row[j] > DEAD || row[j].is_nan()).map_or(0, |j| j + 1)
    }

    /// Whether every row, key, value and mask element the task reads lies in its slice.
    fn in_bounds(&self) -> bool {
        let (n, d, skv, dv) = (self.n, self.d, self.skv, self.dv);
        let fits = |r: &Rows<'_>, rows: usize, len: usize| rows == 0 || r.data.len() >= (rows - 1) * r.stride + len;
        let keys = if self.k_transposed { fits(&self.k, d, skv) } else { fits(&self.k, skv, d) };
        let mask = self.mask.is_none_or(|(m, ks)| n == 0 || skv == 0 || m.data.len() > (n - 1) * m.stride + (skv - 1) * ks);
        fits(&self.q, n, d) && keys && fits(&self.v, skv, dv) && mask
    }
}

/// Y of `task` at `y` (row `r` at `y + r · y_stride`, `dv` values), with `scratch` for `Kᵀ` and
/// the scores. `false`: not applied (see the module docs), nothing written.
///
/// # Safety
/// `y + r · y_stride .. + dv` must be valid for writes for every row `r < task.n`, and written by
/// no one else during the call.
pub(super) unsafe fn whole_rows(task: &Task<'_>, scratch: &mut Vec<f32>, y: *mut f32, y_stride: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let shapes = task.n > 0 && task.skv > 0 && (task.k_transposed || task.d.is_multiple_of(16)) && task.in_bounds();
        if shapes && std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
            let lens: Vec<usize> = (0..task.n).map(|r| task.live_keys(r)).collect();
            if lens.contains(&0) {
                return false;
            }
            // SAFETY: AVX-512 F and FMA are present; every read is in bounds (checked above) and
            // the caller vouches for Y.
            unsafe {
                match task.dv {
                    16 => avx512::run::<1, 12>(task, &lens, scratch, y, y_stride),
                    32 => avx512::run::<2, 12>(task, &lens, scratch, y, y_stride),
                    // Wide value rows in passes of 64 columns: 6 rows × 4 vectors in registers,
                    // a pass reading 256 bytes of a value row per key (so a long head's values
                    // are not re-read from L2 for every two rows).
                    64 | 128 => avx512::run::<4, 6>(task, &lens, scratch, y, y_stride),
                    _ => return false,
                }
            }
            return true;
        }
    }
    let _ = (task, scratch, y, y_stride);
    false
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Task;
    #[cfg(doc)]
    use crate::kernels::fast::exp_f32;
    use std::arch::x86_64::*;

    /// Query rows whose scores one step sums in registers (each `Kᵀ` vector loaded feeds 12
    /// multiply-adds); the `P·V` row groups (`RV`) divide it.
    const SCORE_ROWS: usize = 12;

    /// The 16 × 16 block `r` transposed in registers: four rounds, round `k` exchanging bit `k` of
    /// the row and column index between row pairs that differ in it (`vpermt2ps`, 64 in all).
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: &mut [__m512; 16]) {
        for k in 0..4 {
            let bit = 1usize << k;
            let index = |f: &dyn Fn(usize) -> usize| {
                let v: [i32; 16] = std::array::from_fn(|c| f(c) as i32);
                // SAFETY: reads the 16 values of `v`.
                unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
            };
            let lo = index(&|c| if c & bit == 0 { c } else { 16 + (c ^ bit) });
            let hi = index(&|c| if c & bit == 0 { c | bit } else { 16 + c });
            for a in (0..16).filter(|a| a & bit == 0) {
                let (x, y) = (r[a], r[a | bit]);
                r[a] = _mm512_permutex2var_ps(x, lo, y);
                r[a | bit] = _mm512_permutex2var_ps(x, hi, y);
            }
        }
    }

    /// Lanes `[0, n)` of a 16-lane mask (`n` ≤ 16).
    fn lanes_below(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// `kt[e · width + j] = k_j[e]` for keys `j < keys` (the padding lanes up to a multiple of 16
    /// repeat the last key); see [`super::whole_rows`] for the bounds.
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose_keys(task: &Task<'_>, keys: usize, kt: &mut [f32], width: usize) {
        let k = task.k;
        if task.k_transposed {
            for e in 0..task.d {
                kt[e * width..][..keys].copy_from_slice(&k.data[e * k.stride..][..keys]);
            }
            return;
        }
        for j0 in (0..keys).step_by(16) {
            for e0 in (0..task.d).step_by(16) {
                let mut block: [__m512; 16] = std::array::from_fn(|i| {
                    let j = (j0 + i).min(keys - 1);
                    // SAFETY: key j < skv, whose values e0..e0 + 16 <= d lie in k.data.
                    unsafe { _mm512_loadu_ps(k.data.as_ptr().add(j * k.stride + e0)) }
                });
                transpose16(&mut block);
                for (i, v) in block.iter().enumerate() {
                    // SAFETY: row e0 + i < d of kt, lanes j0..j0 + 16 <= width.
                    unsafe { _mm512_storeu_ps(kt.as_mut_ptr().add((e0 + i) * width + j0), *v) };
                }
            }
        }
    }

    /// `e^x` lane by lane: [`exp_f32`]'s operations in vector form (the same constants and
    /// order, so the same results: 0 below `ln 2^-126`, NaN passed through).
    #[target_feature(enable = "avx512f,fma")]
    fn exp16(x: __m512) -> __m512 {
        let lo = _mm512_set1_ps(-87.336_54);
        let magic = _mm512_set1_ps(12_582_912.0);
        // max/min return their second operand when either is NaN: a NaN x passes through.
        let xc = _mm512_min_ps(_mm512_set1_ps(88.3), _mm512_max_ps(lo, x));
        let v = _mm512_fmadd_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E), magic);
        let n = _mm512_sub_ps(v, magic);
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.121_944_4e-4), _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693_359_4), xc));
        let ni = _mm512_sub_epi32(_mm512_castps_si512(v), _mm512_set1_epi32(0x4B40_0000));
        let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(ni, _mm512_set1_epi32(127))));
        let mut p = _mm512_set1_ps(1.987_569_2e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_mul_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0))), scale);
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo), y, _mm512_setzero_ps())
    }

    /// `s = e^(s - max)` over the row (whole vectors) and the reciprocal of its sum.
    #[target_feature(enable = "avx512f,fma")]
    fn softmax_weights(s: &mut [f32]) -> f32 {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for c in s.chunks_exact(16) {
            // SAFETY: c holds 16 values.
            m = _mm512_max_ps(m, unsafe { _mm512_loadu_ps(c.as_ptr()) });
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(m));
        let mut sum = _mm512_setzero_ps();
        for c in s.chunks_exact_mut(16) {
            // SAFETY: c holds 16 values.
            let e = exp16(_mm512_sub_ps(unsafe { _mm512_loadu_ps(c.as_ptr()) }, max));
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(c.as_mut_ptr(), e) };
            sum = _mm512_add_ps(sum, e);
        }
        1.0 / _mm512_reduce_add_ps(sum)
    }

    /// See [`super::whole_rows`]: `16 C` columns and `RV` rows per `P·V` step (`16 C` divides
    /// `dv`), `lens` each row's live
    /// keys (all ≥ 1); the caller checked the bounds.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn run<const C: usize, const RV: usize>(
        task: &Task<'_>,
        lens: &[usize],
        scratch: &mut Vec<f32>,
        y: *mut f32,
        y_stride: usize,
    ) {
        let (n, d) = (task.n, task.d);
        let keys = lens.iter().copied().max().unwrap_or(0);
        let width = keys.next_multiple_of(16);
        scratch.clear();
        scratch.resize((d + n) * width, 0.0);
        let (kt, s) = scratch.split_at_mut(d * width);
        // SAFETY: keys <= skv, bounds checked by the caller.
        unsafe { transpose_keys(task, keys, kt, width) };
        let mut inv = vec![0f32; n];
        let scale = _mm512_set1_ps(task.scale);
        for r0 in (0..n).step_by(SCORE_ROWS) {
            let rows = SCORE_ROWS.min(n - r0);
            let chunks = lens[r0..r0 + rows].iter().copied().max().unwrap_or(0).div_ceil(16);
            // Rows past the task's last repeat it (computed, not stored): the loop stays fixed.
            let q: [*const f32; SCORE_ROWS] =
                std::array::from_fn(|i| task.q.data.as_ptr().wrapping_add((r0 + i.min(rows - 1)) * task.q.stride));
            for c in 0..chunks {
                let mut acc = [_mm512_setzero_ps(); SCORE_ROWS];
                for e in 0..d {
                    // SAFETY: row e of kt, lanes 16c..16c + 16 <= width.
                    let kv = unsafe { _mm512_loadu_ps(kt.as_ptr().add(e * width + 16 * c)) };
                    for (a, qr) in acc.iter_mut().zip(&q) {
                        // SAFETY: e < d, within the query row (bounds checked).
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(unsafe { *qr.add(e) }), kv, *a);
                    }
                }
                for (i, a) in acc.iter().enumerate().take(rows) {
                    let r = r0 + i;
                    let mut sv = _mm512_mul_ps(*a, scale);
                    if let Some((m, key_stride)) = task.mask {
                        let row = m.data.as_ptr().wrapping_add(r * m.stride);
                        // SAFETY: mask row r's values for keys < skv (bounds checked); the masked
                        // load reads no lane at or past skv.
                        let mv = unsafe {
                            if key_stride == 0 {
                                _mm512_set1_ps(*row)
                            } else {
                                _mm512_maskz_loadu_ps(lanes_below(task.skv.saturating_sub(16 * c).min(16)), row.add(16 * c))
                            }
                        };
                        sv = _mm512_add_ps(sv, mv);
                    }
                    // Keys at or past the row's live ones weigh 0.
                    let live = lanes_below(lens[r].saturating_sub(16 * c).min(16));
                    sv = _mm512_mask_blend_ps(live, _mm512_set1_ps(f32::NEG_INFINITY), sv);
                    // SAFETY: row r of s, lanes 16c..16c + 16 <= width.
                    unsafe { _mm512_storeu_ps(s.as_mut_ptr().add(r * width + 16 * c), sv) };
                }
            }
            for r in r0..r0 + rows {
                inv[r] = softmax_weights(&mut s[r * width..][..16 * chunks]);
            }
            // Y = P·V for RV rows and 16 C columns at a time, over the keys any row weighs.
            for c0 in (0..task.dv).step_by(16 * C) {
                for v0 in (r0..r0 + rows).step_by(RV) {
                    let vrows = RV.min(r0 + rows - v0);
                    let keys_here = lens[v0..v0 + vrows].iter().copied().max().unwrap_or(0);
                    let p: [*const f32; RV] = std::array::from_fn(|i| s.as_ptr().wrapping_add((v0 + i.min(vrows - 1)) * width));
                    let mut acc = [[_mm512_setzero_ps(); C]; RV];
                    for j in 0..keys_here {
                        // SAFETY: value row j < skv (bounds checked), columns c0..c0 + 16 C <= dv.
                        let vv: [__m512; C] =
                            std::array::from_fn(|c| unsafe { _mm512_loadu_ps(task.v.data.as_ptr().add(j * task.v.stride + c0 + 16 * c)) });
                        for (a, pr) in acc.iter_mut().zip(&p) {
                            // SAFETY: j < 16 · chunks, within the rows' computed weights.
                            let w = _mm512_set1_ps(unsafe { *pr.add(j) });
                            for (x, v) in a.iter_mut().zip(&vv) {
                                *x = _mm512_fmadd_ps(w, *v, *x);
                            }
                        }
                    }
                    for (i, a) in acc.iter().enumerate().take(vrows) {
                        let f = _mm512_set1_ps(inv[v0 + i]);
                        for (c, x) in a.iter().enumerate() {
                            // SAFETY: the caller vouches for Y's row v0 + i (columns < dv).
                            unsafe { _mm512_storeu_ps(y.add((v0 + i) * y_stride + c0 + 16 * c), _mm512_mul_ps(*x, f)) };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpx_test_support::Rng;

    /// How a case masks its keys.
    #[derive(Clone, Copy, Debug)]
    enum Masking {
        None,
        /// Query row `r` sees keys `0..=past + r`; the rest get `value` (`f32::MIN` as the
        /// exporters write it, or `-inf`).
        Causal {
            past: usize,
            value: f32,
        },
        /// One row for all queries (row stride 0): the first `lead` keys (left padding) and the
        /// last `tail` keys get `f32::MIN`.
        Padding {
            lead: usize,
            tail: usize,
        },
        /// One additive value for every key of every row (key stride 0).
        Constant(f32),
    }

    /// (rows, stride, key stride) of a case's mask values.
    fn mask_values(masking: Masking, n: usize, skv: usize) -> Option<(Vec<f32>, usize, usize)> {
        match masking {
            Masking::None => None,
            Masking::Causal { past, value } => {
                Some(((0..n * skv).map(|t| if t % skv <= past + t / skv { 0.0 } else { value }).collect(), skv, 1))
            }
            Masking::Padding { lead, tail } => {
                Some(((0..skv).map(|j| if j < lead || j >= skv - tail { f32::MIN } else { 0.0 }).collect(), 0, 1))
            }
            Masking::Constant(c) => Some((vec![c], 0, 0)),
        }
    }

    /// Every key count around the blocks' edges (8 score rows, 16 keys), both K layouts, strided
    /// rows and every mask kind, against attention in f64 over all keys (so skipping the dead
    /// keys must change nothing beyond rounding).
    #[test]
    fn whole_rows_match_f64_attention() {
        let mut rng = Rng::new(23);
        let cases = [
            // (rows, keys, d, dv, K transposed, masking)
            (19, 19, 32, 32, false, Masking::Padding { lead: 0, tail: 4 }),
            (8, 19, 32, 32, false, Masking::Padding { lead: 3, tail: 0 }),
            (37, 37, 64, 64, false, Masking::Causal { past: 0, value: f32::MIN }),
            (5, 50, 16, 16, true, Masking::Causal { past: 45, value: f32::NEG_INFINITY }),
            (20, 130, 128, 128, false, Masking::None),
            (9, 33, 48, 128, false, Masking::Constant(0.5)),
            (17, 17, 20, 64, true, Masking::Causal { past: 0, value: f32::MIN }),
            (1, 1, 16, 32, false, Masking::None),
        ];
        for (n, skv, d, dv, k_transposed, masking) in cases {
            // Row strides longer than the rows, as a projection's [B, S, H, D] layout has them.
            let (qs, ks, vs) = (d + 16, if k_transposed { skv } else { d + 32 }, dv + 16);
            let q = rng.normals(n * qs);
            let k = rng.normals(if k_transposed { d * skv } else { skv * ks });
            let v = rng.normals(skv * vs);
            let mask = mask_values(masking, n, skv);
            let scale = 1.0 / (d as f32).sqrt();
            let task = Task {
                q: Rows { data: &q, stride: qs },
                n,
                d,
                k: Rows { data: &k, stride: ks },
                k_transposed,
                v: Rows { data: &v, stride: vs },
                skv,
                dv,
                mask: mask.as_ref().map(|(m, rs, kstride)| (Rows { data: m, stride: *rs }, *kstride)),
                scale,
            };
            let ys = dv + 8;
            let mut y = vec![f32::NAN; n * ys];
            // SAFETY: y holds n rows of ys >= dv values.
            if !unsafe { whole_rows(&task, &mut Vec::new(), y.as_mut_ptr(), ys) } {
                fpx_test_support::skip(fpx_test_support::Requirement::Vnni, "whole_rows_match_f64_attention", "this CPU lacks AVX-512");
                return;
            }
            let key = |j: usize, e: usize| if k_transposed { k[e * skv + j] } else { k[j * ks + e] } as f64;
            for r in 0..n {
                let scores: Vec<f64> = (0..skv)
                    .map(|j| {
                        let dot: f64 = (0..d).map(|e| q[r * qs + e] as f64 * key(j, e)).sum();
                        let m = mask.as_ref().map_or(0.0, |(m, rs, kstride)| m[r * rs + j * kstride] as f64);
                        scale as f64 * dot + m
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = w.iter().sum();
                for e in 0..dv {
                    let want = (0..skv).map(|j| w[j] * v[j * vs + e] as f64).sum::<f64>() / sum;
                    let got = y[r * ys + e] as f64;
                    assert!(
                        (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                        "{masking:?} {n}x{skv} d {d} dv {dv}: y[{r}][{e}] {got} vs {want}"
                    );
                }
                assert!(y[r * ys + dv..(r + 1) * ys].iter().all(|x| x.is_nan()), "wrote past row {r}");
            }
        }
    }

    /// What the path declines is left to the general one, with Y untouched: a row with every key
    /// masked (its NaN-or-zero rule is the caller's), value heads of other widths, and K rows
    /// whose head size is not a multiple of 16.
    #[test]
    fn whole_rows_decline_what_they_do_not_take() {
        let mut rng = Rng::new(5);
        let (n, skv) = (4, 24);
        let (q, k, v) = (rng.normals(n * 128), rng.normals(skv * 128), rng.normals(skv * 128));
        let mut all_masked = vec![0f32; n * skv];
        all_masked[2 * skv..3 * skv].fill(f32::NEG_INFINITY);
        let task = |d: usize, dv: usize, masked: bool| Task {
            q: Rows { data: &q, stride: d },
            n,
            d,
            k: Rows { data: &k, stride: d },
            k_transposed: false,
            v: Rows { data: &v, stride: dv },
            skv,
            dv,
            mask: masked.then_some((Rows { data: &all_masked, stride: skv }, 1)),
            scale: 0.25,
        };
        for (what, t) in
            [("a fully masked row", task(32, 32, true)), ("value heads of 96", task(32, 96, false)), ("K rows of 20", task(20, 32, false))]
        {
            let mut y = vec![f32::NAN; n * 128];
            // SAFETY: y holds n rows of 128 >= dv values.
            assert!(!unsafe { whole_rows(&t, &mut Vec::new(), y.as_mut_ptr(), 128) }, "{what} was taken");
            assert!(y.iter().all(|x| x.is_nan()), "{what}: Y was written");
        }
    }
}
