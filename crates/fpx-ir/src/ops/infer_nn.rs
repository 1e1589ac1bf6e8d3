//! Shape and type inference for the ops of `defs_nn`, and the convolution geometry the Conv
//! kernel shares with it ([`conv_output_dim`]). Sizes come from the model, so they are never
//! used to allocate: only ranks size vectors, and products that overflow are unknown.

use super::infer::normalize_axis;
use super::InferCtx;
use crate::{DType, Dim, Result, TensorType};
use std::ops::RangeInclusive;

type Out = Result<Vec<Option<TensorType>>>;

fn one(t: TensorType) -> Out {
    Ok(vec![Some(t)])
}

/// Input `i`'s type, refused unless it is a floating-point type (`None`: unknown or omitted).
fn float_input<'a>(ctx: &InferCtx<'a>, i: usize) -> Result<Option<&'a TensorType>> {
    match ctx.input(i) {
        Some(t) if !t.dtype.is_float() => {
            Err(ctx.error(format!("input {i} is {}; this op takes float, double, float16 or bfloat16", t.dtype)))
        }
        t => Ok(t),
    }
}

/// Refuses attribute `name` on a node whose opset is outside `opsets` (where ONNX defines it).
fn attr_only_in(ctx: &InferCtx, name: &str, opsets: RangeInclusive<i64>) -> Result<()> {
    if ctx.node.attrs.contains_key(name) && !opsets.contains(&ctx.node.opset) {
        return Err(ctx.error(format!("attribute '{name}' is not part of this op at opset {} (only opsets {opsets:?})", ctx.node.opset)));
    }
    Ok(())
}

/// Refuses a known input `i` whose element type differs from `dtype`.
fn same_dtype(ctx: &InferCtx, i: usize, dtype: DType) -> Result<()> {
    match ctx.input(i) {
        Some(t) if t.dtype != dtype => Err(ctx.error(format!("input {i} is {} but input 0 is {dtype}", t.dtype))),
        _ => Ok(()),
    }
}

/// Softplus, HardSigmoid, Mish: a float input, an output of its type.
pub fn float_unary(ctx: &InferCtx) -> Out {
    Ok(vec![float_input(ctx, 0)?.cloned()])
}

/// `LogSoftmax`: like its input; the axis must exist.
pub fn log_softmax(ctx: &InferCtx) -> Out {
    let Some(x) = float_input(ctx, 0)? else { return Ok(vec![None]) };
    if let Some(r) = x.rank().filter(|&r| r > 0) {
        let axis = ctx.node.attr_i("axis", if ctx.node.opset < 13 { 1 } else { -1 });
        if normalize_axis(axis, r).is_none() {
            return Err(ctx.error(format!("axis {axis} is out of range for {x}")));
        }
    }
    one(x.clone())
}

/// The known rank of input `i`, refused below `min` (`what` names the layout).
fn min_rank(ctx: &InferCtx, t: &TensorType, min: usize, what: &str) -> Result<()> {
    match t.rank() {
        Some(r) if r < min => Err(ctx.error(format!("input {t} has rank {r}; expected {what}"))),
        _ => Ok(()),
    }
}

/// Checks that inputs `slots` are 1-D of length `len` where both are known.
fn per_channel(ctx: &InferCtx, slots: RangeInclusive<usize>, len: &Dim, what: &str) -> Result<()> {
    for s in slots {
        let Some(shape) = ctx.input(s).and_then(|t| t.shape.as_ref()) else { continue };
        let fits = shape.len() == 1 && shape[0].compatible(len);
        if !fits {
            let dims = shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
            return Err(ctx.error(format!("input {s} has shape [{dims}]; expected [{len}] (one value per {what})")));
        }
    }
    Ok(())
}

