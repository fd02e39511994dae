import pytest
import torch

from rcr_deploy.benchmarks.cost import count_macs_torch, count_params
from rcr_deploy.models import VARIANTS, build_model
from rcr_deploy.models.portraitnet import PortraitNet
from rcr_deploy.reparam import reparameterize


def test_portraitnet_matches_published_parameter_count():
    assert count_params(PortraitNet(in_channels=3)) == 2_080_904


@pytest.mark.parametrize("name", [n for n in VARIANTS if n != "portraitnet"])
def test_rcr_variants_within_table3_tolerances(name):
    v = VARIANTS[name]
    model = build_model(name)
    params = count_params(model)
    macs = count_macs_torch(reparameterize(model))
    assert abs(params / (v.paper_params_m * 1e6) - 1) <= 0.10
    assert abs(macs / (v.paper_flops_m * 1e6) - 1) <= 0.15


def test_paper_flops_are_macs_not_twice_macs():
    macs = count_macs_torch(PortraitNet(in_channels=3))
    assert abs(macs / 325e6 - 1) < 0.15
    assert abs(2 * macs / 325e6 - 1) > 0.5


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("in_channels", [3, 4])
def test_shapes_train_and_deploy(name, in_channels):
    model = build_model(name, in_channels=in_channels).eval()
    x = torch.randn(2, in_channels, 128, 96)
    mask, edge = model(x, with_edge=True)
    assert mask.shape == edge.shape == (2, 2, 128, 96)
    deploy = reparameterize(model)
    assert deploy(x).shape == (2, 2, 128, 96)
    with pytest.raises(RuntimeError):
        deploy(x, with_edge=True)


def test_unknown_arch_is_a_clear_error():
    from rcr_deploy.errors import RcrError

    with pytest.raises(RcrError, match="unknown architecture 'nope'"):
        build_model("nope")
