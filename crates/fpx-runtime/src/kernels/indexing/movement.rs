//! Split, Tile and Trilu.

use super::{require_int, scalar_i64, Res};
use crate::kernels::{alloc, arg, array, axis, opt_arg, KernelRegistry};
use crate::{kbail, KernelError};
use fpx_ir::ndarray::ArrayD;
use fpx_ir::{dispatch, Elem, Node, Tensor};

/// The part sizes of a Split of a dimension of `dim` into `n` outputs: the `split` attribute
/// (before opset 13) or input (opset 1, and 13 on), else parts of `ceil(dim / n)` with a
/// smaller last one (`num_outputs`, opset 18, must then be `n`).
fn split_sizes(node: &Node, i: &[Option<&Tensor>], dim: usize, n: usize) -> Result<Vec<usize>, KernelError> {
    let given = match (node.attr_ints("split"), opt_arg(i, 1)) {
        (Some(_), Some(_)) => kbail!("split is given both as an attribute and as an input"),
        (Some(s), None) => Some(s.to_vec()),
        (None, Some(t)) => Some(t.to_i64_vec()),
        (None, None) => None,
    };
    let Some(s) = given else {
        if node.attrs.contains_key("num_outputs") && node.attr_i("num_outputs", 0) != n as i64 {
            kbail!("num_outputs is {} but the node has {n} outputs", node.attr_i("num_outputs", 0));
        }
        let chunk = dim.div_ceil(n.max(1));
        return match dim.checked_sub(chunk * n.saturating_sub(1)) {
            Some(last) if n > 0 => Ok((0..n).map(|k| if k + 1 == n { last } else { chunk }).collect()),
            _ => kbail!("a dimension of {dim} cannot be split into {n} parts"),
        };
    };
    if s.len() != n {
        kbail!("split {s:?} has {} parts but the node has {n} outputs", s.len());
    }
    if s.iter().any(|&p| p < 0) || s.iter().try_fold(0i64, |a, &p| a.checked_add(p)) != i64::try_from(dim).ok() {
        kbail!("split {s:?} does not divide a dimension of {dim}");
    }
    Ok(s.iter().map(|&p| p as usize).collect())
}

fn split_t<T: Elem>(a: &ArrayD<T>, ax: usize, sizes: &[usize]) -> Result<Vec<Tensor>, KernelError> {
    let shape = a.shape();
    let shapes: Vec<Vec<usize>> = sizes
        .iter()
        .map(|&p| {
            let mut s = shape.to_vec();
            s[ax] = p;
            s
        })
        .collect();
    let mut outs = shapes.iter().map(|s| alloc::reserve::<T>(s)).collect::<Result<Vec<_>, _>>()?;
    let inner: usize = shape[ax + 1..].iter().product();
    if a.is_empty() {
        return Ok(shapes.iter().zip(outs).map(|(s, v)| Tensor::from(array(s, v))).collect());
    }
    let a = a.as_standard_layout();
    let src = a.as_slice().expect("standard layout");
    // One row holds the whole split axis; each output takes its run of every row.
    for row in src.chunks_exact(shape[ax] * inner) {
        let mut at = 0;
        for (out, &p) in outs.iter_mut().zip(sizes) {
            out.extend_from_slice(&row[at..at + p * inner]);
            at += p * inner;
        }
    }
    Ok(shapes.iter().zip(outs).map(|(s, v)| Tensor::from(array(s, v))).collect())
}

fn split(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    let ax = axis(n.attr_i("axis", 0), x.rank())?;
    let sizes = split_sizes(n, i, x.shape()[ax], n.outputs.len())?;
    dispatch!(x, a => split_t(a, ax, &sizes))
}

