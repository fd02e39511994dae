"""Train form -> deploy form, and the check that the two compute the same function.

The fusion maths (RepVGG / MobileOne, paper Eq. 2-4):
  BN(conv(x)) = conv'(x) with W' = W * gamma / sigma and b' = beta - mu * gamma / sigma,
  sigma = sqrt(running_var + eps). Branches then add kernels and biases; a 1x1 kernel sits at
  the centre of the 3x3, and the identity is a 1 at the centre tap of each channel's own slice.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator

import torch
from torch import nn

from rcr_deploy.errors import InternalError


def fuse_conv_bn(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold eval-mode BN (running statistics) into a bias-free conv kernel."""
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


def pad_1x1_to_3x3(kernel: torch.Tensor) -> torch.Tensor:
    """Zero-pad a 1x1 kernel to 3x3 with the tap at the centre."""
    return nn.functional.pad(kernel, [1, 1, 1, 1])


def identity_kernel(channels: int, groups: int, k: int) -> torch.Tensor:
    """The k x k kernel of a conv that returns its input: index [i, i mod (C/groups), k//2, k//2]."""
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, k, k)
    for i in range(channels):
        kernel[i, i % per_group, k // 2, k // 2] = 1.0
    return kernel


def load_kernel(conv: nn.Conv2d, kernel: torch.Tensor, bias: torch.Tensor) -> None:
    """Put a fused kernel and bias into a deploy-form conv (made by a block's `deploy_layers`)."""
    conv.weight.data.copy_(kernel.detach())
    conv.bias.data.copy_(bias.detach())


def reparameterize(model: nn.Module) -> nn.Module:
    """A deploy-form copy: every conv+BN fused, every RCR block2 one conv, no BatchNorm left,
    training-only heads dropped. The original model is untouched."""
    deployed = copy.deepcopy(model).eval()
    with torch.no_grad():
        for module in list(deployed.modules()):
            if hasattr(module, "reparameterize"):
                module.reparameterize()
    if hasattr(deployed, "drop_training_heads"):
        deployed.drop_training_heads()
    leftover = [name for name, m in deployed.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if leftover:
        raise InternalError(f"BatchNorm left unfused after reparameterize: {', '.join(leftover[:5])}")
    return deployed


def is_deploy_form(model: nn.Module) -> bool:
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def randomize_bn(model: nn.Module, generator: torch.Generator) -> None:
    """Random BN statistics and affine parameters. With default BN (mean 0, var 1, gamma 1,
    beta 0) a fusion that ignores them would still pass, so the check would prove nothing."""

    def uniform(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=generator, dtype=t.dtype) * (hi - lo) + lo)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                uniform(m.running_mean, -0.5, 0.5)
                uniform(m.running_var, 0.05, 2.0)
                uniform(m.weight, 0.5, 1.5)
                uniform(m.bias, -0.5, 0.5)


@dataclasses.dataclass
class Tolerance:
    """Pass when max|a-b| <= atol + rtol * max|reference| (a norm-wise relative test)."""

    rtol: float
    atol: float


DEFAULT_TOLERANCES = {torch.float32: Tolerance(rtol=1e-4, atol=1e-5), torch.float64: Tolerance(rtol=1e-10, atol=1e-12)}


@dataclasses.dataclass
class CheckResult:
    """One comparison. Truthy when it passed."""

    name: str
    dtype: str
    shape: list[int]
    max_abs: float
    max_rel: float
    worst_index: list[int]
    rtol: float
    atol: float
    #: max_abs / allowed error: how close to the tolerance (above 1 fails).
    ratio: float
    passed: bool

    def __bool__(self) -> bool:
        return self.passed


def compare(name: str, out: torch.Tensor, ref: torch.Tensor, tol: Tolerance) -> CheckResult:
    """Compare `out` against `ref`; max_rel is max|a-b| relative to max|ref|."""
    diff = (out.double() - ref.double()).abs()
    scale = ref.double().abs().max().item()
    max_abs = diff.max().item()
    worst = [int(i) for i in torch.unravel_index(diff.argmax(), diff.shape)]
    allowed = tol.atol + tol.rtol * scale
    finite = bool(torch.isfinite(diff).all())
    ratio = max_abs / allowed if allowed > 0 else (0.0 if max_abs == 0 else float("inf"))
    return CheckResult(
        name=name,
        dtype=str(ref.dtype).removeprefix("torch."),
        shape=list(ref.shape),
        max_abs=max_abs,
        max_rel=max_abs / scale if scale > 0 else float("inf") if max_abs > 0 else 0.0,
        worst_index=worst,
        rtol=tol.rtol,
        atol=tol.atol,
        ratio=ratio if finite else float("inf"),
        passed=finite and max_abs <= allowed,
    )


def _blocks(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    return ((name, m) for name, m in model.named_modules() if hasattr(m, "get_kernel_bias"))


def verify_model(
    model: nn.Module,
    name: str,
    batch_sizes: tuple[int, ...] = (1, 3),
    sizes: tuple[tuple[int, int], ...] = ((224, 224), (160, 128)),
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64),
    tolerances: dict[torch.dtype, Tolerance] | None = None,
    seed: int = 0,
) -> list[CheckResult]:
    """Compare the train form (eval mode) with `reparameterize(model)` on random inputs,
    for the whole network and for each re-parameterisable block in isolation."""
    tolerances = tolerances or DEFAULT_TOLERANCES
    generator = torch.Generator().manual_seed(seed)
    results = []
    for dtype in dtypes:
        train = copy.deepcopy(model).to(dtype).eval()
        deploy = reparameterize(train)
        tol = tolerances[dtype]
        with torch.no_grad():
            for bs in batch_sizes:
                for h, w in sizes:
                    x = torch.randn(bs, train.in_channels, h, w, generator=generator, dtype=dtype)
                    results.append(compare(f"{name} b{bs} {h}x{w}", deploy(x), train(x), tol))
            for block_name, block in _blocks(train):
                channels = block.channels
                x = torch.randn(2, channels, 17, 13, generator=generator, dtype=dtype)
                fused = reparameterize(block)
                results.append(compare(f"{name}.{block_name}", fused(x), block(x), tol))
    return results
