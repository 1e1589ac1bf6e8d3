"""A LLaMA-shaped decoder with a KV cache, written as ONNX with numpy and onnx only (no torch).

The graph follows what the TorchScript exporter (torch.onnx.export, opset 17) writes for a
transformers LlamaForCausalLM with `use_cache=True`, in optimum's signature:

  inputs   input_ids [batch, sequence] int64, attention_mask [batch, total_sequence] int64,
           position_ids [batch, sequence] int64,
           past_key_values.N.key / .value [batch, kv_heads, past_sequence, head_dim] float32
  outputs  logits [batch, sequence, vocab] float32,
           present.N.key / .value [batch, kv_heads, total_sequence, head_dim] float32

Per layer: RMSNorm (Pow, ReduceMean, Add, Sqrt, Div, Mul, Mul by the weight), q/k/v MatMuls,
Reshape + Transpose to heads, RoPE (Cos/Sin of position_ids × inverse frequencies, rotate_half with
Slice/Neg/Concat), the cache Concat, GQA repeat_kv (Unsqueeze, Expand, Reshape), scores scaled on both
sides by head_dim^-1/4 as SDPA's export does, the causal + padding mask as an additive bias (Where of
finfo.min), Softmax, the o_proj MatMul and residual Add, then RMSNorm and the SiLU-gated MLP (Sigmoid,
Mul). Shapes are read at run time with Shape/Gather/Unsqueeze/Concat, as the exporter writes them.

Weights are random normal with std 0.02 (LLaMA's initializer_range), norm weights 1 + N(0, 0.05²),
from a fixed seed, so the logits are spread out (not degenerate) and runs are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
INT64_MAX = np.iinfo(np.int64).max
F32_MIN = float(np.finfo(np.float32).min)


@dataclass(frozen=True)
class LlamaConfig:
    """The dimensions of the generated decoder."""

    layers: int = 2
    hidden: int = 2048
    intermediate: int = 5632
    heads: int = 16
    kv_heads: int = 4
    head_dim: int = 128
    vocab: int = 8192
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    init_std: float = 0.02

    def tag(self) -> str:
        """A file-name part that names every dimension."""
        return (f"L{self.layers}_h{self.hidden}_i{self.intermediate}_a{self.heads}_kv{self.kv_heads}"
                f"_d{self.head_dim}_v{self.vocab}")

    def matmul_weights(self) -> list[tuple[str, int, int]]:
        """(name, K, N) of every weight MatMul, in graph order: what a decode step streams."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        out = []
        for layer in range(self.layers):
            p = f"model.layers.{layer}"
            out += [(f"{p}.self_attn.q_proj", h, q), (f"{p}.self_attn.k_proj", h, kv), (f"{p}.self_attn.v_proj", h, kv),
                    (f"{p}.self_attn.o_proj", q, h), (f"{p}.mlp.gate_proj", h, i), (f"{p}.mlp.up_proj", h, i),
                    (f"{p}.mlp.down_proj", i, h)]
        out.append(("lm_head", h, self.vocab))
        return out

    def parameters(self) -> int:
        """Parameter count (weight MatMuls, the embedding table and the norm weights)."""
        return (sum(k * n for _, k, n in self.matmul_weights()) + self.vocab * self.hidden
                + (2 * self.layers + 1) * self.hidden)


