"""Draw the training augmentation as a picture: the paper's recipe above, `--anywhere` below.

    python -m rcr_deploy.benchmarks.augment_grid --data ../shared/data/eg1800 --data ../shared/data/ccp \
        --out docs/augment-anywhere.png

Each column is one training sample (same dataset index, same seed) drawn the way `train` draws it
(`PortraitDataset`, with the datasets' sampling weights), so the top and bottom rows differ only by
the `--anywhere` additions. The teacher view is shown (the student adds texture noise); the target
mask is tinted magenta.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from rcr_deploy.data.dataset import PortraitDataset
from rcr_deploy.data.folder import list_pairs, sources
from rcr_deploy.fileio import atomic_path
from rcr_deploy.preprocess import MEAN_RGB, SCALE


def _picture(teacher: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The normalised CxHxW teacher view back to HxWx3 uint8, the target tinted magenta."""
    rgb = np.clip(teacher[:3].transpose(1, 2, 0) / SCALE + np.asarray(MEAN_RGB), 0, 255)
    tint = np.array([255.0, 0.0, 255.0])
    rgb = np.where(mask[..., None] > 0, 0.6 * rgb + 0.4 * tint, rgb)
    return rgb.astype(np.uint8)


def draw(roots: list[str], out: Path, columns: int = 8, seed: int = 3) -> None:
    """Write the two-row grid of `columns` samples from the train splits of `roots` to `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    named = sources(roots)
    groups = [list_pairs(s.root, "train") for s in named]
    pairs = [p for g in groups for p in g]
    sizes = [len(g) for g in groups]
    weights = [1.0] * len(groups) if len(groups) > 1 else None
    rows = {
        "paper": PortraitDataset(pairs, seed=seed, in_channels=3, groups=sizes, weights=weights),
        "--anywhere": PortraitDataset(pairs, seed=seed, in_channels=3, groups=sizes, weights=weights, anywhere=True),
    }
    picks = np.linspace(0, len(pairs) - 1, columns).astype(int)  # spread over every dataset
    fig, axes = plt.subplots(2, columns, figsize=(1.6 * columns, 3.6), dpi=110)
    for r, (label, dataset) in enumerate(rows.items()):
        for c, index in enumerate(picks):
            sample = dataset[(0, int(index))]
            axes[r, c].imshow(_picture(sample["teacher"].numpy(), sample["mask"].numpy()))
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=9)
    fig.suptitle(f"training samples from {', '.join(s.name for s in named)} (magenta: target)", fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", required=True, help="a dataset folder (repeat)")
    parser.add_argument("--out", type=Path, default=Path("docs/augment-anywhere.png"))
    parser.add_argument("--columns", type=int, default=8)
    args = parser.parse_args()
    draw(args.data, args.out, args.columns)
    print(args.out)


if __name__ == "__main__":
    main()
