"""The LLM section: a LLaMA-shaped decoder with a KV cache (bench/llm_model.py), its onnxruntime
peers (FP32, dynamic int8 per channel, int4 MatMulNBits block 32 at accuracy level 4) and fpx
artifacts (default `fpx compile` weights, fp6-e3m2; fp6-e2m3 with int8 activations), timed on a
decode step (1 new token after `past` cached ones) and a prefill, batch 1, with the logits of each
path compared with onnxruntime FP32 on the same step.

ORT cells: session.run wall time in-process (interleaved across the three sessions, warm-up first);
fpx cells: `fpx bench ARTIFACT --input ... --json` median (in-process, one warm-up), whose
`--output-dir` writes the warm-up's logits for the accuracy column. Inputs are .npy files written
once, outside every timed region."""

from __future__ import annotations

import gc
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from bench.common import log
from bench.llm_model import LlamaConfig, build_llama, decode_inputs, save
from bench.measure import Fpx, ort_session, time_ort_interleaved
from bench.models import BLOCK_SIZE, atomic_save_model, atomic_save_npy, quantize_int4, quantizer_note

# (key, label) of the onnxruntime peers, in timing order.
ORT_PEERS = [("ort_fp32", "ORT fp32"), ("ort_int8", "ORT int8 dyn"), ("ort_int4", "ORT int4 lvl4")]
# (key, label, `fpx compile` weights, activations).
FPX_PEERS = [("fpx_fp6", "fpx fp6-e3m2", "fp6-e3m2", "f32"), ("fpx_a8", "fpx e2m3·a8", "fp6-e2m3", "int8")]
MAX_REL_ERR = 1e-4  # fpx FP32 vs onnxruntime FP32 logits (max |diff| / max |ref|)


def llm_cases(quick: bool) -> list[dict]:
    """The measured steps: a decode step after 128 cached tokens; the full run adds 1024 and a
    128-token prefill (empty cache)."""
    cases = [{"name": "decode past=128", "past": 128, "new": 1}]
    if not quick:
        cases += [{"name": "decode past=1024", "past": 1024, "new": 1},
                  {"name": "prefill 128", "past": 0, "new": 128}]
    return cases


def streamed_weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers a step reads in full: all of them except the embedding tables
    (the data input of a Gather, of which a step reads one row per token)."""
    gathered = {nd.input[0] for nd in model.graph.node if nd.op_type == "Gather"}
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer if t.name not in gathered)


def make_peers(cfg: LlamaConfig, wd: Path, seed: int, quantizer_mode: str) -> dict[str, Path]:
    """The FP32 decoder and its onnxruntime-quantized peers, each written once to the workdir."""
    base = wd / f"llama_{cfg.tag()}_seed{seed}"
    paths = {"ort_fp32": Path(f"{base}_fp32.onnx"), "ort_int8": Path(f"{base}_int8-dynamic-pc.onnx"),
             "ort_int4": Path(f"{base}_int4_b{BLOCK_SIZE}_lvl4.onnx")}
    if not paths["ort_fp32"].exists():
        log(f"generating {paths['ort_fp32'].name} ({cfg.parameters() / 1e6:.0f} M parameters)")
        save(build_llama(cfg, seed), paths["ort_fp32"])
    if not paths["ort_int8"].exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        log(f"quantize_dynamic(per_channel=True, QInt8) -> {paths['ort_int8'].name}")
        logging.getLogger().setLevel(logging.WARNING)
        tmp = paths["ort_int8"].with_name(paths["ort_int8"].name + ".tmp.onnx")
        quantize_dynamic(str(paths["ort_fp32"]), str(tmp), per_channel=True, weight_type=QuantType.QInt8)
        tmp.replace(paths["ort_int8"])
    note = paths["ort_int4"].with_name(paths["ort_int4"].name + ".quantizer.txt")
    if not paths["ort_int4"].exists() or not note.exists():
        log(f"int4 MatMulNBits (block {BLOCK_SIZE}, symmetric, accuracy_level 4) -> {paths['ort_int4'].name}")
        q = quantize_int4(onnx.load(str(paths["ort_fp32"])), quantizer_mode)
        nodes = [nd for nd in q.graph.node if nd.op_type == "MatMulNBits"]
        if len(nodes) != len(cfg.matmul_weights()):
            raise RuntimeError(f"the int4 quantizer made {len(nodes)} MatMulNBits nodes, expected "
                               f"{len(cfg.matmul_weights())} (one per weight MatMul)")
        for nd in nodes:
            for a in [a for a in nd.attribute if a.name == "accuracy_level"]:
                nd.attribute.remove(a)
            nd.attribute.append(helper.make_attribute("accuracy_level", 4))
        atomic_save_model(q, paths["ort_int4"])
        note.write_text((quantizer_note() or "?") + "\n")
    return paths


def write_inputs(cfg: LlamaConfig, wd: Path, case: dict, seed: int) -> tuple[dict[str, np.ndarray], dict[str, Path]]:
    """The step's feed, and the .npy file of each input (written once)."""
    feed = decode_inputs(cfg, case["past"], case["new"], seed)
    d = wd / f"llama_inputs_{cfg.tag()}_seed{seed}_past{case['past']}_new{case['new']}"
    d.mkdir(exist_ok=True)
    files = {}
    for name, arr in feed.items():
        f = d / f"{name}.npy"
        if not f.exists():
            atomic_save_npy(arr, f)
        files[name] = f
    return feed, files


