"""Section 5: compute-bound products. At M = 128..512 rows a product is bound by arithmetic, not
by reading the weight, so its yardstick is the core's arithmetic peak (`fpx peak`, measured in
this run) instead of the read bandwidth. Per K×N (MiniLM's and the bench LLaMA's shapes), M and
thread count: onnxruntime FP32 and its dynamic int8 model beside fpx FP6 e3m2 (f32 activations)
and FP6 e2m3 with int8 activations, each as µs per product and GOPS (2·M·K·N / time), fpx's
share of the matching peak (int8 dot products for the int8 paths, f32 FMAs for the f32 ones),
and the speed ratios the CPU-speed issue asks for."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np

from bench.common import log
from bench.measure import Fpx, ort_session, parse_json_stdout, quant_kernel, run_cmd, time_ort_interleaved
from bench.models import make_fp32_model, make_input, make_int8_model
from bench.report import fmt_us, fmt_x, table

# MiniLM-L6's products (attention output / MLP in and out: 384x384, 384x1536, 1536x384) and the
# bench LLaMA's (q/o 2048x2048, gate|up 2048x5632, down 5632x2048).
DEFAULT_SHAPES = [(384, 1536), (1536, 384), (2048, 5632), (5632, 2048)]
DEFAULT_MS = [128, 512]
QUICK_SHAPES = [(384, 1536), (2048, 5632)]
QUICK_MS = [128]


def measure_peak(fpx_path: str | None, threads: list[int]) -> tuple[dict, str | None]:
    """{T: `fpx peak --threads T --json`}, or ({}, why not)."""
    if not fpx_path:
        return {}, "no fpx binary"
    out = {}
    for t in threads:
        cmd = [fpx_path, "peak", "--threads", str(t), "--json"]
        r = run_cmd(cmd, timeout=120)
        if r["rc"] != 0:
            return out, f"`fpx peak --threads {t}` failed: {r['why']}"
        try:
            j = parse_json_stdout(r["stdout"])
            out[t] = {"int8_gops": float(j["int8_gops"]), "int8_instruction": str(j["int8_instruction"]),
                      "f32_gflops": float(j["f32_gflops"]), "f32_instruction": str(j["f32_instruction"])}
        except (ValueError, KeyError, TypeError) as e:
            return out, f"`fpx peak` printed unexpected JSON ({e}): {r['stdout'][:200]!r}"
    return out, None


def gops(m: int, k: int, n: int, us: float | None) -> float | None:
    return 2.0 * m * k * n / (us * 1e-6) / 1e9 if us else None


def bench_compute(args, wd: Path, fpx: Fpx | None, peak: dict) -> list[dict]:
    """One row per (K×N, T, M): the four peers' medians, GOPS and fpx's share of the peak."""
    rows = []
    for (k, n) in args.compute_shapes:
        fp32_path = make_fp32_model(wd, k, n, args.seed)
        int8_path = make_int8_model(wd, k, n, args.seed)
        xs = {m: make_input(wd, m, k, args.seed) for m in args.compute_ms}
        fp6 = a8 = None
        if fpx is not None:
            fp6 = fpx.compile(fp32_path, wd / f"matmul_k{k}_n{n}_seed{args.seed}_fp6-e3m2.fpx")
            a8 = fpx.compile(fp32_path, wd / f"matmul_k{k}_n{n}_seed{args.seed}_fp6-e2m3-a8.fpx",
                             weights="fp6-e2m3", activations="int8")
        for t in args.threads:
            log(f"compute-bound {k}x{n} T={t}: ORT sessions")
            sessions = {"ort_fp32": ort_session(fp32_path, t), "ort_int8": ort_session(int8_path, t)}
            for m in args.compute_ms:
                r = {"K": k, "N": n, "M": m, "threads": t, "peak": peak.get(t)}
                ort = time_ort_interleaved(sessions, {"X": np.load(xs[m])}, args.iters, args.cell_seconds)
                r["ort"] = ort
                for key, art in (("fpx_fp6", fp6), ("fpx_a8", a8)):
                    if art is None:
                        r[key] = {"error": "no artifact" if fpx is not None else "no fpx binary"}
                        continue
                    res = fpx.bench(art, {"X": xs[m]}, t, args.iters, args.cell_seconds)
                    kern = quant_kernel(res) if "error" not in res else None
                    r[key] = ({"median_us": float(kern["median_us"]), "cmd": res.get("cmd")} if kern
                              else {"error": res.get("error", "no QuantMatMul entry in `fpx bench --json` kernels")})
                for key, d in [("ort_fp32", ort["ort_fp32"]), ("ort_int8", ort["ort_int8"]),
                               ("fpx_fp6", r["fpx_fp6"]), ("fpx_a8", r["fpx_a8"])]:
                    d["gops"] = gops(m, k, n, d.get("median_us"))
                p = peak.get(t) or {}
                a8_g, fp6_g = r["fpx_a8"].get("gops"), r["fpx_fp6"].get("gops")
                r["fpx_a8_pct_int8_peak"] = 100.0 * a8_g / p["int8_gops"] if a8_g and p.get("int8_gops") else None
                r["fpx_fp6_pct_f32_peak"] = 100.0 * fp6_g / p["f32_gflops"] if fp6_g and p.get("f32_gflops") else None
                r["ort_int8_pct_int8_peak"] = (100.0 * ort["ort_int8"]["gops"] / p["int8_gops"]
                                               if p.get("int8_gops") else None)
                log(f"  M={m}: ORT fp32 {ort['ort_fp32']['median_us']:.0f} us, ORT i8 {ort['ort_int8']['median_us']:.0f} us, "
                    f"fpx fp6 {r['fpx_fp6'].get('median_us') or 0:.0f} us, fpx a8 {r['fpx_a8'].get('median_us') or 0:.0f} us")
                rows.append(r)
            del sessions
            gc.collect()
    return rows


def print_compute(rows: list[dict], peak: dict, peak_err: str | None) -> None:
    """Section 5: the peaks, then per (K×N, M, T) the medians, GOPS and shares of the peak."""
    print("5. Compute-bound products Y[M,N] = X[M,K]·W[K,N] (M = batch × tokens of a prefill or an encoder): "
          "median µs per call and GOPS")
    if peak_err:
        print(f"   peaks unavailable: {peak_err}")
    for t, p in sorted(peak.items()):
        print(f"   peak, {t} thread(s): int8 {p['int8_gops']:.0f} GOPS ({p['int8_instruction']}), "
              f"f32 {p['f32_gflops']:.0f} GFLOPS ({p['f32_instruction']}) — `fpx peak`, measured in this run")
    print("   GOPS = 2·M·K·N / time. ORT: one-node models (fp32; quantize_dynamic per-channel int8), session.run wall "
          "time; fpx: `fpx bench --json` QuantMatMul kernel median (fp6 = fp6-e3m2, f32 activations; "
          "a8 = fp6-e2m3, int8 activations per row and block of 32, quantized inside the timed call).")
    print("   a8 %pk / i8 %pk: share of the int8 peak; fp6 %pk: share of the f32 FMA peak.")
    if not rows:
        print("   (no rows)\n")
        return

    def us(d):
        return fmt_us(d.get("median_us")) if "error" not in d else "err"

    def g(d):
        v = d.get("gops")
        return "n/a" if v is None else f"{v:.0f}"

    def pct(v):
        return "n/a" if v is None else f"{v:.0f}%"

    def ratio(a, b):
        return fmt_x(a["median_us"] / b["median_us"]) if a.get("median_us") and b.get("median_us") else "n/a"

    out = []
    for r in rows:
        o = r["ort"]
        out.append([f"{r['K']}×{r['N']}", str(r["M"]), str(r["threads"]), us(o["ort_fp32"]), us(o["ort_int8"]),
                    us(r["fpx_fp6"]), us(r["fpx_a8"]), g(o["ort_fp32"]), g(o["ort_int8"]), g(r["fpx_fp6"]),
                    g(r["fpx_a8"]), pct(r["fpx_a8_pct_int8_peak"]), pct(r["ort_int8_pct_int8_peak"]),
                    pct(r["fpx_fp6_pct_f32_peak"]), ratio(o["ort_int8"], r["fpx_a8"]), ratio(o["ort_fp32"], r["fpx_fp6"])])
    print(table(["K×N", "M", "T", "ORT fp32 µs", "ORT i8 µs", "fpx fp6 µs", "fpx a8 µs", "fp32 GOPS", "i8 GOPS",
                 "fp6 GOPS", "a8 GOPS", "a8 %pk", "i8 %pk", "fp6 %pk", "a8 vs i8", "fp6 vs fp32"],
                out, right=set(range(1, 16))))
    errors = [(r, key, r[key]["error"]) for r in rows for key in ("fpx_fp6", "fpx_a8") if "error" in r[key]]
    for r, key, why in errors:
        print(f"   {key} {r['K']}×{r['N']} M={r['M']} T={r['threads']}: {why}")
    print()
