"""ncnn (`export --format ncnn`): `rcrnet[-fp16].ncnn.param` + `.ncnn.bin`, made by pnnx from the FP32 ONNX artifact.

pnnx (PyPI, a self-contained converter binary: it opens the ONNX file and writes its outputs, and
makes no network connection, checked with strace) traces the graph at the export's size. Both files
come from the FP32 ONNX artifact, because pnnx's FP16 is a storage format of its own:

- fp32: `fp16=0`, float32 weights.
- fp16: `fp16=1`, weights stored as float16 (half the `.bin`), widened to float32 as ncnn loads
  them on x86; an ARM CPU with fp16 arithmetic computes in float16.

The graph keeps the depth-wise up-samplers as ncnn's own `DeconvolutionDepthWise`, so the phone
rewrite that TFLite needs is not applied. pnnx also writes its own intermediate files (`.pnnx.*`,
`*_pnnx.py`, `*_ncnn.py`, a simplified ONNX); it runs in a temporary folder, so the export set
holds only the two ncnn files and their manifest. Each file is validated against the FP32 ONNX
artifact on ONNX Runtime (random and real inputs, `TOLERANCES`).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rcr_deploy.artifact import format_files, format_path, read_manifest, write_manifest
from rcr_deploy.errors import BackendUnavailable, ExportError
from rcr_deploy.fileio import sha256_file
from rcr_deploy.reparam import Tolerance
from rcr_deploy.runtime.ncnn_runner import INSTALL, NcnnRunner, require_ncnn
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

from rcr_deploy.exporters import FormatJob
from rcr_deploy.exporters import onnx as onnx_export

#: Each file against the FP32 ONNX artifact: pass when max|a-b| <= atol + rtol * max|reference| and
#: at least the fraction of real-image pixels get the same class. fp32 differs only in kernel order
#: (the study measured 6.7e-6); fp16 weights as the ONNX FP16 (the study: 2.4e-2, 99.997 %).
TOLERANCES: dict[str, tuple[Tolerance, float]] = {
    "fp32": (Tolerance(rtol=1e-3, atol=1e-4), 0.999),
    "fp16": (Tolerance(rtol=3e-2, atol=1e-3), 0.995),
}
#: pnnx's conversion of this model takes about a second; minutes mean it hangs.
PNNX_TIMEOUT_S = 600


def require_pnnx() -> Path:
    """The pnnx converter binary the `pnnx` wheel ships, or `BackendUnavailable` naming the extra."""
    try:
        import pnnx
    except ImportError:
        raise BackendUnavailable(f"--format ncnn needs pnnx; {INSTALL}") from None
    return Path(pnnx.EXEC_PATH)


def convert(onnx: Path, size: int, fp16: bool, param: Path) -> None:
    """pnnx: the ONNX file -> `param` and its weights file beside it (float16 weights with `fp16`).
    Raises `ExportError` with pnnx's last line when it fails."""
    exe = require_pnnx()
    weights = format_files(param, "ncnn")[1]
    with tempfile.TemporaryDirectory(prefix="rcr-pnnx-") as tmp:
        work = Path(tmp)
        (work / "model.onnx").symlink_to(onnx.resolve())
        command = [str(exe), "model.onnx", f"inputshape=[1,4,{size},{size}]", f"fp16={int(fp16)}"]
        try:
            done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ExportError(f"pnnx did not finish converting {onnx.name} in {PNNX_TIMEOUT_S} s; rerun with --debug") from None
        made = work / "model.ncnn.param", work / "model.ncnn.bin"
        if done.returncode != 0 or not all(p.is_file() for p in made):
            last = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()[-1][:200]
            raise ExportError(f"pnnx cannot convert {onnx.name}: {last}; rerun with --debug")
        shutil.move(made[0], param)
        shutil.move(made[1], weights)


def _validated(path: Path, reference: OnnxRuntimeRunner, inputs: dict[str, Any], precision: str) -> onnx_export.Validation:
    with NcnnRunner(path, threads=2) as runner:
        return onnx_export.validated(runner, reference, inputs, TOLERANCES[precision], f"ncnn-{precision}")


