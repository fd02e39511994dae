"""Keep what a model knew while adding what a fine-tune taught it: interpolate the weights.

    python -m rcr_deploy.train.interpolate BASE TUNED --data ../shared/data/eg1800 --data ../shared/data/ccp \
        [--alphas 0,0.1,...,1] [--max-loss 0.2] --out runs/mix-wise

BASE is the model before the fine-tune (the shipped one), TUNED the fine-tuned run (its folder, for
best.pt and history.json, or a checkpoint). Every parameter and BatchNorm statistic becomes
(1 - alpha) * BASE + alpha * TUNED; each alpha is scored on each dataset's validation split at 224. The
chosen weights are those of the largest alpha whose score on the first --data is at most --max-loss
points below BASE's: as much of the new data as the old data's accuracy allows (WiSE-FT, Wortsman
et al., CVPR 2022). Why it works: a fine-tune from BASE stays in BASE's basin, so the line between
them holds no loss barrier, and mixed fine-tunes of RCRNet lose selfie accuracy before they gain
all of the full-body one. The alpha is picked on the validation splits, as a run's best epoch is.

Writes OUT/best.pt (train form, its meta recording both parents and the sweep), OUT/history.json
(TUNED's, so `python -m rcr_deploy.train.ship OUT` ships it with the run's curve),
OUT/interpolation.json and OUT/interpolation.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from rcr_deploy.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from rcr_deploy.data.folder import sources
from rcr_deploy.errors import TYPED, CheckpointError, RcrError, report
from rcr_deploy.evaluate import evaluate
from rcr_deploy.fileio import atomic_path, write_text_atomic
from rcr_deploy.runtime.torch_runner import TorchRunner

DEFAULT_ALPHAS = [round(0.1 * i, 1) for i in range(11)]


def interpolate(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) * base + alpha * tuned for every floating tensor; counters (BatchNorm's
    num_batches_tracked) are TUNED's."""
    return {k: torch.lerp(base[k], tuned[k], alpha) if v.is_floating_point() else tuned[k].clone() for k, v in base.items()}


def choose(sweep: list[dict[str, Any]], first: str, max_loss: float) -> dict[str, Any]:
    """The sweep row of the largest alpha whose `first` score is within `max_loss` (>= 0) points
    of alpha 0's (which the sweep holds)."""
    base = next(r for r in sweep if r["alpha"] == 0.0)
    floor = base["fg_miou"][first] - max_loss - 1e-9  # 95.4 - 0.3 is 95.10000000000001 in floats
    kept = [r for r in sweep if r["fg_miou"][first] >= floor]
    return max(kept, key=lambda r: r["alpha"])


def _parents(base_path: Path, tuned_path: Path) -> tuple[Checkpoint, Checkpoint, Path | None]:
    history = None
    if tuned_path.is_dir():
        history = tuned_path / "history.json"
        tuned_path = tuned_path / "best.pt"
    base = load_checkpoint(base_path, require_form="train")
    tuned = load_checkpoint(tuned_path, require_form="train")
    a, b = base.model.state_dict(), tuned.model.state_dict()
    if base.arch != tuned.arch or a.keys() != b.keys():
        raise CheckpointError(f"{tuned_path}: a {tuned.arch} that does not match {base_path} ({base.arch}); interpolate a fine-tune of BASE")
    if any(v.shape != a[k].shape for k, v in b.items()):
        raise CheckpointError(f"{tuned_path}: its tensors' shapes differ from {base_path}'s; interpolate a fine-tune of BASE")
    return base, tuned, history if history is not None and history.is_file() else None


def sweep_alphas(
    model: torch.nn.Module, base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], data: list[Path], alphas: list[float]
) -> list[dict[str, Any]]:
    """Score `model` with the weights interpolated at each alpha on each dataset's validation
    split (fg mIoU, %); `model` is left with the last alpha's."""
    named = sources([str(d) for d in data])
    rows = []
    for alpha in alphas:
        model.load_state_dict(interpolate(base, tuned, alpha))
        runner = TorchRunner(model.eval(), name=f"alpha={alpha:g}")
        scores = {s.name: 100 * evaluate(runner, s.root, split="val").fg_miou for s in named}
        rows.append({"alpha": alpha, "fg_miou": scores})
        print(f"alpha {alpha:.2f}: " + ", ".join(f"{n} {v:.2f}" for n, v in scores.items()), file=sys.stderr, flush=True)
    return rows


