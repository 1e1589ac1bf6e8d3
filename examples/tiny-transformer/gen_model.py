#!/usr/bin/env python3
"""Generates fpx's bundled demo model: a tiny 2-layer transformer encoder in ONNX.

    .venv/bin/python examples/tiny-transformer/gen_model.py [--seed 20261123] [--out DIR]

Writes into DIR (default: this script's folder):
  model.onnx       the model (opset 20, IR version 9, weights inline)
  input.npy        float32 [2, 7, 64], the demo input for graph input `input`
  ref_output.npy   onnxruntime (CPU, FP32, graph optimizations off) output `output` for input.npy

Everything comes from one numpy Generator, `default_rng(seed)`: first the weights, in the
order the graph is built, then the input. Same seed and same numpy -> same files.
Needs numpy, onnx==1.22.0 and onnxruntime==1.31.1 (scripts/setup.sh installs them into .venv).
"""

import argparse
import math
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

D_MODEL = 64
N_HEADS = 4
D_HEAD = D_MODEL // N_HEADS
D_FF = 256
N_LAYERS = 2
LN_EPS = 1e-5
OPSET = 20  # Gelu is a default-domain op since opset 20
IR_VERSION = 9
INPUT_SHAPE = (2, 7, D_MODEL)
ORT_VERSION = "1.31.1"


