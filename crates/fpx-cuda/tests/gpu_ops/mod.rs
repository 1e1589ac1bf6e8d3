//! The op kernels of `fpx_cuda::ops` on a GPU against independent CPU references in f64:
//! every unary op (odd lengths, misaligned sub-slices, a one-block grid-stride run), the binary
//! ops same-shape and broadcast (planned by `binary_plan`), the casts (every FP16 bit pattern),
//! LayerNormalization (with and without gamma/beta), Softmax (large-magnitude rows, masked
//! entries), ReduceSum/ReduceMean, Gather (negative and out-of-range indices, the error flag)
//! and Transpose (planned by `transpose_plan`, the attention permutations included), in FP16
//! and FP32, plus the in-place forms the docs allow. Random data from fixed seeds; outputs are
//! poisoned (NaN / 0xFF bytes) before each launch, and the poisoned margins around each output
//! must stay untouched.
//!
//! Without a CUDA driver, a device (sm_80 or newer) or NVRTC every test prints `SKIP <test>:
//! <reason>` and passes (fails with `FPX_REQUIRE=gpu`); on a GPU machine
//! `scripts/gpu-check.sh` runs them.

use std::f64::consts::PI;
use std::fmt::Debug;
use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule, CudaSlice, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits};
use fpx_cuda::device::Gpu;
use fpx_cuda::ops::launch_config;
use fpx_cuda::*;
use half::f16;

use fpx_ir::shape::unravel_index;
use fpx_test_support::Rng;

use crate::common::open_gpu;

/// Poisoned elements after every output, which must stay poisoned.
const TAIL: usize = 8;

// ---------------------------------------------------------------------------------------------
// Setup

/// An open GPU with NVRTC ready.
struct Dev {
    gpu: Gpu,
    arch: Arch,
}

impl Dev {
    /// The GPU, or `None` after skipping `test` ([`open_gpu`]).
    fn open(test: &str) -> Option<Dev> {
        open_gpu(test).map(|(gpu, arch)| Dev { gpu, arch })
    }

    /// Compiles (NVRTC, cached) and loads one family's module.
    fn module(&self, family: OpFamily) -> Arc<CudaModule> {
        let ptx = compile_family_ptx(family, self.arch).unwrap_or_else(|e| panic!("{e}"));
        self.gpu.load_module(&ptx.src).unwrap_or_else(|e| panic!("loading {}: {e:?}", ptx.module_name()))
    }

    fn func(&self, module: &Arc<CudaModule>, kernel: &OpKernel) -> CudaFunction {
        module.load_function(&kernel.name()).unwrap_or_else(|e| panic!("{kernel} is not in its module: {e:?}"))
    }

    fn upload<T: DeviceRepr>(&self, data: &[T]) -> CudaSlice<T> {
        self.gpu.upload(data).unwrap_or_else(|e| panic!("{e}"))
    }

