//! `FuseRotateHalf` on the exporters' rotary-embedding chains: every accepted spelling fuses into
//! one `fpx:RotateHalf` whose values equal the chain's (run by the CPU executor) bit for bit;
//! chains that differ in meaning, or leak an intermediate, are left alone.

use crate::FuseRotateHalf;
use fpx_ir::ndarray::{ArrayD, IxDyn};
use fpx_ir::ops::OpRegistry;
use fpx_ir::pass::PassManager;
use fpx_ir::{Attribute, DType, Dim, Graph, Node, Tensor, TensorType, ValueId};
use fpx_runtime::CpuExecutor;
use fpx_test_support::Rng;

/// How a chain spells its steps.
#[derive(Clone, Copy, Debug, Default)]
struct Spelling {
    /// Commutative operands swapped.
    swap: bool,
    /// Slice bounds as attributes (opset 9) instead of inputs.
    attr_bounds: bool,
    /// The upper slice's end as i64::MAX (else D).
    open_end: bool,
    /// The axis as rank - 1 (else -1).
    positive_axis: bool,
    /// cos/sin `[S, D]` (else `[B, 1, S, D]`).
    short_caches: bool,
    /// X `[B, 1, S, D]` and cos/sin `[B, H, S, D]`: the result grows past X.
    growing: bool,
    /// X's shape unknown (its element type known).
    shapeless: bool,
    /// The cut as `x.shape[-1] / 2` in the graph, as the TorchScript exports compute it
    /// (`Unsqueeze(Cast(Div(Gather(Shape(x), 3), 2)))`; bound inputs only).
    middle: bool,
}

impl Spelling {
    /// Whether the chain can be fused: with X's shape unknown, only an open end and axis -1 say
    /// "the last axis, to its end" (and the middle's `Gather` of dimension 3 is not known to
    /// be the last).
    fn fuses(&self) -> bool {
        let middle = self.middle && !self.attr_bounds;
        !self.shapeless || (self.open_end && !self.positive_axis && !middle)
    }

    /// X's and the caches' shapes for `s` positions.
    fn shapes(&self, s: usize) -> (Vec<usize>, Vec<usize>) {
        match (self.growing, self.short_caches) {
            (true, _) => (vec![B, 1, s, D], vec![B, H, s, D]),
            (false, true) => (vec![B, H, s, D], vec![s, D]),
            (false, false) => (vec![B, H, s, D], vec![B, 1, s, D]),
        }
    }
}

/// What a chain gets wrong (then it must not fuse).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Flaw {
    None,
    /// The halves concatenated without the `Neg` swap order (`Concat(x1, -x2)`).
    SwappedHalves,
    /// The lower slice stops one short of D/2.
    ShortSlice,
    /// The negated half is also a graph output.
    Leak,
    /// The upper slice stops before the end (a different rotation).
    ClosedEnd,
}

const B: usize = 2;
const H: usize = 3;
const D: usize = 8;

fn konst(g: &mut Graph, name: &str, v: i64) -> ValueId {
    g.add_constant(name, Tensor::from(ArrayD::from_shape_vec(IxDyn(&[1]), vec![v]).unwrap())).unwrap()
}

