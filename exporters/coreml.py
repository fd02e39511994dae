"""Core ML (`export --format coreml`): `rcrnet[-fp16].mlpackage`, an ML program for iOS 16 / macOS 13 and later.

coremltools reads PyTorch, not ONNX, so it converts the checkpoint the FP32 ONNX artifact records
(its sha256 checked), in deploy form and traced at the export's size. Core ML has grouped
transposed convolutions, so the phone rewrite that TFLite needs is not applied.

- fp16 (Core ML's own default, what the Neural Engine runs): FP16 compute and weights.
- fp32: FP32 compute (CPU and GPU only on a device).

Input `input` (1 x C x H x W float32, RGB normalised as the manifest says, the prior as channel 3)
and output `logits` (1 x 2 x H x W float32) stay float32 at the boundary; casts inside the
program carry FP16 compute.

**Never run.** Core ML predicts on macOS and iOS only, so nothing here compares its outputs with
anything. What the export checks instead (`inspect` and `check_program`), and fails on: the
program's one input and one output (names, shapes, dtypes), its op set and the counts of
convolutions against the ONNX artifact's graph, and the precision every convolution computes in.
The manifest goes into the model's `user_defined_metadata` (`MANIFEST_METADATA_KEY`) and beside it.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rcr_deploy.artifact import MANIFEST_METADATA_KEY, check_own_manifest, format_path, manifest_path, read_manifest
from rcr_deploy.errors import BackendUnavailable, ExportError, VerificationError
from rcr_deploy.fileio import sha256_file, write_text_atomic

from rcr_deploy.exporters import FormatJob
from rcr_deploy.exporters.tflite import _quiet, recorded_deploy_form

INSTALL = "pip install 'rcr-deploy[coreml]'"
#: The oldest OS that runs the program: iOS 16 / macOS 13 (ML program opset CoreML6).
DEPLOYMENT_TARGET = "iOS16"
#: The MIL ops a converted RCRNet may hold (coremltools 9, checked once by hand): anything else
#: means the converter took another path than the one this export was checked on.
ALLOWED_OPS = frozenset({"const", "cast", "conv", "conv_transpose", "relu", "add", "mul", "avg_pool", "concat", "reduce_mean", "sigmoid"})
#: MIL ops that must equal an ONNX op's count in the artifact's graph (one convolution each).
SAME_AS_ONNX = {"conv": "Conv", "conv_transpose": "ConvTranspose"}
COMPUTE = {"fp32": "float32", "fp16": "float16"}


def require_coremltools() -> Any:
    """The `coremltools` module, or `BackendUnavailable` naming the extra."""
    try:
        with _quiet():  # its import logs a line per native library it cannot load off macOS
            import coremltools
    except ImportError:
        raise BackendUnavailable(f"--format coreml needs coremltools; {INSTALL}") from None
    return coremltools


def convert(model: Any, size: int, in_channels: int, precision: str) -> Any:
    """The `MLModel` (ML program) of `model` traced at `size`, computing in `precision`."""
    import numpy as np
    import torch

    ct = require_coremltools()
    x = torch.zeros(1, in_channels, size, size)
    try:
        with _quiet(), torch.no_grad():
            return ct.convert(
                torch.jit.trace(model, x),
                inputs=[ct.TensorType(name="input", shape=tuple(x.shape), dtype=np.float32)],
                outputs=[ct.TensorType(name="logits", dtype=np.float32)],
                convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
            )
    except Exception as e:  # coremltools raises many types; one line is what the user needs
        raise ExportError(f"coremltools conversion failed: {str(e).strip().splitlines()[-1][:200]}; rerun with --debug") from e


def inspect(spec: Any) -> dict[str, Any]:
    """What a Core ML spec says about itself: its inputs and outputs (name, shape, dtype), the
    count of each op in its program, and the dtypes the convolutions compute in."""
    from coremltools.proto import FeatureTypes_pb2, MIL_pb2

    def features(items: Any) -> list[dict[str, Any]]:
        array = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType
        return [
            {"name": f.name, "shape": [int(d) for d in f.type.multiArrayType.shape], "dtype": array.Name(f.type.multiArrayType.dataType).lower()}
            for f in items
        ]

    ops: collections.Counter[str] = collections.Counter()
    conv_dtypes: set[str] = set()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                ops[op.type] += 1
                if op.type in SAME_AS_ONNX:
                    conv_dtypes |= {MIL_pb2.DataType.Name(o.type.tensorType.dataType).lower() for o in op.outputs}
    return {
        "inputs": features(spec.description.input),
        "outputs": features(spec.description.output),
        "ops": dict(sorted(ops.items())),
        "conv_dtypes": sorted(conv_dtypes),
        "spec_version": int(spec.specificationVersion),
    }


def check_program(program: dict[str, Any], onnx_record: dict[str, Any], precision: str, path: Path) -> dict[str, Any]:
    """The export's validation of a model it cannot run: `program` (from `inspect`) against the ONNX
    artifact's manifest. Returns the summary; `VerificationError` names the first mismatch."""
    size, channels = onnx_record["input"]["size"], onnx_record["input"]["shape"][1]
    expected = {
        "inputs": [{"name": "input", "shape": [1, channels, *size], "dtype": "float32"}],
        "outputs": [{"name": "logits", "shape": [1, len(onnx_record["output"]["classes"]), *size], "dtype": "float32"}],
        "conv_dtypes": [COMPUTE[precision]],
    }
    wrong = [f"{key} {program[key]} (expected {want})" for key, want in expected.items() if program[key] != want]
    unknown = sorted(set(program["ops"]) - ALLOWED_OPS)
    if unknown:
        wrong.append(f"ops outside the checked set: {', '.join(unknown)}")
    for mil, onnx_op in SAME_AS_ONNX.items():
        if program["ops"].get(mil, 0) != onnx_record["graph_ops"].get(onnx_op, 0):
            wrong.append(f"{program['ops'].get(mil, 0)} {mil} ops, the ONNX graph has {onnx_record['graph_ops'].get(onnx_op, 0)} {onnx_op}")
    if wrong:
        raise VerificationError(f"{path.name}: the converted program is not the model exported: {'; '.join(wrong)}; rerun with --debug")
    return {
        "stage": f"coreml-program-{precision}",
        "passed": True,
        "ran": False,
        "reference": "the ONNX artifact's manifest (graph_ops, input and output records)",
        "checked": "input and output names, shapes and dtypes; op set; conv and conv_transpose counts; compute dtype "
        "(the program itself: the coreml block)",
    }


