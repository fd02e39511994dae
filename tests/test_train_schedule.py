"""The run-length pieces of training: the run-wide sampler, the cosine schedule planned from a
time limit, --init, the divergence stop, SIGINT/SIGTERM saving, and the `anywhere` augmentations."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from rcr_deploy.checkpoint import load_checkpoint
from rcr_deploy.data.augment import edge_target, make_sample, paste_person, reframe
from rcr_deploy.data.dataset import PortraitDataset
from rcr_deploy.data.folder import list_pairs, load_pair
from rcr_deploy.errors import CheckpointError
from rcr_deploy.fileio import sha256_file
from rcr_deploy.reparam import reparameterize
from rcr_deploy.train import trainer as trainer_mod
from rcr_deploy.train.schedule import RunSampler, epoch_order, lr_factor, plan_epochs
from rcr_deploy.train.trainer import Trainer, TrainError
from support import train_config as config, write_dataset

pytestmark = pytest.mark.slow  # trains for real


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("portraits"), n=7)  # 6 train, 1 val


def test_run_sampler_is_the_per_epoch_order_and_resumes_mid_epoch():
    whole = list(RunSampler(7, 3, seed=5, epochs=3))
    assert len(whole) == len(RunSampler(7, 3, seed=5, epochs=3)) == 9  # 3 batches (3, 3, 1) per epoch
    for epoch in range(3):
        flat = [j for batch in whole[3 * epoch : 3 * epoch + 3] for e, j in batch if e == epoch]
        assert flat == epoch_order(7, 5, epoch)
    assert list(RunSampler(7, 3, seed=5, epochs=3, start=(1, 2))) == whole[5:]


def test_cosine_warms_up_then_ends_at_zero_and_the_paper_schedule_ignores_the_plan():
    factors = [lr_factor("cosine", e, planned=20, warmup=4) for e in range(21)]
    assert factors[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8]) and factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:])) and factors[20] == pytest.approx(0.0)
    assert lr_factor("paper", 40, planned=3) == pytest.approx(0.95**2)
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor("linear", 1, 10)


def test_plan_fits_the_measured_pace_into_the_time_left():
    # 10 epochs took 20 s; 100 s remain: 50 more at that pace, 48 with the 3 % margin.
    assert plan_epochs(done=12, measured_epochs=10, measured_s=20.0, remaining_s=100.0, cap=2000) == 12 + 48
    assert plan_epochs(12, 10, 20.0, 100.0, cap=30) == 30
    assert plan_epochs(12, 10, 20.0, -5.0, cap=30) == 13  # over time already: one more epoch


def test_the_plan_fits_the_cosine_to_the_time_limit(data, tmp_path):
    t = Trainer(config(data, tmp_path / "run", epochs=400, schedule="cosine", time_limit_min=1.0), progress=False)
    t.epoch = 5
    now = time.perf_counter()
    # 5 steady epochs in 10 s, 12 s into a 60 s session: 48 s left at 2 s an epoch, 97 % of it.
    assert t._plan(session_start=now - 12.0, steady=(now - 10.0, 0)) is None
    assert t.planned == 5 + 23
    assert t.scheduler.lr_lambdas[0](28) == pytest.approx(0.0)  # the curve now ends at the planned epoch
    early = (time.perf_counter(), 5)  # too soon after the first epoch to measure a pace: wait
    assert t._plan(session_start=now, steady=early) == early


def test_time_limited_run_stops_and_validates_its_last_epoch(data, tmp_path):
    cfg = config(data, tmp_path / "run", epochs=400, schedule="cosine", time_limit_min=0.05, val_every=1000)
    result = Trainer(cfg, progress=False).fit()
    # It stops at the time limit, or earlier at the epoch its plan fitted into it; either way the
    # last epoch is validated.
    assert result.stopped in ("time_limit", "epochs") and len(result.history) < 400
    assert "val_fg_miou" in result.history[-1]


def test_init_starts_from_weights_with_a_fresh_optimiser(data, tmp_path):
    Trainer(config(data, tmp_path / "a", epochs=1), progress=False).fit()
    src = load_checkpoint(tmp_path / "a" / "last.pt")
    t = Trainer(config(data, tmp_path / "b", init=str(tmp_path / "a" / "last.pt")), progress=False)
    for k, v in src.model.state_dict().items():
        assert torch.equal(v, t.model.state_dict()[k]), k
    assert t.epoch == 0 and not t.optimizer.state
    assert load_checkpoint(tmp_path / "a" / "last.pt").meta["init"] is None


def test_init_refuses_another_architecture_or_a_deploy_form(data, tmp_path):
    Trainer(config(data, tmp_path / "a", max_steps=1), progress=False).fit()
    with pytest.raises(CheckpointError, match="holds 'rcrnet' weights, not 'portraitnet'"):
        Trainer(config(data, tmp_path / "b", arch="portraitnet", init=str(tmp_path / "a" / "last.pt")))
    deploy = tmp_path / "deploy.pt"
    from rcr_deploy.checkpoint import save_checkpoint

    save_checkpoint(deploy, reparameterize(load_checkpoint(tmp_path / "a" / "last.pt").model), "rcrnet")
    proc = subprocess.run(
        [sys.executable, "-m", "rcr_deploy", "train", "--data", str(data), "--out", str(tmp_path / "c"), "--init", str(deploy)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "deploy-form checkpoint" in proc.stderr


def test_divergence_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    Trainer(config(data, tmp_path / "run", epochs=1), progress=False).fit()
    good = sha256_file(tmp_path / "run" / "last.pt")
    real = trainer_mod.total_loss
    calls = iter(range(100))

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        return {**terms, "loss": terms["loss"] * math.nan} if next(calls) == 1 else terms

    monkeypatch.setattr(trainer_mod, "total_loss", poisoned)
    t = Trainer(config(data, tmp_path / "run", epochs=3), resume=tmp_path / "run" / "last.pt", progress=False)
    with pytest.raises(TrainError, match=r"loss is nan at epoch 2 step 2: training diverged"):
        t.fit()
    assert sha256_file(tmp_path / "run" / "last.pt") == good


def test_saving_refuses_non_finite_weights(data, tmp_path):
    t = Trainer(config(data, tmp_path / "run"), progress=False)
    with torch.no_grad():
        next(t.model.parameters()).fill_(math.inf)
    with pytest.raises(TrainError, match="non-finite weights in .* not saved as last.pt"):
        t._save("last.pt")
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_last_pt_even_when_started_in_the_background(data, tmp_path, sig):
    out = tmp_path / "run"
    # start_new_session + SIG_IGN for SIGINT: how a non-interactive shell starts `cmd &`.
    proc = subprocess.Popen(
        [sys.executable, "-m", "rcr_deploy", "train", "--data", str(data), "--out", str(out), "--size", "64",
         "--batch", "1", "--epochs", "1000", "--workers", "0", "--threads", "1", "--val-every", "1000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and time.monotonic() < deadline:  # one epoch done: training is under way
        time.sleep(0.2)
    time.sleep(2.0)
    before = (out / "last.pt").stat().st_mtime_ns
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in err
    # Saved again at the step it stopped (byte-equal to the epoch's save when the signal lands
    # between that save and the next step, so the check is the step the message names).
    assert (out / "last.pt").stat().st_mtime_ns > before
    stopped = re.search(rf"stopped \({sig.name}\) at epoch (\d+) step (\d+), global step (\d+): saved ", err)
    assert stopped, err
    state = load_checkpoint(out / "last.pt").raw["trainer"]
    assert [state["epoch"] + 1, state["step_in_epoch"], state["global_step"]] == [int(g) for g in stopped.groups()]
    assert state["global_step"] == state["epoch"] * 6 + state["step_in_epoch"]


def test_a_stop_whose_interrupt_a_finaliser_dropped_still_stops_the_run(data, tmp_path, monkeypatch):
    # Python prints and drops an exception raised inside __del__; a SIGTERM whose KeyboardInterrupt
    # landed there once left a CI run training on for minutes. The handler is called as Python
    # calls it when the signal arrives there: a real signal sent to the test process killed a CI
    # run whose earlier tests had loaded libraries with handlers of their own.
    class Finaliser:
        def __del__(self):
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)

    t = Trainer(config(data, tmp_path / "run", epochs=5), progress=False)
    step = t._step

    def step_then_finalise(batch):
        terms = step(batch)
        if t.global_step == 1:
            Finaliser()
        return terms

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    dropped = []
    monkeypatch.setattr(t, "_step", step_then_finalise)
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)
    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            t.fit()
    finally:
        signal.signal(signal.SIGTERM, before)
    assert [type(d.exc_value) for d in dropped] == [KeyboardInterrupt]  # the case: the handler's own stop was dropped
    assert load_checkpoint(tmp_path / "run" / "last.pt").raw["trainer"]["global_step"] == 2  # stopped before the third step


def test_paste_person_targets_the_union_and_moves_image_and_mask_together():
    rng = np.random.default_rng(0)
    base = np.full((64, 64, 3), 10, np.uint8)
    base_mask = np.zeros((64, 64), np.uint8)
    base_mask[40:, :20] = 1
    other = np.full((80, 60, 3), 200, np.uint8)
    other_mask = np.zeros((80, 60), np.uint8)
    other_mask[20:60, 15:45] = 1
    for _ in range(20):
        img, mask = paste_person(base, base_mask, other, other_mask, rng)
        pasted = (img == 200).all(-1)
        assert np.array_equal(mask, np.maximum(base_mask, pasted.astype(np.uint8)))  # union, nothing else
        assert np.array_equal(img[~pasted], base[~pasted])  # outside the pasted person the frame is untouched


def test_anywhere_samples_are_deterministic_and_keep_targets_consistent(data):
    pairs = list_pairs(data, "train")
    ds = PortraitDataset(pairs, 64, seed=1, anywhere=True)
    a, b = ds[(3, 2)], ds[(3, 2)]
    assert all(torch.equal(a[k], b[k]) for k in a)
    s = make_sample(*load_pair(pairs[0]), np.random.default_rng(4), 64, 4, others=[load_pair(p) for p in pairs[1:4]])
    assert set(np.unique(s.mask)) <= {0, 1} and s.student.shape == s.teacher.shape == (4, 64, 64)
    assert np.array_equal(s.edge, edge_target(s.mask.astype(np.uint8)))  # the edge follows the pasted union


def test_reframe_shrinks_and_shifts_and_keeps_the_person_count():
    rgb = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    mask = np.zeros((40, 30), np.uint8)
    mask[10:30, 5:25] = 1
    img, out = reframe(rgb, mask, key=7)
    assert img.shape == rgb.shape and out.shape == mask.shape
    assert out.sum() == pytest.approx(mask.sum() / 4, rel=0.1)
    assert np.array_equal(reframe(rgb, mask, key=7)[1], out) and not np.array_equal(reframe(rgb, mask, key=8)[1], out)


def test_history_records_val_only_on_validated_epochs(data, tmp_path):
    Trainer(config(data, tmp_path / "run", epochs=3, val_every=2), progress=False).fit()
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert ["val_fg_miou" in h for h in history] == [False, True, True]  # epoch 2, then the last


def test_anywhere_runs_validate_the_reframed_split_too(data, tmp_path, monkeypatch):
    # What the code guarantees, not a training outcome (after one epoch on one image both scores
    # can be 0): the validation split is scored twice, plain then reframed, and each report lands
    # under its own keys.
    import rcr_deploy.evaluate as evaluate_mod

    real, calls = evaluate_mod.evaluate, []

    def spy(*args, **kwargs):
        report = real(*args, **kwargs)
        calls.append((kwargs["framing"], report.fg_miou, report.class_miou))
        return report

    monkeypatch.setattr(evaluate_mod, "evaluate", spy)
    result = Trainer(config(data, tmp_path / "run", epochs=1, anywhere=True), progress=False).fit()
    record = result.history[-1]
    assert [framing for framing, *_ in calls] == ["as-is", "reframed"]
    assert (record["val_fg_miou"], record["val_class_miou"]) == calls[0][1:]
    assert (record["val_fg_miou_reframed"], record["val_class_miou_reframed"]) == calls[1][1:]
    assert all(0 <= v <= 1 for _, *scores in calls for v in scores)


def test_a_stop_during_the_optimiser_update_waits_for_it_to_end():
    # In a process of its own: a signal sent to the test runner would reach its other threads too.
    script = """
import os, signal, time
from rcr_deploy.train.trainer import _signals_held
def interrupt(signum, frame):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, interrupt)
finished = []
try:
    with _signals_held():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the signal is delivered here, and held
        finished.append(True)
except KeyboardInterrupt:
    print("stopped after the block" if finished and signal.getsignal(signal.SIGTERM) is interrupt else "wrong")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "stopped after the block", proc.stderr


def test_out_that_is_a_file_is_one_line(data, tmp_path):
    (tmp_path / "run").write_text("not a folder")
    proc = subprocess.run(
        [sys.executable, "-m", "rcr_deploy", "train", "--data", str(data), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--out" in proc.stderr and "is an existing file" in proc.stderr
    assert (tmp_path / "run").read_text() == "not a folder"
