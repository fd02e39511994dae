"""TensorRT runner (TensorRT 10 and 11 name-based API) with torch CUDA tensors as buffers.

No pycuda: buffers are torch tensors (`data_ptr()`), the stream is torch's current CUDA stream,
and the engine runs through set_input_shape / set_tensor_address / execute_async_v3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rcr_deploy.errors import BackendUnavailable, RcrError
from rcr_deploy.runtime import Runner, manifest_path

INSTALL_HINT = "pip install 'rcr-deploy[tensorrt]' on a machine with an NVIDIA GPU, or use --backend onnxruntime"


def require_tensorrt() -> Any:
    """The `tensorrt` module, or `BackendUnavailable` in one line saying what is missing."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable(f"TensorRT is not installed; {INSTALL_HINT}") from None
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


class TensorRTRunner(Runner):
    """Runs a serialized engine; same NCHW float32 in / logits out as every other runner."""

    def __init__(self, path: str | Path) -> None:
        trt = require_tensorrt()
        import torch

        self.path = Path(path)
        if not self.path.is_file():
            raise RcrError(f"{self.path}: no such engine; build one with 'rcr-deploy build ARTIFACT'")
        meta = manifest_path(self.path)
        self.manifest = json.loads(meta.read_text()) if meta.is_file() else None
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
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise RcrError(f"{self.path}: engine has inputs {inputs} and outputs {outputs}; expected one of each")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.in_channels = int(self.engine.get_tensor_shape(self.input_name)[1])
        self.name = f"tensorrt:{self.path.name}"
        self._torch = torch

    def infer_torch(self, x: Any) -> Any:
        """CUDA float32 tensor in, CUDA float32 logits out (no host copies; for benchmarks)."""
        torch = self._torch
        x = x.contiguous()
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=torch.float32, device=x.device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RcrError(f"{self.path}: TensorRT execution failed for input shape {tuple(x.shape)}; check the profile's batch range")
        return out

    def infer(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).cuda()
        out = self.infer_torch(xt)
        torch.cuda.current_stream().synchronize()
        return out.cpu().numpy()

    def close(self) -> None:
        self.context = self.engine = None
