"""`rcr-deploy export --format web`: the folder, its bad-input errors, the page's image maths
against OpenCV (in Node), and the page itself in headless Chromium against `rcr-deploy infer`.

The browser tests need Debian's Chromium and the onnxruntime-web npm package (package.json at the
repository root pins it); `.ci/run` installs both. Elsewhere they are skipped with the reason,
in CI (CI=true) they fail instead, so that CI never passes without running them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rcr_deploy import postprocess, preprocess
from rcr_deploy.artifact import ARTIFACT_NAMES, read_manifest
from rcr_deploy.errors import RcrError
from rcr_deploy.exporters import web as web_export
from rcr_deploy.fileio import sha256_file
from rcr_deploy.infer import Segmenter
from rcr_deploy.postprocess import THRESHOLD
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

pytestmark = pytest.mark.slow  # exports the browser folder and drives Chromium

REPO = Path(__file__).resolve().parents[1]
EG1800_IMAGES = REPO.parent / "shared" / "data" / "eg1800" / "images"
ASTRONAUT = REPO / "rcr_deploy" / "assets" / "astronaut-eileen-collins.jpg"
#: Real photographs of EG1800 (portraits of several shapes) beside the built-in astronaut.
EG1800_PICKS = ("00001.jpg", "00004.jpg", "00007.jpg")
AGREEMENT = 0.995


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what}; .ci/run installs it, so CI must not skip this test")
    pytest.skip(what)


@pytest.fixture(scope="module")
def ort_web() -> Path:
    try:
        return web_export.find_ort_web(REPO)
    except RcrError as e:
        _missing(f"onnxruntime-web is not installed ({e}); run 'npm ci' in the repository root")


@pytest.fixture(scope="module")
def web_export_dir(tmp_path_factory, ort_web) -> Path:
    """`rcr-deploy export --format onnx,web --precision fp32` of the built-in model."""
    out = tmp_path_factory.mktemp("web") / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", web_export.ENV_VAR: str(ort_web)}
    proc = subprocess.run([sys.executable, "-m", "rcr_deploy", "export", "--out", str(out), "--precision", "fp32",
                           "--format", "onnx,web", "--json"], capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["formats"]["web"] == {"fp32": str(out / web_export.WEB_DIR)}
    return out


def test_web_folder_holds_the_validated_artifact_page_and_runtime(web_export_dir, ort_web):
    web = web_export_dir / web_export.WEB_DIR
    fp32 = web_export_dir / ARTIFACT_NAMES["fp32"]
    assert (web / fp32.name).read_bytes() == fp32.read_bytes()
    assert read_manifest(web / fp32.name)["artifact"]["sha256"] == sha256_file(fp32)
    record = json.loads((web / "web.json").read_text())
    assert record["onnxruntime_web"]["version"] == web_export.ort_web_version(ort_web)
    on_disk = {p.relative_to(web).as_posix() for p in web.rglob("*") if p.is_file()} - {"web.json"}
    assert set(record["files"]) == on_disk
    assert all(sha256_file(web / name) == digest for name, digest in record["files"].items())
    for name in web_export.ORT_FILES:
        assert (web / "ort" / name).read_bytes() == (ort_web / "dist" / name).read_bytes()


@pytest.mark.parametrize("where", ["env", "cwd"])
def test_export_web_without_onnxruntime_web_is_one_line_exit_2(tmp_path, where):
    env = {k: v for k, v in os.environ.items() if k != web_export.ENV_VAR}
    if where == "env":
        env[web_export.ENV_VAR] = str(tmp_path / "no-such-package")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "rcr_deploy", "export", "--out", str(out), "--format", "onnx,web"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:") and proc.stderr.strip().count("\n") == 0
    assert "npm install onnxruntime-web" in proc.stderr and web_export.ENV_VAR in proc.stderr
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_web_image_maths_match_opencv(tmp_path):
    """rcrnet-image.mjs (run in Node) against rcr_deploy.preprocess: letterbox + INTER_CUBIC on a
    portrait and a landscape crop of a real photo, the prior's INTER_LINEAR and the un-letterbox."""
    node = shutil.which("node")
    if node is None:
        _missing("Node.js is not installed (apt-get install nodejs)")
    script = tmp_path / "run.mjs"
    script.write_text(
        """
import { readFileSync, writeFileSync } from "node:fs";
const m = await import(process.argv[2]);
const [w, h, size] = process.argv.slice(4, 7).map(Number);
const rgba = new Uint8ClampedArray(readFileSync(process.argv[3]));
const { rgb, box } = m.letterbox(rgba, w, h, size);
const mask = new Float32Array(readFileSync(process.argv[7]).buffer.slice(0));
const prior = m.letterboxPrior(mask, box);
const back = m.unletterbox(prior, box);
writeFileSync(process.argv[8], JSON.stringify({ box, rgb: Array.from(rgb), prior: Array.from(prior), back: Array.from(back) }));
"""
    )
    photo = preprocess.load_image(ASTRONAUT)
    rng = np.random.default_rng(0)
    for rgb in (photo[:400, 60:301], photo[100:341, :]):
        h, w = rgb.shape[:2]
        (tmp_path / "in.bin").write_bytes(np.dstack([rgb, np.full((h, w), 255, np.uint8)]).tobytes())
        mask = (rng.random((h, w)) > 0.5).astype(np.float32)
        (tmp_path / "mask.bin").write_bytes(mask.tobytes())
        module = (REPO / "exporters" / "web_page" / "rcrnet-image.mjs").as_uri()
        subprocess.run([node, str(script), module, str(tmp_path / "in.bin"), str(w), str(h), "224", str(tmp_path / "mask.bin"),
                        str(tmp_path / "out.json")], check=True, timeout=120)  # fmt: skip
        js = json.loads((tmp_path / "out.json").read_text())
        resized, box = preprocess.letterbox(rgb, 224)
        assert js["box"] == {"width": w, "height": h, "side": box.side, "top": box.top, "left": box.left, "size": 224}
        diff = np.abs(np.asarray(js["rgb"]).reshape(224, 224, 3) - resized.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99, ((diff == 0).mean(), diff.max())
        prior = preprocess.letterbox_mask(mask, box)
        np.testing.assert_allclose(np.asarray(js["prior"]).reshape(224, 224), prior, atol=1e-4)  # float32 rounding order: far below the 0.5 threshold
        np.testing.assert_allclose(np.asarray(js["back"]).reshape(h, w), postprocess.unletterbox(prior, box), atol=1e-4)


# ------------------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser():
    if not Path("/usr/bin/chromium").is_file():
        _missing("Debian's Chromium is not installed (apt-get install chromium)")
    from rcr_deploy.benchmarks.web import chromium

    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def site(web_export_dir, tmp_path_factory):
    """The exported folder served on 127.0.0.1 with the photographs beside the page."""
    from rcr_deploy.benchmarks.web import serve_folder

    root = Path(shutil.copytree(web_export_dir / web_export.WEB_DIR, tmp_path_factory.mktemp("site") / "web"))
    images = [ASTRONAUT] + ([EG1800_IMAGES / n for n in EG1800_PICKS] if EG1800_IMAGES.is_dir() else [])
    for image in images:
        shutil.copyfile(image, root / image.name)
    with serve_folder(root) as url:
        yield url, root, images


def _page_mask(browser, url: str) -> np.ndarray:
    from rcr_deploy.benchmarks.web import open_page

    page = open_page(browser, url)
    result = page.evaluate("window.rcrResult")
    page.close()
    return np.frombuffer(base64.b64decode(result["mask"]), np.uint8).reshape(result["height"], result["width"])


def test_page_mask_equals_infer_on_photographs(browser, site, web_export_dir, tmp_path):
    """The page (2 WebAssembly threads, cross-origin isolated) on real photographs gives the mask
    that `rcr-deploy infer --save mask` writes for the same files, on >= 99.5 % of pixels."""
    url, _, images = site
    folder = tmp_path / "images"
    folder.mkdir()
    for image in images:
        shutil.copyfile(image, folder / image.name)
    out = tmp_path / "masks"
    proc = subprocess.run([sys.executable, "-m", "rcr_deploy", "infer", str(folder), "--model", str(web_export_dir / ARTIFACT_NAMES["fp32"]),
                           "--save", "mask", "--out", str(out)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for image in images:
        expected = preprocess.load_image(out / f"{image.stem}_mask.png")[..., 0] > 127
        mask = _page_mask(browser, f"{url}index.html?threads=2&src={image.name}")
        assert mask.shape == expected.shape, image.name
        agreement = (mask.astype(bool) == expected).mean()
        assert agreement >= AGREEMENT, f"{image.name}: {agreement:.4%} of pixels agree with infer"
        assert 0.05 < expected.mean() < 0.95, image.name  # a portrait: neither mask is trivially empty or full


def test_page_stream_feeds_the_previous_mask_as_prior(browser, site, web_export_dir):
    """Three frames of one photo as a stream: each mask is the next frame's prior, as in infer's video loop."""
    url, _, images = site
    rgb = preprocess.load_image(images[-1])
    with OnnxRuntimeRunner(web_export_dir / ARTIFACT_NAMES["fp32"]) as runner:
        segmenter = Segmenter(runner)
        still = segmenter.segment(rgb) > THRESHOLD
        mask = still
        for _ in range(2):
            mask = segmenter.segment(rgb, mask.astype(np.float32)) > THRESHOLD
    assert (mask != still).sum() > 0  # the prior changes this image's mask, so the check below can fail
    page_mask = _page_mask(browser, f"{url}index.html?threads=2&frames=3&src={images[-1].name}").astype(bool)
    assert (page_mask == mask).mean() >= AGREEMENT
    assert (page_mask == mask).mean() > (page_mask == still).mean()  # closer to the stream than to the still


def test_page_refuses_a_model_that_is_not_its_manifests(browser, site):
    """Bytes whose sha256 is not the manifest's never reach onnxruntime-web."""
    from rcr_deploy.benchmarks.web import open_page

    url, root, _ = site
    fp32 = ARTIFACT_NAMES["fp32"]
    data = bytearray((root / fp32).read_bytes())
    data[-1] ^= 1
    (root / "tampered.onnx").write_bytes(bytes(data))
    shutil.copyfile(root / f"{fp32}.json", root / "tampered.onnx.json")
    with pytest.raises(RuntimeError, match="sha256 .* is not the manifest's"):
        open_page(browser, f"{url}index.html?model=tampered.onnx")
