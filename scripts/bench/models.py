"""Benchmark models, cached in the workdir: a one-node FP32 MatMul per K×N (random weights from a
fixed seed), its onnxruntime int4 peers (MatMulNBits, 4 bits, block 32, symmetric, accuracy_level 0
and 4; quantized by MatMulNBitsQuantizer or the same C++ routine called directly), and the inputs.
File names carry shape and seed, so later runs reuse them."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.common import log

BLOCK_SIZE = 32


def atomic_save_model(model: onnx.ModelProto, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


def atomic_save_npy(arr: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def shape_seed(seed: int, *dims: int) -> int:
    """A per-(seed, dims) seed, stable across runs and Python versions."""
    h = hashlib.sha256(repr((seed,) + dims).encode()).digest()
    return int.from_bytes(h[:8], "little")


def fp32_model_path(wd: Path, k: int, n: int, seed: int) -> Path:
    return wd / f"matmul_k{k}_n{n}_seed{seed}_fp32.onnx"


def make_fp32_model(wd: Path, k: int, n: int, seed: int) -> Path:
    """Y[M,N] = X[M,K] · W[K,N], W random normal (fixed seed) as an initializer; M symbolic."""
    path = fp32_model_path(wd, k, n, seed)
    if path.exists():
        return path
    log(f"generating {path.name} ({k * n * 4 / 2**20:.0f} MiB)")
    rng = np.random.default_rng(shape_seed(seed, k, n))
    w = rng.standard_normal((k, n), dtype=np.float32)
    node = helper.make_node("MatMul", ["X", "W"], ["Y"], name="matmul")
    graph = helper.make_graph(
        [node], f"matmul_{k}x{n}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="fpx-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    atomic_save_model(model, path)
    return path


_QUANTIZER_NOTE: str | None = None


def quantize_official(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.quantization.quant_utils import QuantFormat

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model = onnx.ModelProto.FromString(model.SerializeToString())  # the quantizer edits its input in place
    q = MatMulNBitsQuantizer(model, bits=4, block_size=BLOCK_SIZE, is_symmetric=True,
                             accuracy_level=None, quant_format=QuantFormat.QOperator)
    q.process()
    return q.model.model


def quantize_direct(model: onnx.ModelProto) -> onnx.ModelProto:
    """What MatMulNBitsQuantizer (DEFAULT algorithm, QOperator, 4 bits, symmetric) does for every
    MatMul whose weight is a 2-D initializer, with the same onnxruntime C++ routine
    (quantize_matmul_4bits) and the same initializer and node layout; used when the quantizer module
    cannot be imported (it needs the onnx_ir package, which the project venv does not install)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    uses: dict[str, int] = {}
    for nd in g.node:
        for name in nd.input:
            uses[name] = uses.get(name, 0) + 1
    blob = BLOCK_SIZE // 2
    replaced = 0
    for idx, node in enumerate(list(g.node)):
        init = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if init is None or len(init.dims) != 2 or init.data_type != TensorProto.FLOAT or uses[init.name] != 1:
            continue
        w = np.ascontiguousarray(numpy_helper.to_array(init), dtype=np.float32)
        k, n = w.shape
        k_blocks = (k + BLOCK_SIZE - 1) // BLOCK_SIZE
        if k_blocks * BLOCK_SIZE != k:
            w = np.pad(w, ((0, k_blocks * BLOCK_SIZE - k), (0, 0)))
        packed = np.zeros((n, k_blocks, blob), dtype=np.uint8)
        scales = np.zeros((n, k_blocks), dtype=np.float32)
        zero_point = np.zeros((n, (k_blocks + 1) // 2), dtype=np.uint8)
        quantize_matmul_4bits(packed, w, scales, zero_point, BLOCK_SIZE, n, k, True)
        g.initializer.remove(init)
        g.initializer.extend([numpy_helper.from_array(packed, init.name + "_Q4"),
                              numpy_helper.from_array(scales, init.name + "_scales")])
        new = helper.make_node("MatMulNBits", [node.input[0], init.name + "_Q4", init.name + "_scales"],
                               [node.output[0]], name=(node.name or f"matmul_{idx}") + "_Q4",
                               domain="com.microsoft", K=k, N=n, bits=4, block_size=BLOCK_SIZE)
        pos = list(g.node).index(node)
        g.node.remove(node)
        g.node.insert(pos, new)
        replaced += 1
    if replaced and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def quantize_int4(model: onnx.ModelProto, mode: str) -> onnx.ModelProto:
    global _QUANTIZER_NOTE
    if mode in ("auto", "official"):
        try:
            q = quantize_official(model)
            _QUANTIZER_NOTE = "onnxruntime.quantization MatMulNBitsQuantizer (bits=4, block_size=32, symmetric)"
            return q
        except ImportError as e:
            if mode == "official":
                raise
            _QUANTIZER_NOTE = (f"onnxruntime quantize_matmul_4bits called directly (the C++ routine "
                               f"MatMulNBitsQuantizer uses; same layout), because MatMulNBitsQuantizer "
                               f"does not import here: {e}")
    else:
        _QUANTIZER_NOTE = "onnxruntime quantize_matmul_4bits called directly (--ort-quantizer direct)"
    return quantize_direct(model)


def make_int4_models(wd: Path, k: int, n: int, seed: int, mode: str) -> dict[int, Path]:
    """MatMulNBits models with accuracy_level 0 and 4 (same quantized weights)."""
    global _QUANTIZER_NOTE
    paths = {lvl: wd / f"matmul_k{k}_n{n}_seed{seed}_int4_b{BLOCK_SIZE}_sym_lvl{lvl}.onnx" for lvl in (0, 4)}
    note_file = wd / f"matmul_k{k}_n{n}_seed{seed}_int4_b{BLOCK_SIZE}_sym.quantizer.txt"
    if all(p.exists() for p in paths.values()) and note_file.exists():
        if _QUANTIZER_NOTE is None:
            _QUANTIZER_NOTE = note_file.read_text().strip()
        return paths
    src = make_fp32_model(wd, k, n, seed)
    log(f"quantizing {src.name} to int4 (MatMulNBits, block {BLOCK_SIZE}, symmetric)")
    q = quantize_int4(onnx.load(str(src)), mode)
    nodes = [nd for nd in q.graph.node if nd.op_type == "MatMulNBits"]
    if len(nodes) != 1:
        raise RuntimeError(f"quantizer produced {len(nodes)} MatMulNBits nodes, expected 1")
    for lvl, path in paths.items():
        nd = nodes[0]
        for a in list(nd.attribute):
            if a.name == "accuracy_level":
                nd.attribute.remove(a)
        nd.attribute.append(helper.make_attribute("accuracy_level", lvl))
        atomic_save_model(q, path)
    note_file.write_text(_QUANTIZER_NOTE + "\n")
    return paths


def dynamic_int8(src: Path, dst: Path) -> Path:
    """`dst`: onnxruntime's `quantize_dynamic` of `src` (per-channel, QInt8 weights; activations
    quantized per call) — the usual CPU choice — made once and cached."""
    if not dst.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        log(f"quantize_dynamic(per_channel=True, QInt8) -> {dst.name}")
        logging.getLogger().setLevel(logging.WARNING)
        tmp = dst.with_name(dst.name + ".tmp.onnx")
        quantize_dynamic(str(src), str(tmp), per_channel=True, weight_type=QuantType.QInt8)
        tmp.replace(dst)
    return dst


def make_int8_model(wd: Path, k: int, n: int, seed: int) -> Path:
    """The one-MatMul model quantized by onnxruntime's `quantize_dynamic` (per-channel int8)."""
    return dynamic_int8(make_fp32_model(wd, k, n, seed), wd / f"matmul_k{k}_n{n}_seed{seed}_int8_dyn.onnx")


def make_int4_model_of(src: Path, dst: Path, mode: str, level: int = 4) -> Path:
    """`dst`: every weight MatMul of `src` as MatMulNBits (4 bits, block 32, symmetric) with
    `accuracy_level` `level`, made once and cached."""
    if not dst.exists():
        log(f"int4 MatMulNBits (block {BLOCK_SIZE}, symmetric, accuracy_level {level}) -> {dst.name}")
        q = quantize_int4(onnx.load(str(src)), mode)
        for nd in q.graph.node:
            if nd.op_type == "MatMulNBits":
                for a in [a for a in nd.attribute if a.name == "accuracy_level"]:
                    nd.attribute.remove(a)
                nd.attribute.append(helper.make_attribute("accuracy_level", level))
        atomic_save_model(q, dst)
    return dst


def make_input(wd: Path, m: int, k: int, seed: int) -> Path:
    path = wd / f"x_m{m}_k{k}_seed{seed}.npy"
    if not path.exists():
        rng = np.random.default_rng(shape_seed(seed, m, k, 1))
        atomic_save_npy(rng.standard_normal((m, k), dtype=np.float32), path)
    return path


def quantizer_note() -> str | None:
    """How the int4 models were quantized (set by make_int4_models; None before it ran)."""
    return _QUANTIZER_NOTE
