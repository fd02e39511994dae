"""Progressive resizing: the size of each epoch's samples, its cost in the time-limit plan, and a
short run that trains at the small size first and validates at the final one."""

from __future__ import annotations

import json
import time

import pytest

from rcr_deploy.train.schedule import RunSampler, epoch_cost, plan_epochs, size_at
from rcr_deploy.train.trainer import Trainer, TrainError
from support import train_config as config, write_dataset

pytestmark = pytest.mark.slow  # trains for real


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("portraits"), n=7)  # 6 train, 1 val


def test_the_epochs_fall_into_equal_phases_smallest_first():
    assert [size_at(e, 9, (128, 160, 224)) for e in range(9)] == [128] * 3 + [160] * 3 + [224] * 3
    assert [size_at(e, 4, (160, 224)) for e in range(4)] == [160, 160, 224, 224]
    # phases that do not divide evenly: the later ones are never longer than the earlier by more than one
    assert [size_at(e, 7, (128, 160, 224)) for e in range(7)] == [128, 128, 128, 160, 160, 224, 224]
    assert size_at(50, 10, (160, 224)) == 224  # past the plan (a resumed, longer run): the final size


@pytest.mark.parametrize("planned, first, last", [(9, 0, 9), (7, 2, 6), (10, 3, 10), (5, 5, 5)])
def test_epoch_cost_counts_pixels_against_the_final_size(planned, first, last):
    sizes = (112, 160, 224)
    by_epoch = sum((size_at(e, planned, sizes) / 224) ** 2 for e in range(first, last))
    assert epoch_cost(first, last, planned, sizes) == pytest.approx(by_epoch)
    assert epoch_cost(first, last, planned) == last - first  # one size: plain epochs


def test_the_plan_costs_small_epochs_less_and_fits_the_budget_whole():
    sizes = (112, 224)  # an epoch at 112 costs a quarter of one at 224
    # 4 full-size-equivalent epochs took 8 s; 100 s remain: 48.5 full-size epochs of budget.
    planned = plan_epochs(done=4, measured_epochs=4.0, measured_s=8.0, remaining_s=100.0, cap=2000, sizes=sizes)
    assert planned > 4 + 48  # more epochs than at one size, because half of them are small
    assert epoch_cost(4, planned, planned, sizes) <= 0.97 * 100 / 2
    assert epoch_cost(4, planned + 1, planned + 1, sizes) > 0.97 * 100 / 2
    assert plan_epochs(4, 4.0, 8.0, 100.0, cap=30, sizes=sizes) == 30
    assert plan_epochs(4, 4.0, 8.0, -1.0, cap=30, sizes=sizes) == 5  # over time already: one more epoch


def test_the_sampler_asks_the_size_of_each_epoch_as_it_goes():
    plan = {"planned": 4}
    batches = iter(RunSampler(4, 2, seed=0, epochs=4, size_of=lambda e: size_at(e, plan["planned"], (32, 64))))
    first = next(batches)
    assert {(e, s) for e, _, s in first} == {(0, 32)}
    plan["planned"] = 2  # a time-limit plan shortened the run: epoch 1 is now in the last phase
    rest = list(batches)
    assert {s for batch in rest for e, _, s in batch if e == 1} == {64}


def test_a_progressive_run_trains_small_first_and_validates_at_its_size(data, tmp_path, monkeypatch):
    seen = []
    step = Trainer._step

    def spy(self, batch):
        seen.append((self.epoch, tuple(batch["student"].shape[-2:])))
        return step(self, batch)

    monkeypatch.setattr(Trainer, "_step", spy)
    t = Trainer(config(data, tmp_path / "run", epochs=2, progressive=[32]), progress=False)
    result = t.fit()
    assert {s for e, s in seen if e == 0} == {(32, 32)} and {s for e, s in seen if e == 1} == {(64, 64)}
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["size"] for h in history] == [32, 64]
    assert all("val_fg_miou" in h for h in history) and result.best is not None
    assert json.loads((tmp_path / "run" / "config.json").read_text())["progressive"] == [32]


@pytest.mark.parametrize("sizes", [[96], [48], [32, 32], [48, 32]])
def test_progressive_sizes_must_rise_below_the_size_in_multiples_of_32(data, tmp_path, sizes):
    with pytest.raises(TrainError, match=r"--progressive .*: give rising multiples of 32 below --size 64"):
        Trainer(config(data, tmp_path / "run", progressive=sizes), progress=False)


def test_the_time_limit_plan_counts_the_small_epochs_at_their_cost(data, tmp_path):
    cfg = config(data, tmp_path / "run", epochs=400, schedule="cosine", time_limit_min=1.0, progressive=[32])
    t = Trainer(cfg, progress=False)
    t.epoch = 4
    now = time.perf_counter()
    # 4 epochs at 32 (in the first phase of the 400-epoch plan) took 10 s: one full-size (64)
    # epoch's worth, since an epoch at 32 costs a quarter. 48 s are left: 4.66 full-size epochs
    # with the margin, spent on the rest of the small phase and the large one of the new plan.
    assert t._plan(session_start=now - 12.0, steady=(now - 10.0, 0)) is None
    budget = 0.97 * 48 / 10
    assert epoch_cost(4, t.planned, t.planned, t.sizes) <= budget
    assert epoch_cost(4, t.planned + 1, t.planned + 1, t.sizes) > budget * 0.99
    assert t.planned > 4 + 4  # more than the 4.66 epochs a one-size plan would allow
