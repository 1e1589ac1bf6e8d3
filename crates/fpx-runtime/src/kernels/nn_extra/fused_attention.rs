//! `fpx:Attention` (schema in `fpx_ir::ops::fused_attention`): the attention subgraphs that
//! `fpx_passes::FuseAttention` replaces, in one pass over the keys.
//!
//! The query rows that share a key/value head (one head's queries, or a GQA group's) are cut
//! into tasks of up to [`ROWS`] rows, run across the pool. A task visits the keys in blocks of
//! [`KEY_BLOCK`], loading each key and value row once for all its rows: the block's scores
//! (scale·q·k plus the mask) go into a buffer of one block per row, and a streaming ("online")
//! softmax keeps each row's running maximum, the sum of the weights and the weighted sum of
//! values, rescaling them when the maximum grows. So no
//! score tensor over all keys is ever made; everything is computed in f32 (f16 and bf16 inputs
//! are widened once and Y rounded once).

use super::attention_blocks::{block_scores, block_values, Rows};
use super::attention_tiles::{self, Task};
use super::tensor;
use crate::kernels::fast::{exp_f32, multiversion, MulAdd};
use crate::kernels::{alloc, arg, f32_slice, opt_arg};
use crate::{kbail, KernelError};
use fpx_ir::{Node, Tensor};
use rayon::prelude::*;
use std::borrow::Cow;

/// Keys per block of the streaming softmax.
const KEY_BLOCK: usize = 128;
/// Query rows one task computes (sharing each key and value row it loads).
const ROWS: usize = 8;
/// The most keys the whole-row path takes (see [`Problem::whole_rows`]); longer contexts stream.
const WHOLE_ROW_KEYS: usize = 1024;
/// The fewest queries per head for which the whole-row path pays (decode steps stream).
const WHOLE_ROW_QUERIES: usize = 4;
/// Score elements (rows × keys) one whole-row task holds at most: 64 KiB, L2-resident.
const WHOLE_ROW_SCORES: usize = 1 << 14;

/// A tensor's values as f32 in standard layout: borrowed for a standard float tensor, else
/// copied (float16 and bfloat16 widened) within the budget.
fn f32_values<'a>(t: &'a Tensor, what: &str) -> Result<Cow<'a, [f32]>, KernelError> {
    if let Some(s) = f32_slice(t) {
        return Ok(Cow::Borrowed(s));
    }
    Ok(Cow::Owned(match t {
        Tensor::F32(a) => alloc::collect(t.shape(), a.iter().copied())?,
        Tensor::F16(a) => alloc::collect(t.shape(), a.iter().map(|x| x.to_f32()))?,
        Tensor::BF16(a) => alloc::collect(t.shape(), a.iter().map(|x| x.to_f32()))?,
        other => kbail!("{what} is {}; fpx:Attention takes float, float16 or bfloat16", other.dtype()),
    }))
}

/// A 4-D tensor's values as f32 with its batch, head and row strides (in elements; a row is the
/// innermost axis, contiguous). `bshd`: the tensor is `[B, S, H, D]` rather than `[B, H, S, D]`.
/// Borrowed for a float tensor whose rows are contiguous — standard layout, or a KV cache with
/// spare room (`fpx:KvAppend`'s layout) read where it lies; `packed_heads` also asks that each
/// head's rows follow one another with no gap (what the transposed-K path reads). Otherwise
/// copied to standard layout (float16 and bfloat16 widened), within the budget.
fn f32_heads<'a>(t: &'a Tensor, what: &str, bshd: bool, packed_heads: bool) -> Result<(Cow<'a, [f32]>, [usize; 3]), KernelError> {
    let s = t.shape();
    // Physical strides of a standard layout, then in (batch, head, row) order.
    let logical = |st: [usize; 3]| if bshd { [st[0], st[2], st[1]] } else { st };
    let standard = logical([s[1] * s[2] * s[3], s[2] * s[3], s[3]]);
    if let Some(v) = f32_slice(t) {
        // A standard `[B, H, S, D]` layout packs each head's rows (`bshd` never comes with
        // `packed_heads`: the kernel refuses a transposed K in that layout).
        return Ok((Cow::Borrowed(v), standard));
    }
    if let (Tensor::F32(a), false) = (t, s.contains(&0)) {
        let st = a.strides();
        let rows_contiguous = st[3] == 1 && st.iter().all(|&x| x >= 0);
        let heads_packed = !bshd && usize::try_from(st[2]) == Ok(s[3]);
        if rows_contiguous && (heads_packed || !packed_heads) {
            let span = 1 + s.iter().zip(st).map(|(&n, &x)| (n - 1) * x as usize).sum::<usize>();
            // SAFETY: every stride is non-negative, so the first element is at `as_ptr()` and the
            // last at `span - 1` elements after it; both lie in the array's one initialized buffer
            // (an `ArrayD<f32>` owns a `Vec<f32>`), and so does everything between them. The slice
            // lives as long as the borrow of `t`.
            let span = unsafe { std::slice::from_raw_parts(a.as_ptr(), span) };
            return Ok((Cow::Borrowed(span), logical([st[0] as usize, st[1] as usize, st[2] as usize])));
        }
    }
    Ok((f32_values(t, what)?, standard))
}

