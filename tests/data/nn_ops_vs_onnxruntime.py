"""Builds small models that chain fpx's NN ops the way exported models use them, runs them with
onnxruntime, and writes, per model, DIR/<name>/model.onnx, in_<input>.npy and ort_<output>.npy.
Used by tests/nn_ops.rs; exits 3 when onnx or onnxruntime is missing (the test then skips)."""

import os
import sys

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh
except ImportError as e:
    print(f"missing module: {e}", file=sys.stderr)
    sys.exit(3)

out_dir = sys.argv[1]
rng = np.random.default_rng(1234)


def weight(name, *shape, scale=0.3):
    return nh.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def value(name, shape, elem=T.FLOAT):
    return h.make_tensor_value_info(name, elem, shape)


def save(name, nodes, inputs, outputs, inits, opset, feeds):
    graph = h.make_graph(nodes, name, inputs, [h.make_empty_tensor_value_info(o) for o in outputs], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = 10
    path = os.path.join(out_dir, name)
    os.makedirs(path)
    onnx.save(model, os.path.join(path, "model.onnx"))
    sess = ort.InferenceSession(os.path.join(path, "model.onnx"), providers=["CPUExecutionProvider"])
    for o, v in zip(outputs, sess.run(outputs, feeds)):
        np.save(os.path.join(path, f"ort_{o}.npy"), v)
    for k, v in feeds.items():
        np.save(os.path.join(path, f"in_{k}.npy"), v)


# ViT-style patch embedding (Conv with kernel = stride), then BatchNormalization and activations.
var = nh.from_array(np.abs(rng.standard_normal(32)).astype(np.float32) + 0.1, "var")
save(
    "vit_patch_embedding",
    [
        h.make_node("Conv", ["x", "w", "b"], ["c"], strides=[8, 8], kernel_shape=[8, 8]),
        h.make_node("BatchNormalization", ["c", "s", "bias", "mean", "var"], ["bn"], epsilon=1e-3),
        h.make_node("Mish", ["bn"], ["m"]),
        h.make_node("HardSigmoid", ["m"], ["hs"], alpha=0.3),
        h.make_node("Softplus", ["hs"], ["sp"]),
        h.make_node("LogSoftmax", ["sp"], ["y"], axis=1),
    ],
    [value("x", [2, 3, 64, 64])],
    ["y"],
    [weight("w", 32, 3, 8, 8), weight("b", 32), weight("s", 32), weight("bias", 32), weight("mean", 32), var],
    18,
    {"x": rng.standard_normal((2, 3, 64, 64)).astype(np.float32)},
)

# Whisper-style 1-D convolutional front end (kernel 3, pad 1, then stride 2), GroupNormalization-21,
# InstanceNormalization.
save(
    "whisper_conv_frontend",
    [
        h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1], kernel_shape=[3]),
        h.make_node("Conv", ["c1", "w2", "b2"], ["c2"], pads=[1, 1], strides=[2]),
        h.make_node("GroupNormalization", ["c2", "gs", "gb"], ["g"], num_groups=8, epsilon=1e-5),
        h.make_node("InstanceNormalization", ["g", "is", "ib"], ["y"]),
    ],
    [value("x", [1, 40, 400])],
    ["y"],
    [weight("w1", 64, 40, 3), weight("b1", 64), weight("w2", 64, 64, 3), weight("b2", 64)]
    + [weight("gs", 64), weight("gb", 64), weight("is", 64), weight("ib", 64)],
    21,
    {"x": rng.standard_normal((1, 40, 400)).astype(np.float32)},
)

# Grouped, dilated, strided 2-D convolutions with asymmetric pads and SAME_UPPER.
save(
    "grouped_dilated_conv",
    [
        h.make_node("Conv", ["x", "w", "b"], ["c"], group=3, dilations=[2, 1], strides=[1, 2], pads=[2, 1, 1, 2]),
        h.make_node("Conv", ["c", "w2"], ["y"], group=3, strides=[2, 1], auto_pad="SAME_UPPER"),
    ],
    [value("x", [2, 6, 13, 11])],
    ["y"],
    [weight("w", 9, 2, 3, 4), weight("b", 9), weight("w2", 3, 3, 2, 4)],
    11,
    {"x": rng.standard_normal((2, 6, 13, 11)).astype(np.float32)},
)

# A 3-D convolution (video/volumetric models): groups, dilation, strides and pads on three axes.
save(
    "conv3d",
    [h.make_node("Conv", ["x", "w", "b"], ["y"], group=2, dilations=[1, 2, 1], strides=[2, 1, 1], pads=[1, 0, 2, 0, 1, 1])],
    [value("x", [1, 4, 7, 8, 6])],
    ["y"],
    [weight("w", 6, 2, 3, 2, 3), weight("b", 6)],
    22,
    {"x": rng.standard_normal((1, 4, 7, 8, 6)).astype(np.float32)},
)

# An opset-23 LLaMA-style decoder step: RMSNormalization, projections, RotaryEmbedding (halves for
# Q, interleaved for K) with position ids, grouped-query Attention with a past cache and is_causal.
S, P, HQ, HKV, D = 12, 20, 8, 2, 16
inv = 1.0 / (10000 ** (np.arange(0, D, 2) / D))
angles = np.arange(64)[:, None] * inv[None]
save(
    "llama_decoder_attention",
    [
        h.make_node("RMSNormalization", ["x", "rs"], ["n"], epsilon=1e-6),
        h.make_node("MatMul", ["n", "wq"], ["q"]),
        h.make_node("MatMul", ["n", "wk"], ["k"]),
        h.make_node("MatMul", ["n", "wv"], ["v"]),
        h.make_node("RotaryEmbedding", ["q", "cos", "sin", "pos"], ["qr"], num_heads=HQ),
        h.make_node("RotaryEmbedding", ["k", "cos", "sin", "pos"], ["kr"], num_heads=HKV, interleaved=1),
        h.make_node(
            "Attention",
            ["qr", "kr", "v", "", "past_key", "past_value"],
            ["y", "present_key", "present_value"],
            q_num_heads=HQ,
            kv_num_heads=HKV,
            is_causal=1,
        ),
    ],
    [value("x", [2, S, 64]), value("pos", [2, S], T.INT64), value("past_key", [2, HKV, P, D]), value("past_value", [2, HKV, P, D])],
    ["y", "present_key", "present_value"],
    [weight("rs", 64), weight("wq", 64, HQ * D), weight("wk", 64, HKV * D), weight("wv", 64, HKV * D)]
    + [nh.from_array(np.cos(angles).astype(np.float32), "cos"), nh.from_array(np.sin(angles).astype(np.float32), "sin")],
    23,
    {
        "x": rng.standard_normal((2, S, 64)).astype(np.float32),
        "pos": np.stack([np.arange(P, P + S), np.arange(3, 3 + S)]).astype(np.int64),
        "past_key": rng.standard_normal((2, HKV, P, D)).astype(np.float32),
        "past_value": rng.standard_normal((2, HKV, P, D)).astype(np.float32),
    },
)