class Builder:
    """Collects nodes and initializers; every weight is drawn from the one Generator."""

    def __init__(self, rng):
        self.rng = rng
        self.nodes = []
        self.inits = []
        self.count = 0

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name, shape, std):
        return self.const(name, (self.rng.standard_normal(shape) * std).astype(np.float32))

    def node(self, op, inputs, name, n_out=1, **attrs):
        outs = [name] if n_out == 1 else [f"{name}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def layer_norm(self, x, prefix):
        scale = self.const(
            f"{prefix}.weight",
            (1.0 + 0.1 * self.rng.standard_normal(D_MODEL)).astype(np.float32),
        )
        bias = self.weight(f"{prefix}.bias", (D_MODEL,), 0.05)
        return self.node(
            "LayerNormalization", [x, scale, bias], prefix, axis=-1, epsilon=LN_EPS
        )

    def linear(self, x, prefix, k, n, std):
        """MatMul with a constant [K, N] weight, then Add of a constant [N] bias."""
        w = self.weight(f"{prefix}.weight", (k, n), std)
        b = self.weight(f"{prefix}.bias", (n,), 0.02)
        y = self.node("MatMul", [x, w], f"{prefix}.matmul")
        return self.node("Add", [y, b], f"{prefix}.add")


def encoder_layer(g, x, i):
    p = f"layer{i}"
    h = g.layer_norm(x, f"{p}.ln1")

    heads_shape = g.const(f"{p}.attn.heads_shape", np.array([0, 0, N_HEADS, D_HEAD], np.int64))
    merged_shape = g.const(f"{p}.attn.merged_shape", np.array([0, 0, D_MODEL], np.int64))

    def project(kind, perm):
        y = g.linear(h, f"{p}.attn.{kind}", D_MODEL, D_MODEL, 0.08)
        y = g.node("Reshape", [y, heads_shape], f"{p}.attn.{kind}.split_heads")
        return g.node("Transpose", [y], f"{p}.attn.{kind}.transpose", perm=perm)

    q = project("q", [0, 2, 1, 3])  # [b, h, s, d]
    k = project("k", [0, 2, 3, 1])  # [b, h, d, s]  (K transposed)
    v = project("v", [0, 2, 1, 3])  # [b, h, s, d]

    scores = g.node("MatMul", [q, k], f"{p}.attn.scores")  # activation x activation
    inv_sqrt_d = g.const(f"{p}.attn.scale", np.array(1.0 / math.sqrt(D_HEAD), np.float32))
    scores = g.node("Mul", [scores, inv_sqrt_d], f"{p}.attn.scaled")
    probs = g.node("Softmax", [scores], f"{p}.attn.softmax", axis=-1)
    ctx = g.node("MatMul", [probs, v], f"{p}.attn.context")  # [b, h, s, d]
    ctx = g.node("Transpose", [ctx], f"{p}.attn.context.transpose", perm=[0, 2, 1, 3])
    ctx = g.node("Reshape", [ctx, merged_shape], f"{p}.attn.merge_heads")
    attn = g.linear(ctx, f"{p}.attn.out", D_MODEL, D_MODEL, 0.08)
    x = g.node("Add", [x, attn], f"{p}.attn.residual")

    h = g.layer_norm(x, f"{p}.ln2")
    h = g.linear(h, f"{p}.ffn.up", D_MODEL, D_FF, 0.08)
    h = g.node("Gelu", [h], f"{p}.ffn.gelu")
    h = g.linear(h, f"{p}.ffn.down", D_FF, D_MODEL, 0.05)
    return g.node("Add", [x, h], f"{p}.ffn.residual")


def build_model(seed):
    rng = np.random.default_rng(seed)
    g = Builder(rng)

    x = "input"
    for i in range(N_LAYERS):
        x = encoder_layer(g, x, i)

    # Final projection as a Gemm with transB=1 (weight stored [N, K], as PyTorch's Linear):
    # Flatten [b, s, 64] -> [b*s, 64], Gemm, then Reshape back to the input's own shape.
    flat = g.node("Flatten", [x], "proj.flatten", axis=2)
    w = g.weight("proj.weight", (D_MODEL, D_MODEL), 0.08)
    b = g.weight("proj.bias", (D_MODEL,), 0.02)
    y = g.node("Gemm", [flat, w, b], "proj.gemm", transB=1)
    in_shape = g.node("Shape", ["input"], "proj.input_shape")
    y = g.node("Reshape", [y, in_shape], "proj.unflatten")

    # Final LayerNormalization writes the graph output `output`.
    scale = g.const("ln_f.weight", (1.0 + 0.1 * rng.standard_normal(D_MODEL)).astype(np.float32))
    bias = g.weight("ln_f.bias", (D_MODEL,), 0.05)
    g.nodes.append(
        helper.make_node(
            "LayerNormalization", [y, scale, bias], ["output"], name="ln_f", axis=-1, epsilon=LN_EPS
        )
    )

    dims = ["batch", "seq", D_MODEL]
    graph = helper.make_graph(
        g.nodes,
        "tiny_transformer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, dims)],
        initializer=g.inits,
        doc_string=(
            f"fpx demo: {N_LAYERS}-layer pre-LN transformer encoder, d_model {D_MODEL}, "
            f"{N_HEADS} heads, FFN {D_FF}, GELU; seed {seed}"
        ),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="fpx examples/tiny-transformer/gen_model.py",
        producer_version="1",
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)

    inp = rng.standard_normal(INPUT_SHAPE).astype(np.float32)
    return model, inp


def run_onnxruntime(model_path, inp):
    import onnxruntime as ort

    if ort.__version__ != ORT_VERSION:
        print(
            f"warning: onnxruntime {ort.__version__}, the committed reference is from {ORT_VERSION}",
            file=sys.stderr,
        )
    opts = ort.SessionOptions()
    # Op-by-op semantics (no fused kernels), deterministic threading.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    (out,) = sess.run(["output"], {"input": inp})
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--out", default=here, help="output folder (default: this script's folder)")
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    model, inp = build_model(args.seed)
    model_path = os.path.join(args.out, "model.onnx")
    onnx.save_model(model, model_path)
    np.save(os.path.join(args.out, "input.npy"), inp)
    out = run_onnxruntime(model_path, inp)
    assert out.shape == INPUT_SHAPE and out.dtype == np.float32, (out.shape, out.dtype)
    assert np.isfinite(out).all()
    np.save(os.path.join(args.out, "ref_output.npy"), out)

    ops = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(
        f"wrote {model_path} ({os.path.getsize(model_path)} bytes, {len(model.graph.node)} nodes, "
        f"{n_params} constants), input.npy {inp.shape}, ref_output.npy {out.shape}"
    )
    print("ops: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
