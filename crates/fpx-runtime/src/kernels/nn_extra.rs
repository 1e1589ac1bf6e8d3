//! Reference kernels of the neural-network ops beyond the core set (schemas in
//! `fpx_ir::ops`' `defs_nn`): the activations Softplus, HardSigmoid and Mish and LogSoftmax
//! here; the normalizations in `norms`, Conv in `conv`, Attention in `attention` and
//! RotaryEmbedding in `rotary`, and fpx's fused attention in `fused_attention`.
//!
//! Every kernel computes in a [`Real`]: f64 for double tensors, f32 for float, float16 and
//! bfloat16 ones (converted on the way in and rounded once on the way out). Outputs and
//! temporaries that can outgrow the inputs are allocated through `alloc`, within the budget.

mod attention;
mod attention_blocks;
mod attention_tiles;
mod conv;
mod fused_attention;
mod norms;
mod rotary;
mod rotate_half;

use super::{alloc, arg, array, axis, bad_type, KernelRegistry};
use crate::{kbail, KernelError};
use fpx_ir::{DType, Elem, Node, Tensor};
use half::{bf16, f16};
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

type Res = Result<Vec<Tensor>, KernelError>;

/// The element type a kernel computes in: f32 or f64.
pub(crate) trait Real:
    super::matmul::Gemm + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> + Neg<Output = Self> + AddAssign
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// Negative infinity (a masked attention score).
    const NEG_INFINITY: Self;
    /// `e^self`.
    fn exp(self) -> Self;
    /// `ln(1 + self)`.
    fn ln_1p(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// The larger value (the other one when either is NaN).
    fn max(self, other: Self) -> Self;
}

macro_rules! real {
    ($t:ty) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
        }
    };
}
real!(f32);
real!(f64);

/// Runs `$body` with `$r` the [`Real`] tensor `$t` computes in; other element types are an error.
macro_rules! with_real {
    ($t:expr, $r:ident => $body:expr) => {
        match $t.dtype() {
            fpx_ir::DType::F64 => {
                type $r = f64;
                $body
            }
            fpx_ir::DType::F32 | fpx_ir::DType::F16 | fpx_ir::DType::BF16 => {
                type $r = f32;
                $body
            }
            _ => return Err($crate::kernels::bad_type($t)),
        }
    };
}
pub(crate) use with_real;

/// A float tensor's values in standard order as `R`, within the budget.
pub(crate) fn values<R: Real>(t: &Tensor) -> Result<Vec<R>, KernelError> {
    let shape = t.shape();
    match t {
        Tensor::F32(a) => alloc::collect(shape, a.iter().map(|&x| R::from_f64(x as f64))),
        Tensor::F64(a) => alloc::collect(shape, a.iter().map(|&x| R::from_f64(x))),
        Tensor::F16(a) => alloc::collect(shape, a.iter().map(|&x| R::from_f64(x.to_f64()))),
        Tensor::BF16(a) => alloc::collect(shape, a.iter().map(|&x| R::from_f64(x.to_f64()))),
        other => Err(bad_type(other)),
    }
}

/// A tensor of element type `dtype` (a float type) and `shape` from values computed in `R`
/// (rounded once when `dtype` is narrower), within the budget.
pub(crate) fn tensor<R: Real>(dtype: DType, shape: &[usize], v: Vec<R>) -> Result<Tensor, KernelError> {
    if dtype == R::DTYPE {
        return Ok(Tensor::from(array(shape, v)));
    }
    Ok(match dtype {
        DType::F32 => Tensor::from(array(shape, alloc::collect(shape, v.iter().map(|x| x.to_f64() as f32))?)),
        DType::F64 => Tensor::from(array(shape, alloc::collect(shape, v.iter().map(|x| x.to_f64()))?)),
        DType::F16 => Tensor::from(array(shape, alloc::collect(shape, v.iter().map(|x| f16::from_f64(x.to_f64())))?)),
        DType::BF16 => Tensor::from(array(shape, alloc::collect(shape, v.iter().map(|x| bf16::from_f64(x.to_f64())))?)),
        other => kbail!("element type {other} is not a float type"),
    })
}

/// `c = alpha * a·b + beta * c` for a row-major `m × n` block of `c` whose rows are `ldc`
/// elements apart, `a` and `b` read through (row, column) strides: the MatMul kernels' parallel
/// GEMM ([`super::matmul::gemm_into`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<R: Real>(
    (m, k, n): (usize, usize, usize),
    alpha: R,
    a: &[R],
    (rsa, csa): (usize, usize),
    b: &[R],
    (rsb, csb): (usize, usize),
    beta: R,
    c: &mut [R],
    ldc: usize,
) {
    super::matmul::gemm_into(m, k, n, alpha, a, rsa as isize, csa as isize, b, rsb as isize, csb as isize, beta, c, ldc)
}

/// `f` over every element of a float tensor, computed in `R`.
fn map<R: Real>(x: &Tensor, f: impl Fn(R) -> R) -> Result<Tensor, KernelError> {
    let mut v = values::<R>(x)?;
    v.iter_mut().for_each(|e| *e = f(*e));
    tensor(x.dtype(), x.shape(), v)
}

