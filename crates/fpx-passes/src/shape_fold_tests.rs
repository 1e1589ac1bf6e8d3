//! [`FoldKnownShapes`] on the reshape arithmetic exporters emit, with symbolic batch and sequence
//! dimensions: the known reads become constants, and the folded graph computes what the original
//! does at several run-time sizes (the original, unfolded graph is the reference).

use crate::FoldKnownShapes;
use fpx_ir::ndarray::{ArrayD, IxDyn};
use fpx_ir::ops::OpRegistry;
use fpx_ir::pass::{DeadNodeElimination, Pass, PassManager};
use fpx_ir::{verify, Attribute, DType, Dim, Graph, Node, Tensor, TensorType};
use fpx_runtime::CpuExecutor;
use fpx_test_support::Rng;

/// x [batch, seq, 64] → Reshape(x, Concat(Shape(x)[0], Shape(x)[1], Shape(x)[2] / 16, 16)) →
/// Transpose → y [batch, 4, seq, 16]; plus Slice(Shape(x), -1) and Shape(x, start=2) as outputs.
fn split_heads_graph() -> Graph {
    let mut g = Graph::new("heads");
    g.opsets.insert(String::new(), 17);
    let ty = TensorType { dtype: DType::F32, shape: Some(vec![Dim::Sym("batch".into()), Dim::Sym("seq".into()), Dim::Fixed(64)]) };
    let x = g.add_input("x", ty).unwrap();
    let shape = g.value_named("shape");
    g.add_node(Node::new("shape", "Shape", 17, vec![Some(x)], vec![shape])).unwrap();
    let mut dims = Vec::new();
    for (i, name) in ["batch", "seq", "hidden"].iter().enumerate() {
        let idx = g.add_constant(&format!("i{i}"), Tensor::I64(ArrayD::from_elem(IxDyn(&[]), i as i64))).unwrap();
        let d = g.value_named(&format!("{name}_dim"));
        g.add_node(Node::new(format!("gather_{name}"), "Gather", 17, vec![Some(shape), Some(idx)], vec![d])).unwrap();
        let axes = g.add_constant(&format!("axes{i}"), Tensor::vec_i64(vec![0])).unwrap();
        let u = g.value_named(&format!("{name}_1d"));
        g.add_node(Node::new(format!("unsqueeze_{name}"), "Unsqueeze", 17, vec![Some(d), Some(axes)], vec![u])).unwrap();
        dims.push(u);
    }
    let sixteen = g.add_constant("sixteen", Tensor::vec_i64(vec![16])).unwrap();
    let heads = g.value_named("heads");
    g.add_node(Node::new("div_heads", "Div", 17, vec![Some(dims[2]), Some(sixteen)], vec![heads])).unwrap();
    let target = g.value_named("target");
    let mut concat = Node::new("concat", "Concat", 17, vec![Some(dims[0]), Some(dims[1]), Some(heads), Some(sixteen)], vec![target]);
    concat.attrs.insert("axis".into(), Attribute::Int(0));
    g.add_node(concat).unwrap();
    let r = g.value_named("r");
    g.add_node(Node::new("reshape", "Reshape", 17, vec![Some(x), Some(target)], vec![r])).unwrap();
    let y = g.value_named("y");
    let mut t = Node::new("transpose", "Transpose", 17, vec![Some(r)], vec![y]);
    t.attrs.insert("perm".into(), Attribute::Ints(vec![0, 2, 1, 3]));
    g.add_node(t).unwrap();
    let (starts, ends) =
        (g.add_constant("starts", Tensor::vec_i64(vec![-1])).unwrap(), g.add_constant("ends", Tensor::vec_i64(vec![i64::MAX])).unwrap());
    let last = g.value_named("last");
    g.add_node(Node::new("slice_last", "Slice", 17, vec![Some(shape), Some(starts), Some(ends)], vec![last])).unwrap();
    let tail = g.value_named("tail");
    let mut s2 = Node::new("shape_tail", "Shape", 17, vec![Some(x)], vec![tail]);
    s2.attrs.insert("start".into(), Attribute::Int(2));
    g.add_node(s2).unwrap();
    g.outputs.extend([y, last, tail]);
    let registry = OpRegistry::standard();
    fpx_ir::verify::infer_types(&mut g, &registry).unwrap();
    g
}

