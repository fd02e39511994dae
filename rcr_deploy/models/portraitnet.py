"""PortraitNet (Zhang et al. 2019): MobileNetV2 encoder + D-block decoder, the paper's baseline.

The decoder is also the "PortraitNet decoder" of RCRNet variants dagger and diamond, so it takes
the encoder's skip widths as arguments.
"""

from __future__ import annotations

import torch
from torch import nn

from rcr_deploy.models.layers import ConvBN, SkipDecoder, bilinear_deconv

# MobileNetV2, expansion 6: (out channels, repeats, first stride) after the 32-channel stem.
_MOBILENET_V2 = [(16, 1, 1), (24, 2, 2), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1)]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> dw3x3 -> 1x1 linear project, residual when shapes match.

    As in PortraitNet's code, the 1x1 expansion is there even at expansion 1."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.block = nn.Sequential(
            ConvBN(cin, hidden, 1), ConvBN(hidden, hidden, 3, stride, hidden), ConvBN(hidden, cout, 1, act=False)
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV2Encoder(nn.Module):
    """Returns the features at 1/4, 1/8, 1/16 and 1/32 (24, 32, 96 and 320 channels)."""

    skip_widths = (24, 32, 96, 320)

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = [ConvBN(in_channels, 32, 3, 2)]
        cin = 32
        for cout, repeats, stride in _MOBILENET_V2:
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, 1 if cout == 16 else 6))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        # Indices after which the 1/4, 1/8, 1/16 and 1/32 features are taken.
        self.taps = (3, 6, 13, 17)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                feats.append(x)
        return feats


class DBlock(nn.Module):
    """PortraitNet's decoder block: two dw3x3+pw1x1 pairs, a 1x1 shortcut when widths differ."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            ConvBN(cin, cin, 3, groups=cin),
            ConvBN(cin, cout, 1),
            ConvBN(cout, cout, 3, groups=cout),
            ConvBN(cout, cout, 1, act=False),
        )
        self.shortcut: nn.Module = nn.Identity() if cin == cout else ConvBN(cin, cout, 1, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.block(x) + self.shortcut(x))


class PortraitNetDecoder(SkipDecoder):
    """D-block + x2 deconv per level; skips added at 1/16, 1/8 and 1/4.

    Takes the encoder features [1/4, 1/8, 1/16, 1/32] and returns features at 1/2 and the
    module that brings them to full resolution, so a bypass can be fused in at 1/2 first.
    """

    def __init__(self, skip_widths: tuple[int, int, int, int], widths: tuple[int, int] = (16, 8)) -> None:
        super().__init__()
        s4, s8, s16, s32 = skip_widths
        half, out = widths
        self.up = nn.ModuleList(
            nn.Sequential(DBlock(cin, cout), bilinear_deconv(cout, depthwise=False))
            for cin, cout in [(s32, s16), (s16, s8), (s8, s4), (s4, half)]
        )
        self.final = nn.Sequential(DBlock(half, out), bilinear_deconv(out, depthwise=False))
        self.half_width, self.out_width = half, out


class PortraitNet(nn.Module):
    """The baseline: 2,080,904 parameters at 3 input channels and 2 classes (mask + edge heads)."""

    def __init__(self, in_channels: int = 4, num_classes: int = 2) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.encoder = MobileNetV2Encoder(in_channels)
        self.decoder = PortraitNetDecoder(MobileNetV2Encoder.skip_widths)
        self.head = nn.Conv2d(8, num_classes, 3, padding=1, bias=False)
        self.edge_head: nn.Module | None = nn.Conv2d(8, num_classes, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, with_edge: bool = False):
        feat = self.decoder.to_full(self.decoder.to_half(self.encoder(x)))
        mask = self.head(feat)
        if not with_edge:
            return mask
        if self.edge_head is None:
            raise RuntimeError("deploy-form model has no edge head; train the train form")
        return mask, self.edge_head(feat)

    def drop_training_heads(self) -> None:
        self.edge_head = None
