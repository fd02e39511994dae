"""Selfies against whole bodies: every validated epoch of the mixed fine-tunes and every point of
the weight-interpolation sweeps, EG1800 on one axis and CCP on the other, beside MediaPipe and
the region the shipped model aims for (issue: CCP >= 88 while EG1800 >= 95.2).

    python -m rcr_deploy.benchmarks.tradeoff

Reads benchmarks/results/mix-ft*-cpu-2core.json and mix-gpu*.json (the runs' histories; a GPU run
validated on the CCP copy it carried), mix-wise*.json (the sweeps) and the shipped model's
framings record (MediaPipe's scores on the same images); writes benchmarks/results/tradeoff.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rcr_deploy.benchmarks.machine import RESULTS
from rcr_deploy.checkpoint import DEFAULT_CHECKPOINT
from rcr_deploy.fileio import atomic_path, sha256_file

AIM = {"eg1800": 95.2, "ccp": 88.0}


def _load(results: Path, *patterns: str) -> list[tuple[str, dict[str, Any]]]:
    paths = [p for pattern in patterns for p in sorted(results.glob(pattern))]
    return [(p.stem.removesuffix("-cpu-2core"), json.loads(p.read_text())) for p in paths]


def plot(results: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, sweeps = _load(results, "mix-ft*-cpu-2core.json", "mix-gpu*.json"), _load(results, "mix-wise*.json")
    framings = results / f"framings-{sha256_file(DEFAULT_CHECKPOINT)[:12]}.json"
    if not runs or not sweeps or not framings.is_file():
        raise FileNotFoundError(f"{results}: needs mix-ft*-cpu-2core.json, mix-wise*.json and {framings.name} (the shipped model's)")
    fig, ax = plt.subplots(figsize=(11, 5.4))
    for i, (name, run) in enumerate(runs):
        epochs = [h["val_by_data"] for h in run["history"] if "val_by_data" in h]
        ax.plot([100 * e["eg1800"]["val_fg_miou"] for e in epochs], [100 * e["ccp"]["val_fg_miou"] for e in epochs],
                "o" if run["config"]["device"] == "cpu" else "s", ms=4, color=plt.get_cmap("tab10")(i % 10), alpha=0.8,
                label=f"{name}{' (--distill)' if run['config'].get('distill') else ''}: each validated epoch"
                + ("" if run["config"]["device"] == "cpu" else ", on the CCP copy it carried"))  # fmt: skip
    for j, (name, sweep) in enumerate(sweeps):
        rows = sweep["sweep"]
        colour = plt.get_cmap("Dark2")(j)
        if not sweep["chosen_alpha"]:  # none kept the selfies: every alpha, marked, is the point
            ax.plot([r["fg_miou"]["eg1800"] for r in rows], [r["fg_miou"]["ccp"] for r in rows], "--^", color=colour, lw=1, ms=5,
                    label=f"{name}: every alpha, none within {sweep['max_loss']:g} of BASE")  # fmt: skip
            continue
        ax.plot([r["fg_miou"]["eg1800"] for r in rows], [r["fg_miou"]["ccp"] for r in rows], "--", color="grey", lw=1)
        chosen = next(r for r in rows if r["alpha"] == sweep["chosen_alpha"])
        ax.plot([chosen["fg_miou"]["eg1800"]], [chosen["fg_miou"]["ccp"]], "D", ms=8, color=colour, mec="k",
                label=f"{name}: interpolated at alpha {sweep['chosen_alpha']:g} (dashed: every alpha)")  # fmt: skip
    # BASE, far below: the sweeps' alpha 0 lowest on CCP (the shipped-line sweep starts from the shipped model)
    base = min((r["fg_miou"] for _, sweep in sweeps for r in sweep["sweep"] if r["alpha"] == 0), key=lambda f: f["ccp"])
    ax.annotate(f"BASE, the selfie model: {base['eg1800']:.2f} / {base['ccp']:.2f}", xy=(base["eg1800"], 76), xytext=(95.45, 78.5),
                fontsize=8, arrowprops={"arrowstyle": "->", "color": "grey"})  # fmt: skip
    peer = json.loads(framings.read_text())["fg_miou"]["mediapipe"]
    ax.plot([peer["eg1800"]["as-is"]], [peer["ccp"]["as-is"]], "k*", ms=12, label="MediaPipe selfie segmenter")
    ax.fill_between([AIM["eg1800"], 96.5], AIM["ccp"], 96, color="C2", alpha=0.15, label="aim: CCP >= 88 and EG1800 >= 95.2")
    ax.set(xlim=(93.8, 96.5), ylim=(76, 96), xlabel="EG1800 validation fg mIoU at 224 (%)", ylabel="CCP validation fg mIoU at 224 (%)",
           title="Selfies against whole bodies: runs (circles: CPU, squares: GPU) and interpolations")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: the points fill the axes
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    try:
        plot(args.results, args.results / "tradeoff.png")
    except FileNotFoundError as e:
        parser.error(f"{e}; --results names the folder that holds them")
    print(f"wrote {args.results / 'tradeoff.png'}")


if __name__ == "__main__":
    main()
