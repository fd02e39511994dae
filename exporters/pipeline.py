"""The export chain: checkpoint -> deploy form -> verified -> ONNX -> simplified -> validated,
then FP16 / INT8 artifacts, accuracy on labelled data, manifests, and TensorRT engines on request.

Everything is written into a hidden staging folder inside the output folder and moved into place
only when every step has passed, so an error or Ctrl-C leaves the previous artifacts untouched.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from rcr_deploy.checkpoint import default_checkpoint, load_checkpoint
from rcr_deploy.errors import RcrError, VerificationError
from rcr_deploy.models import VARIANTS
from rcr_deploy.preprocess import list_images, load_image
from rcr_deploy.reparam import DEFAULT_TOLERANCES, Tolerance, compare, reparameterize
from rcr_deploy.runtime import ARTIFACT_NAMES, DEFAULT_OUT_DIR, manifest_path
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from rcr_deploy.runtime.torch_runner import TorchRunner

from rcr_deploy.exporters import manifest as manifests
from rcr_deploy.exporters import onnx as onnx_export
from rcr_deploy.exporters import precision as prec

if TYPE_CHECKING:
    from rcr_deploy.exporters.tensorrt import EngineOptions

PRECISIONS = ("fp32", "fp16", "int8")
#: Each stage against the one before it: pass when max|a-b| <= atol + rtol * max|reference|,
#: and (on real images) when at least `agreement` of the pixels get the same class.
#: fp32 is ONNX Runtime vs the deploy-form torch model; fp16 and int8 are vs the fp32 artifact.
#: Measured on a partly trained RCRNet at 224 (README): fp16 max rel 1.1e-2, agreement 99.99 %;
#: int8 max rel 0.41, agreement 98.1 %. INT8 logits move a lot where the mask barely does, so its
#: logit bound only catches a broken graph and the pixel agreement is the real gate.
TOLERANCES: dict[str, tuple[Tolerance, float]] = {
    "fp32": (Tolerance(rtol=1e-4, atol=1e-5), 0.999),
    "fp16": (Tolerance(rtol=3e-2, atol=1e-3), 0.995),
    "int8": (Tolerance(rtol=1.0, atol=0.1), 0.95),
}
#: The newest opset that torch's exporter converts to and onnxruntime loads (checked with torch 2.13; 26 needs a fallback converter).
MAX_OPSET = 25
#: Real images used for the numerical validation (the accuracy run uses the whole --val folder).
VALIDATION_IMAGES = 8


@dataclasses.dataclass
class ExportResult:
    """What an export produced and proved."""

    out_dir: Path
    #: precision -> ONNX artifact path (its manifest is `runtime.manifest_path(path)`).
    artifacts: dict[str, Path]
    #: One summary per validated stage (see `exporters.onnx.Validation.summary`).
    validation: list[dict[str, Any]]
    #: mIoU per precision on the --val folder, or None without one.
    accuracy: dict[str, Any] | None
    #: precision -> TensorRT engine path, when engines were built.
    engines: dict[str, Path]
    #: Wall seconds per step.
    timings: dict[str, float]


def parse_precisions(precisions: str | Sequence[str]) -> tuple[str, ...]:
    """'fp16,int8' or a sequence -> ordered precisions; fp32 is always included (it is the reference)."""
    items = precisions.split(",") if isinstance(precisions, str) else list(precisions)
    items = [p.strip().lower() for p in items if p.strip()]
    unknown = [p for p in items if p not in PRECISIONS]
    if unknown:
        raise RcrError(f"unknown precision {', '.join(unknown)}; use a comma list of {', '.join(PRECISIONS)}")
    return tuple(p for p in PRECISIONS if p == "fp32" or p in items)


def _check_out_dir(out_dir: Path, names: list[str], force: bool) -> Path:
    """Create the output folder and a staging folder in it; refuse to replace files unless forced."""
    existing = [n for n in names if (out_dir / n).exists()]
    if existing and not force:
        raise RcrError(f"{out_dir / existing[0]} already exists; pass --force to replace it or choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    except OSError as e:
        raise RcrError(f"cannot write to {out_dir}: {e.strerror}; choose a writable folder with --out") from e


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
    val_limit: int | None = None,
    engine: bool = False,
    engine_options: EngineOptions | None = None,
    force: bool = False,
    progress: bool = True,
    seed: int = 0,
) -> ExportResult:
    """Run the export chain and write `ARTIFACT_NAMES[p]` + manifest for every precision into `out_dir`.

    Bad input raises `RcrError` before any work (exit 2); a stage beyond tolerance raises
    `VerificationError` (exit 1). Nothing in `out_dir` changes unless every step passed."""
    chosen = parse_precisions(precisions)
    out_dir = Path(out_dir)
    hw = (size, size)
    # Every input is checked before the slow work starts.
    if not onnx_export.DEFAULT_OPSET <= opset <= MAX_OPSET:
        raise RcrError(f"--opset {opset}: the exporter writes opsets {onnx_export.DEFAULT_OPSET} to {MAX_OPSET}; pass one of those")
    if val_limit is not None and val_limit < 1:
        raise RcrError(f"--val-limit {val_limit}: must be at least 1 (score the first N images of --val)")
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
    if val is not None:
        from rcr_deploy.data.folder import list_pairs

        val_pairs = list_pairs(val)[:val_limit]
    if engine:
        from rcr_deploy.exporters.tensorrt import require_tensorrt

        require_tensorrt()
    path = default_checkpoint() if ckpt is None else Path(ckpt)
    loaded = load_checkpoint(path, arch=arch)
    names = [n for p in chosen for n in (ARTIFACT_NAMES[p], manifest_path(Path(ARTIFACT_NAMES[p])).name)]
    staging = _check_out_dir(out_dir, names, force)

    steps = 4 + 2 * (len(chosen) - 1) + (val is not None) + 1
    bar = tqdm(total=steps, desc="export", unit="step", disable=not progress)
    timings: dict[str, float] = {}

    def step(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 3)
        bar.set_postfix_str(name)
        bar.update(1)

    try:
        t0 = time.perf_counter()
        deploy = loaded.model if loaded.form == "deploy" else reparameterize(loaded.model)
        deploy.eval()
        step("reparameterize", t0)

        t0 = time.perf_counter()
        if loaded.form == "train":
            reparam_check = _verify_reparam(loaded.model, seed)
            reparam_check["stage"] = "reparameterize"
        else:
            reparam_check = {"stage": "reparameterize", "passed": None, "note": "checkpoint is already deploy form; nothing to compare"}
        step("verify-reparam", t0)

        t0 = time.perf_counter()
        proto = onnx_export.to_proto(deploy, hw, dynamic_hw, opset, loaded.model.in_channels)
        step("export-onnx", t0)

        t0 = time.perf_counter()
        proto = onnx_export.simplify(proto)
        protos = {"fp32": proto}
        ops = {"fp32": onnx_export.check_structure(proto, deploy)}
        step("simplify+check", t0)

        in_channels = loaded.model.in_channels
        real_source = calib_images or ([p.image for p in val_pairs] if val is not None else [])
        real = prec.load_batch(real_source[:VALIDATION_IMAGES], hw, in_channels) if real_source else None
        inputs = onnx_export.validation_inputs(in_channels, hw, real, seed)
        staged = {p: staging / ARTIFACT_NAMES[p] for p in chosen}
        onnx_export.save_proto(proto, staged["fp32"])

        t0 = time.perf_counter()
        fp32_runner = OnnxRuntimeRunner(staged["fp32"])
        reference = TorchRunner(deploy, f"torch-deploy:{path.name}")
        validations = {"fp32": _validated(fp32_runner, reference, inputs, "fp32")}
        timings["validate-fp32"] = round(time.perf_counter() - t0, 3)

        for p in chosen[1:]:
            t0 = time.perf_counter()
            if p == "fp16":
                protos[p] = prec.to_fp16(proto)
            else:
                protos[p] = prec.quantize_int8(proto, calib_images, hw, in_channels, calib_method, progress)
            ops[p] = onnx_export.check_structure(protos[p], deploy)
            onnx_export.save_proto(protos[p], staged[p])
            step(f"convert-{p}", t0)
            t0 = time.perf_counter()
            validations[p] = _validated(OnnxRuntimeRunner(staged[p]), fp32_runner, inputs, p)
            step(f"validate-{p}", t0)

        accuracy = None
        if val is not None:
            t0 = time.perf_counter()
            accuracy = _accuracy(staged, Path(val), size, val_limit, progress)
            step("accuracy", t0)

        t0 = time.perf_counter()
        summaries = [reparam_check] + [v.summary() for v in validations.values()]
        variant = VARIANTS[loaded.arch]
        for p in chosen:
            extra = {"calibration": {"images": len(calib_images), "method": calib_method, "folder": str(calib)}} if p == "int8" else {}
            record = manifests.build(
                arch=loaded.arch,
                variant={"name": variant.name, "symbol": variant.symbol, "description": variant.description},
                checkpoint=path,
                checkpoint_sha256=loaded.sha256,
                precision=p,
                opset=opset,
                in_channels=in_channels,
                size=hw,
                dynamic_hw=dynamic_hw,
                ops=ops[p],
                export={"simplified": True, "dynamic_hw": dynamic_hw, "seconds": timings, **extra},
                validation=[reparam_check, validations["fp32"].summary()] + ([validations[p].summary()] if p != "fp32" else []),
                accuracy=accuracy,
            )
            manifests.embed(protos[p], record)
            onnx_export.save_proto(protos[p], staged[p])
            manifests.write_sidecar(staged[p], record)
        step("manifests", t0)

        # Commit: every check passed; move the staged files over the old ones.
        artifacts = {}
        for p, staged_path in staged.items():
            final = out_dir / staged_path.name
            os.replace(manifest_path(staged_path), manifest_path(final))
            os.replace(staged_path, final)
            artifacts[p] = final
    finally:
        bar.close()
        shutil.rmtree(staging, ignore_errors=True)

    engines = {}
    if engine:
        from rcr_deploy.exporters.tensorrt import EngineOptions, build_engine, validate_engine

        for p, artifact in artifacts.items():
            t0 = time.perf_counter()
            engines[p] = build_engine(artifact, engine_options or EngineOptions(size=hw), force=force)
            timings[f"engine-{p}"] = round(time.perf_counter() - t0, 3)
            check = validate_engine(engines[p], artifact, seed)
            check.stage = f"tensorrt-{p}"
            summaries.append(check.summary())
            if not check:
                raise VerificationError(f"{engines[p]}: differs from {artifact.name} on ONNX Runtime beyond tolerance")
    return ExportResult(out_dir, artifacts, summaries, accuracy, engines, timings)


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


def _accuracy(artifacts: dict[str, Path], val: Path, size: int, limit: int | None, progress: bool) -> dict[str, Any]:
    """mIoU of every artifact on the labelled folder, side by side, with the change from fp32."""
    from rcr_deploy.evaluate import evaluate

    rows = []
    for p, artifact in artifacts.items():
        report = evaluate(OnnxRuntimeRunner(artifact), val, size=size, limit=limit, progress=progress)
        rows.append({"precision": p, "fg_miou": report.fg_miou, "class_miou": report.class_miou, "n_images": report.n_images})
    for row in rows:
        row["fg_miou_vs_fp32"] = row["fg_miou"] - rows[0]["fg_miou"]
        row["class_miou_vs_fp32"] = row["class_miou"] - rows[0]["class_miou"]
    return {"data": val.name, "size": size, "rows": rows}
