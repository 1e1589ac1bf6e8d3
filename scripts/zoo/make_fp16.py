#!/usr/bin/env python3
"""FP16 twins of model-zoo fixtures, as GPU-targeted exports are: `onnxconverter_common.float16`
with `keep_io_types=True` (weights and compute in FP16, inputs and outputs FP32 as before).

For each fixture, writes tests/data/half/<fixture>-fp16/: model.onnx, the zoo fixture's
manifest (renamed) and input sets, and onnxruntime's outputs on the FP16 model as the
references (ref.<output>.npy). Dev-only (needs onnxconverter-common, not needed by CI):

    .venv/bin/pip install onnxconverter-common
    .venv/bin/python scripts/zoo/make_fp16.py [fixture ...]
"""

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxconverter_common import float16

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "data" / "zoo"
OUT = ROOT / "tests" / "data" / "half"
DEFAULT = ["distilbert-torchscript", "llama-torchscript-kv", "qwen2-dynamo-kv"]


def all_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every float tensor of the graph in FP16, as a model loaded in half precision exports:
    initializers and Constant/ConstantOfShape tensors converted, Casts to float made casts to
    float16, FP32 inputs cast in and outputs cast out (where onnxconverter_common's output is
    refused by onnxruntime: decoders whose Casts it mistypes)."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    del g.value_info[:]

    def half(t: onnx.TensorProto) -> onnx.TensorProto:
        if t.data_type != TensorProto.FLOAT:
            return t
        h = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name)
        return h

    for i, t in enumerate(list(g.initializer)):
        g.initializer[i].CopyFrom(half(t))
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                a.t.CopyFrom(half(a.t))
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
    casts = []
    for inp in g.input:
        if inp.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = inp.name + "_fp16"
            for n in g.node:
                for k, x in enumerate(n.input):
                    if x == inp.name:
                        n.input[k] = inner
            casts.append(helper.make_node("Cast", [inp.name], [inner], to=TensorProto.FLOAT16, name=inner))
    for out in g.output:
        if out.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = out.name + "_fp16"
            for n in g.node:
                for k, x in enumerate(n.output):
                    if x == out.name:
                        n.output[k] = inner
                for k, x in enumerate(n.input):
                    if x == out.name:
                        n.input[k] = inner
            casts.append(helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT, name=out.name + "_cast"))
    nodes = casts[: sum(1 for c in casts if c.name.endswith("_fp16"))] + list(g.node) + [c for c in casts if c.name.endswith("_cast")]
    del g.node[:]
    g.node.extend(nodes)
    return model


def convert(name: str) -> None:
    src = ZOO / name
    dst = OUT / f"{name}-fp16"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = onnx.load(src / "model.onnx")
        # Intermediate value_info would keep stale FP32 types the converter does not update
        # (onnxruntime then refuses the model); shapes are inferred again anyway.
        del model.graph.value_info[:]
        model = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.save(model, dst / "model.onnx")
    converter = "onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)"
    try:
        ort.InferenceSession(str(dst / "model.onnx"), providers=["CPUExecutionProvider"])
    except Exception as e:
        print(f"{name}: onnxruntime refuses the converter's model ({str(e).splitlines()[0][:120]}...): all_fp16 instead")
        model = all_fp16(onnx.load(src / "model.onnx"))
        onnx.save(model, dst / "model.onnx")
        converter = "scripts/zoo/make_fp16.py all_fp16"
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["fixture"] = dst.name
    manifest["fp16_of"] = name
    manifest["converter"] = converter
    session = ort.InferenceSession(str(dst / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for s in manifest["sets"]:
        s["reference"] = f"onnxruntime {ort.__version__} on the FP16 model"
        s.pop("onnxruntime_vs_torch_rel_err", None)
        (dst / s["name"]).mkdir()
        feeds = {}
        for i in manifest["inputs"]:
            f = src / s["name"] / f"input.{i}.npy"
            shutil.copy(f, dst / s["name"] / f.name)
            feeds[i] = np.load(f)
        for n, v in zip(names, session.run(None, feeds)):
            if any(o["name"] == n for o in manifest["outputs"]):
                np.save(dst / s["name"] / f"ref.{n}.npy", v)
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{dst.relative_to(ROOT)}: {sum(f.stat().st_size for f in dst.rglob('*') if f.is_file()) / 1e3:.0f} kB")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in sys.argv[1:] or DEFAULT:
        try:
            convert(name)
        except Exception as e:  # the converter's output that onnxruntime refuses is skipped
            shutil.rmtree(OUT / f"{name}-fp16", ignore_errors=True)
            print(f"{name}: skipped: {str(e).splitlines()[0][:200]}")
    fixtures = sorted(p.name for p in OUT.iterdir() if (p / "manifest.json").is_file())
    (OUT / "manifest.json").write_text(json.dumps({"fixtures": fixtures}, indent=1) + "\n")


if __name__ == "__main__":
    main()
