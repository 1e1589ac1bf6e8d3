//! `fpx:RotateHalf(X, cos, sin)` (schema in `fpx_ir::ops::rotate_half`): `X·cos +
//! rotate_half(X)·sin` in one pass over X, each row of the last axis at a time, the caches read
//! at their broadcast rows (other shapes op by op, as the unfused nodes). Each element is
//! `x·c + (±x')·s` with both products rounded, as the unfused `Mul`s and `Add` compute it
//! (float16 and bfloat16 in f32, rounded once).

use super::{tensor, values, with_real, Real, Res};
use crate::kernels::fast::multiversion;
use crate::kernels::{alloc, arg, array, f32_slice, fast};
use crate::{kbail, KernelError};
use fpx_ir::ndarray::{concatenate, ArrayD, Axis};
use fpx_ir::shape::{broadcast_shape, broadcast_strides};
use fpx_ir::{Node, Tensor};

/// Where each row (all axes but the last) of X finds its row of a cache of shape `cache` that
/// broadcasts to X's shape `x` without growing it: the rows' first elements and the step along
/// the last axis (0 when the cache has one element there).
fn broadcast_rows(cache: &[usize], x: &[usize]) -> (Vec<usize>, usize) {
    let rank = x.len();
    let strides = broadcast_strides(cache, rank);
    let outer = &x[..rank - 1];
    let mut firsts = Vec::with_capacity(outer.iter().product());
    // The row's multi-index, advanced like an odometer (last axis fastest), and its offset.
    let (mut index, mut at) = (vec![0usize; rank - 1], 0usize);
    for _ in 0..firsts.capacity() {
        firsts.push(at);
        for k in (0..rank - 1).rev() {
            index[k] += 1;
            at += strides[k];
            if index[k] < outer[k] {
                break;
            }
            at -= strides[k] * index[k];
            index[k] = 0;
        }
    }
    (firsts, strides[rank - 1])
}

/// A cache's values and where X's rows find theirs (see [`broadcast_rows`]).
struct Cache<'a, R> {
    values: &'a [R],
    rows: Vec<usize>,
    step: usize,
}

/// Rotates the rows of `x` (`d` values each) from row `first` into `y`. Caches whose rows are
/// whole (the exporters') are read as slices, which vectorizes; a cache broadcast along the
/// last axis is read element by element.
#[inline(always)]
fn rotate_rows<R: Real>(x: &[R], (c, s): (&Cache<'_, R>, &Cache<'_, R>), d: usize, first: usize, y: &mut [R]) {
    let h = d / 2;
    for (r, yr) in y.chunks_exact_mut(d).enumerate() {
        let row = first + r;
        let (x1, x2) = x[row * d..(row + 1) * d].split_at(h);
        let (y1, y2) = yr.split_at_mut(h);
        let (c0, s0) = (c.rows[row], s.rows[row]);
        if c.step == 1 && s.step == 1 {
            let ((c1, c2), (s1, s2)) = (c.values[c0..c0 + d].split_at(h), s.values[s0..s0 + d].split_at(h));
            for ((((y, &a), &b), &cc), &ss) in y1.iter_mut().zip(x1).zip(x2).zip(c1).zip(s1) {
                *y = a * cc + (-b) * ss;
            }
            for ((((y, &a), &b), &cc), &ss) in y2.iter_mut().zip(x1).zip(x2).zip(c2).zip(s2) {
                *y = b * cc + a * ss;
            }
        } else {
            for i in 0..h {
                let (a, b) = (x1[i], x2[i]);
                y1[i] = a * c.values[c0 + i * c.step] + (-b) * s.values[s0 + i * s.step];
                y2[i] = b * c.values[c0 + (i + h) * c.step] + a * s.values[s0 + (i + h) * s.step];
            }
        }
    }
}

multiversion! {
    /// [`rotate_rows`] on f32, compiled for the host's vector width.
    fn rotate_rows_f32<M>(x: &[f32], c: &Cache<'_, f32>, s: &Cache<'_, f32>, d: usize, first: usize, y: &mut [f32]) {
        rotate_rows(x, (c, s), d, first, y)
    }
}

/// What the seven unfused nodes compute, op by op (ONNX broadcasting and slice clamping): for
/// the shapes the row path does not take (caches that grow X, or `D ≠ 2 half`).
fn unfused<R: Real>(x: ArrayD<R>, c: ArrayD<R>, s: ArrayD<R>, half: usize) -> Result<ArrayD<R>, KernelError> {
    let last = Axis(x.ndim() - 1);
    let cut = half.min(x.len_of(last));
    let (lo, hi) = x.view().split_at(last, cut);
    let negated = hi.mapv(|v| -v);
    let rot = concatenate(last, &[negated.view(), lo]).map_err(|e| KernelError(format!("rotate_half: {e}")))?;
    let (x_cos, rot_sin) = (&x * &c, &rot * &s);
    Ok(&x_cos + &rot_sin)
}

