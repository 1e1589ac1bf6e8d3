//! Elementwise kernels: unary math, broadcasting arithmetic, comparisons, logic, selection, casts.

use super::{arg, bad_type, broadcast_shape, opt_arg, KernelRegistry};
use crate::{kbail, KernelError};
use fpx_ir::ndarray::{ArrayD, IxDyn, Zip};
use fpx_ir::{onnx_dtype, DType, Elem, Node, Tensor};

type Res = Result<Vec<Tensor>, KernelError>;

/// Matches a tensor of a floating-point type, binding its array; other types are an error.
macro_rules! float_only {
    ($t:expr, $a:ident => $body:expr) => {
        match $t {
            Tensor::F32($a) => $body,
            Tensor::F64($a) => $body,
            Tensor::F16($a) => $body,
            Tensor::BF16($a) => $body,
            other => return Err(bad_type(other)),
        }
    };
}

/// Matches a tensor of any numeric (non-bool) type.
macro_rules! numeric {
    ($t:expr, $a:ident => $body:expr) => {
        match $t {
            Tensor::Bool(_) => return Err(bad_type($t)),
            t => fpx_ir::dispatch!(t, $a => $body),
        }
    };
}

/// Matches two tensors of the same element type.
macro_rules! same_type2 {
    ($a:expr, $b:expr, $x:ident, $y:ident => $body:expr) => {
        match ($a, $b) {
            (Tensor::F32($x), Tensor::F32($y)) => $body,
            (Tensor::F64($x), Tensor::F64($y)) => $body,
            (Tensor::F16($x), Tensor::F16($y)) => $body,
            (Tensor::BF16($x), Tensor::BF16($y)) => $body,
            (Tensor::I8($x), Tensor::I8($y)) => $body,
            (Tensor::I16($x), Tensor::I16($y)) => $body,
            (Tensor::I32($x), Tensor::I32($y)) => $body,
            (Tensor::I64($x), Tensor::I64($y)) => $body,
            (Tensor::U8($x), Tensor::U8($y)) => $body,
            (Tensor::U16($x), Tensor::U16($y)) => $body,
            (Tensor::U32($x), Tensor::U32($y)) => $body,
            (Tensor::U64($x), Tensor::U64($y)) => $body,
            (Tensor::Bool($x), Tensor::Bool($y)) => $body,
            (p, q) => kbail!("operand element types differ: {} and {}", p.dtype(), q.dtype()),
        }
    };
}

/// True when `small`, without leading 1s, is the trailing block of `big` and no longer than it:
/// then broadcasting repeats `small` over `big`'s contiguous chunks.
fn is_trailing_block(big: &[usize], small: &[usize]) -> bool {
    let lead = small.iter().take_while(|&&d| d == 1).count();
    let core = &small[lead..];
    small.len() <= big.len() && big.ends_with(core)
}

/// Applies `f` elementwise over two arrays with numpy broadcasting. Contiguous inputs of equal
/// shape, or where one is a trailing block of the other (a bias over the last dims), take a
/// flat loop; everything else goes through ndarray's broadcasting.
pub(crate) fn zip2<A: Copy, B: Copy, C>(a: &ArrayD<A>, b: &ArrayD<B>, f: impl Fn(A, B) -> C) -> Result<ArrayD<C>, KernelError> {
    if let (Some(x), Some(y)) = (a.as_slice(), b.as_slice()) {
        if a.shape() == b.shape() {
            let v = x.iter().zip(y).map(|(&p, &q)| f(p, q)).collect();
            return Ok(ArrayD::from_shape_vec(a.raw_dim(), v).expect("same shape"));
        }
        if !y.is_empty() && is_trailing_block(a.shape(), b.shape()) {
            let v = x.chunks_exact(y.len()).flat_map(|c| c.iter().zip(y).map(|(&p, &q)| f(p, q))).collect();
            return Ok(ArrayD::from_shape_vec(a.raw_dim(), v).expect("a's shape"));
        }
        if !x.is_empty() && is_trailing_block(b.shape(), a.shape()) {
            let v = y.chunks_exact(x.len()).flat_map(|c| x.iter().zip(c).map(|(&p, &q)| f(p, q))).collect();
            return Ok(ArrayD::from_shape_vec(b.raw_dim(), v).expect("b's shape"));
        }
    }
    if a.shape() == b.shape() {
        return Ok(Zip::from(a).and(b).map_collect(|&x, &y| f(x, y)));
    }
    let shape = broadcast_shape(&[a.shape(), b.shape()])?;
    let (av, bv) = (a.broadcast(IxDyn(&shape)).expect("broadcastable"), b.broadcast(IxDyn(&shape)).expect("broadcastable"));
    Ok(Zip::from(&av).and(&bv).map_collect(|&x, &y| f(x, y)))
}

