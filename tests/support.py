"""Helpers that several test modules share (no test module imports another): the CLI runners, a
synthetic labelled folder, a stand-in model whose answer is known, picture and video readers, a
small training configuration."""

from __future__ import annotations

import contextlib
import io
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
from PIL import Image

from rcr_deploy.cli import main
from rcr_deploy.runtime import Runner

PERSON, BACKGROUND = (230, 30, 30), (30, 30, 230)


class CliResult(NamedTuple):
    """What one `rcr-deploy` command did: `code, out, err = cli(...)`."""

    code: int
    out: str
    err: str


def cli(*args: str | Path) -> CliResult:
    """The console entry point in-process, as a user's shell runs it (typed errors mapped to one
    line and an exit code by `cli.main`). Signal handlers that a command installs (train does)
    are put back, so the test process keeps its own. The `cli` fixture in conftest.py is this."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    argv, out, err = sys.argv, io.StringIO(), io.StringIO()
    sys.argv = ["rcr-deploy", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = argv
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return CliResult(code, out.getvalue(), err.getvalue())


def cli_process(*args: str | Path, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m rcr_deploy ARGS` in its own process: a fresh interpreter, with its own threads,
    imports and signal handlers."""
    return subprocess.run([sys.executable, "-m", "rcr_deploy", *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def portrait(h: int = 48, w: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A red ellipse 'person' (the mask) on a blue background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h * rng.uniform(0.45, 0.6), w * rng.uniform(0.4, 0.6)
    mask = (((yy - cy) / (h * 0.3)) ** 2 + ((xx - cx) / (w * 0.25)) ** 2 <= 1).astype(np.uint8)
    rgb = np.where(mask[..., None] == 1, PERSON, BACKGROUND).astype(np.uint8)
    return rgb, mask


def write_dataset(root: Path, n: int = 8, h: int = 48, w: int = 40) -> Path:
    """images/NNNNN.png + masks/NNNNN.png (0/255) of synthetic portraits."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        rgb, mask = portrait(h, w, seed=i)
        Image.fromarray(rgb).save(root / "images" / f"{i:05d}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"{i:05d}.png")
    return root


class KnownRunner(Runner):
    """Person = pixels whose normalised red channel is high (the grey padding is not); records
    every input so tests can inspect the prior channel."""

    name = "known"

    def __init__(self, in_channels: int = 4) -> None:
        self.in_channels = in_channels
        self.inputs: list[np.ndarray] = []

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.inputs.append(x.copy())
        margin = 8.0 * (x[:, 0] - 1.0)  # red above ~182 of 255
        return np.stack([-margin, margin], axis=1).astype(np.float32)


def save_rgb(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def read_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a video file, as OpenCV decodes it (BGR)."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr)
    cap.release()
    return frames


def visible_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def train_config(data: Any, out: Any, **kw: Any) -> Any:
    """A two-epoch training run at 64x64 on the CPU."""
    from rcr_deploy.train.trainer import TrainConfig  # only the training tests pay for the trainer's imports

    # Pinned to fp32 on the CPU: bf16 autocast is emulated, and very slow, on CPUs without avx512_bf16.
    base = dict(data=str(data), out=str(out), arch="rcrnet", size=64, batch=2, epochs=2, workers=0, seed=3, lr=2e-3, device="cpu", amp="off")
    return TrainConfig(**{**base, **kw})
