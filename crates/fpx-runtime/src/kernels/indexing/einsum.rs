//! Einsum, for any equation `fpx_ir::ops::einsum` parses: repeated labels in one operand take
//! its diagonal, labels no later operand or the output needs are summed out early, and the
//! operands are contracted left to right, each pair by permuting to `[batch, rows, inner]` and
//! `[batch, inner, columns]` and a batched matrix product (f64 GEMM for floats, wrapping i64
//! for integers). Size-1 dimensions broadcast against any size, as in numpy.

use super::{Res, Walk};
use crate::kernels::{alloc, arg, array, bad_type, row_major_strides, KernelRegistry};
use crate::{kbail, KernelError};
use fpx_ir::ops::einsum::{Bound, Equation};
use fpx_ir::{dispatch, DType, Elem, Node, Tensor};

/// The element types Einsum computes in: f64 for floats, i64 (wrapping) for integers.
trait Acc: Elem {
    fn add(self, o: Self) -> Self;
    fn from_elem<T: Elem>(x: T) -> Self;
    /// `c[m][n] = Σ_k a[m][k] · b[k][n]`, all row-major; `c` starts zeroed.
    fn gemm(m: usize, k: usize, n: usize, a: &[Self], b: &[Self], c: &mut [Self]);
}

impl Acc for f64 {
    fn add(self, o: f64) -> f64 {
        self + o
    }
    fn from_elem<T: Elem>(x: T) -> f64 {
        x.to_f64()
    }
    fn gemm(m: usize, k: usize, n: usize, a: &[f64], b: &[f64], c: &mut [f64]) {
        if m * n == 0 || k == 0 {
            return;
        }
        assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "GEMM operands are too short");
        // SAFETY: the row-major operands hold m·k, k·n and m·n elements (checked above), and `c`
        // is borrowed mutably for the call.
        unsafe {
            matrixmultiply::dgemm(m, k, n, 1.0, a.as_ptr(), k as isize, 1, b.as_ptr(), n as isize, 1, 0.0, c.as_mut_ptr(), n as isize, 1)
        }
    }
}

impl Acc for i64 {
    fn add(self, o: i64) -> i64 {
        self.wrapping_add(o)
    }
    fn from_elem<T: Elem>(x: T) -> i64 {
        x.to_i64()
    }
    fn gemm(m: usize, k: usize, n: usize, a: &[i64], b: &[i64], c: &mut [i64]) {
        if n == 0 {
            return;
        }
        for (arow, crow) in a.chunks_exact(k.max(1)).zip(c.chunks_exact_mut(n)).take(m) {
            for (&x, brow) in arow.iter().zip(b.chunks_exact(n)).take(k) {
                for (o, &y) in crow.iter_mut().zip(brow) {
                    *o = o.wrapping_add(x.wrapping_mul(y));
                }
            }
        }
    }
}

/// An operand: row-major data, its shape, and the label of each axis.
struct Operand<A> {
    data: Vec<A>,
    shape: Vec<usize>,
    labels: Vec<usize>,
}

impl<A: Acc> Operand<A> {
    /// The size of label `l` here (`None`: not present).
    fn size(&self, l: usize) -> Option<usize> {
        self.labels.iter().position(|&x| x == l).map(|k| self.shape[k])
    }

    /// The data walked along `axes` (label, size): each axis steps by the stride of this
    /// operand's axes with that label (0 where it has size 1 or lacks the label: broadcast).
    fn pack(&self, axes: &[(usize, usize)]) -> Result<Vec<A>, KernelError> {
        let sizes: Vec<usize> = axes.iter().map(|&(_, s)| s).collect();
        let mut out = alloc::reserve::<A>(&sizes)?;
        if sizes.contains(&0) {
            return Ok(out);
        }
        let st = row_major_strides(&self.shape);
        let strides: Vec<usize> = axes
            .iter()
            .map(|&(l, _)| self.labels.iter().zip(&self.shape).zip(&st).filter(|((&x, &d), _)| x == l && d != 1).map(|(_, &s)| s).sum())
            .collect();
        let mut walk = Walk::new(&sizes, &strides);
        let total: usize = sizes.iter().product();
        for _ in 0..total {
            out.push(self.data[walk.offset]);
            walk.advance();
        }
        Ok(out)
    }

