"""THE table of deployment formats, as data: one row per thing an ONNX artifact can become.

Every consumer reads this table: `export --format`, `load_runner` (which runner opens which file,
and on which device), `bench` (its targets, defaults and help), `demo`, the Triton repository
writer, the CLI's help texts, and both JSON schemas (a test holds their enums equal to it).

A new format is one row here plus two modules, named by the row and imported only when used:

- its exporter, `module:function`, called as ``function(artifacts, job) -> (files, checks)``:
  `artifacts` maps each exported precision to its validated ONNX file in the staging folder, `job`
  is a `rcr_deploy.exporters.FormatJob`; it writes `artifact.format_path(onnx, name)` (with its
  manifest, `artifact.write_manifest`) for each precision and returns precision -> that file, and
  one validation summary each (`exporters.onnx.Validation.summary()`, stage `<name>-<precision>`);
- its runner, `module:function`, called as ``function(path, device=..., hint=..., threads=...)``
  and returning a `rcr_deploy.runtime.Runner`.

This module imports nothing from the project, so every layer may read it without a circle; keep
it data (code that builds, times or runs a format lives in that format's modules).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Triton:
    """How Triton Inference Server serves a format (`rcr-deploy export --triton DIR`)."""

    #: The config.pbtxt line that picks the server's engine: `platform: "..."` or `backend: "..."`.
    engine: str
    #: The files inside the model's version folder, one per suffix of the format.
    files: tuple[str, ...]
    kind: str = "KIND_CPU"
    #: config.pbtxt `parameters` entries (key, value).
    parameters: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Format:
    """One deployment format: what its files are called, what makes and runs them, where it applies."""

    #: The `--format` value.
    name: str
    #: How messages name one file of it.
    title: str
    #: Its files, beside the ONNX artifact they come from: `rcrnet-int8.onnx` -> `rcrnet-int8<suffix>`.
    #: The first one is the file a user passes (and the manifest's `<file>.json` sits beside). A
    #: suffix may hold several dots (`.ncnn.bin`), so that no two formats' files share a name.
    #: Empty for a format that is one folder of the export set (`folder`).
    suffixes: tuple[str, ...]
    precisions: tuple[str, ...]
    #: The runtime that runs it: the `--backend` name, the bench target family and report label.
    backend: str
    #: Devices its runner takes ("cpu", "cuda"); empty where it cannot run on Linux at all (then
    #: `usage` says where it runs, and bench reports its targets as not run).
    devices: tuple[str, ...]
    #: `module:function` that writes it from the ONNX artifacts (`export --format <name>`); None
    #: where the export chain makes it itself: ONNX, and TensorRT engines (`export --engine`, `build`).
    exporter: str | None
    #: `module:function` that opens one file as a Runner; None where it cannot run here.
    runner: str | None
    #: The setup.cfg extra that installs it; None where the base install has it (or it is not a Python package).
    extra: str | None
    #: How to tell that it is installed: a Python module whose presence means so (found with
    #: importlib, not imported), or `module:function` that finds it and raises `RcrError` naming the fix.
    probe: str
    triton: Triton | None = None
    #: A plain `export` (no --format) writes it wherever it is installed.
    default: bool = False
    #: `bench --backend <backend>-<precision>` times it from an export folder.
    bench: bool = True
    #: The manifest's block that only this format's sidecars carry (manifest.schema.json).
    manifest: str | None = None
    #: Other formats whose files its runner opens too (OpenVINO converts an ONNX file as it loads).
    reads: tuple[str, ...] = ()
    #: `module:function` running a checkpoint's deploy form on this runtime, called as
    #: ``function(path, deploy_model, hint=..., threads=...)``; for `--backend <backend>` with a `.pt`.
    checkpoint_runner: str | None = None
    #: A format that is one folder of the export set, not a file per precision: the folder's name.
    folder: str | None = None
    #: What a user does with the written file, shown after `export` (`{path}` is the file).
    usage: str = ""


PRECISIONS = ("fp32", "fp16", "int8")

FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            name="onnx",
            title="ONNX artifact",
            suffixes=(".onnx",),
            precisions=PRECISIONS,
            backend="onnxruntime",
            devices=("cpu", "cuda"),
            exporter=None,
            runner="rcr_deploy.runtime.onnxruntime_runner:open_runner",
            extra=None,
            probe="onnxruntime",
            triton=Triton('platform: "onnxruntime_onnx"', ("model.onnx",)),
        ),
        Format(
            name="openvino",
            title="OpenVINO IR",
            suffixes=(".xml", ".bin"),
            precisions=PRECISIONS,
            backend="openvino",
            devices=("cpu",),
            exporter="rcr_deploy.exporters.openvino:export_format",
            runner="rcr_deploy.runtime.openvino_runner:open_runner",
            extra=None,
            probe="openvino",
            triton=Triton('backend: "openvino"', ("model.xml", "model.bin"), parameters=(("PERFORMANCE_HINT", "THROUGHPUT"),)),
            default=True,
            manifest="openvino",
            reads=("onnx",),
            checkpoint_runner="rcr_deploy.runtime.openvino_runner:CheckpointOnOpenVINO",
        ),
        Format(
            name="tensorrt",
            title="TensorRT engine",
            suffixes=(".engine",),
            precisions=PRECISIONS,
            backend="tensorrt",
            devices=("cuda",),
            exporter=None,
            runner="rcr_deploy.runtime.tensorrt_runner:open_runner",
            extra="tensorrt",
            probe="tensorrt",
            triton=Triton('platform: "tensorrt_plan"', ("model.plan",), kind="KIND_GPU"),
            # An engine is built for one GPU and TensorRT version (and named by that key in the export
            # set's engines/), so bench builds or reuses its own: `bench --engine fp16`.
            bench=False,
            manifest="engine",
        ),
        Format(
            name="web",
            title="browser folder",
            suffixes=(),
            # FP32 only: on onnxruntime-web's WebAssembly backend neither INT8 nor FP16 is faster
            # (benchmarks/results/web-wasm-cpu-2core.md).
            precisions=("fp32",),
            backend="onnxruntime-web",
            devices=(),  # it runs in a browser: tests/test_web.py checks it in headless Chromium
            exporter="rcr_deploy.exporters.web:export_format",
            runner=None,
            extra=None,
            probe="rcr_deploy.exporters.web:find_ort_web",  # an npm package, not a Python one
            bench=False,
            folder="web",
            usage="serve it with 'python {path}/serve.py', then open the URL it prints",
        ),
        Format(
            name="tflite",
            title="TFLite / LiteRT model",
            suffixes=(".tflite",),
            precisions=PRECISIONS,
            backend="litert",
            devices=("cpu",),  # LiteRT's XNNPACK CPU kernels here; GPU and NPU delegates live on phones
            exporter="rcr_deploy.exporters.tflite:export_format",
            runner="rcr_deploy.runtime.tflite_runner:open_runner",
            extra="tflite",
            probe="litert_torch",
            manifest="tflite",
            usage="load it on Android or iOS with LiteRT: NHWC input, the prior as its last channel; see docs/targets/tflite.md",
        ),
        Format(
            name="ncnn",
            title="ncnn model",
            # Not `.param` / `.bin`: OpenVINO's weights are `rcrnet.bin` beside them.
            suffixes=(".ncnn.param", ".ncnn.bin"),
            # pnnx stores weights as float32 or float16 (compute is float32 on x86, fp16 where an ARM
            # CPU has it); ncnn's INT8 needs its own calibration tools, outside the ncnn wheel.
            precisions=("fp32", "fp16"),
            backend="ncnn",
            devices=("cpu",),  # ncnn's x86 kernels here; ARM NEON and Vulkan live on phones
            exporter="rcr_deploy.exporters.ncnn:export_format",
            runner="rcr_deploy.runtime.ncnn_runner:open_runner",
            extra="ncnn",
            probe="ncnn",
            manifest="ncnn",
            usage="load it on Android or iOS with ncnn's Net.load_param / load_model: blob in0 (NCHW, the prior as "
            "channel 3) in, out0 logits out; see docs/targets/ncnn.md",
        ),
        Format(
            name="coreml",
            title="Core ML model",
            suffixes=(".mlpackage",),
            precisions=("fp32", "fp16"),
            backend="coreml",
            devices=(),  # Core ML predicts on macOS and iOS only: the export checks its program instead
            exporter="rcr_deploy.exporters.coreml:export_format",
            runner=None,
            extra="coreml",
            probe="coremltools",
            manifest="coreml",
            usage="Core ML predicts on macOS / iOS only, not on this machine: the export checked its program (ops, "
            "names, shapes, precision), never its outputs; load it with MLModel, see docs/targets/coreml.md",
        ),
    )
}

#: `--backend auto` on a device: the first of these that is installed, runs there and (for an
#: export folder) was exported; the order follows benchmarks/results/cpu-engines-*.md.
AUTO = ("openvino", "onnx")


def exportable() -> tuple[str, ...]:
    """What `export --format` accepts: onnx, and every format an exporter makes from it."""
    return ("onnx", *(f.name for f in FORMATS.values() if f.exporter))


def backends() -> tuple[str, ...]:
    """`--backend` choices of infer, eval, serve and demo: auto (`AUTO`), torch, and every runtime
    that opens a format's files."""
    return ("auto", "torch", *dict.fromkeys(f.backend for f in FORMATS.values() if f.runner and f.devices))


