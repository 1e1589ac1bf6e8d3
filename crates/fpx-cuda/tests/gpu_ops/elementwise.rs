//! Unary, binary (same shape and broadcast) and cast kernels.

use super::*;

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
