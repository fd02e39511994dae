"""OpenVINO runner: an IR (`.xml` + `.bin`) or an ONNX artifact on OpenVINO's CPU plugin.

The hints are set on purpose, never left to the plugin:
- `latency` (one image, a video stream) or `throughput` (folders and batches: the batch is split
  over the plugin's parallel infer requests);
- inference precision `f32` unless `bf16` is asked for: on CPUs with AVX-512 BF16 or AMX the
  plugin's default is bf16, which silently moves RCRNet's logits by about 0.1.
`hint=None` / `precision=None` leave the plugin's own defaults, for benchmarks that measure them.

With the latency hint, each input shape gets its own compiled copy of the model with that shape
fixed (batch 1 at load; the shapes given to `warm_up` there and then, kept for good; a few
others on first use, the oldest dropped): the CPU plugin runs a dynamic-batch
graph about 1.2-1.6x slower at batch 1 than the same graph reshaped to static, measured on the
2-core VM. The dynamic graph is compiled only for a shape the plugin will not fix.

A checkpoint runs on OpenVINO too (`CheckpointOnOpenVINO`): its deploy form is converted once
and the IR kept in a cache folder keyed by the checkpoint's sha256, because the conversion (a
TorchScript trace) takes 5-15 s on a laptop CPU while reading the cached IR takes well under one.
Each cache entry records its files' sha256 (`CACHE_RECORD`); an entry that no longer matches is
converted again, with a one-line note, never run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from rcr_deploy.artifact import check_graph, manifest_path, read_manifest, verify_bytes
from rcr_deploy import __version__
from rcr_deploy.errors import BackendUnavailable, RcrError
from rcr_deploy.fileio import sha256_file
from rcr_deploy.runtime import Runner

HINTS = ("latency", "throughput")
PRECISION_HINTS = ("f32", "bf16")
#: Static-shape compilations kept per runner besides those `warm_up` pinned (a video or a folder
#: uses one shape, eval two).
MAX_STATIC_SHAPES = 4
#: A conversion-cache entry's record of its files' sha256: written with them, checked before each use.
CACHE_RECORD = "sha256.json"
INSTALL_HINT = "pip install 'openvino>=2025.0', or use --backend onnxruntime"


def require_openvino() -> Any:
    """The `openvino` module, or `BackendUnavailable` in one line saying what to install. Its
    telemetry is turned off first (`telemetry_off`)."""
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(f"OpenVINO is not installed; {INSTALL_HINT}") from None
    telemetry_off()
    return openvino


def telemetry_off() -> None:
    """Decline OpenVINO's and NNCF's usage telemetry for this process. Both send through
    openvino_telemetry, which without a consent file in the user's home sends by default (OVC
    asks no one); an offline tool must not phone home, and must not write into the user's home to
    say so. Its consent check, which both tools ask first, answers "declined" here."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # a build without the telemetry package sends nothing
        return
    OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED


def verify_weights(xml: Path, manifest: dict[str, Any] | None, record: str | os.PathLike) -> None:
    """Refuse an IR whose `.bin` differs from the sha256 its manifest records (`artifact.verify_bytes`)."""
    recorded = ((manifest or {}).get("openvino") or {}).get("weights", {}).get("sha256")
    if recorded:
        verify_bytes(xml.with_suffix(".bin"), recorded, record)


def check_ir_files(path: Path) -> None:
    """A missing or empty `.bin` gets a one-line error naming it (OpenVINO's own message does not)."""
    if not path.is_file():
        raise RcrError(f"{path}: no such artifact; run 'rcr-deploy export --format onnx,openvino' first")
    if path.suffix == ".xml":
        weights = path.with_suffix(".bin")
        if not weights.is_file() or weights.stat().st_size == 0:
            raise RcrError(f"{weights}: the IR's weights are missing or empty; copy it beside {path.name} or re-export")


