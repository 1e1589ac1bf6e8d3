//! Shape and type inference functions for the built-in ops.

use super::InferCtx;
use crate::{Attribute, DType, Dim, Result, TensorType};

type Out = Result<Vec<Option<TensorType>>>;

/// Turns a possibly negative axis into an index in `0..rank`, or `None` if out of range.
pub fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// ONNX (numpy) multidirectional broadcasting of two shapes; `None` if they cannot broadcast.
pub fn broadcast_dims(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let x = if i + a.len() >= n { &a[i + a.len() - n] } else { &Dim::Fixed(1) };
        let y = if i + b.len() >= n { &b[i + b.len() - n] } else { &Dim::Fixed(1) };
        let d = match (x, y) {
            (Dim::Fixed(1), d) | (d, Dim::Fixed(1)) => d.clone(),
            (Dim::Fixed(p), Dim::Fixed(q)) if p == q => x.clone(),
            (Dim::Fixed(_), Dim::Fixed(_)) => return None,
            (Dim::Fixed(_), _) => x.clone(),
            (_, Dim::Fixed(_)) => y.clone(),
            (Dim::Sym(p), Dim::Sym(q)) if p == q => x.clone(),
            _ => Dim::Unknown,
        };
        out.push(d);
    }
    Some(out)
}

fn one(t: TensorType) -> Out {
    Ok(vec![Some(t)])
}

fn unknown() -> Out {
    Ok(vec![None])
}

/// Output = type of input 0.
pub fn same_as_input(ctx: &InferCtx) -> Out {
    Ok(vec![ctx.input(0).cloned()])
}

fn broadcast_all(ctx: &InferCtx, dtype: DType, from: usize) -> Out {
    let mut shape: Option<Vec<Dim>> = Some(Vec::new());
    for i in from..ctx.inputs.len() {
        let Some(t) = ctx.input(i) else {
            return one(TensorType::unranked(dtype));
        };
        shape = match (shape, &t.shape) {
            (Some(s), Some(u)) => Some(broadcast_dims(&s, u).ok_or_else(|| {
                ctx.error(format!(
                    "input shapes cannot be broadcast together: {}",
                    ctx.inputs.iter().flatten().map(|t| t.to_string()).collect::<Vec<_>>().join(" and ")
                ))
            })?),
            _ => None,
        };
    }
    one(TensorType { dtype, shape })
}

/// Elementwise with broadcasting; the output has input 0's type.
pub fn broadcast(ctx: &InferCtx) -> Out {
    let Some(t) = ctx.input(0) else {
        return unknown();
    };
    for i in 1..ctx.inputs.len() {
        if let Some(u) = ctx.input(i) {
            if u.dtype != t.dtype {
                return Err(ctx.error(format!("input 0 is {} but input {i} is {}", t.dtype, u.dtype)));
            }
        }
    }
    broadcast_all(ctx, t.dtype, 0)
}

/// Comparison with broadcasting: bool output.
pub fn compare(ctx: &InferCtx) -> Out {
    broadcast_all(ctx, DType::Bool, 0)
}

/// `Where(cond, x, y)`: broadcast of all three, type of x.
pub fn where_(ctx: &InferCtx) -> Out {
    let Some(x) = ctx.input(1) else {
        return unknown();
    };
    broadcast_all(ctx, x.dtype, 0)
}

/// Numpy-style matrix product.
pub fn matmul(ctx: &InferCtx) -> Out {
    let (Some(a), Some(b)) = (ctx.input(0), ctx.input(1)) else {
        return unknown();
    };
    if a.dtype != b.dtype {
        return Err(ctx.error(format!("operands are {} and {}", a.dtype, b.dtype)));
    }
    float_operands(ctx, a)?;
    let (Some(sa), Some(sb)) = (&a.shape, &b.shape) else {
        return one(TensorType::unranked(a.dtype));
    };
    if sa.is_empty() || sb.is_empty() {
        return Err(ctx.error("MatMul operands must have rank >= 1"));
    }
    let (mut sa2, mut sb2) = (sa.clone(), sb.clone());
    if sa2.len() == 1 {
        sa2.insert(0, Dim::Fixed(1));
    }
    if sb2.len() == 1 {
        sb2.push(Dim::Fixed(1));
    }
    let (k1, k2) = (&sa2[sa2.len() - 1], &sb2[sb2.len() - 2]);
    if !k1.compatible(k2) {
        return Err(ctx.error(format!("inner dimensions differ: {} x {}", a, b)));
    }
    let batch = broadcast_dims(&sa2[..sa2.len() - 2], &sb2[..sb2.len() - 2])
        .ok_or_else(|| ctx.error(format!("batch dimensions cannot broadcast: {a} x {b}")))?;
    let mut out = batch;
    if sa.len() > 1 {
        out.push(sa2[sa2.len() - 2].clone());
    }
    if sb.len() > 1 {
        out.push(sb2[sb2.len() - 1].clone());
    }
    one(TensorType { dtype: a.dtype, shape: Some(out) })
}

