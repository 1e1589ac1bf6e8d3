//! The table of built-in op schemas.

use super::infer as i;
use super::{AttrSpec, OpDef, FPX_DOMAIN, MAX_ONNX_OPSET};
use crate::AttrKind::*;

/// No upper bound on inputs or outputs.
pub(super) const MANY: usize = usize::MAX;

/// A default-domain op supported from opset `since` to the newest.
pub(super) fn def(
    op_type: &'static str,
    since: i64,
    inputs: (usize, usize),
    outputs: (usize, usize),
    attrs: &'static [AttrSpec],
    infer: super::InferFn,
) -> OpDef {
    OpDef { op_type, domain: "", opsets: since..=MAX_ONNX_OPSET, inputs: inputs.0..=inputs.1, outputs: outputs.0..=outputs.1, attrs, infer }
}

/// One of fpx's own ops (domain [`FPX_DOMAIN`], opset 1, one output).
fn fpx_op(op_type: &'static str, inputs: std::ops::RangeInclusive<usize>, attrs: &'static [AttrSpec], infer: super::InferFn) -> OpDef {
    OpDef { op_type, domain: FPX_DOMAIN, opsets: 1..=1, inputs, outputs: 1..=1, attrs, infer }
}

fn unary(op: &'static str, since: i64) -> OpDef {
    def(op, since, (1, 1), (1, 1), &[], i::same_as_input)
}

fn binary(op: &'static str, since: i64) -> OpDef {
    def(op, since, (2, 2), (1, 1), &[], i::broadcast)
}

fn comparison(op: &'static str, since: i64) -> OpDef {
    def(op, since, (2, 2), (1, 1), &[], i::compare)
}

const REDUCE_ATTRS: &[AttrSpec] = &[opt!("axes", Ints), opt!("keepdims", Int), opt!("noop_with_empty_axes", Int)];

