"""`rcr-deploy infer DIR --ray`: a folder of images segmented by Ray actors, written as local
`infer DIR` writes it (the same files, names and bytes).

Each actor (`ImageWorker`, one per `--replicas`) loads the model once and runs infer's own
pipeline (`infer.run`: decode, letterbox, model, compose, PNG-encode) on a few images at a time.
This process reads each image's bytes and writes the PNG bytes that come back, so the workers
need neither the input folder nor the output folder: the same code runs on a cluster whose nodes
share no disk with this one (`--ray-address`). Every file is written atomically as it arrives, as
local infer's `ImageSink` does: an error or Ctrl-C leaves whole pictures and no partial file.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from tqdm import tqdm

from rcr_deploy.errors import TYPED, DataError, RcrError
from rcr_deploy.fileio import check_output, output_dir, regular_file
from rcr_deploy.infer import STAGES, FolderImages, Frame, ImageSink, InferResult, Segmenter, Timings, classify_input, parse_modes, run
from rcr_deploy.postprocess import Background, encode_png
from rcr_deploy.serve.cluster import check_model, start_ray, threads_per_worker

#: Images per actor call: enough for infer's decode/model/encode threads to overlap, few enough
#: that the progress bar moves and the last calls end together.
CHUNK = 4
#: Calls queued on each actor, so that it starts the next one while this process writes the last.
IN_FLIGHT = 2

Chunk = list[tuple[str, str, bytes]]  # (output name, file path for messages, file bytes) per image
Encoded = list[tuple[str, dict[str, bytes]]]  # (output name, {mode: PNG bytes}) per image


class EncodedSink:
    """infer's sink for a worker: each frame's pictures as the PNG bytes `ImageSink` would write."""

    def __init__(self, modes: tuple[str, ...]) -> None:
        self.modes = modes
        self.pngs: Encoded = []

    def write(self, frame: Frame) -> None:
        self.pngs.append((frame.name, {mode: encode_png(picture) for mode, picture in frame.pictures.items()}))

    def commit(self) -> list[Path]:
        return []

    def discard(self) -> None:
        self.pngs.clear()


class ImageWorker:
    """One Ray actor: a runner and its Segmenter, loaded once, for many calls of `segment`."""

    def __init__(
        self, model: str | None, backend: str, device: str, threads: int, size: int | None, feather: float,
        modes: tuple[str, ...], background: Background | None, pipelined: bool,
    ) -> None:
        import torch

        from rcr_deploy.runtime import load_runner

        torch.set_num_threads(threads)  # torch's threads are per process; the runtime's are bounded below
        self.runner = load_runner(model, device=device, backend=backend, threads=threads)
        self.segmenter = Segmenter(self.runner, feather=feather, size=size)
        self.modes, self.background, self.pipelined = modes, background, pipelined

    def model_name(self) -> str:
        return self.runner.name

    def segment(self, chunk: Chunk) -> tuple[Encoded, list[DataError], dict[str, float]]:
        """A few images -> their PNGs, the errors of those unreadable, and the seconds per stage."""
        streams = []
        for _, label, data in chunk:
            stream = io.BytesIO(data)
            stream.name = label  # so that an unreadable image's error names its file, as local infer's does
            streams.append(stream)
        images = FolderImages([Path(label) for _, label, _ in chunk], names=[name for name, _, _ in chunk], sources=streams)
        sink = EncodedSink(self.modes)
        _, timings = run(images, self.segmenter, sink, background=self.background, pipelined=self.pipelined, progress=False)
        return sink.pngs, images.skipped, timings.stage_s


def infer_folder(
    source: str,
    model: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    save: str = "overlay,mask",
    background: str | None = None,
    feather: float = 0.0,
    max_frames: int | None = None,
    pipelined: bool = True,
    progress: bool = True,
    device: str = "cpu",
    backend: str = "auto",
    size: int | None = None,
    replicas: int = 1,
    threads: int | None = None,
    address: str | None = None,
    announce: Callable[[str], None] | None = None,
    skip_done: bool = False,
) -> InferResult:
    """`infer.infer` for a folder of images, over `replicas` Ray actors with `threads` model
    threads each (default: this machine's cores shared among them). Ray is started here unless
    this process is connected already, or joined at `address`; `announce` gets one line just
    before Ray starts (the CLI prints it). Inputs, model and options are checked before that.
    `skip_done`: as local infer's, the images whose pictures are all written already are left out."""
    modes = parse_modes(save, background)
    bg = Background(background) if background is not None else None  # loaded here; the workers get its pixels
    kind, what = classify_input(source)
    if kind == "image":
        raise RcrError(f"--ray {source}: an image, not a folder; --ray is for folders of images: pass its folder, or drop --ray")
    if kind != "folder":  # a video's or camera's frames feed each other through the prior: one process runs them in order
        raise RcrError(f"--ray {source}: a {kind}, not a folder; --ray is for folders of images: drop --ray for a video or a camera")
    if replicas < 1 or (threads is not None and threads < 1):
        raise RcrError(f"--replicas {replicas} --threads {threads}: both must be at least 1")
    check_output(out_dir, "--out", folder=True)
    model_arg = check_model(model, backend=backend, device=device, size=size)
    threads = threads_per_worker(threads, replicas)
    folder = FolderImages(what[:max_frames])
    if skip_done:
        folder = folder.unfinished(Path(out_dir), modes)
    if announce is not None:
        where = f"joining Ray at {address}" if address else "starting Ray"
        done = f" ({len(what[:max_frames]) - len(folder.paths)} done already)" if skip_done else ""
        announce(f"{where}: {replicas} worker(s), {threads} model thread(s) each, {len(folder.paths)} image(s){done} ...")
    started = start_ray(address)
    worker_class = ray.remote(ImageWorker).options(
        num_cpus=0,  # as serve's replicas: the OS shares the cores, so a 2-core laptop runs 2 workers beside Ray's own
        num_gpus=0 if device == "cpu" else 1,
        scheduling_strategy="SPREAD",  # on a cluster, one worker per node before a second on any
    )
    workers: list[Any] = []
    try:
        # On a GPU each worker sees only the one Ray gave it, as cuda:0.
        worker_device = "cpu" if device == "cpu" else "cuda"
        workers = [worker_class.remote(model_arg, backend, worker_device, threads, size, feather, modes, bg, pipelined) for _ in range(replicas)]
        return _segment_folder(folder, Path(out_dir), modes, workers, pipelined, progress)
    finally:
        for w in workers:
            ray.kill(w)
        if started:
            ray.shutdown()


def _segment_folder(folder: FolderImages, out_dir: Path, modes: tuple[str, ...], workers: list[Any], pipelined: bool, progress: bool) -> InferResult:
    """Keep every worker fed with `IN_FLIGHT` calls of `CHUNK` images and write what comes back."""
    paths = folder.paths
    name = _result([w.model_name.remote() for w in workers], out_dir)[0]  # every model loaded: the clock starts now
    output_dir(out_dir)  # after the workers started, so a run that cannot start leaves no folder behind
    sink = ImageSink(out_dir, modes)
    chunks = [range(i, min(i + CHUNK, len(paths))) for i in range(0, len(paths), CHUNK)]
    errors: dict[int, list[DataError]] = {}  # per chunk, so that the first reported is the first in the folder
    pending: dict[Any, tuple[int, Any]] = {}
    timings = Timings(pipelined=pipelined)
    todo = iter(enumerate(chunks))

    def submit(worker: Any) -> None:
        index, chunk = next(todo, (None, None))
        if chunk is None:
            return
        items: Chunk = []
        errors[index] = []
        for i in chunk:
            try:
                items.append((folder.names[i], str(paths[i]), _read(paths[i])))
            except DataError as e:
                errors[index].append(e)
        pending[worker.segment.remote(items)] = (index, worker)

    bar = tqdm(total=len(paths), unit="frame", disable=not progress, leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for worker in workers * IN_FLIGHT:
            submit(worker)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            index, worker = pending.pop(ref)
            pngs, skipped, stage_s = _result(ref, out_dir)
            submit(worker)  # first, so that the worker has its next images while these are written
            for image, encoded in pngs:
                sink.write_encoded(image, encoded)
            errors[index] += skipped
            timings.frames += len(pngs)
            timings.stage_s = {k: timings.stage_s[k] + stage_s[k] for k in STAGES}
            bar.update(len(chunks[index]))
            bar.set_postfix_str(f"{timings.frames / (time.perf_counter() - start):.1f} FPS")
    finally:
        bar.close()
    timings.wall_s = time.perf_counter() - start
    folder.skipped = [e for index in sorted(errors) for e in errors[index]]
    folder.check(out_dir)
    return InferResult("folder", name, sink.written, timings, False)


def _read(path: Path) -> bytes:
    """An image file's bytes, or the one-line error local infer gives for a file it cannot read."""
    try:
        return regular_file(path, "image file").read_bytes()
    except OSError as e:
        raise DataError(f"{path}: unreadable or corrupt image ({e.strerror}); replace or remove it") from e


def _result(refs: Any, out_dir: Path) -> Any:
    """`ray.get`, with a worker's own one-line error (an rcr-deploy error raised in it) re-raised
    as itself, and a worker that died as one line; anything else (a bug) keeps its traceback."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, TYPED):
            raise e.cause from None
        raise
    except ray.exceptions.RayActorError as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise RcrError(
            f"a Ray worker stopped ({reason}); the pictures finished so far are in {out_dir}/; "
            "rerun, with fewer --replicas if memory ran out"
        ) from e