/// `Gemm`: `[M, N]` from (optionally transposed) A and B.
pub fn gemm(ctx: &InferCtx) -> Out {
    let (Some(a), Some(b)) = (ctx.input(0), ctx.input(1)) else {
        return unknown();
    };
    float_operands(ctx, a)?;
    float_operands(ctx, b)?;
    let (Some(sa), Some(sb)) = (&a.shape, &b.shape) else {
        return one(TensorType::of_rank(a.dtype, 2));
    };
    if sa.len() != 2 || sb.len() != 2 {
        return Err(ctx.error(format!("Gemm needs 2-D operands, found {a} and {b}")));
    }
    let ta = ctx.node.attr_i("transA", 0) != 0;
    let tb = ctx.node.attr_i("transB", 0) != 0;
    let (m, ka) = if ta { (&sa[1], &sa[0]) } else { (&sa[0], &sa[1]) };
    let (kb, n) = if tb { (&sb[1], &sb[0]) } else { (&sb[0], &sb[1]) };
    if !ka.compatible(kb) {
        return Err(ctx.error(format!("inner dimensions differ: {a} x {b} (transA={ta}, transB={tb})")));
    }
    // C must broadcast to [M, N] (one-directional: each of its dimensions is 1 or the output's).
    if let Some(sc) = ctx.input(2).and_then(|c| c.shape.as_ref()) {
        let fits = sc.len() <= 2 && sc.iter().rev().zip([n, m]).all(|(d, t)| *d == Dim::Fixed(1) || d.compatible(t));
        if !fits {
            let dims = sc.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
            return Err(ctx.error(format!("C of shape [{dims}] does not broadcast to the output [{m}, {n}]")));
        }
    }
    one(TensorType { dtype: a.dtype, shape: Some(vec![m.clone(), n.clone()]) })
}

/// MatMul and Gemm run on floating-point operands only (the CPU kernels' types).
fn float_operands(ctx: &InferCtx, t: &TensorType) -> Result<()> {
    if t.dtype.is_float() {
        Ok(())
    } else {
        Err(ctx.error(format!("operands of type {} are not supported (float, double, float16 or bfloat16 only)", t.dtype)))
    }
}

/// `Cast`: same shape, type from `to`.
pub fn cast(ctx: &InferCtx) -> Out {
    let to = ctx.node.attr_i("to", 0);
    let dtype = crate::onnx_dtype(to).ok_or_else(|| ctx.error(format!("Cast to unsupported ONNX type {to}")))?;
    Ok(vec![Some(TensorType { dtype, shape: ctx.input(0).and_then(|t| t.shape.clone()) })])
}

/// `Shape`: 1-D int64 of length rank (sliced by start/end).
pub fn shape(ctx: &InferCtx) -> Out {
    let Some(r) = ctx.input(0).and_then(|t| t.rank()) else {
        return one(TensorType::of_rank(DType::I64, 1));
    };
    let clamp = |v: i64| (if v < 0 { v + r as i64 } else { v }).clamp(0, r as i64) as usize;
    let start = clamp(ctx.node.attr_i("start", 0));
    let end = clamp(ctx.node.attr_i("end", r as i64));
    one(TensorType::fixed(DType::I64, &[end.saturating_sub(start)]))
}

/// Axes from the `axes` attribute or, from opset `input_from` on, a constant input.
fn axes(ctx: &InferCtx, input: usize) -> Option<Vec<i64>> {
    if let Some(a) = ctx.node.attr_ints("axes") {
        return Some(a.to_vec());
    }
    ctx.konst(input).map(|t| t.to_i64_vec())
}

