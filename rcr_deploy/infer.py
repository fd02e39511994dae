"""Segment images, folders, videos and cameras with any model, through the Runner interface.

Frames flow through three threads joined by bounded queues:

    decode + letterbox  ──►  prior + normalise, model, map back to the frame  ──►  compose + encode

On video the previous frame's person mask (probability > 0.5, as in training, where the prior is
a moved copy of a ground-truth mask) feeds the model's 4th channel, so frame t's model input
needs frame t-1's output: only decoding, letterboxing, compositing and encoding
can overlap the model. `pipelined=False` runs the same stages in one thread (for comparison,
see benchmarks/pipeline.py).

Why one file of about 640 lines: the sources, the Segmenter, the sinks and the two frame loops
share one frame record and one failure contract (nothing written unless finished and checked);
they change together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from rcr_deploy import preprocess
from rcr_deploy.artifact import require_usable
from rcr_deploy.errors import DataError, RcrError
from rcr_deploy.fileio import output_dir, regular_file, write_bytes_atomic
from rcr_deploy.postprocess import OUTPUTS, Background, compose, encode_png, foreground_prob, hard_mask, matte, unletterbox
from rcr_deploy.runtime import Runner, load_runner
from rcr_deploy.video import VIDEO_EXTENSIONS, VideoSource, VideoWriter

#: Per-frame stages, in pipeline order, as reported by `Timings`.
STAGES = ("decode", "preprocess", "model", "postprocess", "compose", "encode")
_QUEUE = 4  # frames in flight per queue: enough to hide jitter, little memory


# ------------------------------------------------------------------------------------ segmenter


def _manifest_input(runner: Runner) -> dict[str, Any] | None:
    """The input spec recorded in the artifact's manifest (None for a checkpoint, which has none);
    `artifact.require_usable` refuses an artifact without one or with other preprocessing."""
    path = getattr(runner, "path", None)
    if runner.manifest is None and path is None:
        return None
    return require_usable(path or runner.name, runner.manifest)["input"]


class Segmenter:
    """A runner plus its input spec: RGB frame (+ previous mask) -> person probability."""

    def __init__(self, runner: Runner, feather: float = 0.0, size: int | None = None) -> None:
        self.runner = runner
        spec = _manifest_input(runner)
        fixed = [d for d in ((spec or {}).get("shape") or [])[2:] if isinstance(d, int)]
        if size is not None and fixed and fixed != [size, size]:
            raise RcrError(
                f"--size {size}: {runner.name} was exported for {fixed[0]}x{fixed[-1]} input only; pass --size {fixed[0]}, "
                f"or re-export it with 'rcr-deploy export --size {size}' (or --dynamic-hw)"
            )
        if size is None:
            size = int(spec["size"][0]) if spec and "size" in spec else preprocess.INPUT_SIZE
        self.size = size
        self.in_channels = runner.in_channels
        self.feather = feather

    def letterbox(self, rgb: np.ndarray) -> tuple[np.ndarray, preprocess.Letterbox]:
        """The part of preprocessing that needs no prior (runs on the decode thread)."""
        return preprocess.letterbox(rgb, self.size)

    def model_input(self, resized: np.ndarray, box: preprocess.Letterbox, prior: np.ndarray | None) -> np.ndarray:
        prior_s = None if prior is None else preprocess.letterbox_mask(prior, box)
        return preprocess.normalize(resized, prior_s, self.in_channels)[None]

    def probability(self, logits: np.ndarray, box: preprocess.Letterbox) -> np.ndarray:
        """Model logits -> person probability at the frame's resolution."""
        return unletterbox(foreground_prob(logits)[0], box)

    def alpha(self, prob: np.ndarray) -> np.ndarray:
        """The matte written out: the thresholded mask, with edges feathered by a Gaussian."""
        return matte(prob, self.feather)

    def segment(self, rgb: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
        """One frame -> HxW person probability (no threads; for scripts and tests)."""
        resized, box = self.letterbox(rgb)
        return self.probability(self.runner.infer(self.model_input(resized, box, prior)), box)


# ----------------------------------------------------------------------------------- the stages


@dataclasses.dataclass
class Frame:
    """One frame on its way through the pipeline."""

    name: str
    rgb: np.ndarray
    resized: np.ndarray | None = None
    box: preprocess.Letterbox | None = None
    prob: np.ndarray | None = None
    alpha: np.ndarray | None = None
    pictures: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Timings:
    """Where the time went: seconds per stage summed over frames, and the wall-clock total."""

    frames: int = 0
    wall_s: float = 0.0
    stage_s: dict[str, float] = dataclasses.field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    pipelined: bool = True

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def ms_per_frame(self) -> dict[str, float]:
        return {k: 1000.0 * v / max(self.frames, 1) for k, v in self.stage_s.items()}

    def summary(self) -> str:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in self.ms_per_frame().items())
        mode = "pipelined" if self.pipelined else "one thread"
        return f"{self.frames} frames in {self.wall_s:.2f} s = {self.fps:.1f} FPS ({mode}); ms/frame: {stages}"


