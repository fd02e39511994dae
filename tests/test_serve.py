"""`rcr-deploy serve` and `rcr-deploy infer --server`, against a real Ray Serve server on localhost.

One server (the CLI, in a subprocess, with the built-in model) serves the whole module; its
teardown sends Ctrl-C and checks the clean shutdown. The replica-kill test runs last because it
restarts the replica.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray.serve", reason="Ray Serve is the 'serve' extra: pip install 'rcr-deploy[serve]'")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # starts Ray Serve; bounded even if a server hangs

from rcr_deploy import infer, video  # noqa: E402
from rcr_deploy.data import synthetic  # noqa: E402
from rcr_deploy.runtime import load_runner  # noqa: E402
from rcr_deploy.serve.client import RemoteSegmenter  # noqa: E402
from rcr_deploy.serve.protocol import BATCH_HEADER, capacity  # noqa: E402
from rcr_deploy.serve.service import Item, SegmentService, batch_buckets  # noqa: E402



def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


#: A generated 320x240 portrait, PNG-encoded: what a client uploads.
SAMPLE = png_bytes(synthetic.sample_portrait(320, 240, seed=7)[0])
START_S = 120  # Ray and the replica on a loaded 2-core machine
#: Small, so that the shedding test needs few clients; not smaller: requests that wait for the
#: router to pick a replica count as queued too, so 8 clients at once could overflow 4.
MAX_QUEUED = 16
RECOVER_S = 60  # a killed replica answers again within this (health checks every 2 s + model load)


#: url -> the server's process, for the test that stops it
PROCS: dict[str, subprocess.Popen] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    cmd = [sys.executable, "-m", "rcr_deploy", "serve", "--port", str(port), "--max-batch", "8", "--batch-wait-ms", "100", "--threads", "2",
           "--max-queued", str(MAX_QUEUED)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "serving" in line or proc.poll() is not None:
            break
    if "serving" not in lines[-1]:
        proc.kill()
        pytest.fail("server did not start:\n" + "".join(lines))
    assert lines[0].startswith("starting Ray Serve")
    url = f"http://127.0.0.1:{port}"
    assert url in lines[-1]
    PROCS[url] = proc
    yield url
    if proc.poll() is None:  # the SIGTERM test, which runs last, did not stop it
        proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
    rest = proc.stdout.read()
    assert rc == 0, rest
    assert "shutting down" in rest and "Traceback" not in rest


def post(url: str, body: bytes, content_type: str = "image/png", **headers: str):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type, **headers})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def local_mask(path: Path, tmp_path: Path) -> np.ndarray:
    infer.infer(str(path), None, tmp_path / "local", save="mask", progress=False)
    return png_array((tmp_path / "local" / f"{path.stem}_mask.png").read_bytes())


def test_health_and_manifest(server):
    assert get(f"{server}/healthz")["status"] == "ok"
    manifest = get(f"{server}/v1/model")
    assert manifest["input"]["size"] == [224, 224] and manifest["input"]["prior_channel"] == 3


def test_served_mask_is_local_infer_mask(server, tmp_path):
    status, headers, body = post(f"{server}/segment", SAMPLE)
    assert status == 200 and headers["content-type"] == "image/png"
    served = png_array(body)
    (tmp_path / "sample.png").write_bytes(SAMPLE)
    expected = local_mask(tmp_path / "sample.png", tmp_path)
    assert served.shape == expected.shape and set(np.unique(served)) <= {0, 255}
    assert np.array_equal(served, expected)
    assert 0.05 < (served > 0).mean() < 0.95  # a real segmentation, not an empty or full mask


def test_output_chosen_by_query_or_accept(server):
    body = SAMPLE
    mask = png_array(post(f"{server}/segment", body)[2])
    status, headers, cut = post(f"{server}/segment?output=cutout", body)
    cutout = png_array(cut)
    assert status == 200 and cutout.shape[2] == 4 and np.array_equal(cutout[..., 3], mask)
    status, headers, js = post(f"{server}/segment", body, Accept="application/json")
    assert headers["content-type"] == "application/json"
    assert np.array_equal(png_array(base64.b64decode(json.loads(js)["mask_png_base64"])), mask)
    assert post(f"{server}/segment", body, Accept="text/html")[0] == 406


def _form(fields: list[tuple[str, str | None, str, bytes]], boundary: str = "rcr-test-boundary") -> tuple[bytes, str]:
    """A multipart/form-data body as browsers and `curl -F` build it: (name, file name, type, data)."""
    out = b""
    for name, filename, kind, data in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_multipart_form_upload_gets_the_same_mask(server):
    mask = post(f"{server}/segment", SAMPLE)[2]
    body, content_type = _form([("note", None, "text/plain", b"hello"), ("image", "sample.png", "image/png", SAMPLE)])
    status, _, reply = post(f"{server}/segment", body, content_type)
    assert status == 200 and reply == mask


def test_concurrent_requests_are_batched(server):
    body = SAMPLE
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: post(f"{server}/segment", body), range(8)))
    assert all(r[0] == 200 for r in results), [r[0] for r in results]
    assert len({r[2] for r in results}) == 1  # a batched mask is the same mask
    sizes = [int(r[1][BATCH_HEADER]) for r in results]
    assert max(sizes) > 1, sizes
    stats = get(f"{server}/v1/stats")
    assert any(int(k) > 1 for k in stats["batch_sizes"])
    assert stats["compiles"]["warm_up"] >= 8 and stats["compiles"]["since"] == 0, stats


def test_every_batch_size_after_warm_up_compiles_nothing():
    """The replica's service on the default backend (OpenVINO: one compiled copy per input shape)
    runs every batch size 1..8, in a shuffled order, without compiling; a shape it did not warm up
    does compile, so the count can fail."""
    service = SegmentService(None, max_batch=8, threads=1)
    runner = service.runner
    assert runner.name.startswith("openvino"), runner.name
    warm = runner.compiles
    assert warm >= 8 and service.warm_compiles == warm
    rgb = synthetic.sample_portrait(96, 128, seed=1)[0]
    for n in np.random.default_rng(0).permutation(np.arange(1, 9)).tolist() * 2:
        assert len(service.segment([Item(rgb)] * n)) == n
    assert runner.compiles == warm
    assert service.stats()["compiles"] == {"warm_up": warm, "since": 0}
    runner.infer(np.zeros((9, runner.in_channels, service.segmenter.size, service.segmenter.size), np.float32))
    assert runner.compiles == warm + 1


def test_batches_past_eight_are_padded_to_few_compiled_sizes():
    assert batch_buckets(1) == [1] and batch_buckets(8) == list(range(1, 9))
    assert batch_buckets(64) == [1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64] and batch_buckets(12)[-1] == 12


def test_excess_load_is_shed_with_503_and_retry_after(server):
    """The replica holds two batches of 8 and MAX_QUEUED more, the proxy MAX_QUEUED more again:
    twice that many clients at once overflow it, and the overflow is answered at once with 503,
    not left waiting."""
    clients = 2 * capacity(1, 8, MAX_QUEUED)
    # All at once: threads that started one by one on a slow 2-core runner were served as they came.
    start = threading.Barrier(clients)

    def timed(_):
        start.wait()
        t = time.monotonic()
        status, headers, _body = post(f"{server}/segment", SAMPLE)
        return status, headers.get("Retry-After"), time.monotonic() - t

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(timed, range(clients)))
    shed = [r for r in results if r[0] == 503]
    assert {r[0] for r in results} <= {200, 503}, results
    assert shed and sum(r[0] == 200 for r in results) >= 2 * 8, [r[0] for r in results]
    assert all(r[1] == "1" for r in shed)
    # A shed request is not queued: it is answered before most served ones are.
    assert sorted(r[2] for r in shed)[len(shed) // 2] < sorted(r[2] for r in results if r[0] == 200)[-1]


BAD_REQUESTS = {
    "not an image": (b"hello, not an image", "image/png", "", 400),
    "truncated": (SAMPLE[:2000], "image/png", "", 400),
    "empty": (b"", "image/png", "", 400),
    "wrong content type": (SAMPLE, "text/plain", "", 415),
    "unknown output": (SAMPLE, "image/png", "?output=svg", 400),
    "form without a boundary": (SAMPLE, "multipart/form-data", "", 400),
    "form without parts": (b"--b--\r\n", "multipart/form-data; boundary=b", "", 400),
    "form with a text part only": (b"--b\r\nContent-Disposition: form-data; name=\"image\"\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n",
                                   "multipart/form-data; boundary=b", "", 415),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_4xx_one_line_and_server_stays_up(server, case):
    body, content_type, query, code = BAD_REQUESTS[case]
    status, headers, reply = post(f"{server}/segment{query}", body, content_type)
    assert status == code
    text = reply.decode()
    assert text.count("\n") == 1 and "Traceback" not in text
    assert json.loads(text)["error"]
    assert post(f"{server}/segment", SAMPLE)[0] == 200


def test_prometheus_metrics_count_requests_batches_and_refusals(server):
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict[tuple[str, tuple], float]:
        with urllib.request.urlopen(f"{server}/metrics", timeout=30) as r:
            assert r.headers["content-type"].startswith("text/plain")
            text = r.read().decode()
        return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "replica"))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    before = scrape()
    assert post(f"{server}/segment", SAMPLE)[0] == 200
    assert post(f"{server}/segment", b"not an image")[0] == 400
    after = scrape()
    ok = ("rcr_serve_requests_total", (("endpoint", "segment"), ("status", "200")))
    refused = ("rcr_serve_requests_total", (("endpoint", "segment"), ("status", "400")))
    assert after[ok] == before.get(ok, 0) + 1 and after[refused] == before.get(refused, 0) + 1
    assert after[("rcr_serve_batch_size_count", ())] >= before.get(("rcr_serve_batch_size_count", ()), 0) + 1
    assert after[("rcr_serve_request_seconds_count", (("endpoint", "segment"),))] >= 2
    assert after[("rcr_serve_requests_in_flight", ())] == 0


def test_image_past_the_size_limit_is_refused_before_decoding(server):
    buf = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buf, "PNG")  # 64 MP, a few hundred kB on the wire
    status, _, reply = post(f"{server}/segment", buf.getvalue())
    assert status == 413 and "MP limit" in json.loads(reply)["error"]
    assert post(f"{server}/segment", SAMPLE)[0] == 200


def test_wrong_method_and_path(server):
    assert post(f"{server}/nope", b"x")[0] == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{server}/segment", timeout=30)
    assert e.value.code == 405


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    frames = [f for f, _ in synthetic.video(5, 96, 128, seed=3)]
    return video.write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames, fps=10)


def test_video_through_server_carries_the_prior_like_local_infer(server, clip):
    frames = list(video.VideoSource(clip))
    local = infer.MemorySink()
    infer.run(frames, infer.Segmenter(load_runner(None)), local, prior=True, progress=False)
    no_prior = infer.MemorySink()
    infer.run(frames, infer.Segmenter(load_runner(None)), no_prior, prior=False, progress=False)
    remote = infer.MemorySink()
    infer.run(frames, RemoteSegmenter(server, stream=True), remote, prior=True, progress=False)
    local_masks = [(p > 0.5).astype(np.float32) for p in local.probs]
    for a, b in zip(local_masks, remote.probs):
        assert np.array_equal(a, b)
    # The prior changes at least one frame's mask here, so the equality above is a real check.
    assert any(not np.array_equal(a, (p > 0.5)) for a, p in zip(local_masks, no_prior.probs))


def test_cli_client_writes_what_local_infer_writes(server, tmp_path, cli):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(synthetic.sample_portrait(120, 90, seed=i)[0]).save(folder / f"p{i}.png")
    for name, extra in [("local", []), ("remote", ["--server", server])]:
        code, out, err = cli("infer", folder, "-o", tmp_path / name, "--save", "mask,cutout,overlay", *extra)
        assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "remote").iterdir()) and len(files) == 6
    for name in files:
        assert np.array_equal(png_array((tmp_path / "local" / name).read_bytes()), png_array((tmp_path / "remote" / name).read_bytes())), name


def test_client_reports_unreachable_server(tmp_path, cli):
    (tmp_path / "sample.png").write_bytes(SAMPLE)
    code, _, err = cli("infer", tmp_path / "sample.png", "-o", tmp_path, "--server", f"http://127.0.0.1:{_free_port()}")
    assert code == 2 and "cannot reach the server" in err and err.count("\n") == 1


def test_serve_refuses_bad_model_and_busy_port_before_starting_ray(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for args, reason in [([str(tmp_path / "nope.pt")], "nope.pt"), (["--port", str(port)], f"--port {port}")]:
            proc = subprocess.run([sys.executable, "-m", "rcr_deploy", "serve", *args], capture_output=True, text=True, timeout=120)
            assert proc.returncode == 2, proc.stderr
            assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and reason in proc.stderr


def test_ray_that_fails_to_import_is_one_line(tmp_path):
    """A stand-in `ray` package that raises as protobuf's VersionError does (not an ImportError)
    when tritonclient was installed after Ray: `serve` says so in one line, exit 2."""
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text(
        "class VersionError(Exception):\n    pass\n"
        "raise VersionError('Detected mismatched Protobuf Gencode/Runtime version suffixes\\nmore lines')\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "rcr_deploy", "serve"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "VersionError" in proc.stderr and "rcr-deploy[serve,triton]" in proc.stderr


def test_sessions_are_forgotten_after_idle_timeout():
    service = SegmentService(None, session_idle_s=0.2, max_sessions=2)
    rgb = synthetic.sample_portrait(320, 240, seed=7)[0]
    service.segment([Item(rgb, "x"), Item(rgb, "y")])
    service.segment([Item(rgb, "a")])
    assert list(service.sessions) == ["y", "a"]  # capped: the least recently seen ("x") is dropped
    assert "a" in service.sessions and service._prior(Item(rgb, "a")) is not None
    assert service._prior(Item(rgb[:100], "a")) is None  # another frame size: a new stream
    time.sleep(0.3)
    service.segment([Item(rgb, None)])
    assert "a" not in service.sessions


@pytest.fixture(scope="module")
def onnx_reference(tmp_path_factory):
    """The built-in model's deploy form exported to ONNX and run on ONNX Runtime: what the served
    v2 model (OpenVINO, FP32) is compared with."""
    from rcr_deploy.checkpoint import default_checkpoint, load_checkpoint
    from rcr_deploy.exporters.onnx import export_onnx
    from rcr_deploy.reparam import reparameterize
    from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

    ckpt = load_checkpoint(default_checkpoint())
    deploy = ckpt.model if ckpt.form == "deploy" else reparameterize(ckpt.model)
    path = export_onnx(deploy, tmp_path_factory.mktemp("onnx") / "rcrnet.onnx", simplify_graph=False)
    with OnnxRuntimeRunner(path) as runner:
        yield runner


def test_open_inference_protocol_with_tritonclient_equals_onnxruntime(server, onnx_reference):
    """Triton's own HTTP client against the live server: health, metadata, and infer with JSON
    tensors and with the binary-data extension, equal to ONNX Runtime on the same input."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from rcr_deploy.preprocess import preprocess

    client = httpclient.InferenceServerClient(server.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("rcrnet")
    meta = client.get_model_metadata("rcrnet")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4, 224, 224]}]
    frames = [synthetic.sample_portrait(320, 240, seed=s)[0] for s in range(3)]
    x = np.concatenate([preprocess(rgb, size=224)[0] for rgb in frames])
    expected = onnx_reference.infer(x)
    assert meta["outputs"][0]["shape"][1:] == list(expected.shape[1:])
    for binary in (True, False):
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("logits", binary_data=binary)
        got = client.infer("rcrnet", [inp], outputs=[out]).as_numpy("logits")
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.abs(got - expected).max() <= 1e-3, (binary, np.abs(got - expected).max())
    assert np.abs(expected).max() > 1.0  # real logits, not zeros
    with pytest.raises(InferenceServerException, match="no model"):
        client.get_model_metadata("nope")
    bad = httpclient.InferInput("input", [1, 3, 224, 224], "FP32")
    bad.set_data_from_numpy(x[:1, :3].copy())
    with pytest.raises(InferenceServerException, match=r"\[N, 4, 224, 224\]"):
        client.infer("rcrnet", [bad])
    assert get(f"{server}/v1/stats")["compiles"]["since"] == 0


