"""The serve load test's report (benchmarks/serve.py): issue 21's targets checked against the
figures just measured, the Markdown page and the plot. Pure functions of the result dict, so the
checks are tested without a server (tests/test_serve_bench.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rcr_deploy.fileio import atomic_path

#: The targets (issue 21, "Done when"): at CHECK_IMAGE with the server's defaults, throughput at
#: CHECK_CLIENTS >= THROUGHPUT_FLOOR x the best cell's, and CPU per image there <= CPU_CEILING x
#: that at REF_CLIENTS; excess load gets 503s, each within SHED_FAST_MS.
CHECK_IMAGE, CHECK_CLIENTS, REF_CLIENTS = "224x224", 64, 4
THROUGHPUT_FLOOR, CPU_CEILING, SHED_FAST_MS = 0.9, 1.2, 1000.0
GENERATORS = ("hey", "python")  # the outside one first: it is what an operator would measure with


def combine_rounds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per image, client count and generator from cells measured in several interleaved
    rounds: medians of the rates, CPU, batch and latency figures (so one disturbed round does not
    decide a target), the counts summed, the slowest answer of any round, each round's img/s and
    server CPU ms/img kept. Ordered by image (as first measured), then clients, then generator."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["image"], r["clients"], r["generator"]), []).append(r)
    images = list(dict.fromkeys(r["image"] for r in rows))
    out = []
    for key in sorted(groups, key=lambda k: (images.index(k[0]), k[1], GENERATORS[::-1].index(k[2]) if k[2] in GENERATORS else 9)):
        cells = groups[key]
        row = dict(cells[len(cells) // 2])  # the rest of its fields (per-second answers) from one round
        for field in MEDIAN_FIELDS:
            values = [c[field] for c in cells if c.get(field) is not None]
            row[field] = float(np.median(values)) if values else None
        for field in ("ok", "shed_503", "compiles_since"):
            row[field] = sum(c.get(field) or 0 for c in cells)
        row["failed"] = {k: sum(c["failed"].get(k, 0) for c in cells) for k in sorted({k for c in cells for k in c["failed"]})}
        row["max_ms"] = max(c["max_ms"] for c in cells)
        row["rounds"] = len(cells)
        row["round_ips"] = [c["throughput_ips"] for c in cells]
        row["round_cpu_ms"] = [c["server_cpu_ms_per_img"] for c in cells]
        out.append(row)
    return out


#: What `combine_rounds` takes the median of.
MEDIAN_FIELDS = ("throughput_ips", "server_cpu_ms_per_img", "generator_cpu_ms_per_img", "mean_batch", "p50_ms", "p90_ms", "p99_ms", "shed_p50_ms", "shed_p99_ms")


def _check(name: str, generator: str | None, met: bool | None, figures: str) -> dict[str, Any]:
    return {"check": name, "generator": generator, "met": met, "figures": figures}


def _cells(result: dict[str, Any], generator: str) -> dict[int, dict[str, Any]]:
    return {r["clients"]: r for r in result["rows"] if r["image"] == CHECK_IMAGE and r["generator"] == generator}


def checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target met (True), not met (False) or not measured (None), with the figures behind it."""
    out = []
    timeout_ms = 1000.0 * result["server"]["request_timeout_s"]
    for g in [g for g in GENERATORS if any(r["generator"] == g for r in result["rows"] + result["overload"])]:
        cells = _cells(result, g)
        name = f"{CHECK_CLIENTS} clients, {CHECK_IMAGE}: throughput >= {THROUGHPUT_FLOOR:g} x the best cell"
        if CHECK_CLIENTS in cells:
            best = max(cells.values(), key=lambda r: r["throughput_ips"])
            rounds = [ips[CHECK_CLIENTS] / max(ips.values()) if max(ips.values()) else 0.0 for ips in _by_rounds(cells, "round_ips")]
            ratio, of_rounds = _median_ratio(rounds, cells[CHECK_CLIENTS]["throughput_ips"] / best["throughput_ips"] if best["throughput_ips"] else 0.0)
            out.append(_check(name, g, ratio >= THROUGHPUT_FLOOR, f"{cells[CHECK_CLIENTS]['throughput_ips']:.1f} img/s; best "
                              f"{best['throughput_ips']:.1f} img/s at {best['clients']} clients; ratio {ratio:.2f}{of_rounds}"))
        else:
            out.append(_check(name, g, None, f"no {CHECK_CLIENTS}-client cell at {CHECK_IMAGE}"))
        name = f"{CHECK_CLIENTS} clients, {CHECK_IMAGE}: server CPU per image <= {CPU_CEILING:g} x that at {REF_CLIENTS} clients"
        cpu = {c: cells[c]["server_cpu_ms_per_img"] for c in (CHECK_CLIENTS, REF_CLIENTS) if c in cells}
        if len(cpu) == 2 and None not in cpu.values():
            paired = {c: cells[c] for c in cpu}
            rounds = [ms[CHECK_CLIENTS] / ms[REF_CLIENTS] for ms in _by_rounds(paired, "round_cpu_ms") if None not in ms.values()]
            ratio, of_rounds = _median_ratio(rounds, cpu[CHECK_CLIENTS] / cpu[REF_CLIENTS])
            out.append(_check(name, g, ratio <= CPU_CEILING, f"{cpu[CHECK_CLIENTS]:.1f} vs {cpu[REF_CLIENTS]:.1f} ms; ratio {ratio:.2f}{of_rounds}"))
        else:
            out.append(_check(name, g, None, f"no {CHECK_CLIENTS}- and {REF_CLIENTS}-client cells with answers at {CHECK_IMAGE}"))
        name = f"excess load gets 503 within {SHED_FAST_MS:g} ms (p99); none fails or waits out the {timeout_ms / 1000:g} s request timeout"
        over = [r for r in result["overload"] if r["generator"] == g]
        if over:
            r = over[0]
            met = r["shed_503"] > 0 and r["shed_p99_ms"] <= SHED_FAST_MS and not r["failed"] and r["max_ms"] < timeout_ms
            shed = f"p99 {r['shed_p99_ms']:.0f} ms" if r["shed_503"] else "none"
            out.append(_check(name, g, met, f"{r['clients']} clients: {r['shed_503']} x 503 ({shed}), {r['ok']} x 200, "
                              f"{sum(r['failed'].values())} failed; slowest answer {r['max_ms'] / 1000:.1f} s"))
        else:
            out.append(_check(name, g, None, "no overload run"))
    term = result.get("sigterm")
    name = "SIGTERM under load: every request in flight answered 200"
    if term:
        out.append(_check(name, "python", term["in_flight"] > 0 and term["in_flight_ok"] == term["in_flight"],
                          f"{term['in_flight_ok']} of {term['in_flight']} answered ({term['in_flight_statuses']}); exit code "
                          f"{term['exit_code']} after {term['exit_s']:.1f} s; {term['left_behind']} server processes left"))
    else:
        out.append(_check(name, None, None, "no SIGTERM run"))
    compiles = [r["compiles_since"] for r in result["rows"] + result["overload"] if r.get("compiles_since") is not None]
    out.append(_check("no compilation after warm-up", None, (sum(compiles) == 0) if compiles else None,
                      f"{sum(compiles)} compilations during the cells" if compiles else "not read"))
    return out


