"""CLI habits: --version, the error classes' exit codes and lines, --engine's default precision."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from rcr_deploy import __version__


def test_version(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"rcr-deploy {__version__}"


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


@pytest.mark.slow  # a real export (FP32 and FP16 at 64x64)
def test_logic_only_export_engine_builds_an_fp16_engine_by_default(monkeypatch, tmp_path, cli):
    """No TensorRT here: a stand-in builder records what `export --engine` asks of it. With no
    --precision the export writes FP16 too, and an engine is built from each artifact and
    published in the set's engines/ (so 'bench --engine fp16' finds it)."""
    from rcr_deploy.exporters import pipeline

    built = {}

    def build(artifact, options, cache_dir, force=False):
        engine = cache_dir / f"{artifact.stem}.engine"
        engine.write_bytes(b"stand-in plan")
        built[artifact.name] = options
        return engine

    class Passed:
        stage = ""

        def __bool__(self) -> bool:
            return True

        def summary(self) -> dict:
            return {"stage": self.stage, "passed": True}

    monkeypatch.setattr(pipeline, "require_tensorrt", lambda: None)
    monkeypatch.setattr(pipeline, "build_engine", build)
    monkeypatch.setattr(pipeline, "validate_engine", lambda engine, artifact, seed=0: Passed())
    code, out, err = cli("export", "--engine", "--out", tmp_path / "o", "--size", "64", "--format", "onnx", "--max-batch", "4")
    assert code == 0, err
    assert sorted(built) == ["rcrnet-fp16.onnx", "rcrnet.onnx"] and built["rcrnet-fp16.onnx"].max_batch == 4
    assert (tmp_path / "o" / "engines" / "rcrnet-fp16.engine").read_bytes() == b"stand-in plan"
    assert "TensorRT engine (fp16)" in " ".join(out.split())
