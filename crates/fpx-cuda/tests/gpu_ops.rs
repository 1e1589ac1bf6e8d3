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

// ---------------------------------------------------------------------------------------------
// Unary

/// One unary run: `n` elements read from `x[x_off..]`, written to `y[y_off..]` (sub-slices, so
/// misaligned for the 16-byte vector path when the offsets are not multiples of 16 bytes),
/// with the planned grid or `grid` blocks.
#[allow(clippy::too_many_arguments)]
fn unary_case<T: Real>(dev: &Dev, m: &Arc<CudaModule>, op: UnaryOp, n: usize, x_off: usize, y_off: usize, grid: Option<u32>, r: &mut Rng) {
    let kernel = OpKernel::Unary { op, elem: T::ELEM };
    let what = format!("{kernel} n={n} x_off={x_off} y_off={y_off} grid={grid:?}");
    let f = dev.func(m, &kernel);
    let mut xh: Vec<T> = (0..x_off + n + TAIL).map(|_| T::from_f64(unary_input(op, r))).collect();
    if op == UnaryOp::Relu && n > 3 {
        xh[x_off + n / 2] = T::from_f64(f64::NAN); // Relu(NaN) = 0
    }
    let x = dev.upload(&xh);
    let mut y = dev.upload(&vec![T::POISON; y_off + n + TAIL]);
    let cfg = config(&kernel, n, 0).map(|mut c| {
        if let Some(g) = grid {
            c.grid_dim.0 = g;
        }
        c
    });
    match cfg {
        Some(cfg) => {
            let xv = x.slice(x_off..x_off + n);
            let mut yv = y.slice_mut(y_off..y_off + n);
            launch!(dev, &f, cfg; &xv, &mut yv, &(n as u64));
        }
        None => assert_eq!(n, 0, "{what}: nothing to launch"),
    }
    let yh = dev.download(&y);
    check_margins(&what, &yh, y_off, n);
    let want: Vec<f64> = xh[x_off..x_off + n]
        .iter()
        .map(|v| {
            let x = v.to_f64();
            if op == UnaryOp::Relu && x.is_nan() {
                0.0
            } else {
                unary_ref(op, x)
            }
        })
        .collect();
    let atol = T::ATOL + unary_atol(op);
    check(&what, &to_f64s(&yh[y_off..y_off + n]), &want, |_, w| atol + T::RTOL * w.abs());
}

fn unary_all<T: Real>(dev: &Dev, seed: u64) {
    let m = dev.module(OpFamily::Elementwise);
    let mut r = Rng::new(seed);
    for op in UnaryOp::ALL {
        for n in [0, 1, 7, 8, 1000, 65537 + 3] {
            unary_case::<T>(dev, &m, op, n, 0, 0, None, &mut r);
        }
        // Sub-slices: both misaligned, only the output misaligned, only the input.
        for (x_off, y_off) in [(1, 1), (0, 3), (5, 0)] {
            unary_case::<T>(dev, &m, op, 1001, x_off, y_off, None, &mut r);
        }
    }
    // Grid-stride loops: one block and three blocks cover everything, vector path and tail.
    for grid in [1, 3] {
        unary_case::<T>(dev, &m, UnaryOp::Neg, 65537 + 3, 0, 0, Some(grid), &mut r);
        unary_case::<T>(dev, &m, UnaryOp::Exp, 20001, 1, 1, Some(grid), &mut r);
    }
}

#[test]
fn unary_ops_f32() {
    // The reference itself, against tabulated values.
    for (x, want) in [(0.5, 0.5204998778130465), (1.0, 0.8427007929497149), (2.0, 0.9953222650189527), (-3.0, -0.9999779095030014)] {
        assert!((erf(x) - want).abs() < 1e-15, "erf({x}) = {} (want {want})", erf(x));
    }
    let Some(dev) = Dev::open("unary_ops_f32") else { return };
    unary_all::<f32>(&dev, 0x0001);
}

#[test]
fn unary_ops_f16() {
    let Some(dev) = Dev::open("unary_ops_f16") else { return };
    unary_all::<u16>(&dev, 0x0002);
}

// ---------------------------------------------------------------------------------------------
// Binary

/// `a op b` as `binary_plan` plans it; `bcast` says which kernel the plan must pick.
fn binary_case<T: Real>(dev: &Dev, m: &Arc<CudaModule>, op: BinaryOp, sa: &[usize], sb: &[usize], bcast: bool, r: &mut Rng) {
    let plan = binary_plan(op, T::ELEM, sa, sb).unwrap_or_else(|e| panic!("{e}"));
    let what = format!("{} {sa:?} {sb:?}", plan.kernel);
    assert_eq!(matches!(plan.kernel, OpKernel::BinaryBcast { .. }), bcast, "{what}: wrong kernel kind");
    let out = broadcast(sa, sb);
    assert_eq!(plan.out_shape, out, "{what}");
    let numel: usize = out.iter().product();
    assert_eq!(plan.numel, numel);
    let (na, nb) = (sa.iter().product::<usize>(), sb.iter().product::<usize>());
    let (av, bv) = binary_inputs(op, r, na, nb);
    let ah: Vec<T> = av.iter().map(|&v| T::from_f64(v)).collect();
    let bh: Vec<T> = bv.iter().map(|&v| T::from_f64(v)).collect();
    let (a, b) = (dev.upload(&ah), dev.upload(&bh));
    let mut y = dev.upload(&vec![T::POISON; numel + TAIL]);
    let f = dev.func(m, &plan.kernel);
    if let Some(cfg) = to_launch(plan.launch().unwrap()) {
        if bcast {
            launch!(dev, &f, cfg; &a, &b, &mut y, &plan.args);
        } else {
            launch!(dev, &f, cfg; &a, &b, &mut y, &(numel as u64));
        }
    }
    let yh = dev.download(&y);
    check_margins(&what, &yh, 0, numel);
    let want: Vec<f64> = (0..numel)
        .map(|i| {
            let idx = unravel_index(i, &out);
            binary_ref(op, ah[bcast_offset(&idx, sa)].to_f64(), bh[bcast_offset(&idx, sb)].to_f64())
        })
        .collect();
    check(&what, &to_f64s(&yh[..numel]), &want, |_, w| T::ATOL + T::RTOL * w.abs());
}

