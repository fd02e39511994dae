"""The exact rewrite for phone runtimes: ConvTranspose2d(k=4, s=2, p=1) -> Conv2d(3x3, 4x outputs) + PixelShuffle(2).

Why: TFLite has no grouped TRANSPOSE_CONV, so each of RCRNet's depth-wise up-samplers becomes one
op per channel (1,496 ops, 3.6x ONNX Runtime's time under XNNPACK); ncnn and ExecuTorch are slow
on it too. ONNX Runtime and OpenVINO gain nothing, so only the phone targets use the rewrite.

Derivation (one axis; the 2-D kernel is the outer product of the two axes' tap maps). A
transposed conv scatters x[i] * w[k] into y[o] with o = s*i - p + k = 2i - 1 + k, k in 0..3. So

    y[2m]     = x[m] w[1] + x[m-1] w[3]      (k = 2m + 1 - 2i: i = m -> 1, i = m-1 -> 3)
    y[2m + 1] = x[m] w[2] + x[m+1] w[0]      (k = 2m + 2 - 2i: i = m -> 2, i = m+1 -> 0)

Each output phase a in {0, 1} is a 3-tap conv over (x[m-1], x[m], x[m+1]) with padding 1:
phase 0 takes taps (w[3], w[1], 0), phase 1 takes (0, w[2], w[0]). In 2-D, output pixel
(2m + a, 2n + b) of channel c is a 3x3 conv of the input with kernel K_ab[u, v] = w[T_a[u], T_b[v]]
(zero where a tap is absent). A conv with 4 outputs per channel, ordered c*4 + a*2 + b, computes
all four phases at the input resolution, and PixelShuffle(2) (ONNX DepthToSpace, CRD; TFLite
DEPTH_TO_SPACE in NHWC) puts channel c*4 + a*2 + b at (2m + a, 2n + b) of channel c. Nothing is
approximated: every output is the same two-to-four products summed, only in another order. The
trained kernels are far from bilinear, so "upsample + conv" would change the model; this does not.

The grouping carries over: group g of the transposed conv reads input channels of group g and
writes output channels g*cpg .. (g+1)*cpg - 1, whose phases are conv outputs g*4*cpg ..
(g+1)*4*cpg - 1, exactly the outputs of group g of a conv with the same `groups`.

`rewrite` makes the phone form of a deploy-form model; `verify_rewrite` proves it equal to the
deploy form the way `verify-reparam` proves the deploy form equal to the train form, and raises
`VerificationError` beyond tolerance.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn

from rcr_deploy.errors import VerificationError
from rcr_deploy.reparam import DEFAULT_TOLERANCES, CheckResult, compare

#: For each output phase (0 even, 1 odd): the transposed-conv tap that each of the 3x3 conv's
#: taps (input offsets -1, 0, +1) reads, or None. From the derivation above.
PHASE_TAPS = ((3, 1, None), (None, 2, 0))


def rewritable(module: nn.Module) -> bool:
    """A ConvTranspose2d that `PixelShuffleUp` reproduces exactly: kernel 4, stride 2, padding 1."""
    return (
        isinstance(module, nn.ConvTranspose2d)
        and tuple(module.kernel_size) == (4, 4)
        and tuple(module.stride) == (2, 2)
        and tuple(module.padding) == (1, 1)
        and tuple(module.output_padding) == (0, 0)
        and tuple(module.dilation) == (1, 1)
    )


def phase_kernel(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The 3x3 conv kernel (out = 4 * out_channels, in / groups, 3, 3) of a k4 s2 p1 transposed
    conv's weight (in, out / groups, 4, 4), output channels ordered c*4 + a*2 + b."""
    cin, cpg, _, _ = weight.shape
    cout = cpg * groups
    # (in, out/groups, 4, 4) -> (groups, in/groups, out/groups, 4, 4) -> per output channel c its in/groups inputs.
    w = weight.reshape(groups, cin // groups, cpg, 4, 4).permute(0, 2, 1, 3, 4).reshape(cout, cin // groups, 4, 4)
    kernel = weight.new_zeros(cout, 4, cin // groups, 3, 3)
    for a, rows in enumerate(PHASE_TAPS):
        for b, cols in enumerate(PHASE_TAPS):
            for u, ku in enumerate(rows):
                for v, kv in enumerate(cols):
                    if ku is not None and kv is not None:
                        kernel[:, a * 2 + b, :, u, v] = w[:, :, ku, kv]
    return kernel.reshape(cout * 4, cin // groups, 3, 3)


class PixelShuffleUp(nn.Module):
    """x2 up-sampling as a 3x3 conv with 4 outputs per channel, then PixelShuffle(2)."""

    def __init__(self, deconv: nn.ConvTranspose2d) -> None:
        super().__init__()
        if not rewritable(deconv):
            raise ValueError(f"{deconv} is not a kernel-4, stride-2, padding-1 transposed conv")
        w = deconv.weight.detach()
        self.conv = nn.Conv2d(
            deconv.in_channels, deconv.out_channels * 4, 3, 1, 1, groups=deconv.groups, bias=deconv.bias is not None
        ).to(w)
        with torch.no_grad():
            self.conv.weight.copy_(phase_kernel(w, deconv.groups))
            if deconv.bias is not None:
                self.conv.bias.copy_(deconv.bias.detach().repeat_interleave(4))
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


def rewrite(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of `model` with every rewritable ConvTranspose2d replaced by `PixelShuffleUp`, and
    how many were replaced. The model is untouched."""
    phone = copy.deepcopy(model).eval()
    targets = [(name, m) for name, m in phone.named_modules() if rewritable(m)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = phone.get_submodule(parent_name) if parent_name else phone
        setattr(parent, child, PixelShuffleUp(module))
    return phone, len(targets)


def verify_rewrite(
    deploy: nn.Module,
    phone: nn.Module,
    size: tuple[int, int] = (224, 224),
    seed: int = 0,
) -> dict[str, Any]:
    """The phone form against the deploy form on random inputs in float64 (where a wrong tap
    cannot hide in rounding) and float32 at `size`, batch 1 and 2, with `DEFAULT_TOLERANCES`.
    Raises `VerificationError` beyond tolerance; returns the stage summary for the manifest."""
    generator = torch.Generator().manual_seed(seed)
    in_channels = getattr(deploy, "in_channels", 4)
    checks: list[CheckResult] = []
    with torch.no_grad():
        for dtype in (torch.float64, torch.float32):
            a, b = copy.deepcopy(deploy).to(dtype).eval(), copy.deepcopy(phone).to(dtype).eval()
            for batch in (1, 2):
                x = torch.randn(batch, in_channels, *size, generator=generator, dtype=dtype)
                name = f"b{batch} {size[0]}x{size[1]} {str(dtype).removeprefix('torch.')}"
                checks.append(compare(name, b(x), a(x), DEFAULT_TOLERANCES[dtype]))
    worst = max(checks, key=lambda r: r.ratio)
    if not all(checks):
        raise VerificationError(
            f"the phone rewrite (ConvTranspose -> conv + PixelShuffle) differs from the deploy form: max abs "
            f"{worst.max_abs:.3e}, max rel {worst.max_rel:.3e} on {worst.name} at {worst.worst_index} "
            f"(rtol {worst.rtol}, atol {worst.atol}); this is a bug in rcr-deploy, rerun with --debug"
        )
    return {"stage": "phone-rewrite", "passed": True, "checks": [dataclasses.asdict(r) for r in checks]}
