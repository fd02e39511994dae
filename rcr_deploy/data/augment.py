"""PortraitNet's augmentation (RCRNet paper §4.2.1) and fake previous-frame masks (§4.2.2).

One sample gives two views of the same deformed frame:
* teacher: deformation only (flip, rotation ±45°, scale 0.5–1.5 of fit-to-size, shift ±0.25);
* student: the same deformation plus texture (noise, blur, colour, brightness, contrast,
  sharpness), the pair the consistency loss compares.
Every operation fires with probability 0.5. Both views share one prior channel: with p = 0.5 a
fake previous-frame mask, otherwise zeros. Normalisation is `preprocess.normalize`.

`anywhere=True` adds framings that neither EG1800's centred head-and-shoulders selfies nor CCP's
centred standing people show (the paper's "portraits at anywhere"): a wider scale range (small,
off-centre people); a body cut by the frame's edge; a landscape frame (16:9 or 4:3, as a video
call or a camera gives it) whose background is another training image, so a standing person
becomes small once it is letterboxed into the square; up to two more people pasted from other
training images, in front of one another (target: the union of the masks); and low light or a
colour cast (both views, so the masks supervise them directly). The other images are drawn from
every dataset of the run, so selfies land on CCP's streets and CCP's people in EG1800's rooms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

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
P_CUT, P_LANDSCAPE = 0.2, 0.2
CUT_KEEP = (0.45, 0.85)  # of the frame's height (or width) that a cut keeps
LANDSCAPE_ASPECTS = (16 / 9, 4 / 3)
LANDSCAPE_HEIGHT = (0.5, 1.0)  # of the canvas height that the person's frame fills
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


def warp_pair(rgb: np.ndarray, mask: np.ndarray, m: np.ndarray, size: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Apply one affine to image (bilinear, grey padding) and mask (nearest, background), into a
    size x size frame or one of (width, height)."""
    dsize = (size, size) if isinstance(size, int) else size
    img = cv2.warpAffine(rgb, m, dsize, flags=cv2.INTER_LINEAR, borderValue=(PAD_VALUE,) * 3)
    msk = cv2.warpAffine(mask, m, dsize, flags=cv2.INTER_NEAREST, borderValue=0)
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
    """Paste the masked person of another frame onto this one, scaled to 0.3-0.9 of its shorter
    side and shifted anywhere; the target is the union of both masks."""
    fh, fw = mask.shape
    h, w = other_mask.shape
    scale = min(fh, fw) / max(h, w) * rng.uniform(*PASTE_SCALE)
    dx, dy = rng.uniform(-0.5, 0.5, 2) * (fw, fh)
    m = np.float64([[scale, 0, (fw - scale * w) / 2 + dx], [0, scale, (fh - scale * h) / 2 + dy]])
    if rng.random() < P:
        m[0] = -m[0]
        m[0, 2] += fw
    img, msk = warp_pair(other_rgb, other_mask, m, (fw, fh))
    keep = msk[..., None] > 0
    return np.where(keep, img, rgb), np.maximum(mask, msk)


def cut_body(rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Crop the frame so the person is cut by its edge: most often the bottom (a standing person
    seen from the waist up), sometimes the top or a side."""
    h, w = mask.shape
    side = rng.choice(4, p=[0.55, 0.15, 0.15, 0.15])  # keep the top, bottom, left, right part
    keep = rng.uniform(*CUT_KEEP)
    if side < 2:
        n = max(8, round(h * keep))
        rows = slice(0, n) if side == 0 else slice(h - n, h)
        return rgb[rows], mask[rows]
    n = max(8, round(w * keep))
    cols = slice(0, n) if side == 2 else slice(w - n, w)
    return rgb[:, cols], mask[:, cols]


def landscape(
    rgb: np.ndarray, mask: np.ndarray, back_rgb: np.ndarray, back_mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A landscape frame (16:9 or 4:3) whose background is another training image, cropped to fill
    it (its person stays, and stays in the target), with this frame's person cut out with its mask
    and set in front, at 0.5-1.0 of the canvas height and anywhere along it."""
    h = mask.shape[0]
    cw = round(h * float(rng.choice(LANDSCAPE_ASPECTS)))
    bh, bw = back_mask.shape
    scale = max(cw / bw, h / bh)
    x0, y0 = rng.uniform(0, bw * scale - cw + 1e-6), rng.uniform(0, bh * scale - h + 1e-6)
    m = np.float64([[scale, 0, -x0], [0, scale, -y0]])
    canvas = cv2.warpAffine(back_rgb, m, (cw, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    target = cv2.warpAffine(back_mask, m, (cw, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
    fh, fw = mask.shape
    s = h * rng.uniform(*LANDSCAPE_HEIGHT) / fh
    x, y = rng.uniform(min(0.0, cw - fw * s), max(0.0, cw - fw * s)), h - fh * s  # standing on the bottom edge
    m = np.float64([[s, 0, x], [0, s, y]])
    img = cv2.warpAffine(rgb, m, (cw, h), flags=cv2.INTER_LINEAR, borderValue=(PAD_VALUE,) * 3)
    person = cv2.warpAffine(mask, m, (cw, h), flags=cv2.INTER_NEAREST, borderValue=0)
    front = person[..., None] > 0
    return np.where(front, img, canvas), np.maximum(target, person)


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


#: The validation framings of `eval --framing` (and training's reframed figure): the frame as it
#: is, and one for each framing `anywhere` trains on. Those that need a second picture take the
#: split's next one (its person stays in the target).
FRAMINGS = ("as-is", "reframed", "cut", "landscape", "crowd")
NEEDS_OTHER = ("landscape", "crowd")


def framed(
    name: str, rgb: np.ndarray, mask: np.ndarray, key: int, other: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The frame in validation framing `name` (see FRAMINGS), drawn from a generator keyed on
    `key` (the image's index), so that every model and every run is scored on the same pictures:
    reframed (half size, shifted); cut by an edge; in a landscape frame over `other`; with the
    person of `other` pasted in front."""
    if name == "as-is":
        return rgb, mask
    if name == "reframed":
        return reframe(rgb, mask, key)
    rng = np.random.default_rng([1801, FRAMINGS.index(name), key])
    if name == "cut":
        return cut_body(rgb, mask, rng)
    if other is None:
        raise ValueError(f"framing {name!r} needs a second picture")
    if name == "landscape":
        return landscape(rgb, mask, *other, rng)
    if name == "crowd":
        return paste_person(rgb, mask, *other, rng)
    raise ValueError(f"unknown framing {name!r}; choose from {', '.join(FRAMINGS)}")


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
    others: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> Sample:
    """Augment one (image, 0/1 mask) pair into a student/teacher training sample; `others`, other
    pairs of the run (the landscape background first, then people to paste), turn on the
    `anywhere` augmentations."""
    if others:
        if rng.random() < P_CUT:
            rgb, mask = cut_body(rgb, mask, rng)
        if rng.random() < P_LANDSCAPE:
            rgb, mask = landscape(rgb, mask, *others[0], rng)
    scale_range = SCALE_ANYWHERE if others else SCALE
    img, msk = warp_pair(rgb, mask, deformation(rng, *mask.shape, size, scale_range), size)
    if others:
        for k in range(1, len(others)):  # each pasted in front of what is there: the occlusion order
            if rng.random() < P_PASTE:
                img, msk = paste_person(img, msk, *others[k], rng)
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
