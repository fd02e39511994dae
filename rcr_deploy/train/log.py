"""The training log kept across sessions: one entry per run that fed the shipped model, with its
hardware, samples seen, wall time and validation curve, and one plot of all of them.

The log is `docs/training-log.json`; `python -m rcr_deploy.train.ship` appends to it and redraws
`docs/training-log.png`. Samples are counted as the paper counts its schedule: one augmented
image per sample (1206 training images x 2000 epochs = 2.4 M).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rcr_deploy.fileio import atomic_path, write_text_atomic

PAPER_FG_MIOU = 96.33
GOAL_FG_MIOU = 95.5
PAPER_SAMPLES = 1206 * 2000


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else []


def run_entry(history: list[dict[str, Any]], samples_per_epoch: int, **fields: Any) -> dict[str, Any]:
    """A log entry from a run's history.json: its validated epochs as (epoch, samples, fg, class)."""
    curve = [
        [h["epoch"], h["epoch"] * samples_per_epoch, round(100 * h["val_fg_miou"], 2), round(100 * h["val_class_miou"], 2)]
        for h in history
        if "val_fg_miou" in h
    ]
    by_data: dict[str, list[list[float]]] = {}
    for h in history:
        for name, scores in h.get("val_by_data", {}).items():
            by_data.setdefault(name, []).append([h["epoch"], h["epoch"] * samples_per_epoch, round(100 * scores["val_fg_miou"], 2)])
    epochs = history[-1]["epoch"] if history else 0
    extra = {"curve_by_data": by_data} if by_data else {}
    return {**fields, "epochs": epochs, "samples": epochs * samples_per_epoch, "curve": curve, **extra}


def append(path: str | os.PathLike, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Add or replace (same `name`) one entry; returns the whole log."""
    log = [e for e in read_log(path) if e["name"] != entry["name"]] + [entry]
    write_text_atomic(path, json.dumps(log, indent=1) + "\n")
    return log


def _save(fig: Any, path: str | os.PathLike, rect: tuple[float, float, float, float] | None = None) -> None:
    """Write a figure as PNG atomically and free it; `rect` is the part the axes may fill."""
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=rect)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _curves(entry: dict[str, Any]) -> dict[str, list[list[float]]]:
    """A log entry's validation curves by dataset; runs before several datasets were EG1800's."""
    return entry.get("curve_by_data") or {"eg1800": entry["curve"]}


def plot_log(log: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Validation foreground mIoU against samples seen, one panel per dataset and one line per
    run, beside the paper (on EG1800)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(name for entry in log for name in _curves(entry)))
    fig, axes = plt.subplots(1, len(names), figsize=(8 if len(names) == 1 else 6.5 * len(names), 6.4), squeeze=False)
    legend: dict[str, Any] = {}  # one legend for the panels, below them: the runs would hide the curves
    colours = plt.get_cmap("tab20").colors  # a run keeps its colour in every panel
    for ax, name in zip(axes[0], names):
        for i, entry in enumerate(log):
            curve = _curves(entry).get(name)
            if curve:
                xs = [(entry.get("start_samples", 0) + c[1]) / 1e6 for c in curve]
                colour = colours[2 * i % 20 + 2 * i // 20 % 2]  # the dark shade of each pair, then the light ones
                ax.plot(xs, [c[2] for c in curve], "o-", ms=3, color=colour, label=f"{entry['name']} ({entry['hardware']})")
                if "interpolation" in entry and name in entry.get("by_data", {}):  # what was shipped is off the curve
                    alpha = entry["interpolation"]["chosen_alpha"]
                    state = "shipped" if entry is log[-1] else "shipped before"
                    ax.plot(xs[-1:], [100 * entry["by_data"][name]["val_224"]["fg_miou"]], "D", ms=7, color=colour,
                            label=f"{entry['name']}: {state}, weights interpolated at alpha {alpha:g}")  # fmt: skip
        if name == "eg1800":
            ax.plot([PAPER_SAMPLES / 1e6], [PAPER_FG_MIOU], "k*", ms=12, label=f"paper: {PAPER_FG_MIOU} after 2.4 M samples")
            ax.axhline(GOAL_FG_MIOU, color="grey", ls=":", lw=1, label=f"goal ({GOAL_FG_MIOU})")
        ax.set(xlabel="samples seen since initialisation (millions)", ylabel="val mean per-image fg IoU (%)", title=f"RCRNet on {name}: training log")
        low, high = ax.get_xlim()
        if high > 10 * max(low, 1e-3):
            ax.set_xscale("log")  # runs differ by orders of magnitude in samples
        ax.grid(alpha=0.3, which="both")
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=2 if len(names) > 1 else 1, fontsize=7)
    _save(fig, path, rect=(0, 0.3, 1, 1))


def plot_histories(histories: dict[str, list[dict[str, Any]]], path: str | os.PathLike) -> None:
    """Validation mIoU (both conventions) and training loss per epoch, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_iou, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, history in histories.items():
        validated = [h for h in history if "val_fg_miou" in h]
        if validated:
            epochs = [h["epoch"] for h in validated]
            line = ax_iou.plot(epochs, [100 * h["val_fg_miou"] for h in validated], "o-", label=f"{label}: fg mIoU")[0]
            ax_iou.plot(epochs, [100 * h["val_class_miou"] for h in validated], "s--", color=line.get_color(), label=f"{label}: class mIoU")
        ax_loss.plot([h["epoch"] for h in history], [h["loss"] for h in history], "-", label=label)
    ax_iou.set(xlabel="epoch", ylabel="validation IoU (%)", title="validation")
    ax_loss.set(xlabel="epoch", ylabel="L = Lm + αLc + βLe", title="training loss")
    for ax in (ax_iou, ax_loss):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    _save(fig, path)
