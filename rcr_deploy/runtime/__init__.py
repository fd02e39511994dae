"""One Runner interface over torch, onnxruntime and TensorRT (Polygraphy's runner shape).

Every runner takes an NCHW float32 batch and returns NCHW float32 mask logits, so validation,
eval, bench and infer are written once against `Runner.infer`.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np


class Runner(abc.ABC):
    """A loaded model on one backend."""

    #: Short backend label for reports, e.g. "torch-deploy" or "onnxruntime-fp16".
    name: str = "runner"
    #: Input channels (4 with the prior mask, 3 without).
    in_channels: int = 4
    #: The artifact's manifest (preprocessing, precision, validation), where there is one.
    manifest: dict[str, Any] | None = None

    @abc.abstractmethod
    def infer(self, x: np.ndarray) -> np.ndarray:
        """NCHW float32 input -> NCHW float32 mask logits (class 1 = person)."""

    def close(self) -> None:
        """Release backend resources."""
