//! Binary f32 arithmetic with numpy broadcasting: a [`BroadcastPlan`] walks the output as rows
//! of contiguous elements in which each operand is a slice or one repeated value.

use fpx_ir::shape::{broadcast_shape, broadcast_strides, merge_dims};

use super::for_row_chunks;
use super::simd::multiversion;

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
/// repeated; `outer` gives, per remaining (coalesced) dimension, outermost first, its size and
/// each operand's stride in elements (0 where it is broadcast).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BroadcastPlan {
    pub(crate) out_shape: Vec<usize>,
    inner: usize,
    a_vec: bool,
    b_vec: bool,
    outer: Vec<(usize, [usize; 2])>,
}

impl BroadcastPlan {
    /// The plan for shapes `sa` and `sb`, or `None` when they do not broadcast.
    pub(crate) fn new(sa: &[usize], sb: &[usize]) -> Option<BroadcastPlan> {
        let out_shape = broadcast_shape(&[sa, sb])?;
        let r = out_shape.len();
        // Row-major strides, 0 along the dimensions that broadcast.
        let (sta, stb) = (broadcast_strides(sa, r), broadcast_strides(sb, r));
        // Innermost first: (size, [stride a, stride b]), a dimension merged into the block
        // inside it when both operands step through it contiguously.
        let dims = merge_dims((0..r).rev().map(|d| (out_shape[d], [sta[d], stb[d]])));
        let (inner, a_vec, b_vec) = match dims.first() {
            Some(&(n, [x, y])) => (n, x == 1, y == 1),
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
            let (size, [sa, sb]) = plan.outer[d];
            idx[d] = rest % size;
            rest /= size;
            oa += idx[d] * sa;
            ob += idx[d] * sb;
        }
        for chunk in out.chunks_exact_mut(inner) {
            binary_row(op, row_arg(a, oa, plan.a_vec, inner), row_arg(b, ob, plan.b_vec, inner), chunk);
            for d in (0..nd).rev() {
                let (size, [sa, sb]) = plan.outer[d];
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

/// `op(a, b)` with broadcasting, into `out` of `plan.out_shape` (allocated by the caller within
/// the tensor budget).
pub(crate) fn binary(op: Binary, plan: &BroadcastPlan, a: &[f32], b: &[f32], out: &mut [f32]) {
    debug_assert_eq!(out.len(), plan.len());
    binary_run(op, plan, Src::Data(a), Src::Data(b), out);
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

#[cfg(test)]
mod tests {
    use fpx_ir::shape::unravel_index;

    use super::super::tests::rand_vec;
    use super::*;

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
            let idx = unravel_index(k, &out);
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
                        let mut got = vec![0f32; want.len()];
                        binary(op, &plan, &a, &b, &mut got);
                        assert_eq!(got, want, "{op:?} {sa:?} {sb:?}");
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
}
