//! Data-movement kernels: reshapes, transposes, gathers, slices, concatenation, shape queries.

use super::{alloc, arg, array, axis, broadcast_shape, fast, opt_arg, with_owned, KernelRegistry};
use crate::{kbail, KernelError};
use fpx_ir::ndarray::{ArrayD, ArrayViewD, IxDyn, Slice};
use fpx_ir::shape::merge_dims;
use fpx_ir::{dispatch, Attribute, Elem, Node, Tensor};

type Res = Result<Vec<Tensor>, KernelError>;

/// The element count of a shape that only describes data (a reshape target): an error when it
/// overflows. Shapes of new data are checked by the tensor budget ([`alloc`]).
fn checked_len(shape: &[usize]) -> Result<usize, KernelError> {
    match shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) {
        Some(n) => Ok(n),
        None => kbail!("shape {shape:?} is too large"),
    }
}

fn reshape_to(t: &Tensor, shape: &[usize]) -> Result<Tensor, KernelError> {
    match t.reshape(shape) {
        Some(r) => Ok(r),
        None => kbail!("cannot reshape a tensor of shape {:?} ({} elements) to {:?}", t.shape(), t.len(), shape),
    }
}

/// An owned array in a new shape of the same length: no copy when it is in standard layout.
fn into_shape<T: Elem>(a: ArrayD<T>, shape: &[usize]) -> ArrayD<T> {
    let a = if a.is_standard_layout() { a } else { a.as_standard_layout().into_owned() };
    a.into_shape_with_order(IxDyn(shape)).expect("length checked, standard layout")
}

/// Like [`reshape_to`], reusing the owned tensor's buffer.
fn reshape_owned_to(t: Tensor, shape: &[usize]) -> Result<Tensor, KernelError> {
    if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(t.len()) {
        kbail!("cannot reshape a tensor of shape {:?} ({} elements) to {:?}", t.shape(), t.len(), shape);
    }
    Ok(dispatch!(t, a => Tensor::from(into_shape(a, shape))))
}

/// Defines the by-value variant `$owned` of a reshaping kernel `$name` whose output shape
/// `$dims(node, inputs, input shape, input length)` computes.
macro_rules! reshape_kernel {
    ($name:ident, $owned:ident, $dims:ident) => {
        fn $name(n: &Node, i: &[Option<&Tensor>]) -> Res {
            let x = arg(i, 0)?;
            let out = $dims(n, i, x.shape(), x.len())?;
            Ok(vec![reshape_to(x, &out)?])
        }

        fn $owned(n: &Node, i: &[Option<&Tensor>], slot: usize, t: Tensor) -> Res {
            if slot != 0 {
                return $name(n, &with_owned(i, slot, &t));
            }
            let out = $dims(n, i, t.shape(), t.len())?;
            Ok(vec![reshape_owned_to(t, &out)?])
        }
    };
}

reshape_kernel!(reshape, reshape_owned, reshape_dims);
reshape_kernel!(flatten, flatten_owned, flatten_dims);
reshape_kernel!(squeeze, squeeze_owned, squeeze_dims);
reshape_kernel!(unsqueeze, unsqueeze_owned, unsqueeze_dims);

fn reshape_dims(n: &Node, i: &[Option<&Tensor>], shape: &[usize], len: usize) -> Result<Vec<usize>, KernelError> {
    let s = arg(i, 1)?.to_i64_vec();
    let allowzero = n.attr_i("allowzero", 0) != 0;
    let mut out = Vec::with_capacity(s.len());
    let mut infer = None;
    for (k, &d) in s.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(k);
                out.push(1);
            }
            -1 => kbail!("target shape {s:?} has more than one -1"),
            0 if !allowzero => match shape.get(k) {
                Some(&v) => out.push(v),
                None => kbail!("target shape {s:?} copies dimension {k} (0) but the input has rank {}", shape.len()),
            },
            d if d < 0 => kbail!("target shape {s:?} has a negative dimension"),
            d => out.push(d as usize),
        }
    }
    if let Some(k) = infer {
        let known = checked_len(&out)?;
        if known == 0 || !len.is_multiple_of(known) {
            kbail!("cannot reshape {shape:?} ({len} elements) to {s:?}");
        }
        out[k] = len / known;
    }
    Ok(out)
}

