#!/usr/bin/env python3
"""A LLaMA-7B-shaped ONNX model with random, seeded FP16 weights in external data, and
(with --compile) the measurement of `fpx compile` on it: peak memory, FP16 weight throughput
and the artifact's bits per weight.

Not a real LLaMA: every weight has LLaMA-7B's shape and count (32 layers of q/k/v/o
4096x4096, gate/up 4096x11008, down 11008x4096, two RMSNorm weights, a 32000x4096 embedding
and an untied 4096x32000 LM head: 6.74 B parameters, 13.5 GB in FP16), but attention is
stood in for by q + k + v, so the graph stays small. What it measures is what a compile of
the real model costs: reading, quantizing and writing every weight.

    $FPX_PYTHON scripts/llm/make_llama7b_shaped.py --out /tmp/llama7b --compile target/release/fpx

Writes DIR/model.onnx and DIR/weights.bin (13.5 GB; --layers N makes a smaller one).
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

HIDDEN, FFN, VOCAB = 4096, 11008, 32000


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for model.onnx and weights.bin")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", metavar="FPX", help="then run `FPX compile` on it and report memory and speed")
    ap.add_argument("--fpx-args", default="", help="extra arguments for fpx compile (e.g. '--weights fp6-e2m3')")
    ap.add_argument("--warm", action="store_true",
                    help="read weights.bin once before compiling, so the quantizer's rate is not the disk's "
                         "(the table shows how much of it was in the page cache either way)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    onnx_path = os.path.join(args.out, "model.onnx")
    if not os.path.exists(onnx_path):
        build(args.out, args.layers, args.seed)
    if args.compile:
        measure(args.compile, args.out, args.fpx_args, args.warm)


def build(out, layers, seed):
    rng = np.random.default_rng(seed)
    data_path = os.path.join(out, "weights.bin")
    inits, nodes = [], []
    offset = 0
    t0 = time.time()
    with open(data_path, "wb") as f:

        def weight(name, shape, scale=0.02, ones=False):
            nonlocal offset
            if ones:
                w = (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float16)
            else:
                w = (scale * rng.standard_normal(shape, dtype=np.float32)).astype(np.float16)
            b = w.tobytes()
            f.write(b)
            t = TensorProto()
            t.name, t.data_type = name, TensorProto.FLOAT16
            t.dims.extend(shape)
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", "weights.bin"), ("offset", str(offset)), ("length", str(len(b)))):
                e = t.external_data.add()
                e.key, e.value = k, v
            offset += len(b)
            inits.append(t)
            return name

        def rms_norm(x, name):
            # x * rsqrt(mean(x^2) + eps) * w, in FP16 as the exporters write it.
            w = weight(f"{name}.weight", (HIDDEN,), ones=True)
            nodes.extend([
                helper.make_node("Mul", [x, x], [f"{name}/sq"]),
                helper.make_node("ReduceMean", [f"{name}/sq", "axes"], [f"{name}/ms"], keepdims=1),
                helper.make_node("Add", [f"{name}/ms", "eps"], [f"{name}/mse"]),
                helper.make_node("Sqrt", [f"{name}/mse"], [f"{name}/rms"]),
                helper.make_node("Div", [x, f"{name}/rms"], [f"{name}/n"]),
                helper.make_node("Mul", [f"{name}/n", w], [f"{name}/out"]),
            ])
            return f"{name}/out"

        def linear(x, name, k, n):
            w = weight(f"{name}.weight", (k, n))
            nodes.append(helper.make_node("MatMul", [x, w], [f"{name}/out"]))
            return f"{name}/out"

        embed = weight("model.embed_tokens.weight", (VOCAB, HIDDEN))
        nodes.append(helper.make_node("Gather", [embed, "input_ids"], ["h0"]))
        h = "h0"
        for i in range(layers):
            p = f"model.layers.{i}"
            x = rms_norm(h, f"{p}.input_layernorm")
            q = linear(x, f"{p}.self_attn.q_proj", HIDDEN, HIDDEN)
            k = linear(x, f"{p}.self_attn.k_proj", HIDDEN, HIDDEN)
            v = linear(x, f"{p}.self_attn.v_proj", HIDDEN, HIDDEN)
            nodes.append(helper.make_node("Add", [q, k], [f"{p}/qk"]))
            nodes.append(helper.make_node("Add", [f"{p}/qk", v], [f"{p}/attn"]))
            o = linear(f"{p}/attn", f"{p}.self_attn.o_proj", HIDDEN, HIDDEN)
            nodes.append(helper.make_node("Add", [h, o], [f"{p}/h1"]))
            x = rms_norm(f"{p}/h1", f"{p}.post_attention_layernorm")
            g = linear(x, f"{p}.mlp.gate_proj", HIDDEN, FFN)
            u = linear(x, f"{p}.mlp.up_proj", HIDDEN, FFN)
            nodes.extend([
                helper.make_node("Sigmoid", [g], [f"{p}/sig"]),
                helper.make_node("Mul", [g, f"{p}/sig"], [f"{p}/silu"]),
                helper.make_node("Mul", [f"{p}/silu", u], [f"{p}/gu"]),
            ])
            d = linear(f"{p}/gu", f"{p}.mlp.down_proj", FFN, HIDDEN)
            nodes.append(helper.make_node("Add", [f"{p}/h1", d], [f"{p}/h2"]))
            h = f"{p}/h2"
            print(f"\rlayer {i + 1}/{layers}: {offset / 1e9:.1f} GB", end="", file=sys.stderr, flush=True)
        x = rms_norm(h, "model.norm")
        logits = linear(x, "lm_head", HIDDEN, VOCAB)
        nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    print(f"\n{offset / 1e9:.2f} GB of FP16 weights written in {time.time() - t0:.0f} s", file=sys.stderr)
    inits.append(helper.make_tensor("axes", TensorProto.INT64, [1], [-1]))
    inits.append(helper.make_tensor("eps", TensorProto.FLOAT16, [], [np.float16(1e-5).view(np.uint16)], raw=False))
    graph = helper.make_graph(
        nodes,
        "llama7b_shaped",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, [1, "seq", VOCAB])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, os.path.join(out, "model.onnx"))


def cached_share(path):
    """How much of `path` is in the page cache (util-linux `fincore`), as text."""
    try:
        res = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path], capture_output=True, text=True)
        return f"{int(res.stdout.split()[0]) / os.path.getsize(path):.0%}"
    except (OSError, ValueError, IndexError):
        return "?"


def measure(fpx, out, extra, warm=False):
    weights = os.path.getsize(os.path.join(out, "weights.bin"))
    if warm:
        with open(os.path.join(out, "weights.bin"), "rb") as f:
            while f.read(64 << 20):
                pass
    cached = cached_share(os.path.join(out, "weights.bin"))
    artifact = os.path.join(out, "model.fpx")
    cmd = [fpx, "compile", os.path.join(out, "model.onnx"), "-o", artifact] + extra.split()
    print("$", " ".join(cmd), file=sys.stderr)
    t0 = time.time()
    run = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.time() - t0
    print(run.stdout, run.stderr, file=sys.stderr)
    if run.returncode != 0:
        sys.exit(f"fpx compile failed ({run.returncode})")
    # fpx reports its own peak (VmHWM): a child's ru_maxrss would include this Python process.
    peak = next((line.split("peak memory")[-1].strip() for line in run.stdout.splitlines() if "peak memory" in line), "?")
    bits = next((line.split(",")[-1].strip() for line in run.stdout.splitlines() if "bits per weight" in line), "?")
    # The quantizer's own rate (reading, converting, quantizing and packing the weights).
    quantizer = next((line.split("(quantizer ")[-1].split(")")[0] for line in run.stdout.splitlines() if "(quantizer " in line), "?")
    # Opening the artifact and one decode step (one token through every weight).
    np.save(os.path.join(out, "ids.npy"), np.array([[1]], dtype=np.int64))
    cmd = [fpx, "run", artifact, "--input", f"input_ids={os.path.join(out, 'ids.npy')}", "-o", os.path.join(out, "run")]
    ran = subprocess.run(cmd, capture_output=True, text=True)
    timing = next((line for line in ran.stdout.splitlines() if line.startswith("loaded in")), ran.stderr.strip()[-200:])
    print("| model | FP16 weights | in page cache | compile time | FP16 GB/s | quantizer | peak memory | artifact | overall | fpx run |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {os.path.basename(os.path.abspath(out))} | {weights / 1e9:.2f} GB | {cached} | {seconds:.1f} s | {weights / 1e9 / seconds:.2f} |"
          f" {quantizer} | {peak} | {os.path.getsize(artifact) / 1e9:.2f} GB | {bits} | {timing} |")


if __name__ == "__main__":
    main()
