"""What the benchmark prints and writes: number formatting, the plain-text tables, the issue's
targets per kernel row, the four printed sections (header, read bandwidth, kernels, MiniLM), the
closing line, and the JSON document of every number (--json)."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from bench.common import ORT_VARIANTS

if TYPE_CHECKING:
    from bench.measure import Fpx

L3_NOTE_LIMIT = 256 * 2**20  # working sets under this may partly sit in a large L3


# ---------------------------------------------------------------------------------------------
# Formatting


def fmt_us(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:,.0f}" if v >= 1000 else f"{v:.1f}"


def fmt_x(v) -> str:
    return "n/a" if v is None else f"{v:.2f}×"


def table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    right = right if right is not None else set(range(len(headers)))
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def mib(b) -> str:
    return f"{b / 2**20:.1f} MiB"


L3_BYTES: int | None = None  # set from machine_info(), by set_l3_bytes()


def set_l3_bytes(l3_bytes: int | None) -> None:
    """The machine's L3 size, which ws_note compares the weights with."""
    global L3_BYTES
    L3_BYTES = l3_bytes


def ws_note(weight_bytes: int | None) -> str | None:
    """Where the weights can live between back-to-back runs."""
    if weight_bytes is None:
        return None
    if L3_BYTES and weight_bytes <= L3_BYTES:
        return "fits L3"
    if weight_bytes < L3_NOTE_LIMIT:
        return "L3-assisted possible"
    return "DRAM"


def targets_for(m: int, fpx_us, ort: dict) -> dict | None:
    """The issue's targets. M=1: >=5x faster than FP32, faster than int4 lvl0, within 1.2x of int4
    lvl4. M>1: faster than all three. Returns {name: bool} or None when fpx has no number."""
    if fpx_us is None:
        return None
    f32, l0, l4 = (ort.get(k, {}).get("median_us") for k in ("ort_fp32", "ort_int4_l0", "ort_int4_l4"))
    t = {}
    if m == 1:
        if f32 is not None:
            t["fp32_ge_5x"] = f32 / fpx_us >= 5.0
        if l0 is not None:
            t["faster_than_int4_l0"] = fpx_us < l0
        if l4 is not None:
            t["within_1.2x_of_int4_l4"] = fpx_us <= 1.2 * l4
    else:
        if f32 is not None:
            t["faster_than_fp32"] = fpx_us < f32
        if l0 is not None:
            t["faster_than_int4_l0"] = fpx_us < l0
        if l4 is not None:
            t["faster_than_int4_l4"] = fpx_us < l4
    return t


TARGET_LABELS = {
    "fp32_ge_5x": "fp32 ≥5×", "faster_than_fp32": "< fp32", "faster_than_int4_l0": "< int4-l0",
    "within_1.2x_of_int4_l4": "≤1.2× int4-l4", "faster_than_int4_l4": "< int4-l4",
}


def fmt_targets(t: dict | None) -> str:
    if t is None:
        return "n/a"
    return " ".join(f"{TARGET_LABELS[name]}{'✓' if ok else '✗'}" for name, ok in t.items())


# ---------------------------------------------------------------------------------------------
# Printed sections


def print_header(args, info: dict, wd: Path, fpx_path: str | None, fpx_note: str | None) -> None:
    """Date, machine, versions, the fpx binary and the run's settings."""
    print("fpx CPU benchmark — " + datetime.datetime.now().isoformat(timespec="seconds"))
    print(f"machine: {info.get('cpu', '?')}, {info['cpus']} CPUs, L3 "
          f"{mib(info['l3_bytes']) if info.get('l3_bytes') else '?'}, SIMD {','.join(info.get('simd', []))}; "
          f"load average at start {', '.join(f'{x:.2f}' for x in info.get('loadavg_start', []))}")
    print(f"versions: onnxruntime {ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}, "
          f"python {platform.python_version()}")
    print(f"fpx: {fpx_path or 'n/a'}" + (" (debug build: fpx timings are not representative)"
                                         if fpx_path and "/debug/" in os.path.realpath(fpx_path) else "")
          + f"; artifacts compiled with --cpu {args.cpu}")
    if fpx_note:
        print(f"fpx columns: n/a — {fpx_note}")
    print(f"workdir: {wd}; seed {args.seed}; threads {','.join(map(str, args.threads))}; "
          f"iters ≤ {args.iters} per cell (≈{args.cell_seconds:g} s budget)")
    print()


