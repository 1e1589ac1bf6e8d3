//! Shape and type inference for the indexing, data-movement and integer/elementwise ops
//! (Split, GatherND/Elements, ScatterND/Elements, Tile, Trilu, ArgMax/ArgMin, TopK, Einsum,
//! Dropout, IsNaN, IsInf, Sign, Mod). Sizes come from constant inputs where there are some;
//! what is not known stays unknown, and nothing is allocated from a declared size.

use super::einsum::Equation;
use super::{normalize_axis, InferCtx};
use crate::{DType, Dim, Result, TensorType};

type Out = Result<Vec<Option<TensorType>>>;

fn one(t: TensorType) -> Out {
    Ok(vec![Some(t)])
}

fn unknown() -> Out {
    Ok(vec![None])
}

/// The axis attribute `name` (default `default`) normalized for `rank`, or an error naming it.
fn axis_attr(ctx: &InferCtx, name: &str, default: i64, rank: usize) -> Result<usize> {
    let a = ctx.node.attr_i(name, default);
    normalize_axis(a, rank).ok_or_else(|| ctx.error(format!("{name} {a} is out of range for rank {rank}")))
}

/// `dims` with dimension `axis` replaced by `d`.
fn with_dim(dims: &[Dim], axis: usize, d: Dim) -> Vec<Dim> {
    let mut v = dims.to_vec();
    v[axis] = d;
    v
}

/// Inputs of float types only (IsNaN, IsInf, Dropout's data).
fn require_float(ctx: &InferCtx, t: &TensorType, what: &str) -> Result<()> {
    if t.dtype.is_float() {
        Ok(())
    } else {
        Err(ctx.error(format!("{what} must be a floating-point tensor, found {}", t.dtype)))
    }
}

/// Index inputs must hold integers.
fn require_int(ctx: &InferCtx, i: usize, what: &str) -> Result<()> {
    match ctx.input(i) {
        Some(t) if !t.dtype.is_int() => Err(ctx.error(format!("{what} must be an integer tensor, found {}", t.dtype))),
        _ => Ok(()),
    }
}

/// Data and updates of a scatter share one element type.
fn same_dtype(ctx: &InferCtx, a: usize, b: usize) -> Result<()> {
    if let (Some(x), Some(y)) = (ctx.input(a), ctx.input(b)) {
        if x.dtype != y.dtype {
            return Err(ctx.error(format!("input {a} is {} but input {b} is {}", x.dtype, y.dtype)));
        }
    }
    Ok(())
}

/// `IsNaN` / `IsInf`: bool of the input's shape; the input is floating-point.
pub fn float_predicate(ctx: &InferCtx) -> Out {
    let Some(t) = ctx.input(0) else {
        return one(TensorType::unranked(DType::Bool));
    };
    require_float(ctx, t, "X")?;
    one(TensorType { dtype: DType::Bool, shape: t.shape.clone() })
}

/// `Sign`: like the input, which is numeric.
pub fn sign(ctx: &InferCtx) -> Out {
    match ctx.input(0) {
        Some(t) if t.dtype == DType::Bool => Err(ctx.error("Sign does not take bool")),
        t => Ok(vec![t.cloned()]),
    }
}

/// `Mod`: numpy broadcasting of two numeric inputs of one type; floats need `fmod = 1`.
pub fn modulo(ctx: &InferCtx) -> Out {
    if let Some(t) = ctx.input(0) {
        if t.dtype == DType::Bool {
            return Err(ctx.error("Mod does not take bool"));
        }
        if t.dtype.is_float() && ctx.node.attr_i("fmod", 0) == 0 {
            return Err(ctx.error(format!("Mod of {} inputs needs fmod = 1", t.dtype)));
        }
    }
    super::infer::broadcast(ctx)
}

/// `Dropout`: the output like the data; the mask of the same shape, bool from opset 10 on
/// and of the data's type before.
pub fn dropout(ctx: &InferCtx) -> Out {
    let Some(t) = ctx.input(0) else {
        return Ok(vec![None, None]);
    };
    require_float(ctx, t, "data")?;
    let mask = if ctx.node.opset >= 10 { DType::Bool } else { t.dtype };
    Ok(vec![Some(t.clone()), Some(TensorType { dtype: mask, shape: t.shape.clone() })])
}