def _by_rounds(cells: dict[int, dict[str, Any]], field: str) -> list[dict[int, float]]:
    """Per interleaved round, each client count's figure (`round_ips` or `round_cpu_ms`); none
    unless every cell ran the same rounds."""
    counts = {len(r.get(field) or ()) for r in cells.values()}
    if len(counts) != 1 or (n := counts.pop()) < 2:
        return []
    return [{c: r[field][i] for c, r in cells.items()} for i in range(n)]


def _median_ratio(rounds: list[float], of_medians: float) -> tuple[float, str]:
    """The ratio a target is checked on: with interleaved rounds, the median of the ratios within
    each round, whose cells ran minutes apart rather than tens of minutes (the machine's speed
    drifts: one recording's rounds differed by as much as 65 % in the same cell); else the cells'."""
    if not rounds:
        return of_medians, ""
    per_round = ", ".join(f"{r:.2f}" for r in rounds)
    return float(np.median(rounds)), f", the median of each round's ({per_round}); of the cells' medians {of_medians:.2f}"


def _f(value: float | None, fmt: str = ".0f") -> str:
    return "-" if value is None else format(value, fmt)


def _met(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[met]


def to_markdown(result: dict[str, Any]) -> str:
    m, s, srv = result["machine"], result["settings"], result["server"]
    v = result["versions"]
    sizes = ", ".join(f"{k}: {i['bytes'] / 1024:.0f} KiB" for k, i in result["images"].items())
    lines = [f"# rcr-deploy serve under load ({m['cpu']}, {m['cores']} cores)", ""]
    if result["quick"]:
        lines += ["**A quick smoke run (`--quick`), not a recording**: cells are too short for the figures to mean much.", ""]
    lines += [
        f"{result['created']}; `{result['command']}`; {result['duration_s'] / 60:.1f} min.",
        "",
        f"Server: `rcr-deploy serve` with its defaults{(' and ' + ' '.join(srv['args'])) if srv['args'] else ''}: model "
        f"`{srv['model']}`, {srv['replicas']} replica, max batch {srv['max_batch']} (every batch size compiled at start), "
        f"batch wait {srv['batch_wait_ms']:g} ms, {srv['threads_per_replica']} model thread(s) per replica, max queued "
        f"{srv['max_queued']}, request timeout {srv['request_timeout_s']:g} s; it took {srv['start_s']:.0f} s to serve. "
        f"Ray {v.get('ray')}, OpenVINO {v.get('openvino')}, Python {m['versions'].get('python')}, rcr-deploy "
        f"{m['versions'].get('rcr-deploy')}; hey {v.get('hey') or 'not installed: only the Python clients ran'}.",
        "",
        f"**Machine load**: 1-minute load average {result['load_average_start'][0]:.1f} at the start and "
        f"{result['load_average_end'][0]:.1f} at the end, on {m['cores']} cores. Above {m['cores']}, other work shared the "
        "cores and every figure is low and noisy; the ratios within this run hold up better.",
        "",
        f"Images: the built-in sample portrait scaled to cover each size and cropped at the centre, PNG "
        f"({sizes}). Each cell: the Python clients (one thread and keep-alive connection each, in the benchmark's "
        f"process), then hey, each sending back to back for {s['warm_s']:g} s of warm-up and {s['seconds']:g} s measured. "
        "Both run on the server's machine and take their share of its cores." + _rounds_line(result),
        "",
        "## Targets (issue 21)",
        "",
        "| target | generator | result | measured |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {c['check']} | {c['generator'] or ''} | {_met(c['met'])} | {c['figures']} |" for c in result["checks"]]
    lines += ["", "## Cells", "",
              "| image | clients | generator | 200 | 503 | failed | img/s | img/s by round | p50 ms | p90 ms | p99 ms | slowest s "
              "| mean batch | server CPU ms/img | generator CPU ms/img | served / bare | CPU: bare / server |",
              "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"] + result["overload"]:
        failed = ", ".join(f"{k}: {n}" for k, n in r["failed"].items()) or "0"
        lines.append(
            f"| {r['image']} | {r['clients']}{' (overload)' if r.get('overload') else ''} | {r['generator']} | {r['ok']} "
            f"| {r['shed_503']} | {failed} | {r['throughput_ips']:.1f} | {_by_round(r)} | {_f(r['p50_ms'])} | {_f(r['p90_ms'])} | {_f(r['p99_ms'])} "
            f"| {r['max_ms'] / 1000:.1f} | {_f(r['mean_batch'], '.1f')} | {_f(r['server_cpu_ms_per_img'], '.1f')} "
            f"| {_f(r.get('generator_cpu_ms_per_img'), '.1f')} | {_f(r['served_vs_bare'], '.0%')} "
            f"| {_f(r['cpu_bare_vs_server'], '.0%')} |"
        )
    lines += ["", "img/s: the 200s that ended within the measured seconds (after the warm-up, before the drain once "
              "sending stops), per second. Everything else is over the generator's whole run, the drain included: the "
              "latencies of the 200s (from sending to the last byte); slowest: the longest wait for any answer; failed: "
              "any status but 200 and 503, or no answer (hey's per-request CSV leaves out requests that got no answer: "
              "refused, reset, timed out; only the Python clients count those). "
              "mean batch: requests per model call, from the replica's `/v1/stats`. server CPU ms/img: CPU time of every "
              "process of the server (the `serve` command, Ray's services, Serve's proxy and controller, the replicas; not "
              "the load generators) per 200; generator CPU ms/img: the load generator's own (the Python clients' threads, or the hey "
              "process), per 200, taken from the same cores. served / bare and CPU: bare / server compare with the bare run at batch 1 "
              "below.", "",
              "## Bare: the same work in one process", "",
              "What a request costs the server without Ray, HTTP or a queue: decode the PNG, letterbox, the model, "
              "un-letterbox, encode the mask PNG (`SegmentService` and the server's own decode and encode functions), with the "
              "replica's backend and threads, timed before the server starts.", "",
              "| image | batch | calls | img/s | CPU ms/img |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {b['image']} | {b['batch']} | {b['iterations']} | {b['throughput_ips']:.1f} | {b['cpu_ms_per_img']:.1f} |" for b in result["bare"]]
    lines += _fault_lines(result)
    lines.append("")
    return "\n".join(lines)


def _rounds_line(result: dict[str, Any]) -> str:
    several = {image: n for image, n in result["settings"].get("rounds", {}).items() if n > 1}
    return "".join(f" At {image} every cell ran in {n} interleaved rounds, each round taking the client counts in another "
                   "order; its row gives the medians over the rounds (the counts summed, the slowest answer of any round) "
                   "and each round's img/s. The targets are ratios, checked on the median of each round's own ratio: the rounds "
                   "ran minutes apart, and the machine's speed drifts between them." for image, n in several.items())


def _by_round(row: dict[str, Any]) -> str:
    return " / ".join(f"{ips:.0f}" for ips in row["round_ips"]) if row.get("rounds", 1) > 1 else ""


def _fault_lines(result: dict[str, Any]) -> list[str]:
    lines = ["", "## A replica killed under load", ""]
    if not result["kill"]:
        return lines + ["Not run.", *_sigterm_lines(result)]
    k0 = result["kill"][0]
    lines += [f"{k0['clients']} Python clients send {result['settings']['fault_image']} images; one replica's process "
              "(found by its Ray name, `ray::ServeReplica:...`) gets SIGKILL. Recovered: " + k0["rule"] + ".", "",
              "| replicas | img/s before | in flight at the kill | sent after the kill | failed | 503 | first 200 after (s) "
              "| new replica process (s) | recovered (s) |", "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for k in result["kill"]:
        lines.append(f"| {k['replicas']} | {k['rate_before_ips']:.1f} | {k['in_flight']} | {k['after_kill']} | {k['failed']} "
                     f"| {k['shed_503']} | {_f(k['first_answer_s'], '.1f')} | {_f(k['new_replica_process_s'], '.1f')} "
                     f"| {_f(k['recovered_s'], '.1f')} (watched {k['observed_s']:.0f} s) |")
    return lines + _sigterm_lines(result)


def _sigterm_lines(result: dict[str, Any]) -> list[str]:
    t = result.get("sigterm")
    if not t:
        return ["", "## SIGTERM under load", "", "Not run."]
    return ["", "## SIGTERM under load", "",
            f"{t['clients']} Python clients send; the `serve` process gets SIGTERM. In flight at that moment: {t['in_flight']}, "
            f"of which {t['in_flight_ok']} answered 200 ({t['in_flight_statuses']}). Sent afterwards: {t['after_term']}. The "
            f"command exited with code {t['exit_code']} after {t['exit_s']:.1f} s; {t['left_behind']} of its processes were "
            f"still alive 5 s later{(': ' + ', '.join(t['left_behind_names'])) if t['left_behind'] else ''}."]


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, image in enumerate(result["images"]):
        for g, style in zip(GENERATORS, ("o-", "s--")):
            rows = [r for r in result["rows"] if r["image"] == image and r["generator"] == g]
            if rows:
                label = f"{image}, {g}"
                ax1.plot([r["clients"] for r in rows], [r["throughput_ips"] for r in rows], style, color=f"C{i}", label=label)
                ax2.plot([r["clients"] for r in rows], [r["p99_ms"] or np.nan for r in rows], style, color=f"C{i}", label=label)
        bare = [b for b in result["bare"] if b["image"] == image and b["batch"] == 1]
        if bare:
            ax1.axhline(bare[0]["throughput_ips"], ls=":", lw=0.8, color=f"C{i}")
    for ax, title in ((ax1, "throughput (images/s; dotted: bare, batch 1)"), (ax2, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(result["settings"]["clients"], [str(c) for c in result["settings"]["clients"]])
        ax.set_xlabel("concurrent clients")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    ax2.set_yscale("log")
    ax1.legend(fontsize=7)
    fig.suptitle(f"rcr-deploy serve, defaults, {result['machine']['cores']} cores, load average "
                 f"{result['load_average_start'][0]:.1f}-{result['load_average_end'][0]:.1f}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