def test_readiness_openapi_and_one_line_http_errors(server):
    assert get(f"{server}/readyz")["status"] == "ready"
    spec = get(f"{server}/openapi.json")
    assert {"/segment", "/readyz", "/v2/models/{name}/infer"} <= set(spec["paths"])
    status, _, reply = post(f"{server}/nope", b"x")
    assert status == 404 and json.loads(reply)["error"].startswith("POST /nope")


def test_chunked_upload_past_the_limit_is_refused_while_streaming(server):
    """512 MiB sent chunked (no Content-Length): the proxy refuses it with 413 at the limit and
    reads no further, and the replica's memory stays within the issue's 64 MiB of where it was.
    A 48 MiB refusal first warms the refusal's own code path, so what is measured is what the
    body's size adds."""
    pid = get(f"{server}/v1/stats")["pid"]
    assert _chunked_upload(server, 48)[0] in (413, None)
    before = _rss_mib(pid)
    status, reply, sent = _chunked_upload(server, 512)
    if status is not None:  # else the server closed the connection before the client read its answer
        assert status == 413 and "limit" in json.loads(reply)["error"], (status, reply)
    after = _rss_mib(pid)
    print(f"chunked upload refused with {status} after {sent} MiB: the replica's RSS went from {before:.0f} to {after:.0f} MiB")
    assert sent < 256, f"the server read {sent} MiB of a body past its 32 MiB limit"
    assert after - before < 64, f"replica grew {after - before:.0f} MiB"
    assert post(f"{server}/segment", SAMPLE)[0] == 200


