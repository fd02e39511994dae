"""The entropy (KL) threshold search of exporters/calibration.py on known distributions."""

from __future__ import annotations

import numpy as np
import pytest

from rcr_deploy.exporters.calibration import LEVELS, kl_threshold


def _hist(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.histogram(np.abs(x), bins=2048)


def test_far_outliers_are_clipped_and_the_bulk_is_kept():
    rng = np.random.default_rng(0)
    hist, edges = _hist(np.append(rng.standard_normal(200_000), [40.0] * 5))
    t = kl_threshold(hist, edges)
    assert 3.5 < t < 10  # past the Gaussian's bulk (99.9 % within 3.3), far short of the outliers at 40


def test_a_flat_distribution_keeps_its_whole_range():
    hist, edges = _hist(np.random.default_rng(0).uniform(0, 10, 200_000))
    assert kl_threshold(hist, edges) == pytest.approx(edges[-1])


def test_the_zeros_of_a_relu_do_not_narrow_the_range():
    """Half the values at exactly 0, a spike in the first bin: int8 keeps zeros exact, so they
    must not pull the threshold in (ORT's own search, with the spike, chose the narrowest)."""
    rng = np.random.default_rng(0)
    relu = np.maximum(rng.standard_normal(200_000), 0)
    hist, edges = _hist(relu)
    dense, _ = np.histogram(relu[relu > 0], bins=edges)
    assert kl_threshold(hist, edges) > 0.8 * edges[-1]
    assert kl_threshold(hist, edges) == pytest.approx(kl_threshold(dense, edges), rel=0.05)


def test_too_few_bins_or_no_data_keep_the_top_edge():
    edges = np.linspace(0, 1, LEVELS + 1)
    assert kl_threshold(np.ones(LEVELS), edges) == 1.0
    assert kl_threshold(np.zeros(2048), np.linspace(0, 2, 2049)) == 2.0
