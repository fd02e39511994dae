"""Segmentation scores, per image and aggregated, in the two conventions papers call "mIoU".

* foreground IoU: |pred ∩ gt| / |pred ∪ gt| of the person class at probability > 0.5;
  its mean over images is PortraitNet's (and the RCRNet paper's) "mIoU".
* class IoU: the mean of the foreground and the background IoU of one image; its mean over
  images is the class-mean IoU.

An empty prediction of an empty class is a perfect score (IoU 1), not 0/0.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rcr_deploy.postprocess import THRESHOLD


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.count_nonzero(pred | gt)
    return 1.0 if union == 0 else np.count_nonzero(pred & gt) / union


def image_ious(prob: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """(foreground IoU, class-mean IoU) of one HxW foreground probability map vs a 0/1 mask."""
    if prob.shape != gt.shape:
        raise ValueError(f"prediction {prob.shape} and mask {gt.shape} differ in size")
    pred, fg = prob > THRESHOLD, gt.astype(bool)
    fg_iou = _iou(pred, fg)
    return fg_iou, (fg_iou + _iou(~pred, ~fg)) / 2


@dataclasses.dataclass
class ImageScore:
    stem: str
    fg_iou: float
    class_iou: float


@dataclasses.dataclass
class IoUMeter:
    """Collects per-image scores; `fg_miou` and `class_miou` are their means over images."""

    per_image: list[ImageScore] = dataclasses.field(default_factory=list)

    def add(self, stem: str, prob: np.ndarray, gt: np.ndarray) -> ImageScore:
        score = ImageScore(stem, *image_ious(prob, gt))
        self.per_image.append(score)
        return score

    @property
    def fg_miou(self) -> float:
        return float(np.mean([s.fg_iou for s in self.per_image])) if self.per_image else float("nan")

    @property
    def class_miou(self) -> float:
        return float(np.mean([s.class_iou for s in self.per_image])) if self.per_image else float("nan")
