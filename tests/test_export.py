"""The export chain: artifacts, manifests, structural checks, precisions, Q/DQ placement, bad input.

One export of the full RCRNet (random BN statistics, 64x64 to stay fast) through the CLI feeds
most tests; bad-input tests fail before any slow work.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from rcr_deploy.exporters import onnx as onnx_export
from rcr_deploy.exporters import calibration, pipeline, precision
from rcr_deploy.checkpoint import save_checkpoint
from rcr_deploy.errors import CheckpointError, DataError, ExportError, RcrError, VerificationError
from rcr_deploy.models import build_model
from rcr_deploy.preprocess import list_images, preprocess
from rcr_deploy.reparam import Tolerance, randomize_bn, reparameterize
from rcr_deploy.artifact import ARTIFACT_NAMES, MANIFEST_METADATA_KEY, manifest_path, read_manifest
from rcr_deploy.runtime import load_runner
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

pytestmark = pytest.mark.slow  # every test exports the model (ONNX, FP16, INT8) at least once

SIZE = 64


def _portrait(rng: np.random.Generator, h: int = 80, w: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic 'portrait': a bright ellipse on a noisy background, and its mask."""
    yy, xx = np.mgrid[:h, :w]
    mask = (((yy - h * 0.6) / (h * 0.4)) ** 2 + ((xx - w / 2) / (w * 0.3)) ** 2) < 1
    rgb = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
    rgb[mask] = rng.integers(150, 255, 3, dtype=np.uint8)
    return rgb, mask.astype(np.uint8)


