"""Building blocks shared by every network, each knowing its train form and deploy form.

The re-parameterisation protocol follows MobileOne: a module with a `reparameterize()` method
replaces its own train-time branches by one convolution in place. `rcr_deploy.reparam`
deep-copies a model and calls it on every such module. `deploy_layers()` is the structural half
alone (the deploy form's layers, weights unset): `build_model(..., deploy=True)` builds the deploy
form with it, so a deploy-form checkpoint loads without any fusion (MobileOne's inference_mode).
"""

from __future__ import annotations

import torch
from torch import nn

from rcr_deploy import reparam


def _relu() -> nn.Module:
    return nn.ReLU(inplace=True)


def _biased(conv: nn.Conv2d, k: int) -> nn.Conv2d:
    """A conv of `conv`'s channels, stride and groups with a k x k kernel and a bias, weights unset."""
    return nn.Conv2d(conv.in_channels, conv.out_channels, k, conv.stride, k // 2, groups=conv.groups, bias=True).to(conv.weight)


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm -> optional ReLU. Deploy form: one conv with bias."""

    def __init__(
        self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(cout)
        self.act = _relu() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def deploy_layers(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = _biased(self.conv, self.conv.kernel_size[0])
            self.bn = nn.Identity()

    def reparameterize(self) -> None:
        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        kernel, bias = reparam.fuse_conv_bn(self.conv.weight, self.bn)
        self.deploy_layers()
        reparam.load_kernel(self.conv, kernel, bias)


class RCRBlock2(nn.Module):
    """Block2 of the RCR module (paper Eq. 1): dw3x3+BN  +  dw1x1+BN  +  identity, then ReLU.

    Deploy form: a single depth-wise 3x3 conv with bias (Fig. 3b).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.conv3 = ConvBN(channels, channels, 3, groups=channels, act=False)
        self.conv1 = ConvBN(channels, channels, 1, groups=channels, act=False)
        self.fused: nn.Conv2d | None = None
        self.act = _relu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        return self.act(self.conv3(x) + self.conv1(x) + x)

    def get_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The merged 3x3 depth-wise kernel and bias of the three branches."""
        k3, b3 = reparam.fuse_conv_bn(self.conv3.conv.weight, self.conv3.bn)
        k1, b1 = reparam.fuse_conv_bn(self.conv1.conv.weight, self.conv1.bn)
        kid = reparam.identity_kernel(self.channels, groups=self.channels, k=3).to(k3)
        return k3 + reparam.pad_1x1_to_3x3(k1) + kid, b3 + b1

    def deploy_layers(self) -> None:
        if self.fused is None:
            self.fused = _biased(self.conv3.conv, 3)
            del self.conv3, self.conv1

    def reparameterize(self) -> None:
        if self.fused is not None:
            return
        kernel, bias = self.get_kernel_bias()
        self.deploy_layers()
        reparam.load_kernel(self.fused, kernel, bias)


class RCRModule(nn.Module):
    """The RCR module (Fig. 3): block1 is a point-wise conv that changes width, block2 as above."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.block1 = ConvBN(cin, cout, 1)
        self.block2 = RCRBlock2(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(x))


def bilinear_deconv(channels: int, depthwise: bool = True) -> nn.ConvTranspose2d:
    """x2 transposed conv initialised to per-channel bilinear upsampling, as PortraitNet does.

    PortraitNet's own deconvs are dense (channel-mixing); RCR stages use depth-wise ones."""
    groups = channels if depthwise else 1
    deconv = nn.ConvTranspose2d(channels, channels, 4, 2, 1, groups=groups, bias=False)
    f = torch.tensor([0.25, 0.75, 0.75, 0.25])
    with torch.no_grad():
        deconv.weight.zero_()
        for i in range(channels):
            deconv.weight[i, 0 if depthwise else i] = f[:, None] * f[None, :]
    return deconv


class StageA(nn.Module):
    """A-type stage (Fig. 4a): RCR(c->mid) -> RCR(mid->c) with an identity shortcut."""

    def __init__(self, channels: int, mid: int) -> None:
        super().__init__()
        self.rcr1 = RCRModule(channels, mid)
        self.rcr2 = RCRModule(mid, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.rcr2(self.rcr1(x))


class StageB(nn.Module):
    """B-type stage (Fig. 4b): RCR -> stride-2 depth-wise conv -> RCR, with a resampling shortcut.

    `up=False` halves the resolution (stride-2 dw conv; shortcut 2x2 average pool + 1x1 conv).
    `up=True` doubles it (stride-2 dw transposed conv; shortcut 1x1 conv + the same upsampling),
    so the decoder needs no Resize op, which keeps INT8 and TensorRT graphs simple.
    """

    def __init__(self, cin: int, mid: int, cout: int, up: bool = False) -> None:
        super().__init__()
        self.rcr1 = RCRModule(cin, mid)
        self.resample: nn.Module = bilinear_deconv(mid) if up else ConvBN(mid, mid, 3, 2, mid)
        self.rcr2 = RCRModule(mid, cout)
        if up:
            self.shortcut: nn.Module = nn.Sequential(
                ConvBN(cin, cout, 1, act=False), bilinear_deconv(cout)
            )
        else:
            self.shortcut = nn.Sequential(nn.AvgPool2d(2), ConvBN(cin, cout, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rcr2(self.resample(self.rcr1(x))) + self.shortcut(x)


class FeatureFusion(nn.Module):
    """BiSeNet's Feature Fusion Module: concat -> 1x1 ConvBNReLU -> channel attention residual."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.fuse = ConvBN(cin, cout, 1)
        squeeze = max(cout // 4, 4)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(cout, squeeze, 1),
            _relu(),
            nn.Conv2d(squeeze, cout, 1),
            nn.Sigmoid(),
        )

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feature = self.fuse(torch.cat([spatial, context], dim=1))
        return feature + feature * self.attention(feature)


class SegHead(nn.Module):
    """The bypass's edge head: 3x3 ConvBNReLU + 1x1 conv to class logits (training only)."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.conv = ConvBN(cin, cin, 3)
        self.cls = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.conv(x))


class SkipDecoder(nn.Module):
    """A decoder of four up stages, each fed the stage before plus the encoder's skip of its
    resolution (added), and a final stage to full resolution. Subclasses build `up` (four
    modules) and `final`; the forward path is shared because both decoders join skips the same way."""

    up: nn.ModuleList
    final: nn.Module

    def to_half(self, feats: list[torch.Tensor]) -> torch.Tensor:
        f4, f8, f16, f32 = feats
        x = self.up[0](f32)
        x = self.up[1](x + f16)
        x = self.up[2](x + f8)
        return self.up[3](x + f4)

    def to_full(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(x)

