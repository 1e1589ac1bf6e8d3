#!/usr/bin/env python3
"""Builds the model zoo under tests/data/zoo: tiny random-weight transformers exported the way users
export them (torch.onnx.export with the TorchScript exporter and the dynamo exporter), with input
sets and onnxruntime's outputs as the reference. See scripts/zoo/README.md.

    .venv-dev/bin/python scripts/zoo/generate.py                 # every fixture
    .venv-dev/bin/python scripts/zoo/generate.py --only llama    # fixtures whose name starts so

Every model is built from a `transformers` config class with fixed seeds (hidden 64, 2 layers, 4 heads
(2 KV heads in GQA families), intermediate 128, vocabulary 256, 128 positions) and exported

  * `<family>-torchscript[-kv]`: TorchScript exporter (dynamo=False), opset 17, dynamic axes;
  * `<family>-dynamo[-kv]`: dynamo exporter (dynamo=True), opset 18, dynamic shapes;
  * `llama-dynamo23[-kv]`: dynamo exporter at opset 23 (Attention, RMSNormalization, RotaryEmbedding).

`-kv` forms (decoders) take input_ids, attention_mask, position_ids (where the family takes it)
and past_key_values.N.key/.value and return logits and present.N.key/.value, as optimum names them.
Decoders come only in that form unless --plain-decoders (input_ids, attention_mask -> logits).
An export that fails is recorded in tests/data/zoo/manifest.json ("export_failures") instead of a
fixture folder. Each fixture folder holds model.onnx (weights inline), manifest.json and one folder
per input set with `input.<name>.npy` and onnxruntime's `ref.<name>.npy`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import shutil
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers
from torch.export import Dim
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    BloomConfig,
    DistilBertConfig,
    DistilBertModel,
    DynamicCache,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    Qwen2Config,
    MPNetConfig,
    MPNetModel,
    RobertaConfig,
    RobertaModel,
    T5Config,
    T5EncoderModel,
    ViTConfig,
    ViTModel,
)

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "data" / "zoo"
SEED = 1234
HIDDEN, LAYERS, HEADS, KV_HEADS, INTER, VOCAB, POSITIONS = 64, 2, 4, 2, 128, 256, 128
PAD_ID = 0


@dataclass
class Family:
    """A model family: how to build it and what it takes."""

    name: str
    kind: str  # "decoder", "encoder" or "vision"
    build: Callable[[], torch.nn.Module]
    position_ids: bool = False  # the KV form takes position_ids
    token_type_ids: bool = False  # the encoder takes token_type_ids


def causal_lm(config) -> torch.nn.Module:
    return AutoModelForCausalLM.from_config(config)


def rope(cls, **extra):
    return cls(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=POSITIONS,
        initializer_range=0.1,
        pad_token_id=PAD_ID,
        bos_token_id=1,
        eos_token_id=2,
        **extra,
    )


FAMILIES = [
    Family(
        "gpt2",
        "decoder",
        lambda: causal_lm(
            GPT2Config(
                vocab_size=VOCAB, n_positions=POSITIONS, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=INTER, initializer_range=0.1
            )
        ),
        position_ids=True,
    ),
    Family("llama", "decoder", lambda: causal_lm(rope(LlamaConfig)), position_ids=True),
    Family("qwen2", "decoder", lambda: causal_lm(rope(Qwen2Config)), position_ids=True),
    Family("mistral", "decoder", lambda: causal_lm(rope(MistralConfig)), position_ids=True),
    Family("phi3", "decoder", lambda: causal_lm(rope(Phi3Config)), position_ids=True),
    Family("gemma", "decoder", lambda: causal_lm(rope(GemmaConfig, head_dim=HIDDEN // HEADS)), position_ids=True),
    Family(
        "opt",
        "decoder",
        lambda: causal_lm(
            OPTConfig(
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                num_hidden_layers=LAYERS,
                ffn_dim=INTER,
                num_attention_heads=HEADS,
                max_position_embeddings=POSITIONS,
                word_embed_proj_dim=HIDDEN,
                init_std=0.1,
                pad_token_id=PAD_ID,
            )
        ),
        position_ids=True,
    ),
    Family(
        "gpt-neox",
        "decoder",
        lambda: causal_lm(
            GPTNeoXConfig(
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                num_hidden_layers=LAYERS,
                num_attention_heads=HEADS,
                intermediate_size=INTER,
                max_position_embeddings=POSITIONS,
                initializer_range=0.1,
                pad_token_id=PAD_ID,
            )
        ),
        position_ids=True,
    ),
    Family(
        "bloom",
        "decoder",
        lambda: causal_lm(BloomConfig(vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS, initializer_range=0.1, pad_token_id=PAD_ID)),
    ),
    Family(
        "bert",
        "encoder",
        lambda: BertModel(
            BertConfig(
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                num_hidden_layers=LAYERS,
                num_attention_heads=HEADS,
                intermediate_size=INTER,
                max_position_embeddings=POSITIONS,
                initializer_range=0.1,
                pad_token_id=PAD_ID,
            ),
        ),
        token_type_ids=True,
    ),
    Family(
        "roberta",
        "encoder",
        lambda: RobertaModel(
            RobertaConfig(
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                num_hidden_layers=LAYERS,
                num_attention_heads=HEADS,
                intermediate_size=INTER,
                max_position_embeddings=POSITIONS,
                initializer_range=0.1,
                pad_token_id=1,
                bos_token_id=0,
                eos_token_id=2,
            ),
            add_pooling_layer=False,
        ),
    ),
    Family(
        # sentence-transformers' all-mpnet-base-v2 family: relative position buckets, RoBERTa-style ids.
        "mpnet",
        "encoder",
        lambda: MPNetModel(
            MPNetConfig(
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                num_hidden_layers=LAYERS,
                num_attention_heads=HEADS,
                intermediate_size=INTER,
                max_position_embeddings=POSITIONS,
                initializer_range=0.1,
                pad_token_id=1,
                bos_token_id=0,
                eos_token_id=2,
            ),
            add_pooling_layer=False,
        ),
    ),
    Family(
        "distilbert",
        "encoder",
        lambda: DistilBertModel(
            DistilBertConfig(
                vocab_size=VOCAB,
                dim=HIDDEN,
                n_layers=LAYERS,
                n_heads=HEADS,
                hidden_dim=INTER,
                max_position_embeddings=POSITIONS,
                initializer_range=0.1,
                pad_token_id=PAD_ID,
            ),
        ),
    ),
    Family(
        "t5-encoder",
        "encoder",
        lambda: T5EncoderModel(
            T5Config(
                vocab_size=VOCAB,
                d_model=HIDDEN,
                d_kv=HIDDEN // HEADS,
                d_ff=INTER,
                num_layers=LAYERS,
                num_heads=HEADS,
                initializer_factor=1.0,
                pad_token_id=PAD_ID,
            )
        ),
    ),
    Family(
        "vit",
        "vision",
        lambda: ViTModel(
            ViTConfig(
                hidden_size=HIDDEN,
                num_hidden_layers=LAYERS,
                num_attention_heads=HEADS,
                intermediate_size=INTER,
                image_size=32,
                patch_size=8,
                num_channels=3,
                initializer_range=0.1,
            ),
        ),
    ),
]


def build(family: Family) -> torch.nn.Module:
    """The family's model with seeded random weights; 1-D parameters (norm scales, biases) are moved
    off their 1/0 initial values so that a kernel which ignores them is caught."""
    torch.manual_seed(SEED)
    model = family.build().float().eval()
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


# ---------------------------------------------------------------- wrappers with flat tensors


class DecoderLogits(torch.nn.Module):
    """input_ids, attention_mask -> logits (no cache)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.named_args = 2

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def cache_argument(model) -> str:
    """The name under which the model's forward takes the cache (`past_key_values` is being renamed)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class DecoderWithPast(torch.nn.Module):
    """input_ids, attention_mask, [position_ids,] past_key_values.N.key/.value -> logits,
    present.N.key/.value: builds the cache object from the flat tensors, as optimum's export does."""

    def __init__(self, model, layers: int, position_ids: bool):
        super().__init__()
        self.model, self.layers, self.with_positions = model, layers, position_ids
        self.named_args = 2  # forward's parameters before *rest

    def forward(self, input_ids, attention_mask, *rest):
        if self.with_positions:
            position_ids, past = rest[0], rest[1:]
        else:
            position_ids, past = None, rest
        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.layers)])
        kw = {"position_ids": position_ids} if self.with_positions else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **{cache_argument(self.model): cache}, **kw)
        flat = []
        for layer in out.past_key_values.layers:
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


