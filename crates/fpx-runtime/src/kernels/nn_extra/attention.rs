//! Attention (opsets 23 and 24): scaled dot-product attention over Q, K, V given 3-D
//! (`[B, S, heads * size]`, with `q_num_heads`/`kv_num_heads`) or 4-D (`[B, heads, S, size]`),
//! with grouped key/value heads (GQA/MQA: query head `h` reads key/value head
//! `h / (q_heads / kv_heads)`), a bool or additive `attn_mask` (broadcast to
//! `[B, q_heads, Sq, total]`, its last axis padded with "masked" up to the total length), the
//! past key/value cache concatenated in front of K and V (the present outputs), `is_causal`
//! (query `i` sees keys up to `past + i`), `scale`, `softcap`, `nonpad_kv_seqlen` (opset 24) and
//! the `qk_matmul_output` of every `qk_matmul_output_mode`.
//!
//! Each (batch, query head) runs on its own: scores = scale·Q·Kᵀ with the GEMM, softcap, bias,
//! softmax, then Y = P·V. A query whose every key is masked gets all-zero weights (numpy's
//! reference gives NaN, which would spread through every later layer of a padded batch).

use super::{gemm, tensor, values, with_real, Real, Res};
use crate::kernels::{alloc, arg, opt_arg};
use crate::{kbail, KernelError};
use fpx_ir::{Node, Tensor};
use rayon::prelude::*;

/// How Q, K or V is laid out: element `(b, h, s, d)` is at `b*bs + h*hs + s*ss + d`.
#[derive(Debug, Clone, Copy)]
struct Heads {
    batch: usize,
    heads: usize,
    seq: usize,
    size: usize,
    strides: (usize, usize, usize),
}

impl Heads {
    fn of(shape: &[usize], heads_attr: i64, what: &str) -> Result<Heads, KernelError> {
        match *shape {
            [batch, heads, seq, size] => Ok(Heads { batch, heads, seq, size, strides: (heads * seq * size, seq * size, size) }),
            [batch, seq, hidden] => {
                if heads_attr <= 0 || hidden % heads_attr as usize != 0 {
                    kbail!("3-D {what} of shape {shape:?} needs a head count dividing its hidden size, found {heads_attr}");
                }
                let heads = heads_attr as usize;
                Ok(Heads { batch, heads, seq, size: hidden / heads, strides: (seq * hidden, hidden / heads, hidden) })
            }
            _ => kbail!("{what} of shape {shape:?} must be 3-D or 4-D"),
        }
    }

    fn offset(&self, b: usize, h: usize) -> usize {
        b * self.strides.0 + h * self.strides.1
    }
}

/// `[B, heads, past + seq, size]`: the past cache (if any) followed by `cur`'s rows.
fn present<R: Real>(past: Option<&Tensor>, cur: &Tensor, l: &Heads, what: &str) -> Result<(Vec<R>, usize), KernelError> {
    let p = match past {
        Some(t) if t.shape().len() == 4 && t.shape()[0] == l.batch && t.shape()[1] == l.heads && t.shape()[3] == l.size => t.shape()[2],
        Some(t) => kbail!("past_{what} of shape {:?} must be [{}, {}, past_sequence, {}]", t.shape(), l.batch, l.heads, l.size),
        None => 0,
    };
    let total = p + l.seq;
    let mut out = alloc::filled::<R>(&[l.batch, l.heads, total, l.size], R::ZERO)?;
    let cv = values::<R>(cur)?;
    let pv = past.map(values::<R>).transpose()?;
    let d = l.size;
    for b in 0..l.batch {
        for h in 0..l.heads {
            let dst = &mut out[(b * l.heads + h) * total * d..][..total * d];
            if let Some(pv) = &pv {
                dst[..p * d].copy_from_slice(&pv[(b * l.heads + h) * p * d..][..p * d]);
            }
            for s in 0..l.seq {
                let src = l.offset(b, h) + s * l.strides.2;
                dst[(p + s) * d..][..d].copy_from_slice(&cv[src..src + d]);
            }
        }
    }
    Ok((out, p))
}

/// The attention mask as additive values (bool: 0 where true, -inf where false), broadcast to
/// `[B, q_heads, Sq, total]` through zero strides; columns past its own last axis are masked.
struct Mask<R> {
    values: Vec<R>,
    strides: [usize; 3],
    columns: usize,
}

