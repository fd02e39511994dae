"""Video in and out (files and cameras through OpenCV; writing through PyAV where it is installed,
see `rcr_deploy.video_av`) and the temporal-stability metric."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from rcr_deploy.errors import DataError, RcrError
from rcr_deploy.fileio import native_stderr_silenced, output_dir, write_error
from rcr_deploy.metrics import image_ious

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
#: OpenCV's codecs tried in order after the user's choice (`--codec`), where PyAV is not installed.
FALLBACK_CODECS = (("mp4v", ".mp4"), ("MJPG", ".avi"))
# OpenCV's FFmpeg prints every damaged macroblock of a corrupt video to stderr; we report a
# video that stops decoding in one line of our own. Read at the first capture, so set here.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "0")  # AV_LOG_PANIC
_DEFAULT_FPS = 30.0
#: Camera indices accepted (Linux numbers /dev/video0 to /dev/video255 at most).
MAX_CAMERA_INDEX = 255


class VideoSource:
    """Frames of a video file or a camera as HxWx3 uint8 RGB, with the stream's fps."""

    def __init__(self, source: str | os.PathLike | int) -> None:
        self.live = isinstance(source, int)
        if self.live and not 0 <= source <= MAX_CAMERA_INDEX:
            raise RcrError(f"camera {source}: not a camera index; pass 0 to {MAX_CAMERA_INDEX} or a video file")
        self.source = source
        self.label = f"camera{source}" if self.live else Path(source).stem
        with native_stderr_silenced():
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
                    with native_stderr_silenced():
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


class Encoder(Protocol):
    """One video file being encoded, by PyAV (`video_av.AvEncoder`) or OpenCV (`CvEncoder`)."""

    def write(self, rgb: np.ndarray) -> None: ...
    def close(self) -> None: ...
    def abandon(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class _Backend:
    """How one library writes video: `open(tmp, fps, size, codec, audio_from)` gives an `Encoder`,
    or None where it cannot write `codec` into the container that `tmp`'s extension names."""

    open: Callable[[Path, float, tuple[int, int], str, Path | None], Encoder | None]
    aliases: dict[str, str]  # a --codec value -> the codec it means to this library
    fallbacks: tuple[tuple[str, str], ...]  # (codec, extension), tried in order after the asked one
    fix: str

    def candidates(self, codec: str, suffix: str) -> list[tuple[str, str]]:
        asked = self.aliases.get(codec.lower(), codec)
        return [(asked, suffix)] + [c for c in self.fallbacks if c[0] != asked]


_opencv_noted = False


def _backend() -> _Backend:
    """PyAV where it is installed, else OpenCV, which is said once per process."""
    global _opencv_noted
    try:
        av = importlib.import_module("rcr_deploy.video_av")
    except ImportError:
        if not _opencv_noted:
            print("note: PyAV is not installed, so videos are written by OpenCV as mp4v without audio, which browsers "
                  "may not play; pip install av for H.264 with the recording's audio", file=sys.stderr)
            _opencv_noted = True
        # opencv-python's FFmpeg has no H.264 encoder, so the default codec means mp4v here.
        return _Backend(CvEncoder.open, {"h264": "mp4v"}, FALLBACK_CODECS, "install PyAV (pip install av)")
    return _Backend(av.AvEncoder.open, av.FOURCC_ENCODERS, av.FALLBACK_CODECS, av.FIX)


class CvEncoder:
    """OpenCV's writer of one file (used where PyAV is not installed; it cannot carry audio)."""

    def __init__(self, writer: cv2.VideoWriter) -> None:
        self._writer = writer

    @classmethod
    def open(cls, tmp: Path, fps: float, size: tuple[int, int], fourcc: str, audio_from: Path | None) -> CvEncoder | None:
        if len(fourcc) != 4:
            return None
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            return cls(writer)
        writer.release()
        return None

    def write(self, rgb: np.ndarray) -> None:
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self._writer.release()

    abandon = close


class VideoWriter:
    """An RGB-frame video writer that appears at its final path only when `commit()` is called,
    after the finished file has been decoded back and holds every frame written.

    With PyAV (`rcr_deploy.video_av`), `codec` names an FFmpeg encoder: `h264` (the default) writes
    H.264 in yuv420p, which browsers play, and `audio_from` names a recording whose audio track
    the video carries, cut at its last frame. Without PyAV, OpenCV writes the video without audio,
    `codec` is a FourCC, and `h264` means `mp4v`. If the asked codec cannot be written on this
    machine, the backend's fallbacks are tried in order, with a note.

    The container follows the file extension, so the temporary file keeps it (which is why
    `fileio.atomic_path`, whose temporary ends in `.tmp`, cannot be used here). OpenCV's writer
    reports no write errors (a full disk included), hence the read-back.
    """

    def __init__(
        self, path: str | os.PathLike, fps: float, size: tuple[int, int], codec: str = "h264",
        audio_from: str | os.PathLike | None = None,
    ) -> None:
        path = Path(path)
        output_dir(path.parent)
        _sweep_partials(path)
        self.frames = 0
        self._encoder: Encoder | None = None
        backend = _backend()
        candidates = backend.candidates(codec, path.suffix or ".mp4")
        for name, ext in candidates:
            self.path = path.with_suffix(ext)
            self._tmp = path.parent / f".{self.path.stem}.{os.getpid()}.partial{ext}"
            try:
                with native_stderr_silenced():
                    self._encoder = backend.open(self._tmp, fps, size, name, Path(audio_from) if audio_from else None)
            except OSError as e:
                raise write_error(self.path, e) from e
            finally:
                if self._encoder is None:
                    self._tmp.unlink(missing_ok=True)
            if self._encoder is not None:
                break
        else:
            raise RcrError(f"{path}: cannot write video here with {', '.join(c for c, _ in candidates)}; {backend.fix}")
        self.codec = name
        if name != candidates[0][0]:
            print(f"note: cannot write codec {codec!r} here; wrote {name} to {self.path.name} instead", file=sys.stderr)

    def write(self, rgb: np.ndarray) -> None:
        with self._discarded_on_error():
            self._encoder.write(rgb)
        self.frames += 1

    def commit(self) -> Path:
        """Finish the file, check that it decodes to every frame written, and only then move it
        onto its final path (an earlier file there stays untouched otherwise)."""
        with self._discarded_on_error():
            self._encoder.close()
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

    @contextlib.contextmanager
    def _discarded_on_error(self) -> Iterator[None]:
        """A failed write or finish (a full disk, an unreadable audio track) leaves no partial file."""
        try:
            yield
        except BaseException as e:
            self.discard()
            if isinstance(e, OSError):
                raise write_error(self.path, e) from e
            raise

    def discard(self) -> None:
        """Drop the partial file (on error or interruption)."""
        self._encoder.abandon()
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
    with native_stderr_silenced():
        cap = cv2.VideoCapture(str(path))
        n = 0
        while cap.isOpened() and cap.grab():
            n += 1
        cap.release()
    return n


def write_video(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: float = 15.0, codec: str = "h264") -> Path:
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