def print_membw(args, membw: dict, membw_err: str | None) -> None:
    """Section 1: the read bandwidth per thread count."""
    print("1. Machine read bandwidth (max-reduction over "
          f"{args.membw_gib} GiB, measured in this run)")
    if membw_err:
        print(f"   fpx membw unavailable ({membw_err}); numpy fallback, used for every thread count")
    rows = [[str(t), membw[t]["source"], f"{membw[t]['gb_per_s']:.2f}", f"{membw[t]['seconds'] * 1e3:.1f}"]
            for t in args.threads]
    print(table(["T", "source", "GB/s", "ms"], rows, right={0, 2, 3}))
    print()


def print_kernels(kernel_rows: list[dict], overhead: float, quantizer: str | None, fpx: Fpx | None,
                  fpx_note: str | None) -> None:
    """Section 2: how each column was measured, the median table with targets, the minimum table."""
    modes = {r["fpx"]["mode"] for r in kernel_rows if r.get("fpx")}
    print("2. Matrix product Y[M,N] = X[M,K]·W[K,N]: median µs per call")
    print(f"   ORT: one-node models, intra_op_num_threads=T, inter_op=1, all graph optimizations; wall time of "
          f"session.run (includes ≈{overhead:.1f} µs call overhead, measured on an Identity model).")
    print("   ORT int8 dyn: quantize_dynamic(per_channel=True, QInt8) of the same model (int8 weights, activations "
          "quantized per call: the usual CPU choice).")
    print(f"   ORT int4: MatMulNBits bits=4 block_size=32 symmetric, quantized by {quantizer}; "
          f"accuracy_level 0 (fp32 compute) / 4 (int8 activations).")
    if fpx is None:
        print(f"   fpx: n/a — {fpx_note}")
    else:
        if "compiled" in modes:
            print("   fpx fp6: `fpx compile --weights fp6-e3m2` artifact, `fpx bench MODEL.fpx --json`, "
                  "QuantMatMul kernel median (in-process).")
        if "reference" in modes:
            print(f"   fpx fp6{' rows marked *' if 'compiled' in modes else ''}: REFERENCE PATH (no compiled kernels "
                  f"yet): `fpx bench MODEL.onnx --weights fp6-e3m2`, QuantMatMul kernel median; `fpx compile` "
                  f"failed: {fpx.compile_error}")
    non_native = [r for r in kernel_rows if (r.get("fpx") or {}).get("mode") == "compiled"
                  and (r.get("fpx") or {}).get("native") is False]
    if non_native:
        print(f"   note: {len(non_native)} compiled row(s) report native=false (kernel not generated code)")
    print("   weights = fpx FP6 weight bytes (codes + scales): 'fits L3' when ≤ the L3 size, 'L3-assisted "
          "possible' when < 256 MiB (part may stay in L3 across back-to-back runs), else 'DRAM'.")
    print("   ORT variants are timed in two passes (fp32, l0, l4, then l4, l0, fp32; ≥100 ms of untimed runs "
          "before each stretch); fpx runs right after them, in its own process.")
    print("   Targets (issue): M=1: fpx ≥5× faster than ORT fp32, faster than int4 lvl0, within 1.2× of int4 "
          "lvl4 (fpx ≤ 1.2 × lvl4 time); M=8, 32: faster than all three.")
    hdr = ["K×N", "M", "T", "ORT fp32", "ORT i8 dyn", "ORT i4 l0", "ORT i4 l4", "fpx fp6", "vs fp32", "vs i8", "vs i4l0",
           "vs i4l4", "fpx GB/s", "% BW", "weights", "targets met", "fpx e2m3·a8", "a8 vs i8", "targets met (a8)"]
    trows = []
    for r in kernel_rows:
        fx = r.get("fpx") or {}
        fus = fx.get("median_us")
        wb = fx.get("weight_bytes")
        trows.append([
            f"{r['K']}×{r['N']}", str(r["M"]), str(r["threads"]),
            fmt_us(r["ort"]["ort_fp32"]["median_us"]), fmt_us(r["ort"]["ort_int8"]["median_us"]),
            fmt_us(r["ort"]["ort_int4_l0"]["median_us"]), fmt_us(r["ort"]["ort_int4_l4"]["median_us"]),
            fmt_us(fus) + ("*" if fus and fx.get("mode") == "reference" and "compiled" in modes else ""),
            fmt_x(r["speedup"]["ort_fp32"]), fmt_x(r["speedup"]["ort_int8"]), fmt_x(r["speedup"]["ort_int4_l0"]),
            fmt_x(r["speedup"]["ort_int4_l4"]),
            f"{fx['weight_gb_per_s']:.1f}" if fus else "n/a",
            f"{r['fpx_pct_of_membw']:.0f}%" if r.get("fpx_pct_of_membw") is not None else "n/a",
            f"{mib(wb)} {ws_note(wb)}" if wb else "n/a",
            fmt_targets(r.get("targets")),
            fmt_us((r.get("fpx_a8") or {}).get("median_us")),
            fmt_x(r["ort"]["ort_int8"]["median_us"] / r["fpx_a8"]["median_us"]) if (r.get("fpx_a8") or {}).get("median_us") else "n/a",
            fmt_targets(r.get("targets_a8")),
        ])
    print("   fpx e2m3·a8: `fpx compile --weights fp6-e2m3 --activations int8` (same FP6 bytes; activations quantized "
          "to int8 per row and block of 32 inside the timed call, byte dot products — like int4 lvl4).")
    print(table(hdr, trows, right={1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 17}))
    errs = sorted({(r["fpx"]["error"]) for r in kernel_rows if r.get("fpx") and r["fpx"].get("error")})
    for e in errs:
        print(f"   fpx error: {e}")
    print()
    print("   Minimum µs (iterations): ORT fp32 / int4 l0 / int4 l4 / fpx run (whole `fpx bench` run, min)")
    mrows = []
    for r in kernel_rows:
        fx = r.get("fpx") or {}
        mrows.append([f"{r['K']}×{r['N']}", str(r["M"]), str(r["threads"])] +
                     [f"{fmt_us(r['ort'][k]['min_us'])} ({r['ort'][k]['iters']})" for k, _ in ORT_VARIANTS] +
                     [f"{fmt_us(fx.get('run_min_us'))} ({fx.get('iters', '-')})" if fx.get("median_us") else "n/a"])
    print(table(["K×N", "M", "T"] + [lbl for _, lbl in ORT_VARIANTS] + ["fpx run"], mrows))
    if fpx and fpx.compile_seconds:
        print("   fpx compile wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in fpx.compile_seconds.items()))
    print()


def print_minilm(minilm: dict, fpx: Fpx | None) -> None:
    """Section 3: MiniLM-L6-v2 end to end (or why it was skipped)."""
    print("3. MiniLM-L6-v2 end to end (median ms per batch)")
    if "skipped" in minilm:
        print(f"   skipped: {minilm['skipped']}")
    else:
        mode = minilm.get("fpx_fp6_mode")
        print(f"   inputs {minilm['input_shape']} (batch × tokens) from {Path(minilm['model']).parent}; "
              f"ORT = session.run wall time; fpx = `fpx bench --json` median_us (whole model, in-process)")
        if mode == "reference":
            why = fpx.compile_errors.get(Path(minilm["model"]).name, fpx.compile_error) if fpx else None
            print("   fpx fp6: REFERENCE PATH (no compiled kernels yet): `fpx bench model.onnx --weights fp6-e3m2`"
                  + (f"; `fpx compile` failed: {why}" if why else ""))
        elif mode == "compiled":
            print("   fpx fp6: `fpx compile model.onnx --weights fp6-e3m2` artifact")

        def ms(d):
            if d is None:
                return "n/a"
            return "error" if "error" in d else f"{d['median_us'] / 1e3:.2f}"

        def sp(a, b):
            return (f"{a['median_us'] / b['median_us']:.2f}×" if a and b and "error" not in a and "error" not in b
                    else "n/a")

        print("   fpx e2m3·a8: `fpx compile model.onnx --weights fp6-e2m3 --activations int8` artifact")
        print("   ORT i8 dyn = quantize_dynamic(per_channel=True, QInt8); ORT i4 l4 = MatMulNBits 4 bits, block 32, "
              "accuracy_level 4; cos = sentence-embedding cosine (last_hidden_state mean-pooled over the attention mask, mean "
              "over the sentences) vs the FP32 reference's (ref_last_hidden_state.npy), as `fpx report`'s pooled_cos")

        def cos(d):
            return f"{d['cosine_vs_fp32']:.5f}" if d and "error" not in d and d.get("cosine_vs_fp32") is not None else "n/a"

        cols = [("ort_fp32", "ORT fp32"), ("ort_int8", "ORT i8 dyn"), ("ort_int4_l4", "ORT i4 l4"), ("fpx_fp32", "fpx fp32"),
                ("fpx_fp6", "fpx fp6"), ("fpx_fp6_a8", "fpx e2m3·a8")]
        mrows = [[str(r["threads"])] + [ms(r.get(k)) for k, _ in cols] +
                 [sp(r["ort_fp32"], r.get("fpx_fp6")), sp(r.get("ort_int8"), r.get("fpx_fp6_a8"))]
                 for r in minilm["rows"]]
        print(table(["T"] + [lbl for _, lbl in cols] + ["fp6 vs ORT fp32", "e2m3·a8 vs ORT i8"], mrows))
        print("   cosine: " + ", ".join(f"{lbl} {cos(minilm['rows'][0].get(k))}" for k, lbl in cols if k != "fpx_fp32")
              + " (the first thread count's run)")
        # Issue 16's targets, both thread counts: e2m3·a8 >= 1.5x ORT int8 dyn with cos >= 0.997;
        # fp6 (f32 activations) >= 2x ORT fp32 with cos >= 0.993.
        for r in minilm["rows"]:
            checks = []
            for key, peer, factor, floor in (("fpx_fp6_a8", "ort_int8", 1.5, 0.997), ("fpx_fp6", "ort_fp32", 2.0, 0.993)):
                a, b = r.get(key), r.get(peer)
                if not a or not b or "error" in a or "error" in b:
                    continue
                x = b["median_us"] / a["median_us"]
                c = a.get("cosine_vs_fp32")
                ok = x >= factor and c is not None and c >= floor
                checks.append(f"{key} {x:.2f}× {peer} (≥{factor}×), cos {cos(a)} (≥{floor}) {'met' if ok else 'MISSED'}")
            print(f"   targets T={r['threads']}: " + ("; ".join(checks) if checks else "n/a"))
        if "fp16_skipped" in minilm:
            print(f"   FP16 twin: skipped: {minilm['fp16_skipped']}")
        elif any("ort_fp16" in r for r in minilm["rows"]):
            def cos(d):
                return f"{d['cosine_vs_fp32']:.5f}" if d and "cosine_vs_fp32" in d else "n/a"
            print("   FP16 twin (onnxconverter_common float16, inputs/outputs FP32): ORT runs it in FP16; `fpx compile`"
                  " runs it in f32 (FP6 e3m2 weights); cosine = last_hidden_state vs ORT FP32 of the FP32 model")
            hrows = [[str(r["threads"]), ms(r.get("ort_fp16")), ms(r.get("fpx_fp6_of_fp32")), ms(r.get("fpx_fp6_of_fp16")),
                      sp(r.get("fpx_fp6_of_fp16"), r.get("fpx_fp6_of_fp32"))
                      if r.get("fpx_fp6_of_fp16") else "n/a",
                      cos(r.get("fpx_fp6_of_fp32")), cos(r.get("fpx_fp6_of_fp16"))]
                     for r in minilm["rows"]]
            print(table(["T", "ORT fp16", "fpx fp6 of FP32", "fpx fp6 of FP16", "FP16 / FP32 time", "cos (of FP32)", "cos (of FP16)"],
                        hrows))
        for r in minilm["rows"]:
            for key in ("fpx_fp32", "fpx_fp6", "fpx_fp6_a8", "fpx_fp6_of_fp32", "fpx_fp6_of_fp16"):
                if r.get(key) and "error" in r[key]:
                    print(f"   {key} T={r['threads']}: {r[key]['error']}")
    print()


def print_total(total: float, info: dict) -> None:
    """The closing line: wall time of the run and the load average at its end."""
    print(f"total {total:.0f} s; load average at end {', '.join(f'{x:.2f}' for x in info.get('loadavg_end', []))}"
          " (other processes on these cores make every number noisier)")


def write_json(args, *, info: dict, fpx_path: str | None, fpx_note: str | None, fpx: Fpx | None, membw: dict,
               membw_err: str | None, overhead: float, quantizer: str | None, kernel_rows: list[dict],
               minilm: dict, total: float, llm: dict | None = None, peak: dict | None = None,
               peak_err: str | None = None, compute_rows: list[dict] | None = None) -> None:
    """Every number of the run as one JSON document in args.json."""
    doc = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": info,
        "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__},
        "args": {k: v for k, v in vars(args).items()},
        "fpx": {"path": fpx_path, "note": fpx_note, "compile_errors": fpx.compile_errors if fpx else {},
                "compile_seconds": fpx.compile_seconds if fpx else {}},
        "membw": {str(t): v for t, v in membw.items()},
        "membw_fallback_reason": membw_err,
        "ort_call_overhead_us": overhead,
        "ort_int4_quantizer": quantizer,
        "targets": "M=1: fpx >= 5x faster than ORT fp32, faster than int4 lvl0, <= 1.2x int4 lvl4 time; "
                   "M>1: faster than all three",
        "kernels": kernel_rows,
        "minilm": minilm,
        "llm": llm,
        "peak": {str(t): v for t, v in (peak or {}).items()},
        "peak_error": peak_err,
        "compute_bound": compute_rows or [],
        "total_seconds": total,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"JSON written to {args.json}")
