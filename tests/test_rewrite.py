"""The exact phone rewrite: ConvTranspose2d(k4, s2, p1) == 3x3 conv with 4 outputs per channel + PixelShuffle(2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rcr_deploy.errors import VerificationError
from rcr_deploy.exporters import rewrite as phone_rewrite
from rcr_deploy.exporters.rewrite import PixelShuffleUp, rewritable, rewrite, verify_rewrite
from rcr_deploy.models import build_model
from rcr_deploy.reparam import randomize_bn, reparameterize


@pytest.mark.parametrize(("cin", "cout", "groups"), [(16, 16, 16), (5, 7, 1), (6, 4, 2)], ids=["depthwise", "dense", "grouped"])
@pytest.mark.parametrize("bias", [False, True])
def test_rewrite_equals_transposed_conv_on_random_weights(cin: int, cout: int, groups: int, bias: bool) -> None:
    torch.manual_seed(cin + cout + groups)
    deconv = nn.ConvTranspose2d(cin, cout, 4, 2, 1, groups=groups, bias=bias).double()
    with torch.no_grad():
        deconv.weight.normal_()  # far from the bilinear initialisation, as the trained kernels are
    up = PixelShuffleUp(deconv)
    x = torch.randn(3, cin, 9, 14, dtype=torch.float64)
    with torch.no_grad():
        expected, got = deconv(x), up(x)
    assert got.shape == expected.shape == (3, cout, 18, 28)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)


def test_only_kernel4_stride2_padding1_is_rewritten() -> None:
    assert rewritable(nn.ConvTranspose2d(8, 8, 4, 2, 1, groups=8))
    for other in (nn.ConvTranspose2d(8, 8, 3, 2, 1), nn.ConvTranspose2d(8, 8, 4, 2, 1, output_padding=1), nn.Conv2d(8, 8, 4, 2, 1)):
        assert not rewritable(other)
    with pytest.raises(ValueError, match="not a kernel-4"):
        PixelShuffleUp(nn.ConvTranspose2d(8, 8, 2, 2, 0))


def _deploy_rcrnet() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("rcrnet")
    randomize_bn(model, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.ConvTranspose2d):
                m.weight.normal_()
    return reparameterize(model)


def test_rcrnet_phone_form_is_verified_equal_and_has_no_transposed_conv() -> None:
    deploy = _deploy_rcrnet()
    phone, replaced = rewrite(deploy)
    assert replaced == sum(isinstance(m, nn.ConvTranspose2d) for m in deploy.modules()) == 10
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in phone.modules())
    assert any(isinstance(m, nn.ConvTranspose2d) for m in deploy.modules()), "the deploy form must be left untouched"
    check = verify_rewrite(deploy, phone, (64, 96))
    assert check["passed"] and check["stage"] == "phone-rewrite"
    assert {c["dtype"] for c in check["checks"]} == {"float64", "float32"}
    assert max(c["max_abs"] for c in check["checks"] if c["dtype"] == "float64") < 1e-10


def test_a_wrong_tap_map_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    deploy = _deploy_rcrnet()
    monkeypatch.setattr(phone_rewrite, "PHASE_TAPS", ((1, 3, None), (None, 2, 0)))  # phase 0's taps swapped
    phone, _ = rewrite(deploy)
    with pytest.raises(VerificationError, match="phone rewrite"):
        verify_rewrite(deploy, phone, (64, 64))
