//! Schemas of the neural-network ops exported transformer and vision models use beyond the
//! core set: activations (Softplus, HardSigmoid, Mish), LogSoftmax, the normalizations
//! (BatchNormalization, InstanceNormalization, GroupNormalization, RMSNormalization), Conv, and
//! opset 23's Attention and RotaryEmbedding. Their inference functions are in `infer_nn`.

use super::defs::def;
use super::infer_nn as i;
use super::OpDef;
use crate::AttrKind::*;

/// The neural-network op schemas. Opsets before 6 (with `consumed_inputs`) are not supported,
/// as for the core ops; where an op changed later, every form from its first supported opset
/// on is (the inference functions check which attributes and inputs each opset allows).
pub fn nn_defs() -> Vec<OpDef> {
    vec![
        def("Softplus", 1, (1, 1), (1, 1), &[], i::float_unary),
        def("HardSigmoid", 6, (1, 1), (1, 1), &[opt!("alpha", Float), opt!("beta", Float)], i::float_unary),
        def("Mish", 18, (1, 1), (1, 1), &[], i::float_unary),
        def("LogSoftmax", 1, (1, 1), (1, 1), &[opt!("axis", Int)], i::log_softmax),
        def(
            "BatchNormalization",
            6,
            (5, 5),
            (1, 5),
            &[opt!("epsilon", Float), opt!("momentum", Float), opt!("training_mode", Int), opt!("spatial", Int), opt!("is_test", Int)],
            i::batch_norm,
        ),
        def("InstanceNormalization", 6, (3, 3), (1, 1), &[opt!("epsilon", Float)], i::instance_norm),
        def(
            "GroupNormalization",
            18,
            (3, 3),
            (1, 1),
            &[opt!("epsilon", Float), req!("num_groups", Int), opt!("stash_type", Int)],
            i::group_norm,
        ),
        def(
            "Conv",
            1,
            (2, 3),
            (1, 1),
            &[
                opt!("auto_pad", String),
                opt!("dilations", Ints),
                opt!("group", Int),
                opt!("kernel_shape", Ints),
                opt!("pads", Ints),
                opt!("strides", Ints),
            ],
            i::conv,
        ),
        def(
            "Attention",
            23,
            (3, 7),
            (1, 4),
            &[
                opt!("is_causal", Int),
                opt!("kv_num_heads", Int),
                opt!("q_num_heads", Int),
                opt!("qk_matmul_output_mode", Int),
                opt!("scale", Float),
                opt!("softcap", Float),
                opt!("softmax_precision", Int),
            ],
            i::attention,
        ),
        def("RMSNormalization", 23, (2, 2), (1, 1), &[opt!("axis", Int), opt!("epsilon", Float), opt!("stash_type", Int)], i::rms_norm),
        def(
            "RotaryEmbedding",
            23,
            (3, 4),
            (1, 1),
            &[opt!("interleaved", Int), opt!("num_heads", Int), opt!("rotary_embedding_dim", Int)],
            i::rotary_embedding,
        ),
    ]
}
