//! Row kernels over the last axis: LayerNormalization, Softmax and row sums (trailing-axes
//! ReduceSum / ReduceMean), with f64 statistics.

use rayon::prelude::*;

use super::math::{exp_f32, map};
use super::simd::multiversion;
use super::{for_row_chunks, parallel, PAR_CHUNK};

/// Sum in f64 over 8 independent lanes (vectorizes; also more accurate than one running sum).
#[inline(always)]
fn sum_f64(x: &[f32]) -> f64 {
    lanes_sum_f64(x, |v| v)
}

/// Sum of squared deviations from `mean`, in f64 over 8 lanes.
#[inline(always)]
fn sq_dev_f64(x: &[f32], mean: f64) -> f64 {
    lanes_sum_f64(x, |v| (v - mean) * (v - mean))
}

/// Sum of `f(x as f64)` in 8 f64 lanes (vectorizable), then the lanes and the tail.
#[inline(always)]
fn lanes_sum_f64(x: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            acc[k] += f(c[k] as f64);
        }
    }
    let tail: f64 = it.remainder().iter().map(|&v| f(v as f64)).sum();
    acc.iter().sum::<f64>() + tail
}

/// Maximum over 8 lanes (NaN is skipped, as `f64::max` does).
#[inline(always)]
fn max_f32(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            acc[k] = if c[k] > acc[k] { c[k] } else { acc[k] };
        }
    }
    let m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    it.remainder().iter().copied().fold(m, f32::max)
}

/// Layer normalization of rows of `inner` elements: statistics in f64, the output
/// `(x - mean) · inv_std · scale + bias` computed in f64 and rounded once.
pub(crate) struct LayerNormRows<'a> {
    pub(crate) inner: usize,
    pub(crate) eps: f64,
    pub(crate) scale: &'a [f64],
    pub(crate) bias: &'a [f64],
    /// Whether rows are centered (LayerNormalization); without, the mean is taken as 0, the
    /// statistic is the mean square (RMSNormalization).
    pub(crate) center: bool,
}

multiversion! {
    fn layer_norm_chunk<M>(p: &LayerNormRows<'_>, src: Option<&[f32]>, out: &mut [f32], means: &mut [f64], invs: &mut [f64]) {
        let n = p.inner;
        for (r, o) in out.chunks_exact_mut(n).enumerate() {
            let row: &[f32] = match src {
                Some(s) => &s[r * n..(r + 1) * n],
                None => o,
            };
            let mean = if p.center { sum_f64(row) / n as f64 } else { 0.0 };
            let var = sq_dev_f64(row, mean) / n as f64;
            let inv = 1.0 / (var + p.eps).sqrt();
            match src {
                Some(s) => {
                    let row = &s[r * n..(r + 1) * n];
                    for (((y, &x), &g), &b) in o.iter_mut().zip(row).zip(p.scale).zip(p.bias) {
                        *y = ((x as f64 - mean) * inv * g + b) as f32;
                    }
                }
                None => {
                    for ((y, &g), &b) in o.iter_mut().zip(p.scale).zip(p.bias) {
                        *y = ((*y as f64 - mean) * inv * g + b) as f32;
                    }
                }
            }
            means[r] = mean;
            invs[r] = inv;
        }
    }
}

/// Normalizes the rows of `out` (read from `src`, or from `out` itself when `None`); writes
/// each row's mean and inverse standard deviation.
pub(crate) fn layer_norm(p: &LayerNormRows<'_>, src: Option<&[f32]>, out: &mut [f32], means: &mut [f64], invs: &mut [f64]) {
    let n = p.inner;
    if n == 0 || out.is_empty() {
        return;
    }
    if parallel(out.len()) {
        let rows = PAR_CHUNK.div_ceil(n);
        out.par_chunks_mut(rows * n).zip(means.par_chunks_mut(rows)).zip(invs.par_chunks_mut(rows)).enumerate().for_each(
            |(i, ((o, m), v))| {
                let s = src.map(|s| &s[i * rows * n..i * rows * n + o.len()]);
                layer_norm_chunk(p, s, o, m, v);
            },
        );
    } else {
        layer_norm_chunk(p, src, out, means, invs);
    }
}