/// Same-shape cases (the planner merges them to one dim or none).
const SAME: [&[usize]; 6] = [&[], &[1], &[7], &[1000], &[3, 1, 5], &[65537 + 3]];

/// Broadcast cases.
const BCAST: [(&[usize], &[usize]); 9] = [
    (&[2, 3, 1, 5], &[3, 4, 1]),
    (&[], &[7, 9]),
    (&[7, 9], &[]),
    (&[1], &[1001]),
    (&[8, 19, 384], &[384]),
    (&[384], &[8, 19, 384]),
    (&[4, 1], &[1, 6]),
    (&[2, 12, 19, 19], &[2, 1, 1, 19]),
    (&[2, 1, 3, 1, 2, 1], &[1, 2, 1, 2, 1, 3]),
];

/// The planner picks the same-shape kernel for `SAME` and the broadcast one for `BCAST`, with
/// numpy's output shape (no GPU needed).
#[test]
fn binary_plans_as_intended() {
    let cases = SAME.iter().map(|&s| (s, s, false)).chain(BCAST.iter().map(|&(a, b)| (a, b, true)));
    for (sa, sb, bcast) in cases {
        let plan = binary_plan(BinaryOp::Add, Elem::F16, sa, sb).unwrap_or_else(|e| panic!("{sa:?} {sb:?}: {e}"));
        assert_eq!(matches!(plan.kernel, OpKernel::BinaryBcast { .. }), bcast, "{sa:?} {sb:?}: {plan:?}");
        assert_eq!(plan.out_shape, broadcast(sa, sb), "{sa:?} {sb:?}");
    }
}

fn binary_all<T: Real>(dev: &Dev, same: bool, seed: u64) {
    let m = dev.module(OpFamily::Elementwise);
    let mut r = Rng::new(seed);
    for op in BinaryOp::ALL {
        if same {
            for s in SAME {
                binary_case::<T>(dev, &m, op, s, s, false, &mut r);
            }
        } else {
            for (sa, sb) in BCAST {
                binary_case::<T>(dev, &m, op, sa, sb, true, &mut r);
            }
        }
    }
}

#[test]
fn binary_same_shape_f32() {
    let Some(dev) = Dev::open("binary_same_shape_f32") else { return };
    binary_all::<f32>(&dev, true, 0x0011);
}

#[test]
fn binary_same_shape_f16() {
    let Some(dev) = Dev::open("binary_same_shape_f16") else { return };
    binary_all::<u16>(&dev, true, 0x0012);
}

#[test]
fn binary_broadcast_f32() {
    let Some(dev) = Dev::open("binary_broadcast_f32") else { return };
    binary_all::<f32>(&dev, false, 0x0013);
}

#[test]
fn binary_broadcast_f16() {
    let Some(dev) = Dev::open("binary_broadcast_f16") else { return };
    binary_all::<u16>(&dev, false, 0x0014);
}

/// The same-shape kernel on misaligned sub-slices (scalar path) and with one block.
#[test]
fn binary_misaligned_and_grid_stride() {
    let Some(dev) = Dev::open("binary_misaligned_and_grid_stride") else { return };
    let m = dev.module(OpFamily::Elementwise);
    let mut r = Rng::new(0x0015);
    let n = 4099;
    for (offs, grid) in
        [([1, 0, 0], None), ([0, 2, 0], None), ([0, 0, 3], None), ([3, 3, 3], None), ([0, 0, 0], Some(1)), ([1, 1, 1], Some(2))]
    {
        let kernel = OpKernel::Binary { op: BinaryOp::Sub, elem: Elem::F16 };
        let what = format!("{kernel} offsets {offs:?} grid {grid:?}");
        let f = dev.func(&m, &kernel);
        let ah: Vec<u16> = (0..offs[0] + n).map(|_| u16::from_f64(r.range(-10.0, 10.0))).collect();
        let bh: Vec<u16> = (0..offs[1] + n).map(|_| u16::from_f64(r.range(-10.0, 10.0))).collect();
        let (a, b) = (dev.upload(&ah), dev.upload(&bh));
        let mut y = dev.upload(&vec![u16::POISON; offs[2] + n + TAIL]);
        let mut cfg = config(&kernel, n, 0).unwrap();
        if let Some(g) = grid {
            cfg.grid_dim.0 = g;
        }
        {
            let (av, bv) = (a.slice(offs[0]..offs[0] + n), b.slice(offs[1]..offs[1] + n));
            let mut yv = y.slice_mut(offs[2]..offs[2] + n);
            launch!(dev, &f, cfg; &av, &bv, &mut yv, &(n as u64));
        }
        let yh = dev.download(&y);
        check_margins(&what, &yh, offs[2], n);
        let want: Vec<f64> = (0..n).map(|i| ah[offs[0] + i].to_f64() - bh[offs[1] + i].to_f64()).collect();
        check(&what, &to_f64s(&yh[offs[2]..offs[2] + n]), &want, |_, w| u16::ATOL + u16::RTOL * w.abs());
    }
}