class Encoder(torch.nn.Module):
    """The encoder's named inputs -> last_hidden_state (and pooler_output where the model has one)."""

    def __init__(self, model, input_names, output_names):
        super().__init__()
        self.model, self.input_names, self.output_names = model, input_names, output_names
        self.named_args = 0

    def forward(self, *args):
        out = self.model(**dict(zip(self.input_names, args)))
        return tuple(getattr(out, n) for n in self.output_names)


# ---------------------------------------------------------------- input sets


def left_pad_mask(batch: int, length: int, pads: int) -> np.ndarray:
    """Row 0 keeps everything; row 1 (if any) has `pads` padding positions on the left."""
    m = np.ones((batch, length), dtype=np.int64)
    if batch > 1:
        m[1, :pads] = 0
    return m


def right_pad_mask(batch: int, length: int, pads: int) -> np.ndarray:
    m = np.ones((batch, length), dtype=np.int64)
    if batch > 1:
        m[1, length - pads :] = 0
    return m


def positions_of(mask: np.ndarray) -> np.ndarray:
    """Position ids as generation computes them under left padding (padding gets 1)."""
    p = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 1, p).astype(np.int64)


def tokens(rng, batch, length, mask) -> np.ndarray:
    ids = rng.integers(3, VOCAB, size=(batch, length), dtype=np.int64)
    return np.where(mask == 0, PAD_ID, ids)


