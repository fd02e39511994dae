"""`rcr-deploy demo`: the whole main job in one command, offline, on the built-in model.

built-in model -> export FP32 + INT8 (which verifies the re-parameterisation, validates each
artifact and measures its accuracy) -> benchmark the backends this machine has -> segment the
sample image and a generated clip -> one report folder.

Like cli.py, this sits above `exporters` and `benchmarks` and calls their public functions
(imported inside `run_demo`); the rest of the core never imports them.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rcr_deploy.checkpoint import default_checkpoint, load_checkpoint
from rcr_deploy.data import SAMPLE_IMAGE, synthetic
from rcr_deploy.fileio import write_text_atomic
from rcr_deploy.infer import MemorySink, Segmenter, infer, run
from rcr_deploy.postprocess import write_png
from rcr_deploy.preprocess import load_image
from rcr_deploy.formats import FORMATS, bench_targets, missing
from rcr_deploy.runtime import load_runner
from rcr_deploy.video import VideoSource, stability, write_video

CLIP_SEED = 7
GENERATED_SIZE = (320, 240)
CALIB_IMAGES = 32  # generated portraits for INT8 calibration (plus the sample photograph)
CLIP_FRAMES = 48
CLIP_SIZE = (240, 320)
CLIP_FPS = 15.0


def sample_image() -> np.ndarray:
    """The shipped sample photograph."""
    return load_image(SAMPLE_IMAGE)


@dataclasses.dataclass
class DemoResult:
    out_dir: Path
    index: Path
    seconds: dict[str, float]
    bench: dict[str, Any]
    stability: dict[str, dict[str, float]]


def _write_dataset(root: Path, n: int, seed: int, with_masks: bool) -> Path:
    """Generated portraits as a folder (images/ and, for validation, masks/)."""
    for i, (rgb, mask) in enumerate(synthetic.portraits(n, *GENERATED_SIZE, seed=seed)):
        write_png(root / "images" / f"gen{i:03d}.png", rgb)
        if with_masks:
            write_png(root / "masks" / f"gen{i:03d}.png", mask * 255)
    return root


def run_demo(
    out_dir: Path, ckpt: Path | None = None, progress: bool = True, log: Callable[[str], None] = print, size: int = 224
) -> DemoResult:
    """Run every step into `out_dir` (overwriting an earlier demo's files) and write `out_dir/README.md`.
    It also exports every default format of the table (rcr_deploy.formats) that is installed
    (OpenVINO's IRs), times each exported file, and segments the clip on the fastest engine
    (`load_runner`'s auto choice); `size` is the exported input size."""
    from rcr_deploy.benchmarks.harness import BenchConfig, run_bench
    from rcr_deploy.benchmarks.plot import plot_speed_accuracy
    from rcr_deploy.benchmarks.report import write_json, write_markdown
    from rcr_deploy.exporters.pipeline import default_formats, export

    out_dir = Path(out_dir)
    ckpt = default_checkpoint() if ckpt is None else Path(ckpt)  # a missing built-in model fails before any work
    load_checkpoint(ckpt, require_form="train")  # the benchmark's torch baseline needs the train form
    seconds: dict[str, float] = {}
    t_start = time.perf_counter()

    def lap(name: str, t0: float) -> None:
        seconds[name] = round(time.perf_counter() - t0, 1)

    with tempfile.TemporaryDirectory(prefix="rcr-demo-") as tmp:
        t0 = time.perf_counter()
        calib = _write_dataset(Path(tmp) / "calib", CALIB_IMAGES, seed=1, with_masks=False)
        write_png(calib / "images" / "sample.png", sample_image())
        lap("generate data", t0)
        log(f"[1/4] export FP32 + INT8 (INT8 calibrated on {CALIB_IMAGES} generated portraits and the sample photograph)")
        t0 = time.perf_counter()
        exported = export(
            ckpt, out_dir / "export", precisions=("fp32", "int8"), calib=calib / "images", force=True, progress=progress,
            size=size, formats=default_formats(),
        )  # fmt: skip
        lap("verify + export", t0)

    log("[2/4] benchmark (short run)")
    t0 = time.perf_counter()
    made = {"onnx": exported.artifacts, **exported.formats}
    backends = ["torch-deploy"] + [
        name for fmt, files in made.items() for p, name in zip(FORMATS[fmt].precisions, bench_targets(FORMATS[fmt])) if p in files
    ]
    config = BenchConfig(backends=backends, out_dir=out_dir / "export", ckpt=ckpt, size=size, warmup=2, iters=15, max_seconds=2.0)
    bench = run_bench(config, command="rcr-deploy demo")
    for fmt in FORMATS.values():
        reason = missing(fmt)
        if reason:
            bench["skipped"].append({"name": fmt.name, "reason": reason})
    write_json(bench, out_dir / "bench.json")
    write_markdown(bench, out_dir / "bench.md")
    plot_speed_accuracy(bench, out_dir / "speed-accuracy.png")
    lap("benchmark", t0)

    log("[3/4] segment the sample photograph with each artifact")
    t0 = time.perf_counter()
    sample_path = out_dir / "sample.png"
    write_png(sample_path, sample_image())
    for precision, artifact in exported.artifacts.items():
        infer(str(sample_path), artifact, out_dir / precision, save="before-after,overlay,cutout", background="blur", progress=False)
    lap("segment sample", t0)

    log(f"[4/4] segment a generated {CLIP_FRAMES}-frame clip (temporal prior on, and off for comparison)")
    t0 = time.perf_counter()
    frames = list(synthetic.video(CLIP_FRAMES, *CLIP_SIZE, seed=CLIP_SEED))
    clip = write_video(out_dir / "clip.mp4", [f for f, _ in frames], fps=CLIP_FPS)
    masks = [m for _, m in frames]
    scores: dict[str, dict[str, float]] = {}
    with load_runner(out_dir / "export") as runner:  # the FP32 model on the fastest engine installed
        fp32 = Segmenter(runner)
        result = infer(str(clip), runner, out_dir, save="overlay", prior=True, progress=progress)
        for prior in (True, False):
            sink = MemorySink()
            run(VideoSource(clip), fp32, sink, prior=prior, progress=False)
            scores["prior on" if prior else "prior off"] = dataclasses.asdict(stability(sink.probs, masks))
    write_text_atomic(out_dir / "stability.json", json.dumps(scores, indent=2) + "\n")
    lap("segment clip", t0)
    seconds["total"] = round(time.perf_counter() - t_start, 1)

    index = out_dir / "README.md"
    write_text_atomic(index, _index(exported, bench, scores, result.timings.summary(), seconds, load_checkpoint(ckpt).meta))
    return DemoResult(out_dir, index, seconds, bench, scores)


def _index(
    exported: Any, bench: dict[str, Any], scores: dict[str, dict[str, float]], clip_timing: str, seconds: dict[str, float], meta: dict[str, Any]
) -> str:
    """The report folder's front page."""
    from rcr_deploy.benchmarks.report import COLUMNS, rows

    checks = {v["stage"]: v for v in exported.validation}
    reparam = checks["reparameterize"]["checks"]
    lines = [
        "# rcr-deploy demo report",
        "",
        f"Model: `{bench['model']['checkpoint']}` ({bench['model']['arch']}, sha256 {bench['model']['sha256'][:12]}). "
        f"Machine: {bench['machine']['cpu']}, {bench['machine']['cores']} cores, {bench['config']['threads']} threads. "
        f"Total {seconds['total']} s ({', '.join(f'{k} {v} s' for k, v in seconds.items() if k != 'total')}).",
        "",
        "## Checks",
        "",
        f"- re-parameterisation: deploy form equals train form in {len(reparam)} check(s) "
        f"({', '.join(sorted({c['dtype'] for c in reparam}))}), worst relative error {max(c['max_rel'] for c in reparam):.1e}",
    ]
    for precision in ("fp32", "int8"):
        v = checks[precision]
        agreement = f", mask agreement {v['mask_agreement']:.2%}" if v.get("mask_agreement") is not None else ""
        lines.append(f"- {precision} ONNX vs {v['reference']}: max abs error {v['max_abs']:.2e}{agreement}")
    lines += [
        "",
        "## Size, accuracy, latency",
        "",
        _accuracy_line(meta) + " The INT8 row's agreement with FP32 is in the checks above. "
        "Full page with versions: [bench.md](bench.md); raw: [bench.json](bench.json).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + " --- |" * 2 + " ---: |" * (len(COLUMNS) - 2),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows(bench)]
    lines += [""] + [f"- skipped {s['name']}: {s['reason']}" for s in bench["skipped"]]
    lines += [
        "",
        "![speed-accuracy](speed-accuracy.png)",
        "",
        "## Sample photograph",
        "",
        "NASA's portrait of Eileen Collins (public domain). Input, overlay and blurred background, FP32 artifact:",
        "",
        "![before-after](fp32/sample_before-after.png)",
        "",
        "Per artifact: " + ", ".join(f"[{p}/]({p}/) (before-after, overlay, RGBA cut-out)" for p in exported.artifacts),
        "",
        "## Clip and temporal stability",
        "",
        f"Input [clip.mp4](clip.mp4) ({CLIP_FRAMES} generated frames with exact masks), output "
        f"[clip_overlay.mp4](clip_overlay.mp4), FP32 artifact, prior on: {clip_timing}.",
        "",
        "| | consecutive-mask IoU | ground truth's | flicker (mean gap) | foreground IoU |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, s in scores.items():
        lines.append(f"| {name} | {s['pred_consecutive_iou']:.4f} | {s['gt_consecutive_iou']:.4f} | {s['flicker']:.4f} | {s['fg_iou']:.4f} |")
    return "\n".join(lines) + "\n"


def _accuracy_line(meta: dict[str, Any]) -> str:
    """The model's accuracy as its model card gives it: measured on the EG1800 validation split when
    it was shipped (no dataset ships with the package, so the demo cannot measure it)."""
    val = meta.get("val_224")
    if not val:
        return "Accuracy: this checkpoint records no validation figure (see docs/model-card.md for the built-in one)."
    return (
        f"Accuracy (from the checkpoint's record and docs/model-card.md, not measured by the demo): "
        f"{100 * val['fg_miou']:.2f} mean per-image foreground IoU, {100 * val['class_miou']:.2f} class-mean IoU "
        f"on the {val['images']}-image EG1800 validation split at 224x224."
    )
