"""The browser target (`rcr-deploy export --format web`): a static folder that segments in a page.

    web/index.html          a page: webcam or dropped photo, background blurred or replaced
    web/rcrnet-web.mjs      the ES module to embed in your own page (createSegmenter, composite)
    web/rcrnet-image.mjs    pre- and post-processing as the manifest describes them (no DOM)
    web/rcrnet.onnx(.json)  the validated FP32 artifact and its manifest, byte for byte
    web/ort/                onnxruntime-web's WebAssembly build (SIMD; threads when cross-origin isolated)
    web/serve.py            a standard-library server on 127.0.0.1 that sends the COOP/COEP headers
    web/web.json            what the folder holds: onnxruntime-web version, each file's sha256

onnxruntime-web is an npm package, never downloaded here: it is copied from an installed one, found
by `find_ort_web`. The page is verified in headless Chromium against `rcr-deploy infer` by
tests/test_web.py; FP32 only, since on its WebAssembly backend neither the INT8 nor the FP16
artifact is faster (benchmarks/results/web-wasm.md).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from rcr_deploy.artifact import ARTIFACT_NAMES, manifest_path
from rcr_deploy.errors import RcrError
from rcr_deploy.fileio import sha256_file, write_text_atomic
from rcr_deploy.formats import FORMATS

from rcr_deploy.exporters import FormatJob

#: The folder `export --format web` writes inside the export set (its row in rcr_deploy.formats).
WEB_DIR = FORMATS["web"].folder
PACKAGE = "onnxruntime-web"
#: The version the page is tested with (package.json at the repository root pins it for CI).
TESTED_VERSION = "1.31.1"
#: Set to an onnxruntime-web package folder to take it from there rather than from node_modules/.
ENV_VAR = "RCR_DEPLOY_ORT_WEB"
#: onnxruntime-web's files that the page loads: the WebAssembly-only build (SIMD, threads).
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
#: The page's own files, shipped in the package beside this module.
PAGE_FILES = ("index.html", "rcrnet-web.mjs", "rcrnet-image.mjs", "serve.py", "README.md")
PAGE_SOURCE = Path(__file__).with_name("web_page")
INSTALL_HINT = f"run 'npm install {PACKAGE}@{TESTED_VERSION}' in this folder, or set {ENV_VAR} to an installed {PACKAGE} folder"


def find_ort_web(start: Path | None = None) -> Path:
    """The installed onnxruntime-web package folder: ${ENV_VAR} if set, else
    node_modules/onnxruntime-web in `start` (default: the current folder) or the nearest parent
    that has one (Node's own lookup). Missing or incomplete: `RcrError` naming the fix (exit 2)."""
    given = os.environ.get(ENV_VAR)
    if given:
        candidates = [Path(given)]
    else:
        here = (start or Path.cwd()).resolve()
        candidates = [d / "node_modules" / PACKAGE for d in (here, *here.parents) if (d / "node_modules" / PACKAGE).is_dir()][:1]
    if not candidates:
        raise RcrError(f"--format web: {PACKAGE} not found in node_modules/ here or above; {INSTALL_HINT}")
    package = candidates[0]
    missing = [f for f in ORT_FILES if not (package / "dist" / f).is_file()]
    if missing:
        where = f"{ENV_VAR}={given}" if given else str(package)
        raise RcrError(f"--format web: {where} is not an {PACKAGE} package with dist/{missing[0]}; {INSTALL_HINT}")
    return package


def ort_web_version(package: Path) -> str:
    """The version in an onnxruntime-web folder's package.json ('unknown' when unreadable)."""
    try:
        return str(json.loads((package / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def export_format(artifacts: dict[str, Path], job: FormatJob) -> tuple[dict[str, Path], list[dict[str, Any]]]:
    """The format table's exporter entry (rcr_deploy.formats): the folder beside the staged FP32
    artifact. It adds no validation summary: the page runs in a browser, which tests/test_web.py
    checks in headless Chromium against `rcr-deploy infer`."""
    return {"fp32": write_folder(artifacts["fp32"].parent, find_ort_web())}, []


def write_folder(export_folder: Path, package: Path) -> Path:
    """Write `export_folder/web/` from the FP32 artifact and its sidecar already in `export_folder`
    and the onnxruntime-web files in `package`; returns the folder."""
    web = export_folder / WEB_DIR
    (web / "ort").mkdir(parents=True)
    artifact = export_folder / ARTIFACT_NAMES["fp32"]
    for source in (artifact, manifest_path(artifact)):
        shutil.copyfile(source, web / source.name)
    for name in PAGE_FILES:
        shutil.copyfile(PAGE_SOURCE / name, web / name)
    for name in ORT_FILES:
        shutil.copyfile(package / "dist" / name, web / "ort" / name)
    files = sorted(p for p in web.rglob("*") if p.is_file())
    record: dict[str, Any] = {
        "format": "rcr-deploy-web",
        "model": artifact.name,
        "manifest": manifest_path(artifact).name,
        "onnxruntime_web": {"version": ort_web_version(package), "files": [f"ort/{n}" for n in ORT_FILES]},
        "files": {p.relative_to(web).as_posix(): sha256_file(p) for p in files},
    }
    write_text_atomic(web / "web.json", json.dumps(record, indent=2))
    return web
