"""The torch Dataset for training: folder pairs -> augmented student/teacher samples.

Randomness is keyed on (seed, epoch, index), not on worker state, so a sample is the same
whatever the number of loader workers or processes, and a resumed run sees the same data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from rcr_deploy.data.augment import make_sample
from rcr_deploy.data.folder import Pair, load_pair
from rcr_deploy.preprocess import INPUT_SIZE


class PortraitDataset(Dataset):
    """Augmented samples of (image, mask) pairs, indexed by (epoch, index[, size]) or by index
    alone (then the epoch set by `set_epoch`).

    `anywhere=True` adds the augmentations of `augment.make_sample` for framings EG1800 lacks.
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
    ) -> None:
        self.pairs, self.size, self.seed, self.in_channels, self.anywhere = pairs, size, seed, in_channels, anywhere
        self.epoch = 0
        self.decoded = [load_pair(p) for p in tqdm(pairs, desc="decoding", unit="img", leave=False)] if cache else None

    def _pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.decoded[index] if self.decoded is not None else load_pair(self.pairs[index])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, ...]) -> dict[str, torch.Tensor]:
        """`key`: an index, (epoch, index), or (epoch, index, size) for progressive resizing."""
        epoch, index, size = (*key, self.size)[:3] if isinstance(key, tuple) else (self.epoch, key, self.size)
        rng = np.random.default_rng([self.seed, epoch, index])
        other = self._pair(int(rng.integers(len(self.pairs)))) if self.anywhere else None
        s = make_sample(*self._pair(index), rng, size, self.in_channels, other)
        return {k: torch.from_numpy(getattr(s, k)) for k in ("student", "teacher", "mask", "edge")}
