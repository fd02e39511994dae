"""One Runner interface over torch, onnxruntime, OpenVINO and TensorRT (Polygraphy's runner shape).

Every runner takes an NCHW float32 batch and returns NCHW float32 mask logits, so validation,
eval, bench and infer are written once against `Runner.infer`.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
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


#: Where `export` writes artifacts and where `bench`, `eval` and `infer` look by default.
DEFAULT_OUT_DIR = Path("rcr-deploy-out")
#: Artifact file names inside an export folder, by precision.
ARTIFACT_NAMES = {"fp32": "rcrnet.onnx", "fp16": "rcrnet-fp16.onnx", "int8": "rcrnet-int8.onnx"}


def manifest_path(artifact: Path) -> Path:
    """The JSON manifest written atomically beside an artifact: `rcrnet.onnx` -> `rcrnet.onnx.json`."""
    return artifact.with_name(artifact.name + ".json")


#: The ONNX metadata_props key holding the same manifest inside the artifact (used when the JSON
#: sidecar has been lost).
MANIFEST_METADATA_KEY = "rcr_deploy.manifest"


def load_runner(model: str | os.PathLike | None = None, device: str = "cpu", hint: str = "latency") -> Runner:
    """A runner for a checkpoint (`.pt`, deploy form), an ONNX artifact, an OpenVINO IR (`.xml`),
    a TensorRT engine, or an export folder (its FP32 artifact). `None` is the built-in default
    checkpoint. `hint` is OpenVINO's performance hint: latency (one image, video) or throughput
    (folders and batches)."""
    from rcr_deploy.checkpoint import default_checkpoint, load_checkpoint
    from rcr_deploy.errors import RcrError
    from rcr_deploy.reparam import reparameterize
    from rcr_deploy.runtime.torch_runner import TorchRunner

    path = default_checkpoint() if model is None else Path(model)
    if path.is_dir():
        path = path / ARTIFACT_NAMES["fp32"]
    if path.suffix == ".pt":
        ckpt = load_checkpoint(path)
        deploy = ckpt.model if ckpt.form == "deploy" else reparameterize(ckpt.model)
        return TorchRunner(deploy, f"torch-deploy:{path.name}", device=device)
    if path.suffix == ".onnx":
        from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path)
    if path.suffix == ".xml":
        from rcr_deploy.runtime.openvino_runner import OpenVINORunner

        return OpenVINORunner(path, hint=hint)
    if path.suffix == ".engine":
        from rcr_deploy.runtime.tensorrt_runner import TensorRTRunner

        return TensorRTRunner(path)
    raise RcrError(
        f"{path}: not a model this tool runs; pass a .pt checkpoint, a .onnx artifact, an OpenVINO .xml, a .engine or an export folder"
    )