class Sink(Protocol):
    """Where composed frames go: PNG files, video files, or memory."""

    modes: tuple[str, ...]

    def write(self, frame: Frame) -> None: ...
    def commit(self) -> list[Path]: ...
    def discard(self) -> None: ...


class _Stopped(Exception):
    """Raised inside a worker thread when another stage failed."""


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
    raise _Stopped


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    raise _Stopped


_END = object()


def run(
    frames: Iterable[tuple[str, np.ndarray]],
    segmenter: Segmenter,
    sink: Sink,
    prior: bool = False,
    background: Background | None = None,
    pipelined: bool = True,
    total: int | None = None,
    progress: bool = True,
    live: bool = False,
) -> tuple[list[Path], Timings]:
    """Segment every frame and hand the composed pictures to `sink`; returns its files and timings.

    With `prior`, each frame's model input carries the previous frame's mask (video);
    otherwise the prior channel is zeros (still images). On any error or Ctrl-C the sink discards
    its partial files, except for a live camera, where Ctrl-C is how a recording ends.
    """
    timings = Timings(pipelined=pipelined)
    # One accumulator per thread, summed at the end, so no two threads add to the same number.
    dec, mod, enc = (dict.fromkeys(STAGES, 0.0) for _ in range(3))
    use_prior = prior and segmenter.in_channels == 4
    previous: np.ndarray | None = None  # the last frame's mask: the next frame's prior

    def decoded() -> Iterator[Frame]:
        it = iter(frames)
        while True:
            t0 = time.perf_counter()
            try:
                name, rgb = next(it)
            except StopIteration:
                return
            t1 = time.perf_counter()
            frame = Frame(name, rgb)
            frame.resized, frame.box = segmenter.letterbox(rgb)
            dec["decode"] += t1 - t0
            dec["preprocess"] += time.perf_counter() - t1
            yield frame

    def infer_one(frame: Frame) -> Frame:
        nonlocal previous
        t0 = time.perf_counter()
        x = segmenter.model_input(frame.resized, frame.box, previous if use_prior else None)
        t1 = time.perf_counter()
        logits = segmenter.runner.infer(x)
        t2 = time.perf_counter()
        frame.prob = segmenter.probability(logits, frame.box)
        frame.alpha = segmenter.alpha(frame.prob)
        previous = hard_mask(frame.prob)
        t3 = time.perf_counter()
        mod["preprocess"] += t1 - t0
        mod["model"] += t2 - t1
        mod["postprocess"] += t3 - t2
        return frame

    def encode_one(frame: Frame) -> None:
        t0 = time.perf_counter()
        frame.pictures = {m: compose(frame.rgb, frame.alpha, m, background) for m in sink.modes}
        t1 = time.perf_counter()
        sink.write(frame)
        enc["compose"] += t1 - t0
        enc["encode"] += time.perf_counter() - t1

    bar = tqdm(total=total, unit="frame", disable=not progress, leave=False, dynamic_ncols=True)
    start = time.perf_counter()

    def done_one() -> None:
        timings.frames += 1
        bar.update()
        if timings.frames % 5 == 0:
            bar.set_postfix_str(f"{timings.frames / (time.perf_counter() - start):.1f} FPS")

    try:
        try:
            if pipelined:
                _run_threads(decoded(), infer_one, encode_one, done_one)
            else:
                for frame in decoded():
                    encode_one(infer_one(frame))
                    done_one()
        except KeyboardInterrupt:
            if not live:
                raise
        timings.wall_s = time.perf_counter() - start
        timings.stage_s = {k: dec[k] + mod[k] + enc[k] for k in STAGES}
        return sink.commit(), timings
    except BaseException:
        sink.discard()
        raise
    finally:
        bar.close()