def plot(sweep: list[dict[str, Any]], chosen: dict[str, Any], path: Path) -> None:
    """Each dataset's validation score against alpha, the chosen alpha marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sweep[0]["fg_miou"])
    # one panel per dataset: the kept one moves by tenths, the new one by tens
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False)
    alphas = [r["alpha"] for r in sweep]
    for ax, name in zip(axes[0], names):
        ax.plot(alphas, [r["fg_miou"][name] for r in sweep], "o-", ms=4)
        label = f"chosen: alpha {chosen['alpha']:g}, {chosen['fg_miou'][name]:.2f}"
        ax.plot([chosen["alpha"]], [chosen["fg_miou"][name]], "D", ms=8, color="C3", label=label)
        ax.set(xlabel="alpha (0: BASE, 1: TUNED)", ylabel="validation fg mIoU at 224 (%)", title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("weight interpolation between BASE and TUNED")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _alphas(text: str) -> list[float]:
    try:
        values = sorted({float(x) for x in text.split(",")})
    except ValueError:
        raise RcrError(f"--alphas {text!r}: not a comma-separated list of numbers; e.g. --alphas 0,0.5,1") from None
    if not values or values[0] < 0 or values[-1] > 1:
        raise RcrError(f"--alphas {text!r}: each must lie in [0, 1]; e.g. --alphas 0,0.5,1")
    if values[0] != 0:
        raise RcrError(f"--alphas {text!r}: include 0 (BASE itself, the score --max-loss is measured from)")
    return values


def run(args: argparse.Namespace) -> dict[str, Any]:
    alphas = _alphas(args.alphas)
    if args.max_loss < 0:
        raise RcrError(f"--max-loss {args.max_loss}: points the first --data may lose, so 0 or more; e.g. --max-loss 0.2")
    base, tuned, history = _parents(args.base, args.tuned)
    a = {k: v.clone() for k, v in base.model.state_dict().items()}
    b = {k: v.clone() for k, v in tuned.model.state_dict().items()}
    sweep = sweep_alphas(tuned.model, a, b, args.data, alphas)
    first = next(iter(sweep[0]["fg_miou"]))
    chosen = choose(sweep, first, args.max_loss)
    record = {
        "base": str(base.path), "base_sha256": base.sha256, "tuned": str(tuned.path), "tuned_sha256": tuned.sha256,
        "data": [str(d) for d in args.data], "max_loss": args.max_loss, "split": "val", "size": 224,
        "sweep": sweep, "chosen_alpha": chosen["alpha"],
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "interpolation.json", json.dumps(record, indent=1) + "\n")
    plot(sweep, chosen, args.out / "interpolation.png")
    tuned.model.load_state_dict(interpolate(a, b, chosen["alpha"]))
    meta = {**tuned.meta, "interpolation": {k: v for k, v in record.items() if k != "sweep"} | {"fg_miou": chosen["fg_miou"]}}
    save_checkpoint(args.out / "best.pt", tuned.model, tuned.arch, meta=meta)
    if history is not None:
        shutil.copyfile(history, args.out / "history.json")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the model before the fine-tune (train-form checkpoint)")
    parser.add_argument("tuned", type=Path, help="the fine-tuned run's folder (best.pt, history.json) or checkpoint")
    parser.add_argument("--data", type=Path, action="append", required=True, help="a dataset to score on (repeat); the first is the one kept")
    parser.add_argument("--alphas", default=",".join(f"{a:g}" for a in DEFAULT_ALPHAS), help="weights of TUNED to try, in [0, 1], with 0")
    parser.add_argument("--max-loss", type=float, default=0.2, help="points the first --data may lose against BASE (default 0.2)")
    parser.add_argument("--out", type=Path, required=True, help="folder for best.pt, history.json and the sweep")
    args = parser.parse_args(argv)
    try:
        record = run(args)
    except TYPED as e:
        return report(e)
    print(json.dumps({"out": str(args.out / "best.pt"), "alpha": record["chosen_alpha"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