@dataclass
class InputSet:
    name: str
    inputs: dict  # name -> np.ndarray
    keep: np.ndarray | None  # [batch, positions] 1 where outputs are compared; None: everything


def decoder_sets(rng) -> list[InputSet]:
    sets = []
    for name, b, s, pads in [("b2-s16-leftpad", 2, 16, 5), ("b1-s1", 1, 1, 0), ("b2-s7", 2, 7, 0)]:
        mask = left_pad_mask(b, s, pads)
        sets.append(InputSet(name, {"input_ids": tokens(rng, b, s, mask), "attention_mask": mask}, mask))
    return sets


def kv_sets(rng, family: Family, model, layers: int) -> list[InputSet]:
    """Past length 5 and 0; the past keys/values are what the torch model computes for the prefix."""
    sets = []
    for name, b, past, s, pads in [("b2-p5-s1-leftpad", 2, 5, 1, 3), ("b2-p0-s7-leftpad", 2, 0, 7, 3), ("b1-p5-s16", 1, 5, 16, 0)]:
        mask = left_pad_mask(b, past + s, pads)
        ids = tokens(rng, b, past + s, mask)
        pos = positions_of(mask)
        inputs = {"input_ids": ids[:, past:], "attention_mask": mask}
        if family.position_ids:
            inputs["position_ids"] = pos[:, past:]
        prefix = max(past, 1)
        with torch.no_grad():
            kw = {"position_ids": torch.from_numpy(pos[:, :prefix])} if family.position_ids else {}
            out = model(
                input_ids=torch.from_numpy(ids[:, :prefix]), attention_mask=torch.from_numpy(mask[:, :prefix]), use_cache=True, **kw
            )
        for i, layer in enumerate(out.past_key_values.layers[:layers]):
            inputs[f"past_key_values.{i}.key"] = layer.keys[:, :, :past].contiguous().numpy()
            inputs[f"past_key_values.{i}.value"] = layer.values[:, :, :past].contiguous().numpy()
        sets.append(InputSet(name, inputs, mask))
    return sets


