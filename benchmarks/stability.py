"""Temporal stability with and without the prior channel, on generated clips with exact masks.

    python -m rcr_deploy.benchmarks.stability [--model CKPT|ONNX] [--clips 4] [--frames 60]

Each clip (`rcr_deploy.data.synthetic.video`, one seed per clip) is segmented twice through the
same pipeline as `rcr-deploy infer`: prior on, then `--no-prior`. `rcr_deploy.video.stability`
scores each run. Results: benchmarks/results/stability.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
from pathlib import Path

from tqdm import tqdm

from rcr_deploy.data import synthetic
from rcr_deploy.fileio import sha256_file, write_text_atomic
from rcr_deploy.infer import MemorySink, Segmenter, run
from rcr_deploy.runtime import load_runner
from rcr_deploy.video import stability

from rcr_deploy.benchmarks.machine import RESULTS
from rcr_deploy.checkpoint import default_checkpoint
FIELDS = ("pred_consecutive_iou", "gt_consecutive_iou", "flicker", "fg_iou")


def measure(model: str | None, clips: int, frames: int, height: int, width: int) -> dict:
    path = default_checkpoint() if model is None else Path(model)
    segmenter = Segmenter(load_runner(path))
    per_clip = []
    for seed in tqdm(range(clips), desc="clips", unit="clip"):
        clip = list(synthetic.video(frames, height, width, seed=seed))
        masks = [m for _, m in clip]
        row = {"seed": seed}
        for prior in (True, False):
            sink = MemorySink()
            run(((str(t), f) for t, (f, _) in enumerate(clip)), segmenter, sink, prior=prior, progress=False)
            row["prior on" if prior else "prior off"] = dataclasses.asdict(stability(sink.probs, masks))
        per_clip.append(row)
    mean = {mode: {f: statistics.mean(r[mode][f] for r in per_clip) for f in FIELDS} for mode in ("prior on", "prior off")}
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "file": path.name,
            "sha256": sha256_file(path),
            "runner": segmenter.runner.name,
            "exported_from": (segmenter.runner.manifest or {}).get("checkpoint"),  # for an artifact
        },
        "clips": {"count": clips, "frames": frames, "height": height, "width": width},
        "mean": mean,
        "per_clip": per_clip,
    }


def to_markdown(result: dict) -> str:
    c, m = result["clips"], result["model"]
    lines = [
        "# Temporal stability: prior channel on vs off",
        "",
        f"{result['created']}; model `{m['file']}` (sha256 {m['sha256'][:12]}"
        + (f", exported from `{m['exported_from']['file']}` sha256 {m['exported_from']['sha256'][:12]}" if m["exported_from"] else "")
        + f"); {c['count']} generated clips of "
        f"{c['frames']} frames at {c['width']}x{c['height']} (seeds 0-{c['count'] - 1}), means over clips.",
        "",
        "| | consecutive-mask IoU | ground truth's | flicker (mean gap) | foreground IoU |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for mode, s in result["mean"].items():
        lines.append(f"| {mode} | {s['pred_consecutive_iou']:.4f} | {s['gt_consecutive_iou']:.4f} | {s['flicker']:.4f} | {s['fg_iou']:.4f} |")
    lines += ["", "Flicker: the mean |IoU(pred t, pred t-1) - IoU(truth t, truth t-1)| over frame pairs (0 is ideal).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint or artifact; default: the built-in model")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    args = parser.parse_args()
    result = measure(args.model, args.clips, args.frames, args.height, args.width)
    write_text_atomic(RESULTS / "stability.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(RESULTS / "stability.md", to_markdown(result))
    print(to_markdown(result))
    print(f"wrote {RESULTS}/stability.json and .md")


if __name__ == "__main__":
    main()
