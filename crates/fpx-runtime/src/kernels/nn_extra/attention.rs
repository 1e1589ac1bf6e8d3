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
    if out.is_empty() {
        return Ok((out, p));
    }
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
        if t == 0 {
            // No keys at all: Y stays zero.
            return Ok(());
        }
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
    // Empty outputs can come with huge batch or head counts: then there is nothing to compute
    // (otherwise the outputs' sizes, within the budget, bound the number of heads).
    if !y.is_empty() || !qk.is_empty() {
        let (y_heads, qk_heads) = (per_head(&mut y, sq * dv, b * hq), per_head(&mut qk, if want_qk { sq * total } else { 0 }, b * hq));
        y_heads.into_par_iter().zip(qk_heads).enumerate().try_for_each(|(bh, (y, qk))| problem.head(bh / hq, bh % hq, y, qk))?;
    }
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

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_close, rand, run};
    use fpx_ir::ndarray::{ArrayD, IxDyn};
    use fpx_ir::{Attribute, DType, Tensor};
    use fpx_test_support::Rng;

    /// Element `(b, h, s, d)` of a 3-D `[B, S, heads * size]` tensor's values.
    fn at3(v: &[f64], (seq, heads, size): (usize, usize, usize), (b, h, s, d): (usize, usize, usize, usize)) -> f64 {
        v[(b * seq + s) * heads * size + h * size + d]
    }

    /// What the naive attention computes, in 4-D notation.
    struct Expected {
        y: Vec<f64>,
        qk: Vec<f64>,
    }

    /// Naive f64 attention: `q(b, h, i, d)`, `k(b, kvh, j, d)` and `v(b, kvh, j, e)` over the
    /// whole (past + current) sequence of `t`; `bias(b, h, i, j)` is the mask; the qk output
    /// is taken after the mask (mode 2).
    #[allow(clippy::too_many_arguments)]
    fn attention_ref(
        (b, hq, hkv, sq, t, d, dv): (usize, usize, usize, usize, usize, usize, usize),
        q: impl Fn(usize, usize, usize, usize) -> f64,
        k: impl Fn(usize, usize, usize, usize) -> f64,
        v: impl Fn(usize, usize, usize, usize) -> f64,
        bias: impl Fn(usize, usize, usize, usize) -> f64,
        (scale, softcap, causal_past): (f64, f64, Option<usize>),
    ) -> Expected {
        let (mut y, mut qk) = (vec![0.0; b * hq * sq * dv], vec![0.0; b * hq * sq * t]);
        for bi in 0..b {
            for h in 0..hq {
                let kvh = h / (hq / hkv);
                for i in 0..sq {
                    let mut s: Vec<f64> = (0..t)
                        .map(|j| {
                            let mut x = scale * (0..d).map(|e| q(bi, h, i, e) * k(bi, kvh, j, e)).sum::<f64>();
                            if softcap > 0.0 {
                                x = softcap * (x / softcap).tanh();
                            }
                            x += bias(bi, h, i, j);
                            if causal_past.is_some_and(|p| j > p + i) {
                                x = f64::NEG_INFINITY;
                            }
                            x
                        })
                        .collect();
                    qk[((bi * hq + h) * sq + i) * t..][..t].copy_from_slice(&s);
                    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let total: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    s.iter_mut().for_each(|x| *x = if m == f64::NEG_INFINITY { 0.0 } else { (*x - m).exp() / total });
                    for e in 0..dv {
                        y[((bi * hq + h) * sq + i) * dv + e] = (0..t).map(|j| s[j] * v(bi, kvh, j, e)).sum();
                    }
                }
            }
        }
        Expected { y, qk }
    }

    #[test]
    fn gqa_3d_with_past_causal_bool_mask_and_softcap_matches_a_naive_attention() {
        let mut rng = Rng::new(41);
        let (b, hq, hkv, sq, skv, p, d, dv) = (2, 6, 2, 3, 3, 4, 4, 5);
        let t = p + skv;
        let q = rand(&[b, sq, hq * d], &mut rng);
        let k = rand(&[b, skv, hkv * d], &mut rng);
        let v = rand(&[b, skv, hkv * dv], &mut rng);
        let (pk, pv) = (rand(&[b, hkv, p, d], &mut rng), rand(&[b, hkv, p, dv], &mut rng));
        // A bool mask [Sq, 6] one shorter than the total 7: the last key is masked for everyone.
        let keep: Vec<bool> = (0..sq * 6).map(|_| rng.uniform() > 0.3).collect();
        let mask = Tensor::from(ArrayD::from_shape_vec(IxDyn(&[sq, 6]), keep.clone()).unwrap());
        let attrs = [
            ("q_num_heads", Attribute::Int(hq as i64)),
            ("kv_num_heads", Attribute::Int(hkv as i64)),
            ("is_causal", Attribute::Int(1)),
            ("softcap", Attribute::Float(1.5)),
            ("qk_matmul_output_mode", Attribute::Int(2)),
        ];
        let out = run("Attention", 23, &attrs, &[Some(&q), Some(&k), Some(&v), Some(&mask), Some(&pk), Some(&pv)], 4).unwrap();
        let (qv, kv, vv, pkv, pvv) = (q.to_f64_vec(), k.to_f64_vec(), v.to_f64_vec(), pk.to_f64_vec(), pv.to_f64_vec());
        let key =
            |bi, h, j: usize, e| if j < p { pkv[((bi * hkv + h) * p + j) * d + e] } else { at3(&kv, (skv, hkv, d), (bi, h, j - p, e)) };
        let value =
            |bi, h, j: usize, e| if j < p { pvv[((bi * hkv + h) * p + j) * dv + e] } else { at3(&vv, (skv, hkv, dv), (bi, h, j - p, e)) };
        let want = attention_ref(
            (b, hq, hkv, sq, t, d, dv),
            |bi, h, i, e| at3(&qv, (sq, hq, d), (bi, h, i, e)),
            key,
            value,
            |_, _, i, j| if j < 6 && keep[i * 6 + j] { 0.0 } else { f64::NEG_INFINITY },
            (1.0 / (d as f64).sqrt(), 1.5, Some(p)),
        );
        // Y back to [B, Sq, Hq * Dv].
        assert_eq!(out[0].shape(), &[b, sq, hq * dv]);
        let y3: Vec<f64> = (0..b * sq * hq * dv)
            .map(|r| {
                let (bi, i, h, e) = (r / (sq * hq * dv), r / (hq * dv) % sq, r / dv % hq, r % dv);
                want.y[((bi * hq + h) * sq + i) * dv + e]
            })
            .collect();
        assert_close(&out[0], &y3, 1e-5);
        let present_k: Vec<f64> = (0..b * hkv * t * d).map(|r| key(r / (hkv * t * d), r / (t * d) % hkv, r / d % t, r % d)).collect();
        assert_eq!(out[1].shape(), &[b, hkv, t, d]);
        assert_close(&out[1], &present_k, 0.0);
        assert_eq!(out[2].shape(), &[b, hkv, t, dv]);
        assert_close(&out[3], &want.qk, 1e-5);
        // The mask and the causal rule did mask scores (kept as -inf in the mode-2 output).
        assert!(out[3].to_f64_vec().contains(&f64::NEG_INFINITY));
    }

    #[test]
    fn fully_masked_queries_get_zero_weights_and_4d_f16_matches_in_f32() {
        let mut rng = Rng::new(42);
        let (b, h, s, d) = (1, 2, 3, 4);
        let (q, k, v) = (rand(&[b, h, s, d], &mut rng), rand(&[b, h, s, d], &mut rng), rand(&[b, h, s, d], &mut rng));
        // Additive float mask [B, 1, S, S]: query 1 sees nothing.
        let bias: Vec<f32> = (0..s * s).map(|k| if k / s == 1 { f32::NEG_INFINITY } else { (k as f32) * 0.1 }).collect();
        let mask = Tensor::from(ArrayD::from_shape_vec(IxDyn(&[b, 1, s, s]), bias.clone()).unwrap());
        let scale = 0.3;
        let cast = |t: &Tensor| t.cast(DType::F16);
        let out = run(
            "Attention",
            23,
            &[("scale", Attribute::Float(scale))],
            &[Some(&cast(&q)), Some(&cast(&k)), Some(&cast(&v)), Some(&cast(&mask))],
            1,
        )
        .unwrap();
        assert_eq!(out[0].dtype(), DType::F16);
        let (qv, kv, vv) = (cast(&q).to_f64_vec(), cast(&k).to_f64_vec(), cast(&v).to_f64_vec());
        let idx = |bi: usize, hi: usize, i: usize, e: usize| ((bi * h + hi) * s + i) * d + e;
        let want = attention_ref(
            (b, h, h, s, s, d, d),
            |bi, hi, i, e| qv[idx(bi, hi, i, e)],
            |bi, hi, j, e| kv[idx(bi, hi, j, e)],
            |bi, hi, j, e| vv[idx(bi, hi, j, e)],
            |_, _, i, j| f16_round(bias[i * s + j] as f64),
            (scale as f64, 0.0, None),
        );
        assert_close(&out[0], &want.y, 2e-3);
        assert!(out[0].to_f64_vec()[d..2 * d].iter().all(|&x| x == 0.0));
    }

    fn f16_round(x: f64) -> f64 {
        half::f16::from_f64(x).to_f64()
    }

    #[test]
    fn inconsistent_inputs_are_errors() {
        let mut rng = Rng::new(43);
        let x3 = rand(&[1, 2, 8], &mut rng);
        let e = run("Attention", 23, &[], &[Some(&x3), Some(&x3), Some(&x3)], 1).unwrap_err().0;
        assert!(e.contains("head count"), "{e}");
        let x4 = rand(&[1, 3, 2, 4], &mut rng);
        let kv4 = rand(&[1, 2, 2, 4], &mut rng);
        let e = run("Attention", 23, &[], &[Some(&x4), Some(&kv4), Some(&kv4)], 1).unwrap_err().0;
        assert!(e.contains("do not group"), "{e}");
        let e = run("Attention", 23, &[], &[Some(&x4), Some(&x4), Some(&x4), None, Some(&x4)], 1).unwrap_err().0;
        assert!(e.contains("together"), "{e}");
        let long_mask = rand(&[2, 3], &mut rng);
        let e = run("Attention", 23, &[], &[Some(&x4), Some(&x4), Some(&x4), Some(&long_mask)], 1).unwrap_err().0;
        assert!(e.contains("does not broadcast"), "{e}");
    }
}
