"""fpx: an ahead-of-time compiler for weight-quantized (FP6) ONNX models, from Python.

Compile an ONNX model to an ``.fpx`` artifact, load it and run NumPy arrays through it::

    import fpx
    summary = fpx.compile("model.onnx", "model.fpx", weights="fp6-e2m3", activations="int8")
    m = fpx.load("model.fpx")
    print(m.inputs, m.outputs)
    outputs = m.run({"input_ids": ids, "attention_mask": mask})   # dict of NumPy arrays

``fpx.report`` returns the accuracy of weight schemes against FP32 as data, and
``fpx.Generator`` drives a decoder LLM token by token with its KV cache. Every error is an
``fpx.FpxError`` whose message is the one the ``fpx`` command line prints. Runs release the GIL:
one loaded model serves any number of threads.
"""

from ._native import (
    CompileSummary,
    FpxError,
    Generation,
    Generator,
    Model,
    TensorInfo,
    __version__,
    compile,
    load,
    report,
)

__all__ = [
    "CompileSummary",
    "FpxError",
    "Generation",
    "Generator",
    "Model",
    "TensorInfo",
    "__version__",
    "compile",
    "load",
    "report",
]
