"""The CPU-engine report's headline logic on a hand-made report (the figures themselves come
from `python -m rcr_deploy.benchmarks.cpu_engines`, never from a test)."""

from __future__ import annotations

import pytest

from rcr_deploy.benchmarks import cpu_engines
from rcr_deploy.benchmarks.peer import find_model
from rcr_deploy.errors import BackendUnavailable

pytestmark = pytest.mark.slow  # exports and times every CPU engine


def row(p50: float, miou: float, b8: float) -> dict:
    return {"p50_ms": p50, "p90_ms": p50, "p99_ms": p50, "fg_miou": miou, "batch8": {"p50_ms": b8}}


def report(int8_miou: float, peer: bool = True, litert: bool = False) -> dict:
    rows = {
        "ort-fp32": row(6.0, 94.0, 40.0),
        "ov-fp32": row(5.0, 94.0, 30.0),
        "ort-int8": row(12.0, 93.9, 90.0),
        "ov-int8": row(2.0, int8_miou, 16.0),
        "ov-int8-qdq": row(2.5, 94.0, 20.0),
        "ov-default": row(1.0, 90.0, 5.0),  # faster but not a shipped setting: never the headline
    }
    if peer:
        rows["mediapipe"] = {"p50_ms": 2.5, "fg_miou": 96.3}
    if litert:
        rows["litert-fp32"], rows["litert-int8"] = row(5.0, 94.0, 40.0), row(3.0, 93.9, 24.0)
    return {"peak_gflops": 100.0, "sizes": [{"size": 224, "macs": 200_000_000, "rows": rows}]}


def headline_row(rep: dict) -> list[str]:
    line = cpu_engines.headline(rep)[4]
    return [c.strip() for c in line.strip("|").split("|")]


def test_headline_picks_the_fastest_shipped_engine_and_compares_it_with_mediapipe():
    cells = headline_row(report(int8_miou=93.8))
    assert cells[:4] == ["224", "ov-int8", "2.00", "93.80"]
    assert cells[4] == "0.5"  # 2.00 ms over a floor of 2 x 200 M MACs / 100 GFLOP/s = 4 ms
    assert cells[5:8] == ["2.50", "0.80", "–"]  # no .tflite timed: no same-interpreter ratio
    assert cells[8] == "2.50 (ov-int8 vs ov-fp32)" and cells[9] == "1.88 (ov-int8 vs ov-fp32)"


def test_headline_races_rcrnet_tflite_against_mediapipe_in_the_same_interpreter():
    cells = headline_row(report(int8_miou=93.8, litert=True))
    assert cells[1] == "ov-int8"  # the LiteRT files are the race, not candidates for the CPU headline
    assert cells[7] == "2.00 / 1.20"  # 5.0 and 3.0 ms against MediaPipe's 2.5 ms


def test_headline_skips_an_int8_engine_that_loses_more_than_the_bound():
    cells = headline_row(report(int8_miou=94.0 - cpu_engines.INT8_MIOU_LOSS - 0.01))
    assert cells[1] == "ov-int8-qdq"


def test_headline_without_the_peer_says_so():
    cells = headline_row(report(int8_miou=93.8, peer=False))
    assert cells[5:8] == ["–", "–", "–"]


def test_missing_mediapipe_is_one_line_naming_the_install():
    try:
        find_model()
    except BackendUnavailable as e:
        assert "pip install --no-deps 'mediapipe==0.10.21'" in str(e) and "\n" not in str(e)
    else:
        pytest.skip("mediapipe's model file is installed here")


def test_bench_sizes_exports_times_and_scores_each_size(tmp_path, ckpt):
    import json
    import subprocess
    import sys

    from support import write_dataset

    data = write_dataset(tmp_path / "data", n=12, h=64, w=48)
    cmd = [sys.executable, "-m", "rcr_deploy", "bench", "--sizes", "64,96", "--data", str(data), "--ckpt", str(ckpt),
           "--iters", "2", "--warmup", "0", "--max-seconds", "0.2", "--threads", "1"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (report,) = (tmp_path / "rcr-deploy-out" / "bench-sizes").glob("cpu-engines-*.json")
    sizes = json.loads(report.read_text())["sizes"]
    assert [s["size"] for s in sizes] == [64, 96]
    for s in sizes:
        for name in ("ort-fp32", "ov-fp32", "ov-int8"):
            assert s["rows"][name]["p50_ms"] > 0 and 0 <= s["rows"][name]["fg_miou"] <= 100
            assert s["rows"][name]["batch8"]["p50_ms"] > 0
    assert report.with_suffix(".png").stat().st_size > 0 and "## Headline" in report.with_suffix(".md").read_text()
