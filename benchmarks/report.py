"""Reports of a bench run: the terminal table, JSON (schema: benchmarks/schema.json) and markdown."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rcr_deploy.fileio import write_text_atomic

COLUMNS = ("target", "prec", "size MB", "mIoU", "batch", "p50 ms", "p90 ms", "p99 ms", "CV", "img/s", "× base", "floor ms", "× floor", "peak MB")
#: The terminal drops what the name already says or the markdown/JSON carry, to fit 100 columns.
TERMINAL_COLUMNS = ("target", "size MB", "mIoU", "batch", "p50 ms", "p99 ms", "CV", "img/s", "× base", "× floor", "peak MB")
#: Below 100 columns (CI logs are 80) the essentials only: speed, its spread, accuracy, size.
NARROW_COLUMNS = ("target", "batch", "p50 ms", "p99 ms", "img/s", "× base", "mIoU")
NARROW_BELOW = 100


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per (target, batch): size, accuracy and speed side by side."""
    out = []
    for res in report["results"]:
        size_mb = res["artifact_bytes"] / 1e6 if res["artifact_bytes"] else None
        mem_mb = res["peak_mem_bytes"] / 1e6 if res["peak_mem_bytes"] is not None else None
        for run in res["runs"]:
            out.append(
                [
                    res["name"],
                    res["precision"],
                    _fmt(size_mb, ".2f"),
                    _fmt(res["miou"], ".2f"),
                    str(run["batch"]),
                    _fmt(run["p50_ms"], ".2f"),
                    _fmt(run["p90_ms"], ".2f"),
                    _fmt(run["p99_ms"], ".2f"),
                    _fmt(run["cv"], ".1%"),
                    _fmt(run["throughput_ips"], ".1f"),
                    _fmt(run["speedup_vs_baseline"], ".2f"),
                    _fmt(run["compute_floor_ms"], ".2f"),
                    _fmt(run["x_over_floor"], ".1f"),
                    _fmt(mem_mb, ".0f"),
                ]
            )
    return out


def _p50(report: dict[str, Any], name: str, batch: int = 1) -> float | None:
    for res in report["results"]:
        if res["name"] == name:
            for run in res["runs"]:
                if run["batch"] == batch:
                    return run["p50_ms"]
    return None


def headline(report: dict[str, Any]) -> list[str]:
    """The ratios the issue asks for, computed from this run (batch 1), where both sides ran."""
    lines = []
    pairs = [
        ("re-parameterised FP32 ONNX vs un-fused train-form ONNX", "onnxruntime-unfused", "onnxruntime-fp32"),
        ("ONNX INT8 vs FP32", "onnxruntime-fp32", "onnxruntime-int8"),
        ("ONNX FP16 vs FP32", "onnxruntime-fp32", "onnxruntime-fp16"),
        ("torch.compile vs eager (deploy form)", "torch-deploy", "torch-compile"),
        ("torch deploy form vs train form", "torch-train", "torch-deploy"),
    ]
    for label, slow, fast in pairs:
        a, b = _p50(report, slow), _p50(report, fast)
        if a is not None and b is not None:
            lines.append(f"{label}: {a:.2f} ms -> {b:.2f} ms, {a / b:.2f}x speed-up")
    batch1 = [(run["p50_ms"], res, run) for res in report["results"] for run in res["runs"] if run["batch"] == 1]
    if batch1:
        p50, res, run = min(batch1, key=lambda t: t[0])
        lines.append(
            f"best at batch 1: {res['name']} p50 {p50:.2f} ms with {report['config']['threads']} threads; compute floor "
            f"{run['compute_floor_ms']:.2f} ms (2 x {res['macs'] / 1e6:.0f} M MACs at a measured "
            f"{report['peak_gflops']:.0f} GFLOP/s), {run['x_over_floor']:.1f}x that"
            + (" (INT8 arithmetic runs below the FP32 floor)" if run["x_over_floor"] < 1 else "")
        )
    model = report["model"]
    if model.get("export_fp32_s") is not None:
        lines.append(f"FP32 ONNX export wall time: {model['export_fp32_s']:.1f} s (train form: {model['export_unfused_s']:.1f} s)")
    return lines


