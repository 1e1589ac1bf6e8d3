"""Tests of fpx's Python package, run by scripts/test.sh on the wheel it builds.

The CLI (``FPX_CLI``, else target/debug/fpx) is the reference: an artifact compiled from Python
equals the CLI's byte for byte, and runs give the CLI's outputs bit for bit and its error messages.
onnxruntime (in the project venv) is the oracle for generation.
"""

import json
import os
import pathlib
import subprocess
import threading

import numpy as np
import pytest

import fpx

# No default tuning database leaks in from the machine running the tests (compile reads it).
os.environ.setdefault("FPX_TUNING_DB", "/nonexistent/fpx-tuning.json")

ROOT = pathlib.Path(__file__).resolve().parents[3]
TINY = ROOT / "examples" / "tiny-transformer"
MINILM = ROOT.parent / "shared" / "models" / "minilm-l6-v2"
ZOO = ROOT / "tests" / "data" / "zoo"


def cli_path():
    path = pathlib.Path(os.environ.get("FPX_CLI", ROOT / "target" / "debug" / "fpx"))
    if not path.is_file():
        pytest.skip(f"the fpx CLI is not built at {path} (set FPX_CLI; scripts/test.sh does)")
    return path


def cli(*args):
    """Runs the CLI; returns (exit code, stdout, stderr)."""
    p = subprocess.run([str(cli_path()), *map(str, args)], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The bundled model compiled from Python (default options), its input and the artifact path."""
    out = tmp_path_factory.mktemp("tiny") / "model.fpx"
    summary = fpx.compile(TINY / "model.onnx", out)
    return summary, fpx.load(out), np.load(TINY / "input.npy")


def test_compile_reports_what_it_did(tiny):
    summary, model, _ = tiny
    assert summary.weights == "fp6-e3m2" and summary.layers == 13
    assert os.path.getsize(summary.output) == summary.artifact_bytes
    assert 6.0 < summary.bits_per_weight < 8.0
    assert summary.cpu_targets == ["x86-64-v4-vnni", "x86-64-v3"] and summary.gpu_archs == []
    assert 0 < summary.weight_bytes_out < summary.weight_bytes_in
    assert model.kind == "artifact" and model.cpu_target in summary.cpu_targets


def test_compile_uses_a_tuning_database_like_the_cli_and_warns_on_a_damaged_one(tmp_path):
    db = tmp_path / "tuning.json"
    code, _, err = cli("tune", TINY / "model.onnx", "--budget", "3", "--max-m", "1", "--db", db, "--cpu", "x86-64-v3", "-q")
    assert code == 0, err
    tuned = fpx.compile(TINY / "model.onnx", tmp_path / "py.fpx", cpu="x86-64-v3", tuning_db=db)
    assert str(tuned.tuning_db) == str(db) and tuned.tuned_products == 13
    code, _, err = cli("compile", TINY / "model.onnx", "-o", tmp_path / "cli.fpx", "--cpu", "x86-64-v3", "--tuning-db", db, "-q")
    assert code == 0, err
    assert (tmp_path / "py.fpx").read_bytes() == (tmp_path / "cli.fpx").read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.warns(UserWarning, match="is damaged: not valid JSON.*heuristic"):
        plain = fpx.compile(TINY / "model.onnx", tmp_path / "plain.fpx", cpu="x86-64-v3", tuning_db=bad)
    assert plain.tuning_db is None and plain.tuned_products == 0
    with pytest.raises(fpx.FpxError, match="exclude each other"):
        fpx.compile(TINY / "model.onnx", tmp_path / "x.fpx", tuning_db=db, no_tuning=True)


def test_pow2_scales_compile_like_the_cli(tmp_path):
    py = fpx.compile(TINY / "model.onnx", tmp_path / "py.fpx", weights="fp4-e2m1", scale_pow2=True, cpu="x86-64-v3", no_tuning=True)
    code, _, err = cli(
        "compile", TINY / "model.onnx", "-o", tmp_path / "cli.fpx", "--weights", "fp4-e2m1", "--scale-pow2", "--cpu", "x86-64-v3", "-q"
    )
    assert code == 0, err
    assert (tmp_path / "py.fpx").read_bytes() == (tmp_path / "cli.fpx").read_bytes()
    plain = fpx.compile(TINY / "model.onnx", tmp_path / "plain.fpx", weights="fp4-e2m1", cpu="x86-64-v3", no_tuning=True)
    assert (tmp_path / "plain.fpx").read_bytes() != (tmp_path / "py.fpx").read_bytes()
    assert py.weight_bytes_out == plain.weight_bytes_out
    r = fpx.report(TINY / "model.onnx", {"input": np.load(TINY / "input.npy")}, schemes="fp4-e2m1,fp4-e2m1:p2", scale_pow2=False)
    labels = [s["label"] for s in r["schemes"]]
    assert labels == ["fp4-e2m1", "fp4-e2m1:p2"], labels


def test_inputs_and_outputs_describe_the_graph(tiny):
    _, model, _ = tiny
    (i,), (o,) = model.inputs, model.outputs
    assert (i.name, i.dtype, i.shape) == ("input", "float32", ["batch", "seq", 64])
    assert (o.name, o.dtype, o.shape) == ("output", "float32", ["batch", "seq", 64])
    assert repr(i) == "TensorInfo(name='input', dtype='float32', shape=('batch', 'seq', 64))"


def test_run_matches_the_cli_bit_for_bit_and_onnxruntime_closely(tiny, tmp_path):
    summary, model, x = tiny
    out = model.run({"input": x})
    assert list(out) == ["output"]
    y = out["output"]
    assert y.dtype == np.float32 and y.shape == (2, 7, 64)
    # The CLI compiles the same bytes and its run writes the same bits.
    cli_artifact = tmp_path / "cli.fpx"
    code, _, err = cli("compile", TINY / "model.onnx", "-o", cli_artifact, "-q")
    assert code == 0, err
    assert cli_artifact.read_bytes() == pathlib.Path(summary.output).read_bytes()
    code, _, err = cli("run", summary.output, "--input", f"input={TINY / 'input.npy'}", "-o", tmp_path / "out")
    assert code == 0, err
    ref = np.load(tmp_path / "out" / "output.npy")
    assert ref.dtype == y.dtype and np.array_equal(ref.view(np.uint32), y.view(np.uint32))
    # And FP6 weights keep it near onnxruntime's FP32 output.
    fp32 = np.load(TINY / "ref_output.npy")
    cos = float(np.dot(y.ravel(), fp32.ravel()) / np.linalg.norm(y) / np.linalg.norm(fp32))
    assert 0.99 < cos < 1.0


def test_array_likes_and_strided_arrays_are_taken(tiny):
    _, model, x = tiny
    want = model.run({"input": x})["output"]
    # A Fortran-ordered copy and a nested list (float64 -> refused, as NumPy types it) behave as documented.
    assert np.array_equal(model.run({"input": np.asfortranarray(x)})["output"], want)
    wide = np.zeros((2, 7, 128), np.float32)
    wide[:, :, ::2] = x
    assert np.array_equal(model.run({"input": wide[:, :, ::2]})["output"], want)
    with pytest.raises(fpx.FpxError, match="expected element type float, got double"):
        model.run({"input": x.tolist()})


@pytest.mark.parametrize(
    "feeds, message",
    [
        (lambda x: {"input": x.astype(np.float64)}, "input 'input': expected element type float, got double"),
        (lambda x: {}, "input 'input': missing"),
        (lambda x: {"input": x[:, :, :10]}, "input 'input': expected float[batch, seq, 64], got shape [2, 7, 10]"),
        (lambda x: {"input": x, "extra": x}, "input 'extra': the model has no such input"),
    ],
)
def test_bad_inputs_raise_the_clis_message(tiny, tmp_path, feeds, message):
    summary, model, x = tiny
    bad = feeds(x)
    with pytest.raises(fpx.FpxError) as raised:
        model.run(bad)
    text = str(raised.value)
    assert text.startswith(f"cannot run model '{summary.output}': ") and message in text
    # The CLI, given the same inputs as files, prints the same message.
    args = []
    for name, value in bad.items():
        np.save(tmp_path / f"{name}.npy", value)
        args += ["--input", f"{name}={tmp_path / (name + '.npy')}"]
    code, _, err = cli("run", summary.output, *args, "-o", tmp_path / "out")
    assert code == 1 and err.strip() == f"error: {text}"


def test_other_bad_calls_raise_clear_errors(tiny):
    _, model, x = tiny
    with pytest.raises(fpx.FpxError, match="inputs are a dict of input name to array"):
        model.run([x])
    with pytest.raises(fpx.FpxError, match="input 'input' has NumPy dtype <U3, which fpx does not run"):
        model.run({"input": np.array(["abc"])})
    with pytest.raises(fpx.FpxError, match="weights='fp7': unknown"):
        fpx.compile(TINY / "model.onnx", "/tmp/never.fpx", weights="fp7")
    with pytest.raises(fpx.FpxError, match="model file '.*missing.onnx' does not exist"):
        fpx.compile(TINY / "missing.onnx", "/tmp/never.fpx")
    with pytest.raises(fpx.FpxError, match="output '.*' is a folder"):
        fpx.compile(TINY / "model.onnx", TINY)
    with pytest.raises(fpx.FpxError, match="int8 activations are for CPU code"):
        fpx.compile(TINY / "model.onnx", "/tmp/never.fpx", weights="fp6-e2m3", activations="int8", target="cuda")


def test_fp8_activations_compile_and_stay_close_to_f32(tmp_path):
    x = np.load(TINY / "input.npy")
    outs = {}
    for act in ["f32", "fp8-e4m3"]:
        summary = fpx.compile(TINY / "model.onnx", tmp_path / f"{act}.fpx", weights="fp4-e2m1", activations=act, scale_pow2=True)
        outs[act] = fpx.load(summary.output).run({"input": x})["output"]
    rel = np.linalg.norm(outs["fp8-e4m3"] - outs["f32"]) / np.linalg.norm(outs["f32"])
    assert 0 < rel < 0.1, rel
    with pytest.raises(fpx.FpxError, match="fp8-e4m3 activations are for CPU code"):
        fpx.compile(TINY / "model.onnx", tmp_path / "never.fpx", activations="fp8-e4m3", target="cuda")


def test_lorc_compiles_and_moves_closer_to_fp32(tmp_path):
    x = np.load(TINY / "input.npy")
    want = fpx.load(TINY / "model.onnx").run({"input": x})["output"]
    errors = []
    for rank in [None, 16]:
        summary = fpx.compile(TINY / "model.onnx", tmp_path / f"r{rank}.fpx", weights="fp4-e2m1", lorc=rank)
        got = fpx.load(summary.output).run({"input": x})["output"]
        errors.append(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert errors[1] < errors[0], errors
    # FP8 factors: fewer bytes, most of the correction kept.
    summary = fpx.compile(TINY / "model.onnx", tmp_path / "r16f8.fpx", weights="fp4-e2m1", lorc=16, lorc_factors="fp8-e4m3")
    got = fpx.load(summary.output).run({"input": x})["output"]
    fp8_error = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert fp8_error < errors[0], (fp8_error, errors)
    assert (tmp_path / "r16f8.fpx").stat().st_size < (tmp_path / "r16.fpx").stat().st_size
    with pytest.raises(fpx.FpxError, match="LoRC rank must be at least 1"):
        fpx.compile(TINY / "model.onnx", tmp_path / "never.fpx", lorc=0)
    with pytest.raises(fpx.FpxError, match="lorc_factors='int4'"):
        fpx.compile(TINY / "model.onnx", tmp_path / "never.fpx", lorc=4, lorc_factors="int4")


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_artifact_raises_the_clis_message(tiny, tmp_path, damage):
    summary, _, _ = tiny
    data = bytearray(pathlib.Path(summary.output).read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 3]
    else:
        data[len(data) // 2] ^= 0x40
    bad = tmp_path / "damaged.fpx"
    bad.write_bytes(bytes(data))
    with pytest.raises(fpx.FpxError) as raised:
        fpx.load(bad)
    text = str(raised.value)
    assert text.startswith(f"cannot load model '{bad}': ") and ("damaged" in text or "checksum" in text), text
    code, _, err = cli("run", bad, "--input", f"input={TINY / 'input.npy'}", "-o", tmp_path / "out")
    assert code == 1 and err.strip() == f"error: {text}"


def test_two_threads_share_one_model(tiny):
    _, model, x = tiny
    rng = np.random.default_rng(7)
    feeds = [rng.standard_normal((1 + i % 3, 3 + i % 5, 64)).astype(np.float32) for i in range(8)]
    want = [model.run({"input": f})["output"] for f in feeds]
    results = {}

    def worker(tid):
        for rep in range(6):
            for i, f in enumerate(feeds):
                if (i + tid) % 2 == 0:
                    results[(tid, rep, i)] = model.run({"input": f})["output"]

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 * 6 * 4
    for (_, _, i), got in results.items():
        assert np.array_equal(got, want[i])


def test_compile_progress_reports_stages_and_weight_bytes(tmp_path):
    events = []
    fpx.compile(TINY / "model.onnx", tmp_path / "m.fpx", cpu="x86-64-v3", progress=lambda *e: events.append(e))
    stages = [s for s, done, _ in events if done is None]
    assert stages[0] == "import" and "quantize weights" in stages and stages[-1] == "package"
    weights = [(d, t) for s, d, t in events if d is not None]
    assert weights[-1][0] == weights[-1][1] > 0

    def broken(*_):
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        fpx.compile(TINY / "model.onnx", tmp_path / "n.fpx", cpu="x86-64-v3", progress=broken)


def test_report_returns_the_accuracy_table_as_data():
    r = fpx.report(TINY / "model.onnx", {"input": np.load(TINY / "input.npy")}, schemes="fp6-e3m2,int8,fp4-e2m1")
    assert [s["label"] for s in r["schemes"]] == ["fp6-e3m2", "int8", "fp4-e2m1"]
    cos = {s["label"]: s["outputs"][0]["cosine"] for s in r["schemes"]}
    assert cos["int8"] > cos["fp6-e3m2"] > cos["fp4-e2m1"] > 0.9 and cos["int8"] < 1.0
    fp6 = r["schemes"][0]
    assert len(fp6["layers"]) == 13 and all(layer["format"] == "fp6-e3m2" for layer in fp6["layers"])
    assert fp6["weight_bytes_out"] < fp6["weight_bytes_in"]
    with pytest.raises(fpx.FpxError, match="no schemes given"):
        fpx.report(TINY / "model.onnx", {"input": np.load(TINY / "input.npy")}, schemes="")


@pytest.mark.parametrize("fixture", ["llama-torchscript-kv", "gpt2-dynamo-kv"])
def test_generator_matches_onnxruntimes_greedy_tokens(fixture):
    ref = json.loads((ZOO / fixture / "greedy.json").read_text())
    gen = fpx.Generator(fpx.load(ZOO / fixture / "model.onnx"))
    assert gen.cache_inputs[0].startswith("past_key_values.0.")
    streamed = []
    out = gen.generate(ref["prompt"], max_new_tokens=len(ref["tokens"]), on_token=streamed.append)
    assert out.tokens == ref["tokens"] == streamed and out.stop == "max_new_tokens"
    assert out.time_to_first_token > 0
    # Sampling with a seed repeats; a stop token ends early.
    a = gen.generate(ref["prompt"], max_new_tokens=8, temperature=0.8, top_k=20, seed=3)
    b = gen.generate(ref["prompt"], max_new_tokens=8, temperature=0.8, top_k=20, seed=3)
    assert a.tokens == b.tokens
    toks = ref["tokens"]
    j = next(j for j in range(1, len(toks)) if toks[j] not in toks[:j])
    stop = gen.generate(ref["prompt"], max_new_tokens=len(toks), eos=[toks[j]])
    assert stop.tokens == toks[: j + 1] and stop.stop == "eos"


def test_a_model_that_is_no_decoder_is_refused_by_the_generator(tiny):
    _, model, _ = tiny
    with pytest.raises(fpx.FpxError, match="input_ids"):
        fpx.Generator(model)


@pytest.mark.skipif(not MINILM.is_dir(), reason="../shared/models/minilm-l6-v2 is absent (a fresh clone without ../shared)")
def test_minilm_from_python_matches_the_cli_bit_for_bit(tmp_path):
    feeds = {n: np.load(MINILM / f"{n}.npy") for n in ("input_ids", "attention_mask", "token_type_ids")}
    summary = fpx.compile(MINILM / "model.onnx", tmp_path / "minilm.fpx", weights="fp6-e2m3", activations="int8")
    model = fpx.load(summary.output)
    assert {i.name for i in model.inputs} == set(feeds)
    out = model.run(feeds)
    args = [a for n in feeds for a in ("--input", f"{n}={MINILM / (n + '.npy')}")]
    code, _, err = cli("run", summary.output, *args, "-o", tmp_path / "cli")
    assert code == 0, err
    for name, y in out.items():
        ref = np.load(tmp_path / "cli" / (name.replace(".", "_") + ".npy"))
        assert ref.dtype == y.dtype and ref.shape == y.shape and ref.tobytes() == y.tobytes(), name
    fp32 = np.load(MINILM / "ref_last_hidden_state.npy")
    h = out["last_hidden_state"]
    mask = feeds["attention_mask"][..., None].astype(np.float64)
    pooled = (h * mask).sum(1) / mask.sum(1)
    ref_pooled = (fp32 * mask).sum(1) / mask.sum(1)
    cos = (pooled * ref_pooled).sum(1) / np.linalg.norm(pooled, axis=1) / np.linalg.norm(ref_pooled, axis=1)
    assert cos.mean() > 0.99
