"""ONNX artifact -> OpenVINO IR (`.xml` + `.bin`) per precision, validated against the ONNX it came from.

The FP32 and FP16 IRs are their ONNX artifacts as OpenVINO reads them, weights saved as they are
(`compress_to_fp16=False`: an FP32 IR stays FP32). The INT8 IR is the FP32 IR quantised by NNCF
post-training quantisation on the export's calibration images: measured against OpenVINO reading
the INT8 Q/DQ artifact, it ran as fast or faster and agreed better with FP32 (docs/cpu-engines.md).
Like the Q/DQ artifact it keeps the stem float (`export --float-stem`), and its weights use 7 bits
(NNCF's overflow fix on every layer): x86 CPUs without VNNI clip u8 x s8 pair sums to 16 bits, and
on one the full 8-bit IR lost 0.58 points of CCP's mIoU where the 7-bit one lost none
(docs/cpu-engines.md, "CPUs without VNNI"); with 7 bits every x86 CPU computes the same masks.
Each IR is validated against the ONNX artifact it was made from (FP32 for the INT8 IR).

Every IR carries the ONNX artifact's manifest plus an `openvino` record (source, weights file,
versions) and its own validation, in its rt_info (`artifact.IR_RT_INFO_KEY`) and in the `<name>.xml.json` sidecar.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

from rcr_deploy.artifact import IR_RT_INFO_KEY, format_path, read_manifest, write_manifest
from rcr_deploy.errors import ExportError, VerificationError
from rcr_deploy.fileio import sha256_file
from rcr_deploy.reparam import Tolerance
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from rcr_deploy.runtime.openvino_runner import OpenVINORunner, require_openvino

from rcr_deploy.exporters import FormatJob
from rcr_deploy.exporters import onnx as onnx_export
from rcr_deploy.exporters.precision import stem_convs

#: IR (OpenVINO, f32 inference precision) against its source ONNX on ONNX Runtime, as in
#: `pipeline.TOLERANCES`: max|a-b| <= atol + rtol * max|reference| and the pixel agreement on real
#: images. fp32/fp16 differ only in kernel order. The INT8 IR is checked against FP32, and INT8
#: logits move a lot where the mask barely does (the same holds for the INT8 ONNX against FP32),
#: so its logit bound only catches a broken graph and the agreement is the gate.
TOLERANCES: dict[str, tuple[Tolerance, float]] = {
    "fp32": (Tolerance(rtol=1e-3, atol=1e-4), 0.999),
    "fp16": (Tolerance(rtol=3e-3, atol=1e-3), 0.999),
    "int8": (Tolerance(rtol=0.5, atol=0.5), 0.95),
}


def _validated(xml: Path, source: Path, inputs: dict[str, np.ndarray], precision: str) -> onnx_export.Validation:
    tol, agreement = TOLERANCES[precision]
    runner, reference = OpenVINORunner(xml, hint="latency", precision="f32"), OnnxRuntimeRunner(source)
    try:
        check = onnx_export.validate_openvino_int8 if precision == "int8" else onnx_export.validate
        result = check(runner, reference, inputs, tol, agreement)
    finally:
        runner.close()
    result.stage = f"openvino-{precision}"
    if not result:
        s = result.summary()
        raise VerificationError(
            f"{xml.name} differs from {source.name} on ONNX Runtime beyond tolerance: max abs {s['max_abs']:.3e} "
            f"(rtol {tol.rtol}, atol {tol.atol}) on {s['worst']['input']}, mask agreement {s['mask_agreement']} "
            f"(needs {result.min_mask_agreement})"
        )
    return result


def _ops_of(model: Any, convs: Sequence[str]) -> list[str]:
    """The OpenVINO (Group)Convolutions that OpenVINO's ONNX frontend made from the ONNX Convs
    `convs` (named `<conv>/WithoutBiases` when a bias was split off); raises `ExportError` if
    one is missing, since NNCF would then quantise what was to stay float."""
    ops = [
        op.get_friendly_name() for op in model.get_ops()
        if op.get_type_name() in ("Convolution", "GroupConvolution") and op.get_friendly_name().split("/")[0] in convs
    ]  # fmt: skip
    missing = set(convs) - {name.split("/")[0] for name in ops}
    if missing:
        raise ExportError(f"the OpenVINO model has no convolution for {sorted(missing)[0]} of the float stem; export with --no-float-stem")
    return ops


def quantize_nncf(model: Any, calib: np.ndarray, progress: bool = True, float_convs: Sequence[str] = ()) -> Any:
    """NNCF post-training quantisation of an OpenVINO model on preprocessed calibration images
    (N x C x H x W): symmetric int8 (the PERFORMANCE preset), placed for the CPU plugin, 7-bit
    weights (the module docstring says why), the ONNX Convs `float_convs` left float."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    dataset = nncf.Dataset([calib[i : i + 1] for i in range(len(calib))])
    ignored = nncf.IgnoredScope(names=_ops_of(model, float_convs))
    nncf.set_log_level(logging.ERROR)
    # NNCF draws its progress bars on stdout, which `export --json` keeps for its JSON.
    try:
        with contextlib.redirect_stdout(sys.stderr if progress else io.StringIO()):
            return nncf.quantize(
                model, dataset, preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU,
                subset_size=len(calib), ignored_scope=ignored,
                advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
            )  # fmt: skip
    except Exception as e:  # NNCF raises many types; one line is what the user needs
        raise ExportError(f"NNCF quantisation failed ({str(e).strip().splitlines()[-1][:200]}); rerun with --debug") from e


