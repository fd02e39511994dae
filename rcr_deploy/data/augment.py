"""PortraitNet's augmentation (RCRNet paper §4.2.1) and fake previous-frame masks (§4.2.2).

One sample gives two views of the same deformed frame:
* teacher: deformation only (flip, rotation ±45°, scale 0.5–1.5 of fit-to-size, shift ±0.25);
* student: the same deformation plus texture (noise, blur, colour, brightness, contrast,
  sharpness), the pair the consistency loss compares.
Every operation fires with probability 0.5. Both views share one prior channel: with p = 0.5 a
fake previous-frame mask, otherwise zeros. Normalisation is `preprocess.normalize`.

`anywhere=True` adds what EG1800's centred head-and-shoulders framing never shows (the paper's
"portraits at anywhere"): a wider scale range (small people), a second person pasted from another
training image (target: the union of both masks), and low light or a colour cast on the frame
(both views, so the masks supervise them directly).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from rcr_deploy.preprocess import INPUT_SIZE, PAD_VALUE, normalize

P = 0.5
ROTATION = 45.0
SCALE = (0.5, 1.5)
SHIFT = 0.25
NOISE_SIGMA = (0.0, 10.0)
BLUR_KERNELS = (3, 5)
COLOUR = (0.4, 1.7)
BRIGHTNESS = (0.4, 1.7)
CONTRAST = (0.6, 1.5)
SHARPNESS = (0.8, 1.3)
MOTION_BLUR = (5, 30)
JITTER = 0.05
SCALE_ANYWHERE = (0.25, 1.5)
PASTE_SCALE = (0.3, 0.9)  # of the pasted person's fit-to-size
P_PASTE, P_DARK, P_CAST = 0.3, 0.2, 0.2
GAMMA_DARK = (1.5, 3.0)
CAST = (0.75, 1.25)
EDGE_WIDTH = 4
_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13  # PIL's SMOOTH, as ImageEnhance.Sharpness


def deformation(
    rng: np.random.Generator, height: int, width: int, size: int, scale_range: tuple[float, float] = SCALE
) -> np.ndarray:
    """2x3 affine from the frame to the size x size input: fit-to-size (the letterbox), then
    scale, rotation, shift and flip, each with p = 0.5."""
    scale, angle, dx, dy = size / max(height, width), 0.0, 0.0, 0.0
    if rng.random() < P:
        scale *= rng.uniform(*scale_range)
    if rng.random() < P:
        angle = rng.uniform(-ROTATION, ROTATION)
    if rng.random() < P:
        dx, dy = rng.uniform(-SHIFT, SHIFT, 2) * size
    flip = bool(rng.random() < P)
    m = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    m[:, 2] += (size / 2 + dx - width / 2, size / 2 + dy - height / 2)
    if flip:  # mirror the output: x -> size - x
        m[0] = -m[0]
        m[0, 2] += size
    return m


def warp_pair(rgb: np.ndarray, mask: np.ndarray, m: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply one affine to image (bilinear, grey padding) and mask (nearest, background)."""
    img = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(PAD_VALUE,) * 3)
    msk = cv2.warpAffine(mask, m, (size, size), flags=cv2.INTER_NEAREST, borderValue=0)
    return img, msk


def _enhance(img: np.ndarray, degenerate: np.ndarray | float, factor: float) -> np.ndarray:
    # PIL ImageEnhance's rule: blend from a degenerate image (factor 0) through the original (1).
    return degenerate + factor * (img - degenerate)


