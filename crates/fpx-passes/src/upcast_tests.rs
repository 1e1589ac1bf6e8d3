//! The FP16/BF16 upcast on small graphs: what stays 16-bit (the interface), what becomes `f32`,
//! and the upcast graph computing what an `f64` evaluation of the same 16-bit data gives,
//! within the final rounding to 16 bits (through the CPU executor's reference kernels).

use crate::upcast_half_precision;
use fpx_ir::half::f16;
use fpx_ir::ndarray::{ArrayD, IxDyn};
use fpx_ir::{onnx_code, Attribute, DType, Dim, Graph, Node, Tensor, TensorType, ValueId};
use fpx_runtime::CpuExecutor;
use fpx_test_support::Rng;

/// `[rows, k]` random values rounded to FP16.
fn half_tensor(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let v: Vec<f16> = rng.normals(shape.iter().product()).into_iter().map(f16::from_f32).collect();
    Tensor::from(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

fn node(g: &mut Graph, op: &str, inputs: &[ValueId], out: &str) -> ValueId {
    let o = g.value_named(out);
    g.add_node(Node::new(out, op, 17, inputs.iter().map(|&v| Some(v)).collect(), vec![o])).unwrap();
    o
}

/// `y = Softmax(Relu(x @ w + b) * c)` in FP16 with input `x: [n, 8]` FP16; a second output
/// `Cast(y, to=float)`; a `ConstantOfShape` of an FP16 scalar added on the way; `x` itself also
/// an output. Returns the graph and its weights.
fn half_graph(rng: &mut Rng) -> (Graph, Tensor, Tensor) {
    let mut g = Graph::new("half");
    g.opsets.insert(String::new(), 17);
    let ty = TensorType { dtype: DType::F16, shape: Some(vec![Dim::Sym("n".into()), Dim::Fixed(8)]) };
    let x = g.add_input("x", ty).unwrap();
    let (w, b) = (half_tensor(rng, &[8, 4]), half_tensor(rng, &[4]));
    let wv = g.add_constant("w", w.clone()).unwrap();
    let bv = g.add_constant("b", b.clone()).unwrap();
    let mm = node(&mut g, "MatMul", &[x, wv], "mm");
    let add = node(&mut g, "Add", &[mm, bv], "add");
    let relu = node(&mut g, "Relu", &[add], "relu");
    let shape = g.add_constant("shape", Tensor::vec_i64(vec![4])).unwrap();
    let fill = g.value_named("fill");
    let mut cos = Node::new("fill", "ConstantOfShape", 17, vec![Some(shape)], vec![fill]);
    cos.attrs.insert("value".into(), Attribute::Tensor(Tensor::from(ArrayD::from_elem(IxDyn(&[1]), f16::from_f32(0.5)))));
    g.add_node(cos).unwrap();
    let scaled = node(&mut g, "Mul", &[relu, fill], "scaled");
    // A Cast to FP16 in the middle (exporters emit them around mixed-precision ops).
    let again = g.value_named("again");
    let mut cast = Node::new("again", "Cast", 17, vec![Some(scaled)], vec![again]);
    cast.attrs.insert("to".into(), Attribute::Int(onnx_code(DType::F16)));
    g.add_node(cast).unwrap();
    let y = node(&mut g, "Softmax", &[again], "y");
    let y32 = g.value_named("y32");
    let mut up = Node::new("y32", "Cast", 17, vec![Some(y)], vec![y32]);
    up.attrs.insert("to".into(), Attribute::Int(onnx_code(DType::F32)));
    g.add_node(up).unwrap();
    g.outputs.extend([y, y32, x]);
    fpx_ir::verify::infer_types(&mut g, &fpx_ir::ops::OpRegistry::standard()).unwrap();
    (g, w, b)
}

/// The graph's function in f64 from the FP16 data: softmax(relu(x w + b) · 0.5) per row.
fn reference(x: &Tensor, w: &Tensor, b: &Tensor) -> Vec<f64> {
    let (xs, ws, bs) = (x.to_f64_vec(), w.to_f64_vec(), b.to_f64_vec());
    let n = xs.len() / 8;
    let mut out = Vec::new();
    for r in 0..n {
        let z: Vec<f64> = (0..4).map(|c| ((0..8).map(|k| xs[r * 8 + k] * ws[k * 4 + c]).sum::<f64>() + bs[c]).max(0.0) * 0.5).collect();
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| v / s));
    }
    out
}

fn half_values(g: &Graph) -> Vec<String> {
    g.value_ids()
        .filter(|&v| g.value(v).ty.as_ref().is_some_and(|t| matches!(t.dtype, DType::F16 | DType::BF16)))
        .filter(|&v| g.value(v).producer.is_some() || g.value(v).constant.is_some() || g.inputs.contains(&v))
        .map(|v| g.value(v).name.clone())
        .collect()
}

