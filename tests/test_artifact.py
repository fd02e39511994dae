"""The artifact contract (rcr_deploy.artifact): manifest reading and its typed errors, the schema,
resolving an export folder, and the atomic, locked commit of an export set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest

from rcr_deploy.artifact import (
    ARTIFACT_NAMES,
    CURRENT,
    MANIFEST_METADATA_KEY,
    VERSIONS,
    ExportSet,
    check_manifest,
    manifest_path,
    read_manifest,
    resolve,
    schema,
    write_manifest,
)
from rcr_deploy.errors import InternalError, ManifestError, RcrError
from rcr_deploy.exporters import manifest as manifests


def _record(precision: str = "fp32") -> dict:
    return manifests.build(
        arch="rcrnet", variant={"name": "rcrnet", "symbol": "", "description": ""}, checkpoint=Path("ckpt.pt"),
        checkpoint_sha256="0" * 64, precision=precision, opset=18, in_channels=4, size=(32, 32), dynamic_hw=False,
        ops={"Conv": 1}, export={}, validation=[], accuracy=None,
    )  # fmt: skip


def _tiny_artifact(path: Path, precision: str = "fp32", sidecar: bool = True) -> Path:
    """A 1x1 Conv ONNX model (4 channels in, 2 out, as RCRNet) with a full manifest embedded (and
    beside it): fast stand-in for an export."""
    x = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 4, 32, 32])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 2, 32, 32])
    w = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [2, 4, 1, 1], [1.0] * 8)
    graph = onnx.helper.make_graph([onnx.helper.make_node("Conv", ["input", "w"], ["logits"])], "g", [x], [y], [w])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    proto.ir_version = 8
    record = _record(precision)
    manifests.embed(proto, record)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    if sidecar:
        write_manifest(path, record)
    return path


def test_schema_is_valid_and_our_manifest_satisfies_it(tmp_path):
    jsonschema.Draft202012Validator.check_schema(schema())
    artifact = _tiny_artifact(tmp_path / "rcrnet.onnx")
    record = json.loads(manifest_path(artifact).read_text())
    jsonschema.validate(record, schema())
    assert record["checkpoint"]["path"] == str(Path("ckpt.pt").resolve())
    # The preprocessing is spelled out: the resize library and flag, its dtype, the letterbox, the loading.
    resize = record["input"]["resize"]
    assert (resize["library"], resize["interpolation"], resize["dtype"]) == ("opencv", "INTER_CUBIC", "uint8")
    assert record["input"]["prior_resize"]["interpolation"] == "INTER_LINEAR" and record["input"]["load"]["exif_transpose"]
    assert "never crop" in resize["order"]


def test_read_manifest_of_an_ir_without_its_sidecar_reads_its_rt_info(tmp_path):
    """One reader for every format: an OpenVINO IR's embedded copy is read from its XML, as
    `exporters.openvino` writes it, without OpenVINO."""
    from xml.sax.saxutils import quoteattr

    record = _record("fp32")
    xml = tmp_path / "rcrnet.xml"
    xml.write_text(f'<?xml version="1.0"?>\n<net name="m" version="11"><layers/><rt_info><rcr_deploy>'
                   f"<manifest value={quoteattr(json.dumps(record))} /></rcr_deploy></rt_info></net>\n")  # fmt: skip
    assert read_manifest(xml) == record
    xml.write_text('<net name="m"><layers/>')
    with pytest.raises(ManifestError, match="rcrnet.xml: not a readable OpenVINO IR"):
        read_manifest(xml)


def test_read_manifest_sidecar_then_embedded_copy(tmp_path):
    artifact = _tiny_artifact(tmp_path / "rcrnet.onnx")
    sidecar = read_manifest(artifact)
    manifest_path(artifact).unlink()
    embedded = read_manifest(artifact)
    assert {k: v for k, v in sidecar.items() if k != "artifact"} == embedded
    assert read_manifest(tmp_path) == embedded  # an export folder resolves to its FP32 artifact


@pytest.mark.parametrize(
    "text, needle",
    [
        ("{not json", "not valid JSON"),
        ("", "manifest is empty"),
        ("[1, 2]", "not an rcr-deploy manifest"),
        ('{"format": "rcr-deploy-manifest", "version": 1}', "manifest version 1"),
    ],
)
def test_corrupt_empty_or_wrong_typed_sidecar_is_one_manifest_error(tmp_path, text, needle):
    artifact = _tiny_artifact(tmp_path / "rcrnet.onnx")
    manifest_path(artifact).write_text(text)
    with pytest.raises(ManifestError, match=needle) as info:
        read_manifest(artifact)
    assert "rcrnet.onnx.json" in str(info.value) and "\n" not in str(info.value)


def test_wrong_typed_field_is_named(tmp_path):
    artifact = _tiny_artifact(tmp_path / "rcrnet.onnx")
    record = json.loads(manifest_path(artifact).read_text())
    record["input"]["size"] = "224"
    manifest_path(artifact).write_text(json.dumps(record))
    with pytest.raises(ManifestError, match="input/size"):
        read_manifest(artifact)


def test_sidecar_of_another_artifact_is_refused(tmp_path):
    artifact = _tiny_artifact(tmp_path / "rcrnet.onnx")
    other = _tiny_artifact(tmp_path / "other" / "rcrnet.onnx", precision="fp16")
    manifest_path(artifact).write_bytes(manifest_path(other).read_bytes())
    artifact.write_bytes(artifact.read_bytes() + b"\0")  # the file no longer matches any sidecar
    with pytest.raises(ManifestError, match="rcrnet.onnx: its sha256 .* is not the one rcrnet.onnx.json records"):
        read_manifest(artifact)


def test_missing_manifest_and_missing_precision_name_the_fix(tmp_path):
    artifact = _tiny_artifact(tmp_path / "rcrnet.onnx", sidecar=False)
    model = onnx.load(str(artifact))
    del model.metadata_props[:]
    onnx.save(model, str(artifact))
    assert read_manifest(artifact, missing_ok=True) is None
    with pytest.raises(ManifestError, match="no manifest"):
        read_manifest(artifact)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RcrError, match="rcr-deploy export CKPT --out .*empty --precision int8 --calib DIR'"):
        resolve(tmp_path / "empty", "int8")  # a first export: no --force
    _tiny_artifact(tmp_path / ARTIFACT_NAMES["fp16"], "fp16")
    with pytest.raises(RcrError, match="--precision fp16,int8 --calib DIR --force'"):
        resolve(tmp_path, "int8")  # keeps the FP16 the folder has


def test_a_manifest_we_make_that_fails_the_schema_is_our_bug(tmp_path):
    artifact = _tiny_artifact(tmp_path / "rcrnet.onnx")
    with pytest.raises(InternalError, match="fails its own schema"):
        write_manifest(artifact, {**_record(), "precision": "fp8"})
    with pytest.raises(ManifestError, match="precision"):
        check_manifest({**_record(), "precision": "fp8"}, "x")


def test_an_nhwc_record_is_checked_on_its_last_axis(tmp_path):
    # A .tflite carries NHWC records: its channels are the last axis, and a 64 x 64 input is not 64 channels.
    record = _record()
    record["input"].update(layout="NHWC", shape=[1, 32, 32, 4], dynamic_axes={})
    record["output"].update(layout="NHWC", shape=[1, 32, 32, 2], dynamic_axes={})
    assert check_manifest(record, "x") is record
    record["input"]["shape"] = [1, 32, 32, 3]
    with pytest.raises(ManifestError, match="input/shape has 3 channels"):
        check_manifest(record, "x")
    record["input"]["shape"], record["output"]["shape"] = [1, 32, 32, 4], [1, 32, 32, 5]
    with pytest.raises(ManifestError, match="output/shape"):
        check_manifest(record, "x")


# ---------------------------------------------------------------------------------- export sets


def _publish(out: Path, precisions: tuple[str, ...], force: bool = True) -> None:
    names = [ARTIFACT_NAMES[p] for p in precisions]
    with ExportSet(out, names, force) as stage:
        for p in precisions:
            _tiny_artifact(stage.path / ARTIFACT_NAMES[p], p)
        stage.commit()


def test_commit_publishes_one_whole_set_and_keeps_one_previous_version(tmp_path):
    out = tmp_path / "out"
    _publish(out, ("fp32", "fp16"))
    assert read_manifest(out / ARTIFACT_NAMES["fp16"])["precision"] == "fp16"
    umask = os.umask(0)
    os.umask(umask)
    assert (out / CURRENT).resolve().stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    first = os.readlink(out / CURRENT)
    _publish(out, ("fp32",))
    # The new set has no FP16: its name has no link (none dangles), absent to every reader.
    assert not (out / ARTIFACT_NAMES["fp16"]).is_symlink() and (out / ARTIFACT_NAMES["fp32"]).is_file()
    assert all(p.exists() for p in out.iterdir())
    assert os.readlink(out / CURRENT) != first and (out / first).is_dir()  # the previous set stays for readers in flight
    _publish(out, ("fp32",))
    assert not (out / first).exists() and len(list((out / VERSIONS).iterdir())) == 2


def test_an_older_flat_folder_is_taken_over_whole(tmp_path):
    out = tmp_path / "out"
    _tiny_artifact(out / ARTIFACT_NAMES["int8"], "int8")  # loose files of the unversioned layout
    _publish(out, ("fp32",))
    assert (out / ARTIFACT_NAMES["fp32"]).is_file() and not (out / ARTIFACT_NAMES["int8"]).is_file()
    assert not manifest_path(out / ARTIFACT_NAMES["int8"]).is_file()


def test_existing_set_kept_unless_force(tmp_path):
    out = tmp_path / "out"
    _publish(out, ("fp32",))
    with pytest.raises(RcrError, match="--force"):
        _publish(out, ("fp32",), force=False)


def test_abandoned_stage_changes_nothing_and_a_dead_writers_stage_is_swept(tmp_path):
    out = tmp_path / "out"
    _publish(out, ("fp32",))
    before = os.readlink(out / CURRENT)
    with pytest.raises(KeyboardInterrupt), ExportSet(out, [], force=True) as stage:
        _tiny_artifact(stage.path / ARTIFACT_NAMES["fp32"])
        raise KeyboardInterrupt
    assert os.readlink(out / CURRENT) == before and not list((out / VERSIONS).glob(".staging-*"))
    (out / VERSIONS / ".staging-killed").mkdir()  # what a SIGKILLed export leaves
    _publish(out, ("fp32",))
    assert not (out / VERSIONS / ".staging-killed").exists()


def test_a_second_writer_on_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    _publish(out, ("fp32",))
    with ExportSet(out, [], force=True):
        # Another process: flock is per open file, so a second process sees the lock.
        code = (
            "import sys; from rcr_deploy.artifact import ExportSet\n"
            "try:\n    ExportSet(sys.argv[1], [], True).__enter__()\n"
            "except Exception as e:\n    print(e); sys.exit(3)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and "another export is writing" in proc.stdout


# ------------------------------------------------------------------- every command that reads artifacts


@pytest.mark.parametrize("command", ["eval", "infer", "bench"])
def test_corrupt_sidecar_is_one_line_exit_2_in_every_reading_command(tmp_path, command):
    out = tmp_path / "out"
    _publish(out, ("fp32",))
    manifest_path(out / ARTIFACT_NAMES["fp32"]).resolve().write_text("{truncated")
    image = tmp_path / "me.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    args = {
        "eval": ["eval", str(out), "--data", str(tmp_path)],
        "infer": ["infer", str(image), "-m", str(out), "-o", str(tmp_path / "o")],
        "bench": ["bench", str(out), "--backend", "onnxruntime-fp32"],
    }[command]
    proc = subprocess.run([sys.executable, "-m", "rcr_deploy", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1 and "rcrnet.onnx.json" in proc.stderr


def test_embedded_manifest_key_is_the_documented_one(tmp_path):
    artifact = _tiny_artifact(tmp_path / "rcrnet.onnx")
    props = {p.key: p.value for p in onnx.load(str(artifact)).metadata_props}
    assert json.loads(props[MANIFEST_METADATA_KEY])["format"] == "rcr-deploy-manifest"


# ------------------------------------------------------------------------ runners' lifecycle


def test_runner_is_a_context_manager_and_refuses_infer_after_close(tmp_path):
    from rcr_deploy.runtime import load_runner

    artifact = _tiny_artifact(tmp_path / "rcrnet.onnx")
    x = np.zeros((1, 4, 32, 32), np.float32)
    with load_runner(tmp_path) as runner:
        assert runner.active and runner.infer(x).shape == (1, 2, 32, 32)
        assert runner.manifest["precision"] == "fp32" and runner.path == artifact
    assert not runner.active
    runner.close()  # twice is fine
    with pytest.raises(InternalError, match="after close"):
        runner.infer(x)


def test_load_runner_honours_the_device_or_refuses_in_one_line(tmp_path):
    import onnxruntime

    from rcr_deploy.runtime import load_runner

    _tiny_artifact(tmp_path / "rcrnet.onnx")
    with pytest.raises(RcrError, match="--device tpu: unknown device"):
        load_runner(tmp_path, device="tpu")
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        with load_runner(tmp_path, device="cuda") as runner:
            assert runner.session.get_providers()[0] == "CUDAExecutionProvider"
    else:
        with pytest.raises(RcrError, match="no CUDA provider; pip install onnxruntime-gpu, or use --device cpu"):
            load_runner(tmp_path, device="cuda")
    engine = tmp_path / "rcrnet.engine"
    engine.write_bytes(b"engine")
    with pytest.raises(RcrError, match="a TensorRT engine runs on cuda only; pass --device cuda"):
        load_runner(engine, device="cpu")