/// `ReduceMean`/`ReduceSum`.
pub fn reduce(ctx: &InferCtx) -> Out {
    let Some(t) = ctx.input(0) else {
        return unknown();
    };
    let Some(s) = &t.shape else {
        return one(TensorType::unranked(t.dtype));
    };
    let keep = ctx.node.attr_i("keepdims", 1) != 0;
    let has_axes_input = ctx.inputs.len() > 1 && ctx.node.inputs[1].is_some();
    let Some(ax) = axes(ctx, 1).or_else(|| (!has_axes_input).then(Vec::new)) else {
        return one(if keep { TensorType::of_rank(t.dtype, s.len()) } else { TensorType::unranked(t.dtype) });
    };
    let noop = ctx.node.attr_i("noop_with_empty_axes", 0) != 0;
    if ax.is_empty() && noop {
        return one(t.clone());
    }
    let mut set = vec![ax.is_empty(); s.len()];
    for a in ax {
        let i = normalize_axis(a, s.len()).ok_or_else(|| ctx.error(format!("axis {a} out of range for {t}")))?;
        set[i] = true;
    }
    let dims = s.iter().zip(&set).filter_map(|(d, &r)| if r { keep.then_some(Dim::Fixed(1)) } else { Some(d.clone()) }).collect();
    one(TensorType { dtype: t.dtype, shape: Some(dims) })
}

/// `Transpose`.
pub fn transpose(ctx: &InferCtx) -> Out {
    let Some(t) = ctx.input(0) else {
        return unknown();
    };
    let Some(s) = &t.shape else {
        return one(t.clone());
    };
    let perm: Vec<i64> = ctx.node.attr_ints("perm").map(|p| p.to_vec()).unwrap_or_else(|| (0..s.len() as i64).rev().collect());
    if perm.len() != s.len() {
        return Err(ctx.error(format!("perm {perm:?} does not match rank {}", s.len())));
    }
    let mut dims = Vec::new();
    for &p in &perm {
        dims.push(
            s.get(normalize_axis(p, s.len()).ok_or_else(|| ctx.error(format!("perm {perm:?} is not a permutation")))?)
                .cloned()
                .unwrap_or(Dim::Unknown),
        );
    }
    one(TensorType { dtype: t.dtype, shape: Some(dims) })
}

/// `Reshape`.
pub fn reshape(ctx: &InferCtx) -> Out {
    let Some(t) = ctx.input(0) else {
        return unknown();
    };
    let Some(target) = ctx.konst(1) else {
        let rank = ctx.input(1).and_then(|s| s.fixed_dims()).and_then(|d| d.first().copied());
        return one(match rank {
            Some(r) => TensorType::of_rank(t.dtype, r),
            None => TensorType::unranked(t.dtype),
        });
    };
    let target = target.to_i64_vec();
    let allowzero = ctx.node.attr_i("allowzero", 0) != 0;
    let src = t.shape.clone();
    let mut dims: Vec<Dim> = Vec::with_capacity(target.len());
    for (i, &d) in target.iter().enumerate() {
        dims.push(match d {
            0 if !allowzero => src.as_ref().and_then(|s| s.get(i).cloned()).unwrap_or(Dim::Unknown),
            -1 => Dim::Unknown,
            d if d < -1 => return Err(ctx.error(format!("invalid target shape {target:?}"))),
            d => Dim::Fixed(d as usize),
        });
    }
    // Dimensions come from the model: products that overflow are simply unknown.
    let total = t.fixed_dims().and_then(|d| crate::shape::checked_product(d.iter().copied()));
    if let (Some(pos), Some(total)) = (target.iter().position(|&d| d == -1), total) {
        let known = dims.iter().enumerate().filter(|(i, _)| *i != pos).map(|(_, d)| d.fixed()).collect::<Option<Vec<usize>>>();
        let known = known.and_then(crate::shape::checked_product);
        if let Some(k) = known.filter(|&k| k > 0) {
            if total % k != 0 {
                return Err(ctx.error(format!("cannot reshape {t} to {target:?}")));
            }
            dims[pos] = Dim::Fixed(total / k);
        }
    }
    one(TensorType { dtype: t.dtype, shape: Some(dims) })
}