/// Every built-in ONNX op: the first opset whose semantics the kernels implement, and the schema.
/// Opsets before numpy-style broadcasting (7) and before `consumed_inputs` was dropped (6) are not supported.
pub fn standard_defs() -> Vec<OpDef> {
    let mut v = vec![
        def("MatMul", 1, (2, 2), (1, 1), &[], i::matmul),
        def("Gemm", 7, (2, 3), (1, 1), &[opt!("alpha", Float), opt!("beta", Float), opt!("transA", Int), opt!("transB", Int)], i::gemm),
        def("Gelu", 20, (1, 1), (1, 1), &[opt!("approximate", String)], i::same_as_input),
        def("Softmax", 1, (1, 1), (1, 1), &[opt!("axis", Int)], i::same_as_input),
        def("LayerNormalization", 17, (2, 3), (1, 3), &[opt!("axis", Int), opt!("epsilon", Float), opt!("stash_type", Int)], i::layer_norm),
        def("Reshape", 5, (2, 2), (1, 1), &[opt!("allowzero", Int)], i::reshape),
        def("Transpose", 1, (1, 1), (1, 1), &[opt!("perm", Ints)], i::transpose),
        def("Gather", 1, (2, 2), (1, 1), &[opt!("axis", Int)], i::gather),
        def("Concat", 4, (1, MANY), (1, 1), &[req!("axis", Int)], i::concat),
        def("Slice", 1, (1, 5), (1, 1), &[opt!("starts", Ints), opt!("ends", Ints), opt!("axes", Ints)], i::slice),
        def("Squeeze", 1, (1, 2), (1, 1), &[opt!("axes", Ints)], i::squeeze),
        def("Unsqueeze", 1, (1, 2), (1, 1), &[opt!("axes", Ints)], i::unsqueeze),
        def("Flatten", 1, (1, 1), (1, 1), &[opt!("axis", Int)], i::flatten),
        def("Identity", 1, (1, 1), (1, 1), &[], i::same_as_input),
        def("Cast", 6, (1, 1), (1, 1), &[req!("to", Int), opt!("saturate", Int), opt!("round_mode", String)], i::cast),
        def("Where", 9, (3, 3), (1, 1), &[], i::where_),
        def("Not", 1, (1, 1), (1, 1), &[], i::same_as_input),
        def("Sum", 8, (1, MANY), (1, 1), &[], i::broadcast),
        def("Mean", 8, (1, MANY), (1, 1), &[], i::broadcast),
        def("Min", 8, (1, MANY), (1, 1), &[], i::broadcast),
        def("Max", 8, (1, MANY), (1, 1), &[], i::broadcast),
        def("Clip", 6, (1, 3), (1, 1), &[opt!("min", Float), opt!("max", Float)], i::same_as_input),
        def("ReduceMean", 1, (1, 2), (1, 1), REDUCE_ATTRS, i::reduce),
        def("ReduceSum", 1, (1, 2), (1, 1), REDUCE_ATTRS, i::reduce),
        def("ReduceMax", 1, (1, 2), (1, 1), REDUCE_ATTRS, i::reduce),
        def("ReduceMin", 1, (1, 2), (1, 1), REDUCE_ATTRS, i::reduce),
        def("CumSum", 11, (2, 2), (1, 1), &[opt!("exclusive", Int), opt!("reverse", Int)], i::same_as_input),
        def("Expand", 8, (2, 2), (1, 1), &[], i::expand),
        def(
            "Constant",
            1,
            (0, 0),
            (1, 1),
            &[
                opt!("value", Tensor),
                opt!("value_float", Float),
                opt!("value_floats", Floats),
                opt!("value_int", Int),
                opt!("value_ints", Ints),
            ],
            i::constant,
        ),
        def("ConstantOfShape", 9, (1, 1), (1, 1), &[opt!("value", Tensor)], i::constant_of_shape),
        def("Shape", 1, (1, 1), (1, 1), &[opt!("start", Int), opt!("end", Int)], i::shape),
        def("Range", 11, (3, 3), (1, 1), &[], i::range),
        def("LeakyRelu", 6, (1, 1), (1, 1), &[opt!("alpha", Float)], i::same_as_input),
    ];
    for (op, since) in [
        ("Sqrt", 6),
        ("Exp", 6),
        ("Log", 6),
        ("Erf", 9),
        ("Tanh", 6),
        ("Relu", 6),
        ("Sigmoid", 6),
        ("Neg", 6),
        ("Abs", 6),
        ("Reciprocal", 6),
        ("Floor", 6),
        ("Ceil", 6),
        ("Sin", 7),
        ("Cos", 7),
    ] {
        v.push(unary(op, since));
    }
    for (op, since) in [("Add", 7), ("Sub", 7), ("Mul", 7), ("Div", 7)] {
        v.push(binary(op, since));
    }
    v.push(fpx_op(super::quant_matmul::OP_TYPE, 3..=8, super::quant_matmul::ATTRS, i::quant_matmul));
    v.push(fpx_op(super::quant_gather::OP_TYPE, 3..=3, super::quant_gather::ATTRS, super::quant_gather::infer));
    v.push(fpx_op(super::kv_append::OP_TYPE, 2..=MANY, super::kv_append::ATTRS, super::kv_append::infer));
    v.push(fpx_op(super::fused_attention::OP_TYPE, 3..=4, super::fused_attention::ATTRS, super::fused_attention::infer));
    v.push(fpx_op(super::rotate_half::OP_TYPE, 3..=3, super::rotate_half::ATTRS, super::rotate_half::infer));
    v.push(def("Pow", 7, (2, 2), (1, 1), &[], i::same_as_input_broadcast_base));
    for (op, since) in
        [("Equal", 7), ("Less", 7), ("LessOrEqual", 12), ("Greater", 7), ("GreaterOrEqual", 12), ("And", 7), ("Or", 7), ("Xor", 7)]
    {
        v.push(comparison(op, since));
    }
    v.extend(super::defs_indexing::indexing_defs());
    v.extend(super::defs_nn::nn_defs());
    v
}
