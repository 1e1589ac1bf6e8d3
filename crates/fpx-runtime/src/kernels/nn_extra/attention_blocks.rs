//! The streaming attention path's two inner products over one block of keys, in AVX-512 where
//! the host has it: the scores `q·kⱼ` of a few query rows, and the weighted sum of value rows.
//! Query rows go four at a time (a decode step's GQA group): each key or value vector loaded
//! serves all four rows, and each query vector four keys, with the dot products' lanes summed by
//! one transpose-and-add tree (instead of a horizontal sum per key) and the outputs held in
//! registers across the block. Rows a weight of which is zero (a masked key, whose value row may
//! hold anything) take a per-row loop that skips it. The cache rows ahead are prefetched. Decode
//! steps spend their attention time here, reading a long KV cache.
//!
//! Each function returns `false` where it does not apply (no AVX-512, head sizes that are not
//! a multiple of 16, or value heads other than 64 or 128 wide), and the caller runs its
//! portable loop.

/// Where a block's keys or values are: the head's first row and the row stride (elements).
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    /// The head's rows from row 0.
    pub(super) data: &'a [f32],
    /// Elements from one row to the next.
    pub(super) stride: usize,
}

/// `scores[r][jj] = queries[r] · k[j0 + jj]` for `jj < nb` (unscaled). `false`: not applied.
pub(super) fn block_scores<const B: usize>(queries: &[&[f32]], k: Rows<'_>, j0: usize, nb: usize, scores: &mut [[f32; B]]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let d = queries.first().map_or(0, |q| q.len());
        let fits = d > 0
            && d.is_multiple_of(16)
            && nb <= B
            && queries.len() <= scores.len()
            && queries.iter().all(|q| q.len() == d)
            && (nb == 0 || k.data.len() >= (j0 + nb - 1) * k.stride + d);
        if fits && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512 F is present; every row read lies in `k.data` (checked above) and
            // every query has `d` values.
            unsafe {
                // Rows four at a time share each key vector they load; a last row or two alone.
                let mut r = 0;
                while r < queries.len() {
                    let n = 4.min(queries.len() - r);
                    let (q, s) = (&queries[r..r + n], &mut scores[r..r + n]);
                    match n {
                        4 => avx512::shared_scores::<4, B>(q, k, j0, nb, s),
                        3 => avx512::shared_scores::<3, B>(q, k, j0, nb, s),
                        _ => avx512::scores(q, k, j0, nb, s),
                    }
                    r += n;
                }
            }
            return true;
        }
    }
    let _ = (queries, k, j0, nb, scores);
    false
}

