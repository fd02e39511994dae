"""export --format ncnn: pnnx's .ncnn.param + .ncnn.bin (FP32 and FP16 weights) of the built-in model,
validated against the FP32 ONNX artifact, run by the ncnn runner through load_runner, bench, eval
and infer. Needs the `ncnn` extra (in `dev`)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("pnnx", reason="needs the ncnn extra: pip install 'rcr-deploy[ncnn]'")
pytest.importorskip("ncnn", reason="needs the ncnn extra: pip install 'rcr-deploy[ncnn]'")

from conftest import EG1800  # noqa: E402
from support import visible_files  # noqa: E402

from rcr_deploy.artifact import ARTIFACT_NAMES, read_manifest  # noqa: E402
from rcr_deploy.data.folder import list_pairs  # noqa: E402
from rcr_deploy.errors import BackendUnavailable, ManifestError, RcrError  # noqa: E402
from rcr_deploy.exporters import ncnn as ncnn_export  # noqa: E402
from rcr_deploy.exporters import precision as prec  # noqa: E402
from rcr_deploy.exporters.pipeline import export  # noqa: E402
from rcr_deploy.runtime import load_runner  # noqa: E402
from rcr_deploy.runtime.ncnn_runner import NcnnRunner  # noqa: E402
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner  # noqa: E402

#: The size the built-in model was trained at, so that mask agreement on real photos means something.
SIZE = 224
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """`export --format onnx,ncnn --precision fp32,fp16 --val` (3 EG1800 validation photos) at 224."""
    if not (EG1800 / "images").is_dir():
        pytest.skip("../shared/data/eg1800 is not beside this checkout")
    root = tmp_path_factory.mktemp("ncnn")
    val = root / "val"
    for sub in ("images", "masks"):
        (val / sub).mkdir(parents=True)
    pairs = list_pairs(EG1800, "val")
    for pair in pairs[:3]:
        shutil.copy(pair.image, val / "images" / pair.image.name)
        shutil.copy(pair.mask, val / "masks" / pair.mask.name)
    out = root / "out"
    result = export(None, out, "fp32,fp16", val=val, size=SIZE, progress=False, formats="onnx,ncnn")
    photos = prec.load_batch([p.image for p in pairs[3:9]], (SIZE, SIZE), 4)
    return {"out": out, "val": val, "files": result.formats["ncnn"], "validation": result.validation, "photos": photos}


def test_both_precisions_are_written_as_a_pair_with_no_pnnx_leftovers(made: dict) -> None:
    files = made["files"]
    assert {p: f.name for p, f in files.items()} == {"fp32": "rcrnet.ncnn.param", "fp16": "rcrnet-fp16.ncnn.param"}
    names = visible_files(made["out"] / "current")
    assert "rcrnet.ncnn.bin" in names and "rcrnet.bin" not in names  # no clash with OpenVINO's weights
    assert not [n for n in names if "pnnx" in n or n.endswith(".py")], names  # pnnx's own outputs stay in its temporary folder
    fp32_bin, fp16_bin = ((made["out"] / n).stat().st_size for n in ("rcrnet.ncnn.bin", "rcrnet-fp16.ncnn.bin"))
    assert 0.45 < fp16_bin / fp32_bin < 0.55


def test_each_file_is_validated_against_the_fp32_onnx_and_carries_its_manifest(made: dict) -> None:
    stages = {s["stage"]: s for s in made["validation"]}
    assert stages["ncnn-fp32"]["passed"] and stages["ncnn-fp32"]["max_abs"] < 1e-3
    assert stages["ncnn-fp16"]["passed"] and stages["ncnn-fp16"]["mask_agreement"] >= 0.995
    for precision, param in made["files"].items():
        m = read_manifest(param)
        assert m["precision"] == precision and m["validation"][-1]["stage"] == f"ncnn-{precision}"
        assert m["ncnn"]["blobs"] == {"input": m["input"]["name"], "output": m["output"]["name"]}
        assert m["ncnn"]["weight_storage"] == {"fp32": "float32", "fp16": "float16"}[precision]
        assert m["ncnn"]["source"]["file"] == ARTIFACT_NAMES["fp32"] and m["input"]["shape"] == [1, 4, SIZE, SIZE]
        assert "DeconvolutionDepthWise" in m["ncnn"]["layers"]  # the up-samplers stay whole: no phone rewrite
        # Its own accuracy row, measured on it (another converter's model than its ONNX artifact).
        row = next(r for r in m["accuracy"]["rows"] if r["precision"] == precision)
        assert row["n_images"] == 3 and 0.0 < row["fg_miou"] <= 1.0


def test_fp32_gives_onnx_fp32s_mask_on_real_photos(made: dict) -> None:
    x = made["photos"]
    with NcnnRunner(made["files"]["fp32"]) as runner, OnnxRuntimeRunner(made["out"] / ARTIFACT_NAMES["fp32"]) as reference:
        out, ref = runner.infer(x), reference.infer(x)
    agreement = float((out.argmax(1) == ref.argmax(1)).mean())
    print(f"ncnn fp32 vs ONNX Runtime fp32 on {len(x)} EG1800 photos: same class {agreement:.5%}, max abs {np.abs(out - ref).max():.2e}")
    assert out.shape == ref.shape == (len(x), 2, SIZE, SIZE) and out.dtype == np.float32
    assert agreement >= 0.995 and np.abs(out - ref).max() < 1e-3


def test_load_runner_opens_a_file_or_an_export_folder_and_refuses_what_it_cannot_run(made: dict, tmp_path) -> None:
    with load_runner(made["files"]["fp16"]) as runner:
        assert runner.name == "ncnn:rcrnet-fp16.ncnn.param"
        with pytest.raises(RcrError, match="exported at one size"):
            runner.infer(np.zeros((1, 4, 64, 64), np.float32))
    with load_runner(made["out"], backend="ncnn") as runner:
        assert runner.name == "ncnn:rcrnet.ncnn.param"
    with pytest.raises(RcrError, match="pass --device cpu"):
        load_runner(made["files"]["fp32"], device="cuda", backend="ncnn")
    # Weights from another export are refused by their sha256, before ncnn reads them.
    copy = tmp_path / "copy"
    shutil.copytree(made["out"] / "current", copy)
    shutil.copy(copy / "rcrnet-fp16.ncnn.bin", copy / "rcrnet.ncnn.bin")
    with pytest.raises(ManifestError, match="sha256"):
        NcnnRunner(copy / "rcrnet.ncnn.param")


def test_a_missing_extra_is_one_line_naming_it(monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "pnnx", None)
    with pytest.raises(BackendUnavailable, match=r"rcr-deploy\[ncnn\]") as e:
        ncnn_export.require_pnnx()
    assert "\n" not in str(e.value)


def test_bench_eval_and_infer_run_it_like_any_backend(made: dict, cli, tmp_path) -> None:
    done = cli("bench", made["out"], "--backend", "ncnn", "--size", SIZE, "--iters", "2", "--warmup", "0", "--threads", "1", "--json")
    assert done.code == 0, done.err
    rows = {r["name"]: r for r in json.loads(done.out)["results"]}
    for precision in ("fp32", "fp16"):
        row = rows[f"ncnn-{precision}"]
        param = made["out"] / ("rcrnet.ncnn.param" if precision == "fp32" else "rcrnet-fp16.ncnn.param")
        assert row["backend"] == "ncnn" and row["precision"] == precision and row["runs"][0]["p50_ms"] > 0
        assert row["artifact_bytes"] == param.stat().st_size + param.with_name(param.name.replace(".param", ".bin")).stat().st_size
        assert row["macs"] > 0  # counted on the ONNX artifact beside it
    done = cli("eval", made["files"]["fp32"], "--data", made["val"], "--json")
    assert done.code == 0, done.err
    report = json.loads(done.out)
    assert report["model"] == "ncnn:rcrnet.ncnn.param" and report["n_images"] == 3 and report["size"] == SIZE
    image = next((made["val"] / "images").iterdir())
    done = cli("infer", image, "--model", made["files"]["fp16"], "--out", tmp_path / "masks")
    assert done.code == 0, done.err
    assert list((tmp_path / "masks").iterdir())
