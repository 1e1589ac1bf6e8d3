//! Matrix products of two tensors (MatMul, Gemm) through the `matrixmultiply` GEMM:
//! f32 (f16/bf16 upcast to f32) and f64, batched with numpy broadcasting. The GEMM runs on one
//! thread per call; work is split across the current rayon pool here (batches, or column/row
//! blocks of one product), so the executor's thread count is respected.

use super::fast::SendPtr;
use super::{alloc, arg, array, bad_type, broadcast_shape, opt_arg, KernelRegistry};
use crate::{kbail, KernelError};
use fpx_ir::ndarray::IxDyn;
use fpx_ir::{DType, Elem, Node, Tensor};
use rayon::prelude::*;
use std::borrow::Cow;

type Res = Result<Vec<Tensor>, KernelError>;

/// The body of [`Gemm::gemm_raw`] for one `matrixmultiply` GEMM (`sgemm`, `dgemm`), called
/// directly: through a function pointer it would not be inlined and specialized for the unit
/// column stride of `c`, which measured 6% slower on MiniLM's products.
macro_rules! gemm_raw_calls {
    ($gemm:path) => {
        unsafe fn gemm_raw(
            m: usize,
            k: usize,
            n: usize,
            alpha: Self,
            a: *const Self,
            (rsa, csa): (isize, isize),
            b: *const Self,
            (rsb, csb): (isize, isize),
            beta: Self,
            c: *mut Self,
            ldc: isize,
        ) {
            // SAFETY: the caller upholds the trait method's contract, which is the GEMM's.
            unsafe { $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, ldc, 1) }
        }
    };
}

/// Element types the GEMM computes in (also the supertrait of the NN kernels' `Real`).
pub(crate) trait Gemm: Elem {
    /// `c = alpha * a·b + beta * c` for `(row, column)` strides of `a` and `b` given in
    /// elements; `c`'s rows are `ldc` elements apart.
    ///
    /// # Safety
    /// Every element reached through the pointers and strides must be valid (and `c`'s writable
    /// and not read or written by anyone else during the call).
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        a_strides: (isize, isize),
        b: *const Self,
        b_strides: (isize, isize),
        beta: Self,
        c: *mut Self,
        ldc: isize,
    );
    fn values(t: &Tensor) -> Vec<Self>;
    /// The tensor's data without a copy, when it already is of this type in standard layout.
    fn slice(t: &Tensor) -> Option<&[Self]>;
    fn tensor(shape: &[usize], v: Vec<Self>) -> Tensor;
}

impl Gemm for f32 {
    gemm_raw_calls!(matrixmultiply::sgemm);
    fn values(t: &Tensor) -> Vec<f32> {
        match t {
            Tensor::F32(a) => a.as_standard_layout().iter().copied().collect(),
            other => other.to_f32().iter().copied().collect(),
        }
    }
    fn slice(t: &Tensor) -> Option<&[f32]> {
        super::f32_slice(t)
    }
    fn tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from(array(shape, v))
    }
}

impl Gemm for f64 {
    gemm_raw_calls!(matrixmultiply::dgemm);
    fn values(t: &Tensor) -> Vec<f64> {
        t.to_f64_vec()
    }
    fn slice(t: &Tensor) -> Option<&[f64]> {
        match t {
            Tensor::F64(a) => a.as_slice(),
            _ => None,
        }
    }
    fn tensor(shape: &[usize], v: Vec<f64>) -> Tensor {
        Tensor::from(array(shape, v))
    }
}

/// A GEMM operand: borrowed when the tensor already holds contiguous values of type `T`.
fn operand<T: Gemm>(t: &Tensor) -> Cow<'_, [T]> {
    match T::slice(t) {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(T::values(t)),
    }
}

/// Multiply-adds below which one product stays on one thread.
const PAR_GEMM_MIN: usize = 1 << 20;

/// `c = alpha * a·b + beta * c` for a row-major `m × n` `c` ([`gemm_into`] with rows `n` apart).
#[allow(clippy::too_many_arguments)]
fn par_gemm<T: Gemm>(
    m: usize,
    k: usize,
    n: usize,
    alpha: T,
    a: &[T],
    rsa: isize,
    csa: isize,
    b: &[T],
    rsb: isize,
    csb: isize,
    beta: T,
    c: &mut [T],
) {
    gemm_into(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, n)
}