def _run_threads(
    decoded: Iterator[Frame], infer_one: Callable[[Frame], Frame], encode_one: Callable[[Frame], None], done_one: Callable[[], None]
) -> None:
    """decode thread -> (this thread) model -> encode thread, joined by bounded queues."""
    to_model: queue.Queue = queue.Queue(_QUEUE)
    to_encode: queue.Queue = queue.Queue(_QUEUE)
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker(body: Callable[[], None]) -> Callable[[], None]:
        def wrapped() -> None:
            try:
                body()
            except _Stopped:
                pass
            except BaseException as e:  # handed to the main thread, which re-raises it
                errors.append(e)
                stop.set()

        return wrapped

    def decode_loop() -> None:
        for frame in decoded:
            _put(to_model, frame, stop)
        _put(to_model, _END, stop)

    def encode_loop() -> None:
        while (frame := _get(to_encode, stop)) is not _END:
            encode_one(frame)
            done_one()

    threads = [threading.Thread(target=worker(f), daemon=True) for f in (decode_loop, encode_loop)]
    for t in threads:
        t.start()
    try:
        while (frame := _get(to_model, stop)) is not _END:
            _put(to_encode, infer_one(frame), stop)
        _put(to_encode, _END, stop)
        threads[1].join()
    except _Stopped:
        pass
    finally:
        stop.set()  # normally every stage has finished; on an error this ends the others
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


# ------------------------------------------------------------------------------------- the sinks


class ImageSink:
    """PNG files per frame: OUT/<name>_<mode>.png, each written atomically. Each picture is
    complete once written, so an error later keeps the pictures of the images before it."""

    def __init__(self, out_dir: Path, modes: tuple[str, ...]) -> None:
        self.out_dir, self.modes = out_dir, modes
        self.written: list[Path] = []

    def write(self, frame: Frame) -> None:
        self.write_encoded(frame.name, {mode: encode_png(picture) for mode, picture in frame.pictures.items()})

    def write_encoded(self, name: str, pngs: dict[str, bytes]) -> None:
        """Pictures already PNG-encoded (by a Ray worker, `infer --ray`): the same files and bytes."""
        for mode, data in pngs.items():
            self.written.append(write_bytes_atomic(self.path(self.out_dir, name, mode), data))

    @staticmethod
    def path(out_dir: Path, name: str, mode: str) -> Path:
        return out_dir / f"{name}_{mode}.png"

    def commit(self) -> list[Path]:
        return self.written

    def discard(self) -> None:
        """Whole pictures already written stay: each is complete."""


class VideoSink:
    """One video per mode: OUT/<stem>_<mode>.mp4, appearing only when the clip is complete. Each
    picture of the recording `audio_from` (new background, overlay, before-after) carries its
    audio track; the mask does not, since it is a matte for an editor, which takes the sound from
    the recording itself."""

    def __init__(
        self, out_dir: Path, stem: str, modes: tuple[str, ...], fps: float, codec: str = "h264",
        audio_from: Path | None = None,
    ) -> None:
        if "cutout" in modes:
            raise RcrError("--save cutout: mp4 has no alpha channel; for video use --save mask or --background '#00B140'")
        self.out_dir, self.stem, self.modes, self.fps, self.codec = out_dir, stem, modes, fps, codec
        self.audio_from = audio_from
        self.writers: dict[str, VideoWriter] = {}

    def write(self, frame: Frame) -> None:
        for mode, picture in frame.pictures.items():
            if mode not in self.writers:
                h, w = picture.shape[:2]
                audio = None if mode == "mask" else self.audio_from
                writer = VideoWriter(self.out_dir / f"{self.stem}_{mode}.mp4", self.fps, (w, h), self.codec, audio)
                self.codec = writer.codec  # after a fallback, the other outputs use it without a second note
                self.writers[mode] = writer
            if picture.ndim == 2:
                picture = np.repeat(picture[..., None], 3, axis=2)
            self.writers[mode].write(picture)

    def commit(self) -> list[Path]:
        return [w.commit() for w in self.writers.values()]

    def discard(self) -> None:
        for w in self.writers.values():
            w.discard()


