"""CLI habits: --version, the error classes' exit codes and lines, --engine's default precision."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from rcr_deploy import __version__
from rcr_deploy.cli import app


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"rcr-deploy {__version__}"


@pytest.mark.parametrize(
    "raise_, code, words",
    [
        ("RcrError('x.png: not an image; pass a photo')", 2, "error: x.png: not an image; pass a photo\n"),
        ("VerificationError('fp16 artifact differs')", 1, "error: fp16 artifact differs\n"),
        ("ExportError('exported graph has 3 BatchNormalization nodes')", 1, "this is a bug in rcr-deploy; rerun with --debug"),
    ],
)
def test_each_error_class_maps_to_its_exit_code_in_one_line(raise_, code, words):
    script = textwrap.dedent(
        f"""
        import sys
        from rcr_deploy import cli
        from rcr_deploy.errors import ExportError, RcrError, VerificationError

        @cli.app.command("boom")
        def boom() -> None:
            raise {raise_}

        sys.argv = ["rcr-deploy", "boom"]
        cli.main()
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == code and words in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_export_engine_makes_fp16_by_default(monkeypatch, tmp_path):
    from rcr_deploy.exporters import pipeline

    seen = {}

    def fake_export(ckpt, out, precision, *args, **kwargs):
        seen.update(precision=precision, engine=kwargs["engine"])
        raise SystemExit(0)

    monkeypatch.setattr(pipeline, "export", fake_export)
    CliRunner().invoke(app, ["export", "--engine", "--out", str(tmp_path / "o")])
    assert seen == {"precision": "fp32,fp16", "engine": True}
    CliRunner().invoke(app, ["export", "--engine", "--precision", "fp32", "--out", str(tmp_path / "o")])
    assert seen["precision"] == "fp32"
