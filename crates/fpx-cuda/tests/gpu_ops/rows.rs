//! Row kernels (LayerNorm, Softmax, Reduce), Gather and Transpose.

use super::*;

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
