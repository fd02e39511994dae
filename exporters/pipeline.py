"""The export chain, as named steps that each take the previous step's result:

    check_inputs -> deploy_form (reparameterize + verify) -> onnx_fp32 (export + simplify + check)
    -> convert_and_validate (save and validate fp32 vs torch; convert and validate fp16 / int8 vs fp32)
    -> measure_accuracy -> write_manifests -> other_format (each --format of the table beyond onnx)
    -> build_engines -> commit

Everything is written into a staging folder of the output folder (rcr_deploy.artifact.ExportSet),
engines included, and published by one atomic pointer swap only when every step has passed, so
an error or Ctrl-C leaves the previous export set untouched.

Why one file of about 430 lines: the steps and the result type each one hands the next are read
top to bottom as the chain above; split across files, the order would live nowhere.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from tqdm import tqdm

from rcr_deploy.artifact import ARTIFACT_NAMES, DEFAULT_OUT_DIR, ENGINES, ExportSet, format_files, format_path, manifest_path, write_manifest
from rcr_deploy.checkpoint import Checkpoint, default_checkpoint, load_checkpoint
from rcr_deploy.errors import BackendUnavailable, RcrError, VerificationError
from rcr_deploy.formats import FORMATS, exportable, installed, load
from rcr_deploy.models import VARIANTS
from rcr_deploy.preprocess import list_images, load_image
from rcr_deploy.reparam import DEFAULT_TOLERANCES, compare, reparameterize
from rcr_deploy.runtime import Runner, load_runner
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from rcr_deploy.runtime.torch_runner import TorchRunner

from rcr_deploy.exporters import FormatJob
from rcr_deploy.exporters import manifest as manifests
from rcr_deploy.exporters import onnx as onnx_export
from rcr_deploy.exporters import precision as prec
from rcr_deploy.exporters.onnx import TOLERANCES
from rcr_deploy.exporters.tensorrt import EngineOptions, build_engine, require_tensorrt, validate_engine
from rcr_deploy.data.folder import list_pairs
from rcr_deploy.evaluate import evaluate

PRECISIONS = tuple(ARTIFACT_NAMES)
#: The newest opset that torch's exporter converts to and onnxruntime loads (checked with torch 2.13; 26 needs a fallback converter).
MAX_OPSET = 25
#: Real images used for the numerical validation (the accuracy run uses the whole --val folder).
VALIDATION_IMAGES = 8


@dataclasses.dataclass
class ExportResult:
    """What an export produced and proved."""

    out_dir: Path
    #: precision -> ONNX artifact path (its manifest is `artifact.manifest_path(path)`).
    artifacts: dict[str, Path]
    #: One summary per validated stage (see `exporters.onnx.Validation.summary`).
    validation: list[dict[str, Any]]
    #: mIoU per precision on the --val folder, or None without one.
    accuracy: dict[str, Any] | None
    #: precision -> TensorRT engine path, when engines were built.
    engines: dict[str, Path]
    #: Wall seconds per step.
    timings: dict[str, float]
    #: format -> precision -> its file, for every --format beyond onnx (an OpenVINO IR's `.xml`).
    formats: dict[str, dict[str, Path]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Plan:
    """Step 1: every input checked, before any slow work."""

    checkpoint: Checkpoint
    out_dir: Path
    precisions: tuple[str, ...]
    size: tuple[int, int]
    dynamic_hw: bool
    opset: int
    calib: Path | None
    calib_images: list[Path]
    calib_method: str
    float_stem: bool
    val: Path | None
    val_images: list[Path]
    val_limit: int | None
    engine_options: EngineOptions | None
    seed: int
    progress: bool
    formats: tuple[str, ...] = ("onnx",)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Deployed:
    """Step 2: the deploy form and the proof that it computes what the train form does."""

    plan: Plan
    model: torch.nn.Module
    check: dict[str, Any]


@dataclasses.dataclass
class Graph:
    """Step 3: the simplified FP32 ONNX graph, structurally checked."""

    deployed: Deployed
    proto: onnx.ModelProto
    ops: dict[str, int]


@dataclasses.dataclass
class Staged:
    """Step 4: every precision saved in the staging folder and validated against the stage before."""

    graph: Graph
    folder: Path
    protos: dict[str, onnx.ModelProto]
    ops: dict[str, dict[str, int]]
    paths: dict[str, Path]
    validations: dict[str, onnx_export.Validation]
    inputs: dict[str, np.ndarray]
    #: The INT8 file on ONNX Runtime without optimisations and on OpenVINO (`prec.check_across_runtimes`).
    across: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _choose(items: str | Sequence[str], allowed: tuple[str, ...], always: str, option: str) -> tuple[str, ...]:
    """A comma list (or a sequence) -> the chosen entries of `allowed`, in its order, `always` included."""
    given = [i.strip().lower() for i in (items.split(",") if isinstance(items, str) else items) if i.strip()]
    unknown = [i for i in given if i not in allowed]
    if unknown:
        raise RcrError(f"{option} {', '.join(unknown)}: unknown; use a comma list of {', '.join(allowed)}")
    return tuple(i for i in allowed if i == always or i in given)


def parse_precisions(precisions: str | Sequence[str]) -> tuple[str, ...]:
    """'fp16,int8' or a sequence -> ordered precisions; fp32 is always included (it is the reference)."""
    return _choose(precisions, PRECISIONS, "fp32", "--precision")


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """'onnx,openvino' or a sequence -> ordered formats; onnx is always included."""
    return _choose(formats, exportable(), "onnx", "--format")


def default_formats() -> tuple[str, ...]:
    """What a plain `export` writes: onnx, and every format of the table marked default that is installed."""
    return ("onnx", *(f.name for f in FORMATS.values() if f.exporter and f.default and installed(f)))


@contextmanager
def _timed(plan: Plan, name: str, bar: tqdm) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    plan.timings[name] = round(time.perf_counter() - t0, 3)
    bar.set_postfix_str(name)
    bar.update(1)


def check_inputs(
    ckpt: Path | None,
    out_dir: Path,
    precisions: str | Sequence[str],
    calib: Path | None,
    val: Path | None,
    *,
    arch: str | None,
    size: int,
    dynamic_hw: bool,
    opset: int,
    calib_count: int | None,
    calib_method: str,
    float_stem: bool,
    val_limit: int | None,
    engine: bool,
    engine_options: EngineOptions | None,
    seed: int,
    progress: bool,
    formats: str | Sequence[str] = ("onnx",),
) -> Plan:
    """Every input checked (bad input raises `RcrError`, exit 2) before the slow work starts."""
    if not onnx_export.DEFAULT_OPSET <= opset <= MAX_OPSET:
        raise RcrError(f"--opset {opset}: the exporter writes opsets {onnx_export.DEFAULT_OPSET} to {MAX_OPSET}; pass one of those")
    if val_limit is not None and val_limit < 1:
        raise RcrError(f"--val-limit {val_limit}: must be at least 1 (score the first N images of --val)")
    chosen = parse_precisions(precisions)
    chosen_formats = parse_formats(formats)
    for name in chosen_formats[1:]:
        fmt = FORMATS[name]
        if ":" in fmt.probe:
            load(fmt.probe)()  # raises naming what is missing and how to get it
        elif not installed(fmt):
            how = f"pip install 'rcr-deploy[{fmt.extra}]'" if fmt.extra else f"pip install {fmt.probe} (rcr-deploy's base install has it)"
            raise BackendUnavailable(f"--format {name}: {fmt.probe} is not installed; {how}, or drop {name} from --format")
    if calib_method not in prec.CALIB_METHODS:
        raise RcrError(f"unknown calibration method {calib_method!r}; use one of {', '.join(prec.CALIB_METHODS)}")
    calib_count = prec.DEFAULT_CALIB_COUNT[calib_method] if calib_count is None else calib_count
    if calib_count < 1:
        raise RcrError(f"--calib-count {calib_count} must be at least 1")
    calib_images = list_images(calib, "calibration")[:calib_count] if calib is not None else []
    for image in calib_images:  # an unreadable one fails now, not after minutes of work
        load_image(image)
    if "int8" in chosen and not calib_images:
        raise RcrError("INT8 needs calibration images: pass --calib DIR, a folder of your own photos (a few hundred is plenty)")
    val_images = []
    if val is not None:
        val_images = [p.image for p in list_pairs(val)[:val_limit]]
    if engine:
        require_tensorrt()
    loaded = load_checkpoint(default_checkpoint() if ckpt is None else Path(ckpt), arch=arch)
    options = (engine_options or EngineOptions(size=(size, size))) if engine else None
    return Plan(loaded, Path(out_dir), chosen, (size, size), dynamic_hw, opset, calib, calib_images, calib_method,
                float_stem, val, val_images, val_limit, options, seed, progress, chosen_formats)  # fmt: skip


def deploy_form(plan: Plan) -> Deployed:
    """Re-parameterise, and prove it on a train-form checkpoint (`VerificationError` otherwise)."""
    model = plan.checkpoint.model
    if plan.checkpoint.form == "deploy":
        return Deployed(plan, model.eval(), {"stage": "reparameterize", "passed": None, "note": "checkpoint is already deploy form; nothing to compare"})
    deploy = reparameterize(model).eval()
    return Deployed(plan, deploy, {"stage": "reparameterize", **_verify_reparam(model, plan.seed)})


def onnx_fp32(deployed: Deployed) -> Graph:
    """torch -> ONNX (dynamic batch) -> onnxsim -> structural check against the deploy model."""
    plan = deployed.plan
    proto = onnx_export.to_proto(deployed.model, plan.size, plan.dynamic_hw, plan.opset, plan.checkpoint.model.in_channels)
    proto = onnx_export.simplify(proto)
    return Graph(deployed, proto, onnx_export.check_structure(proto, deployed.model))


def convert_and_validate(graph: Graph, folder: Path, bar: tqdm) -> Staged:
    """Save FP32 and validate it against torch; convert, save and validate FP16 / INT8 against FP32."""
    plan, deployed = graph.deployed.plan, graph.deployed
    in_channels = plan.checkpoint.model.in_channels
    real_source = plan.calib_images or plan.val_images
    real = prec.load_batch(real_source[:VALIDATION_IMAGES], plan.size, in_channels) if real_source else None
    inputs = onnx_export.validation_inputs(in_channels, plan.size, real, plan.seed)
    paths = {p: folder / ARTIFACT_NAMES[p] for p in plan.precisions}
    staged = Staged(graph, folder, {"fp32": graph.proto}, {"fp32": graph.ops}, paths, {}, inputs)
    onnx_export.save_proto(graph.proto, staged.paths["fp32"])
    with _timed(plan, "validate-fp32", bar):
        fp32 = OnnxRuntimeRunner(staged.paths["fp32"])
        with TorchRunner(deployed.model, f"torch-deploy:{plan.checkpoint.path.name}") as reference:
            staged.validations["fp32"] = _validated(fp32, reference, inputs, "fp32")
    with fp32:
        for p in plan.precisions[1:]:
            with _timed(plan, f"convert-{p}", bar):
                if p == "fp16":
                    staged.protos[p] = prec.to_fp16(graph.proto)
                else:
                    staged.protos[p] = prec.quantize_int8(graph.proto, plan.calib_images, plan.size, in_channels, plan.calib_method, plan.progress, plan.float_stem)
                staged.ops[p] = onnx_export.check_structure(staged.protos[p], deployed.model)
                onnx_export.save_proto(staged.protos[p], staged.paths[p])
            with _timed(plan, f"validate-{p}", bar), OnnxRuntimeRunner(staged.paths[p]) as runner:
                staged.validations[p] = _validated(runner, fp32, inputs, p)
                if p == "int8":  # the same file fused differently: ORT without optimisations, OpenVINO
                    staged.across = prec.check_across_runtimes(staged.paths[p], inputs)
    return staged


def _scores(runner: Runner, plan: Plan) -> dict[str, Any]:
    """One model's mIoU on the --val folder."""
    report = evaluate(runner, plan.val, size=plan.size[0], limit=plan.val_limit, progress=plan.progress)
    return {"fg_miou": report.fg_miou, "class_miou": report.class_miou, "n_images": report.n_images}


