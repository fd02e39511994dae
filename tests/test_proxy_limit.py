"""The proxy's body limit (serve/proxy_limit.py) as an ASGI middleware in front of a small ASGI
application that reads its whole body, the way Ray's proxy forwards it: what the application
is handed, what the client reads from the socket, and what goes back. The live server's
chunked-upload test (test_serve.py) checks it inside Ray."""

from __future__ import annotations

import asyncio
import json

from rcr_deploy.serve.proxy_limit import BodyLimit

LIMIT = 1000


def run(chunks: list[bytes], headers: list[tuple[bytes, bytes]] | None = None) -> tuple[list[dict], int, list[bytes]]:
    """Send `chunks` through BodyLimit to an app that echoes the body's length; (messages sent
    back, chunks read from the client, bodies the app was handed)."""
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    read, handed, sent = 0, [], []

    async def receive() -> dict:
        nonlocal read
        read += 1
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    async def app(scope: dict, receive, send) -> None:
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                await send({"type": "http.response.start", "status": 499, "headers": []})
                await send({"type": "http.response.body", "body": b"gone"})
                return
            handed.append(message["body"])
            size += len(message["body"])
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})

    scope = {"type": "http", "method": "POST", "path": "/segment", "headers": headers or []}
    asyncio.run(BodyLimit(app, LIMIT)(scope, receive, send))
    return sent, read, handed


def test_a_body_within_the_limit_passes_unchanged():
    sent, read, handed = run([b"x" * 600, b"x" * 400])
    assert [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == b"1000"
    assert read == 2 and sum(map(len, handed)) == 1000


def test_a_streamed_body_is_refused_at_the_limit_and_read_no_further():
    sent, read, handed = run([b"x" * 400] * 50)  # 20 000 bytes, chunked
    assert sent[0]["status"] == 413 and (b"connection", b"close") in sent[0]["headers"]
    assert "limit" in json.loads(sent[1]["body"])["error"]
    assert read == 3, "the client's body was read past the chunk that crossed the limit"
    assert sum(map(len, handed)) <= LIMIT  # the crossing chunk never reached the application
    assert len(sent) == 2  # the application's own answer to the disconnect was dropped


def test_a_declared_length_past_the_limit_is_refused_unread():
    sent, read, handed = run([b"x" * 10], headers=[(b"content-length", b"5000")])
    assert sent[0]["status"] == 413 and read == 0 and handed == []
    assert "5000" not in sent[1]["body"].decode() and "MiB" in sent[1]["body"].decode()
