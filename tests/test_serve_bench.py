"""The serve load test's own logic (benchmarks/serve_load.py, serve_faults.py, serve_report.py):
hey's CSV read from a real hey run against a small local HTTP server, the summaries, the recovery
rule, the replica lookup by Ray's process name on real processes, and issue 21's checks on
hand-made results. The load test itself starts `rcr-deploy serve`; test_serve.py covers that."""

from __future__ import annotations

import http.server
import itertools
import os
import signal
import shutil
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from rcr_deploy.benchmarks.serve_faults import recovery_time
from rcr_deploy.benchmarks.serve_load import (
    Answer, make_image, mean_batch, parse_hey_csv, parse_size, replica_pids, run_hey, summarize,
)
from rcr_deploy.benchmarks.serve_report import checks, combine_rounds, to_markdown
from rcr_deploy.serve.protocol import decode_image


class _Shedding(http.server.BaseHTTPRequestHandler):
    """Answers 200, 503, 200, 503, ... and drops the connection of every 7th request unanswered."""

    protocol_version = "HTTP/1.1"
    count = itertools.count()
    answered: list[int] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        i = next(self.count)
        if i % 7 == 6:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        status = 503 if i % 2 else 200
        self.answered.append(status)
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.skipif(shutil.which("hey") is None, reason="Debian's hey is not installed (apt-get install hey)")
def test_hey_csv_from_a_real_run_has_every_answered_request(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Shedding)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    body = tmp_path / "body.png"
    body.write_bytes(b"\x89PNG not really")
    try:
        answers, window = run_hey(f"http://127.0.0.1:{server.server_address[1]}/segment", body, 2, 0.5, 0.5)
    finally:
        server.shutdown()
    assert window == (0.5, 1.0)
    # Every request the server answered is a row, with its status; the dropped ones are not rows.
    assert sorted(a.status for a in answers) == sorted(_Shedding.answered) and {200, 503} <= set(_Shedding.answered)
    assert next(_Shedding.count) > len(answers) + 1  # some were dropped
    assert all(0 <= a.start <= a.end for a in answers) and min(a.start for a in answers) < 0.1
    s = summarize(answers, window)
    assert s["ok"] + s["shed_503"] == len(answers) and s["failed"] == {}
    assert s["shed_p99_ms"] is not None and s["throughput_ips"] == sum(a.status == 200 and 0.5 <= a.end < 1.0 for a in answers) / 0.5


def test_hey_csv_parser_reads_columns_by_name_and_refuses_other_text():
    text = ("response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset\n"
            "0.0500,0.0004,0.0000,0.0001,0.0450,0.0001,200,0.0010\n"
            "0.0020,0.0000,0.0000,0.0000,0.0010,0.0001,503,0.0600\n")
    assert parse_hey_csv(text) == [Answer(0.001, pytest.approx(0.051), 200), Answer(0.06, pytest.approx(0.062), 503)]
    with pytest.raises(ValueError, match="not hey's CSV"):
        parse_hey_csv("Summary:\n  Total: 1.0 secs\n")


def test_summary_reads_the_window_and_keeps_503s_apart_from_failures():
    ramp = [Answer(0, 0.5, 200)] * 4  # before the window: in the latencies, not in the throughput
    steady = [Answer(1 + 0.1 * i, 1.1 + 0.1 * i, 200) for i in range(10)]  # 100 ms each, ending in [1.1, 2.0]
    answers = ramp + steady + [Answer(1, 1.005, 503)] * 3 + [Answer(1, 2, 500), Answer(1, 3.5, "ConnectionResetError")]
    s = summarize(answers, (1.0, 3.0))
    assert (s["ok"], s["shed_503"]) == (14, 3)
    assert s["failed"] == {"500": 1, "ConnectionResetError": 1}
    assert s["throughput_ips"] == 5.0 and s["p50_ms"] == pytest.approx(100.0) and s["p99_ms"] == pytest.approx(500.0)
    assert s["shed_p99_ms"] == pytest.approx(5.0) and s["max_ms"] == pytest.approx(2500.0)
    assert s["ok_per_s"] == [4, 9, 1]  # from the start: the ramp, then the steady ones by the second they ended in
    assert summarize([], (0.0, 1.0))["p99_ms"] is None


