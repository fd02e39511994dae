"""TFLite / LiteRT (`export --format tflite`): a `.tflite` per precision, NHWC, validated against the FP32 ONNX artifact.

The converter is litert-torch (Google's PyTorch -> LiteRT converter, no TensorFlow): it converts
the deploy form of the checkpoint the ONNX artifact records (its sha256 checked), after the
exact phone rewrite (exporters/rewrite.py: TFLite has no grouped TRANSPOSE_CONV, so each
depth-wise up-sampler would become one op per channel), wrapped so the file's input is
1 x H x W x C and its output 1 x H x W x 2, as Android and iOS code hands camera frames over.
The prior channel is kept as the input's last channel.

- fp32: as converted.
- fp16: the FP32 file with its weights stored as float16 (ai-edge-quantizer FLOAT_CASTING: a
  DEQUANTIZE op per weight; XNNPACK computes in float32, or float16 where the CPU has it).
- int8: full-integer, PT2E post-training quantisation (litert-torch's XNNPACK quantizer:
  symmetric per-channel int8 weights, int8 activations calibrated with MinMax on the export's
  --calib images, like the ONNX INT8). Input and output are int8 too; their scale and zero point
  are in the file and in the manifest's `tflite` block.

Each file is validated against the FP32 ONNX artifact on ONNX Runtime (random and real inputs,
`TOLERANCES`), and carries the ONNX artifact's manifest, with NHWC input and output records, its
own validation and a `tflite` block, in its metadata (`MANIFEST_METADATA_KEY`) and sidecar.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rcr_deploy.artifact import MANIFEST_METADATA_KEY, format_path, read_manifest, write_manifest
from rcr_deploy.checkpoint import load_checkpoint
from rcr_deploy.errors import BackendUnavailable, ExportError, RcrError
from rcr_deploy.fileio import atomic_path, sha256_file
from rcr_deploy.reparam import Tolerance, reparameterize
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from rcr_deploy.runtime.tflite_runner import INSTALL, TFLiteRunner

from rcr_deploy.exporters import FormatJob
from rcr_deploy.exporters import onnx as onnx_export
from rcr_deploy.exporters.rewrite import rewrite, verify_rewrite

#: Each file against the FP32 ONNX artifact: pass when max|a-b| <= atol + rtol * max|reference| and
#: at least the fraction of real-image pixels get the same class. fp32 differs only in kernel
#: order (measured 1e-5 at 224); fp16 weights as the ONNX FP16; int8 as the ONNX INT8 (its logit
#: bound only catches a broken graph, the pixel agreement is the gate).
TOLERANCES: dict[str, tuple[Tolerance, float]] = {
    "fp32": (Tolerance(rtol=1e-3, atol=1e-4), 0.999),
    "fp16": (Tolerance(rtol=3e-2, atol=1e-3), 0.995),
    "int8": onnx_export.TOLERANCES["int8"],
}
TOOLS = ("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "litert-converter", "torchao")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """litert-torch prints progress lines to stdout and many warnings; keep the CLI's output ours."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger().setLevel(level)


def _require() -> Any:
    try:
        with _quiet():
            import litert_torch
    except ImportError:
        raise BackendUnavailable(f"--format tflite needs litert-torch; {INSTALL}") from None
    return litert_torch


def recorded_deploy_form(onnx_fp32: Path) -> torch.nn.Module:
    """The checkpoint the ONNX artifact records (sha256 checked), in deploy form: what a converter
    that reads PyTorch, not ONNX, starts from (litert-torch here, coremltools)."""
    recorded = read_manifest(onnx_fp32)["checkpoint"]
    ckpt = load_checkpoint(Path(recorded["path"]))
    if ckpt.sha256 != recorded["sha256"]:
        raise RcrError(f"{recorded['path']}: changed since {onnx_fp32.name} was exported from it; export again")
    return ckpt.model.eval() if ckpt.form == "deploy" else reparameterize(ckpt.model)