/// `Flatten`.
pub fn flatten(ctx: &InferCtx) -> Out {
    let Some(t) = ctx.input(0) else {
        return unknown();
    };
    let Some(s) = &t.shape else {
        return one(TensorType::of_rank(t.dtype, 2));
    };
    let axis = ctx.node.attr_i("axis", 1);
    let a = if axis < 0 { axis + s.len() as i64 } else { axis };
    if !(0..=s.len() as i64).contains(&a) {
        return Err(ctx.error(format!("axis {axis} out of range for {t}")));
    }
    let prod = |ds: &[Dim]| {
        let fixed = ds.iter().map(Dim::fixed).collect::<Option<Vec<usize>>>();
        fixed.and_then(crate::shape::checked_product).map(Dim::Fixed).unwrap_or(Dim::Unknown)
    };
    one(TensorType { dtype: t.dtype, shape: Some(vec![prod(&s[..a as usize]), prod(&s[a as usize..])]) })
}

/// `Gather`.
pub fn gather(ctx: &InferCtx) -> Out {
    let (Some(d), Some(i)) = (ctx.input(0), ctx.input(1)) else {
        return unknown();
    };
    let (Some(ds), Some(is)) = (&d.shape, &i.shape) else {
        return one(TensorType::unranked(d.dtype));
    };
    let axis = normalize_axis(ctx.node.attr_i("axis", 0), ds.len()).ok_or_else(|| ctx.error(format!("axis out of range for {d}")))?;
    let mut out = ds[..axis].to_vec();
    out.extend(is.iter().cloned());
    out.extend(ds[axis + 1..].iter().cloned());
    one(TensorType { dtype: d.dtype, shape: Some(out) })
}

/// `Concat`.
pub fn concat(ctx: &InferCtx) -> Out {
    let Some(first) = ctx.input(0) else {
        return unknown();
    };
    let mut shape: Option<Vec<Dim>> = None;
    let axis = ctx.node.attr_i("axis", 0);
    for i in 0..ctx.inputs.len() {
        let Some(t) = ctx.input(i) else {
            return one(TensorType::unranked(first.dtype));
        };
        if t.dtype != first.dtype {
            return Err(ctx.error(format!("input 0 is {} but input {i} is {}", first.dtype, t.dtype)));
        }
        let Some(s) = &t.shape else {
            return one(TensorType::unranked(first.dtype));
        };
        let a = normalize_axis(axis, s.len()).ok_or_else(|| ctx.error(format!("axis {axis} out of range for {t}")))?;
        shape =
            Some(match shape {
                None => s.clone(),
                Some(acc) => {
                    if acc.len() != s.len() {
                        return Err(ctx.error(format!("inputs have different ranks ({} and {})", acc.len(), s.len())));
                    }
                    acc.iter()
                        .zip(s)
                        .enumerate()
                        .map(|(j, (x, y))| {
                            if j == a {
                                x.fixed().zip(y.fixed()).map(|(p, q)| Dim::Fixed(p + q)).unwrap_or(Dim::Unknown)
                            } else {
                                x.clone()
                            }
                        })
                        .collect()
                }
            });
    }
    one(TensorType { dtype: first.dtype, shape })
}

/// `Squeeze`.
pub fn squeeze(ctx: &InferCtx) -> Out {
    let Some(t) = ctx.input(0) else {
        return unknown();
    };
    let Some(s) = &t.shape else {
        return one(t.clone());
    };
    let has_axes = ctx.node.attr_ints("axes").is_some() || ctx.node.inputs.get(1).copied().flatten().is_some();
    let Some(ax) = axes(ctx, 1) else {
        return one(TensorType::unranked(t.dtype));
    };
    if !has_axes || ax.is_empty() {
        if s.iter().all(|d| d.fixed().is_some()) {
            return one(TensorType { dtype: t.dtype, shape: Some(s.iter().filter(|d| **d != Dim::Fixed(1)).cloned().collect()) });
        }
        return one(TensorType::unranked(t.dtype));
    }
    let idx: Vec<usize> = ax
        .iter()
        .map(|&a| normalize_axis(a, s.len()).ok_or_else(|| ctx.error(format!("axis {a} out of range for {t}"))))
        .collect::<Result<_>>()?;
    one(TensorType {
        dtype: t.dtype,
        shape: Some(s.iter().enumerate().filter(|(i, _)| !idx.contains(i)).map(|(_, d)| d.clone()).collect()),
    })
}

