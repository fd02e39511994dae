import pytest
import torch

from rcr_deploy.checkpoint import load_checkpoint, save_checkpoint
from rcr_deploy.errors import CheckpointError
from rcr_deploy import reparam
from rcr_deploy.models import VARIANTS, build_model
from rcr_deploy.reparam import randomize_bn, reparameterize


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, build_model("rcrnet-ddagger"), "rcrnet-ddagger", meta={"epochs": 0})
    return path


def test_round_trip_is_strict_and_safe(ckpt):
    loaded = load_checkpoint(ckpt)
    assert loaded.arch == "rcrnet-ddagger" and loaded.form == "train" and loaded.meta == {"epochs": 0}
    assert len(loaded.sha256) == 64
    reference = build_model("rcrnet-ddagger")
    reference.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    x = torch.randn(1, 4, 64, 64)
    assert torch.equal(loaded.model(x), reference.eval()(x))


def test_bare_state_dict_needs_arch(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(build_model("rcrnet", in_channels=3).state_dict(), path)
    with pytest.raises(CheckpointError, match="--arch"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, arch="rcrnet")
    assert loaded.model.in_channels == 3


def test_deploy_form_checkpoint(tmp_path):
    path = tmp_path / "deploy.pt"
    save_checkpoint(path, reparameterize(build_model("rcrnet")), "rcrnet")
    assert load_checkpoint(path).form == "deploy"
    with pytest.raises(CheckpointError, match="deploy-form checkpoint"):
        load_checkpoint(path, require_form="train")


@pytest.mark.parametrize("arch", list(VARIANTS))
def test_deploy_form_is_built_directly_and_loads_without_fusing(tmp_path, monkeypatch, arch):
    train = build_model(arch)
    randomize_bn(train, torch.Generator().manual_seed(0))
    fused = reparameterize(train)
    direct = build_model(arch, deploy=True)
    assert {k: v.shape for k, v in direct.state_dict().items()} == {k: v.shape for k, v in fused.state_dict().items()}
    path = tmp_path / "deploy.pt"
    save_checkpoint(path, fused, arch)

    def no_fusion(*args):
        raise AssertionError("a deploy-form checkpoint was fused while loading")

    monkeypatch.setattr(reparam, "fuse_conv_bn", no_fusion)
    loaded = load_checkpoint(path)
    x = torch.randn(1, 4, 64, 64)
    assert loaded.form == "deploy" and torch.equal(loaded.model(x), fused(x))


def _truncated(tmp_path, ckpt):
    data = ckpt.read_bytes()
    p = tmp_path / "trunc.pt"
    p.write_bytes(data[: len(data) // 2])
    return p


def _text(tmp_path, ckpt):
    p = tmp_path / "notes.pt"
    p.write_text("hello")
    return p


def _pickled_code(tmp_path, ckpt):
    p = tmp_path / "evil.pt"
    torch.save({"format": "rcr-deploy-checkpoint", "obj": torch.nn.ReLU()}, p)
    return p


def _wrong_arch(tmp_path, ckpt):
    p = tmp_path / "other.pt"
    raw = torch.load(ckpt, weights_only=True)
    raw["arch"] = "rcrnet"
    torch.save(raw, p)
    return p


def _unknown_arch(tmp_path, ckpt):
    p = tmp_path / "unknown.pt"
    raw = torch.load(ckpt, weights_only=True)
    raw["arch"] = "resnet50"
    torch.save(raw, p)
    return p


def _shape_mismatch(tmp_path, ckpt):
    p = tmp_path / "shape.pt"
    raw = torch.load(ckpt, weights_only=True)
    raw["state_dict"]["head.weight"] = torch.zeros(2, 8, 5, 5)
    torch.save(raw, p)
    return p


def _unexpected_key(tmp_path, ckpt):
    p = tmp_path / "extra.pt"
    raw = torch.load(ckpt, weights_only=True)
    raw["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(raw, p)
    return p


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda t, c: t / "missing.pt", "no such checkpoint file"),
        (_truncated, "truncated or damaged"),
        (_text, "not a torch checkpoint"),
        (_pickled_code, "weights_only=True"),
        (_wrong_arch, "missing keys"),
        (_unknown_arch, "unknown architecture 'resnet50'"),
        (_shape_mismatch, "shape mismatch for head.weight"),
        (_unexpected_key, "unexpected keys"),
    ],
)
def test_bad_checkpoints_get_one_line_errors(tmp_path, ckpt, make, message):
    path = make(tmp_path, ckpt)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
