"""One Runner interface over torch, onnxruntime, OpenVINO and TensorRT (Polygraphy's runner shape).

Every runner takes an NCHW float32 batch and returns NCHW float32 mask logits, so validation,
eval, bench and infer are written once against `Runner.infer`.

Lifecycle (Polygraphy's activate / infer / deactivate): a runner is active from construction,
where it loads and checks its model (bad input fails there, before any work), until `close()`,
which releases the backend's sessions and buffers; `infer` after `close()` is an error. Use it as
a context manager so `close()` always runs::

    with load_runner("rcr-deploy-out", device="cpu") as runner:
        logits = runner.infer(x)
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np


class Runner(abc.ABC):
    """A loaded model on one backend."""

    #: Short backend label for reports, e.g. "torch-deploy" or "onnxruntime-fp16".
    name: str = "runner"
    #: Input channels (4 with the prior mask, 3 without).
    in_channels: int = 4
    #: The artifact's manifest (preprocessing, precision, validation), where there is one.
    manifest: dict[str, Any] | None = None
    #: False once `close()` has released the backend.
    active: bool = True
    #: Model compilations since load: an engine that compiles one copy per input shape (OpenVINO's
    #: static shapes) counts each; engines that compile nothing stay at 0.
    compiles: int = 0

    @abc.abstractmethod
    def infer(self, x: np.ndarray) -> np.ndarray:
        """NCHW float32 input -> NCHW float32 mask logits (class 1 = person)."""

    def prepare(self) -> None:
        """Do the slow part of loading now (a first conversion), not in the first `infer`."""

    def warm_up(self, shapes: Iterable[tuple[int, ...]]) -> None:
        """Make each input shape ready now (compiled, buffers allocated) by running it once on
        zeros, so that no later call with one of these shapes waits on a compilation."""
        for shape in shapes:
            self.infer(np.zeros(shape, np.float32))

    def _release(self) -> None:
        """Drop the backend's resources (sessions, contexts, device buffers)."""

    def close(self) -> None:
        """Deactivate: release backend resources. Safe to call twice."""
        if self.active:
            self._release()
            self.active = False

    def _check_active(self) -> None:
        if not self.active:
            from rcr_deploy.errors import InternalError

            raise InternalError(f"{self.name}: infer() after close()")

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def onnxruntime_providers(device: str) -> list[str]:
    """ONNX Runtime providers for a device, or `BackendUnavailable` in one line."""
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    import onnxruntime as ort

    from rcr_deploy.errors import BackendUnavailable

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendUnavailable(
            f"--device {device}: this onnxruntime has no CUDA provider; pip install onnxruntime-gpu, or use --device cpu"
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


#: `--backend` choices of infer, eval, serve and demo; `auto` is the fastest installed (below).
BACKENDS = ("auto", "torch", "onnxruntime", "openvino")


def openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def load_runner(
    model: str | os.PathLike | None = None,
    device: str = "cpu",
    hint: str = "latency",
    backend: str = "auto",
    threads: int | None = None,
) -> Runner:
    """A runner for a checkpoint (`.pt`, deploy form), an ONNX artifact, an OpenVINO IR (`.xml`),
    a TensorRT engine, or an export folder (its FP32 artifact), on `device`. `None` is the
    built-in default checkpoint. `hint` is OpenVINO's performance hint: latency (one image, video)
    or throughput (folders and batches). `threads` bounds OpenVINO's and ONNX Runtime's CPU
    threads (torch's are process-wide: `torch.set_num_threads`).

    `backend="auto"` follows the CPU measurements (benchmarks/results/cpu-engines-*.md): on the CPU,
    a checkpoint or an export folder runs on OpenVINO where it is installed (FP32, faster there
    than torch eager and ONNX Runtime at every measured size), else on torch or ONNX Runtime; a
    file runs on the engine its format names. The device is honoured (ONNX on CUDA uses onnxruntime's CUDA
    provider) or refused in one line."""
    from rcr_deploy.artifact import ir_path, resolve
    from rcr_deploy.checkpoint import default_checkpoint, load_checkpoint
    from rcr_deploy.errors import RcrError
    from rcr_deploy.reparam import reparameterize
    from rcr_deploy.runtime.torch_runner import TorchRunner

    if backend not in BACKENDS:
        raise RcrError(f"--backend {backend}: unknown; use one of {', '.join(BACKENDS)}")
    if device != "cpu" and not device.startswith("cuda"):
        raise RcrError(f"--device {device}: unknown device; use cpu or cuda")
    cpu = device == "cpu"
    if backend == "openvino" and not cpu:
        raise RcrError("--backend openvino: OpenVINO runs on the CPU here; pass --device cpu, or --backend onnxruntime on CUDA")
    ov = backend == "openvino" or (backend == "auto" and cpu and openvino_installed())
    folder = model is not None and Path(model).is_dir()
    path = default_checkpoint() if model is None else resolve(model)
    if folder and ov and ir_path(path).is_file():
        path = ir_path(path)  # the folder's FP32 IR, from 'export --format openvino'
    engine = _engine_of(path)
    if engine and backend not in ("auto", engine) and not (backend == "openvino" and path.suffix in (".pt", ".onnx")):
        raise RcrError(
            f"--backend {backend}: {path.name} runs on {engine}; pass --backend auto, or export the model "
            "for that engine ('rcr-deploy export CKPT --format onnx,openvino')"
        )
    if path.suffix == ".pt":
        ckpt = load_checkpoint(path)
        deploy = ckpt.model if ckpt.form == "deploy" else reparameterize(ckpt.model)
        if ov:
            from rcr_deploy.runtime.openvino_runner import CheckpointOnOpenVINO

            return CheckpointOnOpenVINO(path, deploy, hint=hint, threads=threads)
        return TorchRunner(deploy, f"torch-deploy:{path.name}", device=device)
    if path.suffix == ".xml" or (path.suffix == ".onnx" and backend == "openvino"):
        if not cpu:
            raise RcrError(f"{path}: OpenVINO IRs run on the CPU here; pass --device cpu, or use the .onnx artifact on CUDA")
        from rcr_deploy.runtime.openvino_runner import OpenVINORunner

        return OpenVINORunner(path, hint=hint, threads=threads)
    if path.suffix == ".onnx":
        from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, providers=onnxruntime_providers(device), threads=threads)
    if path.suffix == ".engine":
        if cpu:
            raise RcrError(f"{path}: a TensorRT engine runs on a CUDA GPU only; pass --device cuda")
        from rcr_deploy.runtime.tensorrt_runner import TensorRTRunner

        return TensorRTRunner(path)
    raise RcrError(
        f"{path}: not a model this tool runs; pass a .pt checkpoint, a .onnx artifact, an OpenVINO .xml, a .engine or an export folder"
    )


def _engine_of(path: Path) -> str | None:
    """The engine a model file's format names (None for a file this tool does not run)."""
    return {".pt": "torch", ".onnx": "onnxruntime", ".xml": "openvino", ".engine": "tensorrt"}.get(path.suffix)
