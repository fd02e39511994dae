"""What verifying an artifact's bytes costs against loading it: a reproducible measurement.

    python -m rcr_deploy.benchmarks.verify_cost [EXPORT_DIR] --md benchmarks/results/verify-cost-cpu-2core.md

Every runner checks the sha256 that the manifest records for each file it runs (the ONNX file,
the IR's .xml and .bin, an engine) before the runtime reads it. This times, taking turns so that
a shared machine's drifting load hits both alike, the check alone (sha256 of the files) and the
whole load that includes it (runner construction: manifest read and check, session or compile),
for ONNX Runtime and OpenVINO. Without EXPORT_DIR the built-in model is exported at 224 first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from rcr_deploy.artifact import ARTIFACT_NAMES, format_path
from rcr_deploy.benchmarks.machine import machine_info
from rcr_deploy.fileio import sha256_file, write_text_atomic


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    result = call()
    elapsed = time.perf_counter() - start
    if hasattr(result, "close"):
        result.close()
    return elapsed


def measure(folder: Path, rounds: int) -> list[dict]:
    """Per engine: median seconds of the check and of the load, over `rounds` interleaved turns."""
    from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from rcr_deploy.runtime.openvino_runner import OpenVINORunner

    onnx, xml = folder / ARTIFACT_NAMES["fp32"], format_path(folder / ARTIFACT_NAMES["fp32"], "openvino")
    engines = {
        "onnxruntime": ([onnx], lambda: OnnxRuntimeRunner(onnx)),
        "openvino": ([xml, xml.with_suffix(".bin")], lambda: OpenVINORunner(xml)),
    }
    calls = {}
    for name, (files, load) in engines.items():
        calls[f"{name}/check"] = lambda files=files: [sha256_file(f) for f in files]
        calls[f"{name}/load"] = load
    samples: dict[str, list[float]] = {k: [] for k in calls}
    for _ in tqdm(range(rounds), desc="verify cost", unit="round"):
        for key, call in calls.items():
            samples[key].append(_timed(call))
    rows = []
    for name, (files, _) in engines.items():
        check, load = statistics.median(samples[f"{name}/check"]), statistics.median(samples[f"{name}/load"])
        rows.append({"engine": name, "files": [f.name for f in files], "bytes": sum(f.stat().st_size for f in files),
                     "check_ms": 1000 * check, "load_ms": 1000 * load, "check_share_of_load": check / load})  # fmt: skip
    return rows


def to_markdown(rows: list[dict], rounds: int, command: str, machine: dict) -> str:
    lines = [
        "# What verifying an artifact costs against loading it",
        "",
        f"Regenerate: `{command}`. Medians of {rounds} interleaved rounds on {machine.get('cpu', 'this CPU')}; "
        "the load includes the check (the runner's construction: manifest read, sha256 check, session or compile).",
        "",
        "| engine | files checked | MiB | check (ms) | load incl. check (ms) | check / load |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {', '.join(r['files'])} | {r['bytes'] / 2**20:.2f} | {r['check_ms']:.2f} | {r['load_ms']:.1f} | {r['check_share_of_load']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, help="An export folder with the FP32 ONNX and IR; default: export the built-in model")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--md", type=Path, default=Path("benchmarks/results/verify-cost-cpu-2core.md"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder
        if folder is None:
            from rcr_deploy.exporters.pipeline import export

            folder = Path(tmp) / "out"
            export(None, folder, ("fp32",), formats="onnx,openvino", progress=True)
        rows = measure(folder, args.rounds)
    command = "python -m rcr_deploy.benchmarks.verify_cost" + (f" {args.folder}" if args.folder else "") + f" --rounds {args.rounds} --md {args.md}"
    machine = machine_info(threads=len(os.sched_getaffinity(0)))
    write_text_atomic(args.md, to_markdown(rows, args.rounds, command, machine))
    write_text_atomic(args.md.with_suffix(".json"), json.dumps({"command": command, "machine": machine, "rows": rows}, indent=2) + "\n")
    print(to_markdown(rows, args.rounds, command, machine))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
