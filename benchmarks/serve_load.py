"""The pieces of the serve load test that send load and watch the server (benchmarks/serve.py):
the server itself as an operator starts it, two load generators (the project's Python clients
and Debian's `hey`), one summary for what either recorded, and the server's CPU time.

Everything talks to 127.0.0.1 only. Both generators record the same thing per request, an
`Answer` (start, end, status), so one `summarize` turns either into a table row.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from rcr_deploy.benchmarks.stats import LatencyStats
from rcr_deploy.postprocess import encode_png

HOST = "127.0.0.1"  # never anything else: this sends load
#: hey's per-request timeout (its default, 20 s, is below the server's 30 s request timeout, so
#: hey would report its own timeouts where the server was about to answer 408).
HEY_TIMEOUT_S = 60
#: Where the proctitle of a Ray Serve replica starts (Ray names an actor's process
#: `ray::<actor class>`, and Serve's replica actors are `ServeReplica:<app>:<deployment>`).
REPLICA_TITLE = "ray::ServeReplica:"


class Answer(NamedTuple):
    """One request: when it was sent and answered (seconds, one clock per run) and its HTTP
    status, or the name of the error that ended it (no answer at all)."""

    start: float
    end: float
    status: int | str


# ---- test images


def make_image(rgb: np.ndarray, width: int, height: int) -> bytes:
    """`rgb` scaled to cover width x height and cropped at the centre, as PNG: every pixel is
    picture (no flat padding that would compress and decode faster than a photo), and the same
    bytes on every run (OpenCV's resize and PNG encoder are deterministic)."""
    h, w = rgb.shape[:2]
    scale = max(width / w, height / h)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    resized = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (size[1] - height) // 2, (size[0] - width) // 2
    return encode_png(np.ascontiguousarray(resized[top : top + height, left : left + width]))


def parse_size(text: str) -> tuple[int, int]:
    """'224' or '224x224' -> (224, 224); '640x480' -> (640, 480) as width x height."""
    w, _, h = text.lower().partition("x")
    return int(w), int(h or w)


def describe(body: bytes) -> dict[str, Any]:
    return {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


# ---- the server, as `rcr-deploy serve` runs it


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 30.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


class Server:
    """`rcr-deploy serve` in a subprocess with its own defaults (plus `args`), its output in a log
    file (a pipe nobody reads would stall it). A subprocess, not `app.start` in this process, so
    that its CPU time is its own process tree's (not the Python clients' or hey's) and so that
    it can be sent SIGTERM as Kubernetes would."""

    def __init__(self, port: int, log: Path, args: list[str], start_timeout_s: float = 300.0) -> None:
        self.port, self.log, self.url = port, log, f"http://{HOST}:{port}"
        cmd = [sys.executable, "-m", "rcr_deploy", "serve", "--host", HOST, "--port", str(port), *args]
        t0 = time.monotonic()
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        while "serving at" not in self.output():
            if self.proc.poll() is not None or time.monotonic() - t0 > start_timeout_s:
                self.stop()
                raise RuntimeError(f"the server did not start ({' '.join(cmd)}):\n{self.output()[-3000:]}")
            time.sleep(0.5)
        #: seconds from the command to "serving at": Ray, Serve and every replica's compilations
        self.start_s = time.monotonic() - t0
        self.model = get_json(f"{self.url}/v1/model")["model"]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stats(self) -> dict[str, Any]:
        """`GET /v1/stats` of the replica that answers (with one replica: the replica)."""
        return get_json(f"{self.url}/v1/stats")

    def stop(self) -> int | None:
        """Ctrl-C, as an operator stops it; killed if it has not exited within 90 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def mean_batch(before: dict[str, int], after: dict[str, int]) -> float | None:
    """Mean requests per model call between two `/v1/stats` batch-size counters."""
    calls = {int(k): n - before.get(k, 0) for k, n in after.items()}
    total = sum(calls.values())
    return sum(k * n for k, n in calls.items()) / total if total else None


# ---- the server's processes and their CPU time (Linux /proc)


def process_tree(root: int) -> dict[int, tuple[float, str]]:
    """pid -> (CPU seconds so far, command line) of `root` and every live process below it:
    the server's Ray services (GCS, raylet, agents), Serve's proxy and controller, the replicas."""
    tick = os.sysconf("SC_CLK_TCK")
    parents, info = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # the name in (...) may hold spaces
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # it exited meanwhile
            continue
        if fields[0] == "Z":  # a zombie's CPU time is already its parent's
            continue
        parents[int(entry)] = int(fields[1])
        info[int(entry)] = ((int(fields[11]) + int(fields[12])) / tick, cmdline)
    tree, grew = {root}, True
    while grew:
        added = {p for p, parent in parents.items() if parent in tree} - tree
        tree |= added
        grew = bool(added)
    return {p: info[p] for p in tree if p in info}


def tree_cpu_s(root: int) -> float:
    return sum(cpu for cpu, _ in process_tree(root).values())


def replica_pids(root: int) -> list[int]:
    """The server's replica processes, found by the name Ray gives an actor's process."""
    return sorted(p for p, (_, cmd) in process_tree(root).items() if cmd.startswith(REPLICA_TITLE))


# ---- the project's own load generator


class Clients:
    """`n` threads, one keep-alive connection each, POSTing `body` back to back until stopped.
    An answer of any status is recorded and the next request follows at once (as hey does); a
    request with no answer reconnects, after 50 ms so that a stopped server is not spun on."""

    def __init__(self, port: int, body: bytes, n: int, timeout_s: float = HEY_TIMEOUT_S) -> None:
        self.port, self.body, self.n, self.timeout_s = port, body, n, timeout_s
        self.answers: list[Answer] = []
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(n)]

    def _client(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout_s)
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                conn.request("POST", "/segment", self.body, {"Content-Type": "image/png"})
                r = conn.getresponse()
                r.read()
                status: int | str = r.status
            except (OSError, http.client.HTTPException) as e:
                status = type(e).__name__
                conn.close()
                time.sleep(0.05)
            with self._lock:
                self.answers.append(Answer(t0, time.monotonic(), status))
        conn.close()

    def start(self) -> Clients:
        self.started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def stop(self) -> list[Answer]:
        """Stop sending; requests in flight are waited for (up to their timeout)."""
        self._stop.set()
        for t in self._threads:
            t.join()
        self.stopped = time.monotonic()
        return self.snapshot()


def run_clients(port: int, body: bytes, n: int, warm_s: float, seconds: float) -> tuple[list[Answer], tuple[float, float]]:
    """The Python clients for `warm_s` + `seconds`; their answers, and the window after the
    warm-up (their times' clock) in which throughput and latency are read."""
    clients = Clients(port, body, n).start()
    time.sleep(warm_s + seconds)
    answers = clients.stop()
    return answers, (clients.started + warm_s, clients.started + warm_s + seconds)


# ---- Debian's hey, the outside load generator


def hey_version() -> str | None:
    """The installed hey's Debian package version, 'installed' without dpkg, None without hey."""
    if shutil.which("hey") is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "hey"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return "installed"


def hey_command(url: str, body_file: Path, clients: int, seconds: float) -> list[str]:
    return ["hey", "-z", f"{seconds:g}s", "-c", str(clients), "-m", "POST", "-T", "image/png", "-D", str(body_file),
            "-t", str(HEY_TIMEOUT_S), "-o", "csv", url]


def parse_hey_csv(text: str) -> list[Answer]:
    """hey's `-o csv` output -> one Answer per answered request, in seconds from hey's start.
    Its columns: response-time, DNS+dialup, DNS, Request-write, Response-delay, Response-read,
    status-code, offset (when the request was sent). Requests that got no answer (refused,
    reset, timed out) are not rows: hey counts them only in its summary."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or rows[0][:1] != ["response-time"] or "status-code" not in rows[0] or "offset" not in rows[0]:
        raise ValueError(f"not hey's CSV output: {text[:200]!r}")
    head = rows[0]
    rt, code, offset = head.index("response-time"), head.index("status-code"), head.index("offset")
    return [Answer(float(r[offset]), float(r[offset]) + float(r[rt]), int(r[code])) for r in rows[1:] if r]


def run_hey(url: str, body_file: Path, clients: int, warm_s: float, seconds: float) -> tuple[list[Answer], tuple[float, float]]:
    """hey for `warm_s` + `seconds` (-z: every worker sends until then and finishes the request it
    has in flight); its answers, and the window after the warm-up, in hey's clock. A duration
    rather than a request count, so that every worker is busy until the window ends, as the
    Python clients are; the price is that requests without an answer go uncounted (see above)."""
    cmd = hey_command(url, body_file, clients, warm_s + seconds)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=warm_s + seconds + HEY_TIMEOUT_S + 60)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr[-500:]}")
    return parse_hey_csv(out.stdout), (warm_s, warm_s + seconds)


# ---- one summary for both


def summarize(answers: list[Answer], window: tuple[float, float], origin: float = 0.0) -> dict[str, Any]:
    """Throughput: the 200s that ended within `window` (the steady state, without the ramp-up or
    the drain after sending stops), per second. Over the whole run: the latency percentiles of
    the 200s (so a request stuck past the window still counts), the shed requests (503) apart
    from the failures (any other status, or no answer), how fast the 503s came back, the slowest
    answer, and the 200s per second from `origin` (the generator's start): stalls show there."""
    t0, t1 = window
    ok = [a for a in answers if a.status == 200]
    steady = [a for a in ok if t0 <= a.end < t1]
    shed = [a for a in answers if a.status == 503]
    lat = LatencyStats.from_ns([int(1e9 * (a.end - a.start)) for a in ok], 1) if ok else None
    shed_ms = np.array([1000.0 * (a.end - a.start) for a in shed])
    return {
        "ok": len(ok),
        "shed_503": len(shed),
        "failed": dict(sorted(Counter(str(a.status) for a in answers if a.status not in (200, 503)).items())),
        "window_s": t1 - t0,
        "throughput_ips": len(steady) / (t1 - t0),
        "p50_ms": lat.p50_ms if lat else None,
        "p90_ms": lat.p90_ms if lat else None,
        "p99_ms": lat.p99_ms if lat else None,
        "shed_p50_ms": float(np.percentile(shed_ms, 50)) if shed else None,
        "shed_p99_ms": float(np.percentile(shed_ms, 99)) if shed else None,
        "max_ms": 1000.0 * max((a.end - a.start for a in answers), default=0.0),
        "ok_per_s": np.bincount([int(a.end - origin) for a in ok]).tolist() if ok else [],
    }
