"""The Ray Serve application behind `rcr-deploy serve`.

One deployment, `Segment`, holds the model (any checkpoint, artifact or export folder) behind a
FastAPI ingress (its OpenAPI page at /docs) and serves

    POST /segment              image body -> PNG mask, RGBA cut-out PNG, or JSON with the mask in base64
    GET  /healthz, /readyz     liveness; readiness (the replica has loaded and compiled its model)
    GET  /v1/model             the model's manifest (its preprocessing, precision and validation)
    GET  /v1/stats             this replica's batch sizes, compilations, live video sessions and process id
    GET  /metrics              this replica's Prometheus metrics (`prometheus.py`)
    /v2/...                    the Open Inference Protocol on the model's tensors (`v2.py`)

Requests are decoded on the replica, queued by `@serve.batch` and run as one model call, so
concurrent clients share the model's batch dimension. Ray Serve routes, restarts dead replicas
and scales the same application from one laptop to a cluster.
"""

# No `from __future__ import annotations`: FastAPI reads the route methods' annotations (Request)
# at run time, and Serve's class-based views did not resolve them as strings (every POST got 422).
import asyncio
import ctypes
import logging
import os
import socket
import traceback
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.config import BackpressureConfig
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response

from rcr_deploy.errors import RcrError
from rcr_deploy.serve import v2
from rcr_deploy.serve.cluster import check_model, start_ray, threads_per_worker
from rcr_deploy.serve.protocol import (
    BATCH_HEADER, MAX_BODY_BYTES, MAX_MEGAPIXELS, MAX_QUEUED, MAX_SESSIONS, REPLICA_HEADER, REQUEST_TIMEOUT_S, RETRY_AFTER_S,
    SESSION_HEADER, SESSION_IDLE_S, V2_MODEL_NAME, RequestError, body_too_large, choose_output, decode_image, encode_result,
    error_body, replica_slots,
)
from rcr_deploy.serve.prometheus import MEDIA_TYPE as PROMETHEUS_MEDIA_TYPE
from rcr_deploy.serve.prometheus import ReplicaMetrics
from rcr_deploy.serve.proxy_limit import PROXY_CALLBACK
from rcr_deploy.serve.service import Item, SegmentService

APP_NAME = "rcr-deploy"
logger = logging.getLogger("ray.serve")
#: `serve --cors-origin`, set in each replica's process by its constructor (the ingress app is
#: frozen when this module is imported, before the command line is known).
CORS_ORIGINS: list[str] = []

api = FastAPI(
    title="rcr-deploy serve", version="1",
    description="RCRNet portrait segmentation: images in, masks out (docs/serving.md); the Open Inference Protocol under /v2.",
)


class ConfiguredCORS:
    """Starlette's CORSMiddleware with the replica's `--cors-origin` list; nothing without one."""

    def __init__(self, app: Any) -> None:
        self.app, self.cors = app, None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if not CORS_ORIGINS:
            return await self.app(scope, receive, send)
        if self.cors is None:
            self.cors = CORSMiddleware(self.app, allow_origins=CORS_ORIGINS, allow_methods=["GET", "POST"], allow_headers=["*"],
                                       expose_headers=[BATCH_HEADER, REPLICA_HEADER, v2.HEADER_LENGTH])
        await self.cors(scope, receive, send)


api.add_middleware(ConfiguredCORS)


@api.exception_handler(RequestError)
async def _refused(request: Request, e: RequestError) -> Response:
    if e.status == 413:
        release_heap()
    return Response(e.body(), status_code=e.status, media_type="application/json")


def release_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim; nothing elsewhere). After a
    refused upload the chunks it arrived in are free but stay in the heap: glibc raises its mmap
    threshold as large buffers are freed, so later ones land in the heap, and the replica kept
    up to ~100 MB more than before a refused 512 MiB upload."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@api.exception_handler(HTTPException)
async def _http_error(request: Request, e: HTTPException) -> Response:
    hint = {404: "; see /docs for the endpoints", 405: "; see /docs for each endpoint's method"}.get(e.status_code, "")
    return Response(error_body(f"{request.method} {request.url.path}: {e.detail}{hint}"), e.status_code, media_type="application/json")