class MemorySink:
    """Keeps each frame's probability (for the stability metric and tests); writes nothing."""

    modes: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.probs: list[np.ndarray] = []

    def write(self, frame: Frame) -> None:
        self.probs.append(frame.prob)

    def commit(self) -> list[Path]:
        return []

    def discard(self) -> None:
        self.probs.clear()


# ---------------------------------------------------------------------------------- entry point


@dataclasses.dataclass
class InferResult:
    kind: str  # "image", "folder", "video" or "camera"
    model: str
    written: list[Path]
    timings: Timings
    prior: bool


def parse_modes(save: str, background: str | None) -> tuple[str, ...]:
    """`--save mask,overlay` -> ordered modes; `--background` adds 'background' unless a
    before-after picture (which shows the new background) is asked for."""
    modes = [m.strip() for m in save.split(",") if m.strip()]
    unknown = [m for m in modes if m not in OUTPUTS]
    if unknown:
        raise RcrError(f"--save {save}: unknown output {unknown[0]!r}; choose from {', '.join(OUTPUTS)}")
    if background is not None and "background" not in modes and "before-after" not in modes:
        modes.append("background")  # --background alone means: write the new background
    if "background" in modes and background is None:
        raise RcrError("--save background needs --background IMAGE|blur|#RRGGBB")
    if not modes:
        raise RcrError(f"--save is empty; choose from {', '.join(OUTPUTS)}")
    return tuple(dict.fromkeys(modes))


def classify_input(source: str) -> tuple[str, Any]:
    """INPUT -> ("image", path) | ("folder", [paths]) | ("video", path) | ("camera", index)."""
    path = Path(source)
    if not path.exists():
        if source.isdigit():
            return "camera", int(source)
        raise DataError(f"{source}: no such file or folder; pass an image, a folder of images, a video or a camera index")
    if path.is_dir():
        return "folder", preprocess.list_images(path, "input")
    regular_file(path, "input file")
    suffix = path.suffix.lower()
    if suffix in preprocess.IMAGE_EXTENSIONS:
        return "image", path
    if suffix in VIDEO_EXTENSIONS:
        return "video", path
    raise DataError(f"{path}: not an image ({', '.join(preprocess.IMAGE_EXTENSIONS)}) or video ({', '.join(VIDEO_EXTENSIONS)}); convert it")


def output_names(paths: list[Path]) -> list[str]:
    """Each image's output name: its stem, or its whole file name where two inputs share a stem
    (a.png and a.jpg become a.png_mask.png and a.jpg_mask.png, not one file written twice)."""
    stems = [p.stem for p in paths]
    return [p.name if stems.count(p.stem) > 1 else p.stem for p in paths]


class FolderImages:
    """The images of a folder; an unreadable one is skipped and remembered, so that the others
    are still segmented and written before the error is reported. `names` and `sources` serve a
    Ray worker, which gets a part of the folder (named as in the whole) as bytes: `sources` are
    then streams whose `name` is the file's path, so that an error names the file."""

    def __init__(self, paths: list[Path], names: list[str] | None = None, sources: list[Any] | None = None) -> None:
        self.paths, self.skipped = paths, []
        self.names = names or output_names(paths)
        self.sources = sources or paths

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, source in zip(self.names, self.sources):
            try:
                rgb = preprocess.load_image(source)
            except DataError as e:
                self.skipped.append(e)
                continue
            yield name, rgb

    def unfinished(self, out_dir: Path, modes: tuple[str, ...]) -> FolderImages:
        """The images not all of whose pictures are in `out_dir` yet, named as in the whole
        folder: what `infer --skip-done` segments. Every picture is written whole (atomically), so
        one that exists is finished."""
        keep = [i for i, n in enumerate(self.names) if not all(ImageSink.path(out_dir, n, m).is_file() for m in modes)]
        return FolderImages([self.paths[i] for i in keep], [self.names[i] for i in keep])

    def check(self, out_dir: Path) -> None:
        if self.skipped:
            done = len(self.paths) - len(self.skipped)
            raise DataError(
                f"{self.skipped[0]} ({len(self.skipped)} of {len(self.paths)} images unreadable; the outputs of the "
                f"other {done} are in {out_dir}/)"
            )


