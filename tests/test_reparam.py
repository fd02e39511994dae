"""The equivalence check must pass on correct fusion and fail on each planted fusion bug."""

import pytest
import torch
from torch import nn

from rcr_deploy import reparam
from rcr_deploy.models import build_model
from rcr_deploy.models.layers import RCRBlock2
from rcr_deploy.reparam import randomize_bn, reparameterize, verify_model


def _random_model(name="rcrnet"):
    model = build_model(name)
    randomize_bn(model, torch.Generator().manual_seed(0))
    return model


def _verify(model, name="rcrnet"):
    return verify_model(model, name, batch_sizes=(2,), sizes=((96, 64),))


def test_deploy_form_has_no_bn_no_branches_no_training_heads():
    model = _random_model()
    deploy = reparameterize(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    blocks = [m for m in deploy.modules() if isinstance(m, RCRBlock2)]
    assert blocks and all(b.fused is not None and not hasattr(b, "conv3") for b in blocks)
    assert deploy.edge_head is None
    # the original is untouched
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.edge_head is not None


@pytest.mark.slow  # every block and the whole model, float32 and float64
def test_correct_fusion_passes_in_both_precisions():
    results = _verify(_random_model())
    assert results and all(results)
    f64 = [r for r in results if r.dtype == "float64"]
    assert max(r.max_rel for r in f64) < 1e-12


def _drop_identity(self):
    k3, b3 = reparam.fuse_conv_bn(self.conv3.conv.weight, self.conv3.bn)
    k1, b1 = reparam.fuse_conv_bn(self.conv1.conv.weight, self.conv1.bn)
    return k3 + reparam.pad_1x1_to_3x3(k1), b3 + b1


def _fuse_ignoring_eps(kernel, bn):
    scale = bn.weight / bn.running_var.sqrt()
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


def _fuse_ignoring_running_stats(kernel, bn):
    scale = bn.weight / (1 + bn.eps) ** 0.5
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias


def _pad_off_centre(kernel):
    return nn.functional.pad(kernel, [0, 2, 0, 2])


@pytest.mark.parametrize(
    "target,bug",
    [
        ("RCRBlock2.get_kernel_bias", _drop_identity),
        ("fuse_conv_bn", _fuse_ignoring_eps),
        ("fuse_conv_bn", _fuse_ignoring_running_stats),
        ("pad_1x1_to_3x3", _pad_off_centre),
    ],
    ids=["identity-dropped", "bn-eps-ignored", "running-stats-ignored", "1x1-off-centre"],
)
@pytest.mark.slow
def test_planted_fusion_bug_is_rejected(monkeypatch, target, bug):
    if target.startswith("RCRBlock2."):
        monkeypatch.setattr(RCRBlock2, "get_kernel_bias", bug)
    else:
        monkeypatch.setattr(reparam, target, bug)
    results = _verify(_random_model())
    assert not all(results)
    # float64 must catch every one of them, even the eps bug that float32 tolerances can hide
    assert not all(r for r in results if r.dtype == "float64")


def test_default_bn_would_hide_a_running_stats_bug(monkeypatch):
    """Why BN is randomised: with default statistics the running-stats bug goes unseen."""
    monkeypatch.setattr(reparam, "fuse_conv_bn", _fuse_ignoring_running_stats)
    results = verify_model(build_model("rcrnet"), "rcrnet", batch_sizes=(1,), sizes=((64, 64),), dtypes=(torch.float32,))
    assert all(results)


def test_unfused_batchnorm_is_our_bug():
    from rcr_deploy.errors import InternalError

    model = nn.Sequential(nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3))
    with pytest.raises(InternalError, match="BatchNorm left unfused"):
        reparameterize(model)
