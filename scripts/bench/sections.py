"""The measured sections: the kernel table (per K×N, threads and M: the three onnxruntime variants,
fpx FP6 e3m2 and fpx FP6 e2m3 with int8 activations) and MiniLM-L6-v2 end to end. Each returns
the rows that report.py prints and writes as JSON."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import onnx

from bench.common import ORT_VARIANTS, log
from bench.measure import Fpx, ort_session, quant_kernel, time_ort, time_ort_interleaved
from bench.models import (BLOCK_SIZE, dynamic_int8, make_fp32_model, make_input, make_int4_model_of, make_int4_models,
                          make_int8_model)
from bench.report import targets_for, ws_note


def bench_kernels(args, wd: Path, fpx: Fpx | None, membw: dict) -> list[dict]:
    rows = []
    for (k, n) in args.shapes:
        fp32_path = make_fp32_model(wd, k, n, args.seed)
        int4_paths = make_int4_models(wd, k, n, args.seed, args.ort_quantizer)
        models = {"ort_fp32": fp32_path, "ort_int8": make_int8_model(wd, k, n, args.seed), "ort_int4_l0": int4_paths[0],
                  "ort_int4_l4": int4_paths[4]}
        xs = {m: make_input(wd, m, k, args.seed) for m in args.ms}
        fpx_model, fpx_mode, fpx_a8 = None, None, None
        if fpx is not None:
            fpx_model = fpx.compile(fp32_path, wd / f"matmul_k{k}_n{n}_seed{args.seed}_fp6-e3m2.fpx")
            fpx_mode = "compiled" if fpx_model is not None else "reference"
            fpx_a8 = fpx.compile(fp32_path, wd / f"matmul_k{k}_n{n}_seed{args.seed}_fp6-e2m3-a8.fpx",
                                 weights="fp6-e2m3", activations="int8")
        for t in args.threads:
            log(f"{k}x{n} T={t}: ORT sessions")
            sessions = {key: ort_session(models[key], t) for key, _ in ORT_VARIANTS}
            for m in args.ms:
                r = {"K": k, "N": n, "M": m, "threads": t}
                r["ort"] = time_ort_interleaved(sessions, {"X": np.load(xs[m])}, args.iters, args.cell_seconds)
                log(f"  M={m}: ORT median us " + ", ".join(f"{lbl} {r['ort'][key]['median_us']:.1f}"
                                                         for key, lbl in ORT_VARIANTS))
                r["weight_bytes"] = {
                    "fp32": k * n * 4,
                    "int8": k * n + 4 * n,
                    "int4_b32": n * ((k + BLOCK_SIZE - 1) // BLOCK_SIZE) * (BLOCK_SIZE // 2 + 4),
                }
                for key in ("ort_int4_l0", "ort_int4_l4"):
                    o = r["ort"][key]
                    o["weight_gb_per_s"] = r["weight_bytes"]["int4_b32"] / (o["median_us"] * 1e-6) / 1e9
                for key, wkey in (("ort_fp32", "fp32"), ("ort_int8", "int8")):
                    o = r["ort"][key]
                    o["weight_gb_per_s"] = r["weight_bytes"][wkey] / (o["median_us"] * 1e-6) / 1e9
                r["fpx"] = None
                if fpx is not None:
                    if fpx_mode == "compiled":
                        res = fpx.bench(fpx_model, {"X": xs[m]}, t, args.iters, args.cell_seconds)
                    else:
                        res = fpx.bench(fp32_path, {"X": xs[m]}, t, args.iters, args.cell_seconds,
                                        weights="fp6-e3m2")
                    kern = quant_kernel(res) if "error" not in res else None
                    if "error" in res:
                        r["fpx"] = {"mode": fpx_mode, "error": res["error"]}
                        log(f"  fpx M={m}: {res['error']}")
                    elif kern is None:
                        r["fpx"] = {"mode": fpx_mode, "error": "no QuantMatMul entry in `fpx bench --json` kernels"}
                    else:
                        r["fpx"] = {
                            "mode": fpx_mode,
                            "median_us": float(kern["median_us"]),
                            "weight_bytes": int(kern["weight_bytes"]),
                            "weight_gb_per_s": float(kern["weight_gb_per_s"]),
                            "native": bool(kern.get("native")),
                            "run_median_us": res.get("median_us"),
                            "run_min_us": res.get("min_us"),
                            "iters": res.get("iters"),
                            "cmd": res.get("cmd"),
                        }
                        log(f"  fpx ({fpx_mode}) M={m}: QuantMatMul median {kern['median_us']:.1f} us")
                r["fpx_a8"] = None
                if fpx_a8 is not None:
                    res = fpx.bench(fpx_a8, {"X": xs[m]}, t, args.iters, args.cell_seconds)
                    kern = quant_kernel(res) if "error" not in res else None
                    if kern is None:
                        r["fpx_a8"] = {"error": res.get("error", "no QuantMatMul entry")}
                    else:
                        r["fpx_a8"] = {"median_us": float(kern["median_us"]), "weight_bytes": int(kern["weight_bytes"]),
                                       "weight_gb_per_s": float(kern["weight_gb_per_s"]), "cmd": res.get("cmd")}
                        log(f"  fpx e2m3 int8-activations M={m}: QuantMatMul median {kern['median_us']:.1f} us")
                r["targets_a8"] = targets_for(m, (r["fpx_a8"] or {}).get("median_us"), r["ort"])
                fx = r["fpx"] or {}
                fus = fx.get("median_us")
                r["speedup"] = {key: (r["ort"][key]["median_us"] / fus if fus else None) for key, _ in ORT_VARIANTS}
                bw = membw.get(t, {}).get("gb_per_s")
                r["fpx_pct_of_membw"] = (100.0 * fx["weight_gb_per_s"] / bw) if fus and bw else None
                wb = fx.get("weight_bytes")
                r["working_set_note"] = ws_note(wb)
                r["targets"] = targets_for(m, fus, r["ort"])
                rows.append(r)
            del sessions
            gc.collect()
    return rows


def half_twin(model: Path, wd: Path) -> Path | str:
    """MiniLM's FP16 twin in `wd` (made once with onnxconverter_common, inputs and outputs kept
    FP32), or why there is none."""
    out = wd / "minilm-l6-v2-fp16.onnx"
    if out.exists():
        return out
    try:
        from onnxconverter_common import float16
    except ImportError:
        return "onnxconverter-common is not installed (pip install onnxconverter-common)"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = float16.convert_float_to_float16(onnx.load(str(model)), keep_io_types=True)
    onnx.save(m, str(out))
    return out


def bench_minilm(args, wd: Path, fpx: Fpx | None) -> dict:
    d = Path(args.minilm)
    model = d / "model.onnx"
    if args.no_minilm:
        return {"skipped": "--no-minilm"}
    if not model.exists():
        return {"skipped": f"{model} not found"}
    names = [i.name for i in onnx.load(str(model), load_external_data=False).graph.input]
    inputs = {}
    for nm in names:
        f = d / f"{nm}.npy"
        if not f.exists():
            return {"skipped": f"input {f} not found"}
        inputs[nm] = f
    feed = {nm: np.load(f) for nm, f in inputs.items()}
    shape = list(next(iter(feed.values())).shape)
    out = {"model": str(model), "input_shape": shape, "rows": []}
    fp6 = None
    fp6_a8 = None
    mode = None
    if fpx is not None:
        fp6 = fpx.compile(model, wd / "minilm-l6-v2_fp6-e3m2.fpx")
        mode = "compiled" if fp6 is not None else "reference"
        fp6_a8 = fpx.compile(model, wd / "minilm-l6-v2_fp6-e2m3-a8.fpx", weights="fp6-e2m3", activations="int8")
    out["fpx_fp6_mode"] = mode
    # The FP16 twin, as GPU-targeted exports are (onnxconverter_common, I/O kept FP32).
    fp16_model, fp16_art = half_twin(model, wd), None
    if isinstance(fp16_model, str):
        out["fp16_skipped"] = fp16_model
        fp16_model = None
    elif fpx is not None:
        fp16_art = fpx.compile(fp16_model, wd / "minilm-l6-v2-fp16_fp6-e3m2.fpx")
    ref = d / "ref_last_hidden_state.npy"
    mask = feed.get("attention_mask")

    def pooled(h) -> np.ndarray:
        """Sentence embeddings: last_hidden_state mean-pooled over the attention mask (the
        sentence-transformers pooling), one row per sentence."""
        h = np.asarray(h, dtype=np.float64)
        m = np.ones(h.shape[:2]) if mask is None else mask.astype(np.float64)
        return (h * m[..., None]).sum(axis=1) / np.maximum(m.sum(axis=1, keepdims=True), 1.0)

    want = pooled(np.load(ref)) if ref.exists() else None

    def cosine(got) -> float | None:
        """Mean cosine of the sentence embeddings vs the FP32 reference's (as `fpx report`'s pooled_cos)."""
        if want is None or got is None or np.shape(got) != np.load(ref).shape:
            return None
        a = pooled(got)
        return float(np.mean([x @ y / (np.linalg.norm(x) * np.linalg.norm(y)) for x, y in zip(a, want)]))

    # The CPU peers, each made by onnxruntime's own tools from the same FP32 model.
    peers = {"ort_fp32": model, "ort_int8": dynamic_int8(model, wd / "minilm-l6-v2_int8_dyn.onnx"),
             "ort_int4_l4": make_int4_model_of(model, wd / "minilm-l6-v2_int4_b32_lvl4.onnx", args.ort_quantizer)}
    for t in args.threads:
        row = {"threads": t}
        for key, path in peers.items():
            log(f"MiniLM T={t}: {key}")
            sess = ort_session(path, t)
            row[key] = time_ort(sess, feed, args.iters, 2 * args.cell_seconds)
            row[key]["cosine_vs_fp32"] = cosine(sess.run(None, feed)[0])
            del sess
            gc.collect()
        if fpx is not None:
            log(f"MiniLM T={t}: fpx fp32")
            r = fpx.bench(model, inputs, t, args.iters, 2 * args.cell_seconds)
            row["fpx_fp32"] = ({"error": r["error"]} if "error" in r else
                               {"median_us": r["median_us"], "min_us": r.get("min_us"), "iters": r.get("iters"),
                                "per_op_us": r.get("per_op_us")})
            log(f"MiniLM T={t}: fpx fp6-e3m2 ({mode})")
            od = wd / "minilm-out-fp6"
            if fp6 is not None:
                r = fpx.bench(fp6, inputs, t, args.iters, 2 * args.cell_seconds, output_dir=od)
            else:
                r = fpx.bench(model, inputs, t, args.iters, 2 * args.cell_seconds, weights="fp6-e3m2", output_dir=od)
            row["fpx_fp6"] = ({"error": r["error"], "mode": mode} if "error" in r else
                              {"median_us": r["median_us"], "min_us": r.get("min_us"), "iters": r.get("iters"),
                               "mode": mode, "per_op_us": r.get("per_op_us"),
                               "cosine_vs_fp32": cosine(np.load(od / "last_hidden_state.npy"))
                               if (od / "last_hidden_state.npy").exists() else None})
            if fp6_a8 is not None:
                log(f"MiniLM T={t}: fpx fp6-e2m3, int8 activations")
                od = wd / "minilm-out-fp6-a8"
                r = fpx.bench(fp6_a8, inputs, t, args.iters, 2 * args.cell_seconds, output_dir=od)
                row["fpx_fp6_a8"] = ({"error": r["error"]} if "error" in r else
                                     {"median_us": r["median_us"], "min_us": r.get("min_us"), "iters": r.get("iters"),
                                      "per_op_us": r.get("per_op_us"),
                                      "cosine_vs_fp32": cosine(np.load(od / "last_hidden_state.npy"))
                                      if (od / "last_hidden_state.npy").exists() else None})
        if fp16_model is not None:
            log(f"MiniLM T={t}: ORT fp16")
            sess = ort_session(fp16_model, t)
            row["ort_fp16"] = time_ort(sess, feed, args.iters, 2 * args.cell_seconds)
            del sess
            gc.collect()
            for key, art in (("fpx_fp6_of_fp32", fp6), ("fpx_fp6_of_fp16", fp16_art)):
                if art is None:
                    continue
                log(f"MiniLM T={t}: {key}")
                od = wd / f"minilm-out-{key}"
                r = fpx.bench(art, inputs, t, args.iters, 2 * args.cell_seconds, output_dir=od)
                row[key] = {"error": r["error"]} if "error" in r else {"median_us": r["median_us"], "iters": r.get("iters")}
                got = od / "last_hidden_state.npy"
                if "error" not in r and ref.exists() and got.exists():
                    a, b = np.load(got).astype(np.float64).ravel(), np.load(ref).astype(np.float64).ravel()
                    row[key]["cosine_vs_fp32"] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        out["rows"].append(row)
    return out
