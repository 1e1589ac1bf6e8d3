//! The f32 fast paths of the kernels against their generic paths (the same kernels run on f64
//! copies of the inputs, which never take a fast path), and the by-value kernel variants
//! against the by-reference ones, on random data with fixed seeds.

use super::fast::tests::rand_vec;
use super::KernelRegistry;
use fpx_ir::ndarray::{ArrayD, IxDyn};
use fpx_ir::{Attribute, DType, Node, Tensor};

fn t32(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Tensor {
    Tensor::from(ArrayD::from_shape_vec(IxDyn(shape), rand_vec(shape.iter().product(), seed, lo, hi)).unwrap())
}

fn i64s(v: &[i64]) -> Tensor {
    Tensor::vec_i64(v.to_vec())
}

fn node(op: &str, opset: i64, attrs: &[(&str, Attribute)]) -> Node {
    let mut n = Node::new(op, op, opset, vec![], vec![]);
    for (k, v) in attrs {
        n.attrs.insert(k.to_string(), v.clone());
    }
    n
}

/// Equal element for element, NaN matching NaN.
fn same(a: &Tensor, b: &Tensor) -> bool {
    a.dtype() == b.dtype()
        && a.shape() == b.shape()
        && a.to_f64_vec().iter().zip(b.to_f64_vec()).all(|(x, y)| x == &y || (x.is_nan() && y.is_nan()))
}

/// Runs `op` on `inputs` (f32: the fast path), on their f64 copies (the generic path), and with
/// each input taken by value; the first must match the second within `atol + rtol·|want|`, and
/// the by-value results must equal the first exactly.
fn check(n: &Node, inputs: &[Tensor], atol: f64, rtol: f64) {
    let reg = KernelRegistry::standard();
    let k = reg.get("", &n.op_type).expect("kernel");
    let refs: Vec<Option<&Tensor>> = inputs.iter().map(Some).collect();
    let fast = k(n, &refs).unwrap_or_else(|e| panic!("{}: {e}", n.op_type));
    let wide: Vec<Tensor> = inputs.iter().map(|t| if t.dtype() == DType::F32 { t.cast(DType::F64) } else { t.clone() }).collect();
    let wide_refs: Vec<Option<&Tensor>> = wide.iter().map(Some).collect();
    let generic = k(n, &wide_refs).unwrap();
    assert_eq!(fast.len(), generic.len());
    for (f, g) in fast.iter().zip(&generic) {
        assert_eq!(f.shape(), g.shape(), "{}: shapes", n.op_type);
        // The generic f32 path computed in f64 and rounded to f32: compare with that.
        let g = if f.dtype() == DType::F32 { g.cast(DType::F32) } else { g.clone() };
        let (fv, gv) = (f.to_f64_vec(), g.to_f64_vec());
        for (j, (a, b)) in fv.iter().zip(&gv).enumerate() {
            let ok = (a.is_nan() && b.is_nan()) || (a - b).abs() <= atol + rtol * b.abs();
            assert!(ok, "{} {:?}: element {j}: fast {a} vs generic {b}", n.op_type, f.shape());
        }
    }
    if let Some(owned) = reg.get_owned("", &n.op_type) {
        for slot in 0..inputs.len() {
            let mut rest = refs.clone();
            rest[slot] = None;
            let by_value = owned(n, &rest, slot, inputs[slot].clone()).unwrap();
            assert_eq!(by_value.len(), fast.len());
            for (a, b) in by_value.iter().zip(&fast) {
                assert!(same(a, b), "{} with input {slot} by value differs", n.op_type);
            }
        }
    }
}

/// Runs `f` on pools of 1 and 3 threads (the latter takes the parallel splits).
fn both_pools(f: impl Fn() + Sync) {
    for threads in [1, 3] {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(&f);
    }
}

#[test]
fn broadcast_arithmetic_matches_the_generic_path() {
    let shapes: &[(&[usize], &[usize])] = &[
        (&[8, 19, 37], &[37]),
        (&[37], &[8, 19, 37]),
        (&[2, 3, 5, 5], &[2, 1, 1, 5]),
        (&[4, 1], &[1, 9]),
        (&[3, 5, 7], &[]),
        (&[], &[3, 5, 7]),
        (&[1, 1, 13], &[2, 3, 13]),
        (&[2, 200, 150], &[2, 200, 150]),
        (&[300, 170], &[300, 1]),
        (&[5, 0, 3], &[3]),
    ];
    both_pools(|| {
        for (seed, (sa, sb)) in shapes.iter().enumerate() {
            let a = t32(sa, seed as u64, -3.0, 3.0);
            let b = t32(sb, 50 + seed as u64, 0.25, 2.0);
            for op in ["Add", "Sub", "Mul", "Div"] {
                check(&node(op, 14, &[]), &[a.clone(), b.clone()], 0.0, 0.0);
            }
        }
    });
    // Shapes that do not broadcast stay an error.
    let k = KernelRegistry::standard().get("", "Add").unwrap();
    assert!(k(&node("Add", 14, &[]), &[Some(&t32(&[3, 4], 1, 0.0, 1.0)), Some(&t32(&[5, 4], 2, 0.0, 1.0))]).is_err());
}

#[test]
fn unary_ops_match_the_generic_path() {
    let gelu = node("Gelu", 20, &[]);
    both_pools(|| {
        for shape in [&[7][..], &[3, 1001], &[40_000]] {
            let x = t32(shape, shape.len() as u64, -6.0, 6.0);
            let pos = t32(shape, 9, 0.0, 9.0);
            check(&node("Erf", 13, &[]), std::slice::from_ref(&x), 2e-7, 0.0);
            check(&gelu, std::slice::from_ref(&x), 1e-6, 1e-6);
            check(&node("Tanh", 13, &[]), std::slice::from_ref(&x), 2e-7, 1e-6);
            check(&node("Sigmoid", 13, &[]), std::slice::from_ref(&x), 2e-7, 1e-6);
            check(&node("Sqrt", 13, &[]), &[pos], 0.0, 0.0);
            for op in ["Relu", "Neg", "Abs", "Reciprocal", "Identity"] {
                check(&node(op, 14, &[]), std::slice::from_ref(&x), 0.0, 0.0);
            }
            // x^2 with a scalar exponent of rank 0 or 1; a higher-rank one changes the shape.
            for e in [Tensor::scalar_f32(2.0), Tensor::from(ArrayD::from_shape_vec(IxDyn(&[1]), vec![2f32]).unwrap())] {
                check(&node("Pow", 15, &[]), &[x.clone(), e], 0.0, 0.0);
            }
            check(&node("Pow", 15, &[]), &[x.clone(), Tensor::scalar_f32(3.0)], 0.0, 1e-6);
        }
        let e4 = Tensor::from(ArrayD::from_shape_vec(IxDyn(&[1, 1, 1, 1]), vec![2f32]).unwrap());
        check(&node("Pow", 15, &[]), &[t32(&[3], 1, -2.0, 2.0), e4], 0.0, 0.0);
    });
}

#[test]
fn normalizations_and_reductions_match_the_generic_path() {
    let ints = |v: &[i64]| Attribute::Ints(v.to_vec());
    both_pools(|| {
        // LayerNormalization: last axis, two axes (scale over both), an odd width, no bias.
        for (shape, axis, norm) in [(&[4, 7, 33][..], -1i64, &[33][..]), (&[3, 7, 33], 1, &[7, 33]), (&[100, 385], -1, &[385])] {
            let n = node("LayerNormalization", 17, &[("axis", Attribute::Int(axis)), ("epsilon", Attribute::Float(1e-5))]);
            let (x, s, b) = (t32(shape, 1, -4.0, 4.0), t32(norm, 2, 0.5, 1.5), t32(norm, 3, -1.0, 1.0));
            check(&n, &[x.clone(), s.clone(), b], 1e-6, 1e-6);
            check(&n, &[x, s], 1e-6, 1e-6);
        }
        // Softmax: last axis, the pre-13 2-D coercion, a middle axis (generic in both), a mask.
        for (shape, opset, axis) in [(&[3, 5, 19][..], 13, -1i64), (&[3, 5, 7], 11, 1), (&[3, 5, 7], 13, 1), (&[64, 600], 13, -1)] {
            let n = node("Softmax", opset, &[("axis", Attribute::Int(axis))]);
            check(&n, &[t32(shape, 4, -10.0, 10.0)], 1e-7, 1e-5);
        }
        let mut masked = rand_vec(2 * 19, 5, -3.0, 3.0);
        masked[3] = f32::NEG_INFINITY;
        masked[30] = -3.4e38;
        let masked = Tensor::from(ArrayD::from_shape_vec(IxDyn(&[2, 19]), masked).unwrap());
        check(&node("Softmax", 13, &[]), &[masked], 1e-7, 1e-5);
        // ReduceMean / ReduceSum over trailing axes (fast), leading axes (generic), all axes.
        for op in ["ReduceMean", "ReduceSum"] {
            for (axes, keep) in [(&[-1i64][..], 1i64), (&[1, 2], 0), (&[0], 1), (&[], 0)] {
                let mut attrs = vec![("keepdims", Attribute::Int(keep))];
                if !axes.is_empty() {
                    attrs.push(("axes", ints(axes)));
                }
                check(&node(op, 13, &attrs), &[t32(&[3, 4, 501], 6, -2.0, 2.0)], 1e-6, 1e-6);
            }
        }
    });
}

#[test]
fn transposes_and_reshapes_match_ndarray() {
    let reg = KernelRegistry::standard();
    let k = reg.get("", "Transpose").unwrap();
    both_pools(|| {
        for shape in [&[2, 3, 4, 5][..], &[8, 19, 12, 32], &[1, 7, 1, 3]] {
            let x = t32(shape, 7, -1.0, 1.0);
            let xi = x.cast(DType::I64);
            for perm in [&[0, 2, 1, 3][..], &[0, 2, 3, 1], &[3, 2, 1, 0], &[0, 1, 2, 3]] {
                let n = node("Transpose", 13, &[("perm", Attribute::Ints(perm.iter().map(|&p| p as i64).collect()))]);
                for t in [&x, &xi] {
                    let got = k(&n, &[Some(t)]).unwrap().remove(0);
                    let want =
                        fpx_ir::dispatch!(t, a => Tensor::from(a.view().permuted_axes(IxDyn(perm)).as_standard_layout().into_owned()));
                    assert!(same(&got, &want), "perm {perm:?} of {shape:?}");
                }
            }
        }
    });
    let x = t32(&[2, 3, 4], 8, -1.0, 1.0);
    check(&node("Reshape", 14, &[]), &[x.clone(), i64s(&[6, -1])], 0.0, 0.0);
    check(&node("Flatten", 13, &[("axis", Attribute::Int(2))]), std::slice::from_ref(&x), 0.0, 0.0);
    check(&node("Unsqueeze", 13, &[]), &[x.clone(), i64s(&[0, 4])], 0.0, 0.0);
    check(&node("Squeeze", 13, &[]), &[t32(&[2, 1, 4], 9, -1.0, 1.0), i64s(&[1])], 0.0, 0.0);
}

#[test]
fn large_matmuls_split_across_threads_match_f64() {
    both_pools(|| {
        // Stacked batches times one weight, and one product split by columns and by rows.
        for (sa, sb) in [(&[2, 4, 5, 7][..], &[7, 3][..]), (&[64, 256][..], &[256, 128][..]), (&[300, 600][..], &[600, 40][..])] {
            check(&node("MatMul", 13, &[]), &[t32(sa, 1, -1.0, 1.0), t32(sb, 2, -1.0, 1.0)], 1e-4, 1e-5);
        }
    });
}