def phone_model(onnx_fp32: Path, size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """`recorded_deploy_form`, rewritten for phones and verified against the deploy form; returns
    it and the rewrite's check summary."""
    deploy = recorded_deploy_form(onnx_fp32)
    phone, replaced = rewrite(deploy)
    check = verify_rewrite(deploy, phone, (size, size))
    check["replaced"] = replaced
    return phone, check


def _nhwc(model: torch.nn.Module) -> torch.nn.Module:
    return _require().to_channel_last_io(model, args=[0], outputs=[0]).eval()


def convert_fp32(model: torch.nn.Module, size: int) -> bytes:
    """The NHWC FP32 flatbuffer of `model` (NCHW in, NCHW logits out)."""
    litert_torch = _require()
    sample = (torch.zeros(1, size, size, model.in_channels),)
    try:
        with _quiet(), torch.no_grad():
            return bytes(litert_torch.convert(_nhwc(model), sample).model_content())
    except Exception as e:  # the converter raises many types; one line is what the user needs
        raise ExportError(f"litert-torch conversion failed: {str(e).strip().splitlines()[-1][:200]}; rerun with --debug") from e


def to_fp16_weights(fp32: bytes) -> bytes:
    """The FP32 flatbuffer with every conv / fully-connected weight stored as float16."""
    from ai_edge_quantizer import qtyping, quantizer

    qt = quantizer.Quantizer(fp32)
    qt.update_quantization_recipe(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING,
        op_config=qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
            compute_precision=qtyping.ComputePrecision.FLOAT,
            explicit_dequantize=True,
        ),
    )
    try:
        with _quiet():
            return bytes(qt.quantize().quantized_model)
    except Exception as e:
        raise ExportError(f"float16 weight conversion failed: {str(e).strip().splitlines()[-1][:200]}; rerun with --debug") from e


def convert_int8(model: torch.nn.Module, calib: np.ndarray, progress: bool = True) -> bytes:
    """Full-integer INT8 (PT2E, XNNPACK quantizer, MinMax activations) calibrated on `calib`
    (N x C x H x W preprocessed images): int8 weights, activations, input and output."""
    litert_torch = _require()
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    # MinMax like the ONNX INT8 (`--calib-method minmax`), not the default histogram observer,
    # which is several times slower per image and made no measurable difference here.
    activation = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    config = dataclasses.replace(config, input_activation=activation, output_activation=activation)
    quantizer = PT2EQuantizer().set_global(config)
    nhwc = np.ascontiguousarray(calib.transpose(0, 2, 3, 1))
    sample = (torch.from_numpy(nhwc[:1]),)
    try:
        with _quiet():
            graph = prepare_pt2e(torch.export.export(_nhwc(model), sample).module(), quantizer)
        with torch.no_grad():
            for i in tqdm(range(len(nhwc)), desc="tflite int8 calibration", unit="img", disable=not progress, leave=False):
                graph(torch.from_numpy(nhwc[i : i + 1]))
        with _quiet():
            graph = convert_pt2e(graph, fold_quantize=False)
            return bytes(litert_torch.convert(graph, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer)).model_content())
    except Exception as e:
        raise ExportError(f"litert-torch INT8 conversion failed: {str(e).strip().splitlines()[-1][:200]}; rerun with --debug") from e