/// `fpx:RotateHalf(X, cos, sin)`.
pub(super) fn rotate_half(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let (x, c, s) = (arg(i, 0)?, arg(i, 1)?, arg(i, 2)?);
    if c.dtype() != x.dtype() || s.dtype() != x.dtype() {
        kbail!("X, cos and sin must have one element type, found {}, {} and {}", x.dtype(), c.dtype(), s.dtype());
    }
    let shape = x.shape();
    let Some(&d) = shape.last() else { kbail!("X must have at least one dimension") };
    let half = match n.attrs.contains_key("half") {
        true => usize::try_from(n.attr_i("half", 0)).ok().filter(|&h| h > 0),
        false => Some(d / 2),
    };
    let Some(half) = half else { kbail!("attribute 'half' must be positive") };
    let Some(out_shape) = broadcast_shape(&[shape, c.shape(), s.shape()]) else {
        kbail!("X {shape:?}, cos {:?} and sin {:?} do not broadcast together", c.shape(), s.shape());
    };
    alloc::check(x.dtype(), &out_shape)?;
    // The row path: X keeps its shape and is cut in the middle (so d ≥ 2).
    let rows =
        (out_shape == shape && half > 0 && d == 2 * half).then(|| (broadcast_rows(c.shape(), shape), broadcast_rows(s.shape(), shape)));
    let Some(((c_rows, c_step), (s_rows, s_step))) = rows else {
        return Ok(vec![with_real!(x, R => {
            let array_of = |t: &Tensor| -> Result<ArrayD<R>, KernelError> { Ok(array(t.shape(), values::<R>(t)?)) };
            let y = unfused(array_of(x)?, array_of(c)?, array_of(s)?, half)?;
            let y_shape = y.shape().to_vec();
            tensor(x.dtype(), &y_shape, y.as_standard_layout().iter().copied().collect())?
        })]);
    };
    if let (Some(xv), Some(cv), Some(sv)) = (f32_slice(x), f32_slice(c), f32_slice(s)) {
        // f32 in standard layout, read where it lies; large tensors (prefill) across the pool.
        let (cos, sin) = (Cache { values: cv, rows: c_rows, step: c_step }, Cache { values: sv, rows: s_rows, step: s_step });
        let mut y = alloc::overwritten_f32(shape)?;
        fast::for_row_chunks(&mut y, d, |first, out| rotate_rows_f32(xv, &cos, &sin, d, first, out));
        return Ok(vec![Tensor::from(array(shape, y))]);
    }
    Ok(vec![with_real!(x, R => {
        let (xv, cv, sv) = (values::<R>(x)?, values::<R>(c)?, values::<R>(s)?);
        let (cos, sin) = (Cache { values: &cv, rows: c_rows, step: c_step }, Cache { values: &sv, rows: s_rows, step: s_step });
        let mut y = alloc::collect(shape, std::iter::repeat_n(R::ZERO, xv.len()))?;
        rotate_rows(&xv, (&cos, &sin), d, 0, &mut y);
        tensor(x.dtype(), shape, y)?
    })])
}

#[cfg(test)]
mod tests {
    use super::rotate_half;
    use crate::kernels::nn_extra::tests::{assert_close, rand};
    use fpx_ir::ops::{rotate_half as op, FPX_DOMAIN};
    use fpx_ir::{Attribute, Node, Tensor};
    use fpx_test_support::Rng;

    fn node(half: usize) -> Node {
        let mut n = Node::new("rope", op::OP_TYPE, 1, vec![], vec![]);
        n.domain = FPX_DOMAIN.into();
        n.attrs.insert("half".into(), Attribute::Int(half as i64));
        n
    }

    /// The flat index into a tensor of shape `t` that element `flat` of a `out`-shaped result
    /// reads (NumPy broadcasting).
    fn source(t: &[usize], out: &[usize], flat: usize) -> usize {
        let (mut rem, mut off, mut stride) = (flat, 0, 1);
        for k in (0..out.len()).rev() {
            let i = rem % out[k];
            rem /= out[k];
            if let Some(&dim) = (k + t.len()).checked_sub(out.len()).and_then(|kk| t.get(kk)) {
                off += if dim == 1 { 0 } else { i * stride };
                stride *= dim;
            }
        }
        off
    }