// ---------------------------------------------------------------------------------------------
// Casts

/// Runs `fpx_cast_<c>` over `x`; the output has `x.len()` elements (plus a poisoned tail).
fn cast_run<From: DeviceRepr, To: Real>(dev: &Dev, m: &Arc<CudaModule>, c: CastOp, x: &[From]) -> Vec<To> {
    let kernel = OpKernel::Cast(c);
    let f = dev.func(m, &kernel);
    let n = x.len();
    let xd = dev.upload(x);
    let mut y = dev.upload(&vec![To::POISON; n + TAIL]);
    launch!(dev, &f, config(&kernel, n, 0).unwrap(); &xd, &mut y, &(n as u64));
    let yh = dev.download(&y);
    check_margins(&kernel.name(), &yh, 0, n);
    yh[..n].to_vec()
}

/// Bit-exact comparison (any NaN matches any NaN).
fn check_bits<T: Copy + PartialEq + Debug>(what: &str, got: &[T], want: &[T], input: impl Fn(usize) -> String, nan: impl Fn(T) -> bool) {
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i] && !(nan(got[i]) && nan(want[i]))).collect();
    if !bad.is_empty() {
        let list: Vec<String> = bad.iter().take(8).map(|&i| format!("[{i}] {} -> got {:?} want {:?}", input(i), got[i], want[i])).collect();
        panic!("{what}: {} of {} off:\n  {}", bad.len(), got.len(), list.join("\n  "));
    }
}

#[test]
fn casts() {
    let Some(dev) = Dev::open("casts") else { return };
    let m = dev.module(OpFamily::Elementwise);
    let mut r = Rng::new(0x0021);

    // FP16 -> FP32: every bit pattern, exact.
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let got: Vec<f32> = cast_run(&dev, &m, CastOp::F16ToF32, &all);
    let want: Vec<f32> = all.iter().map(|&h| f16::from_bits(h).to_f32()).collect();
    check_bits(
        "fpx_cast_f16_f32",
        &got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        &want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        |i| format!("{:#06x}", all[i]),
        |b| f32::from_bits(b).is_nan(),
    );

    // FP32 -> FP16: round to nearest even, overflow to inf, subnormals, ties, specials.
    let mut xs: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        65504.0,
        65519.99,
        65520.0,
        -65520.0,
        1e9,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        6.0e-5,
        6.1e-5,
        3.0e-8,
        2.9e-8,
        1e-10,
        2049.0,
        2051.0,
        1.0 + 1.0 / 2048.0,
    ];
    xs.extend((0..20001).map(|_| {
        let mag = 2f64.powf(r.range(-30.0, 17.0));
        (if r.below(2) == 0 { mag } else { -mag }) as f32
    }));
    xs.extend((0..2000).map(|_| f32::from_bits(r.next_u32())));
    let got: Vec<u16> = cast_run(&dev, &m, CastOp::F32ToF16, &xs);
    let want: Vec<u16> = xs.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
    check_bits("fpx_cast_f32_f16", &got, &want, |i| format!("{:e}", xs[i]), |b| f16::from_bits(b).is_nan());

    // int64 -> FP32 / FP16 (masks, positions, large values).
    let mut is: Vec<i64> =
        vec![0, 1, -1, 2047, 2049, 65504, 65519, 65520, -65520, 1 << 24, (1 << 24) + 1, (1 << 53) + 1, i64::MAX, i64::MIN];
    is.extend((0..10007).map(|_| r.below(200_001) as i64 - 100_000));
    is.extend((0..1000).map(|_| r.next_u64() as i64));
    let got: Vec<f32> = cast_run(&dev, &m, CastOp::I64ToF32, &is);
    let want: Vec<f32> = is.iter().map(|&v| v as f32).collect();
    check_bits("fpx_cast_i64_f32", &got, &want, |i| is[i].to_string(), f32::is_nan);
    let got: Vec<u16> = cast_run(&dev, &m, CastOp::I64ToF16, &is);
    // One rounding of the exact value (through f64: exact below 2^53, inf in FP16 above).
    let want: Vec<u16> = is.iter().map(|&v| f16::from_f64(v as f64).to_bits()).collect();
    check_bits("fpx_cast_i64_f16", &got, &want, |i| is[i].to_string(), |b| f16::from_bits(b).is_nan());
}

// ---------------------------------------------------------------------------------------------
// Row kernels: LayerNorm, Softmax, Reduce

