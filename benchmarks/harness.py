"""The timing harness: which backends run here, and how each one is timed, sized and costed.

Every backend is a `Runner` (rcr_deploy.runtime). A run times each selected target at each batch
size (warm-up, then timed iterations), records peak memory and cost, and measures the device's
peak FLOP rate once, for the roofline. The train-form torch model on the same device is always
measured too: it is the baseline every ratio column is taken against, because absolute times on
shared machines drift.

How a single call is timed lives in `timing.py`. Why this file is still about 550 lines: planning
(which targets, from which artifacts) and running them share `BenchConfig`, `Target` and
`Runner`'s lifecycle, and each backend's target is a few lines of that planning.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rcr_deploy.benchmarks.cost import count_macs_onnx, count_macs_torch, count_params
from rcr_deploy.benchmarks.machine import machine_info, peak_flops, peak_memory
from rcr_deploy.benchmarks.stats import LatencyStats
from rcr_deploy.benchmarks.timing import time_interleaved, timed_call
from rcr_deploy.artifact import ARTIFACT_NAMES, DEFAULT_OUT_DIR, format_files, format_path, format_sibling, manifest_path, read_manifest, require_usable, resolve
from rcr_deploy.errors import BackendUnavailable, RcrError
from rcr_deploy.formats import FORMATS, Format, bench_targets, by_path, installed, load
from rcr_deploy.runtime import Runner, onnxruntime_providers
from rcr_deploy.checkpoint import DEFAULT_CHECKPOINT, default_checkpoint, load_checkpoint
from rcr_deploy.exporters import tensorrt as trt_export
from rcr_deploy.exporters.onnx import export_onnx
from rcr_deploy.fileio import sha256_file
from rcr_deploy.models import VARIANTS
from rcr_deploy.reparam import reparameterize
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from rcr_deploy.runtime.torch_runner import TorchRunner

SCHEMA = "rcr-deploy-bench/1"
BASELINE = "torch-train"
#: Targets made from the checkpoint itself; every format's targets come from the format table
#: (`formats.bench_targets`, read from an export folder); `--engine` selects TensorRT engines.
CHECKPOINT_TARGETS = ("torch-train", "torch-deploy", "torch-compile", "torch-fp16", "onnxruntime-unfused")
PRECISIONS = tuple(ARTIFACT_NAMES)


def backends() -> tuple[str, ...]:
    """What `--backend` accepts (besides `all` and the families)."""
    return CHECKPOINT_TARGETS + tuple(name for f in FORMATS.values() for name in bench_targets(f))


def format_target(name: str) -> tuple[Format, str] | None:
    """A format's bench target name -> (its format, its precision); None for a checkpoint target."""
    return next(((f, p) for f in FORMATS.values() for p, n in zip(f.precisions, bench_targets(f)) if n == name), None)


