"""`rcr-deploy export --triton DIR`: every config.pbtxt parses with Triton's own protobuf schema
and agrees with the artifact beside it. Triton itself is not run (it ships in NVIDIA's containers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is in the dev extra")

from rcr_deploy.errors import RcrError  # noqa: E402
from rcr_deploy.exporters import triton  # noqa: E402
from rcr_deploy.artifact import manifest_path, write_manifest  # noqa: E402
from rcr_deploy.fileio import sha256_file  # noqa: E402

pytestmark = pytest.mark.slow  # exports twice for a real model repository

SIZE = 64


def parse(path: Path):
    """Triton's parser: an unknown field, a wrong enum or a type error raises ParseError."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A real export set with ONNX and OpenVINO IRs in two precisions, exported twice so that the
    folder keeps the older set under .versions/ (the Triton repository must not pick from it)."""
    root = tmp_path_factory.mktemp("triton")
    out, repo = root / "out", root / "repo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for size, extra in ((SIZE + 32, []), (SIZE, ["--triton", str(repo), "--force"])):  # the older set differs
        cmd = [sys.executable, "-m", "rcr_deploy", "export", "--out", str(out), "--precision", "fp32,fp16",
               "--size", str(size), "--max-batch", "16", "--format", "onnx,openvino", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Triton model repository" in proc.stdout
    return {"out": out, "repo": repo}


def test_onnx_models_parse_and_match_their_artifacts(exported):
    repo = exported["repo"]
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == ["rcrnet", "rcrnet_fp16", "rcrnet_openvino", "rcrnet_openvino_fp16"]
    for name in ("rcrnet", "rcrnet_fp16"):
        config = parse(repo / name / "config.pbtxt")
        assert config.name == name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 16
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        graph = onnx.load(str(repo / name / "1" / "model.onnx")).graph
        for tensor, declared in [(graph.input[0], config.input[0]), (graph.output[0], config.output[0])]:
            dims = [d.dim_value or -1 for d in tensor.type.tensor_type.shape.dim]
            assert declared.name == tensor.name
            assert [-1, *declared.dims] == dims  # Triton's dims leave out the batch axis
            assert declared.data_type == model_config_pb2.TYPE_FP32  # fp16 artifacts keep fp32 I/O
        manifest = json.loads((repo / name / "manifest.json").read_text())
        assert manifest == json.loads(manifest_path(exported["out"] / ("rcrnet.onnx" if name == "rcrnet" else "rcrnet-fp16.onnx")).read_text())
        assert manifest["input"]["size"] == [SIZE, SIZE]


def test_existing_repository_kept_unless_force(exported, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "mine.txt").write_text("keep")
    with pytest.raises(RcrError, match="--force"):
        triton.write_repository(exported["out"], repo)
    assert (repo / "mine.txt").read_text() == "keep"
    triton.write_repository(exported["out"], repo, force=True)
    assert not (repo / "mine.txt").exists() and parse(repo / "rcrnet" / "config.pbtxt").name == "rcrnet"


def test_export_folder_without_artifacts_is_refused(tmp_path):
    with pytest.raises(RcrError, match="rcr-deploy export"):
        triton.write_repository(tmp_path, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_openvino_models_are_each_precisions_current_ir(exported):
    """The FP32 model is the current FP32 IR, byte for byte (by sha256), with its own manifest;
    not the FP16 IR, and nothing from the older set that .versions/ keeps."""
    out, repo = exported["out"], exported["repo"]
    versions = [d for d in (out / ".versions").iterdir() if not d.name.startswith(".")]
    assert len(versions) == 2  # the older set is kept, so a search of the folder would find its IRs
    all_irs = {sha256_file(x): x for x in out.rglob("*.xml")}
    for name, ir in [("rcrnet_openvino", "rcrnet.xml"), ("rcrnet_openvino_fp16", "rcrnet-fp16.xml")]:
        served = repo / name / "1"
        assert sha256_file(served / "model.xml") == sha256_file(out / ir)
        assert sha256_file(served / "model.bin") == sha256_file((out / ir).with_suffix(".bin"))
        manifest = json.loads((repo / name / "manifest.json").read_text())
        assert manifest == json.loads(manifest_path(out / ir).read_text())
        config = parse(repo / name / "config.pbtxt")
        assert config.backend == "openvino" and config.parameters["PERFORMANCE_HINT"].string_value == "THROUGHPUT"
        assert config.input[0].name == manifest["input"]["name"]
    assert sha256_file(repo / "rcrnet_openvino" / "1" / "model.bin") != sha256_file(out / "rcrnet-fp16.bin")
    assert json.loads((repo / "rcrnet_openvino" / "manifest.json").read_text())["precision"] == "fp32"
    assert len(all_irs) == 4, all_irs  # every IR in the folder differs, so a wrong pick would show


def test_logic_only_tensorrt_configs(exported, tmp_path):
    """No TensorRT here: a stand-in plan with the manifest export writes beside an engine checks
    our config logic (batch limited by the engine's profile, the platform line) and the schema."""
    out = tmp_path / "out"
    out.mkdir()
    for f in exported["out"].glob("*.onnx*"):
        if f.is_file():  # a precision the set lacks is a dangling link
            (out / f.name).write_bytes(f.read_bytes())
    manifest = json.loads(manifest_path(out / "rcrnet.onnx").read_text())
    engine = tmp_path / "engines" / "rcrnet-fp16.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"stand-in plan")
    profile = {"min": [1, 4, SIZE, SIZE], "opt": [1, 4, SIZE, SIZE], "max": [4, 4, SIZE, SIZE]}
    record = {"source": "rcrnet-fp16.onnx", "built_for": {"gpu": "stand-in"}, "profile": profile}
    write_manifest(engine, {**{k: v for k, v in manifest.items() if k != "artifact"}, "engine": record})
    configs = triton.write_repository(out, tmp_path / "repo", {"fp16": engine}, max_batch=8)
    assert [c.parent.name for c in configs] == ["rcrnet", "rcrnet_fp16", "rcrnet_tensorrt_fp16"]
    trt = parse(tmp_path / "repo" / "rcrnet_tensorrt_fp16" / "config.pbtxt")
    assert trt.platform == "tensorrt_plan" and trt.max_batch_size == 4
    assert trt.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (tmp_path / "repo" / "rcrnet_tensorrt_fp16" / "1" / "model.plan").read_bytes() == b"stand-in plan"


def test_schema_check_catches_a_bad_config(exported):
    """The parse is a real check: a misspelt field fails it."""
    text = (exported["repo"] / "rcrnet" / "config.pbtxt").read_text().replace("max_batch_size", "max_batch")
    with pytest.raises(text_format.ParseError):
        text_format.Parse(text, model_config_pb2.ModelConfig())