def encoder_sets(rng, family: Family) -> list[InputSet]:
    sets = []
    for name, b, s, pads in [("b2-s16-rightpad", 2, 16, 5), ("b1-s1", 1, 1, 0), ("b2-s7", 2, 7, 0)]:
        mask = right_pad_mask(b, s, pads)
        ids = tokens(rng, b, s, mask)
        if family.name in ("roberta", "mpnet"):
            ids = np.where(mask == 0, 1, ids)  # RoBERTa's and MPNet's padding id
        inputs = {"input_ids": ids, "attention_mask": mask}
        if family.token_type_ids:
            tt = np.zeros((b, s), dtype=np.int64)
            tt[:, s // 2 :] = 1
            inputs["token_type_ids"] = tt
        sets.append(InputSet(name, inputs, mask))
    return sets


def vision_sets(rng) -> list[InputSet]:
    return [InputSet(f"b{b}", {"pixel_values": rng.standard_normal((b, 3, 32, 32)).astype(np.float32)}, None) for b in (1, 2)]


# ---------------------------------------------------------------- export


@dataclass
class Plan:
    """One fixture to export."""

    fixture: str
    family: Family
    exporter: str  # torchscript | dynamo | dynamo23
    kv: bool


def export(plan: Plan, module: torch.nn.Module, example: dict, input_names, output_names, axes: dict, path: Path) -> int:
    """Exports `module` on `example` (name -> tensor); `axes` maps every input and output name to
    {axis: symbolic name}. Returns the opset."""
    args = tuple(torch.from_numpy(example[n]) for n in input_names)
    if plan.exporter == "torchscript":
        opset = 17
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={n: a for n, a in axes.items() if a},
            do_constant_folding=True,
        )
    else:
        opset = 23 if plan.exporter == "dynamo23" else 18
        shapes = [{k: Dim.DYNAMIC for k in axes[n]} for n in input_names]
        # torch.export matches dynamic_shapes to forward's parameters: a *args parameter takes one
        # tuple of shapes.
        named = module.named_args
        shapes = tuple(shapes[:named]) + ((tuple(shapes[named:]),) if len(shapes) > named else ())
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=shapes,
            external_data=False,
        )
        program.save(str(path), external_data=False)
    model = onnx.load(str(path))
    # The dynamo exporter annotates every node with its FX node and Python stack trace (debug
    # metadata, two fifths of the file): dropped to keep the zoo small; nothing reads it.
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(path))
    onnx.checker.check_model(model)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer), "weights must be inline"
    return opset


def onnxruntime_outputs(path: Path, inputs: dict) -> dict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def masked_rel_err(got: np.ndarray, want: np.ndarray, keep: np.ndarray | None, axis: int | None) -> float:
    sel = kept(want.shape, keep, axis)
    g, w = got[sel], want[sel]
    scale = max(float(np.abs(w).max()) if w.size else 0.0, 1e-30)
    return float(np.abs(g.astype(np.float64) - w).max() / scale) if w.size else 0.0


def kept(shape, keep: np.ndarray | None, axis: int | None) -> np.ndarray:
    """Boolean selector over an output of `shape`: positions along `axis` that `keep` (aligned to
    its last columns) keeps, per batch row."""
    if keep is None or axis is None:
        return np.ones(shape, dtype=bool)
    cols = keep[:, keep.shape[1] - shape[axis] :].astype(bool)
    view = [shape[0]] + [1] * (len(shape) - 1)
    view[axis] = shape[axis]
    return np.broadcast_to(cols.reshape(view), shape)