/// The mask as additive f32 values with strides over `[B, Hq, Sq, Skv]` (0 on broadcast axes).
struct Mask<'a> {
    values: Cow<'a, [f32]>,
    strides: [usize; 4],
}

impl<'a> Mask<'a> {
    fn new(t: &'a Tensor, target: [usize; 4]) -> Result<Self, KernelError> {
        let s = t.shape();
        if s.len() > 4 {
            kbail!("the mask of shape {s:?} must have rank 4 or less");
        }
        let mut dims = [1usize; 4];
        dims[4 - s.len()..].copy_from_slice(s);
        if (0..4).any(|k| dims[k] != 1 && dims[k] != target[k]) {
            kbail!("the mask of shape {s:?} does not broadcast to the scores {target:?}");
        }
        let dense = [dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1];
        let strides = [0, 1, 2, 3].map(|k| if dims[k] == 1 { 0 } else { dense[k] });
        let values = match t {
            Tensor::Bool(a) => Cow::Owned(alloc::collect(s, a.iter().map(|&keep| if keep { 0.0 } else { f32::NEG_INFINITY }))?),
            t => f32_values(t, "the mask")?,
        };
        Ok(Mask { values, strides })
    }
}

/// Everything one (batch, query head) task reads.
struct Problem<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    /// Batch, head and row strides of Q, K and V (rows contiguous; with `k_transposed`, each
    /// head of K a contiguous `[D, Skv]` block).
    strides: [[usize; 3]; 3],
    mask: Option<Mask<'a>>,
    /// (query heads, key/value heads, queries, keys, head size, value head size).
    dims: (usize, usize, usize, usize, usize, usize),
    k_transposed: bool,
    scale: f32,
    zero_masked_rows: bool,
}

/// `a·b` with sixteen partial sums (one AVX-512 vector; f32 throughout).
#[inline(always)]
fn dot<M: MulAdd>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] = M::fma(x[l], y[l], acc[l]);
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

multiversion! {
    /// The whole-row path for the query rows `[i0, i0 + n)` of head `h` of batch `b`, compiled
    /// for the host's vector width (see [`Problem::whole_rows`]).
    fn attend_whole_rows<M>(p: &Problem<'_>, b: usize, h: usize, i0: usize, n: usize, scores: &mut Vec<f32>, y: YRows) {
        p.whole_rows::<M>(b, h, i0, n, scores, y)
    }
}

/// Whether `sq` queries per head over `skv` keys take the whole-row path
/// ([`Problem::takes_whole_rows`]).
fn whole_rows_for(sq: usize, skv: usize) -> bool {
    sq >= WHOLE_ROW_QUERIES && (1..=WHOLE_ROW_KEYS).contains(&skv)
}

/// Where one task's Y rows go: the first row's element and the row stride (the rows of a head
/// are evenly spaced in both of Y's layouts).
#[derive(Clone, Copy)]
struct YRows {
    first: *mut f32,
    stride: usize,
}

/// Lane-parallel maximum of `s` (a multiple of 16 values; NaN-free), reduced as a tree.
#[inline(always)]
fn max_of(s: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 16];
    for c in s.chunks_exact(16) {
        for l in 0..16 {
            m[l] = if c[l] > m[l] { c[l] } else { m[l] };
        }
    }
    let max = |a: f32, b: f32| if b > a { b } else { a };
    let m8: [f32; 8] = std::array::from_fn(|l| max(m[l], m[l + 8]));
    let m4: [f32; 4] = std::array::from_fn(|l| max(m8[l], m8[l + 4]));
    max(max(m4[0], m4[2]), max(m4[1], m4[3]))
}