def _calib_folder(root: Path) -> Path:
    """RGB, grey, RGBA and 16-bit images: all must be converted, none may crash calibration."""
    rng = np.random.default_rng(0)
    root.mkdir()
    rgb, _ = _portrait(rng)
    Image.fromarray(rgb).save(root / "a_rgb.jpg")
    Image.fromarray(rgb[..., 0]).save(root / "b_grey.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])).save(root / "c_rgba.png")
    Image.fromarray((rgb[..., 1].astype(np.uint16) * 257)).save(root / "d_16bit.png")
    (root / "notes.txt").write_text("not an image: ignored")
    return root


def _val_folder(root: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        rgb, mask = _portrait(rng)
        Image.fromarray(rgb).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("rcrnet")
    randomize_bn(model, torch.Generator().manual_seed(0))  # default BN would make every check trivial
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.pt"
    save_checkpoint(path, model, "rcrnet")
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, ckpt) -> dict:
    """`rcr-deploy export ckpt.pt --precision fp32,fp16,int8 --calib DIR --val DIR` at 64x64."""
    root = tmp_path_factory.mktemp("export")
    calib, val, out = _calib_folder(root / "calib"), _val_folder(root / "val"), root / "out"
    cmd = [sys.executable, "-m", "rcr_deploy", "export", str(ckpt), "--out", str(out), "--precision", "fp32,fp16,int8",
           "--calib", str(calib), "--val", str(val), "--size", str(SIZE), "--json"]
    # One torch thread: on a shared 2-core runner, OpenMP threads waiting for each other cost minutes.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    return {"out": out, "calib": calib, "val": val, "result": result, "ckpt": ckpt}


def _artifact(exported: dict, p: str) -> Path:
    return exported["out"] / ARTIFACT_NAMES[p]


# ------------------------------------------------------------------------------ artifacts + manifest


def test_export_writes_every_precision_with_a_passing_validation_and_accuracy_table(exported):
    result = exported["result"]
    assert set(result["artifacts"]) == {"fp32", "fp16", "int8"}
    for p in ("fp32", "fp16", "int8"):
        assert _artifact(exported, p).is_file() and manifest_path(_artifact(exported, p)).is_file()
    stages = {v["stage"]: v for v in result["validation"]}
    assert stages["reparameterize"]["passed"] is True
    assert stages["fp32"]["reference"].startswith("torch-deploy") and stages["fp32"]["passed"]
    assert stages["fp16"]["passed"] and stages["int8"]["passed"]
    assert "real images b4" in stages["int8"]["inputs"]  # the calibration images validate too
    rows = {r["precision"]: r for r in result["accuracy"]["rows"]}
    assert set(rows) == {"fp32", "fp16", "int8"} and all(r["n_images"] == 4 for r in rows.values())
    assert rows["fp32"]["fg_miou_vs_fp32"] == 0.0
    assert not list((exported["out"] / ".versions").glob(".staging-*")), "staging folder left behind"


def test_manifest_round_trip_sidecar_equals_embedded_copy(exported, ckpt, tmp_path):
    from rcr_deploy.fileio import sha256_file

    artifact = _artifact(exported, "int8")
    sidecar = read_manifest(artifact)
    props = {p.key: p.value for p in onnx.load_model(str(artifact)).metadata_props}
    embedded = json.loads(props[MANIFEST_METADATA_KEY])
    assert {k: v for k, v in sidecar.items() if k != "artifact"} == embedded
    assert sidecar["artifact"]["sha256"] == sha256_file(artifact)
    assert sidecar["checkpoint"]["sha256"] == sha256_file(ckpt)
    assert sidecar["checkpoint"]["path"] == str(ckpt.resolve())
    assert sidecar["architecture"] == "rcrnet" and sidecar["precision"] == "int8" and sidecar["opset"] >= 18
    assert sidecar["input"]["shape"] == ["batch", 4, SIZE, SIZE] and sidecar["input"]["dynamic_axes"] == {"0": "batch"}
    assert sidecar["output"]["classes"] == ["background", "person"]
    assert sidecar["export"]["calibration"]["images"] == 4
    assert {"torch", "onnx", "onnxruntime", "onnxsim"} <= set(sidecar["tools"])
    assert [r["precision"] for r in sidecar["accuracy"]["rows"]] == ["fp32", "fp16", "int8"]
    # Without the sidecar the embedded copy is read.
    alone = tmp_path / "copy.onnx"
    shutil.copy(artifact, alone)
    assert read_manifest(alone) == embedded
    # The runtime finds the manifest too (bench/eval/infer read it from there).
    assert load_runner(exported["out"]).manifest["precision"] == "fp32"


THIRD_PARTY = textwrap.dedent(
    """
    # A third party with onnxruntime, OpenCV and Pillow, the artifact, its manifest and the schema:
    # every manifest field read goes through `field`, which refuses one the schema does not define.
    import json, sys
    import cv2, numpy as np, onnxruntime as ort
    from PIL import Image, ImageOps
    artifact, schema_file, out = sys.argv[1], sys.argv[2], sys.argv[3]
    m, schema = json.load(open(artifact + ".json")), json.load(open(schema_file))

    def field(record, node, key):
        assert key in node["properties"], key
        return record[key], node["properties"][key]

    spec, spec_s = field(m, schema, "input")
    size, _ = field(spec, spec_s, "size")
    pad, _ = field(spec, spec_s, "pad_value")
    mean, _ = field(spec, spec_s, "mean")
    std, _ = field(spec, spec_s, "std")
    resize, resize_s = field(spec, spec_s, "resize")
    assert field(resize, resize_s, "library")[0] == "opencv" and field(resize, resize_s, "dtype")[0] == "uint8"
    flag = getattr(cv2, field(resize, resize_s, "interpolation")[0])
    load, load_s = field(spec, spec_s, "load")
    assert field(load, load_s, "exif_transpose")[0]
    prior_channel, _ = field(spec, spec_s, "prior_channel")
    output, output_s = field(m, schema, "output")
    person = field(output, output_s, "classes")[0].index("person")
    sess = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    results = []
    for image in sys.argv[4:]:
        img = ImageOps.exif_transpose(Image.open(image))
        if img.mode in ("RGBA", "LA", "PA"):  # the schema's input.load.alpha
            img = Image.alpha_composite(Image.new("RGBA", img.size, (pad, pad, pad, 255)), img.convert("RGBA"))
        rgb = np.asarray(img.convert("RGB"))
        h, w = rgb.shape[:2]
        side = max(h, w)
        square = np.full((side, side, 3), pad, np.uint8)
        top, left = (side - h) // 2, (side - w) // 2
        square[top:top + h, left:left + w] = rgb
        x = cv2.resize(square, (size[1], size[0]), interpolation=flag).astype(np.float32)
        x = ((x - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)
        if prior_channel is not None:
            x = np.concatenate([x, np.zeros((1, *x.shape[1:]), np.float32)])
        (logits,) = sess.run([field(output, output_s, "name")[0]], {field(spec, spec_s, "name")[0]: x[None]})
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        results.append((e[:, person] / e.sum(axis=1))[0])
    np.save(out, np.stack(results))
    assert not any(name.startswith(("rcr_deploy", "exporters")) for name in sys.modules)
    """
)


def test_third_party_reproduces_our_probabilities_from_the_schema_fields_alone(exported, tmp_path):
    from rcr_deploy.artifact import SCHEMA_PATH
    from rcr_deploy.postprocess import foreground_prob
    from rcr_deploy.preprocess import load_image

    artifact = _artifact(exported, "fp32")
    # A letterboxed RGB portrait, a grey and an RGBA image: the loading conversions count too.
    images = [exported["val"] / "images" / "000.png", exported["calib"] / "b_grey.png", exported["calib"] / "c_rgba.png"]
    script = tmp_path / "third_party.py"
    script.write_text(THIRD_PARTY)
    out = tmp_path / "prob.npy"
    # -I: isolated mode, the project is not importable from the working folder.
    proc = subprocess.run([sys.executable, "-I", str(script), str(artifact), str(SCHEMA_PATH), str(out), *map(str, images)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with OnnxRuntimeRunner(artifact) as runner:
        ours = np.concatenate([foreground_prob(runner.infer(preprocess(load_image(p), SIZE)[0])) for p in images])
    theirs = np.load(out)
    assert theirs.shape == ours.shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


# ---------------------------------------------------------------------------------- structure


def test_structure_no_batchnorm_conv_count_and_only_documented_io(exported, ckpt):
    from rcr_deploy.checkpoint import load_checkpoint

    train = load_checkpoint(ckpt).model
    deploy = reparameterize(train)
    proto = onnx.load_model(str(_artifact(exported, "fp32")))
    ops = onnx_export.check_structure(proto, deploy)
    assert "BatchNormalization" not in ops
    assert ops["Conv"] == sum(isinstance(m, torch.nn.Conv2d) for m in deploy.modules()) == 74
    # The train form has more convs (unmerged branches, edge head): the count check must catch it.
    with pytest.raises(ExportError, match="Conv nodes"):
        onnx_export.check_structure(proto, train)
    extra_output = onnx.load_model(str(_artifact(exported, "fp32")))
    extra_output.graph.output.append(onnx.helper.make_tensor_value_info(proto.graph.node[0].output[0], onnx.TensorProto.FLOAT, ["n", 16, 32, 32]))
    with pytest.raises(ExportError, match="expected float32"):
        onnx_export.check_structure(extra_output, deploy)
    with_bn = onnx.load_model(str(_artifact(exported, "fp32")))
    c = 8
    for name, value in [("s", np.ones(c)), ("b", np.zeros(c)), ("m", np.zeros(c)), ("v", np.ones(c))]:
        with_bn.graph.initializer.append(onnx.numpy_helper.from_array(value.astype(np.float32), f"bn_{name}"))
    first_conv = next(n for n in with_bn.graph.node if n.op_type == "Conv")
    bn = onnx.helper.make_node("BatchNormalization", [first_conv.output[0], "bn_s", "bn_b", "bn_m", "bn_v"], ["bn_out"])
    with_bn.graph.node.append(bn)
    with pytest.raises(ExportError, match="BatchNormalization"):
        onnx_export.check_structure(with_bn, deploy)


class _TrainFormNet(torch.nn.Module):
    """A small train-form net (conv + BN, stride 2, transposed conv) to keep the export fast."""

    in_channels = 4

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(4, 8, 3, 2, 1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.ConvTranspose2d(8, 2, 4, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_export_onnx_any_model_with_dynamic_batch_and_hw(tmp_path):
    """`export_onnx` exports any model, BN and all (bench uses it for the un-fused train form);
    H/W are dynamic on request and the batch always is."""
    model = _TrainFormNet()
    randomize_bn(model, torch.Generator().manual_seed(1))
    model.train()  # export must force eval mode itself
    path = onnx_export.export_onnx(model, tmp_path / "train.onnx", size=(64, 64), dynamic_hw=True)
    model.eval()
    runner = OnnxRuntimeRunner(path)
    for shape in [(3, 4, 64, 96), (1, 4, 96, 64)]:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        out = runner.infer(x)
        assert out.shape == (shape[0], 2, *shape[2:])
        assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


# --------------------------------------------------------------------------------- precisions


def test_fp16_artifact_has_fp16_weights_and_fp32_io(exported):
    proto = onnx.load_model(str(_artifact(exported, "fp16")))
    float_inits = [i for i in proto.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert float_inits and all(i.data_type == onnx.TensorProto.FLOAT16 for i in float_inits)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [n.op_type for n in proto.graph.node].count("Cast") == 2
    v = next(v for v in exported["result"]["validation"] if v["stage"] == "fp16")
    tol, _ = pipeline.TOLERANCES["fp16"]
    assert 0 < v["max_abs"] and v["passed"] and v["rtol"] == tol.rtol


def test_int8_qdq_placement_is_the_tensorrt_one(exported):
    proto = onnx.load_model(str(_artifact(exported, "int8")))
    stem = precision.stem_convs(onnx.load_model(str(_artifact(exported, "fp32"))), (SIZE, SIZE))
    counts = precision.check_qdq_placement(proto, stem)
    assert counts["QuantizeLinear"] > 70  # every conv weight but the float ones, plus activations
    graph = proto.graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    assert producers["logits"].op_type == "Conv"  # float output, no Q/DQ
    sigmoid = next(n for n in graph.node if n.op_type == "Sigmoid")
    assert producers[sigmoid.input[0]].op_type not in ("QuantizeLinear", "DequantizeLinear")
    assert not any(sigmoid.output[0] in n.input for n in graph.node if n.op_type == "QuantizeLinear")
    assert len(stem) == 8  # stem, first block, the decoder skip's convolutions at 32x32 of 64x64
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        if conv.name in stem:  # rule 6: weight and input float
            assert conv.input[1] in inits
            assert getattr(producers.get(conv.input[0]), "op_type", None) not in precision.QDQ
            continue
        dq = producers[conv.input[1]]
        q = producers[dq.input[0]]
        assert (dq.op_type, q.op_type) == ("DequantizeLinear", "QuantizeLinear") and q.input[0] in inits
        scale = onnx.numpy_helper.to_array(inits[q.input[1]])
        assert scale.size == inits[q.input[0]].dims[0]  # per output channel
        assert len(conv.input) < 3 or inits[conv.input[2]].data_type == onnx.TensorProto.FLOAT  # bias not quantised
    zero_points = [onnx.numpy_helper.to_array(inits[n.input[2]]) for n in graph.node if n.op_type == "QuantizeLinear"]
    assert all(z.dtype == np.int8 and not z.any() for z in zero_points)  # symmetric int8


def test_int8_placement_check_rejects_onnxruntime_defaults(exported, tmp_path):
    """ORT's default config (asymmetric uint8, per-tensor) is not what TensorRT wants: the check must say so."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    src = tmp_path / "fp32.onnx"
    fp32 = onnx.load_model(str(_artifact(exported, "fp32")))
    del fp32.metadata_props[:]
    onnx.save_model(fp32, str(src))
    images = list_images(exported["calib"])[:2]
    reader = precision._ImageReader(images, (SIZE, SIZE), 4, progress=False)
    quantize_static(str(src), str(tmp_path / "default.onnx"), reader, quant_format=QuantFormat.QDQ)
    with pytest.raises(ExportError, match="symmetric int8"):
        precision.check_qdq_placement(onnx.load_model(str(tmp_path / "default.onnx")))


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_int8_calibration_methods(exported, method, caplog):
    fp32 = onnx.load_model(str(_artifact(exported, "fp32")))
    images = list_images(exported["calib"])[:2]
    with caplog.at_level("WARNING"):
        model = precision.quantize_int8(fp32, images, (SIZE, SIZE), 4, method, progress=False)
    assert precision.check_qdq_placement(model, precision.stem_convs(fp32, (SIZE, SIZE)))["DequantizeLinear"] > 0
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]  # ORT's hint, noise here


def _activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    inits = {i.name: i for i in model.graph.initializer}
    return {
        q.input[0]: float(onnx.numpy_helper.to_array(inits[q.input[1]]))
        for q in model.graph.node
        if q.op_type == "QuantizeLinear" and q.input[0] not in inits
    }


def test_int8_entropy_calibration_searches_thresholds(exported):
    """ORT's quantize_static alone builds the entropy calibrator with 128 bins and 128 quantised
    bins: one candidate threshold, the full range, so its scales equal min-max's. Ours clip
    some activations, never the graph input (8-bit pixels)."""
    fp32 = onnx.load_model(str(_artifact(exported, "fp32")))
    images = list_images(exported["calib"])[:1]
    minmax, entropy = (
        _activation_scales(precision.quantize_int8(fp32, images, (SIZE, SIZE), 4, m, progress=False, float_stem=False))
        for m in ("minmax", "entropy")
    )
    assert minmax.keys() == entropy.keys() and minmax
    assert all(entropy[n] <= minmax[n] * (1 + 1e-5) for n in minmax)  # a threshold inside the observed range
    assert sum(entropy[n] < 0.99 * minmax[n] for n in minmax) >= len(minmax) // 4
    assert entropy[onnx_export.INPUT_NAME] == pytest.approx(minmax[onnx_export.INPUT_NAME], rel=1e-3)


def test_int8_float_stem_keeps_the_high_resolution_convolutions_float(exported):
    """The float stem leaves the Convs `stem_convs` names, and the graph input, without Q/DQ and
    quantises the rest; the placement check holds the names it is given, either way."""
    fp32 = onnx.load_model(str(_artifact(exported, "fp32")))
    images = list_images(exported["calib"])[:1]
    stem = precision.stem_convs(fp32, (SIZE, SIZE))
    models = {k: precision.quantize_int8(fp32, images, (SIZE, SIZE), 4, "minmax", progress=False, float_stem=k) for k in (False, True)}
    for k, model in models.items():
        inits = {i.name for i in model.graph.initializer}
        assert {c.name for c in model.graph.node if c.op_type == "Conv" and c.input[1] in inits} == (set(stem) if k else set())
        assert (onnx_export.INPUT_NAME in _activation_scales(model)) != k
    counts = {k: precision.check_qdq_placement(m, stem if k else ())["QuantizeLinear"] for k, m in models.items()}
    assert counts[True] < counts[False]
    with pytest.raises(ExportError, match="high-resolution Conv is quantised"):
        precision.check_qdq_placement(models[False], stem)
    with pytest.raises(ExportError, match="weight is not a Q/DQ pair"):
        precision.check_qdq_placement(models[True])


def test_export_records_the_float_stem_and_the_cli_defaults_to_it(exported):
    from rcr_deploy.cli import export_cmd

    assert read_manifest(_artifact(exported, "int8"))["export"]["calibration"]["float_stem"] is True
    assert inspect.signature(export_cmd).parameters["float_stem"].default.default is True
    assert inspect.signature(pipeline.export).parameters["float_stem"].default is True


def test_int8_calibration_in_chunks_sees_every_image(exported, monkeypatch):
    """The calibrator reads the images a chunk per call (bounded memory); min-max ranges are the
    same whatever the chunk, so none is lost or read twice."""
    fp32 = onnx.load_model(str(_artifact(exported, "fp32")))
    images = list_images(exported["calib"])[:3]
    scales = []
    for chunk in (1, 2, 8):
        monkeypatch.setattr(calibration, "CALIB_CHUNK", chunk)
        scales.append(_activation_scales(precision.quantize_int8(fp32, images, (SIZE, SIZE), 4, "minmax", progress=False)))
    assert scales[0] == scales[1] == scales[2]
    one = _activation_scales(precision.quantize_int8(fp32, images[:1], (SIZE, SIZE), 4, "minmax", progress=False))
    assert one != scales[0]  # the other images count


def test_validation_fails_hard_beyond_tolerance(exported, monkeypatch):
    monkeypatch.setitem(pipeline.TOLERANCES, "fp16", (Tolerance(rtol=0.0, atol=0.0), 1.0))
    runner, reference = OnnxRuntimeRunner(_artifact(exported, "fp16")), OnnxRuntimeRunner(_artifact(exported, "fp32"))
    inputs = onnx_export.validation_inputs(4, (SIZE, SIZE))
    with pytest.raises(VerificationError, match="fp16 artifact differs"):
        pipeline._validated(runner, reference, inputs, "fp16")


# ---------------------------------------------------------------------------------- bad input


def test_missing_and_corrupt_checkpoint(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        pipeline.export(tmp_path / "nope.pt", out, progress=False)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="bad.pt"):
        pipeline.export(bad, out, progress=False)
    assert not out.exists()


def test_calibration_folder_errors(tmp_path, ckpt):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images"):
        pipeline.export(ckpt, out, "int8", calib=empty, progress=False)
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        pipeline.export(ckpt, out, "int8", calib=texts, progress=False)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match="broken.jpg"):
        pipeline.export(ckpt, out, "int8", calib=corrupt, progress=False)
    with pytest.raises(RcrError, match="--calib DIR"):
        pipeline.export(ckpt, out, "fp32,int8", progress=False)
    assert not out.exists()


def test_grey_rgba_16bit_calibration_images_are_converted(exported):
    images = list_images(exported["calib"])
    assert [p.name for p in images] == ["a_rgb.jpg", "b_grey.png", "c_rgba.png", "d_16bit.png"]
    batch = precision.load_batch(images, (SIZE, SIZE), 4)
    assert batch.shape == (4, 4, SIZE, SIZE) and np.isfinite(batch).all()


def test_unwritable_output_folder(tmp_path, ckpt):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(RcrError, match="cannot write"):
        pipeline.export(ckpt, blocker / "out", progress=False)


def test_existing_output_kept_unless_force(tmp_path, ckpt):
    out = tmp_path / "out"
    out.mkdir()
    (out / "rcrnet.onnx").write_bytes(b"previous")
    with pytest.raises(RcrError, match="--force"):
        pipeline.export(ckpt, out, progress=False)
    assert (out / "rcrnet.onnx").read_bytes() == b"previous"


def test_interrupted_export_leaves_previous_artifacts_intact(tmp_path, ckpt, exported, monkeypatch):
    torch.set_num_threads(1)  # as in the fixture: OpenMP threads on a shared runner wait for each other
    out = tmp_path / "out"
    shutil.copytree(exported["out"], out, symlinks=True)

    def snapshot() -> dict:
        return {str(p.relative_to(out)): os.readlink(p) if p.is_symlink() else p.read_bytes() for p in out.rglob("*") if p.is_symlink() or p.is_file()}

    before = snapshot()

    def ctrl_c(*args):
        raise KeyboardInterrupt

    # Ctrl-C when the new rcrnet.onnx is already staged and about to be validated.
    monkeypatch.setattr(pipeline, "OnnxRuntimeRunner", ctrl_c)
    monkeypatch.setattr(pipeline, "default_checkpoint", lambda: ckpt)  # no CKPT: the built-in model
    with pytest.raises(KeyboardInterrupt):
        pipeline.export(None, out, "fp32,fp16", size=SIZE, force=True, progress=False)
    assert snapshot() == before  # no staging folder, nothing changed


@pytest.mark.parametrize("args, needle", [(["/no/such.pt"], "/no/such.pt"), (["--precision", "int8"], "--calib")])
def test_cli_bad_input_one_line_exit_2(tmp_path, ckpt, args, needle):
    if args[0] == "--precision":
        args = [str(ckpt), *args]
    proc = subprocess.run([sys.executable, "-m", "rcr_deploy", "export", *args, "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and needle in proc.stderr and proc.stderr.startswith("error:")
