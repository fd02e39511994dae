"""`rcr-deploy serve` under load, as an operator would measure it: the server with its defaults.

    python -m rcr_deploy.benchmarks.serve            # the recording: about 9 min on an idle 2-core machine
    python -m rcr_deploy.benchmarks.serve --quick    # a smoke run: short cells, 224x224 only; writes serve-<machine>-quick.*

The server is `rcr-deploy serve` in a subprocess with its own defaults (the default backend,
every batch size compiled at start, load shedding on), on 127.0.0.1. For each image size
(224x224, 640x480, 1920x1080, made from the built-in sample portrait) and each number of clients
(1, 4, 16, 64), the project's Python clients send for a warm-up and `--seconds`, then Debian's
`hey` for as long (where hey is installed). The 224x224 cells, on which issue 21's targets are
checked, run in `--rounds` interleaved rounds (client counts rotated each round); each target,
a ratio between cells, is checked on the median of its ratio within each round, so that the
machine's drift between rounds and one disturbed cell do not decide it. Each cell records throughput,
p50/p90/p99, 503s apart from failures, the server's CPU time per image and the mean batch. Then
an overload run (twice the requests the server holds and queues) checks that excess load is shed
with fast 503s, a replica is killed with 1 and with 2 replicas (serve_faults.py), and the server
gets SIGTERM under load. The bare baseline is the same per-request work in this process: decode,
letterbox, model, un-letterbox, encode. issue 21's targets are checked against the figures
(serve_report.py).

Results: benchmarks/results/serve-<machine>.json, .md and .png (with `--quick`: serve-<machine>-quick.*).
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from rcr_deploy.benchmarks.machine import RESULTS, _version, machine_info, machine_kind
from rcr_deploy.benchmarks.serve_faults import kill_run, sigterm_run
from rcr_deploy.benchmarks.serve_load import (
    Server, describe, free_port, hey_version, make_image, mean_batch, parse_size, run_clients, run_hey, summarize, tree_cpu_s,
)
from rcr_deploy.benchmarks.serve_report import CHECK_IMAGE, checks, combine_rounds, plot, to_markdown
from rcr_deploy.benchmarks.stats import LatencyStats
from rcr_deploy.data import SAMPLE_IMAGE
from rcr_deploy.fileio import write_text_atomic
from rcr_deploy.preprocess import load_image
from rcr_deploy.serve.protocol import capacity, decode_image, encode_result
from rcr_deploy.serve.cluster import threads_per_worker
from rcr_deploy.serve.service import Item, SegmentService

FULL = {"clients": "1,4,16,64", "images": "224x224,640x480,1920x1080", "seconds": 8.0, "kill_replicas": "1,2", "rounds": 3}
QUICK = {"clients": "4,64", "images": "224x224", "seconds": 2.0, "kill_replicas": "1", "rounds": 1}
FAULT_CLIENTS = 8  # the kill and SIGTERM runs' steady load (issue 21 saw all 8 in flight fail)


DEFAULT_KEYS = ("replicas", "max_batch", "batch_wait_ms", "max_queued", "request_timeout_s", "backend", "threads")


def serve_defaults() -> dict[str, Any]:
    """`rcr-deploy serve`'s defaults, read from `serve.app.start` (a test holds the command's
    options equal to them), so the report cannot drift from what the server ran."""
    from rcr_deploy.serve import app

    params = inspect.signature(app.start).parameters
    return {k: params[k].default for k in DEFAULT_KEYS}


def bare(model: str | None, backend: str, threads: int, max_batch: int, bodies: dict[str, bytes], seconds: float) -> list[dict[str, Any]]:
    """Each image's per-request work without Ray or HTTP, at batch 1 and at the max batch: the
    server's decode, `SegmentService.segment` (letterbox, model, un-letterbox; the replica's
    class, compiled for the same batch sizes) and the server's mask encoding."""
    torch.set_num_threads(threads)  # as each replica does
    service = SegmentService(model, backend=backend, threads=threads, max_batch=max_batch)
    rows = []
    try:
        for name, body in bodies.items():
            for batch in sorted({1, max_batch}):
                _bare_call(service, body, batch)  # first call: buffers of this size
                samples, end, cpu0 = [], time.monotonic() + seconds, time.process_time()
                while time.monotonic() < end or len(samples) < 3:
                    t0 = time.perf_counter_ns()
                    _bare_call(service, body, batch)
                    samples.append(time.perf_counter_ns() - t0)
                s = LatencyStats.from_ns(samples, batch)
                cpu_ms = 1000.0 * (time.process_time() - cpu0) / (batch * len(samples))
                rows.append({"image": name, "batch": batch, "iterations": s.iterations, "p50_ms": s.p50_ms,
                             "throughput_ips": s.throughput_ips, "cpu_ms_per_img": cpu_ms, "model": service.runner.name})
    finally:
        service.runner.close()
    return rows


