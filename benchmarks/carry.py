"""A carry-sized copy of a dataset folder for a lent GPU machine, which takes at most 64 MiB of
files per call: images shrunk to a long side (JPEG), masks with them (nearest, PNG). Images whose
long side is already within the limit are copied as they are, byte for byte.

    python -m rcr_deploy.benchmarks.carry ../shared/data/ccp .data/ccp --long-side 400

Scoring the shrunk copy's validation split beside the original's (`rcr-deploy eval ... --data`)
tells what the shrinking costs; docs/training.md records it.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from rcr_deploy.data.folder import list_pairs, load_pair
from rcr_deploy.fileio import atomic_path


def _write(path: Path, encoded: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded.tobytes())


def shrink(src: str | os.PathLike, dst: str | os.PathLike, long_side: int, quality: int = 90) -> int:
    """Write `src`'s pairs into `dst` (images/ + masks/) with long side at most `long_side`;
    returns the bytes written."""
    dst = Path(dst)
    for sub in ("images", "masks"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    total = 0
    for pair in tqdm(list_pairs(src), desc=f"shrink {Path(src).name}", unit="img"):
        image, mask_path = dst / "images" / f"{pair.stem}.jpg", dst / "masks" / f"{pair.stem}.png"
        rgb, mask = load_pair(pair)
        h, w = mask.shape
        if max(h, w) <= long_side and pair.image.suffix.lower() in (".jpg", ".jpeg"):
            shutil.copyfile(pair.image, image)
        else:
            scale = long_side / max(h, w)
            size = (round(w * scale), round(h * scale))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
            _write(image, cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])[1])
        _write(mask_path, cv2.imencode(".png", mask * 255)[1])
        total += image.stat().st_size + mask_path.stat().st_size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--long-side", type=int, default=400)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the shrunk images")
    args = parser.parse_args()
    print(f"{args.dst}: {shrink(args.src, args.dst, args.long_side, args.quality) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
