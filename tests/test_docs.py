"""What the docs say about the shipped model is what the shipped model is: every sha256 they give
it, every headline figure, every results file they link. Expected values come from the asset
(`rcr_deploy/assets/rcrnet-eg1800.pt` and the validation record it carries) and from
benchmarks/results/, so a new model or a new bench run makes a stale page fail here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rcr_deploy.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from rcr_deploy.fileio import sha256_file

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BENCH = ROOT / "benchmarks" / "results" / "cpu-2core.json"

pytestmark = pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="the built-in model is not in this checkout")


def _text(page: Path) -> str:
    return " ".join(page.read_text().split())  # a sentence may wrap anywhere


def _one(pattern: str, page: Path) -> str:
    """What `page` quotes where `pattern` matches: one value, however often it is repeated."""
    found = set(re.findall(pattern, _text(page)))
    assert len(found) == 1, f"{page.name}: expected one value where {pattern!r} matches, found {sorted(found)}"
    return found.pop()


def _bench() -> dict:
    report = json.loads(BENCH.read_text())
    return {r["name"]: r for r in report["results"]} | {"": report}


def test_every_sha256_given_to_the_shipped_model_is_the_assets():
    sha = sha256_file(DEFAULT_CHECKPOINT)
    quoted = [(page.name, m.group(2)) for page in PAGES
              for m in re.finditer(r"(first |previous |earlier )?(?:shipped|built-in) model[^.;]{0,40}?sha256 ([0-9a-f]{8,64})", _text(page))
              if not m.group(1)]  # fmt: skip
    wrong = [(name, q) for name, q in quoted if not sha.startswith(q)]
    assert not wrong, f"the shipped model is sha256 {sha[:12]}; these pages say otherwise: {wrong}"


def test_the_bench_table_is_of_the_shipped_model():
    assert _bench()[""]["model"]["sha256"] == sha256_file(DEFAULT_CHECKPOINT), (
        f"{BENCH.relative_to(ROOT)} timed another model; rerun its command with the shipped one"
    )


def test_headline_accuracy_is_the_assets_validation_record():
    meta = load_checkpoint(DEFAULT_CHECKPOINT).meta
    fg, reframed = f"{100 * meta['val_224']['fg_miou']:.2f}", f"{100 * meta['val_224_reframed']['fg_miou']:.2f}"
    readme, card = ROOT / "README.md", ROOT / "docs" / "model-card.md"
    assert _one(r"\*\*(\d+\.\d\d)\*\* mean per-image foreground IoU", readme) == fg
    assert _one(r"(\d+\.\d\d) on the reframed split", readme) == reframed
    status = _one(r"\*\*Status:[^*]*\*\* (\d+\.\d\d) mean per-image foreground IoU \((\d+\.\d\d) class-mean\)", card)
    assert status == (fg, f"{100 * meta['val_224']['class_miou']:.2f}")
    assert _one(r"(\d+\.\d\d) on the reframed split", card) == reframed


def test_readme_int8_and_speed_figures_are_the_bench_tables():
    rows, readme = _bench(), ROOT / "README.md"
    reference = rows["onnxruntime-fp32"]["miou"]
    ov, ov_loss = rows["openvino-int8"]["miou"], _one(r"(\d+\.\d\d) points lost on OpenVINO \(NNCF", readme)
    ort, ort_loss = rows["onnxruntime-int8"]["miou"], _one(r"(\d+\.\d\d) as ONNX Q/DQ with its float stem", readme)
    assert (_one(r"NNCF, (\d+\.\d\d)\)", readme), ov_loss) == (f"{ov:.2f}", f"{reference - ov:.2f}")
    assert (_one(r"as ONNX Q/DQ with its float stem \((\d+\.\d\d)\)", readme), ort_loss) == (f"{ort:.2f}", f"{reference - ort:.2f}")

    def p50(name: str) -> float:
        return next(r["p50_ms"] for r in rows[name]["runs"] if r["batch"] == 1)

    fp32, int8, ms = _one(r"OpenVINO FP32 runs (\d+\.\d)× ONNX Runtime FP32 and OpenVINO INT8 (\d+\.\d)× \((\d+\.\d) ms", readme)
    assert fp32 == f"{p50('onnxruntime-fp32') / p50('openvino-fp32'):.1f}"
    assert int8 == f"{p50('onnxruntime-fp32') / p50('openvino-int8'):.1f}"
    assert ms == f"{p50('openvino-int8'):.1f}"


def test_every_linked_results_file_and_asset_exists():
    missing = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if "://" in target or not re.search(r"benchmarks/results/|assets/", target):
                continue
            if not (page.parent / target).resolve().exists():
                missing.append(f"{page.name}: {target}")
    assert not missing, missing


def test_serving_page_quotes_the_recorded_load_test():
    report = json.loads((ROOT / "benchmarks" / "results" / "serve-cpu-2core.json").read_text())
    page = ROOT / "docs" / "serving.md"
    hey = {r["clients"]: r["throughput_ips"] for r in report["rows"] if r["image"] == "224x224" and r["generator"] == "hey"}
    quoted = _one(r"hey got (\d+, \d+, \d+ and \d+) images/s at 1, 4, 16 and 64 clients", page)
    assert quoted == "{:.0f}, {:.0f}, {:.0f} and {:.0f}".format(*(hey[c] for c in (1, 4, 16, 64)))
    ratio = {c["generator"]: re.search(r"ratio (\d\.\d\d)", c["figures"]).group(1)
             for c in report["checks"] if c["check"].startswith("64 clients") and "throughput" in c["check"]}  # fmt: skip
    assert _one(r"\((\d\.\d\d)x with hey, \d\.\d\dx with the Python clients\)", page) == ratio["hey"]
    assert _one(r"\(\d\.\d\dx with hey, (\d\.\d\d)x with the Python clients\)", page) == ratio["python"]
    low, high = sorted(ratio.values())
    assert _one(r"64 clients get (\d\.\d\d–\d\.\d\d)× the best cell", ROOT / "README.md") == f"{low}–{high}"


def test_the_model_cards_framing_table_is_the_recorded_one_of_the_shipped_model():
    sha = sha256_file(DEFAULT_CHECKPOINT)
    record = json.loads((ROOT / "benchmarks" / "results" / f"framings-{sha[:12]}.json").read_text())
    assert record["model_sha256"] == sha
    scores = record["fg_miou"]
    names = {"eg1800": "EG1800", "ccp": "CCP"}
    expected = [f"| {names[d]}, {f} | " + " | ".join(f"{scores[m][d][f]:.2f}" for m in ("onnx-fp32", "onnx-int8", "openvino-int8", "mediapipe")) + " |"
                for d in record["datasets"] for f in record["framings"]]  # fmt: skip
    card = (ROOT / "docs" / "model-card.md").read_text().splitlines()
    assert [line for line in card if line in expected] == expected
    rounded = {m: {d: {f: round(v, 2) for f, v in by.items()} for d, by in scores[m].items()} for m in ("openvino-fp32", "onnx-fp32")}
    assert rounded["openvino-fp32"] == rounded["onnx-fp32"]  # what the card says of the IR


def test_serving_page_quotes_the_recorded_infer_ray_run():
    import numpy as np

    runs = json.loads((ROOT / "benchmarks" / "results" / "infer-ray-cpu-2core.json").read_text())["runs"]
    ips = {k: float(np.median([r["images_per_s"] for r in rows])) for k, rows in runs.items()}
    quoted = re.search(r"local `infer` (\d+) images/s, `--ray` with 1 worker (\d+) \((\d\.\d\d)x\), with 2 workers (\d+) \((\d\.\d\d)x\)",
                       _text(ROOT / "docs" / "serving.md"))  # fmt: skip
    assert quoted, "docs/serving.md no longer quotes the infer --ray run"
    assert quoted.groups() == (f"{ips['local']:.0f}", f"{ips['ray-1']:.0f}", f"{ips['ray-1'] / ips['local']:.2f}",
                               f"{ips['ray-2']:.0f}", f"{ips['ray-2'] / ips['local']:.2f}")  # fmt: skip


def test_training_page_quotes_the_recorded_interpolation_sweep():
    record = json.loads((ROOT / "benchmarks" / "results" / "mix-wise2-cpu-2core.json").read_text())
    page = (ROOT / "docs" / "training.md").read_text()
    rows = re.findall(r"^\| \**(\d(?:\.\d+)?)\** \| (\d+\.\d\d) \| (\d+\.\d\d) \|$", page, flags=re.M)
    expected = [(f"{r['alpha']:g}", f"{r['fg_miou']['eg1800']:.2f}", f"{r['fg_miou']['ccp']:.2f}") for r in record["sweep"]]
    assert rows == expected
    assert f"α = {record['chosen_alpha']:g} keeps EG1800 at" in " ".join(page.split())


def test_the_model_cards_size_table_is_the_recorded_one_of_the_shipped_model():
    sha = sha256_file(DEFAULT_CHECKPOINT)
    rows = json.loads((ROOT / "benchmarks" / "results" / f"val-sizes-{sha[:12]}.json").read_text())["rows"]
    by = {(r["name"], r["size"]): r for r in rows if r["framing"] == "as-is"}
    card = _text(ROOT / "docs" / "model-card.md")
    for size in sorted({s for _, s in by}):
        cells = [f"{100 * by[(d, size)][k]:.2f}" for d in ("eg1800", "ccp") for k in ("fg_miou", "class_miou")]
        found = re.search(rf"\| (?:\*\*)?{size}(?:\*\*)?(?: \(trained\))? \| " + r" \| ".join(rf"(?:\*\*)?{re.escape(c)}(?:\*\*)?" for c in cells) + r" \|", card)
        assert found, f"docs/model-card.md: no validation row for {size} reading {cells}"


def test_the_model_cards_calibration_table_is_the_recorded_one_of_the_shipped_model():
    sha = sha256_file(DEFAULT_CHECKPOINT)
    scores = json.loads((ROOT / "benchmarks" / "results" / f"int8-calib-{sha[:12]}.json").read_text())["fg_miou"]
    card = (ROOT / "docs" / "model-card.md").read_text().splitlines()
    cols = [(d, f) for d in ("eg1800", "ccp") for f in ("as-is", "reframed")]
    names = {"fp32": "FP32", "int8-minmax": "min–max", "int8-entropy": "entropy", "int8-percentile": "percentile"}
    assert len(scores) == 7  # FP32 and each method with and without the float stem
    for label in scores:
        method, _, stem = label.partition(", ")
        name = names[method] + (f", {stem}" if stem else ", every Conv int8" if method != "fp32" else "")
        cells = [f"{scores[label][d][f]:.2f}" + ("" if label == "fp32" else f" ({scores[label][d][f] - scores['fp32'][d][f]:+.2f})") for d, f in cols]
        assert f"| {name} | " + " | ".join(cells) + " |" in card, f"docs/model-card.md: the {name} row is not the recorded one"


@pytest.mark.parametrize("suffix", ["", "-reframed"])
def test_the_tflite_page_quotes_the_recorded_phone_accuracy_of_the_shipped_model(suffix):
    records = [json.loads((ROOT / "benchmarks" / "results" / f"phone-accuracy-{d}-val{suffix}.json").read_text()) for d in ("eg1800", "ccp")]
    assert all(r["model_sha256"] == sha256_file(DEFAULT_CHECKPOINT) for r in records), "re-run phone_accuracy for the shipped model"
    assert {r.get("framing", "as-is") for r in records} == {suffix[1:] or "as-is"}

    def cells(row: dict) -> str:
        delta = "" if row["model"] == "onnx-fp32" else f" ({row['fg_miou_vs_onnx_fp32']:+.2f})"
        return f"{row['fg_miou']:.2f}{delta} | {100 * row['pixel_agreement_with_onnx_fp32']:.3f} %"

    by_model = [{r["model"]: r for r in record["rows"]} for record in records]
    expected = [f"| {m} | {cells(by_model[0][m])} | {cells(by_model[1][m])} |" for m in by_model[0]]
    page = (ROOT / "docs" / "targets" / "tflite.md").read_text().splitlines()
    assert [line for line in page if line in expected] == expected
    int8 = [f"{-b['tflite-int8']['fg_miou_vs_onnx_fp32']:.2f}" for b in by_model]
    said = "INT8 loses {} fg mIoU there and {} on CCP's" if not suffix else "{} and {} on their reframed versions"
    assert said.format(*int8) in _text(ROOT / "README.md")


def test_training_page_quotes_the_recorded_gpu_sweeps():
    lines = [json.loads((ROOT / "benchmarks" / "results" / f"mix-wise-gpu1{s}-h200.json").read_text())["sweep"] for s in ("", "-shipped")]
    by_alpha = [{r["alpha"]: r["fg_miou"] for r in rows} for rows in lines]

    def cells(line: dict, a: float) -> list[str]:
        return [f"{line[a][k]:.2f}" if a in line else "–" for k in ("eg1800", "ccp")]

    expected = [(f"{a:g}", *cells(by_alpha[0], a), *cells(by_alpha[1], a)) for a in sorted(set(by_alpha[0]) | set(by_alpha[1]))]
    page = (ROOT / "docs" / "training.md").read_text()
    assert re.findall(r"^\| (\d(?:\.\d+)?) \| (\S+) \| (\S+) \| (\S+) \| (\S+) \|$", page, flags=re.M) == expected
    base = by_alpha[0]
    card = _text(ROOT / "docs" / "model-card.md")
    assert f"took CCP to {base[1.0]['ccp']:.2f} with EG1800 at {base[1.0]['eg1800']:.2f}" in card
    assert f"α 0.9 holds CCP {base[0.9]['ccp']:.2f} with EG1800 {base[0.9]['eg1800']:.2f}" in card
    readme = _text(ROOT / "README.md")
    assert f"a 5.5-minute GPU run on both datasets (CCP {base[1.0]['ccp']:.2f}, EG1800 {base[1.0]['eg1800']:.2f})" in readme


def test_benchmarks_page_quotes_the_recorded_gpu_latencies():
    def p50(name: str) -> dict:
        report = json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text())
        return {(r["name"], run["batch"]): run["p50_ms"] for r in report["results"] for run in r["runs"]}

    eager = p50("bench-gpu-h200")
    graph = p50("bench-gpu-graphs-h200-b32-fp16") | p50("bench-gpu-graphs-h200-b32-deploy") | p50("bench-gpu-graphs-h200-b1")

    def cell(d: dict, t: str, b: int) -> str:
        return f"{d[(t, b)]:.2f}" if (t, b) in d else "–"

    expected = [(t, cell(eager, t, 1), cell(eager, t, 32), cell(graph, t, 1), cell(graph, t, 32))
                for t in ("torch-train", "torch-deploy", "torch-compile", "torch-fp16")]  # fmt: skip
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert re.findall(r"^ *\| (torch-[a-z0-9]+) \| (\S+) \| (\S+) \| (\S+) \| (\S+) \|$", page, flags=re.M) == expected


def test_model_card_quotes_the_recorded_fine_tunes_from_the_gpu_run():
    def by_epoch(name: str) -> dict[int, dict[str, float]]:
        history = json.loads((ROOT / "benchmarks" / "results" / f"{name}-cpu-2core.json").read_text())["history"]
        return {h["epoch"]: {k: 100 * v["val_fg_miou"] for k, v in h["val_by_data"].items()} | {
            f"{k}-reframed": 100 * v["val_fg_miou_reframed"] for k, v in h["val_by_data"].items()} for h in history}  # fmt: skip

    ft10, ft11 = by_epoch("mix-ft10"), by_epoch("mix-ft11")
    card = _text(ROOT / "docs" / "model-card.md")
    e3, e6 = ft10[3], ft10[6]
    assert f"rose to {e3['eg1800']:.2f} at epoch 3 (CCP {e3['ccp']:.2f}) and {e6['eg1800']:.2f} at epoch 6 (CCP {e6['ccp']:.2f})" in card
    e3, e4, e5 = ft11[3], ft11[4], ft11[5]
    assert f"reached {e3['eg1800']:.2f} at its epoch 3 with CCP {e3['ccp']:.2f}, then {e4['eg1800']:.2f} and {e5['eg1800']:.2f} at epochs 4 and 5" in card
    assert f"{e3['eg1800-reframed']:.2f} and {e3['ccp-reframed']:.2f} at that epoch" in card
    best = load_checkpoint(ROOT / "benchmarks" / "results" / "mix-ft10-cpu-2core.pt").meta["best"]
    assert best["epoch"] == 3 and max(ft10, key=lambda e: ft10[e]["eg1800"] + ft10[e]["ccp"]) == 3


def test_training_page_quotes_the_distilled_runs_and_the_shipped_epoch_is_theirs():
    records = {n: json.loads((ROOT / "benchmarks" / "results" / f"{n}-cpu-2core.json").read_text())["history"] for n in ("mix-ft10", "mix-ft11")}
    page = (ROOT / "docs" / "training.md").read_text()
    quoted = dict(re.findall(r"^\| (mix-ft1[01]) \| (.+) \|$", page, flags=re.M))
    for name, history in records.items():
        cells = [f"{100 * h['val_by_data']['eg1800']['val_fg_miou']:.2f} / {100 * h['val_by_data']['ccp']['val_fg_miou']:.2f}" for h in history]
        assert [c.strip().strip("*") for c in quoted[name].split("|") if c.strip()] == cells, f"docs/training.md: the {name} row"
    meta = load_checkpoint(DEFAULT_CHECKPOINT).meta
    epoch = next(h for h in records["mix-ft11"] if h["epoch"] == meta["best"]["epoch"])
    for data, scores in epoch["val_by_data"].items():  # ship re-scores the weights: the same figures
        assert meta["by_data"][data]["val_224"]["fg_miou"] == pytest.approx(scores["val_fg_miou"], abs=1e-5)
