"""Both IoU conventions against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from rcr_deploy.metrics import IoUMeter, image_ious


def test_hand_computed_image():
    # 2x4 frame. gt person: 4 px; prediction (prob > 0.5): 3 px, 2 of them right.
    gt = np.array([[1, 1, 0, 0], [1, 1, 0, 0]])
    prob = np.array([[0.9, 0.6, 0.7, 0.1], [0.5, 0.2, 0.0, 0.4]])  # 0.5 is not > 0.5
    fg, cls = image_ious(prob, gt)
    # fg: intersection 2, union 5 -> 0.4.  bg: pred bg 5 px, gt bg 4 px, both 3 px, union 6 -> 0.5.
    assert fg == pytest.approx(2 / 5)
    assert cls == pytest.approx((2 / 5 + 3 / 6) / 2)


def test_empty_vs_empty_is_perfect():
    gt = np.zeros((3, 3), np.uint8)
    assert image_ious(np.full((3, 3), 0.2), gt) == (1.0, 1.0)
    # All background in gt, all person predicted: fg IoU 0/9 = 0, bg IoU 0/9 = 0.
    assert image_ious(np.full((3, 3), 0.9), gt) == (0.0, 0.0)


def test_meter_means_over_images():
    meter = IoUMeter()
    gt = np.array([[1, 1, 0, 0]])
    meter.add("a", np.array([[0.9, 0.9, 0.1, 0.1]]), gt)  # perfect: 1, 1
    meter.add("b", np.array([[0.9, 0.1, 0.1, 0.1]]), gt)  # fg 1/2; bg 2/3 -> class 7/12
    assert meter.fg_miou == pytest.approx((1 + 0.5) / 2)
    assert meter.class_miou == pytest.approx((1 + 7 / 12) / 2)
    assert [s.stem for s in meter.per_image] == ["a", "b"]


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in size"):
        image_ious(np.zeros((2, 2)), np.zeros((2, 3)))