/// `y = x·cos + rotate_half(x)·sin` over x `[B, H, s, D]` (s symbolic), spelled and flawed as asked.
fn rope_chain(sp: Spelling, flaw: Flaw) -> Graph {
    let opset = if sp.attr_bounds { 9 } else { 17 };
    let mut g = Graph::new("rope");
    g.opsets.insert(String::new(), opset);
    let dims = |h: usize| vec![Dim::Fixed(B), Dim::Fixed(h), Dim::Sym("s".into()), Dim::Fixed(D)];
    let x_shape = if sp.shapeless { None } else { Some(dims(if sp.growing { 1 } else { H })) };
    let x = g.add_input("x", TensorType { dtype: DType::F32, shape: x_shape }).unwrap();
    let cache = if sp.short_caches && !sp.growing {
        TensorType { dtype: DType::F32, shape: Some(vec![Dim::Sym("s".into()), Dim::Fixed(D)]) }
    } else {
        TensorType { dtype: DType::F32, shape: Some(dims(if sp.growing { H } else { 1 })) }
    };
    let (cos, sin) = (g.add_input("cos", cache.clone()).unwrap(), g.add_input("sin", cache).unwrap());
    let ord = |p: ValueId, q: ValueId| if sp.swap { vec![Some(q), Some(p)] } else { vec![Some(p), Some(q)] };
    let [x_cos, lo, hi, neg, rot, rot_sin, y] = ["x_cos", "lo", "hi", "neg", "rot", "rot_sin", "y"].map(|n| g.value_named(n));
    g.add_node(Node::new("mul_cos", "Mul", opset, ord(x, cos), vec![x_cos])).unwrap();
    let axis = if sp.positive_axis { 3 } else { -1 };
    let end = match (flaw, sp.open_end) {
        (Flaw::ClosedEnd, _) => D as i64 - 1,
        (_, true) => i64::MAX,
        (_, false) => D as i64,
    };
    let lo_end = if flaw == Flaw::ShortSlice { D as i64 / 2 - 1 } else { D as i64 / 2 };
    // The middle as the TorchScript export computes it, shared by both slices.
    let middle = (sp.middle && !sp.attr_bounds).then(|| {
        let [shape, dim, halved, cast, unsq] = ["shape", "dim", "halved", "cast", "unsq"].map(|n| g.value_named(n));
        let (last, two, zero) = (
            konst(&mut g, "last", 3),
            g.add_constant("two", Tensor::from(fpx_ir::ndarray::arr0(2i64).into_dyn())).unwrap(),
            konst(&mut g, "zero", 0),
        );
        g.add_node(Node::new("shape", "Shape", opset, vec![Some(x)], vec![shape])).unwrap();
        let mut gather = Node::new("gather", "Gather", opset, vec![Some(shape), Some(last)], vec![dim]);
        gather.attrs.insert("axis".into(), Attribute::Int(0));
        g.add_node(gather).unwrap();
        g.add_node(Node::new("div", "Div", opset, vec![Some(dim), Some(two)], vec![halved])).unwrap();
        let mut c = Node::new("cast", "Cast", opset, vec![Some(halved)], vec![cast]);
        c.attrs.insert("to".into(), Attribute::Int(fpx_ir::onnx_code(DType::I64)));
        g.add_node(c).unwrap();
        g.add_node(Node::new("unsq", "Unsqueeze", opset, vec![Some(cast), Some(zero)], vec![unsq])).unwrap();
        unsq
    });
    for (name, out, start, stop) in [("slice_lo", lo, 0, lo_end), ("slice_hi", hi, D as i64 / 2, end)] {
        let node = if let Some(m) = middle.filter(|_| flaw != Flaw::ShortSlice) {
            let a = konst(&mut g, &format!("{name}_a"), axis);
            let (s, e) = if name == "slice_lo" { (konst(&mut g, "slice_lo_s", 0), m) } else { (m, konst(&mut g, "slice_hi_e", end)) };
            Node::new(name, "Slice", opset, vec![Some(x), Some(s), Some(e), Some(a)], vec![out])
        } else if sp.attr_bounds {
            let mut n = Node::new(name, "Slice", opset, vec![Some(x)], vec![out]);
            n.attrs.insert("starts".into(), Attribute::Ints(vec![start]));
            n.attrs.insert("ends".into(), Attribute::Ints(vec![stop]));
            n.attrs.insert("axes".into(), Attribute::Ints(vec![axis]));
            n
        } else {
            let (s, e, a) = (
                konst(&mut g, &format!("{name}_s"), start),
                konst(&mut g, &format!("{name}_e"), stop),
                konst(&mut g, &format!("{name}_a"), axis),
            );
            Node::new(name, "Slice", opset, vec![Some(x), Some(s), Some(e), Some(a)], vec![out])
        };
        g.add_node(node).unwrap();
    }
    g.add_node(Node::new("neg", "Neg", opset, vec![Some(hi)], vec![neg])).unwrap();
    let halves = if flaw == Flaw::SwappedHalves { vec![Some(lo), Some(neg)] } else { vec![Some(neg), Some(lo)] };
    let mut cat = Node::new("cat", "Concat", opset, halves, vec![rot]);
    cat.attrs.insert("axis".into(), Attribute::Int(axis));
    g.add_node(cat).unwrap();
    g.add_node(Node::new("mul_sin", "Mul", opset, ord(rot, sin), vec![rot_sin])).unwrap();
    g.add_node(Node::new("rope_add", "Add", opset, ord(x_cos, rot_sin), vec![y])).unwrap();
    g.outputs = if flaw == Flaw::Leak { vec![y, neg] } else { vec![y] };
    fpx_ir::verify::infer_types(&mut g, &OpRegistry::standard()).unwrap();
    g
}