/// `c = alpha * a·b + beta * c` for a row-major `m × n` block of `c` whose rows are `ldc`
/// elements apart, split across the current rayon pool when large: by blocks of columns (each
/// thread packs only its part of `b`), or by blocks of rows when `c` is too narrow. Panics (a
/// bug, never input data) if a stride reaches outside `a` or `b`, or a row outside `c`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into<T: Gemm>(
    m: usize,
    k: usize,
    n: usize,
    alpha: T,
    a: &[T],
    rsa: isize,
    csa: isize,
    b: &[T],
    rsb: isize,
    csb: isize,
    beta: T,
    c: &mut [T],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && (m - 1) * ldc + n <= c.len(), "GEMM output out of range");
    // The last element each operand's strides reach must be inside it.
    let reach = |rows: usize, cols: usize, rs: isize, cs: isize| (rows - 1) * rs.unsigned_abs() + (cols - 1) * cs.unsigned_abs();
    assert!(k == 0 || (reach(m, k, rsa, csa) < a.len() && reach(k, n, rsb, csb) < b.len()), "GEMM operand strides out of range");
    let threads = rayon::current_num_threads();
    let (cp, ap, bp) = (SendPtr(c.as_mut_ptr()), a.as_ptr() as usize, b.as_ptr() as usize);
    // SAFETY (all calls below): the extents were checked above; each call writes its own block
    // of `c` (disjoint rows or columns).
    let run = |i0: usize, i1: usize, j0: usize, j1: usize| unsafe {
        let c = cp;
        T::gemm_raw(
            i1 - i0,
            k,
            j1 - j0,
            alpha,
            (ap as *const T).offset(i0 as isize * rsa),
            (rsa, csa),
            (bp as *const T).offset(j0 as isize * csb),
            (rsb, csb),
            beta,
            c.0.add(i0 * ldc + j0),
            ldc as isize,
        )
    };
    if threads <= 1 || m * k * n < PAR_GEMM_MIN {
        run(0, m, 0, n);
    } else if n >= 32 * threads {
        let per = n.div_ceil(threads).div_ceil(16) * 16;
        (0..n.div_ceil(per)).into_par_iter().for_each(|t| run(0, m, t * per, ((t + 1) * per).min(n)));
    } else if m >= 2 * threads {
        let per = m.div_ceil(threads);
        (0..m.div_ceil(per)).into_par_iter().for_each(|t| run(t * per, ((t + 1) * per).min(m), 0, n));
    } else {
        run(0, m, 0, n);
    }
}