class OpenVINORunner(Runner):
    """Runs an IR or ONNX file on OpenVINO (CPU); same NCHW float32 in / logits out as every runner."""

    def __init__(
        self,
        path: str | Path,
        hint: str | None = "latency",
        precision: str | None = "f32",
        threads: int | None = None,
        model: Any = None,
    ) -> None:
        """`path`: an IR or ONNX file; or, with `model` (an `openvino.Model` already in memory), only
        the name it is reported under."""
        ov = require_openvino()
        import openvino.properties as props
        import openvino.properties.hint as hints

        if hint is not None and hint not in HINTS:
            raise RcrError(f"OpenVINO hint {hint!r}: unknown; use one of {', '.join(HINTS)}")
        if precision is not None and precision not in PRECISION_HINTS:
            raise RcrError(f"OpenVINO precision {precision!r}: unknown; use one of {', '.join(PRECISION_HINTS)}")
        self.path = Path(path)
        self.manifest = None
        if model is None:
            check_ir_files(self.path)
            # Every byte checked before OpenVINO reads it: the manifest (the sidecar, which verifies
            # the .xml or .onnx, else the IR's own embedded copy) records the weights of the .bin.
            self.manifest = read_manifest(self.path, missing_ok=True)
            if self.path.suffix == ".xml":
                sidecar = manifest_path(self.path)
                verify_weights(self.path, self.manifest, sidecar if sidecar.is_file() else f"{self.path.name} (rt_info)")
        core = ov.Core()
        config: dict[Any, Any] = {}
        if hint is not None:
            config[hints.performance_mode] = getattr(hints.PerformanceMode, hint.upper())
        if precision is not None:
            config[hints.inference_precision] = getattr(ov.Type, precision)
        if threads:
            config[props.inference_num_threads] = threads
        try:
            # An ONNX file goes through convert_model, as `export --format openvino` does: reading it
            # with read_model skips conversion passes, and on a Q/DQ INT8 graph that was measured to
            # move masks several times further from ONNX Runtime (docs/cpu-engines.md).
            if model is None:
                model = ov.convert_model(str(self.path)) if self.path.suffix == ".onnx" else core.read_model(str(self.path))
            check_graph(self.path, self.manifest, *([_dims(p) for p in ports] for ports in (model.inputs, model.outputs)))
            fixed = _batch_one(model) if hint == "latency" else None
            self.compiled = core.compile_model(fixed or model, "CPU", config)
            self.compiles = 1
        except RcrError:
            raise
        except Exception as e:  # RuntimeError from the core, ovc's Error from convert_model: a truncated .bin, a newer IR, a corrupt file
            raise RcrError(
                f"{self.path}: OpenVINO {ov.__version__.split('-')[0]} cannot load it ({_last_line(e)}); "
                "re-export it, or upgrade with pip install -U openvino"
            ) from e
        self.in_channels = int(model.input(0).partial_shape[1].get_length())
        self.hint, self.precision = hint, precision
        self.requests = int(self.compiled.get_property(props.optimal_number_of_infer_requests))
        request = self.compiled.create_infer_request()
        self._pool: list[Any] | None = None
        self._core, self._model, self._config = core, model, config
        # input shape -> infer request of a static copy
        self._static: dict[tuple[int, ...], Any] = {tuple(fixed.input(0).shape): request} if fixed else {}
        self._pinned: set[tuple[int, ...]] = set()  # warmed-up shapes, never dropped
        self._dynamic = None if fixed else request
        self.name = f"openvino:{self.path.name}"

    def infer(self, x: np.ndarray) -> np.ndarray:
        self._check_active()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.hint == "latency":
            return np.array(self._static_request(x.shape).infer({0: x})[0], dtype=np.float32, copy=True)
        if self.hint != "throughput" or len(x) < 2 or self.requests < 2:
            return np.array(self._dynamic_request().infer({0: x})[0], dtype=np.float32, copy=True)
        # Throughput: one slice of the batch per parallel request (the plugin's streams). Plain
        # requests waited on in turn, not AsyncInferQueue: its Python callbacks run on the plugin's
        # threads, and a test run hung in wait_all.
        if self._pool is None:
            self._pool = [self.compiled.create_infer_request() for _ in range(self.requests)]
        chunks = np.array_split(x, min(self.requests, len(x)))
        for request, chunk in zip(self._pool, chunks):
            request.start_async({0: chunk})
        parts = []
        for request in self._pool[: len(chunks)]:
            request.wait()
            parts.append(np.array(request.get_output_tensor(0).data, copy=True))
        return np.concatenate(parts).astype(np.float32, copy=False)

    def warm_up(self, shapes: Iterable[tuple[int, ...]]) -> None:
        """Compile (under the latency hint) and run each shape now, and keep those copies for good."""
        shapes = [tuple(s) for s in shapes]
        if self.hint == "latency":
            self._pinned.update(shapes)
        super().warm_up(shapes)

    def _static_request(self, shape: tuple[int, ...]) -> Any:
        """An infer request of the model compiled with `shape` fixed; the dynamic one where the
        plugin refuses that shape (the dynamic model then reports the error as it would)."""
        if shape not in self._static:
            unpinned = [s for s in self._static if s not in self._pinned]
            if len(unpinned) >= MAX_STATIC_SHAPES:
                self._static.pop(unpinned[0])
            model = self._model.clone()
            try:
                model.reshape({model.input(0): list(shape)})
                self.compiles += 1
                self._static[shape] = self._core.compile_model(model, "CPU", self._config).create_infer_request()
            except RuntimeError:
                self._static[shape] = self._dynamic_request()
        return self._static[shape]

    def _dynamic_request(self) -> Any:
        """The infer request of the model as read (dynamic batch); compiled on first need under the
        latency hint, which compiles a batch-1 copy at load instead."""
        if self._dynamic is None:
            self.compiles += 1
            self._dynamic = self._core.compile_model(self._model, "CPU", self._config).create_infer_request()
        return self._dynamic

    def _release(self) -> None:
        self._pool = self._dynamic = self.compiled = self._model = None
        self._static = {}


