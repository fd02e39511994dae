"""The installed package owns one import name: the wheel, installed into a fresh venv beside PyPI's
`exporters` package (installed first, then the wheel), runs `rcr-deploy export`, and uninstalling
`exporters` afterwards leaves rcr-deploy whole.

Marked `wheel`: it builds a wheel and installs from PyPI (network), about a minute. The fresh venv
reuses this environment's installed dependencies through a .pth line instead of downloading them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from rcr_deploy.checkpoint import save_checkpoint
from rcr_deploy.models import build_model

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.wheel]


def _run(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_wheel_beside_pypi_exporters_runs_export_and_survives_its_uninstall(tmp_path):
    pip = [sys.executable, "-m", "pip"]
    built = _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", REPO)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("rcr_deploy-*.whl")

    venv = tmp_path / "venv"
    assert _run(sys.executable, "-m", "venv", venv).returncode == 0
    py = venv / "bin" / "python"
    site = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    # Dependencies come from this environment, after the venv's own packages on sys.path; a path
    # line in a .pth does not run that folder's .pth files, so an editable rcr-deploy stays out.
    (site / "reuse-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    fetched = _run(py, "-m", "pip", "install", "--no-deps", "exporters")  # an sdist: built in an isolated env
    if fetched.returncode != 0 and "No matching distribution" in fetched.stderr + fetched.stdout:
        pytest.skip("PyPI's 'exporters' cannot be fetched (offline?)")
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    installed = _run(py, "-m", "pip", "install", "--no-deps", wheel)
    assert installed.returncode == 0, installed.stderr[-2000:]

    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, build_model("rcrnet"), "rcrnet")
    cli = venv / "bin" / "rcr-deploy"
    for attempt in ("beside exporters", "after pip uninstall exporters"):
        out = tmp_path / attempt.replace(" ", "-")
        proc = _run(cli, "export", ckpt, "--out", out, "--size", "64", "--json", cwd=tmp_path)
        assert proc.returncode == 0, f"{attempt}: {proc.stderr[-2000:]}"
        assert (out / "rcrnet.onnx").is_file() and (out / "rcrnet.onnx.json").is_file()
        where = _run(py, "-c", "import rcr_deploy.exporters as e; print(e.__file__)", cwd=tmp_path).stdout
        assert where.startswith(str(site)), where  # ours, from the wheel, not PyPI's and not the repo
        if attempt == "beside exporters":
            assert _run(py, "-m", "pip", "uninstall", "-y", "exporters").returncode == 0
