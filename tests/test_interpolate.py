"""Weight interpolation between a model and its fine-tune (`python -m rcr_deploy.train.interpolate`):
the arithmetic, the choice of alpha, what it writes, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rcr_deploy.checkpoint import load_checkpoint, save_checkpoint
from rcr_deploy.evaluate import evaluate
from rcr_deploy.models import build_model
from rcr_deploy.runtime import load_runner
from rcr_deploy.train.interpolate import choose, interpolate, main
from support import write_dataset


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    """Two train-form RCRNets with different weights and BatchNorm statistics, a run folder for
    the second, and two small datasets."""
    root = tmp_path_factory.mktemp("interp")
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = build_model("rcrnet")
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
        models.append(m)
    save_checkpoint(root / "base.pt", models[0], "rcrnet")
    (root / "run").mkdir()
    save_checkpoint(root / "run" / "best.pt", models[1], "rcrnet", meta={"epochs_done": 3})
    (root / "run" / "history.json").write_text(json.dumps([{"epoch": 3, "loss": 0.5}]))
    data = [write_dataset(root / "selfies", n=10), write_dataset(root / "bodies", n=10, h=64, w=32)]
    return root, data


def test_interpolate_is_the_line_between_the_weights_and_keeps_tuneds_counters():
    a = {"w": torch.zeros(3), "n": torch.tensor(5)}
    b = {"w": torch.tensor([2.0, 4.0, -2.0]), "n": torch.tensor(9)}
    assert torch.equal(interpolate(a, b, 0.0)["w"], a["w"])
    assert torch.equal(interpolate(a, b, 1.0)["w"], b["w"])
    half = interpolate(a, b, 0.25)
    assert torch.allclose(half["w"], torch.tensor([0.5, 1.0, -0.5]))
    assert half["n"].item() == 9 and half["n"].dtype == torch.int64


def test_choose_takes_the_largest_alpha_that_keeps_the_first_dataset():
    rows = [{"alpha": a, "fg_miou": {"eg": eg, "ccp": c}} for a, eg, c in [(0.0, 95.4, 47), (0.5, 95.2, 77), (0.6, 95.1, 79), (1.0, 94.8, 84)]]
    assert choose(rows, "eg", 0.2)["alpha"] == 0.5
    assert choose(rows, "eg", 0.3)["alpha"] == 0.6
    assert choose(rows, "eg", 1.0)["alpha"] == 1.0
    assert choose(rows, "eg", 0.0)["alpha"] == 0.0  # BASE itself keeps everything


def test_writes_the_chosen_weights_scored_as_recorded_and_the_runs_history(parents, tmp_path, capsys):
    root, data = parents
    out = tmp_path / "wise"
    args = [str(root / "base.pt"), str(root / "run"), "--data", str(data[0]), "--data", str(data[1]), "--alphas", "0,0.5,1"]
    assert main([*args, "--max-loss", "100", "--out", str(out)]) == 0
    record = json.loads((out / "interpolation.json").read_text())
    assert [r["alpha"] for r in record["sweep"]] == [0.0, 0.5, 1.0]
    assert record["chosen_alpha"] == 1.0  # a 100-point allowance keeps every alpha
    assert (out / "interpolation.png").stat().st_size > 0
    assert json.loads((out / "history.json").read_text()) == [{"epoch": 3, "loss": 0.5}]
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["alpha"] == 1.0

    out_half = tmp_path / "half"
    assert main([*args[:-1], "0,0.5", "--max-loss", "100", "--out", str(out_half)]) == 0
    got = load_checkpoint(out_half / "best.pt")
    base, tuned = load_checkpoint(root / "base.pt").model.state_dict(), load_checkpoint(root / "run" / "best.pt").model.state_dict()
    for k, v in got.model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, (base[k] + tuned[k]) / 2, atol=1e-6), k
    assert got.meta["epochs_done"] == 3 and got.meta["interpolation"]["chosen_alpha"] == 0.5
    # the score recorded for the chosen weights is what `eval` gets from the written file
    rescored = 100 * evaluate(load_runner(out_half / "best.pt", backend="torch"), data[1], split="val", progress=False).fg_miou
    assert rescored == pytest.approx(got.meta["interpolation"]["fg_miou"]["bodies"], abs=0.01)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--alphas", "0,abc"], "not a comma-separated list"),
        (["--alphas", "0,1.5"], "must lie in [0, 1]"),
        (["--alphas", "0.5,1"], "include 0"),
        (["--max-loss", "-1"], "0 or more"),
    ],
)
def test_bad_options_are_one_line_exit_2(parents, tmp_path, capsys, option, message):
    root, data = parents
    code = main([str(root / "base.pt"), str(root / "run"), "--data", str(data[0]), *option, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and option[0] in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_a_tuned_model_of_another_shape_is_refused(parents, tmp_path, capsys):
    root, data = parents
    other = tmp_path / "other.pt"
    save_checkpoint(other, build_model("rcrnet", in_channels=3), "rcrnet")
    code = main([str(root / "base.pt"), str(other), "--data", str(data[0]), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and str(other) in err and "fine-tune of BASE" in err
    assert not (tmp_path / "o").exists()


def test_ship_takes_the_interpolated_run_and_logs_what_it_shipped(parents, tmp_path, capsys):
    from rcr_deploy.train import ship

    root, data = parents
    out = tmp_path / "wise"
    assert main([str(root / "base.pt"), str(root / "run"), "--data", str(data[0]), "--alphas", "0,0.5", "--max-loss", "100", "--out", str(out)]) == 0
    log, shipped = tmp_path / "log.json", tmp_path / "shipped.pt"
    ship.main([str(out), "--data", str(data[0]), "--name", "wise", "--hardware", "test", "--out", str(shipped),
               "--log", str(log), "--plot", str(tmp_path / "log.png")])  # fmt: skip
    (entry,) = json.loads(log.read_text())
    assert entry["interpolation"]["chosen_alpha"] == 0.5 and entry["epochs"] == 3
    assert 100 * entry["val_224"]["fg_miou"] == pytest.approx(entry["interpolation"]["fg_miou"]["selfies"], abs=0.01)
    assert (tmp_path / "log.png").stat().st_size > 0
    assert load_checkpoint(shipped).meta["interpolation"]["base_sha256"] == load_checkpoint(root / "base.pt").sha256


def test_the_tradeoff_plot_draws_the_recorded_runs_and_sweeps(tmp_path):
    """benchmarks/tradeoff.py from the records it reads (the runs', the sweeps', the shipped
    model's framings); a missing framings record is a FileNotFoundError, not a silent blank."""
    import shutil

    from rcr_deploy.benchmarks import tradeoff
    from rcr_deploy.checkpoint import DEFAULT_CHECKPOINT
    from rcr_deploy.fileio import sha256_file

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    names = [p.name for p in results.glob("mix-*-cpu-2core.json")] + [f"framings-{sha256_file(DEFAULT_CHECKPOINT)[:12]}.json"]
    for name in names:
        shutil.copy(results / name, tmp_path / name)
    tradeoff.plot(tmp_path, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 10_000
    (tmp_path / names[-1]).unlink()
    with pytest.raises(FileNotFoundError):
        tradeoff.plot(tmp_path, tmp_path / "u.png")
