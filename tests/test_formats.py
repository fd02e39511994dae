"""The format table (rcr_deploy.formats): both JSON schemas agree with it, and a new format is one
row plus an exporter module and a runner module, with no other file changing."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rcr_deploy import formats
from rcr_deploy.artifact import SCHEMA_PATH, read_manifest
from rcr_deploy.benchmarks import harness
from rcr_deploy.benchmarks.cost import count_macs_onnx
from rcr_deploy.formats import FORMATS, Format, Triton

BENCH_SCHEMA = json.loads(Path(harness.__file__).with_name("schema.json").read_text())
MANIFEST_SCHEMA = json.loads(SCHEMA_PATH.read_text())
#: Backends of bench rows that no format names: the checkpoint's own forms.
TORCH_BACKENDS = {"torch", "torch.compile"}


def test_manifest_schema_enums_and_blocks_are_the_tables():
    props = MANIFEST_SCHEMA["properties"]
    assert set(props["precision"]["enum"]) == {p for f in FORMATS.values() for p in f.precisions}
    blocks = {f.manifest for f in FORMATS.values() if f.manifest}
    # A format's block is optional (only its own sidecars carry it) and described by the schema.
    assert blocks <= set(props) and not blocks & set(MANIFEST_SCHEMA["required"])
    undeclared = {k for k, v in props.items() if "sidecars only" in v.get("description", "") and k != "artifact"}
    assert undeclared == blocks, "a manifest block that only one format's sidecars carry needs its row's `manifest`"


def test_bench_schema_enums_are_the_tables():
    result = BENCH_SCHEMA["$defs"]["result"]["properties"]
    assert set(result["backend"]["enum"]) == TORCH_BACKENDS | {f.backend for f in FORMATS.values() if f.runner}
    assert set(result["precision"]["enum"]) == {p for f in FORMATS.values() for p in f.precisions}


def test_rows_are_whole():
    for name, f in FORMATS.items():
        assert f.name == name and bool(f.suffixes) != bool(f.folder) and set(f.precisions) <= set(formats.PRECISIONS)
        assert set(f.devices) <= {"cpu", "cuda"} and set(f.reads) <= set(FORMATS)
        if f.triton is not None:
            assert len(f.triton.files) == len(f.suffixes)
        for entry in (f.exporter, f.runner, f.checkpoint_runner):
            if entry is not None and (name != "tensorrt" or formats.installed(f)):
                assert callable(formats.load(entry)), entry
    assert formats.AUTO and set(formats.AUTO) <= set(FORMATS)
    with_files = [f for f in FORMATS.values() if f.suffixes]
    assert len({f.suffixes[0] for f in with_files}) == len(with_files), "one format per file suffix"


# ------------------------------------------------------------------------------ a new format

EXPORTER = '''
    """The toy format's exporter: each ONNX artifact's graph, copied as a .toy file with its manifest."""
    import shutil

    from rcr_deploy.artifact import format_path, read_manifest, write_manifest
    from rcr_deploy.exporters import onnx as onnx_export
    from rcr_deploy.reparam import Tolerance
    from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

    from toy_runner import open_runner


    def export_format(artifacts, job):
        made, checks = {}, []
        for precision, artifact in artifacts.items():
            made[precision] = toy = format_path(artifact, "toy")
            shutil.copyfile(artifact, toy)
            write_manifest(toy, {k: v for k, v in read_manifest(artifact).items() if k != "artifact"})
            with open_runner(toy) as runner, OnnxRuntimeRunner(artifact) as reference:
                result = onnx_export.validate(runner, reference, job.inputs, Tolerance(0.0, 0.0), 1.0)
            result.stage = f"toy-{precision}"
            checks.append(result.summary())
        return made, checks
'''

RUNNER = '''
    """The toy format's runner: a .toy file is an ONNX graph, run on ONNX Runtime under its own name."""
    from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner


    def open_runner(path, device="cpu", hint="latency", threads=None):
        runner = OnnxRuntimeRunner(path, threads=threads)
        runner.name = f"toy:{path.name}"
        return runner
'''


@pytest.fixture
def toy(tmp_path, monkeypatch) -> Format:
    """A format registered for one test: its row, and its exporter and runner modules on sys.path."""
    modules = tmp_path / "toy_modules"
    modules.mkdir()
    (modules / "toy_exporter.py").write_text(textwrap.dedent(EXPORTER))
    (modules / "toy_runner.py").write_text(textwrap.dedent(RUNNER))
    monkeypatch.syspath_prepend(str(modules))
    row = Format(
        name="toy", title="toy model", suffixes=(".toy",), precisions=("fp32", "fp16"), backend="toyrt", devices=("cpu",),
        exporter="toy_exporter:export_format", runner="toy_runner:open_runner", extra=None, probe="json",
        triton=Triton('backend: "toyrt"', ("model.toy",)),
    )
    monkeypatch.setitem(FORMATS, "toy", row)
    return row


@pytest.mark.slow  # a real export, bench and infer
def test_a_new_format_is_one_row_and_two_modules(toy, tmp_path, cli):
    out = tmp_path / "out"
    done = cli("export", "--out", out, "--format", "toy", "--precision", "fp32", "--size", "64", "--triton", tmp_path / "triton")
    assert done.code == 0, done.err
    said = " ".join(done.out.split())  # the console wraps lines at its width
    assert "toy model (fp32)" in said and "vs onnxruntime" in said  # its exporter's own validation
    toy_file = out / "rcrnet.toy"
    manifest = read_manifest(toy_file)
    assert manifest["precision"] == "fp32" and manifest["artifact"]["file"] == "rcrnet.toy"
    assert (tmp_path / "triton" / "rcrnet_toy" / "1" / "model.toy").read_bytes() == toy_file.read_bytes()
    assert 'backend: "toyrt"' in (tmp_path / "triton" / "rcrnet_toy" / "config.pbtxt").read_text()

    bench = cli("bench", out, "--backend", "toyrt", "--size", "64", "--iters", "2", "--warmup", "0", "--threads", "1", "--json")
    assert bench.code == 0, bench.err
    report = json.loads(bench.out)
    rows = {r["name"]: r for r in report["results"]}
    assert rows["toyrt-fp32"]["backend"] == "toyrt" and rows["toyrt-fp32"]["runs"][0]["p50_ms"] > 0
    assert rows["toyrt-fp32"]["macs"] == count_macs_onnx(out / "rcrnet.onnx", (1, 4, 64, 64)).macs
    (skipped,) = report["skipped"]  # fp16 was not exported: skipped, naming the command that makes it
    assert skipped["name"] == "toyrt-fp16" and "--format onnx,toy" in skipped["reason"]

    image = tmp_path / "person.png"
    from rcr_deploy.postprocess import write_png

    write_png(image, np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8))
    seg = cli("infer", image, "--model", toy_file, "--out", tmp_path / "seg", "--save", "mask")
    assert seg.code == 0, seg.err
    assert "toy:rcrnet.toy" in " ".join(seg.out.split()) and (tmp_path / "seg" / "person_mask.png").is_file()


def test_an_unknown_format_names_the_table(cli, tmp_path):
    done = cli("export", "--out", tmp_path / "o", "--format", "toy")
    assert done.code == 2 and "--format toy: unknown; use a comma list of onnx, openvino" in done.err
