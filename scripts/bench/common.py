"""What every part of the benchmark shares: the progress log and the onnxruntime variants compared."""

from __future__ import annotations

import sys
import time

ORT_VARIANTS = [  # (key, label)
    ("ort_fp32", "ORT fp32"),
    ("ort_int8", "ORT int8 dyn"),
    ("ort_int4_l0", "ORT int4 lvl0"),
    ("ort_int4_l4", "ORT int4 lvl4"),
]


def log(msg: str) -> None:
    """Progress lines go to stderr, the tables to stdout."""
    print(f"[bench-cpu {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
