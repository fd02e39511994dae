"""Trust what is on disk and what comes over the wire (docs/reliability.md, "What is verified").

Each class of fault is one parametrised test over every case of that class: tampered bytes of
every artifact kind, a bound for every manifest field a reader uses, foreign graphs, every kind
of bad path for every path option, and a hostile server for the `infer --server` client. Every
case holds the contract of tests/test_fuzz_cli.py: exit 2, one `error:` line naming the file or
option, no traceback, nothing written.
"""

from __future__ import annotations

import http.server
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from rcr_deploy.artifact import ARTIFACT_NAMES, manifest_path, read_manifest, write_manifest
from rcr_deploy.errors import ManifestError
from rcr_deploy.exporters import pipeline
from rcr_deploy.preprocess import input_spec
from rcr_deploy.runtime import load_runner
from rcr_deploy.serve import client as serve_client
from rcr_deploy.serve.service import SegmentService
from support import cli, write_dataset
from test_fuzz_cli import assert_refused, photo  # noqa: F401  (photo: a fixture)

SIZE = 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory, ckpt) -> Path:
    """`export ckpt.pt --format onnx,openvino` (FP32 only) at 64x64: the export set every test copies."""
    out = tmp_path_factory.mktemp("trust") / "out"
    pipeline.export(ckpt, out, ("fp32",), size=SIZE, formats="onnx,openvino", progress=False)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"), n=3)


@pytest.fixture
def folder(exported, tmp_path) -> Path:
    """A copy of the export set (shutil.copytree, links followed) that a test may damage."""
    return Path(shutil.copytree(exported, tmp_path / "set"))


def flip(path: Path) -> None:
    """Flip 5 x 64 bytes in the middle of a file, as a bad disk or a bad transfer would."""
    data = bytearray(path.read_bytes())
    for k in range(5):
        start = len(data) // 3 + k * (len(data) // 12)
        data[start : start + 64] = bytes(b ^ 0xFF for b in data[start : start + 64])
    path.write_bytes(bytes(data))


def command(name: str, model: Path, tmp_path: Path, photo: Path, data: Path) -> list[str]:
    """The CLI call of `name` that runs `model`: infer, eval or bench."""
    if name == "infer":
        return ["infer", str(photo), "--model", str(model), "--out", str(tmp_path / "o")]
    if name == "eval":
        return ["eval", str(model), "--data", str(data), "--limit", "1", "--per-image", str(tmp_path / "o" / "scores.csv")]
    bench = ["--backend", "openvino-fp32"] if model.suffix in (".xml", ".bin") or model.is_dir() else []
    target = model.parent if model.suffix in (".xml", ".bin") else model
    return ["bench", str(target), *bench, "--size", str(SIZE), "--iters", "1", "--warmup", "0", "--md", str(tmp_path / "o" / "bench.md")]


# --------------------------------------------------------------------------------- export sets


@pytest.mark.parametrize("how", ["cp -r", "copytree", "tar"])
def test_an_export_set_holds_only_links_that_resolve_and_its_copy_runs(exported, tmp_path, how):
    links = [p for p in exported.iterdir() if p.is_symlink()]
    assert links and all(p.exists() for p in links), [p.name for p in links if not p.exists()]
    assert not (exported / ARTIFACT_NAMES["fp16"]).is_symlink()  # a precision this set lacks has no link
    copy = tmp_path / "copy"
    if how == "cp -r":
        subprocess.run(["cp", "-r", str(exported), str(copy)], check=True)
    elif how == "copytree":
        shutil.copytree(exported, copy)
    else:
        with tarfile.open(tmp_path / "set.tar", "w") as tar:
            tar.add(exported, arcname="copy")
        with tarfile.open(tmp_path / "set.tar") as tar:
            tar.extractall(tmp_path, filter="tar")
    x = np.random.default_rng(0).standard_normal((1, 4, SIZE, SIZE)).astype(np.float32)
    for backend in ("onnxruntime", "openvino"):
        with load_runner(exported, backend=backend) as a, load_runner(copy, backend=backend) as b:
            assert b.manifest == a.manifest
            np.testing.assert_array_equal(b.infer(x), a.infer(x))


