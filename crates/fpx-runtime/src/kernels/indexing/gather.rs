//! GatherElements, GatherND, ScatterElements and ScatterND.

use super::{index, require_int, Reduction, Res, Walk};
use crate::kernels::{alloc, arg, array, axis, row_major_strides, KernelRegistry};
use crate::{kbail, KernelError};
use fpx_ir::ndarray::ArrayD;
use fpx_ir::{dispatch, DType, Elem, Node, Tensor};

/// The data of an array in row-major order (borrowed when it already is).
fn data<T: Elem>(a: &ArrayD<T>) -> std::borrow::Cow<'_, [T]> {
    match a.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(a.iter().copied().collect()),
    }
}

/// The same element type for data and updates.
fn same_type<T: Elem>(updates: &Tensor) -> Result<&ArrayD<T>, KernelError> {
    match T::view(updates) {
        Some(u) => Ok(u),
        None => kbail!("updates are {} but data is {}", updates.dtype(), T::DTYPE),
    }
}

/// Checks the shapes of GatherElements/ScatterElements: indices of the data's rank, no longer
/// than the data along the other axes.
fn elements_axis(n: &Node, x: &Tensor, ind: &Tensor) -> Result<usize, KernelError> {
    require_int(ind, "indices")?;
    let (ds, is) = (x.shape(), ind.shape());
    if is.len() != ds.len() {
        kbail!("indices have rank {} but data has rank {}", is.len(), ds.len());
    }
    let ax = axis(n.attr_i("axis", 0), ds.len())?;
    if let Some(d) = (0..ds.len()).find(|&d| d != ax && is[d] > ds[d]) {
        kbail!("indices of shape {is:?} reach past data of shape {ds:?} along axis {d}");
    }
    Ok(ax)
}

fn gather_elements_t<T: Elem>(a: &ArrayD<T>, ax: usize, is: &[usize], idx: &[i64]) -> Result<Tensor, KernelError> {
    let ds = a.shape();
    let src = data(a);
    let mut st = row_major_strides(ds);
    let axis_stride = std::mem::replace(&mut st[ax], 0);
    let mut out = alloc::reserve::<T>(is)?;
    let mut walk = Walk::new(is, &st);
    for &k in idx {
        let j = index(k, ds[ax], &format!("axis {ax}"))?;
        out.push(src[walk.offset + j * axis_stride]);
        walk.advance();
    }
    Ok(Tensor::from(array(is, out)))
}

fn gather_elements(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let (x, ind) = (arg(i, 0)?, arg(i, 1)?);
    let ax = elements_axis(n, x, ind)?;
    let idx = ind.to_i64_vec();
    Ok(vec![dispatch!(x, a => gather_elements_t(a, ax, ind.shape(), &idx)?)])
}

fn scatter_elements_t<T: Elem>(
    a: &ArrayD<T>,
    ax: usize,
    is: &[usize],
    idx: &[i64],
    updates: &Tensor,
    r: Reduction,
) -> Result<Tensor, KernelError> {
    let ds = a.shape().to_vec();
    let upd = same_type::<T>(updates)?;
    if upd.shape() != is {
        kbail!("updates of shape {:?} must have the indices' shape {is:?}", upd.shape());
    }
    let mut out = alloc::collect(&ds, a.iter().copied())?;
    let mut st = row_major_strides(&ds);
    let axis_stride = std::mem::replace(&mut st[ax], 0);
    let mut walk = Walk::new(is, &st);
    for (&k, &u) in idx.iter().zip(upd.iter()) {
        let j = index(k, ds[ax], &format!("axis {ax}"))?;
        let o = &mut out[walk.offset + j * axis_stride];
        *o = r.apply(*o, u);
        walk.advance();
    }
    Ok(Tensor::from(array(&ds, out)))
}

fn scatter_elements(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let (x, ind, upd) = (arg(i, 0)?, arg(i, 1)?, arg(i, 2)?);
    let ax = elements_axis(n, x, ind)?;
    let r = Reduction::of(n)?;
    let idx = ind.to_i64_vec();
    Ok(vec![dispatch!(x, a => scatter_elements_t(a, ax, ind.shape(), &idx, upd, r)?)])
}

/// Where each index tuple of GatherND/ScatterND starts in the data: `m` indices (the indices'
/// last dimension) address the data's dimensions `b..b + m` after `b` batch dimensions.
struct TupleOffsets {
    /// The offset of each tuple's slice in the data, in the order of the tuples.
    offsets: Vec<usize>,
    /// The elements of one slice (`data.shape[b + m..]`).
    slice: usize,
}

