"""`rcr-deploy infer DIR --ray`: a real local Ray writes what local `infer DIR` writes, byte for
byte; inputs --ray does not take are refused in one line before Ray starts."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import EG1800
from support import write_dataset

ray = pytest.importorskip("ray", reason="Ray is the 'serve' extra: pip install 'rcr-deploy[serve]'")


@pytest.mark.slow
@pytest.mark.timeout(600)  # Ray and two workers, twice, on a loaded 2-core machine
def test_ray_writes_the_files_local_infer_writes(tmp_path, cli):
    folder = write_dataset(tmp_path / "data", n=4, h=96, w=80) / "images"
    Image.fromarray(np.full((60, 50, 3), 200, np.uint8)).save(folder / "00000.jpg")  # a stem shared with 00000.png
    if (EG1800 / "images").is_dir():  # a real photograph where the checkout has one beside it
        shutil.copy(sorted((EG1800 / "images").iterdir())[0], folder / "real.jpg")
    (folder / "broken.png").write_bytes(b"not an image")  # skipped by both, the others still written
    options = ["--save", "mask,cutout,overlay,background", "--background", "#00B140", "--feather", "1.5"]
    local = cli("infer", folder, "-o", tmp_path / "local", *options)
    remote = cli("infer", folder, "-o", tmp_path / "ray", *options, "--ray", "--replicas", "2", "--threads", "1")
    assert not ray.is_initialized()  # the command shut down the Ray it started
    for result in (local, remote):
        assert result.code == 2, result.err
        last = result.err.strip().splitlines()[-1]
        assert "broken.png: unreadable or corrupt image" in last and "1 of 7 images unreadable" in last, last
    assert remote.out.startswith("starting Ray: 2 worker(s), 1 model thread(s) each, 7 image(s)")
    files = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert len(files) == 6 * 4 and "00000.jpg_mask.png" in files
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == files  # no temporary file left either
    for name in files:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    # Resumed: the images with a picture missing are segmented again, the finished ones left alone.
    for name in ("00001_mask.png", "00002_overlay.png"):
        (tmp_path / "ray" / name).unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray").iterdir()}
    resumed = cli("infer", folder, "-o", tmp_path / "ray", *options, "--ray", "--replicas", "2", "--threads", "1", "--skip-done")
    assert resumed.out.startswith("starting Ray: 2 worker(s), 1 model thread(s) each, 3 image(s) (4 done already)"), resumed.out
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == files
    rewritten = {p.name for p in (tmp_path / "ray").iterdir() if kept.get(p.name) != p.stat().st_mtime_ns}
    assert rewritten == {f"0000{i}_{mode}.png" for i in (1, 2) for mode in ("mask", "cutout", "overlay", "background")}
    for name in files:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def test_ray_refuses_what_is_not_a_folder_in_one_line(tmp_path, cli):
    image = write_dataset(tmp_path / "data", n=1) / "images" / "00000.png"
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 64)  # refused by its kind; never decoded
    cases = [
        ([tmp_path / "clip.mp4", "--ray"], "a video, not a folder; --ray is for folders of images"),
        (["0", "--ray"], "a camera, not a folder; --ray is for folders of images"),
        ([image, "--ray"], "an image, not a folder; --ray is for folders of images"),
        ([image.parent, "--replicas", "2"], "add --ray"),
        ([image.parent, "--ray", "--server", "http://127.0.0.1:1"], "--ray with --server"),
        ([image.parent, "--ray", "--replicas", "0"], "--replicas 0"),
    ]
    for args, reason in cases:
        code, out, err = cli("infer", *args, "-o", tmp_path / "out")
        assert code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and reason in err, (args, err)
    assert not (tmp_path / "out").exists() and not ray.is_initialized()
