"""Training throughput, split in two: what the loader supplies and what the device consumes.

    python -m rcr_deploy.benchmarks.train_throughput --data DIR --device cuda --workers 14 --out FILE.json
    python -m rcr_deploy.benchmarks.train_throughput --data DIR --device cpu --modes bf16-cl --compile --sizes 160,224 --out FILE.json

* loader: augmented samples/s from the real loader (cached images, W workers), no training;
* step: samples/s of the real training step (`Trainer._step`) on one batch already in memory,
  for each autocast mode × memory format (`--modes`; and torch.compile with --compile) at each
  of `--sizes` (what progressive resizing buys per sample), no loader.

The smaller of the two bounds a run: a loader slower than the step starves the device. Each
figure is the median of timed windows after warm-up steps; the JSON records machine and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from rcr_deploy.train.trainer import TrainConfig, Trainer


#: Step modes: name -> (autocast, channels_last).
MODES = {"off": ("off", False), "off-cl": ("off", True), "bf16": ("bf16", False), "bf16-cl": ("bf16", True)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_rate(trainer: Trainer, batch: dict[str, torch.Tensor], seconds: float, warmup: int = 3) -> float:
    """Median samples/s of training steps on one batch, over windows of at least 0.5 s."""
    for _ in range(warmup):
        trainer._step(batch)
    _sync(trainer.device)
    rates, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or not rates:
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 0.5:
            trainer._step(batch)
            n += 1
        _sync(trainer.device)
        rates.append(n * trainer.cfg.batch / (time.perf_counter() - t0))
    return statistics.median(rates)


def loader_rate(trainer: Trainer, seconds: float) -> float:
    """Samples/s the run's loader supplies once its workers are up."""
    it = iter(trainer._loader())
    next(it)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        n += len(next(it)["mask"])
    return n / (time.perf_counter() - t0)


def profile_table(trainer: Trainer, batch: dict[str, torch.Tensor], steps: int = 3) -> str:
    """Where a step's time goes: torch.profiler's table, sorted by device time (CPU time on a CPU)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = trainer.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(steps):
            trainer._step(batch)
        _sync(trainer.device)
    key = "cuda_time_total" if cuda else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=50) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="224", help="comma list of training sizes (the loader is timed at the first)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of step modes: {', '.join(MODES)}")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per figure")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd steps (minutes to compile on a CPU)")
    ap.add_argument("--profile", action="store_true", help="also write a torch.profiler table of 3 bf16 channels_last steps (FILE.profile.txt)")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = ap.parse_args(argv)

    sizes = [int(v) for v in args.sizes.split(",")]
    modes = args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        ap.error(f"--modes: unknown {', '.join(sorted(unknown))}; use {', '.join(MODES)}")
    base = dict(data=args.data, batch=args.batch, device=args.device, threads=args.threads, val_split="")
    steps = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(TrainConfig(**base, size=sizes[0], out=tmp, workers=args.workers, cache=True), progress=False)
        loader = loader_rate(trainer, args.seconds)
        for size in sizes:
            sized = Trainer(TrainConfig(**base, size=size, out=tmp, workers=0, cache=True), progress=False)
            batch = next(iter(sized._loader()))
            for mode in modes:
                amp, channels_last = MODES[mode]
                for compiled in (False, True) if args.compile else (False,):
                    t = Trainer(TrainConfig(**base, size=size, out=tmp, workers=0, amp=amp, channels_last=channels_last), progress=False)
                    if compiled:
                        t.ddp = torch.compile(t.model)
                    rate = step_rate(t, batch, args.seconds)
                    steps.append({"size": size, "amp": amp, "channels_last": channels_last, "compile": compiled, "samples_per_s": round(rate, 1)})
                    print(json.dumps(steps[-1]), flush=True)
        if args.profile:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".profile.txt").write_text(profile_table(t, batch))
    device = trainer.device
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU",
        "cpus": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "sizes": sizes,
        "batch": args.batch,
        "loader": {"workers": args.workers, "cache": True, "samples_per_s": round(loader, 1)},
        "step": steps,
        "paper_schedule_samples": 2_412_000,
    }
    print(json.dumps({"loader_samples_per_s": result["loader"]["samples_per_s"]}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
