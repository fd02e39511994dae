"""ONNX artifact -> OpenVINO IR (`.xml` + `.bin`) per precision, validated against the ONNX it came from.

Each IR is the ONNX artifact as OpenVINO reads it, weights saved as they are (`compress_to_fp16=False`:
an FP32 IR stays FP32). The INT8 IR is the INT8 Q/DQ artifact: OpenVINO turns each Q/DQ pair into
a FakeQuantize and runs the quantised convolutions in int8, so one calibration serves ONNX Runtime,
TensorRT and OpenVINO alike (docs/cpu-engines.md says why this, not NNCF, is what ships).

Every IR carries the ONNX artifact's manifest plus an `openvino` record (source, weights file,
versions) and its own validation, in its rt_info (`RT_INFO_KEY`) and in the `<name>.xml.json` sidecar.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rcr_deploy.errors import ExportError, VerificationError
from rcr_deploy.fileio import sha256_file
from rcr_deploy.reparam import Tolerance
from rcr_deploy.runtime import manifest_path
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from rcr_deploy.runtime.openvino_runner import RT_INFO_KEY, OpenVINORunner, require_openvino

from rcr_deploy.exporters import manifest as manifests
from rcr_deploy.exporters import onnx as onnx_export

#: IR (OpenVINO, f32 inference precision) against the ONNX artifact on ONNX Runtime, as in
#: `pipeline.TOLERANCES`: max|a-b| <= atol + rtol * max|reference| and the pixel agreement on real
#: images. fp32/fp16 differ only in kernel order. INT8 differs more: each runtime fuses and rounds
#: the Q/DQ graph its own way (docs/cpu-engines.md records the measured spread), so its logit bound
#: only catches a broken conversion and the agreement is the gate.
TOLERANCES: dict[str, tuple[Tolerance, float]] = {
    "fp32": (Tolerance(rtol=1e-3, atol=1e-4), 0.999),
    "fp16": (Tolerance(rtol=3e-3, atol=1e-3), 0.999),
    "int8": (Tolerance(rtol=0.5, atol=0.5), 0.95),
}


def ir_path(onnx_artifact: Path) -> Path:
    """`rcrnet-int8.onnx` -> `rcrnet-int8.xml` (its weights are the `.bin` beside it)."""
    return onnx_artifact.with_suffix(".xml")


def ir_files(xml: Path) -> list[Path]:
    """The files that make up one IR artifact: the graph, its weights and its manifest."""
    return [xml, xml.with_suffix(".bin"), manifest_path(xml)]


def _validated(xml: Path, source: Path, inputs: dict[str, np.ndarray], precision: str) -> onnx_export.Validation:
    tol, agreement = TOLERANCES[precision]
    runner, reference = OpenVINORunner(xml, hint="latency", precision="f32"), OnnxRuntimeRunner(source)
    try:
        result = onnx_export.validate(runner, reference, inputs, tol, agreement)
    finally:
        runner.close()
    result.stage = f"openvino-{precision}"
    if not result:
        s = result.summary()
        raise VerificationError(
            f"{xml.name} differs from {source.name} on ONNX Runtime beyond tolerance: max abs {s['max_abs']:.3e} "
            f"(rtol {tol.rtol}, atol {tol.atol}) on {s['worst']['input']}, mask agreement {s['mask_agreement']} "
            f"(needs {agreement})"
        )
    return result


def export_ir(source: Path, inputs: dict[str, np.ndarray]) -> tuple[Path, dict[str, Any]]:
    """Convert one ONNX artifact (with its manifest sidecar) to an IR beside it, validate the IR
    against it, and write the extended manifest into the IR and its sidecar. Returns the `.xml`
    and the validation summary. Raises `ExportError` if OpenVINO cannot convert it and
    `VerificationError` beyond tolerance."""
    ov = require_openvino()
    xml = ir_path(source)
    try:
        model = ov.convert_model(str(source))
    except Exception as e:  # OpenVINO's frontends raise several types; one line is what the user needs
        raise ExportError(f"{source}: OpenVINO cannot convert it ({str(e).strip().splitlines()[-1][:200]}); rerun with --debug") from e
    ov.save_model(model, str(xml), compress_to_fp16=False)
    record = {k: v for k, v in manifests.read(source).items() if k != "artifact"}
    precision = record["precision"]
    summary = _validated(xml, source, inputs, precision).summary()
    record["validation"] = [*record["validation"], summary]
    record["tools"] = {**record["tools"], "openvino": ov.__version__.split("-")[0]}
    record["openvino"] = {
        "source": {"file": source.name, "sha256": sha256_file(source)},
        "weights": {"file": xml.with_suffix(".bin").name, "sha256": sha256_file(xml.with_suffix(".bin"))},
        "runtime_hints": "rcr-deploy sets PERFORMANCE_HINT (LATENCY for one image or video, THROUGHPUT for "
        "folders and batches) and INFERENCE_PRECISION_HINT f32 (bf16 only when asked)",
    }
    model.set_rt_info(json.dumps(record), RT_INFO_KEY)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    manifests.write_sidecar(xml, record)
    return xml, summary


def export_irs(
    artifacts: dict[str, Path], inputs: dict[str, np.ndarray], progress: bool = True
) -> tuple[dict[str, Path], list[dict[str, Any]]]:
    """`export_ir` for every precision's ONNX artifact; returns precision -> `.xml` and the summaries."""
    irs, summaries = {}, []
    for precision, source in tqdm(artifacts.items(), desc="openvino", unit="IR", disable=not progress, leave=False):
        irs[precision], summary = export_ir(source, inputs)
        summaries.append(summary)
    return irs, summaries