/// `Unsqueeze`.
pub fn unsqueeze(ctx: &InferCtx) -> Out {
    let Some(t) = ctx.input(0) else {
        return unknown();
    };
    let Some(s) = &t.shape else {
        return one(t.clone());
    };
    let Some(ax) = axes(ctx, 1) else {
        return one(TensorType::unranked(t.dtype));
    };
    let rank = s.len() + ax.len();
    let mut idx: Vec<usize> = ax
        .iter()
        .map(|&a| normalize_axis(a, rank).ok_or_else(|| ctx.error(format!("axis {a} out of range for output rank {rank}"))))
        .collect::<Result<_>>()?;
    idx.sort_unstable();
    let mut src = s.iter();
    let dims = (0..rank).map(|i| if idx.contains(&i) { Dim::Fixed(1) } else { src.next().cloned().unwrap_or(Dim::Unknown) }).collect();
    one(TensorType { dtype: t.dtype, shape: Some(dims) })
}

/// `Slice`: exact when bounds are constant and dims fixed, else rank only.
pub fn slice(ctx: &InferCtx) -> Out {
    let Some(t) = ctx.input(0) else {
        return unknown();
    };
    match &t.shape {
        Some(s) => one(TensorType::of_rank(t.dtype, s.len())),
        None => one(t.clone()),
    }
}

/// `Expand`.
pub fn expand(ctx: &InferCtx) -> Out {
    let Some(t) = ctx.input(0) else {
        return unknown();
    };
    let Some(target) = ctx.konst(1) else {
        // A computed target of known length still fixes the rank, and every axis of the input
        // that is known and not 1 (Expand cannot change those).
        let len = ctx.input(1).and_then(|s| s.fixed_dims()).and_then(|d| (d.len() == 1).then(|| d[0]));
        return one(match (len, &t.shape) {
            (Some(len), Some(s)) if len <= crate::MAX_INFERRED_RANK => {
                let rank = len.max(s.len());
                let dims = (0..rank)
                    .map(|k| match (k + s.len()).checked_sub(rank).map(|i| &s[i]) {
                        Some(Dim::Fixed(n)) if *n != 1 => Dim::Fixed(*n),
                        _ => Dim::Unknown,
                    })
                    .collect();
                TensorType { dtype: t.dtype, shape: Some(dims) }
            }
            _ => TensorType::unranked(t.dtype),
        });
    };
    let target: Vec<Dim> = target.to_i64_vec().into_iter().map(|d| Dim::Fixed(d.max(0) as usize)).collect();
    let Some(s) = &t.shape else {
        return one(TensorType::unranked(t.dtype));
    };
    let dims = broadcast_dims(s, &target).ok_or_else(|| ctx.error(format!("cannot expand {t} to {target:?}")))?;
    one(TensorType { dtype: t.dtype, shape: Some(dims) })
}

/// `Constant`: the type of its value attribute.
pub fn constant(ctx: &InferCtx) -> Out {
    let n = ctx.node;
    let ty = match n.attrs.values().next() {
        Some(Attribute::Tensor(t)) => TensorType::fixed(t.dtype(), t.shape()),
        Some(Attribute::Float(_)) => TensorType::fixed(DType::F32, &[]),
        Some(Attribute::Floats(v)) => TensorType::fixed(DType::F32, &[v.len()]),
        Some(Attribute::Int(_)) => TensorType::fixed(DType::I64, &[]),
        Some(Attribute::Ints(v)) => TensorType::fixed(DType::I64, &[v.len()]),
        _ => return Err(ctx.error("Constant needs exactly one of value, value_float(s), value_int(s)")),
    };
    if n.attrs.len() != 1 {
        return Err(ctx.error("Constant needs exactly one value attribute"));
    }
    one(ty)
}

