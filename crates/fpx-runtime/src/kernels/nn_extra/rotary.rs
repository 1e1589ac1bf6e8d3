//! RotaryEmbedding (opset 23): rotary position embeddings over `[B, H, S, D]` or `[B, S, H*D]`,
//! the rotated pairs split in halves or interleaved, optionally over the first
//! `rotary_embedding_dim` elements of each head only, with the cos/sin caches indexed by
//! `position_ids` or given per (batch, position).

use super::{tensor, values, with_real, Real, Res};
use crate::kernels::{arg, bad_type, opt_arg};
use crate::{kbail, KernelError};
use fpx_ir::{DType, Node, Tensor};

/// Where each (batch, head, position) row of `head_size` values starts: `b*bs + h*hs + s*ss`.
struct Rows {
    batch: usize,
    heads: usize,
    seq: usize,
    head_size: usize,
    strides: (usize, usize, usize),
}

fn rows(n: &Node, shape: &[usize]) -> Result<Rows, KernelError> {
    match *shape {
        [batch, heads, seq, head_size] => {
            Ok(Rows { batch, heads, seq, head_size, strides: (heads * seq * head_size, seq * head_size, head_size) })
        }
        [batch, seq, hidden] => {
            let heads = n.attr_i("num_heads", 0);
            if heads <= 0 || hidden % heads as usize != 0 {
                kbail!("a 3-D input [batch, sequence, hidden] needs num_heads > 0 dividing its hidden size {hidden}, found {heads}");
            }
            let heads = heads as usize;
            Ok(Rows { batch, heads, seq, head_size: hidden / heads, strides: (seq * hidden, hidden / heads, hidden) })
        }
        _ => kbail!("input of shape {shape:?} must be 3-D or 4-D"),
    }
}

/// The first cache element of each (batch, position), `half` values per row.
fn cache_rows(pos: Option<&Tensor>, cache_shape: &[usize], r: &Rows, half: usize) -> Result<Vec<usize>, KernelError> {
    match pos {
        Some(p) => {
            if !matches!(p.dtype(), DType::I64 | DType::I32) {
                return Err(bad_type(p));
            }
            if p.shape() != [r.batch, r.seq] {
                kbail!("position_ids of shape {:?} must be [batch, sequence] = [{}, {}]", p.shape(), r.batch, r.seq);
            }
            let [max_pos, h] = *cache_shape else {
                kbail!("with position_ids the cos/sin caches must be 2-D [max_position + 1, {half}], found {cache_shape:?}");
            };
            if h != half {
                kbail!("cos/sin caches have {h} values per position; the rotation needs {half}");
            }
            p.to_i64_vec()
                .into_iter()
                .map(|v| match usize::try_from(v) {
                    Ok(v) if v < max_pos => Ok(v * half),
                    _ => Err(KernelError(format!("position id {v} is outside the caches' {max_pos} positions"))),
                })
                .collect()
        }
        None => {
            // [batch, sequence, half], or one batch row for all (the ONNX reference broadcasts it;
            // the dynamo exporter emits such caches at opset 23).
            let shared = match *cache_shape {
                [b, s, h] if b == r.batch && s == r.seq && h == half => false,
                [1, s, h] if s == r.seq && h == half => true,
                _ => kbail!(
                    "without position_ids the cos/sin caches must be [batch, sequence, {half}] = [{}, {}, {half}] (or [1, {}, {half}]), found {cache_shape:?}",
                    r.batch,
                    r.seq,
                    r.seq
                ),
            };
            if shared {
                return Ok((0..r.batch * r.seq).map(|k| (k % r.seq) * half).collect());
            }
            Ok((0..r.batch * r.seq).map(|k| k * half).collect())
        }
    }
}

fn rotary_t<R: Real>(n: &Node, x: &Tensor, cos: &Tensor, sin: &Tensor, pos: Option<&Tensor>) -> Result<Tensor, KernelError> {
    let r = rows(n, x.shape())?;
    let dim = match n.attr_i("rotary_embedding_dim", 0) {
        0 => r.head_size,
        d if d > 0 && d as usize <= r.head_size && d % 2 == 0 => d as usize,
        d => kbail!("rotary_embedding_dim {d} must be even and at most the head size {}", r.head_size),
    };
    if dim % 2 != 0 {
        kbail!("the head size {dim} must be even to rotate pairs");
    }
    let half = dim / 2;
    if x.is_empty() {
        // An empty input can have huge other axes (or head counts): nothing to rotate.
        return Ok(x.clone());
    }
    if cos.shape() != sin.shape() {
        kbail!("cos_cache {:?} and sin_cache {:?} differ in shape", cos.shape(), sin.shape());
    }
    let starts = cache_rows(pos, cos.shape(), &r, half)?;
    let (cv, sv) = (values::<R>(cos)?, values::<R>(sin)?);
    let interleaved = n.attr_i("interleaved", 0) != 0;
    let mut y = values::<R>(x)?;
    let (bs, hs, ss) = r.strides;
    for b in 0..r.batch {
        for h in 0..r.heads {
            for s in 0..r.seq {
                let base = b * bs + h * hs + s * ss;
                let c0 = starts[b * r.seq + s];
                for k in 0..half {
                    let (c, sn) = (cv[c0 + k], sv[c0 + k]);
                    let (i1, i2) = if interleaved { (base + 2 * k, base + 2 * k + 1) } else { (base + k, base + k + half) };
                    let (x1, x2) = (y[i1], y[i2]);
                    y[i1] = c * x1 - sn * x2;
                    y[i2] = sn * x1 + c * x2;
                }
            }
        }
    }
    tensor(x.dtype(), x.shape(), y)
}

