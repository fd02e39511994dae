"""TensorRT layer. Logic-only tests (no GPU, no TensorRT: cache keys, profile shapes, the message
when TensorRT is missing) run everywhere; the real-engine test runs only where TensorRT and CUDA are."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from rcr_deploy.exporters import tensorrt as trt_export
from rcr_deploy.errors import BackendUnavailable, RcrError
from rcr_deploy.runtime import tensorrt_runner

IDENTITY = {"tensorrt": "10.13.0", "gpu": "NVIDIA H200", "compute_capability": "9.0"}


def _have_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def test_logic_only_require_tensorrt_when_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(BackendUnavailable) as e:
        trt_export.require_tensorrt()
    msg = str(e.value)
    assert "TensorRT is not installed" in msg and "pip install 'rcr-deploy[tensorrt]'" in msg
    assert "--backend onnxruntime" in msg and "\n" not in msg


def test_logic_only_require_tensorrt_without_cuda_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # stands in for an installed TensorRT
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailable, match="no CUDA GPU.*rcr-deploy\\[tensorrt\\].*--backend onnxruntime"):
        trt_export.require_tensorrt()


@pytest.mark.skipif(_have_tensorrt(), reason="TensorRT and CUDA are present here")
def test_logic_only_build_and_export_engine_exit_2_one_line_when_tensorrt_absent(tmp_path):
    for args in (["build", str(tmp_path / "x.onnx")], ["export", "--engine", "--out", str(tmp_path / "o")]):
        proc = subprocess.run([sys.executable, "-m", "rcr_deploy", *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and proc.stderr.strip().count("\n") == 0
        assert "rcr-deploy[tensorrt]" in proc.stderr and "--backend onnxruntime" in proc.stderr
        assert not (tmp_path / "o").exists()


def test_logic_only_cache_key_changes_with_every_input():
    options = trt_export.EngineOptions()
    base = trt_export.cache_key("a" * 64, IDENTITY, options)
    assert base == trt_export.cache_key("a" * 64, dict(IDENTITY), trt_export.EngineOptions())  # deterministic
    variants = [
        trt_export.cache_key("b" * 64, IDENTITY, options),
        trt_export.cache_key("a" * 64, {**IDENTITY, "tensorrt": "11.4.0"}, options),
        trt_export.cache_key("a" * 64, {**IDENTITY, "gpu": "NVIDIA L4"}, options),
        trt_export.cache_key("a" * 64, {**IDENTITY, "compute_capability": "8.9"}, options),
        *(trt_export.cache_key("a" * 64, IDENTITY, dataclasses.replace(options, **{f: v}))
          for f, v in [("max_batch", 16), ("opt_batch", 4), ("min_batch", 2), ("workspace_mib", 512), ("size", (256, 256))]),
    ]
    assert len({base, *variants}) == len(variants) + 1
    path = trt_export.engine_path(Path("out/rcrnet-fp16.onnx"), base)
    assert path.parent.name == "engines" and path.name == f"rcrnet-fp16-{base[:16]}.engine"


def test_logic_only_profile_shapes():
    opts = trt_export.EngineOptions(min_batch=1, opt_batch=4, max_batch=16, size=(320, 256))
    assert trt_export.profile_shapes(["batch", 4, 224, 224], opts) == ((1, 4, 224, 224), (4, 4, 224, 224), (16, 4, 224, 224))
    # Dynamic H/W take the size from the options.
    assert trt_export.profile_shapes(["batch", 3, "height", "width"], opts)[2] == (16, 3, 320, 256)
    for bad in [dict(min_batch=4, opt_batch=2), dict(opt_batch=9, max_batch=8), dict(min_batch=0)]:
        with pytest.raises(RcrError, match="min <= opt <= max"):
            trt_export.profile_shapes(["batch", 4, 224, 224], trt_export.EngineOptions(**bad))


def test_logic_only_runner_refuses_engine_from_another_gpu(tmp_path, monkeypatch):
    """An engine whose manifest names another TensorRT/GPU gets a clear error before TensorRT sees it."""
    import json

    monkeypatch.setattr(tensorrt_runner, "require_tensorrt", lambda: types.ModuleType("tensorrt"))
    monkeypatch.setattr(tensorrt_runner, "gpu_identity", lambda: IDENTITY)
    engine = tmp_path / "rcrnet.engine"
    engine.write_bytes(b"serialized")
    (tmp_path / "rcrnet.engine.json").write_text(json.dumps({"engine": {"built_for": {**IDENTITY, "gpu": "NVIDIA T4"}}}))
    with pytest.raises(RcrError, match="built for TensorRT .* NVIDIA T4.*rebuild"):
        tensorrt_runner.TensorRTRunner(engine)


@pytest.mark.skipif(not _have_tensorrt(), reason="needs TensorRT and a CUDA GPU (pip install 'rcr-deploy[tensorrt]')")
def test_real_engine_build_cache_and_validation(tmp_path):
    from rcr_deploy.exporters.pipeline import export
    from rcr_deploy.checkpoint import save_checkpoint
    from rcr_deploy.models import build_model
    from rcr_deploy.reparam import randomize_bn
    from rcr_deploy.runtime import load_runner

    model = build_model("rcrnet")
    randomize_bn(model, torch.Generator().manual_seed(0))
    save_checkpoint(tmp_path / "ckpt.pt", model, "rcrnet")
    result = export(tmp_path / "ckpt.pt", tmp_path / "out", "fp32,fp16", size=64, progress=False)
    options = trt_export.EngineOptions(min_batch=1, opt_batch=2, max_batch=4, size=(64, 64))
    for p, artifact in result.artifacts.items():
        engine = trt_export.build_engine(artifact, options)
        assert engine.is_file() and (engine.parent / trt_export.TIMING_CACHE_NAME).is_file()
        mtime = engine.stat().st_mtime_ns
        assert trt_export.build_engine(artifact, options) == engine and engine.stat().st_mtime_ns == mtime  # cached
        assert trt_export.validate_engine(engine, artifact), p
        runner = load_runner(engine)
        x = np.random.default_rng(0).standard_normal((3, 4, 64, 64)).astype(np.float32)
        assert runner.infer(x).shape == (3, 2, 64, 64)