    fn download<T: DeviceRepr + Default + Clone>(&self, data: &CudaSlice<T>) -> Vec<T> {
        self.gpu.synchronize().unwrap_or_else(|e| panic!("{e}"));
        self.gpu.download(data).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// `launch_config(kernel, n, cols)` as cudarc's type; `None` when there is nothing to launch.
fn config(kernel: &OpKernel, n: usize, cols: usize) -> Option<LaunchConfig> {
    let (g, b, s) = launch_config(kernel, n, cols).unwrap_or_else(|e| panic!("{kernel}: {e}"));
    to_launch((g, b, s))
}

fn to_launch((g, b, s): ([u32; 3], [u32; 3], u32)) -> Option<LaunchConfig> {
    (g[0] > 0).then_some(LaunchConfig { grid_dim: (g[0], g[1], g[2]), block_dim: (b[0], b[1], b[2]), shared_mem_bytes: s })
}

/// Launches `$f` with the arguments (each bound first, so temporaries such as `&(n as u64)`
/// live until the launch) and checks the launch was accepted.
macro_rules! launch {
    ($dev:expr, $f:expr, $cfg:expr; $($arg:expr),+ $(,)?) => {{
        let func: &CudaFunction = $f;
        let mut b = $dev.gpu.stream().launch_builder(func);
        $(
            let a = $arg;
            b.arg(a);
        )+
        // SAFETY: the arguments follow the kernel's prototype (OpKernel::c_prototype) and the
        // buffers hold every element the launch touches.
        unsafe { b.launch($cfg) }.unwrap_or_else(|e| panic!("launch failed: {e:?}"));
    }};
}

// ---------------------------------------------------------------------------------------------
// Data and comparison

/// A storage type of the float kernels: FP16 as raw bits (`u16`) or `f32`.
trait Real: DeviceRepr + ValidAsZeroBits + Default + Clone + Copy + Debug + 'static {
    const ELEM: Elem;
    /// A NaN pattern no kernel writes by accident.
    const POISON: Self;
    /// Rounded to nearest even.
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn is_poison(self) -> bool;
    /// Relative tolerance of one result rounded to this type after FP32 math.
    const RTOL: f64;
    /// Absolute tolerance for results near zero (half the smallest subnormal step for FP16).
    const ATOL: f64;
}

impl Real for u16 {
    const ELEM: Elem = Elem::F16;
    const POISON: u16 = 0xFFFF;
    fn from_f64(v: f64) -> u16 {
        f16::from_f64(v).to_bits()
    }
    fn to_f64(self) -> f64 {
        f16::from_bits(self).to_f64()
    }
    fn is_poison(self) -> bool {
        self == 0xFFFF
    }
    const RTOL: f64 = 1e-3;
    const ATOL: f64 = 6e-8;
}

impl Real for f32 {
    const ELEM: Elem = Elem::F32;
    const POISON: f32 = f32::NAN;
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn is_poison(self) -> bool {
        self.to_bits() == f32::NAN.to_bits()
    }
    const RTOL: f64 = 1e-5;
    const ATOL: f64 = 1e-30;
}

fn to_f64s<T: Real>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// `got` matches `want` element by element: equal (infinities), both NaN, or within
/// `tol(i, want)`. Panics listing the first mismatches.
fn check(what: &str, got: &[f64], want: &[f64], tol: impl Fn(usize, f64) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| {
            let (g, w) = (got[i], want[i]);
            !(g == w || (g.is_nan() && w.is_nan()) || (g - w).abs() <= tol(i, w))
        })
        .collect();
    if !bad.is_empty() {
        let list: Vec<String> =
            bad.iter().take(8).map(|&i| format!("[{i}] got {:e} want {:e} (tol {:e})", got[i], want[i], tol(i, want[i]))).collect();
        panic!("{what}: {} of {} elements off:\n  {}", bad.len(), got.len(), list.join("\n  "));
    }
}

/// The poisoned margins of an output (`lead` elements before it, the rest after) are untouched.
fn check_margins<T: Real>(what: &str, y: &[T], lead: usize, len: usize) {
    let outside = y[..lead].iter().chain(&y[lead + len..]).position(|v| !v.is_poison());
    assert!(outside.is_none(), "{what}: wrote outside its output (margin element {outside:?})");
}

/// Row-major offset of `idx` in `shape`.
fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &s)| acc * s + i)
}

// ---------------------------------------------------------------------------------------------
// References

/// erf in f64: `2/√π e^{-x²} Σ_n (2x²)^n x / (2n+1)!!`, a series of same-signed terms (no
/// cancellation), accurate to a few f64 ulps for |x| <= 6; ±1 beyond (erfc(6) < 3e-17).
fn erf(x: f64) -> f64 {
    if x.abs() > 6.0 {
        return x.signum();
    }
    let (mut term, mut sum, mut n) = (x, x, 0.0);
    while term.abs() > 1e-18 * sum.abs() {
        n += 1.0;
        term *= 2.0 * x * x / (2.0 * n + 1.0);
        sum += term;
    }
    2.0 / PI.sqrt() * (-x * x).exp() * sum
}

