"""The model card's accuracy table: every artifact of an export folder, FP32 and INT8, on each
dataset's validation split in each framing of `eval --framing`, with MediaPipe's selfie
segmenter on the same pictures where the `peer` extra is installed.

    rcr-deploy export -o out --precision fp32,int8 --format onnx,openvino
    python -m rcr_deploy.benchmarks.framings out --data ../shared/data/eg1800 --data ../shared/data/ccp

Writes benchmarks/results/framings-<model sha>.json and .md (`--out` for another folder). Each
figure is `evaluate` at 224 (the artifact's own size), as `rcr-deploy eval` prints it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rcr_deploy.artifact import ARTIFACT_NAMES
from rcr_deploy.benchmarks.machine import RESULTS, provenance, machine_info, write_result
from rcr_deploy.data.augment import FRAMINGS
from rcr_deploy.data.folder import sources
from rcr_deploy.errors import BackendUnavailable
from rcr_deploy.evaluate import evaluate
from rcr_deploy.infer import Segmenter
from rcr_deploy.runtime import load_runner

#: What is scored from an export folder: (label, file), FP32 first, each where it was exported.
ARTIFACTS = [(f"onnx-{p}", name) for p, name in ARTIFACT_NAMES.items() if p in ("fp32", "int8")] + [
    ("openvino-fp32", "rcrnet.xml"), ("openvino-int8", "rcrnet-int8.xml")]


def measure(folder: Path, data: list[str], split: str, limit: int | None) -> dict[str, Any]:
    """fg mIoU (%) by artifact, dataset and framing; MediaPipe's beside it where installed."""
    from rcr_deploy.benchmarks import peer

    named = sources(data)
    found = [(label, name) for label, name in ARTIFACTS if (folder / name).is_file()]
    bar = tqdm(total=(len(found) + 1) * len(named) * len(FRAMINGS), desc="framings", unit="eval")
    scores: dict[str, dict[str, dict[str, float]]] = {}
    sidecar = folder / f"{ARTIFACT_NAMES['fp32']}.json"
    checkpoint = json.loads(sidecar.read_text())["checkpoint"] if sidecar.is_file() else {}

    def each(label: str, score: Any) -> dict[str, dict[str, float]]:
        out = {}
        for src in named:
            out[src.name] = {}
            for f in FRAMINGS:
                bar.set_postfix_str(f"{label}, {src.name}, {f}")
                out[src.name][f] = score(src, f)
                bar.update()
        return out

    for label, name in found:
        with load_runner(folder / name) as runner:
            size = Segmenter(runner).size
            scores[label] = each(label, lambda src, f: 100 * evaluate(runner, src.root, size, limit, split, progress=False, framing=f).fg_miou)
    try:
        mediapipe = peer.SelfieSegmenter()
        scores["mediapipe"] = each("mediapipe", lambda src, f: peer.fg_miou(mediapipe, src.root, split, limit, f, progress=False)[0])
    except BackendUnavailable as e:
        print(f"MediaPipe not scored: {e}")
    bar.close()
    return {
        **provenance("framings"),
        "export": str(folder), "model_sha256": checkpoint.get("sha256"), "split": split, "limit": limit,
        "datasets": [src.name for src in named], "framings": list(FRAMINGS), "fg_miou": scores,
        "machine": machine_info(os.cpu_count() or 1),
    }


def to_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Accuracy by framing ({result['split']} splits, 224x224)", "",
             f"{result['created']}; `{result['command']}`; model sha256 {str(result['model_sha256'])[:12]}.", "",
             "Mean per-image foreground IoU (%). Framings: `rcr-deploy eval --framing` (docs/training.md).", ""]
    for data in result["datasets"]:
        lines += [f"## {data}", "", "| model | " + " | ".join(result["framings"]) + " |", "| --- |" + " ---: |" * len(result["framings"])]
        lines += [f"| {label} | " + " | ".join(f"{by_data[data][f]:.2f}" for f in result["framings"]) + " |" for label, by_data in result["fg_miou"].items()]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("export", type=Path, help="an export folder (rcr-deploy export --precision fp32,int8 --format onnx,openvino)")
    parser.add_argument("--data", action="append", required=True, help="a dataset folder; repeat for several")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N images of each dataset")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = measure(args.export, args.data, args.split, args.limit)
    stem = args.out / f"framings-{str(result['model_sha256'])[:12]}"
    write_result(stem, result, to_markdown(result))


if __name__ == "__main__":
    main()