fn flatten_dims(n: &Node, _: &[Option<&Tensor>], shape: &[usize], _: usize) -> Result<Vec<usize>, KernelError> {
    let rank = shape.len();
    let a = n.attr_i("axis", 1);
    let a = if a < 0 { a + rank as i64 } else { a };
    if !(0..=rank as i64).contains(&a) {
        kbail!("axis {} out of range for rank {rank}", n.attr_i("axis", 1));
    }
    let outer: usize = shape[..a as usize].iter().product();
    let inner: usize = shape[a as usize..].iter().product();
    Ok(vec![outer, inner])
}

fn axes_of(n: &Node, i: &[Option<&Tensor>], slot: usize) -> Option<Vec<i64>> {
    n.attr_ints("axes").map(|a| a.to_vec()).or_else(|| opt_arg(i, slot).map(|t| t.to_i64_vec()))
}

fn squeeze_dims(n: &Node, i: &[Option<&Tensor>], shape: &[usize], _: usize) -> Result<Vec<usize>, KernelError> {
    Ok(match axes_of(n, i, 1) {
        None => shape.iter().copied().filter(|&d| d != 1).collect(),
        Some(ax) => {
            let idx: Vec<usize> = ax.iter().map(|&a| axis(a, shape.len())).collect::<Result<_, _>>()?;
            for &k in &idx {
                if shape[k] != 1 {
                    kbail!("cannot squeeze axis {k} of shape {shape:?}: its size is not 1");
                }
            }
            shape.iter().enumerate().filter(|(k, _)| !idx.contains(k)).map(|(_, &d)| d).collect()
        }
    })
}

fn unsqueeze_dims(n: &Node, i: &[Option<&Tensor>], shape: &[usize], _: usize) -> Result<Vec<usize>, KernelError> {
    let Some(ax) = axes_of(n, i, 1) else { kbail!("axes are required") };
    let rank = shape.len() + ax.len();
    let mut idx: Vec<usize> = ax.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?;
    idx.sort_unstable();
    if idx.windows(2).any(|w| w[0] == w[1]) {
        kbail!("axes {ax:?} repeat an axis");
    }
    let mut src = shape.iter();
    Ok((0..rank).map(|k| if idx.contains(&k) { 1 } else { *src.next().unwrap_or(&1) }).collect())
}

/// The elements of a row-major array of `shape` with its axes permuted by `perm`, in
/// row-major order: contiguous runs copied whole, dimensions that stay adjacent merged, rows
/// split across threads when large.
fn permute<T: Elem>(src: &[T], shape: &[usize], perm: &[usize]) -> Result<Vec<T>, KernelError> {
    let st = super::row_major_strides(shape);
    // Output dimensions, innermost first, as (size, [stride in the source]), adjacent ones merged.
    let dims = merge_dims(perm.iter().rev().map(|&p| (shape[p], [st[p]])));
    let n: usize = shape.iter().product();
    let Some(&(inner, [istride])) = dims.first() else { return alloc::collect(shape, src.iter().copied()) };
    if n == 0 {
        return Ok(Vec::new());
    }
    // The other dimensions, outermost first, as (size, stride in the source).
    let outer: Vec<(usize, usize)> = dims[1..].iter().rev().map(|&(size, [stride])| (size, stride)).collect();
    let fill = |row0: usize, out: &mut [T]| {
        let nd = outer.len();
        let mut idx = vec![0usize; nd];
        let (mut off, mut rest) = (0usize, row0);
        for d in (0..nd).rev() {
            idx[d] = rest % outer[d].0;
            rest /= outer[d].0;
            off += idx[d] * outer[d].1;
        }
        for row in out.chunks_exact_mut(inner) {
            if istride == 1 {
                row.copy_from_slice(&src[off..off + inner]);
            } else {
                for (o, &v) in row.iter_mut().zip(src[off..].iter().step_by(istride)) {
                    *o = v;
                }
            }
            for d in (0..nd).rev() {
                idx[d] += 1;
                off += outer[d].1;
                if idx[d] < outer[d].0 {
                    break;
                }
                idx[d] = 0;
                off -= outer[d].0 * outer[d].1;
            }
        }
    };
    let mut out = alloc::filled(shape, T::default())?;
    fast::for_row_chunks(&mut out, inner, fill);
    Ok(out)
}

