//! Normalizations and reductions: Softmax, LayerNormalization, Reduce*, CumSum.

use super::{alloc, arg, array, axis, bad_type, f32_slice, fast, opt_arg, with_owned, KernelRegistry};
use crate::{kbail, KernelError};
use fpx_ir::ndarray::{ArrayD, IxDyn};
use fpx_ir::{dispatch, DType, Elem, Node, Tensor};

type Res = Result<Vec<Tensor>, KernelError>;

/// Values as f64 in standard order, plus the shape.
fn f64_data(t: &Tensor) -> (Vec<f64>, Vec<usize>) {
    (t.to_f64_vec(), t.shape().to_vec())
}

/// f64 results back into the element type of `like`.
fn back(like: DType, shape: &[usize], v: Vec<f64>) -> Tensor {
    Tensor::from(array(shape, v)).cast(like)
}

fn require_float(t: &Tensor) -> Result<(), KernelError> {
    if t.dtype().is_float() {
        Ok(())
    } else {
        Err(bad_type(t))
    }
}

/// Softmax's reduction as (outer, len, inner): rows of `len` elements `inner` apart.
fn softmax_layout(n: &Node, shape: &[usize]) -> Result<(usize, usize, usize), KernelError> {
    let r = shape.len();
    let default_axis = if n.opset < 13 { 1 } else { -1 };
    let a = if r == 0 { 0 } else { axis(n.attr_i("axis", default_axis), r)? };
    // Before opset 13 the input is coerced to 2-D at `axis`; from 13 on only `axis` is reduced.
    Ok(if n.opset < 13 {
        (shape[..a].iter().product::<usize>(), shape[a..].iter().product::<usize>(), 1)
    } else if r == 0 {
        (1, 1, 1)
    } else {
        (shape[..a].iter().product(), shape[a], shape[a + 1..].iter().product())
    })
}

fn softmax(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    require_float(x)?;
    let (outer, len, inner) = softmax_layout(n, x.shape())?;
    if let (Some(src), 1) = (f32_slice(x), inner) {
        let mut out = vec![0f32; src.len()];
        fast::softmax(len, Some(src), &mut out);
        return Ok(vec![Tensor::from(array(x.shape(), out))]);
    }
    let (mut v, shape) = f64_data(x);
    for o in 0..outer {
        for k in 0..inner {
            let idx = |j: usize| (o * len + j) * inner + k;
            let m = (0..len).map(|j| v[idx(j)]).fold(f64::NEG_INFINITY, f64::max);
            let mut sum = 0.0;
            for j in 0..len {
                let e = (v[idx(j)] - m).exp();
                v[idx(j)] = e;
                sum += e;
            }
            for j in 0..len {
                v[idx(j)] /= sum;
            }
        }
    }
    Ok(vec![back(x.dtype(), &shape, v)])
}

fn softmax_owned(n: &Node, i: &[Option<&Tensor>], slot: usize, t: Tensor) -> Res {
    match (slot, t) {
        (0, Tensor::F32(mut a)) => {
            let (_, len, inner) = softmax_layout(n, a.shape())?;
            if let (Some(buf), 1) = (a.as_slice_mut(), inner) {
                fast::softmax(len, None, buf);
                return Ok(vec![Tensor::F32(a)]);
            }
            softmax(n, &with_owned(i, slot, &Tensor::F32(a)))
        }
        (_, t) => softmax(n, &with_owned(i, slot, &t)),
    }
}

/// LayerNormalization's attributes and operands, checked against the input's shape.
struct LayerNormParams {
    /// The first normalized axis.
    a: usize,
    eps: f64,
    outer: usize,
    inner: usize,
    scale: Vec<f64>,
    bias: Vec<f64>,
}

/// A normalization's scale or bias `t` as f64 values over `norm_shape` (broadcast). A float
/// tensor that already has those values in order (the usual one-per-channel weight) is
/// converted straight from its slice: a decode step normalizes one row, and going through a
/// dynamic-rank broadcast iterator cost more than the row itself.
pub(crate) fn norm_param(t: &Tensor, norm_shape: &[usize], what: &str) -> Result<Vec<f64>, KernelError> {
    let significant = |s: &[usize]| s.iter().position(|&d| d != 1).map_or(0, |k| s.len() - k);
    let (ts, ns) = (t.shape(), norm_shape);
    if ts[ts.len() - significant(ts)..] == ns[ns.len() - significant(ns)..] {
        if let Some(v) = f32_slice(t) {
            return Ok(v.iter().map(|&x| x as f64).collect());
        }
    }
    match t.to_f64().broadcast(IxDyn(norm_shape)) {
        Some(b) => Ok(b.iter().copied().collect()),
        None => kbail!("{what} of shape {:?} does not broadcast to the normalized shape {norm_shape:?}", t.shape()),
    }
}