/// Maps through f64: `f` for float types, `fi` for integer types.
fn map_num<T: Elem>(a: &ArrayD<T>, f: impl Fn(f64) -> f64, fi: impl Fn(i64) -> i64) -> Tensor {
    if T::DTYPE.is_float() {
        Tensor::from(a.mapv(|x| T::from_f64(f(x.to_f64()))))
    } else {
        Tensor::from(a.mapv(|x| T::from_i64(fi(x.to_i64()))))
    }
}

fn float_unary(t: &Tensor, f: impl Fn(f64) -> f64) -> Result<Tensor, KernelError> {
    Ok(float_only!(t, a => map_num(a, &f, |x| x)))
}

/// Like [`float_unary`], with an f32 implementation for f32 tensors (faster where the f64 one
/// is costly, e.g. `erf`).
fn float_unary_f32(t: &Tensor, f32_fn: fn(f32) -> f32, f: impl Fn(f64) -> f64) -> Result<Tensor, KernelError> {
    match t {
        Tensor::F32(a) => Ok(Tensor::from(a.mapv(f32_fn))),
        other => float_unary(other, f),
    }
}

fn numeric_unary(t: &Tensor, ff: impl Fn(f64) -> f64, fi: impl Fn(i64) -> i64) -> Result<Tensor, KernelError> {
    Ok(numeric!(t, a => map_num(a, &ff, &fi)))
}

macro_rules! unary_kernel {
    ($name:ident, $f:expr) => {
        fn $name(_: &Node, i: &[Option<&Tensor>]) -> Res {
            Ok(vec![float_unary(arg(i, 0)?, $f)?])
        }
    };
}

unary_kernel!(sqrt, f64::sqrt);
unary_kernel!(exp, f64::exp);
unary_kernel!(log, f64::ln);
fn erf(_: &Node, i: &[Option<&Tensor>]) -> Res {
    Ok(vec![float_unary_f32(arg(i, 0)?, libm::erff, libm::erf)?])
}
unary_kernel!(tanh, f64::tanh);
unary_kernel!(sigmoid, |x: f64| 1.0 / (1.0 + (-x).exp()));
unary_kernel!(reciprocal, |x: f64| 1.0 / x);
unary_kernel!(floor, f64::floor);
unary_kernel!(ceil, f64::ceil);
unary_kernel!(sin, f64::sin);
unary_kernel!(cos, f64::cos);

fn neg(_: &Node, i: &[Option<&Tensor>]) -> Res {
    Ok(vec![numeric_unary(arg(i, 0)?, |x| -x, i64::wrapping_neg)?])
}

fn abs(_: &Node, i: &[Option<&Tensor>]) -> Res {
    Ok(vec![numeric_unary(arg(i, 0)?, f64::abs, i64::wrapping_abs)?])
}

fn relu(_: &Node, i: &[Option<&Tensor>]) -> Res {
    Ok(vec![numeric_unary(arg(i, 0)?, |x| if x > 0.0 { x } else { 0.0 }, |x| x.max(0))?])
}

fn leaky_relu(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let alpha = n.attr_f("alpha", 0.01) as f64;
    Ok(vec![float_unary(arg(i, 0)?, move |x| if x >= 0.0 { x } else { alpha * x })?])
}

fn gelu(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let t = arg(i, 0)?;
    let out = match n.attr_s("approximate", "none") {
        "none" => float_unary_f32(
            t,
            |x| 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
            |x| 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        )?,
        "tanh" => float_unary(t, |x| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh()))?,
        other => kbail!("unknown approximate mode '{other}' (expected 'none' or 'tanh')"),
    };
    Ok(vec![out])
}

fn not(_: &Node, i: &[Option<&Tensor>]) -> Res {
    match arg(i, 0)? {
        Tensor::Bool(a) => Ok(vec![Tensor::from(a.mapv(|x| !x))]),
        other => Err(bad_type(other)),
    }
}

