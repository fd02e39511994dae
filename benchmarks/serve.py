"""How much of the model's own throughput survives serving? `rcr-deploy serve` under load on localhost.

    python -m rcr_deploy.benchmarks.serve [--model M] [--requests 200] [--seconds 15] [--concurrency 1,4,16]
                                          [--configs 1x1,1x8,2x1,2x8]

Each config (REPLICASxMAX_BATCH; max batch 1 = batching off) gets a fresh server on 127.0.0.1.
At each concurrency, that many client threads (one keep-alive connection each) POST the built-in
sample portrait (320x240 PNG) until `--requests` have been sent or `--seconds` have passed, and
latency (send to last byte), throughput, errors and the batch sizes the replicas report are
recorded, with the CPU time the server's processes spent per image. Just before each config's
server starts, the bare runner is timed at that config's max batch, with the replicas' torch
threads, on the same image preprocessed, so "served / bare" compares like with like. On a busy
machine wall-clock ratios swing with the other work; the CPU-time ratio holds. The client
threads run on the same machine as the server and take their share of its cores.

Results: benchmarks/results/serve-<machine>.json, .md and .png. Traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rcr_deploy.benchmarks.machine import RESULTS, machine_info, machine_kind
from rcr_deploy.benchmarks.stats import LatencyStats
from rcr_deploy.fileio import atomic_path, write_text_atomic
from rcr_deploy.data import SAMPLE_IMAGE
from rcr_deploy.infer import Segmenter
from rcr_deploy.preprocess import load_image
from rcr_deploy.runtime import load_runner
from rcr_deploy.serve.protocol import BATCH_HEADER

HOST = "127.0.0.1"  # never anything else: this sends load


def server_cpu_s() -> float:
    """CPU seconds (user + system) used so far by every live process this one started: Ray's
    services, Serve's proxy and controller, the replicas (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # the name in (...) may hold spaces
        except OSError:  # it exited meanwhile
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, grew = {os.getpid()}, True
    while grew:
        added = {p for p, parent in parents.items() if parent in tree} - tree
        tree |= added
        grew = bool(added)
    return sum(cpu[p] for p in tree - {os.getpid()})