/// `BatchNormalization` in inference mode: Y like X. Training mode (`training_mode=1`, or the
/// running statistics asked for as outputs) is refused.
pub fn batch_norm(ctx: &InferCtx) -> Out {
    attr_only_in(ctx, "is_test", 6..=6)?;
    attr_only_in(ctx, "spatial", 6..=8)?;
    attr_only_in(ctx, "training_mode", 14..=i64::MAX)?;
    if ctx.node.attr_i("training_mode", 0) != 0 || ctx.node.outputs.len() > 1 {
        return Err(ctx.error(
            "training mode (training_mode=1 or the running mean and variance as outputs) is not supported: fpx runs inference only",
        ));
    }
    let Some(x) = float_input(ctx, 0)? else { return Ok(vec![None]) };
    min_rank(ctx, x, 2, "(N, C, ...)")?;
    let per_element = ctx.node.opset < 9 && ctx.node.attr_i("spatial", 1) == 0;
    if let (Some(s), false) = (&x.shape, per_element) {
        per_channel(ctx, 1..=4, &s[1], "channel")?;
    }
    one(x.clone())
}

/// `InstanceNormalization`: Y like X (rank >= 3); scale and bias per channel.
pub fn instance_norm(ctx: &InferCtx) -> Out {
    let Some(x) = float_input(ctx, 0)? else { return Ok(vec![None]) };
    min_rank(ctx, x, 3, "(N, C, D1, ...)")?;
    if let Some(s) = &x.shape {
        per_channel(ctx, 1..=2, &s[1], "channel")?;
    }
    one(x.clone())
}

/// `GroupNormalization`: Y like X; scale and bias per group (opset 18) or per channel (21).
pub fn group_norm(ctx: &InferCtx) -> Out {
    attr_only_in(ctx, "stash_type", 21..=i64::MAX)?;
    let groups = ctx.node.attr_i("num_groups", 0);
    if groups <= 0 {
        return Err(ctx.error(format!("num_groups must be positive, found {groups}")));
    }
    let Some(x) = float_input(ctx, 0)? else { return Ok(vec![None]) };
    min_rank(ctx, x, 2, "(N, C, ...)")?;
    if let Some(s) = &x.shape {
        if let Some(c) = s[1].fixed() {
            if c % groups as usize != 0 {
                return Err(ctx.error(format!("{c} channels do not split into {groups} groups")));
            }
        }
        if ctx.node.opset < 21 {
            per_channel(ctx, 1..=2, &Dim::Fixed(groups as usize), "group (opset 18)")?;
        } else {
            per_channel(ctx, 1..=2, &s[1], "channel (opset 21)")?;
        }
    }
    one(x.clone())
}

/// `RMSNormalization`: Y like X; the first normalized axis must exist.
pub fn rms_norm(ctx: &InferCtx) -> Out {
    let Some(x) = float_input(ctx, 0)? else { return Ok(vec![None]) };
    if let Some(r) = x.rank() {
        let axis = ctx.node.attr_i("axis", -1);
        if normalize_axis(axis, r).is_none() {
            return Err(ctx.error(format!("axis {axis} is out of range for {x}")));
        }
    }
    one(x.clone())
}

/// `RotaryEmbedding`: Y like X, which is `[B, H, S, D]` or `[B, S, H*D]` (then `num_heads` is needed).
pub fn rotary_embedding(ctx: &InferCtx) -> Out {
    let Some(x) = float_input(ctx, 0)? else { return Ok(vec![None]) };
    same_dtype(ctx, 1, x.dtype)?;
    same_dtype(ctx, 2, x.dtype)?;
    if let Some(p) = ctx.input(3).filter(|p| p.dtype != DType::I64) {
        return Err(ctx.error(format!("position_ids must be int64, found {}", p.dtype)));
    }
    match x.rank() {
        Some(3) if ctx.node.attr_i("num_heads", 0) <= 0 => Err(ctx.error("a 3-D input [batch, sequence, hidden] needs num_heads > 0")),
        Some(r) if r != 3 && r != 4 => Err(ctx.error(format!("input {x} must be 3-D or 4-D"))),
        _ => one(x.clone()),
    }
}

/// How Conv pads its input (the `auto_pad` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoPad {
    /// Explicit `pads`.
    NotSet,
    /// Output size `ceil(input / stride)`, the odd padding element at the end.
    SameUpper,
    /// Output size `ceil(input / stride)`, the odd padding element at the beginning.
    SameLower,
    /// No padding.
    Valid,
}

