import json

import pytest

from rcr_deploy.checkpoint import save_checkpoint
from rcr_deploy.models import build_model
from support import cli_process


def test_help_lists_commands():
    out = cli_process("--help")
    assert out.returncode == 0
    assert "verify-reparam" in out.stdout and "models" in out.stdout


@pytest.mark.slow  # MACs of every variant, in a fresh interpreter
def test_models_json_reports_every_variant():
    out = cli_process("models", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["variant"]: r for r in json.loads(out.stdout)["variants"]}
    assert set(rows) == {"portraitnet", "rcrnet-dagger", "rcrnet-ddagger", "rcrnet-diamond", "rcrnet"}
    assert all(r["params_deploy"] < r["params_train"] for r in rows.values())


@pytest.mark.slow  # every variant in float32 and float64 (minutes on 2 cores)
def test_verify_reparam_default_passes_with_json():
    out = cli_process("verify-reparam", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["passed"]
    names = {c["name"].split(" ")[0].split(".")[0] for c in report["checks"]}
    assert {"portraitnet", "rcrnet"} <= names
    assert {c["dtype"] for c in report["checks"]} == {"float32", "float64"}


@pytest.mark.slow
def test_verify_reparam_exit_1_when_tolerance_is_impossible(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, build_model("rcrnet"), "rcrnet")
    out = cli_process("verify-reparam", str(path), "--rtol64", "0", "--atol64", "0", "--rtol32", "0", "--atol32", "0")
    assert out.returncode == 1
    assert "beyond tolerance" in out.stderr


@pytest.mark.parametrize("args", [("verify-reparam", "/no/such.pt"), ("verify-reparam", "--rtol32", "x")])
def test_bad_input_exit_2_one_line(args):
    out = cli_process(*args)
    assert out.returncode == 2
    if args[1].startswith("/"):
        assert out.stderr.strip().count("\n") == 0 and "/no/such.pt" in out.stderr
