"""OpenVINO as an export target and a runner, the INT8 Q/DQ placement rules, and INT8 agreement
across runtimes. One export of the full RCRNet (random BN statistics, 64x64) feeds most tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from rcr_deploy.checkpoint import save_checkpoint
from rcr_deploy.errors import ExportError, RcrError
from rcr_deploy.exporters import onnx as onnx_export
from rcr_deploy.exporters import openvino as openvino_export
from rcr_deploy.exporters import pipeline, precision
from rcr_deploy.exporters.precision import load_batch
from rcr_deploy.fileio import sha256_file
from rcr_deploy.models import build_model
from rcr_deploy.preprocess import list_images
from rcr_deploy.reparam import randomize_bn
from rcr_deploy.artifact import ARTIFACT_NAMES, IR_RT_INFO_KEY, format_path, manifest_path, read_manifest
from rcr_deploy.runtime import load_runner
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from rcr_deploy.runtime.openvino_runner import OpenVINORunner
from support import cli_process, write_dataset

pytestmark = pytest.mark.slow  # exports OpenVINO IRs and runs NNCF

pytest.importorskip("openvino")
SIZE = 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """`export ckpt.pt --precision fp32,int8 --format onnx,openvino --calib DIR` at 64x64."""
    root = tmp_path_factory.mktemp("ov")
    torch.manual_seed(0)
    model = build_model("rcrnet")
    randomize_bn(model, torch.Generator().manual_seed(0))  # default BN would make every check trivial
    save_checkpoint(root / "ckpt.pt", model, "rcrnet")
    data = write_dataset(root / "data", n=6, h=80, w=60)
    result = pipeline.export(
        root / "ckpt.pt", root / "out", ("fp32", "int8"), calib=data / "images", size=SIZE,
        formats="onnx,openvino", progress=False,
    )  # fmt: skip
    return {"root": root, "out": root / "out", "data": data, "result": result}


def _xml(exported: dict, p: str) -> Path:
    return exported["out"] / format_path(ARTIFACT_NAMES[p], "openvino").name


def _real(exported: dict) -> np.ndarray:
    return load_batch(list_images(exported["data"] / "images"), (SIZE, SIZE), 4)


# ------------------------------------------------------------------------------ export + manifest


def test_export_writes_ir_per_precision_with_manifest_in_rt_info_and_sidecar(exported):
    import openvino as ov

    result = exported["result"]
    assert set(result.formats["openvino"]) == {"fp32", "int8"}
    for p in ("fp32", "int8"):
        xml = _xml(exported, p)
        assert result.formats["openvino"][p] == xml and xml.with_suffix(".bin").stat().st_size > 10_000
        sidecar = json.loads(manifest_path(xml).read_text())
        embedded = json.loads(ov.Core().read_model(str(xml)).get_rt_info(list(IR_RT_INFO_KEY)).astype(str))
        assert {k: v for k, v in sidecar.items() if k != "artifact"} == embedded
        assert sidecar["artifact"] == {"file": xml.name, "sha256": sha256_file(xml)}
        onnx_artifact, source = exported["out"] / ARTIFACT_NAMES[p], exported["out"] / ARTIFACT_NAMES["fp32"]
        assert embedded["openvino"]["source"] == {"file": source.name, "sha256": sha256_file(source)}  # INT8: NNCF from FP32
        assert (embedded["openvino"]["quantization"] is not None) == (p == "int8")
        assert embedded["openvino"]["weights"]["sha256"] == sha256_file(xml.with_suffix(".bin"))
        assert embedded["precision"] == p and embedded["input"] == json.loads(manifest_path(onnx_artifact).read_text())["input"]
        check = embedded["validation"][-1]
        assert check["stage"] == f"openvino-{p}" and check["passed"] and check["mask_agreement"] is not None
    assert not list(exported["out"].glob(".export-*"))  # staging removed


@pytest.mark.parametrize("p", ["fp32", "int8"])
def test_ir_round_trip_agrees_with_its_onnx_within_the_stated_bound(exported, p):
    """The IR on OpenVINO (f32) against the ONNX it came from (FP32 for NNCF's INT8) on ONNX Runtime, on real images."""
    tol, agreement = openvino_export.TOLERANCES[p]
    runner, reference = OpenVINORunner(_xml(exported, p)), OnnxRuntimeRunner(exported["out"] / ARTIFACT_NAMES["fp32"])
    check = onnx_export.validate_openvino_int8 if p == "int8" else onnx_export.validate
    result = check(runner, reference, {"real": _real(exported)}, tol, agreement)
    assert result, result.summary()
    if p == "fp32":
        assert result.summary()["max_abs"] < 1e-3 and result.mask_agreement >= 0.999


def test_ir_validation_fails_hard_beyond_tolerance(exported, monkeypatch):
    from rcr_deploy.errors import VerificationError
    from rcr_deploy.reparam import Tolerance

    monkeypatch.setitem(openvino_export.TOLERANCES, "int8", (Tolerance(rtol=0.0, atol=0.0), 1.0))
    inputs = onnx_export.validation_inputs(4, (SIZE, SIZE), _real(exported))
    with pytest.raises(VerificationError, match="differs from rcrnet.onnx"):
        openvino_export._validated(_xml(exported, "int8"), exported["out"] / ARTIFACT_NAMES["fp32"], inputs, "int8")


# ------------------------------------------------------------------------------ runner hints


def test_runner_sets_its_hints_and_throughput_splits_the_batch_without_changing_results(exported):
    import openvino as ov
    import openvino.properties.hint as hints

    x = _real(exported)
    latency = OpenVINORunner(_xml(exported, "fp32"), hint="latency", threads=2)
    throughput = OpenVINORunner(_xml(exported, "fp32"), hint="throughput", threads=2)
    assert str(latency.compiled.get_property(hints.performance_mode)) == "LATENCY"
    assert str(throughput.compiled.get_property(hints.performance_mode)) == "THROUGHPUT"
    for r in (latency, throughput):
        assert r.compiled.get_property(hints.inference_precision) == ov.Type.f32
    np.testing.assert_allclose(throughput.infer(x), latency.infer(x), rtol=1e-4, atol=1e-4)
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        bf16 = OpenVINORunner(_xml(exported, "fp32"), precision="bf16")
        assert bf16.compiled.get_property(hints.inference_precision) == ov.Type.bf16
    with pytest.raises(RcrError, match="unknown"):
        OpenVINORunner(_xml(exported, "fp32"), hint="fast")


def test_latency_runner_fixes_each_input_shape_and_keeps_few(exported):
    from rcr_deploy.runtime.openvino_runner import MAX_STATIC_SHAPES

    x = _real(exported)
    latency = OpenVINORunner(_xml(exported, "fp32"), hint="latency", threads=2)
    # loaded with batch 1 compiled, and nothing dynamic compiled that it would not use
    assert latency.compiled.input(0).get_partial_shape().is_static and latency._dynamic is None
    assert list(latency._static) == [(1, *x.shape[1:])]
    dynamic = OpenVINORunner(_xml(exported, "fp32"), hint=None, precision="f32", threads=2)
    for batch in range(1, MAX_STATIC_SHAPES + 2):
        np.testing.assert_allclose(latency.infer(x[:batch]), dynamic.infer(x[:batch]), rtol=1e-4, atol=1e-4)
    assert len(latency._static) == MAX_STATIC_SHAPES and latency._dynamic is None
    assert all(r.get_compiled_model().input(0).get_partial_shape().is_static for r in latency._static.values())


def test_checkpoint_runs_on_openvino_by_default_through_the_cache(exported, tmp_path, monkeypatch, capfd):
    from rcr_deploy.runtime.openvino_runner import CheckpointOnOpenVINO

    monkeypatch.setenv("RCR_DEPLOY_CACHE", str(tmp_path / "cache"))
    ckpt, x = exported["root"] / "ckpt.pt", _real(exported)
    reference = load_runner(ckpt, backend="torch").infer(x)
    first = load_runner(ckpt)
    assert isinstance(first, CheckpointOnOpenVINO) and first.name == "openvino-fp32:ckpt.pt"
    assert not list((tmp_path / "cache").rglob("*.xml"))  # nothing converted before it is needed
    np.testing.assert_allclose(first.infer(x), reference, rtol=1e-4, atol=1e-4)
    assert "converting ckpt.pt to OpenVINO once" in capfd.readouterr().err
    (cached,) = (tmp_path / "cache").rglob("model.xml")
    second = load_runner(ckpt)
    np.testing.assert_allclose(second.infer(x), reference, rtol=1e-4, atol=1e-4)
    assert "converting" not in capfd.readouterr().err and second.xml == cached
    with pytest.raises(RcrError, match="--backend onnxruntime: ckpt.pt runs on torch"):
        load_runner(ckpt, backend="onnxruntime")


def test_nncf_ir_carries_its_own_measured_accuracy_not_the_qdq_artifacts(exported, tmp_path):
    from rcr_deploy.evaluate import evaluate

    data = exported["data"]
    out = tmp_path / "out"
    pipeline.export(exported["root"] / "ckpt.pt", out, ("fp32", "int8"), calib=data / "images", val=data, size=SIZE,
                    formats="onnx,openvino", progress=False)  # fmt: skip
    onnx_rows = {r["precision"]: r for r in read_manifest(out / "rcrnet-int8.onnx")["accuracy"]["rows"]}
    ir_rows = {r["precision"]: r for r in read_manifest(out / "rcrnet-int8.xml")["accuracy"]["rows"]}
    with OpenVINORunner(out / "rcrnet-int8.xml", hint="throughput") as runner:  # as the export scores it
        measured = evaluate(runner, data, size=SIZE, progress=False)
    assert ir_rows["int8"]["fg_miou"] == pytest.approx(measured.fg_miou, abs=1e-6)
    assert ir_rows["int8"]["fg_miou_vs_fp32"] == pytest.approx(measured.fg_miou - onnx_rows["fp32"]["fg_miou"], abs=1e-6)
    assert ir_rows["fp32"] == onnx_rows["fp32"]  # the FP32 IR is its ONNX converted: the same model, the same row


# ------------------------------------------------------------------------------ INT8 placement


def _stem(exported: dict) -> list[str]:
    return precision.stem_convs(onnx.load_model(str(exported["out"] / ARTIFACT_NAMES["fp32"])), (SIZE, SIZE))


def test_int8_no_relu_reads_a_dequantize_and_weighted_op_outputs_stay_float(exported):
    model = onnx.load_model(str(exported["out"] / ARTIFACT_NAMES["int8"]))
    precision.check_qdq_placement(model, _stem(exported))
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    relus = [n for n in graph.node if n.op_type == "Relu"]
    assert relus and all(producers[r.input[0]].op_type in ("Conv", "Add") for r in relus)  # Conv+Relu under one pair
    for node in graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):  # an output Q only ever serves a quantised reader's input
            for q in (c for o in node.output for c in consumers.get(o, []) if c.op_type == "QuantizeLinear"):
                readers = {r.op_type for dq in consumers[q.output[0]] for r in consumers.get(dq.output[0], [])}
                assert readers <= set(precision.QUANTIZED_OPS), (node.name, readers)
        if node.op_type == "ConvTranspose":
            assert node.input[1] not in producers  # depth-wise up-sampler weights stay float initializers
        if node.op_type == "Add":
            assert all(producers[i].op_type == "DequantizeLinear" for i in node.input)  # residual Add inputs quantised