impl AutoPad {
    /// The mode an `auto_pad` value names, if any.
    pub fn parse(s: &str) -> Option<AutoPad> {
        match s {
            "NOTSET" | "" => Some(AutoPad::NotSet),
            "SAME_UPPER" => Some(AutoPad::SameUpper),
            "SAME_LOWER" => Some(AutoPad::SameLower),
            "VALID" => Some(AutoPad::Valid),
            _ => None,
        }
    }
}

/// One spatial dimension of a convolution: `(output size, padding before)` for an input of
/// `input` elements, a kernel of `kernel` taps `dilation` apart, a stride, and the explicit
/// `pads` (before, after) used when `auto_pad` is `NotSet`. `None` when the dilated kernel does
/// not fit the padded input, a stride or dilation is zero, or a size overflows.
pub fn conv_output_dim(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    auto_pad: AutoPad,
    pads: (usize, usize),
) -> Option<(usize, usize)> {
    if stride == 0 || dilation == 0 || kernel == 0 {
        return None;
    }
    let span = kernel.checked_sub(1)?.checked_mul(dilation)?.checked_add(1)?;
    let (begin, end) = match auto_pad {
        AutoPad::NotSet => pads,
        AutoPad::Valid => (0, 0),
        AutoPad::SameUpper | AutoPad::SameLower => {
            let out = input.div_ceil(stride);
            let total = out.saturating_sub(1).checked_mul(stride)?.checked_add(span)?.saturating_sub(input);
            let small = total / 2;
            return Some((out, if auto_pad == AutoPad::SameUpper { small } else { total - small }));
        }
    };
    let padded = input.checked_add(begin)?.checked_add(end)?;
    Some(((padded.checked_sub(span)?) / stride + 1, begin))
}

/// An ints attribute of `n` positive values (default all `default`).
fn conv_ints(ctx: &InferCtx, name: &str, n: usize, default: usize) -> Result<Vec<usize>> {
    let Some(v) = ctx.node.attr_ints(name) else { return Ok(vec![default; n]) };
    if v.len() != n || v.iter().any(|&x| x < 1) {
        return Err(ctx.error(format!("{name} {v:?} must hold {n} positive values (one per spatial axis)")));
    }
    Ok(v.iter().map(|&x| x as usize).collect())
}