@dataclasses.dataclass
class BenchConfig:
    """What to measure and how; invalid values raise `RcrError` (exit 2)."""

    backends: list[str]
    engines: list[str] = dataclasses.field(default_factory=list)
    #: Artifact files to time as they are (.onnx on ONNX Runtime, .engine on TensorRT).
    artifacts: list[Path] = dataclasses.field(default_factory=list)
    batches: list[int] = dataclasses.field(default_factory=lambda: [1])
    out_dir: Path = DEFAULT_OUT_DIR
    ckpt: Path | None = None
    size: int = 224
    threads: int = 2
    warmup: int = 10
    iters: int = 50
    max_seconds: float = 20.0
    device: str = "cpu"
    cuda_graphs: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iters < 1:
            raise RcrError(f"--iters {self.iters}: need at least 1 timed iteration; pass --iters 50")
        if self.warmup < 0:
            raise RcrError(f"--warmup {self.warmup}: cannot be negative; pass --warmup 10 (or 0)")
        if not self.batches or min(self.batches) < 1:
            raise RcrError(f"--batch {','.join(map(str, self.batches))}: batch sizes must be >= 1, e.g. --batch 1,8,32")
        if self.threads < 1:
            raise RcrError(f"--threads {self.threads}: need at least 1 thread")
        if self.size < 32 or self.size % 32:
            raise RcrError(f"--size {self.size}: must be a positive multiple of 32, e.g. 224")
        if self.max_seconds <= 0:
            raise RcrError(f"--max-seconds {self.max_seconds}: must be positive")
        unknown = [b for b in self.backends if b not in backends()]
        if unknown:
            raise RcrError(f"--backend {','.join(unknown)}: unknown; use all, {', '.join(families())} or some of {', '.join(backends())}")
        unknown = [e for e in self.engines if e not in PRECISIONS]
        if unknown:
            raise RcrError(f"--engine {','.join(unknown)}: unknown; use one of {', '.join(PRECISIONS)}")
        for path in self.artifacts:
            fmt = by_path(path)
            if fmt is not None and not fmt.devices:
                raise RcrError(f"{path}: a {fmt.title}, not run: {fmt.usage}")
            if fmt is None or fmt.runner is None or not path.is_file():
                kinds = ", ".join(f"{f.title}s ({f.suffixes[0]})" for f in FORMATS.values() if f.runner)
                what = "no such file" if not path.exists() else "not a model file bench runs"
                raise RcrError(f"{path}: {what}; bench takes an export folder or files of: {kinds}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RcrError(f"--device {self.device}: no CUDA device on this machine; use --device cpu")
        if self.cuda_graphs and not self.device.startswith("cuda"):
            raise RcrError("--cuda-graphs needs a GPU; add --device cuda or drop --cuda-graphs")


def parse_batches(text: str) -> list[int]:
    """`"1,8,32"` -> [1, 8, 32], with a one-line error for anything else."""
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise RcrError(f"--batch {text}: expected comma-separated integers, e.g. --batch 1,8,32") from None


def families() -> tuple[str, ...]:
    """`--backend` families: torch (the checkpoint's forms) and every runtime with bench targets."""
    return ("torch", *dict.fromkeys(f.backend for f in FORMATS.values() if f.bench))


def default_backends(device: str) -> list[str]:
    """`--backend all`: every target that applies to the device (whether it can run is decided later):
    the torch forms (FP16 on a GPU only, the unfused ONNX on a CPU only) and every format of the
    table that runs on the device."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    torch_forms = [b for b in CHECKPOINT_TARGETS if b != ("onnxruntime-unfused" if kind == "cuda" else "torch-fp16")]
    return torch_forms + [name for f in FORMATS.values() if kind in f.devices for name in bench_targets(f)]


def select_backends(spec: str, device: str) -> list[str]:
    """`--backend` text -> target names: `all`, a family (`torch`; a runtime such as `onnxruntime`:
    its files in the export folder), or names from `backends()`, comma-separated. Unknown names
    are left for BenchConfig to reject."""
    names: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if item == "all":
            names += default_backends(device)
        elif item in families():
            # A format that runs nowhere here is still named, so that the report says it was not run.
            pool = default_backends(device) + [n for f in FORMATS.values() if not f.devices for n in bench_targets(f)]
            names += [b for b in pool if b.startswith(item + "-") and b != "onnxruntime-unfused"]
        elif item:
            names.append(item)
    return list(dict.fromkeys(names))


@dataclasses.dataclass
class Target:
    """One thing to time: a backend at a precision, and how to load it as a Runner."""

    name: str
    backend: str
    precision: str
    form: str
    load: Callable[[], Runner]
    artifact: Path | None = None
    macs: int | None = None
    params: int | None = None
    miou: float | None = None
    miou_source: str | None = None
    export_s: float | None = None


class Skip(Exception):
    """A target that cannot run on this machine; the message says why (reported, not fatal)."""


# ----------------------------------------------------------------------------------- planning


def _artifact(out_dir: Path, precision: str) -> Path:
    return out_dir / ARTIFACT_NAMES[precision]


def _manifest(artifact: Path) -> dict[str, Any]:
    return read_manifest(artifact, missing_ok=True) or {}


def manifest_miou(manifest: dict[str, Any], precision: str) -> float | None:
    """The foreground mIoU (%) that `rcr-deploy export --val` measured for this precision."""
    for row in (manifest.get("accuracy") or {}).get("rows", []):
        if row.get("precision") == precision and isinstance(row.get("fg_miou"), (int, float)):
            return 100.0 * row["fg_miou"]
    return None


def _no_artifact(out_dir: Path) -> RcrError:
    return RcrError(
        f"{_artifact(out_dir, 'fp32')}: no exported artifact yet; run 'rcr-deploy export CKPT' in this folder "
        f"first (or pass the export folder: rcr-deploy bench DIR, or --backend torch-deploy to time the checkpoint alone)"
    )


def _checkpoint_path(config: BenchConfig) -> Path:
    """--ckpt, else the checkpoint the FP32 artifact was exported from (the manifest records its
    path and sha256: found there, in this folder, or as the built-in model), else the built-in model."""
    if config.ckpt is not None:
        return config.ckpt
    source = config.artifacts[0] if config.artifacts else _artifact(config.out_dir, "fp32")
    recorded = _manifest(source).get("checkpoint") or {}
    if not recorded:
        return default_checkpoint()
    for candidate in (Path(recorded.get("path", recorded["file"])), Path(recorded["file"]), DEFAULT_CHECKPOINT):
        if candidate.is_file() and sha256_file(candidate) == recorded["sha256"]:
            return candidate
    raise RcrError(
        f"{source}: exported from {recorded.get('path', recorded['file'])}, which is no longer there; "
        "pass it with --ckpt (the torch baseline needs the same weights)"
    )


def plan(config: BenchConfig, tmp: Path) -> tuple[list[Target], list[dict[str, str]], dict[str, Any]]:
    """The targets to time (baseline first), the ones skipped with their reasons, and the model facts."""
    if config.engines:  # fail fast, before any slow work, on a machine that cannot build engines
        trt_export.require_tensorrt()
    needs_artifact = any(format_target(b) for b in config.backends)
    if (needs_artifact or config.engines) and not _artifact(config.out_dir, "fp32").is_file():
        raise _no_artifact(config.out_dir)
    ckpt = load_checkpoint(_checkpoint_path(config))
    if ckpt.form != "train":
        raise RcrError(f"{ckpt.path}: a deploy-form checkpoint has no train form to use as the baseline; pass the train-form ckpt.pt with --ckpt")
    train, deploy = ckpt.model.eval(), reparameterize(ckpt.model)
    fp32_miou = manifest_miou(_manifest(_artifact(config.out_dir, "fp32")), "fp32")
    hw = (config.size, config.size)
    variant = VARIANTS.get(ckpt.arch)
    model_info = {
        "arch": ckpt.arch,
        "checkpoint": str(ckpt.path),
        "sha256": ckpt.sha256,
        "in_channels": train.in_channels,
        "params_train": count_params(train),
        "params_deploy": count_params(deploy),
        "macs_train": count_macs_torch(train, hw),
        "macs_deploy": count_macs_torch(deploy, hw),
        "paper": None
        if variant is None
        else {"params": int(variant.paper_params_m * 1e6), "flops": int(variant.paper_flops_m * 1e6), "miou": variant.paper_miou},
    }
    # The torch forms (and the train form's ONNX) compute what the FP32 artifact computes (export
    # verified it), so they share its mIoU.
    torch_miou_source = f"{ARTIFACT_NAMES['fp32']} manifest (same weights)" if fp32_miou is not None else None
    dev = config.device
    targets: list[Target] = []
    skipped: list[dict[str, str]] = []

    def torch_target(name: str, form: str, model: torch.nn.Module, precision: str = "fp32", compile: bool = False) -> Target:
        def load() -> Runner:
            return TorchRunner(model, name, device=dev, compile=compile)

        return Target(
            name, "torch.compile" if compile else "torch", precision, form, load,
            macs=model_info[f"macs_{form}"], params=model_info[f"params_{form}"], miou=fp32_miou, miou_source=torch_miou_source,
        )

    targets.append(torch_target(BASELINE, "train", train))
    for backend in config.backends:
        if backend == BASELINE:
            continue
        try:
            if backend == "torch-deploy":
                targets.append(torch_target(backend, "deploy", deploy))
            elif backend == "torch-compile":
                targets.append(torch_target(backend, "deploy", deploy, compile=True))
            elif backend == "torch-fp16":
                if not dev.startswith("cuda"):
                    raise Skip("FP16 torch needs a GPU (CPU half convolutions are slow reference kernels)")
                targets.append(torch_target(backend, "deploy", _HalfPrecision(deploy), precision="fp16"))
            elif backend == "onnxruntime-unfused":
                targets.append(_unfused_target(train, deploy, config, tmp, model_info, (fp32_miou, torch_miou_source)))
            else:
                targets.append(_format_target(*format_target(backend), config, model_info))
        except Skip as why:
            skipped.append({"name": backend, "reason": str(why)})
    for precision in config.engines:
        targets.append(_tensorrt_target(precision, config, train.in_channels))
    for path in config.artifacts:
        fmt = by_path(path)
        if fmt.name == "tensorrt":  # an engine's batch is bounded by its profile, checked at load
            targets.append(_engine_target(path, config, train.in_channels))
        else:
            targets.append(_file_target(fmt, path, f"{fmt.backend}:{path.name}", config, model_info))
    return targets, skipped, model_info


class _HalfPrecision(torch.nn.Module):
    """A half-precision copy of a model behind the float32 interface every runner shares."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).half()
        self.in_channels = model.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def _format_target(fmt: Format, precision: str, config: BenchConfig, model_info: dict[str, Any]) -> Target:
    """A format's file of `precision` in the export folder, as `_file_target`."""
    kind = "cuda" if config.device.startswith("cuda") else "cpu"
    if not fmt.devices:
        raise Skip(f"not run: {fmt.usage}")
    if kind not in fmt.devices:
        raise Skip(f"a {fmt.title} runs on {' or '.join(fmt.devices)} only")
    if not installed(fmt):
        raise Skip(f"{fmt.probe} is not installed" + (f" (pip install 'rcr-deploy[{fmt.extra}]')" if fmt.extra else ""))
    path = format_path(_artifact(config.out_dir, precision), fmt.name)
    if not path.is_file():
        flag = f" --format onnx,{fmt.name}" if fmt.exporter else ""
        raise Skip(f"{path} not exported; run 'rcr-deploy export CKPT{flag}' with {precision} among its precisions")
    return _file_target(fmt, path, f"{fmt.backend}-{precision}", config, model_info)


def _file_target(fmt: Format, path: Path, name: str, config: BenchConfig, model_info: dict[str, Any]) -> Target:
    """One file of a format, opened by the format table's runner with the latency hint; its MACs
    are counted on the ONNX artifact it was made from (beside it), its mIoU read from its manifest."""
    manifest = require_usable(path, read_manifest(path, missing_ok=True))  # as infer, eval and serve accept it
    precision = manifest["precision"]
    miou = manifest_miou(manifest, precision)
    onnx = format_sibling(path, fmt.name, ".onnx")
    in_shape = (1, model_info["in_channels"], config.size, config.size)
    return Target(
        name, fmt.backend, precision, "deploy",
        lambda: load(fmt.runner)(path, device=config.device, hint="latency", threads=config.threads),
        artifact=path, macs=count_macs_onnx(onnx, in_shape).macs if onnx.is_file() else None,
        params=model_info["params_deploy"], miou=miou, miou_source=manifest_path(path).name if miou is not None else None,
    )


def _unfused_target(
    train: torch.nn.Module, deploy: torch.nn.Module, config: BenchConfig, tmp: Path, model_info: dict[str, Any], miou: tuple[float | None, str | None]
) -> Target:
    """An ONNX export of the train form, beside a timed export of the deploy form by the same
    exporter, so the fused-vs-unfused comparison isolates the re-parameterisation."""
    hw = (config.size, config.size)
    path = tmp / "rcrnet-unfused.onnx"
    start = time.perf_counter()
    export_onnx(train, path, size=hw)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    export_onnx(deploy, tmp / "rcrnet-fused.onnx", size=hw)
    model_info["export_fp32_s"] = time.perf_counter() - start
    model_info["export_unfused_s"] = export_s
    return Target(
        "onnxruntime-unfused", "onnxruntime", "fp32", "train",
        lambda: OnnxRuntimeRunner(path, providers=onnxruntime_providers(config.device), threads=config.threads),
        artifact=path, macs=count_macs_onnx(path, (1, model_info["in_channels"], *hw)).macs,
        params=model_info["params_train"], export_s=export_s, miou=miou[0], miou_source=miou[1],
    )


def _tensorrt_target(precision: str, config: BenchConfig, in_channels: int) -> Target:
    """The TensorRT engine of an exported artifact, built (and cached) if missing. A missing
    artifact is not made here (bench measures, export writes): the error names the export command.
    Export's own one-line errors pass through: no TensorRT, no GPU, an engine for another TensorRT or GPU."""
    artifact = resolve(config.out_dir, precision)
    # The export's default profile (max batch 8) is reused unless a larger batch is asked for.
    options = trt_export.EngineOptions(
        max_batch=max(trt_export.EngineOptions().max_batch, *config.batches), size=(config.size, config.size)
    )
    return _engine_target(trt_export.build_engine(artifact, options), config, in_channels, artifact, precision)


def _engine_target(engine: Path, config: BenchConfig, in_channels: int, artifact: Path | None = None, precision: str | None = None) -> Target:
    """A TensorRT engine as it is; its MACs are counted on the ONNX artifact it was built from
    (named in its manifest, found beside its engines/ folder)."""
    trt_export.require_tensorrt()
    record = _manifest(engine)
    precision = precision or record.get("precision", "fp32")
    if artifact is None:
        source = engine.parent.parent / (record.get("engine") or {}).get("source", "")
        artifact = source if source.suffix == ".onnx" and source.is_file() else None
    miou = manifest_miou(record, precision)

    def load() -> Runner:
        runner = trt_export.TensorRTRunner(engine)
        check_engine_batch(runner, max(config.batches))
        return runner

    in_shape = (1, in_channels, config.size, config.size)
    return Target(
        f"tensorrt-{precision}" if artifact else f"tensorrt:{engine.name}", "tensorrt", precision, "deploy", load, artifact=engine,
        macs=count_macs_onnx(artifact, in_shape).macs if artifact else None, miou=miou,
        miou_source=manifest_path(engine).name if miou is not None else None,
    )


def check_engine_batch(runner: Runner, batch: int) -> None:
    """A batch above the engine's optimisation-profile maximum is bad input, not a crash inside TensorRT."""
    profile = ((runner.manifest or {}).get("engine") or {}).get("profile")
    if profile and batch > profile["max"][0]:
        raise RcrError(
            f"{getattr(runner, 'path', runner.name)}: engine profile allows batch <= {profile['max'][0]}, asked for {batch}; "
            f"rebuild it with a max batch of at least {batch}, or pass --batch {profile['max'][0]}"
        )


# ------------------------------------------------------------------------------------- a run


@dataclasses.dataclass
class _Loaded:
    target: Target
    runner: Runner
    calls: dict[int, Callable[[], Any]]
    load_s: float
    peak_mem_bytes: int | None


def _load(target: Target, config: BenchConfig, inputs: dict[int, np.ndarray], runners: contextlib.ExitStack) -> _Loaded:
    """Load a target (closed when `runners` closes), make its call at each batch size and warm it
    up, measuring peak memory."""
    with peak_memory(config.device) as mem:
        start = time.perf_counter()
        runner = runners.enter_context(target.load())
        # The first call is part of loading: torch.compile compiles there, lazy backends initialise.
        with _compiling(target):
            runner.infer(inputs[min(inputs)][:1])
        load_s = time.perf_counter() - start
        calls = {}
        for batch, x in inputs.items():
            check_engine_batch(runner, batch)
            calls[batch] = timed_call(runner, x, config.device, config.cuda_graphs)
            for _ in range(config.warmup):
                calls[batch]()
    return _Loaded(target, runner, calls, load_s, mem["peak_bytes"])


@contextlib.contextmanager
def _compiling(target: Target) -> Iterator[None]:
    """A spinner with a message on stderr while torch.compile compiles (minutes, with no output otherwise)."""
    if target.backend != "torch.compile":
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(f"{target.name}: torch.compile is compiling the model (1-3 minutes the first time)..."):
        yield


def _artifact_bytes(path: Path) -> int:
    """On-disk size of a model: every file of its format (an OpenVINO IR's `.xml` and the `.bin`
    that holds its weights), without the manifest."""
    fmt = by_path(path)
    files = format_files(path, fmt.name)[:-1] if fmt is not None and not fmt.folder else [path]
    return sum(f.stat().st_size for f in files if f.is_file())


def _result(loaded: _Loaded, config: BenchConfig, runs: list[LatencyStats]) -> dict[str, Any]:
    t = loaded.target
    return {
        "name": t.name,
        "backend": t.backend,
        "precision": t.precision,
        "form": t.form,
        "device": config.device,
        "artifact": str(t.artifact) if t.artifact else None,
        "artifact_bytes": _artifact_bytes(t.artifact) if t.artifact else None,
        "params": t.params,
        "macs": t.macs,
        "miou": t.miou,
        "miou_source": t.miou_source,
        "load_s": loaded.load_s,
        "export_s": t.export_s,
        "peak_mem_bytes": loaded.peak_mem_bytes,
        "runs": [dataclasses.asdict(r) for r in runs],
    }


def _add_ratios(results: list[dict[str, Any]], peak: float) -> None:
    """Speed-up over the baseline at the same batch, and the roofline floor: 2*MACs / peak FLOP/s."""
    base = {r["batch"]: r["p50_ms"] for res in results if res["name"] == BASELINE for r in res["runs"]}
    for res in results:
        for run in res["runs"]:
            run["speedup_vs_baseline"] = base[run["batch"]] / run["p50_ms"] if run["batch"] in base else None
            floor = 2 * res["macs"] * run["batch"] / peak * 1e3 if res["macs"] else None
            run["compute_floor_ms"] = floor
            run["x_over_floor"] = run["p50_ms"] / floor if floor else None


def run_bench(config: BenchConfig, command: str = "") -> dict[str, Any]:
    """Plan, measure every target that can run, and return the report (schema `rcr-deploy-bench/1`)."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="rcr-bench-") as tmp, contextlib.ExitStack() as runners:
            targets, skipped, model_info = plan(config, Path(tmp))
            peak = peak_flops(config.device)
            rng = np.random.default_rng(config.seed)
            shape = (model_info["in_channels"], config.size, config.size)
            inputs = {b: rng.standard_normal((b, *shape), dtype=np.float32) for b in config.batches}
            loaded = []
            for target in tqdm(targets, desc="loading and warming up", unit="backend"):
                try:
                    loaded.append(_load(target, config, inputs, runners))
                except BackendUnavailable as e:  # a runtime this machine lacks (a CUDA provider): reported, not fatal
                    skipped.append({"name": target.name, "reason": str(e)})
                except RcrError:
                    raise
                except Exception as e:  # e.g. torch.compile without a working C++ toolchain
                    if target.name == BASELINE:
                        raise
                    skipped.append({"name": target.name, "reason": f"failed to run: {str(e).strip().splitlines()[0][:200]}"})
            stats = {
                b: time_interleaved({item.target.name: item.calls[b] for item in loaded}, b, config.iters, config.max_seconds)
                for b in config.batches
            }
            results = [_result(item, config, [stats[b][item.target.name] for b in config.batches]) for item in loaded]
    finally:
        torch.set_num_threads(previous_threads)
    _add_ratios(results, peak)
    info = machine_info(config.threads)
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": info,
        "peak_gflops": peak / 1e9,
        "config": {
            "size": config.size,
            "batches": config.batches,
            "threads": config.threads,
            "warmup": config.warmup,
            "iters": config.iters,
            "max_seconds": config.max_seconds,
            "device": config.device,
            "cuda_graphs": config.cuda_graphs,
        },
        "model": model_info,
        "baseline": BASELINE,
        "results": results,
        "skipped": skipped,
    }
