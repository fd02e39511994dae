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

from rcr_deploy.artifact import TIMING_CACHE
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
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.13.0"))  # stands in for an installed TensorRT
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


def test_logic_only_require_tensorrt_refuses_an_old_version(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(BackendUnavailable, match="TensorRT 8.6.1 is too old; rcr-deploy needs 10.0"):
        trt_export.require_tensorrt()


def _manifest(tmp_path: Path, **engine) -> dict:
    from rcr_deploy.exporters import manifest as manifests

    record = manifests.build(
        arch="rcrnet", variant={"name": "rcrnet", "symbol": "", "description": ""}, checkpoint=tmp_path / "ckpt.pt",
        checkpoint_sha256="0" * 64, precision="fp16", opset=18, in_channels=4, size=(64, 64), dynamic_hw=False,
        ops={}, export={}, validation=[], accuracy=None,
    )  # fmt: skip
    if engine:
        record["engine"] = {"source": "rcrnet.onnx", "profile": {k: [1, 4, 64, 64] for k in ("min", "opt", "max")}, **engine}
    return record


def test_logic_only_runner_refuses_engine_from_another_gpu(tmp_path, monkeypatch):
    """An engine whose manifest names another TensorRT/GPU gets a clear error before TensorRT sees it."""
    from rcr_deploy.artifact import write_manifest

    monkeypatch.setattr(tensorrt_runner, "require_tensorrt", lambda: types.ModuleType("tensorrt"))
    monkeypatch.setattr(tensorrt_runner, "gpu_identity", lambda: IDENTITY)
    engine = tmp_path / "rcrnet.engine"
    engine.write_bytes(b"serialized")
    write_manifest(engine, _manifest(tmp_path, built_for={**IDENTITY, "gpu": "NVIDIA T4"}))
    with pytest.raises(RcrError, match="built for TensorRT .* NVIDIA T4.*rebuild"):
        tensorrt_runner.TensorRTRunner(engine)


# ------------------------------------------------- a stand-in TensorRT for every failure path of ours


class FakeTRT:
    """The slice of the TensorRT Python API that rcr-deploy calls. `fail` names the call that
    reports failure the way TensorRT does (False, None or -1); everything else succeeds."""

    __version__ = "10.13.0"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1

    class MemoryPoolType:
        WORKSPACE = 0

    class TensorIOMode:
        INPUT, OUTPUT = "input", "output"

    class DataType:
        FLOAT, HALF, INT32, INT8, BOOL = "float", "half", "int32", "int8", "bool"

    def __init__(self, fail: str = "", output_dtype: str = "float") -> None:
        fake = self
        self.fail, self.timing_written = fail, None

        class Obj:
            def __init__(self, **methods):
                self.__dict__.update(methods)

        network = Obj(get_input=lambda i: Obj(name="input"))
        self.Builder = lambda logger: Obj(
            create_network=lambda flags: network,
            create_builder_config=lambda: Obj(
                set_memory_pool_limit=lambda pool, size: None,
                add_optimization_profile=lambda profile: -1 if fake.fail == "add_optimization_profile" else 0,
                create_timing_cache=lambda data: None if fake.fail == "create_timing_cache" else Obj(serialize=lambda: b"cache"),
                set_timing_cache=lambda cache, ignore: fake.fail != "set_timing_cache",
                get_timing_cache=lambda: None if fake.fail == "get_timing_cache" else Obj(serialize=lambda: b"cache"),
            ),
            create_optimization_profile=lambda: Obj(set_shape=lambda name, lo, opt, hi: None),
            build_serialized_network=lambda network, config: None if fake.fail == "build" else b"engine",
        )
        self.OnnxParser = lambda network, logger: Obj(
            parse_from_file=lambda path: fake.fail != "parse", num_errors=1, get_error=lambda i: "unsupported op Foo"
        )
        names = ["input", "logits"]
        context = Obj(
            set_input_shape=lambda name, shape: fake.fail != "set_input_shape",
            get_tensor_shape=lambda name: (1, 2, 64, 64),
            set_tensor_address=lambda name, ptr: fake.fail != "set_tensor_address",
            execute_async_v3=lambda stream: fake.fail != "execute",
        )
        engine = Obj(
            create_execution_context=lambda: None if fake.fail == "context" else context,
            num_io_tensors=2,
            get_tensor_name=lambda i: names[i],
            get_tensor_mode=lambda n: "input" if n == "input" else "output",
            get_tensor_dtype=lambda n: output_dtype,
            get_tensor_shape=lambda n: (-1, 4, 64, 64) if n == "input" else (-1, 2, 64, 64),
        )
        self.Runtime = lambda logger: Obj(deserialize_cuda_engine=lambda data: None if fake.fail == "deserialize" else engine)


@pytest.fixture
def onnx_artifact(tmp_path):
    """A tiny ONNX file with a full manifest (the builder reads it; the fake never parses it)."""
    from rcr_deploy.artifact import write_manifest
    from rcr_deploy.exporters.onnx import export_onnx

    path = tmp_path / "rcrnet-fp16.onnx"
    export_onnx(torch.nn.Conv2d(4, 2, 1).eval(), path, size=(64, 64))
    write_manifest(path, _manifest(tmp_path))
    return path


def _patch(monkeypatch, fake: FakeTRT) -> None:
    for module in (trt_export, tensorrt_runner):
        monkeypatch.setattr(module, "require_tensorrt", lambda: fake)
        monkeypatch.setattr(module, "gpu_identity", lambda: IDENTITY)


def test_logic_only_build_writes_engine_manifest_and_timing_cache(tmp_path, monkeypatch, onnx_artifact):
    from rcr_deploy.artifact import read_manifest

    _patch(monkeypatch, FakeTRT())
    engine = trt_export.build_engine(onnx_artifact, trt_export.EngineOptions(size=(64, 64)))
    assert engine.read_bytes() == b"engine" and (engine.parent / TIMING_CACHE).read_bytes() == b"cache"
    record = read_manifest(engine)
    assert record["engine"]["built_for"] == IDENTITY and record["artifact"]["file"] == engine.name
    assert record["engine"]["profile"]["max"] == [8, 4, 64, 64] and record["precision"] == "fp16"


def test_logic_only_no_timing_cache_from_tensorrt_is_not_written(tmp_path, monkeypatch, onnx_artifact):
    _patch(monkeypatch, FakeTRT("get_timing_cache"))
    engine = trt_export.build_engine(onnx_artifact)
    assert engine.is_file() and not (engine.parent / TIMING_CACHE).exists()


def test_logic_only_engines_join_an_export_folder_under_its_lock(tmp_path, monkeypatch, onnx_artifact):
    """`build` and `bench --engine` add engines to a published export set: while an export holds the
    folder's lock the build is refused in one line, and nothing is written."""
    from rcr_deploy.artifact import ExportSet

    _patch(monkeypatch, FakeTRT())
    with ExportSet(onnx_artifact.parent, [], force=True):
        with pytest.raises(RcrError, match="another export is writing to this folder"):
            trt_export.build_engine(onnx_artifact)
        assert not list((onnx_artifact.parent / "engines").glob("*"))
    assert trt_export.build_engine(onnx_artifact).read_bytes() == b"engine"


@pytest.mark.parametrize(
    "fail, needle",
    [
        ("parse", "ONNX parser failed: unsupported op Foo"),
        ("add_optimization_profile", "rejected the optimisation profile"),
        ("create_timing_cache", "could not set up a timing cache"),
        ("set_timing_cache", "could not set up a timing cache"),
        ("build", "could not build an engine"),
    ],
)
def test_logic_only_every_build_failure_is_our_bug_and_writes_nothing(tmp_path, monkeypatch, onnx_artifact, fail, needle):
    from rcr_deploy.errors import InternalError

    _patch(monkeypatch, FakeTRT(fail))
    with pytest.raises(InternalError, match=needle):
        trt_export.build_engine(onnx_artifact)
    assert not list((onnx_artifact.parent / "engines").glob("*.engine"))


def _runner(tmp_path: Path, monkeypatch, fake: FakeTRT) -> tensorrt_runner.TensorRTRunner:
    from rcr_deploy.artifact import write_manifest

    _patch(monkeypatch, fake)
    monkeypatch.setattr(tensorrt_runner.TensorRTRunner, "_stream", lambda self: 0)
    engine = tmp_path / "rcrnet.engine"
    engine.write_bytes(b"engine")
    write_manifest(engine, _manifest(tmp_path, built_for=IDENTITY))
    return tensorrt_runner.TensorRTRunner(engine)


def test_logic_only_runner_output_buffer_has_the_engine_dtype(tmp_path, monkeypatch):
    with _runner(tmp_path, monkeypatch, FakeTRT(output_dtype="half")) as runner:
        out = runner.infer_torch(torch.zeros(1, 4, 64, 64))  # a CPU tensor stands in for a CUDA one
        assert out.dtype == torch.float16 and out.shape == (1, 2, 64, 64)
    with pytest.raises(Exception, match="after close"):
        runner.infer_torch(torch.zeros(1, 4, 64, 64))


@pytest.mark.parametrize(
    "fail, error, needle",
    [
        ("set_input_shape", RcrError, "outside the engine's profile"),
        ("set_tensor_address", Exception, "refused the buffer address"),
        ("execute", RcrError, "execution failed"),
    ],
)
def test_logic_only_runner_checks_every_call(tmp_path, monkeypatch, fail, error, needle):
    with _runner(tmp_path, monkeypatch, FakeTRT(fail)) as runner, pytest.raises(error, match=needle):
        runner.infer_torch(torch.zeros(1, 4, 64, 64))


@pytest.mark.parametrize("fail, needle", [("deserialize", "cannot load this engine"), ("context", "execution context")])
def test_logic_only_runner_load_failures_are_one_line(tmp_path, monkeypatch, fail, needle):
    with pytest.raises(RcrError, match=needle):
        _runner(tmp_path, monkeypatch, FakeTRT(fail))


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
        assert engine.is_file() and (engine.parent / TIMING_CACHE).is_file()
        mtime = engine.stat().st_mtime_ns
        assert trt_export.build_engine(artifact, options) == engine and engine.stat().st_mtime_ns == mtime  # cached
        assert trt_export.validate_engine(engine, artifact), p
        x = np.random.default_rng(0).standard_normal((3, 4, 64, 64)).astype(np.float32)
        with load_runner(engine, device="cuda") as runner:
            assert runner.infer(x).shape == (3, 2, 64, 64)
