//! Opsets, ops and attributes: what the importer accepts and refuses, by name.

use super::*;

#[test]
fn simple_model_imports_with_opsets_and_symbolic_dims() {
    let mut m = relu_model(17);
    m.opset_import.push(opset("ai.onnx.ml", 3));
    let g = import(&m).unwrap();
    assert_eq!(g.name, "test");
    assert_eq!(g.opsets.get(""), Some(&17));
    assert_eq!(g.opsets.get("ai.onnx.ml"), Some(&3));
    assert_eq!(g.node_count(), 1);
    let x = g.inputs[0];
    let ty = g.value(x).ty.as_ref().unwrap();
    assert_eq!((ty.dtype, ty.shape.clone()), (DType::F32, Some(vec![Dim::Sym("batch".into()), Dim::Fixed(4)])));
    let y = g.value(g.outputs[0]).ty.clone().unwrap();
    assert_eq!(y.shape, Some(vec![Dim::Sym("batch".into()), Dim::Fixed(4)]));
    let n = node_named(&g, "relu");
    assert_eq!((n.op_type.as_str(), n.domain.as_str(), n.opset), ("Relu", "", 17));
}

#[test]
fn ai_onnx_domain_is_the_default_domain() {
    let mut m = relu_model(17);
    m.opset_import = vec![opset("ai.onnx", 14)];
    m.graph.as_mut().unwrap().node[0].domain = "ai.onnx".into();
    let g = import(&m).unwrap();
    assert_eq!(g.opsets.get(""), Some(&14));
    assert_eq!(node_named(&g, "relu").domain, "");
}

#[test]
fn unknown_and_missing_dims_and_shapes() {
    let m = model(vec![node("Relu", "r", &["x"], &["y"])], vec![value("x", &["?", "n", "3"])], vec![value_info("y", FLOAT, None)], vec![]);
    let g = import(&m).unwrap();
    assert_eq!(g.value(g.inputs[0]).ty.as_ref().unwrap().shape, Some(vec![Dim::Unknown, Dim::Sym("n".into()), Dim::Fixed(3)]));
    // The output declared no shape; inference gives the input's.
    assert_eq!(g.value(g.outputs[0]).ty.as_ref().unwrap().shape, Some(vec![Dim::Unknown, Dim::Sym("n".into()), Dim::Fixed(3)]));

    let m = model(vec![node("Relu", "r", &["x"], &["y"])], vec![value_info("x", FLOAT, None)], vec![value_info("y", FLOAT, None)], vec![]);
    let g = import(&m).unwrap();
    assert_eq!(g.value(g.inputs[0]).ty.as_ref().unwrap().shape, None);
}

#[test]
fn unknown_op_with_a_subgraph_is_reported_as_unknown_op() {
    let mut body = attr("body", AttributeType::GRAPH);
    body.g = MessageField::some(GraphProto::new());
    let m = model(
        vec![node_with("Loop", "loop", &["n", "", "x"], &["y"], vec![body])],
        vec![value_info("n", INT64, Some(&[])), value("x", &["2"])],
        vec![value_info("y", FLOAT, None)],
        vec![],
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, ImportError::Ir(IrError::UnknownOp { .. })), "{e}");
    assert!(e.to_string().contains("'Loop'"), "{e}");
}

#[test]
fn unknown_op_names_node_op_domain_and_opset() {
    let m = model(vec![node("FooBar", "mystery", &["x"], &["y"])], vec![value("x", &["2"])], vec![value_info("y", FLOAT, None)], vec![]);
    let e = import(&m).unwrap_err();
    assert!(matches!(e, ImportError::Ir(IrError::UnknownOp { .. })), "{e}");
    let e = e.to_string();
    assert!(e.contains("'mystery'") && e.contains("'FooBar'") && e.contains("domain ''") && e.contains("opset 17"), "{e}");

    // A custom domain that is imported: unknown op naming the domain.
    let mut m = m.clone();
    m.opset_import.push(opset("com.example", 2));
    m.graph.as_mut().unwrap().node[0].domain = "com.example".into();
    let e = import_err(&m);
    assert!(e.contains("'mystery'") && e.contains("'FooBar'") && e.contains("domain 'com.example'") && e.contains("opset 2"), "{e}");

    // A domain that is not imported: names the node and domain.
    m.opset_import.pop();
    let e = import_err(&m);
    assert!(e.contains("'mystery'") && e.contains("FooBar") && e.contains("com.example") && e.contains("opset_import"), "{e}");
}