fn run(g: &Graph, x: Tensor) -> Vec<Tensor> {
    CpuExecutor::new(g.clone()).unwrap().run(vec![("x".into(), x)]).unwrap().into_iter().map(|(_, t)| t).collect()
}

#[test]
fn known_dimension_reads_fold_and_the_graph_computes_the_same_at_every_size() {
    let registry = OpRegistry::standard();
    let original = split_heads_graph();
    let mut folded = original.clone();
    let fold = |g: &mut Graph| {
        PassManager::new()
            .with(FoldKnownShapes)
            .with(fpx_ir::pass::ConstantFolding {
                evaluator: fpx_runtime::CpuEvaluator::default(),
                max_elements: 1 << 20,
                budget: fpx_ir::TensorBudget::default(),
            })
            .with(DeadNodeElimination)
            .run(g, &registry)
            .unwrap()
    };
    let changed = fold(&mut folded);
    assert!(changed.contains(&"fold-known-shapes".to_string()), "{changed:?}");
    verify::verify(&folded, &registry).unwrap();
    let ops: Vec<String> = folded.node_ids().into_iter().map(|id| folded.node(id).name.clone()).collect();
    // The hidden-size read, its division, the slice and the tail shape are constants now; the
    // batch and sequence reads stay (they are only known at run time).
    for gone in ["gather_hidden", "unsqueeze_hidden", "div_heads", "slice_last", "shape_tail"] {
        assert!(!ops.contains(&gone.to_string()), "{gone} was not folded: {ops:?}");
    }
    for kept in ["shape", "gather_batch", "gather_seq", "concat", "reshape"] {
        assert!(ops.contains(&kept.to_string()), "{kept} was folded although it reads a dynamic dim: {ops:?}");
    }
    // Nothing left to fold: a second run changes nothing.
    assert!(!FoldKnownShapes.run(&mut folded, &registry).unwrap());
    let mut rng = Rng::new(41);
    for (batch, seq) in [(1, 1), (2, 7), (3, 64)] {
        let x = Tensor::from(ArrayD::from_shape_vec(IxDyn(&[batch, seq, 64]), rng.normals(batch * seq * 64)).unwrap());
        let (want, got) = (run(&original, x.clone()), run(&folded, x));
        assert_eq!(want[0].shape(), &[batch, 4, seq, 16]);
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(w.shape(), g.shape());
            assert_eq!(w.to_f64_vec(), g.to_f64_vec());
        }
        assert_eq!(got[1].to_i64_vec(), vec![64]);
        assert_eq!(got[2].to_i64_vec(), vec![64]);
    }
}

#[test]
fn reads_of_dynamic_or_unranked_dimensions_are_left_alone() {
    let registry = OpRegistry::standard();
    let mut g = Graph::new("dynamic");
    g.opsets.insert(String::new(), 17);
    let x = g.add_input("x", TensorType::unranked(DType::F32)).unwrap();
    let shape = g.value_named("shape");
    g.add_node(Node::new("shape", "Shape", 17, vec![Some(x)], vec![shape])).unwrap();
    let idx = g.add_constant("i", Tensor::vec_i64(vec![0])).unwrap();
    let d = g.value_named("d");
    g.add_node(Node::new("gather", "Gather", 17, vec![Some(shape), Some(idx)], vec![d])).unwrap();
    g.outputs.push(d);
    assert!(!FoldKnownShapes.run(&mut g, &registry).unwrap());
    assert_eq!(g.node_count(), 2);
}
