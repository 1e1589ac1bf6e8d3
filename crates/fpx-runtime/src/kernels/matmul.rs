//! Matrix products of two tensors (MatMul, Gemm) through the `matrixmultiply` GEMM:
//! f32 (f16/bf16 upcast to f32) and f64, batched with numpy broadcasting, batches in parallel.

use super::{arg, array, bad_type, broadcast_shape, opt_arg, KernelRegistry};
use crate::{kbail, KernelError};
use fpx_ir::ndarray::IxDyn;
use fpx_ir::{DType, Node, Tensor};
use rayon::prelude::*;

type Res = Result<Vec<Tensor>, KernelError>;

/// Element types the GEMM computes in.
trait Gemm: Copy + Default + Send + Sync + 'static {
    /// `c = alpha * a·b + beta * c` for row/column strides given in elements.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: &[Self],
        rsa: isize,
        csa: isize,
        b: &[Self],
        rsb: isize,
        csb: isize,
        beta: Self,
        c: &mut [Self],
    );
    fn values(t: &Tensor) -> Vec<Self>;
    fn from_f64(v: f64) -> Self;
    fn tensor(shape: &[usize], v: Vec<Self>) -> Tensor;
}

impl Gemm for f32 {
    fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: &[f32],
        rsa: isize,
        csa: isize,
        b: &[f32],
        rsb: isize,
        csb: isize,
        beta: f32,
        c: &mut [f32],
    ) {
        assert!(c.len() >= m * n);
        // SAFETY: callers pass slices that cover every (row, col) reached through the strides
        // (checked by `check_extent`), and `c` holds m*n elements in row-major order.
        unsafe { matrixmultiply::sgemm(m, k, n, alpha, a.as_ptr(), rsa, csa, b.as_ptr(), rsb, csb, beta, c.as_mut_ptr(), n as isize, 1) }
    }
    fn values(t: &Tensor) -> Vec<f32> {
        match t {
            Tensor::F32(a) => a.as_standard_layout().iter().copied().collect(),
            other => other.to_f32().iter().copied().collect(),
        }
    }
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
    fn tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from(array(shape, v))
    }
}

impl Gemm for f64 {
    fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: f64,
        a: &[f64],
        rsa: isize,
        csa: isize,
        b: &[f64],
        rsb: isize,
        csb: isize,
        beta: f64,
        c: &mut [f64],
    ) {
        assert!(c.len() >= m * n);
        // SAFETY: as for f32.
        unsafe { matrixmultiply::dgemm(m, k, n, alpha, a.as_ptr(), rsa, csa, b.as_ptr(), rsb, csb, beta, c.as_mut_ptr(), n as isize, 1) }
    }
    fn values(t: &Tensor) -> Vec<f64> {
        t.to_f64_vec()
    }
    fn from_f64(v: f64) -> f64 {
        v
    }
    fn tensor(shape: &[usize], v: Vec<f64>) -> Tensor {
        Tensor::from(array(shape, v))
    }
}

/// `y[m][n] = x[m][k] · w[k][n]`, all row-major f32 (the QuantMatMul reference path uses it).
pub(crate) fn sgemm_rows(m: usize, k: usize, n: usize, x: &[f32], w: &[f32], y: &mut [f32]) {
    if m * n == 0 || k == 0 {
        y.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    assert!(x.len() >= m * k && w.len() >= k * n && y.len() >= m * n);
    f32::gemm(m, k, n, 1.0, x, k as isize, 1, w, n as isize, 1, 0.0, y);
}

fn check_float(t: &Tensor) -> Result<(), KernelError> {
    if t.dtype().is_float() {
        Ok(())
    } else {
        Err(bad_type(t))
    }
}

/// Row-major strides of a shape, in elements.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * shape[k + 1];
    }
    s
}

/// Offsets of each broadcast batch matrix inside an operand with batch dims `dims`.
fn batch_offsets(batch: &[usize], dims: &[usize], matrix: usize) -> Vec<usize> {
    let pad = batch.len() - dims.len();
    let st = strides(dims);
    let count: usize = batch.iter().product();
    let bst = strides(batch);
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
    let (av, bv) = (T::values(a), T::values(b));
    let (oa, ob) = (batch_offsets(&batch, ab, m * k), batch_offsets(&batch, bb, k * n));
    let count = oa.len();
    let mut out = vec![T::default(); count * m * n];
    if m * n > 0 {
        let one = T::from_f64(1.0);
        let zero = T::from_f64(0.0);
        let run = |(i, c): (usize, &mut [T])| {
            if k == 0 {
                return;
            }
            T::gemm(m, k, n, one, &av[oa[i]..oa[i] + m * k], k as isize, 1, &bv[ob[i]..ob[i] + k * n], n as isize, 1, zero, c);
        };
        if count > 1 {
            out.par_chunks_mut(m * n).enumerate().for_each(run);
        } else {
            out.chunks_mut(m * n).enumerate().for_each(run);
        }
    }
    let mut shape = batch;
    if sa.len() > 1 {
        shape.push(m);
    }
    if sb.len() > 1 {
        shape.push(n);
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
    let mut out = vec![T::default(); m * nn];
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
        let (av, bv) = (T::values(a), T::values(b));
        let (rsa, csa) = if ta { (1, m as isize) } else { (k as isize, 1) };
        let (rsb, csb) = if tb { (1, k as isize) } else { (nn as isize, 1) };
        T::gemm(m, k, nn, alpha, &av, rsa, csa, &bv, rsb, csb, beta_t, &mut out);
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

    /// Deterministic pseudo-random values in [-1, 1).
    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

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
        let a = rand_vec(2 * 4 * m * k, 1);
        let b = rand_vec(4 * k * n, 2);
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
        let a = rand_vec(k * m, 3); // stored transposed: [k, m]
        let b = rand_vec(n * k, 4); // stored transposed: [n, k]
        let c = rand_vec(n, 5);
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
