//! Vectorizable scalar math (branch-free: both sides of each choice are computed, then
//! selected): `exp`, `erf`, `tanh`, `sigmoid`, GELU, and the unary maps built on them.

use rayon::prelude::*;

use super::simd::{multiversion, MulAdd};
use super::{parallel, PAR_CHUNK};

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

/// SiLU (swish): `x · sigmoid(x)`.
#[inline(always)]
pub(crate) fn silu_f32<M: MulAdd>(x: f32) -> f32 {
    x * sigmoid_f32::<M>(x)
}

/// A unary f32 op with a fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unary {
    Erf,
    Gelu,
    Tanh,
    Sigmoid,
    Silu,
    Sqrt,
    Neg,
    Abs,
    Relu,
    Reciprocal,
    Square,
}

#[inline(always)]
pub(super) fn map<F: Fn(f32) -> f32>(src: Option<&[f32]>, dst: &mut [f32], f: F) {
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
            Unary::Silu => map(src, dst, silu_f32::<M>),
            Unary::Sqrt => map(src, dst, f32::sqrt),
            Unary::Neg => map(src, dst, |x| -x),
            Unary::Abs => map(src, dst, f32::abs),
            Unary::Relu => map(src, dst, |x| if x > 0.0 { x } else { 0.0 }),
            Unary::Reciprocal => map(src, dst, |x| 1.0 / x),
            Unary::Square => map(src, dst, |x| x * x),
        }
    }
}

/// `op` over `buf` in place on the calling thread (for work already split across threads).
pub(crate) fn unary_serial(op: Unary, buf: &mut [f32]) {
    unary_chunk(op, None, buf)
}

/// `out[B·j + i] = f(p[2·B·j + i]) · p[2·B·j + B + i]` for blocks of `B = block` columns.
#[inline(always)]
fn gated_blocks<F: Fn(f32) -> f32>(f: F, block: usize, p: &[f32], out: &mut [f32]) {
    for (pair, o) in p.chunks_exact(2 * block).zip(out.chunks_exact_mut(block)) {
        let (gate, up) = pair.split_at(block);
        for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
            *o = f(g) * u;
        }
    }
}

multiversion! {
    /// A gated product's epilogue over one row segment: `p` holds gate and up blocks of `block`
    /// columns interleaved (`2 · block · j` gate, then up), `out` gets `act(gate) · up` (half
    /// `p`'s length). `act` is one of the activations a product fuses (else the identity).
    pub(crate) fn gated<M>(act: Option<Unary>, block: usize, p: &[f32], out: &mut [f32]) {
        match act {
            Some(Unary::Silu) => gated_blocks(silu_f32::<M>, block, p, out),
            Some(Unary::Gelu) => gated_blocks(gelu_f32::<M>, block, p, out),
            Some(Unary::Relu) => gated_blocks(|x| if x > 0.0 { x } else { 0.0 }, block, p, out),
            _ => gated_blocks(|x| x, block, p, out),
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

#[cfg(test)]
mod tests {
    use super::super::simd::{Fused, Plain};
    use super::super::tests::rand_vec;
    use super::*;

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

    #[test]
    fn unary_matches_scalar_reference_in_and_out_of_place() {
        let x = rand_vec(100_003, 7, -5.0, 5.0);
        type Case = (Unary, fn(f64) -> f64, f64);
        let cases: [Case; 11] = [
            (Unary::Erf, libm::erf, 2e-7),
            (Unary::Gelu, |v| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2)), 1e-6),
            (Unary::Tanh, f64::tanh, 2e-7),
            (Unary::Sigmoid, |v| 1.0 / (1.0 + (-v).exp()), 2e-7),
            (Unary::Silu, |v| v / (1.0 + (-v).exp()), 1e-6),
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
}