def test_int8_placement_check_rejects_qdq_between_conv_and_relu(exported):
    model = onnx.load_model(str(exported["out"] / ARTIFACT_NAMES["int8"]))
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    relu = next(n for n in graph.node if n.op_type == "Relu" and producers[n.input[0]].op_type == "Conv")
    scale = helper.make_tensor("bad_scale", onnx.TensorProto.FLOAT, [], [0.1])
    zero = helper.make_tensor("bad_zero", onnx.TensorProto.INT8, [], [0])
    graph.initializer.extend([scale, zero])
    q = helper.make_node("QuantizeLinear", [relu.input[0], "bad_scale", "bad_zero"], ["bad_q"], name="bad_q")
    dq = helper.make_node("DequantizeLinear", ["bad_q", "bad_scale", "bad_zero"], ["bad_dq"], name="bad_dq")
    graph.node.extend([q, dq])
    relu.input[0] = "bad_dq"
    with pytest.raises(ExportError, match="Relu"):
        precision.check_qdq_placement(model, _stem(exported))


# ------------------------------------------------------------------------------ cross-runtime INT8


def test_int8_artifact_agrees_across_ort_levels_and_openvino(exported):
    """The same INT8 file on ORT DISABLE_ALL, ORT ENABLE_ALL and OpenVINO: each pair within the
    INT8 cross-runtime bound the export states (precision.CROSS_RUNTIME) on logits and on the mask,
    OpenVINO's pixel agreement not gated where this CPU's INT8 kernels saturate (validate_openvino_int8),
    and the export recorded its own check of it in the manifest."""
    path = exported["out"] / ARTIFACT_NAMES["int8"]
    tol, agreement = precision.CROSS_RUNTIME
    runners = [
        OnnxRuntimeRunner(path, optimization="DISABLE_ALL"),
        OnnxRuntimeRunner(path, optimization="ENABLE_ALL"),
        OpenVINORunner(path),  # OpenVINO reads the Q/DQ ONNX itself
    ]
    inputs = {"real": _real(exported)}
    for i, a in enumerate(runners):
        for b in runners[i + 1 :]:
            check = onnx_export.validate_openvino_int8 if isinstance(b, OpenVINORunner) else onnx_export.validate
            result = check(a, b, inputs, tol, agreement)
            assert result, (a.name, b.name, result.summary())
    stages = [v["stage"] for v in json.loads(manifest_path(path).read_text())["validation"]]
    assert {"int8 on onnxruntime DISABLE_ALL", "int8 on openvino"} <= set(stages)


