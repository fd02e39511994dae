"""THE one definition of input preprocessing, used by training, export manifests and inference.

PortraitNet's normalisation in RGB order: (x - mean) * 0.017, mean = (123.68, 116.78, 103.94).
Test-time size policy: pad to a square with grey 128, then resize (bicubic) to the model size.
The 4th channel is the previous frame's mask in [0, 1], not normalised; zeros on still images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from rcr_deploy.errors import DataError
from rcr_deploy.fileio import regular_file

MEAN_RGB = (123.68, 116.78, 103.94)
SCALE = 0.017
PAD_VALUE = 128
INPUT_SIZE = 224
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: The largest image (and mask) read: 64 megapixels, e.g. 8000 x 8000, about 190 MB decoded.
#: A small file that claims more is a decompression bomb; a real photo that large is downscaled first.
MAX_PIXELS = 64_000_000


def input_spec(size: int = INPUT_SIZE, in_channels: int = 4) -> dict[str, Any]:
    """The preprocessing recorded in every artifact's manifest, exact enough to reproduce our
    probabilities (manifest.schema.json describes each field)."""
    return {
        "layout": "NCHW",
        "channel_order": "RGB" + ("+prior" if in_channels == 4 else ""),
        "mean": list(MEAN_RGB),
        "std": [1.0 / SCALE] * 3,
        "formula": "float32((float32(rgb_uint8) - mean) * 0.017) per channel; prior channel in [0, 1] unnormalised",
        "size": [size, size],
        "load": {
            "library": "Pillow",
            "exif_transpose": True,
            "grey": "modes L and 1, palette without transparency, CMYK and the rest: Image.convert('RGB')",
            "alpha": f"modes RGBA, LA, PA and palette with transparency: convert('RGBA'), alpha_composite over opaque "
            f"({PAD_VALUE}, {PAD_VALUE}, {PAD_VALUE}, 255), then convert('RGB')",
            "16bit": "modes I;16 and I: float64 values * 255 / max(image max, 1), rounded to uint8, replicated to RGB",
        },
        "resize": {
            "order": "letterbox first (pad to a centred square), then resize the square; never crop",
            "letterbox": f"side = max(h, w); top = (side - h) // 2; left = (side - w) // 2; padding uint8 {PAD_VALUE}",
            "library": "opencv",
            "function": "cv2.resize",
            "interpolation": "INTER_CUBIC",
            "dtype": "uint8",
        },
        "pad_value": PAD_VALUE,
        "prior_channel": 3 if in_channels == 4 else None,
        "prior_meaning": "previous frame's person mask (1 where its probability > 0.5); zeros for still images",
        "prior_resize": {
            "letterbox": "the frame's letterbox, padding 0.0 (float32)",
            "library": "opencv",
            "function": "cv2.resize",
            "interpolation": "INTER_LINEAR",
            "dtype": "float32",
        },
    }


@contextlib.contextmanager
def open_image(path: str | os.PathLike | BinaryIO, what: str = "image") -> Iterator[Image.Image]:
    """Open an image or mask (a file, or an open binary stream such as a request body) with
    Pillow, EXIF rotation applied; every failure (missing, FIFO, corrupt, over `MAX_PIXELS`) is a
    one-line `DataError` naming the file."""
    stream = hasattr(path, "read")
    path = path if stream else regular_file(path, f"{what} file")
    label = getattr(path, "name", f"the uploaded {what}") if stream else path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise Image.DecompressionBombError(f"{img.width}x{img.height}")
                yield ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(
            f"{label}: {what} over the {MAX_PIXELS // 1_000_000}-megapixel limit (a huge photo or a decompression bomb); downscale it"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{label}: unreadable or corrupt {what} ({e}); replace or remove it") from e


def load_image(path: str | os.PathLike | BinaryIO) -> np.ndarray:
    """Read any common image (a file or an open binary stream) as HxWx3 uint8 RGB: EXIF rotation
    applied; grey, RGBA (composited on grey 128), palette and 16-bit images converted."""
    with open_image(path) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64)
            arr = (arr / max(arr.max(), 1.0) * 255.0).round().astype(np.uint8)
            return np.repeat(arr[..., None], 3, axis=2)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (PAD_VALUE,) * 3 + (255,))
            return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
        return np.asarray(img.convert("RGB"))


def list_images(folder: str | os.PathLike, what: str = "image") -> list[Path]:
    """Image files directly in `folder`, sorted by name; a clear error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such {what} folder; pass a folder of images")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(
            f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this {what} folder; add some of your own photos"
        )
    return images


def normalize(rgb: np.ndarray, prior: np.ndarray | None = None, in_channels: int = 4) -> np.ndarray:
    """HxWx3 uint8 RGB (+ HxW prior in [0,1]) -> CxHxW float32 network input."""
    x = (rgb.astype(np.float32) - np.asarray(MEAN_RGB, np.float32)) * SCALE
    chans = [x.transpose(2, 0, 1)]
    if in_channels == 4:
        p = np.zeros(rgb.shape[:2], np.float32) if prior is None else prior.astype(np.float32)
        chans.append(p[None])
    return np.ascontiguousarray(np.concatenate(chans, axis=0))


@dataclasses.dataclass(frozen=True)
class Letterbox:
    """How a frame was padded and resized, so a mask can be mapped back onto it."""

    height: int
    width: int
    side: int
    top: int
    left: int
    size: int


def letterbox(rgb: np.ndarray, size: int = INPUT_SIZE) -> tuple[np.ndarray, Letterbox]:
    """Pad to a centred square with grey 128, then bicubic resize to size x size."""
    h, w = rgb.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square = np.full((side, side, 3), PAD_VALUE, np.uint8)
    square[top : top + h, left : left + w] = rgb
    resized = cv2.resize(square, (size, size), interpolation=cv2.INTER_CUBIC)
    return resized, Letterbox(h, w, side, top, left, size)


def letterbox_mask(mask: np.ndarray, box: Letterbox) -> np.ndarray:
    """Apply a frame's letterbox to a float mask (e.g. the previous frame's prior)."""
    square = np.zeros((box.side, box.side), np.float32)
    square[box.top : box.top + box.height, box.left : box.left + box.width] = mask
    return cv2.resize(square, (box.size, box.size), interpolation=cv2.INTER_LINEAR)


def preprocess(
    rgb: np.ndarray, size: int = INPUT_SIZE, prior: np.ndarray | None = None, in_channels: int = 4
) -> tuple[np.ndarray, Letterbox]:
    """A frame (and optional prior at frame size) -> 1xCxSxS float32 input and its letterbox."""
    resized, box = letterbox(rgb, size)
    prior_s = None if prior is None else letterbox_mask(prior, box)
    return normalize(resized, prior_s, in_channels)[None], box