def export_format(artifacts: dict[str, Path], job: FormatJob) -> tuple[dict[str, Path], list[dict[str, Any]]]:
    """The format table's exporter entry (rcr_deploy.formats): an ncnn model beside each precision's
    ONNX artifact, converted by pnnx from the FP32 one and validated against it; returns
    precision -> `.ncnn.param` and the validation summaries."""
    require_pnnx()
    require_ncnn()
    fp32_onnx = artifacts["fp32"]
    files: dict[str, Path] = {}
    summaries: list[dict[str, Any]] = []
    with OnnxRuntimeRunner(fp32_onnx) as reference:
        for precision, artifact in tqdm(artifacts.items(), desc="ncnn", unit="model", disable=not job.progress, leave=False):
            param = format_path(artifact, "ncnn")
            convert(fp32_onnx, job.size, precision == "fp16", param)
            # The sidecar first: the runner reads the input size and the weights' hash from it.
            write_manifest(param, _manifest(artifact, fp32_onnx, param, None, None))
            check = _validated(param, reference, job.inputs, precision)
            scores = job.measure(param) if job.measure is not None else None
            write_manifest(param, _manifest(artifact, fp32_onnx, param, check, scores))
            files[precision] = param
            summaries.append(check.summary())
    return files, summaries


def _manifest(
    artifact: Path, source: Path, param: Path, check: onnx_export.Validation | None, scores: dict[str, Any] | None
) -> dict[str, Any]:
    """The ONNX artifact's manifest, for the ncnn model: its blobs' names and fixed shape, its
    validation, its own accuracy row, and an `ncnn` block."""
    from rcr_deploy.exporters.openvino import _own_row

    record = {k: v for k, v in copy.deepcopy(read_manifest(artifact)).items() if k != "artifact"}
    precision = record["precision"]
    weights = format_files(param, "ncnn")[1]
    lines = param.read_text().splitlines()[2:]  # after the magic number and the layer / blob counts
    layers = sorted({line.split()[0] for line in lines if line.strip()})
    names = _io_blobs(lines)
    for key in ("input", "output"):
        shape = [1, *record[key]["shape"][1:]]  # one image per extraction: ncnn's Mat has no batch axis
        record[key] = {**record[key], "name": names[key], "shape": shape, "dynamic_axes": {}}
    if record.get("accuracy"):
        # Another converter's model than the ONNX artifact: its accuracy row is measured on it.
        record["accuracy"] = _own_row(record["accuracy"], precision, scores)
    if check is not None:
        record["validation"] = [*record["validation"], check.summary()]
    for dist in ("pnnx", "ncnn"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            record["tools"][dist] = importlib.metadata.version(dist)
    record["ncnn"] = {
        "source": {"file": source.name, "sha256": sha256_file(source)},
        "weights": {"file": weights.name, "sha256": sha256_file(weights), "bytes": weights.stat().st_size},
        "converter": f"pnnx {source.name} inputshape=[1,{record['input']['shape'][1]},{record['input']['size'][0]},{record['input']['size'][1]}] fp16={int(precision == 'fp16')}",
        "weight_storage": "float16" if precision == "fp16" else "float32",
        "blobs": names,
        "layers": layers,
    }
    return record


def _io_blobs(layers: list[str]) -> dict[str, str]:
    """The input and output blob names of a `.param`'s layer lines (`type name n_bottom n_top
    bottoms... tops... params...`): the Input layer's blob, and the one blob no layer consumes."""
    made, used, given = [], set(), None
    for line in layers:
        fields = line.split()
        if len(fields) < 4:
            continue
        n_bottom, n_top = int(fields[2]), int(fields[3])
        used.update(fields[4 : 4 + n_bottom])
        tops = fields[4 + n_bottom : 4 + n_bottom + n_top]
        made += tops
        given = tops[0] if fields[0] == "Input" else given
    outputs = [b for b in made if b not in used]
    if given is None or len(outputs) != 1:
        raise ExportError(f"pnnx wrote a graph with input {given} and outputs {outputs}; expected one of each; rerun with --debug")
    return {"input": given, "output": outputs[0]}
