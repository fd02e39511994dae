"""Runners over a torch model: train form, deploy form, or torch.compile of either."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rcr_deploy.runtime import Runner


class TorchRunner(Runner):
    """Runs an eval-mode torch module on a device, numpy in and out."""

    def __init__(self, model: nn.Module, name: str, device: str = "cpu", compile: bool = False) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.in_channels = model.in_channels
        self.name = name
        self._fn = torch.compile(self.model) if compile else self.model

    @torch.inference_mode()
    def infer(self, x: np.ndarray) -> np.ndarray:
        out = self._fn(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device))
        return out.float().cpu().numpy()