/// LayerNorm of `rows` × `cols` with optional gamma and beta; each row has its own offset so
/// the two-pass variance is exercised.
#[allow(clippy::too_many_arguments)]
fn layernorm_case<T: Real>(
    dev: &Dev,
    m: &Arc<CudaModule>,
    rows: usize,
    cols: usize,
    with_gamma: bool,
    with_beta: bool,
    eps: f32,
    r: &mut Rng,
) {
    let kernel = OpKernel::LayerNorm(T::ELEM);
    let what = format!("{kernel} {rows}x{cols} gamma {with_gamma} beta {with_beta}");
    let f = dev.func(m, &kernel);
    let mut xh = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let (c, s) = (r.range(-3.0, 3.0), r.range(0.5, 2.0));
        xh.extend((0..cols).map(|_| T::from_f64(c + s * r.range(-1.0, 1.0))));
    }
    let gh: Vec<T> = (0..cols).map(|_| T::from_f64(r.range(0.5, 1.5))).collect();
    let bh: Vec<T> = (0..cols).map(|_| T::from_f64(r.range(-1.0, 1.0))).collect();
    let x = dev.upload(&xh);
    let (g, b) = (dev.upload(&gh), dev.upload(&bh));
    let mut y = dev.upload(&vec![T::POISON; rows * cols + TAIL]);
    let null = 0u64;
    if let Some(cfg) = config(&kernel, rows, cols) {
        let mut l = dev.gpu.stream().launch_builder(&f);
        l.arg(&x);
        if with_gamma {
            l.arg(&g)
        } else {
            l.arg(&null)
        };
        if with_beta {
            l.arg(&b)
        } else {
            l.arg(&null)
        };
        let (rows_u, cols_u) = (rows as u32, cols as u32);
        l.arg(&mut y).arg(&rows_u).arg(&cols_u).arg(&eps);
        // SAFETY: the prototype of fpx_layernorm_<t>; x, gamma, beta, y hold rows × cols, cols,
        // cols and rows × cols elements.
        unsafe { l.launch(cfg) }.unwrap_or_else(|e| panic!("{what}: {e:?}"));
    }
    let yh = dev.download(&y);
    check_margins(&what, &yh, 0, rows * cols);
    let (mut want, mut atol) = (Vec::with_capacity(rows * cols), Vec::with_capacity(rows * cols));
    for row in xh.chunks(cols.max(1)).take(rows) {
        let v = to_f64s(row);
        let mean = v.iter().sum::<f64>() / cols as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / cols as f64;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        // The FP32 mean is off by a few ulps of the row's magnitudes, scaled by 1/σ.
        let mag = v.iter().map(|x| x.abs()).sum::<f64>() / cols as f64;
        atol.extend(std::iter::repeat_n(1e-5 + 1e-6 * mag * rstd * gh.iter().fold(1.0f64, |m, g| m.max(g.to_f64())), cols));
        want.extend(v.iter().enumerate().map(|(c, x)| {
            let mut y = (x - mean) * rstd;
            if with_gamma {
                y *= gh[c].to_f64();
            }
            if with_beta {
                y += bh[c].to_f64();
            }
            y
        }));
    }
    check(&what, &to_f64s(&yh[..rows * cols]), &want, |i, w| atol[i] + T::RTOL * w.abs());
}

fn layernorm_all<T: Real>(dev: &Dev, seed: u64) {
    let m = dev.module(OpFamily::LayerNorm);
    let mut r = Rng::new(seed);
    for (rows, cols) in [(1, 1), (3, 1), (1, 384), (37, 384), (4, 1000), (300, 64), (9, 33), (2, 4099)] {
        for (g, b) in [(true, true), (false, false), (true, false), (false, true)] {
            layernorm_case::<T>(dev, &m, rows, cols, g, b, 1e-5, &mut r);
        }
    }
    layernorm_case::<T>(dev, &m, 16, 384, true, true, 1e-12, &mut r);
}

#[test]
fn layernorm_f32() {
    let Some(dev) = Dev::open("layernorm_f32") else { return };
    layernorm_all::<f32>(&dev, 0x0031);
}

#[test]
fn layernorm_f16() {
    let Some(dev) = Dev::open("layernorm_f16") else { return };
    layernorm_all::<u16>(&dev, 0x0032);
}

/// How a Softmax test row is filled.
#[derive(Debug, Clone, Copy)]
enum SoftmaxRows {
    /// Uniform in [-8, 8].
    Plain,
    /// `offset` + uniform in [-8, 8]: exp overflows (or underflows) without the max subtraction.
    Offset(f64),
    /// Plain with about a quarter of the entries -inf (an additive mask), never a whole row.
    Masked,
    /// Every entry -inf: NaN rows, as the reference.
    AllMasked,
}

