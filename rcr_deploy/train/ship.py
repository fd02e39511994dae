"""Turn a training run into the shipped model: weights only, verified, scored, with its curves.

    python -m rcr_deploy.train.ship runs/rcrnet-eg1800 --data ../shared/data/eg1800 \
        --baseline runs/portraitnet-eg1800 --command "rcr-deploy train ..."

writes rcr_deploy/assets/rcrnet-eg1800.pt (from the run's best.pt) and docs/training-eg1800.png,
and prints both models' validation scores at 224x224 for the README.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rcr_deploy.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from rcr_deploy.errors import VerificationError
from rcr_deploy.evaluate import evaluate
from rcr_deploy.reparam import verify_model
from rcr_deploy.runtime import load_runner
from rcr_deploy.train.trainer import plot_histories, strip_training_state

DATA_TERMS = "EG1800 (academic research use only; these weights inherit that)"


def _score(checkpoint: Path, data: Path) -> dict[str, float]:
    report = evaluate(load_runner(checkpoint), data, split="val")
    return {"fg_miou": report.fg_miou, "class_miou": report.class_miou, "images": report.n_images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder with best.pt and history.json")
    parser.add_argument("--data", type=Path, required=True, help="the dataset the run was validated on")
    parser.add_argument("--baseline", type=Path, help="a second run folder to score and plot beside it")
    parser.add_argument("--command", default="", help="the training command(s), recorded in the meta")
    parser.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--plot", type=Path, default=Path("docs/training-eg1800.png"))
    args = parser.parse_args()

    bests = {load_checkpoint(run / "best.pt").arch: run for run in [args.run, *([args.baseline] if args.baseline else [])]}
    scores = {arch: _score(run / "best.pt", args.data) for arch, run in bests.items()}
    shipped = next(iter(bests))
    strip_training_state(args.run / "best.pt", args.out, val_224=scores[shipped], command=args.command, dataset=DATA_TERMS)
    failed = [r for r in verify_model(load_checkpoint(args.out).model, shipped) if not r]
    if failed:
        args.out.unlink()
        raise VerificationError(f"{args.out}: re-parameterisation check failed ({failed[0].name}); not shipped")
    plot_histories({arch: json.loads((run / "history.json").read_text()) for arch, run in bests.items()}, args.plot)
    for arch, run in bests.items():
        meta = load_checkpoint(run / "best.pt").meta
        print(json.dumps({"arch": arch, "epochs": meta["epochs_done"], "wall_s": meta["wall_s"], "val_224": scores[arch]}))


if __name__ == "__main__":
    main()