def better(new: dict, old: dict | None) -> bool:
    """Whether timing `new` replaces `old` (none yet, an error, or a higher median)."""
    return old is None or "median_us" not in old or float(new["median_us"]) < float(old["median_us"])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


def fpx_logits(out_dir: Path) -> np.ndarray | None:
    f = out_dir / "logits.npy"
    return np.load(f) if f.exists() else None


def check_model(paths: dict[str, Path], feed: dict, files: dict, wd: Path, fpx: Fpx | None, threads: int) -> dict:
    """Once per run: onnxruntime loads and runs the FP32 model (logits finite and spread out), and
    fpx runs the same .onnx in FP32 (`fpx bench --iters 1 --output-dir`) with the same logits."""
    sess = ort_session(paths["ort_fp32"], threads)
    ref = sess.run(["logits"], feed)[0]
    del sess
    out = {"ort_logits_shape": list(ref.shape), "ort_finite": bool(np.isfinite(ref).all()),
           "ort_logits_std": float(ref.std())}
    if fpx is None:
        out["fpx_fp32"] = {"error": "no fpx binary"}
        return out
    od = wd / "llama_check_fpx_fp32"
    shutil.rmtree(od, ignore_errors=True)
    r = fpx.bench(paths["ort_fp32"], files, threads, 1, 0.0, min_iters=1, output_dir=od)
    got = fpx_logits(od) if "error" not in r else None
    if got is None:
        out["fpx_fp32"] = {"error": r.get("error", "no logits.npy written")}
    elif got.shape != ref.shape:
        out["fpx_fp32"] = {"error": f"logits shape {list(got.shape)} != onnxruntime's {list(ref.shape)}"}
    else:
        e = rel_err(got, ref)
        out["fpx_fp32"] = {"rel_err": e, "ok": e <= MAX_REL_ERR, "cosine": cosine(got, ref),
                           "median_us": r.get("median_us")}
    return out