/// `y[m][n] = x[m][k] · w[k][n]`, all row-major f32 (the QuantMatMul reference path uses it).
pub(crate) fn sgemm_rows(m: usize, k: usize, n: usize, x: &[f32], w: &[f32], y: &mut [f32]) {
    if m * n == 0 || k == 0 {
        y.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    assert!(x.len() >= m * k && w.len() >= k * n && y.len() >= m * n);
    par_gemm(m, k, n, 1.0, x, k as isize, 1, w, n as isize, 1, 0.0, y);
}

fn check_float(t: &Tensor) -> Result<(), KernelError> {
    if t.dtype().is_float() {
        Ok(())
    } else {
        Err(bad_type(t))
    }
}

/// Offsets of each broadcast batch matrix inside an operand with batch dims `dims`.
fn batch_offsets(batch: &[usize], dims: &[usize], matrix: usize) -> Vec<usize> {
    let pad = batch.len() - dims.len();
    let st = super::row_major_strides(dims);
    let count: usize = batch.iter().product();
    let bst = super::row_major_strides(batch);
    (0..count)
        .map(|flat| {
            let mut off = 0;
            for (d, &size) in batch.iter().enumerate() {
                let idx = flat / bst[d] % size;
                if d >= pad && dims[d - pad] != 1 {
                    off += idx * st[d - pad];
                }
            }
            off * matrix
        })
        .collect()
}

fn matmul_t<T: Gemm>(a: &Tensor, b: &Tensor) -> Result<Tensor, KernelError> {
    let (sa, sb) = (a.shape().to_vec(), b.shape().to_vec());
    if sa.is_empty() || sb.is_empty() {
        kbail!("MatMul operands must have rank >= 1, got {sa:?} and {sb:?}");
    }
    let a2 = if sa.len() == 1 { vec![1, sa[0]] } else { sa.clone() };
    let b2 = if sb.len() == 1 { vec![sb[0], 1] } else { sb.clone() };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != k2 {
        kbail!("inner dimensions differ: {sa:?} x {sb:?}");
    }
    let (ab, bb) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
    let batch = broadcast_shape(&[ab, bb])?;
    let mut shape = batch.clone();
    if sa.len() > 1 {
        shape.push(m);
    }
    if sb.len() > 1 {
        shape.push(n);
    }
    // The output, checked before anything (batch offsets, converted operands) is allocated.
    let mut out = alloc::filled(&shape, T::default())?;
    if out.is_empty() {
        // Empty operands can carry huge batch dimensions: no offsets for an empty product.
        return Ok(T::tensor(&shape, out));
    }
    let (av, bv) = (operand::<T>(a), operand::<T>(b));
    let (oa, ob) = (batch_offsets(&batch, ab, m * k), batch_offsets(&batch, bb, k * n));
    let count = oa.len();
    if m * n > 0 && k > 0 {
        let one = T::from_f64(1.0);
        let zero = T::from_f64(0.0);
        let (ki, ni) = (k as isize, n as isize);
        if ob.iter().all(|&o| o == 0) && oa.iter().enumerate().all(|(i, &o)| o == i * m * k) {
            // One B for consecutive A matrices (activations times a weight): one product with
            // the batches stacked as rows.
            par_gemm(count * m, k, n, one, &av, ki, 1, &bv, ni, 1, zero, &mut out);
        } else if count > 1 {
            out.par_chunks_mut(m * n)
                .enumerate()
                .for_each(|(i, c)| par_gemm(m, k, n, one, &av[oa[i]..oa[i] + m * k], ki, 1, &bv[ob[i]..ob[i] + k * n], ni, 1, zero, c));
        } else {
            par_gemm(m, k, n, one, &av[..m * k], ki, 1, &bv[..k * n], ni, 1, zero, &mut out);
        }
    }
    Ok(T::tensor(&shape, out))
}

fn matmul(_: &Node, i: &[Option<&Tensor>]) -> Res {
    let (a, b) = (arg(i, 0)?, arg(i, 1)?);
    check_float(a)?;
    check_float(b)?;
    if a.dtype() != b.dtype() {
        kbail!("operand element types differ: {} and {}", a.dtype(), b.dtype());
    }
    Ok(vec![match a.dtype() {
        DType::F64 => matmul_t::<f64>(a, b)?,
        dt => matmul_t::<f32>(a, b)?.cast(dt),
    }])
}

fn gemm_t<T: Gemm>(n: &Node, a: &Tensor, b: &Tensor, c: Option<&Tensor>) -> Result<Tensor, KernelError> {
    let (sa, sb) = (a.shape(), b.shape());
    if sa.len() != 2 || sb.len() != 2 {
        kbail!("Gemm needs 2-D A and B, got {sa:?} and {sb:?}");
    }
    let (ta, tb) = (n.attr_i("transA", 0) != 0, n.attr_i("transB", 0) != 0);
    let (m, k) = if ta { (sa[1], sa[0]) } else { (sa[0], sa[1]) };
    let (k2, nn) = if tb { (sb[1], sb[0]) } else { (sb[0], sb[1]) };
    if k != k2 {
        kbail!("inner dimensions differ: A {sa:?} (transA={ta}) x B {sb:?} (transB={tb})");
    }
    let alpha = T::from_f64(n.attr_f("alpha", 1.0) as f64);
    let beta = n.attr_f("beta", 1.0) as f64;
    let mut out = alloc::filled(&[m, nn], T::default())?;
    let mut beta_t = T::from_f64(0.0);
    if let Some(c) = c {
        let cf = c.to_f64();
        let Some(bc) = cf.broadcast(IxDyn(&[m, nn])) else { kbail!("C of shape {:?} does not broadcast to [{m}, {nn}]", c.shape()) };
        for (o, v) in out.iter_mut().zip(bc.iter()) {
            *o = T::from_f64(*v);
        }
        beta_t = T::from_f64(beta);
    }
    if m * nn > 0 && k > 0 {
        let (av, bv) = (operand::<T>(a), operand::<T>(b));
        let (rsa, csa) = if ta { (1, m as isize) } else { (k as isize, 1) };
        let (rsb, csb) = if tb { (1, k as isize) } else { (nn as isize, 1) };
        par_gemm(m, k, nn, alpha, &av, rsa, csa, &bv, rsb, csb, beta_t, &mut out);
    } else if c.is_some() {
        for o in &mut out {
            *o = T::from_f64(0.0);
        }
        let cf = c.expect("checked").to_f64();
        let bc = cf.broadcast(IxDyn(&[m, nn])).expect("checked above");
        for (o, v) in out.iter_mut().zip(bc.iter()) {
            *o = T::from_f64(beta * *v);
        }
    }
    Ok(T::tensor(&[m, nn], out))
}

fn gemm(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let (a, b, c) = (arg(i, 0)?, arg(i, 1)?, opt_arg(i, 2));
    check_float(a)?;
    check_float(b)?;
    Ok(vec![match a.dtype() {
        DType::F64 => gemm_t::<f64>(n, a, b, c)?,
        dt => gemm_t::<f32>(n, a, b, c)?.cast(dt),
    }])
}

pub(super) fn register(r: &mut KernelRegistry) {
    r.add("MatMul", matmul);
    r.add("Gemm", gemm);
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpx_ir::ndarray::ArrayD;
    use fpx_test_support::Rng;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum();
            }
        }
        c
    }

    #[test]
    fn batched_broadcast_matmul_matches_f64_reference() {
        let (m, k, n) = (5, 7, 3);
        let a = Rng::new(1).signeds(2 * 4 * m * k);
        let b = Rng::new(2).signeds(4 * k * n);
        let ta = Tensor::from(ArrayD::from_shape_vec(IxDyn(&[2, 4, m, k]), a.clone()).unwrap());
        let tb = Tensor::from(ArrayD::from_shape_vec(IxDyn(&[4, k, n]), b.clone()).unwrap());
        let node = Node::new("mm", "MatMul", 17, vec![], vec![]);
        let out = matmul(&node, &[Some(&ta), Some(&tb)]).unwrap().remove(0);
        assert_eq!(out.shape(), &[2, 4, m, n]);
        let got = out.to_f64_vec();
        for x in 0..2 {
            for y in 0..4 {
                let want = naive(&a[(x * 4 + y) * m * k..][..m * k], &b[y * k * n..][..k * n], m, k, n);
                let g = &got[(x * 4 + y) * m * n..][..m * n];
                for (p, q) in g.iter().zip(&want) {
                    assert!((p - q).abs() < 1e-5, "{p} vs {q}");
                }
            }
        }
    }

    #[test]
    fn gemm_with_transposes_alpha_beta_and_bias() {
        let (m, k, n) = (4, 6, 5);
        let a = Rng::new(3).signeds(k * m); // stored transposed: [k, m]
        let b = Rng::new(4).signeds(n * k); // stored transposed: [n, k]
        let c = Rng::new(5).signeds(n);
        let ta = Tensor::from(ArrayD::from_shape_vec(IxDyn(&[k, m]), a.clone()).unwrap());
        let tb = Tensor::from(ArrayD::from_shape_vec(IxDyn(&[n, k]), b.clone()).unwrap());
        let tc = Tensor::from(ArrayD::from_shape_vec(IxDyn(&[n]), c.clone()).unwrap());
        let mut node = Node::new("g", "Gemm", 13, vec![], vec![]);
        node.attrs.insert("transA".into(), fpx_ir::Attribute::Int(1));
        node.attrs.insert("transB".into(), fpx_ir::Attribute::Int(1));
        node.attrs.insert("alpha".into(), fpx_ir::Attribute::Float(0.5));
        node.attrs.insert("beta".into(), fpx_ir::Attribute::Float(2.0));
        let out = gemm(&node, &[Some(&ta), Some(&tb), Some(&tc)]).unwrap().remove(0).to_f64_vec();
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|p| a[p * m + i] as f64 * b[j * k + p] as f64).sum();
                let want = 0.5 * dot + 2.0 * c[j] as f64;
                assert!((out[i * n + j] - want).abs() < 1e-5, "({i},{j}) {} vs {want}", out[i * n + j]);
            }
        }
    }
}
