"""Measurements: machine facts and read bandwidth (`fpx membw`, or numpy), onnxruntime sessions
timed in-process (session.run wall time, interleaved across variants), and the `fpx` command line
(`fpx compile`, cached per binary; `fpx bench --json`, with a probe run to size the iterations)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from bench.common import log

FPX_TIMEOUT_S = 900


# ---------------------------------------------------------------------------------------------
# Machine


def machine_info() -> dict:
    info = {"cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text()
        info["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")
                        if f" {f}" in flags]
    except OSError:
        pass
    l3 = None
    for idx in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (idx / "level").read_text().strip() == "3":
                s = (idx / "size").read_text().strip()
                mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(s[-1], 1)
                l3 = int(s.rstrip("KMG")) * mult
        except (OSError, ValueError):
            pass
    info["l3_bytes"] = l3
    try:
        info["loadavg_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def membw_numpy(gib: int) -> dict:
    """Read bandwidth of a max-reduction over `gib` GiB of float32, one thread, best of 3."""
    a = np.ones(gib * 2**30 // 4, dtype=np.float32)  # np.ones writes every page
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        np.max(a)
        best = min(best, time.perf_counter() - t0)
    nbytes = a.nbytes
    del a
    return {"threads": 1, "bytes": nbytes, "seconds": best, "gb_per_s": nbytes / best / 1e9,
            "source": "numpy, 1 thread"}


def measure_membw(fpx: str | None, threads: list[int], gib: int) -> tuple[dict, str | None]:
    """Returns ({T: result}, note). Falls back to numpy (1 thread, used for every T)."""
    out, err = {}, None
    if fpx:
        for t in threads:
            cmd = [fpx, "membw", "--threads", str(t), "--gib", str(gib), "--json"]
            r = run_cmd(cmd, timeout=300)
            if r["rc"] != 0:
                err = f"`{' '.join(cmd[1:])}` failed: {r['why']}"
                break
            try:
                j = parse_json_stdout(r["stdout"])
                res = {"threads": int(j["threads"]), "bytes": int(j["bytes"]), "seconds": float(j["seconds"]),
                       "gb_per_s": float(j["gb_per_s"]), "source": f"fpx membw, {t} thread(s)"}
            except (ValueError, KeyError, TypeError) as e:
                err = f"`fpx membw` printed unexpected JSON ({e}): {r['stdout'][:200]!r}"
                break
            out[t] = res
    else:
        err = "no fpx binary"
    if err is None:
        return out, None
    log(f"membw: {err}; measuring with numpy instead")
    res = membw_numpy(gib)
    return {t: res for t in threads}, err


# ---------------------------------------------------------------------------------------------
# onnxruntime timing


def ort_session(model: str | Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(model), sess_options=so, providers=["CPUExecutionProvider"])


def time_ort(sess: ort.InferenceSession, feed: dict, max_iters: int, budget_s: float, min_iters: int = 5) -> dict:
    """Warm up (>= 2 runs, up to ~0.2 s), then N timed runs with N = clamp(budget / estimate)."""
    run = sess.run
    warm = []
    t_start = time.perf_counter()
    while len(warm) < 2 or (len(warm) < 20 and time.perf_counter() - t_start < 0.2):
        t0 = time.perf_counter_ns()
        run(None, feed)
        warm.append(time.perf_counter_ns() - t0)
    est = statistics.median(warm[1:]) / 1e9
    iters = max(min_iters, min(max_iters, int(budget_s / max(est, 1e-9))))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        run(None, feed)
        times.append(time.perf_counter_ns() - t0)
    return {"median_us": statistics.median(times) / 1e3, "min_us": min(times) / 1e3, "iters": iters}


def time_ort_interleaved(sessions: dict, feed: dict, max_iters: int, budget_s: float, min_iters: int = 5,
                         rounds: int = 2, settle_s: float = 0.1) -> dict:
    """Times several sessions on the same input in `rounds` passes (order A B C, then C B A, ...),
    so that slow changes in the load from other processes fall on all of them alike. Each stretch
    starts with untimed runs for >= settle_s: the intra-op worker threads of the session that ran
    before keep spinning for a while after its last run, and would otherwise steal a core (with
    short stretches this made 2-thread medians up to 3x worse). Iterations per session:
    clamp(budget / estimate, min_iters, max_iters), split over the passes."""
    est = {}
    for key, sess in sessions.items():
        warm = []
        t_start = time.perf_counter()
        while len(warm) < 2 or (len(warm) < 20 and time.perf_counter() - t_start < 0.2):
            t0 = time.perf_counter_ns()
            sess.run(None, feed)
            warm.append(time.perf_counter_ns() - t0)
        est[key] = statistics.median(warm[1:]) / 1e9
    iters = {key: max(min_iters, min(max_iters, int(budget_s / max(e, 1e-9)))) for key, e in est.items()}
    n_rounds = max(1, min(rounds, min(iters.values())))
    times: dict = {key: [] for key in sessions}
    keys = list(sessions)
    for r in range(n_rounds):
        for key in (keys if r % 2 == 0 else keys[::-1]):
            run = sessions[key].run
            share = iters[key] // n_rounds + (1 if r < iters[key] % n_rounds else 0)
            t_settle = time.perf_counter()
            run(None, feed)
            while time.perf_counter() - t_settle < settle_s:
                run(None, feed)
            for _ in range(share):
                t0 = time.perf_counter_ns()
                run(None, feed)
                times[key].append(time.perf_counter_ns() - t0)
    return {key: {"median_us": statistics.median(ts) / 1e3, "min_us": min(ts) / 1e3, "iters": len(ts)}
            for key, ts in times.items()}


def ort_overhead_us() -> float:
    """Median wall time of session.run on a one-node Identity model: the per-call overhead that the
    ORT columns include (fpx's kernel times do not)."""
    g = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "id",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 16])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
    feed = {"X": np.zeros((1, 16), np.float32)}
    return time_ort(sess, feed, 2000, 0.2)["median_us"]