def _dims(port: Any) -> list[int | None]:
    """A model port's shape: each fixed dimension, None for a dynamic one ([] for a dynamic rank)."""
    shape = port.partial_shape
    return [] if shape.rank.is_dynamic else [d.get_length() if d.is_static else None for d in shape]


def _batch_one(model: Any) -> Any:
    """A copy of `model` with its dynamic batch fixed at 1, or None where other dimensions are
    dynamic too (a --dynamic-hw artifact: its shapes are known only at the first call)."""
    shape = model.input(0).partial_shape
    if shape.rank.is_dynamic or shape.rank.get_length() != 4 or not shape[0].is_dynamic or any(d.is_dynamic for d in list(shape)[1:]):
        return None
    fixed = model.clone()
    fixed.reshape({fixed.input(0): [1, *(d.get_length() for d in list(shape)[1:])]})
    return fixed


def open_runner(path: Path, device: str = "cpu", hint: str = "latency", threads: int | None = None) -> OpenVINORunner:
    """The format table's runner entry (rcr_deploy.formats): an IR or ONNX file on the CPU plugin."""
    return OpenVINORunner(path, hint=hint, threads=threads)


class CheckpointOnOpenVINO(Runner):
    """A checkpoint's deploy form on OpenVINO, FP32, through the IR cache. The conversion or the
    cache read happens in `prepare()` (or the first `infer`), so a command checks its other
    inputs before paying for it. Like the torch runner it has no manifest and no artifact `path`:
    the checkpoint's preprocessing is the default."""

    def __init__(self, path: Path, deploy: Any, hint: str = "latency", threads: int | None = None) -> None:
        ov = require_openvino()
        self.checkpoint, self.in_channels, self.manifest = path, int(deploy.in_channels), None
        self.name = f"openvino-fp32:{path.name}"
        self.xml = cache_dir() / "openvino" / f"{sha256_file(path)[:24]}-ov{ov.__version__.split('-')[0]}-rcr{__version__}" / "model.xml"
        self._deploy, self._hint, self._threads = deploy, hint, threads
        self._runner: OpenVINORunner | None = None

    def prepare(self) -> None:
        self._check_active()
        if self._runner is not None:
            return
        model = None
        if self.xml.parent.exists() and not _cache_intact(self.xml):
            print(f"note: the cached OpenVINO model in {self.xml.parent} is damaged; converting {self.checkpoint.name} again", file=sys.stderr)
            shutil.rmtree(self.xml.parent, ignore_errors=True)
        if not self.xml.is_file():
            print(f"note: converting {self.checkpoint.name} to OpenVINO once (cached in {self.xml.parent})", file=sys.stderr)
            model = _convert(self._deploy)
            _store(model, self.xml)
        self._runner = OpenVINORunner(self.xml, hint=self._hint, threads=self._threads, model=model)
        self._deploy = None  # the torch weights are not needed any more

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.prepare()
        return self._runner.infer(x)

    def warm_up(self, shapes: Iterable[tuple[int, ...]]) -> None:
        self.prepare()
        self._runner.warm_up(shapes)

    @property
    def compiles(self) -> int:  # type: ignore[override]
        return self._runner.compiles if self._runner is not None else 0

    def _release(self) -> None:
        if self._runner is not None:
            self._runner.close()
        self._runner = self._deploy = None


