//! f32 fast paths of the hot reference kernels: flat loops over contiguous slices that LLVM
//! vectorizes (each compiled twice, for baseline x86-64 and for AVX2 + FMA, picked at run time),
//! vectorizable `exp`/`erf`/`tanh`/`sigmoid`, numpy broadcasting walked row by row, and
//! large work split across the current rayon pool (so `--threads` is respected).
//!
//! Every function here has a generic counterpart in the kernels that call it; the tests at the
//! bottom compare the two on random data.

use rayon::prelude::*;

/// Elements below which work stays on the calling thread.
pub(crate) const PAR_MIN: usize = 1 << 15;
/// Elements per parallel task (about 32 KiB of f32).
const PAR_CHUNK: usize = 1 << 13;

/// Whether work over `len` elements is worth splitting across the current rayon pool.
pub(crate) fn parallel(len: usize) -> bool {
    len >= PAR_MIN && rayon::current_num_threads() > 1
}

/// Multiply-add: fused (one rounding) where the CPU has FMA, else a product and a sum.
pub(crate) trait MulAdd {
    /// `a * b + c`.
    fn fma(a: f32, b: f32, c: f32) -> f32;
}

/// `a * b + c` with two roundings (the baseline target has no FMA).
pub(crate) struct Plain;

impl MulAdd for Plain {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `a * b + c` fused (only used in code compiled with the `fma` target feature).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// Defines `fn $name` that runs `$body` compiled for AVX-512 (F/BW/DQ/VL) or else AVX2, with FMA
/// (`$m` = [`Fused`]), when the CPU has them, and for the baseline target (with `$m` =
/// [`Plain`]) otherwise. The fused versions compute the same operations in the same order, so
/// they give the same results; only the vector width differs. Helpers the
/// body calls must be `#[inline(always)]` so they are compiled into both versions.
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident<$m:ident>($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable<$m: MulAdd>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    portable::<Fused>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    portable::<Fused>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: this CPU supports AVX-512 F/BW/DQ/VL and FMA.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: this CPU supports AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable::<Plain>($($arg),*)
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Vectorizable scalar math (branch-free: both sides of each choice are computed, then selected).

/// `e^x` for `x <= 88.3` (larger `x` give `e^88.3`); below `ln 2^-126` the result is 0.
/// Relative error about 2 ulp: Cody-Waite reduction to `r` in [-ln2/2, ln2/2] and Cephes'
/// polynomial, scaled by building `2^n` from its bits.
#[inline(always)]
pub(crate) fn exp_f32<M: MulAdd>(x: f32) -> f32 {
    const LO: f32 = -87.336_54; // ln 2^-126
    const HI: f32 = 88.3; // keeps n <= 127
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer in the low bits
    #[allow(clippy::manual_clamp)] // f32::clamp is not branch-free; NaN must pass through
    let xc = if x < LO {
        LO
    } else if x > HI {
        HI
    } else {
        x
    };
    let v = M::fma(xc, std::f32::consts::LOG2_E, MAGIC);
    let n = v - MAGIC;
    let r = M::fma(n, 2.121_944_4e-4, M::fma(n, -0.693_359_4, xc)); // xc - n·ln2 in two parts
    let ni = (v.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let scale = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    let mut p = 1.987_569_2e-4f32;
    p = M::fma(p, r, 1.398_199_9e-3);
    p = M::fma(p, r, 8.333_452e-3);
    p = M::fma(p, r, 4.166_579_6e-2);
    p = M::fma(p, r, 1.666_666_5e-1);
    p = M::fma(p, r, 0.5);
    let y = M::fma(p, r * r, r + 1.0) * scale;
    if x < LO {
        0.0
    } else {
        y
    }
}

/// `erf(x)`, absolute error below 2e-7 (checked against f64 in the tests). For |x| < 0.9 an
/// odd polynomial `x·P(x²)` (also accurate relative to erf near 0); above, `1 - e^Q(|x|)` with
/// `Q ≈ ln erfc` fitted on [0.9, 4] (beyond 4, erf rounds to ±1 in f32).
#[inline(always)]
#[allow(clippy::approx_constant)] // fitted coefficients: 1.1283791 is 1 ulp off 2/sqrt(pi) on purpose
pub(crate) fn erf_f32<M: MulAdd>(x: f32) -> f32 {
    let t = x.abs();
    let s = x * x;
    let mut p = -5.938_574_3e-4f32;
    p = M::fma(p, s, 4.977_845e-3);
    p = M::fma(p, s, -2.675_095_8e-2);
    p = M::fma(p, s, 1.128_113_6e-1);
    p = M::fma(p, s, -3.761_237_6e-1);
    p = M::fma(p, s, 1.128_379_1);
    let small = x * p;
    let tc = if t > 4.0 { 4.0 } else { t };
    let mut q = -2.091_211e-5f32;
    q = M::fma(q, tc, 4.323_306_8e-4);
    q = M::fma(q, tc, -4.160_652_4e-3);
    q = M::fma(q, tc, 2.509_180_6e-2);
    q = M::fma(q, tc, -1.082_370_65e-1);
    q = M::fma(q, tc, -6.333_862_5e-1);
    q = M::fma(q, tc, -1.129_495_4);
    q = M::fma(q, tc, 1.705_860_9e-4);
    let big = (1.0 - exp_f32::<M>(q)).copysign(x);
    // NaN fails `t >= 0.9` and takes the polynomial, which keeps it NaN.
    if t >= 0.9 {
        big
    } else {
        small
    }
}

/// `tanh(x)`: a Taylor polynomial for |x| < 0.25, `(1 - e^-2|x|) / (1 + e^-2|x|)` above.
#[inline(always)]
pub(crate) fn tanh_f32<M: MulAdd>(x: f32) -> f32 {
    let t = x.abs();
    let e = exp_f32::<M>(-2.0 * t);
    let big = ((1.0 - e) / (1.0 + e)).copysign(x);
    let s = x * x;
    let mut p = 62.0f32 / 2835.0;
    p = M::fma(p, s, -17.0 / 315.0);
    p = M::fma(p, s, 2.0 / 15.0);
    p = M::fma(p, s, -1.0 / 3.0);
    let small = M::fma(x * s, p, x);
    if t >= 0.25 {
        big
    } else {
        small
    }
}

/// `1 / (1 + e^-x)`, from `e^-|x|` so neither side loses relative precision.
#[inline(always)]
pub(crate) fn sigmoid_f32<M: MulAdd>(x: f32) -> f32 {
    let e = exp_f32::<M>(-x.abs());
    let inv = 1.0 / (1.0 + e);
    if x >= 0.0 {
        inv
    } else {
        e * inv
    }
}

/// GELU with the exact (erf) form.
#[inline(always)]
pub(crate) fn gelu_f32<M: MulAdd>(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32::<M>(x * std::f32::consts::FRAC_1_SQRT_2))
}

// ---------------------------------------------------------------------------------------------
// Unary maps.

/// A unary f32 op with a fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unary {
    Erf,
    Gelu,
    Tanh,
    Sigmoid,
    Sqrt,
    Neg,
    Abs,
    Relu,
    Reciprocal,
    Square,
}

#[inline(always)]
fn map<F: Fn(f32) -> f32>(src: Option<&[f32]>, dst: &mut [f32], f: F) {
    match src {
        Some(s) => {
            for (d, &x) in dst.iter_mut().zip(s) {
                *d = f(x);
            }
        }
        None => {
            for d in dst.iter_mut() {
                *d = f(*d);
            }
        }
    }
}

multiversion! {
    /// `dst = op(src)`, or `dst = op(dst)` in place when `src` is `None`.
    fn unary_chunk<M>(op: Unary, src: Option<&[f32]>, dst: &mut [f32]) {
        match op {
            Unary::Erf => map(src, dst, erf_f32::<M>),
            Unary::Gelu => map(src, dst, gelu_f32::<M>),
            Unary::Tanh => map(src, dst, tanh_f32::<M>),
            Unary::Sigmoid => map(src, dst, sigmoid_f32::<M>),
            Unary::Sqrt => map(src, dst, f32::sqrt),
            Unary::Neg => map(src, dst, |x| -x),
            Unary::Abs => map(src, dst, f32::abs),
            Unary::Relu => map(src, dst, |x| if x > 0.0 { x } else { 0.0 }),
            Unary::Reciprocal => map(src, dst, |x| 1.0 / x),
            Unary::Square => map(src, dst, |x| x * x),
        }
    }
}

/// `op` over `src`, into a new vector.
pub(crate) fn unary(op: Unary, src: &[f32]) -> Vec<f32> {
    let mut dst = vec![0f32; src.len()];
    if parallel(src.len()) {
        dst.par_chunks_mut(PAR_CHUNK).zip(src.par_chunks(PAR_CHUNK)).for_each(|(d, s)| unary_chunk(op, Some(s), d));
    } else {
        unary_chunk(op, Some(src), &mut dst);
    }
    dst
}

/// `op` over `buf`, in place.
pub(crate) fn unary_in_place(op: Unary, buf: &mut [f32]) {
    if parallel(buf.len()) {
        buf.par_chunks_mut(PAR_CHUNK).for_each(|d| unary_chunk(op, None, d));
    } else {
        unary_chunk(op, None, buf);
    }
}

// ---------------------------------------------------------------------------------------------
// Binary arithmetic with numpy broadcasting.

/// A binary f32 op with a fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

/// How two operands broadcast: the output shape, and the output walked as rows of `inner`
/// contiguous elements. Along a row each operand is either contiguous (`*_vec`) or one value
/// repeated; `outer` gives, per remaining (coalesced) dimension, its size and each operand's
/// stride in elements (0 where it is broadcast).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BroadcastPlan {
    pub(crate) out_shape: Vec<usize>,
    inner: usize,
    a_vec: bool,
    b_vec: bool,
    outer: Vec<(usize, usize, usize)>,
}

