"""`train --distill`: a frozen model's answers as a per-dataset-weighted extra loss term (Ld), so
that fine-tuning on new data keeps what a model did on the old."""

from __future__ import annotations

import pytest
import torch

from rcr_deploy.checkpoint import save_checkpoint
from rcr_deploy.data.dataset import PortraitDataset
from rcr_deploy.data.folder import list_pairs
from rcr_deploy.errors import CheckpointError, DataError
from rcr_deploy.models import build_model
from rcr_deploy.train.losses import LossWeights, consistency_loss, distill_loss, total_loss
from rcr_deploy.train.trainer import Trainer, TrainError
from support import train_config, write_dataset


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    return write_dataset(root / "old", n=11), write_dataset(root / "new", n=4, h=64, w=32)


@pytest.fixture(scope="module")
def frozen(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("frozen") / "frozen.pt"
    save_checkpoint(path, build_model("rcrnet"), "rcrnet")
    return path


def test_distill_loss_is_the_consistency_kl_per_sample_times_its_weight():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 2, 4, 4, requires_grad=True), torch.randn(3, 2, 4, 4)
    per_sample = torch.stack([consistency_loss(student[i : i + 1], teacher[i : i + 1], 2.0) for i in range(3)])
    weight = torch.tensor([1.0, 0.0, 3.0])
    got = distill_loss(student, teacher, weight, 2.0)
    assert got.item() == pytest.approx((per_sample * weight).mean().item(), rel=1e-6)
    got.backward()
    assert student.grad[1].abs().max() == 0 and student.grad[0].abs().max() > 0  # weight 0: no pull at all
    assert distill_loss(teacher, teacher, torch.ones(3)).item() == pytest.approx(0.0, abs=1e-7)


def test_total_loss_adds_ld_on_the_teacher_pass_only():
    torch.manual_seed(0)
    s_mask, t_mask, s_edge, t_edge, fz = (torch.randn(2, 2, 4, 4) for _ in range(5))
    mask, edge = torch.randint(0, 2, (2, 4, 4)), torch.randint(0, 2, (2, 4, 4))
    plain = total_loss((s_mask, s_edge), (t_mask, t_edge), mask, edge, LossWeights())
    assert "ld" not in plain
    w = torch.tensor([1.0, 2.0])
    terms = total_loss((s_mask, s_edge), (t_mask, t_edge), mask, edge, LossWeights(), (fz, w))
    assert terms["ld"].item() == pytest.approx(distill_loss(t_mask, fz, w).item())
    assert terms["loss"].item() == pytest.approx((plain["loss"] + terms["ld"]).item())


def test_each_sample_names_the_dataset_its_pair_came_from(two):
    groups = [len(list_pairs(d, "train")) for d in two]
    pairs = [p for d in two for p in list_pairs(d, "train")]
    ds = PortraitDataset(pairs, 32, seed=2, groups=groups, weights=[1.0, 1.0])
    draws = ds.draws(0)
    for index in range(len(pairs)):
        assert int(ds[(0, index)]["group"]) == int(draws[index] >= groups[0])


def _one_step(two, tmp_path, **kw):
    cfg = train_config(two[0], tmp_path / "run", batch=4, **kw)
    cfg.data = [str(d) for d in two]
    trainer = Trainer(cfg, progress=False)
    batch = next(iter(trainer._loader()))
    return trainer, batch, trainer._step(batch)


@pytest.mark.slow
def test_a_step_pulls_towards_the_frozen_model_by_dataset_and_leaves_it_frozen(two, frozen, tmp_path):
    trainer, batch, terms = _one_step(two, tmp_path / "a", distill=str(frozen))
    assert terms["ld"] > 0
    assert all(not p.requires_grad for p in trainer.frozen.parameters())
    saved = {k: v.clone() for k, v in trainer.frozen.state_dict().items()}
    trainer._step(batch)
    assert all(torch.equal(v, trainer.frozen.state_dict()[k]) for k, v in saved.items())
    assert not any(p is q for p in trainer.frozen.parameters() for g in trainer.optimizer.param_groups for q in g["params"])
    # Weight 0 on every dataset: the term is there and exactly zero; the rest of the loss is as without it.
    _, _, off = _one_step(two, tmp_path / "b", distill=str(frozen), distill_weights=[0.0, 0.0])
    assert off["ld"] == 0.0


@pytest.mark.slow
def test_distill_records_itself_and_bad_options_are_one_line_errors(two, frozen, tmp_path, cli):
    trainer, _, _ = _one_step(two, tmp_path / "a", distill=str(frozen), distill_weights=[1.0, 0.0])
    assert trainer.meta()["distill"] == str(frozen) and trainer.distill_weights.tolist() == [1.0, 0.0]
    with pytest.raises(DataError, match="one per folder"):
        _one_step(two, tmp_path / "b", distill=str(frozen), distill_weights=[1.0])
    with pytest.raises(TrainError, match="without --distill"):
        _one_step(two, tmp_path / "c", distill_weights=[1.0, 0.0])
    rgb = tmp_path / "rgb.pt"
    save_checkpoint(rgb, build_model("rcrnet", in_channels=3), "rcrnet")
    with pytest.raises(CheckpointError, match="input channels"):
        _one_step(two, tmp_path / "d", distill=str(rgb))
    code, _, err = cli("train", "--data", two[0], "--distill", frozen, "--distill-weights", "-1", "--out", tmp_path / "e")
    assert code == 2 and "--distill-weights -1" in err and not (tmp_path / "e").exists()