fn layer_norm_params(n: &Node, i: &[Option<&Tensor>], shape: &[usize]) -> Result<LayerNormParams, KernelError> {
    let a = axis(n.attr_i("axis", -1), shape.len())?;
    let eps = n.attr_f("epsilon", 1e-5) as f64;
    let norm_shape = &shape[a..];
    let inner: usize = norm_shape.iter().product();
    let outer: usize = shape[..a].iter().product();
    // An empty input can have a huge outer or normalized shape: the statistics (one per row)
    // and the scale and bias (over the normalized shape) are checked before they are made.
    alloc::check(DType::F64, &[outer])?;
    alloc::check(DType::F64, norm_shape)?;
    let expand = |t: &Tensor, what: &str| norm_param(t, norm_shape, what);
    let scale = expand(arg(i, 1)?, "scale")?;
    let bias = match opt_arg(i, 2) {
        Some(b) => expand(b, "bias")?,
        None => vec![0.0; inner],
    };
    Ok(LayerNormParams { a, eps, outer, inner, scale, bias })
}

/// The Mean and InvStdDev outputs (shape: the input's, 1 from the normalized axes on).
fn layer_norm_stats(n: &Node, shape: &[usize], a: usize, means: Tensor, inv_stds: Tensor) -> [Tensor; 2] {
    let stat_shape: Vec<usize> = shape.iter().enumerate().map(|(k, &d)| if k < a { d } else { 1 }).collect();
    let stash = fpx_ir::onnx_dtype(n.attr_i("stash_type", 1)).unwrap_or(DType::F32);
    let shaped = |t: Tensor| t.reshape(&stat_shape).expect("one value per row").cast(stash);
    [shaped(means), shaped(inv_stds)]
}

/// The f32 path: normalizes `src` into `out`, or `out` in place when `src` is `None`.
fn layer_norm_f32(n: &Node, p: &LayerNormParams, shape: &[usize], src: Option<&[f32]>, out: Tensor) -> Vec<Tensor> {
    let (mut means, mut invs) = (vec![0f64; p.outer], vec![0f64; p.outer]);
    let mut out = out;
    let Tensor::F32(a) = &mut out else { unreachable!("f32 output") };
    let rows = fast::LayerNormRows { inner: p.inner, eps: p.eps, scale: &p.scale, bias: &p.bias, center: true };
    fast::layer_norm(&rows, src, a.as_slice_mut().expect("standard layout"), &mut means, &mut invs);
    let [m, v] = layer_norm_stats(n, shape, p.a, Tensor::from(array(&[p.outer], means)), Tensor::from(array(&[p.outer], invs)));
    vec![out, m, v]
}

fn layer_norm(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    require_float(x)?;
    let shape = x.shape().to_vec();
    let p = layer_norm_params(n, i, &shape)?;
    if let (Some(src), true) = (f32_slice(x), p.inner > 0) {
        let out = Tensor::from(array(&shape, vec![0f32; src.len()]));
        return Ok(layer_norm_f32(n, &p, &shape, Some(src), out));
    }
    let (inner, outer) = (p.inner, p.outer);
    let v = x.to_f64_vec();
    let mut out = vec![0.0; v.len()];
    let mut means = Vec::with_capacity(outer);
    let mut inv_stds = Vec::with_capacity(outer);
    for o in 0..outer {
        let row = &v[o * inner..(o + 1) * inner];
        let mean = row.iter().sum::<f64>() / inner as f64;
        let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / inner as f64;
        let inv = 1.0 / (var + p.eps).sqrt();
        for (j, x) in row.iter().enumerate() {
            out[o * inner + j] = (x - mean) * inv * p.scale[j] + p.bias[j];
        }
        means.push(mean);
        inv_stds.push(inv);
    }
    let [m, s] = layer_norm_stats(n, &shape, p.a, Tensor::from(array(&[outer], means)), Tensor::from(array(&[outer], inv_stds)));
    Ok(vec![back(x.dtype(), &shape, out), m, s])
}