impl BroadcastPlan {
    /// The plan for shapes `sa` and `sb`, or `None` when they do not broadcast.
    pub(crate) fn new(sa: &[usize], sb: &[usize]) -> Option<BroadcastPlan> {
        let r = sa.len().max(sb.len());
        let pad = |s: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, r - s.len()).chain(s.iter().copied()).collect() };
        let (pa, pb) = (pad(sa), pad(sb));
        let out_shape = super::broadcast_shape(&[sa, sb]).ok()?;
        // Row-major strides, 0 along the dimensions that broadcast.
        let strides = |s: &[usize]| -> Vec<usize> {
            let mut st = super::row_major_strides(s);
            for (x, &n) in st.iter_mut().zip(s) {
                if n == 1 {
                    *x = 0;
                }
            }
            st
        };
        let (sta, stb) = (strides(&pa), strides(&pb));
        // Innermost first: (size, stride a, stride b), merging a dimension into the block
        // inside it when both operands step through it contiguously.
        let mut dims: Vec<(usize, usize, usize)> = Vec::new();
        for d in (0..r).rev() {
            if out_shape[d] == 1 {
                continue;
            }
            match dims.last_mut() {
                Some(last) if sta[d] == last.1 * last.0 && stb[d] == last.2 * last.0 => last.0 *= out_shape[d],
                _ => dims.push((out_shape[d], sta[d], stb[d])),
            }
        }
        let (inner, a_vec, b_vec) = match dims.first() {
            Some(&(n, x, y)) => (n, x == 1, y == 1),
            None => (1, false, false),
        };
        let outer: Vec<_> = dims.iter().skip(1).rev().copied().collect();
        Some(BroadcastPlan { out_shape, inner, a_vec, b_vec, outer })
    }

    fn len(&self) -> usize {
        self.out_shape.iter().product()
    }
}

