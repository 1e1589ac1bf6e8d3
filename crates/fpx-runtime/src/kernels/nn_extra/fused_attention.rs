//! `fpx:Attention` (schema in `fpx_ir::ops::fused_attention`): the attention subgraphs that
//! `fpx_passes::FuseAttention` replaces, in one pass over the keys.
//!
//! Each (batch, query head) runs on its own thread of the pool. For each query, the keys are
//! visited in blocks of [`KEY_BLOCK`]: the block's scores (scale·q·k plus the mask) go into a
//! buffer of one block, and a streaming ("online") softmax keeps the running maximum, the sum of
//! the weights and the weighted sum of values, rescaling them when the maximum grows. So no
//! score tensor over all keys is ever made; everything is computed in f32 (f16 and bf16 inputs
//! are widened once and Y rounded once).

use super::tensor;
use crate::kernels::{alloc, arg, f32_slice, opt_arg};
use crate::{kbail, KernelError};
use fpx_ir::{Node, Tensor};
use rayon::prelude::*;
use std::borrow::Cow;

/// Keys per block of the streaming softmax.
const KEY_BLOCK: usize = 128;

/// A tensor's values as f32: borrowed for a float tensor, widened (within the budget) for
/// float16 and bfloat16.
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
    mask: Option<Mask<'a>>,
    /// (query heads, key/value heads, queries, keys, head size, value head size).
    dims: (usize, usize, usize, usize, usize, usize),
    k_transposed: bool,
    scale: f32,
    zero_masked_rows: bool,
}

/// `a·b` with eight partial sums (vectorizes; f32 throughout).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

impl Problem<'_> {
    /// Y (`[Sq, Dv]`) of query head `h` of batch `b`.
    fn head(&self, b: usize, h: usize, y: &mut [f32]) {
        let (hq, hkv, sq, skv, d, dv) = self.dims;
        let kvh = b * hkv + h / (hq / hkv);
        let k = &self.k[kvh * skv * d..][..skv * d];
        let v = &self.v[kvh * skv * dv..][..skv * dv];
        let mut scores = vec![0f32; KEY_BLOCK.min(skv)];
        for (i, yi) in y.chunks_mut(dv).enumerate() {
            let q = &self.q[((b * hq + h) * sq + i) * d..][..d];
            let mask_row = self.mask.as_ref().map(|m| (&m.values[b * m.strides[0] + h * m.strides[1] + i * m.strides[2]..], m.strides[3]));
            let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
            for j0 in (0..skv).step_by(KEY_BLOCK) {
                let s = &mut scores[..KEY_BLOCK.min(skv - j0)];
                if self.k_transposed {
                    s.iter_mut().for_each(|x| *x = 0.0);
                    for (e, &qe) in q.iter().enumerate() {
                        s.iter_mut().zip(&k[e * skv + j0..]).for_each(|(x, &ke)| *x += qe * ke);
                    }
                    s.iter_mut().for_each(|x| *x *= self.scale);
                } else {
                    for (jj, x) in s.iter_mut().enumerate() {
                        *x = self.scale * dot(q, &k[(j0 + jj) * d..][..d]);
                    }
                }
                if let Some((row, stride)) = mask_row {
                    s.iter_mut().enumerate().for_each(|(jj, x)| *x += row[(j0 + jj) * stride]);
                }
                let block_max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if block_max == f32::NEG_INFINITY {
                    continue;
                }
                if block_max > max {
                    // Rescale what was summed under the old maximum (0 when there was none).
                    let alpha = (max - block_max).exp();
                    sum *= alpha;
                    yi.iter_mut().for_each(|a| *a *= alpha);
                    max = block_max;
                }
                for (jj, &x) in s.iter().enumerate() {
                    let p = (x - max).exp();
                    sum += p;
                    yi.iter_mut().zip(&v[(j0 + jj) * dv..][..dv]).for_each(|(a, &ve)| *a += p * ve);
                }
            }
            if max == f32::NEG_INFINITY {
                // Every score is -inf: the unfused softmax gives NaN (0/0), which the exporters'
                // NaN guard (when present) turns into 0; with no keys the product is 0.
                let fill = if self.zero_masked_rows || skv == 0 { 0.0 } else { f32::NAN };
                yi.iter_mut().for_each(|a| *a = fill);
            } else {
                let inv = 1.0 / sum;
                yi.iter_mut().for_each(|a| *a *= inv);
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
    let (&[b, hq, sq, d], &[kb, hkv, k2, k3], &[vb, vh, skv, dv]) = (q.shape(), k.shape(), v.shape()) else {
        kbail!("Q, K and V must be 4-D, found {:?}, {:?} and {:?}", q.shape(), k.shape(), v.shape());
    };
    let k_transposed = n.attr_i("k_transposed", 0) != 0;
    let (kd, ks) = if k_transposed { (k2, k3) } else { (k3, k2) };
    if kb != b || vb != b || vh != hkv || ks != skv || kd != d {
        let k_layout = if k_transposed { "[B, Hkv, D, Skv]" } else { "[B, Hkv, Skv, D]" };
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
    let (qv, kv, vv) = (f32_values(q, "Q")?, f32_values(k, "K")?, f32_values(v, "V")?);
    let problem = Problem {
        q: &qv,
        k: &kv,
        v: &vv,
        mask,
        dims: (hq, hkv, sq, skv, d, dv),
        k_transposed,
        scale,
        zero_masked_rows: n.attr_i("zero_masked_rows", 0) != 0,
    };
    let shape = [b, hq, sq, dv];
    let mut y = alloc::filled::<f32>(&shape, 0.0)?;
    // Empty outputs can come with huge batch or head counts: nothing to compute then.
    if !y.is_empty() {
        y.par_chunks_mut(sq * dv).enumerate().for_each(|(bh, yh)| problem.head(bh / hq, bh % hq, yh));
    }
    Ok(vec![tensor::<f32>(q.dtype(), &shape, y)?])
}
