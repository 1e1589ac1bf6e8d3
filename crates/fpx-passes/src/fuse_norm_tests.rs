//! `FuseRmsNorm` on the exporters' RMS-norm chains: every accepted spelling fuses into one
//! `RMSNormalization` whose values match the chain (run by the CPU executor) and an f64
//! reference; chains that differ in meaning, or leak an intermediate, are left alone.

use crate::FuseRmsNorm;
use fpx_ir::ndarray::{ArrayD, IxDyn};
use fpx_ir::ops::OpRegistry;
use fpx_ir::pass::PassManager;
use fpx_ir::{Attribute, DType, Graph, Node, Tensor, TensorType, ValueId};
use fpx_runtime::CpuExecutor;
use fpx_test_support::Rng;

/// How a chain spells one of its steps.
#[derive(Clone, Copy, Debug, Default)]
struct Spelling {
    /// `Mul(x, x)` instead of `Pow(x, 2)`.
    square_by_mul: bool,
    /// 0: `Mul(x, Div(1, s))`, 1: `Mul(x, Reciprocal(s))`, 2: `Div(x, s)`.
    reciprocal: u8,
    /// ReduceMean's axes as an input (opset 18) instead of an attribute.
    axes_input: bool,
    /// Commutative operands swapped.
    swap: bool,
    /// The TorchScript export's `Cast(x, f32)` before and `Cast(·, f32)` after the
    /// normalization (no-ops in an f32 model).
    casts: bool,
}

/// What a chain gets wrong (then it must not fuse).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Flaw {
    None,
    /// `Pow(x, 3)`.
    Cube,
    /// The mean over axis 0.
    FirstAxis,
    /// `keepdims = 0` (a different broadcast).
    NoKeepDims,
    /// The square root is also a graph output.
    Leak,
    /// The weight is a graph input, not a constant.
    InputWeight,
}

const ROWS: usize = 5;
const WIDTH: usize = 48;
const EPS: f32 = 1e-6;

fn tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

/// `y = w · (x / √(mean(x²) + ε))` over x `[ROWS, WIDTH]`, spelled and flawed as asked.
fn rms_chain(sp: Spelling, flaw: Flaw, weight: &[f32]) -> Graph {
    let opset = if sp.axes_input { 18 } else { 17 };
    let mut g = Graph::new("rms");
    g.opsets.insert(String::new(), opset);
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[ROWS, WIDTH])).unwrap();
    let w = if flaw == Flaw::InputWeight {
        g.add_input("w", TensorType::fixed(DType::F32, &[WIDTH])).unwrap()
    } else {
        g.add_constant("w", tensor(&[WIDTH], weight.to_vec())).unwrap()
    };
    let ord = |p: ValueId, q: ValueId| if sp.swap { vec![Some(q), Some(p)] } else { vec![Some(p), Some(q)] };
    let [sq, mean, added, root, normed, y] = ["sq", "mean", "added", "root", "normed", "y"].map(|n| g.value_named(n));
    let to_f32 = |g: &mut Graph, name: &str, v: ValueId| {
        let out = g.value_named(&format!("{name}_out"));
        let mut cast = Node::new(name, "Cast", opset, vec![Some(v)], vec![out]);
        cast.attrs.insert("to".into(), Attribute::Int(fpx_ir::onnx_code(DType::F32)));
        g.add_node(cast).unwrap();
        out
    };
    let x = if sp.casts { to_f32(&mut g, "cast_in", x) } else { x };
    if sp.square_by_mul {
        g.add_node(Node::new("square", "Mul", opset, vec![Some(x), Some(x)], vec![sq])).unwrap();
    } else {
        let two = g.add_constant("two", Tensor::scalar_f32(if flaw == Flaw::Cube { 3.0 } else { 2.0 })).unwrap();
        g.add_node(Node::new("square", "Pow", opset, vec![Some(x), Some(two)], vec![sq])).unwrap();
    }
    let axis: i64 = if flaw == Flaw::FirstAxis { 0 } else { -1 };
    let mut reduce = if sp.axes_input {
        let axes = g.add_constant("axes", Tensor::from(ArrayD::from_shape_vec(IxDyn(&[1]), vec![axis]).unwrap())).unwrap();
        Node::new("mean", "ReduceMean", opset, vec![Some(sq), Some(axes)], vec![mean])
    } else {
        let mut n = Node::new("mean", "ReduceMean", opset, vec![Some(sq)], vec![mean]);
        n.attrs.insert("axes".into(), Attribute::Ints(vec![axis]));
        n
    };
    if flaw == Flaw::NoKeepDims {
        reduce.attrs.insert("keepdims".into(), Attribute::Int(0));
    }
    g.add_node(reduce).unwrap();
    let eps = g.add_constant("eps", Tensor::scalar_f32(EPS)).unwrap();
    g.add_node(Node::new("add", "Add", opset, ord(mean, eps), vec![added])).unwrap();
    g.add_node(Node::new("sqrt", "Sqrt", opset, vec![Some(added)], vec![root])).unwrap();
    match sp.reciprocal {
        0 | 1 => {
            let inv = g.value_named("inv");
            if sp.reciprocal == 0 {
                let one = g.add_constant("one", Tensor::scalar_f32(1.0)).unwrap();
                g.add_node(Node::new("div", "Div", opset, vec![Some(one), Some(root)], vec![inv])).unwrap();
            } else {
                g.add_node(Node::new("recip", "Reciprocal", opset, vec![Some(root)], vec![inv])).unwrap();
            }
            g.add_node(Node::new("scale_rows", "Mul", opset, ord(x, inv), vec![normed])).unwrap();
        }
        _ => {
            g.add_node(Node::new("div", "Div", opset, vec![Some(x), Some(root)], vec![normed])).unwrap();
        }
    }
    let normed = if sp.casts { to_f32(&mut g, "cast_out", normed) } else { normed };
    g.add_node(Node::new("weigh", "Mul", opset, ord(w, normed), vec![y])).unwrap();
    g.outputs = if flaw == Flaw::Leak { vec![y, root] } else { vec![y] };
    // Typed as an import leaves it (the no-op casts are known by their input's type); without
    // keepdims the graph does not type (its shapes do not broadcast) and stays untyped.
    if flaw != Flaw::NoKeepDims {
        fpx_ir::verify::infer_types(&mut g, &OpRegistry::standard()).unwrap();
    }
    g
}

