"""Portrait datasets on disk: pairs of an image and its person mask, matched by file stem, and
`Source`, one of several folders trained on together, with its name and sampling weight.

Layouts:
* a folder with `images/` and `masks/` (EG1800, most users' own data), optionally with split
  files listing one id per line;
* P3M-10K: `train/blurred_image` + `train/mask`, and `validation/P3M-500-P/blurred_image`,
  `validation/P3M-500-NP/original_image`, each with `mask` (alpha mattes, thresholded).

Masks may be 0/1, 0/255, 16-bit, or alpha mattes: person = value above half the range.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from rcr_deploy.errors import DataError
from rcr_deploy.preprocess import IMAGE_EXTENSIONS, load_image, open_image

#: The fixed validation rule: sort the ids; every 10th one (index % 10 == 0) is validation.
VAL_EVERY = 10
#: Split names a user may pass instead of a split file.
SPLITS = ("all", "train", "val", "p3m-train", "p3m-500-p", "p3m-500-np")
_P3M = {
    "p3m-train": ("train", "blurred_image"),
    "p3m-500-p": ("validation/P3M-500-P", "blurred_image"),
    "p3m-500-np": ("validation/P3M-500-NP", "original_image"),
}
_SHOW = 5  # offenders named in an error message


@dataclasses.dataclass(frozen=True)
class Pair:
    stem: str
    image: Path
    mask: Path


def _by_stem(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}


@dataclasses.dataclass(frozen=True)
class Source:
    """One dataset folder of a run: its name in histories and tables (the folder's name, made
    unique), and its sampling weight (None: in proportion to its training pairs)."""

    name: str
    root: str
    weight: float | None = None


def check_per_folder(option: str, weights: list[float], roots: list[str]) -> None:
    """One weight per --data folder, or a one-line `DataError` naming `option` with an example."""
    if len(weights) != len(roots):
        raise DataError(f"{option}: {len(weights)} weights for {len(roots)} --data folders; give one per folder, e.g. {','.join(['1'] * len(roots))}")


def sources(roots: list[str], weights: list[float] | None = None) -> list[Source]:
    """Name the folders of a run: `a/eg1800`, `b/ccp` -> eg1800, ccp; a repeated name gets `-2`,
    `-3` ... in order. `weights`, when given, has one positive weight per folder."""
    if not roots:
        raise DataError("no dataset: pass --data DIR (a folder with images/ and masks/), once per dataset")
    if weights:
        check_per_folder("--data-weights", weights, roots)
    if weights and not all(w > 0 for w in weights):
        raise DataError(f"--data-weights {','.join(map(str, weights))}: every weight must be above 0")
    names: list[str] = []
    for root in roots:
        base = Path(root).resolve().name or "data"
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}-{k}"
        names.append(name)
    return [Source(n, str(r), None if not weights else float(w)) for n, r, w in zip(names, roots, weights or [None] * len(roots))]


def _offenders(names: list[str]) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > _SHOW else f" ({len(names)} in all)"
    return ", ".join(names[:_SHOW]) + more


def _folders(root: Path, split: str | None) -> tuple[Path, Path]:
    if split in _P3M:
        sub, image_dir = _P3M[split]
        return root / sub / image_dir, root / sub / "mask"
    return root / "images", root / "masks"


def val_ids(ids: list[str]) -> set[str]:
    """The fixed validation subset of a list of ids (see `VAL_EVERY`)."""
    return {i for n, i in enumerate(sorted(ids)) if n % VAL_EVERY == 0}


def list_pairs(root: str | os.PathLike, split: str | os.PathLike | None = None) -> list[Pair]:
    """The (image, mask) pairs of a dataset folder, sorted by stem.

    `split`: None/"all" for every pair; "train"/"val" for the fixed rule (`val_ids`); a P3M-10K
    part ("p3m-train", "p3m-500-p", "p3m-500-np"); or a text file of ids, one per line.
    """
    root = Path(root)
    split_name = str(split) if split is not None else None
    images_dir, masks_dir = _folders(root, split_name)
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder; a dataset needs images/ and masks/ (or the P3M-10K layout)")
    images, masks = _by_stem(images_dir), _by_stem(masks_dir)
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask:
        raise DataError(f"{images_dir}: images without a mask in {masks_dir}: {_offenders(no_mask)}; add or remove them")
    if no_image:
        raise DataError(f"{masks_dir}: masks without an image in {images_dir}: {_offenders(no_image)}; add or remove them")
    ids = sorted(images)
    if split_name in ("train", "val"):
        val = val_ids(ids)
        ids = [i for i in ids if (i in val) == (split_name == "val")]
    elif split_name not in (None, "all", *_P3M):
        ids = _read_split_file(Path(split_name), images)
    if not ids:
        raise DataError(f"{root}: no image/mask pairs" + (f" in split {split_name}" if split_name else "") + "; check the folder")
    return [Pair(i, images[i], masks[i]) for i in ids]


def _read_split_file(path: Path, images: dict[str, Path]) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: no such split file; pass one of {', '.join(SPLITS)} or a file of ids")
    ids = [Path(line.strip()).stem for line in path.read_text().splitlines() if line.strip()]
    unknown = [i for i in ids if i not in images]
    if unknown:
        raise DataError(f"{path}: ids with no image/mask pair: {_offenders(unknown)}; fix the split file")
    return sorted(set(ids))


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask as HxW uint8 0/1 (EXIF rotation applied, like its image)."""
    with open_image(path, "mask") as img:
        if img.mode in ("RGBA", "LA"):
            img = img.getchannel("A")  # an alpha-only matte stored with colour
        elif img.mode not in ("I;16", "I;16B", "I;16L", "I", "L", "1", "F"):
            img = img.convert("L")
        arr = np.asarray(img)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    top = arr.max(initial=0)
    if top <= 1:
        return (arr > 0).astype(np.uint8) if arr.dtype.kind != "f" else (arr > 0.5).astype(np.uint8)
    # An alpha matte or 0/255 mask: person where the value passes half its type's range.
    full = 65535 if arr.dtype == np.uint16 or top > 255 else 255
    return (arr.astype(np.float32) > full / 2).astype(np.uint8)


def load_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """An image (HxWx3 uint8 RGB) and its 0/1 mask, checked to be the same size."""
    rgb, mask = load_image(pair.image), load_mask(pair.mask)
    if rgb.shape[:2] != mask.shape:
        raise DataError(
            f"{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{rgb.shape[1]}x{rgb.shape[0]}; masks must match their images"
        )
    return rgb, mask
