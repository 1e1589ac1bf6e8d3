#!/usr/bin/env python3
"""Adds a 64-token input set (batch 1, no past) to the TorchScript fixtures of the model zoo and to
llama-dynamo-kv, with onnxruntime's outputs as the reference: a model exported at short lengths
must run at long ones too. Needs only numpy and onnxruntime (the project venv); run it after
scripts/zoo/generate.py (which rewrites the fixture folders)."""
import glob
import json
import os

import numpy as np
import onnxruntime as ort

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SEQ = 64
NAME = f"b1-p0-s{SEQ}"
TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32}


def inputs_for(sess, rng):
    feed = {}
    for i in sess.get_inputs():
        dtype = TYPES[i.type]
        if i.name == "input_ids":
            feed[i.name] = rng.integers(1, 256, (1, SEQ)).astype(dtype)
        elif i.name == "attention_mask":
            feed[i.name] = np.ones((1, SEQ), dtype)
        elif i.name == "token_type_ids":
            feed[i.name] = np.zeros((1, SEQ), dtype)
        elif i.name == "position_ids":
            feed[i.name] = np.arange(SEQ, dtype=dtype)[None, :]
        elif i.name.startswith("past_key_values."):
            shape = [1 if k == 0 else (0 if not isinstance(d, int) else d) for k, d in enumerate(i.shape)]
            feed[i.name] = np.zeros(shape, dtype)
        else:
            return None  # pixel_values and the like: no sequence axis
    return feed


def main():
    rng = np.random.default_rng(64)
    dirs = sorted(glob.glob(os.path.join(ROOT, "tests/data/zoo/*-torchscript*"))) + [os.path.join(ROOT, "tests/data/zoo/llama-dynamo-kv")]
    for d in dirs:
        sess = ort.InferenceSession(os.path.join(d, "model.onnx"), providers=["CPUExecutionProvider"])
        feed = inputs_for(sess, rng)
        if feed is None:
            continue
        out_dir = os.path.join(d, NAME)
        os.makedirs(out_dir, exist_ok=True)
        for name, value in feed.items():
            np.save(os.path.join(out_dir, f"input.{name}.npy"), value)
        manifest_path = os.path.join(d, "manifest.json")
        with open(manifest_path) as f:
            manifest = json.load(f)
        compared = [o["name"] for o in manifest["outputs"] if o["compared"]]
        for name, value in zip(compared, sess.run(compared, feed)):
            np.save(os.path.join(out_dir, f"ref.{name}.npy"), value)
        total = SEQ
        manifest["sets"] = [s for s in manifest["sets"] if s["name"] != NAME] + [{"name": NAME, "keep": ["1" * total], "reference": "onnxruntime"}]
        with open(manifest_path, "w") as f:
            json.dump(manifest, f, indent=1)
        print(f"{os.path.basename(d):28} + {NAME}")


if __name__ == "__main__":
    main()
