"""`infer --server`'s HTTP client against a stand-in server on 127.0.0.1 (no Ray): a shed request
(503 with Retry-After, what `rcr-deploy serve` answers when its queue is full) is sent again, and
other refusals are one line."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from rcr_deploy.errors import RcrError
from rcr_deploy.serve.client import request


class StandIn(http.server.BaseHTTPRequestHandler):
    """Answers each POST with the next (status, body) of the class's script."""

    script: list[tuple[int, bytes]] = []
    seen = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        status, body = StandIn.script[min(StandIn.seen, len(StandIn.script) - 1)]
        StandIn.seen += 1
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stand_in():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StandIn.seen = 0
    yield f"http://127.0.0.1:{server.server_address[1]}/segment"
    server.shutdown()


def shed(message: str = "queue full") -> tuple[int, bytes]:
    return 503, json.dumps({"error": message}).encode()


def test_stand_in_shed_requests_are_retried(stand_in):
    StandIn.script = [shed(), shed(), (200, b"mask")]
    assert request(stand_in, b"img") == b"mask" and StandIn.seen == 3


def test_stand_in_retries_are_bounded_and_the_last_refusal_is_one_line(stand_in):
    StandIn.script = [shed("still full")]
    with pytest.raises(RcrError, match=r"HTTP 503: still full") as e:
        request(stand_in, b"img", retries=2)
    assert StandIn.seen == 3 and "\n" not in str(e.value)


def test_stand_in_other_refusals_are_not_retried(stand_in):
    StandIn.script = [(400, json.dumps({"error": "not an image"}).encode()), (200, b"mask")]
    with pytest.raises(RcrError, match="HTTP 400: not an image"):
        request(stand_in, b"img")
    assert StandIn.seen == 1