/// `ConstantOfShape`.
pub fn constant_of_shape(ctx: &InferCtx) -> Out {
    let dtype = ctx.node.attr_tensor("value").map(|t| t.dtype()).unwrap_or(DType::F32);
    match ctx.konst(0) {
        Some(s) => one(TensorType::fixed(dtype, &s.to_i64_vec().iter().map(|&d| d.max(0) as usize).collect::<Vec<_>>())),
        None => match ctx.input(0).and_then(|t| t.fixed_dims()) {
            Some(d) if d.len() == 1 => one(TensorType::of_rank(dtype, d[0])),
            _ => one(TensorType::unranked(dtype)),
        },
    }
}

/// `Range`: 1-D of the start's type; its length when start, limit and delta are constants.
pub fn range(ctx: &InferCtx) -> Out {
    let Some(t) = ctx.input(0) else {
        return unknown();
    };
    let scalar = |i| ctx.konst(i).filter(|c| c.len() == 1).map(|c| c.to_f64_vec()[0]);
    if let (Some(start), Some(limit), Some(delta)) = (scalar(0), scalar(1), scalar(2)) {
        let count = ((limit - start) / delta).ceil().max(0.0);
        // A count beyond usize (or NaN, a zero delta) stays unknown; the kernel refuses it.
        if delta != 0.0 && count.is_finite() && count < usize::MAX as f64 {
            return one(TensorType::fixed(t.dtype, &[count as usize]));
        }
    }
    one(TensorType::of_rank(t.dtype, 1))
}

/// `LayerNormalization`: Y like X; Mean and InvStdDev with the normalized axes set to 1.
pub fn layer_norm(ctx: &InferCtx) -> Out {
    let Some(t) = ctx.input(0) else {
        return unknown();
    };
    let stats = t.shape.as_ref().and_then(|s| {
        let axis = normalize_axis(ctx.node.attr_i("axis", -1), s.len())?;
        Some(s.iter().enumerate().map(|(i, d)| if i >= axis { Dim::Fixed(1) } else { d.clone() }).collect())
    });
    let stash = crate::onnx_dtype(ctx.node.attr_i("stash_type", 1)).unwrap_or(DType::F32);
    let st = TensorType { dtype: stash, shape: stats };
    Ok(vec![Some(t.clone()), Some(st.clone()), Some(st)])
}

/// `Pow`: broadcast of base and exponent, which may have different types; the base's type.
pub fn same_as_input_broadcast_base(ctx: &InferCtx) -> Out {
    let Some(t) = ctx.input(0) else {
        return unknown();
    };
    broadcast_all(ctx, t.dtype, 0)
}