#[test]
fn only_the_interface_stays_16_bit_and_results_are_the_f32_twins() {
    let mut rng = Rng::new(16);
    let (g, w, b) = half_graph(&mut rng);
    let mut up = g.clone();
    assert!(upcast_half_precision(&mut up).unwrap());
    // Inputs and outputs keep their names and types; nothing else is 16-bit.
    let names = |g: &Graph, ids: &[ValueId]| ids.iter().map(|&v| (g.value(v).name.clone(), g.value(v).ty.clone())).collect::<Vec<_>>();
    assert_eq!(names(&up, &up.inputs), names(&g, &g.inputs));
    assert_eq!(names(&up, &up.outputs), names(&g, &g.outputs));
    let mut half = half_values(&up);
    half.sort();
    assert_eq!(half, ["x", "y"], "only the FP16 input and output stay 16-bit");
    for id in up.node_ids() {
        for attr in up.node(id).attrs.values() {
            if let Attribute::Tensor(t) = attr {
                assert_eq!(t.dtype(), DType::F32, "{}", up.node(id).describe());
            }
        }
    }

    let x = half_tensor(&mut rng, &[5, 8]);
    let want = reference(&x, &w, &b);
    let run = |g: &Graph| CpuExecutor::new(g.clone()).unwrap().run(vec![("x".into(), x.clone())]).unwrap();
    let (plain, upcast) = (run(&g), run(&up));
    for ((pn, pt), (un, ut)) in plain.iter().zip(&upcast) {
        assert_eq!((pn, pt.dtype(), pt.shape()), (un, ut.dtype(), ut.shape()));
    }
    // y (FP16): the f32 computation rounded once to FP16, within half an FP16 step (2^-11
    // relative, values in (0, 1]) of the f64 function; the 16-bit graph rounds at every op.
    let y = upcast[0].1.to_f64_vec();
    for (got, want) in y.iter().zip(&want) {
        assert!((got - want).abs() <= want.abs() * 2f64.powi(-11) + 1e-7, "upcast y {got} vs f64 {want}");
    }
    // y32 reads the f32 value y is rounded from (the f32 twin's y32); x passes through untouched.
    for (got, want) in upcast[1].1.to_f64_vec().iter().zip(&want) {
        assert!((got - want).abs() <= want.abs() * 1e-6 + 1e-9, "upcast y32 {got} vs f64 {want}");
    }
    assert_eq!(upcast[2].1.to_f64_vec(), x.to_f64_vec());
    let plain_y = plain[0].1.to_f64_vec();
    let worst = plain_y.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    assert!(worst < 5e-3, "the 16-bit graph is close too ({worst:e})");
}

#[test]
fn graphs_without_16_bit_floats_are_unchanged() {
    let mut g = Graph::new("f32");
    g.opsets.insert(String::new(), 17);
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[2, 3])).unwrap();
    let y = node(&mut g, "Relu", &[x], "y");
    g.outputs.push(y);
    let before = format!("{:?}", g.node(g.node_ids()[0]));
    assert!(!upcast_half_precision(&mut g).unwrap());
    assert_eq!(format!("{:?}", g.node(g.node_ids()[0])), before);
    assert_eq!(g.node_count(), 1);
}

#[test]
fn bf16_graphs_upcast_too() {
    let mut g = Graph::new("bf16");
    g.opsets.insert(String::new(), 17);
    let x = g.add_input("x", TensorType::fixed(DType::BF16, &[2, 3])).unwrap();
    let c = g.add_constant("c", Tensor::zeros(DType::BF16, &[3]).cast(DType::BF16)).unwrap();
    let y = node(&mut g, "Add", &[x, c], "y");
    g.outputs.push(y);
    fpx_ir::verify::infer_types(&mut g, &fpx_ir::ops::OpRegistry::standard()).unwrap();
    assert!(upcast_half_precision(&mut g).unwrap());
    assert_eq!(g.value(c).constant.as_ref().unwrap().dtype(), DType::F32);
    let out = g.outputs[0];
    assert_eq!((g.value(out).name.as_str(), g.value(out).ty.as_ref().unwrap().dtype), ("y", DType::BF16));
    let xv = Tensor::from(ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.5f32, -2.0, 0.25, 3.0, 0.0, -1.0]).unwrap()).cast(DType::BF16);
    let got = CpuExecutor::new(g).unwrap().run(vec![("x".into(), xv.clone())]).unwrap();
    assert_eq!(got[0].1.dtype(), DType::BF16);
    assert_eq!(got[0].1.to_f64_vec(), xv.to_f64_vec());
}

#[test]
fn gathered_tables_stay_16_bit_and_their_rows_are_cast() {
    let mut rng = Rng::new(17);
    let mut g = Graph::new("embedding");
    g.opsets.insert(String::new(), 17);
    let ids = g.add_input("ids", TensorType::fixed(DType::I64, &[3])).unwrap();
    let table = half_tensor(&mut rng, &[10, 4]);
    let t = g.add_constant("table", table.clone()).unwrap();
    let rows = node(&mut g, "Gather", &[t, ids], "rows");
    let sq = node(&mut g, "Mul", &[rows, rows], "sq");
    g.outputs.push(sq);
    fpx_ir::verify::infer_types(&mut g, &fpx_ir::ops::OpRegistry::standard()).unwrap();
    assert!(upcast_half_precision(&mut g).unwrap());
    assert_eq!(g.value(t).constant.as_ref().unwrap().dtype(), DType::F16, "the table keeps its size");
    let mut ops: Vec<String> = g.node_ids().into_iter().map(|n| g.node(n).op_type.clone()).collect();
    ops.sort();
    assert_eq!(ops, ["Cast", "Cast", "Gather", "Mul"]);
    assert_eq!(g.value(g.find_value("rows").unwrap()).ty.as_ref().unwrap().dtype, DType::F32);
    let idx = Tensor::vec_i64(vec![7, 0, 7]);
    let got = CpuExecutor::new(g).unwrap().run(vec![("ids".into(), idx)]).unwrap();
    let tv = table.to_f64_vec();
    let want: Vec<f64> = [7usize, 0, 7].iter().flat_map(|&r| (0..4).map(move |c| r * 4 + c)).map(|i| tv[i] * tv[i]).collect();
    assert_eq!(got[0].1.dtype(), DType::F16);
    for (a, b) in got[0].1.to_f64_vec().iter().zip(&want) {
        assert!((a - b).abs() <= b.abs() * 2f64.powi(-11), "{a} vs {b}");
    }
}
