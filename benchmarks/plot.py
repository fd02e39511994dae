"""The speed-accuracy chart, in the manner of the paper's Figure 1: latency against mIoU."""

from __future__ import annotations

import os
from typing import Any

from rcr_deploy.fileio import atomic_path


def plot_speed_accuracy(report: dict[str, Any], path: str | os.PathLike, batch: int = 1) -> list[str]:
    """One labelled dot per target (p50 at `batch` vs mIoU); the paper's mIoU as a dashed line.

    Targets without an mIoU (no `--val` at export) are listed under the axis instead of being
    placed at a made-up height. Returns their names.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    points, missing = [], []
    for res in report["results"]:
        run = next((r for r in res["runs"] if r["batch"] == batch), None)
        if run is None:
            continue
        if res["miou"] is None:
            missing.append(res["name"])
        else:
            points.append((run["p50_ms"], res["miou"], res["name"], res["artifact_bytes"]))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, (latency, miou, name, size) in enumerate(sorted(points)):
        ax.scatter(latency, miou, s=40 + (size or 0) / 5e4, alpha=0.8)
        # Targets sharing one mIoU (same weights) sit on one line: stagger their labels.
        ax.annotate(name, (latency, miou), textcoords="offset points", xytext=(4, 6 + 10 * (i % 4)), fontsize=8)
    latencies = [p[0] for p in points]
    if latencies and max(latencies) > 5 * min(latencies):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    paper = report["model"].get("paper")
    if paper:
        ax.axhline(paper["miou"], ls="--", c="grey", lw=1)
        ax.text(ax.get_xlim()[1], paper["miou"], f" paper {report['model']['arch']} ({paper['miou']})", va="bottom", ha="right", fontsize=8, c="grey")
    m = report["machine"]
    ax.set_xlabel(f"p50 latency at batch {batch} (ms), {report['config']['threads']} threads")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"{report['model']['arch']} {report['config']['size']}x{report['config']['size']}: speed vs accuracy on {m['gpu'] or m['cpu']}", fontsize=10)
    ax.grid(alpha=0.3)
    if missing:
        fig.text(0.01, 0.01, "no mIoU (export without --val, or not measured): " + ", ".join(missing), fontsize=7, c="dimgrey")
    fig.tight_layout(rect=(0, 0.04 if missing else 0, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return missing