/// The LoRC factors of a `QuantMatMul` (inputs [`LORC_U_INPUT`], [`LORC_V_INPUT`]): both or
/// neither; stored as float tensors (`U` `[K, r]`, `V` `[r, N]`, one rank `r >= 1`) or, with
/// attribute `lorc_format`, as `uint8` code buffers of the lengths the rank (from the
/// `[2, r]` scales, input [`LORC_SCALES_INPUT`]) and the format's width give.
///
/// [`LORC_U_INPUT`]: super::quant_matmul::LORC_U_INPUT
/// [`LORC_V_INPUT`]: super::quant_matmul::LORC_V_INPUT
/// [`LORC_SCALES_INPUT`]: super::quant_matmul::LORC_SCALES_INPUT
fn lorc_factors(ctx: &InferCtx, k: usize, n: usize) -> Result<(), crate::IrError> {
    use super::quant_matmul::{LORC_SCALES_INPUT, LORC_U_INPUT, LORC_V_INPUT};
    use fpx_quant::lorc::FactorStorage;
    let (u, v) = (ctx.input(LORC_U_INPUT), ctx.input(LORC_V_INPUT));
    let present = |i: usize| ctx.node.inputs.get(i).is_some_and(|v| v.is_some());
    if present(LORC_U_INPUT) != present(LORC_V_INPUT) {
        return Err(ctx.error("the LoRC factors U (input 5) and V (input 6) go together: give both or neither"));
    }
    let storage = super::quant_matmul::lorc_storage(ctx.node)?;
    let fixed = |d: &[Dim]| d.iter().map(|x| if let Dim::Fixed(v) = x { Some(*v) } else { None }).collect::<Option<Vec<_>>>();
    let format = match storage {
        FactorStorage::F16 if present(LORC_SCALES_INPUT) => {
            return Err(ctx.error("LoRC scales (input 7) belong to quantized factors: the node has no 'lorc_format'"))
        }
        FactorStorage::Quantized(_) if present(LORC_U_INPUT) != present(LORC_SCALES_INPUT) => {
            return Err(ctx.error("quantized LoRC factors (attribute 'lorc_format') need their scales (input 7)"))
        }
        FactorStorage::F16 => None,
        FactorStorage::Quantized(f) => Some(f),
    };
    let (Some(u), Some(v)) = (u, v) else { return Ok(()) };
    let Some(format) = format else {
        if !u.dtype.is_float() || !v.dtype.is_float() {
            return Err(ctx.error(format!("the LoRC factors must be float tensors, not {u} and {v}")));
        }
        if let (Some(su), Some(sv)) = (&u.shape, &v.shape) {
            match (fixed(su).as_deref(), fixed(sv).as_deref()) {
                (Some(&[uk, ur]), Some(&[vr, vn])) if uk == k && vn == n && ur == vr && ur >= 1 => {}
                _ => {
                    return Err(
                        ctx.error(format!("the LoRC factors must be U [K={k}, r] and V [r, N={n}] with one rank r >= 1, not {u} and {v}"))
                    )
                }
            }
        }
        return Ok(());
    };
    let Some(scales) = ctx.input(LORC_SCALES_INPUT) else { return Ok(()) };
    if u.dtype != DType::U8 || v.dtype != DType::U8 || scales.dtype != DType::F32 {
        return Err(ctx.error(format!("{} LoRC factors are uint8 codes with float scales, not {u}, {v} and {scales}", format.name())));
    }
    let rank = match scales.shape.as_deref().and_then(fixed).as_deref() {
        Some(&[2, r]) if r >= 1 => r,
        Some(_) => return Err(ctx.error(format!("the LoRC scales must be [2, r] with r >= 1, not {scales}"))),
        None => return Ok(()),
    };
    let (want_u, want_v) = (fpx_quant::dense::packed_len(rank * k, format.bits()), fpx_quant::dense::packed_len(rank * n, format.bits()));
    if let (Some(su), Some(sv)) = (&u.shape, &v.shape) {
        if fixed(su).as_deref() != Some(&[want_u]) || fixed(sv).as_deref() != Some(&[want_v]) {
            return Err(ctx.error(format!(
                "rank-{rank} {} LoRC codes of [K={k}, r] and [r, N={n}] take [{want_u}] and [{want_v}] bytes, not {u} and {v}",
                format.name()
            )));
        }
    }
    Ok(())
}