def _chunked_upload(server: str, mib: int) -> tuple[int | None, bytes, int]:
    """POST `mib` MiB of zeros chunked; (status or None, body, MiB sent before the server closed)."""
    conn = http.client.HTTPConnection(server.removeprefix("http://"), timeout=120)
    conn.putrequest("POST", "/segment")
    conn.putheader("Content-Type", "image/png")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    chunk = b"\0" * 2**20
    sent = 0
    try:
        for _ in range(mib):
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += 1
        conn.send(b"0\r\n\r\n")
    except OSError:  # the server answered and closed the connection: the rest was not read
        pass
    try:
        response = conn.getresponse()
        status, reply = response.status, response.read()
    except OSError:
        status, reply = None, b""
    conn.close()
    return status, reply, sent


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_killed_replica_under_load_is_restarted(server):
    """Runs last: 4 clients keep sending while the replica's process is killed; Serve notices it
    by its health check and starts a new one. Failed requests are counted, not forbidden."""
    body = SAMPLE
    pid = get(f"{server}/v1/stats")["pid"]
    outcomes: list[tuple[float, bool]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                ok = post(f"{server}/segment", body)[0] == 200
            except OSError:
                ok = False
            outcomes.append((time.monotonic(), ok))
            if not ok:
                time.sleep(0.2)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    try:
        while time.monotonic() - killed < RECOVER_S:
            if get_pid(server) not in (None, pid) and any(ok and t > killed + 0.5 for t, ok in outcomes):
                break
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    recovered = time.monotonic() - killed
    failed = sum(not ok for t, ok in outcomes if t >= killed)
    assert recovered < RECOVER_S, f"no new replica {RECOVER_S} s after the kill ({failed} failed requests)"
    assert post(f"{server}/segment", body)[0] == 200
    print(f"replica killed under load: a new replica answered after {recovered:.1f} s; {failed} of "
          f"{sum(t >= killed for t, _ in outcomes)} requests after the kill failed")


def get_pid(server: str) -> int | None:
    try:
        return get(f"{server}/v1/stats")["pid"]
    except OSError:
        return None


def test_sigterm_under_load_finishes_in_flight_requests(server):
    """Runs last and stops the module's server: SIGTERM while 8 clients send. Every request in
    flight at that moment is answered (the application is deleted first, so its replica drains
    while the proxy still runs); later ones are refused, and the process exits 0."""
    proc = PROCS[server]
    outcomes: list[tuple[float, float, object]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            t = time.monotonic()
            try:
                status = post(f"{server}/segment", SAMPLE)[0]
            except (OSError, http.client.HTTPException) as e:  # refused, reset or cut short once the proxy is gone
                status = type(e).__name__
            outcomes.append((t, time.monotonic(), status))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    term = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=90)
    finally:
        stop.set()
        for t in threads:
            t.join()
    in_flight = [status for start, end, status in outcomes if start < term <= end]
    assert len(in_flight) >= 4, outcomes[-10:]
    assert all(status == 200 for status in in_flight), in_flight
    assert rc == 0
    print(f"SIGTERM under load: {len(in_flight)} requests in flight, all answered 200; exit after {time.monotonic() - term:.1f} s")
