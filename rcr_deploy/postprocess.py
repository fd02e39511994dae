"""THE one definition of output handling, beside `preprocess.py`: model logits -> person
probability -> the frame's own resolution -> a hard or feathered mask -> the pictures a user
asks for (mask, cut-out, new background, overlay) -> PNG bytes or files.

eval, infer, serve and the demo all go through here, so a mask means the same thing everywhere:
`THRESHOLD` decides person, `foreground_prob` is the one softmax, `unletterbox` undoes
`preprocess.letterbox`.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from rcr_deploy.errors import DataError, RcrError
from rcr_deploy.fileio import write_bytes_atomic
from rcr_deploy.preprocess import Letterbox, load_image

#: Foreground probability above which a pixel counts as person.
THRESHOLD = 0.5
#: What `infer` can write for each frame (`compose`'s modes).
OUTPUTS = ("mask", "cutout", "background", "overlay", "before-after")
OVERLAY_RGB = (255, 40, 160)


def foreground_prob(logits: np.ndarray) -> np.ndarray:
    """NxCxHxW logits -> NxHxW person probability (softmax over classes; class 1 = person)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e[:, 1] / e.sum(axis=1)


def hard_mask(prob: np.ndarray) -> np.ndarray:
    """Probability -> float32 mask of 0 and 1 (person where above `THRESHOLD`)."""
    return (prob > THRESHOLD).astype(np.float32)


def unletterbox(prob: np.ndarray, box: Letterbox) -> np.ndarray:
    """Map a size x size probability map back to the original frame (bilinear)."""
    square = cv2.resize(prob.astype(np.float32), (box.side, box.side), interpolation=cv2.INTER_LINEAR)
    return square[box.top : box.top + box.height, box.left : box.left + box.width]


def matte(prob: np.ndarray, feather: float = 0.0) -> np.ndarray:
    """The alpha written out: the hard mask, its edge softened by a Gaussian of `feather` pixels."""
    hard = hard_mask(prob)
    return cv2.GaussianBlur(hard, (0, 0), feather) if feather > 0 else hard


class Background:
    """`--background`: an image (resized to each frame), 'blur', or a '#RRGGBB' colour."""

    def __init__(self, spec: str) -> None:
        self.colour: tuple[int, ...] | None = None
        self.image: np.ndarray | None = None
        if spec == "blur":
            return
        if spec.startswith("#"):
            try:
                self.colour = tuple(bytes.fromhex(spec[1:]))
            except ValueError:
                pass
            if self.colour is None or len(self.colour) != 3:
                raise RcrError(f"--background {spec}: not a colour; write it as #RRGGBB, e.g. #00B140")
            return
        if not Path(spec).exists():
            raise DataError(f"--background {spec}: no such image file; pass an image, 'blur' or a #RRGGBB colour")
        self.image = load_image(spec)
        self._resized: dict[tuple[int, int], np.ndarray] = {}

    def for_frame(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        if self.colour is not None:
            return np.broadcast_to(np.asarray(self.colour, np.uint8), rgb.shape)
        if self.image is None:  # a wide blur, computed at a quarter of the size: ~20x cheaper, same look
            small = cv2.resize(rgb, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
            small = cv2.GaussianBlur(small, (0, 0), max(0.5, 0.005 * max(h, w)))
            return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        if (h, w) not in self._resized:  # an image of another size is stretched to the frame
            self._resized[(h, w)] = cv2.resize(self.image, (w, h), interpolation=cv2.INTER_AREA)
        return self._resized[(h, w)]


def compose(rgb: np.ndarray, alpha: np.ndarray, mode: str, background: Background | None = None) -> np.ndarray:
    """One output picture: 'mask' (HxW grey), 'cutout' (HxWx4 RGBA), 'background' or 'overlay' (RGB),
    or 'before-after': the input beside its overlay (and its new background, when there is one)."""
    if mode == "mask":
        return (alpha * 255.0 + 0.5).astype(np.uint8)
    if mode == "cutout":
        return np.dstack([rgb, (alpha * 255.0 + 0.5).astype(np.uint8)])
    if mode == "background":
        assert background is not None, "background mode needs a Background"
        return _blend(rgb, background.for_frame(rgb), alpha)
    if mode == "overlay":
        tint = np.empty_like(rgb)
        tint[:] = OVERLAY_RGB
        out = _blend(cv2.addWeighted(rgb, 0.55, tint, 0.45, 0.0), rgb, alpha)
        contours, _ = cv2.findContours((alpha > THRESHOLD).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, OVERLAY_RGB, max(1, round(min(rgb.shape[:2]) / 200)), cv2.LINE_AA)
        return out
    if mode == "before-after":
        after = ["overlay"] + (["background"] if background is not None else [])
        return np.concatenate([rgb] + [compose(rgb, alpha, m, background) for m in after], axis=1)
    raise ValueError(f"unknown output mode {mode!r}")


def _blend(fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """alpha * fg + (1 - alpha) * bg for uint8 RGB pictures (float32: full frames stay cheap)."""
    base = bg.astype(np.float32)
    return (base + alpha[..., None] * (fg.astype(np.float32) - base) + 0.5).astype(np.uint8)


def encode_png(picture: np.ndarray) -> bytes:
    """An RGB, RGBA or grey picture as PNG bytes (for files and for `rcr-deploy serve` responses)."""
    if picture.ndim == 3:
        picture = cv2.cvtColor(picture, cv2.COLOR_RGB2BGR if picture.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, data = cv2.imencode(".png", picture)
    if not ok:
        raise RcrError(f"OpenCV could not encode a {picture.shape} picture as PNG")
    return data.tobytes()


def write_png(path: str | os.PathLike, picture: np.ndarray) -> Path:
    """Write an RGB, RGBA or grey picture as PNG, atomically."""
    return write_bytes_atomic(path, encode_png(picture))