fn transpose(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    let r = x.rank();
    let perm: Vec<usize> = match n.attr_ints("perm") {
        Some(p) => p.iter().map(|&a| axis(a, r)).collect::<Result<_, _>>()?,
        None => (0..r).rev().collect(),
    };
    let mut seen = vec![false; r];
    if perm.len() != r || perm.iter().any(|&p| std::mem::replace(&mut seen[p], true)) {
        kbail!("perm {:?} is not a permutation of the {r} axes", n.attr_ints("perm"));
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    Ok(vec![dispatch!(x, a => match a.as_slice() {
        Some(s) => Tensor::from(array(&out_shape, permute(s, a.shape(), &perm)?)),
        None => Tensor::from(a.view().permuted_axes(IxDyn(&perm)).as_standard_layout().into_owned()),
    })])
}

fn gather_t<T: Elem>(a: &ArrayD<T>, ax: usize, idx: &[usize], idx_shape: &[usize]) -> Result<Tensor, KernelError> {
    let s = a.shape();
    let mut shape = s[..ax].to_vec();
    shape.extend_from_slice(idx_shape);
    shape.extend_from_slice(&s[ax + 1..]);
    // Checked before anything is copied: a few indices over a wide table make a large output.
    let mut out = alloc::reserve::<T>(&shape)?;
    let a = a.as_standard_layout();
    let outer: usize = s[..ax].iter().product();
    let inner: usize = s[ax + 1..].iter().product();
    let dim = s[ax];
    let data = a.as_slice().expect("standard layout");
    for o in 0..outer {
        for &k in idx {
            let base = (o * dim + k) * inner;
            out.extend_from_slice(&data[base..base + inner]);
        }
    }
    Ok(Tensor::from(array(&shape, out)))
}

fn gather(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let (x, ind) = (arg(i, 0)?, arg(i, 1)?);
    if !ind.dtype().is_int() {
        kbail!("indices must be integers, got {}", ind.dtype());
    }
    let ax = axis(n.attr_i("axis", 0), x.rank())?;
    let dim = x.shape()[ax] as i64;
    let idx: Vec<usize> = ind
        .to_i64_vec()
        .into_iter()
        .map(|k| {
            let j = if k < 0 { k + dim } else { k };
            if (0..dim).contains(&j) {
                Ok(j as usize)
            } else {
                Err(KernelError(format!("index {k} is out of range for axis {ax} of size {dim}")))
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(vec![dispatch!(x, a => gather_t(a, ax, &idx, ind.shape())?)])
}

fn concat_t<T: Elem>(first: &ArrayD<T>, all: &[&Tensor], ax: usize) -> Result<Tensor, KernelError> {
    // The output's size, checked before it is allocated.
    let total = all.iter().try_fold(0usize, |acc, t| acc.checked_add(*t.shape().get(ax).unwrap_or(&0)));
    let mut shape = first.shape().to_vec();
    shape[ax] = total.unwrap_or(usize::MAX);
    if total.is_none() {
        kbail!("concatenated axis {ax} overflows");
    }
    alloc::check_t::<T>(&shape)?;
    let mut views: Vec<ArrayViewD<T>> = vec![first.view()];
    for t in &all[1..] {
        match T::view(t) {
            Some(a) => views.push(a.view()),
            None => kbail!("inputs have different element types ({} and {})", T::DTYPE, t.dtype()),
        }
    }
    let same_other_axes =
        views.iter().all(|v| v.ndim() == shape.len() && v.shape().iter().zip(&shape).enumerate().all(|(k, (a, b))| k == ax || a == b));
    if !same_other_axes {
        kbail!("cannot concatenate shapes {:?} on axis {ax}", all.iter().map(|t| t.shape().to_vec()).collect::<Vec<_>>());
    }
    // Row-major: for each index before the axis, each input's slab (its length along the axis
    // times everything after it) is one contiguous run of the output, copied as a block.
    let inner: usize = shape[ax + 1..].iter().product();
    let outer: usize = shape[..ax].iter().product();
    let parts: Vec<std::borrow::Cow<'_, [T]>> = views
        .iter()
        .map(|v| match v.as_slice() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(v.iter().cloned().collect()),
        })
        .collect();
    let mut out: Vec<T> = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for (p, v) in parts.iter().zip(&views) {
            let slab = v.shape()[ax] * inner;
            out.extend_from_slice(&p[o * slab..(o + 1) * slab]);
        }
    }
    Ok(Tensor::from(array(&shape, out)))
}

pub(super) fn concat(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let all: Vec<&Tensor> = (0..i.len()).map(|k| arg(i, k)).collect::<Result<_, _>>()?;
    let ax = axis(n.attr_i("axis", 0), all[0].rank())?;
    Ok(vec![dispatch!(all[0], a => concat_t(a, &all, ax)?)])
}

/// ONNX Slice bounds for one axis, as an ndarray `Slice`.
fn slice_for(dim: usize, start: i64, end: i64, step: i64) -> Slice {
    let d = dim as i64;
    let norm = |v: i64| if v < 0 { v + d } else { v };
    if step > 0 {
        let s = norm(start).clamp(0, d);
        let e = norm(end).clamp(0, d);
        Slice::new(s as isize, Some(e.max(s) as isize), step as isize)
    } else {
        let s = norm(start).clamp(-1, d - 1);
        let e = norm(end).clamp(-1, d - 1);
        // Elements s, s+step, ... > e: the range (e, s] walked from its end.
        let (lo, hi) = (e + 1, (s + 1).max(e + 1));
        Slice::new(lo as isize, Some(hi as isize), step as isize)
    }
}

fn slice(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    let r = x.rank();
    let (starts, ends, axes, steps) = if n.opset < 10 {
        let st = n.attr_ints("starts").unwrap_or_default().to_vec();
        let en = n.attr_ints("ends").unwrap_or_default().to_vec();
        let ax = n.attr_ints("axes").map(|a| a.to_vec()).unwrap_or_else(|| (0..st.len() as i64).collect());
        let sp = vec![1; st.len()];
        (st, en, ax, sp)
    } else {
        let st = arg(i, 1)?.to_i64_vec();
        let en = arg(i, 2)?.to_i64_vec();
        let ax = opt_arg(i, 3).map(|t| t.to_i64_vec()).unwrap_or_else(|| (0..st.len() as i64).collect());
        let sp = opt_arg(i, 4).map(|t| t.to_i64_vec()).unwrap_or_else(|| vec![1; st.len()]);
        (st, en, ax, sp)
    };
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        kbail!(
            "starts, ends, axes and steps must have the same length ({}, {}, {}, {})",
            starts.len(),
            ends.len(),
            axes.len(),
            steps.len()
        );
    }
    let mut per_axis: Vec<Option<(i64, i64, i64)>> = vec![None; r];
    for k in 0..starts.len() {
        let a = axis(axes[k], r)?;
        if steps[k] == 0 {
            kbail!("slice step must not be 0");
        }
        if per_axis[a].replace((starts[k], ends[k], steps[k])).is_some() {
            kbail!("axis {a} is sliced twice");
        }
    }
    let shape = x.shape().to_vec();
    Ok(vec![dispatch!(x, a => {
        let v = a.slice_each_axis(|ad| match per_axis[ad.axis.index()] {
            Some((s, e, st)) => slice_for(shape[ad.axis.index()], s, e, st),
            None => Slice::from(..),
        });
        Tensor::from(v.as_standard_layout().into_owned())
    })])
}

fn expand(_: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    let target = arg(i, 1)?.to_i64_vec();
    if target.iter().any(|&d| d < 0) {
        kbail!("target shape {target:?} has a negative dimension");
    }
    let t: Vec<usize> = target.iter().map(|&d| d as usize).collect();
    let shape = broadcast_shape(&[x.shape(), &t])?;
    Ok(vec![dispatch!(x, a => {
        // Reserved first: only a shape within the budget is handed to ndarray.
        let mut v = alloc::reserve(&shape)?;
        expand_into(&a.as_standard_layout().view(), &shape, &mut v);
        Tensor::from(array(&shape, v))
    })])
}

/// Appends `a` broadcast to `shape` (which it broadcasts to) to `out`, by blocks: the trailing
/// dimensions `a` has in full are copied as one slice per outer index (GQA's `repeat_kv` copies
/// whole [sequence, head] blocks), trailing broadcast dimensions repeat one element as a fill.
fn expand_into<T: Elem>(a: &ArrayViewD<T>, shape: &[usize], out: &mut Vec<T>) {
    let src = a.as_slice().expect("standard layout");
    let rank = shape.len();
    let mut dims = vec![1usize; rank - a.ndim()];
    dims.extend_from_slice(a.shape());
    if shape.contains(&0) {
        return;
    }
    // Source strides (0 along broadcast axes).
    let mut strides = vec![0usize; rank];
    let mut step = 1;
    for j in (0..rank).rev() {
        strides[j] = if dims[j] == 1 && shape[j] != 1 { 0 } else { step };
        step *= dims[j];
    }
    // Trailing axes copied whole, else trailing axes filled from one element.
    let copied = (0..rank).rev().take_while(|&j| dims[j] == shape[j]).count();
    let filled = if copied == 0 { (0..rank).rev().take_while(|&j| dims[j] == 1).count() } else { 0 };
    let block: usize = shape[rank - copied - filled..].iter().product();
    let outer = rank - copied - filled;
    let mut index = vec![0usize; outer];
    let mut offset = 0usize;
    loop {
        if copied > 0 {
            out.extend_from_slice(&src[offset..offset + block]);
        } else {
            out.extend(std::iter::repeat_n(src[offset], block));
        }
        // Odometer over the outer axes, keeping the source offset in step.
        let mut j = outer;
        loop {
            if j == 0 {
                return;
            }
            j -= 1;
            index[j] += 1;
            offset += strides[j];
            if index[j] < shape[j] {
                break;
            }
            offset -= strides[j] * index[j];
            index[j] = 0;
        }
    }
}

fn shape(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    let r = x.rank() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (s, e) = (clamp(n.attr_i("start", 0)), clamp(n.attr_i("end", r)));
    let dims: Vec<i64> = x.shape()[s..e.max(s)].iter().map(|&d| d as i64).collect();
    Ok(vec![Tensor::vec_i64(dims)])
}

fn constant_of_shape(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let dims = arg(i, 0)?.to_i64_vec();
    if dims.iter().any(|&d| d < 0) {
        kbail!("shape {dims:?} has a negative dimension");
    }
    let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    let value = n.attr_tensor("value").cloned().unwrap_or_else(|| Tensor::scalar_f32(0.0));
    if value.len() != 1 {
        kbail!("value must hold exactly one element, has {}", value.len());
    }
    Ok(vec![dispatch!(&value, a => Tensor::from(alloc::full(&shape, *a.iter().next().expect("one element"))?))])
}

fn range(_: &Node, i: &[Option<&Tensor>]) -> Res {
    let (s, l, d) = (arg(i, 0)?, arg(i, 1)?, arg(i, 2)?);
    if s.len() != 1 || l.len() != 1 || d.len() != 1 {
        kbail!("start, limit and delta must be scalars");
    }
    let (start, limit, delta) = (s.to_f64_vec()[0], l.to_f64_vec()[0], d.to_f64_vec()[0]);
    if delta == 0.0 {
        kbail!("delta must not be 0");
    }
    let count = ((limit - start) / delta).ceil().max(0.0);
    if !count.is_finite() || count >= usize::MAX as f64 {
        kbail!("range({start}, {limit}, {delta}) is too long");
    }
    let count = count as usize;
    // Built as int64 or f64, then cast: both sizes within the budget.
    alloc::check(s.dtype(), &[count])?;
    Ok(vec![if s.dtype().is_int() {
        let (st, dl) = (s.to_i64_vec()[0], d.to_i64_vec()[0]);
        let v = alloc::collect(&[count], (0..count as i64).map(|k| st.wrapping_add(k.wrapping_mul(dl))))?;
        Tensor::from(array(&[count], v)).cast(s.dtype())
    } else {
        Tensor::from(array(&[count], alloc::collect(&[count], (0..count).map(|k| start + k as f64 * delta))?)).cast(s.dtype())
    }])
}

fn constant(n: &Node, _: &[Option<&Tensor>]) -> Res {
    let t = match n.attrs.values().next() {
        Some(Attribute::Tensor(t)) => t.clone(),
        Some(Attribute::Float(v)) => Tensor::scalar_f32(*v),
        Some(Attribute::Floats(v)) => Tensor::from(array(&[v.len()], v.clone())),
        Some(Attribute::Int(v)) => Tensor::from(ArrayD::from_elem(IxDyn(&[]), *v)),
        Some(Attribute::Ints(v)) => Tensor::vec_i64(v.clone()),
        _ => kbail!("Constant needs one of value, value_float(s), value_int(s)"),
    };
    Ok(vec![t])
}

pub(super) fn register(r: &mut KernelRegistry) {
    let table: &[(&str, super::KernelFn)] = &[
        ("Reshape", reshape),
        ("Flatten", flatten),
        ("Squeeze", squeeze),
        ("Unsqueeze", unsqueeze),
        ("Transpose", transpose),
        ("Gather", gather),
        ("Concat", concat),
        ("Slice", slice),
        ("Expand", expand),
        ("Shape", shape),
        ("ConstantOfShape", constant_of_shape),
        ("Range", range),
        ("Constant", constant),
    ];
    for (op, k) in table {
        r.add(op, *k);
    }
    r.add_owned("Reshape", reshape_owned);
    r.add_owned("Flatten", flatten_owned);
    r.add_owned("Squeeze", squeeze_owned);
    r.add_owned("Unsqueeze", unsqueeze_owned);
}

#[cfg(test)]
mod tests {
    use super::{concat_t, expand_into};
    use fpx_ir::ndarray::{ArrayD, IxDyn};
    use fpx_ir::Tensor;
    use fpx_test_support::Rng;

    #[test]
    fn block_expand_equals_ndarray_broadcast_on_random_shapes() {
        let mut rng = Rng::new(77);
        for case in 0..500 {
            let rank = rng.below(5);
            let out: Vec<usize> = (0..rank).map(|_| 1 + rng.below(4)).collect();
            // The input: a suffix of the output's rank, each axis either in full or 1.
            let drop = rng.below(rank + 1);
            let input: Vec<usize> = out[drop..].iter().map(|&d| if rng.below(2) == 0 { 1 } else { d }).collect();
            let n: usize = input.iter().product();
            let a = ArrayD::from_shape_vec(IxDyn(&input), (0..n as i64).collect::<Vec<i64>>()).unwrap();
            let want: Vec<i64> = a.broadcast(IxDyn(&out)).unwrap().iter().copied().collect();
            let mut got = Vec::new();
            expand_into(&a.view(), &out, &mut got);
            assert_eq!(got, want, "case {case}: {input:?} -> {out:?}");
        }
        // GQA's repeat_kv: [1, 2, 1, 5, 3] -> [1, 2, 4, 5, 3] copies whole [5, 3] blocks.
        let a = ArrayD::from_shape_vec(IxDyn(&[1, 2, 1, 5, 3]), (0..30).collect::<Vec<i64>>()).unwrap();
        let mut got = Vec::new();
        expand_into(&a.view(), &[1, 2, 4, 5, 3], &mut got);
        assert_eq!(got, a.broadcast(IxDyn(&[1, 2, 4, 5, 3])).unwrap().iter().copied().collect::<Vec<_>>());
        // Empty outputs write nothing.
        let mut none = Vec::new();
        expand_into(&a.view(), &[1, 2, 0, 5, 3], &mut none);
        assert!(none.is_empty());
    }

    /// Concat's block copies equal ndarray's `concatenate` (an independent implementation) on
    /// every axis of random rank-1..4 shapes, with a transposed (non-standard) input and an
    /// empty one among them.
    #[test]
    fn concat_blocks_match_ndarray_concatenate() {
        use fpx_ir::ndarray::{concatenate, Axis};
        let mut rng = Rng::new(31);
        for rank in 1..=4usize {
            for ax in 0..rank {
                for case in 0..4 {
                    let base: Vec<usize> = (0..rank).map(|_| 1 + rng.below(4)).collect();
                    let parts: Vec<ArrayD<f32>> = (0..3)
                        .map(|p| {
                            let mut sh = base.clone();
                            sh[ax] = if case == 3 && p == 1 { 0 } else { 1 + rng.below(3) };
                            let n: usize = sh.iter().product();
                            let a = ArrayD::from_shape_vec(IxDyn(&sh), rng.signeds(n)).unwrap();
                            if p == 2 && rank > 1 {
                                // The same values held transposed, viewed back in logical order.
                                let rev: Vec<usize> = (0..rank).rev().collect();
                                let t = a.clone().permuted_axes(IxDyn(&rev)).as_standard_layout().into_owned();
                                t.permuted_axes(IxDyn(&rev))
                            } else {
                                a
                            }
                        })
                        .collect();
                    let tensors: Vec<Tensor> = parts.iter().map(|a| Tensor::from(a.clone())).collect();
                    let refs: Vec<&Tensor> = tensors.iter().collect();
                    let got = concat_t(&parts[0], &refs, ax).unwrap();
                    let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
                    let want = concatenate(Axis(ax), &views).unwrap();
                    assert_eq!(got.shape(), want.shape(), "rank {rank} axis {ax}");
                    assert_eq!(got.to_f64_vec(), want.iter().map(|&v| v as f64).collect::<Vec<_>>(), "rank {rank} axis {ax}");
                }
            }
        }
    }
}
