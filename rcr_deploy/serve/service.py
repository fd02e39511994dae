"""What one replica does, without Ray: a batch of frames -> one model call -> a mask per frame,
with the previous mask of each video stream kept as its next prior.

Every batch size the replica can run is compiled when it starts (`batch_buckets`): OpenVINO
compiles one copy of the model per input shape, and a compilation in the middle of serving holds
the whole batch (and the queue behind it) for tens to hundreds of milliseconds. Up to 8 each
size has its own copy; past 8 a batch is padded with zeros up to the next power of two (or the
largest batch), so a `--max-batch 64` replica compiles 11 copies, not 64.

Preprocessing and postprocessing are `infer.Segmenter`'s, read from the model's manifest, so a
served mask is the mask local `rcr-deploy infer` writes for the same frame.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import Counter, OrderedDict
from typing import Any

import numpy as np

from rcr_deploy.infer import Segmenter
from rcr_deploy.postprocess import hard_mask
from rcr_deploy.preprocess import input_spec
from rcr_deploy.runtime import Runner, load_runner
from rcr_deploy.serve.protocol import MAX_SESSIONS, SESSION_IDLE_S

#: Batch sizes up to this get their own compiled copy; larger ones are padded (`batch_buckets`).
EXACT_BATCH = 8


def batch_buckets(max_batch: int) -> list[int]:
    """The batch sizes a replica compiles for batches of 1..max_batch: each size up to
    EXACT_BATCH, then powers of two, and max_batch itself."""
    sizes = list(range(1, min(max_batch, EXACT_BATCH) + 1))
    b = EXACT_BATCH * 2
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sorted(set(sizes) | {max_batch})


def default_threads(replicas: int) -> int:
    """`serve --threads`'s default: the machine's cores shared out among the replicas."""
    return max(1, (os.cpu_count() or 1) // replicas)


def bucket(n: int, buckets: list[int]) -> int:
    """The smallest compiled batch size that holds n frames."""
    return next(b for b in buckets if b >= n)


def model_manifest(runner: Runner, segmenter: Segmenter) -> dict[str, Any]:
    """What `GET /v1/model` returns: the artifact's manifest, or for a checkpoint (which has none)
    the input spec that preprocessing follows. The runner read it through `artifact.read_manifest`."""
    if runner.manifest is not None:
        return {"model": runner.name, **runner.manifest}
    return {"model": runner.name, "input": input_spec(segmenter.size, runner.in_channels)}


@dataclasses.dataclass
class Item:
    """One request inside a batch: a decoded frame and its stream (None: a still image)."""

    rgb: np.ndarray
    session: str | None = None


class SegmentService:
    """A runner, its Segmenter, and the per-stream priors of one replica."""

    def __init__(
        self, model: str | os.PathLike | None, session_idle_s: float = SESSION_IDLE_S, backend: str = "auto",
        threads: int | None = None, max_batch: int = 1, max_sessions: int = MAX_SESSIONS,
    ) -> None:
        """Loads the model and compiles it for every batch of 1..max_batch frames (the replica's
        start-up, before it takes traffic)."""
        self.runner = load_runner(model, backend=backend, threads=threads)
        self.segmenter = Segmenter(self.runner)
        self.buckets = batch_buckets(max_batch)
        size = self.segmenter.size
        self.runner.warm_up([(b, self.runner.in_channels, size, size) for b in self.buckets])
        #: Compilations the warm-up made; a later one means a request waited on a compiler.
        self.warm_compiles = self.runner.compiles
        self.manifest = model_manifest(self.runner, self.segmenter)
        self.session_idle_s = session_idle_s
        #: session id -> (previous mask at frame size, time of its last frame), least recent first;
        #: capped at `max_sessions` (a 1080p prior is 8 MB), the least recent dropped first
        self.sessions: OrderedDict[str, tuple[np.ndarray, float]] = OrderedDict()
        self.max_sessions = max_sessions
        #: batch size -> model calls of that size, since the replica started
        self.batch_sizes: Counter[int] = Counter()
        self._lock = threading.Lock()  # the model call runs in a worker thread

    def segment(self, items: list[Item]) -> list[np.ndarray]:
        """Frames -> their person probability at frame size, in one model call."""
        with self._lock:
            self._forget_idle(time.monotonic())
            seg = self.segmenter
            boxes, inputs = [], []
            for item in items:
                resized, box = seg.letterbox(item.rgb)
                boxes.append(box)
                inputs.append(seg.model_input(resized, box, self._prior(item)))
            logits = self._infer(np.concatenate(inputs))
            probs = [seg.probability(logits[i : i + 1], box) for i, box in enumerate(boxes)]
            now = time.monotonic()
            for item, prob in zip(items, probs):
                if item.session is not None:  # as local infer: the next prior is this frame's hard mask
                    self.sessions[item.session] = (hard_mask(prob), now)
                    self.sessions.move_to_end(item.session)
            while len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)
            self.batch_sizes[len(items)] += 1
            return probs

    def infer_tensor(self, x: np.ndarray) -> np.ndarray:
        """The model on an NCHW batch as it came (the Open Inference Protocol's infer), in chunks
        of the largest compiled batch size."""
        with self._lock:
            step = self.buckets[-1]
            return np.concatenate([self._infer(x[i : i + step]) for i in range(0, len(x), step)])

    def _infer(self, x: np.ndarray) -> np.ndarray:
        """One model call at a compiled batch size: zero rows pad `x` up to its bucket."""
        n = len(x)
        padded = bucket(n, self.buckets) if n <= self.buckets[-1] else n
        if padded > n:
            x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), x.dtype)])
        return self.runner.infer(x)[:n]

    def _prior(self, item: Item) -> np.ndarray | None:
        """The stream's previous mask; none (zeros) for a still image, a new stream, or a frame
        whose size differs from the stream's last one."""
        kept = self.sessions.get(item.session) if item.session is not None else None
        if kept is None or kept[0].shape != item.rgb.shape[:2]:
            return None
        return kept[0]

    def _forget_idle(self, now: float) -> None:
        for sid in [s for s, (_, t) in self.sessions.items() if now - t > self.session_idle_s]:
            del self.sessions[sid]

    def stats(self) -> dict[str, Any]:
        return {
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}, "sessions": len(self.sessions),
            "compiles": {"warm_up": self.warm_compiles, "since": self.runner.compiles - self.warm_compiles},
        }
