"""`rcr-deploy infer --server URL`: a running `rcr-deploy serve` in place of a local model.

`RemoteSegmenter` plugs into `infer.run` where a local `Segmenter` would: frames go to the
server whole (it letterboxes and normalises them from its manifest) and come back as the hard
mask, so every output `infer` writes is made by the same code as locally. A video's frames share
one session id, so the server feeds each frame the previous frame's mask.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import cv2
import numpy as np

from rcr_deploy.errors import RcrError
from rcr_deploy.infer import Segmenter
from rcr_deploy.postprocess import encode_png
from rcr_deploy.preprocess import Letterbox
from rcr_deploy.serve.protocol import SESSION_HEADER

TIMEOUT_S = 60.0
#: How often a shed request (503, the server's queue full) is sent again, and the longest wait.
RETRIES = 5
MAX_RETRY_WAIT_S = 10.0


#: The most bytes read from one answer (a mask PNG of a 64-megapixel frame is far less).
MAX_REPLY = 256 << 20
NOT_OURS = "is --server an rcr-deploy server?"


def request(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float | None = None, retries: int = RETRIES,
) -> bytes:
    """One HTTP call, bounded by `timeout` (default `TIMEOUT_S`) and `MAX_REPLY`; the server's
    one-line error, an unreachable or silent server, or an oversized answer becomes an RcrError.
    A request the server shed (503) is sent again after its `Retry-After`, up to `retries` times."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(req, timeout=timeout or TIMEOUT_S) as r:
                body = r.read(MAX_REPLY + 1)
            break
        except urllib.error.HTTPError as e:
            error = e.read(1 << 16)
            if e.code == 503 and attempt < retries:
                wait = e.headers.get("Retry-After", "")
                time.sleep(min(float(wait), MAX_RETRY_WAIT_S) if wait.isdigit() else 1.0)
                continue
            try:
                reason = json.loads(error)["error"]
            except (ValueError, KeyError, TypeError):
                reason = e.reason
            raise RcrError(f"{url}: the server refused the request (HTTP {e.code}: {_clean(reason)})") from e
        except (urllib.error.URLError, OSError, ValueError) as e:  # ValueError: http.client's answer to a malformed reply
            reason = getattr(e, "reason", e)
            raise RcrError(f"{url}: cannot reach the server ({_clean(reason)}); start it with 'rcr-deploy serve' or check --server") from e
    if len(body) > MAX_REPLY:
        raise RcrError(f"{url}: the server's answer is over {MAX_REPLY >> 20} MiB; {NOT_OURS}")
    return body


def _clean(text: object) -> str:
    """A server's text as part of our one line: printable, one line, short."""
    return " ".join("".join(c if c.isprintable() else "?" for c in str(text)).split())[:200]


def _numbers(value: object, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)


def model_record(url: str, body: bytes) -> dict[str, Any]:
    """The server's `GET /v1/model` answer, checked for what the client reads from it."""
    try:
        record = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RcrError(f"{url}: the server's answer is not JSON ({_clean(body[:60])!r}); {NOT_OURS}") from None
    spec = record.get("input") if isinstance(record, dict) else None
    if not (isinstance(spec, dict) and _numbers(spec.get("mean"), 3) and _numbers(spec.get("std"), 3) and isinstance(spec.get("pad_value"), int)
            and spec.get("prior_channel") in (None, 3)):  # fmt: skip
        raise RcrError(f"{url}: the server's answer is JSON but not an rcr-deploy model record (no usable 'input'); {NOT_OURS}")
    return record


class RemoteRunner:
    """A server as the model: like a Runner, but `infer` takes a whole HxWx3 RGB frame and returns
    its hard person mask (HxW float32 of 0 and 1), because the server does the preprocessing."""

    def __init__(self, url: str, stream: bool = False) -> None:
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise RcrError(f"--server {url}: not an HTTP URL; pass e.g. http://127.0.0.1:8000")
        self.manifest = model_record(f"{self.url}/v1/model", request(f"{self.url}/v1/model"))
        self.name = f"{_clean(self.manifest.get('model', 'model'))[:80]}@{self.url}"
        self.in_channels = 4 if self.manifest["input"]["prior_channel"] is not None else 3
        #: One id per video: the server keeps its previous mask as the next frame's prior.
        self.session = uuid.uuid4().hex if stream else None

    def infer(self, rgb: np.ndarray) -> np.ndarray:
        headers = {"Content-Type": "image/png", "Accept": "image/png"}
        if self.session is not None:
            headers[SESSION_HEADER] = self.session
        # PNG is lossless, so the server segments exactly the pixels a local run would.
        data = request(f"{self.url}/segment?output=mask", encode_png(rgb), headers)
        try:
            mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) if data else None
        except cv2.error:
            mask = None
        if mask is None or mask.shape != rgb.shape[:2]:
            raise RcrError(f"{self.url}: the server's mask is not a {rgb.shape[1]}x{rgb.shape[0]} PNG; {NOT_OURS}")
        return mask.astype(np.float32) / 255.0

    def close(self) -> None:
        """Nothing to release: every call is its own HTTP request."""


class RemoteSegmenter(Segmenter):
    """`infer.Segmenter` over a server: no local letterbox or normalisation, the mask comes back
    at frame size, and the prior lives on the server (by session)."""

    def __init__(self, url: str, feather: float = 0.0, stream: bool = False) -> None:
        super().__init__(RemoteRunner(url, stream), feather=feather)  # checks the server's manifest

    def letterbox(self, rgb: np.ndarray) -> tuple[np.ndarray, Letterbox | None]:
        return rgb, None

    def model_input(self, resized: np.ndarray, box: Letterbox | None, prior: np.ndarray | None) -> np.ndarray:
        return resized  # the whole frame; the server holds the prior

    def probability(self, logits: np.ndarray, box: Letterbox | None) -> np.ndarray:
        return logits  # already the frame-size mask
