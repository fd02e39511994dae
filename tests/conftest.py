from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rcr_deploy.checkpoint import save_checkpoint
from rcr_deploy.models import build_model
from support import CliResult
from support import cli as run_cli

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
EG1800 = SHARED / "data" / "eg1800"


@pytest.fixture(autouse=True)
def _few_threads():
    # CI has 2 cores; tests that each spawn many threads only fight over them.
    torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    # Models converted for OpenVINO are cached (runtime/openvino_runner.py): not in the user's
    # ~/.cache, and shared by every test of the run (CLI subprocesses inherit the variable).
    mp = pytest.MonkeyPatch()
    mp.setenv("RCR_DEPLOY_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture
def eg1800() -> Path:
    if not (EG1800 / "images").is_dir():
        pytest.skip("../shared/data/eg1800 is not beside this checkout")
    return EG1800


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A train-form RCRNet checkpoint with fresh (untrained) weights: what tests that need any
    valid model run on. Modules that need other weights define their own `ckpt`."""
    path = tmp_path_factory.mktemp("model") / "ckpt.pt"
    save_checkpoint(path, build_model("rcrnet"), "rcrnet")
    return path


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """The one CLI runner: `code, out, err = cli("export", "--out", dir)` (`support.cli`, in-process;
    `support.cli_process` runs a command in its own interpreter where a test needs one)."""
    return run_cli