/// The part sizes of a `Split` of a dimension of size `dim` (`None`: unknown) into `n` outputs,
/// when they can be known: the `split` input (opset 1 and 13 on) or attribute (before 13),
/// else `num_outputs` (opset 18) or the output count, in parts of `ceil(dim / n)` with a
/// smaller last part.
fn split_sizes(ctx: &InferCtx, dim: Option<usize>, n: usize) -> Result<Option<Vec<usize>>> {
    let given = match ctx.node.attr_ints("split") {
        Some(s) => Some(s.to_vec()),
        None if ctx.node.inputs.get(1).copied().flatten().is_some() => match ctx.konst(1) {
            Some(t) => Some(t.to_i64_vec()),
            None => return Ok(None),
        },
        None => None,
    };
    if let Some(s) = given {
        if s.len() != n {
            return Err(ctx.error(format!("split {s:?} has {} parts but the node has {n} outputs", s.len())));
        }
        if s.iter().any(|&p| p < 0) {
            return Err(ctx.error(format!("split {s:?} has a negative part")));
        }
        let sizes: Vec<usize> = s.iter().map(|&p| p as usize).collect();
        let total = sizes.iter().try_fold(0usize, |a, &p| a.checked_add(p));
        if let Some(d) = dim {
            if total != Some(d) {
                return Err(ctx.error(format!("split {s:?} does not add up to the dimension {d}")));
            }
        }
        return Ok(Some(sizes));
    }
    if let Some(k) = ctx.node.attrs.get("num_outputs").map(|_| ctx.node.attr_i("num_outputs", 0)) {
        if k != n as i64 {
            return Err(ctx.error(format!("num_outputs is {k} but the node has {n} outputs")));
        }
    }
    let Some(d) = dim else { return Ok(None) };
    equal_split(d, n).map(Some).ok_or_else(|| ctx.error(format!("a dimension of {d} cannot be split into {n} parts")))
}

/// Parts of `ceil(d / n)`, the last one smaller; `None` when no such split exists.
pub(crate) fn equal_split(d: usize, n: usize) -> Option<Vec<usize>> {
    if n == 0 {
        return None;
    }
    let chunk = d.div_ceil(n);
    let last = d.checked_sub(chunk * (n - 1))?;
    Some((0..n).map(|k| if k + 1 == n { last } else { chunk }).collect())
}

/// `Split`: one output per part, each like the input with the split axis resized.
pub fn split(ctx: &InferCtx) -> Out {
    let n = ctx.node.outputs.len();
    let Some(t) = ctx.input(0) else {
        return Ok(vec![None; n]);
    };
    let Some(s) = &t.shape else {
        return Ok(vec![Some(TensorType::unranked(t.dtype)); n]);
    };
    let axis = axis_attr(ctx, "axis", 0, s.len())?;
    let sizes = split_sizes(ctx, s[axis].fixed(), n)?;
    Ok((0..n)
        .map(|k| {
            let d = sizes.as_ref().map_or(Dim::Unknown, |v| Dim::Fixed(v[k]));
            Some(TensorType { dtype: t.dtype, shape: Some(with_dim(s, axis, d)) })
        })
        .collect())
}

/// `GatherElements`: the data's type, the indices' shape (of the data's rank).
pub fn gather_elements(ctx: &InferCtx) -> Out {
    require_int(ctx, 1, "indices")?;
    let Some(d) = ctx.input(0) else { return unknown() };
    let shape = ctx.input(1).and_then(|i| i.shape.clone());
    if let (Some(ds), Some(is)) = (&d.shape, &shape) {
        if ds.len() != is.len() {
            return Err(ctx.error(format!("indices have rank {} but data has rank {}", is.len(), ds.len())));
        }
        axis_attr(ctx, "axis", 0, ds.len())?;
    }
    one(TensorType { dtype: d.dtype, shape })
}

