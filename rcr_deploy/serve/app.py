"""The Ray Serve application behind `rcr-deploy serve`.

One deployment, `Segment`, holds the model (any checkpoint, artifact or export folder) and serves

    POST /segment     image body -> PNG mask, RGBA cut-out PNG, or JSON with the mask in base64
    GET  /healthz     liveness, the model and the replica
    GET  /v1/model    the model's manifest (its preprocessing, precision and validation)
    GET  /v1/stats    this replica's batch sizes, live video sessions and process id

Requests are decoded on the replica, queued by `@serve.batch` and run as one model call, so
concurrent clients share the model's batch dimension. Ray Serve routes, restarts dead replicas
and scales the same application from one laptop to a cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import traceback
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.config import BackpressureConfig
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rcr_deploy.errors import RcrError
from rcr_deploy.serve.protocol import (
    BATCH_HEADER, MAX_BODY_BYTES, MAX_MEGAPIXELS, MAX_QUEUED, REPLICA_HEADER, REQUEST_TIMEOUT_S, RETRY_AFTER_S, SESSION_HEADER, SESSION_IDLE_S, RequestError,
    choose_output, decode_image, encode_result, error_body,
)
from rcr_deploy.serve.service import Item, SegmentService

APP_NAME = "rcr-deploy"
logger = logging.getLogger("ray.serve")


@serve.deployment(
    # Scheduling is left to the OS: a 2-core laptop still runs 2 replicas beside Ray's own actors.
    ray_actor_options={"num_cpus": 0},
    # Frequent health checks let Serve notice and replace a dead replica within seconds.
    health_check_period_s=2.0,
    health_check_timeout_s=10.0,
)
class Segment:
    """One replica: the model, its batch queue and its video sessions."""

    def __init__(
        self, model: str | None, max_batch: int, batch_wait_s: float, threads: int,
        session_idle_s: float = SESSION_IDLE_S, max_megapixels: float = MAX_MEGAPIXELS, backend: str = "auto",
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        self.service = SegmentService(model, session_idle_s, backend=backend, threads=threads, max_batch=max_batch)
        self.max_megapixels = max_megapixels
        self.replica = serve.get_replica_context().replica_tag
        self.run_batch.set_max_batch_size(max_batch)
        self.run_batch.set_batch_wait_timeout_s(batch_wait_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def run_batch(self, items: list[Item]) -> list[tuple[Any, int]]:
        # In a worker thread, so the event loop keeps decoding the next requests meanwhile.
        probs = await asyncio.to_thread(self.service.segment, items)
        return [(p, len(items)) for p in probs]

    async def __call__(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except RequestError as e:
            return Response(e.body(), status_code=e.status, media_type="application/json")
        except Exception as e:  # our bug: one line to the client, the traceback to the replica's log
            logger.error("rcr-deploy serve: %s", traceback.format_exc())
            return Response(error_body(f"internal error ({type(e).__name__}: {e}); see the server log"), 500, media_type="application/json")

    async def _route(self, request: Request) -> Response:
        path, method = request.url.path.rstrip("/") or "/", request.method
        routes = {"/segment": "POST", "/healthz": "GET", "/v1/model": "GET", "/v1/stats": "GET"}
        if path not in routes:
            raise RequestError(404, f"no endpoint {path}; use POST /segment, GET /healthz or GET /v1/model")
        if method != routes[path]:
            raise RequestError(405, f"{method} {path} is not served; use {routes[path]} {path}")
        if path == "/healthz":
            return JSONResponse({"status": "ok", "model": self.service.runner.name, "replica": self.replica})
        if path == "/v1/model":
            return JSONResponse(self.service.manifest)
        if path == "/v1/stats":
            return JSONResponse({"replica": self.replica, "pid": os.getpid(), **self.service.stats()})
        return await self._segment(request)

    async def _segment(self, request: Request) -> Response:
        output = choose_output(request.query_params.get("output"), request.headers.get("accept"))
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise RequestError(413, f"body of {int(declared) / 2**20:.0f} MiB is past the {MAX_BODY_BYTES // 2**20} MiB limit; send a smaller image")
        session = request.headers.get(SESSION_HEADER) or None
        if session is not None and len(session) > 128:
            raise RequestError(400, f"{SESSION_HEADER} is {len(session)} characters; use at most 128")
        body = await request.body()
        rgb = await asyncio.to_thread(decode_image, body, request.headers.get("content-type"), self.max_megapixels)
        prob, batch = await self.run_batch(Item(rgb, session))
        alpha = self.service.segmenter.alpha(prob)
        extra = {"model": self.service.runner.name, "batch_size": batch, "replica": self.replica, "session": session}
        data, media = await asyncio.to_thread(encode_result, rgb, alpha, output, extra)
        return Response(data, media_type=media, headers={BATCH_HEADER: str(batch), REPLICA_HEADER: self.replica})


def check_port_free(host: str, port: int) -> None:
    """Fail with a clear line before starting Ray when the address cannot be bound."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise RcrError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); pass another --port or stop what uses it") from e


def start(
    model: str | os.PathLike | None = None, replicas: int = 1, max_batch: int = 8, batch_wait_ms: float = 5.0,
    host: str = "127.0.0.1", port: int = 8000, threads: int | None = None,
    session_idle_s: float = SESSION_IDLE_S, max_megapixels: float = MAX_MEGAPIXELS, backend: str = "auto",
    max_queued: int = MAX_QUEUED, request_timeout_s: float = REQUEST_TIMEOUT_S,
) -> str:
    """Check the model here, start Ray and Serve, deploy `replicas` replicas; returns the URL.

    The model is loaded once in this process first, so a bad path fails with one line before Ray
    starts. `threads` (default: the cores shared out among the replicas) is the model's per replica;
    `backend` as `runtime.load_runner`'s (each replica loads the model on it).

    Load shedding: each replica holds at most two batches (one running, one filling); past that
    the HTTP proxy queues up to `max_queued` requests and answers the rest at once with 503 and
    `Retry-After: 1`. A request not answered within `request_timeout_s` gets 408."""
    from rcr_deploy.infer import Segmenter
    from rcr_deploy.runtime import load_runner

    if replicas < 1 or max_batch < 1 or batch_wait_ms < 0 or max_queued < 1 or request_timeout_s <= 0:
        raise RcrError("--replicas, --max-batch and --max-queued must be at least 1, --batch-wait-ms at least 0 and --request-timeout-s above 0")
    model_arg = None if model is None else str(Path(model).resolve())  # replicas may run elsewhere
    with load_runner(model_arg, backend=backend) as runner:
        Segmenter(runner)  # infer's checks of the artifact, so serve accepts the models infer and eval do
        runner.prepare()  # a first conversion happens once, here, not in every replica
    check_port_free(host, port)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a local server
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    quiet = {"log_level": "WARNING", "enable_access_log": False}
    logger.setLevel(logging.WARNING)  # the CLI prints its own progress and URL lines
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": request_timeout_s}, logging_config=quiet)
    threads = threads or max(1, (os.cpu_count() or 1) // replicas)
    app = Segment.options(
        num_replicas=replicas, max_ongoing_requests=2 * max_batch, max_queued_requests=max_queued,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S),
    ).bind(
        model_arg, max_batch, batch_wait_ms / 1000.0, threads, session_idle_s, max_megapixels, backend
    )
    serve.run(app, name=APP_NAME, route_prefix="/", logging_config=quiet)
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def stop() -> None:
    """Shut Serve and this process's Ray down (nothing to do if Ray never started)."""
    import ray

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()
