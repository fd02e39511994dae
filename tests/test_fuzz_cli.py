"""Fuzz suite: the real CLI against bad files, bad option values, full disks and kills.

Every case checks the contract of docs/reliability.md: exit 2 (1 for a failed check), exactly
one `error:` line naming the file or option, no traceback, and no partial or replaced output
(earlier outputs byte-identical). Cases that fail while parsing or loading run the console entry
point in-process (a process each would cost seconds); a full disk and a kill need real processes.
A full disk is RLIMIT_FSIZE: the kernel then fails every write past the limit (EFBIG), in Python
and in FFmpeg alike, with no mount and no root needed.

The file is longer than most: the corpus and every class of fault live together, so one file
shows what the whole contract covers.
"""

from __future__ import annotations

import math
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rcr_deploy import video
from rcr_deploy.artifact import LOCK, STAGING_PREFIX, VERSIONS
from rcr_deploy.checkpoint import save_checkpoint
from rcr_deploy.data import synthetic
from rcr_deploy.models import build_model
from support import cli, save_rgb, write_dataset

pytestmark = pytest.mark.slow  # property tests run the CLI hundreds of times

# ------------------------------------------------------------------------------------ harness


def spawn(*args: str, fsize: int | None = None, **kw) -> subprocess.Popen:
    """`python -m rcr_deploy ARGS` in its own process; `fsize` caps every file it writes."""

    def limit() -> None:
        # A shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT:
        # the Ctrl-C tests must not depend on how pytest itself was started.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "rcr_deploy", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=limit, env=env, **kw,
    )


def run(*args: str, fsize: int | None = None) -> tuple[int, str]:
    p = spawn(*args, fsize=fsize)
    _, err = p.communicate(timeout=300)
    return p.returncode, err


def assert_refused(code: int, err: str, names: str, exit_code: int = 2) -> None:
    """Exit code, one `error:` line naming `names`, no traceback (a progress bar cut short by
    the error may share its line)."""
    errors = re.findall(r"error: .*", err)
    assert code == exit_code, err
    assert "Traceback" not in err, err
    assert len(errors) == 1 and names in errors[0], err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones included) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def without_lock(files: dict[str, bytes]) -> dict[str, bytes]:
    """A snapshot less the export folder's empty lock file, which an export leaves on purpose."""
    return {k: v for k, v in files.items() if k != LOCK}


def with_earlier_outputs(folder: Path, *names: str) -> dict[str, bytes]:
    """Put earlier outputs in `folder`; returns the snapshot they must still match afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(f"earlier output {name}".encode())
    return snapshot(folder)


def wait_for(pattern: str, folder: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Block until a file matching `pattern` exists in `folder`: the process is mid-write."""
    end = time.monotonic() + timeout
    while not list(folder.glob(pattern)):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < end, f"no {pattern} in {folder} after {timeout} s"
        time.sleep(0.05)


# ------------------------------------------------------------------------------------ corpus


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    return save_rgb(tmp_path_factory.mktemp("photo") / "me.png", synthetic.sample_portrait(48, 48)[0])


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb needs no more)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def bad_image(folder: Path, kind: str) -> Path:
    good = (folder / "good.png").read_bytes() if (folder / "good.png").exists() else None
    path = folder / f"{kind}.png"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "bomb":
        path.write_bytes(png_header(20_000, 20_000))
    elif kind == "fifo":
        os.mkfifo(path)
    return path


IMAGE_KINDS = ["random", "empty", "truncated", "bomb", "fifo"]


class Pickled:
    """An arbitrary object: a checkpoint holding one must not load (weights_only)."""


def _payload(kind: str) -> object:
    sd = {k: v.clone() for k, v in build_model("rcrnet").state_dict().items()}
    base = {"format": "rcr-deploy-checkpoint", "version": 1, "arch": "rcrnet", "form": "train", "state_dict": sd}
    if kind == "version-string":
        return {**base, "version": "1"}
    if kind == "no-arch":
        return {k: v for k, v in base.items() if k != "arch"}
    if kind == "no-state-dict":
        return {k: v for k, v in base.items() if k != "state_dict"}
    if kind in ("state-dict-list", "state-dict-float", "state-dict-empty"):
        return {**base, "state_dict": {"state-dict-list": [1, 2], "state-dict-float": 0.5, "state-dict-empty": {}}[kind]}
    if kind in ("nan-weight", "inf-weight"):
        name = next(k for k, v in sd.items() if v.ndim == 4)
        sd[name][0, 0, 0, 0] = math.nan if kind == "nan-weight" else math.inf
        return base
    if kind == "negative-variance":
        name = next(k for k in sd if k.endswith("running_var"))
        sd[name][0] = -1.0
        return base
    if kind == "pickled-object":
        return {**base, "meta": {"x": Pickled()}}
    raise ValueError(kind)