/// `ScatterElements` / `ScatterND`: the data's type; updates of the same element type.
pub fn scatter(ctx: &InferCtx) -> Out {
    require_int(ctx, 1, "indices")?;
    same_dtype(ctx, 0, 2)?;
    let r = ctx.node.attr_s("reduction", "none");
    if !["none", "add", "mul", "max", "min"].contains(&r) {
        return Err(ctx.error(format!("unknown reduction '{r}' (none, add, mul, max or min)")));
    }
    if let (Some(d), "ScatterElements") = (ctx.input(0).and_then(|t| t.rank()), ctx.node.op_type.as_str()) {
        axis_attr(ctx, "axis", 0, d.max(1))?;
    }
    Ok(vec![ctx.input(0).cloned()])
}

/// `GatherND`: `indices.shape[:-1] + data.shape[batch_dims + m:]`, `m` the indices' last dimension.
pub fn gather_nd(ctx: &InferCtx) -> Out {
    require_int(ctx, 1, "indices")?;
    let Some(d) = ctx.input(0) else { return unknown() };
    let (Some(ds), Some(is)) = (&d.shape, ctx.input(1).and_then(|i| i.shape.as_ref())) else {
        return one(TensorType::unranked(d.dtype));
    };
    let b = ctx.node.attr_i("batch_dims", 0);
    let (r, q) = (ds.len(), is.len());
    if b < 0 || b as usize >= r.min(q) {
        return Err(ctx.error(format!("batch_dims {b} must be below the ranks of data ({r}) and indices ({q})")));
    }
    let b = b as usize;
    for k in 0..b {
        if !ds[k].compatible(&is[k]) {
            return Err(ctx.error(format!("batch dimension {k} differs: data {} and indices {}", ds[k], is[k])));
        }
    }
    let Some(m) = is[q - 1].fixed() else {
        return one(TensorType::unranked(d.dtype));
    };
    if m > r - b {
        return Err(ctx.error(format!("indices address {m} dimensions but data has {} after the batch dimensions", r - b)));
    }
    let mut out = is[..q - 1].to_vec();
    out.extend_from_slice(&ds[b + m..]);
    one(TensorType { dtype: d.dtype, shape: Some(out) })
}

/// `Trilu`: like the input, of rank 2 or more.
pub fn trilu(ctx: &InferCtx) -> Out {
    if let Some(r) = ctx.input(0).and_then(|t| t.rank()) {
        if r < 2 {
            return Err(ctx.error(format!("input must have rank >= 2, has {r}")));
        }
    }
    Ok(vec![ctx.input(0).cloned()])
}

/// `Tile`: each dimension times its repeat count when the repeats are constant. Opset 1's
/// form (`tiles` and `axis` scalar inputs) repeats one axis.
pub fn tile(ctx: &InferCtx) -> Out {
    let Some(t) = ctx.input(0) else { return unknown() };
    let Some(s) = &t.shape else {
        return one(t.clone());
    };
    let repeats: Option<Vec<i64>> = if ctx.node.opset < 6 {
        match (ctx.konst(1), ctx.konst(2)) {
            (Some(tiles), Some(axis)) if tiles.len() == 1 && axis.len() == 1 => {
                let a = axis.to_i64_vec()[0];
                let a = normalize_axis(a, s.len()).ok_or_else(|| ctx.error(format!("axis {a} is out of range for {t}")))?;
                Some((0..s.len()).map(|k| if k == a { tiles.to_i64_vec()[0] } else { 1 }).collect())
            }
            _ => None,
        }
    } else {
        ctx.konst(1).map(|r| r.to_i64_vec())
    };
    let Some(rep) = repeats else {
        return one(TensorType::of_rank(t.dtype, s.len()));
    };
    if rep.len() != s.len() {
        return Err(ctx.error(format!("repeats {rep:?} must have one entry per dimension of {t}")));
    }
    if rep.iter().any(|&r| r < 0) {
        return Err(ctx.error(format!("repeats {rep:?} has a negative entry")));
    }
    let dims = s
        .iter()
        .zip(&rep)
        .map(|(d, &r)| match (d, r) {
            (_, 0) => Dim::Fixed(0),
            (d, 1) => d.clone(),
            (Dim::Fixed(n), r) => n.checked_mul(r as usize).map_or(Dim::Unknown, Dim::Fixed),
            _ => Dim::Unknown,
        })
        .collect();
    one(TensorType { dtype: t.dtype, shape: Some(dims) })
}