fn tile_t<T: Elem>(a: &ArrayD<T>, reps: &[usize], shape: &[usize]) -> Result<Tensor, KernelError> {
    let mut out = alloc::reserve::<T>(shape)?;
    let total = alloc::check_t::<T>(shape)?;
    let src_shape = a.shape();
    let Some((&last, outer_dims)) = src_shape.split_last() else {
        out.extend(a.iter().copied());
        return Ok(Tensor::from(array(shape, out)));
    };
    if total == 0 {
        return Ok(Tensor::from(array(shape, out)));
    }
    let a = a.as_standard_layout();
    let src = a.as_slice().expect("standard layout");
    let st = crate::kernels::row_major_strides(src_shape);
    let out_outer = &shape[..shape.len() - 1];
    let mut walk = super::Walk::new(out_outer, &st[..st.len() - 1]);
    let rows: usize = out_outer.iter().product();
    for _ in 0..rows {
        // The source row of this output row: each output index modulo the source dimension.
        let off: usize = walk.idx.iter().zip(outer_dims).zip(&st).map(|((&k, &d), &s)| (k % d) * s).sum();
        let row = &src[off..off + last];
        for _ in 0..reps[reps.len() - 1] {
            out.extend_from_slice(row);
        }
        walk.advance();
    }
    Ok(Tensor::from(array(shape, out)))
}

fn tile(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    let reps: Vec<i64> = if n.opset < 6 {
        // Opset 1: `tiles` copies of the input along `axis`.
        let (tiles, ax) = (scalar_i64(arg(i, 1)?, "tiles")?, scalar_i64(arg(i, 2)?, "axis")?);
        let ax = axis(ax, x.rank())?;
        (0..x.rank()).map(|k| if k == ax { tiles } else { 1 }).collect()
    } else {
        if opt_arg(i, 2).is_some() {
            kbail!("Tile takes 2 inputs from opset 6 on");
        }
        let r = arg(i, 1)?;
        require_int(r, "repeats")?;
        r.to_i64_vec()
    };
    if reps.len() != x.rank() {
        kbail!("repeats {reps:?} must have one entry per dimension of the input {:?}", x.shape());
    }
    if reps.iter().any(|&r| r < 0) {
        kbail!("repeats {reps:?} has a negative entry");
    }
    let reps: Vec<usize> = reps.iter().map(|&r| r as usize).collect();
    let mut shape = Vec::with_capacity(reps.len());
    for (&d, &r) in x.shape().iter().zip(&reps) {
        match d.checked_mul(r) {
            Some(v) => shape.push(v),
            None => kbail!("tiling {:?} by {reps:?} overflows", x.shape()),
        }
    }
    Ok(vec![dispatch!(x, a => tile_t(a, &reps, &shape)?)])
}

fn trilu_t<T: Elem>(a: &ArrayD<T>, upper: bool, k: i64) -> Result<Tensor, KernelError> {
    let shape = a.shape().to_vec();
    let (rows, cols) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    let mut out = alloc::collect(&shape, a.iter().copied())?;
    if cols > 0 {
        for (r, row) in out.chunks_exact_mut(cols).enumerate() {
            let i = (r % rows.max(1)) as i64;
            for (j, v) in row.iter_mut().enumerate() {
                let keep = if upper { j as i64 - i >= k } else { j as i64 - i <= k };
                if !keep {
                    *v = T::default();
                }
            }
        }
    }
    Ok(Tensor::from(array(&shape, out)))
}

fn trilu(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    if x.rank() < 2 {
        kbail!("input must have rank >= 2, has {}", x.rank());
    }
    let k = match opt_arg(i, 1) {
        Some(t) => {
            require_int(t, "k")?;
            scalar_i64(t, "k")?
        }
        None => 0,
    };
    let upper = n.attr_i("upper", 1) != 0;
    Ok(vec![dispatch!(x, a => trilu_t(a, upper, k)?)])
}

pub(super) fn register(r: &mut KernelRegistry) {
    r.add("Split", split);
    r.add("Tile", tile);
    r.add("Trilu", trilu);
}
