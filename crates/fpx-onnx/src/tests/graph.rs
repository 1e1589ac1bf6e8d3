//! Graph structure and Constant nodes.

use super::*;

#[test]
fn cyclic_graph_is_an_error_naming_a_node() {
    let m = model(
        vec![node("Add", "p", &["x", "b"], &["a"]), node("Neg", "q", &["a"], &["b"])],
        vec![value("x", &["2"])],
        vec![value_info("a", FLOAT, None)],
        vec![],
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, ImportError::Ir(IrError::Cycle { .. })), "{e}");
    let e = e.to_string();
    assert!(e.contains("cycle through node") && (e.contains("'p'") || e.contains("'q'")), "{e}");
}

#[test]
fn undefined_values_are_errors_naming_value_and_node() {
    let m = model(vec![node("Relu", "r", &["nowhere"], &["y"])], vec![], vec![value_info("y", FLOAT, None)], vec![]);
    let e = import_err(&m);
    assert!(e.contains("'nowhere'") && e.contains("'r'"), "{e}");

    let m = model(vec![], vec![value("x", &["2"])], vec![value_info("ghost", FLOAT, None)], vec![]);
    let e = import_err(&m);
    assert!(e.contains("graph output 'ghost'"), "{e}");

    // Two nodes defining one value.
    let m = model(
        vec![node("Relu", "r1", &["x"], &["y"]), node("Neg", "r2", &["x"], &["y"])],
        vec![value("x", &["2"])],
        vec![value_info("y", FLOAT, None)],
        vec![],
    );
    let e = import_err(&m);
    assert!(e.contains("'y'") && e.contains("'r2'"), "{e}");
}

#[test]
fn node_names_are_generated_and_made_unique() {
    let m = model(
        vec![
            node("Relu", "", &["x"], &["a"]),
            node("Neg", "dup", &["a"], &["b"]),
            node("Abs", "dup", &["b"], &["c"]),
            node("Relu", "Relu_0", &["c"], &["d"]),
            node("Neg", "", &["d"], &["e"]),
        ],
        vec![value("x", &["2"])],
        vec![value_info("e", FLOAT, None)],
        vec![],
    );
    let g = import(&m).unwrap();
    let mut names: Vec<String> = g.node_ids().into_iter().map(|id| g.node(id).name.clone()).collect();
    names.sort();
    // The generated `Relu_0` yields to the node explicitly named so.
    assert_eq!(names, ["Neg_4", "Relu_0", "Relu_0_1", "dup", "dup_1"]);
    assert_eq!(node_named(&g, "Relu_0").inputs, vec![g.find_value("c")]);
    assert_eq!(node_named(&g, "dup_1").op_type, "Abs");
}

#[test]
fn initializers_listed_as_inputs_are_constants_and_omitted_inputs_are_none() {
    let w = f32_tensor(&[2], vec![0.5, -1.0]);
    let m = model_with_opsets(
        vec![node("Clip", "clip", &["x", "", "hi"], &["y"]), node("Mul", "mul", &["y", "w"], &["z"])], // Old IR: the initializer `w` is listed as a graph input too.
        vec![value("x", &["2"]), value("w", &["2"]), value("hi", &[])],
        vec![value("z", &["2"])],
        vec![tensor_to_proto("w", &w)],
        vec![opset("", 13)],
    );
    let g = import(&m).unwrap();
    let names: Vec<&str> = g.inputs.iter().map(|&v| g.value(v).name.as_str()).collect();
    assert_eq!(names, ["x", "hi"]);
    let wid = g.find_value("w").unwrap();
    assert_eq!(g.constant(wid).map(|t| (**t).clone()), Some(w));
    let clip = node_named(&g, "clip");
    assert_eq!(clip.inputs, vec![g.find_value("x"), None, g.find_value("hi")]);
}

#[test]
fn empty_output_names_are_omitted_optional_outputs() {
    let m = model(
        vec![node_with("LayerNormalization", "ln", &["x", "s"], &["y", "", ""], vec![attr_float("epsilon", 1e-5)])],
        vec![value("x", &["b", "4"])],
        vec![value_info("y", FLOAT, None)],
        vec![tensor_to_proto("s", &f32_tensor(&[4], vec![1.0; 4]))],
    );
    let g = import(&m).unwrap();
    assert_eq!(node_named(&g, "ln").outputs.len(), 1);
    assert_eq!(g.value(g.outputs[0]).ty.clone().unwrap().shape, Some(vec![Dim::Sym("b".into()), Dim::Fixed(4)]));
}

#[test]
fn non_tensor_inputs_are_rejected_by_name() {
    let mut seq = ValueInfoProto::new();
    seq.name = "items".into();
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::SequenceType(type_proto::Sequence::new()));
    seq.type_ = MessageField::some(tp);
    let m = model(vec![], vec![seq], vec![], vec![]);
    let e = import_err(&m);
    assert!(e.contains("'items'") && e.contains("sequence"), "{e}");

    let m = model(vec![], vec![value_info("s", 8, Some(&["2"]))], vec![], vec![]);
    let e = import_err(&m);
    assert!(e.contains("'s'") && e.contains("STRING"), "{e}");

    let mut untyped = ValueInfoProto::new();
    untyped.name = "u".into();
    let m = model(vec![], vec![untyped], vec![], vec![]);
    assert!(import_err(&m).contains("'u'"));
}

