"""export --format coreml: .mlpackage files (FP32 and FP16 compute) of the built-in model, never run
(Core ML predicts on macOS / iOS only): their programs are checked, the manifest is in their
metadata and beside them, and bench, infer and load_runner say plainly that they do not run them.
Needs the `coreml` extra (in `dev`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rcr_deploy

pytest.importorskip("coremltools", reason="needs the coreml extra: pip install 'rcr-deploy[coreml]'")

from rcr_deploy.artifact import MANIFEST_METADATA_KEY, read_manifest  # noqa: E402
from rcr_deploy.errors import RcrError, VerificationError  # noqa: E402
from rcr_deploy.exporters import coreml  # noqa: E402
from rcr_deploy.exporters.pipeline import export  # noqa: E402
from rcr_deploy.runtime import load_runner  # noqa: E402

#: Small: the program's structure does not depend on the size, and each conversion takes seconds to minutes.
SIZE = 64
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """`export --format onnx,coreml --precision fp32,fp16` of the built-in model at 64x64, once."""
    out = tmp_path_factory.mktemp("coreml") / "out"
    result = export(None, out, "fp32,fp16", size=SIZE, progress=False, formats="onnx,coreml")
    ct = coreml.require_coremltools()
    models = {p: ct.models.MLModel(str(path), skip_model_load=True) for p, path in result.formats["coreml"].items()}
    return {"out": out, "files": result.formats["coreml"], "models": models, "validation": result.validation}


def test_each_precision_is_an_mlpackage_whose_program_was_checked(made: dict) -> None:
    assert {p: f.name for p, f in made["files"].items()} == {"fp32": "rcrnet.mlpackage", "fp16": "rcrnet-fp16.mlpackage"}
    onnx_ops = read_manifest(made["out"] / "rcrnet.onnx")["graph_ops"]
    stages = {s["stage"]: s for s in made["validation"]}
    for precision, model in made["models"].items():
        assert made["files"][precision].is_dir() and stages[f"coreml-program-{precision}"]["passed"]
        assert stages[f"coreml-program-{precision}"]["ran"] is False
        program = coreml.inspect(model.get_spec())  # read back from the saved package
        assert program["inputs"] == [{"name": "input", "shape": [1, 4, SIZE, SIZE], "dtype": "float32"}]
        assert program["outputs"] == [{"name": "logits", "shape": [1, 2, SIZE, SIZE], "dtype": "float32"}]
        assert program["conv_dtypes"] == [{"fp32": "float32", "fp16": "float16"}[precision]]
        assert program["ops"]["conv"] == onnx_ops["Conv"] and program["ops"]["conv_transpose"] == onnx_ops["ConvTranspose"]
        assert set(program["ops"]) <= coreml.ALLOWED_OPS


def test_the_manifest_is_in_the_metadata_and_beside_the_package(made: dict) -> None:
    for precision, path in made["files"].items():
        sidecar = read_manifest(path)
        embedded = json.loads(made["models"][precision].user_defined_metadata[MANIFEST_METADATA_KEY])
        assert {k: v for k, v in sidecar.items() if k != "artifact"} == embedded
        assert sidecar["artifact"] == {"file": path.name, "sha256": coreml.package_sha256(path)}
        block = embedded["coreml"]
        assert embedded["precision"] == precision and block["ran"] is False
        assert block["compute_precision"] == {"fp32": "float32", "fp16": "float16"}[precision]
        assert block["program"]["inputs"][0]["shape"] == embedded["input"]["shape"] == [1, 4, SIZE, SIZE]
        assert embedded["accuracy"] is None  # never run, so no accuracy of its own


def test_the_program_check_bites(made: dict) -> None:
    """The FP32 program held to FP16 must fail: the check is not one that always passes."""
    program = coreml.inspect(made["models"]["fp32"].get_spec())
    record = read_manifest(made["out"] / "rcrnet.onnx")
    with pytest.raises(VerificationError, match="conv_dtypes"):
        coreml.check_program(program, record, "fp16", made["files"]["fp32"])
    with pytest.raises(VerificationError, match="ops outside the checked set: gelu"):
        coreml.check_program({**program, "ops": {**program["ops"], "gelu": 1}}, record, "fp32", made["files"]["fp32"])


def test_bench_infer_and_load_runner_say_it_is_not_run(made: dict, cli) -> None:
    done = cli("bench", made["out"], "--backend", "coreml", "--size", SIZE, "--iters", "1", "--warmup", "0", "--json")
    assert done.code == 0, done.err
    skipped = {s["name"]: s["reason"] for s in json.loads(done.out)["skipped"]}
    assert set(skipped) == {"coreml-fp32", "coreml-fp16"} and all(r.startswith("not run: ") for r in skipped.values())
    done = cli("bench", made["files"]["fp16"], "--iters", "1")
    assert done.code == 2 and "not run" in done.err and len(done.err.strip().splitlines()) == 1
    photo = next(Path(rcr_deploy.__file__).with_name("assets").glob("*.jpg"))
    done = cli("infer", photo, "--model", made["files"]["fp16"], "--out", made["out"].parent / "masks")
    assert done.code == 2 and "not run" in done.err
    with pytest.raises(RcrError, match="macOS / iOS only"):
        load_runner(made["files"]["fp32"])
