"""How closely the phone files follow the ONNX FP32 artifact on real photographs: mask-pixel
agreement with ONNX FP32 and mean per-image foreground IoU, over a labelled split.

    python -m rcr_deploy.benchmarks.phone_accuracy EXPORT_DIR --data ../shared/data/eg1800 --split val \\
        [--framing reframed] --json benchmarks/results/phone-accuracy-eg1800-val.json

EXPORT_DIR is an `export --format tflite` folder (or one holding `rcrnet*.onnx` and `rcrnet*.tflite`
side by side). Each model sees the same letterboxed frames; agreement counts the pixels of the
original frames whose person / background decision equals ONNX FP32's. `--framing` scores the
pictures as `rcr-deploy eval --framing` makes them (reframed: small, off-centre people, where an
INT8 file's activation ranges matter most).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rcr_deploy.artifact import ARTIFACT_NAMES, read_manifest
from rcr_deploy.benchmarks.machine import machine_info, provenance
from rcr_deploy.data.augment import FRAMINGS
from rcr_deploy.data.folder import list_pairs
from rcr_deploy.evaluate import load_framed, predict
from rcr_deploy.fileio import write_text_atomic
from rcr_deploy.metrics import IoUMeter
from rcr_deploy.runtime import Runner
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

THREADS = 2  # each runner's, and what the record says of the machine


def _candidates(folder: Path) -> dict[str, Runner]:
    """Every ONNX artifact and phone file in `folder`, by label, ONNX FP32 first."""
    from rcr_deploy.runtime.tflite_runner import TFLiteRunner

    runners: dict[str, Runner] = {}
    for precision, name in ARTIFACT_NAMES.items():
        onnx = folder / name
        if onnx.is_file():
            runners[f"onnx-{precision}"] = OnnxRuntimeRunner(onnx, threads=THREADS)
        if onnx.with_suffix(".tflite").is_file():
            runners[f"tflite-{precision}"] = TFLiteRunner(onnx.with_suffix(".tflite"), threads=THREADS)
    return runners


def measure(folder: Path, data: Path, split: str, size: int, limit: int | None = None, framing: str = "as-is") -> dict[str, Any]:
    """Agreement with ONNX FP32 and fg mIoU of every model in `folder` on `data`'s `split`."""
    runners = _candidates(folder)
    if "onnx-fp32" not in runners:
        raise SystemExit(f"{folder}: no {ARTIFACT_NAMES['fp32']}; export first")
    meters = {label: IoUMeter() for label in runners}
    agree = {label: 0 for label in runners}
    total = 0
    pairs = list_pairs(data, split)[:limit]
    for i, pair in enumerate(tqdm(pairs, desc="phone accuracy", unit="img")):
        rgb, mask = load_framed(pairs, i, framing)
        probs = {label: predict(runner, [rgb], size)[0] for label, runner in runners.items()}
        reference = probs["onnx-fp32"] > 0.5
        total += reference.size
        for label, prob in probs.items():
            meters[label].add(pair.stem, prob, mask)
            agree[label] += int(((prob > 0.5) == reference).sum())
    for runner in runners.values():
        runner.close()
    rows = [
        {"model": label, "fg_miou": meters[label].fg_miou * 100, "fg_miou_vs_onnx_fp32": (meters[label].fg_miou - meters["onnx-fp32"].fg_miou) * 100,
         "pixel_agreement_with_onnx_fp32": agree[label] / total}
        for label in runners
    ]  # fmt: skip
    checkpoint = read_manifest(folder / ARTIFACT_NAMES["fp32"]).get("checkpoint", {})
    return {"data": str(data), "split": split, "framing": framing, "images": len(pairs), "size": size, "model_sha256": checkpoint.get("sha256"),
            "machine": machine_info(THREADS), "rows": rows}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--framing", choices=FRAMINGS, default="as-is")
    parser.add_argument("--json", type=Path, default=None, help="write the result here too")
    args = parser.parse_args()
    result = {**provenance("phone_accuracy"), **measure(args.folder, args.data, args.split, args.size, args.limit, args.framing)}
    text = json.dumps(result, indent=2)
    if args.json:
        write_text_atomic(args.json, text + "\n")
    print(text)
    for row in result["rows"]:
        print(f"{row['model']:>14}  fg mIoU {row['fg_miou']:.2f} ({row['fg_miou_vs_onnx_fp32']:+.2f})  agreement {row['pixel_agreement_with_onnx_fp32']:.5f}")


if __name__ == "__main__":
    main()