def embed(flatbuffer: bytes, manifest: dict[str, Any]) -> bytes:
    """The flatbuffer with `manifest` as JSON in its metadata under `MANIFEST_METADATA_KEY`
    (replacing an older one), as TFLite's metadata tools store theirs: a named buffer."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    for buffer in model.buffers:
        # ai-edge-quantizer appends weights after the flatbuffer (offset, size); a repacked
        # flatbuffer ends elsewhere, so take them inline (the model is far below the 2 GiB limit).
        if (buffer.offset or 0) > 1:
            buffer.data = np.frombuffer(flatbuffer[buffer.offset : buffer.offset + buffer.size], dtype=np.uint8)
            buffer.offset = buffer.size = 0
    model.metadata = [m for m in (model.metadata or []) if m.name != MANIFEST_METADATA_KEY.encode()]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = MANIFEST_METADATA_KEY, len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(flatbuffer) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _io_records(record: dict[str, Any], runner: TFLiteRunner) -> dict[str, Any]:
    """The ONNX manifest's input and output records, rewritten for the file's NHWC tensors."""
    details = {"input": runner._in, "output": runner._out}
    out = {}
    for key, d in details.items():
        r = {**record[key], "name": d["name"], "layout": "NHWC", "dynamic_axes": {}}
        r["shape"] = [int(s) for s in d["shape"]]
        r["dtype"] = np.dtype(d["dtype"]).name
        out[key] = r
    out["output"]["postprocess"] = (
        "person probability = softmax(logits, axis=-1)[..., classes.index('person')] in float32 (dequantise int8 first: "
        "(q - zero_point) * scale, tflite.quantization); the rest as for the ONNX artifact: cv2.resize the float32 "
        "probability to side x side (INTER_LINEAR), then crop [top:top+h, left:left+w]"
    )
    return out


def _quantization(d: dict[str, Any]) -> dict[str, float] | None:
    if np.dtype(d["dtype"]) == np.float32:
        return None
    scale, zero = d["quantization"]
    return {"scale": float(scale), "zero_point": int(zero)}


def _validated(path: Path, reference: OnnxRuntimeRunner, inputs: dict[str, np.ndarray], precision: str) -> onnx_export.Validation:
    with TFLiteRunner(path, threads=2) as runner:
        return onnx_export.validated(runner, reference, inputs, TOLERANCES[precision], f"tflite-{precision}")


def export_format(artifacts: dict[str, Path], job: FormatJob) -> tuple[dict[str, Path], list[dict[str, Any]]]:
    """The format table's exporter entry (rcr_deploy.formats): a `.tflite` beside each precision's
    ONNX artifact, each made from the phone form of the checkpoint and validated against the FP32
    ONNX artifact; returns precision -> `.tflite` and the summaries (the rewrite's check first)."""
    _require()
    fp32_onnx = artifacts["fp32"]
    phone, rewrite_check = phone_model(fp32_onnx, job.size)
    summaries: list[dict[str, Any]] = [rewrite_check]
    files: dict[str, Path] = {}
    fp32_bytes = None
    with OnnxRuntimeRunner(fp32_onnx) as reference:
        for precision, artifact in tqdm(artifacts.items(), desc="tflite", unit="file", disable=not job.progress, leave=False):
            if precision == "int8":
                if job.calib is None:
                    raise RcrError("--format tflite with INT8 needs calibration images: pass --calib DIR")
                flatbuffer = convert_int8(phone, job.calib, job.progress)
                quantization = f"full-integer int8 (PT2E, XNNPACK quantizer, per-channel weights, MinMax), {len(job.calib)} calibration images"
            else:
                fp32_bytes = fp32_bytes or convert_fp32(phone, job.size)
                flatbuffer = fp32_bytes if precision == "fp32" else to_fp16_weights(fp32_bytes)
                quantization = None if precision == "fp32" else "float16 weights (ai-edge-quantizer FLOAT_CASTING), float32 compute"
            path = format_path(artifact, "tflite")
            _write(path, flatbuffer)
            check = _validated(path, reference, job.inputs, precision)
            probe = next(iter(job.inputs.values()))[:1]
            with TFLiteRunner(path, threads=1) as runner:
                validated = runner.infer(probe)
            record = _manifest(artifact, path, flatbuffer, check, rewrite_check, quantization, job)
            _write(path, embed(flatbuffer, record))
            with TFLiteRunner(path, threads=1) as runner:  # the manifest is metadata only: the same function, bit for bit
                if not np.array_equal(runner.infer(probe), validated):
                    raise ExportError(f"{path.name}: embedding the manifest changed the model's output; rerun with --debug")
            write_manifest(path, record)
            files[precision] = path
            summaries.append(check.summary())
    return files, summaries


def _manifest(
    artifact: Path, path: Path, flatbuffer: bytes, check: onnx_export.Validation, rewrite_check: dict[str, Any],
    quantization: str | None, job: FormatJob,
) -> dict[str, Any]:
    """The ONNX artifact's manifest, for the `.tflite`: NHWC records, its validation, a `tflite` block."""
    import importlib.metadata

    record = {k: v for k, v in copy.deepcopy(read_manifest(artifact)).items() if k != "artifact"}
    precision = record["precision"]
    with TFLiteRunner(path, threads=1) as runner:
        record.update(_io_records(record, runner))
        io_quant = {"input": _quantization(runner._in), "output": _quantization(runner._out)}
    if record.get("accuracy") and job.measure is not None:
        from rcr_deploy.exporters.openvino import _own_row

        # Another converter's model than the ONNX artifact: its accuracy row is measured on it.
        record["accuracy"] = _own_row(record["accuracy"], precision, job.measure(path))
    record["validation"] = [*record["validation"], rewrite_check, check.summary()]
    for dist in TOOLS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            record["tools"][dist] = importlib.metadata.version(dist)
    record["tflite"] = {
        "source": {"file": artifact.name, "sha256": sha256_file(artifact)},
        "converter": "litert-torch, from the checkpoint's deploy form after the exact phone rewrite "
        "(ConvTranspose2d k4 s2 p1 -> 3x3 conv with 4 outputs per channel + DEPTH_TO_SPACE)",
        "rewritten_layers": rewrite_check["replaced"],
        "quantization": quantization,
        "io_quantization": io_quant,
        "layout": "NHWC: input 1 x H x W x C (RGB, then the prior as the last channel), output 1 x H x W x 2 logits",
        "bytes": len(flatbuffer),
    }
    return record


def _write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