    /// `x·cos + rotate_half(x)·sin` in f64 over the broadcast shape `out`, `rotate_half` cutting
    /// the last axis at `half` (clamped, as `Slice` clamps).
    fn reference(x: &Tensor, c: &Tensor, s: &Tensor, half: usize, out: &[usize]) -> Vec<f64> {
        let (xv, cv, sv) = (x.to_f64_vec(), c.to_f64_vec(), s.to_f64_vec());
        let d = *x.shape().last().unwrap();
        let cut = half.min(d);
        let rot: Vec<f64> = (0..xv.len())
            .map(|e| {
                let (row, j) = (e - e % d, e % d);
                if j < d - cut {
                    -xv[row + cut + j]
                } else {
                    xv[row + j - (d - cut)]
                }
            })
            .collect();
        let n: usize = out.iter().product();
        (0..n)
            .map(|e| {
                let xi = source(x.shape(), out, e);
                xv[xi] * cv[source(c.shape(), out, e)] + rot[xi] * sv[source(s.shape(), out, e)]
            })
            .collect()
    }

    #[test]
    fn rotates_with_caches_of_every_broadcast_shape_as_f64_does() {
        let mut rng = Rng::new(5);
        let x_shape = [2, 3, 5, 8];
        for cache in [&[2usize, 1, 5, 8][..], &[1, 1, 5, 8], &[5, 8], &[2, 3, 5, 8], &[2, 1, 1, 8], &[8], &[5, 1]] {
            let (x, c, s) = (rand(&x_shape, &mut rng), rand(cache, &mut rng), rand(cache, &mut rng));
            let y = rotate_half(&node(4), &[Some(&x), Some(&c), Some(&s)]).unwrap();
            assert_eq!(y[0].shape(), x_shape);
            assert_close(&y[0], &reference(&x, &c, &s, 4, &x_shape), 1e-6);
        }
        // Prefill-sized X runs across the pool: the same values.
        let (x, c, s) = (rand(&[1, 16, 64, 64], &mut rng), rand(&[1, 1, 64, 64], &mut rng), rand(&[1, 1, 64, 64], &mut rng));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let y = pool.install(|| rotate_half(&node(32), &[Some(&x), Some(&c), Some(&s)])).unwrap();
        assert_close(&y[0], &reference(&x, &c, &s, 32, &[1, 16, 64, 64]), 1e-6);
    }

    #[test]
    fn other_shapes_mean_what_the_unfused_nodes_mean() {
        let mut rng = Rng::new(7);
        // Caches that grow X, a cut off the middle, a cut past the end (the upper slice empty).
        for (xs, cs, half) in [(&[1usize, 1, 5, 8][..], &[2usize, 3, 5, 8][..], 4), (&[2, 3, 5, 8], &[5, 8], 3), (&[2, 5, 6], &[6], 10)] {
            let (x, c, s) = (rand(xs, &mut rng), rand(cs, &mut rng), rand(cs, &mut rng));
            let y = rotate_half(&node(half), &[Some(&x), Some(&c), Some(&s)]).unwrap();
            let out = fpx_ir::shape::broadcast_shape(&[xs, cs, cs]).unwrap();
            assert_eq!(y[0].shape(), out.as_slice());
            assert_close(&y[0], &reference(&x, &c, &s, half, &out), 1e-6);
        }
        // Without 'half' the middle: D / 2 rounded down (an odd D takes the op-by-op path).
        for d in [8, 7] {
            let (x, c, s) = (rand(&[2, 3, d], &mut rng), rand(&[3, d], &mut rng), rand(&[3, d], &mut rng));
            let mut middle = node(1);
            middle.attrs.remove("half");
            let y = rotate_half(&middle, &[Some(&x), Some(&c), Some(&s)]).unwrap();
            assert_close(&y[0], &reference(&x, &c, &s, d / 2, &[2, 3, d]), 1e-6);
        }
    }

    #[test]
    fn half_precision_is_computed_in_f32_and_bad_inputs_are_errors() {
        let mut rng = Rng::new(6);
        let to_f16 = |t: &Tensor| Tensor::from(t.as_f32().unwrap().mapv(fpx_ir::half::f16::from_f32));
        let (x, c, s) = (rand(&[1, 2, 3, 4], &mut rng), rand(&[3, 4], &mut rng), rand(&[3, 4], &mut rng));
        let (xh, ch, sh) = (to_f16(&x), to_f16(&c), to_f16(&s));
        let y = rotate_half(&node(2), &[Some(&xh), Some(&ch), Some(&sh)]).unwrap();
        assert_eq!(y[0].dtype(), fpx_ir::DType::F16);
        assert_close(&y[0], &reference(&xh, &ch, &sh, 2, &[1, 2, 3, 4]), 2e-3);
        let err = |x: &Tensor, c: &Tensor, half: usize| rotate_half(&node(half), &[Some(x), Some(c), Some(c)]).unwrap_err().0;
        assert!(err(&rand(&[2, 4], &mut rng), &rand(&[3, 4], &mut rng), 2).contains("do not broadcast"));
        assert!(err(&x, &ch, 2).contains("one element type"));
        assert!(err(&x, &c, 0).contains("'half'"));
    }
}