fn softmax_case<T: Real>(dev: &Dev, m: &Arc<CudaModule>, rows: usize, cols: usize, fill: SoftmaxRows, r: &mut Rng) {
    let kernel = OpKernel::Softmax(T::ELEM);
    let what = format!("{kernel} {rows}x{cols} {fill:?}");
    let f = dev.func(m, &kernel);
    let mut xh: Vec<T> = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let keep = r.below(cols);
        xh.extend((0..cols).map(|c| {
            T::from_f64(match fill {
                SoftmaxRows::Plain => r.range(-8.0, 8.0),
                SoftmaxRows::Offset(o) => o + r.range(-8.0, 8.0),
                SoftmaxRows::Masked if c != keep && r.below(4) == 0 => f64::NEG_INFINITY,
                SoftmaxRows::Masked => r.range(-8.0, 8.0),
                SoftmaxRows::AllMasked => f64::NEG_INFINITY,
            })
        }));
    }
    let x = dev.upload(&xh);
    let mut y = dev.upload(&vec![T::POISON; rows * cols + TAIL]);
    if let Some(cfg) = config(&kernel, rows, cols) {
        launch!(dev, &f, cfg; &x, &mut y, &(rows as u32), &(cols as u32));
    }
    let yh = dev.download(&y);
    check_margins(&what, &yh, 0, rows * cols);
    let mut want = Vec::with_capacity(rows * cols);
    for row in xh.chunks(cols) {
        let v = to_f64s(row);
        let mx = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = v.iter().map(|x| (x - mx).exp()).collect();
        let s: f64 = e.iter().sum();
        want.extend(e.iter().map(|x| x / s));
    }
    check(&what, &to_f64s(&yh[..rows * cols]), &want, |_, w| T::ATOL + T::RTOL * w.abs());
    if !matches!(fill, SoftmaxRows::AllMasked) {
        for (i, row) in yh[..rows * cols].chunks(cols).enumerate() {
            let s: f64 = row.iter().map(|v| v.to_f64()).sum();
            assert!((s - 1.0).abs() < 1e-2, "{what}: row {i} sums to {s}");
        }
    }
}

fn softmax_all<T: Real>(dev: &Dev, seed: u64) {
    let m = dev.module(OpFamily::Softmax);
    let mut r = Rng::new(seed);
    for (rows, cols) in [(1, 1), (5, 19), (2 * 12 * 19, 19), (7, 128), (3, 1000), (2, 4099)] {
        for fill in [SoftmaxRows::Plain, SoftmaxRows::Offset(500.0), SoftmaxRows::Offset(-500.0), SoftmaxRows::Masked] {
            softmax_case::<T>(dev, &m, rows, cols, fill, &mut r);
        }
    }
    // Beyond FP16's exp range by far (FP32 only: FP16 tops out at 65504).
    if T::ELEM == Elem::F32 {
        softmax_case::<T>(dev, &m, 4, 1000, SoftmaxRows::Offset(1e5), &mut r);
    }
    softmax_case::<T>(dev, &m, 3, 19, SoftmaxRows::AllMasked, &mut r);
}

#[test]
fn softmax_f32() {
    let Some(dev) = Dev::open("softmax_f32") else { return };
    softmax_all::<f32>(&dev, 0x0041);
}

#[test]
fn softmax_f16() {
    let Some(dev) = Dev::open("softmax_f16") else { return };
    softmax_all::<u16>(&dev, 0x0042);
}

fn reduce_case<T: Real>(dev: &Dev, m: &Arc<CudaModule>, op: ReduceOp, rows: usize, cols: usize, r: &mut Rng) {
    let kernel = OpKernel::Reduce { op, elem: T::ELEM };
    let what = format!("{kernel} {rows}x{cols}");
    let f = dev.func(m, &kernel);
    let mut xh: Vec<T> = Vec::with_capacity(rows * cols + 1);
    for _ in 0..rows {
        let c = r.range(-2.0, 2.0);
        xh.extend((0..cols).map(|_| T::from_f64(c + r.range(-1.0, 1.0))));
    }
    xh.push(T::POISON); // never read (also keeps the buffer non-empty for cols = 0)
    let x = dev.upload(&xh);
    let mut y = dev.upload(&vec![T::POISON; rows + TAIL]);
    if let Some(cfg) = config(&kernel, rows, cols) {
        launch!(dev, &f, cfg; &x, &mut y, &(rows as u32), &(cols as u32));
    }
    let yh = dev.download(&y);
    check_margins(&what, &yh, 0, rows);
    let (mut want, mut abs) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    for i in 0..rows {
        let v = to_f64s(&xh[i * cols..(i + 1) * cols]);
        let (s, a) = (v.iter().sum::<f64>(), v.iter().map(|x| x.abs()).sum::<f64>());
        let div = if op == ReduceOp::Mean { cols as f64 } else { 1.0 };
        want.push(s / div); // cols = 0: 0 for the sum, NaN for the mean
        abs.push(a / div);
    }
    // FP32 accumulation: error bounded by a few ulps of the sum of magnitudes.
    check(&what, &to_f64s(&yh[..rows]), &want, |i, w| T::ATOL + T::RTOL * w.abs() + 2e-6 * abs[i]);
}

fn reduce_all<T: Real>(dev: &Dev, seed: u64) {
    let m = dev.module(OpFamily::Reduce);
    let mut r = Rng::new(seed);
    for op in ReduceOp::ALL {
        for (rows, cols) in [(1, 1), (5, 7), (13, 384), (3, 1000), (2, 4099), (1000, 3), (3, 0)] {
            reduce_case::<T>(dev, &m, op, rows, cols, &mut r);
        }
    }
}

#[test]
fn reduce_f32() {
    let Some(dev) = Dev::open("reduce_f32") else { return };
    reduce_all::<f32>(&dev, 0x0051);
}

#[test]
fn reduce_f16() {
    let Some(dev) = Dev::open("reduce_f16") else { return };
    reduce_all::<u16>(&dev, 0x0052);
}

// ---------------------------------------------------------------------------------------------
// In place