/// `ArgMax` / `ArgMin`: int64, the axis reduced (kept as 1 with `keepdims`, the default).
pub fn arg_reduce(ctx: &InferCtx) -> Out {
    let Some(t) = ctx.input(0) else {
        return one(TensorType::unranked(DType::I64));
    };
    if t.dtype == DType::Bool {
        return Err(ctx.error("ArgMax and ArgMin do not take bool"));
    }
    let Some(s) = &t.shape else {
        return one(TensorType::unranked(DType::I64));
    };
    let axis = axis_attr(ctx, "axis", 0, s.len())?;
    let dims = if ctx.node.attr_i("keepdims", 1) != 0 {
        with_dim(s, axis, Dim::Fixed(1))
    } else {
        s.iter().enumerate().filter(|&(k, _)| k != axis).map(|(_, d)| d.clone()).collect()
    };
    one(TensorType { dtype: DType::I64, shape: Some(dims) })
}

/// `TopK`: values (the input's type) and int64 indices, the axis resized to `k` — the `k`
/// attribute before opset 10, the constant `K` input from 10 on.
pub fn top_k(ctx: &InferCtx) -> Out {
    let Some(t) = ctx.input(0) else {
        return Ok(vec![None, Some(TensorType::unranked(DType::I64))]);
    };
    if t.dtype == DType::Bool {
        return Err(ctx.error("TopK does not take bool"));
    }
    let Some(s) = &t.shape else {
        return Ok(vec![Some(TensorType::unranked(t.dtype)), Some(TensorType::unranked(DType::I64))]);
    };
    let axis = axis_attr(ctx, "axis", -1, s.len())?;
    let k = if ctx.node.opset < 10 {
        Some(ctx.node.attr_i("k", 0))
    } else {
        match ctx.konst(1) {
            Some(c) if c.len() == 1 => Some(c.to_i64_vec()[0]),
            Some(c) => return Err(ctx.error(format!("K must hold one value, holds {}", c.len()))),
            None => None,
        }
    };
    let d = match k {
        Some(k) if k < 0 => return Err(ctx.error(format!("k = {k} is negative"))),
        Some(k) => {
            if let Some(n) = s[axis].fixed() {
                if k as u64 > n as u64 {
                    return Err(ctx.error(format!("k = {k} is larger than the axis ({n})")));
                }
            }
            Dim::Fixed(k as usize)
        }
        None => Dim::Unknown,
    };
    let dims = with_dim(s, axis, d);
    Ok(vec![Some(TensorType { dtype: t.dtype, shape: Some(dims.clone()) }), Some(TensorType { dtype: DType::I64, shape: Some(dims) })])
}

/// `Einsum`: the output's dimensions from the equation and the inputs' dimensions.
pub fn einsum(ctx: &InferCtx) -> Out {
    let eq = Equation::parse(ctx.node.attr_s("equation", "")).map_err(|e| ctx.error(e))?;
    if eq.inputs.len() != ctx.inputs.len() {
        return Err(ctx.error(format!("the equation has {} input terms but the node has {} inputs", eq.inputs.len(), ctx.inputs.len())));
    }
    let Some(first) = ctx.input(0) else { return unknown() };
    let mut shapes = Vec::with_capacity(ctx.inputs.len());
    for k in 0..ctx.inputs.len() {
        let Some(t) = ctx.input(k) else { return one(TensorType::unranked(first.dtype)) };
        if t.dtype != first.dtype {
            return Err(ctx.error(format!("input 0 is {} but input {k} is {}", first.dtype, t.dtype)));
        }
        if t.dtype == DType::Bool {
            return Err(ctx.error("Einsum does not take bool"));
        }
        match &t.shape {
            Some(s) => shapes.push(s),
            None => return one(TensorType::unranked(first.dtype)),
        }
    }
    let ranks: Vec<usize> = shapes.iter().map(|s| s.len()).collect();
    let bound = eq.bind(&ranks).map_err(|e| ctx.error(e))?;
    let mut dims: Vec<Option<Dim>> = vec![None; bound.labels];
    for (labels, shape) in bound.inputs.iter().zip(&shapes) {
        for (&l, d) in labels.iter().zip(shape.iter()) {
            let merged = match (dims[l].take(), d) {
                (None, d) | (Some(Dim::Fixed(1)), d) => d.clone(),
                (Some(cur), Dim::Fixed(1)) => cur,
                (Some(Dim::Fixed(a)), Dim::Fixed(b)) if a != *b => {
                    return Err(ctx.error(format!("label sizes differ: {a} and {b} (shapes cannot broadcast)")));
                }
                (Some(Dim::Fixed(a)), _) => Dim::Fixed(a),
                (Some(_), Dim::Fixed(b)) => Dim::Fixed(*b),
                (Some(cur), d) if cur == *d => cur,
                _ => Dim::Unknown,
            };
            dims[l] = Some(merged);
        }
    }
    let out = bound.output.iter().map(|&l| dims[l].clone().unwrap_or(Dim::Unknown)).collect();
    one(TensorType { dtype: first.dtype, shape: Some(out) })
}