def measure_accuracy(staged: Staged) -> dict[str, Any] | None:
    """mIoU of every artifact on the labelled folder, side by side, with the change from fp32."""
    plan = staged.graph.deployed.plan
    if plan.val is None:
        return None
    rows = []
    for p, artifact in staged.paths.items():
        with OnnxRuntimeRunner(artifact) as runner:
            rows.append({"precision": p, **_scores(runner, plan)})
    for row in rows:
        row["fg_miou_vs_fp32"] = row["fg_miou"] - rows[0]["fg_miou"]
        row["class_miou_vs_fp32"] = row["class_miou"] - rows[0]["class_miou"]
    return {"data": plan.val.name, "size": plan.size[0], "rows": rows}


def write_manifests(staged: Staged, accuracy: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Embed each precision's manifest in its ONNX and write it beside; returns the validation summaries."""
    deployed = staged.graph.deployed
    plan, ckpt = deployed.plan, deployed.plan.checkpoint
    variant = VARIANTS[ckpt.arch]
    fp32_summary = staged.validations["fp32"].summary()
    for p in plan.precisions:
        extra = {"calibration": {"images": len(plan.calib_images), "method": plan.calib_method, "folder": str(plan.calib), "float_stem": plan.float_stem}} if p == "int8" else {}
        record = manifests.build(
            arch=ckpt.arch,
            variant={"name": variant.name, "symbol": variant.symbol, "description": variant.description},
            checkpoint=ckpt.path,
            checkpoint_sha256=ckpt.sha256,
            precision=p,
            opset=plan.opset,
            in_channels=ckpt.model.in_channels,
            size=plan.size,
            dynamic_hw=plan.dynamic_hw,
            ops=staged.ops[p],
            export={"simplified": True, "dynamic_hw": plan.dynamic_hw, "seconds": plan.timings, **extra},
            validation=[deployed.check, fp32_summary] + ([staged.validations[p].summary()] if p != "fp32" else [])
            + (staged.across if p == "int8" else []),
            accuracy=accuracy,
        )
        manifests.embed(staged.protos[p], record)
        onnx_export.save_proto(staged.protos[p], staged.paths[p])
        write_manifest(staged.paths[p], record)
    return [deployed.check] + [v.summary() for v in staged.validations.values()] + staged.across


def other_format(staged: Staged, summaries: list[dict[str, Any]], name: str) -> dict[str, Path]:
    """One --format beyond onnx, by its exporter in the format table (rcr_deploy.formats), from the
    staged ONNX artifacts: precision -> its file in the staging folder. The exporter validates
    what it wrote; its summaries join `summaries`."""
    plan = staged.graph.deployed.plan
    in_channels = plan.checkpoint.model.in_channels
    calib = prec.load_batch(plan.calib_images, plan.size, in_channels) if "int8" in plan.precisions else None

    def measure(path: Path) -> dict[str, Any]:
        with load_runner(path, hint="throughput") as runner:
            return _scores(runner, plan)

    artifacts = {p: path for p, path in staged.paths.items() if p in FORMATS[name].precisions}
    job = FormatJob(staged.inputs, calib, plan.size[0], plan.progress, measure if plan.val is not None else None, plan.float_stem)
    made, checks = load(FORMATS[name].exporter)(artifacts, job)
    summaries += checks
    return made


def build_engines(staged: Staged, summaries: list[dict[str, Any]]) -> dict[str, Path]:
    """A TensorRT engine per staged artifact, into the staging folder's engines/, each validated
    against ONNX Runtime (`VerificationError` beyond tolerance). None without --engine."""
    plan = staged.graph.deployed.plan
    if plan.engine_options is None:
        return {}

    engines = {}
    for p, artifact in staged.paths.items():
        t0 = time.perf_counter()
        engines[p] = build_engine(artifact, plan.engine_options, staged.folder / ENGINES, force=True)
        plan.timings[f"engine-{p}"] = round(time.perf_counter() - t0, 3)
        check = validate_engine(engines[p], artifact, plan.seed)
        check.stage = f"tensorrt-{p}"
        summaries.append(check.summary())
        if not check:
            raise VerificationError(f"{engines[p].name}: differs from {artifact.name} on ONNX Runtime beyond tolerance")
    return engines


def export(
    ckpt: Path | None,
    out_dir: Path = DEFAULT_OUT_DIR,
    precisions: str | Sequence[str] = ("fp32",),
    calib: Path | None = None,
    val: Path | None = None,
    *,
    arch: str | None = None,
    size: int = 224,
    dynamic_hw: bool = False,
    opset: int = onnx_export.DEFAULT_OPSET,
    calib_count: int | None = None,
    calib_method: str = "minmax",
    float_stem: bool = True,
    val_limit: int | None = None,
    engine: bool = False,
    engine_options: EngineOptions | None = None,
    force: bool = False,
    progress: bool = True,
    seed: int = 0,
    formats: str | Sequence[str] = ("onnx",),
) -> ExportResult:
    """Run the export chain and publish `ARTIFACT_NAMES[p]` + manifest for every precision in `out_dir`.

    Bad input raises `RcrError` before any work (exit 2); a stage beyond tolerance raises
    `VerificationError` (exit 1). Nothing in `out_dir` changes unless every step passed."""
    plan = check_inputs(
        ckpt, Path(out_dir), precisions, calib, val, arch=arch, size=size, dynamic_hw=dynamic_hw, opset=opset,
        calib_count=calib_count, calib_method=calib_method, float_stem=float_stem, val_limit=val_limit,
        engine=engine, engine_options=engine_options, seed=seed, progress=progress, formats=formats,
    )
    names = [n for p in plan.precisions for n in (ARTIFACT_NAMES[p], manifest_path(ARTIFACT_NAMES[p]).name)]
    for name in plan.formats[1:]:
        names += list(dict.fromkeys(f.name for p in FORMATS[name].precisions if p in plan.precisions
                                    for f in format_files(format_path(ARTIFACT_NAMES[p], name), name)))
    steps = 4 + 2 * (len(plan.precisions) - 1) + (val is not None) + len(plan.formats) - 1
    with ExportSet(plan.out_dir, names, force) as export_set, tqdm(total=steps, desc="export", unit="step", disable=not progress) as bar:
        with _timed(plan, "reparameterize+verify", bar):
            deployed = deploy_form(plan)
        with _timed(plan, "export-onnx", bar):
            graph = onnx_fp32(deployed)
        staged = convert_and_validate(graph, export_set.path, bar)
        accuracy = None
        if val is not None:
            with _timed(plan, "accuracy", bar):
                accuracy = measure_accuracy(staged)
        with _timed(plan, "manifests", bar):
            summaries = write_manifests(staged, accuracy)
        made = {}
        for name in plan.formats[1:]:
            with _timed(plan, name, bar):
                made[name] = other_format(staged, summaries, name)
        engines = build_engines(staged, summaries)
        export_set.commit()
    published = {p: plan.out_dir / path.name for p, path in staged.paths.items()}
    engine_paths = {p: plan.out_dir / ENGINES / path.name for p, path in engines.items()}
    formats = {name: {p: plan.out_dir / path.name for p, path in files.items()} for name, files in made.items()}
    return ExportResult(plan.out_dir, published, summaries, accuracy, engine_paths, plan.timings, formats)


def _verify_reparam(model: torch.nn.Module, seed: int) -> dict[str, Any]:
    """Train form (eval) vs deploy form on a random input in float64, where a fusion bug cannot
    hide in rounding, at 64x64: the fusion does not depend on the size, and the train form is slow
    on CPU. The deploy form is then checked in float32 at the export size against ONNX Runtime.
    (`rcr-deploy verify-reparam CKPT` adds float32 and per-block checks for diagnosis.)"""
    generator = torch.Generator().manual_seed(seed)
    train = copy.deepcopy(model).double().eval()
    x = torch.randn(1, train.in_channels, 64, 64, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        result = compare("b1 64x64", reparameterize(train)(x), train(x), DEFAULT_TOLERANCES[torch.float64])
    if not result:
        raise VerificationError(
            f"deploy form differs from the train form: max abs {result.max_abs:.3e}, max rel {result.max_rel:.3e} "
            f"at {result.worst_index} (float64); run 'rcr-deploy verify-reparam CKPT' for per-block checks"
        )
    return {"passed": True, "checks": [dataclasses.asdict(result)]}


def _validated(runner: Any, reference: Any, inputs: dict[str, np.ndarray], precision: str) -> onnx_export.Validation:
    tol, agreement = TOLERANCES[precision]
    result = onnx_export.validate(runner, reference, inputs, tol, agreement)
    result.stage = precision
    if not result:
        s = result.summary()
        raise VerificationError(
            f"{precision} artifact differs from {reference.name} beyond tolerance: max abs {s['max_abs']:.3e} "
            f"(rtol {tol.rtol}, atol {tol.atol}) on {s['worst']['input']} at {s['worst']['index']}, "
            f"mask agreement {s['mask_agreement']}"
        )
    return result
