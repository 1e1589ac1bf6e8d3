//! Tests of the indexing kernels beyond the ONNX node tests: the Einsum equations exporters
//! emit against a naive f64 loop, batch_dims and negative indices, every opset form of Split,
//! TopK, Tile and Dropout, integer Mod, and errors for bad indices and sizes.

use crate::kernels::{alloc, KernelRegistry};
use crate::KernelError;
use fpx_ir::ndarray::{ArrayD, IxDyn};
use fpx_ir::ops::einsum::Equation;
use fpx_ir::{Attribute, Node, Tensor, TensorBudget, ValueId};
use fpx_test_support::Rng;

/// Runs `op` at `opset` with `attrs` on `inputs` (`None`: omitted), for a node of `n_out` outputs.
fn run_n(op: &str, opset: i64, attrs: &[(&str, Attribute)], inputs: &[Option<&Tensor>], n_out: usize) -> Result<Vec<Tensor>, KernelError> {
    let mut g = fpx_ir::Graph::new("t");
    let outs: Vec<ValueId> = (0..n_out).map(|k| g.value_named(&format!("y{k}"))).collect();
    let mut node = Node::new("n", op, opset, vec![], outs);
    for (k, v) in attrs {
        node.attrs.insert(k.to_string(), v.clone());
    }
    let kernel = KernelRegistry::standard().get("", op).expect("kernel");
    kernel(&node, inputs)
}

fn run(op: &str, opset: i64, attrs: &[(&str, Attribute)], inputs: &[&Tensor]) -> Result<Vec<Tensor>, KernelError> {
    run_n(op, opset, attrs, &inputs.iter().map(|t| Some(*t)).collect::<Vec<_>>(), 1)
}