#[cfg(test)]
mod tests {
    use crate::ops::OpRegistry;
    use crate::{Attribute, DType, Dim, Graph, Node, Result, Tensor, TensorType};

    /// The output types of `op` at `opset` for inputs `ins` (a constant where given) and
    /// `n_out` outputs.
    fn infer(
        op: &str,
        opset: i64,
        attrs: &[(&str, Attribute)],
        ins: &[(TensorType, Option<Tensor>)],
        n_out: usize,
    ) -> Result<Vec<Option<TensorType>>> {
        let mut g = Graph::new("t");
        let mut ids = Vec::new();
        for (k, (t, c)) in ins.iter().enumerate() {
            let id = match c {
                Some(c) => g.add_constant(&format!("c{k}"), c.clone())?,
                None => g.add_input(&format!("x{k}"), t.clone())?,
            };
            ids.push(Some(id));
        }
        let outs = (0..n_out).map(|k| g.value_named(&format!("y{k}"))).collect();
        let mut node = Node::new("the_node", op, opset, ids, outs);
        for (k, v) in attrs {
            node.attrs.insert(k.to_string(), v.clone());
        }
        OpRegistry::standard().infer_node(&g, &node)
    }

    fn f(d: &[usize]) -> (TensorType, Option<Tensor>) {
        (TensorType::fixed(DType::F32, d), None)
    }

    fn konst(v: Vec<i64>) -> (TensorType, Option<Tensor>) {
        (TensorType::fixed(DType::I64, &[v.len()]), Some(Tensor::vec_i64(v)))
    }

    fn shapes(out: Vec<Option<TensorType>>) -> Vec<Option<Vec<Dim>>> {
        out.into_iter().map(|t| t.and_then(|t| t.shape)).collect()
    }

    fn fixed(d: &[usize]) -> Option<Vec<Dim>> {
        Some(d.iter().map(|&n| Dim::Fixed(n)).collect())
    }

    #[test]
    fn split_sizes_come_from_the_input_the_attribute_or_the_output_count() {
        let s = shapes(infer("Split", 13, &[("axis", Attribute::Int(1))], &[f(&[2, 7]), konst(vec![3, 4])], 2).unwrap());
        assert_eq!(s, vec![fixed(&[2, 3]), fixed(&[2, 4])]);
        let s = shapes(infer("Split", 11, &[("split", Attribute::Ints(vec![1, 1]))], &[f(&[2, 7])], 2).unwrap());
        assert_eq!(s, vec![fixed(&[1, 7]), fixed(&[1, 7])]);
        let s = shapes(infer("Split", 18, &[("num_outputs", Attribute::Int(4)), ("axis", Attribute::Int(-1))], &[f(&[7])], 4).unwrap());
        assert_eq!(s, vec![fixed(&[2]), fixed(&[2]), fixed(&[2]), fixed(&[1])]);
        let e = infer("Split", 13, &[], &[f(&[2, 7]), konst(vec![3, 3])], 2).unwrap_err().to_string();
        assert!(e.contains("the_node") && e.contains("add up"), "{e}");
        assert!(infer("Split", 18, &[("num_outputs", Attribute::Int(3))], &[f(&[6])], 2).is_err());
        // Sizes from a non-constant input stay unknown.
        let sizes = (TensorType::fixed(DType::I64, &[2]), None);
        let s = shapes(infer("Split", 13, &[], &[f(&[4, 5]), sizes], 2).unwrap());
        assert_eq!(s, vec![Some(vec![Dim::Unknown, Dim::Fixed(5)]); 2]);
    }

