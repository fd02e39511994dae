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
import functools
import os
import platform
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from rcr_deploy.artifact import format_path, is_export_folder, resolve
from rcr_deploy.checkpoint import default_checkpoint, load_checkpoint
from rcr_deploy.errors import BackendUnavailable, InternalError, RcrError
from rcr_deploy.reparam import reparameterize
from rcr_deploy.formats import AUTO, FORMATS, Format, backends, by_backend, by_path, installed, load


class Runner(abc.ABC):
    """A loaded model on one backend."""

    #: Short backend label for reports, e.g. "torch-deploy" or "onnxruntime-fp16".
    name: str = "runner"
    #: Input channels (4 with the prior mask, 3 without).
    in_channels: int = 4
    #: The one input size of a file exported at a fixed size (TFLite, ncnn); 0 where any size runs.
    height: int = 0
    width: int = 0
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
            raise InternalError(f"{self.name}: infer() after close()")

    def _check_fixed_size(self, x: np.ndarray, path: Path) -> None:
        """For a file exported at one size (`in_channels`, `height`, `width` set): refuse another."""
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, self.height, self.width):
            raise RcrError(
                f"{path.name} takes N x {self.in_channels} x {self.height} x {self.width} (it is exported at one size), "
                f"got {tuple(x.shape)}; pass --size {self.height} or re-export at this size"
            )

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Where Linux lists the CPU's flags (a test points it elsewhere).
CPUINFO = Path("/proc/cpuinfo")
X86 = ("x86_64", "amd64", "i386", "i686")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The x86 CPU's feature flags as Linux lists them; None off x86 or where they cannot be read."""
    if platform.machine().lower() not in X86:
        return None
    try:
        found = re.search(r"^flags\s*:(.*)$", CPUINFO.read_text(), re.M)
    except OSError:
        return None
    return frozenset(found.group(1).split()) if found else None


def int8_saturates() -> bool:
    """Whether this CPU's 8-bit dot products can saturate: x86 without VNNI, whose u8 x s8 kernels
    (pmaddubsw) add each pair of products in 16 bits and clip the sum. ONNX Runtime then runs INT8
    with exact u8 x u8 kernels when asked (`session.x64quantprecision`), and OnnxRuntimeRunner asks;
    OpenVINO has no such switch. Where the flags of an x86 CPU cannot be read, assume it can."""
    if platform.machine().lower() not in X86:
        return False
    flags = cpu_flags()
    return flags is None or not flags & {"avx512_vnni", "avx_vnni"}


def onnxruntime_providers(device: str) -> list[str]:
    """ONNX Runtime providers for a device, or `BackendUnavailable` in one line."""
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    import onnxruntime as ort  # imported on first use: a GPU check should not pay for it at import

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendUnavailable(
            f"--device {device}: this onnxruntime has no CUDA provider; pip install onnxruntime-gpu, or use --device cpu"
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def load_runner(
    model: str | os.PathLike | None = None,
    device: str = "cpu",
    hint: str = "latency",
    backend: str = "auto",
    threads: int | None = None,
) -> Runner:
    """A runner for a checkpoint (`.pt`, deploy form), a file of any format in the format table
    (rcr_deploy.formats: an ONNX artifact, an OpenVINO IR `.xml`, a TensorRT engine, ...), or an
    export folder (its FP32 artifact), on `device`. `None` is the built-in default checkpoint.
    `hint` is a latency/throughput hint for runtimes that take one (OpenVINO): latency (one image,
    video) or throughput (folders and batches). `threads` bounds the runtime's CPU threads (torch's
    are process-wide: `torch.set_num_threads`).

    `backend="auto"` follows the CPU measurements (benchmarks/results/cpu-engines-*.md): a
    checkpoint or an export folder runs on the first runtime of `formats.AUTO` that is installed
    and runs on the device (for a folder: whose file it holds), else on torch or ONNX Runtime; a
    file runs on the runtime its format names. The device is honoured (ONNX on CUDA uses
    onnxruntime's CUDA provider) or refused in one line."""
    if backend not in backends():
        raise RcrError(f"--backend {backend}: unknown; use one of {', '.join(backends())}")
    if device != "cpu" and not device.startswith("cuda"):
        raise RcrError(f"--device {device}: unknown device; use cpu or cuda")
    kind = "cpu" if device == "cpu" else "cuda"
    chosen = by_backend(backend)
    if chosen is not None and kind not in chosen.devices:
        raise RcrError(f"--backend {backend}: {chosen.backend} runs on {' or '.join(chosen.devices)} only here; pass --device {chosen.devices[0]}, or --backend auto")
    auto = [FORMATS[f] for f in AUTO if kind in FORMATS[f].devices and installed(FORMATS[f])] if backend == "auto" else [chosen]
    if model is None or (Path(model).suffix == ".pt" and not Path(model).is_dir()):
        return _checkpoint_runner(default_checkpoint() if model is None else Path(model), device, hint, backend, threads, auto)
    path = Path(model)
    if is_export_folder(path):
        onnx = resolve(path)
        fmt = next((f for f in auto if f is not None and format_path(onnx, f.name).is_file()), FORMATS["onnx"])
        path = format_path(onnx, fmt.name)
    else:
        fmt = by_path(path)
    if fmt is not None and not fmt.devices and fmt.usage:
        raise RcrError(f"{path}: a {fmt.title}, not run: {fmt.usage}")
    if fmt is None or fmt.runner is None:
        runnable = ", ".join(f"{f.suffixes[0]} ({f.title})" for f in FORMATS.values() if f.runner)
        raise RcrError(f"{path}: not a model this tool runs here; pass a .pt checkpoint, an export folder or one of {runnable}")
    if backend != "auto" and chosen is not fmt:
        if chosen is None or fmt.name not in chosen.reads:
            fix = "pass the .pt checkpoint" if chosen is None else _how_to_make(chosen)
            raise RcrError(f"--backend {backend}: {path.name} runs on {fmt.backend}; pass --backend auto, or {fix}")
        fmt = chosen
    if kind not in fmt.devices:
        raise RcrError(f"{path}: a {fmt.title} runs on {' or '.join(fmt.devices)} only; pass --device {fmt.devices[0]}")
    return load(fmt.runner)(path, device=device, hint=hint, threads=threads)


def _checkpoint_runner(path: Path, device: str, hint: str, backend: str, threads: int | None, runtimes: list[Format | None]) -> Runner:
    """A checkpoint's deploy form on torch, or on the first of `runtimes` that runs checkpoints."""
    from rcr_deploy.runtime.torch_runner import TorchRunner  # a module of this package, which imports this one

    if backend not in ("auto", "torch") and runtimes[0].checkpoint_runner is None:
        raise RcrError(f"--backend {backend}: {path.name} runs on torch; pass --backend auto, or {_how_to_make(runtimes[0])}")
    ckpt = load_checkpoint(path)
    deploy = ckpt.model if ckpt.form == "deploy" else reparameterize(ckpt.model)
    on = next((f for f in runtimes if f is not None and f.checkpoint_runner), None) if backend != "torch" else None
    if on is not None:
        return load(on.checkpoint_runner)(path, deploy, hint=hint, threads=threads)
    return TorchRunner(deploy, f"torch-deploy:{path.name}", device=device)


def _how_to_make(fmt: Format) -> str:
    """How a user gets a file that `fmt`'s runtime runs."""
    if fmt.exporter is None:
        return f"pass a {fmt.suffixes[0]} file ({fmt.title})"
    return f"export the model for it ('rcr-deploy export CKPT --format onnx,{fmt.name}')"