@api.exception_handler(Exception)
async def _bug(request: Request, e: Exception) -> Response:  # our bug: one line to the client, the traceback to the log
    logger.error("rcr-deploy serve: %s", traceback.format_exc())
    return Response(error_body(f"internal error ({type(e).__name__}: {e}); see the server log"), 500, media_type="application/json")


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit`. Serve's proxy already
    stops a body at the limit (proxy_limit.py); this check holds behind any other ingress."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit, int(declared))
    # One growing buffer, not a list of chunks: past glibc's mmap threshold it is handed back to
    # the OS when a refused body is dropped, where many small chunks would stay in the heap.
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise body_too_large(limit)
        body += chunk
    return bytes(body)


@serve.deployment(
    # Scheduling is left to the OS: a 2-core laptop still runs 2 replicas beside Ray's own actors.
    ray_actor_options={"num_cpus": 0},
    # Frequent health checks let Serve notice and replace a dead replica within seconds.
    health_check_period_s=2.0,
    health_check_timeout_s=10.0,
    # A stopping replica checks every 0.2 s whether its requests are done (Serve's default: 2 s).
    graceful_shutdown_wait_loop_s=0.2,
)
@serve.ingress(api)
class Segment:
    """One replica: the model, its batch queue and its video sessions."""

    def __init__(
        self, model: str | None, max_batch: int, batch_wait_s: float, threads: int,
        session_idle_s: float = SESSION_IDLE_S, max_megapixels: float = MAX_MEGAPIXELS, backend: str = "auto",
        v2_name: str = V2_MODEL_NAME, cors_origins: list[str] | None = None, max_sessions: int = MAX_SESSIONS,
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        CORS_ORIGINS[:] = cors_origins or []
        self.service = SegmentService(model, session_idle_s, backend=backend, threads=threads, max_batch=max_batch, max_sessions=max_sessions)
        self.max_megapixels = max_megapixels
        self.v2_name = v2_name
        self.replica = serve.get_replica_context().replica_tag
        self.metrics = ReplicaMetrics(self.replica, self.service.buckets)
        self.run_batch.set_max_batch_size(max_batch)
        self.run_batch.set_batch_wait_timeout_s(batch_wait_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def run_batch(self, items: list[Item]) -> list[tuple[Any, int]]:
        # In a worker thread, so the event loop keeps decoding the next requests meanwhile.
        probs = await asyncio.to_thread(self.service.segment, items)
        self.metrics.batch(len(items))
        return [(p, len(items)) for p in probs]

    @api.get("/healthz", summary="Liveness: the replica answers")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.service.runner.name, "replica": self.replica}

    @api.get("/readyz", summary="Readiness: a replica has loaded and compiled its model (503 from the proxy until one has)")
    async def readyz(self) -> dict[str, Any]:
        return {"status": "ready", "model": self.service.runner.name, "replica": self.replica, "compiles": self.service.stats()["compiles"]}

    @api.get("/v1/model", summary="The model's manifest: preprocessing, precision, validation")
    async def model(self) -> dict[str, Any]:
        return self.service.manifest

    @api.get("/v1/stats", summary="This replica's batch sizes, compilations, sessions and process id")
    async def stats(self) -> dict[str, Any]:
        return {"replica": self.replica, "pid": os.getpid(), **self.service.stats()}

    @api.get("/metrics", summary="This replica's Prometheus metrics: requests, latency, batch sizes, in flight")
    async def prometheus(self) -> Response:
        return Response(self.metrics.text(), media_type=PROMETHEUS_MEDIA_TYPE)

    @api.post("/segment", summary="Segment one image (the body): a PNG mask, an RGBA cut-out, or JSON")
    async def segment(self, request: Request) -> Response:
        with self.metrics.track("segment"):
            return await self._segment(request)

    async def _segment(self, request: Request) -> Response:
        output = choose_output(request.query_params.get("output"), request.headers.get("accept"))
        session = request.headers.get(SESSION_HEADER) or None
        if session is not None and len(session) > 128:
            raise RequestError(400, f"{SESSION_HEADER} is {len(session)} characters; use at most 128")
        body = await read_body(request)
        rgb = await asyncio.to_thread(decode_image, body, request.headers.get("content-type"), self.max_megapixels)
        prob, batch = await self.run_batch(Item(rgb, session))
        alpha = self.service.segmenter.alpha(prob)
        extra = {"model": self.service.runner.name, "batch_size": batch, "replica": self.replica, "session": session}
        data, media = await asyncio.to_thread(encode_result, rgb, alpha, output, extra)
        return Response(data, media_type=media, headers={BATCH_HEADER: str(batch), REPLICA_HEADER: self.replica})

    # ---- the Open Inference Protocol (v2)

    @api.get("/v2/health/live", summary="v2: server live")
    async def v2_live(self) -> Response:
        return Response(status_code=200)

    @api.get("/v2/health/ready", summary="v2: server ready")
    async def v2_ready(self) -> Response:
        return Response(status_code=200)

    @api.get("/v2", summary="v2: server metadata")
    async def v2_server(self) -> dict[str, Any]:
        from rcr_deploy import __version__

        return {"name": "rcr-deploy", "version": __version__, "extensions": ["binary_tensor_data"]}

    @api.get("/v2/models/{name}", summary="v2: the model's tensors")
    async def v2_model(self, name: str) -> dict[str, Any]:
        self._v2_check(name)
        seg = self.service.segmenter
        return v2.model_metadata(self.v2_name, self.service.runner.name, self.service.manifest, seg.in_channels, seg.size)

    @api.get("/v2/models/{name}/ready", summary="v2: model ready")
    async def v2_model_ready(self, name: str) -> Response:
        self._v2_check(name)
        return Response(status_code=200)

    @api.post("/v2/models/{name}/infer", summary="v2: NCHW FP32 input -> logits (JSON or the binary-data extension)")
    async def v2_infer(self, name: str, request: Request) -> Response:
        with self.metrics.track("v2_infer"):
            return await self._v2_infer(name, request)

    async def _v2_infer(self, name: str, request: Request) -> Response:
        self._v2_check(name)
        body = await read_body(request)
        seg = self.service.segmenter
        input_name, output_name = v2.tensor_names(self.service.manifest)
        x, req = await asyncio.to_thread(v2.parse_infer, body, request.headers.get(v2.HEADER_LENGTH), input_name, (seg.in_channels, seg.size, seg.size))
        logits = await asyncio.to_thread(self.service.infer_tensor, x)
        data, headers = await asyncio.to_thread(v2.infer_response, self.v2_name, req, output_name, logits)
        return Response(data, media_type="application/octet-stream" if headers else "application/json", headers=headers)

    def _v2_check(self, name: str) -> None:
        if name != self.v2_name:
            raise RequestError(404, f"no model {name!r}; this server serves {self.v2_name!r}")


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
    max_queued: int = MAX_QUEUED, request_timeout_s: float = REQUEST_TIMEOUT_S, v2_name: str = V2_MODEL_NAME,
    cors_origins: list[str] | None = None, max_sessions: int = MAX_SESSIONS,
) -> str:
    """Check the model here, start Ray and Serve, deploy `replicas` replicas; returns the URL.

    The model is loaded once in this process first, so a bad path fails with one line before Ray
    starts. `threads` (default: the cores shared out among the replicas) is the model's per replica;
    `backend` as `runtime.load_runner`'s (each replica loads the model on it).

    Load shedding: each replica takes `replica_slots` requests at once (two batches and its share
    of `max_queued`); past that the HTTP proxy queues up to `max_queued` more and answers the rest
    at once with 503 and `Retry-After: 1`. A request not answered within `request_timeout_s` gets 408.
    `v2_name` is the model's name in the Open Inference Protocol; `cors_origins` the browser
    origins allowed to call it; `max_sessions` the video sessions each replica keeps."""
    if replicas < 1 or max_batch < 1 or batch_wait_ms < 0 or max_queued < 1 or request_timeout_s <= 0:
        raise RcrError("--replicas, --max-batch and --max-queued must be at least 1, --batch-wait-ms at least 0 and --request-timeout-s above 0")
    model_arg = check_model(model, backend=backend)
    check_port_free(host, port)
    # Read by every proxy process Ray starts from here on (proxy_limit.py); an operator's own
    # callback, if set, replaces it.
    os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", PROXY_CALLBACK)
    start_ray()
    quiet = {"log_level": "WARNING", "enable_access_log": False}
    logger.setLevel(logging.WARNING)  # the CLI prints its own progress and URL lines
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": request_timeout_s}, logging_config=quiet)
    threads = threads_per_worker(threads, replicas)
    app = Segment.options(
        num_replicas=replicas, max_ongoing_requests=replica_slots(max_batch, max_queued, replicas), max_queued_requests=max_queued,
        graceful_shutdown_timeout_s=request_timeout_s,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S),
    ).bind(
        model_arg, max_batch, batch_wait_ms / 1000.0, threads, session_idle_s, max_megapixels, backend,
        v2_name, list(cors_origins or []), max_sessions,
    )
    serve.run(app, name=APP_NAME, route_prefix="/", logging_config=quiet)
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def stop() -> None:
    """Drain, then shut Serve and this process's Ray down (nothing to do if Ray never started).

    The application is deleted first, while the HTTP proxy still runs: its replicas take no new
    requests and finish those in flight (up to the request timeout, Serve's graceful shutdown
    timeout) and the proxy delivers their answers. `serve.shutdown` alone stops the proxy with
    the replicas, and requests in flight were dropped."""
    import ray

    if ray.is_initialized():
        try:
            serve.delete(APP_NAME)
        finally:
            serve.shutdown()
            ray.shutdown()
