"""mIoU of any model or artifact on a dataset folder, through the Runner interface.

Each image is letterboxed to the model size with `rcr_deploy.preprocess` (prior channel zeros:
still images), the foreground probability is mapped back onto the original frame with
`postprocess.unletterbox`, and scored against the mask at the mask's own resolution. Scoring at
the original resolution is what a user sees; scoring a letterboxed mask would also count the
grey padding as easy background.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rcr_deploy.data.augment import NEEDS_OTHER, framed
from rcr_deploy.data.folder import Pair, list_pairs, load_pair
from rcr_deploy.metrics import ImageScore, IoUMeter
from rcr_deploy.postprocess import THRESHOLD, foreground_prob, unletterbox, write_png
from rcr_deploy.preprocess import INPUT_SIZE, preprocess
from rcr_deploy.runtime import Runner
from rcr_deploy.fileio import write_text_atomic


@dataclasses.dataclass
class EvalReport:
    """Both mIoU conventions over `n_images` images, and each image's scores."""

    fg_miou: float
    class_miou: float
    n_images: int
    per_image: list[ImageScore]
    model: str = ""
    data: str = ""
    split: str | None = None
    size: int = INPUT_SIZE
    framing: str = "as-is"
    limit: int | None = None

    def worst(self, k: int) -> list[ImageScore]:
        """The k images with the lowest foreground IoU."""
        return sorted(self.per_image, key=lambda s: s.fg_iou)[:k]


def predict(runner: Runner, rgbs: list[np.ndarray], size: int = INPUT_SIZE) -> list[np.ndarray]:
    """Person probability at each frame's own resolution, for a batch of RGB frames."""
    inputs, boxes = zip(*(preprocess(rgb, size, in_channels=runner.in_channels) for rgb in rgbs))
    probs = foreground_prob(runner.infer(np.concatenate(inputs)))
    return [unletterbox(p, box) for p, box in zip(probs, boxes)]


def evaluate(
    runner: Runner,
    data_dir: str | os.PathLike,
    size: int = INPUT_SIZE,
    limit: int | None = None,
    split: str | os.PathLike | None = None,
    progress: bool = True,
    batch: int = 8,
    framing: str = "as-is",
) -> EvalReport:
    """Score `runner` on the image/mask pairs of `data_dir` (see `data.folder.list_pairs`), in
    one of `data.augment.FRAMINGS` (the pictures as they are by default)."""
    pairs = list_pairs(data_dir, split)[:limit]
    meter = IoUMeter()
    bar = tqdm(total=len(pairs), desc=f"eval {runner.name}", unit="img", disable=not progress, leave=False)
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        loaded = [load_framed(pairs, start + i, framing) for i in range(len(chunk))]
        for pair, (_, mask), prob in zip(chunk, loaded, predict(runner, [rgb for rgb, _ in loaded], size)):
            meter.add(pair.stem, prob, mask)
        bar.update(len(chunk))
    bar.close()
    return EvalReport(
        fg_miou=meter.fg_miou,
        class_miou=meter.class_miou,
        n_images=len(meter.per_image),
        per_image=meter.per_image,
        model=runner.name,
        data=str(data_dir),
        split=None if split is None else str(split),
        size=size,
        framing=framing,
        limit=limit,
    )


def load_framed(pairs: list[Pair], i: int, framing: str = "as-is") -> tuple[np.ndarray, np.ndarray]:
    """Pair `i` of a split in `framing`, keyed on its index; a framing with a second picture
    takes the split's next one (the first for the last)."""
    other = load_pair(pairs[(i + 1) % len(pairs)]) if framing in NEEDS_OTHER else None
    return framed(framing, *load_pair(pairs[i]), i, other)