/// `Conv`: `[N, M, out...]` for X `[N, C, in...]` and W `[M, C/group, k...]`.
pub fn conv(ctx: &InferCtx) -> Out {
    let Some(x) = float_input(ctx, 0)? else { return Ok(vec![None]) };
    same_dtype(ctx, 1, x.dtype)?;
    same_dtype(ctx, 2, x.dtype)?;
    let auto_pad = AutoPad::parse(ctx.node.attr_s("auto_pad", "NOTSET"))
        .ok_or_else(|| ctx.error(format!("unknown auto_pad '{}'", ctx.node.attr_s("auto_pad", ""))))?;
    let group = ctx.node.attr_i("group", 1);
    if group < 1 {
        return Err(ctx.error(format!("group must be positive, found {group}")));
    }
    let ws = ctx.input(1).and_then(|w| w.shape.as_ref());
    let Some(xs) = &x.shape else { return one(TensorType::unranked(x.dtype)) };
    if xs.len() < 3 {
        return Err(ctx.error(format!("X {x} must have rank >= 3 (N, C, spatial...)")));
    }
    let n = xs.len() - 2;
    if let Some(ws) = ws.filter(|w| w.len() != xs.len()) {
        return Err(ctx.error(format!("W has rank {} but X has rank {}", ws.len(), xs.len())));
    }
    let strides = conv_ints(ctx, "strides", n, 1)?;
    let dilations = conv_ints(ctx, "dilations", n, 1)?;
    let kernel: Vec<Option<usize>> = match ctx.node.attr_ints("kernel_shape") {
        Some(_) => conv_ints(ctx, "kernel_shape", n, 1)?.into_iter().map(Some).collect(),
        None => (0..n).map(|d| ws.and_then(|w| w[d + 2].fixed())).collect(),
    };
    let pads = match ctx.node.attr_ints("pads") {
        Some(p) if p.len() != 2 * n || p.iter().any(|&v| v < 0) => {
            return Err(ctx.error(format!("pads {p:?} must hold {} non-negative values", 2 * n)));
        }
        Some(p) => p.iter().map(|&v| v as usize).collect(),
        None => vec![0; 2 * n],
    };
    if let (Some(c), Some(wc)) = (xs[1].fixed(), ws.and_then(|w| w[1].fixed())) {
        if wc.checked_mul(group as usize) != Some(c) {
            return Err(ctx.error(format!("X has {c} channels but W takes {wc} per group for {group} groups")));
        }
    }
    let mut out = vec![xs[0].clone(), ws.map_or(Dim::Unknown, |w| w[0].clone())];
    for d in 0..n {
        let dim = match (xs[d + 2].fixed(), kernel[d]) {
            (Some(input), Some(k)) => {
                let (o, _) = conv_output_dim(input, k, strides[d], dilations[d], auto_pad, (pads[d], pads[d + n])).ok_or_else(|| {
                    ctx.error(format!(
                        "spatial axis {d}: a kernel of {k} (dilation {}) does not fit the padded input of {input}",
                        dilations[d]
                    ))
                })?;
                Dim::Fixed(o)
            }
            _ => Dim::Unknown,
        };
        out.push(dim);
    }
    one(TensorType { dtype: x.dtype, shape: Some(out) })
}

fn dim_mul(d: &Dim, by: Option<usize>) -> Dim {
    match (d.fixed(), by) {
        (Some(a), Some(b)) => a.checked_mul(b).map_or(Dim::Unknown, Dim::Fixed),
        _ => Dim::Unknown,
    }
}

fn dim_add(a: &Dim, b: &Dim) -> Dim {
    match (a.fixed(), b.fixed()) {
        (Some(0), _) => b.clone(),
        (Some(x), Some(y)) => x.checked_add(y).map_or(Dim::Unknown, Dim::Fixed),
        _ => Dim::Unknown,
    }
}

/// `d / by` when both are known, refused when it does not divide.
fn dim_div(ctx: &InferCtx, d: &Dim, by: Option<usize>, what: &str) -> Result<Dim> {
    match (d.fixed(), by) {
        (Some(a), Some(b)) if b > 0 && a % b == 0 => Ok(Dim::Fixed(a / b)),
        (Some(a), Some(b)) => Err(ctx.error(format!("{what} of {a} does not split into {b} heads"))),
        _ => Ok(Dim::Unknown),
    }
}

