"""export --format tflite: NHWC .tflite files (FP32, FP16 weights, full-integer INT8) of the built-in
model, validated against the FP32 ONNX artifact, with the manifest in the file and beside it, run
by the LiteRT runner. Needs the `tflite` extra (in `dev`)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("litert_torch", reason="needs the tflite extra: pip install 'rcr-deploy[tflite]'")

from conftest import EG1800  # noqa: E402

from rcr_deploy.artifact import ARTIFACT_NAMES, read_manifest  # noqa: E402
from rcr_deploy.data.folder import list_pairs  # noqa: E402
from rcr_deploy.errors import RcrError  # noqa: E402
from rcr_deploy.exporters import onnx as onnx_export  # noqa: E402
from rcr_deploy.exporters import precision as prec  # noqa: E402
from rcr_deploy.exporters import tflite  # noqa: E402
from rcr_deploy.exporters.pipeline import export  # noqa: E402
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner  # noqa: E402
from rcr_deploy.runtime.tflite_runner import TFLiteRunner, embedded_manifest  # noqa: E402

SIZE = 96
#: Three conversions and an INT8 calibration: minutes on a shared 2-core machine.
pytestmark = pytest.mark.timeout(1500)


@pytest.fixture(scope="module")
def phone(tmp_path_factory) -> dict:
    """`export --format tflite --precision fp32,fp16,int8` of the built-in model at 96x96, INT8
    calibrated on 6 EG1800 training photos."""
    if not (EG1800 / "images").is_dir():
        pytest.skip("../shared/data/eg1800 is not beside this checkout")
    root = tmp_path_factory.mktemp("tflite")
    calib = root / "calib"
    calib.mkdir()
    for pair in list_pairs(EG1800, "train")[:6]:
        shutil.copy(pair.image, calib / pair.image.name)
    out = root / "out"
    result = export(None, out, "fp32,fp16,int8", calib=calib, size=SIZE, progress=False, formats="onnx,tflite")
    images = sorted(calib.iterdir())
    inputs = onnx_export.validation_inputs(4, (SIZE, SIZE), prec.load_batch(images[:4], (SIZE, SIZE), 4))
    summaries = [s for s in result.validation if s["stage"].startswith(("tflite", "phone"))]
    artifacts = {p: out / name for p, name in ARTIFACT_NAMES.items()}
    return {"files": result.formats["tflite"], "summaries": summaries, "artifacts": artifacts, "inputs": inputs}


def test_every_precision_is_written_validated_and_preceded_by_the_rewrite_check(phone: dict) -> None:
    assert set(phone["files"]) == {"fp32", "fp16", "int8"}
    stages = [s["stage"] for s in phone["summaries"]]
    assert stages == ["phone-rewrite", "tflite-fp32", "tflite-fp16", "tflite-int8"]
    assert all(s["passed"] for s in phone["summaries"])
    fp32 = phone["summaries"][1]
    assert fp32["max_abs"] < 1e-3 and fp32["mask_agreement"] >= 0.999
    assert phone["summaries"][0]["replaced"] == 10


def test_files_are_nhwc_with_the_prior_channel_and_int8_is_full_integer(phone: dict) -> None:
    for precision, path in phone["files"].items():
        with TFLiteRunner(path) as runner:
            assert list(runner._in["shape"]) == [1, SIZE, SIZE, 4]
            assert list(runner._out["shape"]) == [1, SIZE, SIZE, 2]
            expected = np.int8 if precision == "int8" else np.float32
            assert runner._in["dtype"] == expected and runner._out["dtype"] == expected
    assert phone["files"]["fp16"].stat().st_size < 0.6 * phone["files"]["fp32"].stat().st_size


def test_the_manifest_is_in_the_file_and_beside_it(phone: dict, tmp_path) -> None:
    for precision, path in phone["files"].items():
        sidecar = read_manifest(path)
        embedded = embedded_manifest(path)
        assert {k: v for k, v in sidecar.items() if k != "artifact"} == embedded
        assert embedded["precision"] == precision
        assert embedded["input"]["layout"] == "NHWC" and embedded["input"]["shape"] == [1, SIZE, SIZE, 4]
        assert embedded["input"]["prior_channel"] == 3 and embedded["output"]["shape"] == [1, SIZE, SIZE, 2]
        assert embedded["validation"][-1]["stage"] == f"tflite-{precision}"
        assert embedded["tflite"]["source"]["file"] == phone["artifacts"][precision].name
        quant = embedded["tflite"]["io_quantization"]
        assert (quant["input"] is not None) == (precision == "int8")
    # Without its sidecar the runner still knows the file (the embedded copy).
    lone = tmp_path / "lone.tflite"
    shutil.copy(phone["files"]["fp32"], lone)
    with TFLiteRunner(lone) as runner:
        assert runner.manifest["input"]["layout"] == "NHWC"


def test_the_runner_keeps_the_nchw_contract_and_agrees_with_onnx(phone: dict) -> None:
    x = phone["inputs"]["random b2 96x96"]
    with TFLiteRunner(phone["files"]["fp32"]) as runner, OnnxRuntimeRunner(phone["artifacts"]["fp32"]) as reference:
        out = runner.infer(x)
        assert out.shape == (2, 2, SIZE, SIZE) and out.dtype == np.float32
        assert np.abs(out - reference.infer(x)).max() < 1e-3
        with pytest.raises(RcrError, match="exported at one size"):
            runner.infer(np.zeros((1, 4, 64, 64), np.float32))


def test_the_validation_gate_bites(phone: dict) -> None:
    """The INT8 file held to the FP32 tolerance must fail: the gate is not one that always passes."""
    from rcr_deploy.errors import VerificationError

    with OnnxRuntimeRunner(phone["artifacts"]["fp32"]) as reference, pytest.raises(VerificationError, match="beyond tolerance"):
        tflite._validated(phone["files"]["int8"], reference, phone["inputs"], "fp32")


def test_eval_and_infer_take_a_tflite_like_any_artifact(phone: dict, cli, tmp_path) -> None:
    """The format table routes a .tflite to the LiteRT runner: eval reads its size from the manifest."""
    val = tmp_path / "val"
    for sub in ("images", "masks"):
        (val / sub).mkdir(parents=True)
    for pair in list_pairs(EG1800, "val")[:3]:
        shutil.copy(pair.image, val / "images" / pair.image.name)
        shutil.copy(pair.mask, val / "masks" / pair.mask.name)
    result = cli("eval", phone["files"]["int8"], "--data", val, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["model"] == "litert:rcrnet-int8.tflite" and report["n_images"] == 3 and report["size"] == SIZE
    result = cli("infer", EG1800 / "images" / list_pairs(EG1800, "val")[0].image.name, "--model", phone["files"]["fp32"], "--out", tmp_path / "masks")
    assert result.code == 0, result.err
    assert list((tmp_path / "masks").iterdir())