def infer(
    source: str,
    model: Runner | str | os.PathLike | None,
    out_dir: str | os.PathLike,
    save: str = "overlay,mask",
    background: str | None = None,
    feather: float = 0.0,
    prior: bool = True,
    max_frames: int | None = None,
    codec: str = "h264",
    pipelined: bool = True,
    progress: bool = True,
    device: str = "cpu",
    remote: Callable[..., Segmenter] | None = None,
    backend: str = "auto",
    size: int | None = None,
    skip_done: bool = False,
) -> InferResult:
    """Segment INPUT (image, folder, video file or camera index) and write the chosen outputs.

    `model` is a Runner, or what `load_runner` takes (None: the built-in model); it is loaded
    only after the input and options have been checked, so a typo fails at once. With `remote`
    (called as `remote(feather=..., stream=...)`, e.g. `serve.client.RemoteSegmenter` bound to a
    server's URL, as `infer --server` passes it), that segments the frames instead. `size`
    overrides the manifest's input size where the model allows it (a checkpoint, or an artifact
    exported with --dynamic-hw). `skip_done` leaves out a folder's images whose pictures are all
    in `out_dir` already (a rerun after an interruption)."""
    modes = parse_modes(save, background)
    bg = Background(background) if background is not None else None
    kind, what = classify_input(source)
    if skip_done and kind != "folder":
        raise RcrError(f"--skip-done: {source} is not a folder; it resumes a folder of images (drop --skip-done)")
    folder: FolderImages | None = None
    if kind == "image":  # read now, so a bad image fails before the model loads
        frames: Iterable[tuple[str, np.ndarray]] = [(what.stem, preprocess.load_image(what))]
    elif kind == "folder":
        frames = folder = FolderImages(what[:max_frames])
        if skip_done:
            frames = folder = folder.unfinished(Path(out_dir), modes)
    if kind in ("image", "folder"):
        sink: Sink = ImageSink(Path(out_dir), modes)
        total, use_prior = len(folder.paths) if folder else 1, False  # still images: the prior channel stays zeros
    else:
        video = VideoSource(what)
        sink = VideoSink(Path(out_dir), video.label, modes, video.fps, codec, None if video.live else what)
        frames, total, use_prior = video, video.frame_count, prior
        if max_frames:
            frames = _limit(video, max_frames)
            total = min(total or max_frames, max_frames)
    # A Runner passed in stays open for its owner; one loaded here is closed here.
    if remote is not None:
        opened: contextlib.AbstractContextManager = contextlib.nullcontext(None)
    elif isinstance(model, Runner):
        opened = contextlib.nullcontext(model)
    else:
        opened = load_runner(model, device=device, backend=backend)
    with opened as runner:
        segmenter = remote(feather=feather, stream=use_prior) if remote is not None else Segmenter(runner, feather=feather, size=size)
        output_dir(out_dir)  # after every check, so a refused run leaves no folder behind
        written, timings = run(
            frames, segmenter, sink, prior=use_prior, background=bg, pipelined=pipelined,
            total=total, progress=progress and (kind != "image"), live=kind == "camera",
        )
    if folder is not None:
        folder.check(Path(out_dir))
    return InferResult(kind, segmenter.runner.name, written, timings, use_prior and segmenter.in_channels == 4)


def _limit(frames: Iterable[tuple[str, np.ndarray]], n: int) -> Iterator[tuple[str, np.ndarray]]:
    for i, item in enumerate(frames):
        if i >= n:
            return
        yield item