/// `y = x` (and `y = a`) for the kernels whose docs allow it: one device pointer passed twice.
#[test]
fn in_place() {
    let Some(dev) = Dev::open("in_place") else { return };
    let ew = dev.module(OpFamily::Elementwise);
    let mut r = Rng::new(0x0061);
    let stream = dev.gpu.stream().clone();

    // Unary FP16 (vector path + tail).
    let n = 1003;
    let kernel = OpKernel::Unary { op: UnaryOp::Sigmoid, elem: Elem::F16 };
    let xh: Vec<u16> = (0..n).map(|_| u16::from_f64(r.range(-6.0, 6.0))).collect();
    let mut x = dev.upload(&xh);
    {
        let (p, _sync) = x.device_ptr_mut(&stream);
        launch!(dev, &dev.func(&ew, &kernel), config(&kernel, n, 0).unwrap(); &p, &p, &(n as u64));
    }
    let want: Vec<f64> = xh.iter().map(|v| unary_ref(UnaryOp::Sigmoid, v.to_f64())).collect();
    check("in-place sigmoid f16", &to_f64s(&dev.download(&x)), &want, |_, w| u16::ATOL + u16::RTOL * w.abs());

    // Binary FP32 same shape, y = a.
    let kernel = OpKernel::Binary { op: BinaryOp::Mul, elem: Elem::F32 };
    let ah: Vec<f32> = (0..n).map(|_| r.range(-4.0, 4.0) as f32).collect();
    let bh: Vec<f32> = (0..n).map(|_| r.range(-4.0, 4.0) as f32).collect();
    let mut a = dev.upload(&ah);
    let b = dev.upload(&bh);
    {
        let (p, _sync) = a.device_ptr_mut(&stream);
        launch!(dev, &dev.func(&ew, &kernel), config(&kernel, n, 0).unwrap(); &p, &b, &p, &(n as u64));
    }
    let want: Vec<f64> = ah.iter().zip(&bh).map(|(&a, &b)| a as f64 * b as f64).collect();
    check("in-place mul f32", &to_f64s(&dev.download(&a)), &want, |_, w| f32::RTOL * w.abs());

    // LayerNorm FP16, y = x.
    let ln = dev.module(OpFamily::LayerNorm);
    let (rows, cols) = (19, 384);
    let kernel = OpKernel::LayerNorm(Elem::F16);
    let xh: Vec<u16> = (0..rows * cols).map(|_| u16::from_f64(r.range(-2.0, 3.0))).collect();
    let mut x = dev.upload(&xh);
    {
        let (p, _sync) = x.device_ptr_mut(&stream);
        let null = 0u64;
        launch!(dev, &dev.func(&ln, &kernel), config(&kernel, rows, cols).unwrap();
            &p, &null, &null, &p, &(rows as u32), &(cols as u32), &1e-5f32);
    }
    let mut want = Vec::new();
    for row in xh.chunks(cols) {
        let v = to_f64s(row);
        let mean = v.iter().sum::<f64>() / cols as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / cols as f64;
        want.extend(v.iter().map(|x| (x - mean) / (var + 1e-5f32 as f64).sqrt()));
    }
    check("in-place layernorm f16", &to_f64s(&dev.download(&x)), &want, |_, w| 1e-5 + u16::RTOL * w.abs());

    // Softmax FP32, y = x.
    let sm = dev.module(OpFamily::Softmax);
    let (rows, cols) = (6, 1000);
    let kernel = OpKernel::Softmax(Elem::F32);
    let xh: Vec<f32> = (0..rows * cols).map(|_| r.range(-8.0, 8.0) as f32).collect();
    let mut x = dev.upload(&xh);
    {
        let (p, _sync) = x.device_ptr_mut(&stream);
        launch!(dev, &dev.func(&sm, &kernel), config(&kernel, rows, cols).unwrap(); &p, &p, &(rows as u32), &(cols as u32));
    }
    let mut want = Vec::new();
    for row in xh.chunks(cols) {
        let mx = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let s: f64 = row.iter().map(|&v| (v as f64 - mx).exp()).sum();
        want.extend(row.iter().map(|&v| (v as f64 - mx).exp() / s));
    }
    check("in-place softmax f32", &to_f64s(&dev.download(&x)), &want, |_, w| f32::RTOL * w.abs());
}

// ---------------------------------------------------------------------------------------------
// Gather