def bad_checkpoint(folder: Path, kind: str) -> Path:
    path = folder / f"{kind}.pt"
    if kind == "random":
        path.write_bytes(np.random.default_rng(1).bytes(3000))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind in ("seven-channels", "five-classes"):
        model = build_model("rcrnet", in_channels=7) if kind == "seven-channels" else build_model("rcrnet", num_classes=5)
        save_checkpoint(path, model, "rcrnet")
    else:
        torch.save(_payload(kind), path)
    return path


CKPT_KINDS = [
    "random", "empty", "fifo", "version-string", "no-arch", "no-state-dict", "state-dict-list", "state-dict-float",
    "state-dict-empty", "nan-weight", "inf-weight", "negative-variance", "pickled-object", "seven-channels", "five-classes",
]


# -------------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("kind", CKPT_KINDS)
@pytest.mark.parametrize("command", ["infer", "export", "verify-reparam"])
def test_bad_checkpoint_is_refused_before_any_output(tmp_path, photo, kind, command):
    bad = bad_checkpoint(tmp_path, kind)
    out = tmp_path / "out"
    before = with_earlier_outputs(out, "rcrnet.onnx", "me_mask.png")
    args = {
        "infer": ["infer", str(photo), "-m", str(bad), "-o", str(out)],
        "export": ["export", str(bad), "--force", "-o", str(out)],
        "verify-reparam": ["verify-reparam", str(bad)],
    }[command]
    code, _, err = cli(*args)
    assert_refused(code, err, str(bad))
    assert "weights_only" not in err or kind == "pickled-object"  # random bytes are no pickle to fix
    assert snapshot(out) == before


@pytest.mark.parametrize("kind", IMAGE_KINDS)
@pytest.mark.parametrize("where", ["infer", "background", "calib"])
def test_bad_image_is_refused_and_nothing_is_replaced(tmp_path, ckpt, photo, kind, where):
    folder = tmp_path / "images"
    folder.mkdir()
    save_rgb(folder / "good.png", synthetic.sample_portrait(40, 40)[0])
    bad = bad_image(folder, kind)
    out = tmp_path / "out"
    before = with_earlier_outputs(out, f"{bad.stem}_mask.png", "me_background.png", "rcrnet.onnx")
    if where == "infer":
        args = ["infer", str(bad), "-m", str(ckpt), "--save", "mask"]
    elif where == "background":
        args = ["infer", str(photo), "-m", str(ckpt), "--background", str(bad)]
    else:  # a FIFO in a calibration folder is skipped (not a file); the others are refused
        if kind == "fifo":
            (folder / "good.png").unlink()
        args = ["export", str(ckpt), "--precision", "int8", "--calib", str(folder), "--force"]
    code, _, err = cli(*args, "-o", str(out))
    assert_refused(code, err, str(folder) if where == "calib" and kind == "fifo" else str(bad))
    assert snapshot(out) == before


