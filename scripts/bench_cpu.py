#!/usr/bin/env python3
"""fpx CPU benchmark: fpx FP6 matrix products and models vs onnxruntime FP32, dynamic int8 and int4 MatMulNBits.

Prints, in one run:
  1. the machine's read bandwidth, measured now (`fpx membw`, or numpy when that is missing);
  2. a kernel table per (K×N, M, threads): onnxruntime FP32 MatMul, its `quantize_dynamic` int8 model
     (per-channel, the usual CPU choice), MatMulNBits (4 bits, block 32, symmetric) with accuracy_level 0 and 4, fpx FP6 e3m2 (the QuantMatMul kernel time that
     `fpx bench --json` measures in-process), speed-ups, weight bandwidth, and which of the issue's
     targets each row meets; then fpx FP6 e2m3 with int8 activations (`--activations int8`, the
     like-for-like peer of int4 accuracy_level 4) and its targets;
  3. MiniLM-L6-v2 end to end (if ../shared/models/minilm-l6-v2 exists): ORT FP32, dynamic int8 and int4
     MatMulNBits level 4 (each made by onnxruntime's own tools) vs fpx FP32, FP6 (e3m2) and FP6 e2m3 with
     int8 activations, with each path's sentence-embedding cosine vs FP32 and the CPU-speed targets;
  4. an LLM decoder with a KV cache (a LLaMA-shaped model generated with numpy + onnx: hidden 2048,
     SiLU MLP 5632, 16 heads / 4 KV heads × 128, vocab 8192, 2 layers with --quick, else 4): a decode
     step after 128 cached tokens (full run: also 1024, and a 128-token prefill), batch 1, onnxruntime
     FP32 / dynamic int8 / int4 MatMulNBits level 4 vs fpx fp6-e3m2 and e2m3 + int8 activations: ms per
     step, tokens/s, weight GB/s vs the read bandwidth, logits cosine vs onnxruntime FP32; first a
     check that onnxruntime runs the model and that fpx FP32 gives the same logits (rel. error <= 1e-4);
  5. compute-bound products (M = 128, 512 on MiniLM's and the bench LLaMA's K×N): onnxruntime FP32 and
     dynamic int8 vs fpx FP6 (f32 activations) and FP6 e2m3 + int8 activations, µs and GOPS, and fpx's
     share of this core's int8 / f32 peak (`fpx peak`, measured in the same run).

Normally started through scripts/bench-cpu.sh (setup, release build, then this script):
    ./scripts/bench-cpu.sh                  # full run (about 3 min on 2 cores with compiled fpx
                                            # kernels, models cached; 15 min at most)
    ./scripts/bench-cpu.sh --quick          # 4096x4096, M in 1, 8; LLM: 2 layers, past 128, 2 threads
                                            # (a few minutes; the first run also builds the LLM models)
    ./scripts/bench-cpu.sh --quick --no-kernels --no-minilm   # only the LLM section
    .venv/bin/python scripts/bench_cpu.py --fpx target/debug/fpx --quick --json out.json

Models, inputs and compiled artifacts go to --workdir (default /tmp/fpx-bench) and are reused by
later runs (file names carry shape and seed; compiled .fpx files are reused only while the fpx
binary is unchanged).

The fpx command-line contract this script relies on:
  fpx membw --threads T --gib 1 --json
      -> {"threads": T, "bytes": N, "seconds": S, "gb_per_s": X}
  fpx peak --threads T --json
      -> {"threads": T, "int8_gops": G, "int8_instruction": "..", "f32_gflops": F, "f32_instruction": "..", ...}
  fpx compile MODEL.onnx -o MODEL.fpx --weights fp6-e3m2
  fpx bench MODEL.fpx|MODEL.onnx [--weights SCHEME] --input NAME=FILE.npy ... --iters I --threads T --json
        [--output-dir DIR]   (LLM section: the warm-up run's outputs as DIR/logits.npy, ...)
      -> {"median_us": .., "min_us": .., "kernels": [{"node", "op", "native", "median_us",
          "weight_bytes", "weight_gb_per_s"}, ...], ...}
When `fpx compile` fails, the fpx column falls back to `fpx bench MODEL.onnx --weights fp6-e3m2`
(the reference executor: no compiled kernels) and says so; when `fpx membw` fails, the bandwidth
comes from numpy (np.max over 1 GiB, best of 3, one thread). Lines printed before the JSON object
are ignored.

Timing: onnxruntime cells are timed in-process (session.run wall time: warm-up, then up to --iters
runs, fewer when one run is slow, so that a cell takes about --cell-seconds); medians and minimums.
fpx cells come from `fpx bench` (one probe run with --iters 1 sizes the iterations).

This file holds the options and the main flow; the work is in scripts/bench/: models.py (the ONNX
models and their onnxruntime int4 peers), measure.py (bandwidth, onnxruntime timing, `fpx compile`
and `fpx bench`), sections.py (the kernel and MiniLM sections), report.py (tables and JSON),
llm_model.py (the LLaMA-shaped decoder; `python -m bench.llm_model` checks it against numpy),
llm.py and report_llm.py (the LLM section), compute.py (the peaks and the compute-bound section).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench import compute, report
from bench.common import log
from bench.measure import Fpx, machine_info, measure_membw, ort_overhead_us
from bench.models import quantizer_note
from bench.llm import bench_llm
from bench.report_llm import print_llm
from bench.sections import bench_kernels, bench_minilm

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (8192, 8192)]
DEFAULT_MS = [1, 8, 32]
QUICK_SHAPES = [(4096, 4096)]
QUICK_MS = [1, 8]


# ---------------------------------------------------------------------------------------------
# Command line


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for part in text.split(","):
        part = part.strip().lower().replace("×", "x")
        if not part:
            continue
        k, sep, n = part.partition("x")
        if not sep or not k.isdigit() or not n.isdigit():
            raise argparse.ArgumentTypeError(f"bad shape {part!r}: want KxN, e.g. 4096x11008")
        shapes.append((int(k), int(n)))
    if not shapes:
        raise argparse.ArgumentTypeError("no shapes given")
    return shapes


def parse_int_list(text: str) -> list[int]:
    try:
        vals = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad integer list {text!r}: want e.g. 1,2") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"bad integer list {text!r}: positive integers, comma-separated")
    return vals


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="CPU benchmark: fpx FP6 vs onnxruntime FP32, dynamic int8 and int4 MatMulNBits.\n"
                    "Sections: 1. read bandwidth; 2. matrix-product kernels; 3. MiniLM end to end; 4. an LLM\n"
                    "decoder with KV cache (LLaMA-shaped, generated with numpy + onnx and cached in --workdir):\n"
                    "decode step after 128 cached tokens (full run: also 1024, and a 128-token prefill), batch 1,\n"
                    "onnxruntime FP32 / dynamic int8 / int4 MatMulNBits lvl4 vs fpx fp6-e3m2 and e2m3 + int8\n"
                    "activations: ms/step, tokens/s, weight GB/s vs read bandwidth, logits cosine vs ORT FP32;\n"
                    "5. compute-bound products (M = 128, 512): GOPS and share of this core's int8 / f32 peak.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Shapes are K x N of the weight W[K,N]; M is the number of activation rows (batch x tokens). "
               "--quick: kernels 4096x4096 with M in 1,8; LLM 2 layers, past 128 only, 2 threads.",
    )
    p.add_argument("--fpx", default=str(ROOT / "target/release/fpx"),
                   help="fpx binary (default: target/release/fpx)")
    p.add_argument("--threads", type=parse_int_list, default=[1, 2],
                   help="comma-separated thread counts (default 1,2)")
    p.add_argument("--shapes", type=parse_shapes, default=None,
                   help="comma-separated KxN (default 4096x4096,4096x11008,11008x4096,8192x8192)")
    p.add_argument("--ms", type=parse_int_list, default=None, help="comma-separated M values (default 1,8,32)")
    p.add_argument("--quick", action="store_true",
                   help="only 4096x4096 and M in 1,8 (explicit --shapes / --ms still win)")
    p.add_argument("--iters", type=int, default=50,
                   help="measured iterations per cell, scaled down for slow cells (default 50)")
    p.add_argument("--cell-seconds", type=float, default=1.5,
                   help="time budget for the measured iterations of one cell (default 1.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default 0)")
    p.add_argument("--workdir", default="/tmp/fpx-bench", help="models, inputs, artifacts (default /tmp/fpx-bench)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write every number as JSON to FILE")
    p.add_argument("--minilm", default=str(ROOT.parent / "shared/models/minilm-l6-v2"),
                   help="MiniLM model folder (default ../shared/models/minilm-l6-v2)")
    p.add_argument("--no-minilm", action="store_true", help="skip the MiniLM end-to-end section")
    p.add_argument("--no-kernels", action="store_true", help="skip the matrix-product kernel section")
    p.add_argument("--no-llm", action="store_true", help="skip the LLM decoder section")
    p.add_argument("--no-compute", action="store_true", help="skip the compute-bound product section (5)")
    p.add_argument("--compute-shapes", type=parse_shapes, default=None,
                   help="K×N shapes of section 5 (default 384x1536,1536x384,2048x5632,5632x2048: MiniLM's and "
                        "the bench LLaMA's; --quick: 384x1536,2048x5632)")
    p.add_argument("--compute-ms", type=parse_int_list, default=None,
                   help="M values of section 5 (default 128,512; --quick: 128)")
    p.add_argument("--llm-layers", type=int, default=None,
                   help="decoder layers of the LLM section's model (default 2 with --quick, else 4)")
    p.add_argument("--llm-vocab", type=int, default=8192, help="vocabulary of the LLM model (default 8192)")
    p.add_argument("--llm-threads", type=parse_int_list, default=None,
                   help="comma-separated thread counts of the LLM section (default 2 with --quick, else 1,2)")
    p.add_argument("--llm-cell-seconds", type=float, default=3.0,
                   help="time budget for the measured runs of one LLM cell (default 3)")
    p.add_argument("--llm-rounds", type=int, default=2,
                   help="rounds of each LLM cell (ORT peers interleaved, then each fpx peer); each peer keeps its "
                        "round with the lowest median, so a slow minute on a shared host does not decide a ratio "
                        "(default 2)")
    p.add_argument("--membw-gib", type=int, default=1, help="GiB read by the bandwidth measurement (default 1)")
    p.add_argument("--recompile", action="store_true", help="recompile .fpx artifacts even if cached")
    p.add_argument("--cpu", default="auto", choices=["auto", "native", "x86-64-v3", "x86-64-v4", "x86-64-v4-vnni"],
                   help="`fpx compile --cpu` for the artifacts (default auto, fpx's default: x86-64-v4-vnni and "
                        "x86-64-v3 code, the loader running the best this host has, as onnxruntime picks its kernels "
                        "for the host at run time)")
    p.add_argument("--ort-quantizer", choices=["auto", "official", "direct"], default="auto",
                   help="auto: MatMulNBitsQuantizer if it imports, else the same C++ routine "
                        "(quantize_matmul_4bits) called directly; official/direct: force one")
    a = p.parse_args(argv)
    a.shapes = a.shapes or (QUICK_SHAPES if a.quick else DEFAULT_SHAPES)
    a.ms = a.ms or (QUICK_MS if a.quick else DEFAULT_MS)
    a.compute_shapes = a.compute_shapes or (compute.QUICK_SHAPES if a.quick else compute.DEFAULT_SHAPES)
    a.compute_ms = a.compute_ms or (compute.QUICK_MS if a.quick else compute.DEFAULT_MS)
    if a.iters < 1:
        p.error("--iters must be >= 1")
    if a.llm_layers is not None and a.llm_layers < 1:
        p.error("--llm-layers must be >= 1")
    if a.llm_vocab < 8192:
        p.error("--llm-vocab must be >= 8192")
    return a


# ---------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """Runs the sections in order (bandwidth, kernels, MiniLM, LLM), printing each as it completes."""
    args = parse_args(argv)
    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    t_begin = time.perf_counter()

    info = machine_info()
    report.set_l3_bytes(info.get("l3_bytes"))
    fpx_path = args.fpx
    fpx_note = None
    if not (os.path.isfile(fpx_path) and os.access(fpx_path, os.X_OK)):
        fpx_note = f"fpx binary {fpx_path} not found (build it, or pass --fpx PATH)"
        fpx_path = None
    fpx = Fpx(fpx_path, wd, args.recompile, args.cpu) if fpx_path else None

    if max(args.threads) > (info.get("cpus") or 1):
        log(f"warning: {max(args.threads)} threads > {info.get('cpus')} CPUs")

    report.print_header(args, info, wd, fpx_path, fpx_note)

    # 1. bandwidth
    log("measuring read bandwidth")
    membw, membw_err = measure_membw(fpx_path, args.threads, args.membw_gib)
    report.print_membw(args, membw, membw_err)

    # 2. kernels
    overhead = ort_overhead_us()
    if args.no_kernels:
        kernel_rows = []
        print("2. Matrix product kernels: skipped (--no-kernels)\n")
    else:
        kernel_rows = bench_kernels(args, wd, fpx, membw)
        report.print_kernels(kernel_rows, overhead, quantizer_note(), fpx, fpx_note)

    # 3. MiniLM
    log("MiniLM end to end")
    minilm = bench_minilm(args, wd, fpx)
    report.print_minilm(minilm, fpx)

    # 4. LLM decoder
    log("LLM decoder with KV cache")
    llm = bench_llm(args, wd, fpx, membw)
    print_llm(llm)

    # 5. compute-bound products, against the arithmetic peaks measured now
    peak, peak_err, compute_rows = {}, None, []
    if args.no_compute:
        print("5. Compute-bound products: skipped (--no-compute)\n")
    else:
        log("measuring the arithmetic peaks")
        peak, peak_err = compute.measure_peak(fpx_path, args.threads)
        compute_rows = compute.bench_compute(args, wd, fpx, peak)
        compute.print_compute(compute_rows, peak, peak_err)

    try:
        info["loadavg_end"] = list(os.getloadavg())
    except OSError:
        pass
    total = time.perf_counter() - t_begin
    report.print_total(total, info)

    if args.json:
        report.write_json(args, info=info, fpx_path=fpx_path, fpx_note=fpx_note, fpx=fpx, membw=membw,
                          membw_err=membw_err, overhead=overhead, quantizer=quantizer_note(),
                          kernel_rows=kernel_rows, minilm=minilm, llm=llm, total=total, peak=peak,
                          peak_err=peak_err, compute_rows=compute_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
