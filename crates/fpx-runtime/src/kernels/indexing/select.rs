//! ArgMax, ArgMin and TopK. As in numpy, ArgMax and ArgMin pick the first NaN when there is one,
//! and TopK orders NaN above every number; ties go to the lowest index (the last one with
//! `select_last_index`).

use super::{require_int, scalar_i64, Res};
use crate::kernels::{alloc, arg, array, axis, bad_type, KernelRegistry};
use crate::{kbail, KernelError};
use fpx_ir::ndarray::ArrayD;
use fpx_ir::{dispatch, Elem, Node, Tensor};
use std::cmp::Ordering;

#[allow(clippy::eq_op)]
fn is_nan<T: Elem>(x: T) -> bool {
    x != x
}

/// A total order on values: NaN above everything, NaNs equal.
fn order<T: Elem>(a: T, b: T) -> Ordering {
    a.partial_cmp(&b).unwrap_or_else(|| is_nan(a).cmp(&is_nan(b)))
}

/// The outer count, the axis size and the inner count of `shape` split at `ax`.
fn split_at(shape: &[usize], ax: usize) -> (usize, usize, usize) {
    (shape[..ax].iter().product(), shape[ax], shape[ax + 1..].iter().product())
}

/// ArgMax (`want` = Greater) or ArgMin (Less) along `ax`; NaN beats every number either way.
fn arg_reduce_t<T: Elem>(a: &ArrayD<T>, ax: usize, out_shape: &[usize], want: Ordering, last: bool) -> Result<Tensor, KernelError> {
    let (_, d, inner) = split_at(a.shape(), ax);
    let mut out = alloc::filled::<i64>(out_shape, 0)?;
    if out.is_empty() {
        return Ok(Tensor::from(array(out_shape, out)));
    }
    if d == 0 {
        kbail!("cannot select from an empty axis {ax} (shape {:?})", a.shape());
    }
    let a = a.as_standard_layout();
    let src = a.as_slice().expect("standard layout");
    for (o, idx) in out.chunks_exact_mut(inner).enumerate() {
        let block = &src[o * d * inner..(o + 1) * d * inner];
        let mut best: Vec<T> = block[..inner].to_vec();
        for (j, row) in block.chunks_exact(inner).enumerate().skip(1) {
            for ((b, k), &v) in best.iter_mut().zip(idx.iter_mut()).zip(row) {
                let c = match (is_nan(v), is_nan(*b)) {
                    (true, false) => want,
                    (false, true) => want.reverse(),
                    _ => order(v, *b),
                };
                if c == want || (last && c == Ordering::Equal) {
                    *b = v;
                    *k = j as i64;
                }
            }
        }
    }
    Ok(Tensor::from(array(out_shape, out)))
}

fn arg_reduce(n: &Node, i: &[Option<&Tensor>], want: Ordering) -> Res {
    let x = arg(i, 0)?;
    if matches!(x, Tensor::Bool(_)) {
        return Err(bad_type(x));
    }
    let ax = axis(n.attr_i("axis", 0), x.rank())?;
    let mut shape = x.shape().to_vec();
    if n.attr_i("keepdims", 1) != 0 {
        shape[ax] = 1;
    } else {
        shape.remove(ax);
    }
    let last = n.attr_i("select_last_index", 0) != 0;
    Ok(vec![dispatch!(x, a => arg_reduce_t(a, ax, &shape, want, last)?)])
}

fn arg_max(n: &Node, i: &[Option<&Tensor>]) -> Res {
    arg_reduce(n, i, Ordering::Greater)
}

fn arg_min(n: &Node, i: &[Option<&Tensor>]) -> Res {
    arg_reduce(n, i, Ordering::Less)
}

fn top_k_t<T: Elem>(a: &ArrayD<T>, ax: usize, k: usize, largest: bool) -> Result<Vec<Tensor>, KernelError> {
    let (outer, d, inner) = split_at(a.shape(), ax);
    let mut shape = a.shape().to_vec();
    shape[ax] = k;
    let mut values = alloc::filled::<T>(&shape, T::default())?;
    let mut indices = alloc::filled::<i64>(&shape, 0)?;
    if !values.is_empty() {
        let a = a.as_standard_layout();
        let src = a.as_slice().expect("standard layout");
        let mut lane: Vec<(T, usize)> = Vec::with_capacity(d);
        for o in 0..outer {
            for c in 0..inner {
                lane.clear();
                lane.extend((0..d).map(|j| (src[(o * d + j) * inner + c], j)));
                let by = |p: &(T, usize), q: &(T, usize)| {
                    let v = if largest { order(q.0, p.0) } else { order(p.0, q.0) };
                    v.then(p.1.cmp(&q.1))
                };
                if k < d {
                    lane.select_nth_unstable_by(k, by);
                    lane.truncate(k);
                }
                lane.sort_unstable_by(by);
                for (t, &(v, j)) in lane.iter().enumerate() {
                    let at = (o * k + t) * inner + c;
                    values[at] = v;
                    indices[at] = j as i64;
                }
            }
        }
    }
    Ok(vec![Tensor::from(array(&shape, values)), Tensor::from(array(&shape, indices))])
}

fn top_k(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    if matches!(x, Tensor::Bool(_)) {
        return Err(bad_type(x));
    }
    let ax = axis(n.attr_i("axis", -1), x.rank())?;
    let k = if n.opset < 10 {
        n.attr_i("k", -1)
    } else {
        let t = arg(i, 1)?;
        require_int(t, "K")?;
        scalar_i64(t, "K")?
    };
    let d = x.shape()[ax];
    if k < 0 || k as u64 > d as u64 {
        kbail!("k = {k} must be between 0 and the size of axis {ax} ({d})");
    }
    let largest = n.attr_i("largest", 1) != 0;
    dispatch!(x, a => top_k_t(a, ax, k as usize, largest))
}

pub(super) fn register(r: &mut KernelRegistry) {
    r.add("ArgMax", arg_max);
    r.add("ArgMin", arg_min);
    r.add("TopK", top_k);
}
