"""Type stubs of fpx's extension module (re-exported as ``fpx``)."""

from os import PathLike
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, Union, final

import numpy as np
from numpy.typing import ArrayLike

__version__: str
__all__ = [
    "__version__",
    "CompileSummary",
    "FpxError",
    "Generation",
    "Generator",
    "Model",
    "TensorInfo",
    "compile",
    "load",
    "report",
]

_StrPath = Union[str, PathLike[str]]
_Dim = Union[int, str, None]

class FpxError(Exception):
    """An fpx error: the message is the one the ``fpx`` command line prints."""

@final
class TensorInfo:
    """A graph input or output."""

    name: str
    """The value's name in the graph."""
    dtype: str
    """NumPy dtype name ("float32", "int64", ...)."""
    shape: Optional[list[_Dim]]
    """Per dimension: an int (fixed), a str (symbolic; equal names are equal sizes) or None."""

@final
class Model:
    """A loaded ``.fpx`` artifact (compiled kernels) or ``.onnx`` model (reference path)."""

    @property
    def inputs(self) -> list[TensorInfo]:
        """The graph inputs a run takes."""
    @property
    def outputs(self) -> list[TensorInfo]:
        """The graph outputs a run returns, in order."""
    @property
    def path(self) -> str:
        """The file the model was loaded from."""
    @property
    def kind(self) -> Literal["artifact", "onnx"]:
        """"artifact" for a compiled .fpx, "onnx" for a model on the reference path."""
    @property
    def cpu_target(self) -> Optional[str]:
        """The CPU level whose code runs (e.g. "x86-64-v3"); None on the reference path."""
    def run(self, feeds: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
        """Runs the model on named inputs (the GIL released); returns the outputs by name, in graph order.

        Raises FpxError naming the input at fault (missing, wrong dtype or shape)."""

@final
class CompileSummary:
    """What a compile did."""

    model: str
    output: str
    seconds: float
    artifact_bytes: int
    weights: str
    layers: int
    weight_bytes_in: int
    weight_bytes_out: int
    bits_per_weight: float
    kernels: int
    cpu_targets: list[str]
    gpu_archs: list[str]
    tuning_db: Optional[str]
    tuned_products: int

@final
class Generation:
    """A finished generation."""

    tokens: list[int]
    stop: Literal["eos", "max_new_tokens"]
    time_to_first_token: float
    prefill_tokens_per_second: float
    decode_tokens_per_second: float

@final
class Generator:
    """Token-by-token generation with a decoder's KV cache (batch 1)."""

    def __new__(
        cls,
        model: Model,
        *,
        input_ids: str = "input_ids",
        attention_mask: str = "attention_mask",
        position_ids: str = "position_ids",
        logits: str = "logits",
        past_prefix: str = "past_key_values.",
        present_prefix: str = "present.",
    ) -> Generator:
        """A generator over `model`; fails if it is not a decoder with a KV cache under these names."""
    @property
    def cache_inputs(self) -> list[str]:
        """The model's cache inputs as found."""
    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        eos: Sequence[int] = ...,
        on_token: Optional[Callable[[int], Any]] = None,
    ) -> Generation:
        """Greedy at temperature 0, else sampled (same seed, same tokens); on_token streams each token."""

def load(
    path: _StrPath,
    *,
    weights: Optional[str] = None,
    activations: Literal["f32", "int8", "fp8-e4m3", "fp8-e5m2"] = "f32",
    group_size: Optional[int] = None,
    scale_search: bool = False,
    scale_pow2: bool = False,
    embeddings: Optional[str] = ...,
    lorc: Optional[int] = None,
    lorc_factors: str = "f16",
) -> Model:
    """Loads an .fpx artifact, or an .onnx model (quantized in memory when `weights` names a scheme)."""

def compile(
    model: _StrPath,
    output: _StrPath,
    *,
    weights: str = "fp6-e3m2",
    activations: Literal["f32", "int8", "fp8-e4m3", "fp8-e5m2"] = "f32",
    target: Literal["cpu", "cuda", "all"] = "cpu",
    cpu: str = "auto",
    group_size: Optional[int] = None,
    scale_search: bool = False,
    scale_pow2: bool = False,
    embeddings: Optional[str] = ...,
    fused_epilogues: bool = True,
    keep_half_precision: bool = False,
    tuning_db: Optional[_StrPath] = None,
    no_tuning: bool = False,
    progress: Optional[Callable[[str, Optional[int], Optional[int]], Any]] = None,
    lorc: Optional[int] = None,
    lorc_factors: str = "f16",
) -> CompileSummary:
    """Compiles an ONNX model into an .fpx artifact (written atomically), as `fpx compile` does."""

def report(
    model: _StrPath,
    inputs: Mapping[str, ArrayLike],
    *,
    schemes: str = ...,
    group_size: Optional[int] = None,
    scale_search: bool = False,
    scale_pow2: bool = False,
    pool_mask: Optional[str] = None,
) -> dict[str, Any]:
    """The accuracy of each weight scheme against FP32 on these inputs, as `fpx report` prints it, as data."""
