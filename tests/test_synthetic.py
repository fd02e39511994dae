import numpy as np

from rcr_deploy.data import synthetic
from rcr_deploy.metrics import image_ious


def test_portrait_is_deterministic_and_mask_is_a_plausible_person():
    rgb, mask = synthetic.sample_portrait(96, 64, seed=3)
    rgb2, mask2 = synthetic.sample_portrait(96, 64, seed=3)
    assert np.array_equal(rgb, rgb2) and np.array_equal(mask, mask2)
    assert rgb.shape == (96, 64, 3) and rgb.dtype == np.uint8
    assert mask.shape == (96, 64) and set(np.unique(mask)) == {0, 1}
    # A head-and-shoulders figure: 20-60 % of the frame, touching the bottom edge, not the top.
    assert 0.2 < mask.mean() < 0.6
    assert mask[-1].any() and not mask[0].any()
    other, _ = synthetic.sample_portrait(96, 64, seed=4)
    assert not np.array_equal(rgb, other)


def test_figure_is_visible_against_its_background():
    rgb, mask = synthetic.sample_portrait(128, 96, seed=5)
    inside, outside = rgb[mask == 1].astype(float), rgb[mask == 0].astype(float)
    # The figure differs from the scene behind it, as a person does (not a mask-only label).
    assert np.abs(inside.mean(axis=0) - outside.mean(axis=0)).max() > 10


def test_video_moves_smoothly_with_per_frame_noise():
    frames = list(synthetic.video(12, 64, 96, seed=1))
    assert len(frames) == 12
    masks = [m for _, m in frames]
    consecutive = [image_ious(masks[t].astype(np.float32), masks[t - 1])[0] for t in range(1, 12)]
    assert all(0.6 < c < 1.0 for c in consecutive), consecutive  # it moves, but not by jumps
    again = list(synthetic.video(12, 64, 96, seed=1))
    assert all(np.array_equal(f, g) for (f, _), (g, _) in zip(frames, again))  # reproducible
    clean = list(synthetic.video(12, 64, 96, seed=1, noise=0.0))
    assert not np.array_equal(frames[0][0], clean[0][0])  # sensor noise changes the pixels...
    assert np.array_equal(frames[0][1], clean[0][1])  # ...not the ground truth
