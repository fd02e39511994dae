"""The HTTP contract of `rcr-deploy serve`, without Ray: what a request may carry, how the image
body is checked and decoded, and how a mask becomes a response body.

Kept apart from the Ray application so that the client and the tests share the names, and so
that every refusal is a `RequestError` (a status and one line) raised before the model runs.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
from PIL import Image

from rcr_deploy.errors import DataError
from rcr_deploy.postprocess import compose, encode_png
from rcr_deploy.preprocess import load_image

#: Header naming a video stream: the replica keeps that stream's previous mask as the next prior.
SESSION_HEADER = "X-Session-Id"
#: Response header: how many requests the replica ran in the model call that served this one.
BATCH_HEADER = "X-Batch-Size"
#: Response header: which replica answered (sticky routing can be checked against it).
REPLICA_HEADER = "X-Replica"
#: `POST /segment?output=...`: what comes back.
OUTPUTS = {"mask": "image/png", "cutout": "image/png", "json": "application/json"}
#: Bodies accepted besides image/*: what curl and most HTTP libraries send for raw bytes.
RAW_TYPES = ("application/octet-stream",)
#: Largest request body; an encoded image past this is refused before it is read into a decoder.
MAX_BODY_BYTES = 32 * 2**20
#: Largest image in megapixels. A decoded frame costs ~30 bytes per pixel on the replica (RGB,
#: the float probability, the letterbox square), so 24 MP (6000x4000) stays under ~1 GB per request.
MAX_MEGAPIXELS = 24.0
#: Requests queued beyond the replicas' two batches each (in the replicas, `replica_slots`), and
#: as many again at the HTTP proxy; more get 503 at once.
MAX_QUEUED = 64
#: A request not answered in this many seconds gets 408 (Ray Serve's answer to its own timeout).
REQUEST_TIMEOUT_S = 30.0
#: What a shed request's `Retry-After` header says, in seconds.
RETRY_AFTER_S = 1.0
#: The model's name in the Open Inference Protocol unless `serve --v2-name` says otherwise
#: (the Triton repository that `export --triton` writes uses it too).
V2_MODEL_NAME = "rcrnet"
#: Video sessions one replica keeps at most; past that the least recently seen is forgotten.
MAX_SESSIONS = 256
#: A video session's previous mask is dropped after this many seconds without a frame.
SESSION_IDLE_S = 60.0


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def body(self) -> bytes:
        return error_body(str(self))


def body_too_large(limit: int, size: int | None = None) -> RequestError:
    """The 413 for a body past `limit` bytes: of `size` bytes when known, else while streaming."""
    what = "body" if size is None else f"body of {size / 2**20:.0f} MiB is"
    return RequestError(413, f"{what} past the {limit // 2**20} MiB limit; send a smaller image")


def error_body(message: str) -> bytes:
    """The one-line JSON every error response carries."""
    return (json.dumps({"error": message.splitlines()[0] if message else "error"}) + "\n").encode()


def choose_output(query: str | None, accept: str | None) -> str:
    """`?output=` wins; otherwise the Accept header picks JSON or a PNG mask (the default)."""
    if query is not None:
        if query not in OUTPUTS:
            raise RequestError(400, f"output={query!r} is unknown; choose one of {', '.join(OUTPUTS)}")
        return query
    types = [t.split(";")[0].strip().lower() for t in (accept or "").split(",") if t.strip()]
    if not types or any(t in ("*/*", "image/*", "image/png") for t in types):
        return "mask"
    if "application/json" in types:
        return "json"
    raise RequestError(406, f"Accept: {accept} cannot be served; ask for image/png or application/json (or ?output=)")


def decode_image(body: bytes, content_type: str | None, max_megapixels: float = MAX_MEGAPIXELS) -> np.ndarray:
    """A request body -> HxWx3 uint8 RGB, or a `RequestError` (wrong type, empty, too large, not
    an image, truncated). The image's size is read from its header before anything is decoded."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        body, kind = form_image(body, content_type or "")
    if kind and not (kind.startswith("image/") or kind in RAW_TYPES):
        raise RequestError(415, f"Content-Type {kind} is not an image; send the image bytes as image/* or application/octet-stream")
    if not body:
        raise RequestError(400, "empty body; send the bytes of one image (JPEG, PNG, BMP, TIFF or WebP)")
    if len(body) > MAX_BODY_BYTES:
        raise body_too_large(MAX_BODY_BYTES, len(body))
    try:
        with Image.open(io.BytesIO(body)) as probe:
            w, h = probe.size
    except Image.DecompressionBombError as e:
        raise RequestError(413, f"image past the {max_megapixels:g} MP limit ({e}); downscale it") from e
    except Exception as e:  # Pillow raises several types for bytes that are no image at all
        raise RequestError(400, f"body is not an image Pillow can read ({type(e).__name__}); send a JPEG, PNG, BMP, TIFF or WebP") from e
    if w * h > max_megapixels * 1e6:
        raise RequestError(413, f"{w}x{h} image is {w * h / 1e6:.1f} MP, past the {max_megapixels:g} MP limit; downscale it")
    try:
        return load_image(io.BytesIO(body))
    except DataError as e:  # a truncated or corrupt file: its header read, its pixels did not
        raise RequestError(400, f"corrupt or truncated image ({e.__cause__ or e}); send the whole file") from e


