//! Schemas of the indexing, data-movement and integer/elementwise ops: Split, GatherND,
//! GatherElements, ScatterND, ScatterElements, Tile, Trilu, ArgMax, ArgMin, TopK, Einsum,
//! Dropout, IsNaN, IsInf, Sign and Mod — each from the first opset whose form fpx reads up to
//! [`super::MAX_ONNX_OPSET`]. Where a signature changed across opsets (Split's `split` attribute
//! becoming an input at 13 and `num_outputs` at 18, Dropout's `ratio` and `training_mode`
//! inputs at 12, TopK's `k` input at 10, Tile's opset-1 `tiles`/`axis` inputs), the schema
//! accepts every form and the inference function and kernel read the node's opset.

use super::defs::{def, MANY};
use super::infer_indexing as ix;
use super::{AttrSpec, OpDef};
use crate::AttrKind::*;

const ARG_REDUCE_ATTRS: &[AttrSpec] = &[opt!("axis", Int), opt!("keepdims", Int), opt!("select_last_index", Int)];

/// The schemas, appended to the standard registry by [`super::defs::standard_defs`].
pub fn indexing_defs() -> Vec<OpDef> {
    vec![
        def("Split", 1, (1, 2), (1, MANY), &[opt!("axis", Int), opt!("split", Ints), opt!("num_outputs", Int)], ix::split),
        def("GatherElements", 11, (2, 2), (1, 1), &[opt!("axis", Int)], ix::gather_elements),
        def("GatherND", 11, (2, 2), (1, 1), &[opt!("batch_dims", Int)], ix::gather_nd),
        def("ScatterElements", 11, (3, 3), (1, 1), &[opt!("axis", Int), opt!("reduction", String)], ix::scatter),
        def("ScatterND", 11, (3, 3), (1, 1), &[opt!("reduction", String)], ix::scatter),
        def("Tile", 1, (2, 3), (1, 1), &[], ix::tile),
        def("Trilu", 14, (1, 2), (1, 1), &[opt!("upper", Int)], ix::trilu),
        def("ArgMax", 1, (1, 1), (1, 1), ARG_REDUCE_ATTRS, ix::arg_reduce),
        def("ArgMin", 1, (1, 1), (1, 1), ARG_REDUCE_ATTRS, ix::arg_reduce),
        def("TopK", 1, (1, 2), (2, 2), &[opt!("axis", Int), opt!("k", Int), opt!("largest", Int), opt!("sorted", Int)], ix::top_k),
        def("Einsum", 12, (1, MANY), (1, 1), &[AttrSpec { name: "equation", kind: String, required: true }], ix::einsum),
        def("Dropout", 6, (1, 3), (1, 2), &[opt!("ratio", Float), opt!("is_test", Int), opt!("seed", Int)], ix::dropout),
        def("IsNaN", 9, (1, 1), (1, 1), &[], ix::float_predicate),
        def("IsInf", 10, (1, 1), (1, 1), &[opt!("detect_negative", Int), opt!("detect_positive", Int)], ix::float_predicate),
        def("Sign", 9, (1, 1), (1, 1), &[], ix::sign),
        def("Mod", 10, (2, 2), (1, 1), &[opt!("fmod", Int)], ix::modulo),
    ]
}