class _Builder:
    """Nodes, initializers and constants of one graph, with exporter-style names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count: dict[str, int] = {}

    def op(self, op_type: str, inputs: list[str], scope: str, **attrs) -> str:
        n = self.count.get(scope + op_type, 0)
        self.count[scope + op_type] = n + 1
        name = f"{scope}/{op_type}" + (f"_{n}" if n else "")
        out = f"{name}_output_0"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def const(self, value, scope: str, dtype=np.int64) -> str:
        """A Constant node (the exporter's way of writing literals)."""
        arr = np.array(value, dtype=dtype)
        n = self.count.get(scope + "Constant", 0)
        self.count[scope + "Constant"] = n + 1
        name = f"{scope}/Constant" + (f"_{n}" if n else "")
        out = f"{name}_output_0"
        self.nodes.append(helper.make_node("Constant", [], [out], name=name,
                                           value=numpy_helper.from_array(arr, name="")))
        return out

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def dim(self, tensor: str, axis: int, scope: str) -> str:
        """Shape(tensor)[axis] as a scalar int64, then Unsqueeze'd to [1] for a Concat."""
        shape = self.op("Shape", [tensor], scope)
        g = self.op("Gather", [shape, self.const(axis, scope)], scope, axis=0)
        return g

    def vec(self, scalar: str, scope: str) -> str:
        return self.op("Unsqueeze", [scalar, self.const([0], scope)], scope)


def _rms_norm(b: _Builder, x: str, weight: str, eps: float, scope: str) -> str:
    sq = b.op("Pow", [x, b.const(2.0, scope, np.float32)], scope)
    mean = b.op("ReduceMean", [sq], scope, axes=[-1], keepdims=1)
    var = b.op("Add", [mean, b.const(eps, scope, np.float32)], scope)
    root = b.op("Sqrt", [var], scope)
    inv = b.op("Div", [b.const(1.0, scope, np.float32), root], scope)
    normed = b.op("Mul", [x, inv], scope)
    return b.op("Mul", [weight, normed], scope)


def _rotate(b: _Builder, x: str, cos: str, sin: str, half: int, scope: str) -> str:
    """x·cos + rotate_half(x)·sin, rotate_half(x) = concat(-x[..., half:], x[..., :half])."""
    x_cos = b.op("Mul", [x, cos], scope)
    axes = b.const([3], scope)
    steps = b.const([1], scope)
    x1 = b.op("Slice", [x, b.const([0], scope), b.const([half], scope), axes, steps], scope)
    x2 = b.op("Slice", [x, b.const([half], scope), b.const([INT64_MAX], scope), axes, steps], scope)
    rot = b.op("Concat", [b.op("Neg", [x2], scope), x1], scope, axis=-1)
    return b.op("Add", [x_cos, b.op("Mul", [rot, sin], scope)], scope)


def _heads(b: _Builder, x: str, batch: str, seq: str, head_dim: int, scope: str) -> str:
    """[B, S, n·d] -> [B, n, S, d]."""
    shape = b.op("Concat", [batch, seq, b.const([-1], scope), b.const([head_dim], scope)], scope, axis=0)
    return b.op("Transpose", [b.op("Reshape", [x, shape], scope)], scope, perm=[0, 2, 1, 3])


def _repeat_kv(b: _Builder, x: str, groups: int, scope: str) -> str:
    """[B, kv, T, d] -> [B, kv·groups, T, d] (transformers' repeat_kv: expand a new axis 2, reshape)."""
    dims = [b.vec(b.dim(x, a, scope), scope) for a in range(4)]
    expanded = b.op("Expand", [b.op("Unsqueeze", [x, b.const([2], scope)], scope),
                               b.op("Concat", [dims[0], dims[1], b.const([groups], scope), dims[2], dims[3]], scope,
                                    axis=0)], scope)
    heads = b.op("Mul", [dims[1], b.const([groups], scope)], scope)
    return b.op("Reshape", [expanded, b.op("Concat", [dims[0], heads, dims[2], dims[3]], scope, axis=0)], scope)


def build_llama(cfg: LlamaConfig, seed: int) -> onnx.ModelProto:
    """The decoder with random weights from `seed` (see the module doc)."""
    rng = np.random.default_rng(seed)
    b = _Builder()
    h, d, half = cfg.hidden, cfg.head_dim, cfg.head_dim // 2
    groups = cfg.heads // cfg.kv_heads

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(cfg.init_std)).astype(np.float32)

    def norm_weight() -> np.ndarray:
        return (1.0 + 0.05 * rng.standard_normal(h)).astype(np.float32)

    top = "/model"
    embed = b.init("model.embed_tokens.weight", normal(cfg.vocab, h))
    x = b.op("Gather", [embed, "input_ids"], top + "/embed_tokens")
    batch = b.vec(b.dim("input_ids", 0, top), top)
    seq_scalar = b.dim("input_ids", 1, top)
    seq = b.vec(seq_scalar, top)
    total_scalar = b.dim("attention_mask", 1, top)
    past_scalar = b.op("Sub", [total_scalar, seq_scalar], top)

    # Additive attention bias [B, 1, S, T]: key j is visible to query i (at position past + i)
    # when j <= past + i and attention_mask[b, j] is 1.
    one = b.const(1, top)
    q_pos = b.op("Range", [past_scalar, total_scalar, one], top)
    k_pos = b.op("Range", [b.const(0, top), total_scalar, one], top)
    causal = b.op("LessOrEqual", [b.op("Unsqueeze", [k_pos, b.const([0], top)], top),
                                  b.op("Unsqueeze", [q_pos, b.const([1], top)], top)], top)
    pad = b.op("Unsqueeze", [b.op("Cast", ["attention_mask"], top, to=TensorProto.BOOL), b.const([1, 2], top)], top)
    allowed = b.op("And", [causal, pad], top)
    bias = b.op("Where", [allowed, b.const(0.0, top, np.float32), b.const(F32_MIN, top, np.float32)], top)

    # RoPE tables [B, 1, S, d].
    rs = top + "/rotary_emb"
    inv_freq = (1.0 / cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d)).astype(np.float32)
    pos = b.op("Cast", [b.op("Unsqueeze", ["position_ids", b.const([2], rs)], rs)], rs, to=TensorProto.FLOAT)
    freqs = b.op("Mul", [pos, b.const(inv_freq, rs, np.float32)], rs)
    angles = b.op("Concat", [freqs, freqs], rs, axis=-1)
    cos = b.op("Unsqueeze", [b.op("Cos", [angles], rs), b.const([1], rs)], rs)
    sin = b.op("Unsqueeze", [b.op("Sin", [angles], rs), b.const([1], rs)], rs)

    qk_scale = np.float32(d ** -0.25)
    for layer in range(cfg.layers):
        p = f"model.layers.{layer}"
        s = f"{top}/layers.{layer}"
        a = s + "/self_attn"
        hn = _rms_norm(b, x, b.init(f"{p}.input_layernorm.weight", norm_weight()), cfg.rms_eps, s + "/input_layernorm")
        q = b.op("MatMul", [hn, b.init(f"{p}.self_attn.q_proj.weight", normal(h, cfg.heads * d))], a + "/q_proj")
        k = b.op("MatMul", [hn, b.init(f"{p}.self_attn.k_proj.weight", normal(h, cfg.kv_heads * d))], a + "/k_proj")
        v = b.op("MatMul", [hn, b.init(f"{p}.self_attn.v_proj.weight", normal(h, cfg.kv_heads * d))], a + "/v_proj")
        q = _rotate(b, _heads(b, q, batch, seq, d, a), cos, sin, half, a)
        k = _rotate(b, _heads(b, k, batch, seq, d, a), cos, sin, half, a)
        v = _heads(b, v, batch, seq, d, a)
        present_k, present_v = f"present.{layer}.key", f"present.{layer}.value"
        b.nodes.append(helper.make_node("Concat", [f"past_key_values.{layer}.key", k], [present_k],
                                        name=f"{a}/Concat_key", axis=-2))
        b.nodes.append(helper.make_node("Concat", [f"past_key_values.{layer}.value", v], [present_v],
                                        name=f"{a}/Concat_value", axis=-2))
        k_all = _repeat_kv(b, present_k, groups, a)
        v_all = _repeat_kv(b, present_v, groups, a)
        scale = b.const(qk_scale, a, np.float32)
        scores = b.op("MatMul", [b.op("Mul", [q, scale], a),
                                 b.op("Mul", [b.op("Transpose", [k_all], a, perm=[0, 1, 3, 2]), scale], a)], a)
        probs = b.op("Softmax", [b.op("Add", [scores, bias], a)], a, axis=-1)
        ctx = b.op("Transpose", [b.op("MatMul", [probs, v_all], a)], a, perm=[0, 2, 1, 3])
        ctx = b.op("Reshape", [ctx, b.op("Concat", [batch, seq, b.const([-1], a)], a, axis=0)], a)
        attn = b.op("MatMul", [ctx, b.init(f"{p}.self_attn.o_proj.weight", normal(cfg.heads * d, h))], a + "/o_proj")
        x = b.op("Add", [x, attn], s)

        m = s + "/mlp"
        hn = _rms_norm(b, x, b.init(f"{p}.post_attention_layernorm.weight", norm_weight()), cfg.rms_eps,
                       s + "/post_attention_layernorm")
        gate = b.op("MatMul", [hn, b.init(f"{p}.mlp.gate_proj.weight", normal(h, cfg.intermediate))], m + "/gate_proj")
        act = b.op("Mul", [gate, b.op("Sigmoid", [gate], m + "/act_fn")], m + "/act_fn")
        up = b.op("MatMul", [hn, b.init(f"{p}.mlp.up_proj.weight", normal(h, cfg.intermediate))], m + "/up_proj")
        down = b.op("MatMul", [b.op("Mul", [act, up], m),
                               b.init(f"{p}.mlp.down_proj.weight", normal(cfg.intermediate, h))], m + "/down_proj")
        x = b.op("Add", [x, down], s)

    x = _rms_norm(b, x, b.init("model.norm.weight", norm_weight()), cfg.rms_eps, top + "/norm")
    b.nodes.append(helper.make_node("MatMul", [x, b.init("lm_head.weight", normal(h, cfg.vocab))], ["logits"],
                                    name="/lm_head/MatMul"))

    cache_in = ["batch", cfg.kv_heads, "past_sequence", d]
    cache_out = ["batch", cfg.kv_heads, "total_sequence", d]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", cfg.vocab])]
    for layer in range(cfg.layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{layer}.{kind}", TensorProto.FLOAT, cache_in))
            outputs.append(helper.make_tensor_value_info(f"present.{layer}.{kind}", TensorProto.FLOAT, cache_out))
    graph = helper.make_graph(b.nodes, "llama_decoder_kv", inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fpx-bench")
    model.ir_version = 8
    return model


def decode_inputs(cfg: LlamaConfig, past: int, new_tokens: int, seed: int) -> dict[str, np.ndarray]:
    """One step's feed at batch 1: `new_tokens` token ids after `past` cached positions (a decode
    step when 1, a prefill when past is 0), mask of ones, positions past..past+new-1, and random
    cache tensors [1, kv_heads, past, head_dim] with the spread of real keys and values."""
    rng = np.random.default_rng([seed, past, new_tokens])
    feed = {
        "input_ids": rng.integers(0, cfg.vocab, size=(1, new_tokens), dtype=np.int64),
        "attention_mask": np.ones((1, past + new_tokens), dtype=np.int64),
        "position_ids": np.arange(past, past + new_tokens, dtype=np.int64)[None, :],
    }
    for layer in range(cfg.layers):
        for kind in ("key", "value"):
            feed[f"past_key_values.{layer}.{kind}"] = rng.standard_normal(
                (1, cfg.kv_heads, past, cfg.head_dim), dtype=np.float32)
    return feed


def save(model: onnx.ModelProto, path: Path) -> None:
    """Checks the model and writes it (to a temporary name, then renamed)."""
    import os

    onnx.checker.check_model(model)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


def reference_logits(model: onnx.ModelProto, cfg: LlamaConfig, feed: dict[str, np.ndarray]) -> np.ndarray:
    """The decoder's logits computed directly in float64 numpy from the model's weights (an
    oracle independent of the graph: `python -m bench.llm_model` compares onnxruntime with it)."""
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    d, half, groups = cfg.head_dim, cfg.head_dim // 2, cfg.heads // cfg.kv_heads
    ids, mask, pos = feed["input_ids"], feed["attention_mask"], feed["position_ids"]
    bsz, s = ids.shape
    t = mask.shape[1]

    def rms(x, g):
        return g * x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.rms_eps)

    inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, d, 2) / d)
    ang = pos[..., None].astype(np.float64) * inv_freq
    ang = np.concatenate([ang, ang], -1)[:, None]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(x):
        return x * cos + np.concatenate([-x[..., half:], x[..., :half]], -1) * sin

    visible = (np.arange(t)[None, :] <= (t - s + np.arange(s))[:, None])[None, None] & (mask[:, None, None, :] != 0)
    x = w["model.embed_tokens.weight"][ids]
    for layer in range(cfg.layers):
        p = f"model.layers.{layer}"
        hn = rms(x, w[f"{p}.input_layernorm.weight"])

        def heads(y):
            return y.reshape(bsz, s, -1, d).transpose(0, 2, 1, 3)

        q = rope(heads(hn @ w[f"{p}.self_attn.q_proj.weight"]))
        k = rope(heads(hn @ w[f"{p}.self_attn.k_proj.weight"]))
        v = heads(hn @ w[f"{p}.self_attn.v_proj.weight"])
        k = np.repeat(np.concatenate([feed[f"past_key_values.{layer}.key"], k], 2), groups, axis=1)
        v = np.repeat(np.concatenate([feed[f"past_key_values.{layer}.value"], v], 2), groups, axis=1)
        sc = np.where(visible, q @ k.transpose(0, 1, 3, 2) / np.sqrt(d), -np.inf)
        pr = np.exp(sc - sc.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        ctx = (pr @ v).transpose(0, 2, 1, 3).reshape(bsz, s, -1)
        x = x + ctx @ w[f"{p}.self_attn.o_proj.weight"]
        hn = rms(x, w[f"{p}.post_attention_layernorm.weight"])
        g = hn @ w[f"{p}.mlp.gate_proj.weight"]
        x = x + (g / (1 + np.exp(-g)) * (hn @ w[f"{p}.mlp.up_proj.weight"])) @ w[f"{p}.mlp.down_proj.weight"]
    return rms(x, w["model.norm.weight"]) @ w["lm_head.weight"]


if __name__ == "__main__":
    # Self-check on a small config: onnxruntime runs the graph and matches the float64 reference,
    # for a prefill and a decode step with a cache and left padding.
    import onnxruntime as ort

    small = LlamaConfig(layers=2, hidden=64, intermediate=96, heads=4, kv_heads=2, head_dim=16, vocab=50)
    mdl = build_llama(small, seed=3)
    onnx.checker.check_model(mdl)
    sess = ort.InferenceSession(mdl.SerializeToString(), providers=["CPUExecutionProvider"])
    for past, new in ((0, 5), (7, 1), (7, 3)):
        f = decode_inputs(small, past, new, seed=1)
        if past:
            f["attention_mask"][0, :2] = 0  # left padding: the first two cached keys are hidden
        got = sess.run(["logits"], f)[0]
        want = reference_logits(mdl, small, f)
        err = np.abs(got - want).max() / np.abs(want).max()
        print(f"past {past}, new {new}: relative max error {err:.2e}, logits std {want.std():.3f}")
        assert err < 1e-5, err
    print("ok")
