"""The torch Dataset for training: folder pairs -> augmented student/teacher samples.

Randomness is keyed on (seed, epoch, index), not on worker state, so a sample is the same
whatever the number of loader workers or processes, and a resumed run sees the same data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from rcr_deploy.data.augment import make_sample
from rcr_deploy.data.folder import Pair, load_pair
from rcr_deploy.preprocess import INPUT_SIZE


class PortraitDataset(Dataset):
    """Augmented samples of (image, mask) pairs; call `set_epoch` before each epoch."""

    def __init__(self, pairs: list[Pair], size: int = INPUT_SIZE, seed: int = 0, in_channels: int = 4) -> None:
        self.pairs, self.size, self.seed, self.in_channels = pairs, size, seed, in_channels
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rgb, mask = load_pair(self.pairs[index])
        rng = np.random.default_rng([self.seed, self.epoch, index])
        s = make_sample(rgb, mask, rng, self.size, self.in_channels)
        return {k: torch.from_numpy(getattr(s, k)) for k in ("student", "teacher", "mask", "edge")}