def texture(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Student-only texture augmentation of an HxWx3 uint8 image, each op with p = 0.5."""
    img = rgb.astype(np.float32)
    if rng.random() < P:
        img += rng.normal(0.0, rng.uniform(*NOISE_SIGMA), img.shape).astype(np.float32)
    if rng.random() < P:
        k = int(rng.choice(BLUR_KERNELS))
        kind = rng.integers(3)
        clipped = np.clip(img, 0, 255)
        if kind == 0:
            img = cv2.GaussianBlur(clipped, (k, k), 0)
        elif kind == 1:
            img = cv2.medianBlur(clipped.astype(np.uint8), k).astype(np.float32)
        else:
            img = cv2.blur(clipped, (k, k))
    grey = lambda a: (a @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]  # noqa: E731
    if rng.random() < P:
        img = _enhance(img, grey(img), rng.uniform(*COLOUR))
    if rng.random() < P:
        img = _enhance(img, 0.0, rng.uniform(*BRIGHTNESS))
    if rng.random() < P:
        img = _enhance(img, float(grey(img).mean()), rng.uniform(*CONTRAST))
    if rng.random() < P:
        img = _enhance(img, cv2.filter2D(img, -1, _SMOOTH), rng.uniform(*SHARPNESS))
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _motion_blur(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    length = int(rng.integers(MOTION_BLUR[0], MOTION_BLUR[1] + 1))
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2] = 1.0 / length
    rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), rng.uniform(0, 180), 1.0)
    kernel = cv2.warpAffine(kernel, rot, (length, length))
    return cv2.filter2D(mask, -1, kernel / max(kernel.sum(), 1e-6), borderType=cv2.BORDER_REPLICATE)


def _jitter(size: int, rng: np.random.Generator) -> np.ndarray:
    """A 3x3 homography: an affine and a perspective jitter of the corners by ±5%, each p = 0.5."""
    corners = np.float32([[0, 0], [size, 0], [size, size], [0, size]])
    h = np.eye(3)
    if rng.random() < P:  # affine: three corners move, the fourth follows
        moved = corners[:3] + rng.uniform(-JITTER, JITTER, (3, 2)).astype(np.float32) * size
        h = np.vstack([cv2.getAffineTransform(corners[:3], moved), [0, 0, 1]]) @ h
    if rng.random() < P:
        moved = corners + rng.uniform(-JITTER, JITTER, (4, 2)).astype(np.float32) * size
        h = cv2.getPerspectiveTransform(corners, moved) @ h
    return h


def fake_prior(
    rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, mask, prior): a simulated previous-frame mask in [0, 1] for a deformed sample.

    Half the time the prior alone moves (a jittered, motion-blurred copy of the mask); otherwise
    the frame and its mask move while the unmoved mask serves as the prior. Thin-plate-spline
    warps of PortraitNet are left out: the affine and perspective jitter already give the
    boundary offsets a previous frame has.
    """
    size = mask.shape[0]
    h = _jitter(size, rng)
    if rng.random() < P:
        prior = cv2.warpPerspective(mask.astype(np.float32), h, (size, size), flags=cv2.INTER_LINEAR)
    else:
        prior = mask.astype(np.float32)
        rgb = cv2.warpPerspective(rgb, h, (size, size), flags=cv2.INTER_LINEAR, borderValue=(PAD_VALUE,) * 3)
        mask = cv2.warpPerspective(mask, h, (size, size), flags=cv2.INTER_NEAREST, borderValue=0)
    return rgb, mask, np.clip(_motion_blur(prior, rng), 0.0, 1.0)


def edge_target(mask: np.ndarray) -> np.ndarray:
    """PortraitNet's boundary ground truth: 5x5 box blur, threshold 0.5, outer contours drawn
    4 px wide. HxW 0/1 uint8."""
    smooth = cv2.blur(mask.astype(np.float32), (5, 5)) > 0.5
    contours, _ = cv2.findContours(smooth.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    edge = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(edge, contours, -1, 1, EDGE_WIDTH)
    return edge


def paste_person(
    rgb: np.ndarray, mask: np.ndarray, other_rgb: np.ndarray, other_mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Paste the masked person of another frame onto this size x size one, scaled and shifted
    anywhere; the target is the union of both masks."""
    size = mask.shape[0]
    h, w = other_mask.shape
    scale = size / max(h, w) * rng.uniform(*PASTE_SCALE)
    dx, dy = rng.uniform(-0.5, 0.5, 2) * size
    m = np.float64([[scale, 0, (size - scale * w) / 2 + dx], [0, scale, (size - scale * h) / 2 + dy]])
    if rng.random() < P:
        m[0] = -m[0]
        m[0, 2] += size
    img, msk = warp_pair(other_rgb, other_mask, m, size)
    keep = msk[..., None] > 0
    return np.where(keep, img, rgb), np.maximum(mask, msk)


def lighting(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Low light (a gamma that darkens) and a colour cast (per-channel gains), each sometimes."""
    img = rgb.astype(np.float32) / 255.0
    if rng.random() < P_DARK:
        img = img ** rng.uniform(*GAMMA_DARK)
    if rng.random() < P_CAST:
        img = img * rng.uniform(*CAST, 3).astype(np.float32)
    return np.clip(img * 255.0, 0, 255).round().astype(np.uint8)


REFRAME_SCALE = 0.5


def reframe(rgb: np.ndarray, mask: np.ndarray, key: int) -> tuple[np.ndarray, np.ndarray]:
    """The harder validation framing: the frame shrunk to half its size and placed at a shift
    keyed on `key` inside a canvas of the original size, whose background is the frame itself
    enlarged and blurred beyond recognition (no person in it: the mask there is 0)."""
    h, w = mask.shape
    sh, sw = round(h * REFRAME_SCALE), round(w * REFRAME_SCALE)
    rng = np.random.default_rng([1800, key])
    y, x = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
    canvas = cv2.GaussianBlur(rgb, (0, 0), sigmaX=max(h, w) / 8)
    out_mask = np.zeros_like(mask)
    canvas[y : y + sh, x : x + sw] = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA)
    out_mask[y : y + sh, x : x + sw] = cv2.resize(mask, (sw, sh), interpolation=cv2.INTER_NEAREST)
    return canvas, out_mask


@dataclasses.dataclass
class Sample:
    """One training sample: two 4xSxS float32 views, and SxS int64 mask and edge targets."""

    student: np.ndarray
    teacher: np.ndarray
    mask: np.ndarray
    edge: np.ndarray


def make_sample(
    rgb: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    size: int = INPUT_SIZE,
    in_channels: int = 4,
    other: tuple[np.ndarray, np.ndarray] | None = None,
) -> Sample:
    """Augment one (image, 0/1 mask) pair into a student/teacher training sample; `other`, a
    second pair, turns on the `anywhere` augmentations."""
    scale_range = SCALE if other is None else SCALE_ANYWHERE
    img, msk = warp_pair(rgb, mask, deformation(rng, *mask.shape, size, scale_range), size)
    if other is not None:
        if rng.random() < P_PASTE:
            img, msk = paste_person(img, msk, *other, rng)
        img = lighting(img, rng)
    prior = None
    if in_channels == 4 and rng.random() < P:
        img, msk, prior = fake_prior(img, msk, rng)
    return Sample(
        student=normalize(texture(img, rng), prior, in_channels),
        teacher=normalize(img, prior, in_channels),
        mask=msk.astype(np.int64),
        edge=edge_target(msk).astype(np.int64),
    )