# ---------------------------------------------------------------------------------------------
# fpx


def parse_json_stdout(text: str):
    """The JSON object an fpx `--json` command printed. Tolerates lines before it (e.g. a
    'weights: ...' summary line); raises ValueError when there is none."""
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    dec = json.JSONDecoder()
    pos = 0
    while True:
        i = text.find("{", pos)
        if i < 0:
            raise ValueError("no JSON object in the output")
        if i == 0 or text[i - 1] == "\n":
            try:
                obj, _ = dec.raw_decode(text, i)
                return obj
            except ValueError:
                pass
        pos = i + 1


def run_cmd(cmd: list[str], timeout: float = FPX_TIMEOUT_S) -> dict:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        return {"rc": 127, "stdout": "", "stderr": str(e), "why": str(e), "seconds": 0.0}
    except subprocess.TimeoutExpired:
        return {"rc": 124, "stdout": "", "stderr": "", "why": f"timed out after {timeout:.0f} s",
                "seconds": time.perf_counter() - t0}
    why = ""
    if p.returncode != 0:
        lines = [ln for ln in (p.stderr or p.stdout).strip().splitlines() if ln.strip()]
        why = f"exit {p.returncode}: " + (lines[0] if lines else "(no output)")
        if len(lines) > 1 and lines[0].startswith("error: unrecognized subcommand"):
            why = f"exit {p.returncode}: {lines[0]}"
    return {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr, "why": why,
            "seconds": time.perf_counter() - t0}


class Fpx:
    """fpx invocations: compile (cached per binary), bench (with a probe to size the iterations)."""

    def __init__(self, path: str | None, wd: Path, recompile: bool, cpu: str = "native"):
        self.path = path
        self.wd = wd
        self.recompile = recompile
        self.cpu = cpu
        self.compile_error: str | None = None  # first `fpx compile` failure (then: reference path)
        self.compile_errors: dict[str, str] = {}  # model file name -> why compiling it failed
        self.compile_unsupported = False  # `fpx compile` does not exist: do not try again
        self.compile_seconds: dict[str, float] = {}
        if path:
            st = os.stat(path)
            self.binary_key = f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"
        else:
            self.binary_key = ""

    def compile(self, model: Path, out: Path, weights: str = "fp6-e3m2", activations: str = "f32") -> Path | None:
        """Compiles once per (model, binary); None (and compile_error set) when compile fails."""
        if not self.path or self.compile_unsupported:
            return None
        key_file = out.with_name(out.name + ".key")
        key = f"{self.binary_key}|{model.resolve()}|{model.stat().st_mtime_ns}|{weights}|{activations}|{self.cpu}"
        if not self.recompile and out.exists() and key_file.exists() and key_file.read_text() == key:
            return out
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        cmd = [self.path, "compile", str(model), "-o", str(tmp), "--weights", weights, "--cpu", self.cpu]
        if activations != "f32":
            cmd += ["--activations", activations]
        log(f"fpx compile {model.name} --weights {weights} --activations {activations} --cpu {self.cpu}")
        r = run_cmd(cmd)
        if r["rc"] != 0 or not tmp.exists():
            why = r["why"] or "no output file written"
            self.compile_errors[model.name] = why
            if self.compile_error is None:
                self.compile_error = why
            if "unrecognized subcommand" in why:
                self.compile_unsupported = True
            tmp.unlink(missing_ok=True)
            log(f"fpx compile failed ({why}); fpx columns use the reference path")
            return None
        os.replace(tmp, out)
        key_file.write_text(key)
        self.compile_seconds[model.name] = r["seconds"]
        return out

    def bench(self, model: Path, inputs: dict[str, Path], threads: int, max_iters: int, budget_s: float,
              weights: str | None = None, min_iters: int = 3, output_dir: Path | None = None) -> dict:
        """Two `fpx bench` runs: a probe (--iters 1) to estimate one run, then the measured one
        (which also writes the outputs of its warm-up run to `output_dir` when given).
        Returns the parsed JSON, or {"error": why}."""
        base = [self.path, "bench", str(model)]
        if weights:
            base += ["--weights", weights]
        for name, f in inputs.items():
            base += ["--input", f"{name}={f}"]
        base += ["--threads", str(threads), "--json"]

        def go(iters: int, extra: list[str]) -> dict:
            r = run_cmd(base + ["--iters", str(iters)] + extra)
            if r["rc"] != 0:
                return {"error": r["why"]}
            try:
                j = parse_json_stdout(r["stdout"])
            except ValueError:
                return {"error": f"`fpx bench --json` printed no JSON: {r['stdout'][:200]!r}"}
            j["process_seconds"] = r["seconds"]
            return j

        # Let the intra-op workers of onnxruntime sessions that just ran stop spinning first.
        time.sleep(0.2)
        probe = go(1, [])
        if "error" in probe:
            return probe
        est = max(float(probe.get("median_us") or 0.0), 1.0) / 1e6
        iters = max(min_iters, min(max_iters, int(budget_s / est)))
        res = go(iters, ["--output-dir", str(output_dir)] if output_dir else [])
        if "error" not in res:
            res["cmd"] = " ".join(base + ["--iters", str(iters)])
        return res


def quant_kernel(res: dict) -> dict | None:
    ks = [k for k in res.get("kernels", []) if k.get("op") == "QuantMatMul"]
    return ks[0] if ks else None