/// `Attention` (opsets 23, 24): Y, present_key, present_value and qk_matmul_output from Q, K, V
/// (all 3-D `[B, S, heads*size]` or all 4-D `[B, heads, S, size]`) and the past cache.
pub fn attention(ctx: &InferCtx) -> Out {
    let node = ctx.node;
    if node.opset < 24 && node.inputs.len() > 6 {
        return Err(ctx.error("input 6 (nonpad_kv_seqlen) exists from opset 24 on"));
    }
    let mode = node.attr_i("qk_matmul_output_mode", 0);
    if !(0..=3).contains(&mode) {
        return Err(ctx.error(format!("qk_matmul_output_mode must be 0 to 3, found {mode}")));
    }
    let present = |i: usize| node.inputs.get(i).copied().flatten().is_some();
    if present(4) != present(5) {
        return Err(ctx.error("past_key and past_value must be given together"));
    }
    let unknown = Ok(vec![None; node.outputs.len()]);
    let Some(q) = float_input(ctx, 0)? else { return unknown };
    for i in [1, 2, 4, 5] {
        same_dtype(ctx, i, q.dtype)?;
    }
    if let Some(m) = ctx.input(3).filter(|m| m.dtype != DType::Bool && m.dtype != q.dtype) {
        return Err(ctx.error(format!("attn_mask must be bool or {} like Q, found {}", q.dtype, m.dtype)));
    }
    let (Some(qs), Some(ks), Some(vs)) =
        (q.shape.as_ref(), ctx.input(1).and_then(|t| t.shape.as_ref()), ctx.input(2).and_then(|t| t.shape.as_ref()))
    else {
        return unknown;
    };
    let rank = qs.len();
    if (rank != 3 && rank != 4) || ks.len() != rank || vs.len() != rank {
        return Err(ctx.error(format!("Q, K and V must all be 3-D or all 4-D, found ranks {}, {}, {}", rank, ks.len(), vs.len())));
    }
    let heads = |name: &str| -> Result<Option<usize>> {
        match node.attr_i(name, 0) {
            h if h > 0 => Ok(Some(h as usize)),
            _ if rank == 3 => Err(ctx.error(format!("3-D Q, K and V need {name} > 0"))),
            _ => Ok(None),
        }
    };
    let (hq_attr, hkv_attr) = (heads("q_num_heads")?, heads("kv_num_heads")?);
    let (b, hq, sq, dq, hkv, skv, dk, dv) = if rank == 4 {
        (&qs[0], qs[1].clone(), &qs[2], qs[3].clone(), ks[1].clone(), &ks[2], ks[3].clone(), vs[3].clone())
    } else {
        let (hq, hkv) = (hq_attr.map_or(Dim::Unknown, Dim::Fixed), hkv_attr.map_or(Dim::Unknown, Dim::Fixed));
        let dq = dim_div(ctx, &qs[2], hq_attr, "Q's hidden size")?;
        let dk = dim_div(ctx, &ks[2], hkv_attr, "K's hidden size")?;
        let dv = dim_div(ctx, &vs[2], hkv_attr, "V's hidden size")?;
        (&qs[0], hq, &qs[1], dq, hkv, &ks[1], dk, dv)
    };
    if !dq.compatible(&dk) {
        return Err(ctx.error(format!("Q's head size {dq} differs from K's {dk}")));
    }
    if let (Some(a), Some(c)) = (hq.fixed(), hkv.fixed()) {
        if c == 0 || a % c != 0 {
            return Err(ctx.error(format!("{a} query heads do not group over {c} key/value heads")));
        }
    }
    let past = match ctx.input(4).and_then(|t| t.shape.as_ref()) {
        Some(p) if p.len() != 4 => return Err(ctx.error("past_key must be 4-D [batch, kv_heads, past_sequence, head_size]")),
        Some(p) => p[2].clone(),
        None if present(4) => Dim::Unknown,
        None => Dim::Fixed(0),
    };
    let total = dim_add(&past, skv);
    let y =
        if rank == 4 { vec![b.clone(), hq.clone(), sq.clone(), dv.clone()] } else { vec![b.clone(), sq.clone(), dim_mul(&dv, hq.fixed())] };
    let t = |dims: Vec<Dim>| Some(TensorType { dtype: q.dtype, shape: Some(dims) });
    let mut out = vec![
        t(y),
        t(vec![b.clone(), hkv.clone(), total.clone(), dk]),
        t(vec![b.clone(), hkv, total.clone(), dv]),
        t(vec![b.clone(), hq, sq.clone(), total]),
    ];
    out.truncate(node.outputs.len());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Attribute, Graph, Node};

    /// The output types of `op` at `opset` with `attrs` for inputs of types `ins` (`None`:
    /// omitted) and `outputs` outputs.
    fn infer(op: &str, opset: i64, attrs: &[(&str, Attribute)], ins: &[Option<TensorType>], outputs: usize) -> Out {
        let mut g = Graph::new("t");
        let mut ids = Vec::new();
        for (k, t) in ins.iter().enumerate() {
            ids.push(match t {
                Some(t) => Some(g.add_input(&format!("x{k}"), t.clone())?),
                None => None,
            });
        }
        let outs = (0..outputs).map(|k| g.value_named(&format!("y{k}"))).collect();
        let mut node = Node::new("the_node", op, opset, ids, outs);
        for (k, v) in attrs {
            node.attrs.insert(k.to_string(), v.clone());
        }
        super::super::OpRegistry::standard().infer_node(&g, &node)
    }

    fn ty(dims: &[&str]) -> TensorType {
        let dim = |s: &&str| s.parse().map(Dim::Fixed).unwrap_or_else(|_| if *s == "?" { Dim::Unknown } else { Dim::Sym(s.to_string()) });
        TensorType { dtype: DType::F32, shape: Some(dims.iter().map(dim).collect()) }
    }

    #[test]
    fn conv_infers_output_sizes_and_keeps_unknown_dims_unknown() {
        let attrs = [("strides", Attribute::Ints(vec![16, 16]))];
        let y = infer("Conv", 22, &attrs, &[Some(ty(&["batch", "3", "224", "?"])), Some(ty(&["768", "3", "16", "16"]))], 1).unwrap();
        assert_eq!(y, vec![Some(ty(&["batch", "768", "14", "?"]))]);
        let attrs = [("auto_pad", Attribute::String("SAME_UPPER".into())), ("strides", Attribute::Ints(vec![2]))];
        let y = infer("Conv", 11, &attrs, &[Some(ty(&["1", "80", "3000"])), Some(ty(&["384", "80", "3"])), Some(ty(&["384"]))], 1).unwrap();
        assert_eq!(y, vec![Some(ty(&["1", "384", "1500"]))]);
        let e =
            infer("Conv", 22, &[("group", Attribute::Int(2))], &[Some(ty(&["1", "3", "8"])), Some(ty(&["4", "3", "3"]))], 1).unwrap_err();
        assert!(e.to_string().contains("the_node") && e.to_string().contains("groups"), "{e}");
        let e = infer("Conv", 22, &[], &[Some(ty(&["1", "3", "2"])), Some(ty(&["4", "3", "3"]))], 1).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
    }

    #[test]
    fn attention_infers_y_present_and_qk_for_3d_and_4d() {
        let heads = [("q_num_heads", Attribute::Int(8)), ("kv_num_heads", Attribute::Int(2))];
        let (q, kv) = (ty(&["b", "s", "512"]), ty(&["b", "s", "128"]));
        let past = ty(&["b", "2", "p", "64"]);
        let ins = [Some(q), Some(kv.clone()), Some(kv), None, Some(past.clone()), Some(past)];
        let y = infer("Attention", 23, &heads, &ins, 4).unwrap();
        assert_eq!(
            y,
            vec![
                Some(ty(&["b", "s", "512"])),
                Some(ty(&["b", "2", "?", "64"])),
                Some(ty(&["b", "2", "?", "64"])),
                Some(ty(&["b", "8", "s", "?"]))
            ]
        );
        let ins = [Some(ty(&["2", "9", "4", "8"])), Some(ty(&["2", "3", "6", "8"])), Some(ty(&["2", "3", "6", "10"]))];
        let y = infer("Attention", 23, &[], &ins, 4).unwrap();
        assert_eq!(
            y,
            vec![
                Some(ty(&["2", "9", "4", "10"])),
                Some(ty(&["2", "3", "6", "8"])),
                Some(ty(&["2", "3", "6", "10"])),
                Some(ty(&["2", "9", "4", "6"]))
            ]
        );
        // 3-D inputs need head counts; past_key needs past_value; nonpad_kv_seqlen needs opset 24.
        assert!(
            infer("Attention", 23, &[], &[Some(ty(&["1", "2", "8"])), Some(ty(&["1", "2", "8"])), Some(ty(&["1", "2", "8"]))], 1).is_err()
        );
        let x = Some(ty(&["1", "1", "2", "4"]));
        assert!(infer("Attention", 23, &[], &[x.clone(), x.clone(), x.clone(), None, x.clone()], 1)
            .unwrap_err()
            .to_string()
            .contains("together"));
        let lens = Some(TensorType::fixed(DType::I64, &[1]));
        assert!(infer("Attention", 23, &[], &[x.clone(), x.clone(), x.clone(), None, None, None, lens.clone()], 1).is_err());
        assert!(infer("Attention", 24, &[], &[x.clone(), x.clone(), x, None, None, None, lens], 1).is_ok());
    }

    #[test]
    fn normalizations_check_their_opset_forms_and_refuse_training() {
        let x = Some(ty(&["n", "6", "5"]));
        let c6 = Some(ty(&["6"]));
        let e = infer(
            "BatchNormalization",
            15,
            &[("training_mode", Attribute::Int(1))],
            &[x.clone(), c6.clone(), c6.clone(), c6.clone(), c6.clone()],
            3,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("the_node") && e.contains("training_mode"), "{e}");
        assert!(infer("BatchNormalization", 15, &[], &[x.clone(), c6.clone(), c6.clone(), c6.clone(), c6.clone()], 1).is_ok());
        assert!(infer(
            "BatchNormalization",
            15,
            &[("spatial", Attribute::Int(0))],
            &[x.clone(), c6.clone(), c6.clone(), c6.clone(), c6.clone()],
            1
        )
        .is_err());
        let groups = [("num_groups", Attribute::Int(3))];
        let g3 = Some(ty(&["3"]));
        assert!(infer("GroupNormalization", 18, &groups, &[x.clone(), g3.clone(), g3.clone()], 1).is_ok());
        assert!(infer("GroupNormalization", 21, &groups, &[x.clone(), g3.clone(), g3], 1).is_err());
        assert!(infer("GroupNormalization", 21, &groups, &[x.clone(), c6.clone(), c6.clone()], 1).is_ok());
        assert!(infer("GroupNormalization", 21, &[("num_groups", Attribute::Int(4))], &[x.clone(), c6.clone(), c6], 1).is_err());
        assert!(infer("RMSNormalization", 23, &[("axis", Attribute::Int(3))], &[x.clone(), Some(ty(&["5"]))], 1).is_err());
        let ints = Some(TensorType::fixed(DType::I64, &[2, 3]));
        assert!(infer("Softplus", 22, &[], &[ints], 1).is_err());
        assert_eq!(infer("LogSoftmax", 1, &[], std::slice::from_ref(&x), 1).unwrap(), vec![x]);
    }

    #[test]
    fn conv_output_sizes_follow_the_onnx_formulas() {
        // floor((in + pads - dilated kernel) / stride) + 1
        assert_eq!(conv_output_dim(5, 3, 1, 1, AutoPad::NotSet, (1, 1)), Some((5, 1)));
        assert_eq!(conv_output_dim(7, 3, 2, 1, AutoPad::NotSet, (1, 0)), Some((3, 1)));
        assert_eq!(conv_output_dim(10, 3, 1, 2, AutoPad::NotSet, (0, 0)), Some((6, 0)));
        assert_eq!(conv_output_dim(224, 16, 16, 1, AutoPad::Valid, (9, 9)), Some((14, 0)));
        // SAME: ceil(in / stride); the odd padding element after (upper) or before (lower).
        assert_eq!(conv_output_dim(5, 3, 2, 1, AutoPad::SameUpper, (0, 0)), Some((3, 1)));
        assert_eq!(conv_output_dim(6, 4, 1, 1, AutoPad::SameUpper, (0, 0)), Some((6, 1)));
        assert_eq!(conv_output_dim(6, 4, 1, 1, AutoPad::SameLower, (0, 0)), Some((6, 2)));
        // A kernel wider than the padded input, zero strides and overflowing sizes are refused.
        assert_eq!(conv_output_dim(2, 3, 1, 1, AutoPad::NotSet, (0, 0)), None);
        assert_eq!(conv_output_dim(5, 3, 0, 1, AutoPad::NotSet, (0, 0)), None);
        assert_eq!(conv_output_dim(5, 3, 1, usize::MAX, AutoPad::NotSet, (0, 0)), None);
        assert_eq!(conv_output_dim(usize::MAX, 1, 1, 1, AutoPad::NotSet, (1, 0)), None);
    }
}