/// The sum of sixteen lanes, as a tree.
#[inline(always)]
fn lane_sum(a: [f32; 16]) -> f32 {
    let a8: [f32; 8] = std::array::from_fn(|l| a[l] + a[l + 8]);
    let a4: [f32; 4] = std::array::from_fn(|l| a8[l] + a8[l + 4]);
    (a4[0] + a4[2]) + (a4[1] + a4[3])
}

/// `s[j] = e^(s[j] - max)` for every `j` (a multiple of 16 values), returning their sum
/// (sixteen partial sums).
#[inline(always)]
fn exp_sum<M: MulAdd>(s: &mut [f32], max: f32) -> f32 {
    let mut acc = [0f32; 16];
    for c in s.chunks_exact_mut(16) {
        for l in 0..16 {
            c[l] = exp_f32::<M>(c[l] - max);
            acc[l] += c[l];
        }
    }
    lane_sum(acc)
}

multiversion! {
    /// Y of the query rows `[r0, r0 + y.len() / Dv)` of key/value head `g` of batch `b`,
    /// compiled for the host's vector width.
    fn attend_rows<M>(p: &Problem<'_>, b: usize, g: usize, r0: usize, y: &mut [f32]) {
        p.rows::<M>(b, g, r0, y)
    }
}

impl Problem<'_> {
    /// The query heads that share one key/value head.
    fn group(&self) -> usize {
        self.dims.0 / self.dims.1
    }

    /// Whether the whole-row path runs: several queries per head (prefill, encoders) over at
    /// most [`WHOLE_ROW_KEYS`] keys. Decode steps and long contexts stream instead.
    fn takes_whole_rows(&self) -> bool {
        let (_, _, sq, skv, _, _) = self.dims;
        whole_rows_for(sq, skv)
    }

    /// Query rows per whole-row task: as many as keep its scores within [`WHOLE_ROW_SCORES`].
    fn whole_row_chunk(&self) -> usize {
        let (_, _, sq, skv, _, _) = self.dims;
        (WHOLE_ROW_SCORES / skv.max(1)).clamp(1, sq.max(1))
    }

    /// Y of the query rows `[i0, i0 + n)` of query head `h` of batch `b` written at `y`, with
    /// each row's scores over all keys at once. Where the host has AVX-512, the register-tiled
    /// path of [`attention_tiles`] runs (skipping each row's dead keys); otherwise, and for
    /// what it declines, `S = scale · Q Kᵀ` into `scores` (`n` rows padded to whole vectors),
    /// the mask added, each row's softmax in place, then `Y = P V`, both products by
    /// `matrixmultiply`'s GEMM. For short key counts (encoders, prefill) this is GEMM work
    /// instead of one dot product, horizontal sum and scalar softmax step per key.
    #[inline(always)]
    fn whole_rows<M: MulAdd>(&self, b: usize, h: usize, i0: usize, n: usize, scores: &mut Vec<f32>, y: YRows) {
        let (_, _, _, skv, d, dv) = self.dims;
        let g = h / self.group();
        let [qs, ks, vs] = self.strides;
        let q = &self.q[b * qs[0] + h * qs[1] + i0 * qs[2]..];
        let k = &self.k[b * ks[0] + g * ks[1]..];
        let v = &self.v[b * vs[0] + g * vs[1]..];
        let task = Task {
            q: Rows { data: q, stride: qs[2] },
            n,
            d,
            k: Rows { data: k, stride: if self.k_transposed { skv } else { ks[2] } },
            k_transposed: self.k_transposed,
            v: Rows { data: v, stride: vs[2] },
            skv,
            dv,
            mask: self.mask.as_ref().map(|m| {
                (Rows { data: &m.values[b * m.strides[0] + h * m.strides[1] + i0 * m.strides[2]..], stride: m.strides[2] }, m.strides[3])
            }),
            scale: self.scale,
        };
        // SAFETY: Y's n rows at `y` (stride y.stride, dv values) are this task's alone.
        if unsafe { attention_tiles::whole_rows(&task, scores, y.first, y.stride) } {
            return;
        }
        // Kᵀ's (row, column) strides: element (e, j) is key j's e-th value.
        let (k_rs, k_cs) = if self.k_transposed { (skv, 1) } else { (1, ks[2]) };
        // Score rows padded to whole vectors with -inf (weight 0): no scalar tails below.
        let width = skv.next_multiple_of(16);
        scores.clear();
        scores.resize(n * width, f32::NEG_INFINITY);
        // SAFETY: Q's rows i0..i0+n of this head (stride qs[2], d values each), K's skv keys of
        // d values at the strides above and `scores` (n rows of `width` ≥ skv) are in bounds.
        unsafe {
            matrixmultiply::sgemm(
                n,
                d,
                skv,
                self.scale,
                q.as_ptr(),
                qs[2] as isize,
                1,
                k.as_ptr(),
                k_rs as isize,
                k_cs as isize,
                0.0,
                scores.as_mut_ptr(),
                width as isize,
                1,
            );
        }
        let mut masked_rows = Vec::new();
        for (lr, s) in scores.chunks_exact_mut(width).enumerate() {
            if let Some(m) = &self.mask {
                let row = &m.values[b * m.strides[0] + h * m.strides[1] + (i0 + lr) * m.strides[2]..];
                if m.strides[3] == 0 {
                    let add = row[0];
                    s[..skv].iter_mut().for_each(|x| *x += add);
                } else {
                    s[..skv].iter_mut().zip(&row[..skv]).for_each(|(x, &a)| *x += a);
                }
            }
            let max = max_of(s);
            if max == f32::NEG_INFINITY {
                // Every key masked: weight 0 here, the row filled after the product.
                s.iter_mut().for_each(|x| *x = 0.0);
                masked_rows.push(lr);
                continue;
            }
            let inv = 1.0 / exp_sum::<M>(s, max);
            s.iter_mut().for_each(|x| *x *= inv);
        }
        // SAFETY: P is n rows of `width` (skv used); V's skv rows of dv values (stride vs[2]) are
        // in bounds; Y's n rows at `y` (stride y.stride, dv values) are this task's alone and
        // inside Y.
        unsafe {
            matrixmultiply::sgemm(
                n,
                skv,
                dv,
                1.0,
                scores.as_ptr(),
                width as isize,
                1,
                v.as_ptr(),
                vs[2] as isize,
                1,
                0.0,
                y.first,
                y.stride as isize,
                1,
            );
        }
        // As in the streaming path: NaN like the unfused softmax (0/0) unless the exporters'
        // guard zeroes such rows (this path always has keys).
        let fill = if self.zero_masked_rows { 0.0 } else { f32::NAN };
        for lr in masked_rows {
            // SAFETY: row lr of this task's rows, as above.
            unsafe { std::slice::from_raw_parts_mut(y.first.add(lr * y.stride), dv) }.fill(fill);
        }
    }

    /// Y of the query rows `[r0, r0 + n)` (`n = y.len() / Dv`, at most [`ROWS`]) of key/value
    /// head `g` of batch `b`. The rows of a group are its query heads' queries, head-major
    /// (row `r` is query `r % Sq` of head `g · group + r / Sq`), so Y's rows of a group are
    /// one contiguous block. Each key and value row is loaded once for all the task's rows:
    /// query heads sharing a key/value head (GQA) stream the cache once, not once per head.
    #[inline(always)]
    fn rows<M: MulAdd>(&self, b: usize, g: usize, r0: usize, y: &mut [f32]) {
        let (_, _, sq, skv, d, dv) = self.dims;
        let group = self.group();
        let [qs, ks, vs] = self.strides;
        let n = y.len() / dv;
        let k = &self.k[b * ks[0] + g * ks[1]..];
        let v = &self.v[b * vs[0] + g * vs[1]..];
        let head_query = |lr: usize| {
            let r = r0 + lr;
            (g * group + r / sq, r % sq)
        };
        let queries: [&[f32]; ROWS] = std::array::from_fn(|lr| {
            if lr < n {
                let (h, i) = head_query(lr);
                &self.q[b * qs[0] + h * qs[1] + i * qs[2]..][..d]
            } else {
                &[]
            }
        });
        let masks: [Option<(&[f32], usize)>; ROWS] = std::array::from_fn(|lr| {
            let (h, i) = head_query(lr);
            self.mask
                .as_ref()
                .filter(|_| lr < n)
                .map(|m| (&m.values[b * m.strides[0] + h * m.strides[1] + i * m.strides[2]..], m.strides[3]))
        });
        let mut scores = [[0f32; KEY_BLOCK]; ROWS];
        let (mut max, mut sum) = ([f32::NEG_INFINITY; ROWS], [0f32; ROWS]);
        for j0 in (0..skv).step_by(KEY_BLOCK) {
            let nb = KEY_BLOCK.min(skv - j0);
            // Scores, key-major: each key row is read once for every query row.
            if self.k_transposed {
                for (lr, q) in queries[..n].iter().enumerate() {
                    let s = &mut scores[lr][..nb];
                    s.iter_mut().for_each(|x| *x = 0.0);
                    for (e, &qe) in q.iter().enumerate() {
                        s.iter_mut().zip(&k[e * skv + j0..]).for_each(|(x, &ke)| *x = M::fma(qe, ke, *x));
                    }
                }
            } else if !block_scores(&queries[..n], Rows { data: k, stride: ks[2] }, j0, nb, &mut scores) {
                for jj in 0..nb {
                    let kj = &k[(j0 + jj) * ks[2]..][..d];
                    for (lr, q) in queries[..n].iter().enumerate() {
                        scores[lr][jj] = dot::<M>(q, kj);
                    }
                }
            }
            // Per row: scale, mask, and the streaming softmax's weights for the block.
            for lr in 0..n {
                let s = &mut scores[lr][..nb];
                s.iter_mut().for_each(|x| *x *= self.scale);
                if let Some((row, stride)) = masks[lr] {
                    s.iter_mut().enumerate().for_each(|(jj, x)| *x += row[(j0 + jj) * stride]);
                }
                let block_max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if block_max == f32::NEG_INFINITY {
                    // Every key of the block is masked: weight 0 (skipped below).
                    s.iter_mut().for_each(|x| *x = 0.0);
                    continue;
                }
                if block_max > max[lr] {
                    // Rescale what was summed under the old maximum (0 when there was none).
                    let alpha = exp_f32::<M>(max[lr] - block_max);
                    sum[lr] *= alpha;
                    y[lr * dv..][..dv].iter_mut().for_each(|a| *a *= alpha);
                    max[lr] = block_max;
                }
                let m = max[lr];
                s.iter_mut().for_each(|x| *x = exp_f32::<M>(*x - m));
                sum[lr] += s.iter().sum::<f32>();
            }
            // Values: each row's outputs kept in registers over the block (AVX-512), else
            // key-major, each value row read once for every query row.
            if block_values(&scores, Rows { data: v, stride: vs[2] }, j0, nb, dv, y) {
                continue;
            }
            for jj in 0..nb {
                let vj = &v[(j0 + jj) * vs[2]..][..dv];
                for (lr, yr) in y.chunks_exact_mut(dv).enumerate() {
                    let p = scores[lr][jj];
                    if p != 0.0 {
                        yr.iter_mut().zip(vj).for_each(|(a, &ve)| *a = M::fma(p, ve, *a));
                    }
                }
            }
        }
        for (lr, yr) in y.chunks_exact_mut(dv).enumerate() {
            if max[lr] == f32::NEG_INFINITY {
                // Every score is -inf: the unfused softmax gives NaN (0/0), which the exporters'
                // NaN guard (when present) turns into 0; with no keys the product is 0.
                let fill = if self.zero_masked_rows || skv == 0 { 0.0 } else { f32::NAN };
                yr.iter_mut().for_each(|a| *a = fill);
            } else {
                let inv = 1.0 / sum[lr];
                yr.iter_mut().for_each(|a| *a *= inv);
            }
        }
    }
}