fn run(g: Graph, inputs: &[(&str, &Tensor)]) -> Vec<f32> {
    let inputs = inputs.iter().map(|(n, t)| (n.to_string(), (*t).clone())).collect();
    CpuExecutor::new(g).unwrap().run(inputs).unwrap()[0].1.as_f32().unwrap().iter().copied().collect()
}

fn fuse(g: &mut Graph) -> bool {
    let before = g.node_count();
    PassManager::new().with(FuseRotateHalf).run(g, &OpRegistry::standard()).unwrap();
    g.node_count() != before
}

fn rand(rng: &mut Rng, shape: &[usize]) -> Tensor {
    Tensor::from(ArrayD::from_shape_vec(IxDyn(shape), rng.normals(shape.iter().product())).unwrap())
}

#[test]
fn rotary_chains_fuse_into_one_node_with_identical_values() {
    let mut rng = Rng::new(23);
    for s in [1, 5] {
        for bits in 0..=255u8 {
            let bit = |k: u8| bits & (1 << k) != 0;
            let sp = Spelling {
                swap: bit(0),
                attr_bounds: bit(1),
                open_end: bit(2),
                positive_axis: bit(3),
                short_caches: bit(4),
                growing: bit(5),
                shapeless: bit(6),
                middle: bit(7),
            };
            let (x_shape, cache_shape) = sp.shapes(s);
            let x = rand(&mut rng, &x_shape);
            let (cos, sin) = (rand(&mut rng, &cache_shape), rand(&mut rng, &cache_shape));
            let inputs = [("x", &x), ("cos", &cos), ("sin", &sin)];
            let original = rope_chain(sp, Flaw::None);
            let want = run(original.clone(), &inputs);
            let mut g = original;
            if !sp.fuses() {
                assert!(!fuse(&mut g), "{sp:?}: the chain is not fused");
                continue;
            }
            assert!(fuse(&mut g), "{sp:?}: the chain is fused");
            // The shape arithmetic of the middle, now unread, is left to dead-node elimination.
            let ops: Vec<String> =
                g.node_ids().into_iter().map(|id| g.node(id).op_type.clone()).filter(|op| op == "RotateHalf" || !sp.middle).collect();
            assert_eq!(ops, ["RotateHalf"], "{sp:?}");
            let rope = g.node_ids().into_iter().find(|&id| g.node(id).op_type == "RotateHalf").unwrap();
            let node = g.node(rope);
            assert_eq!((node.name.as_str(), node.domain.as_str(), node.outputs[0]), ("rope_add", "fpx", g.outputs[0]), "{sp:?}");
            if sp.middle && !sp.attr_bounds {
                assert!(!node.attrs.contains_key("half"), "{sp:?}: cut in the middle at run time");
            } else {
                assert_eq!(node.attr_i("half", 0), D as i64 / 2);
            }
            assert!(g.find_value("slice_lo_s").and_then(|v| g.constant(v)).is_none(), "{sp:?}: the chain's constants are dropped");
            let got = run(g, &inputs);
            // The same products and sums in the same order (row by row, or op by op where the
            // caches grow X): bit for bit.
            assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{sp:?}");
        }
    }
}

#[test]
fn chains_that_mean_something_else_or_leak_are_left_alone() {
    for flaw in [Flaw::SwappedHalves, Flaw::ShortSlice, Flaw::Leak, Flaw::ClosedEnd] {
        let mut g = rope_chain(Spelling::default(), flaw);
        assert!(!fuse(&mut g), "{flaw:?} must not fuse");
    }
    // Without X's element type nothing is assumed.
    let mut g = rope_chain(Spelling::default(), Flaw::None);
    let x = g.find_value("x").unwrap();
    g.set_type(x, None);
    assert!(!fuse(&mut g), "an untyped X must not fuse");
}
