"""Turn a training run into the shipped model: weights only, verified, scored, logged.

    python -m rcr_deploy.train.ship RUN --data ../shared/data/eg1800 [--data ../shared/data/ccp] \
        --name NAME --hardware "1x H100 + 2-core CPU" --command "rcr-deploy train ..." [--start-samples N]

writes rcr_deploy/assets/rcrnet-eg1800.pt from the run's best.pt (refused unless the
re-parameterisation check passes), appends the run to docs/training-log.json, redraws
docs/training-log.png, and prints the validation scores at 224x224 on each dataset's split as it
is and on its reframed version (`eval --framing reframed`) for the model card. RUN may be the output
of `python -m rcr_deploy.train.interpolate`: the log then keeps the run's curve and marks the
interpolated weights that were shipped. The first --data is the
one the log's main curve and the historical `val_224` fields follow (EG1800 for the shipped model).
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

from rcr_deploy.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from rcr_deploy.data.folder import list_pairs, sources
from rcr_deploy.errors import VerificationError
from rcr_deploy.evaluate import evaluate
from rcr_deploy.reparam import verify_model
from rcr_deploy.runtime import load_runner
from rcr_deploy.train import log
from rcr_deploy.train.trainer import strip_training_state

DATA_TERMS = {
    "eg1800": "EG1800 (academic research use only; these weights inherit that)",
    "ccp": "Clothing Co-Parsing (Apache-2.0 repository; cite Yang, Luo, Lin, CVPR 2014)",
}


def _score(checkpoint: Path, data: Path, framing: str) -> dict[str, float]:
    report = evaluate(load_runner(checkpoint, backend="torch"), data, split="val", framing=framing)  # the reference forward pass
    return {"fg_miou": report.fg_miou, "class_miou": report.class_miou, "images": report.n_images}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder with best.pt and history.json")
    parser.add_argument("--data", type=Path, action="append", required=True, help="a dataset the run was validated on (repeat)")
    parser.add_argument("--name", required=True, help="the run's name in the training log")
    parser.add_argument("--hardware", required=True, help="what it ran on, for the log")
    parser.add_argument("--command", default="", help="the training command(s), recorded in the meta and the log")
    parser.add_argument("--start-samples", type=int, default=0, help="samples seen by the weights it was initialised from")
    parser.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--log", type=Path, default=Path("docs/training-log.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/training-log.png"))
    args = parser.parse_args(argv)

    best = args.run / "best.pt"
    named = sources([str(d) for d in args.data])
    by_data = {s.name: {"val_224": _score(best, s.root, "as-is"), "val_224_reframed": _score(best, s.root, "reframed")} for s in named}
    scores = {**by_data[named[0].name], "by_data": by_data}
    terms = "; ".join(DATA_TERMS.get(s.name, s.name) for s in named)
    strip_training_state(best, args.out, **scores, command=args.command, dataset=terms)
    shipped = load_checkpoint(args.out)
    failed = [r for r in verify_model(shipped.model, shipped.arch) if not r]
    if failed:
        args.out.unlink()
        raise VerificationError(f"{args.out}: re-parameterisation check failed ({failed[0].name}); not shipped")
    history = json.loads((args.run / "history.json").read_text())
    entry = log.run_entry(
        history, sum(len(list_pairs(s.root, "train")) for s in named), name=args.name, hardware=args.hardware, command=args.command,
        date=datetime.date.today().isoformat(), start_samples=args.start_samples,
        wall_s=shipped.meta.get("wall_s"), best=shipped.meta.get("best"), **scores,
        **({"interpolation": shipped.meta["interpolation"]} if "interpolation" in shipped.meta else {}),
    )  # fmt: skip
    log.plot_log(log.append(args.log, entry), args.plot)
    print(json.dumps({"shipped": str(args.out), "epochs": shipped.meta.get("epochs_done"), **scores}))


if __name__ == "__main__":
    main()