/// Where a row reads one operand.
#[derive(Clone, Copy)]
enum Src<'a> {
    /// The operand's data, laid out as the plan says.
    Data(&'a [f32]),
    /// The output buffer itself (the operand has the output's shape and is overwritten).
    Out,
}

#[derive(Clone, Copy)]
enum Arg<'a> {
    Slice(&'a [f32]),
    Scalar(f32),
    Out,
}

#[inline(always)]
fn row<F: Fn(f32, f32) -> f32>(a: Arg<'_>, b: Arg<'_>, out: &mut [f32], f: F) {
    match (a, b) {
        (Arg::Slice(x), Arg::Slice(y)) => {
            for ((o, &p), &q) in out.iter_mut().zip(x).zip(y) {
                *o = f(p, q);
            }
        }
        (Arg::Slice(x), Arg::Scalar(q)) => {
            for (o, &p) in out.iter_mut().zip(x) {
                *o = f(p, q);
            }
        }
        (Arg::Scalar(p), Arg::Slice(y)) => {
            for (o, &q) in out.iter_mut().zip(y) {
                *o = f(p, q);
            }
        }
        (Arg::Scalar(p), Arg::Scalar(q)) => out.fill(f(p, q)),
        (Arg::Out, Arg::Slice(y)) => {
            for (o, &q) in out.iter_mut().zip(y) {
                *o = f(*o, q);
            }
        }
        (Arg::Out, Arg::Scalar(q)) => {
            for o in out.iter_mut() {
                *o = f(*o, q);
            }
        }
        (Arg::Slice(x), Arg::Out) => {
            for (o, &p) in out.iter_mut().zip(x) {
                *o = f(p, *o);
            }
        }
        (Arg::Scalar(p), Arg::Out) => {
            for o in out.iter_mut() {
                *o = f(p, *o);
            }
        }
        (Arg::Out, Arg::Out) => {
            for o in out.iter_mut() {
                *o = f(*o, *o);
            }
        }
    }
}

