"""The request body limit, enforced in Ray Serve's HTTP proxy as the body streams in.

The replica checks the limit too (`app.read_body`), but that is too late for a chunked upload:
Ray's proxy reads the client's body into a queue, and the replica pulls that queue on its own,
to the end of the body, whether or not the application still reads it. A refused 512 MiB
chunked body therefore still crossed into the replica, which grew by 39-181 MiB. Here the proxy
stops reading at the limit, so no more than `MAX_BODY_BYTES` of any request ever leaves it.

Ray Serve applies the middlewares that `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` names in every
proxy it starts; `app.start` sets it to `PROXY_CALLBACK` before Ray starts.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from rcr_deploy.serve.protocol import MAX_BODY_BYTES, RequestError, body_too_large

#: The import path Ray Serve calls in each proxy process for its extra middlewares.
PROXY_CALLBACK = "rcr_deploy.serve.proxy_limit.middlewares"

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: a body declared or streamed past `limit` bytes gets 413 and one line.

    Past the limit the application is told that the client has gone (`http.disconnect`), which
    makes Ray's proxy cancel the request in the replica; its own reply to that is dropped and
    the 413 sent instead. Nothing past the limit is read from the client: the server closes the
    connection after the 413, as it must with a body left unread."""

    def __init__(self, app: Callable[[Message, Receive, Send], Awaitable[None]], limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send, body_too_large(self.limit, int(declared)))
        seen, refused, started = 0, False, False

        async def limited() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if refused and not started:
                return  # the application's answer to the disconnect faked above
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited, guarded)
        if refused and not started:
            await self._refuse(send, body_too_large(self.limit))

    @staticmethod
    async def _refuse(send: Send, refusal: RequestError) -> None:
        body = refusal.body()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def middlewares() -> list[Any]:
    """What Ray Serve's proxy wraps its application in (see the module's docstring)."""
    from starlette.middleware import Middleware

    return [Middleware(BodyLimit)]