fn layer_norm_owned(n: &Node, i: &[Option<&Tensor>], slot: usize, t: Tensor) -> Res {
    let contiguous_f32 = matches!(&t, Tensor::F32(a) if a.is_standard_layout());
    if slot != 0 || !contiguous_f32 {
        return layer_norm(n, &with_owned(i, slot, &t));
    }
    let shape = t.shape().to_vec();
    let p = layer_norm_params(n, i, &shape)?;
    if p.inner == 0 {
        return layer_norm(n, &with_owned(i, slot, &t));
    }
    Ok(layer_norm_f32(n, &p, &shape, None, t))
}

/// How a reduction combines values.
#[derive(Clone, Copy)]
enum Reduce {
    Sum,
    Mean,
    Max,
    Min,
}

/// The reduced axes (sorted, deduplicated), or `None` for "no-op" (empty axes with noop_with_empty_axes).
fn reduce_axes(n: &Node, i: &[Option<&Tensor>], rank: usize) -> Result<Option<Vec<usize>>, KernelError> {
    let given = n.attr_ints("axes").map(|a| a.to_vec()).or_else(|| opt_arg(i, 1).map(|t| t.to_i64_vec()));
    let mut ax: Vec<usize> = match given {
        Some(a) if !a.is_empty() => a.iter().map(|&x| axis(x, rank)).collect::<Result<_, _>>()?,
        _ if n.attr_i("noop_with_empty_axes", 0) != 0 => return Ok(None),
        _ => (0..rank).collect(),
    };
    ax.sort_unstable();
    ax.dedup();
    Ok(Some(ax))
}

fn reduce_t<T: Elem>(a: &ArrayD<T>, axes: &[usize], keep: bool, how: Reduce) -> Tensor {
    let shape = a.shape().to_vec();
    let r = shape.len();
    // Move reduced axes last, then reduce contiguous runs.
    let mut perm: Vec<usize> = (0..r).filter(|k| !axes.contains(k)).collect();
    perm.extend_from_slice(axes);
    let moved = a.view().permuted_axes(IxDyn(&perm));
    let data: Vec<T> = moved.iter().copied().collect();
    let len: usize = axes.iter().map(|&k| shape[k]).product();
    let outer: usize = (0..r).filter(|k| !axes.contains(k)).map(|k| shape[k]).product();
    let float = T::DTYPE.is_float();
    let mut out = Vec::with_capacity(outer);
    for o in 0..outer {
        let run = &data[o * len..(o + 1) * len];
        let v = match how {
            Reduce::Sum | Reduce::Mean if float => {
                let s: f64 = run.iter().map(|x| x.to_f64()).sum();
                T::from_f64(if matches!(how, Reduce::Mean) { s / len as f64 } else { s })
            }
            Reduce::Sum | Reduce::Mean => {
                let s: i64 = run.iter().fold(0i64, |acc, x| acc.wrapping_add(x.to_i64()));
                T::from_i64(if matches!(how, Reduce::Mean) && len > 0 { s / len as i64 } else { s })
            }
            Reduce::Max | Reduce::Min => {
                let want_max = matches!(how, Reduce::Max);
                #[allow(clippy::eq_op)]
                let better = |p: T, q: T| {
                    if p != p {
                        p
                    } else if q != q || (want_max && q > p) || (!want_max && q < p) {
                        q
                    } else {
                        p
                    }
                };
                match run.iter().copied().reduce(better) {
                    Some(v) => v,
                    None if float => T::from_f64(if want_max { f64::NEG_INFINITY } else { f64::INFINITY }),
                    None => T::from_i64(if want_max { i64::MIN } else { i64::MAX }),
                }
            }
        };
        out.push(v);
    }
    let out_shape: Vec<usize> = (0..r).filter_map(|k| if axes.contains(&k) { keep.then_some(1) } else { Some(shape[k]) }).collect();
    Tensor::from(array(&out_shape, out))
}

