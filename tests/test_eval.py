"""`evaluate` and `rcr-deploy eval` on synthetic portraits, with results checked by hand."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from rcr_deploy.checkpoint import save_checkpoint
from rcr_deploy.data.folder import list_pairs, load_pair
from rcr_deploy.evaluate import SHEET_CELL, contact_sheet, evaluate
from rcr_deploy.postprocess import foreground_prob
from rcr_deploy.models import build_model
from rcr_deploy.runtime import Runner
from support import cli_process, write_dataset


class AllPerson(Runner):
    """Logits that call every pixel person (softmax 0.73)."""

    name = "all-person"

    def infer(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((x.shape[0], 2, *x.shape[2:]), np.float32)
        out[:, 1] = 1.0
        return out


def test_scores_at_mask_resolution_match_hand_computation(tmp_path):
    root = write_dataset(tmp_path / "d", n=5, h=50, w=30)
    report = evaluate(AllPerson(), root, size=64, progress=False, batch=2)
    assert report.n_images == 5
    for score, pair in zip(report.per_image, list_pairs(root)):
        _, mask = load_pair(pair)
        fg = mask.sum() / mask.size  # all-person prediction: IoU = |person| / |frame|
        assert score.fg_iou == pytest.approx(fg)
        assert score.class_iou == pytest.approx(fg / 2)  # background IoU is 0
    assert report.fg_miou == pytest.approx(np.mean([s.fg_iou for s in report.per_image]))
    assert [s.stem for s in report.worst(2)] == sorted(
        [s.stem for s in report.per_image], key=lambda k: next(s.fg_iou for s in report.per_image if s.stem == k)
    )[:2]


def test_foreground_prob_is_softmax_of_class_1():
    logits = np.array([[[[0.0]], [[np.log(3.0)]]]], np.float32)
    assert foreground_prob(logits)[0, 0, 0] == pytest.approx(0.75)


@pytest.mark.slow  # a real eval in a fresh interpreter, worst pictures drawn
def test_cli_eval_per_image_csv_and_worst_pictures(tmp_path):
    root = write_dataset(tmp_path / "d", n=4)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model("rcrnet"), "rcrnet")
    proc = cli_process("eval", str(ckpt), "--data", str(root), "--size", "64", "--per-image", str(tmp_path / "s.csv"),
                   "--worst", "2", str(tmp_path / "worst"), "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [r["stem"] for r in rows] == ["00000", "00001", "00002", "00003"]
    assert report["fg_miou"] == pytest.approx(np.mean([float(r["fg_iou"]) for r in rows]), abs=1e-5)
    assert report["class_miou"] == pytest.approx(np.mean([float(r["class_iou"]) for r in rows]), abs=1e-5)
    worst = sorted(rows, key=lambda r: float(r["fg_iou"]))[:2]
    pictures = sorted(p.name for p in (tmp_path / "worst").iterdir())
    assert pictures == [f"01-{worst[0]['stem']}.png", f"02-{worst[1]['stem']}.png", "worst.png"]
    assert cv2.imread(report["worst_sheet"]).shape == (SHEET_CELL[1], 2 * SHEET_CELL[0], 3)
    text = cli_process("eval", str(ckpt), "--data", str(root), "--size", "64", "--split", "val")
    assert "mean per-image foreground IoU" in text.stdout and "class-mean IoU" in text.stdout


def test_cli_eval_bad_input_exit_2(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model("rcrnet"), "rcrnet")
    proc = cli_process("eval", str(ckpt), "--data", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "no image/mask pairs" in proc.stderr
    proc = cli_process("eval", str(tmp_path / "missing.pt"), "--data", str(tmp_path))
    assert proc.returncode == 2 and "missing.pt" in proc.stderr


def test_contact_sheet_fits_each_picture_into_its_cell_in_rows():
    cw, ch = SHEET_CELL
    tall = np.full((80, 20, 3), 200, np.uint8)  # narrower than a cell: black bars left and right
    wide = np.full((20, 80, 3), 100, np.uint8)  # wider: bars above and below
    sheet = contact_sheet([(tall, "t"), (wide, "w")] * 4, columns=3)
    assert sheet.shape == (3 * ch, 3 * cw, 3)
    mid = ch // 2 + ch  # the second row, below the caption bar
    assert (sheet[mid, cw // 2] == 100).all() and (sheet[2 * ch - 2, cw // 2] == 0).all()  # cell (1, 0): wide
    assert (sheet[mid, cw + cw // 2] == 200).all() and (sheet[mid, cw + 2] == 0).all()  # (1, 1): tall
    assert (sheet[2 * ch + ch // 2, 2 * cw + cw // 2] == 0).all()  # the ninth cell is empty


def test_cli_eval_several_datasets_in_one_table(tmp_path):
    a, b = write_dataset(tmp_path / "selfies", n=3), write_dataset(tmp_path / "bodies", n=2, h=64, w=32)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model("rcrnet"), "rcrnet")
    args = ["eval", str(ckpt), "--data", str(a), "--data", str(b), "--size", "64", "--no-peer"]
    proc = cli_process(*args, "--per-image", str(tmp_path / "s.csv"), "--worst", "1", str(tmp_path / "worst"), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["rows"]
    assert [(r["name"], r["n_images"]) for r in rows] == [("selfies", 3), ("bodies", 2)]
    per_image = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [(r["data"], r["stem"]) for r in per_image] == [("selfies", "00000"), ("selfies", "00001"), ("selfies", "00002"), ("bodies", "00000"), ("bodies", "00001")]
    for row in rows:  # each row is that dataset alone, scored as a one-dataset eval scores it
        alone = json.loads(cli_process("eval", str(ckpt), "--data", str(tmp_path / row["name"]), "--size", "64", "--no-peer", "--json").stdout)
        assert alone["fg_miou"] == pytest.approx(row["fg_miou"]) and alone["rows"][0]["fg_miou"] == alone["fg_miou"]
        assert (tmp_path / "worst" / row["name"] / "worst.png").is_file()
    text = cli_process(*args)
    assert text.returncode == 0 and "selfies" in text.stdout and "bodies" in text.stdout
    proc = cli_process("eval", str(ckpt), "--data", str(a), "--data", str(b), "--split", str(tmp_path / "s.csv"))
    assert proc.returncode == 2 and "single --data" in proc.stderr


def test_framings_are_the_same_pictures_for_every_model_and_run(tmp_path):
    """Each framing is keyed on the image's index: the same pictures every call; the landscape and
    crowd framings bring the split's next person in (and into the target)."""
    from rcr_deploy.data.augment import FRAMINGS
    from rcr_deploy.evaluate import load_framed

    pairs = list_pairs(write_dataset(tmp_path / "d", n=3, h=64, w=48))
    rgb, mask = load_pair(pairs[0])
    for framing in FRAMINGS:
        a, b = load_framed(pairs, 0, framing), load_framed(pairs, 0, framing)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), framing
        assert a[0].shape[:2] == a[1].shape and set(np.unique(a[1])) <= {0, 1}, framing
    assert np.array_equal(load_framed(pairs, 0, "as-is")[0], rgb)
    assert load_framed(pairs, 0, "cut")[1].size < mask.size  # the frame is cropped
    wide = load_framed(pairs, 0, "landscape")[1]
    assert wide.shape[1] > wide.shape[0] and wide.shape[0] == mask.shape[0]
    assert load_framed(pairs, 0, "crowd")[1].sum() >= mask.sum()  # the union of both people


