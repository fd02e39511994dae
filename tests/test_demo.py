"""`rcr-deploy demo` end to end: every file of the report folder, checked for content."""

from __future__ import annotations

import json

import cv2
import pytest

from rcr_deploy.checkpoint import DEFAULT_CHECKPOINT
from rcr_deploy.demo import CLIP_FRAMES, sample_image
from support import read_frames

pytestmark = pytest.mark.slow  # the whole demo: export, bench, infer


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="the built-in model is not in this checkout yet")
def test_demo_end_to_end(tmp_path, monkeypatch, cli):
    """As a new user runs it: no arguments, the built-in model. (Random weights cannot stand in:
    their logits hover around zero, so INT8 flips many pixels and export rightly refuses it.)"""
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("demo")
    assert code == 0, err
    report = tmp_path / "rcr-deploy-out" / "demo"
    assert f"report: {report / 'README.md'}" in out.replace("\n", "")

    bench = json.loads((report / "bench.json").read_text())
    timed = {r["name"]: r for r in bench["results"]}
    assert {"torch-train", "torch-deploy", "onnxruntime-fp32", "onnxruntime-int8"} <= set(timed)
    assert all(r["runs"][0]["p50_ms"] > 0 for r in timed.values())
    for manifest in ("rcrnet.onnx.json", "rcrnet-int8.onnx.json"):
        assert json.loads((report / "export" / manifest).read_text())["precision"] in manifest.replace("rcrnet.onnx", "fp32")

    h, w = sample_image().shape[:2]
    assert cv2.imread(str(report / "fp32" / "sample_before-after.png")).shape == (h, 3 * w, 3)
    assert cv2.imread(str(report / "speed-accuracy.png")) is not None
    for precision in ("fp32", "int8"):
        assert cv2.imread(str(report / precision / "sample_overlay.png")).shape == (h, w, 3)
        assert cv2.imread(str(report / precision / "sample_cutout.png"), cv2.IMREAD_UNCHANGED).shape == (h, w, 4)
    assert len(read_frames(report / "clip.mp4")) == len(read_frames(report / "clip_overlay.mp4")) == CLIP_FRAMES

    stability = json.loads((report / "stability.json").read_text())
    assert set(stability) == {"prior on", "prior off"}
    assert all(s["frames"] == CLIP_FRAMES and 0 < s["gt_consecutive_iou"] < 1 for s in stability.values())
    index = (report / "README.md").read_text()
    assert "| prior on |" in index and "re-parameterisation" in index
    assert "mean per-image foreground IoU" in index and "EG1800 validation split" in index  # the model card's figure


def test_demo_with_a_missing_model_is_exit_2(tmp_path, cli):
    code, _, err = cli("demo", "--model", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "out"))
    assert code == 2 and "nope.pt" in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "README.md").exists()


def test_demo_without_the_built_in_model_fails_before_any_work(tmp_path, monkeypatch, cli):
    from rcr_deploy import checkpoint

    monkeypatch.setattr(checkpoint, "DEFAULT_CHECKPOINT", tmp_path / "gone.pt")
    code, _, err = cli("demo", "-o", str(tmp_path / "out"))
    assert code == 2 and "gone.pt: built-in model missing" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