def _bare_call(service: SegmentService, body: bytes, batch: int) -> None:
    """`batch` requests' work, as a replica does it for one model call of that size."""
    rgbs = [decode_image(body, "image/png") for _ in range(batch)]
    for rgb, prob in zip(rgbs, service.segment([Item(rgb) for rgb in rgbs])):
        encode_result(rgb, service.segmenter.alpha(prob), "mask", {})


def generator_cpu_s() -> tuple[float, float]:
    """CPU seconds so far of this process (the Python clients' threads) and of its finished
    children (each hey run): what the load generators take from the machine the server runs on."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time(), children.ru_utime + children.ru_stime


def cell(server: Server, image: str, body: bytes, body_file: Path, clients: int, warm_s: float, seconds: float,
         use_hey: bool) -> list[dict[str, Any]]:
    """One image and client count: the Python clients, then hey, each for `warm_s` + `seconds`.
    The server's CPU time and batch sizes are read over each generator's whole run."""
    rows = []
    for generator in ("python", "hey") if use_hey else ("python",):
        stats0, cpu0, gen0 = server.stats(), tree_cpu_s(server.proc.pid), generator_cpu_s()
        if generator == "python":
            answers, window = run_clients(server.port, body, clients, warm_s, seconds)
        else:
            answers, window = run_hey(f"{server.url}/segment", body_file, clients, warm_s, seconds)
        cpu, stats1 = tree_cpu_s(server.proc.pid) - cpu0, server.stats()
        gen = generator_cpu_s()
        gen_cpu = gen[0] - gen0[0] if generator == "python" else gen[1] - gen0[1]
        origin = window[0] - warm_s  # the generator's start
        row = {"image": image, "clients": clients, "generator": generator, **summarize(answers, window, origin)}
        row["server_cpu_ms_per_img"] = 1000.0 * cpu / row["ok"] if row["ok"] else None
        row["generator_cpu_ms_per_img"] = 1000.0 * gen_cpu / row["ok"] if row["ok"] else None
        row["mean_batch"] = mean_batch(stats0["batch_sizes"], stats1["batch_sizes"])
        row["compiles_since"] = stats1["compiles"]["since"] - stats0["compiles"]["since"]
        rows.append(row)
    return rows


def measure(args: argparse.Namespace) -> dict[str, Any]:
    began, created = time.monotonic(), datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_start = list(os.getloadavg())
    defaults = serve_defaults()
    backend = args.backend or defaults["backend"]
    threads = args.threads or threads_per_worker(defaults["threads"], defaults["replicas"])
    server_args = [*([args.model] if args.model else []), *(["--backend", args.backend] if args.backend else []),
                   *(["--threads", str(args.threads)] if args.threads else [])]
    sizes = [parse_size(s) for s in args.images.split(",")]
    source = load_image(SAMPLE_IMAGE)
    bodies = {f"{w}x{h}": make_image(source, w, h) for w, h in sizes}
    clients = [int(c) for c in args.clients.split(",")]
    kill_replicas = [int(r) for r in args.kill_replicas.split(",") if r]
    hey = hey_version() if args.hey else None
    overload = 2 * capacity(defaults["replicas"], defaults["max_batch"], defaults["max_queued"])
    fault_image = next(iter(bodies))
    warm_s = max(1.0, min(2.0, args.seconds / 4))  # not counted: connections, the first queue filling
    rounds = {name: args.rounds if name == CHECK_IMAGE else 1 for name in bodies}
    steps = len(bodies) + 1 + sum(rounds.values()) * len(clients) + 1 + len(kill_replicas) + args.sigterm
    result: dict[str, Any] = {"rows": [], "overload": [], "kill": [], "sigterm": None}
    cells: list[list[dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="rcr-serve-bench-") as tmp, tqdm(total=steps, desc="serve load test", unit="step") as bar:
        files = {}
        for name, body in bodies.items():
            files[name] = Path(tmp) / f"{name}.png"
            files[name].write_bytes(body)

        def step(what: str) -> None:
            bar.set_postfix_str(what)

        step("bare runs")
        result["bare"] = bare(args.model, backend, threads, defaults["max_batch"], bodies, min(args.seconds, 4.0))
        bar.update(len(bodies))
        step("starting the server")
        port = args.port or free_port()
        server = Server(port, Path(tmp) / "serve.log", server_args)
        try:
            bar.update()
            for name, body in bodies.items():
                run_clients(port, body, 4, 0.0, warm_s)  # first requests of a size: buffers, connections
                for r in range(rounds[name]):
                    for c in clients[r % len(clients):] + clients[:r % len(clients)]:
                        step(f"{name}, {c} clients" + (f", round {r + 1} of {rounds[name]}" if rounds[name] > 1 else ""))
                        cells.append(cell(server, name, body, files[name], c, warm_s, args.seconds, hey is not None))
                        bar.update()
            step(f"overload: {overload} clients")
            rows = cell(server, fault_image, bodies[fault_image], files[fault_image], overload, warm_s, args.seconds, hey is not None)
            result["overload"] = [{**r, "overload": True} for r in rows]
            bar.update()
            # The default server's runs first, its kill run then SIGTERM (which ends it); then any
            # other replica count on a server of its own: two server starts in all.
            started = {"model": server.model, "start_s": server.start_s}
            fault = (bodies[fault_image], FAULT_CLIENTS, max(3.0, args.seconds))
            if defaults["replicas"] in kill_replicas:
                step(f"kill: {defaults['replicas']} replica(s)")
                result["kill"].append(kill_run(server, *fault))
                bar.update()
            if args.sigterm:
                step("SIGTERM")
                result["sigterm"] = {**sigterm_run(server, *fault), "after_kill_run": defaults["replicas"] in kill_replicas}
                bar.update()
            for replicas in [r for r in kill_replicas if r != defaults["replicas"]]:
                step(f"kill: {replicas} replica(s)")
                server.stop()
                server = Server(port, Path(tmp) / f"serve-{replicas}.log", [*server_args, "--replicas", str(replicas)])
                result["kill"].append(kill_run(server, *fault))
                bar.update()
        finally:
            server.stop()
    result["cells"] = [row for rows in cells for row in rows]
    result["rows"] = combine_rounds(result["cells"])
    for r in result["rows"] + result["overload"]:
        ref = next(b for b in result["bare"] if b["image"] == r["image"] and b["batch"] == 1)
        r["served_vs_bare"] = r["throughput_ips"] / ref["throughput_ips"]
        r["cpu_bare_vs_server"] = ref["cpu_ms_per_img"] / r["server_cpu_ms_per_img"] if r["server_cpu_ms_per_img"] else None
    result.update(
        created=created, quick=args.quick, duration_s=time.monotonic() - began,
        command=shlex.join(["python", "-m", "rcr_deploy.benchmarks.serve", *sys.argv[1:]]),
        machine=machine_info(threads), load_average_start=load_start, load_average_end=list(os.getloadavg()),
        versions={"ray": _version("ray"), "openvino": _version("openvino"), "hey": hey if args.hey else "skipped (--no-hey)"},
        server={**defaults, "threads_per_replica": threads, "args": server_args, **started},
        images={k: describe(b) for k, b in bodies.items()},
        settings={"seconds": args.seconds, "warm_s": warm_s, "clients": clients, "rounds": rounds, "overload_clients": overload, "fault_clients": FAULT_CLIENTS,
                  "fault_image": fault_image, "host": "127.0.0.1"},
    )
    result["checks"] = checks(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK} unless given; writes serve-<machine>-quick.*")
    parser.add_argument("--clients", help=f"concurrent clients per cell (default {FULL['clients']})")
    parser.add_argument("--images", help=f"image sizes, WIDTHxHEIGHT (default {FULL['images']})")
    parser.add_argument("--seconds", type=float, help=f"seconds per cell and load generator (default {FULL['seconds']:g})")
    parser.add_argument("--rounds", type=int, help=f"interleaved rounds of the {CHECK_IMAGE} cells; the targets are checked on the "
                        f"median of each round's ratio (default {FULL['rounds']}; each round takes the client counts in another order)")
    parser.add_argument("--kill-replicas", help=f"replica counts of the kill runs ('' for none; default {FULL['kill_replicas']})")
    parser.add_argument("--no-sigterm", dest="sigterm", action="store_false", help="skip the SIGTERM run")
    parser.add_argument("--no-hey", dest="hey", action="store_false", help="the Python clients only, even where hey is installed")
    parser.add_argument("--model", default=None, help="passed to serve (default: its built-in model)")
    parser.add_argument("--backend", default=None, help="passed to serve (default: its default, the fastest installed)")
    parser.add_argument("--threads", type=int, default=None, help="passed to serve (default: its default, cores / replicas)")
    parser.add_argument("--port", type=int, default=0, help="the server's port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    result = measure(args)
    stem = args.out / f"serve-{machine_kind(result['machine'])}{'-quick' if args.quick else ''}"
    write_text_atomic(stem.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    write_text_atomic(stem.with_suffix(".md"), to_markdown(result))
    plot(result, stem.with_suffix(".png"))
    print(to_markdown(result))
    if result["versions"]["hey"] is None:
        print("hey is not installed: only the Python clients ran; apt-get install hey for the outside load generator")
    print(f"wrote {stem}.json, .md and .png")


if __name__ == "__main__":
    main()