#[inline(always)]
fn binary_row(op: Binary, a: Arg<'_>, b: Arg<'_>, out: &mut [f32]) {
    match op {
        Binary::Add => row(a, b, out, |p, q| p + q),
        Binary::Sub => row(a, b, out, |p, q| p - q),
        Binary::Mul => row(a, b, out, |p, q| p * q),
        Binary::Div => row(a, b, out, |p, q| p / q),
    }
}

/// What one row reads of an operand that starts at `off`.
#[inline(always)]
fn row_arg(s: Src<'_>, off: usize, vec: bool, inner: usize) -> Arg<'_> {
    match s {
        Src::Out => Arg::Out,
        Src::Data(d) if vec => Arg::Slice(&d[off..off + inner]),
        Src::Data(d) => Arg::Scalar(d[off]),
    }
}

multiversion! {
    /// The rows of `out` (whole rows, the first being row `row0` of the output).
    fn binary_rows<M>(op: Binary, plan: &BroadcastPlan, a: Src<'_>, b: Src<'_>, out: &mut [f32], row0: usize) {
        let inner = plan.inner;
        let nd = plan.outer.len();
        let mut idx = vec![0usize; nd];
        let (mut oa, mut ob) = (0usize, 0usize);
        let mut rest = row0;
        for d in (0..nd).rev() {
            let (size, sa, sb) = plan.outer[d];
            idx[d] = rest % size;
            rest /= size;
            oa += idx[d] * sa;
            ob += idx[d] * sb;
        }
        for chunk in out.chunks_exact_mut(inner) {
            binary_row(op, row_arg(a, oa, plan.a_vec, inner), row_arg(b, ob, plan.b_vec, inner), chunk);
            for d in (0..nd).rev() {
                let (size, sa, sb) = plan.outer[d];
                idx[d] += 1;
                oa += sa;
                ob += sb;
                if idx[d] < size {
                    break;
                }
                idx[d] = 0;
                oa -= size * sa;
                ob -= size * sb;
            }
        }
    }
}

fn binary_run(op: Binary, plan: &BroadcastPlan, a: Src<'_>, b: Src<'_>, out: &mut [f32]) {
    let inner = plan.inner.max(1);
    if out.is_empty() {
        return;
    }
    for_row_chunks(out, inner, |row0, o| binary_rows(op, plan, a, b, o, row0));
}

/// Calls `f(first_row, chunk)` on `out` cut into whole rows of `inner` elements: chunks of about
/// [`PAR_CHUNK`] elements across the rayon pool when `out` is large, else `out` at once.
pub(crate) fn for_row_chunks<T: Send>(out: &mut [T], inner: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if parallel(out.len()) && inner > 0 {
        let rows = PAR_CHUNK.div_ceil(inner);
        out.par_chunks_mut(rows * inner).enumerate().for_each(|(i, o)| f(i * rows, o));
    } else {
        f(0, out);
    }
}

/// `op(a, b)` with broadcasting, into a new vector of `plan.out_shape`.
pub(crate) fn binary(op: Binary, plan: &BroadcastPlan, a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; plan.len()];
    binary_run(op, plan, Src::Data(a), Src::Data(b), &mut out);
    out
}

/// `a = op(a, b)`: `a` must have the output's shape.
pub(crate) fn binary_into_a(op: Binary, plan: &BroadcastPlan, a: &mut [f32], b: &[f32]) {
    debug_assert_eq!(a.len(), plan.len());
    binary_run(op, plan, Src::Out, Src::Data(b), a);
}

/// `b = op(a, b)`: `b` must have the output's shape.
pub(crate) fn binary_into_b(op: Binary, plan: &BroadcastPlan, a: &[f32], b: &mut [f32]) {
    debug_assert_eq!(b.len(), plan.len());
    binary_run(op, plan, Src::Data(a), Src::Out, b);
}

