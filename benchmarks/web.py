"""onnxruntime-web in headless Chromium beside ONNX Runtime in Python, timed in the same interleaved rounds.

    rcr-deploy export --precision fp32,fp16,int8 --calib ../shared/data/eg1800/images --format onnx,web --out rcr-deploy-out/web
    python -m rcr_deploy.benchmarks.web rcr-deploy-out/web --md benchmarks/results/web-wasm-cpu-2core.md \\
        --json-out benchmarks/results/web-wasm-cpu-2core.json

The export's web/ folder is served by its own serve.py (127.0.0.1, COOP/COEP, so the page is
cross-origin isolated and WebAssembly threads work) and opened in Debian's Chromium through
Playwright. Each page times its own calls with performance.now() (the driver's round trip is not
counted); ONNX Runtime's Python API is the reference row, so every ratio is measured in one run.
The FP16 and INT8 artifacts of the export are timed in the page too: they decide which
precisions `--format web` ships. WebGPU is probed and reported as found, never assumed.

Also the browser helpers the tests use: `serve_folder`, `chromium`, `open_page`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rcr_deploy.artifact import ARTIFACT_NAMES, manifest_path
from rcr_deploy.benchmarks.machine import machine_info
from rcr_deploy.benchmarks.timing import time_interleaved, timed_on_cpu
from rcr_deploy.data import SAMPLE_IMAGE
from rcr_deploy.errors import RcrError
from rcr_deploy.exporters.web import WEB_DIR
from rcr_deploy.fileio import write_text_atomic
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

#: Debian's Chromium (`apt-get install chromium`); Playwright's own browser download is not used.
CHROMIUM = "/usr/bin/chromium"
#: Headless, no GPU, and nothing that reaches the network on its own.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
    # Pages that take turns must not be throttled while another one runs.
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows",
]  # fmt: skip
PAGE_TIMEOUT_S = 300


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Run `folder/serve.py` on a free port of 127.0.0.1; yields its base URL."""
    server = subprocess.Popen([sys.executable, str(folder / "serve.py"), "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip() if server.stdout else ""
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"{folder / 'serve.py'} did not start (printed {url!r})")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Debian's, through Playwright); yields the Browser."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser: Any, url: str) -> Any:
    """Open the exported page and wait until it is ready; an error the page reports is raised."""
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function("document.body.dataset.state", timeout=PAGE_TIMEOUT_S * 1000)
    error = page.evaluate("window.rcrError")
    if error:
        raise RuntimeError(f"{url}: the page failed: {error}")
    return page


def webgpu_probe(browser: Any, url: str) -> str:
    """What headless Chromium says about WebGPU here: no API, no adapter, or the adapter's name."""
    page = browser.new_page()
    page.goto(url)
    found = page.evaluate(
        """async () => {
            if (!navigator.gpu) return "no navigator.gpu (WebGPU disabled)";
            const adapter = await navigator.gpu.requestAdapter();
            if (!adapter) return "navigator.gpu present, no adapter";
            const info = adapter.info || {};
            return `adapter: ${info.vendor || "?"} ${info.architecture || ""} ${info.description || ""}`.trim();
        }"""
    )
    page.close()
    return found


def _page_call(page: Any, what: str) -> Callable[[], int]:
    """One call timed inside the page (nanoseconds), without the driver's round trip."""
    return lambda: int(page.evaluate(f"rcrTime(1, '{what}')")[0] * 1e6)


def run(export_dir: Path, iters: int, max_seconds: float, threads: tuple[int, ...]) -> dict[str, Any]:
    """Time every target in interleaved turns; returns the report (targets, stats, ratios, machine)."""
    web = export_dir / WEB_DIR
    if not (web / "index.html").is_file():
        raise RcrError(f"{export_dir}: no {WEB_DIR}/ folder; export with 'rcr-deploy export --format onnx,web --out {export_dir}'")
    precisions = [p for p in ("fp16", "int8") if (export_dir / ARTIFACT_NAMES[p]).is_file()]
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(shutil.copytree(web, Path(tmp) / WEB_DIR))
        for p in precisions:  # the other precisions beside the page, for ?model=
            for f in (export_dir / ARTIFACT_NAMES[p], manifest_path(export_dir / ARTIFACT_NAMES[p])):
                shutil.copyfile(f, site / f.name)
        shutil.copyfile(SAMPLE_IMAGE, site / SAMPLE_IMAGE.name)
        targets: dict[str, dict[str, Any]] = {}
        with serve_folder(site) as url, chromium() as browser, OnnxRuntimeRunner(export_dir / ARTIFACT_NAMES["fp32"], threads=max(threads)) as ort_runner:
            x = np.full((1, ort_runner.in_channels, 224, 224), 0.1, np.float32)
            calls = {f"onnxruntime (Python) fp32, {max(threads)} threads": timed_on_cpu(lambda: ort_runner.infer(x))}
            pages = {}
            for n in threads:
                pages[f"onnxruntime-web wasm fp32, {n} thread(s)"] = (f"threads={n}", "model")
            for p in precisions:
                pages[f"onnxruntime-web wasm {p}, {max(threads)} thread(s)"] = (f"threads={max(threads)}&model={ARTIFACT_NAMES[p]}", "model")
            pages[f"page frame 512x512 (pre + model + post), fp32, {max(threads)} thread(s)"] = (
                f"threads={max(threads)}&src={SAMPLE_IMAGE.name}", "frame")
            info = {}
            for name, (query, what) in pages.items():
                page = open_page(browser, f"{url}index.html?bench&{query}")
                info[name] = page.evaluate("window.rcrInfo")
                calls[name] = _page_call(page, what)
            stats = time_interleaved(calls, batch=1, iters=iters, max_seconds=max_seconds)
            webgpu = webgpu_probe(browser, url)
        reference = next(iter(stats.values())).p50_ms
        for name, s in stats.items():
            targets[name] = {**dataclasses.asdict(s), "vs_onnxruntime_python": s.p50_ms / reference, "page": info.get(name)}
    return {"targets": targets, "webgpu": webgpu, "machine": machine_info(max(threads)), "iters": iters, "size": 224}


def to_markdown(report: dict[str, Any], command: str) -> str:
    """The report as a markdown page: one row per target, ratios to ONNX Runtime in Python."""
    m = report["machine"]
    page = next((t["page"] for t in report["targets"].values() if t["page"]), {})
    lines = [
        "# onnxruntime-web (WebAssembly) in headless Chromium, beside ONNX Runtime in Python",
        "",
        f"Regenerate: `{command}`",
        "",
        f"{m['cpu']}, {m['cores']} cores, load average {', '.join(f'{v:.1f}' for v in m['load_average'] or [])}; "
        f"onnxruntime-web {page.get('ort')}, {page.get('userAgent', '').split(')')[-1].strip()}; "
        f"cross-origin isolated: {page.get('crossOriginIsolated')}. Input 1x4x224x224, interleaved turns, "
        f"{report['iters']} calls per target; times measured inside the page with performance.now().",
        "",
        "| target | p50 ms | mean ms | p90 ms | × ONNX Runtime (Python) p50 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, t in report["targets"].items():
        lines.append(f"| {name} | {t['p50_ms']:.2f} | {t['mean_ms']:.2f} | {t['p90_ms']:.2f} | {t['vs_onnxruntime_python']:.2f} |")
    lines += ["", f"WebGPU in this headless Chromium (`--disable-gpu`): {report['webgpu']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path, nargs="?", default=Path("rcr-deploy-out"))
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="per target")
    parser.add_argument("--threads", default="1,2", help="WebAssembly thread counts to time")
    parser.add_argument("--md", type=Path)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    report = run(args.export_dir, args.iters, args.max_seconds, tuple(int(t) for t in args.threads.split(",")))
    command = "python -m rcr_deploy.benchmarks.web " + " ".join(sys.argv[1:])
    text = to_markdown(report, command)
    print(text)
    if args.md:
        write_text_atomic(args.md, text)
    if args.json_out:
        write_text_atomic(args.json_out, json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
