//! Elementwise kernels: unary math, broadcasting arithmetic, comparisons, logic, selection, casts.

use super::fast::{self, Binary, BroadcastPlan, Unary};
use super::{alloc, arg, bad_type, broadcast_shape, f32_slice, opt_arg, with_owned, KernelRegistry};
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
pub(crate) fn zip2<A: Copy, B: Copy, C: Elem>(a: &ArrayD<A>, b: &ArrayD<B>, f: impl Fn(A, B) -> C) -> Result<ArrayD<C>, KernelError> {
    let shape = if a.shape() == b.shape() { a.shape().to_vec() } else { broadcast_shape(&[a.shape(), b.shape()])? };
    alloc::check_t::<C>(&shape)?;
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

unary_kernel!(exp, f64::exp);
unary_kernel!(log, f64::ln);
unary_kernel!(floor, f64::floor);
unary_kernel!(ceil, f64::ceil);
unary_kernel!(sin, f64::sin);
unary_kernel!(cos, f64::cos);

/// `op` over a contiguous f32 tensor, or `None` when the tensor is not one.
fn fast_unary(op: Unary, t: &Tensor) -> Option<Tensor> {
    let x = f32_slice(t)?;
    Some(Tensor::from(super::array(t.shape(), fast::unary(op, x))))
}

/// `op` in place over an owned contiguous f32 tensor; gives the tensor back otherwise.
fn fast_unary_owned(op: Unary, t: Tensor) -> Result<Tensor, Tensor> {
    match t {
        Tensor::F32(mut a) => match a.as_slice_mut() {
            Some(buf) => {
                fast::unary_in_place(op, buf);
                Ok(Tensor::F32(a))
            }
            None => Err(Tensor::F32(a)),
        },
        other => Err(other),
    }
}

/// Defines a unary kernel with an f32 fast path (`$op`), its by-value variant `$owned`, and
/// the generic path `$generic` (a `fn(&Node, &Tensor) -> Result<Tensor, KernelError>`).
macro_rules! fast_unary_kernel {
    ($name:ident, $owned:ident, $op:expr, $generic:expr) => {
        fn $name(n: &Node, i: &[Option<&Tensor>]) -> Res {
            let t = arg(i, 0)?;
            match fast_unary($op, t) {
                Some(out) => Ok(vec![out]),
                None => Ok(vec![$generic(n, t)?]),
            }
        }

        fn $owned(n: &Node, i: &[Option<&Tensor>], slot: usize, t: Tensor) -> Res {
            // A unary op has one input: `slot` is 0.
            match fast_unary_owned($op, t) {
                Ok(out) => Ok(vec![out]),
                Err(t) => $name(n, &with_owned(i, slot, &t)),
            }
        }
    };
}

fast_unary_kernel!(sqrt, sqrt_owned, Unary::Sqrt, |_, t| float_unary(t, f64::sqrt));
fast_unary_kernel!(erf, erf_owned, Unary::Erf, |_, t| float_unary(t, libm::erf));
fast_unary_kernel!(tanh, tanh_owned, Unary::Tanh, |_, t| float_unary(t, f64::tanh));
fast_unary_kernel!(sigmoid, sigmoid_owned, Unary::Sigmoid, |_, t| float_unary(t, |x: f64| 1.0 / (1.0 + (-x).exp())));
fast_unary_kernel!(reciprocal, reciprocal_owned, Unary::Reciprocal, |_, t| float_unary(t, |x: f64| 1.0 / x));
fast_unary_kernel!(neg, neg_owned, Unary::Neg, |_, t| numeric_unary(t, |x| -x, i64::wrapping_neg));
fast_unary_kernel!(abs, abs_owned, Unary::Abs, |_, t| numeric_unary(t, f64::abs, i64::wrapping_abs));
fast_unary_kernel!(relu, relu_owned, Unary::Relu, |_, t| numeric_unary(t, |x| if x > 0.0 { x } else { 0.0 }, |x: i64| x.max(0)));

fn leaky_relu(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let alpha = n.attr_f("alpha", 0.01) as f64;
    Ok(vec![float_unary(arg(i, 0)?, move |x| if x >= 0.0 { x } else { alpha * x })?])
}

fn gelu(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let t = arg(i, 0)?;
    let out = match n.attr_s("approximate", "none") {
        "none" => match fast_unary(Unary::Gelu, t) {
            Some(out) => out,
            None => float_unary(t, |x| 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)))?,
        },
        "tanh" => float_unary(t, |x| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh()))?,
        other => kbail!("unknown approximate mode '{other}' (expected 'none' or 'tanh')"),
    };
    Ok(vec![out])
}

