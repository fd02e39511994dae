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


def request(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = TIMEOUT_S, retries: int = RETRIES,
) -> bytes:
    """One HTTP call; the server's one-line error, or an unreachable server, becomes an RcrError.
    A request the server shed (503) is sent again after its `Retry-After`, up to `retries` times."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            body = e.read()
            if e.code == 503 and attempt < retries:
                wait = e.headers.get("Retry-After", "")
                time.sleep(min(float(wait), MAX_RETRY_WAIT_S) if wait.isdigit() else 1.0)
                continue
            try:
                reason = json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                reason = e.reason
            raise RcrError(f"{url}: the server refused the request (HTTP {e.code}: {reason})") from e
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RcrError(f"{url}: cannot reach the server ({reason}); start it with 'rcr-deploy serve' or check --server") from e
    raise AssertionError("unreachable: the last attempt returns or raises")


class RemoteRunner:
    """A server as the model: like a Runner, but `infer` takes a whole HxWx3 RGB frame and returns
    its hard person mask (HxW float32 of 0 and 1), because the server does the preprocessing."""

    def __init__(self, url: str, stream: bool = False) -> None:
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise RcrError(f"--server {url}: not an HTTP URL; pass e.g. http://127.0.0.1:8000")
        self.manifest: dict[str, Any] = json.loads(request(f"{self.url}/v1/model"))
        self.name = f"{self.manifest.get('model', 'model')}@{self.url}"
        self.in_channels = 4 if self.manifest.get("input", {}).get("prior_channel") is not None else 3
        #: One id per video: the server keeps its previous mask as the next frame's prior.
        self.session = uuid.uuid4().hex if stream else None

    def infer(self, rgb: np.ndarray) -> np.ndarray:
        headers = {"Content-Type": "image/png", "Accept": "image/png"}
        if self.session is not None:
            headers[SESSION_HEADER] = self.session
        # PNG is lossless, so the server segments exactly the pixels a local run would.
        data = request(f"{self.url}/segment?output=mask", encode_png(rgb), headers)
        mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if mask is None or mask.shape != rgb.shape[:2]:
            raise RcrError(f"{self.url}: the server's mask is not a {rgb.shape[1]}x{rgb.shape[0]} PNG; is it an rcr-deploy server?")
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
