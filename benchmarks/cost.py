"""Model cost: parameter counts and multiply-accumulates (MACs)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs_torch(model: nn.Module, size: tuple[int, int] = (224, 224)) -> int:
    """MACs of one forward pass at batch 1, from torch's FlopCounterMode (FLOPs = 2 * MACs;
    it counts convolutions, transposed convolutions and matrix products)."""
    x = torch.zeros(1, model.in_channels, *size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return counter.get_total_flops() // 2