# ----------------------------------------------------------------------------- tampered bytes

TAMPERED = ["rcrnet.onnx", "rcrnet.xml", "rcrnet.bin"]


@pytest.mark.parametrize("name", TAMPERED)
@pytest.mark.parametrize("cmd", ["infer", "eval", "bench"])
def test_tampered_artifact_bytes_are_refused_before_use(folder, tmp_path, photo, data, name, cmd):
    flip(folder / name)
    model = folder / name if name != "rcrnet.bin" else folder / "rcrnet.xml"
    code, _, err = cli(*command(cmd, model, tmp_path, photo, data))
    assert_refused(code, err, name)
    assert "sha256" in err and "re-export" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("name", TAMPERED)
def test_tampered_artifact_bytes_are_refused_by_the_server(folder, name):
    flip(folder / name)
    with pytest.raises(ManifestError, match=f"{name}: its sha256"):
        SegmentService(folder / name if name != "rcrnet.bin" else folder / "rcrnet.xml")


def test_a_tampered_ir_without_its_sidecar_is_checked_against_its_own_record(folder, tmp_path, photo):
    manifest_path(folder / "rcrnet.xml").unlink()  # the copy in the IR's rt_info still records the weights
    flip(folder / "rcrnet.bin")
    code, _, err = cli("infer", str(photo), "--model", str(folder / "rcrnet.xml"), "--out", str(tmp_path / "o"))
    assert_refused(code, err, "rcrnet.bin")


def test_tampered_engine_bytes_are_refused_without_a_gpu(folder):
    # TensorRT cannot run here; the engine runner and the engine cache verify through the same
    # read_manifest, which this checks on a stand-in engine file (our logic, not TensorRT's).
    engine = folder / "engines" / "rcrnet-0123.engine"
    engine.write_bytes(bytes(range(256)) * 64)
    write_manifest(engine, {k: v for k, v in read_manifest(folder).items() if k != "artifact"})
    read_manifest(engine)
    flip(engine)
    with pytest.raises(ManifestError, match="rcrnet-0123.engine: its sha256"):
        read_manifest(engine)


@pytest.mark.parametrize("damage", ["model.bin", "sha256.json"])  # changed bytes; an entry with no record
def test_a_damaged_conversion_cache_entry_is_made_again_with_a_note(ckpt, tmp_path, monkeypatch, capsys, damage):
    monkeypatch.setenv("RCR_DEPLOY_CACHE", str(tmp_path / "cache"))
    x = np.random.default_rng(0).standard_normal((1, 4, SIZE, SIZE)).astype(np.float32)
    with load_runner(ckpt, backend="openvino") as runner:
        clean = runner.infer(x)
    (entry,) = (tmp_path / "cache" / "openvino").iterdir()
    if damage == "sha256.json":
        (entry / damage).unlink()
    else:
        flip(entry / damage)
    capsys.readouterr()
    with load_runner(ckpt, backend="openvino") as runner:
        again = runner.infer(x)
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "is damaged; converting ckpt.pt again" in err, err  # the note, then the conversion's
    np.testing.assert_array_equal(again, clean)
    with load_runner(ckpt, backend="openvino") as runner:  # re-made whole: the next load is quiet
        np.testing.assert_array_equal(runner.infer(x), clean)
    assert capsys.readouterr().err == ""


# -------------------------------------------------------------------------- manifest bounds


def _set(record: dict, where: str, value) -> None:
    *path, key = where.split("/")
    for part in path:
        record = record[part]
    if value is _DELETE:
        del record[key]
    else:
        record[key] = value


