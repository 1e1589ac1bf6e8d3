//! IsNaN, IsInf, Sign, Mod and Dropout (inference: the identity).

use super::Res;
use crate::kernels::elementwise::zip2;
use crate::kernels::{alloc, arg, bad_type, opt_arg, with_owned, KernelRegistry};
use crate::{kbail, KernelError};
use fpx_ir::half::{bf16, f16};
use fpx_ir::ndarray::ArrayD;
use fpx_ir::{Elem, Node, Tensor};

/// Maps a floating-point tensor to bool with `f` (given the value as f64).
fn float_to_bool(t: &Tensor, f: impl Fn(f64) -> bool) -> Result<Tensor, KernelError> {
    fn map<T: Elem>(a: &ArrayD<T>, f: impl Fn(f64) -> bool) -> Tensor {
        Tensor::from(a.mapv(|x| f(x.to_f64())))
    }
    Ok(match t {
        Tensor::F32(a) => map(a, f),
        Tensor::F64(a) => map(a, f),
        Tensor::F16(a) => map(a, f),
        Tensor::BF16(a) => map(a, f),
        other => return Err(bad_type(other)),
    })
}

fn is_nan(_: &Node, i: &[Option<&Tensor>]) -> Res {
    Ok(vec![float_to_bool(arg(i, 0)?, f64::is_nan)?])
}

fn is_inf(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let (neg, pos) = (n.attr_i("detect_negative", 1) != 0, n.attr_i("detect_positive", 1) != 0);
    Ok(vec![float_to_bool(arg(i, 0)?, |x| x.is_infinite() && if x > 0.0 { pos } else { neg })?])
}

fn sign_t<T: Elem>(a: &ArrayD<T>) -> Tensor {
    let (zero, one, minus_one) = (T::default(), T::from_i64(1), T::from_i64(-1));
    // NaN (no order) stays NaN, zeros keep their sign bit.
    Tensor::from(a.mapv(|x| {
        if x > zero {
            one
        } else if x < zero {
            minus_one
        } else {
            x
        }
    }))
}

fn sign(_: &Node, i: &[Option<&Tensor>]) -> Res {
    match arg(i, 0)? {
        t @ Tensor::Bool(_) => Err(bad_type(t)),
        t => Ok(vec![fpx_ir::dispatch!(t, a => sign_t(a))]),
    }
}

/// The floored (Python) remainder of signed integers: the sign of the divisor.
macro_rules! floored_rem {
    ($t:ty) => {
        |p: $t, q: $t| {
            let r = p.wrapping_rem(q);
            if r != 0 && ((r < 0) != (q < 0)) {
                r.wrapping_add(q)
            } else {
                r
            }
        }
    };
}

/// Integer Mod: `fmod` keeps the sign of the dividend (C's `%`), otherwise of the divisor. A
/// zero divisor is an error (as in onnxruntime), not a made-up value.
macro_rules! int_mod {
    ($x:expr, $y:expr, $fmod:expr, $t:ty, signed) => {{
        int_mod!(@check $y);
        if $fmod {
            Tensor::from(zip2($x, $y, |p: $t, q: $t| p.wrapping_rem(q))?)
        } else {
            Tensor::from(zip2($x, $y, floored_rem!($t))?)
        }
    }};
    ($x:expr, $y:expr, $fmod:expr, $t:ty, unsigned) => {{
        int_mod!(@check $y);
        Tensor::from(zip2($x, $y, |p: $t, q: $t| p % q)?)
    }};
    (@check $y:expr) => {
        if $y.iter().any(|&q| q == 0) {
            kbail!("integer Mod by zero");
        }
    };
}