def export_ir(
    artifact: Path,
    inputs: dict[str, np.ndarray],
    source: Path | None = None,
    calib: np.ndarray | None = None,
    progress: bool = True,
    measure: Callable[[Path], dict[str, Any]] | None = None,
    float_convs: Sequence[str] = (),
) -> tuple[Path, dict[str, Any]]:
    """Write the IR of `artifact` beside it, made from `source` (default: `artifact` itself), NNCF
    quantised on `calib` when given with the ONNX Convs `float_convs` left float; validate it against
    `source` on ONNX Runtime, and write the artifact's manifest, extended, into the IR and its
    sidecar (an IR made from another source gets its own accuracy row from `measure`, or none).
    Returns the `.xml` and the validation summary. Raises `ExportError` if OpenVINO cannot convert
    it and `VerificationError` beyond tolerance."""
    ov = require_openvino()
    source = source or artifact
    xml = format_path(artifact, "openvino")
    try:
        model = ov.convert_model(str(source))
    except Exception as e:  # OpenVINO's frontends raise several types; one line is what the user needs
        raise ExportError(f"{source}: OpenVINO cannot convert it ({str(e).strip().splitlines()[-1][:200]}); rerun with --debug") from e
    if calib is not None:
        model = quantize_nncf(model, calib, progress, float_convs)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    record = {k: v for k, v in read_manifest(artifact).items() if k != "artifact"}
    precision = record["precision"]
    if source != artifact and record.get("accuracy"):
        # An NNCF IR is another model than the ONNX artifact whose accuracy table it inherits:
        # its own row is measured on it (with --val), never copied.
        record["accuracy"] = _own_row(record["accuracy"], precision, measure(xml) if measure else None)
    summary = _validated(xml, source, inputs, precision).summary()
    record["validation"] = [*record["validation"], summary]
    record["tools"] = {**record["tools"], "openvino": ov.__version__.split("-")[0]}
    if calib is not None:
        import nncf

        record["tools"]["nncf"] = nncf.__version__
    record["openvino"] = {
        "source": {"file": source.name, "sha256": sha256_file(source)},
        "quantization": f"NNCF post-training, PERFORMANCE preset (symmetric int8, 7-bit weights), CPU target, "
        f"{len(calib)} calibration images, {len(float_convs)} convolutions float"
        if calib is not None
        else None,
        "weights": {"file": xml.with_suffix(".bin").name, "sha256": sha256_file(xml.with_suffix(".bin"))},
        "runtime_hints": "rcr-deploy sets PERFORMANCE_HINT (LATENCY for one image or video, THROUGHPUT for "
        "folders and batches) and INFERENCE_PRECISION_HINT f32 (bf16 only when asked)",
    }
    model.set_rt_info(json.dumps(record), list(IR_RT_INFO_KEY))
    ov.save_model(model, str(xml), compress_to_fp16=False)
    write_manifest(xml, record)
    return xml, summary


def _own_row(accuracy: dict[str, Any], precision: str, scores: dict[str, Any] | None) -> dict[str, Any]:
    """The accuracy table with `precision`'s row replaced by `scores` of this IR (dropped without)."""
    fp32 = next(r for r in accuracy["rows"] if r["precision"] == "fp32")
    rows = [r for r in accuracy["rows"] if r["precision"] != precision]
    if scores is not None:
        own = {"precision": precision, **scores}
        own["fg_miou_vs_fp32"] = own["fg_miou"] - fp32["fg_miou"]
        own["class_miou_vs_fp32"] = own["class_miou"] - fp32["class_miou"]
        rows.append(own)
    return {**accuracy, "rows": rows}


def export_format(artifacts: dict[str, Path], job: FormatJob) -> tuple[dict[str, Path], list[dict[str, Any]]]:
    """The format table's exporter entry (rcr_deploy.formats): `export_ir` for every precision's
    ONNX artifact, the INT8 one by NNCF from the FP32 one on `job.calib`; returns precision -> `.xml`
    and the validation summaries. `job.measure` scores the NNCF IR, which is not its ONNX
    artifact's model."""
    irs, summaries = {}, []
    for precision, artifact in tqdm(artifacts.items(), desc="openvino", unit="IR", disable=not job.progress, leave=False):
        if precision == "int8":
            stem = stem_convs(onnx.load(str(artifacts["fp32"])), (job.size, job.size)) if job.float_stem else []
            irs[precision], summary = export_ir(
                artifact, job.inputs, source=artifacts["fp32"], calib=job.calib, progress=job.progress, measure=job.measure,
                float_convs=stem,
            )  # fmt: skip
        else:
            irs[precision], summary = export_ir(artifact, job.inputs)
        summaries.append(summary)
    return irs, summaries