fn gelu_owned(n: &Node, i: &[Option<&Tensor>], slot: usize, t: Tensor) -> Res {
    if slot == 0 && n.attr_s("approximate", "none") == "none" {
        match fast_unary_owned(Unary::Gelu, t) {
            Ok(out) => Ok(vec![out]),
            Err(t) => gelu(n, &with_owned(i, slot, &t)),
        }
    } else {
        gelu(n, &with_owned(i, slot, &t))
    }
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

fn identity_owned(_: &Node, _: &[Option<&Tensor>], _: usize, t: Tensor) -> Res {
    Ok(vec![t])
}

fn cast(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let to = n.attr_i("to", 0);
    let Some(dt) = onnx_dtype(to) else { kbail!("cast to ONNX type {to} is not supported") };
    let x = arg(i, 0)?;
    // A cast to a wider type (bool to int64) makes the output up to 8 times the input's size.
    alloc::check(dt, x.shape())?;
    Ok(vec![x.cast(dt)])
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

/// `op` over two contiguous f32 tensors with broadcasting, or `None` when the fast path does
/// not apply (other types or layouts; shapes that do not broadcast are left to the generic
/// path's error).
fn fast_binary(op: Binary, a: &Tensor, b: &Tensor) -> Result<Option<Tensor>, KernelError> {
    let (Some(x), Some(y)) = (f32_slice(a), f32_slice(b)) else { return Ok(None) };
    let Some(shape) = fpx_ir::shape::broadcast_shape(&[a.shape(), b.shape()]) else { return Ok(None) };
    let mut v = alloc::filled(&shape, 0f32)?;
    let Some(plan) = BroadcastPlan::new(a.shape(), b.shape()) else { return Ok(None) };
    fast::binary(op, &plan, x, y, &mut v);
    Ok(Some(Tensor::from(super::array(&plan.out_shape, v))))
}

/// `op` written into the owned input `slot` (0 = a, 1 = b) when it is contiguous f32 of the
/// output's shape and the other input is contiguous f32; gives the tensor back otherwise.
fn fast_binary_owned(op: Binary, slot: usize, owned: Tensor, other: &Tensor) -> Result<Tensor, Tensor> {
    let Tensor::F32(mut a) = owned else { return Err(owned) };
    let (Some(y), true) = (f32_slice(other), a.is_standard_layout()) else { return Err(Tensor::F32(a)) };
    let plan = match slot {
        0 => BroadcastPlan::new(a.shape(), other.shape()),
        _ => BroadcastPlan::new(other.shape(), a.shape()),
    };
    match plan {
        Some(plan) if plan.out_shape == a.shape() => {
            let buf = a.as_slice_mut().expect("standard layout");
            if slot == 0 {
                fast::binary_into_a(op, &plan, buf, y);
            } else {
                fast::binary_into_b(op, &plan, y, buf);
            }
            Ok(Tensor::F32(a))
        }
        _ => Err(Tensor::F32(a)),
    }
}

macro_rules! arith_kernel {
    ($name:ident, $owned:ident, $op:expr, $ff:expr, $fi:expr) => {
        fn $name(_: &Node, i: &[Option<&Tensor>]) -> Res {
            let (a, b) = (arg(i, 0)?, arg(i, 1)?);
            if let Some(out) = fast_binary($op, a, b)? {
                return Ok(vec![out]);
            }
            Ok(vec![same_type2!(a, b, x, y => arith(x, y, $ff, $fi)?)])
        }

        fn $owned(n: &Node, i: &[Option<&Tensor>], slot: usize, t: Tensor) -> Res {
            let other = arg(i, 1 - slot.min(1))?;
            match fast_binary_owned($op, slot, t, other) {
                Ok(out) => Ok(vec![out]),
                Err(t) => $name(n, &with_owned(i, slot, &t)),
            }
        }
    };
}

arith_kernel!(add, add_owned, Binary::Add, |p, q| p + q, i64::wrapping_add);
arith_kernel!(sub, sub_owned, Binary::Sub, |p, q| p - q, i64::wrapping_sub);
arith_kernel!(mul, mul_owned, Binary::Mul, |p, q| p * q, i64::wrapping_mul);
arith_kernel!(div_values, div_owned_values, Binary::Div, |p, q| p / q, |p, q| if q == 0 { 0 } else { p.wrapping_div(q) });

/// Integer division by zero is an error (as in onnxruntime), not a made-up value.
fn check_int_divisor(b: &Tensor) -> Result<(), KernelError> {
    let dt = b.dtype();
    if !dt.is_float() && dt != DType::Bool {
        if let Tensor::I64(d) = b.cast(DType::I64) {
            if d.iter().any(|&q| q == 0) {
                kbail!("integer division by zero (the divisor, of type {dt}, holds a 0)");
            }
        }
    }
    Ok(())
}

fn div(n: &Node, i: &[Option<&Tensor>]) -> Res {
    check_int_divisor(arg(i, 1)?)?;
    div_values(n, i)
}

fn div_owned(n: &Node, i: &[Option<&Tensor>], slot: usize, t: Tensor) -> Res {
    check_int_divisor(if slot == 1 { &t } else { arg(i, 1)? })?;
    div_owned_values(n, i, slot, t)
}

fn pow_t<T: Elem>(a: &ArrayD<T>, e: &ArrayD<f64>) -> Result<Tensor, KernelError> {
    Ok(Tensor::from(zip2(a, e, |p, q| T::from_f64(p.to_f64().powf(q)))?))
}

fn pow(_: &Node, i: &[Option<&Tensor>]) -> Res {
    let (base, e) = (arg(i, 0)?, arg(i, 1)?);
    if squares(base, e) {
        if let Some(out) = fast_unary(Unary::Square, base) {
            return Ok(vec![out]);
        }
    }
    let ev = e.to_f64();
    Ok(vec![numeric!(base, a => pow_t(a, &ev)?)])
}

/// Whether `base ^ e` is `base * base` of `base`'s shape: one exponent, 2, of no higher rank.
/// (For f32 the product rounds exactly as the f64 `powf` rounded to f32 does.)
fn squares(base: &Tensor, e: &Tensor) -> bool {
    e.len() == 1 && e.rank() <= base.rank() && e.to_f64_vec()[0] == 2.0
}

fn pow_owned(n: &Node, i: &[Option<&Tensor>], slot: usize, t: Tensor) -> Res {
    let e = arg(i, 1 - slot.min(1))?;
    if slot == 0 && squares(&t, e) {
        match fast_unary_owned(Unary::Square, t) {
            Ok(out) => Ok(vec![out]),
            Err(t) => pow(n, &with_owned(i, slot, &t)),
        }
    } else {
        pow(n, &with_owned(i, slot, &t))
    }
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
    alloc::check_t::<T>(&shape)?;
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

/// `Sum`: the inputs added in order, with multidirectional broadcasting (as a chain of `Add`).
fn sum(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let mut acc = arg(i, 0)?.clone();
    for k in 1..i.len() {
        acc = add(n, &[Some(&acc), Some(arg(i, k)?)])?.remove(0);
    }
    Ok(vec![acc])
}

/// `Mean`: [`sum`] divided by the number of inputs.
fn mean(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let total = sum(n, i)?.remove(0);
    let count = Tensor::scalar_f32(i.len() as f32).cast(total.dtype());
    div_values(n, &[Some(&total), Some(&count)])
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
        ("Sum", sum),
        ("Mean", mean),
        ("Min", min),
        ("Max", max),
        ("Clip", clip),
    ];
    for (op, k) in table {
        r.add(op, *k);
    }
    let owned: &[(&str, super::OwnedKernelFn)] = &[
        ("Sqrt", sqrt_owned),
        ("Erf", erf_owned),
        ("Tanh", tanh_owned),
        ("Sigmoid", sigmoid_owned),
        ("Reciprocal", reciprocal_owned),
        ("Neg", neg_owned),
        ("Abs", abs_owned),
        ("Relu", relu_owned),
        ("Gelu", gelu_owned),
        ("Identity", identity_owned),
        ("Add", add_owned),
        ("Sub", sub_owned),
        ("Mul", mul_owned),
        ("Div", div_owned),
        ("Pow", pow_owned),
    ];
    for (op, k) in owned {
        r.add_owned(op, *k);
    }
}