impl<R: Real> Mask<R> {
    fn new(t: &Tensor, target: [usize; 4]) -> Result<Self, KernelError> {
        let s = t.shape();
        if s.is_empty() || s.len() > 4 {
            kbail!("attn_mask of shape {s:?} must have rank 1 to 4");
        }
        let mut dims = [1usize; 4];
        dims[4 - s.len()..].copy_from_slice(s);
        if (0..3).any(|k| dims[k] != 1 && dims[k] != target[k]) || dims[3] > target[3] {
            kbail!("attn_mask of shape {s:?} does not broadcast to {target:?} (its last axis may be shorter than the total sequence)");
        }
        let strides = [dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3]];
        let strides = [0, 1, 2].map(|k| if dims[k] == 1 { 0 } else { strides[k] });
        let values = match t {
            Tensor::Bool(a) => alloc::collect(s, a.iter().map(|&keep| if keep { R::ZERO } else { R::NEG_INFINITY }))?,
            t if t.dtype().is_float() => values::<R>(t)?,
            t => kbail!("attn_mask must be bool or float, found {}", t.dtype()),
        };
        Ok(Mask { values, strides, columns: dims[3] })
    }

    /// The row of bias for (batch, head, query), `columns` long.
    fn row(&self, b: usize, h: usize, i: usize) -> &[R] {
        let start = b * self.strides[0] + h * self.strides[1] + i * self.strides[2];
        &self.values[start..start + self.columns]
    }
}

/// What one (batch, query head) task needs, shared by all of them.
struct Problem<'a, R> {
    q: &'a [R],
    ql: Heads,
    k: &'a [R],
    v: &'a [R],
    kv_heads: usize,
    past: usize,
    total: usize,
    v_size: usize,
    scale: R,
    softcap: f64,
    causal: bool,
    mask: Option<Mask<R>>,
    lengths: Option<Vec<usize>>,
    mode: i64,
}

impl<R: Real> Problem<'_, R> {
    /// Computes Y (`[Sq, Dv]`) and, when `qk` is not empty, the qk_matmul_output (`[Sq, total]`)
    /// of query head `h` of batch `b`.
    fn head(&self, b: usize, h: usize, y: &mut [R], qk: &mut [R]) -> Result<(), KernelError> {
        let (sq, t, d) = (self.ql.seq, self.total, self.ql.size);
        let kvh = h / (self.ql.heads / self.kv_heads);
        let kv = b * self.kv_heads + kvh;
        let mut s = Vec::new();
        s.try_reserve_exact(sq * t).map_err(|_| KernelError(format!("out of memory for attention scores [{sq}, {t}]")))?;
        s.resize(sq * t, R::ZERO);
        let q = &self.q[self.ql.offset(b, h)..];
        gemm((sq, d, t), self.scale, q, (self.ql.strides.2, 1), &self.k[kv * t * d..], (1, d), R::ZERO, &mut s, t);
        let keep = |mode: i64, s: &[R], qk: &mut [R]| {
            if !qk.is_empty() && self.mode == mode {
                qk.copy_from_slice(s);
            }
        };
        keep(0, &s, qk);
        if self.softcap > 0.0 {
            let (cap, inv) = (R::from_f64(self.softcap), R::from_f64(1.0 / self.softcap));
            s.iter_mut().for_each(|v| *v = cap * (*v * inv).tanh());
        }
        keep(1, &s, qk);
        for (i, row) in s.chunks_mut(t).enumerate() {
            if let Some(m) = &self.mask {
                let bias = m.row(b, h, i);
                row.iter_mut().zip(bias).for_each(|(v, &a)| *v += a);
                row[bias.len()..].iter_mut().for_each(|v| *v = R::NEG_INFINITY);
            }
            if self.causal {
                row.iter_mut().skip(self.past + i + 1).for_each(|v| *v = R::NEG_INFINITY);
            }
            if let Some(lens) = &self.lengths {
                row.iter_mut().skip(lens[b]).for_each(|v| *v = R::NEG_INFINITY);
            }
        }
        keep(2, &s, qk);
        for row in s.chunks_mut(t) {
            let m = row.iter().copied().fold(R::NEG_INFINITY, R::max);
            if m == R::NEG_INFINITY {
                row.iter_mut().for_each(|v| *v = R::ZERO);
                continue;
            }
            let mut sum = R::ZERO;
            row.iter_mut().for_each(|v| {
                *v = (*v - m).exp();
                sum += *v;
            });
            let inv = R::ONE / sum;
            row.iter_mut().for_each(|v| *v = *v * inv);
        }
        keep(3, &s, qk);
        let dv = self.v_size;
        gemm((sq, t, dv), R::ONE, &s, (t, 1), &self.v[kv * t * dv..], (dv, 1), R::ZERO, y, dv);
        Ok(())
    }
}

/// `v` cut into `count` slices of `len` (empty slices when `len` is 0).
fn per_head<R>(v: &mut [R], len: usize, count: usize) -> Vec<&mut [R]> {
    match len {
        0 => (0..count).map(|_| &mut [][..]).collect(),
        _ => v.chunks_mut(len).collect(),
    }
}

