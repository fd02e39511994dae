from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from rcr_deploy.cli import main

from rcr_deploy.checkpoint import save_checkpoint
from rcr_deploy.models import build_model

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


class CliResult(NamedTuple):
    """What one in-process `rcr-deploy` command did: `code, out, err = cli(...)`."""

    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys) -> Callable[..., CliResult]:
    """Run the console entry point in-process, as a user's shell would (typed errors mapped to one
    line and an exit code by `cli.main`): `cli("export", "--out", dir).code`. Signal handlers that
    a command installs (train does) are put back, so the test process keeps its own."""

    def run(*args: str | Path) -> CliResult:
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        argv, sys.argv = sys.argv, ["rcr-deploy", *map(str, args)]
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        finally:
            sys.argv = argv
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