fn unary_ref(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Erf => erf(x),
        UnaryOp::Gelu => 0.5 * x * (1.0 + erf(x / 2f64.sqrt())),
        UnaryOp::GeluTanh => 0.5 * x * (1.0 + ((2.0 / PI).sqrt() * (x + 0.044715 * x * x * x)).tanh()),
        UnaryOp::Relu => {
            if x > 0.0 {
                x
            } else {
                0.0
            }
        }
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Reciprocal => 1.0 / x,
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
    }
}

/// An input in the op's test domain (sqrt and log on positives, reciprocal away from zero).
fn unary_input(op: UnaryOp, r: &mut Rng) -> f64 {
    match op {
        UnaryOp::Erf | UnaryOp::Gelu | UnaryOp::GeluTanh | UnaryOp::Sigmoid | UnaryOp::Tanh => r.range(-6.0, 6.0),
        UnaryOp::Relu | UnaryOp::Neg => r.range(-100.0, 100.0),
        UnaryOp::Sqrt => r.range(0.0, 1000.0),
        UnaryOp::Reciprocal => {
            let m = 10f64.powf(r.range(-1.3, 1.3));
            if r.below(2) == 0 {
                m
            } else {
                -m
            }
        }
        UnaryOp::Exp => r.range(-10.0, 10.0),
        UnaryOp::Log => 10f64.powf(r.range(-3.0, 3.0)),
    }
}

/// Absolute error the FP32 formulas may add near zero: Gelu's `1 + erf` / `1 + tanh` cancel
/// (erff/tanhf are within 2 ulps of 1, times |x| / 2 <= 3).
fn unary_atol(op: UnaryOp) -> f64 {
    match op {
        UnaryOp::Gelu | UnaryOp::GeluTanh => 1e-6,
        _ => 0.0,
    }
}

fn binary_ref(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Max | BinaryOp::Min if a.is_nan() || b.is_nan() => f64::NAN,
        BinaryOp::Max => a.max(b),
        BinaryOp::Min => a.min(b),
    }
}

/// Inputs `(a, b)` in the op's domain; Max and Min get some NaNs (which must propagate).
fn binary_inputs(op: BinaryOp, r: &mut Rng, na: usize, nb: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a: Vec<f64> = (0..na)
        .map(|_| match op {
            BinaryOp::Pow => r.range(0.1, 4.0),
            _ => r.range(-10.0, 10.0),
        })
        .collect();
    let mut b: Vec<f64> = (0..nb)
        .map(|_| match op {
            BinaryOp::Pow => r.range(-3.0, 3.0),
            BinaryOp::Div => r.range(0.1, 10.0) * if r.below(2) == 0 { 1.0 } else { -1.0 },
            _ => r.range(-10.0, 10.0),
        })
        .collect();
    if matches!(op, BinaryOp::Max | BinaryOp::Min) {
        a.iter_mut().step_by(17).for_each(|v| *v = f64::NAN);
        b.iter_mut().skip(5).step_by(23).for_each(|v| *v = f64::NAN);
    }
    (a, b)
}

/// Numpy broadcasting, written out independently of the planner.
fn broadcast(a: &[usize], b: &[usize]) -> Vec<usize> {
    let rank = a.len().max(b.len());
    let pad = |s: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, rank - s.len()).chain(s.iter().copied()).collect() };
    let (pa, pb) = (pad(a), pad(b));
    pa.iter()
        .zip(&pb)
        .map(|(&x, &y)| {
            assert!(x == y || x == 1 || y == 1, "{a:?} and {b:?} do not broadcast");
            x.max(y)
        })
        .collect()
}

/// The offset in an input of `shape` of the output multi-index `out_idx` (right-aligned,
/// size-1 dims read index 0).
fn bcast_offset(out_idx: &[usize], shape: &[usize]) -> usize {
    let skip = out_idx.len() - shape.len();
    let idx: Vec<usize> = out_idx[skip..].iter().zip(shape).map(|(&i, &s)| if s == 1 { 0 } else { i }).collect();
    ravel(&idx, shape)
}

mod elementwise;
mod rows;
