"""The serve load test's fault runs (benchmarks/serve.py): a replica killed under steady load,
and the whole server sent SIGTERM under load, as a Kubernetes rollout does.

What an operator wants from them: how many requests fail when a replica dies, how long until
the server answers at its old rate again, and whether a rollout loses the requests in flight.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from typing import Any

from rcr_deploy.benchmarks.serve_load import REPLICA_TITLE, Answer, Clients, Server, process_tree, replica_pids

#: Recovery: the first window of this many seconds after the kill in which requests are answered
#: at RECOVERED x the rate before it. A window, not one answer, because queued requests come back
#: in a burst the moment a replica is up; the fraction because a loaded machine's rate swings.
WINDOW_S = 2.0
RECOVERED = 0.8
#: The first seconds of load are not part of the rate before the kill (connections, warm caches).
WARM_S = 2.0


def statuses(answers: list[Answer]) -> dict[str, int]:
    return dict(sorted(Counter(str(a.status) for a in answers).items()))


def rate(answers: list[Answer], start: float, end: float) -> float:
    """Answered (200) requests per second that ended within [start, end)."""
    return sum(a.status == 200 and start <= a.end < end for a in answers) / (end - start) if end > start else 0.0


def recovery_time(answers: list[Answer], since: float, before_ips: float, window_s: float = WINDOW_S,
                  fraction: float = RECOVERED, step_s: float = 0.1) -> float | None:
    """Seconds from `since` (the kill) to the first 200 of the first `window_s` window whose rate
    of 200s is at least `fraction` x `before_ips`; None if no complete window observed so far is.
    (The first 200, not the window's start: a window can reach the fraction with its first part empty.)"""
    last = max((a.end for a in answers), default=since)
    t = since
    while t + window_s <= last:
        ok = [a.end for a in answers if a.status == 200 and t <= a.end < t + window_s]
        if ok and len(ok) / window_s >= fraction * before_ips:
            return min(ok) - since
        t += step_s
    return None


def kill_run(server: Server, body: bytes, clients: int, settle_s: float, cap_s: float = 90.0) -> dict[str, Any]:
    """`clients` Python clients send `body` for `settle_s`; then one replica's process (found by
    its Ray process name) is killed with SIGKILL, and the load goes on until the server answers at
    the old rate again, a new replica process is up, and two more windows have passed (at most
    `cap_s`). Failed requests are told apart: in flight at the kill, or sent after it."""
    root = server.proc.pid
    load = Clients(server.port, body, clients).start()
    time.sleep(settle_s)
    before = replica_pids(root)
    if not before:
        load.stop()
        raise RuntimeError(f"no process named {REPLICA_TITLE}... under the server (pid {root})")
    victim = before[0]
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    before_ips = rate(load.snapshot(), load.started + min(WARM_S, settle_s / 2), killed)
    replaced_s = recovered = None
    while time.monotonic() - killed < cap_s:
        time.sleep(0.25)
        now = time.monotonic()
        if replaced_s is None and set(replica_pids(root)) - set(before):
            replaced_s = now - killed
        recovered = recovery_time(load.snapshot(), killed, before_ips)
        if recovered is not None and replaced_s is not None and now - killed >= recovered + 2 * WINDOW_S:
            break
    answers = load.stop()
    recovered = recovery_time(answers, killed, before_ips)
    in_flight = [a for a in answers if a.start < killed <= a.end]
    after = [a for a in answers if a.start >= killed]
    failed = [a for a in in_flight + after if a.status not in (200, 503)]
    first_ok = min((a.end - killed for a in after if a.status == 200), default=None)
    return {
        "replicas": len(before), "clients": clients, "killed_pid": victim, "rate_before_ips": before_ips,
        "in_flight": statuses(in_flight), "after_kill": statuses(after), "failed": len(failed),
        "shed_503": sum(a.status == 503 for a in in_flight + after),
        "first_answer_s": first_ok, "new_replica_process_s": replaced_s, "recovered_s": recovered,
        "observed_s": load.stopped - killed,
        "rule": f"first {WINDOW_S:g} s window after the kill answered at >= {RECOVERED:.0%} of the rate before it",
    }


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def sigterm_run(server: Server, body: bytes, clients: int, settle_s: float, drain_cap_s: float = 120.0) -> dict[str, Any]:
    """`clients` Python clients send `body` for `settle_s`; then the server's process gets SIGTERM.
    Counts the requests in flight at that moment that were answered (200) and those that failed,
    what requests sent afterwards got, how long the server took to exit and with what code, and
    the server's processes (Ray's included) still alive 5 s after it exited."""
    root = server.proc.pid
    load = Clients(server.port, body, clients).start()
    time.sleep(settle_s)
    children = set(process_tree(root)) - {root}
    term = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = server.proc.wait(timeout=drain_cap_s)
    except subprocess.TimeoutExpired:
        code = None
        server.proc.kill()
        server.proc.wait()
    exit_s = time.monotonic() - term
    answers = load.stop()
    deadline = time.monotonic() + 5.0
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = sorted(p for p in children if _alive(p))
    in_flight = [a for a in answers if a.start < term <= a.end]
    return {
        "clients": clients, "in_flight": len(in_flight), "in_flight_ok": sum(a.status == 200 for a in in_flight),
        "in_flight_statuses": statuses(in_flight), "after_term": statuses([a for a in answers if a.start >= term]),
        "exit_code": code, "exit_s": exit_s, "left_behind": len(left),
        "left_behind_names": sorted({process_tree(p).get(p, (0, "?"))[1][:60] for p in left}),
    }
