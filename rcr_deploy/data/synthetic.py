"""Generated portraits and portrait videos with exact ground-truth masks.

A person-like figure (shirt-coloured shoulders, neck, a shaded head with hair, eyes and mouth)
drawn over a soft indoor-looking background. Everything comes from a seed, so tests, the demo's
sample image and its clip need no downloaded data and may be shipped freely.

Shapes are drawn at 4x resolution and area-downsampled: the figure's edge is anti-aliased like a
photo's, and the ground truth is that soft coverage thresholded at one half.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import cv2
import numpy as np

_SS = 4  # supersampling factor for anti-aliased edges
#: Frames per side-to-side sway in `video` (4 s at 15 fps: a person shifting on a call).
SWAY_PERIOD = 60


@dataclasses.dataclass(frozen=True)
class Look:
    """The colours of one figure (RGB) and of the scene behind it."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    shirt: tuple[int, int, int]
    wall: tuple[int, int, int]
    furniture: tuple[tuple[int, int, int], ...]


_SKINS = [(241, 194, 167), (224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172)]
_HAIRS = [(40, 28, 20), (90, 60, 30), (20, 20, 22), (160, 120, 60)]


def random_look(rng: np.random.Generator) -> Look:
    def colour(lo: int = 30, hi: int = 230, tint: int = 255) -> tuple[int, int, int]:
        """A brightness in [lo, hi) with each channel moved by at most `tint`."""
        level = rng.integers(lo, hi)
        return tuple(int(np.clip(level + v, 0, 255)) for v in rng.integers(-tint, tint + 1, 3))

    # As in most portraits: clothes darker than a light, nearly neutral wall.
    return Look(
        skin=_SKINS[rng.integers(len(_SKINS))],
        hair=_HAIRS[rng.integers(len(_HAIRS))],
        shirt=colour(30, 140, tint=60),
        wall=colour(150, 230, tint=20),
        furniture=tuple(colour(60, 200, tint=60) for _ in range(4)),
    )


def background(height: int, width: int, look: Look, rng: np.random.Generator) -> np.ndarray:
    """A wall with a light gradient and a few blurred, furniture-like blocks (HxWx3 uint8)."""
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    wall = np.asarray(look.wall, np.float32) * (0.8 + 0.3 * x - 0.15 * y)
    img = np.broadcast_to(wall, (height, width, 3)).copy()
    for colour in look.furniture:
        x0, x1 = sorted(rng.uniform(-0.2, 1.2, 2) * width)
        y0, y1 = sorted(rng.uniform(0.1, 1.2, 2) * height)
        muted = 0.5 * np.asarray(colour, np.float32) + 0.5 * np.asarray(look.wall, np.float32)  # a room, not a poster
        cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), tuple(float(c) for c in muted), -1)
    sigma = max(1.0, 0.02 * max(height, width))  # the room is out of focus behind the person
    return np.clip(cv2.GaussianBlur(img, (0, 0), sigma), 0, 255).astype(np.uint8)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _SS)), int(round(y * _SS))