fn f32s(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

fn i64s(shape: &[usize], v: Vec<i64>) -> Tensor {
    Tensor::from(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

fn random(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    f32s(shape, (0..n).map(|_| rng.signed()).collect())
}

fn ints(t: &Tensor) -> Vec<i64> {
    t.to_i64_vec()
}

/// Einsum by brute force: every assignment of values to the labels, in f64.
fn naive_einsum(equation: &str, inputs: &[&Tensor]) -> (Vec<usize>, Vec<f64>) {
    let ranks: Vec<usize> = inputs.iter().map(|t| t.rank()).collect();
    let b = Equation::parse(equation).unwrap().bind(&ranks).unwrap();
    let mut size = vec![1usize; b.labels];
    for (labels, t) in b.inputs.iter().zip(inputs) {
        for (&l, &d) in labels.iter().zip(t.shape()) {
            size[l] = size[l].max(d);
        }
    }
    let out_shape: Vec<usize> = b.output.iter().map(|&l| size[l]).collect();
    let mut out = vec![0.0; out_shape.iter().product()];
    let data: Vec<Vec<f64>> = inputs.iter().map(|t| t.to_f64_vec()).collect();
    let total: usize = size.iter().product();
    let mut val = vec![0usize; b.labels];
    for flat in 0..total {
        let mut r = flat;
        for l in (0..b.labels).rev() {
            val[l] = r % size[l];
            r /= size[l];
        }
        let mut p = 1.0;
        for ((labels, t), d) in b.inputs.iter().zip(inputs).zip(&data) {
            let mut off = 0;
            for (&l, &dim) in labels.iter().zip(t.shape()) {
                off = off * dim + if dim == 1 { 0 } else { val[l] };
            }
            p *= d[off];
        }
        let o = b.output.iter().zip(&out_shape).fold(0, |acc, (&l, &d)| acc * d + val[l]);
        out[o] += p;
    }
    (out_shape, out)
}

#[test]
fn einsum_matches_a_naive_loop_on_exporter_equations() {
    let mut rng = Rng::new(7);
    let cases: &[(&str, &[&[usize]])] = &[
        ("bhid,bhjd->bhij", &[&[2, 3, 4, 5], &[2, 3, 6, 5]]),
        ("bhij,bhjd->bhid", &[&[2, 3, 4, 6], &[2, 3, 6, 5]]),
        ("bij,bjk->bik", &[&[3, 4, 5], &[3, 5, 2]]),
        ("bid,jd->bij", &[&[2, 3, 4], &[5, 4]]),
        ("ibnd,jbnd->bnij", &[&[4, 2, 3, 5], &[6, 2, 3, 5]]),
        ("i,j->ij", &[&[4], &[5]]),
        ("i,i", &[&[7], &[7]]),
        ("ij->ji", &[&[3, 4]]),
        ("ii", &[&[4, 4]]),
        ("ii->i", &[&[4, 4]]),
        ("ij->", &[&[3, 4]]),
        ("ij->i", &[&[3, 4]]),
        ("...ij,...jk->...ik", &[&[2, 1, 3, 4], &[5, 4, 2]]),
        ("...ii->...i", &[&[2, 3, 3]]),
        ("ij,jk", &[&[2, 3], &[1, 4]]),
        ("abc,cd,de->abe", &[&[2, 3, 4], &[4, 5], &[5, 2]]),
        ("bn,anm,bm->ba", &[&[2, 3], &[4, 3, 5], &[2, 5]]),
        ("iij,jk->ik", &[&[3, 3, 2], &[2, 4]]),
    ];
    for (eq, shapes) in cases {
        let ins: Vec<Tensor> = shapes.iter().map(|s| random(&mut rng, s)).collect();
        let refs: Vec<&Tensor> = ins.iter().collect();
        let got = run("Einsum", 12, &[("equation", Attribute::String(eq.to_string()))], &refs).unwrap().remove(0);
        let (shape, want) = naive_einsum(eq, &refs);
        assert_eq!(got.shape(), shape.as_slice(), "{eq}");
        for (g, w) in got.to_f64_vec().iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{eq}: {g} vs {w}");
        }
    }
    // Integers compute exactly (wrapping), in their own type.
    let a = i64s(&[2, 2], vec![1, 2, 3, 4]);
    let got = run("Einsum", 12, &[("equation", Attribute::String("ij,jk->ik".into()))], &[&a, &a]).unwrap().remove(0);
    assert_eq!(ints(&got), vec![7, 10, 15, 22]);
    let bad = run(
        "Einsum",
        12,
        &[("equation", Attribute::String("ij,jk->ik".into()))],
        &[&random(&mut rng, &[2, 3]), &random(&mut rng, &[2, 3])],
    );
    assert!(bad.unwrap_err().0.contains("3 and 2"));
}

#[test]
fn gather_nd_with_batch_dims_and_negative_indices() {
    let data = f32s(&[2, 2, 3], (0..12).map(|x| x as f32).collect());
    // batch_dims 1: per batch, rows picked by one index each (-1 = the last row).
    let idx = i64s(&[2, 2, 1], vec![1, -2, -1, 0]);
    let y = run("GatherND", 13, &[("batch_dims", Attribute::Int(1))], &[&data, &idx]).unwrap().remove(0);
    assert_eq!(y.shape(), &[2, 2, 3]);
    assert_eq!(ints(&y), vec![3, 4, 5, 0, 1, 2, 9, 10, 11, 6, 7, 8]);
    // No batch dims: full tuples address single elements.
    let idx = i64s(&[2, 3], vec![1, 0, 2, -2, -1, -3]);
    let y = run("GatherND", 11, &[], &[&data, &idx]).unwrap().remove(0);
    assert_eq!(ints(&y), vec![8, 3]);
    let e = run("GatherND", 11, &[], &[&data, &i64s(&[1, 1], vec![2])]).unwrap_err().0;
    assert!(e.contains("index 2 is out of range"), "{e}");
    let e = run("GatherND", 13, &[("batch_dims", Attribute::Int(1))], &[&data, &i64s(&[3, 1], vec![0, 0, 0])]).unwrap_err().0;
    assert!(e.contains("batch dimensions differ"), "{e}");
}

#[test]
fn gather_and_scatter_elements_normalize_and_check_indices() {
    let data = i64s(&[2, 3], vec![1, 2, 3, 4, 5, 6]);
    let idx = i64s(&[2, 2], vec![-1, 0, 2, -3]);
    let y = run("GatherElements", 13, &[("axis", Attribute::Int(1))], &[&data, &idx]).unwrap().remove(0);
    assert_eq!(ints(&y), vec![3, 1, 6, 4]);
    let e = run("GatherElements", 13, &[("axis", Attribute::Int(1))], &[&data, &i64s(&[1, 1], vec![3])]).unwrap_err().0;
    assert!(e.contains("index 3 is out of range for axis 1 of size 3"), "{e}");
    let upd = i64s(&[2, 2], vec![10, 20, 30, 40]);
    let y =
        run("ScatterElements", 18, &[("axis", Attribute::Int(1)), ("reduction", Attribute::String("add".into()))], &[&data, &idx, &upd])
            .unwrap()
            .remove(0);
    assert_eq!(ints(&y), vec![21, 2, 13, 44, 5, 36]);
    let dup = i64s(&[1, 2], vec![0, -3]);
    let upd = i64s(&[1, 2], vec![5, 7]);
    for (r, want) in [("none", 7), ("mul", 35), ("max", 7), ("min", 1)] {
        let y =
            run("ScatterElements", 18, &[("axis", Attribute::Int(1)), ("reduction", Attribute::String(r.into()))], &[&data, &dup, &upd])
                .unwrap()
                .remove(0);
        assert_eq!(ints(&y)[0], want, "{r}");
    }
    let e = run("ScatterElements", 18, &[("reduction", Attribute::String("sum".into()))], &[&data, &dup, &upd]).unwrap_err().0;
    assert!(e.contains("unknown reduction"), "{e}");
}

#[test]
fn scatter_nd_reductions_apply_in_order() {
    let data = f32s(&[4, 2], vec![1.0; 8]);
    let idx = i64s(&[3, 1], vec![1, -3, 3]);
    let upd = f32s(&[3, 2], vec![2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    let go =
        |r: &str| run("ScatterND", 18, &[("reduction", Attribute::String(r.into()))], &[&data, &idx, &upd]).unwrap().remove(0).to_f64_vec();
    assert_eq!(go("mul"), vec![1.0, 1.0, 8.0, 15.0, 1.0, 1.0, 6.0, 7.0]);
    assert_eq!(go("add"), vec![1.0, 1.0, 7.0, 9.0, 1.0, 1.0, 7.0, 8.0]);
    assert_eq!(go("none"), vec![1.0, 1.0, 4.0, 5.0, 1.0, 1.0, 6.0, 7.0]);
    let e = run("ScatterND", 11, &[], &[&data, &i64s(&[1, 1], vec![4]), &f32s(&[1, 2], vec![0.0; 2])]).unwrap_err().0;
    assert!(e.contains("index 4 is out of range"), "{e}");
    let e = run("ScatterND", 11, &[], &[&data, &idx, &f32s(&[3], vec![0.0; 3])]).unwrap_err().0;
    assert!(e.contains("updates have shape"), "{e}");
}

#[test]
fn split_reads_every_opset_form() {
    let x = i64s(&[2, 7], (0..14).collect());
    let parts = |outs: Vec<Tensor>| outs.iter().map(|t| t.shape()[1]).collect::<Vec<_>>();
    let ax = ("axis", Attribute::Int(1));
    let v = run_n("Split", 2, &[ax.clone(), ("split", Attribute::Ints(vec![2, 5]))], &[Some(&x)], 2).unwrap();
    assert_eq!(parts(v.clone()), vec![2, 5]);
    assert_eq!(ints(&v[1]), vec![2, 3, 4, 5, 6, 9, 10, 11, 12, 13]);
    let sizes = i64s(&[3], vec![3, 0, 4]);
    assert_eq!(parts(run_n("Split", 13, std::slice::from_ref(&ax), &[Some(&x), Some(&sizes)], 3).unwrap()), vec![3, 0, 4]);
    let v = run_n("Split", 18, &[ax.clone(), ("num_outputs", Attribute::Int(4))], &[Some(&x)], 4).unwrap();
    assert_eq!(parts(v), vec![2, 2, 2, 1]);
    assert_eq!(parts(run_n("Split", 11, &[("axis", Attribute::Int(-1))], &[Some(&x)], 7).unwrap()), vec![1; 7]);
    let e = run_n("Split", 13, std::slice::from_ref(&ax), &[Some(&x), Some(&i64s(&[2], vec![3, 3]))], 2).unwrap_err().0;
    assert!(e.contains("does not divide"), "{e}");
    let e = run_n("Split", 18, &[ax, ("num_outputs", Attribute::Int(3))], &[Some(&x)], 2).unwrap_err().0;
    assert!(e.contains("num_outputs is 3"), "{e}");
}

#[test]
fn top_k_arg_max_and_arg_min_break_ties_and_read_k() {
    let x = f32s(&[2, 4], vec![3.0, 1.0, 3.0, 2.0, f32::NAN, 0.0, -1.0, 0.0]);
    let v = run_n("TopK", 1, &[("k", Attribute::Int(2))], &[Some(&x)], 2).unwrap();
    assert_eq!(ints(&v[1]), vec![0, 2, 0, 1]);
    let k = i64s(&[1], vec![3]);
    let v = run_n("TopK", 11, &[("largest", Attribute::Int(0))], &[Some(&x), Some(&k)], 2).unwrap();
    assert_eq!(ints(&v[1]), vec![1, 3, 0, 2, 1, 3]);
    assert_eq!(v[0].to_f64_vec(), vec![1.0, 2.0, 3.0, -1.0, 0.0, 0.0]);
    let e = run_n("TopK", 11, &[("axis", Attribute::Int(0))], &[Some(&x), Some(&k)], 2).unwrap_err().0;
    assert!(e.contains("k = 3"), "{e}");
    let am = |op: &str, last: i64| {
        run(op, 13, &[("axis", Attribute::Int(1)), ("keepdims", Attribute::Int(0)), ("select_last_index", Attribute::Int(last))], &[&x])
            .unwrap()
            .remove(0)
    };
    assert_eq!(ints(&am("ArgMax", 0)), vec![0, 0]);
    assert_eq!(ints(&am("ArgMax", 1)), vec![2, 0]);
    assert_eq!(ints(&am("ArgMin", 0)), vec![1, 0]);
    assert_eq!(am("ArgMin", 0).shape(), &[2]);
    let empty = f32s(&[2, 0], vec![]);
    assert!(run("ArgMax", 13, &[("axis", Attribute::Int(1))], &[&empty]).unwrap_err().0.contains("empty axis"));
}

#[test]
fn tile_trilu_and_their_limits() {
    let x = i64s(&[2, 2], vec![1, 2, 3, 4]);
    let y = run("Tile", 13, &[], &[&x, &i64s(&[2], vec![2, 3])]).unwrap().remove(0);
    assert_eq!(y.shape(), &[4, 6]);
    assert_eq!(ints(&y)[..12], [1, 2, 1, 2, 1, 2, 3, 4, 3, 4, 3, 4]);
    // Opset 1: `tiles` copies along `axis`.
    let y = run("Tile", 1, &[], &[&x, &i64s(&[], vec![2]), &i64s(&[], vec![1])]).unwrap().remove(0);
    assert_eq!(y.shape(), &[2, 4]);
    let e = run("Tile", 13, &[], &[&x, &i64s(&[2], vec![1 << 40, 1 << 40])]).unwrap_err().0;
    assert!(e.contains("tensor budget") || e.contains("2^64"), "{e}");
    let e = alloc::with_budget(TensorBudget::new(64), || run("Tile", 13, &[], &[&x, &i64s(&[2], vec![3, 1])])).unwrap_err().0;
    assert!(e.contains("tensor budget"), "{e}");
    let m = i64s(&[2, 3, 3], (1..=18).collect());
    let up = run_n("Trilu", 14, &[], &[Some(&m), Some(&i64s(&[], vec![1]))], 1).unwrap().remove(0);
    assert_eq!(ints(&up)[9..], [0, 11, 12, 0, 0, 15, 0, 0, 0]);
    let low = run_n("Trilu", 14, &[("upper", Attribute::Int(0))], &[Some(&m), Some(&i64s(&[], vec![-1]))], 1).unwrap().remove(0);
    assert_eq!(ints(&low)[..9], [0, 0, 0, 4, 0, 0, 7, 8, 0]);
}

#[test]
fn integer_mod_signs_zero_divisors_and_wide_unsigned() {
    let a = i64s(&[4], vec![-7, 7, -7, 7]);
    let b = i64s(&[4], vec![3, -3, -3, 3]);
    assert_eq!(ints(&run("Mod", 13, &[], &[&a, &b]).unwrap()[0]), vec![2, -2, -1, 1]);
    assert_eq!(ints(&run("Mod", 13, &[("fmod", Attribute::Int(1))], &[&a, &b]).unwrap()[0]), vec![-1, 1, -1, 1]);
    let min = i64s(&[1], vec![i64::MIN]);
    assert_eq!(ints(&run("Mod", 13, &[], &[&min, &i64s(&[1], vec![-1])]).unwrap()[0]), vec![0]);
    let e = run("Mod", 13, &[], &[&a, &i64s(&[1], vec![0])]).unwrap_err().0;
    assert!(e.contains("by zero"), "{e}");
    let big = Tensor::from(ArrayD::from_shape_vec(IxDyn(&[1]), vec![u64::MAX]).unwrap());
    let ten = Tensor::from(ArrayD::from_shape_vec(IxDyn(&[1]), vec![10u64]).unwrap());
    assert_eq!(run("Mod", 13, &[], &[&big, &ten]).unwrap()[0], Tensor::from(ArrayD::from_shape_vec(IxDyn(&[1]), vec![5u64]).unwrap()));
    let x = f32s(&[2], vec![-4.5, 4.5]);
    assert!(run("Mod", 13, &[], &[&x, &x]).unwrap_err().0.contains("fmod = 1"));
    let s = run("Sign", 13, &[], &[&f32s(&[4], vec![-2.0, 0.0, 3.0, f32::NAN])]).unwrap().remove(0).to_f64_vec();
    assert_eq!(s[..3], [-1.0, 0.0, 1.0]);
    assert!(s[3].is_nan());
    let inf = f32s(&[4], vec![f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1.0]);
    let y = run("IsInf", 20, &[("detect_positive", Attribute::Int(0))], &[&inf]).unwrap().remove(0);
    assert_eq!(ints(&y), vec![0, 1, 0, 0]);
    assert_eq!(ints(&run("IsNaN", 20, &[], &[&inf]).unwrap()[0]), vec![0, 0, 1, 0]);
}

#[test]
fn dropout_is_the_identity_at_inference_in_every_opset() {
    let x = f32s(&[3], vec![1.0, -2.0, 3.0]);
    // Opset 7-9: the mask has the data's type (ones).
    let v = run_n("Dropout", 7, &[("ratio", Attribute::Float(0.3))], &[Some(&x)], 2).unwrap();
    assert_eq!(v[0], x);
    assert_eq!(v[1], f32s(&[3], vec![1.0; 3]));
    let v = run_n("Dropout", 10, &[], &[Some(&x)], 2).unwrap();
    assert_eq!(ints(&v[1]), vec![1, 1, 1]);
    assert!(matches!(v[1], Tensor::Bool(_)));
    let ratio = f32s(&[], vec![0.4]);
    let on = Tensor::from(ArrayD::from_elem(IxDyn(&[]), true));
    let off = Tensor::from(ArrayD::from_elem(IxDyn(&[]), false));
    assert_eq!(run_n("Dropout", 13, &[], &[Some(&x), Some(&ratio), Some(&off)], 1).unwrap(), vec![x.clone()]);
    let e = run_n("Dropout", 13, &[], &[Some(&x), Some(&ratio), Some(&on)], 1).unwrap_err().0;
    assert!(e.contains("training-mode"), "{e}");
    let zero = f32s(&[], vec![0.0]);
    assert_eq!(run_n("Dropout", 22, &[], &[Some(&x), Some(&zero), Some(&on)], 2).unwrap()[0], x);
    // Opset 6: training unless is_test.
    assert!(run_n("Dropout", 6, &[], &[Some(&x)], 1).is_err());
    assert!(run_n("Dropout", 6, &[("is_test", Attribute::Int(1))], &[Some(&x)], 1).is_ok());
    // The by-value kernel hands the input back.
    let owned = KernelRegistry::standard().get_owned("", "Dropout").expect("by-value Dropout");
    let node = Node::new("n", "Dropout", 13, vec![], vec![]);
    assert_eq!(owned(&node, &[None], 0, x.clone()).unwrap(), vec![x]);
}