# ------------------------------------------------------------------------------ commands take .xml


def test_load_runner_eval_infer_and_bench_take_the_ir(exported, tmp_path):
    xml = _xml(exported, "fp32")
    assert isinstance(load_runner(xml), OpenVINORunner)
    ev = cli_process("eval", str(xml), "--data", str(exported["data"]), "--json")
    assert ev.returncode == 0, ev.stderr[-1500:]
    report = json.loads(ev.stdout)
    assert report["model"] == f"openvino:{xml.name}" and report["n_images"] == 6 and report["size"] == SIZE
    image = list_images(exported["data"] / "images")[0]
    inf = cli_process("infer", str(image), "--model", str(xml), "--out", str(tmp_path / "inf"), "--save", "mask")
    assert inf.returncode == 0, inf.stderr[-1500:]
    assert list((tmp_path / "inf").rglob("*.png"))
    from rcr_deploy.benchmarks.harness import BenchConfig, run_bench

    config = BenchConfig(
        backends=["openvino-fp32", "openvino-int8"], out_dir=exported["out"], ckpt=exported["root"] / "ckpt.pt",
        size=SIZE, iters=2, warmup=0, max_seconds=5,
    )  # fmt: skip
    names = {r["name"]: r for r in run_bench(config)["results"]}
    assert {"openvino-fp32", "openvino-int8"} <= set(names)
    assert names["openvino-fp32"]["artifact_bytes"] == xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    assert names["openvino-int8"]["runs"][0]["p50_ms"] > 0


