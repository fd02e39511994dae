"""`rcr-deploy bench`: an end-to-end run on a small export, the JSON schema, reports, bad input."""

import json
import os
from pathlib import Path

import jsonschema
import pytest
import torch

from rcr_deploy.benchmarks import harness
from rcr_deploy.benchmarks.cost import count_macs_torch
from rcr_deploy.benchmarks.report import to_markdown
from rcr_deploy.exporters.onnx import export_onnx
from rcr_deploy.checkpoint import save_checkpoint
from rcr_deploy.errors import RcrError
from rcr_deploy.fileio import sha256_file
from rcr_deploy.models import build_model
from rcr_deploy.reparam import randomize_bn, reparameterize
from rcr_deploy.artifact import ARTIFACT_NAMES, DEFAULT_OUT_DIR, write_manifest
from rcr_deploy.runtime import Runner
from support import cli, cli_process

pytestmark = pytest.mark.slow  # its fixtures export and time real artifacts

SCHEMA = json.loads((Path(harness.__file__).with_name("schema.json")).read_text())
SIZE = 64


@pytest.fixture(scope="module")
def export_folder(tmp_path_factory):
    """A folder as `rcr-deploy export ckpt.pt` leaves it: ckpt.pt, rcr-deploy-out/rcrnet.onnx and its
    manifest (source checkpoint and the mIoU that `--val` would have measured)."""
    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    model = build_model("rcrnet")
    randomize_bn(model, torch.Generator().manual_seed(0))
    save_checkpoint(root / "ckpt.pt", model, "rcrnet")
    artifact = root / DEFAULT_OUT_DIR / ARTIFACT_NAMES["fp32"]
    export_onnx(reparameterize(model), artifact, size=(SIZE, SIZE))
    write_manifest(artifact, _manifest(root / "ckpt.pt", {"rows": [{"precision": "fp32", "fg_miou": 0.9512, "class_miou": 0.96}]}))
    return root


def _manifest(ckpt: Path, accuracy: dict | None = None) -> dict:
    from rcr_deploy.exporters import manifest as manifests

    return manifests.build(
        arch="rcrnet", variant={"name": "rcrnet", "symbol": "", "description": ""}, checkpoint=ckpt,
        checkpoint_sha256=sha256_file(ckpt), precision="fp32", opset=18, in_channels=4, size=(SIZE, SIZE),
        dynamic_hw=False, ops={}, export={}, validation=[], accuracy=accuracy,
    )  # fmt: skip


@pytest.fixture(scope="module")
def cli_run(export_folder, tmp_path_factory):
    """One real run through the CLI, in the export folder, with every report written."""
    out = tmp_path_factory.mktemp("reports")
    args = ["bench", "--backend", "torch-deploy,onnxruntime-unfused,onnxruntime-fp32,onnxruntime-int8", "--batch", "1,2",
            "--size", str(SIZE), "--iters", "6", "--warmup", "1", "--threads", "2",
            "--json-out", str(out / "r.json"), "--md", str(out / "r.md"), "--plot", str(out / "r.png")]  # fmt: skip
    cwd = Path.cwd()
    try:
        os.chdir(export_folder)  # the user's flow: bench in the folder where export ran
        result = cli(*args)
    finally:
        os.chdir(cwd)
    assert result.code == 0, result.err
    return result, json.loads((out / "r.json").read_text()), out


def test_report_matches_documented_schema(cli_run):
    _, report, _ = cli_run
    jsonschema.validate(report, SCHEMA)
    assert report["machine"]["threads"] == 2 and report["machine"]["versions"]["onnxruntime"]


def test_every_selected_backend_ran_or_says_why(cli_run):
    result, report, _ = cli_run
    names = [r["name"] for r in report["results"]]
    assert names == ["torch-train", "torch-deploy", "onnxruntime-unfused", "onnxruntime-fp32"]
    skipped = {s["name"]: s["reason"] for s in report["skipped"]}
    assert "rcr-deploy export" in skipped["onnxruntime-int8"]
    assert "skipped onnxruntime-int8" in result.out + result.err


def test_ratios_floor_and_cost_are_consistent(cli_run, export_folder):
    _, report, _ = cli_run
    by_name = {r["name"]: r for r in report["results"]}
    for res in report["results"]:
        assert [r["batch"] for r in res["runs"]] == [1, 2]
        for run in res["runs"]:
            base = by_name["torch-train"]["runs"][run["batch"] - 1]["p50_ms"]
            assert run["speedup_vs_baseline"] == pytest.approx(base / run["p50_ms"])
            floor = 2 * res["macs"] * run["batch"] / (report["peak_gflops"] * 1e9) * 1e3
            assert run["compute_floor_ms"] == pytest.approx(floor)
            assert run["p50_ms"] >= run["min_ms"] > 0 and run["p99_ms"] >= run["p50_ms"]
    assert by_name["torch-train"]["runs"][0]["speedup_vs_baseline"] == 1.0
    # MACs of the ONNX artifact (graph count) equal the torch deploy form's (FlopCounterMode)
    ckpt = torch.load(export_folder / "ckpt.pt", weights_only=True)
    model = build_model("rcrnet")
    model.load_state_dict(ckpt["state_dict"])
    assert by_name["onnxruntime-fp32"]["macs"] == count_macs_torch(reparameterize(model), (SIZE, SIZE))
    assert by_name["onnxruntime-unfused"]["macs"] == report["model"]["macs_train"] > report["model"]["macs_deploy"]
    assert by_name["onnxruntime-fp32"]["artifact_bytes"] == (export_folder / DEFAULT_OUT_DIR / "rcrnet.onnx").stat().st_size
    assert report["model"]["export_fp32_s"] > 0 and report["model"]["paper"]["miou"] == 96.33