// ---------------------------------------------------------------------------------------------
// Row reductions: LayerNormalization, Softmax, trailing-axes Reduce.

/// Sum in f64 over 8 independent lanes (vectorizes; also more accurate than one running sum).
#[inline(always)]
fn sum_f64(x: &[f32]) -> f64 {
    lanes_sum_f64(x, |v| v)
}

/// Sum of squared deviations from `mean`, in f64 over 8 lanes.
#[inline(always)]
fn sq_dev_f64(x: &[f32], mean: f64) -> f64 {
    lanes_sum_f64(x, |v| (v - mean) * (v - mean))
}

/// Sum of `f(x as f64)` in 8 f64 lanes (vectorizable), then the lanes and the tail.
#[inline(always)]
fn lanes_sum_f64(x: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            acc[k] += f(c[k] as f64);
        }
    }
    let tail: f64 = it.remainder().iter().map(|&v| f(v as f64)).sum();
    acc.iter().sum::<f64>() + tail
}

/// Maximum over 8 lanes (NaN is skipped, as `f64::max` does).
#[inline(always)]
fn max_f32(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            acc[k] = if c[k] > acc[k] { c[k] } else { acc[k] };
        }
    }
    let m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    it.remainder().iter().copied().fold(m, f32::max)
}

/// Layer normalization of rows of `inner` elements: statistics in f64, the output
/// `(x - mean) · inv_std · scale + bias` computed in f64 and rounded once.
pub(crate) struct LayerNormRows<'a> {
    pub(crate) inner: usize,
    pub(crate) eps: f64,
    pub(crate) scale: &'a [f64],
    pub(crate) bias: &'a [f64],
}

multiversion! {
    fn layer_norm_chunk<M>(p: &LayerNormRows<'_>, src: Option<&[f32]>, out: &mut [f32], means: &mut [f64], invs: &mut [f64]) {
        let n = p.inner;
        for (r, o) in out.chunks_exact_mut(n).enumerate() {
            let row: &[f32] = match src {
                Some(s) => &s[r * n..(r + 1) * n],
                None => o,
            };
            let mean = sum_f64(row) / n as f64;
            let var = sq_dev_f64(row, mean) / n as f64;
            let inv = 1.0 / (var + p.eps).sqrt();
            match src {
                Some(s) => {
                    let row = &s[r * n..(r + 1) * n];
                    for (((y, &x), &g), &b) in o.iter_mut().zip(row).zip(p.scale).zip(p.bias) {
                        *y = ((x as f64 - mean) * inv * g + b) as f32;
                    }
                }
                None => {
                    for ((y, &g), &b) in o.iter_mut().zip(p.scale).zip(p.bias) {
                        *y = ((*y as f64 - mean) * inv * g + b) as f32;
                    }
                }
            }
            means[r] = mean;
            invs[r] = inv;
        }
    }
}

/// Normalizes the rows of `out` (read from `src`, or from `out` itself when `None`); writes
/// each row's mean and inverse standard deviation.
pub(crate) fn layer_norm(p: &LayerNormRows<'_>, src: Option<&[f32]>, out: &mut [f32], means: &mut [f64], invs: &mut [f64]) {
    let n = p.inner;
    if n == 0 || out.is_empty() {
        return;
    }
    if parallel(out.len()) {
        let rows = PAR_CHUNK.div_ceil(n);
        out.par_chunks_mut(rows * n).zip(means.par_chunks_mut(rows)).zip(invs.par_chunks_mut(rows)).enumerate().for_each(
            |(i, ((o, m), v))| {
                let s = src.map(|s| &s[i * rows * n..i * rows * n + o.len()]);
                layer_norm_chunk(p, s, o, m, v);
            },
        );
    } else {
        layer_norm_chunk(p, src, out, means, invs);
    }
}

multiversion! {
    fn softmax_chunk<M>(n: usize, src: Option<&[f32]>, out: &mut [f32]) {
        for (r, o) in out.chunks_exact_mut(n).enumerate() {
            let m = match src {
                Some(s) => max_f32(&s[r * n..(r + 1) * n]),
                None => max_f32(o),
            };
            map(src.map(|s| &s[r * n..(r + 1) * n]), o, |x| exp_f32::<M>(x - m));
            let inv = 1.0 / sum_f64(o);
            for y in o.iter_mut() {
                *y = (*y as f64 * inv) as f32;
            }
        }
    }
}

