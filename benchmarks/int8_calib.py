"""Which INT8 calibration keeps the ONNX Q/DQ artifact within 0.5 points of FP32 on every dataset:
each `export --calib-method`, with and without `--float-stem`, on the same calibration images, scored on
each dataset's validation split as it is and reframed (small, off-centre people, where activation
ranges matter most).

    python -m rcr_deploy.benchmarks.int8_calib --calib DIR --calib-count 32 \\
        --data ../shared/data/eg1800 --data ../shared/data/ccp [--methods minmax,percentile,entropy] \\
        [--stems off,on] [MODEL]

MODEL defaults to the built-in checkpoint. Writes benchmarks/results/int8-calib-<model sha>.json and
.md (`--out` for another folder). Each figure is `evaluate` at 224, as `rcr-deploy eval` prints it.
The calibration folder should hold images of every dataset: the export takes the first
--calib-count files by name.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from rcr_deploy.artifact import ARTIFACT_NAMES
from rcr_deploy.benchmarks.machine import RESULTS, provenance, machine_info, write_result
from rcr_deploy.checkpoint import DEFAULT_CHECKPOINT
from rcr_deploy.data.folder import sources
from rcr_deploy.evaluate import evaluate
from rcr_deploy.exporters.pipeline import export
from rcr_deploy.exporters.precision import CALIB_METHODS
from rcr_deploy.fileio import sha256_file
from rcr_deploy.runtime import load_runner

FRAMINGS = ("as-is", "reframed")


def _scores(artifact: Path, data: list[str], split: str) -> dict[str, dict[str, float]]:
    with load_runner(artifact) as runner:
        return {s.name: {f: 100 * evaluate(runner, s.root, split=split, progress=False, framing=f).fg_miou for f in FRAMINGS} for s in sources(data)}


def _label(method: str, float_stem: bool) -> str:
    """The row of one INT8 variant: its method, and whether its high-resolution Convs stay float."""
    return f"int8-{method}" + (", float stem" if float_stem else "")


def measure(
    model: Path, calib: Path, count: int, methods: list[str], data: list[str], split: str, stems: list[bool]
) -> dict[str, Any]:
    """fg mIoU (%) of the FP32 artifact and of the INT8 one per calibration method, with and
    without the float stem, by dataset and framing."""
    scores: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (method, k) in enumerate((m, k) for k in stems for m in methods):
            out, row = Path(tmp) / f"{method}-{k}", _label(method, k)
            print(f"{row}: exporting", file=sys.stderr, flush=True)
            export(model, out, ["fp32", "int8"] if i == 0 else ["int8"], calib, calib_count=count, calib_method=method,
                   float_stem=k, progress=False)  # fmt: skip
            if i == 0:
                scores["fp32"] = _scores(out / ARTIFACT_NAMES["fp32"], data, split)
            scores[row] = _scores(out / ARTIFACT_NAMES["int8"], data, split)
            print(f"{row}: {scores[row]}", file=sys.stderr, flush=True)
    return {
        **provenance("int8_calib"),
        "model_sha256": sha256_file(model), "calib": {"folder": str(calib), "count": count},
        "float_stem": stems, "split": split,
        "datasets": [s.name for s in sources(data)], "framings": list(FRAMINGS), "fg_miou": scores,
        "machine": machine_info(os.cpu_count() or 1),
    }  # fmt: skip


def to_markdown(result: dict[str, Any]) -> str:
    cols = [(d, f) for d in result["datasets"] for f in result["framings"]]
    fp32 = result["fg_miou"]["fp32"]
    lines = [f"# ONNX INT8 by calibration method ({result['split']} splits, 224x224)", "",
             f"{result['created']}; `{result['command']}`; model sha256 {result['model_sha256'][:12]}; "
             f"{result['calib']['count']} calibration images.", "",
             "Mean per-image foreground IoU (%); in brackets, the change against FP32.", "",
             "| artifact | " + " | ".join(f"{d}, {f}" for d, f in cols) + " |", "| --- |" + " ---: |" * len(cols)]  # fmt: skip
    for label, by in result["fg_miou"].items():
        cells = [f"{by[d][f]:.2f}" + ("" if label == "fp32" else f" ({by[d][f] - fp32[d][f]:+.2f})") for d, f in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("model", type=Path, nargs="?", default=DEFAULT_CHECKPOINT, help="checkpoint (default: the built-in one)")
    parser.add_argument("--calib", type=Path, required=True, help="folder of calibration images (of every dataset)")
    parser.add_argument("--calib-count", type=int, default=32, help="calibration images: the first N by name")
    parser.add_argument("--methods", default=",".join(CALIB_METHODS), help="comma-separated calibration methods")
    parser.add_argument("--stems", default="off,on", help="comma-separated: off (every Conv int8), on (export's default --float-stem)")
    parser.add_argument("--data", action="append", required=True, help="a dataset folder; repeat for several")
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = measure(args.model, args.calib, args.calib_count, args.methods.split(","), args.data, args.split,
                     [k == "on" for k in args.stems.split(",")])
    write_result(args.out / f"int8-calib-{result['model_sha256'][:12]}", result, to_markdown(result))


if __name__ == "__main__":
    main()