def by_path(path: str | os.PathLike) -> Format | None:
    """The format of a file a user passes, by how its name ends, or None. The longest suffix
    wins, so that a format's suffix may hold several dots (`rcrnet.ncnn.param`)."""
    name = Path(path).name
    matches = [f for f in FORMATS.values() if f.suffixes and name.endswith(f.suffixes[0]) and len(name) > len(f.suffixes[0])]
    return max(matches, key=lambda f: len(f.suffixes[0]), default=None)


def by_backend(backend: str) -> Format | None:
    """The format a runtime (`--backend` name) runs natively, or None."""
    return next((f for f in FORMATS.values() if f.backend == backend), None)


def bench_targets(fmt: Format) -> tuple[str, ...]:
    """The `bench --backend` names that time `fmt` from an export folder, one per precision."""
    return tuple(f"{fmt.backend}-{p}" for p in fmt.precisions) if fmt.bench else ()


def installed(fmt: Format) -> bool:
    """Whether `fmt`'s runtime is installed (its probe finds it)."""
    return missing(fmt) is None


def missing(fmt: Format) -> str | None:
    """Why `fmt`'s runtime is not installed, naming the fix; None where its probe finds it."""
    how = f" (pip install 'rcr-deploy[{fmt.extra}]')" if fmt.extra else ""
    if ":" not in fmt.probe:
        return None if importlib.util.find_spec(fmt.probe) is not None else f"{fmt.probe} is not installed{how}"
    try:
        load(fmt.probe)()
    except Exception as e:  # the probe's own RcrError names what is missing and the fix
        return str(e).splitlines()[0] if str(e) else f"{fmt.probe} found nothing{how}"
    return None


def load(entry: str) -> Any:
    """The object a row names as `module:attr`, imported now (rows are read long before they are used)."""
    module, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module), attr)