/// `Gather(data, idx, axis)` of `eb`-byte elements as `gather_plan` plans it, against a naive
/// byte gather. `with_err`: pass an error flag (else null).
#[allow(clippy::too_many_arguments)]
fn gather_case(
    dev: &Dev,
    m: &Arc<CudaModule>,
    shape: &[usize],
    axis: i64,
    idx_shape: &[usize],
    idx: &[i64],
    eb: usize,
    with_err: bool,
    r: &mut Rng,
) {
    let plan = gather_plan(shape, axis, idx_shape, eb).unwrap_or_else(|e| panic!("{e}"));
    let what = format!("{} data {shape:?} x{eb} axis {axis} idx {idx:?}", plan.kernel);
    assert_eq!(idx.len(), idx_shape.iter().product::<usize>(), "{what}");
    let a = if axis < 0 { axis + shape.len() as i64 } else { axis } as usize;
    let (outer, dim, inner) = (shape[..a].iter().product::<usize>(), shape[a], shape[a + 1..].iter().product::<usize>());
    let numel: usize = shape.iter().product();
    let data_h = r.bytes(numel * eb);
    // Naive: y[o][j][i] = data[o][idx[j]][i] (negative indices wrapped; out of range: zeros).
    let mut want = Vec::new();
    let mut want_err = false;
    for o in 0..outer {
        for &k in idx {
            let k = if k < 0 { k + dim as i64 } else { k };
            if k < 0 || k >= dim as i64 {
                want_err |= inner > 0;
                want.resize(want.len() + inner * eb, 0);
            } else {
                let s = (o * dim + k as usize) * inner * eb;
                want.extend_from_slice(&data_h[s..s + inner * eb]);
            }
        }
    }
    let mut out_shape = shape[..a].to_vec();
    out_shape.extend_from_slice(idx_shape);
    out_shape.extend_from_slice(&shape[a + 1..]);
    assert_eq!(plan.out_shape, out_shape, "{what}");
    assert_eq!(plan.units * unit_bytes(&plan), want.len(), "{what}");

    let data = dev.upload(&[&data_h[..], &[0u8; 16][..]].concat());
    let idx_d = dev.upload(&[idx, &[0i64][..]].concat());
    let mut y = dev.upload(&vec![0xFFu8; want.len() + 16]);
    let mut err = dev.upload(&[0i32]);
    let f = dev.func(m, &plan.kernel);
    if let Some(cfg) = to_launch(plan.launch().unwrap()) {
        let (o, d, n, i) = (plan.outer, plan.axis_dim, plan.n_idx, plan.inner);
        let null = 0u64;
        let mut l = dev.gpu.stream().launch_builder(&f);
        l.arg(&data).arg(&idx_d).arg(&mut y).arg(&o).arg(&d).arg(&n).arg(&i);
        if with_err {
            l.arg(&mut err)
        } else {
            l.arg(&null)
        };
        // SAFETY: the prototype of fpx_gather_<w>; the buffers hold the planned units.
        unsafe { l.launch(cfg) }.unwrap_or_else(|e| panic!("{what}: {e:?}"));
    }
    let yh = dev.download(&y);
    assert!(yh[want.len()..].iter().all(|&b| b == 0xFF), "{what}: wrote past its output");
    let first = (0..want.len()).find(|&i| yh[i] != want[i]);
    assert!(first.is_none(), "{what}: first wrong byte {first:?} of {}", want.len());
    let err_h = dev.download(&err)[0];
    assert_eq!(err_h, (with_err && want_err) as i32, "{what}: error flag");
}

/// Bytes per unit of a gather plan's kernel.
fn unit_bytes(plan: &GatherPlan) -> usize {
    match plan.kernel {
        OpKernel::Gather(w) => w.bytes(),
        k => panic!("gather_plan picked {k}"),
    }
}

#[test]
fn gather() {
    let Some(dev) = Dev::open("gather") else { return };
    let m = dev.module(OpFamily::Gather);
    let mut r = Rng::new(0x0071);
    // Embedding lookup: [vocab, 384] FP16 rows (16-byte units), token ids with negatives.
    let ids: Vec<i64> = (0..2 * 7).map(|i| if i % 5 == 0 { -(r.below(50) as i64) - 1 } else { r.below(50) as i64 }).collect();
    gather_case(&dev, &m, &[50, 384], 0, &[2, 7], &ids, 2, true, &mut r);
    // Middle axis, 24-byte slices (8-byte units).
    gather_case(&dev, &m, &[3, 5, 6], 1, &[4], &[-1, -5, 0, 4], 4, true, &mut r);
    // Last axis (negative axis), 2-byte elements, scalar index.
    gather_case(&dev, &m, &[2, 3, 5], -1, &[], &[-2], 2, true, &mut r);
    // Bytes, odd sizes.
    gather_case(&dev, &m, &[4, 3], 1, &[5], &[2, 0, -3, 1, 2], 1, true, &mut r);
    // 8-byte elements (int64 data), two-level indices, many outer rows.
    let idx: Vec<i64> = (0..6).map(|_| r.below(9) as i64 - 4).collect();
    gather_case(&dev, &m, &[33, 4, 3], 1, &[2, 3], &idx, 8, true, &mut r);
    // Large enough for many blocks.
    let idx: Vec<i64> = (0..300).map(|_| r.below(1000) as i64 - 500).collect();
    gather_case(&dev, &m, &[500, 64], 0, &[300], &idx, 4, true, &mut r);
    // Out of range (both sides): zeros written and the flag set; with a null flag no fault.
    gather_case(&dev, &m, &[6, 4], 0, &[4], &[1, 6, -7, 2], 4, true, &mut r);
    gather_case(&dev, &m, &[6, 4], 0, &[4], &[1, 6, -7, 2], 4, false, &mut r);
    gather_case(&dev, &m, &[2, 9, 3], 1, &[3], &[0, 100, -1], 2, true, &mut r);
    gather_case(&dev, &m, &[50, 384], 0, &[3], &[49, 50, -50], 2, true, &mut r);
}

// ---------------------------------------------------------------------------------------------
// Transpose