def package_sha256(package: Path) -> str:
    """One sha256 for a `.mlpackage` folder: over each file's relative path and sha256, by path."""
    digest = hashlib.sha256()
    for f in sorted(p for p in package.rglob("*") if p.is_file()):
        digest.update(f"{f.relative_to(package).as_posix()}\0{sha256_file(f)}\n".encode())
    return digest.hexdigest()


def export_format(artifacts: dict[str, Path], job: FormatJob) -> tuple[dict[str, Path], list[dict[str, Any]]]:
    """The format table's exporter entry (rcr_deploy.formats): an `.mlpackage` beside each
    precision's ONNX artifact, converted from the checkpoint it records and checked (not run);
    returns precision -> `.mlpackage` and the checks' summaries."""
    ct = require_coremltools()
    deploy = recorded_deploy_form(artifacts["fp32"])
    files: dict[str, Path] = {}
    summaries: list[dict[str, Any]] = []
    for precision, artifact in tqdm(artifacts.items(), desc="coreml", unit="model", disable=not job.progress, leave=False):
        onnx_record = read_manifest(artifact)
        model = convert(deploy, job.size, deploy.in_channels, precision)
        package = format_path(artifact, "coreml")
        program = inspect(model.get_spec())
        check = check_program(program, onnx_record, precision, package)
        record = _manifest(onnx_record, artifacts["fp32"], check, program, precision)
        model.user_defined_metadata[MANIFEST_METADATA_KEY] = json.dumps(record)
        model.short_description = "RCRNet portrait segmentation (rcr-deploy): input 1xCxHxW normalised RGB + prior, output logits"
        with _quiet():
            model.save(str(package))
        saved = ct.models.MLModel(str(package), skip_model_load=True)  # what a device will read back
        if json.loads(saved.user_defined_metadata[MANIFEST_METADATA_KEY]) != record:
            raise ExportError(f"{package.name}: the manifest in its metadata does not read back; rerun with --debug")
        sidecar = {**record, "artifact": {"file": package.name, "sha256": package_sha256(package)}}
        write_text_atomic(manifest_path(package), json.dumps(check_own_manifest(sidecar, package.name), indent=2))
        files[precision] = package
        summaries.append(check)
    return files, summaries


def _manifest(onnx_record: dict[str, Any], fp32_onnx: Path, check: dict[str, Any], program: dict[str, Any], precision: str) -> dict[str, Any]:
    """The ONNX artifact's manifest, for the `.mlpackage`: fixed batch-1 records, no accuracy row of
    its own (it never ran), the program check, and a `coreml` block."""
    import coremltools

    record = {k: v for k, v in copy.deepcopy(onnx_record).items() if k != "artifact"}
    for key in ("input", "output"):
        record[key] = {**record[key], "shape": [1, *record[key]["shape"][1:]], "dynamic_axes": {}}
    # Its accuracy is unknown: the ONNX artifact's rows are another runtime's numbers.
    record["accuracy"] = None
    record["validation"] = [*record["validation"], check]
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        record["tools"]["coremltools"] = importlib.metadata.version("coremltools")
    record["coreml"] = {
        "source": {"file": fp32_onnx.name, "checkpoint": record["checkpoint"]["sha256"]},
        "converter": f"coremltools {coremltools.__version__} ct.convert(torch.jit.trace(deploy form)), convert_to=mlprogram",
        "compute_precision": COMPUTE[precision],
        "deployment_target": DEPLOYMENT_TARGET,
        "program": program,
        "ran": False,
    }
    return record