fn identity(_: &Node, i: &[Option<&Tensor>]) -> Res {
    Ok(vec![arg(i, 0)?.clone()])
}

fn cast(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let to = n.attr_i("to", 0);
    let Some(dt) = onnx_dtype(to) else { kbail!("cast to ONNX type {to} is not supported") };
    Ok(vec![arg(i, 0)?.cast(dt)])
}

fn arith<T: Elem>(x: &ArrayD<T>, y: &ArrayD<T>, ff: impl Fn(f64, f64) -> f64, fi: impl Fn(i64, i64) -> i64) -> Result<Tensor, KernelError> {
    if T::DTYPE == DType::Bool {
        kbail!("arithmetic on bool tensors is not supported");
    }
    if T::DTYPE.is_float() {
        Ok(Tensor::from(zip2(x, y, |p, q| T::from_f64(ff(p.to_f64(), q.to_f64())))?))
    } else {
        Ok(Tensor::from(zip2(x, y, |p, q| T::from_i64(fi(p.to_i64(), q.to_i64())))?))
    }
}

macro_rules! arith_kernel {
    ($name:ident, $ff:expr, $fi:expr) => {
        fn $name(_: &Node, i: &[Option<&Tensor>]) -> Res {
            let (a, b) = (arg(i, 0)?, arg(i, 1)?);
            Ok(vec![same_type2!(a, b, x, y => arith(x, y, $ff, $fi)?)])
        }
    };
}

arith_kernel!(add, |p, q| p + q, i64::wrapping_add);
arith_kernel!(sub, |p, q| p - q, i64::wrapping_sub);
arith_kernel!(mul, |p, q| p * q, i64::wrapping_mul);
arith_kernel!(div, |p, q| p / q, |p, q| if q == 0 { 0 } else { p.wrapping_div(q) });

fn pow_t<T: Elem>(a: &ArrayD<T>, e: &ArrayD<f64>) -> Result<Tensor, KernelError> {
    Ok(Tensor::from(zip2(a, e, |p, q| T::from_f64(p.to_f64().powf(q)))?))
}

fn pow(_: &Node, i: &[Option<&Tensor>]) -> Res {
    let (base, e) = (arg(i, 0)?, arg(i, 1)?);
    let ev = e.to_f64();
    Ok(vec![numeric!(base, a => pow_t(a, &ev)?)])
}

fn compare<T: Elem>(x: &ArrayD<T>, y: &ArrayD<T>, f: impl Fn(&T, &T) -> bool) -> Result<Tensor, KernelError> {
    Ok(Tensor::from(zip2(x, y, |p, q| f(&p, &q))?))
}

macro_rules! compare_kernel {
    ($name:ident, $f:expr) => {
        fn $name(_: &Node, i: &[Option<&Tensor>]) -> Res {
            let (a, b) = (arg(i, 0)?, arg(i, 1)?);
            Ok(vec![same_type2!(a, b, x, y => compare(x, y, $f)?)])
        }
    };
}

compare_kernel!(equal, |p, q| p == q);
compare_kernel!(less, |p, q| p < q);
compare_kernel!(less_equal, |p, q| p <= q);
compare_kernel!(greater, |p, q| p > q);
compare_kernel!(greater_equal, |p, q| p >= q);

fn logic(i: &[Option<&Tensor>], f: fn(bool, bool) -> bool) -> Res {
    match (arg(i, 0)?, arg(i, 1)?) {
        (Tensor::Bool(a), Tensor::Bool(b)) => Ok(vec![Tensor::from(zip2(a, b, f)?)]),
        (a, b) => kbail!("logical ops take bool tensors, got {} and {}", a.dtype(), b.dtype()),
    }
}

fn and(_: &Node, i: &[Option<&Tensor>]) -> Res {
    logic(i, |p, q| p && q)
}

fn or(_: &Node, i: &[Option<&Tensor>]) -> Res {
    logic(i, |p, q| p || q)
}

fn xor(_: &Node, i: &[Option<&Tensor>]) -> Res {
    logic(i, |p, q| p ^ q)
}

