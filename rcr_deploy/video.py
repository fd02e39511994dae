"""Video in and out (files and cameras, through OpenCV) and the temporal-stability metric."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from rcr_deploy.errors import DataError, RcrError
from rcr_deploy.fileio import output_dir, write_error
from rcr_deploy.metrics import image_ious

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
#: Codecs tried in order when writing; the first is the user's choice (`--codec`).
FALLBACK_CODECS = (("mp4v", ".mp4"), ("MJPG", ".avi"))
_DEFAULT_FPS = 30.0
#: Camera indices accepted (Linux numbers /dev/video0 to /dev/video255 at most).
MAX_CAMERA_INDEX = 255


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """OpenCV and FFmpeg print every failed probe (a missing camera, an unwritable codec, a
    corrupt file) straight to file descriptor 2; we turn each failure into one line of our own."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class VideoSource:
    """Frames of a video file or a camera as HxWx3 uint8 RGB, with the stream's fps."""

    def __init__(self, source: str | os.PathLike | int) -> None:
        self.live = isinstance(source, int)
        if self.live and not 0 <= source <= MAX_CAMERA_INDEX:
            raise RcrError(f"camera {source}: not a camera index; pass 0 to {MAX_CAMERA_INDEX} or a video file")
        self.source = source
        self.label = f"camera{source}" if self.live else Path(source).stem
        with _native_stderr_silenced():
            self._cap = cv2.VideoCapture(source if self.live else str(source))
            ok, first = self._cap.read() if self._cap.isOpened() else (False, None)
        if not ok:
            self._cap.release()
            if self.live:
                raise RcrError(f"camera {source}: not available on this machine; connect it (is /dev/video{source} there?) or pass a video file")
            raise DataError(f"{source}: unreadable video (OpenCV cannot decode it); check the file or convert it to mp4 (H.264)")
        self._first: np.ndarray | None = first
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 1.0 <= fps <= 240.0 else _DEFAULT_FPS
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count: int | None = None if self.live or count <= 0 else count

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        """Every frame; a file that stops decoding before the frame count in its header raises
        `DataError` (a short output must not pass for a whole one)."""
        index = 0
        try:
            while True:
                if self._first is not None:
                    bgr, self._first = self._first, None
                else:
                    with _native_stderr_silenced():
                        ok, bgr = self._cap.read()
                    if not ok:
                        self._check_complete(index)
                        return
                yield f"{self.label}_{index:06d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                index += 1
        finally:
            self._cap.release()

    def _check_complete(self, decoded: int) -> None:
        # Slack of 2 frames or 2 %: containers without an exact count (MKV, WebM) record one
        # estimated from the duration, which a whole file may miss by a frame or two.
        if self.frame_count is not None and decoded < self.frame_count - max(2, self.frame_count // 50):
            raise DataError(
                f"{self.source}: decoding stopped at frame {decoded} of {self.frame_count} (truncated or damaged "
                f"video), so nothing was written; repair the file, or pass --frames {decoded} to keep the frames that decode"
            )


class VideoWriter:
    """An RGB-frame video writer that appears at its final path only when `commit()` is called,
    after the finished file has been decoded back and holds every frame written.

    OpenCV picks the container from the file extension, so the temporary file keeps it (which is
    why `fileio.atomic_path`, whose temporary ends in `.tmp`, cannot be used here). If the asked
    codec cannot be written on this machine, the next of `FALLBACK_CODECS` is used, with a note.
    OpenCV's writer reports no write errors (a full disk included), hence the read-back.
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int], codec: str = "mp4v") -> None:
        path = Path(path)
        output_dir(path.parent)
        _sweep_partials(path)
        self.frames = 0
        candidates = [(codec, path.suffix or ".mp4")] + [c for c in FALLBACK_CODECS if c[0] != codec]
        for fourcc, ext in candidates:
            if len(fourcc) != 4:
                continue
            self.path = path.with_suffix(ext)
            self._tmp = path.parent / f".{self.path.stem}.{os.getpid()}.partial{ext}"
            with _native_stderr_silenced():
                self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*fourcc), fps, size)
            if self._writer.isOpened():
                break
            self._writer.release()
            self._tmp.unlink(missing_ok=True)
        else:
            raise RcrError(f"{path}: OpenCV cannot write video here with {codec!r} or {', '.join(c for c, _ in FALLBACK_CODECS)}; install opencv-python-headless (it bundles FFmpeg)")
        self.codec = fourcc
        if fourcc != codec:
            print(f"note: OpenCV cannot write codec {codec!r} here; wrote {fourcc} to {self.path.name} instead", file=sys.stderr)

    def write(self, rgb: np.ndarray) -> None:
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def commit(self) -> Path:
        """Finish the file, check that it decodes to every frame written, and only then move it
        onto its final path (an earlier file there stays untouched otherwise)."""
        self._writer.release()
        decoded = count_frames(self._tmp)
        if decoded != self.frames:
            self.discard()
            raise RcrError(
                f"cannot write {self.path}: the finished video decodes to {decoded} of {self.frames} frames (disk full "
                "or file-size limit?); free space or choose another --out"
            )
        try:
            os.replace(self._tmp, self.path)
        except OSError as e:
            self.discard()
            raise write_error(self.path, e) from e
        return self.path

    def discard(self) -> None:
        """Drop the partial file (on error or interruption)."""
        self._writer.release()
        self._tmp.unlink(missing_ok=True)


def _sweep_partials(path: Path) -> None:
    """Remove the partial files of `path` left by a writer that was killed (its pid is gone)."""
    for partial in path.parent.glob(f".{path.stem}.*.partial.*"):
        pid = partial.name[len(path.stem) + 2 :].split(".")[0]
        if pid.isdigit():
            try:
                os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
            except ProcessLookupError:
                partial.unlink(missing_ok=True)
            except (PermissionError, OverflowError):
                pass


def count_frames(path: str | os.PathLike) -> int:
    """Frames that a video file really decodes to (0 if it does not open)."""
    with _native_stderr_silenced():
        cap = cv2.VideoCapture(str(path))
        n = 0
        while cap.isOpened() and cap.grab():
            n += 1
        cap.release()
    return n


def write_video(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: float = 15.0, codec: str = "mp4v") -> Path:
    """Write RGB frames (all one size) as a video; returns the path written (its extension may change)."""
    h, w = frames[0].shape[:2]
    writer = VideoWriter(path, fps, (w, h), codec)
    try:
        for frame in frames:
            writer.write(frame)
    except BaseException:
        writer.discard()
        raise
    return writer.commit()


@dataclasses.dataclass(frozen=True)
class Stability:
    """Frame-to-frame behaviour of a clip's predicted masks against its ground truth.

    `pred_consecutive_iou` is the mean IoU between consecutive predicted masks and
    `gt_consecutive_iou` the same for the ground truth (the true motion). `flicker` is the mean
    absolute gap between the two per frame pair: 0 means the prediction changes exactly as much
    as the person moved. `fg_iou` is the mean per-frame accuracy against the ground truth.
    """

    frames: int
    pred_consecutive_iou: float
    gt_consecutive_iou: float
    flicker: float
    fg_iou: float


def stability(probs: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> Stability:
    """Score a clip: per-frame person probabilities (HxW) against 0/1 ground-truth masks."""
    if len(probs) != len(masks) or len(probs) < 2:
        raise ValueError(f"need two or more frames with one mask each, got {len(probs)} predictions and {len(masks)} masks")
    pred = [p > 0.5 for p in probs]
    gt = [m.astype(bool) for m in masks]
    pred_pairs = np.array([image_ious(pred[t].astype(np.float32), pred[t - 1])[0] for t in range(1, len(pred))])
    gt_pairs = np.array([image_ious(gt[t].astype(np.float32), gt[t - 1])[0] for t in range(1, len(gt))])
    return Stability(
        frames=len(probs),
        pred_consecutive_iou=float(pred_pairs.mean()),
        gt_consecutive_iou=float(gt_pairs.mean()),
        flicker=float(np.abs(pred_pairs - gt_pairs).mean()),
        fg_iou=float(np.mean([image_ious(p, m)[0] for p, m in zip(probs, masks)])),
    )