def test_miou_comes_from_the_manifest_and_reaches_reports(cli_run):
    _, report, out = cli_run
    by_name = {r["name"]: r for r in report["results"]}
    assert by_name["onnxruntime-fp32"]["miou"] == pytest.approx(95.12)
    assert by_name["torch-deploy"]["miou"] == pytest.approx(95.12)  # same weights as the fp32 artifact
    assert by_name["onnxruntime-unfused"]["miou"] == pytest.approx(95.12)
    md = (out / "r.md").read_text()
    assert "| onnxruntime-fp32 | fp32 |" in md and "95.12" in md and "re-parameterised FP32 ONNX vs un-fused" in md
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_lists_skips_and_headline(cli_run):
    _, report, _ = cli_run
    md = to_markdown(report)
    assert "## Skipped" in md and "onnxruntime-int8" in md
    assert f"{report['machine']['cpu']}" in md and "GFLOP/s" in md


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(iters=0), "--iters 0"),
        (dict(iters=-5), "--iters -5"),
        (dict(warmup=-1), "--warmup -1"),
        (dict(batches=[1, 0]), "--batch 1,0"),
        (dict(size=100), "--size 100"),
        (dict(backends=["tensorflow"]), "--backend tensorflow"),
        (dict(engines=["int4"]), "--engine int4"),
    ],
)
def test_bad_options_are_one_line_errors(kwargs, words):
    with pytest.raises(RcrError, match=words):
        harness.BenchConfig(**{"backends": ["torch-deploy"], **kwargs})


def test_batch_list_that_is_not_numbers():
    with pytest.raises(RcrError, match="comma-separated integers"):
        harness.parse_batches("1,eight")