fn select<T: Elem>(c: &ArrayD<bool>, x: &ArrayD<T>, y: &ArrayD<T>) -> Result<Tensor, KernelError> {
    let shape = broadcast_shape(&[c.shape(), x.shape(), y.shape()])?;
    let sh = IxDyn(&shape);
    let (cv, xv, yv) = (
        c.broadcast(sh.clone()).expect("broadcastable"),
        x.broadcast(sh.clone()).expect("broadcastable"),
        y.broadcast(sh).expect("broadcastable"),
    );
    Ok(Tensor::from(Zip::from(&cv).and(&xv).and(&yv).map_collect(|&c, &p, &q| if c { p } else { q })))
}

fn where_(_: &Node, i: &[Option<&Tensor>]) -> Res {
    let Tensor::Bool(c) = arg(i, 0)? else { kbail!("condition must be bool, got {}", arg(i, 0)?.dtype()) };
    let (a, b) = (arg(i, 1)?, arg(i, 2)?);
    Ok(vec![same_type2!(a, b, x, y => select(c, x, y)?)])
}

fn pick<T: Elem>(x: &ArrayD<T>, y: &ArrayD<T>, want_max: bool) -> Result<Tensor, KernelError> {
    Ok(Tensor::from(zip2(x, y, |p, q| {
        #[allow(clippy::eq_op)]
        if p != p {
            p
        } else if q != q {
            q
        } else if (p > q) == want_max {
            p
        } else {
            q
        }
    })?))
}

fn min_max(i: &[Option<&Tensor>], want_max: bool) -> Res {
    let mut acc = arg(i, 0)?.clone();
    for k in 1..i.len() {
        let b = arg(i, k)?;
        acc = same_type2!(&acc, b, x, y => pick(x, y, want_max)?);
    }
    Ok(vec![acc])
}

fn min(_: &Node, i: &[Option<&Tensor>]) -> Res {
    min_max(i, false)
}

fn max(_: &Node, i: &[Option<&Tensor>]) -> Res {
    min_max(i, true)
}

fn clip(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    let bound = |slot: usize, attr: &str, default: f64| -> Result<f64, KernelError> {
        if n.opset < 11 {
            return Ok(n.attrs.get(attr).map(|_| n.attr_f(attr, 0.0) as f64).unwrap_or(default));
        }
        match opt_arg(i, slot) {
            Some(t) if t.len() == 1 => Ok(t.to_f64_vec()[0]),
            Some(t) => kbail!("clip bound must be a scalar, got shape {:?}", t.shape()),
            None => Ok(default),
        }
    };
    let lo = bound(1, "min", f64::NEG_INFINITY)?;
    let hi = bound(2, "max", f64::INFINITY)?;
    Ok(vec![numeric!(x, a => clip_t(a, lo, hi))])
}

fn clip_t<T: Elem>(a: &ArrayD<T>, lo: f64, hi: f64) -> Tensor {
    // max(x, lo) then min(., hi): with lo > hi every element becomes hi, as ONNX specifies.
    Tensor::from(a.mapv(|v| {
        let f = v.to_f64();
        if f.is_nan() {
            v
        } else if f > hi || lo > hi {
            T::from_f64(hi)
        } else if f < lo {
            T::from_f64(lo)
        } else {
            v
        }
    }))
}

pub(super) fn register(r: &mut KernelRegistry) {
    let table: &[(&str, super::KernelFn)] = &[
        ("Sqrt", sqrt),
        ("Exp", exp),
        ("Log", log),
        ("Erf", erf),
        ("Tanh", tanh),
        ("Sigmoid", sigmoid),
        ("Reciprocal", reciprocal),
        ("Floor", floor),
        ("Ceil", ceil),
        ("Sin", sin),
        ("Cos", cos),
        ("Neg", neg),
        ("Abs", abs),
        ("Relu", relu),
        ("LeakyRelu", leaky_relu),
        ("Gelu", gelu),
        ("Not", not),
        ("Identity", identity),
        ("Cast", cast),
        ("Add", add),
        ("Sub", sub),
        ("Mul", mul),
        ("Div", div),
        ("Pow", pow),
        ("Equal", equal),
        ("Less", less),
        ("LessOrEqual", less_equal),
        ("Greater", greater),
        ("GreaterOrEqual", greater_equal),
        ("And", and),
        ("Or", or),
        ("Xor", xor),
        ("Where", where_),
        ("Min", min),
        ("Max", max),
        ("Clip", clip),
    ];
    for (op, k) in table {
        r.add(op, *k);
    }
}