/// Softmax over rows of `n` contiguous elements (read from `src`, or in place when `None`).
pub(crate) fn softmax(n: usize, src: Option<&[f32]>, out: &mut [f32]) {
    if n == 0 || out.is_empty() {
        return;
    }
    for_row_chunks(out, n, |row0, o| softmax_chunk(n, src.map(|s| &s[row0 * n..row0 * n + o.len()]), o));
}

multiversion! {
    fn row_sums_chunk<M>(n: usize, src: &[f32], out: &mut [f64]) {
        for (o, row) in out.iter_mut().zip(src.chunks_exact(n)) {
            *o = sum_f64(row);
        }
    }
}

/// The f64 sum of each row of `n` contiguous elements.
pub(crate) fn row_sums(n: usize, src: &[f32]) -> Vec<f64> {
    let rows = src.len().checked_div(n).unwrap_or(0);
    let mut out = vec![0f64; rows];
    if n == 0 {
        return out;
    }
    if parallel(src.len()) {
        let per = PAR_CHUNK.div_ceil(n);
        out.par_chunks_mut(per).zip(src.par_chunks(per * n)).for_each(|(o, s)| row_sums_chunk(n, s, o));
    } else {
        row_sums_chunk(n, src, &mut out);
    }
    out
}

/// A raw pointer that may cross threads; users write disjoint parts of what it points to.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: only used to write disjoint regions from different threads.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [lo, hi).
    pub(crate) fn rand_vec(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                lo + ((s >> 40) as f32 / (1u64 << 24) as f32) * (hi - lo)
            })
            .collect()
    }

    /// A dense grid over [lo, hi] plus the special values.
    fn grid(lo: f64, hi: f64, n: usize) -> Vec<f32> {
        (0..=n).map(|k| (lo + (hi - lo) * k as f64 / n as f64) as f32).collect()
    }

    /// Largest |erf_f32 - erf| over a dense grid of [-6, 6] and special values.
    fn erf_max_error<M: MulAdd>() -> (f64, f32) {
        let mut worst = (0f64, 0f32);
        for x in grid(-6.0, 6.0, 2_400_000).into_iter().chain([0.0, -0.0, 1e-30, -1e-8, 0.9, -0.9, 4.0, 1e30, f32::INFINITY]) {
            let err = (erf_f32::<M>(x) as f64 - libm::erf(x as f64)).abs();
            if err > worst.0 {
                worst = (err, x);
            }
        }
        worst
    }

    fn check_erf<M: MulAdd>(name: &str) {
        let worst = erf_max_error::<M>();
        eprintln!("{name}: max |erf_f32 - erf| = {:.3e} at x = {}", worst.0, worst.1);
        assert!(worst.0 <= 2e-7, "{name}: max |erf_f32 - erf| = {:e} at x = {}", worst.0, worst.1);
        // Near 0 the polynomial branch is accurate relative to erf itself.
        for x in grid(1e-6, 0.9, 100_000) {
            let want = libm::erf(x as f64);
            assert!(((erf_f32::<M>(x) as f64 - want) / want).abs() < 5e-7, "{name}: relative error at {x}");
        }
        assert_eq!(erf_f32::<M>(f32::NEG_INFINITY), -1.0);
        assert!(erf_f32::<M>(f32::NAN).is_nan());
    }

    #[test]
    fn erf_is_within_2e_7_of_f64_erf() {
        // Both compiled variants: with separate and with fused multiply-adds.
        check_erf::<Plain>("plain");
        check_erf::<Fused>("fused");
    }

    fn check_exp_tanh_sigmoid<M: MulAdd>(name: &str) {
        for x in grid(-87.0, 88.0, 1_000_000) {
            let want = (x as f64).exp();
            let rel = ((exp_f32::<M>(x) as f64 - want) / want).abs();
            assert!(rel < 4e-7, "{name}: exp({x}): relative error {rel:e}");
        }
        assert_eq!(exp_f32::<M>(-100.0), 0.0);
        assert_eq!(exp_f32::<M>(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32::<M>(f32::NAN).is_nan());
        for x in grid(-20.0, 20.0, 1_000_000).into_iter().chain([1e-20, -3e-5, 0.25, -0.25]) {
            let (t, s) = ((x as f64).tanh(), 1.0 / (1.0 + (-(x as f64)).exp()));
            let (et, es) = ((tanh_f32::<M>(x) as f64 - t).abs(), (sigmoid_f32::<M>(x) as f64 - s).abs());
            assert!(et <= 2e-7 && (t == 0.0 || et / t.abs() < 1e-6), "{name}: tanh({x}) error {et:e}");
            assert!(es <= 2e-7 && es / s < 1e-6, "{name}: sigmoid({x}) error {es:e}");
        }
        assert_eq!(tanh_f32::<M>(f32::INFINITY), 1.0);
        assert_eq!(sigmoid_f32::<M>(f32::NEG_INFINITY), 0.0);
        assert!(tanh_f32::<M>(f32::NAN).is_nan() && sigmoid_f32::<M>(f32::NAN).is_nan());
    }

    #[test]
    fn exp_tanh_sigmoid_are_accurate() {
        check_exp_tanh_sigmoid::<Plain>("plain");
        check_exp_tanh_sigmoid::<Fused>("fused");
    }

    /// Reference broadcasting through explicit indices.
    fn naive_broadcast(sa: &[usize], sb: &[usize], a: &[f32], b: &[f32], f: fn(f32, f32) -> f32) -> (Vec<usize>, Vec<f32>) {
        let r = sa.len().max(sb.len());
        let pad = |s: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, r - s.len()).chain(s.iter().copied()).collect() };
        let (pa, pb) = (pad(sa), pad(sb));
        let out: Vec<usize> = pa.iter().zip(&pb).map(|(&x, &y)| if x == 1 { y } else { x }).collect();
        let n: usize = out.iter().product();
        let flat = |p: &[usize], idx: &[usize]| idx.iter().zip(p).fold(0, |acc, (&i, &d)| acc * d + if d == 1 { 0 } else { i });
        let mut v = Vec::with_capacity(n);
        for k in 0..n {
            let mut idx = vec![0; r];
            let mut rest = k;
            for d in (0..r).rev() {
                idx[d] = rest % out[d];
                rest /= out[d];
            }
            v.push(f(a[flat(&pa, &idx)], b[flat(&pb, &idx)]));
        }
        (out, v)
    }

    #[test]
    fn broadcast_binary_matches_naive_on_many_shapes() {
        let shapes: &[(&[usize], &[usize])] = &[
            (&[7], &[7]),
            (&[3, 5, 7], &[3, 5, 7]),
            (&[3, 5, 7], &[7]),
            (&[7], &[3, 5, 7]),
            (&[3, 5, 7], &[]),
            (&[], &[3, 5, 7]),
            (&[1], &[]),
            (&[2, 3, 5, 5], &[2, 1, 1, 5]),
            (&[2, 1, 1, 5], &[2, 3, 5, 5]),
            (&[4, 1], &[1, 9]),
            (&[4, 3, 1], &[3, 1]),
            (&[3, 1, 7], &[1, 5, 1]),
            (&[1, 1, 13], &[2, 3, 13]),
            (&[2, 3, 1, 1], &[1, 1, 4, 1]),
            (&[5, 0, 3], &[3]),
            (&[8, 19, 37], &[37]),
            (&[300, 170], &[300, 1]),
            (&[2, 200, 150], &[1, 200, 150]),
        ];
        type Case = (Binary, fn(f32, f32) -> f32);
        let ops: [Case; 4] =
            [(Binary::Add, |p, q| p + q), (Binary::Sub, |p, q| p - q), (Binary::Mul, |p, q| p * q), (Binary::Div, |p, q| p / q)];
        for (seed, (sa, sb)) in shapes.iter().enumerate() {
            let a = rand_vec(sa.iter().product(), seed as u64, -2.0, 2.0);
            let b = rand_vec(sb.iter().product(), 100 + seed as u64, 0.5, 3.0);
            for (op, f) in ops {
                let (want_shape, want) = naive_broadcast(sa, sb, &a, &b, f);
                let plan = BroadcastPlan::new(sa, sb).expect("broadcastable");
                assert_eq!(plan.out_shape, want_shape, "{sa:?} {sb:?}");
                // Both with and without a pool of several threads (the parallel split).
                for threads in [1, 3] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    pool.install(|| {
                        assert_eq!(binary(op, &plan, &a, &b), want, "{op:?} {sa:?} {sb:?}");
                        if plan.out_shape.iter().product::<usize>() == a.len() && sa.len() == plan.out_shape.len() {
                            let mut x = a.clone();
                            binary_into_a(op, &plan, &mut x, &b);
                            assert_eq!(x, want, "in place into a: {op:?} {sa:?} {sb:?}");
                        }
                        if plan.out_shape.iter().product::<usize>() == b.len() && sb.len() == plan.out_shape.len() {
                            let mut y = b.clone();
                            binary_into_b(op, &plan, &a, &mut y);
                            assert_eq!(y, want, "in place into b: {op:?} {sa:?} {sb:?}");
                        }
                    });
                }
            }
        }
        assert!(BroadcastPlan::new(&[3, 4], &[5, 4]).is_none());
    }

    #[test]
    fn unary_matches_scalar_reference_in_and_out_of_place() {
        let x = rand_vec(100_003, 7, -5.0, 5.0);
        type Case = (Unary, fn(f64) -> f64, f64);
        let cases: [Case; 10] = [
            (Unary::Erf, libm::erf, 2e-7),
            (Unary::Gelu, |v| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2)), 1e-6),
            (Unary::Tanh, f64::tanh, 2e-7),
            (Unary::Sigmoid, |v| 1.0 / (1.0 + (-v).exp()), 2e-7),
            (Unary::Sqrt, |v| v.abs().sqrt(), 0.0),
            (Unary::Neg, |v| -v, 0.0),
            (Unary::Abs, f64::abs, 0.0),
            (Unary::Relu, |v| v.max(0.0), 0.0),
            (Unary::Reciprocal, |v| 1.0 / v, 0.0),
            (Unary::Square, |v| v * v, 0.0),
        ];
        for (op, f, tol) in cases {
            let src: Vec<f32> = if op == Unary::Sqrt { x.iter().map(|v| v.abs()).collect() } else { x.clone() };
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let (out, inplace) = pool.install(|| {
                    let mut b = src.clone();
                    unary_in_place(op, &mut b);
                    (unary(op, &src), b)
                });
                assert_eq!(out, inplace, "{op:?}");
                for (&v, &y) in src.iter().zip(&out) {
                    let want = f(v as f64);
                    if tol == 0.0 {
                        assert_eq!(y, want as f32, "{op:?}({v})");
                    } else {
                        assert!((y as f64 - want).abs() <= tol, "{op:?}({v}) = {y}, want {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn row_kernels_match_f64_references() {
        for (rows, n) in [(3, 5), (7, 384), (40, 1000), (1, 1)] {
            let x = rand_vec(rows * n, (rows * n) as u64, -4.0, 4.0);
            let scale: Vec<f64> = rand_vec(n, 1, 0.5, 1.5).iter().map(|&v| v as f64).collect();
            let bias: Vec<f64> = rand_vec(n, 2, -1.0, 1.0).iter().map(|&v| v as f64).collect();
            let p = LayerNormRows { inner: n, eps: 1e-5, scale: &scale, bias: &bias };
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| {
                    let (mut out, mut m, mut v) = (vec![0f32; x.len()], vec![0f64; rows], vec![0f64; rows]);
                    layer_norm(&p, Some(&x), &mut out, &mut m, &mut v);
                    let mut inplace = x.clone();
                    let (mut m2, mut v2) = (vec![0f64; rows], vec![0f64; rows]);
                    layer_norm(&p, None, &mut inplace, &mut m2, &mut v2);
                    assert_eq!(out, inplace);
                    assert_eq!((&m, &v), (&m2, &v2));
                    let mut sm = vec![0f32; x.len()];
                    softmax(n, Some(&x), &mut sm);
                    let mut sm2 = x.clone();
                    softmax(n, None, &mut sm2);
                    assert_eq!(sm, sm2);
                    let sums = row_sums(n, &x);
                    for r in 0..rows {
                        let row: Vec<f64> = x[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
                        let mean = row.iter().sum::<f64>() / n as f64;
                        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
                        let inv = 1.0 / (var + 1e-5).sqrt();
                        assert!((m[r] - mean).abs() < 1e-12 && (v[r] - inv).abs() < 1e-12 * inv);
                        assert!((sums[r] - mean * n as f64).abs() < 1e-9 * n as f64);
                        let mx = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let total: f64 = row.iter().map(|v| (v - mx).exp()).sum();
                        for j in 0..n {
                            let want = (row[j] - mean) * inv * scale[j] + bias[j];
                            assert!((out[r * n + j] as f64 - want).abs() < 1e-5, "layer norm ({r}, {j})");
                            let want = (row[j] - mx).exp() / total;
                            assert!((sm[r * n + j] as f64 - want).abs() < 1e-6 * want.max(1e-2), "softmax ({r}, {j})");
                        }
                    }
                });
            }
        }
    }
}