def _last_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(e).__name__


def cache_dir() -> Path:
    """Where derived models are cached: $RCR_DEPLOY_CACHE, else $XDG_CACHE_HOME/rcr-deploy, else
    ~/.cache/rcr-deploy."""
    if os.environ.get("RCR_DEPLOY_CACHE"):
        return Path(os.environ["RCR_DEPLOY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rcr-deploy"


def _convert(deploy: Any) -> Any:
    """The deploy form as an `openvino.Model` with dynamic batch, height and width."""
    import openvino as ov
    import torch

    example = torch.zeros(1, deploy.in_channels, 224, 224)
    try:
        # The converter traces with torch.jit, which torch deprecates: a warning for OpenVINO, not our users.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return ov.convert_model(deploy.eval(), example_input=example, input=[ov.PartialShape([-1, deploy.in_channels, -1, -1])])
    except Exception as e:  # the converter's own error types vary by version
        raise RcrError(
            f"OpenVINO {ov.__version__.split('-')[0]} cannot convert this checkpoint ({_last_line(e)}); "
            "pass --backend torch, or export it with 'rcr-deploy export --format onnx,openvino'"
        ) from e


def _cache_record(folder: Path) -> dict[str, str]:
    """File name -> sha256 of every file of a cache entry (but its record)."""
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.name != CACHE_RECORD}


def _cache_intact(xml: Path) -> bool:
    """Whether the cache entry of `xml` holds exactly the files its record names, byte for byte."""
    try:
        recorded = json.loads((xml.parent / CACHE_RECORD).read_text())
        return xml.name in recorded and recorded == _cache_record(xml.parent)
    except (OSError, ValueError, TypeError):  # missing, unreadable or not a record: re-made
        return False


def _store(model: Any, xml: Path) -> None:
    """Save the IR into the cache as a whole (a folder renamed into place) or not at all: a cache
    that cannot be written only costs the next run its conversion."""
    import openvino as ov

    try:
        xml.parent.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=xml.parent.parent))
        try:
            ov.save_model(model, str(tmp / xml.name), compress_to_fp16=False)
            (tmp / CACHE_RECORD).write_text(json.dumps(_cache_record(tmp)))
            os.replace(tmp, xml.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except (OSError, RuntimeError) as e:  # OpenVINO's writer reports a full disk as RuntimeError
        if xml.is_file():  # another process cached it first
            return
        reason = e.strerror if isinstance(e, OSError) and e.strerror else _last_line(e)
        print(f"note: cannot cache the converted model in {xml.parent} ({reason}); set RCR_DEPLOY_CACHE to a writable folder", file=sys.stderr)
