"""RCRNet (paper Fig. 2) and its Table 3 ablation variants, all built from one class.

Encoder: a stride-2 stem, then one B-type down stage per level (plus A-type stages deeper down).
Decoder: either PortraitNet's D-blocks or B-type up stages, skips added as in PortraitNet.
Bypass: a spatial path of two RCR modules on the stem output, fused into the decoder at 1/2 by a
Feature Fusion Module, with a SegHead that supervises edges during training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rcr_deploy.models.layers import ConvBN, FeatureFusion, RCRModule, SegHead, SkipDecoder, StageA, StageB
from rcr_deploy.models.portraitnet import PortraitNetDecoder


class RCREncoder(nn.Module):
    """Returns the stem output (1/2) and the features at 1/4, 1/8, 1/16 and 1/32."""

    def __init__(self, in_channels: int, stem: int, widths: list[int], mids: list[int], extra_a: list[int]) -> None:
        super().__init__()
        self.stem = ConvBN(in_channels, stem, 3, 2)
        stages = []
        cin = stem
        for cout, mid, n_a in zip(widths, mids, extra_a):
            stages.append(nn.Sequential(StageB(cin, mid, cout), *(StageA(cout, mid) for _ in range(n_a))))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        stem = self.stem(x)
        feats, y = [], stem
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        return stem, feats


class RCRDecoder(SkipDecoder):
    """B-type up stages; same interface as `PortraitNetDecoder`."""

    def __init__(self, skip_widths: tuple[int, int, int, int], widths: tuple[int, int], mids: tuple[int, ...]) -> None:
        super().__init__()
        s4, s8, s16, s32 = skip_widths
        half, out = widths
        pairs = [(s32, s16), (s16, s8), (s8, s4), (s4, half)]
        self.up = nn.ModuleList(StageB(cin, mid, cout, up=True) for (cin, cout), mid in zip(pairs, mids))
        self.final = StageB(half, mids[4], out, up=True)
        self.half_width, self.out_width = half, out


class RCRNet(nn.Module):
    """One RCRNet variant. Forward returns mask logits; `with_edge=True` adds edge logits."""

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 2,
        stem: int = 16,
        widths: tuple[int, ...] = (24, 32, 96, 320),
        mids: tuple[int, ...] = (24, 32, 96, 320),
        extra_a: tuple[int, ...] = (0, 1, 1, 1),
        decoder: str = "rcr",
        decoder_widths: tuple[int, int] = (16, 8),
        decoder_mids: tuple[int, ...] = (320, 96, 32, 24, 16),
        bypass: int = 0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.encoder = RCREncoder(in_channels, stem, list(widths), list(mids), list(extra_a))
        skips = (widths[0], widths[1], widths[2], widths[3])
        if decoder == "portraitnet":
            self.decoder: nn.Module = PortraitNetDecoder(skips, decoder_widths)
        elif decoder == "rcr":
            self.decoder = RCRDecoder(skips, decoder_widths, tuple(decoder_mids))
        else:
            raise ValueError(f"unknown decoder {decoder!r}: use 'portraitnet' or 'rcr'")
        half, out = decoder_widths
        self.head = nn.Conv2d(out, num_classes, 3, padding=1, bias=False)
        if bypass:
            self.bypass: nn.Module | None = nn.Sequential(RCRModule(stem, bypass), RCRModule(bypass, bypass))
            self.fusion: nn.Module | None = FeatureFusion(bypass + half, half)
            self.edge_head: nn.Module | None = SegHead(bypass, num_classes)
        else:
            self.bypass = self.fusion = None
            self.edge_head = nn.Conv2d(out, num_classes, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, with_edge: bool = False):
        stem, feats = self.encoder(x)
        half = self.decoder.to_half(feats)
        spatial = None
        if self.bypass is not None:
            spatial = self.bypass(stem)
            half = self.fusion(spatial, half)
        feat = self.decoder.to_full(half)
        mask = self.head(feat)
        if not with_edge:
            return mask
        if self.edge_head is None:
            raise RuntimeError("deploy-form model has no edge head; train the train form")
        if spatial is None:
            return mask, self.edge_head(feat)
        edge = F.interpolate(self.edge_head(spatial), size=mask.shape[-2:], mode="bilinear", align_corners=False)
        return mask, edge

    def drop_training_heads(self) -> None:
        self.edge_head = None