def test_cli_zero_iterations_exit_2_without_work(tmp_path):
    out = cli_process("bench", "--iters", "0", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--iters 0" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_no_artifact_names_the_export_command(tmp_path):
    out = cli_process("bench", "--json-out", str(tmp_path / "r.json"), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "rcr-deploy-out/rcrnet.onnx" in out.stderr and "rcr-deploy export" in out.stderr
    assert list(tmp_path.iterdir()) == []  # no partial report


def test_cli_bench_times_an_artifact_path_and_json_prints(export_folder, tmp_path):
    """`bench ARTIFACT.onnx --json`: the baseline and that file only; the report on stdout, nothing written."""
    artifact = export_folder / DEFAULT_OUT_DIR / ARTIFACT_NAMES["fp32"]
    out = cli_process("bench", str(artifact), "--json", "--iters", "2", "--warmup", "0", "--size", str(SIZE), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    jsonschema.validate(report, SCHEMA)
    assert [r["name"] for r in report["results"]] == ["torch-train", "onnxruntime:rcrnet.onnx"]
    assert report["results"][1]["miou"] == pytest.approx(95.12) and list(tmp_path.iterdir()) == []
    bad = cli_process("bench", str(export_folder / "ckpt.pt"), cwd=tmp_path)
    assert bad.returncode == 2 and "ckpt.pt: not a model file bench runs; bench takes an export folder or files of" in bad.stderr


def test_table_fits_80_columns_and_uses_the_wide_layout_at_120(cli_run):
    from rich.console import Console

    from rcr_deploy.benchmarks.report import print_table

    for width, header in ((80, "p99 ms"), (120, "peak MB")):
        console = Console(width=width, record=True)
        print_table(cli_run[1], console)
        text = console.export_text()
        table = text[: text.index("× base: p50")]
        assert "…" not in table and header in table and max(map(len, table.splitlines())) <= width


def _has_tensorrt_and_gpu() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_has_tensorrt_and_gpu(), reason="TensorRT and a GPU are present: the engine really builds here")
def test_cli_engine_without_tensorrt_stops_with_the_install_hint(export_folder):
    out = cli_process("bench", "--engine", "fp16", cwd=export_folder)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "TensorRT" in out.stderr and "--backend onnxruntime" in out.stderr


class _FakeEngineRunner(Runner):
    name = "tensorrt:fake.engine"
    path = Path("rcr-deploy-out/engines/rcrnet-fp16-0123.engine")
    manifest = {"engine": {"profile": {"min": [1, 4, 224, 224], "opt": [1, 4, 224, 224], "max": [8, 4, 224, 224]}}}

    def infer(self, x):
        raise AssertionError("not reached")


def test_logic_only_batch_above_engine_profile_max_is_bad_input():
    runner = _FakeEngineRunner()
    harness.check_engine_batch(runner, 8)
    with pytest.raises(RcrError, match=r"rcrnet-fp16-0123.engine: engine profile allows batch <= 8, asked for 32"):
        harness.check_engine_batch(runner, 32)


def test_logic_only_engine_from_another_tensorrt_or_gpu_is_refused(export_folder, tmp_path, monkeypatch):
    """No TensorRT here: the runner's own identity check runs against a stand-in identity."""
    from rcr_deploy.runtime import tensorrt_runner

    here = {"tensorrt": "11.4.0", "gpu": "NVIDIA H200", "compute_capability": "9.0"}
    monkeypatch.setattr(tensorrt_runner, "require_tensorrt", lambda: object())
    monkeypatch.setattr(tensorrt_runner, "gpu_identity", lambda: here)
    engine = tmp_path / "rcrnet-fp16.engine"
    engine.write_bytes(b"serialized engine")
    built_for = {"tensorrt": "10.13.0", "gpu": "NVIDIA A100", "compute_capability": "8.0"}
    profile = {k: [1, 4, SIZE, SIZE] for k in ("min", "opt", "max")}
    engine_record = {"source": "rcrnet-fp16.onnx", "built_for": built_for, "profile": profile}
    write_manifest(engine, {**_manifest(export_folder / "ckpt.pt"), "engine": engine_record})
    with pytest.raises(RcrError, match="built for TensorRT 10.13.0 on NVIDIA A100.*rebuild"):
        tensorrt_runner.TensorRTRunner(engine)


def test_logic_only_engine_target_builds_with_a_profile_covering_the_batches(export_folder, tmp_path, monkeypatch):
    """No TensorRT here: stand-ins for the export's build_engine and runner check our plan logic
    (which artifact, which profile, the batch check on load), not TensorRT itself."""
    from rcr_deploy.exporters import tensorrt as trt_export

    out_dir = export_folder / DEFAULT_OUT_DIR
    fp16 = out_dir / ARTIFACT_NAMES["fp16"]
    fp16.write_bytes((out_dir / ARTIFACT_NAMES["fp32"]).read_bytes())  # stands in for the FP16 artifact
    built = {}

    def fake_build(artifact, options):
        built.update(artifact=artifact, options=options)
        return tmp_path / "rcrnet-fp16.engine"

    class FakeRunner(_FakeEngineRunner):
        def __init__(self, path):
            self.path = path

    monkeypatch.setattr(trt_export, "require_tensorrt", lambda: None)
    monkeypatch.setattr(trt_export, "build_engine", fake_build)
    monkeypatch.setattr(trt_export, "TensorRTRunner", FakeRunner)
    try:
        config = harness.BenchConfig(backends=[], engines=["fp16"], batches=[1, 32], out_dir=out_dir,
                                     ckpt=export_folder / "ckpt.pt", size=SIZE)  # fmt: skip
        targets, skipped, _ = harness.plan(config, tmp_path)
    finally:
        fp16.unlink()
    assert [t.name for t in targets] == ["torch-train", "tensorrt-fp16"] and skipped == []
    assert built["artifact"] == fp16
    assert built["options"].max_batch == 32 and built["options"].size == (SIZE, SIZE)
    with pytest.raises(RcrError, match="allows batch <= 8, asked for 32"):
        targets[1].load()  # the stand-in runner's manifest says max 8: refused before any timing


def test_logic_only_bench_never_writes_a_missing_artifact_it_names_the_export_command(export_folder, tmp_path, monkeypatch):
    """Bench measures, export writes: no FP16 artifact means an error naming the command, not an export."""
    from rcr_deploy.exporters import tensorrt as trt_export

    monkeypatch.setattr(trt_export, "require_tensorrt", lambda: None)
    out_dir = export_folder / DEFAULT_OUT_DIR
    before = sorted(p.name for p in out_dir.iterdir())
    config = harness.BenchConfig(backends=[], engines=["fp16"], out_dir=out_dir, ckpt=export_folder / "ckpt.pt", size=SIZE)
    with pytest.raises(RcrError, match=f"run 'rcr-deploy export CKPT --out {out_dir} --precision fp16 --force'"):
        harness.plan(config, tmp_path)
    assert sorted(p.name for p in out_dir.iterdir()) == before


def test_backend_families_expand_as_the_install_hint_promises():
    # TensorRT's install hint says "use --backend onnxruntime": it must name a real selection.
    assert harness.select_backends("onnxruntime", "cpu") == ["onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8"]
    assert harness.select_backends("torch,torch-deploy", "cpu") == ["torch-train", "torch-deploy", "torch-compile"]
    assert "onnxruntime-unfused" in harness.select_backends("all", "cpu")
    assert "torch-fp16" not in harness.select_backends("all", "cpu")