/// `y[r] += Σⱼⱼ p[r][jj] · v[j0 + jj]` over `jj < nb`, skipping zero weights (masked keys),
/// for the `y.len() / dv` rows of `y`. `false`: not applied.
pub(super) fn block_values<const B: usize>(p: &[[f32; B]], v: Rows<'_>, j0: usize, nb: usize, dv: usize, y: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let rows = y.len().checked_div(dv).unwrap_or(0);
        let fits = (dv == 64 || dv == 128)
            && y.len() == rows * dv
            && rows <= p.len()
            && nb <= B
            && (nb == 0 || v.data.len() >= (j0 + nb - 1) * v.stride + dv);
        if fits && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512 F is present; every value row read lies in `v.data` (checked above)
            // and `y` holds `rows` rows of `dv`.
            unsafe {
                // Rows four at a time share each value row they load, where none of them skips
                // a key (the common case: every key live); else each row on its own.
                let mut r = 0;
                while r < rows {
                    let n = 4.min(rows - r);
                    let (yr, pr) = (&mut y[r * dv..(r + n) * dv], &p[r..r + n]);
                    if pr.iter().all(|row| row[..nb].iter().all(|&w| w != 0.0)) {
                        match n {
                            4 => avx512::shared_values::<4, B>(pr, v, j0, nb, dv, yr),
                            3 => avx512::shared_values::<3, B>(pr, v, j0, nb, dv, yr),
                            2 => avx512::shared_values::<2, B>(pr, v, j0, nb, dv, yr),
                            _ => avx512::shared_values::<1, B>(pr, v, j0, nb, dv, yr),
                        }
                    } else if dv == 128 {
                        avx512::values::<8, B>(pr, v, j0, nb, yr)
                    } else {
                        avx512::values::<4, B>(pr, v, j0, nb, yr)
                    }
                    r += n;
                }
            };
            return true;
        }
    }
    let _ = (p, v, j0, nb, dv, y);
    false
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Rows;
    use std::arch::x86_64::*;

    /// Sixteen vectors' lane sums as one vector: lane `i` is the sum of `v[i]`'s lanes. Pairs are
    /// interleaved and added within 128-bit chunks (16 → 8 → 4 vectors), then the chunks are
    /// added across (4 → 2 → 1).
    #[target_feature(enable = "avx512f")]
    fn lane_sums(v: &[__m512; 16]) -> __m512 {
        let x: [__m512; 8] = std::array::from_fn(|i| {
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
        });
        let z: [__m512; 4] = std::array::from_fn(|i| {
            let (a, b) = (x[2 * i], x[2 * i + 1]);
            _mm512_add_ps(_mm512_shuffle_ps::<0x44>(a, b), _mm512_shuffle_ps::<0xEE>(a, b))
        });
        let half = |a: __m512, b: __m512| _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(a, b), _mm512_shuffle_f32x4::<0xDD>(a, b));
        half(half(z[0], z[1]), half(z[2], z[3]))
    }

    /// Keys (or value rows) ahead of the one being read that are fetched into L1 meanwhile: a
    /// decode step streams its cache from memory, one row after another, and the hardware
    /// prefetcher alone left it at about 60 % of a core's read bandwidth.
    const PREFETCH_KEYS: usize = 32;

    /// Prefetches `n` rows of `width` values from row `first`, those that lie in `rows.data`.
    #[inline(always)]
    fn prefetch_rows(rows: Rows<'_>, first: usize, n: usize, width: usize) {
        for row in first..first + n {
            let start = row * rows.stride;
            if start + width > rows.data.len() {
                return;
            }
            for e in (0..width).step_by(16) {
                // SAFETY: start + e < rows.data.len(): the address lies in the slice (and a
                // prefetch never faults anyway).
                unsafe { _mm_prefetch::<_MM_HINT_T0>(rows.data.as_ptr().add(start + e).cast()) };
            }
        }
    }

    /// [`super::block_scores`] for `R` (3 or 4) query rows, four keys at a time: each key
    /// vector is loaded once for all rows and each query vector once for four keys (`4 R`
    /// accumulators), half the loads per multiply-add of one row at a time. The `4 R` dot
    /// products' lanes are summed by one [`lane_sums`] (lane `4 r + kk`: row `r`, key `kk`).
    /// The caller checked the bounds.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn shared_scores<const R: usize, const B: usize>(
        queries: &[&[f32]],
        k: Rows<'_>,
        j0: usize,
        nb: usize,
        scores: &mut [[f32; B]],
    ) {
        let d = queries[0].len();
        for c0 in (0..nb).step_by(4) {
            let keys = 4.min(nb - c0);
            if c0 % 16 == 0 {
                prefetch_rows(k, j0 + c0 + PREFETCH_KEYS, 16, d);
            }
            // In a short last step the missing keys repeat its last one (not stored).
            let key_rows: [usize; 4] = std::array::from_fn(|kk| (j0 + c0 + kk.min(keys - 1)) * k.stride);
            let mut acc = [_mm512_setzero_ps(); 16];
            for e in (0..d).step_by(16) {
                // SAFETY: each key row j0 + c0 + kk < j0 + nb has d values in k.data, and each
                // query has d values; e + 16 <= d.
                let kv: [__m512; 4] = std::array::from_fn(|kk| unsafe { _mm512_loadu_ps(k.data.as_ptr().add(key_rows[kk] + e)) });
                for r in 0..R {
                    let qv = unsafe { _mm512_loadu_ps(queries[r].as_ptr().add(e)) };
                    for kk in 0..4 {
                        acc[4 * r + kk] = _mm512_fmadd_ps(qv, kv[kk], acc[4 * r + kk]);
                    }
                }
            }
            let mut sums = [0f32; 16];
            // SAFETY: sums holds 16 values.
            unsafe { _mm512_storeu_ps(sums.as_mut_ptr(), lane_sums(&acc)) };
            for (r, s) in scores.iter_mut().enumerate().take(R) {
                s[c0..c0 + keys].copy_from_slice(&sums[4 * r..4 * r + keys]);
            }
        }
    }

    /// See [`super::block_scores`]; the caller checked the bounds.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores<const B: usize>(queries: &[&[f32]], k: Rows<'_>, j0: usize, nb: usize, scores: &mut [[f32; B]]) {
        let d = queries[0].len();
        for c0 in (0..nb).step_by(16) {
            let keys = 16.min(nb - c0);
            prefetch_rows(k, j0 + c0 + PREFETCH_KEYS, 16, d);
            for (q, s) in queries.iter().zip(scores.iter_mut()) {
                let mut acc = [_mm512_setzero_ps(); 16];
                for e in (0..d).step_by(16) {
                    // SAFETY: e + 16 <= d, the query's length.
                    let qv = unsafe { _mm512_loadu_ps(q.as_ptr().add(e)) };
                    // Always sixteen keys, so the accumulators stay in registers; in a short last
                    // chunk the lanes past it repeat its last key and are not stored.
                    for (kk, a) in acc.iter_mut().enumerate() {
                        let key = j0 + c0 + kk.min(keys - 1);
                        // SAFETY: key < j0 + nb, whose d values lie in k.data.
                        let kv = unsafe { _mm512_loadu_ps(k.data.as_ptr().add(key * k.stride + e)) };
                        *a = _mm512_fmadd_ps(qv, kv, *a);
                    }
                }
                let sums = lane_sums(&acc);
                if keys == 16 {
                    // SAFETY: c0 + 16 <= nb <= B.
                    unsafe { _mm512_storeu_ps(s.as_mut_ptr().add(c0), sums) };
                } else {
                    let mut tmp = [0f32; 16];
                    // SAFETY: tmp holds 16 values.
                    unsafe { _mm512_storeu_ps(tmp.as_mut_ptr(), sums) };
                    s[c0..c0 + keys].copy_from_slice(&tmp[..keys]);
                }
            }
        }
    }

    /// [`super::block_values`] for `R` rows none of whose weights is zero, 64 output columns
    /// at a time: each value row's four vectors are loaded once for all `R` rows (`4 R`
    /// accumulators in registers), half the loads of a row at a time and one pass over the block
    /// per 64 columns instead of one per row. The caller checked the bounds; `dv` is 64 or 128.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn shared_values<const R: usize, const B: usize>(
        p: &[[f32; B]],
        v: Rows<'_>,
        j0: usize,
        nb: usize,
        dv: usize,
        y: &mut [f32],
    ) {
        for c0 in (0..dv).step_by(64) {
            // SAFETY: row r's columns c0..c0 + 64 lie in y (R rows of dv).
            let mut acc: [[__m512; 4]; R] =
                std::array::from_fn(|r| std::array::from_fn(|i| unsafe { _mm512_loadu_ps(y.as_ptr().add(r * dv + c0 + 16 * i)) }));
            for jj in 0..nb {
                if c0 == 0 {
                    prefetch_rows(v, j0 + jj + PREFETCH_KEYS, 1, dv);
                }
                let row = (j0 + jj) * v.stride + c0;
                // SAFETY: value row j0 + jj < j0 + nb, whose dv values lie in v.data.
                let vv: [__m512; 4] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(v.data.as_ptr().add(row + 16 * i)) });
                for (a, pr) in acc.iter_mut().zip(p) {
                    let w = _mm512_set1_ps(pr[jj]);
                    for (x, &vi) in a.iter_mut().zip(&vv) {
                        *x = _mm512_fmadd_ps(w, vi, *x);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                for (i, x) in a.iter().enumerate() {
                    // SAFETY: as above.
                    unsafe { _mm512_storeu_ps(y.as_mut_ptr().add(r * dv + c0 + 16 * i), *x) };
                }
            }
        }
    }

    /// See [`super::block_values`] for `dv = 16 C`; the caller checked the bounds.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn values<const C: usize, const B: usize>(p: &[[f32; B]], v: Rows<'_>, j0: usize, nb: usize, y: &mut [f32]) {
        let dv = 16 * C;
        for (r, (yr, pr)) in y.chunks_exact_mut(dv).zip(p).enumerate() {
            // SAFETY: yr holds dv = 16 C values.
            let mut acc: [__m512; C] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(yr.as_ptr().add(16 * i)) });
            for (jj, &w) in pr[..nb].iter().enumerate() {
                if r == 0 {
                    // The first row streams the block from memory; the others find it in L2.
                    prefetch_rows(v, j0 + jj + PREFETCH_KEYS, 1, dv);
                }
                if w == 0.0 {
                    continue;
                }
                let wv = _mm512_set1_ps(w);
                let row = (j0 + jj) * v.stride;
                for (i, a) in acc.iter_mut().enumerate() {
                    // SAFETY: value row j0 + jj < j0 + nb, whose dv values lie in v.data.
                    *a = _mm512_fmadd_ps(wv, unsafe { _mm512_loadu_ps(v.data.as_ptr().add(row + 16 * i)) }, *a);
                }
            }
            for (i, a) in acc.iter().enumerate() {
                // SAFETY: as above.
                unsafe { _mm512_storeu_ps(yr.as_mut_ptr().add(16 * i), *a) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpx_test_support::Rng;

    /// Against an f64 reference, on random rows: every key count of a block (tails of 16) and
    /// strided rows; where AVX-512 is absent the functions decline and the test says so.
    #[test]
    fn block_products_match_f64() {
        let (d, stride, keys) = (128, 160, 40);
        let mut rng = Rng::new(31);
        let kv = rng.normals(keys * stride);
        let qs: Vec<Vec<f32>> = (0..8).map(|_| rng.normals(d)).collect();
        // Row counts that take every split: four rows sharing loads, three, the one or two left.
        for rows in [1, 2, 3, 4, 5, 6, 7, 8] {
            let queries: Vec<&[f32]> = qs[..rows].iter().map(|q| q.as_slice()).collect();
            for (j0, nb) in [(0, 40), (3, 16), (5, 17), (0, 1), (7, 33), (2, 6)] {
                let mut scores = [[f32::NAN; 40]; 8];
                if !block_scores(&queries, Rows { data: &kv, stride }, j0, nb, &mut scores) {
                    // The AVX-512 blocks run on AVX-512 VNNI hosts, which FPX_REQUIRE=vnni demands.
                    fpx_test_support::skip(fpx_test_support::Requirement::Vnni, "block_products_match_f64", "this CPU lacks AVX-512");
                    return;
                }
                for (r, s) in scores.iter().enumerate() {
                    if r >= rows {
                        assert!(s.iter().all(|x| x.is_nan()), "{rows} rows: wrote row {r}");
                        continue;
                    }
                    for jj in 0..nb {
                        let want: f64 = queries[r].iter().zip(&kv[(j0 + jj) * stride..]).map(|(&a, &b)| a as f64 * b as f64).sum();
                        assert!((s[jj] as f64 - want).abs() < 1e-4, "{rows} rows: score [{r}][{jj}] of block at {j0}: {} vs {want}", s[jj]);
                    }
                    assert!(s[nb..].iter().all(|x| x.is_nan()), "{rows} rows: wrote past the block");
                }
                for dv in [64, 128] {
                    // Every key live (the rows share value loads), then every fifth key masked
                    // (weight 0): its value row holds NaN, which must be skipped, not
                    // multiplied by 0.
                    for masked in [false, true] {
                        let mut p = [[0f32; 40]; 8];
                        let mut vals = kv.clone();
                        for jj in 0..nb {
                            if masked && (j0 + jj) % 5 == 0 {
                                vals[(j0 + jj) * stride + 1] = f32::NAN;
                            } else {
                                p[..rows].iter_mut().for_each(|row| row[jj] = rng.normals(1)[0]);
                            }
                        }
                        let y0 = rng.normals(rows * dv);
                        let mut y = y0.clone();
                        assert!(block_values(&p, Rows { data: &vals, stride }, j0, nb, dv, &mut y));
                        for r in 0..rows {
                            for e in 0..dv {
                                let want = y0[r * dv + e] as f64
                                    + (0..nb)
                                        .filter(|&jj| p[r][jj] != 0.0)
                                        .map(|jj| p[r][jj] as f64 * vals[(j0 + jj) * stride + e] as f64)
                                        .sum::<f64>();
                                let got = y[r * dv + e] as f64;
                                assert!(
                                    (got - want).abs() < 1e-4,
                                    "{rows} rows, masked {masked}: y[{r}][{e}] of block at {j0} (dv {dv}): {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
        // Shapes it does not take are declined, not computed.
        let odd: Vec<&[f32]> = vec![&qs[0][..100]];
        assert!(!block_scores(&odd, Rows { data: &kv, stride }, 0, 4, &mut [[0f32; 40]; 1]));
        assert!(!block_values(&[[0f32; 40]; 1], Rows { data: &kv, stride }, 0, 4, 96, &mut [0f32; 96]));
    }
}