multiversion! {
    fn softmax_chunk<M>(n: usize, src: Option<&[f32]>, out: &mut [f32]) {
        for (r, o) in out.chunks_exact_mut(n).enumerate() {
            let m = match src {
                Some(s) => max_f32(&s[r * n..(r + 1) * n]),
                None => max_f32(o),
            };
            map(src.map(|s| &s[r * n..(r + 1) * n]), o, |x| exp_f32::<M>(x - m));
            let inv = 1.0 / sum_f64(o);
            for y in o.iter_mut() {
                *y = (*y as f64 * inv) as f32;
            }
        }
    }
}

/// Softmax over rows of `n` contiguous elements (read from `src`, or in place when `None`).
pub(crate) fn softmax(n: usize, src: Option<&[f32]>, out: &mut [f32]) {
    if n == 0 || out.is_empty() {
        return;
    }
    for_row_chunks(out, n, |row0, o| softmax_chunk(n, src.map(|s| &s[row0 * n..row0 * n + o.len()]), o));
}

multiversion! {
    fn row_sums_chunk<M>(n: usize, src: &[f32], out: &mut [f64]) {
        for (o, row) in out.iter_mut().zip(src.chunks_exact(n)) {
            *o = sum_f64(row);
        }
    }
}

/// The f64 sum of each row of `n` contiguous elements.
pub(crate) fn row_sums(n: usize, src: &[f32]) -> Vec<f64> {
    let rows = src.len().checked_div(n).unwrap_or(0);
    let mut out = vec![0f64; rows];
    if n == 0 {
        return out;
    }
    if parallel(src.len()) {
        let per = PAR_CHUNK.div_ceil(n);
        out.par_chunks_mut(per).zip(src.par_chunks(per * n)).for_each(|(o, s)| row_sums_chunk(n, s, o));
    } else {
        row_sums_chunk(n, src, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::rand_vec;
    use super::*;

    #[test]
    fn row_kernels_match_f64_references() {
        for (rows, n) in [(3, 5), (7, 384), (40, 1000), (1, 1)] {
            let x = rand_vec(rows * n, (rows * n) as u64, -4.0, 4.0);
            let scale: Vec<f64> = rand_vec(n, 1, 0.5, 1.5).iter().map(|&v| v as f64).collect();
            let bias: Vec<f64> = rand_vec(n, 2, -1.0, 1.0).iter().map(|&v| v as f64).collect();
            let p = LayerNormRows { inner: n, eps: 1e-5, scale: &scale, bias: &bias, center: true };
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| {
                    let (mut out, mut m, mut v) = (vec![0f32; x.len()], vec![0f64; rows], vec![0f64; rows]);
                    layer_norm(&p, Some(&x), &mut out, &mut m, &mut v);
                    let mut inplace = x.clone();
                    let (mut m2, mut v2) = (vec![0f64; rows], vec![0f64; rows]);
                    layer_norm(&p, None, &mut inplace, &mut m2, &mut v2);
                    assert_eq!(out, inplace);
                    assert_eq!((&m, &v), (&m2, &v2));
                    let mut sm = vec![0f32; x.len()];
                    softmax(n, Some(&x), &mut sm);
                    let mut sm2 = x.clone();
                    softmax(n, None, &mut sm2);
                    assert_eq!(sm, sm2);
                    let sums = row_sums(n, &x);
                    for r in 0..rows {
                        let row: Vec<f64> = x[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
                        let mean = row.iter().sum::<f64>() / n as f64;
                        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
                        let inv = 1.0 / (var + 1e-5).sqrt();
                        assert!((m[r] - mean).abs() < 1e-12 && (v[r] - inv).abs() < 1e-12 * inv);
                        assert!((sums[r] - mean * n as f64).abs() < 1e-9 * n as f64);
                        let mx = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let total: f64 = row.iter().map(|v| (v - mx).exp()).sum();
                        for j in 0..n {
                            let want = (row[j] - mean) * inv * scale[j] + bias[j];
                            assert!((out[r * n + j] as f64 - want).abs() < 1e-5, "layer norm ({r}, {j})");
                            let want = (row[j] - mx).exp() / total;
                            assert!((sm[r * n + j] as f64 - want).abs() < 1e-6 * want.max(1e-2), "softmax ({r}, {j})");
                        }
                    }
                });
            }
        }
    }
}
