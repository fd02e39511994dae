"""Training on several datasets at once: naming, sampling weights, per-dataset validation, and the
framing augmentations that neither EG1800 nor CCP shows."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from rcr_deploy.data.augment import cut_body, landscape, make_sample
from rcr_deploy.data.dataset import PortraitDataset
from rcr_deploy.data.folder import list_pairs, sources
from rcr_deploy.errors import DataError
from rcr_deploy.train.trainer import TrainConfig, Trainer, TrainError
from support import write_dataset


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    return write_dataset(root / "selfies", n=11), write_dataset(root / "bodies", n=4, h=64, w=32)


def test_sources_are_named_by_folder_made_unique_and_weights_checked(tmp_path):
    got = sources(["a/eg1800", "b/ccp", "c/ccp"], [1, 2, 3])
    assert [(s.name, s.weight) for s in got] == [("eg1800", 1.0), ("ccp", 2.0), ("ccp-2", 3.0)]
    assert [s.weight for s in sources(["x"])] == [None]
    with pytest.raises(DataError, match="one per folder"):
        sources(["a", "b"], [1])
    with pytest.raises(DataError, match="above 0"):
        sources(["a", "b"], [1, 0])


def test_weights_set_each_datasets_share_of_an_epoch(two):
    pairs = list_pairs(two[0], "train") + list_pairs(two[1], "train")  # 9 + 3
    plain = PortraitDataset(pairs, 32, groups=[9, 3])
    assert plain.draws(0).tolist() == list(range(12))
    ds = PortraitDataset(pairs, 32, seed=2, groups=[9, 3], weights=[1.0, 1.0])
    for epoch in range(3):
        draws = ds.draws(epoch)
        assert len(draws) == 12
        assert (draws < 9).sum() == 6 and (draws >= 9).sum() == 6  # half each: the small set repeats
        assert sorted(set(draws[draws >= 9].tolist())) == [9, 10, 11]  # every small-set pair, twice
        assert len(set(draws[draws < 9].tolist())) == 6  # the large set without repeats
    assert ds.draws(1).tolist() == PortraitDataset(pairs, 32, seed=2, groups=[9, 3], weights=[1.0, 1.0]).draws(1).tolist()
    assert ds.draws(1).tolist() != ds.draws(2).tolist()
    with pytest.raises(ValueError):
        PortraitDataset(pairs, 32, groups=[9, 2])


def test_two_datasets_train_together_and_each_is_validated(two, tmp_path):
    cfg = TrainConfig(
        data=[str(two[0]), str(two[1])], data_weights=[1, 1], out=str(tmp_path / "run"), arch="rcrnet", size=64,
        batch=4, epochs=1, workers=0, seed=3, anywhere=True, amp="off",
    )  # fmt: skip
    result = Trainer(cfg, progress=False).fit()
    (record,) = result.history
    each = record["val_by_data"]
    assert list(each) == ["selfies", "bodies"]
    assert each["selfies"]["val_images"] == 2 and each["bodies"]["val_images"] == 1
    for key in ("val_fg_miou", "val_class_miou", "val_fg_miou_reframed", "val_class_miou_reframed"):
        assert record[key] == pytest.approx((each["selfies"][key] + each["bodies"][key]) / 2)
    assert result.best["val_fg_miou"] == record["val_fg_miou"]
    assert (tmp_path / "run" / "best.pt").is_file()


def test_a_split_file_with_several_datasets_is_refused(two, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("00001\n")
    cfg = TrainConfig(data=[str(two[0]), str(two[1])], train_split=str(ids), out=str(tmp_path / "run"), size=64)
    with pytest.raises(TrainError, match="single --data"):
        Trainer(cfg, progress=False)


def _person(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.random.default_rng(h * w).integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 10 : h - 2, w // 3 : 2 * w // 3] = 1  # a standing person, head to feet
    return rgb, mask


def test_cut_body_keeps_an_edge_piece_of_the_frame_with_its_mask():
    rgb, mask = _person(100, 40)
    for seed in range(20):
        img, msk = cut_body(rgb, mask, np.random.default_rng(seed))
        h, w = msk.shape
        assert img.shape[:2] == (h, w) and (h, w) != (100, 40)
        pieces = [(rgb[:h], mask[:h]), (rgb[-h:], mask[-h:]), (rgb[:, :w], mask[:, :w]), (rgb[:, -w:], mask[:, -w:])]
        assert any(np.array_equal(img, a) and np.array_equal(msk, b) for a, b in pieces)


def test_landscape_is_wide_keeps_the_person_in_front_and_targets_both_people():
    rgb, mask = _person(90, 40)
    rgb[mask > 0] = (255, 0, 0)  # the person is pure red; the background image has no red
    back_rgb = np.zeros((60, 80, 3), np.uint8)
    back_rgb[..., 1] = 200
    for seed in range(10):
        img, msk = landscape(rgb, mask, back_rgb, np.zeros((60, 80), np.uint8), np.random.default_rng(seed))
        assert msk.shape == (90, img.shape[1]) and min(abs(img.shape[1] / 90 - a) for a in (16 / 9, 4 / 3)) < 0.02
        assert mask.sum() / 4 * 0.8 <= msk.sum() <= mask.sum() * 1.1  # 0.5-1.0 of the height
        inner = cv2.erode(msk, np.ones((3, 3), np.uint8)) > 0  # edges blend bilinearly with the background
        assert inner.any() and np.all(img[inner] == (255, 0, 0))  # in front of the background
    back_mask = np.ones((60, 80), np.uint8)  # a background that is all person stays in the target
    _, msk = landscape(rgb, mask, back_rgb, back_mask, np.random.default_rng(0))
    assert msk.all()


def test_anywhere_samples_from_several_others_stay_consistent():
    rgb, mask = _person(90, 40)
    others = [_person(60, 80), _person(80, 30), _person(70, 50)]
    for seed in range(8):
        s = make_sample(rgb, mask, np.random.default_rng(seed), 64, 4, others)
        assert s.student.shape == (4, 64, 64) and set(np.unique(s.mask)) <= {0, 1}


def test_augment_grid_draws_both_rows_from_every_dataset(two, tmp_path):
    from rcr_deploy.benchmarks.augment_grid import draw

    out = tmp_path / "grid.png"
    draw([str(two[0]), str(two[1])], out, columns=4)
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[1] > picture.shape[0] > 100
    assert not list(tmp_path.glob(".grid.png.*"))  # written whole or not at all