def make_fixture(plan: Plan, out_root: Path, versions: dict) -> None:
    family = plan.family
    model = build(family)
    rng = np.random.default_rng(SEED)
    if family.kind == "decoder" and plan.kv:
        layers = LAYERS
        sets = kv_sets(rng, family, model, layers)
        module = DecoderWithPast(model, layers, family.position_ids)
        input_names = ["input_ids", "attention_mask"] + (["position_ids"] if family.position_ids else [])
        input_names += [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        output_names = ["logits"] + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
        axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"}, "position_ids": {0: "batch", 1: "sequence"}}
        axes.update({n: {0: "batch", 2: "past_sequence"} for n in input_names if n.startswith("past")})
        axes.update({n: {0: "batch", 2: "total_sequence"} for n in output_names if n.startswith("present")})
        axes["logits"] = {0: "batch", 1: "sequence"}
        position_axis = {n: (1 if n == "logits" else 2) for n in output_names}
        # Export on a set with a past and several new tokens (no size 0 or 1 to specialize on).
        example = export_example_kv(family, model, layers, past=5, seq=3, mask=left_pad_mask(2, 8, 2))
    elif family.kind == "decoder":
        sets = decoder_sets(rng)
        module = DecoderLogits(model)
        input_names, output_names = ["input_ids", "attention_mask"], ["logits"]
        axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
        position_axis = {"logits": 1}
        example = sets[0].inputs
    elif family.kind == "encoder":
        sets = encoder_sets(rng, family)
        input_names = list(sets[0].inputs)
        output_names = ["last_hidden_state"] + (["pooler_output"] if getattr(model, "pooler", None) is not None else [])
        module = Encoder(model, input_names, output_names)
        axes = {n: {0: "batch", 1: "sequence"} for n in input_names}
        axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
        axes["pooler_output"] = {0: "batch"}
        position_axis = {"last_hidden_state": 1, "pooler_output": None}
        example = sets[0].inputs
    else:
        sets = vision_sets(rng)
        input_names, output_names = ["pixel_values"], ["last_hidden_state", "pooler_output"]
        module = Encoder(model, input_names, output_names)
        axes = {"pixel_values": {0: "batch"}, "last_hidden_state": {0: "batch"}, "pooler_output": {0: "batch"}}
        position_axis = {"last_hidden_state": None, "pooler_output": None}
        example = sets[1].inputs
    module.eval()

    folder = out_root / plan.fixture
    tmp = out_root / f".{plan.fixture}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    path = tmp / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opset = export(plan, module, example, input_names, output_names, {n: axes.get(n, {}) for n in input_names + output_names}, path)

    manifest_sets = []
    for s in sets:
        with torch.no_grad():
            torch_out = module(*[torch.from_numpy(s.inputs[n]) for n in input_names])
        torch_out = dict(zip(output_names, torch_out if isinstance(torch_out, tuple) else (torch_out,)))
        keep = None if s.keep is None else ["".join(str(int(v)) for v in row) for row in s.keep]
        entry = {"name": s.name, "keep": keep, "reference": "onnxruntime"}
        try:
            ref = onnxruntime_outputs(path, s.inputs)
        except Exception as e:  # noqa: BLE001 - onnxruntime cannot run the export: torch is the reference
            ref = None
            entry["reference"], entry["onnxruntime_error"] = "torch", short_error(e)
        if ref is None:
            ref = {n: t.numpy() for n, t in torch_out.items()}
        else:
            errs = {n: masked_rel_err(ref[n], torch_out[n].numpy(), s.keep, position_axis[n]) for n in output_names}
            entry["onnxruntime_vs_torch_rel_err"] = {n: float(f"{e:.3g}") for n, e in errs.items()}
            for n, e in errs.items():
                if not e <= 1e-4:
                    raise RuntimeError(f"onnxruntime differs from torch on {s.name}/{n}: relative error {e:.2e}")
        d = tmp / s.name
        d.mkdir()
        for n, a in s.inputs.items():
            np.save(d / f"input.{n}.npy", a)
        for n in output_names:
            np.save(d / f"ref.{n}.npy", ref[n])
        manifest_sets.append(entry)
    manifest = {
        "fixture": plan.fixture,
        "family": family.name,
        "exporter": plan.exporter,
        "opset": opset,
        "kv_cache": plan.kv,
        "attention_implementation": getattr(model.config, "_attn_implementation", None),
        "inputs": input_names,
        "outputs": [{"name": n, "compared": True, "position_axis": position_axis[n]} for n in output_names],
        "keep": "per set, one string per batch row, a character per position: 1 where outputs are compared (aligned to an output's last positions along its position_axis; null: everything)",
        "sets": manifest_sets,
        "versions": versions,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def export_example_kv(family: Family, model, layers: int, past: int, seq: int, mask: np.ndarray) -> dict:
    """A KV-form example with a real past (the torch model's cache of a prefix)."""
    rng = np.random.default_rng(SEED + 7)
    ids = tokens(rng, mask.shape[0], past + seq, mask)
    pos = positions_of(mask)
    inputs = {"input_ids": ids[:, past:], "attention_mask": mask}
    if family.position_ids:
        inputs["position_ids"] = pos[:, past:]
    with torch.no_grad():
        kw = {"position_ids": torch.from_numpy(pos[:, :past])} if family.position_ids else {}
        out = model(input_ids=torch.from_numpy(ids[:, :past]), attention_mask=torch.from_numpy(mask[:, :past]), use_cache=True, **kw)
    for i, layer in enumerate(out.past_key_values.layers[:layers]):
        inputs[f"past_key_values.{i}.key"] = layer.keys.contiguous().numpy()
        inputs[f"past_key_values.{i}.value"] = layer.values.contiguous().numpy()
    return inputs


def plans(plain_decoders: bool) -> list[Plan]:
    """Every fixture. Decoders are exported in their KV-cache form (what generation runs; at past
    length 0 it is the plain forward pass too); their plain form only with `plain_decoders`, except
    LLaMA at opset 23. Each model is ~100k fp32 parameters (~0.45 MB), so the plain decoder forms
    would double the decoders' share of the repository (see scripts/zoo/README.md)."""
    out = []
    for f in FAMILIES:
        for exporter in ("torchscript", "dynamo"):
            if f.kind != "decoder" or plain_decoders:
                out.append(Plan(f"{f.name}-{exporter}", f, exporter, False))
            if f.kind == "decoder":
                out.append(Plan(f"{f.name}-{exporter}-kv", f, exporter, True))
    llama = next(f for f in FAMILIES if f.name == "llama")
    out.append(Plan("llama-dynamo23", llama, "dynamo23", False))
    out.append(Plan("llama-dynamo23-kv", llama, "dynamo23", True))
    return out


def short_error(e: BaseException) -> str:
    """The exporter's (or onnxruntime's) message, without colours, advice or the traceback."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(e).__name__}: {e}")
    if "## Exception summary" in text:  # the dynamo exporter's report: the summary is the error
        text = text.split("## Exception summary", 1)[1]
        text = text.split("(Refer to the full stack trace", 1)[0].split("Original traceback:", 1)[0]
    lines = [l.rstrip() for l in text.splitlines() if l.strip()]
    return "\n".join(lines[:8])[:1200]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[], help="fixtures whose name starts with this (repeatable)")
    ap.add_argument("--out", type=Path, default=ZOO)
    ap.add_argument("--plain-decoders", action="store_true", help="also export decoders without a KV cache (~9 MB more)")
    ap.add_argument("--traceback", action="store_true", help="print the traceback of a failed export")
    args = ap.parse_args()
    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }
    try:
        import onnxscript

        versions["onnxscript"] = onnxscript.__version__
    except ImportError:
        pass
    args.out.mkdir(parents=True, exist_ok=True)
    index_path = args.out / "manifest.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    fixtures, failures = set(index.get("fixtures", [])), dict(index.get("export_failures", {}))
    planned = plans(args.plain_decoders)
    if not args.only:  # a full run: what it does not make goes
        fixtures, failures = set(), {}
        names = {p.fixture for p in planned}
        for stale in args.out.glob("*/manifest.json"):
            if stale.parent.name not in names:
                shutil.rmtree(stale.parent)
    for plan in planned:
        if args.only and not any(plan.fixture.startswith(o) for o in args.only):
            continue
        print(f"{plan.fixture:<28}", end=" ", flush=True)
        try:
            make_fixture(plan, args.out, versions)
            fixtures.add(plan.fixture)
            failures.pop(plan.fixture, None)
            size = (args.out / plan.fixture / "model.onnx").stat().st_size
            print(f"ok ({size / 1e3:.0f} kB)")
        except Exception as e:  # noqa: BLE001 - any exporter failure is recorded, not fatal
            if args.traceback:
                traceback.print_exc()
            shutil.rmtree(args.out / plan.fixture, ignore_errors=True)
            shutil.rmtree(args.out / f".{plan.fixture}.tmp", ignore_errors=True)
            fixtures.discard(plan.fixture)
            failures[plan.fixture] = short_error(e)
            print("FAILED: " + failures[plan.fixture].splitlines()[0][:200])
    index = {
        "description": "tiny random-weight transformers as torch.onnx.export emits them; regenerate with scripts/zoo/generate.py",
        "versions": versions,
        "fixtures": sorted(fixtures),
        "export_failures": dict(sorted(failures.items())),
    }
    index_path.write_text(json.dumps(index, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