    #[test]
    fn gathers_tiles_and_top_k() {
        let idx = (TensorType::fixed(DType::I64, &[2, 3, 2]), None);
        let s = shapes(infer("GatherND", 13, &[("batch_dims", Attribute::Int(1))], &[f(&[2, 4, 5, 6]), idx.clone()], 1).unwrap());
        assert_eq!(s, vec![fixed(&[2, 3, 6])]);
        assert!(infer("GatherND", 13, &[("batch_dims", Attribute::Int(1))], &[f(&[3, 4, 5, 6]), idx], 1).is_err());
        let s = shapes(infer("Tile", 13, &[], &[f(&[2, 3]), konst(vec![3, 1])], 1).unwrap());
        assert_eq!(s, vec![fixed(&[6, 3])]);
        let big = konst(vec![i64::MAX, 2]);
        let s = shapes(infer("Tile", 13, &[], &[f(&[3, 3]), big], 1).unwrap());
        assert_eq!(s, vec![Some(vec![Dim::Unknown, Dim::Fixed(6)])]);
        let k = (TensorType::fixed(DType::I64, &[1]), Some(Tensor::vec_i64(vec![2])));
        let out = infer("TopK", 11, &[("axis", Attribute::Int(0))], &[f(&[5, 3]), k], 2).unwrap();
        assert_eq!(out[1], Some(TensorType::fixed(DType::I64, &[2, 3])));
        let out = infer("TopK", 1, &[("k", Attribute::Int(9))], &[f(&[5, 3])], 2);
        assert!(out.unwrap_err().to_string().contains("larger than the axis"));
        let out = infer("ArgMax", 13, &[("axis", Attribute::Int(-1)), ("keepdims", Attribute::Int(0))], &[f(&[5, 3])], 1).unwrap();
        assert_eq!(out, vec![Some(TensorType::fixed(DType::I64, &[5]))]);
    }

    #[test]
    fn einsum_shapes_broadcast_and_check_sizes() {
        let eq = |e: &str| [("equation", Attribute::String(e.into()))];
        let s = shapes(infer("Einsum", 12, &eq("bhid,bhjd->bhij"), &[f(&[1, 2, 3, 4]), f(&[1, 2, 5, 4])], 1).unwrap());
        assert_eq!(s, vec![fixed(&[1, 2, 3, 5])]);
        let s = shapes(infer("Einsum", 12, &eq("...ij,...jk"), &[f(&[7, 1, 2, 3]), f(&[4, 3, 5])], 1).unwrap());
        assert_eq!(s, vec![fixed(&[7, 4, 2, 5])]);
        let e = infer("Einsum", 12, &eq("ij,jk->ik"), &[f(&[2, 3]), f(&[4, 5])], 1).unwrap_err().to_string();
        assert!(e.contains("the_node") && e.contains("3 and 4"), "{e}");
        assert!(infer("Einsum", 12, &eq("ij->ji"), &[f(&[2, 3]), f(&[3])], 1).is_err());
    }

    #[test]
    fn types_of_predicates_mod_and_dropout() {
        let out = infer("IsNaN", 20, &[], &[f(&[3])], 1).unwrap();
        assert_eq!(out, vec![Some(TensorType::fixed(DType::Bool, &[3]))]);
        assert!(infer("IsInf", 20, &[], &[(TensorType::fixed(DType::I32, &[3]), None)], 1).is_err());
        assert!(infer("Mod", 13, &[], &[f(&[3]), f(&[3])], 1).is_err());
        assert!(infer("Mod", 13, &[("fmod", Attribute::Int(1))], &[f(&[3]), f(&[1])], 1).is_ok());
        let out = infer("Dropout", 7, &[], &[f(&[3])], 2).unwrap();
        assert_eq!(out[1], Some(TensorType::fixed(DType::F32, &[3])));
        let out = infer("Dropout", 13, &[], &[f(&[3])], 2).unwrap();
        assert_eq!(out[1], Some(TensorType::fixed(DType::Bool, &[3])));
    }
}
