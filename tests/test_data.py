"""Datasets on disk, masks in every encoding, the split rule, and augmentation invariants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rcr_deploy.data.augment import edge_target, make_sample, texture
from rcr_deploy.data.folder import list_pairs, load_mask, load_pair, val_ids
from rcr_deploy.errors import DataError
from rcr_deploy.preprocess import MEAN_RGB, SCALE
from support import BACKGROUND, PERSON, portrait, write_dataset



def test_pairs_split_rule_and_split_file(tmp_path):
    root = write_dataset(tmp_path / "d", n=12)
    all_ids = [p.stem for p in list_pairs(root)]
    assert all_ids == [f"{i:05d}" for i in range(12)]
    assert [p.stem for p in list_pairs(root, "val")] == ["00000", "00010"]
    assert len(list_pairs(root, "train")) == 10
    assert val_ids(["b", "a", "c"]) == {"a"}
    split = tmp_path / "ids.txt"
    split.write_text("00003\n00001.jpg\n\n")
    assert [p.stem for p in list_pairs(root, split)] == ["00001", "00003"]


def test_eg1800_split_is_one_in_ten(eg1800):
    train, val = list_pairs(eg1800, "train"), list_pairs(eg1800, "val")
    assert len(train) + len(val) == 1341 and len(val) == 135
    assert not {p.stem for p in train} & {p.stem for p in val}


def test_p3m_layout(tmp_path):
    root = tmp_path / "P3M-10k"
    for sub, image_dir in (("train", "blurred_image"), ("validation/P3M-500-NP", "original_image")):
        (root / sub / image_dir).mkdir(parents=True)
        (root / sub / "mask").mkdir()
        rgb, mask = portrait()
        Image.fromarray(rgb).save(root / sub / image_dir / "p_1.jpg")
        matte = (mask * 200 + 20).astype(np.uint8)  # an alpha matte: soft values, never exactly 0/255
        Image.fromarray(matte).save(root / sub / "mask" / "p_1.png")
    (pair,) = list_pairs(root, "p3m-train")
    assert pair.image.parent.name == "blurred_image"
    _, loaded = load_pair(list_pairs(root, "p3m-500-np")[0])
    np.testing.assert_array_equal(loaded, portrait()[1])


@pytest.mark.parametrize(
    "encode",
    [
        lambda m: Image.fromarray(m),  # 0/1
        lambda m: Image.fromarray(m * 255),  # 0/255
        lambda m: Image.fromarray(m.astype(np.uint16) * 60000 + 1000),  # 16-bit matte
        lambda m: Image.fromarray(np.dstack([m * 255] * 3)),  # RGB
        lambda m: Image.fromarray(np.dstack([np.zeros_like(m)] * 3 + [m * 255])),  # alpha
        lambda m: Image.fromarray((m * 0.8 + 0.1).astype(np.float32)),  # float matte in [0, 1]
    ],
    ids=["0-1", "0-255", "uint16-matte", "rgb", "rgba-alpha", "float-matte"],
)
def test_mask_encodings(tmp_path, encode):
    _, mask = portrait()
    img = encode(mask)
    path = tmp_path / ("m.tif" if img.mode == "F" else "m.png")
    img.save(path)
    np.testing.assert_array_equal(load_mask(path), mask)


def test_empty_dataset(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="no image/mask pairs"):
        list_pairs(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        list_pairs(tmp_path / "nowhere")


def test_mismatched_pairs_name_offenders_and_count(tmp_path):
    root = write_dataset(tmp_path / "d", n=9)
    for i in range(7):
        (root / "masks" / f"{i:05d}.png").unlink()
    with pytest.raises(DataError, match=r"images without a mask .*00000, 00001, 00002, 00003, 00004, \.\.\. \(7 in all\)"):
        list_pairs(root)
    root2 = write_dataset(tmp_path / "e", n=3)
    (root2 / "images" / "00001.png").unlink()
    with pytest.raises(DataError, match=r"masks without an image .*00001 \(1 in all\)"):
        list_pairs(root2)


def test_wrong_size_mask_and_corrupt_image(tmp_path):
    root = write_dataset(tmp_path / "d", n=2)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "00000.png")
    with pytest.raises(DataError, match=r"00000.png: mask is 10x10 but its image is 40x48"):
        load_pair(list_pairs(root)[0])
    (root / "images" / "00001.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"00001.png: unreadable or corrupt image"):
        load_pair(list_pairs(root)[1])


def _to_rgb(x: np.ndarray) -> np.ndarray:
    return x[:3].transpose(1, 2, 0) / SCALE + np.asarray(MEAN_RGB)


def test_augmentation_moves_image_and_mask_together_and_prior_in_range():
    rgb, mask = portrait(120, 100)
    priors_used = 0
    for seed in range(40):
        s = make_sample(rgb, mask, np.random.default_rng(seed), size=64)
        teacher, student = _to_rgb(s.teacher), _to_rgb(s.student)
        inside = s.mask == 1
        # Teacher: deformation only, so red exactly where the mask says person (edges aside).
        red = teacher[..., 0] > teacher[..., 2] + 60
        assert (red == inside).mean() > 0.97, seed
        # Student: same geometry; texture changes colours but keeps red above blue.
        assert ((student[..., 0] > student[..., 2] + 15) == inside).mean() > 0.9, seed
        prior = s.teacher[3]
        assert prior.min() >= 0.0 and prior.max() <= 1.0
        np.testing.assert_array_equal(prior, s.student[3])
        priors_used += bool(prior.any())
        assert set(np.unique(s.edge)) <= {0, 1}
    assert 8 <= priors_used <= 32  # p = 0.5 of a fake prior, zeros otherwise


def test_fake_prior_is_near_the_mask():
    rgb, mask = portrait(120, 100)
    for seed in range(40):
        s = make_sample(rgb, mask, np.random.default_rng(seed), size=64)
        if s.teacher[3].any():
            fg = s.mask == 1
            prior = s.teacher[3] > 0.5
            iou = (prior & fg).sum() / max((prior | fg).sum(), 1)
            assert iou > 0.5, seed  # a previous frame: close to, not equal to, the current mask


def test_edge_target_is_a_4px_outline():
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 1
    edge = edge_target(mask)
    assert edge[32, 32] == 0 and edge[2, 2] == 0  # not the inside, not far outside
    assert edge[16, 32] == 1 and edge[32, 47] == 1  # on the outline
    cols = np.flatnonzero(edge[32])  # a horizontal cut crosses the outline twice, about 4 px each
    assert 8 <= len(cols) <= 12 and cols.min() >= 13 and cols.max() <= 50


def test_texture_keeps_size_and_range():
    rgb, _ = portrait()
    for seed in range(10):
        out = texture(rgb, np.random.default_rng(seed))
        assert out.shape == rgb.shape and out.dtype == np.uint8


def test_image_modes_and_exif_rotation(tmp_path):
    root = write_dataset(tmp_path / "d", n=3)
    rgb, mask = portrait()
    grey = rgb.mean(axis=2).astype(np.uint8)
    Image.fromarray(grey).save(root / "images" / "00000.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(root / "images" / "00001.png")  # 16-bit grey
    # Stored sideways with EXIF orientation 6 ("rotate 90° clockwise to display"): the mask is
    # upright, so the pair only matches once the rotation is applied.
    (root / "images" / "00002.png").unlink()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(portrait(seed=2)[0])).save(root / "images" / "00002.jpg", exif=exif, quality=95)
    pairs = list_pairs(root)
    for pair in pairs:
        image, loaded_mask = load_pair(pair)
        assert image.shape == (48, 40, 3) and image.dtype == np.uint8
    upright, m2 = load_pair(pairs[2])
    red = upright[..., 0] > upright[..., 2]
    assert (red == (m2 == 1)).mean() > 0.97
