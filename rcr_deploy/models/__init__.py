"""The model family: a registry of named variants (paper Table 3) and their published figures."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from rcr_deploy.errors import RcrError
from rcr_deploy.models.portraitnet import PortraitNet
from rcr_deploy.models.rcrnet import RCRNet


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named architecture: its class, its config, and the paper's figures at 224x224."""

    name: str
    symbol: str
    description: str
    cls: type[nn.Module]
    config: dict[str, Any]
    paper_params_m: float
    paper_flops_m: float
    paper_miou: float


# Widths are not given in the paper; these were chosen so each variant lands within +-10% of
# Table 3's parameters and +-15% of its FLOPs, which are multiply-accumulates (see README).
# All variants share one encoder. Table 3 gives the full model 0.16 M more parameters than the
# bypass alone explains, so its decoder is widest at 1/32 and 1/16, where parameters are cheap
# in MACs.
_ENCODER = dict(stem=16, widths=(24, 48, 96, 192), mids=(48, 96, 192, 256), extra_a=(0, 1, 2, 1))

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant(
            "portraitnet", "", "PortraitNet baseline (MobileNetV2 + D-blocks)", PortraitNet, {}, 2.080, 325, 95.99
        ),
        Variant(
            "rcrnet-dagger",
            "†",
            "RCR encoder + PortraitNet decoder",
            RCRNet,
            dict(_ENCODER, decoder="portraitnet"),
            0.607,
            157,
            95.97,
        ),
        Variant(
            "rcrnet-ddagger",
            "‡",
            "RCR encoder + RCR decoder",
            RCRNet,
            dict(_ENCODER, decoder="rcr", decoder_mids=(512, 192, 48, 24, 16)),
            0.608,
            177,
            96.02,
        ),
        Variant(
            "rcrnet-diamond",
            "◊",
            "RCR encoder + PortraitNet decoder + spatial bypass (FFM, SegHead)",
            RCRNet,
            dict(_ENCODER, decoder="portraitnet", bypass=16),
            0.610,
            190,
            96.31,
        ),
        Variant(
            "rcrnet",
            "*",
            "full RCRNet: RCR encoder + RCR decoder + spatial bypass",
            RCRNet,
            dict(_ENCODER, decoder="rcr", decoder_mids=(896, 320, 48, 24, 16), bypass=32),
            0.770,
            217,
            96.33,
        ),
    ]
}

DEFAULT_ARCH = "rcrnet"


def build_model(arch: str, in_channels: int = 4, num_classes: int = 2, deploy: bool = False) -> nn.Module:
    """A model of a registered variant: the train form, or with `deploy` the deploy form's
    architecture (every block's fused layers, no training heads), its weights to be loaded."""
    if arch not in VARIANTS:
        raise RcrError(f"unknown architecture {arch!r}: use one of {', '.join(VARIANTS)}")
    variant = VARIANTS[arch]
    model = variant.cls(in_channels=in_channels, num_classes=num_classes, **variant.config)
    if deploy:
        for module in list(model.modules()):
            if hasattr(module, "deploy_layers"):
                module.deploy_layers()
        model.drop_training_heads()
    return model