@pytest.mark.parametrize("pipeline", ["--pipeline", "--no-pipeline"])
def test_corrupt_image_in_a_folder_keeps_every_other_output(tmp_path, ckpt, pipeline):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        save_rgb(folder / f"{i}.png", synthetic.sample_portrait(40, 40, seed=i)[0])
    (folder / "1.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code, _, err = cli("infer", str(folder), "-m", str(ckpt), "-o", str(out), "--save", "mask", pipeline)
    assert_refused(code, err, str(folder / "1.png"))
    assert sorted(p.name for p in out.iterdir()) == ["0_mask.png", "2_mask.png", "3_mask.png"]


def test_same_stem_inputs_get_distinct_outputs_and_the_right_count(tmp_path, ckpt):
    folder = tmp_path / "photos"
    folder.mkdir()
    save_rgb(folder / "a.png", synthetic.sample_portrait(40, 40, seed=0)[0])
    save_rgb(folder / "a.jpg", synthetic.sample_portrait(40, 40, seed=1)[0])
    save_rgb(folder / "b.png", synthetic.sample_portrait(40, 40, seed=2)[0])
    out = tmp_path / "out"
    code, stdout, err = cli("infer", str(folder), "-m", str(ckpt), "-o", str(out), "--save", "mask")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg_mask.png", "a.png_mask.png", "b_mask.png"]
    assert "wrote 3 file(s)" in stdout


def test_video_that_stops_decoding_is_reported_and_writes_nothing(tmp_path, ckpt):
    frames = [f for f, _ in synthetic.video(12, 48, 64, seed=0)]
    whole = video.write_video(tmp_path / "clip.avi", frames, fps=10, codec="MJPG")
    data = whole.read_bytes()
    whole.write_bytes(data[: len(data) // 2])  # FFmpeg's AVI header takes the first third: cut past it
    out = tmp_path / "out"
    before = with_earlier_outputs(out, "clip_mask.avi", "clip_mask.mp4")
    code, _, err = cli("infer", str(whole), "-m", str(ckpt), "-o", str(out), "--save", "mask", "--no-pipeline")
    assert_refused(code, err, str(whole))
    assert "--frames" in err
    assert snapshot(out) == before


def test_output_folder_that_is_a_file_and_a_fifo_video(tmp_path, ckpt, photo):
    taken = tmp_path / "taken"
    taken.write_bytes(b"keep me")
    assert_refused(*cli("infer", str(photo), "-m", str(ckpt), "-o", str(taken))[::2], str(taken))
    assert taken.read_bytes() == b"keep me"
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    assert_refused(*cli("infer", str(fifo), "-m", str(ckpt), "-o", str(tmp_path / "out"))[::2], str(fifo))


def test_demo_with_a_deploy_form_checkpoint_names_it_and_no_other_option(tmp_path):
    from rcr_deploy.reparam import reparameterize

    deploy = tmp_path / "deploy.pt"
    save_checkpoint(deploy, reparameterize(build_model("rcrnet")), "rcrnet")
    code, _, err = cli("demo", "-m", str(deploy), "-o", str(tmp_path / "demo"))
    assert_refused(code, err, str(deploy))
    assert "--ckpt" not in err and not (tmp_path / "demo").exists()


def test_stale_partial_video_of_a_killed_writer_is_swept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".clip_mask.{dead.stdout.strip()}.partial.mp4"
    alive = tmp_path / f".clip_mask.{os.getpid()}.partial.mp4"
    stale.write_bytes(b"x")
    alive.write_bytes(b"x")
    video._sweep_partials(tmp_path / "clip_mask.mp4")
    assert not stale.exists() and alive.exists()


# ------------------------------------------------------------------------------ bad options

#: (command and its needed arguments, option, lowest good value, highest good value, multiple of, type)
OPTIONS = [
    (["models"], "--size", 32, 4096, 32, int),
    (["verify-reparam"], "--rtol32", 0.0, 1e6, 1, float),
    (["verify-reparam"], "--atol64", 0.0, 1e6, 1, float),
    (["infer", "x.png"], "--feather", 0.0, 500.0, 1, float),
    (["infer", "x.png"], "--frames", 1, 10**9, 1, int),
    (["train", "--data", "nowhere"], "--batch", 1, 4096, 1, int),
    (["train", "--data", "nowhere"], "--epochs", 1, 10**6, 1, int),
    (["train", "--data", "nowhere"], "--workers", 0, 256, 1, int),
    (["train", "--data", "nowhere"], "--size", 32, 4096, 32, int),
    (["train", "--data", "nowhere"], "--lr", 5e-324, 1.0, 1, float),
    (["train", "--data", "nowhere"], "--seed", 0, 2**32 - 1, 1, int),
    (["train", "--data", "nowhere"], "--val-every", 1, 10**6, 1, int),
    (["train", "--data", "nowhere"], "--weight-decay", 0.0, 1.0, 1, float),
    (["bench"], "--threads", 1, 1024, 1, int),
    (["bench"], "--batch", 1, 4096, 1, int),
    (["bench"], "--iters", 1, 10**9, 1, int),
    (["bench"], "--max-seconds", 0.001, 1e6, 1, float),
    (["eval", "--data", "nowhere"], "--limit", 1, 10**9, 1, int),
    (["eval", "--data", "nowhere"], "--batch", 1, 4096, 1, int),
    (["export"], "--size", 32, 4096, 32, int),
    (["export"], "--opset", 18, 25, 1, int),
    (["export"], "--val-limit", 1, 10**9, 1, int),
    (["export"], "--calib-count", 1, 10**9, 1, int),
    (["build"], "--max-batch", 1, 4096, 1, int),
]


@st.composite
def bad_option(draw: st.DrawFn) -> tuple[list[str], str, str]:
    """An option of some command and a value outside its range: too small, too big, off its
    multiple, or (for a float) NaN or infinite."""
    command, option, lo, hi, multiple, kind = draw(st.sampled_from(OPTIONS))
    if kind is int:
        values = [st.integers(max_value=lo - 1), st.integers(min_value=hi + 1)]
        if multiple > 1:
            values.append(st.integers(lo, hi).filter(lambda x: x % multiple))
    else:
        values = [
            st.sampled_from([math.nan, math.inf, -math.inf]),
            st.floats(max_value=lo, allow_nan=False).filter(lambda x: x < lo),
            st.floats(min_value=hi, allow_nan=False).filter(lambda x: x > hi),
        ]
    return command, option, str(draw(st.one_of(values)))


@settings(max_examples=150, deadline=None)
@given(case=bad_option())
def test_bad_numeric_option_is_one_line_naming_it(case):
    command, option, value = case
    assert_refused(*cli(*command, option, value)[::2], option)


@pytest.mark.parametrize("device", ["tpu", "cuda", "cuda:x"])
def test_unusable_device_is_one_line(photo, ckpt, tmp_path, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_refused(*cli("infer", str(photo), "-m", str(ckpt), "--device", device, "-o", str(tmp_path))[::2], f"--device {device}")


def test_dataloader_worker_error_is_one_line_naming_the_file(tmp_path):
    data = write_dataset(tmp_path / "data", n=4)
    bad = data / "images" / "00002.png"
    bad.write_bytes(b"broken")
    # A process of its own: forking a loader worker from this test process, after other tests
    # have started threads, can deadlock.
    code, err = run(
        "train", "--data", str(data), "--out", str(tmp_path / "run"), "--size", "64", "--batch", "2",
        "--epochs", "1", "--workers", "1", "--val-split", "", "--threads", "1",
    )
    assert_refused(code, err, str(bad))


# ----------------------------------------------------------------------------- full disks


@pytest.mark.parametrize("pyav", [True, False])
def test_full_disk_video_leaves_the_earlier_output(tmp_path, ckpt, monkeypatch, pyav):
    """PyAV reports the failed write; OpenCV's writer does not, and the read-back catches it."""
    if not pyav:  # the child process finds an `av` that cannot be imported, as where PyAV is not installed
        (tmp_path / "no_pyav").mkdir()
        (tmp_path / "no_pyav" / "av.py").write_text("raise ImportError('PyAV hidden by the test')\n")
        monkeypatch.setenv("PYTHONPATH", str(tmp_path / "no_pyav"))
    clip = video.write_video(tmp_path / "clip.mp4", [f for f, _ in synthetic.video(3, 48, 64, seed=0)], fps=10)
    out = tmp_path / "out"
    before = with_earlier_outputs(out, "clip_mask.mp4")
    code, err = run("infer", str(clip), "-m", str(ckpt), "-o", str(out), "--save", "mask", fsize=300)
    assert_refused(code, err, str(out / "clip_mask.mp4"))
    assert ("note: PyAV is not installed" in err) != pyav
    assert snapshot(out) == before


def test_full_disk_images_and_eval_csv(tmp_path, ckpt, monkeypatch):
    image = save_rgb(tmp_path / "me.png", np.random.default_rng(0).integers(0, 255, (96, 96, 3), np.uint8))
    out = tmp_path / "out"
    before = with_earlier_outputs(out, "me_overlay.png")
    # An empty model cache: the checkpoint's OpenVINO conversion is written under the same cap,
    # whatever ran before; a cache that cannot be written is a note, not the error.
    monkeypatch.setenv("RCR_DEPLOY_CACHE", str(tmp_path / "cache"))
    code, err = run("infer", str(image), "-m", str(ckpt), "-o", str(out), "--save", "overlay", fsize=4096)
    assert_refused(code, err, str(out / "me_overlay.png"))
    assert "note: cannot cache the converted model" in err
    assert snapshot(out) == before
    data = write_dataset(tmp_path / "data", n=2)
    csv = out / "scores.csv"
    csv.write_text("earlier scores\n")
    code, err = run("eval", str(ckpt), "--data", str(data), "--per-image", str(csv), fsize=20)
    assert_refused(code, err, str(csv))
    assert csv.read_text() == "earlier scores\n" and len(list(out.iterdir())) == 2


def test_full_disk_train_and_export_keep_earlier_files(tmp_path, ckpt):
    data = write_dataset(tmp_path / "data", n=4)
    run_dir = tmp_path / "run"
    before = with_earlier_outputs(run_dir, "last.pt")
    code, err = run(
        "train", "--data", str(data), "--out", str(run_dir), "--size", "64", "--batch", "2", "--epochs", "1",
        "--workers", "0", "--val-split", "", "--threads", "1", fsize=200_000,
    )
    assert_refused(code, err, str(run_dir / "last.pt"))
    assert (run_dir / "last.pt").read_bytes() == before["last.pt"]
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    out = tmp_path / "export"
    before = with_earlier_outputs(out, "rcrnet.onnx", "rcrnet.onnx.json")
    code, err = run("export", str(ckpt), "-o", str(out), "--size", "64", "--force", fsize=200_000)
    assert_refused(code, err, str(out))
    assert without_lock(snapshot(out)) == before  # the staging folder is gone too


# ---------------------------------------------------------------------------------- kills


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_kill_during_video_leaves_the_earlier_output(tmp_path, ckpt, sig):
    clip = video.write_video(tmp_path / "clip.mp4", [f for f, _ in synthetic.video(30, 48, 64, seed=0)], fps=10)
    out = tmp_path / "out"
    before = with_earlier_outputs(out, "clip_mask.mp4")
    proc = spawn("infer", str(clip), "-m", str(ckpt), "-o", str(out), "--save", "mask")
    wait_for(".clip_mask.*.partial.mp4", out, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in err, err
    after = snapshot(out)
    if sig == signal.SIGKILL:  # the hidden partial stays until the next run sweeps it
        after = {k: v for k, v in after.items() if ".partial." not in k}
    assert after == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_kill_during_export_leaves_the_earlier_artifacts(tmp_path, ckpt, sig):
    out = tmp_path / "out"
    before = with_earlier_outputs(out, "rcrnet.onnx", "rcrnet.onnx.json")
    proc = spawn("export", str(ckpt), "-o", str(out), "--size", "64", "--force")
    wait_for(f"{VERSIONS}/{STAGING_PREFIX}*/rcrnet.onnx", out, proc)  # killed inside the export, before its commit
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in err, err
    after = without_lock(snapshot(out))
    if sig == signal.SIGKILL:  # a dead writer's staging folder stays until the next export sweeps it
        after = {k: v for k, v in after.items() if not k.startswith(f"{VERSIONS}/{STAGING_PREFIX}")}
    assert after == before


# --------------------------------------------------------- class 3: the export set (issue 10)


def test_export_set_is_locked_swept_and_verified(tmp_path, ckpt, photo):
    """Two exports into one folder: one is refused at once (the lock); the other sweeps a killed
    export's staging folder and commits; an artifact changed afterwards fails its sha256."""
    out = tmp_path / "out"
    stale = out / VERSIONS / f"{STAGING_PREFIX}killed"  # what a SIGKILLed export leaves
    stale.mkdir(parents=True)
    (stale / "rcrnet.onnx").write_bytes(b"unvalidated")
    procs = [spawn("export", str(ckpt), "-o", str(out), "--size", "64") for _ in range(2)]
    while all(p.poll() is None for p in procs):
        time.sleep(0.1)
    first = next(p for p in procs if p.poll() is not None)
    other = procs[1 - procs.index(first)]
    if first.returncode != 2:
        other.kill()
    assert_refused(first.returncode, first.communicate()[1], str(out))
    assert other.wait(timeout=300) == 0, other.communicate()[1]
    assert not stale.exists()
    onnx_file = out / "rcrnet.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    assert_refused(*cli("infer", str(photo), "-m", str(onnx_file), "-o", str(tmp_path / "i"))[::2], str(onnx_file))