/// `RotaryEmbedding(X, cos_cache, sin_cache, position_ids?)`.
pub(super) fn rotary_embedding(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    let (cos, sin) = (arg(i, 1)?, arg(i, 2)?);
    Ok(vec![with_real!(x, R => rotary_t::<R>(n, x, cos, sin, opt_arg(i, 3))?)])
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_close, rand, run};
    use fpx_ir::{Attribute, Tensor};
    use fpx_test_support::Rng;

    /// Naive rotation of `x` `[B, S, H, D]` (3-D layout) with angles `theta[pos][k]`.
    fn rotary_ref(
        x: &[f64],
        (b, s, h, d): (usize, usize, usize, usize),
        dim: usize,
        pos: &[usize],
        theta: &[Vec<f64>],
        interleaved: bool,
    ) -> Vec<f64> {
        let mut y = x.to_vec();
        for bi in 0..b {
            for si in 0..s {
                for hi in 0..h {
                    let base = ((bi * s + si) * h + hi) * d;
                    for (k, &a) in theta[pos[bi * s + si]].iter().enumerate().take(dim / 2) {
                        let (i1, i2) = if interleaved { (base + 2 * k, base + 2 * k + 1) } else { (base + k, base + k + dim / 2) };
                        y[i1] = a.cos() * x[i1] - a.sin() * x[i2];
                        y[i2] = a.sin() * x[i1] + a.cos() * x[i2];
                    }
                }
            }
        }
        y
    }

    #[test]
    fn rotary_embedding_3d_partial_and_interleaved_matches_a_naive_rotation() {
        let mut rng = Rng::new(21);
        let (b, s, h, d, dim) = (2, 3, 2, 8, 6);
        let x = rand(&[b, s, h * d], &mut rng);
        let theta: Vec<Vec<f64>> = (0..10).map(|p| (0..dim / 2).map(|k| p as f64 / 10f64.powf(k as f64 / 3.0)).collect()).collect();
        let cache = |f: fn(f64) -> f64| {
            let v: Vec<f32> = theta.iter().flatten().map(|&a| f(a) as f32).collect();
            Tensor::from(fpx_ir::ndarray::ArrayD::from_shape_vec(fpx_ir::ndarray::IxDyn(&[10, dim / 2]), v).unwrap())
        };
        let pos = [7usize, 0, 3, 9, 9, 1];
        let pos_t = Tensor::vec_i64(pos.iter().map(|&p| p as i64).collect()).reshape(&[b, s]).unwrap();
        for interleaved in [0, 1] {
            let attrs = [
                ("num_heads", Attribute::Int(h as i64)),
                ("rotary_embedding_dim", Attribute::Int(dim as i64)),
                ("interleaved", Attribute::Int(interleaved)),
            ];
            let y =
                run("RotaryEmbedding", 23, &attrs, &[Some(&x), Some(&cache(f64::cos)), Some(&cache(f64::sin)), Some(&pos_t)], 1).unwrap();
            assert_close(&y[0], &rotary_ref(&x.to_f64_vec(), (b, s, h, d), dim, &pos, &theta, interleaved == 1), 1e-5);
        }
        let far = Tensor::vec_i64(vec![10, 0, 0, 0, 0, 0]).reshape(&[b, s]).unwrap();
        let attrs = [("num_heads", Attribute::Int(h as i64)), ("rotary_embedding_dim", Attribute::Int(dim as i64))];
        let e =
            run("RotaryEmbedding", 23, &attrs, &[Some(&x), Some(&cache(f64::cos)), Some(&cache(f64::sin)), Some(&far)], 1).unwrap_err().0;
        assert!(e.contains("position id 10"), "{e}");
    }

    #[test]
    fn caches_without_position_ids_may_have_one_batch_row_for_all() {
        // The dynamo exporter's opset-23 LLaMA passes [1, S, D/2] caches with a batch of 2; the
        // result must be that of the caches repeated per batch row (positions 0..S each).
        let mut rng = Rng::new(22);
        let (b, s, h, d) = (2, 3, 2, 8);
        let x = rand(&[b, s, h * d], &mut rng);
        let theta: Vec<Vec<f64>> = (0..s).map(|p| (0..d / 2).map(|k| (p as f64 + 0.3) / 5f64.powf(k as f64 / 2.0)).collect()).collect();
        let cache = |f: fn(f64) -> f64, batch: usize| {
            let v: Vec<f32> = (0..batch).flat_map(|_| theta.iter().flatten().map(|&a| f(a) as f32)).collect();
            Tensor::from(fpx_ir::ndarray::ArrayD::from_shape_vec(fpx_ir::ndarray::IxDyn(&[batch, s, d / 2]), v).unwrap())
        };
        let attrs = [("num_heads", Attribute::Int(h as i64))];
        let pos: Vec<usize> = (0..b * s).map(|k| k % s).collect();
        let want = rotary_ref(&x.to_f64_vec(), (b, s, h, d), d, &pos, &theta, false);
        for batch in [b, 1] {
            let y =
                run("RotaryEmbedding", 23, &attrs, &[Some(&x), Some(&cache(f64::cos, batch)), Some(&cache(f64::sin, batch))], 1).unwrap();
            assert_close(&y[0], &want, 1e-5);
        }
        let e = run("RotaryEmbedding", 23, &attrs, &[Some(&x), Some(&cache(f64::cos, 3)), Some(&cache(f64::sin, 3))], 1).unwrap_err().0;
        assert!(e.contains("found [3, 3, 4]"), "{e}");
    }
}