#[test]
fn declared_types_that_contradict_inference_are_errors() {
    let m = model(vec![node("Relu", "r", &["x"], &["y"])], vec![value("x", &["2", "3"])], vec![value("y", &["2", "5"])], vec![]);
    let e = import_err(&m);
    assert!(e.contains("'r'") && e.contains("'y'"), "{e}");
}

#[test]
fn bad_initializers_are_named() {
    let mut t = tensor_to_proto("emb", &f32_tensor(&[2], vec![1.0, 2.0]));
    t.dims = vec![3];
    let mut m = relu_model(17);
    m.graph.as_mut().unwrap().initializer.push(t);
    let e = import(&m).unwrap_err();
    assert!(matches!(e, ImportError::Tensor { .. }) && e.to_string().contains("'emb'"), "{e}");

    let mut m = relu_model(17);
    let dup = tensor_to_proto("w", &f32_tensor(&[1], vec![1.0]));
    m.graph.as_mut().unwrap().initializer.extend([dup.clone(), dup]);
    let e = import_err(&m);
    assert!(e.contains("'w'") && e.contains("more than once"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Constant nodes

#[test]
fn constant_nodes_become_constants() {
    let c = f32_tensor(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
    let m = model(
        vec![
            node_with("Constant", "c0", &[], &["k"], vec![attr_tensor("value", tensor_to_proto("k", &c))]),
            node("Add", "add", &["x", "k"], &["y"]),
            node_with("Constant", "c1", &[], &["s"], vec![attr_float("value_float", 0.5)]),
            node("Mul", "mul", &["y", "s"], &["z"]),
            node_with("Constant", "c2", &[], &["shape"], vec![attr_ints("value_ints", &[4])]),
            node("Reshape", "rs", &["z", "shape"], &["r"]),
            node_with("Constant", "c3", &[], &["i"], vec![attr_int("value_int", 7)]),
            node_with(
                "Constant",
                "c4",
                &[],
                &["fs"],
                vec![{
                    let mut a = attr("value_floats", AttributeType::FLOATS);
                    a.floats = vec![1.5, 2.5];
                    a
                }],
            ),
        ],
        vec![value("x", &["2", "2"])],
        vec![value_info("r", FLOAT, None), value_info("i", INT64, None), value_info("fs", FLOAT, None)],
        vec![],
    );
    let g = import(&m).unwrap();
    assert_eq!(g.node_count(), 3);
    assert!(g.node_ids().iter().all(|&id| g.node(id).op_type != "Constant"));
    let k = |name: &str| g.constant(g.find_value(name).unwrap()).map(|t| (**t).clone()).unwrap();
    assert_eq!(k("k"), c);
    assert_eq!(k("s"), Tensor::scalar_f32(0.5));
    assert_eq!(k("shape"), Tensor::vec_i64(vec![4]));
    assert_eq!(k("i"), Tensor::I64(ArrayD::from_elem(IxDyn(&[]), 7)));
    assert_eq!(k("fs"), f32_tensor(&[2], vec![1.5, 2.5]));
    // Reshape to a constant shape: inference sees the folded constant.
    assert_eq!(g.value(g.outputs[0]).ty.clone().unwrap().fixed_dims(), Some(vec![4]));
}

#[test]
fn bad_constant_nodes_name_the_node() {
    let mk = |attrs: Vec<AttributeProto>| {
        model(vec![node_with("Constant", "konst", &[], &["k"], attrs)], vec![], vec![value_info("k", FLOAT, None)], vec![])
    };
    let e = import_err(&mk(vec![]));
    assert!(e.contains("'konst'") && e.contains("exactly one"), "{e}");
    let e = import_err(&mk(vec![attr_float("value_float", 1.0), attr_int("value_int", 1)]));
    assert!(e.contains("'konst'"), "{e}");
    let e = import_err(&mk(vec![attr_string("value_string", "hi")]));
    assert!(e.contains("'konst'") && e.contains("value_string"), "{e}");
    let mut sp = attr("sparse_value", AttributeType::SPARSE_TENSOR);
    sp.sparse_tensor = MessageField::some(onnx_protobuf::SparseTensorProto::new());
    let e = import_err(&mk(vec![sp]));
    assert!(e.contains("'konst'") && e.contains("sparse_value"), "{e}");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn negative_declared_dimensions_are_errors_naming_the_value() {
    let m = model(vec![node("Relu", "r", &["x"], &["y"])], vec![value("x", &["2", "-3"])], vec![value("y", &["2", "?"])], vec![]);
    let e = import_err(&m);
    assert!(e.contains("graph input 'x'") && e.contains("dimension 1 as -3"), "{e}");
    let m = model(vec![node("Relu", "r", &["x"], &["y"])], vec![value("x", &["2", "3"])], vec![value("y", &["-1", "3"])], vec![]);
    let e = import_err(&m);
    assert!(e.contains("graph output 'y'") && e.contains("dimension 0 as -1"), "{e}");
}