/// `fpx:Attention(Q, K, V, mask?)`.
pub(super) fn fused_attention(n: &Node, i: &[Option<&Tensor>]) -> Result<Vec<Tensor>, KernelError> {
    let (q, k, v) = (arg(i, 0)?, arg(i, 1)?, arg(i, 2)?);
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        kbail!("Q, K and V must have one element type, found {}, {} and {}", q.dtype(), k.dtype(), v.dtype());
    }
    let (&[b, q1, q2, d], &[kb, k1, k2, k3], &[vb, v1, v2, dv]) = (q.shape(), k.shape(), v.shape()) else {
        kbail!("Q, K and V must be 4-D, found {:?}, {:?} and {:?}", q.shape(), k.shape(), v.shape());
    };
    let k_transposed = n.attr_i("k_transposed", 0) != 0;
    let (bshd_in, bshd_out) = (n.attr_i("bshd_inputs", 0) != 0, n.attr_i("bshd_output", 0) != 0);
    if bshd_in && k_transposed {
        kbail!("'bshd_inputs' takes K as [B, Skv, Hkv, D]: it cannot be combined with 'k_transposed'");
    }
    // (heads, rows) of Q and V, and K's second and third axes, in [B, H, S, D] terms.
    let ((hq, sq), (vh, skv), (hkv, k2, k3)) =
        if bshd_in { ((q2, q1), (v2, v1), (k2, k1, k3)) } else { ((q1, q2), (v1, v2), (k1, k2, k3)) };
    let (kd, ks) = if k_transposed { (k2, k3) } else { (k3, k2) };
    if kb != b || vb != b || vh != hkv || ks != skv || kd != d {
        let k_layout = match (k_transposed, bshd_in) {
            (true, _) => "[B, Hkv, D, Skv]",
            (false, true) => "[B, Skv, Hkv, D]",
            (false, false) => "[B, Hkv, Skv, D]",
        };
        kbail!("Q {:?}, K {:?} ({k_layout}) and V {:?} disagree on batch, heads, keys or head size", q.shape(), k.shape(), v.shape());
    }
    if hkv == 0 || hq % hkv != 0 {
        kbail!("{hq} query heads do not group over {hkv} key/value heads");
    }
    let scale = match n.attrs.contains_key("scale") {
        true => n.attr_f("scale", 1.0),
        false => 1.0 / (d as f32).sqrt(),
    };
    let mask = opt_arg(i, 3).map(|m| Mask::new(m, [b, hq, sq, skv])).transpose()?;
    let ((qv, qs), (kv, ks), (vv, vs)) =
        (f32_heads(q, "Q", bshd_in, false)?, f32_heads(k, "K", bshd_in, k_transposed)?, f32_heads(v, "V", bshd_in, false)?);
    let problem = Problem {
        q: &qv,
        k: &kv,
        v: &vv,
        strides: [qs, ks, vs],
        mask,
        dims: (hq, hkv, sq, skv, d, dv),
        k_transposed,
        scale,
        zero_masked_rows: n.attr_i("zero_masked_rows", 0) != 0,
    };
    let shape = if bshd_out { [b, sq, hq, dv] } else { [b, hq, sq, dv] };
    // The whole-row path writes every element; the streaming one accumulates into zeros.
    let mut y = if problem.takes_whole_rows() { alloc::overwritten_f32(&shape)? } else { alloc::filled::<f32>(&shape, 0.0)? };
    // Empty outputs can come with huge batch or head counts: nothing to compute then.
    if !y.is_empty() && problem.takes_whole_rows() {
        // Tasks of up to `chunk` query rows of one (batch, query head), written in place.
        let (chunk, out) = (problem.whole_row_chunk(), SharedOut(y.as_mut_ptr()));
        let chunks = sq.div_ceil(chunk);
        (0..b * hq * chunks).into_par_iter().for_each(|t| {
            let (bh, c) = (t / chunks, t % chunks);
            let (bi, h, i0) = (bh / hq, bh % hq, c * chunk);
            let (at, stride) = if bshd_out { ((bi * sq + i0) * hq + h, hq) } else { (bh * sq + i0, 1) };
            let rows = YRows { first: out.at(at * dv), stride: stride * dv };
            WHOLE_ROW_SCRATCH.with_borrow_mut(|scores| attend_whole_rows(&problem, bi, h, i0, chunk.min(sq - i0), scores, rows));
        });
    } else if !y.is_empty() {
        // Tasks of at most ROWS rows of one (batch, key/value head): its query heads' rows.
        let group_rows = problem.group() * sq;
        if bshd_out {
            // A task's rows are strided in Y ([B, Sq, Hq, Dv]): computed in a buffer of their
            // own, then written to their places, which no other task writes.
            let out = SharedOut(y.as_mut_ptr());
            let tasks = group_rows.div_ceil(ROWS);
            (0..b * hkv * tasks).into_par_iter().for_each(|t| {
                let (bg, c) = (t / tasks, t % tasks);
                let rows = ROWS.min(group_rows - c * ROWS);
                let mut buf = vec![0f32; rows * dv];
                attend_rows(&problem, bg / hkv, bg % hkv, c * ROWS, &mut buf);
                for (lr, row) in buf.chunks_exact(dv).enumerate() {
                    let r = c * ROWS + lr;
                    let (h, i) = ((bg % hkv) * problem.group() + r / sq, r % sq);
                    let at = ((bg / hkv * sq + i) * hq + h) * dv;
                    // SAFETY: (batch, head, query) → `at` is one-to-one and `at + dv` is within Y
                    // (`[b, sq, hq, dv]`, allocated above and alive until the loop ends); each
                    // (batch, head, query) row belongs to exactly one task, so no two writes overlap.
                    unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), out.at(at), dv) };
                }
            });
        } else {
            y.par_chunks_mut(group_rows * dv).enumerate().for_each(|(bg, yg)| {
                yg.par_chunks_mut(ROWS * dv).enumerate().for_each(|(c, yc)| attend_rows(&problem, bg / hkv, bg % hkv, c * ROWS, yc))
            });
        }
    }
    Ok(vec![tensor::<f32>(q.dtype(), &shape, y)?])
}