/// `Transpose(perm)` of a `shape` of `eb`-byte elements as `transpose_plan` plans it, against a
/// naive byte transpose; `kind` is the plan the case is meant to hit.
fn transpose_case(dev: &Dev, m: &Arc<CudaModule>, shape: &[usize], perm: &[usize], eb: usize, kind: &str, r: &mut Rng) {
    let plan = transpose_plan(shape, perm, eb).unwrap_or_else(|e| panic!("{e}"));
    let what = format!("{shape:?} perm {perm:?} x{eb}: {plan:?}");
    let numel: usize = shape.iter().product();
    let xh = r.bytes(numel * eb);
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let mut want = vec![0u8; numel * eb];
    for (o, chunk) in want.chunks_mut(eb).enumerate() {
        let oi = unravel_index(o, &out_shape);
        let mut ii = vec![0; shape.len()];
        for (d, &p) in perm.iter().enumerate() {
            ii[p] = oi[d];
        }
        let s = ravel(&ii, shape) * eb;
        chunk.copy_from_slice(&xh[s..s + eb]);
    }
    let x = dev.upload(&[&xh[..], &[0u8; 16][..]].concat());
    let mut y = dev.upload(&vec![0xFFu8; numel * eb + 16]);
    let f = |k: &OpKernel| dev.func(m, k);
    assert_eq!(plan_kind(&plan), kind, "{what}");
    match &plan {
        TransposePlan::Copy { bytes } => {
            assert_eq!(*bytes, numel * eb);
            // Nothing moves: the naive transpose is the input itself.
            assert!(want == xh, "{what}: planned as a copy, but the permutation moves data");
            return;
        }
        TransposePlan::Tile { kernel, batch, rows, cols } => {
            if let Some(cfg) = to_launch(plan.launch().unwrap()) {
                launch!(dev, &f(kernel), cfg; &x, &mut y, batch, rows, cols);
            }
        }
        TransposePlan::General { kernel, args } => {
            if let Some(cfg) = to_launch(plan.launch().unwrap()) {
                launch!(dev, &f(kernel), cfg; &x, &mut y, args);
            }
        }
    }
    let yh = dev.download(&y);
    assert!(yh[numel * eb..].iter().all(|&b| b == 0xFF), "{what}: wrote past its output");
    let first = (0..want.len()).find(|&i| yh[i] != want[i]);
    assert!(first.is_none(), "{what}: first wrong byte {first:?} of {}", want.len());
}

/// (shape, perm, element bytes, the plan `transpose_plan` must pick).
const TRANSPOSES: [(&[usize], &[usize], usize, &str); 24] = [
    // Attention, FP16: split heads [B,S,H,D] -> [B,H,S,D] (16-byte units), merge them back,
    // K^T [B,H,S,D] -> [B,H,D,S] (tiled), and [B,S,H,D] -> [B,H,D,S] in one go (tiled).
    (&[2, 128, 12, 64], &[0, 2, 1, 3], 2, "general"),
    (&[2, 12, 19, 64], &[0, 2, 1, 3], 2, "general"),
    (&[2, 12, 128, 64], &[0, 1, 3, 2], 2, "tile"),
    (&[1, 12, 19, 32], &[0, 1, 3, 2], 2, "tile"),
    (&[2, 128, 12, 64], &[0, 2, 3, 1], 2, "tile"),
    // 2-D and batched 2-D with ragged 32 x 32 tiles, every unit width.
    (&[37, 53], &[1, 0], 1, "tile"),
    (&[37, 53], &[1, 0], 2, "tile"),
    (&[37, 53], &[1, 0], 4, "tile"),
    (&[37, 53], &[1, 0], 8, "tile"),
    (&[37, 53], &[1, 0], 16, "tile"),
    (&[3, 33, 31], &[0, 2, 1], 1, "tile"),
    (&[3, 33, 31], &[0, 2, 1], 2, "tile"),
    (&[3, 33, 31], &[0, 2, 1], 4, "tile"),
    (&[3, 33, 31], &[0, 2, 1], 8, "tile"),
    (&[3, 33, 31], &[0, 2, 1], 16, "tile"),
    (&[1000, 3], &[1, 0], 4, "tile"),
    (&[3, 4, 5], &[2, 0, 1], 2, "tile"),
    // General permutations, up to rank 6 after merging.
    (&[3, 4, 5], &[1, 0, 2], 4, "general"),
    (&[3, 4, 5, 6], &[3, 1, 2, 0], 4, "general"),
    (&[4, 6, 10], &[1, 0, 2], 1, "general"),
    (&[2, 3, 2, 3, 2, 3], &[5, 3, 1, 4, 2, 0], 4, "general"),
    (&[2, 3, 2, 3, 2, 3], &[1, 0, 3, 2, 5, 4], 8, "general"),
    // Nothing moves.
    (&[1, 1], &[1, 0], 4, "copy"),
    (&[1, 5, 1, 3], &[2, 0, 1, 3], 4, "copy"),
];

fn plan_kind(plan: &TransposePlan) -> &'static str {
    match plan {
        TransposePlan::Copy { .. } => "copy",
        TransposePlan::Tile { .. } => "tile",
        TransposePlan::General { .. } => "general",
    }
}

#[test]
fn transpose() {
    // The planner picks the intended kernel for every case (checked without a GPU too).
    for (shape, perm, eb, kind) in TRANSPOSES {
        let plan = transpose_plan(shape, perm, eb).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan_kind(&plan), kind, "{shape:?} perm {perm:?} x{eb}: {plan:?}");
    }
    let Some(dev) = Dev::open("transpose") else { return };
    let m = dev.module(OpFamily::Transpose);
    let mut r = Rng::new(0x0081);
    for (shape, perm, eb, kind) in TRANSPOSES {
        transpose_case(&dev, &m, shape, perm, eb, kind, &mut r);
    }
}