def write_per_image_csv(reports: list[EvalReport], path: str | os.PathLike, names: list[str] | None = None) -> Path:
    """One row per image: stem, foreground IoU, class-mean IoU (written atomically); with `names`
    (one per report, for several datasets), a leading `data` column."""
    lead = ["" for _ in reports] if names is None else [f"{n}," for n in names]
    rows = [("data," if names else "") + "stem,fg_iou,class_iou"] + [
        f"{tag}{s.stem},{s.fg_iou:.6f},{s.class_iou:.6f}" for tag, report in zip(lead, reports) for s in report.per_image
    ]
    write_text_atomic(path, "\n".join(rows) + "\n")
    return Path(path)


#: Overlay colours (RGB): person found, background called person, person missed.
HIT, FALSE_FG, MISSED = (40, 200, 80), (230, 40, 40), (40, 90, 255)


def overlay(rgb: np.ndarray, prob: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image tinted where the model is right (green), wrong (red: false person; blue:
    missed person)."""
    pred, gt = prob > THRESHOLD, mask.astype(bool)
    out = rgb.astype(np.float32)
    for region, colour in ((pred & gt, HIT), (pred & ~gt, FALSE_FG), (~pred & gt, MISSED)):
        out[region] = 0.55 * out[region] + 0.45 * np.asarray(colour, np.float32)
    return out.round().astype(np.uint8)


def _caption(img: np.ndarray, caption: str) -> np.ndarray:
    import cv2

    out = img.copy()
    font = max(out.shape[1] / 700, 0.35)  # the caption spans about 2/3 of the width
    (_, text_h), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
    out[: text_h + base + 8] = 0
    cv2.putText(out, caption, (4, text_h + 4), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1, cv2.LINE_AA)
    return out


SHEET_CELL = (225, 300)  # width, height: EG1800's 3:4 frames, six across a page
SHEET_MAX = 12
SHEET_NAME = "worst.png"


def contact_sheet(pictures: list[tuple[np.ndarray, str]], columns: int = 6) -> np.ndarray:
    """Pictures side by side in rows of `columns`, each fitted into one cell (black bars where
    its shape differs) and captioned at the cell's scale, so the captions stay legible."""
    import cv2

    cw, ch = SHEET_CELL
    rows = -(-len(pictures) // columns)
    sheet = np.zeros((rows * ch, min(len(pictures), columns) * cw, 3), np.uint8)
    for i, (img, caption) in enumerate(pictures):
        h, w = img.shape[:2]
        scale = min(cw / w, ch / h)
        fw, fh = max(1, round(w * scale)), max(1, round(h * scale))
        cell = np.zeros((ch, cw, 3), np.uint8)
        y, x = (ch - fh) // 2, (cw - fw) // 2
        cell[y : y + fh, x : x + fw] = cv2.resize(img, (fw, fh), interpolation=cv2.INTER_AREA)
        r, c = divmod(i, columns)
        sheet[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] = _caption(cell, caption)
    return sheet


def write_worst(
    report: EvalReport, runner: Runner, k: int, out_dir: str | os.PathLike, split: str | os.PathLike | None = None
) -> list[Path]:
    """Overlay pictures of the k images with the lowest foreground IoU, worst first, and
    SHEET_NAME, the first SHEET_MAX of them side by side."""
    pairs = list_pairs(report.data, split)[: report.limit]
    index = {p.stem: i for i, p in enumerate(pairs)}
    written, cells = [], []
    for rank, score in enumerate(report.worst(k), 1):
        rgb, mask = load_framed(pairs, index[score.stem], report.framing)  # the picture as it was scored
        (prob,) = predict(runner, [rgb], report.size)
        tinted = overlay(rgb, prob, mask)
        path = Path(out_dir) / f"{rank:02d}-{score.stem}.png"
        write_png(path, _caption(tinted, f"#{rank} {score.stem}: fg IoU {score.fg_iou:.3f}, class IoU {score.class_iou:.3f}"))
        written.append(path)
        if rank <= SHEET_MAX:
            cells.append((tinted, f"#{rank} {score.stem}: fg IoU {score.fg_iou:.3f}"))
    if cells:
        write_png(Path(out_dir) / SHEET_NAME, contact_sheet(cells))
    return written
