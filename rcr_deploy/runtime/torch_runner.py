"""Runners over a torch model: train form, deploy form, or torch.compile of either."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rcr_deploy.errors import BackendUnavailable
from rcr_deploy.runtime import Runner


class TorchRunner(Runner):
    """Runs an eval-mode torch module on a device, numpy in and out (`infer_torch`: tensors on the device)."""

    def __init__(self, model: nn.Module, name: str, device: str = "cpu", compile: bool = False) -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(f"--device {device}: torch sees no CUDA GPU here; use --device cpu")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.in_channels = model.in_channels
        self.name = name
        self._fn = torch.compile(self.model) if compile else self.model

    @torch.inference_mode()
    def infer_torch(self, x: torch.Tensor) -> torch.Tensor:
        """A float32 tensor on the runner's device in, logits on the device out (no host copies;
        what benchmarks time and CUDA graphs capture)."""
        self._check_active()
        return self._fn(x)

    def infer(self, x: np.ndarray) -> np.ndarray:
        out = self.infer_torch(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device))
        return out.float().cpu().numpy()

    def _release(self) -> None:
        del self._fn, self.model