fn reduce(n: &Node, i: &[Option<&Tensor>], how: Reduce) -> Res {
    let x = arg(i, 0)?;
    let Some(axes) = reduce_axes(n, i, x.rank())? else {
        return Ok(vec![x.clone()]);
    };
    let keep = n.attr_i("keepdims", 1) != 0;
    if matches!(how, Reduce::Sum | Reduce::Mean) && x.dtype() == DType::Bool {
        return Err(bad_type(x));
    }
    // Reducing an empty axis of an empty input can make an output larger than the input.
    let r = x.rank();
    let out_shape: Vec<usize> = (0..r).filter_map(|k| if axes.contains(&k) { keep.then_some(1) } else { Some(x.shape()[k]) }).collect();
    alloc::check(x.dtype(), &out_shape)?;
    // f32 sums over trailing axes: rows of contiguous values.
    if let (Some(src), Reduce::Sum | Reduce::Mean) = (f32_slice(x), how) {
        if axes.iter().enumerate().all(|(k, &a)| a == r - axes.len() + k) {
            let len: usize = x.shape()[r - axes.len()..].iter().product();
            let mean = matches!(how, Reduce::Mean);
            let v: Vec<f32> = if len == 0 {
                alloc::filled(&out_shape, if mean { f32::NAN } else { 0.0 })?
            } else {
                fast::row_sums(len, src).into_iter().map(|s| (if mean { s / len as f64 } else { s }) as f32).collect()
            };
            return Ok(vec![Tensor::from(array(&out_shape, v))]);
        }
    }
    Ok(vec![dispatch!(x, a => reduce_t(a, &axes, keep, how))])
}

fn reduce_sum(n: &Node, i: &[Option<&Tensor>]) -> Res {
    reduce(n, i, Reduce::Sum)
}

fn reduce_mean(n: &Node, i: &[Option<&Tensor>]) -> Res {
    reduce(n, i, Reduce::Mean)
}

fn reduce_max(n: &Node, i: &[Option<&Tensor>]) -> Res {
    reduce(n, i, Reduce::Max)
}

fn reduce_min(n: &Node, i: &[Option<&Tensor>]) -> Res {
    reduce(n, i, Reduce::Min)
}

fn cumsum_t<T: Elem>(a: &ArrayD<T>, ax: usize, exclusive: bool, reverse: bool) -> Tensor {
    let a = a.as_standard_layout();
    let s = a.shape().to_vec();
    let (outer, len, inner): (usize, usize, usize) = (s[..ax].iter().product(), s[ax], s[ax + 1..].iter().product());
    let src = a.as_slice().expect("standard layout");
    let mut out = vec![T::default(); src.len()];
    let float = T::DTYPE.is_float();
    for o in 0..outer {
        for k in 0..inner {
            let (mut accf, mut acci) = (0.0f64, 0i64);
            for step in 0..len {
                let j = if reverse { len - 1 - step } else { step };
                let idx = (o * len + j) * inner + k;
                let x = src[idx];
                if exclusive {
                    out[idx] = if float { T::from_f64(accf) } else { T::from_i64(acci) };
                }
                accf += x.to_f64();
                acci = acci.wrapping_add(x.to_i64());
                if !exclusive {
                    out[idx] = if float { T::from_f64(accf) } else { T::from_i64(acci) };
                }
            }
        }
    }
    Tensor::from(array(&s, out))
}

fn cumsum(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    let a = arg(i, 1)?.to_i64_vec();
    if a.len() != 1 {
        kbail!("axis must be a scalar");
    }
    if x.rank() == 0 || x.dtype() == DType::Bool {
        return Err(bad_type(x));
    }
    let ax = axis(a[0], x.rank())?;
    let (ex, rev) = (n.attr_i("exclusive", 0) != 0, n.attr_i("reverse", 0) != 0);
    Ok(vec![dispatch!(x, t => cumsum_t(t, ax, ex, rev))])
}

pub(super) fn register(r: &mut KernelRegistry) {
    let table: &[(&str, super::KernelFn)] = &[
        ("Softmax", softmax),
        ("LayerNormalization", layer_norm),
        ("ReduceSum", reduce_sum),
        ("ReduceMean", reduce_mean),
        ("ReduceMax", reduce_max),
        ("ReduceMin", reduce_min),
        ("CumSum", cumsum),
    ];
    for (op, k) in table {
        r.add(op, *k);
    }
    r.add_owned("Softmax", softmax_owned);
    r.add_owned("LayerNormalization", layer_norm_owned);
}