fn attention_t<R: Real>(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let (q, k, v) = (arg(i, 0)?, arg(i, 1)?, arg(i, 2)?);
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        kbail!("Q, K and V must have one element type, found {}, {} and {}", q.dtype(), k.dtype(), v.dtype());
    }
    if q.rank() != k.rank() || q.rank() != v.rank() {
        kbail!("Q, K and V must all be 3-D or all 4-D, found {:?}, {:?} and {:?}", q.shape(), k.shape(), v.shape());
    }
    let (past_k, past_v) = (opt_arg(i, 4), opt_arg(i, 5));
    if past_k.is_some() != past_v.is_some() {
        kbail!("past_key and past_value must be given together");
    }
    let ql = Heads::of(q.shape(), n.attr_i("q_num_heads", 0), "Q")?;
    let kl = Heads::of(k.shape(), n.attr_i("kv_num_heads", 0), "K")?;
    let vl = Heads::of(v.shape(), n.attr_i("kv_num_heads", 0), "V")?;
    if ql.batch != kl.batch || kl.batch != vl.batch || kl.heads != vl.heads || kl.seq != vl.seq {
        kbail!("Q {:?}, K {:?} and V {:?} disagree on batch, key/value heads or key/value sequence", q.shape(), k.shape(), v.shape());
    }
    if ql.size != kl.size {
        kbail!("Q's head size {} differs from K's {}", ql.size, kl.size);
    }
    if kl.heads == 0 || ql.heads % kl.heads != 0 {
        kbail!("{} query heads do not group over {} key/value heads", ql.heads, kl.heads);
    }
    let mode = n.attr_i("qk_matmul_output_mode", 0);
    if !(0..=3).contains(&mode) {
        kbail!("qk_matmul_output_mode must be 0 to 3, found {mode}");
    }
    let (pk, past) = present::<R>(past_k, k, &kl, "key")?;
    let (pv, _) = present::<R>(past_v, v, &vl, "value")?;
    let total = past + kl.seq;
    if past_v.is_some_and(|t| t.shape()[2] != past) {
        kbail!("past_key and past_value have different lengths");
    }
    let (b, hq, sq, dv) = (ql.batch, ql.heads, ql.seq, vl.size);
    let mask = opt_arg(i, 3).map(|m| Mask::<R>::new(m, [b, hq, sq, total])).transpose()?;
    let lengths = match opt_arg(i, 6) {
        Some(t) if t.dtype().is_int() && t.shape() == [b] => {
            Some(t.to_i64_vec().into_iter().map(|l| l.clamp(0, total as i64) as usize).collect())
        }
        Some(t) => kbail!("nonpad_kv_seqlen must be an integer vector [{b}], found {} {:?}", t.dtype(), t.shape()),
        None => None,
    };
    let scale = match n.attrs.contains_key("scale") {
        true => n.attr_f("scale", 1.0) as f64,
        false => 1.0 / (ql.size as f64).sqrt(),
    };
    let problem = Problem {
        q: &values::<R>(q)?,
        ql,
        k: &pk,
        v: &pv,
        kv_heads: kl.heads,
        past,
        total,
        v_size: dv,
        scale: R::from_f64(scale),
        softcap: n.attr_f("softcap", 0.0) as f64,
        causal: n.attr_i("is_causal", 0) != 0,
        mask,
        lengths,
        mode,
    };
    let want_qk = n.outputs.len() >= 4;
    let mut y = alloc::filled::<R>(&[b, hq, sq, dv], R::ZERO)?;
    let mut qk = if want_qk { alloc::filled::<R>(&[b, hq, sq, total], R::ZERO)? } else { Vec::new() };
    // Each task's scores: checked here, on the thread whose budget applies.
    alloc::check(R::DTYPE, &[sq, total])?;
    let (y_heads, qk_heads) = (per_head(&mut y, sq * dv, b * hq), per_head(&mut qk, if want_qk { sq * total } else { 0 }, b * hq));
    y_heads.into_par_iter().zip(qk_heads).enumerate().try_for_each(|(bh, (y, qk))| problem.head(bh / hq, bh % hq, y, qk))?;
    let y = if q.rank() == 4 {
        tensor(q.dtype(), &[b, hq, sq, dv], y)?
    } else {
        // [B, H, S, Dv] -> [B, S, H * Dv]
        let items = (0..b * sq * hq).flat_map(|r| {
            let (bi, si, h) = (r / (sq * hq), r / hq % sq, r % hq);
            y[((bi * hq + h) * sq + si) * dv..][..dv].iter().copied()
        });
        tensor(q.dtype(), &[b, sq, hq * dv], alloc::collect(&[b, sq, hq * dv], items)?)?
    };
    let mut out = vec![y];
    if n.outputs.len() >= 2 {
        out.push(tensor(k.dtype(), &[kl.batch, kl.heads, total, kl.size], pk)?);
    }
    if n.outputs.len() >= 3 {
        out.push(tensor(v.dtype(), &[vl.batch, vl.heads, total, dv], pv)?);
    }
    if want_qk {
        out.push(tensor(q.dtype(), &[b, hq, sq, total], qk)?);
    }
    Ok(out)
}

/// `Attention(Q, K, V, attn_mask?, past_key?, past_value?, nonpad_kv_seqlen?)`.
pub(super) fn attention(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let q = arg(i, 0)?;
    with_real!(q, R => attention_t::<R>(n, i))
}