def form_image(body: bytes, content_type: str) -> tuple[bytes, str]:
    """The image of a multipart/form-data upload (RFC 7578, what `curl -F image=@photo.jpg` and a
    browser form send) and its part's media type: the part named `image` or `file`, else the first
    part with a file name, else the first part."""
    boundary = next((p.split("=", 1)[1].strip().strip('"') for p in content_type.split(";")[1:] if p.strip().lower().startswith("boundary=")), "")
    if not boundary:
        raise RequestError(400, "multipart/form-data without a boundary; let the HTTP library build the form (curl -F image=@photo.jpg)")
    parts = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            break
        head, sep, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if sep:
            headers = dict(line.split(":", 1) for line in head.decode("latin-1").split("\r\n") if ":" in line)
            headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
            disposition = headers.get("content-disposition", "")
            name = next((p.split("=", 1)[1].strip('" ') for p in disposition.split(";") if p.strip().startswith("name=")), "")
            parts.append((name, "filename=" in disposition, headers.get("content-type", ""), data.removesuffix(b"\r\n")))
    if not parts:
        raise RequestError(400, "multipart/form-data body has no parts; send the image as a form field named 'image'")
    _, _, kind, data = next((p for p in parts if p[0] in ("image", "file")), next((p for p in parts if p[1]), parts[0]))
    return data, kind.split(";")[0].strip().lower()


def encode_result(rgb: np.ndarray, alpha: np.ndarray, output: str, extra: dict[str, Any]) -> tuple[bytes, str]:
    """The response body and its media type: a grey PNG mask, an RGBA PNG cut-out, or JSON with
    the mask PNG in base64 (plus `extra`, e.g. the model and the batch size)."""

    if output == "cutout":
        return encode_png(compose(rgb, alpha, "cutout")), OUTPUTS[output]
    png = encode_png(compose(rgb, alpha, "mask"))
    if output == "mask":
        return png, OUTPUTS[output]
    h, w = alpha.shape
    payload = {"width": w, "height": h, "mask_png_base64": base64.b64encode(png).decode(), "person_fraction": float(alpha.mean()), **extra}
    return json.dumps(payload).encode(), OUTPUTS[output]


def replica_slots(max_batch: int, max_queued: int, replicas: int) -> int:
    """Requests one replica takes at once: two batches (one running, one filling) and its share of
    the queue. The queue lives in the replicas, where a freed slot is taken at once: held in front
    of them, Ray's router retries full replicas with back-off of up to 0.5 s, and one replica that
    served 95 requests/s to 4 clients served 13/s to 64 (docs/serving.md, "How long a request can wait")."""
    return 2 * max_batch + -(-max_queued // replicas)


def capacity(replicas: int, max_batch: int, max_queued: int) -> int:
    """Requests the server holds before it sheds: every replica's slots and the proxy's queue."""
    return replicas * replica_slots(max_batch, max_queued, replicas) + max_queued