def bench_llm(args, wd: Path, fpx: Fpx | None, membw: dict) -> dict:
    """The section's numbers: config, peers, the check, and per (case, threads) each peer's
    median, tokens/s, weight GB/s and logits cosine vs onnxruntime FP32."""
    if args.no_llm:
        return {"skipped": "--no-llm"}
    cfg = LlamaConfig(layers=args.llm_layers or (2 if args.quick else 4), vocab=args.llm_vocab)
    paths = make_peers(cfg, wd, args.seed, args.ort_quantizer)
    out: dict = {"config": cfg.__dict__ | {"parameters": cfg.parameters()},
                 "models": {k: str(p) for k, p in paths.items()}, "rows": [],
                 "int4_quantizer": paths["ort_int4"].with_name(paths["ort_int4"].name + ".quantizer.txt")
                 .read_text().strip()}
    wbytes = {k: streamed_weight_bytes(onnx.load(str(p))) for k, p in paths.items()}
    artifacts: dict[str, Path | None] = {}
    if fpx is not None:
        for key, _, weights, acts in FPX_PEERS:
            artifacts[key] = fpx.compile(paths["ort_fp32"], wd / f"llama_{cfg.tag()}_seed{args.seed}_{weights}"
                                         f"{'-a8' if acts == 'int8' else ''}.fpx", weights=weights, activations=acts)
    cases = llm_cases(args.quick)
    threads = args.llm_threads or ([2] if args.quick else [1, 2])
    for ci, case in enumerate(cases):
        feed, files = write_inputs(cfg, wd, case, args.seed)
        if ci == 0:
            log(f"LLM: checking the model (onnxruntime runs it; fpx FP32 logits within {MAX_REL_ERR:g})")
            out["check"] = check_model(paths, feed, files, wd, fpx, max(threads))
            log(f"LLM check: {out['check']}")
        ref = None
        for t in threads:
            log(f"LLM {case['name']} T={t}: ORT sessions")
            sessions = {key: ort_session(paths[key], t) for key, _ in ORT_PEERS}
            logits = {key: s.run(["logits"], feed)[0] for key, s in sessions.items()}
            ref = logits["ort_fp32"]
            row = {"case": case["name"], "past": case["past"], "new_tokens": case["new"], "threads": t, "peers": {},
                   "rounds": max(1, args.llm_rounds)}
            # Rounds of (the ORT peers interleaved, then each fpx peer): on a host whose load
            # from other processes moves by tens of percent from minute to minute, each peer
            # keeps its round with the lowest median, so one slow minute does not decide a ratio.
            for rnd in range(row["rounds"]):
                timed = time_ort_interleaved(sessions, feed, args.iters, args.llm_cell_seconds, min_iters=3)
                for key, _ in ORT_PEERS:
                    if better(timed[key], row["peers"].get(key)):
                        row["peers"][key] = dict(timed[key], weight_bytes=wbytes[key], cosine=cosine(logits[key], ref),
                                                 round=rnd)
                for key, label, _, _ in FPX_PEERS:
                    art = artifacts.get(key)
                    if art is None:
                        why = "no fpx binary" if fpx is None else fpx.compile_errors.get(paths["ort_fp32"].name, "compile failed")
                        row["peers"][key] = {"error": why}
                        continue
                    log(f"LLM {case['name']} T={t}: {label} (round {rnd + 1} of {row['rounds']})")
                    od = wd / f"llama_out_{key}"
                    shutil.rmtree(od, ignore_errors=True)
                    r = fpx.bench(art, files, t, args.iters, args.llm_cell_seconds, output_dir=od)
                    if "error" in r:
                        # A failed later round does not replace a timing an earlier round made.
                        if "median_us" not in row["peers"].get(key, {}):
                            row["peers"][key] = {"error": r["error"]}
                        continue
                    if not better(r, row["peers"].get(key)):
                        continue
                    got = fpx_logits(od)
                    wb = sum(int(k.get("weight_bytes") or 0) for k in r.get("kernels", []) if k.get("op") == "QuantMatMul")
                    row["peers"][key] = {"median_us": r["median_us"], "min_us": r.get("min_us"), "iters": r.get("iters"),
                                         "weight_bytes": wb or None, "cmd": r.get("cmd"), "round": rnd,
                                         "cosine": cosine(got, ref) if got is not None and got.shape == ref.shape else None,
                                         "per_op_us": r.get("per_op_us"),
                                         "quant_matmul_us": (r.get("per_op_us") or {}).get("QuantMatMul")}
            del sessions
            gc.collect()
            bw = (membw.get(t) or {}).get("gb_per_s")
            for p in row["peers"].values():
                us = p.get("median_us")
                if us:
                    p["ms_per_step"] = us / 1e3
                    p["tokens_per_s"] = case["new"] / (us * 1e-6)
                    if p.get("weight_bytes"):
                        p["weight_gb_per_s"] = p["weight_bytes"] / (us * 1e-6) / 1e9
                        p["pct_of_membw"] = 100.0 * p["weight_gb_per_s"] / bw if bw else None
            row["membw_gb_per_s"] = bw
            out["rows"].append(row)
            log(f"LLM {case['name']} T={t}: " + ", ".join(
                f"{k} {p['ms_per_step']:.1f} ms" for k, p in row["peers"].items() if p.get("ms_per_step")))
    out["ort_version"] = ort.__version__
    return out
