"""The torch Dataset for training: folder pairs -> augmented student/teacher samples.

Randomness is keyed on (seed, epoch, index), not on worker state, so a sample is the same
whatever the number of loader workers or processes, and a resumed run sees the same data.

Several datasets train together as consecutive groups of pairs. An epoch is as many samples as
there are pairs; with sampling weights, each group's share of them is its weight over the sum,
drawn from seeded permutations of its pairs (a small dataset repeats within the epoch, a large one
is sampled without repeats), so a weight sets how often a dataset is seen, whatever its size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from rcr_deploy.data.augment import make_sample
from rcr_deploy.data.folder import Pair, load_pair
from rcr_deploy.preprocess import INPUT_SIZE


class _Lazy(Sequence):
    """Pairs decoded only when an augmentation takes them (most samples use none or one)."""

    def __init__(self, load: Callable[[int], tuple[np.ndarray, np.ndarray]], indices: list[int]) -> None:
        self.load, self.indices = load, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        return self.load(self.indices[k])


class PortraitDataset(Dataset):
    """Augmented samples of (image, mask) pairs, indexed by (epoch, index[, size]) or by index
    alone (then the epoch set by `set_epoch`).

    `anywhere=True` adds the augmentations of `augment.make_sample` for framings the datasets lack;
    the other pictures it uses are drawn like the samples (`draws`), from every group.
    `groups`: the sizes of consecutive groups of `pairs` (one per dataset), each sample's `group`
    its index; `weights`: each group's sampling weight (None: every pair once per epoch).
    `cache=True` decodes every pair once, before the loader forks its workers (they share the
    pages): decoding is a fifth of a sample's CPU time, and EG1800 holds 0.6 GB decoded.
    """

    def __init__(
        self,
        pairs: list[Pair],
        size: int = INPUT_SIZE,
        seed: int = 0,
        in_channels: int = 4,
        cache: bool = False,
        anywhere: bool = False,
        groups: list[int] | None = None,
        weights: list[float] | None = None,
    ) -> None:
        self.pairs, self.size, self.seed, self.in_channels, self.anywhere = pairs, size, seed, in_channels, anywhere
        self.groups, self.weights = groups or [len(pairs)], weights
        if sum(self.groups) != len(pairs) or (weights is not None and len(weights) != len(self.groups)):
            raise ValueError(f"groups {self.groups} and weights {weights} do not fit {len(pairs)} pairs")
        self._ends = np.cumsum(self.groups)  # a pair's dataset: the first group ending after it
        self._draws: tuple[int, np.ndarray] | None = None
        self.epoch = 0
        self.decoded = [load_pair(p) for p in tqdm(pairs, desc="decoding", unit="img", leave=False)] if cache else None

    def _pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.decoded[index] if self.decoded is not None else load_pair(self.pairs[index])

    def draws(self, epoch: int) -> np.ndarray:
        """Which pair each index of `epoch` stands for: the identity, or with weights each group's
        share (largest remainders) drawn from seeded permutations of its pairs."""
        if self._draws is not None and self._draws[0] == epoch:
            return self._draws[1]
        n = len(self.pairs)
        if self.weights is None:
            table = np.arange(n)
        else:
            rng = np.random.default_rng([self.seed, epoch, 7])
            exact = np.asarray(self.weights, np.float64) / sum(self.weights) * n
            shares = np.floor(exact).astype(int)
            shares[np.argsort(shares - exact)[: n - shares.sum()]] += 1
            starts = np.cumsum([0, *self.groups[:-1]])
            parts = []
            for start, size, share in zip(starts, self.groups, shares):
                perms = [rng.permutation(size) for _ in range(-(-share // size))]
                parts.append(start + np.concatenate(perms or [np.zeros(0, int)])[:share])
            table = np.concatenate(parts)
        self._draws = (epoch, table)
        return table

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, ...]) -> dict[str, torch.Tensor]:
        """`key`: an index, (epoch, index), or (epoch, index, size) for progressive resizing."""
        epoch, index, size = (*key, self.size)[:3] if isinstance(key, tuple) else (self.epoch, key, self.size)
        rng = np.random.default_rng([self.seed, epoch, index])
        draws = self.draws(epoch)
        others = _Lazy(self._pair, [int(draws[rng.integers(len(draws))]) for _ in range(3)]) if self.anywhere else ()
        pair = int(draws[index])
        s = make_sample(*self._pair(pair), rng, size, self.in_channels, others)
        group = torch.tensor(int(np.searchsorted(self._ends, pair, side="right")))
        return {"group": group, **{k: torch.from_numpy(getattr(s, k)) for k in ("student", "teacher", "mask", "edge")}}