/// `fpx:QuantMatMul(X[..., K], packed, scales, bias?, residual?, lorc_u?, lorc_v?, lorc_scales?)`: `[..., N]`
/// in X's type.
pub fn quant_matmul(ctx: &InferCtx) -> Out {
    let gemm = super::quant_matmul::read(ctx.node)?;
    let Some(x) = ctx.input(0) else { return unknown() };
    let (k, n) = (gemm.k, gemm.n);
    let Some(s) = &x.shape else { return one(TensorType::unranked(x.dtype)) };
    let Some(last) = s.last() else { return Err(ctx.error("X must have rank >= 1")) };
    if !last.compatible(&Dim::Fixed(k)) {
        return Err(ctx.error(format!("X is {x} but the weight has K = {k}")));
    }
    let epilogue = super::quant_matmul::epilogue(ctx.node, &gemm)?;
    lorc_factors(ctx, k, n)?;
    let mut dims = s.clone();
    *dims.last_mut().expect("rank >= 1") = Dim::Fixed(epilogue.output_columns(n));
    let y = TensorType { dtype: x.dtype, shape: Some(dims) };
    match ctx.input(super::quant_matmul::RESIDUAL_INPUT) {
        None => one(y),
        Some(r) if r.dtype != x.dtype => {
            Err(ctx.error(format!("the residual is {r}, but the product is {y}: they must have one element type")))
        }
        Some(r) => match (&y.shape, &r.shape) {
            (Some(a), Some(b)) => match broadcast_dims(a, b) {
                Some(d) => one(TensorType { dtype: x.dtype, shape: Some(d) }),
                None => Err(ctx.error(format!("the residual {r} does not broadcast with the product {y}"))),
            },
            _ => one(TensorType::unranked(x.dtype)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(v: &[i64]) -> Vec<Dim> {
        v.iter().map(|&x| if x < 0 { Dim::Sym(format!("s{}", -x)) } else { Dim::Fixed(x as usize) }).collect()
    }

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_dims(&d(&[2, 1, 4]), &d(&[3, 1])), Some(d(&[2, 3, 4])));
        assert_eq!(broadcast_dims(&d(&[-1, 4]), &d(&[4])), Some(d(&[-1, 4])));
        assert_eq!(broadcast_dims(&d(&[-1, 1]), &d(&[-1, 5])), Some(d(&[-1, 5])));
        assert_eq!(broadcast_dims(&d(&[2, 3]), &d(&[4, 3])), None);
        assert_eq!(broadcast_dims(&d(&[-1]), &d(&[-2])), Some(vec![Dim::Unknown]));
    }

    /// The output types `op` infers for inputs of types `ins` (named x0, x1, ...).
    fn infer(op: &str, ins: &[TensorType]) -> Result<Vec<Option<TensorType>>> {
        let mut g = crate::Graph::new("t");
        let ids = ins.iter().enumerate().map(|(i, t)| g.add_input(&format!("x{i}"), t.clone()).map(Some)).collect::<Result<Vec<_>>>()?;
        let y = g.value_named("y");
        let node = crate::Node::new("the_node", op, 17, ids, vec![y]);
        super::super::OpRegistry::standard().infer_node(&g, &node)
    }

    #[test]
    fn matmul_and_gemm_take_float_operands_and_a_bias_that_broadcasts() {
        let f = |dims: &[usize]| TensorType::fixed(DType::F32, dims);
        let e = infer("MatMul", &[TensorType::fixed(DType::I64, &[2, 2]), TensorType::fixed(DType::I64, &[2, 2])]).unwrap_err().to_string();
        assert!(e.contains("the_node") && e.contains("int64"), "{e}");
        let e = infer("Gemm", &[f(&[1, 4]), f(&[4, 3]), f(&[2])]).unwrap_err().to_string();
        assert!(e.contains("the_node") && e.contains("does not broadcast"), "{e}");
        assert!(infer("Gemm", &[f(&[1, 4]), f(&[4, 3]), f(&[2, 3])]).is_err());
        for c in [&[3][..], &[1], &[1, 3], &[1, 1], &[]] {
            assert_eq!(infer("Gemm", &[f(&[1, 4]), f(&[4, 3]), f(c)]).unwrap(), vec![Some(f(&[1, 3]))], "C {c:?}");
        }
    }

    #[test]
    fn axes_normalize() {
        assert_eq!(normalize_axis(-1, 3), Some(2));
        assert_eq!(normalize_axis(3, 3), None);
        assert_eq!(normalize_axis(-4, 3), None);
    }

    #[test]
    fn expand_to_a_computed_shape_of_known_length_keeps_the_rank_and_the_sure_axes() {
        let x = TensorType { dtype: DType::F32, shape: Some(d(&[-1, 4, 1, -2, 128])) };
        let out = infer("Expand", &[x.clone(), TensorType::fixed(DType::I64, &[5])]).unwrap();
        let want = vec![Dim::Unknown, Dim::Fixed(4), Dim::Unknown, Dim::Unknown, Dim::Fixed(128)];
        assert_eq!(out, vec![Some(TensorType { dtype: DType::F32, shape: Some(want) })]);
        // A longer target adds leading axes; an unknown length or a huge declared one says nothing.
        let out = infer("Expand", &[x.clone(), TensorType::fixed(DType::I64, &[6])]).unwrap();
        assert_eq!(out[0].as_ref().and_then(|t| t.rank()), Some(6));
        assert_eq!(infer("Expand", &[x.clone(), TensorType::of_rank(DType::I64, 1)]).unwrap()[0].as_ref().unwrap().shape, None);
        assert_eq!(infer("Expand", &[x, TensorType::fixed(DType::I64, &[1 << 40])]).unwrap()[0].as_ref().unwrap().shape, None);
    }
}