# ------------------------------------------------------------------------------ bad input


def test_ir_with_missing_or_truncated_bin_is_one_line_exit_2(exported, tmp_path):
    for case in ("missing", "truncated"):
        folder = tmp_path / case
        folder.mkdir()
        xml = folder / "rcrnet.xml"
        shutil.copy(_xml(exported, "fp32"), xml)
        if case == "truncated":
            data = _xml(exported, "fp32").with_suffix(".bin").read_bytes()
            xml.with_suffix(".bin").write_bytes(data[: len(data) // 2])
        proc = cli_process("eval", str(xml), "--data", str(exported["data"]))
        assert proc.returncode == 2, proc.stderr[-1500:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "rcrnet." in lines[0], lines


def test_unknown_format_is_one_line_exit_2(tmp_path):
    proc = cli_process("export", "--out", str(tmp_path / "o"), "--format", "onnx,mnn")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "--format mnn" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_nncf_quantisation_keeps_stdout_clean_for_json(exported, capfd):
    """`export --json` prints JSON on stdout; NNCF's progress bars and logs must not land there."""
    import openvino as ov

    model = ov.convert_model(str(exported["out"] / ARTIFACT_NAMES["fp32"]))
    quantized = openvino_export.quantize_nncf(model, _real(exported)[:2], progress=False)
    assert any(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    assert capfd.readouterr().out == ""


def _int8_weights(model) -> dict[str, tuple[str, np.ndarray]]:
    """The IR's (Group)Convolutions whose weights NNCF stored as int8 -> (op type, those values)."""
    found = {}
    for op in model.get_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution"):
            continue
        node = op.input_value(1).get_node()
        while node.get_type_name() != "Constant" and node.get_input_size():  # Multiply <- Convert <- int8 Constant
            node = node.input_value(0).get_node()
        if node.get_element_type().get_type_name() == "i8":
            found[op.get_friendly_name().split("/")[0]] = (op.get_type_name(), node.get_data().astype(np.int16))
    return found


def test_nncf_ir_keeps_the_stem_float_and_its_weights_in_seven_bits(exported):
    """As the Q/DQ artifact (--float-stem): the stem's Convs keep float weights; every other
    weight uses 7 bits, which x86 CPUs without VNNI multiply without clipping (module docstring)."""
    import openvino as ov

    weights = _int8_weights(ov.Core().read_model(str(_xml(exported, "int8"))))
    stem = _stem(exported)
    assert stem and not set(stem) & set(weights)
    # NNCF leaves depthwise ones at 8 bits: its overflow fix is for the dense kernels.
    dense = [w for kind, w in weights.values() if kind == "Convolution"]
    assert len(dense) > 10 and max(int(np.abs(w).max()) for w in dense) <= 64


def test_nncf_with_a_float_conv_the_model_lacks_is_an_export_error(exported):
    import openvino as ov

    model = ov.convert_model(str(exported["out"] / ARTIFACT_NAMES["fp32"]))
    with pytest.raises(ExportError, match="no-float-stem"):
        openvino_export.quantize_nncf(model, _real(exported)[:2], progress=False, float_convs=["no_such_conv"])