/// `ln(1 + e^x)` without overflow for large `x`.
fn softplus_of<R: Real>(x: R) -> R {
    if x > R::ZERO {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

fn softplus(_: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    Ok(vec![with_real!(x, R => map::<R>(x, softplus_of)?)])
}

fn hard_sigmoid(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    let (alpha, beta) = (n.attr_f("alpha", 0.2) as f64, n.attr_f("beta", 0.5) as f64);
    Ok(vec![with_real!(x, R => {
        let (a, b) = (R::from_f64(alpha), R::from_f64(beta));
        map::<R>(x, |v| (a * v + b).clamp(R::ZERO, R::ONE))?
    })])
}

fn mish(_: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    Ok(vec![with_real!(x, R => map::<R>(x, |v| v * softplus_of(v).tanh())?)])
}

/// LogSoftmax's reduction as (outer, len, inner): before opset 13 the input is coerced to 2-D
/// at `axis` (default 1); from 13 on only `axis` (default -1) is reduced.
fn log_softmax_layout(n: &Node, shape: &[usize]) -> Result<(usize, usize, usize), KernelError> {
    let r = shape.len();
    if r == 0 {
        return Ok((1, 1, 1));
    }
    let a = axis(n.attr_i("axis", if n.opset < 13 { 1 } else { -1 }), r)?;
    Ok(if n.opset < 13 {
        (shape[..a].iter().product(), shape[a..].iter().product(), 1)
    } else {
        (shape[..a].iter().product(), shape[a], shape[a + 1..].iter().product())
    })
}

fn log_softmax_t<R: Real>(n: &Node, x: &Tensor) -> Result<Tensor, KernelError> {
    let (outer, len, inner) = log_softmax_layout(n, x.shape())?;
    if x.is_empty() {
        // An empty input can have huge other axes: nothing to loop over.
        return Ok(x.clone());
    }
    let mut v = values::<R>(x)?;
    for o in 0..outer {
        for k in 0..inner {
            let idx = |j: usize| (o * len + j) * inner + k;
            let m = (0..len).map(|j| v[idx(j)]).fold(R::NEG_INFINITY, R::max);
            let mut sum = R::ZERO;
            for j in 0..len {
                sum += (v[idx(j)] - m).exp();
            }
            let log_sum = sum.ln();
            for j in 0..len {
                v[idx(j)] = (v[idx(j)] - m) - log_sum;
            }
        }
    }
    tensor(x.dtype(), x.shape(), v)
}

fn log_softmax(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    Ok(vec![with_real!(x, R => log_softmax_t::<R>(n, x)?)])
}

pub(super) fn register(r: &mut KernelRegistry) {
    let table: &[(&str, super::KernelFn)] = &[
        ("Softplus", softplus),
        ("HardSigmoid", hard_sigmoid),
        ("Mish", mish),
        ("LogSoftmax", log_softmax),
        ("BatchNormalization", norms::batch_norm),
        ("InstanceNormalization", norms::instance_norm),
        ("GroupNormalization", norms::group_norm),
        ("RMSNormalization", norms::rms_norm),
        ("Conv", conv::conv),
        ("Attention", attention::attention),
        ("RotaryEmbedding", rotary::rotary_embedding),
    ];
    for (op, k) in table {
        r.add(op, *k);
    }
    r.add_in(fpx_ir::ops::FPX_DOMAIN, fpx_ir::ops::fused_attention::OP_TYPE, fused_attention::fused_attention);
    r.add_in(fpx_ir::ops::FPX_DOMAIN, fpx_ir::ops::rotate_half::OP_TYPE, rotate_half::rotate_half);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use fpx_ir::ndarray::{ArrayD, IxDyn};
    use fpx_ir::Attribute;
    use fpx_test_support::Rng;

    /// Runs `op` at `opset` with `attrs` on `inputs` (`None`: an omitted input), asking for
    /// `outputs` outputs.
    pub(crate) fn run(op: &str, opset: i64, attrs: &[(&str, Attribute)], inputs: &[Option<&Tensor>], outputs: usize) -> Res {
        let mut g = fpx_ir::Graph::new("t");
        let outs = (0..outputs).map(|k| g.value_named(&format!("y{k}"))).collect();
        let mut node = Node::new("the_node", op, opset, vec![], outs);
        for (k, v) in attrs {
            node.attrs.insert(k.to_string(), v.clone());
        }
        let k = KernelRegistry::standard().get("", op).expect("kernel");
        k(&node, inputs)
    }

    /// A random f32 tensor of `shape` with values uniform in [-2, 2).
    pub(crate) fn rand(shape: &[usize], rng: &mut Rng) -> Tensor {
        let n = shape.iter().product();
        Tensor::from(ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|_| rng.range(-2.0, 2.0) as f32).collect()).unwrap())
    }

    /// Asserts that `got` matches `want` (f64) within `tol`, relative to max(1, |want|).
    pub(crate) fn assert_close(got: &Tensor, want: &[f64], tol: f64) {
        let g = got.to_f64_vec();
        assert_eq!(g.len(), want.len());
        for (k, (a, b)) in g.iter().zip(want).enumerate() {
            assert!(a == b || (a - b).abs() <= tol * b.abs().max(1.0) || (a.is_nan() && b.is_nan()), "element {k}: {a} vs {b}");
        }
    }

    #[test]
    fn activations_match_their_formulas_in_f64_and_f16() {
        let mut rng = Rng::new(7);
        let x = rand(&[3, 50], &mut rng);
        let mut big = x.to_f64_vec();
        big[0] = 100.0; // softplus(100) = 100, not inf
        big[1] = -100.0;
        let x = Tensor::from(ArrayD::from_shape_vec(IxDyn(&[3, 50]), big.clone()).unwrap()).cast(DType::F32);
        let sp = |v: f64| if v > 30.0 { v } else { (1.0 + v.exp()).ln() };
        let y = run("Softplus", 22, &[], &[Some(&x)], 1).unwrap();
        assert_close(&y[0], &big.iter().map(|&v| sp(v)).collect::<Vec<_>>(), 1e-6);
        let y = run("Mish", 22, &[], &[Some(&x.cast(DType::F64))], 1).unwrap();
        assert_eq!(y[0].dtype(), DType::F64);
        assert_close(&y[0], &big.iter().map(|&v| v * sp(v).tanh()).collect::<Vec<_>>(), 1e-12);
        let attrs = [("alpha", Attribute::Float(0.5)), ("beta", Attribute::Float(0.25))];
        let y = run("HardSigmoid", 22, &attrs, &[Some(&x.cast(DType::F16))], 1).unwrap();
        assert_eq!(y[0].dtype(), DType::F16);
        let want: Vec<f64> = big.iter().map(|&v| (0.5 * f16::from_f64(v).to_f64() + 0.25).clamp(0.0, 1.0)).collect();
        assert_close(&y[0], &want, 1e-3);
        let e = run("Softplus", 22, &[], &[Some(&Tensor::vec_i64(vec![1]))], 1).unwrap_err().0;
        assert!(e.contains("int64"), "{e}");
    }

    /// Empty inputs are cheap to make with huge other axes: no kernel may loop over or allocate
    /// for those axes.
    #[test]
    fn empty_inputs_with_huge_dimensions_stay_empty() {
        let empty = |shape: &[usize]| Tensor::from(ArrayD::<f32>::zeros(IxDyn(shape)));
        let huge = 1usize << 40;
        let x = empty(&[huge, 0, 1 << 20]);
        assert_eq!(run("LogSoftmax", 13, &[("axis", Attribute::Int(1))], &[Some(&x)], 1).unwrap()[0].shape(), x.shape());
        let x = empty(&[1 << 30, 1 << 30, 0]);
        let cache = empty(&[1 << 30, 1 << 30, 0]);
        let y = run("RotaryEmbedding", 23, &[("num_heads", Attribute::Int(1 << 40))], &[Some(&x), Some(&cache), Some(&cache)], 1).unwrap();
        assert_eq!(y[0].shape(), x.shape());
        let q = empty(&[1 << 20, 1 << 20, 4, 0]);
        let y = run("Attention", 23, &[], &[Some(&q), Some(&q), Some(&q)], 3).unwrap();
        assert_eq!(y[0].shape(), q.shape());
        let x = empty(&[0, 3, huge]);
        let y = run("Conv", 22, &[], &[Some(&x), Some(&empty(&[2, 3, 1]))], 1).unwrap();
        assert_eq!(y[0].shape(), &[0, 2, huge]);
        // No keys at all: zero weights, Y = 0.
        let (q, kv) = (Tensor::from(ArrayD::<f32>::ones(IxDyn(&[1, 1, 2, 4]))), empty(&[1, 1, 0, 4]));
        let y = run("Attention", 23, &[], &[Some(&q), Some(&kv), Some(&kv)], 1).unwrap();
        assert_eq!(y[0].to_f64_vec(), vec![0.0; 8]);
    }

    #[test]
    fn log_softmax_coerces_to_2d_before_opset_13_and_reduces_one_axis_after() {
        let mut rng = Rng::new(3);
        let x = rand(&[2, 3, 4], &mut rng);
        let v = x.to_f64_vec();
        let lse = |idx: &[usize]| idx.iter().map(|&k| v[k].exp()).sum::<f64>().ln();
        // Opset 11, axis 1: rows of 12.
        let want: Vec<f64> = (0..24).map(|k| v[k] - lse(&(k / 12 * 12..k / 12 * 12 + 12).collect::<Vec<_>>())).collect();
        let y = run("LogSoftmax", 11, &[("axis", Attribute::Int(1))], &[Some(&x)], 1).unwrap();
        assert_close(&y[0], &want, 1e-5);
        // Opset 13, axis 1: lanes of 3, 4 apart.
        let want: Vec<f64> = (0..24).map(|k| v[k] - lse(&(0..3).map(|j| k / 12 * 12 + j * 4 + k % 4).collect::<Vec<_>>())).collect();
        let y = run("LogSoftmax", 13, &[("axis", Attribute::Int(1))], &[Some(&x)], 1).unwrap();
        assert_close(&y[0], &want, 1e-5);
    }
}
