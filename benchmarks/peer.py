"""The peer: MediaPipe's selfie segmenter (general model, 256x256), the model users would
otherwise pick, run on the same CPU so that `cpu_engines` can time it in the same rounds.

Its `.tflite` ships inside the mediapipe 0.10.x wheels up to 0.10.21
(`mediapipe/modules/selfie_segmentation/`; later wheels dropped it) and runs under LiteRT
(`ai-edge-litert`, with its XNNPACK CPU delegate). mediapipe 0.10.21 pins numpy<2, so the model
file is installed without mediapipe's dependencies, which this module never imports:

    pip install 'rcr-deploy[peer]' && pip install --no-deps 'mediapipe==0.10.21'

Pre- and post-processing follow MediaPipe's own graph (`selfie_segmentation_cpu.binarypb`,
ImageToTensorCalculator: 256x256, keep_aspect_ratio false, float range [0, 1]): the whole frame
is stretched to 256x256 (no letterbox), the output is a person probability at 256x256, resized
back to the frame bilinearly and scored with the same metric as RCRNet.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from rcr_deploy.errors import BackendUnavailable
from rcr_deploy.fileio import native_stderr_silenced
from rcr_deploy.runtime.tflite_runner import require_litert
from rcr_deploy.metrics import IoUMeter
from rcr_deploy.data.folder import list_pairs
from rcr_deploy.evaluate import load_framed

MODEL_FILE = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
SIZE = 256
INSTALL = "pip install 'rcr-deploy[peer]' && pip install --no-deps 'mediapipe==0.10.21'"
DESCRIPTION = "MediaPipe selfie segmenter (general, 256x256 fixed), LiteRT XNNPACK"


def find_model() -> Path:
    """The installed selfie-segmentation `.tflite`, or `BackendUnavailable` saying what to install."""
    try:
        path = Path(str(importlib.metadata.distribution("mediapipe").locate_file(MODEL_FILE)))
    except importlib.metadata.PackageNotFoundError:
        raise BackendUnavailable(f"MediaPipe's selfie segmenter is not installed; {INSTALL}") from None
    if not path.is_file():
        raise BackendUnavailable(f"{path}: this mediapipe wheel has no selfie segmenter (0.10.21 and earlier do); {INSTALL}")
    return path


class SelfieSegmenter:
    """The `.tflite` on LiteRT's interpreter, batch 1."""

    def __init__(self, model: str | os.PathLike | None = None, threads: int = 2) -> None:
        interpreter_class = require_litert()
        self.path = Path(model) if model else find_model()
        with native_stderr_silenced():
            self._interpreter = interpreter_class(model_path=str(self.path), num_threads=threads)
            self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._sample = np.zeros((1, SIZE, SIZE, 3), np.float32)

    def run(self, x: np.ndarray) -> np.ndarray:
        """1x256x256x3 float RGB in [0, 1] -> 256x256 person probability."""
        self._interpreter.set_tensor(self._input, x)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output)[0, :, :, 0]

    def timed_call(self) -> np.ndarray:
        """One model call on a fixed input: what the benchmark times (no pre/post-processing, as for RCRNet)."""
        return self.run(self._sample)

    def probability(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB -> HxW person probability."""
        x = cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR).astype(np.float32)[None] / 255.0
        prob = self.run(x)
        return cv2.resize(prob, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)


def fg_miou(
    peer: SelfieSegmenter, data: str | os.PathLike, split: str | None = "val", limit: int | None = None, framing: str = "as-is",
    progress: bool = True,
) -> tuple[float, int]:
    """Mean per-image foreground IoU (%) of the peer on `data`'s split in `framing` (the same
    pictures `evaluate` scores), and the image count."""
    meter = IoUMeter()
    pairs = list_pairs(data, split)[:limit]
    for i, pair in enumerate(tqdm(pairs, desc="eval mediapipe", unit="img", leave=False, disable=not progress)):
        rgb, mask = load_framed(pairs, i, framing)
        meter.add(pair.stem, peer.probability(rgb), mask)
    return meter.fg_miou * 100, len(meter.per_image)
