"""TensorRT runner (TensorRT 10 and 11 name-based API) with torch CUDA tensors as buffers.

No pycuda: buffers are torch tensors (`data_ptr()`), the stream is torch's current CUDA stream,
and the engine runs through set_input_shape / set_tensor_address / execute_async_v3, each of
whose return values is checked. Polygraphy's TrtRunner does the same calls, but with its own
CUDA buffers and stream; we keep torch's, so the harness can time device tensors with CUDA events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rcr_deploy.artifact import check_graph, read_manifest
from rcr_deploy.errors import BackendUnavailable, InternalError, RcrError
from rcr_deploy.runtime import Runner

INSTALL_HINT = "pip install 'rcr-deploy[tensorrt]' on a machine with an NVIDIA GPU, or use --backend onnxruntime"
#: The oldest TensorRT with the name-based API (set_input_shape, execute_async_v3) and strong typing.
MIN_TENSORRT = (10, 0)


def require_tensorrt() -> Any:
    """The `tensorrt` module, or `BackendUnavailable` in one line saying what is missing."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable(f"TensorRT is not installed; {INSTALL_HINT}") from None
    version = tuple(int(p) for p in str(tensorrt.__version__).split(".")[:2] if p.isdigit())
    if version < MIN_TENSORRT:
        raise BackendUnavailable(
            f"TensorRT {tensorrt.__version__} is too old; rcr-deploy needs {'.'.join(map(str, MIN_TENSORRT))} or newer: "
            "pip install -U 'rcr-deploy[tensorrt]'"
        )
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable(f"no CUDA GPU is visible to torch, which TensorRT needs; {INSTALL_HINT}")
    return tensorrt


def gpu_identity() -> dict[str, str]:
    """What an engine is tied to: the TensorRT version and the GPU model and compute capability."""
    trt = require_tensorrt()
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {"tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def torch_dtype(trt: Any, dtype: Any) -> Any:
    """The torch dtype of a TensorRT tensor dtype, for an output buffer of the engine's own type."""
    import torch

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT8: torch.int8, trt.DataType.BOOL: torch.bool}  # fmt: skip
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if dtype not in table:
        raise InternalError(f"TensorRT tensor dtype {dtype} has no torch equivalent in rcr-deploy")
    return table[dtype]


class TensorRTRunner(Runner):
    """Runs a serialized engine; same NCHW float32 in / logits out as every other runner."""

    def __init__(self, path: str | Path) -> None:
        trt = require_tensorrt()
        import torch

        self.path = Path(path)
        if not self.path.is_file():
            raise RcrError(f"{self.path}: no such engine; build one with 'rcr-deploy build ARTIFACT'")
        self.manifest = read_manifest(self.path, missing_ok=True)
        built_for = (self.manifest or {}).get("engine", {}).get("built_for")
        here = gpu_identity()
        if built_for and {k: built_for.get(k) for k in here} != here:
            raise RcrError(
                f"{self.path}: built for TensorRT {built_for.get('tensorrt')} on {built_for.get('gpu')}, this is "
                f"TensorRT {here['tensorrt']} on {here['gpu']}; rebuild it with 'rcr-deploy build'"
            )
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise RcrError(f"{self.path}: TensorRT cannot load this engine (another TensorRT version or GPU?); rebuild it")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RcrError(f"{self.path}: TensorRT cannot create an execution context (out of GPU memory?); free the GPU and retry")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise RcrError(f"{self.path}: engine has inputs {inputs} and outputs {outputs}; expected one of each")
        shapes = [[[d if d >= 0 else None for d in self.engine.get_tensor_shape(n)] for n in ns] for ns in (inputs, outputs)]
        check_graph(self.path, self.manifest, *shapes)
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.output_dtype = torch_dtype(trt, self.engine.get_tensor_dtype(self.output_name))
        self.in_channels = int(self.engine.get_tensor_shape(self.input_name)[1])
        self.name = f"tensorrt:{self.path.name}"
        self._torch = torch

    def infer_torch(self, x: Any) -> Any:
        """CUDA float32 tensor in, CUDA logits (in the engine's output dtype) out; no host copies."""
        self._check_active()
        torch = self._torch
        x = x.contiguous()
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise RcrError(f"{self.path}: input shape {tuple(x.shape)} is outside the engine's profile; check --batch against the profile")
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        if any(d < 0 for d in shape):
            raise InternalError(f"{self.path}: output shape {shape} still unresolved after set_input_shape")
        out = torch.empty(shape, dtype=self.output_dtype, device=x.device)
        for name, tensor in ((self.input_name, x), (self.output_name, out)):
            if not self.context.set_tensor_address(name, tensor.data_ptr()):
                raise InternalError(f"{self.path}: TensorRT refused the buffer address of {name!r}")
        if not self.context.execute_async_v3(self._stream()):
            raise RcrError(f"{self.path}: TensorRT execution failed for input shape {tuple(x.shape)}; check the profile's batch range")
        return out

    def _stream(self) -> int:
        """torch's current CUDA stream, on which the engine runs and the harness times."""
        return self._torch.cuda.current_stream().cuda_stream

    def infer(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).cuda()
        out = self.infer_torch(xt)
        torch.cuda.current_stream().synchronize()
        return out.float().cpu().numpy()

    def _release(self) -> None:
        self.context = self.engine = None


def open_runner(path: Path, device: str = "cuda", hint: str = "latency", threads: int | None = None) -> TensorRTRunner:
    """The format table's runner entry (rcr_deploy.formats): an engine on the current CUDA device."""
    return TensorRTRunner(path)