fn modulo(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let (a, b) = (arg(i, 0)?, arg(i, 1)?);
    let fmod = n.attr_i("fmod", 0) != 0;
    if a.dtype().is_float() && !fmod {
        kbail!("Mod of {} inputs needs fmod = 1", a.dtype());
    }
    // Float remainders are exact, so computing them in a wider type and rounding back is too.
    let out = match (a, b) {
        (Tensor::F32(x), Tensor::F32(y)) => Tensor::from(zip2(x, y, |p, q| p % q)?),
        (Tensor::F64(x), Tensor::F64(y)) => Tensor::from(zip2(x, y, |p, q| p % q)?),
        (Tensor::F16(x), Tensor::F16(y)) => Tensor::from(zip2(x, y, |p, q| f16::from_f32(p.to_f32() % q.to_f32()))?),
        (Tensor::BF16(x), Tensor::BF16(y)) => Tensor::from(zip2(x, y, |p, q| bf16::from_f32(p.to_f32() % q.to_f32()))?),
        (Tensor::I8(x), Tensor::I8(y)) => int_mod!(x, y, fmod, i8, signed),
        (Tensor::I16(x), Tensor::I16(y)) => int_mod!(x, y, fmod, i16, signed),
        (Tensor::I32(x), Tensor::I32(y)) => int_mod!(x, y, fmod, i32, signed),
        (Tensor::I64(x), Tensor::I64(y)) => int_mod!(x, y, fmod, i64, signed),
        (Tensor::U8(x), Tensor::U8(y)) => int_mod!(x, y, fmod, u8, unsigned),
        (Tensor::U16(x), Tensor::U16(y)) => int_mod!(x, y, fmod, u16, unsigned),
        (Tensor::U32(x), Tensor::U32(y)) => int_mod!(x, y, fmod, u32, unsigned),
        (Tensor::U64(x), Tensor::U64(y)) => int_mod!(x, y, fmod, u64, unsigned),
        (p, q) if p.dtype() != q.dtype() => kbail!("operand element types differ: {} and {}", p.dtype(), q.dtype()),
        (p, _) => return Err(bad_type(p)),
    };
    Ok(vec![out])
}

/// Whether a Dropout node runs in training mode: the `training_mode` input (opset 12 on), or
/// `is_test = 0` (opset 6); from opset 7 to 11 Dropout is the identity at inference. Its ratio:
/// the `ratio` input (opset 12 on) or attribute, 0.5 by default.
fn dropout_mode(n: &Node, i: &[Option<&Tensor>]) -> Result<(bool, f64), KernelError> {
    if n.opset >= 12 {
        let ratio = match opt_arg(i, 1) {
            Some(r) => match r.to_f64_vec().as_slice() {
                [v] => *v,
                v => kbail!("ratio must hold one value, holds {}", v.len()),
            },
            None => 0.5,
        };
        let training = match opt_arg(i, 2) {
            Some(Tensor::Bool(t)) if t.len() == 1 => t.iter().any(|&b| b),
            Some(t) => kbail!("training_mode must be one bool, got {} of shape {:?}", t.dtype(), t.shape()),
            None => false,
        };
        Ok((training, ratio))
    } else {
        if opt_arg(i, 1).is_some() {
            kbail!("Dropout takes one input before opset 12");
        }
        Ok((n.opset < 7 && n.attr_i("is_test", 0) == 0, n.attr_f("ratio", 0.5) as f64))
    }
}

/// Checks a Dropout node can run (inference, or training with a zero ratio, where nothing is
/// dropped) and makes its mask when the node asks for one: all kept — bool from opset 10 on,
/// ones of the data's type before.
fn dropout_checks(n: &Node, i: &[Option<&Tensor>], x: &Tensor) -> Result<Option<Tensor>, KernelError> {
    if !x.dtype().is_float() {
        return Err(bad_type(x));
    }
    let (training, ratio) = dropout_mode(n, i)?;
    if training && ratio != 0.0 {
        kbail!("training-mode Dropout (ratio {ratio}) drops random elements; fpx runs inference only (training_mode false or is_test 1)");
    }
    if n.outputs.len() < 2 {
        return Ok(None);
    }
    let shape = x.shape();
    fn ones<T: Elem>(_: &ArrayD<T>, shape: &[usize]) -> Result<Tensor, KernelError> {
        Ok(Tensor::from(alloc::full(shape, T::from_f64(1.0))?))
    }
    Ok(Some(if n.opset >= 10 { Tensor::from(alloc::full(shape, true)?) } else { fpx_ir::dispatch!(x, a => ones(a, shape)?) }))
}

fn dropout(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    let mask = dropout_checks(n, i, x)?;
    Ok([x.clone()].into_iter().chain(mask).collect())
}

fn dropout_owned(n: &Node, i: &[Option<&Tensor>], slot: usize, t: Tensor) -> Res {
    if slot != 0 {
        return dropout(n, &with_owned(i, slot, &t));
    }
    let mask = dropout_checks(n, i, &t)?;
    Ok([t].into_iter().chain(mask).collect())
}

pub(super) fn register(r: &mut KernelRegistry) {
    r.add("IsNaN", is_nan);
    r.add("IsInf", is_inf);
    r.add("Sign", sign);
    r.add("Mod", modulo);
    r.add("Dropout", dropout);
    r.add_owned("Dropout", dropout_owned);
}