#[test]
fn unsupported_opsets_are_clear_errors() {
    let e = import(&relu_model(fpx_ir::ops::MAX_ONNX_OPSET + 1)).unwrap_err();
    assert!(matches!(e, ImportError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains(&format!("ONNX opset {}", fpx_ir::ops::MAX_ONNX_OPSET + 1)), "{e}");
    let e = import_err(&relu_model(0));
    assert!(e.contains("ONNX opset 0"), "{e}");

    // The op exists but not at this opset: Gelu is opset 20+.
    let m = model(vec![node("Gelu", "g", &["x"], &["y"])], vec![value("x", &["2"])], vec![value_info("y", FLOAT, None)], vec![]);
    let e = import(&m).unwrap_err();
    assert!(matches!(e, ImportError::Ir(IrError::UnsupportedOpset { .. })), "{e}");
    let e = e.to_string();
    assert!(e.contains("'g'") && e.contains("Gelu") && e.contains("opset 17"), "{e}");

    // Two different versions for one domain.
    let mut m = relu_model(17);
    m.opset_import.push(opset("ai.onnx", 13));
    assert!(import_err(&m).contains("twice"));
}

#[test]
fn bad_attributes_name_node_op_and_opset() {
    let softmax = |a: AttributeProto| {
        model_with_opsets(
            vec![node_with("Softmax", "sm", &["x"], &["y"], vec![a])],
            vec![value("x", &["2", "3"])],
            vec![value_info("y", FLOAT, None)],
            vec![],
            vec![opset("", 13)],
        )
    };
    // Wrong kind for a known attribute (checked by the registry).
    let e = import(&softmax(attr_float("axis", 1.0))).unwrap_err();
    assert!(matches!(e, ImportError::Ir(IrError::BadAttribute { .. })), "{e}");
    let e = e.to_string();
    assert!(e.contains("'sm'") && e.contains("Softmax") && e.contains("opset 13") && e.contains("axis"), "{e}");
    // Unknown attribute.
    let e = import_err(&softmax(attr_int("axes", 1)));
    assert!(e.contains("unknown attribute 'axes'"), "{e}");
    // Attribute kinds fpx does not take.
    let mut g = attr("body", AttributeType::GRAPH);
    g.g = MessageField::some(GraphProto::new());
    let e = import(&softmax(g)).unwrap_err();
    assert!(matches!(e, ImportError::Ir(IrError::BadAttribute { .. })), "{e}");
    assert!(e.to_string().contains("'sm'") && e.to_string().contains("GRAPH"), "{e}");
    for kind in
        [AttributeType::GRAPHS, AttributeType::SPARSE_TENSOR, AttributeType::TYPE_PROTO, AttributeType::TENSORS, AttributeType::UNDEFINED]
    {
        let e = import_err(&softmax(attr("a", kind)));
        assert!(e.contains("'sm'") && e.contains("Softmax") && e.contains("'a'"), "{e}");
    }
    // A reference to a function attribute.
    let mut r = attr_int("axis", 1);
    r.ref_attr_name = "outer_axis".into();
    let e = import_err(&softmax(r));
    assert!(e.contains("'sm'") && e.contains("outer_axis"), "{e}");
    // A TENSOR attribute without a tensor.
    let e = import_err(&softmax(attr("axis", AttributeType::TENSOR)));
    assert!(e.contains("holds no tensor"), "{e}");
    // Good attribute: kept.
    let g = import(&softmax(attr_int("axis", 0))).unwrap();
    assert_eq!(node_named(&g, "sm").attrs.get("axis"), Some(&Attribute::Int(0)));
}

#[test]
fn attributes_of_every_supported_kind_convert() {
    let m = model_with_opsets(
        vec![
            node_with("Gelu", "g", &["x"], &["a"], vec![attr_string("approximate", "tanh")]),
            node_with("Transpose", "t", &["a"], &["b"], vec![attr_ints("perm", &[1, 0])]),
            node_with("LeakyRelu", "l", &["b"], &["c"], vec![attr_float("alpha", 0.25)]),
            node_with(
                "ConstantOfShape",
                "cs",
                &["shape"],
                &["d"],
                vec![attr_tensor("value", tensor_to_proto("", &Tensor::vec_i64(vec![3])))],
            ),
        ],
        vec![value("x", &["2", "3"])],
        vec![value_info("c", FLOAT, None), value_info("d", INT64, None)],
        vec![tensor_to_proto("shape", &Tensor::vec_i64(vec![2, 2]))],
        vec![opset("", 20)],
    );
    let g = import(&m).unwrap();
    assert_eq!(node_named(&g, "g").attr_s("approximate", ""), "tanh");
    assert_eq!(node_named(&g, "t").attr_ints("perm"), Some(&[1i64, 0][..]));
    assert_eq!(node_named(&g, "l").attr_f("alpha", 0.0), 0.25);
    assert_eq!(node_named(&g, "cs").attr_tensor("value"), Some(&Tensor::vec_i64(vec![3])));
    let c = g.value(g.outputs[0]).ty.clone().unwrap();
    assert_eq!(c.fixed_dims(), Some(vec![3, 2]));
    assert_eq!(g.value(g.outputs[1]).ty.clone().unwrap(), fpx_ir::TensorType::fixed(DType::I64, &[2, 2]));
}

#[test]
fn bad_attribute_tensor_is_named_after_node_and_attribute() {
    let mut t = tensor_to_proto("", &Tensor::vec_i64(vec![3]));
    t.raw_data.pop();
    let m = model(
        vec![node_with("ConstantOfShape", "cs", &["shape"], &["d"], vec![attr_tensor("value", t)])],
        vec![],
        vec![value_info("d", INT64, None)],
        vec![tensor_to_proto("shape", &Tensor::vec_i64(vec![2]))],
    );
    let e = import_err(&m);
    assert!(e.contains("tensor 'cs.value'"), "{e}");
}