fn tuple_offsets(ds: &[usize], is: &[usize], idx: &[i64], b: usize) -> Result<TupleOffsets, KernelError> {
    let (r, q) = (ds.len(), is.len());
    if q == 0 {
        kbail!("indices must have rank >= 1");
    }
    let m = is[q - 1];
    if m > r - b {
        kbail!("index tuples of length {m} address more than the {} data dimensions after the batch dimensions", r - b);
    }
    if ds[..b] != is[..b] {
        kbail!("batch dimensions differ: data {:?}, indices {:?}", &ds[..b], &is[..b]);
    }
    let st = row_major_strides(ds);
    let slice: usize = ds[b + m..].iter().product();
    // One batch of the data holds `ds[b..]`; each batch has the same number of tuples.
    let batch_len: usize = ds[b..].iter().product();
    let tuples = idx.len().checked_div(m).unwrap_or_else(|| is[..q - 1].iter().product());
    let batches: usize = ds[..b].iter().product();
    let per_batch = tuples.checked_div(batches).unwrap_or(0);
    alloc::check(DType::U64, &[tuples])?;
    let mut offsets = Vec::with_capacity(tuples);
    for t in 0..tuples {
        let mut off = t.checked_div(per_batch).unwrap_or(0) * batch_len;
        for (k, &v) in idx[t * m..(t + 1) * m].iter().enumerate() {
            off += index(v, ds[b + k], &format!("data dimension {}", b + k))? * st[b + k];
        }
        offsets.push(off);
    }
    Ok(TupleOffsets { offsets, slice })
}

fn gather_nd_t<T: Elem>(a: &ArrayD<T>, is: &[usize], idx: &[i64], b: usize) -> Result<Tensor, KernelError> {
    let ds = a.shape();
    let mut shape = is[..is.len() - 1].to_vec();
    shape.extend_from_slice(&ds[b + is[is.len() - 1]..]);
    // Checked before the offsets: the output bounds the work.
    let mut out = alloc::reserve::<T>(&shape)?;
    if alloc::check_t::<T>(&shape)? == 0 {
        return Ok(Tensor::from(array(&shape, out)));
    }
    let t = tuple_offsets(ds, is, idx, b)?;
    let src = data(a);
    for &off in &t.offsets {
        out.extend_from_slice(&src[off..off + t.slice]);
    }
    Ok(Tensor::from(array(&shape, out)))
}

fn gather_nd(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let (x, ind) = (arg(i, 0)?, arg(i, 1)?);
    require_int(ind, "indices")?;
    let (r, q) = (x.rank(), ind.rank());
    let b = n.attr_i("batch_dims", 0);
    if b < 0 || b as usize >= r.min(q) {
        kbail!("batch_dims {b} must be below the ranks of data ({r}) and indices ({q})");
    }
    let (b, is) = (b as usize, ind.shape());
    if is[q - 1] > r - b {
        kbail!("index tuples of length {} address more than the {} data dimensions after the batch dimensions", is[q - 1], r - b);
    }
    let idx = ind.to_i64_vec();
    Ok(vec![dispatch!(x, a => gather_nd_t(a, is, &idx, b)?)])
}

fn scatter_nd_t<T: Elem>(a: &ArrayD<T>, is: &[usize], idx: &[i64], updates: &Tensor, r: Reduction) -> Result<Tensor, KernelError> {
    let ds = a.shape().to_vec();
    let upd = same_type::<T>(updates)?;
    let m = is[is.len() - 1];
    if m > ds.len() {
        kbail!("index tuples of length {m} address more than the data's {} dimensions", ds.len());
    }
    let mut want = is[..is.len() - 1].to_vec();
    want.extend_from_slice(&ds[m..]);
    if upd.shape() != want.as_slice() {
        kbail!("updates have shape {:?}, expected {want:?} (indices {is:?}, data {ds:?})", upd.shape());
    }
    let mut out = alloc::collect(&ds, a.iter().copied())?;
    if upd.is_empty() {
        return Ok(Tensor::from(array(&ds, out)));
    }
    let t = tuple_offsets(&ds, is, idx, 0)?;
    let u = data(upd);
    for (chunk, &off) in u.chunks_exact(t.slice).zip(&t.offsets) {
        for (o, &v) in out[off..off + t.slice].iter_mut().zip(chunk) {
            *o = r.apply(*o, v);
        }
    }
    Ok(Tensor::from(array(&ds, out)))
}

fn scatter_nd(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let (x, ind, upd) = (arg(i, 0)?, arg(i, 1)?, arg(i, 2)?);
    require_int(ind, "indices")?;
    if ind.rank() == 0 {
        kbail!("indices must have rank >= 1");
    }
    let r = Reduction::of(n)?;
    let idx = ind.to_i64_vec();
    Ok(vec![dispatch!(x, a => scatter_nd_t(a, ind.shape(), &idx, upd, r)?)])
}

pub(super) fn register(r: &mut KernelRegistry) {
    r.add("GatherElements", gather_elements);
    r.add("GatherND", gather_nd);
    r.add("ScatterElements", scatter_elements);
    r.add("ScatterND", scatter_nd);
}