    /// The operand with each label once: a repeated label takes the diagonal.
    fn diagonal(self) -> Result<Self, KernelError> {
        let mut labels: Vec<usize> = Vec::new();
        let mut shape = Vec::new();
        for (&l, &d) in self.labels.iter().zip(&self.shape) {
            match labels.iter().position(|&x| x == l) {
                None => {
                    labels.push(l);
                    shape.push(d);
                }
                Some(k) if shape[k] != d => kbail!("a repeated label has sizes {} and {d} in one operand", shape[k]),
                Some(_) => {}
            }
        }
        if labels.len() == self.labels.len() {
            return Ok(self);
        }
        // A label repeated on size-1 axes must still read one element: stride over all of them.
        let st = row_major_strides(&self.shape);
        let strides: Vec<usize> =
            labels.iter().map(|&l| self.labels.iter().zip(&st).filter(|(&x, _)| x == l).map(|(_, &s)| s).sum()).collect();
        let mut data = alloc::reserve::<A>(&shape)?;
        if !shape.contains(&0) {
            let mut walk = Walk::new(&shape, &strides);
            for _ in 0..shape.iter().product::<usize>() {
                data.push(self.data[walk.offset]);
                walk.advance();
            }
        }
        Ok(Operand { data, shape, labels })
    }

    /// The operand with the labels `keep` refuses summed out.
    fn reduce(self, keep: impl Fn(usize) -> bool) -> Result<Self, KernelError> {
        if self.labels.iter().all(|&l| keep(l)) {
            return Ok(self);
        }
        let axes = |kept: bool| -> Vec<(usize, usize)> {
            self.labels.iter().zip(&self.shape).filter(|(&l, _)| keep(l) == kept).map(|(&l, &d)| (l, d)).collect()
        };
        let (kept, summed) = (axes(true), axes(false));
        let shape: Vec<usize> = kept.iter().map(|&(_, d)| d).collect();
        let mut data = alloc::filled::<A>(&shape, A::default())?;
        let inner: usize = summed.iter().map(|&(_, d)| d).product();
        if inner > 0 && !data.is_empty() {
            let packed = self.pack(&[kept.as_slice(), summed.as_slice()].concat())?;
            for (o, chunk) in data.iter_mut().zip(packed.chunks_exact(inner)) {
                *o = chunk.iter().fold(A::default(), |s, &v| s.add(v));
            }
        }
        Ok(Operand { data, shape, labels: kept.iter().map(|&(l, _)| l).collect() })
    }

    /// The product of two operands with `keep`'s labels kept: labels of both that are kept
    /// are batch axes, the others are summed over (the inner dimension of the product).
    fn contract(self, b: Self, keep: impl Fn(usize) -> bool) -> Result<Self, KernelError> {
        let a = self.reduce(|l| keep(l) || b.labels.contains(&l))?;
        let b = b.reduce(|l| keep(l) || a.labels.contains(&l))?;
        let shared_size = |l: usize| -> Result<usize, KernelError> {
            match (a.size(l), b.size(l)) {
                (Some(p), Some(q)) if p == q || q == 1 => Ok(p),
                (Some(1), Some(q)) => Ok(q),
                (Some(p), Some(q)) => kbail!("a label has sizes {p} and {q} in two operands (they do not broadcast)"),
                _ => unreachable!("shared label"),
            }
        };
        let (mut batch, mut inner, mut rows, mut cols) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (&l, &d) in a.labels.iter().zip(&a.shape) {
            match (b.labels.contains(&l), keep(l)) {
                (true, true) => batch.push((l, shared_size(l)?)),
                (true, false) => inner.push((l, shared_size(l)?)),
                (false, _) => rows.push((l, d)),
            }
        }
        for (&l, &d) in b.labels.iter().zip(&b.shape) {
            if !a.labels.contains(&l) {
                cols.push((l, d));
            }
        }
        let out_axes = [batch.as_slice(), rows.as_slice(), cols.as_slice()].concat();
        let shape: Vec<usize> = out_axes.iter().map(|&(_, d)| d).collect();
        let mut data = alloc::filled::<A>(&shape, A::default())?;
        let prod = |v: &[(usize, usize)]| v.iter().map(|&(_, d)| d).product::<usize>();
        let (nb, m, k, n) = (prod(&batch), prod(&rows), prod(&inner), prod(&cols));
        if !data.is_empty() && k > 0 {
            let pa = a.pack(&[batch.as_slice(), rows.as_slice(), inner.as_slice()].concat())?;
            let pb = b.pack(&[batch.as_slice(), inner.as_slice(), cols.as_slice()].concat())?;
            for t in 0..nb {
                A::gemm(m, k, n, &pa[t * m * k..(t + 1) * m * k], &pb[t * k * n..(t + 1) * k * n], &mut data[t * m * n..(t + 1) * m * n]);
            }
        }
        Ok(Operand { data, shape, labels: out_axes.iter().map(|&(l, _)| l).collect() })
    }
}