def print_table(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    m = report["machine"]
    table = Table(
        title=f"rcr-deploy bench: {report['model']['arch']} at {report['config']['size']}x{report['config']['size']}, "
        f"{m['cpu']} ({m['cores']} cores){', ' + m['gpu'] if m['gpu'] else ''}, {report['config']['threads']} threads",
        caption=f"× base: p50 speed-up over {report['baseline']} at the same batch, this run; floor: 2·MACs / "
        f"{report['peak_gflops']:.0f} GFLOP/s (measured matmul peak)",
    )
    narrow = console.width < NARROW_BELOW
    columns = NARROW_COLUMNS if narrow else TERMINAL_COLUMNS
    if narrow:  # no vertical rules: every character goes to the figures
        table.box = box.SIMPLE_HEAD
    keep = [COLUMNS.index(c) for c in columns]
    for col in columns:
        table.add_column(col, justify="left" if col == "target" else "right", no_wrap=True)
    for row in rows(report):
        table.add_row(*(row[i] for i in keep))
    console.print(table)
    for line in headline(report):
        console.print(f"  {line}")
    for skip in report["skipped"]:
        # Reasons carry install hints like rcr-deploy[tensorrt], which rich would eat as markup.
        console.print(f"  [yellow]skipped[/] {skip['name']}: {escape(skip['reason'])}")


def to_markdown(report: dict[str, Any]) -> str:
    """A self-contained markdown page: machine, versions, model cost vs the paper, the table, skips."""
    m, cfg, model = report["machine"], report["config"], report["model"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        f"# rcr-deploy bench: {model['arch']} on {m['cpu']} ({m['cores']} cores{', ' + m['gpu'] if m['gpu'] else ''})",
        "",
        f"Measured {report['created']} with `{report['command']}`.",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['cpu_flags']) or '–'}, GPU {m['gpu'] or 'none'}, {m['os']}",
        f"- load average at the end of the run (1/5/15 min): {' / '.join(f'{x:.1f}' for x in m['load_average'] or [])}",
        f"- versions: {versions}",
        f"- run: {cfg['threads']} threads, input {cfg['size']}x{cfg['size']}, batches {cfg['batches']}, "
        f"{cfg['warmup']} warm-up + up to {cfg['iters']} timed iterations (at most {cfg['max_seconds']} s) per cell, device {cfg['device']}"
        + (", CUDA graphs" if cfg["cuda_graphs"] else ""),
        f"- peak FLOP rate (best {cfg['device']} FP32 matmul, this run): {report['peak_gflops']:.0f} GFLOP/s",
        f"- checkpoint: `{Path(model['checkpoint']).name}` sha256 {model['sha256'][:12]}",
        "",
        "## Cost",
        "",
        "| | params | MACs |",
        "| --- | ---: | ---: |",
        f"| train form | {model['params_train']:,} | {model['macs_train'] / 1e6:.1f} M |",
        f"| deploy form | {model['params_deploy']:,} | {model['macs_deploy'] / 1e6:.1f} M |",
    ]
    if model.get("paper"):
        p = model["paper"]
        lines.append(f"| paper (Table 3) | {p['params']:,} | {p['flops'] / 1e6:.0f} M (\"FLOPs\", which are MACs); mIoU {p['miou']} |")
    lines += ["", "## Results", "", "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * 2 + " ---: |" * (len(COLUMNS) - 2)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(report)]
    lines += [
        "",
        f"× base: p50 speed-up over `{report['baseline']}` at the same batch in this run. floor: the compute floor "
        "2·MACs·batch / peak FLOP rate; × floor: how far p50 is above it. peak MB: growth of peak RSS (CPU) or "
        "allocator peak (GPU) while loading and running that target.",
        "",
        "## Headline",
        "",
    ]
    lines += [f"- {line}" for line in headline(report)]
    if report["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- `{s['name']}`: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


def write_json(report: dict[str, Any], path: str | os.PathLike) -> None:
    write_text_atomic(path, json.dumps(report, indent=2) + "\n")


def write_markdown(report: dict[str, Any], path: str | os.PathLike) -> None:
    write_text_atomic(path, to_markdown(report))
