#!/usr/bin/env python3
"""Writes tests/data/zoo/tokenizer.json: a byte-level BPE tokenizer (GPT-2's byte alphabet) with
the zoo's 256-token vocabulary, one token per byte and no merges, so ids stay below 256 and every
zoo decoder can read them; and tests/data/zoo/tokenizer-cases.json:
texts with the ids and decoded strings the Python `tokenizers` library gives, the reference for
fpx's use of the Rust crate. Needs the dev venv (`tokenizers`); CI only reads the files."""
import json
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests/data/zoo")

byte_chars = pre_tokenizers.ByteLevel.alphabet()
# The GPT-2 byte-to-unicode order: token id = byte value.
bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
cs = bs[:]
n = 0
for b in range(256):
    if b not in bs:
        bs.append(b)
        cs.append(256 + n)
        n += 1
vocab = {chr(c): b for b, c in zip(bs, cs)}
assert set(vocab) == set(byte_chars) and len(vocab) == 256
tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.save(os.path.join(OUT, "tokenizer.json"))
cases = []
for text in ["Hello, world!", "Once upon a time", "naïve café — 東京", ""]:
    ids = tok.encode(text).ids
    cases.append({"text": text, "ids": ids, "decoded": tok.decode(ids)})
# Arbitrary ids (what a random-weight model generates) decode too, possibly to replacement chars.
for ids in [[7, 54, 95, 240, 46, 195, 10, 31], [228, 2, 81]]:
    cases.append({"ids": ids, "decoded": tok.decode(ids)})
with open(os.path.join(OUT, "tokenizer-cases.json"), "w") as f:
    json.dump(cases, f, ensure_ascii=False, indent=1)
print(json.dumps(cases, ensure_ascii=False)[:400])
