#!/usr/bin/env python3
"""Greedy generation through onnxruntime for every KV-cache fixture of the model zoo: the oracle
that `fpx generate` (fpx::Generator) must match token for token.

For each tests/data/zoo/*-kv*/model.onnx it runs the same loop the generator runs, written here
independently against onnxruntime: the prompt in one step (attention mask of ones, positions
0..n, an empty cache of length 0 on its one dynamic non-batch axis), then one token per step with
each `present.*` output fed back as the matching `past_key_values.*` input, picking the largest
logit (the first on ties). It writes greedy.json beside the model: the prompt, the tokens, and
the smallest gap between the best and second-best logit over the steps (a tiny gap would make the
comparison depend on rounding, so the test reports it).

Needs only numpy and onnxruntime (the project venv): `.venv/bin/python scripts/zoo/greedy_reference.py`.
"""
import glob
import json
import os
import sys

import numpy as np
import onnxruntime as ort

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
PROMPT_LEN = 6
NEW_TOKENS = 16
DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(bool)": np.bool_}


def empty_cache(inp):
    dims = inp.shape
    dynamic = [i for i, d in enumerate(dims) if i > 0 and not isinstance(d, int)]
    if len(dynamic) != 1:
        raise SystemExit(f"{inp.name}: cannot tell the sequence axis of {dims}")
    shape = [0 if i == dynamic[0] else (1 if i == 0 else d) for i, d in enumerate(dims)]
    return np.zeros(shape, dtype=DTYPES[inp.type])


def greedy(path, prompt):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    cache = {n: empty_cache(i) for n, i in inputs.items() if n.startswith("past_key_values.")}
    tokens, gaps, past, step_tokens = [], [], 0, list(prompt)
    for _ in range(NEW_TOKENS):
        n = len(step_tokens)
        feed = {"input_ids": np.array([step_tokens], dtype=DTYPES[inputs["input_ids"].type])}
        if "attention_mask" in inputs:
            feed["attention_mask"] = np.ones((1, past + n), dtype=DTYPES[inputs["attention_mask"].type])
        if "position_ids" in inputs:
            feed["position_ids"] = np.arange(past, past + n, dtype=DTYPES[inputs["position_ids"].type])[None, :]
        feed.update(cache)
        result = dict(zip(outputs, sess.run(outputs, feed)))
        last = result["logits"][0, -1].astype(np.float64)
        order = np.argsort(-last, kind="stable")
        gaps.append(float(last[order[0]] - last[order[1]]))
        token = int(order[0])
        tokens.append(token)
        cache = {n: result["present." + n[len("past_key_values."):]] for n in cache}
        past += n
        step_tokens = [token]
    return tokens, min(gaps)


def main():
    rng = np.random.default_rng(2026)
    paths = sorted(glob.glob(os.path.join(ROOT, "tests/data/zoo/*-kv*/model.onnx")))
    if not paths:
        sys.exit("no KV-cache fixtures under tests/data/zoo (run scripts/zoo/generate.py first)")
    for path in paths:
        vocab = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_outputs()[0].shape[-1]
        prompt = [int(t) for t in rng.integers(1, vocab if isinstance(vocab, int) else 256, PROMPT_LEN)]
        tokens, gap = greedy(path, prompt)
        out = os.path.join(os.path.dirname(path), "greedy.json")
        with open(out, "w") as f:
            json.dump({"prompt": prompt, "max_new_tokens": NEW_TOKENS, "tokens": tokens, "min_top2_logit_gap": gap}, f, indent=1)
        print(f"{os.path.basename(os.path.dirname(path)):28} {tokens}  min gap {gap:.2e}")


if __name__ == "__main__":
    main()