_DELETE = object()
#: field -> (a value out of bounds, what the one line names)
BOUNDS = {
    "input/size=100000": ("input/size", [100000, 100000], "input/size"),
    "input/size not square": ("input/size", [64, 96], "input/size"),
    "input/size vs its shape": ("input/size", [96, 96], "does not match input/size"),
    "input/size below 32": ("input/size", [16, 16], "input/size"),
    "input/size off 32": ("input/size", [70, 70], "input/size"),
    "input/mean length": ("input/mean", [0.5, 0.5], "input/mean"),
    "input/mean other": ("input/mean", [1.0, 2.0, 3.0], "mean"),
    "input/std zero": ("input/std", [0.0, 1.0, 1.0], "input/std"),
    "input/std other": ("input/std", [1.0, 1.0, 1.0], "std"),
    "input/pad_value": ("input/pad_value", 300, "input/pad_value"),
    "input/prior_channel": ("input/prior_channel", 2, "input/prior_channel"),
    "input/shape channels": ("input/shape", ["batch", 3, 64, 64], "channels"),
    "input/shape huge": ("input/shape", ["batch", 4, 100000, 100000], "input/shape"),
    "output/classes five": ("output/classes", ["a", "b", "c", "d", "person"], "output/classes"),
    "output/shape channels": ("output/shape", ["batch", 5, 64, 64], "output/shape"),
    "precision": ("precision", "fp8", "precision"),
    "no manifest": (None, None, "no manifest"),
}


@pytest.mark.parametrize("case", BOUNDS)
@pytest.mark.parametrize("cmd", ["infer", "eval", "bench"])
def test_every_manifest_field_is_bounded_and_every_command_refuses_alike(folder, tmp_path, photo, data, case, cmd):
    where, value, named = BOUNDS[case]
    artifact = folder / "rcrnet.onnx"
    if where is None:
        manifest_path(artifact).unlink()
        model = onnx.load(str(artifact))
        del model.metadata_props[:]
        onnx.save(model, str(artifact))
    else:
        record = json.loads(manifest_path(artifact).read_text())
        _set(record, where, value)
        manifest_path(artifact).write_text(json.dumps(record))
    code, _, err = cli(*command(cmd, artifact, tmp_path, photo, data))
    assert_refused(code, err, named)
    assert "rcrnet.onnx" in err


# ---------------------------------------------------------------------------- foreign graphs