fn run(g: Graph, x: &Tensor, w: &Tensor, flaw: Flaw) -> Vec<f64> {
    let mut inputs = vec![("x".to_string(), x.clone())];
    if flaw == Flaw::InputWeight {
        inputs.push(("w".to_string(), w.clone()));
    }
    CpuExecutor::new(g).unwrap().run(inputs).unwrap()[0].1.to_f64_vec()
}

fn fuse(g: &mut Graph) -> bool {
    let before = g.node_count();
    PassManager::new().with(FuseRmsNorm).run(g, &OpRegistry::standard()).unwrap();
    g.node_count() != before
}

#[test]
fn rms_norm_chains_fuse_into_one_node_with_the_same_values() {
    let mut rng = Rng::new(17);
    let xs: Vec<f32> = rng.normals(ROWS * WIDTH).iter().enumerate().map(|(i, v)| v * (1 + i / WIDTH) as f32).collect();
    let weight = rng.normals(WIDTH);
    let (x, w) = (tensor(&[ROWS, WIDTH], xs.clone()), tensor(&[WIDTH], weight.clone()));
    let mut spellings = Vec::new();
    for reciprocal in 0..3 {
        for (square_by_mul, axes_input, swap, casts) in
            [(false, false, false, false), (true, true, true, false), (false, true, true, true), (true, false, false, true)]
        {
            spellings.push(Spelling { square_by_mul, reciprocal, axes_input, swap, casts });
        }
    }
    for sp in spellings {
        let original = rms_chain(sp, Flaw::None, &weight);
        let want = run(original.clone(), &x, &w, Flaw::None);
        let mut g = original;
        assert!(fuse(&mut g), "{sp:?}: the chain is fused");
        let mut ops: Vec<String> = g.node_ids().into_iter().map(|id| g.node(id).op_type.clone()).collect();
        ops.sort();
        // The cast of the input stays (it feeds the norm); the one after the chain goes with it.
        assert_eq!(ops, if sp.casts { vec!["Cast", "RMSNormalization"] } else { vec!["RMSNormalization"] }, "{sp:?}");
        let node = g.node(*g.node_ids().iter().find(|&&id| g.node(id).op_type == "RMSNormalization").unwrap());
        assert_eq!((node.name.as_str(), node.opset, node.outputs[0]), ("weigh", 23, g.outputs[0]), "{sp:?}");
        assert_eq!(node.attr_f("epsilon", 0.0), EPS);
        assert!(g.find_value("eps").and_then(|v| g.constant(v)).is_none(), "{sp:?}: the chain's constants are dropped");
        let got = run(g, &x, &w, Flaw::None);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 2e-6 * b.abs().max(1.0), "{sp:?} element {i}: fused {a} vs chain {b}");
        }
        // And against RMS normalization in f64.
        for r in 0..ROWS {
            let row = &xs[r * WIDTH..(r + 1) * WIDTH];
            let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / WIDTH as f64;
            let inv = 1.0 / (ms + EPS as f64).sqrt();
            for j in 0..WIDTH {
                let exact = row[j] as f64 * inv * weight[j] as f64;
                let a = got[r * WIDTH + j];
                assert!((a - exact).abs() <= 1e-6 * exact.abs().max(1.0), "{sp:?} y[{r}][{j}] = {a}, want {exact}");
            }
        }
    }
}

#[test]
fn chains_that_mean_something_else_or_leak_are_left_alone() {
    let weight = Rng::new(3).normals(WIDTH);
    let x = tensor(&[ROWS, WIDTH], Rng::new(4).normals(ROWS * WIDTH));
    let w = tensor(&[WIDTH], weight.clone());
    for flaw in [Flaw::Cube, Flaw::FirstAxis, Flaw::NoKeepDims, Flaw::Leak, Flaw::InputWeight] {
        for sp in [Spelling::default(), Spelling { axes_input: true, swap: true, ..Spelling::default() }] {
            let original = rms_chain(sp, flaw, &weight);
            let mut g = original.clone();
            assert!(!fuse(&mut g), "{flaw:?} {sp:?}: fused");
            assert_eq!(g.node_count(), original.node_count());
            // The graph still runs as it did (NaN where a cube's mean is negative).
            if flaw != Flaw::NoKeepDims {
                let (got, want) = (run(g, &x, &w, flaw), run(original, &x, &w, flaw));
                assert!(got.iter().zip(&want).all(|(a, b)| a == b || (a.is_nan() && b.is_nan())), "{flaw:?} {sp:?}");
            }
        }
    }
}
