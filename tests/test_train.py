"""The trainer for real on tiny synthetic data: a short run, bit-exact resume, 2-process DDP on
gloo through torchrun, and the bad-input paths of `rcr-deploy train`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from rcr_deploy.checkpoint import load_checkpoint
from rcr_deploy.errors import CheckpointError, RcrError
from rcr_deploy.fileio import sha256_file
from rcr_deploy.train.trainer import TrainConfig, Trainer, TrainError, lr_factor
from support import cli, cli_process, write_dataset

pytestmark = pytest.mark.slow  # trains for real, DDP included

ARCH = "rcrnet"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 7 synthetic portraits: id 0 is validation, 6 train (3 steps of 2 per epoch).
    return write_dataset(tmp_path_factory.mktemp("portraits"), n=7)


def config(data, out, **kw) -> TrainConfig:
    # Pinned to fp32 on the CPU: bf16 autocast is emulated, and very slow, on CPUs without avx512_bf16.
    base = dict(data=str(data), out=str(out), arch=ARCH, size=64, batch=2, epochs=2, workers=0, seed=3, lr=2e-3, device="cpu", amp="off")
    return TrainConfig(**{**base, **kw})


def test_short_run_learns_and_writes_everything(data, tmp_path):
    cfg = config(data, tmp_path / "run", epochs=3)
    result = Trainer(cfg, progress=False).fit()
    assert result.stopped == "epochs" and result.best is not None
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "last.pt", "best.pt", "history.json", "history.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(0 <= h["val_fg_miou"] <= 1 and 0 <= h["val_class_miou"] <= 1 and h["val_images"] == 1 for h in history)
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best.meta["best"]["val_fg_miou"] == max(h["val_fg_miou"] for h in history)
    assert best.meta["split_rule"].startswith("sort the ids")
    assert TrainConfig.load(tmp_path / "run" / "config.json") == cfg  # the config reloads as it was


def test_resume_after_interruption_is_bit_exact(data, tmp_path):
    Trainer(config(data, tmp_path / "whole"), progress=False).fit()
    # Interrupted mid-way through epoch 2 (step 4 of 6), then resumed to the end.
    stopped = Trainer(config(data, tmp_path / "cut", max_steps=4), progress=False).fit()
    assert stopped.stopped == "max_steps"
    mid = load_checkpoint(tmp_path / "cut" / "last.pt").raw["trainer"]
    assert (mid["epoch"], mid["step_in_epoch"]) == (1, 1)
    Trainer(config(data, tmp_path / "cut"), resume=tmp_path / "cut" / "last.pt", progress=False).fit()
    whole, resumed = (torch.load(tmp_path / d / "last.pt", weights_only=True) for d in ("whole", "cut"))
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    for a, b in zip(whole["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole["trainer"]["global_step"] == resumed["trainer"]["global_step"] == 6
    assert [h["loss"] for h in whole["trainer"]["history"]] == [h["loss"] for h in resumed["trainer"]["history"]]


def test_a_validation_stopped_by_ctrl_c_is_done_on_resume(data, tmp_path, monkeypatch):
    """Pausing a run (SIGINT) while it validates saves last.pt with the epoch done; the resumed
    run must score that epoch, or its history has a hole and best.pt never sees it."""
    validate = Trainer.validate

    def stopped(self):
        raise KeyboardInterrupt("SIGINT")

    monkeypatch.setattr(Trainer, "validate", stopped)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(data, tmp_path / "run"), progress=False).fit()
    assert "val_fg_miou" not in load_checkpoint(tmp_path / "run" / "last.pt").raw["trainer"]["history"][0]
    monkeypatch.setattr(Trainer, "validate", validate)
    Trainer(config(data, tmp_path / "run"), resume=tmp_path / "run" / "last.pt", progress=False).fit()
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and all("val_fg_miou" in h for h in history)
    assert load_checkpoint(tmp_path / "run" / "best.pt").meta["best"]["val_fg_miou"] == max(h["val_fg_miou"] for h in history)


def test_ddp_two_processes_on_gloo(data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "rcr_deploy"]
    args = ["train", "--data", str(data), "--out", str(out), "--arch", ARCH, "--size", "64", "--batch", "2",
            "--epochs", "1", "--workers", "0", "--threads", "1", "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd + args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = load_checkpoint(out / "last.pt").meta
    assert meta["world_size"] == 2
    # 6 training samples shared by 2 ranks: 3 each, in 2 steps of 2 (one process would take 3).
    assert meta["global_step"] == 2
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and history[0]["val_images"] == 1  # rank 0 validates, once


def test_ddp_ranks_stop_together_at_a_time_limit(data, tmp_path):
    # Rank 0 validates while rank 1 waits, so their clocks differ: each rank deciding the plan and
    # the time limit from its own clock could stop them after different epochs, and hang.
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "rcr_deploy"]
    args = ["train", "--data", str(data), "--out", str(out), "--arch", ARCH, "--size", "64", "--batch", "2",
            "--epochs", "400", "--schedule", "cosine", "--time-limit", "0.1", "--workers", "0", "--threads", "1",
            "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd + args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    assert 1 <= len(history) < 400 and "val_fg_miou" in history[-1]
    assert load_checkpoint(out / "last.pt").meta["epochs_done"] == len(history)


def test_resume_missing_or_incompatible(data, tmp_path):
    proc = cli_process("train", "--data", str(data), "--resume", str(tmp_path / "nope.pt"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "nope.pt: no such checkpoint" in proc.stderr
    assert proc.stderr.count("\n") == 1
    Trainer(config(data, tmp_path / "run", max_steps=1), progress=False).fit()
    with pytest.raises(CheckpointError, match="trained as 'rcrnet', not 'portraitnet'"):
        Trainer(config(data, tmp_path / "run", arch="portraitnet"), resume=tmp_path / "run" / "last.pt")
    # A model without training state (as shipped) cannot be resumed.
    shipped = tmp_path / "shipped.pt"
    torch.save({k: v for k, v in torch.load(tmp_path / "run" / "last.pt", weights_only=True).items() if k != "optimizer"}, shipped)
    with pytest.raises(CheckpointError, match="no training state"):
        Trainer(config(data, tmp_path / "run"), resume=shipped)


def test_bad_dataset_is_exit_2_before_training(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    proc = cli_process("train", "--data", str(tmp_path), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and "no image/mask pairs" in proc.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def test_logic_only_gpu_out_of_memory_hints_lower_batch_and_keeps_state(data, tmp_path, monkeypatch):
    # No GPU here: a forward that raises CUDA's OOM error stands in for one, to test our handling.
    Trainer(config(data, tmp_path / "run", max_steps=1), progress=False).fit()
    before = sha256_file(tmp_path / "run" / "last.pt")
    trainer = Trainer(config(data, tmp_path / "run", batch=4), resume=tmp_path / "run" / "last.pt", progress=False)

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "ddp", oom)
    with pytest.raises(TrainError, match=r"out of GPU memory at batch 4 .*lower --batch \(e.g. --batch 2\)"):
        trainer.fit()
    assert sha256_file(tmp_path / "run" / "last.pt") == before


@pytest.mark.parametrize(
    "key, value, named",
    [("epochs", 0, "epochs 0"), ("batch", -4, "batch -4"), ("size", 100, "size 100"), ("workers", 10**6, "workers"),
     ("weight_decay", float("nan"), "weight_decay nan"), ("val_every", 0, "val_every 0"),
     ("data_weights", [1.0, 0.0], "data_weights 0"), ("temperature", 0, "temperature 0")],
)  # fmt: skip
def test_a_config_files_numbers_are_checked_like_the_options(tmp_path, key, value, named):
    # A config.json must not smuggle in what the command line refuses (json writes NaN as NaN).
    path = tmp_path / "c.json"
    path.write_text(json.dumps({key: value}))
    with pytest.raises(TrainError, match=rf"c\.json: {named}.*must be a number from"):
        TrainConfig.load(path)
    code, _, err = cli("train", "--config", str(path), "--data", str(tmp_path))
    assert code == 2 and "Traceback" not in err and "c.json" in err
    with pytest.raises(TrainError, match="config: "):  # built in Python, then handed to the Trainer
        Trainer(TrainConfig(**{key: value}, data=[str(tmp_path)]))


def test_config_rejects_unknown_keys_and_schedule_is_the_papers(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epochs": 3, "lrr": 0.1}))
    with pytest.raises(RcrError, match="unknown config keys lrr"):
        TrainConfig.load(path)
    cfg = TrainConfig()
    assert (cfg.weight_decay, cfg.alpha, cfg.beta) == (5e-4, 1.0, 0.3)
    assert lr_factor("paper", 20, 2000) == pytest.approx(0.95) and lr_factor("paper", 10, 2000) == pytest.approx(0.95**0.5)


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="a glibc setting")
def test_glibc_accepts_the_heap_setting_the_trainer_makes():
    # If glibc ever refuses these mallopt values, CPU steps silently go back to twice as slow.
    from rcr_deploy.train.trainer import keep_freed_memory

    assert keep_freed_memory() is True
