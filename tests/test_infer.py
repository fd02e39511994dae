"""`rcr-deploy infer`: every input kind, every output mode, the prior, the pipeline, bad input.

Most tests use `KnownRunner`, a stand-in model whose answer is known (person = bright red
pixels), so the letterbox / un-letterbox / compositing / video logic is checked against exact
expectations. The real model runs through the CLI tests (random weights: only the plumbing
is checked there) and through ONNX Runtime for the manifest tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from rcr_deploy import infer, postprocess, video
from rcr_deploy.cli import main
from rcr_deploy.data import synthetic
from rcr_deploy.errors import DataError, RcrError
from rcr_deploy.metrics import image_ious
from rcr_deploy.models import build_model
from rcr_deploy.preprocess import letterbox_mask
from rcr_deploy.reparam import reparameterize
from rcr_deploy.artifact import manifest_path
from rcr_deploy.runtime import Runner
from support import KnownRunner, read_frames, save_rgb, visible_files

RED = (230, 20, 20)
BLUE = (20, 20, 90)


def red_square(h: int, w: int, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[:] = BLUE
    y0, y1, x0, x1 = box
    rgb[y0:y1, x0:x1] = RED
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return rgb, mask


def read_rgb(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB if img.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    frames = list(synthetic.video(6, 64, 96, seed=0))
    path = video.write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", [f for f, _ in frames], fps=10)
    return path, [m for _, m in frames]


# ------------------------------------------------------------------------- library: exact logic


def test_mask_maps_back_onto_frames_of_any_shape():
    for h, w, box in [(60, 100, (10, 50, 30, 70)), (100, 60, (40, 90, 5, 35)), (64, 64, (0, 64, 0, 20))]:
        rgb, mask = red_square(h, w, box)
        prob = infer.Segmenter(KnownRunner(), size=96).segment(rgb)
        assert prob.shape == (h, w)
        assert image_ious(prob, mask)[0] > 0.9, (h, w)


def test_every_output_mode_composes_as_defined(tmp_path):
    rgb, mask = red_square(40, 60, (5, 35, 10, 40))
    alpha = mask.astype(np.float32)
    assert np.array_equal(postprocess.compose(rgb, alpha, "mask"), mask * 255)
    cutout = postprocess.compose(rgb, alpha, "cutout")
    assert cutout.shape == (40, 60, 4) and np.array_equal(cutout[..., :3], rgb) and np.array_equal(cutout[..., 3], mask * 255)
    green = postprocess.compose(rgb, alpha, "background", postprocess.Background("#00B140"))
    assert np.array_equal(green[mask == 1], rgb[mask == 1]) and (green[mask == 0] == (0, 0xB1, 0x40)).all()
    blurred = postprocess.compose(rgb, alpha, "background", postprocess.Background("blur"))
    assert np.array_equal(blurred[mask == 1], rgb[mask == 1]) and not np.array_equal(blurred[mask == 0], rgb[mask == 0])
    overlay = postprocess.compose(rgb, alpha, "overlay")
    assert np.array_equal(overlay[0, 0], rgb[0, 0]) and not np.array_equal(overlay[20, 25], rgb[20, 25])
    pair = postprocess.compose(rgb, alpha, "before-after")
    assert pair.shape == (40, 120, 3) and np.array_equal(pair[:, :60], rgb) and np.array_equal(pair[:, 60:], overlay)
    assert np.array_equal(postprocess.compose(rgb, alpha, "before-after", postprocess.Background("blur"))[:, 120:], blurred)


def test_save_option_parsing():
    assert infer.parse_modes("mask, overlay", None) == ("mask", "overlay")
    assert infer.parse_modes("mask", "blur") == ("mask", "background")  # --background alone adds it
    assert infer.parse_modes("before-after", "blur") == ("before-after",)  # already shows it


def test_background_image_of_another_size_is_resized(tmp_path):
    bg = np.zeros((300, 17, 3), np.uint8)
    bg[:, :, 2] = 200
    path = save_rgb(tmp_path / "bg.png", bg)
    rgb, mask = red_square(40, 60, (5, 35, 10, 40))
    out = postprocess.compose(rgb, mask.astype(np.float32), "background", postprocess.Background(str(path)))
    assert out.shape == rgb.shape and (out[mask == 0] == (0, 0, 200)).all()


def test_feathering_softens_only_the_edge():
    rgb, _ = red_square(64, 64, (16, 48, 16, 48))
    seg = infer.Segmenter(KnownRunner(), size=64, feather=2.0)
    alpha = seg.alpha(seg.segment(rgb))
    assert alpha[32, 32] > 0.99 and alpha[2, 2] < 0.01
    edge = alpha[32, 10:22]
    assert ((edge > 0.05) & (edge < 0.95)).sum() >= 3  # a ramp, not a step


def test_prior_channel_carries_the_previous_frame_and_no_prior_keeps_zeros():
    frames = [red_square(48, 64, (10, 40, 5 + 3 * t, 30 + 3 * t)) for t in range(4)]
    source = [(f"f{t}", rgb) for t, (rgb, _) in enumerate(frames)]
    for prior in (True, False):
        runner = KnownRunner()
        seg = infer.Segmenter(runner, size=64)
        sink = infer.MemorySink()
        infer.run(source, seg, sink, prior=prior, progress=False)
        priors = [x[0, 3] for x in runner.inputs]
        assert not priors[0].any()  # nothing before the first frame
        for t in range(1, 4):
            if prior:
                _, box = seg.letterbox(frames[t][0])
                previous_mask = (sink.probs[t - 1] > 0.5).astype(np.float32)
                np.testing.assert_allclose(priors[t], letterbox_mask(previous_mask, box), atol=1e-6)
                assert priors[t].max() > 0.9
            else:
                assert not priors[t].any()


def test_pipelined_and_single_thread_give_the_same_masks_in_order():
    frames = [red_square(48, 64, (10, 40, 2 + 4 * t, 20 + 4 * t))[0] for t in range(9)]
    results = []
    for pipelined in (True, False):
        sink = infer.MemorySink()
        _, timings = infer.run(((str(t), f) for t, f in enumerate(frames)), infer.Segmenter(KnownRunner(), size=64), sink,
                               prior=True, pipelined=pipelined, progress=False)
        results.append(sink.probs)
        assert timings.frames == 9 and timings.wall_s > 0 and timings.stage_s["model"] > 0
        assert set(timings.stage_s) == set(infer.STAGES)
    assert all(np.array_equal(a, b) for a, b in zip(*results))
    assert results[0][0].argmax() != results[0][-1].argmax()  # frames really differ (order is tested)


def test_error_in_a_stage_stops_the_pipeline_and_leaves_no_video(tmp_path):
    class FailsOnThird(KnownRunner):
        def infer(self, x):
            if len(self.inputs) == 2:
                raise RcrError("model failed on frame 3")
            return super().infer(x)

    frames = [(str(t), red_square(32, 48, (4, 28, 4, 30))[0]) for t in range(6)]
    sink = infer.VideoSink(tmp_path, "clip", ("overlay", "mask"), fps=10)
    with pytest.raises(RcrError, match="frame 3"):
        infer.run(frames, infer.Segmenter(FailsOnThird(), size=64), sink, progress=False)
    assert visible_files(tmp_path) == []


def test_stability_metric_on_known_masks():
    masks = [m for _, m in synthetic.video(8, 48, 64, seed=0)]
    perfect = video.stability([m.astype(np.float32) for m in masks], masks)
    assert perfect.flicker == 0 and perfect.fg_iou == 1 and perfect.pred_consecutive_iou == perfect.gt_consecutive_iou < 1
    rng = np.random.default_rng(0)
    flickering = [np.where(rng.random(m.shape) < 0.05, 1 - m, m).astype(np.float32) for m in masks]
    noisy = video.stability(flickering, masks)
    assert noisy.flicker > 0.05 and noisy.pred_consecutive_iou < perfect.pred_consecutive_iou
    frozen = video.stability([masks[0].astype(np.float32)] * len(masks), masks)  # never moves
    assert frozen.pred_consecutive_iou == 1 and frozen.flicker == pytest.approx(1 - perfect.gt_consecutive_iou)
    with pytest.raises(ValueError):
        video.stability(flickering[:1], masks[:1])


def test_stability_of_a_decoded_clip_with_and_without_prior(tmp_path):
    """Video file -> pipeline -> metric: a known model on a moving square, through mp4 compression."""
    clip = [red_square(64, 96, (12, 52, 10 + 3 * t, 40 + 3 * t)) for t in range(10)]
    path = video.write_video(tmp_path / "square.mp4", [f for f, _ in clip], fps=10)
    masks = [m for _, m in clip]
    scores = {}
    for prior in (True, False):
        sink = infer.MemorySink()
        infer.run(video.VideoSource(path), infer.Segmenter(KnownRunner(), size=96), sink, prior=prior, progress=False)
        scores[prior] = video.stability(sink.probs, masks)
    s = scores[True]
    assert s.frames == 10 and s.fg_iou > 0.9
    assert s.gt_consecutive_iou == pytest.approx(video.stability([m.astype(np.float32) for m in masks], masks).gt_consecutive_iou)
    assert s.flicker < 0.05  # this model follows the square exactly; only compression blurs edges
    assert scores[True] == scores[False]  # it ignores the prior, so the prior must not change the RGB input


# ------------------------------------------------------------------------------------ CLI inputs


def test_cli_image_every_output_mode_and_other_size_background(tmp_path, ckpt, cli):
    rgb, _ = synthetic.sample_portrait(80, 64, seed=1)
    image = save_rgb(tmp_path / "me.jpg", rgb)
    bg = save_rgb(tmp_path / "beach.png", np.full((50, 130, 3), 200, np.uint8))
    out = tmp_path / "out"
    code, stdout, err = cli("infer", str(image), "-m", str(ckpt), "-o", str(out), "--save", "mask,cutout,overlay",
                            "--background", str(bg), "--feather", "1.5")
    assert code == 0, err
    assert visible_files(out) == ["me_background.png", "me_cutout.png", "me_mask.png", "me_overlay.png"]
    mask = read_rgb(out / "me_mask.png", cv2.IMREAD_UNCHANGED)
    cutout = read_rgb(out / "me_cutout.png", cv2.IMREAD_UNCHANGED)
    assert mask.shape == (80, 64) and cutout.shape == (80, 64, 4)
    assert np.array_equal(cutout[..., 3], mask)
    assert read_rgb(out / "me_background.png").shape == (80, 64, 3)
    assert "FPS" in stdout and "model" in stdout


def test_cli_folder_of_mixed_sizes(tmp_path, ckpt, cli):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (h, w) in enumerate([(64, 48), (48, 96), (70, 70)]):
        save_rgb(folder / f"p{i}.png", synthetic.sample_portrait(h, w, seed=i)[0])
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code, stdout, err = cli("infer", str(folder), "-m", str(ckpt), "-o", str(out), "--save", "mask")
    assert code == 0, err
    assert visible_files(out) == ["p0_mask.png", "p1_mask.png", "p2_mask.png"]
    assert read_rgb(out / "p1_mask.png", cv2.IMREAD_UNCHANGED).shape == (48, 96)
    # --skip-done resumes: only the image whose picture is missing is segmented again, the same bytes.
    first = (out / "p1_mask.png").read_bytes()
    (out / "p1_mask.png").unlink()
    code, stdout, err = cli("infer", str(folder), "-m", str(ckpt), "-o", str(out), "--save", "mask", "--skip-done")
    assert code == 0 and "wrote 1 file(s)" in " ".join(stdout.split()), stdout + err
    assert visible_files(out) == ["p0_mask.png", "p1_mask.png", "p2_mask.png"] and (out / "p1_mask.png").read_bytes() == first
    code, stdout, err = cli("infer", str(folder / "p0.png"), "-m", str(ckpt), "-o", str(out), "--skip-done")
    assert code == 2 and "--skip-done" in err and "not a folder" in err


@pytest.mark.parametrize("prior", ["--prior", "--no-prior"])
def test_cli_video_to_mp4(tmp_path, ckpt, clip, prior, cli):
    path, masks = clip
    out = tmp_path / "out"
    code, stdout, err = cli("infer", str(path), "-m", str(ckpt), "-o", str(out), "--save", "overlay,mask", prior)
    assert code == 0, err
    assert visible_files(out) == ["clip_mask.mp4", "clip_overlay.mp4"]
    frames = read_frames(out / "clip_overlay.mp4")
    assert len(frames) == len(masks) and frames[0].shape == (64, 96, 3)
    assert f"prior {'on' if prior == '--prior' else 'off'}" in stdout


def test_cli_codec_that_cannot_be_written_falls_back(tmp_path, ckpt, clip, cli):
    out = tmp_path / "out"
    code, _, err = cli("infer", str(clip[0]), "-m", str(ckpt), "-o", str(out), "--save", "overlay,mask", "--codec", "ZZZZ",
                       "--frames", "2")
    assert code == 0, err
    assert err.count("note: cannot write codec 'ZZZZ' here; wrote h264") == 1  # once, not once per output
    assert visible_files(out) == ["clip_mask.mp4", "clip_overlay.mp4"] and len(read_frames(out / "clip_mask.mp4")) == 2


def test_logic_only_camera_source_with_a_fake_capture(tmp_path, monkeypatch):
    """No camera here: a fake cv2.VideoCapture stands in for the device to test our camera path
    (index parsing, live source, frame limit, mp4 out)."""
    frames = [cv2.cvtColor(red_square(48, 64, (8, 40, 4 * t, 30 + 4 * t))[0], cv2.COLOR_RGB2BGR) for t in range(5)]

    real_capture = cv2.VideoCapture

    class FakeCamera:
        def __new__(cls, source):
            # The finished mp4 is decoded back by the real class before it is committed.
            return real_capture(source) if isinstance(source, str) else super().__new__(cls)

        def __init__(self, source):
            assert source == 2
            self.left = list(frames)

        def isOpened(self):
            return True

        def read(self):
            return (True, self.left.pop(0)) if self.left else (False, None)

        def get(self, prop):
            return 0.0  # cameras often report no fps and no length

        def release(self):
            pass

    monkeypatch.setattr(video.cv2, "VideoCapture", FakeCamera)
    runner = KnownRunner()
    result = infer.infer("2", runner, tmp_path, save="overlay", max_frames=4, progress=False)
    assert result.kind == "camera" and result.prior and result.timings.frames == 4
    assert [p.name for p in result.written] == ["camera2_overlay.mp4"]
    assert not runner.inputs[0][0, 3].any() and runner.inputs[1][0, 3].max() > 0.9  # the prior is on


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kind", ["image", "video"])
def test_unreadable_input_is_one_line_exit_2_and_no_output(tmp_path, ckpt, kind, cli):
    bad = tmp_path / ("broken.png" if kind == "image" else "broken.mp4")
    bad.write_bytes(b"\x89PNG not really" * 20)
    out = tmp_path / "out"
    code, _, err = cli("infer", str(bad), "-m", str(ckpt), "-o", str(out))
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and str(bad) in err
    assert visible_files(out) == []


def test_corrupt_image_inside_a_folder_names_it(tmp_path, ckpt, cli):
    folder = tmp_path / "photos"
    folder.mkdir()
    save_rgb(folder / "a.png", synthetic.sample_portrait(48, 48)[0])
    (folder / "b.png").write_bytes(b"garbage")
    code, _, err = cli("infer", str(folder), "-m", str(ckpt), "-o", str(tmp_path / "out"), "--save", "mask")
    assert code == 2 and "b.png" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["7"], "camera 7: not available"),
        (["missing.jpg"], "no such file"),
        (["IMAGE", "--save", "cutout,sparkles"], "unknown output 'sparkles'"),
        (["IMAGE", "--background", "#12345"], "#RRGGBB"),
        (["IMAGE", "--background", "nowhere.png"], "no such image file"),
        (["IMAGE", "--save", "background"], "needs --background"),
        (["VIDEO", "--save", "cutout"], "no alpha channel"),
    ],
)
def test_bad_options_and_missing_camera_exit_2(tmp_path, ckpt, clip, args, message, cli):
    image = save_rgb(tmp_path / "me.png", synthetic.sample_portrait(48, 48)[0])
    args = [str(image) if a == "IMAGE" else str(clip[0]) if a == "VIDEO" else a for a in args]
    code, _, err = cli("infer", *args, "-m", str(ckpt), "-o", str(tmp_path / "out"))
    assert code == 2 and message in err and err.count("\n") == 1
    assert visible_files(tmp_path / "out") == []


# -------------------------------------------------------------------- artifacts and manifests


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, ckpt) -> Path:
    """A real FP32 ONNX artifact at 96x96 with its manifest (sidecar and embedded)."""
    import onnx

    from rcr_deploy.artifact import write_manifest
    from rcr_deploy.exporters import manifest as manifests
    from rcr_deploy.exporters.onnx import save_proto, simplify, to_proto

    model = reparameterize(build_model("rcrnet"))
    proto = simplify(to_proto(model, (96, 96)))
    record = manifests.build(
        arch="rcrnet", variant={"name": "rcrnet", "symbol": "", "description": ""}, checkpoint=Path(ckpt), checkpoint_sha256="0" * 64,
        precision="fp32", opset=18, in_channels=4, size=(96, 96), dynamic_hw=False, ops={}, export={}, validation=[], accuracy=None,
    )
    manifests.embed(proto, record)
    path = save_proto(proto, tmp_path_factory.mktemp("export") / "rcrnet.onnx")
    write_manifest(path, record)
    assert onnx.load(str(path)).metadata_props
    return path


def test_onnx_artifact_runs_at_the_manifest_size(tmp_path, artifact, cli):
    rgb, _ = synthetic.sample_portrait(60, 40, seed=2)
    image = save_rgb(tmp_path / "me.png", rgb)
    code, _, err = cli("infer", str(image), "-m", str(artifact), "-o", str(tmp_path / "out"), "--save", "mask")
    assert code == 0, err
    assert read_rgb(tmp_path / "out" / "me_mask.png", cv2.IMREAD_UNCHANGED).shape == (60, 40)
    from rcr_deploy.runtime import load_runner

    assert infer.Segmenter(load_runner(artifact)).size == 96


def test_size_runs_a_checkpoint_at_another_size_and_is_refused_for_a_fixed_shape_artifact(tmp_path, artifact, ckpt, cli):
    rgb, _ = synthetic.sample_portrait(60, 40, seed=2)
    image = save_rgb(tmp_path / "me.png", rgb)
    from rcr_deploy.runtime import load_runner

    assert infer.Segmenter(load_runner(ckpt, backend="torch"), size=64).size == 64
    code, _, err = cli("infer", str(image), "-m", str(ckpt), "-o", str(tmp_path / "ok"), "--size", "64", "--backend", "torch")
    assert code == 0, err
    for args, option in [(["-m", str(artifact), "--size", "128"], "--size 128"), (["--size", "100"], "--size"), (["--server", "http://127.0.0.1:1", "--size", "64"], "--server")]:
        code, _, err = cli("infer", str(image), "-o", str(tmp_path / "bad"), *args)
        assert code == 2 and err.startswith("error: ") and option in err and err.count("\n") == 1, err
    assert not (tmp_path / "bad").exists()


def test_lost_sidecar_falls_back_to_the_embedded_manifest(tmp_path, artifact):
    from rcr_deploy.runtime import load_runner

    copy = tmp_path / "rcrnet.onnx"
    copy.write_bytes(artifact.read_bytes())
    assert not manifest_path(copy).exists()
    assert infer.Segmenter(load_runner(copy)).size == 96


def test_artifact_without_any_manifest_is_a_clear_error(tmp_path, artifact, cli):
    import onnx

    proto = onnx.load(str(artifact))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    image = save_rgb(tmp_path / "me.png", synthetic.sample_portrait(48, 48)[0])
    code, _, err = cli("infer", str(image), "-m", str(bare), "-o", str(tmp_path / "out"))
    assert code == 2 and "bare.onnx: no manifest (no bare.onnx.json beside it, none embedded)" in err and err.count("\n") == 1
    assert visible_files(tmp_path / "out") == []


def test_manifest_with_another_normalisation_is_refused(tmp_path, artifact):
    from rcr_deploy.runtime import load_runner

    copy = tmp_path / "rcrnet.onnx"
    copy.write_bytes(artifact.read_bytes())
    record = json.loads(manifest_path(artifact).read_text())
    record["input"]["mean"] = [0.485, 0.456, 0.406]
    manifest_path(copy).write_text(json.dumps(record))
    with pytest.raises(RcrError, match="mean"):
        infer.Segmenter(load_runner(copy))


def test_folder_without_images_and_unknown_file_type(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        infer.classify_input(str(tmp_path / "empty"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="not an image"):
        infer.classify_input(str(tmp_path / "notes.txt"))


def test_benchmark_scripts_run_on_tiny_clips(ckpt):
    """benchmarks/pipeline.py and benchmarks/stability.py, at toy sizes (their figures live in
    benchmarks/results/, measured at full size)."""
    from rcr_deploy.benchmarks import pipeline, stability

    result = pipeline.measure(str(ckpt), frames=3, height=48, width=64, repeats=1, threads=1)
    assert set(result["median_fps"]) == {"pipelined", "one thread"} and result["speedup"] > 0
    assert "Pipelined / one thread" in pipeline.to_markdown(result)
    result = stability.measure(str(ckpt), clips=1, frames=3, height=48, width=64)
    assert set(result["mean"]) == {"prior on", "prior off"} and result["model"]["file"] == "ckpt.pt"
    assert "| prior on |" in stability.to_markdown(result)
