"""Does augmentation keep up with training? Loader samples/s against the model's step rate.

    python -m rcr_deploy.benchmarks.loader --data DIR [--size 224 --batch 32 --workers 0,1,2 --arch rcrnet]

The loader (read JPEG + PNG, deform, texture, fake prior, edge target, normalise: the
`PortraitDataset` training uses) is timed for each worker count; a training step (two passes,
all loss terms, Adam) is timed on this machine's device. A loader slower than the step starves
the device. Results go to benchmarks/results/loader-<machine>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from rcr_deploy.benchmarks.machine import machine_info, machine_kind
from rcr_deploy.data.dataset import PortraitDataset
from rcr_deploy.data.folder import list_pairs
from rcr_deploy.fileio import write_text_atomic
from rcr_deploy.models import build_model
from rcr_deploy.train.losses import total_loss

from rcr_deploy.benchmarks.machine import RESULTS


def loader_rate(dataset: PortraitDataset, batch: int, workers: int, batches: int) -> float:
    """Samples per second over `batches` batches, after one warm-up batch (worker start-up)."""
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def step_rate(arch: str, sample: dict[str, torch.Tensor], device: torch.device, steps: int) -> float:
    """Training samples per second: student + teacher forward, all loss terms, backward, Adam."""
    model = build_model(arch).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    x = torch.cat([sample["student"], sample["teacher"]]).to(device)
    mask, edge = sample["mask"].to(device), sample["edge"].to(device)
    n = mask.shape[0]

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            m, e = model(x, with_edge=True)
        loss = total_loss((m[:n].float(), e[:n].float()), (m[n:].float(), e[n:].float()), mask, edge)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * n / (time.perf_counter() - start)


def run(data: str, size: int, batch: int, workers: list[int], batches: int, arch: str, steps: int) -> dict[str, Any]:
    dataset = PortraitDataset(list_pairs(data, "train"), size)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sample = next(iter(DataLoader(dataset, batch_size=batch)))
    rates = {w: loader_rate(dataset, batch, w, batches) for w in workers}
    train = step_rate(arch, sample, device, steps)
    per_worker = max(rates[w] / max(w, 1) for w in rates)
    return {
        "machine": machine_info(torch.get_num_threads()),
        "load_average_1min": os.getloadavg()[0],
        "size": size,
        "batch": batch,
        "arch": arch,
        "device": str(device),
        "loader_samples_per_s": {str(w): round(r, 1) for w, r in rates.items()},
        "train_samples_per_s": round(train, 1),
        "loader_over_train": {str(w): round(r / train, 2) for w, r in rates.items()},
        "samples_per_s_per_worker": round(per_worker, 1),
    }


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"# Loader vs training step: {r['arch']} at {r['size']}x{r['size']}, batch {r['batch']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU {m['gpu'] or 'none'}, torch {m['versions']['torch']}, "
        f"{m['threads']} torch threads; 1-min load average {r['load_average_1min']:.1f} during the run.",
        "",
        f"Training step on {r['device']}: **{r['train_samples_per_s']} samples/s** (student + teacher pass each).",
        "",
        "| loader workers | samples/s | loader / step |",
        "| ---: | ---: | ---: |",
    ]
    for w, rate in r["loader_samples_per_s"].items():
        lines.append(f"| {w} | {rate} | {r['loader_over_train'][w]}x |")
    lines += [
        "",
        f"One worker augments about {r['samples_per_s_per_worker']} samples/s, so a GPU stepping at S samples/s "
        f"needs about S / {r['samples_per_s_per_worker']} workers (`--workers`).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset folder (images/ + masks/)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    p.add_argument("--batches", type=int, default=6, help="timed batches per worker count")
    p.add_argument("--arch", default="rcrnet")
    p.add_argument("--steps", type=int, default=3, help="timed training steps")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/loader-<machine>.json)")
    a = p.parse_args()
    result = run(a.data, a.size, a.batch, [int(w) for w in a.workers.split(",")], a.batches, a.arch, a.steps)
    out = a.out or RESULTS / f"loader-{machine_kind(result['machine'])}.json"
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    write_text_atomic(out.with_suffix(".md"), markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
