"""`infer DIR --ray` against local `infer DIR` on one machine: the same folder, the same outputs,
in interleaved rounds.

    python -m rcr_deploy.benchmarks.infer_ray --data ../shared/data/eg1800 --images 200

Each round runs local infer, then `--ray` with 1 and with 2 workers, on the first `--images`
images of the folder (written to a fresh temporary folder each time). Reported per run: images
per second while segmenting (the clock `infer` prints: from the models loaded to the last file
written) and the whole call's wall time (with Ray's start and the workers' model loading).
Results: benchmarks/results/infer-ray-<machine>.json and .md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rcr_deploy.benchmarks.machine import RESULTS, provenance, machine_info, machine_kind, write_result
from rcr_deploy.data.folder import list_pairs
from rcr_deploy.infer import infer
from rcr_deploy.serve.batch import infer_folder

SAVE = "mask,cutout"
RUNS = ("local", "ray-1", "ray-2")


def one(kind: str, folder: Path, out: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    if kind == "local":
        result = infer(str(folder), None, out, save=SAVE, progress=False)
    else:
        result = infer_folder(str(folder), None, out, save=SAVE, progress=False, replicas=int(kind.split("-")[1]))
    return {"images_per_s": result.timings.frames / result.timings.wall_s, "call_s": time.perf_counter() - t0, "frames": result.timings.frames}


def measure(data: str, images: int, rounds: int) -> dict[str, Any]:
    pairs = list_pairs(data)[:images]
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in RUNS}
    with tempfile.TemporaryDirectory(prefix="rcr-infer-ray-") as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for p in pairs:
            (folder / Path(p.image).name).symlink_to(Path(p.image).resolve())
        for r in range(rounds):
            for kind in RUNS:
                runs[kind].append(one(kind, folder, Path(tmp) / f"{kind}-{r}"))
                print(f"round {r + 1}, {kind}: {runs[kind][-1]}", flush=True)
    return {
        **provenance("infer_ray"),
        "images": len(pairs), "rounds": rounds, "save": SAVE, "runs": runs, "machine": machine_info(0),
    }


def to_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    load = f" 1-minute load average at the end {m['load_average'][0]:.1f}." if m["load_average"] else ""
    lines = [f"# `infer DIR --ray` against local `infer DIR` ({m['cpu']}, {m['cores']} cores)", "",
             f"{result['created']}; `{result['command']}`; {result['images']} images, `--save {result['save']}`, "
             f"{result['rounds']} interleaved rounds; the built-in model on the default backend.{load}", "",
             "| run | images/s while segmenting (median) | per round | whole call, s (median) | vs local |",
             "| --- | ---: | --- | ---: | ---: |"]
    local = float(np.median([r["images_per_s"] for r in result["runs"]["local"]]))
    for kind, rows in result["runs"].items():
        ips = float(np.median([r["images_per_s"] for r in rows]))
        per_round = " / ".join(f"{r['images_per_s']:.1f}" for r in rows)
        lines.append(f"| {kind} | {ips:.1f} | {per_round} "
                     f"| {float(np.median([r['call_s'] for r in rows])):.1f} | {ips / local:.2f} |")
    lines += ["", "ray-N: `--ray --replicas N` (a local Ray started and shut down by each call; the threads shared "
              "among the workers). The whole call includes Ray's start and each worker loading the model.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data", required=True, help="a dataset folder (images/ + masks/) or any folder list_pairs reads")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    result = measure(args.data, args.images, args.rounds)
    write_result(RESULTS / f"infer-ray-{machine_kind(result['machine'])}", result, to_markdown(result))


if __name__ == "__main__":
    main()