def _figure_layers(height: int, width: int, look: Look, cx: float, cy: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The figure at 4x resolution: RGB layer (float32) and coverage (float32 in [0, 1]).

    (cx, cy) is the head centre in pixels; `scale` is the head height as a fraction of the frame
    height (about 0.3 in a typical selfie)."""
    H, W = height * _SS, width * _SS
    layer = np.zeros((H, W, 3), np.float32)
    cover = np.zeros((H, W), np.float32)
    head_h = scale * height
    head_w = 0.75 * head_h
    axes = lambda a, b: (int(a * _SS), int(b * _SS))  # noqa: E731 - local shorthand

    def fill_ellipse(centre, ax, colour, angle=0.0, mask=True) -> None:
        cv2.ellipse(layer, _pt(*centre), axes(*ax), angle, 0, 360, colour, -1, cv2.LINE_8)
        if mask:
            cv2.ellipse(cover, _pt(*centre), axes(*ax), angle, 0, 360, 1.0, -1, cv2.LINE_8)

    shoulders_y = cy + 0.95 * head_h
    # Shoulders and torso: a wide ellipse whose lower half runs off the bottom of the frame.
    fill_ellipse((cx, shoulders_y + 0.9 * head_h), (1.45 * head_h, 1.1 * head_h), look.shirt)
    # Neck.
    neck = np.array([_pt(cx - 0.2 * head_w, cy + 0.3 * head_h), _pt(cx + 0.2 * head_w, cy + 0.3 * head_h),
                     _pt(cx + 0.24 * head_w, shoulders_y + 0.05 * head_h), _pt(cx - 0.24 * head_w, shoulders_y + 0.05 * head_h)])
    dark_skin = tuple(0.85 * c for c in look.skin)
    cv2.fillConvexPoly(layer, neck, dark_skin, cv2.LINE_8)
    cv2.fillConvexPoly(cover, neck, 1.0, cv2.LINE_8)
    # Hair behind the head, the face, then the fringe on top.
    fill_ellipse((cx, cy - 0.06 * head_h), (0.56 * head_w, 0.55 * head_h), look.hair)
    fill_ellipse((cx, cy), (0.5 * head_w, 0.5 * head_h), look.skin)
    cv2.ellipse(layer, _pt(cx, cy - 0.12 * head_h), axes(0.52 * head_w, 0.42 * head_h), 0, 180, 360, look.hair, -1)
    # Eyes, brows and mouth (inside the face, so the mask is unchanged).
    for side in (-1, 1):
        fill_ellipse((cx + side * 0.19 * head_w, cy + 0.02 * head_h), (0.07 * head_w, 0.035 * head_h), (35, 30, 30), mask=False)
        fill_ellipse((cx + side * 0.19 * head_w, cy - 0.07 * head_h), (0.1 * head_w, 0.015 * head_h), look.hair, mask=False)
    fill_ellipse((cx, cy + 0.25 * head_h), (0.14 * head_w, 0.03 * head_h), (150, 60, 60), mask=False)
    # Soft shading: light from the upper left.
    gy, gx = np.mgrid[0:H, 0:W].astype(np.float32)
    light = 1.1 - 0.25 * (gx / W) - 0.15 * (gy / H)
    return layer * light[..., None], cover


def portrait(
    height: int, width: int, look: Look, bg: np.ndarray, cx: float, cy: float, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Compose one figure over `bg`: (HxWx3 uint8 RGB image, HxW uint8 0/1 ground-truth mask)."""
    layer, cover = _figure_layers(height, width, look, cx, cy, scale)
    layer = cv2.resize(layer, (width, height), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(cover, (width, height), interpolation=cv2.INTER_AREA)
    # The layer was drawn unpremultiplied only where covered; renormalise the averaged colour.
    colour = layer / np.maximum(alpha, 1e-6)[..., None]
    rgb = alpha[..., None] * colour + (1 - alpha[..., None]) * bg.astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8), (alpha >= 0.5).astype(np.uint8)


def _camera_noise(rgb: np.ndarray, rng: np.random.Generator, sigma: float, gain: float) -> np.ndarray:
    noisy = rgb.astype(np.float32) * gain + rng.normal(0.0, sigma, rgb.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def sample_portrait(height: int = 320, width: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One still portrait: (RGB image, 0/1 mask), the same for the same arguments."""
    rng = np.random.default_rng(seed)
    look = random_look(rng)
    bg = background(height, width, look, rng)
    cx = width * rng.uniform(0.4, 0.6)
    cy = height * rng.uniform(0.35, 0.45)
    rgb, mask = portrait(height, width, look, bg, cx, cy, scale=rng.uniform(0.28, 0.36))
    return _camera_noise(rgb, rng, sigma=3.0, gain=1.0), mask


def portraits(n: int, height: int, width: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """n different still portraits (e.g. calibration images for INT8)."""
    return [sample_portrait(height, width, seed=seed * 100_003 + i) for i in range(n)]


def video(
    n_frames: int, height: int = 240, width: int = 320, seed: int = 0, noise: float = 6.0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A clip of one figure swaying across a fixed background: (RGB frame, 0/1 mask) per frame.

    The head follows a slow side-to-side arc (one sway per SWAY_PERIOD frames) with a small bob and lean, as on a video call, and
    every frame gets fresh sensor noise and a slight exposure flicker: the conditions in which a
    per-frame segmenter flickers and the temporal prior is meant to help."""
    rng = np.random.default_rng(seed)
    look = random_look(rng)
    bg = background(height, width, look, rng)
    for t in range(n_frames):
        phase = 2 * np.pi * t / SWAY_PERIOD
        cx = width * (0.5 + 0.18 * np.sin(phase))
        cy = height * (0.42 + 0.03 * np.sin(2 * phase))
        scale = 0.33 + 0.02 * np.cos(phase)
        rgb, mask = portrait(height, width, look, bg, cx, cy, scale)
        gain = 1.0 + rng.uniform(-0.03, 0.03)
        yield _camera_noise(rgb, rng, sigma=noise, gain=gain), mask