def load(port: int, body: bytes, concurrency: int, requests: int, seconds: float) -> dict[str, Any]:
    """`concurrency` threads send `body` until `requests` are sent or `seconds` pass."""
    lock = threading.Lock()
    sent = [0]
    latencies: list[int] = []
    batches: list[int] = []
    errors: dict[str, int] = {}
    deadline = time.monotonic() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        while time.monotonic() < deadline:
            with lock:
                if sent[0] >= requests:
                    break
                sent[0] += 1
            t0 = time.perf_counter_ns()
            try:
                conn.request("POST", "/segment", body, {"Content-Type": "image/png"})
                r = conn.getresponse()
                r.read()
                ok, why, batch = r.status == 200, f"HTTP {r.status}", r.getheader(BATCH_HEADER)
            except (OSError, http.client.HTTPException) as e:
                ok, why, batch = False, type(e).__name__, None
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=60)
            dt = time.perf_counter_ns() - t0
            with lock:
                if ok:
                    latencies.append(dt)
                    batches.append(int(batch or 1))
                else:
                    errors[why] = errors.get(why, 0) + 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    cpu0, start = server_cpu_s(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - start, server_cpu_s() - cpu0
    stats = LatencyStats.from_ns(latencies, 1) if latencies else None
    return {
        "concurrency": concurrency,
        "ok": len(latencies),
        "errors": errors,
        "wall_s": wall,
        "throughput_ips": len(latencies) / wall,
        "p50_ms": stats.p50_ms if stats else None,
        "p90_ms": stats.p90_ms if stats else None,
        "p99_ms": stats.p99_ms if stats else None,
        "mean_batch": float(np.mean(batches)) if batches else None,
        "server_cpu_ms_per_img": 1000.0 * cpu / len(latencies) if latencies else None,
    }


def bare(model: str | None, batch: int, threads: int, seconds: float) -> dict[str, Any]:
    """The runner alone on the preprocessed sample: images/s at one batch size."""
    torch.set_num_threads(threads)
    segmenter = Segmenter(load_runner(model))
    resized, box = segmenter.letterbox(load_image(SAMPLE_IMAGE))
    x = segmenter.model_input(resized, box, None)
    xb = np.repeat(x, batch, axis=0)
    for _ in range(3):
        segmenter.runner.infer(xb)
    samples, end, cpu0 = [], time.monotonic() + seconds, time.process_time()
    while time.monotonic() < end or len(samples) < 5:
        t0 = time.perf_counter_ns()
        segmenter.runner.infer(xb)
        samples.append(time.perf_counter_ns() - t0)
    cpu_ms = 1000.0 * (time.process_time() - cpu0) / (batch * len(samples))
    s = LatencyStats.from_ns(samples, batch)
    return {"batch": batch, "iterations": s.iterations, "p50_ms": s.p50_ms, "throughput_ips": float(s.throughput_ips), "cpu_ms_per_img": cpu_ms}


def measure(
    model: str | None, configs: list[tuple[int, int]], concurrency: list[int], requests: int, seconds: float, port: int, threads: int
) -> dict[str, Any]:
    from rcr_deploy.serve import app

    body = SAMPLE_IMAGE.read_bytes()
    load_start = list(os.getloadavg())
    rows = []
    with tqdm(total=len(configs) * len(concurrency), desc="serve load test", unit="cell") as bar:
        for replicas, max_batch in configs:
            # Timed just before each server, so drift on a shared machine hits both alike.
            reference = bare(model, max_batch, threads, min(seconds, 5.0))
            app.start(model, replicas=replicas, max_batch=max_batch, port=port, threads=threads)
            try:
                load(port, body, 2 * replicas, 4 * replicas, 30.0)  # warm every replica
                for c in concurrency:
                    cell = load(port, body, c, requests, seconds)
                    cell.update(replicas=replicas, max_batch=max_batch, threads_per_replica=threads)
                    cell["bare"] = reference
                    cell["served_vs_bare"] = cell["throughput_ips"] / reference["throughput_ips"]
                    cell["cpu_efficiency"] = reference["cpu_ms_per_img"] / cell["server_cpu_ms_per_img"] if cell["ok"] else None
                    rows.append(cell)
                    bar.update()
            finally:
                app.stop()
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(threads),
        "load_average_start": load_start,
        "load_average_end": list(os.getloadavg()),
        "versions": {"ray": _version("ray")},
        "model": load_runner(model).name,
        "image": {"file": SAMPLE_IMAGE.name, "size": list(load_image(SAMPLE_IMAGE).shape[:2]), "bytes": len(body)},
        "settings": {"requests": requests, "seconds": seconds, "batch_wait_ms": 5.0, "concurrency": concurrency, "host": HOST},
        "rows": rows,
        "command": "python -m rcr_deploy.benchmarks.serve",
    }


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def to_markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    load_1m = result["load_average_end"][0]
    lines = [
        f"# rcr-deploy serve under load ({m['cpu']}, {m['cores']} cores)",
        "",
        f"{result['created']}; model `{result['model']}`; Ray {result['versions']['ray']}, torch {m['versions'].get('torch')}; "
        f"image {result['image']['file']} ({result['image']['size'][1]}x{result['image']['size'][0]}, {result['image']['bytes']} B PNG); "
        f"each cell: up to {s['requests']} requests or {s['seconds']:g} s; batch wait {s['batch_wait_ms']:g} ms; "
        f"client threads on the same machine.",
        "",
        f"**The machine was loaded**: 1-minute load average {result['load_average_start'][0]:.1f} at the start and {load_1m:.1f} at the end "
        f"on {m['cores']} cores (shared with a training job and other work). Absolute figures are low and noisy; "
        "the ratios within this run mean more. Regenerate with `python -m rcr_deploy.benchmarks.serve`.",
        "",
        f"Each replica and the bare runner use {m['threads']} torch thread(s). The bare runner is timed on the preprocessed "
        "image at the config's max batch just before that config's server starts.",
        "",
        "| replicas | max batch | concurrency | ok | errors | img/s | p50 ms | p90 ms | p99 ms | mean batch | bare img/s | served / bare "
        "| server CPU ms/img | bare CPU ms/img | CPU: bare / server |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        errors = sum(r["errors"].values())
        lat = [f"{r[k]:.0f}" if r[k] is not None else "-" for k in ("p50_ms", "p90_ms", "p99_ms")]
        lines.append(
            f"| {r['replicas']} | {r['max_batch']} | {r['concurrency']} | {r['ok']} | {errors} | {r['throughput_ips']:.1f} | "
            + " | ".join(lat) + f" | {r['mean_batch'] or 0:.1f} | {r['bare']['throughput_ips']:.1f} | {r['served_vs_bare']:.0%} "
            f"| {r['server_cpu_ms_per_img'] or 0:.1f} | {r['bare']['cpu_ms_per_img']:.1f} | {r['cpu_efficiency'] or 0:.0%} |"
        )
    lines += ["", "served / bare: served images/s over the bare runner's images/s at the config's max batch "
              "(the bare runner does no decoding, letterboxing, PNG encoding or HTTP). Server CPU ms/img: CPU time "
              "of every server process (Ray, proxy, controller, replicas; not the client threads) per answered image; "
              "CPU: bare / server is the share of the server's CPU time that the model itself needs. CPU time depends "
              "less than wall time on what else the machine runs, but still moves with it (shared caches, memory "
              f"bandwidth): the bare runner's CPU ms/img ranged over {_spread(result)} in this run."]
    if min(result["load_average_start"][0], load_1m) > m["cores"]:
        lines += ["", "With more runnable processes than cores, the kernel shares CPU time per process: the server "
                  "(proxy, replicas, client threads) gets a larger share of the machine than the one-process bare runner, "
                  "so served / bare above 100 % reflects that share, not a real gain. On an idle machine the ratio is the "
                  "serving overhead."]
    lines.append("")
    return "\n".join(lines)


def _spread(result: dict[str, Any]) -> str:
    """The range of the bare runner's CPU ms/img at each batch size, e.g. '16.0-25.9 at batch 1'."""
    parts = []
    for batch in sorted({r["bare"]["batch"] for r in result["rows"]}):
        cpu = [r["bare"]["cpu_ms_per_img"] for r in result["rows"] if r["bare"]["batch"] == batch]
        parts.append(f"{min(cpu):.1f}-{max(cpu):.1f} at batch {batch}")
    return ", ".join(parts)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    configs = sorted({(r["replicas"], r["max_batch"]) for r in result["rows"]})
    for replicas, max_batch in configs:
        rows = [r for r in result["rows"] if (r["replicas"], r["max_batch"]) == (replicas, max_batch)]
        label = f"{replicas} replica{'s' if replicas > 1 else ''}, max batch {max_batch}"
        ax1.plot([r["concurrency"] for r in rows], [r["throughput_ips"] for r in rows], "o-", label=label)
        ax2.plot([r["concurrency"] for r in rows], [r["p99_ms"] or np.nan for r in rows], "o-", label=label)
    for batch in sorted({r["bare"]["batch"] for r in result["rows"]}):
        ips = float(np.mean([r["bare"]["throughput_ips"] for r in result["rows"] if r["bare"]["batch"] == batch]))
        ax1.axhline(ips, ls="--", lw=0.8, color="grey")
        ax1.annotate(f"bare runner, batch {batch} (mean of its timings)", (1, ips), fontsize=7, color="grey", va="bottom")
    for ax, title in ((ax1, "throughput (images/s)"), (ax2, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(result["settings"]["concurrency"], [str(c) for c in result["settings"]["concurrency"]])
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    fig.suptitle(f"rcr-deploy serve, {result['machine']['cores']} cores (loaded, see the .md)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint, artifact or export folder; default: the built-in model")
    parser.add_argument("--requests", type=int, default=200, help="most requests per cell")
    parser.add_argument("--seconds", type=float, default=15.0, help="most seconds per cell")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--configs", default="1x1,1x8,2x1,2x8", help="REPLICASxMAX_BATCH, comma-separated")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the bare runner and of each replica (1: OpenMP spin-waits cost 10x on a loaded machine)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    result = measure(args.model, configs, concurrency, args.requests, args.seconds, args.port, args.threads)
    stem = args.out / f"serve-{machine_kind(result['machine'])}"
    write_text_atomic(stem.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    write_text_atomic(stem.with_suffix(".md"), to_markdown(result))
    plot(result, stem.with_suffix(".png"))
    print(to_markdown(result))
    print(f"wrote {stem}.json, .md and .png")


if __name__ == "__main__":
    main()
