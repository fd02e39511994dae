"""What a run feeds and when: the batches of a whole run, the size of each epoch's samples
(progressive resizing), the learning-rate curve, and how many epochs a time limit allows.

One sampler spans the whole run rather than one epoch, so a loader with many workers starts once:
on a GPU an epoch of EG1800 takes under a second, less than it takes to start 14 workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import Sampler

SCHEDULES = ("paper", "cosine")


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """A seeded permutation of range(n) for one epoch, this rank's share of it (padded so that
    every rank takes the same number of steps)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
    per_rank = math.ceil(n / world)
    order += order[: per_rank * world - n]
    return order[rank::world]


def steps_per_epoch(n: int, batch: int, world: int = 1) -> int:
    return math.ceil(math.ceil(n / world) / batch)


def size_at(epoch: int, planned: int, sizes: Sequence[int]) -> int:
    """Progressive resizing: the planned epochs fall into len(sizes) equal phases, one size each,
    smallest first; the last is the run's own size."""
    return sizes[min(len(sizes) - 1, epoch * len(sizes) // max(planned, 1))]


class RunSampler(Sampler[list[tuple[int, ...]]]):
    """Batches of (epoch, index) from (start_epoch, start_step) up to `epochs`; with `size_of`,
    batches of (epoch, index, size), the size asked of `size_of(epoch)` as each batch is drawn.
    The sampler runs in the training process, so a plan that changes mid-run reaches it."""

    def __init__(
        self, n: int, batch: int, seed: int, epochs: int, start: tuple[int, int] = (0, 0), rank: int = 0, world: int = 1,
        size_of: Callable[[int], int] | None = None,
    ) -> None:  # fmt: skip
        self.n, self.batch, self.seed, self.epochs, self.start = n, batch, seed, epochs, start
        self.rank, self.world, self.size_of = rank, world, size_of

    def __iter__(self) -> Iterator[list[tuple[int, ...]]]:
        first_epoch, first_step = self.start
        for epoch in range(first_epoch, self.epochs):
            order = epoch_order(self.n, self.seed, epoch, self.rank, self.world)
            skip = first_step if epoch == first_epoch else 0
            for i in range(skip * self.batch, len(order), self.batch):
                extra = (self.size_of(epoch),) if self.size_of else ()
                yield [(epoch, j, *extra) for j in order[i : i + self.batch]]

    def __len__(self) -> int:
        per_epoch = steps_per_epoch(self.n, self.batch, self.world)
        return max(0, (self.epochs - self.start[0]) * per_epoch - self.start[1])


def lr_factor(schedule: str, epoch: int, planned: int, decay: float = 0.95, every: float = 20.0, warmup: int = 0) -> float:
    """The learning rate at `epoch` as a fraction of the base rate.

    paper: lr × decay^(epoch / every) (RCRNet §4.2.3), whatever the length of the run.
    cosine: a linear warm-up over `warmup` epochs, then half a cosine to zero at `planned`: the
    shape that suits a run whose length is set by a time budget rather than by 2000 epochs.
    """
    if schedule == "paper":
        return decay ** (epoch / every)
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    span = max(planned - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(epoch - warmup, span) / span))


def epoch_cost(first: int, last: int, planned: int, sizes: Sequence[int] = ()) -> float:
    """Epochs [first, last) of a run of `planned` epochs, in epochs at the final size. An epoch at
    size s costs (s / final)^2 of one at the final size: pixels, which tracks the measured CPU
    training pace (bf16 + channels_last: 1.44x the samples/s at 192 and 2.1x at 160, against
    1.36x and 1.96x predicted; docs/training.md)."""
    sizes = sizes or (1,)
    phases = len(sizes)
    total = 0.0
    for k, size in enumerate(sizes):
        start, end = -(-k * planned // phases), -(-(k + 1) * planned // phases)
        total += (size / sizes[-1]) ** 2 * max(0, min(end, last) - max(start, first))
    return total


def plan_epochs(
    done: int, measured_epochs: float, measured_s: float, remaining_s: float, cap: int, margin: float = 0.97, sizes: Sequence[int] = ()
) -> int:
    """How many epochs in all fit: `done` so far, plus what the measured pace (`measured_epochs`,
    counted by `epoch_cost`, in `measured_s`) allows in `remaining_s`, with a margin; at most
    `cap`. With progressive `sizes` the phases stretch with the plan, so each total is costed whole."""
    per_epoch = measured_s / max(measured_epochs, 1e-9)
    budget = margin * remaining_s / max(per_epoch, 1e-9)
    if len(sizes) < 2:
        return max(done + 1, min(cap, done + int(budget)))
    cheapest = (min(sizes) / sizes[-1]) ** 2  # no total beyond this many epochs can fit
    most = min(cap, done + int(budget / cheapest) + 1)
    fits = [n for n in range(done + 1, most + 1) if epoch_cost(done, n, n, sizes) <= budget]
    return max([done + 1, *fits])