/// Evaluates a bound equation over `inputs` in the accumulator type `A`; returns the output's
/// shape and data.
fn run<A: Acc>(bound: &Bound, inputs: &[&Tensor]) -> Result<(Vec<usize>, Vec<A>), KernelError> {
    let mut ops = Vec::with_capacity(inputs.len());
    for (t, labels) in inputs.iter().zip(&bound.inputs) {
        let data = dispatch!(*t, a => alloc::collect::<A>(a.shape(), a.iter().map(|&x| A::from_elem(x)))?);
        ops.push(Operand { data, shape: t.shape().to_vec(), labels: labels.clone() }.diagonal()?);
    }
    // How many operands hold each label: one only it holds and the output lacks is summed now.
    let mut holders = vec![0usize; bound.labels];
    for op in &ops {
        for &l in &op.labels {
            holders[l] += 1;
        }
    }
    let in_output = |l: usize| bound.output.contains(&l);
    let mut ops =
        ops.into_iter().map(|op| op.reduce(|l| in_output(l) || holders[l] > 1)).collect::<Result<std::collections::VecDeque<_>, _>>()?;
    let Some(mut acc) = ops.pop_front() else { kbail!("Einsum needs at least one input") };
    while let Some(b) = ops.pop_front() {
        acc = acc.contract(b, |l| in_output(l) || ops.iter().any(|o| o.labels.contains(&l)))?;
    }
    let acc = acc.reduce(in_output)?;
    let axes: Vec<(usize, usize)> = bound.output.iter().map(|&l| (l, acc.size(l).unwrap_or(1))).collect();
    let shape = axes.iter().map(|&(_, d)| d).collect();
    Ok((shape, acc.pack(&axes)?))
}

fn einsum(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let eq = Equation::parse(n.attr_s("equation", "")).map_err(KernelError)?;
    let inputs: Vec<&Tensor> = (0..i.len()).map(|k| arg(i, k)).collect::<Result<_, _>>()?;
    let Some(dtype) = inputs.first().map(|t| t.dtype()) else { kbail!("Einsum needs at least one input") };
    if let Some(t) = inputs.iter().find(|t| t.dtype() != dtype) {
        kbail!("inputs have different element types ({dtype} and {})", t.dtype());
    }
    let ranks: Vec<usize> = inputs.iter().map(|t| t.rank()).collect();
    let bound = eq.bind(&ranks).map_err(KernelError)?;
    let out = match dtype {
        DType::Bool => return Err(bad_type(inputs[0])),
        DType::F64 => {
            let (shape, v) = run::<f64>(&bound, &inputs)?;
            Tensor::from(array(&shape, v))
        }
        d if d.is_float() => {
            let (shape, v) = run::<f64>(&bound, &inputs)?;
            alloc::check(d, &shape)?;
            Tensor::from(array(&shape, v)).cast(d)
        }
        d => {
            let (shape, v) = run::<i64>(&bound, &inputs)?;
            alloc::check(d, &shape)?;
            Tensor::from(array(&shape, v)).cast(d)
        }
    };
    Ok(vec![out])
}

pub(super) fn register(r: &mut KernelRegistry) {
    r.add("Einsum", einsum);
}
