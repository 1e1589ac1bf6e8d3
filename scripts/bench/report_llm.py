"""The printed LLM section: how each peer was made and timed, the model check, and one table with
every peer per (step, threads): ms per step, tokens/s, weight bandwidth vs the measured read
bandwidth, and the logits cosine vs onnxruntime FP32 beside the speed."""

from __future__ import annotations

from bench import report
from bench.llm import FPX_PEERS, MAX_REL_ERR, ORT_PEERS
from bench.report import mib, table


def _f(v, spec: str, none: str = "n/a") -> str:
    return none if v is None else format(v, spec)


def print_llm(llm: dict, section: int = 4) -> None:
    """Section 4 (or the number given): the LLM decode table, or why it was skipped."""
    print(f"{section}. LLM decoder with KV cache, batch 1 (median ms per step)")
    if "skipped" in llm:
        print(f"   skipped: {llm['skipped']}")
        print()
        return
    c = llm["config"]
    print(f"   model: LLaMA-shaped, {c['layers']} layers, hidden {c['hidden']}, MLP {c['intermediate']} (SiLU-gated), "
          f"{c['heads']} heads / {c['kv_heads']} KV heads × {c['head_dim']}, vocab {c['vocab']}, "
          f"{c['parameters'] / 1e6:.0f} M parameters; random weights (std {c['init_std']}), opset 17 "
          f"(TorchScript-exporter style, optimum's KV-cache signature); {llm['models']['ort_fp32']}")
    chk = llm.get("check", {})
    f32 = chk.get("fpx_fp32", {})
    line = (f"   check: onnxruntime runs it (logits {chk.get('ort_logits_shape')}, finite {chk.get('ort_finite')}, "
            f"std {_f(chk.get('ort_logits_std'), '.3f')}); ")
    if "error" in f32:
        line += f"fpx FP32 (the .onnx): ERROR {f32['error']}"
    else:
        line += (f"fpx FP32 (the .onnx, reference executor) logits relative max error {f32['rel_err']:.2e} "
                 f"({'OK' if f32['ok'] else 'FAIL'}: limit {MAX_REL_ERR:g})")
    print(line)
    print("   ORT peers (onnxruntime's own tools): fp32 = the model; int8 dyn = quantize_dynamic(per_channel=True, "
          f"QInt8); int4 lvl4 = MatMulNBits bits 4, block 32, symmetric, accuracy_level 4 ({llm['int4_quantizer']}).")
    print("   fpx: fp6-e3m2 = `fpx compile` default weights; e2m3·a8 = `--weights fp6-e2m3 --activations int8`; "
          "timed by `fpx bench ARTIFACT --json` (in-process, after a warm-up).")
    rounds = max((r.get("rounds", 1) for r in llm.get("rows", [])), default=1)
    if rounds > 1:
        print(f"   Each cell: {rounds} rounds of (the ORT peers interleaved, then each fpx peer); every peer shows its "
              "round with the lowest median (a shared host's load moves from minute to minute).")
    print("   ORT = session.run wall time in-process (3 sessions interleaved, warm-up first). Inputs: .npy written "
          "before timing. Weights = bytes of all weight MatMuls a step streams (embedding excluded; fpx: its "
          "QuantMatMul weights + scales); GB/s = weights / step time, % of the read bandwidth measured above. "
          "cos = logits cosine vs ORT fp32 on the same step.")
    labels = dict(ORT_PEERS) | {k: lbl for k, lbl, _, _ in FPX_PEERS}
    rows = []
    errors = []
    for r in llm["rows"]:
        base = r["peers"].get("ort_fp32", {}).get("median_us")
        for key, lbl in labels.items():
            p = r["peers"].get(key, {})
            if "error" in p:
                errors.append(f"{lbl} ({r['case']}, T={r['threads']}): {p['error']}")
                rows.append([r["case"], str(r["threads"]), lbl] + ["error"] + ["n/a"] * 7)
                continue
            us = p.get("median_us")
            rows.append([
                r["case"], str(r["threads"]), lbl,
                _f(p.get("ms_per_step"), ".2f"), _f(p.get("tokens_per_s"), ",.1f"),
                f"{base / us:.2f}×" if base and us else "n/a",
                _f(p["weight_bytes"] / 1e6 if p.get("weight_bytes") else None, ",.0f"),
                _f(p.get("weight_gb_per_s"), ".1f"),
                _f(p.get("pct_of_membw"), ".0f") + ("%" if p.get("pct_of_membw") is not None else ""),
                _f(p.get("cosine"), ".6f"),
                _f(p["quant_matmul_us"] / 1e3 if p.get("quant_matmul_us") else None, ".2f", "-"),
            ])
    print(table(["step", "T", "peer", "ms/step", "tokens/s", "vs ORT fp32", "weights MB", "GB/s", "% BW",
                 "cos vs fp32", "fpx QuantMatMul ms"], rows, right={1, 3, 4, 5, 6, 7, 8, 9, 10}))
    bws = sorted({(r["threads"], r.get("membw_gb_per_s")) for r in llm["rows"]})
    print("   read bandwidth: " + ", ".join(f"T={t} {_f(bw, '.2f')} GB/s" for t, bw in bws))
    if report.L3_BYTES:
        print(f"   L3 {mib(report.L3_BYTES)}: weights that fit may stay cached between back-to-back steps, so GB/s "
              "can exceed the DRAM read bandwidth.")
    for r in llm["rows"]:
        for key, lbl, _, _ in FPX_PEERS:
            ops = r["peers"].get(key, {}).get("per_op_us") or {}
            if ops:
                top = sorted(ops.items(), key=lambda kv: -kv[1])[:5]
                print(f"   {lbl} {r['case']} T={r['threads']}, time by op (sum of medians): "
                      + ", ".join(f"{op} {us / 1e3:.2f} ms" for op, us in top))
    for e in errors:
        print(f"   error: {e}")
    print()