def _graph(path: Path, inputs: list[list], output: list, body: str) -> Path:
    """A small ONNX graph that is not RCRNet: `body` is 'conv' (to output[1] channels) or 'add'."""
    ins = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, shape) for i, shape in enumerate(inputs)]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, output)
    if body == "conv":
        w = helper.make_tensor("w", TensorProto.FLOAT, [output[1], inputs[0][1], 1, 1], np.ones(output[1] * inputs[0][1], np.float32))
        nodes, inits = [helper.make_node("Conv", ["x0", "w"], ["y"])], [w]
    elif body == "relu":
        nodes, inits = [helper.make_node("Relu", ["x0"], ["y"])], []
    else:
        nodes, inits = [helper.make_node("Add", ["x0", "x1"], ["y"])], []
    model = helper.make_model(helper.make_graph(nodes, "foreign", ins, [out], inits), opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


FOREIGN = {
    "3-channel 64x64 classifier-like": ([[1, 3, 64, 64]], [1, 3, 64, 64], "conv"),
    "1-class output": ([["N", 4, 64, 64]], ["N", 1, 64, 64], "conv"),
    "symbolic channels": ([["N", "C", 64, 64]], ["N", "C", 64, 64], "relu"),
    "two inputs": ([["N", 4, 64, 64], ["N", 4, 64, 64]], ["N", 4, 64, 64], "add"),
    "rank 2": ([["N", 4]], ["N", 4], "relu"),
}


@pytest.mark.parametrize("case", FOREIGN)
@pytest.mark.parametrize("cmd", ["infer", "eval"])
def test_a_foreign_graph_is_refused_from_its_own_shapes(tmp_path, photo, data, case, cmd):
    inputs, output, body = FOREIGN[case]
    model = _graph(tmp_path / "foreign.onnx", inputs, output, body)
    code, _, err = cli(*command(cmd, model, tmp_path, photo, data))
    assert_refused(code, err, "foreign.onnx")
    assert "RCRNet artifacts" in err


def test_a_manifest_size_other_than_the_graph_s_is_refused(folder, tmp_path, photo):
    # A consistent manifest (size and shape agree), but for another graph than this 64x64 one.
    artifact = folder / "rcrnet.onnx"
    record = json.loads(manifest_path(artifact).read_text())
    record["input"]["size"], record["input"]["shape"][2:], record["output"]["shape"][2:] = [96, 96], [96, 96], [96, 96]
    manifest_path(artifact).write_text(json.dumps(record))
    code, _, err = cli("infer", str(photo), "--model", str(artifact), "--out", str(tmp_path / "o"))
    assert_refused(code, err, "its graph takes 64x64 input, its manifest says input size [96, 96]")


# ------------------------------------------------------------------------------ path options


def _path_case(option: str, kind: str, tmp_path: Path) -> Path:
    """A bad value of `option`: 'folder' (a folder where a file goes, or a file where a folder
    goes), 'under a file' (a file on the way), 'missing' (an input that is not there)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    if kind == "under a file":
        return blocker / "x"
    if kind == "missing":
        return tmp_path / "nowhere.json"
    wants_folder = option in ("--out", "--worst")
    if wants_folder:
        return blocker
    (tmp_path / "taken").mkdir()
    return tmp_path / "taken"


PATH_OPTIONS = ["bench --md", "bench --json-out", "bench --plot", "eval --per-image", "eval --worst", "eval --worst sheet",
                "train --out", "train --config", "export --out"]  # fmt: skip


@pytest.mark.parametrize("kind", ["folder", "under a file", "missing"])
@pytest.mark.parametrize("where", PATH_OPTIONS)
def test_every_path_option_is_checked_before_work_starts(tmp_path, ckpt, data, where, kind):
    cmd, option, *sheet = where.split()
    if kind == "missing" and option != "--config" or sheet and kind != "folder":
        pytest.skip("an output path that does not exist yet is made; the sheet case is one kind")
    path = _path_case(option, kind, tmp_path)
    if sheet:  # the sheet's own name is taken by a folder
        path = tmp_path / "worst"
        (path / "worst.png").mkdir(parents=True)
    before = sorted(p.name for p in tmp_path.iterdir())
    args = {
        "bench": ["bench", str(tmp_path / "nowhere"), option, str(path)],
        "eval": ["eval", str(ckpt), "--data", str(data), *([option, "2", str(path)] if option == "--worst" else [option, str(path)])],
        "train": ["train", "--data", str(data), option, str(path)],
        "export": ["export", str(ckpt), option, str(path)],
    }[cmd]
    code, _, err = cli(*args)
    assert_refused(code, err, str(path) if option == "--config" else option)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("config", [[1, 2], {"epochs": "many"}, {"lr": [0.1]}, {"anywhere": 1}, {"progressive": [160, "x"]}])
def test_a_config_of_wrong_shape_or_types_is_one_line(tmp_path, data, config):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    code, _, err = cli("train", "--data", str(data), "--config", str(path), "--out", str(tmp_path / "run"))
    assert_refused(code, err, "config.json")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("port", ["0", "70000", "-1"])
def test_serve_port_out_of_range_is_one_line(port):
    code, _, err = cli("serve", "--port", port)
    assert_refused(code, err, "--port")


# ---------------------------------------------------------------------------- hostile server

MODEL_RECORD = {"model": "m", "input": input_spec(SIZE)}
HOSTILE = {
    "raw bytes": (200, bytes(range(256)), None),
    "not JSON": (200, b"<html>hello</html>", None),
    "a JSON list": (200, b"[1, 2, 3]", None),
    "JSON without input": (200, b'{"model": "x"}', None),
    "a wrong input record": (200, json.dumps({"input": {"mean": "abc"}}).encode(), None),
    "an error as a JSON list": (500, b'["error"]', None),
    "an error with control characters": (500, json.dumps({"error": "bad\n\x1b[31mred"}).encode(), None),
    "a mask of raw bytes": (200, None, bytes(range(256))),
    "an empty mask": (200, None, b""),
    "a mask of another size": (200, None, "png"),
    "hangs": (200, None, "hang"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_the_server_client_refuses_any_unexpected_answer_in_one_line(tmp_path, photo, monkeypatch, case):
    status, record, mask = HOSTILE[case]
    if mask == "hang":
        monkeypatch.setattr(serve_client, "TIMEOUT_S", 1.0)

    class Hostile(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _answer(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._answer(status, record if record is not None else json.dumps(MODEL_RECORD).encode())

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            if mask == "hang":
                time.sleep(3)
                return
            from rcr_deploy.infer import encode_png

            self._answer(200, encode_png(np.zeros((5, 7), np.uint8)) if mask == "png" else mask)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    server.handle_error = lambda request, address: None  # a client that hung up is this test's point, not news
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        code, _, err = cli("infer", str(photo), "--server", url, "--out", str(tmp_path / "o"))
    finally:
        server.shutdown()
    assert_refused(code, err, url)
    assert "\x1b" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# ------------------------------------------------------------------------- library telemetry


def test_openvino_and_nncf_telemetry_are_off(exported):
    from openvino_telemetry import Telemetry

    from rcr_deploy.runtime.openvino_runner import require_openvino

    require_openvino()
    telemetry = Telemetry(app_name="probe", app_version="0", tid="probe", backend="ga4", enable_opt_in_dialog=False)
    telemetry.init(app_name="probe", app_version="0", tid="probe", backend="ga4", enable_opt_in_dialog=False)
    assert telemetry.consent is False


def test_checkpoint_refusal_is_one_line_in_a_fresh_process(tmp_path, photo):
    # Warnings print once per process: only a fresh one shows whether torch's warning leaks.
    bad = tmp_path / "old.pt"
    torch.save({"weights": torch.zeros(2)}, bad, _use_new_zipfile_serialization=False)
    proc = subprocess.run(
        [sys.executable, "-m", "rcr_deploy", "infer", str(photo), "--model", str(bad), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert_refused(proc.returncode, proc.stderr, "old.pt")


def test_a_corrupt_video_is_one_line_without_decoder_chatter(tmp_path, ckpt, capfd):
    import cv2

    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 96))
    for i in range(20):
        frame = np.full((96, 96, 3), i * 10, np.uint8)
        frame[20:60, 10 + i : 50 + i] = 255
        writer.write(frame)
    writer.release()
    data = bytearray(clip.read_bytes())
    for k in range(len(data) // 3, 2 * len(data) // 3, 37):  # damaged macroblocks from a third of the way in
        data[k] ^= 0xFF
    clip.write_bytes(bytes(data))
    code, _, err = cli("infer", str(clip), "--model", str(ckpt), "--backend", "torch", "--out", str(tmp_path / "o"))
    native = capfd.readouterr().err  # what FFmpeg wrote straight to file descriptor 2
    assert_refused(code, err, "clip.mp4")
    assert "@ 0x" not in native, native


def test_ctrl_c_during_the_openvino_step_exits_130_and_keeps_the_previous_set(exported, tmp_path, ckpt):
    from test_fuzz_cli import snapshot, spawn, wait_for, without_lock

    from rcr_deploy.artifact import STAGING_PREFIX, VERSIONS

    out = Path(shutil.copytree(exported, tmp_path / "out", symlinks=True))
    before = without_lock(snapshot(out))
    proc = spawn("export", str(ckpt), "-o", str(out), "--size", str(SIZE), "--precision", "fp32", "--format", "onnx,openvino", "--force")
    wait_for(f"{VERSIONS}/{STAGING_PREFIX}*/rcrnet.xml", out, proc)  # inside the OpenVINO step, before the commit
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert without_lock(snapshot(out)) == before