thread_local! {
    /// Each worker's scores buffer for the whole-row path (kept between calls).
    static WHOLE_ROW_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Y's buffer, written by the tasks at disjoint rows.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: only used to write disjoint rows of a buffer that outlives the parallel loop.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The element `at` of the buffer.
    fn at(self, at: usize) -> *mut f32 {
        self.0.wrapping_add(at)
    }
}

#[cfg(test)]
mod strided_tests {
    use super::fused_attention;
    use fpx_ir::ndarray::{s, ArrayD, IxDyn};
    use fpx_ir::ops::{fused_attention as op, FPX_DOMAIN};
    use fpx_ir::{Node, Tensor};
    use fpx_test_support::Rng;

    /// A `[b, h, len, d]` view, as a KV cache with room for `cap` positions holds it.
    fn in_room(rng: &mut Rng, (b, h, len, d): (usize, usize, usize, usize), cap: usize) -> Tensor {
        let mut room = ArrayD::from_shape_vec(IxDyn(&[b, h, cap, d]), rng.normals(b * h * cap * d)).unwrap();
        room.slice_collapse(s![.., .., ..len, ..]);
        Tensor::from(room)
    }

    #[test]
    fn caches_with_spare_room_are_read_in_place_and_give_the_standard_result() {
        let mut rng = Rng::new(9);
        let mut node = Node::new("attention", op::OP_TYPE, 1, vec![], vec![]);
        node.domain = FPX_DOMAIN.into();
        // 3 queries stream over key blocks, 6 take the whole-row path.
        assert!(!super::whole_rows_for(3, 37) && super::whole_rows_for(6, 37));
        for sq in [3, 6] {
            node.attrs.remove("k_transposed");
            let (b, hq, hkv, skv, d) = (2, 8, 2, 37, 16);
            let q = Tensor::from(ArrayD::from_shape_vec(IxDyn(&[b, hq, sq, d]), rng.normals(b * hq * sq * d)).unwrap());
            let (k, v) = (in_room(&mut rng, (b, hkv, skv, d), 64), in_room(&mut rng, (b, hkv, skv, d), 50));
            assert!(!k.as_f32().unwrap().is_standard_layout());
            let standard = |t: &Tensor| Tensor::from(t.as_f32().unwrap().as_standard_layout().into_owned());
            let strided = fused_attention(&node, &[Some(&q), Some(&k), Some(&v)]).unwrap();
            let copied = fused_attention(&node, &[Some(&q), Some(&standard(&k)), Some(&standard(&v))]).unwrap();
            assert_eq!(strided[0].to_f64_vec(), copied[0].to_f64_vec());
            // A layout whose heads are not contiguous blocks (a transposed view) is copied first.
            let kt = Tensor::from(standard(&k).as_f32().unwrap().clone().permuted_axes(IxDyn(&[0, 1, 3, 2])));
            node.attrs.insert("k_transposed".into(), fpx_ir::Attribute::Int(1));
            let transposed = fused_attention(&node, &[Some(&q), Some(&kt), Some(&v)]).unwrap();
            let diff = transposed[0].to_f64_vec().iter().zip(copied[0].to_f64_vec()).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff < 1e-5, "{sq} queries: {diff}");
        }
    }
}