def test_recovery_is_the_first_window_back_at_the_old_rate():
    before = [Answer(t / 10, t / 10, 200) for t in range(100)]  # 10/s for 10 s; the kill at 10 s
    outage = [Answer(9.9, 10.5, 500)]
    after = [Answer(t / 10, t / 10, 200) for t in range(130, 200)]  # nothing until 13 s, then 10/s
    recovered = recovery_time(before + outage + after, since=10.0, before_ips=10.0)
    assert recovered == pytest.approx(3.0, abs=0.15)
    assert recovery_time(before + outage, since=10.0, before_ips=10.0) is None  # nothing answered yet


def test_replica_found_by_rays_process_name():
    # A real process named as Ray names a Serve replica's worker, below a parent (the "server").
    parent = subprocess.Popen(["bash", "-c", "(exec -a ray::ServeReplica:rcr-deploy:Segment sleep 30) & sleep 30; wait"])
    try:
        deadline = time.monotonic() + 10
        found: list[int] = []
        while not (found := replica_pids(parent.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(found) == 1 and found[0] != parent.pid
    finally:
        for pid in found:
            os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()
    assert replica_pids(parent.pid) == []


def test_test_images_are_deterministic_and_exactly_sized():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    for text in ("224", "640x480", "1920x1080"):
        w, h = parse_size(text)
        body = make_image(rgb, w, h)
        assert body == make_image(rgb, w, h)
        assert decode_image(body, "image/png").shape == (h, w, 3)


def test_mean_batch_is_per_model_call():
    assert mean_batch({"1": 2}, {"1": 4, "8": 2}) == pytest.approx((2 * 1 + 2 * 8) / 4)
    assert mean_batch({"1": 2}, {"1": 2}) is None


def _row(clients: int, ips: float, cpu: float, generator: str = "hey", **extra: object) -> dict:
    return {"image": "224x224", "clients": clients, "generator": generator, "ok": 100, "shed_503": 0, "failed": {},
            "throughput_ips": ips, "p50_ms": 10.0, "p90_ms": 20.0, "p99_ms": 30.0, "server_cpu_ms_per_img": cpu,
            "mean_batch": 2.0, "compiles_since": 0, "served_vs_bare": 0.9, "cpu_bare_vs_server": 0.8, "max_ms": 900.0,
            "shed_p99_ms": None, **extra}


def _result(rows: list[dict], overload: list[dict], sigterm: dict | None) -> dict:
    return {
        "rows": rows, "overload": overload, "sigterm": sigterm, "kill": [], "quick": True, "duration_s": 60.0,
        "created": "2025-01-01T00:00:00+00:00", "command": "python -m rcr_deploy.benchmarks.serve --quick",
        "machine": {"cpu": "test CPU", "cores": 2, "versions": {"python": "3.11"}},
        "versions": {"ray": "2", "openvino": "2026", "hey": None}, "load_average_start": [1.0], "load_average_end": [1.5],
        "server": {"model": "m", "replicas": 1, "max_batch": 8, "batch_wait_ms": 5.0, "threads_per_replica": 2, "max_queued": 64,
                   "request_timeout_s": 30.0, "start_s": 20.0, "args": []},
        "images": {"224x224": {"bytes": 90_000}}, "settings": {"seconds": 2.0, "warm_s": 1.0, "clients": [4, 64], "fault_image": "224x224"},
        "bare": [{"image": "224x224", "batch": 1, "iterations": 10, "throughput_ips": 30.0, "cpu_ms_per_img": 40.0}],
    }


def test_checks_follow_the_measured_figures():
    overload = _row(160, 20.0, 60.0, overload=True, shed_503=500, shed_p99_ms=40.0, max_ms=4000.0)
    term = {"in_flight": 8, "in_flight_ok": 8, "in_flight_statuses": {"200": 8}, "exit_code": 0, "exit_s": 3.0, "left_behind": 0,
            "after_term": {}, "clients": 8, "left_behind_names": []}
    good = _result([_row(1, 10.0, 50.0), _row(4, 30.0, 50.0), _row(64, 28.0, 55.0)], [overload], term)
    assert all(c["met"] for c in checks(good)), checks(good)
    assert "28.0 img/s; best 30.0 img/s at 4 clients; ratio 0.93" in [c["figures"] for c in checks(good)]
    bad = _result([_row(4, 30.0, 50.0), _row(64, 12.0, 85.0)], [{**overload, "shed_503": 0}], {**term, "in_flight_ok": 5})
    assert [c["met"] for c in checks(bad)] == [False, False, False, False, True]
    page = to_markdown({**bad, "checks": checks(bad)})
    assert page.count("**not met**") == 4 and "hey not installed" in page
    timed_out = _result([_row(4, 30.0, 50.0), _row(64, 28.0, 55.0)], [{**overload, "failed": {"408": 3}, "max_ms": 30_010.0}], term)
    assert [c["met"] for c in checks(timed_out)] == [True, True, False, True, True]
    missing = _result([_row(4, 30.0, 50.0)], [], None)
    assert [c["met"] for c in checks(missing)][:4] == [None, None, None, None]


def test_interleaved_rounds_become_one_row_of_medians_per_cell():
    """Rounds in rotated order: one row per cell in client order, medians where one disturbed
    round would otherwise decide a target, counts summed, the slowest answer kept."""
    rounds = [_row(4, 90.0, 20.0), _row(64, 60.0, 30.0, max_ms=2000.0), _row(64, 85.0, 21.0), _row(4, 88.0, 21.0),
              _row(4, 70.0, 26.0, generator="python"), _row(4, 91.0, 22.0), _row(64, 84.0, 22.0, failed={"500": 1})]
    rows = combine_rounds(rounds)
    assert [(r["clients"], r["generator"], r["rounds"]) for r in rows] == [(4, "python", 1), (4, "hey", 3), (64, "hey", 3)]
    four, sixty_four = rows[1], rows[2]
    assert four["throughput_ips"] == 90.0 and four["round_ips"] == [90.0, 88.0, 91.0] and four["server_cpu_ms_per_img"] == 21.0
    assert sixty_four["throughput_ips"] == 84.0 and sixty_four["server_cpu_ms_per_img"] == 22.0
    assert sixty_four["ok"] == 300 and sixty_four["failed"] == {"500": 1} and sixty_four["max_ms"] == 2000.0
    result = {**_result(rows, [], None), "settings": {**_result([], [], None)["settings"], "rounds": {"224x224": 3}}}
    met = {c["check"]: c["met"] for c in checks(result) if c["generator"] == "hey"}
    assert list(met.values())[:2] == [True, True]  # per round 0.67, 0.97, 0.92 and 1.5, 1.0, 1.0: round 1 alone fails both
    figures = [c["figures"] for c in checks(result) if c["generator"] == "hey"]
    assert "ratio 0.92, the median of each round's (0.67, 0.97, 0.92); of the cells' medians 0.93" in figures[0]
    page = to_markdown({**result, "checks": checks(result)})
    assert "| 90 / 88 / 91 |" in page and "3 interleaved rounds" in page


def test_the_load_tests_defaults_are_the_serve_commands():
    import inspect

    from rcr_deploy import cli
    from rcr_deploy.benchmarks.serve import DEFAULT_KEYS, serve_defaults

    options = inspect.signature(cli.serve).parameters
    assert serve_defaults() == {k: getattr(options[k].default, "default", options[k].default) for k in DEFAULT_KEYS}