def test_cli_eval_framings_give_a_row_each_and_their_own_worst_pictures(tmp_path):
    from rcr_deploy.evaluate import load_framed

    root = write_dataset(tmp_path / "d", n=3, h=64, w=48)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model("rcrnet"), "rcrnet")
    proc = cli_process("eval", str(ckpt), "--data", str(root), "--size", "64", "--no-peer", "--framing", "as-is,landscape",
                       "--worst", "1", str(tmp_path / "worst"), "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["rows"]
    assert [(r["framing"], r["n_images"]) for r in rows] == [("as-is", 3), ("landscape", 3)]
    alone = json.loads(cli_process("eval", str(ckpt), "--data", str(root), "--size", "64", "--no-peer", "--reframe", "--json").stdout)
    assert alone["rows"][0]["framing"] == "reframed"
    (picture,) = [p for p in (tmp_path / "worst" / "landscape").iterdir() if p.name != "worst.png"]
    stem = picture.stem.split("-", 1)[1]
    index = [p.stem for p in list_pairs(root)].index(stem)
    assert cv2.imread(str(picture)).shape[:2] == load_framed(list_pairs(root), index, "landscape")[1].shape  # the frame scored
    bad = cli_process("eval", str(ckpt), "--data", str(root), "--framing", "sideways")
    assert bad.returncode == 2 and "--framing sideways" in bad.stderr and "landscape" in bad.stderr
