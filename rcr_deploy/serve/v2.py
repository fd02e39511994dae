"""The Open Inference Protocol (KServe v2, Triton's HTTP API) for the model's own tensors, without Ray.

    GET  /v2/health/live, /v2/health/ready         200 when live / ready
    GET  /v2/models/{name}                         metadata: the input and output tensors
    GET  /v2/models/{name}/ready                   200 when the model is ready
    POST /v2/models/{name}/infer                   NCHW FP32 input -> NCHW FP32 logits

The v2 model is the network itself, as Triton serves `rcrnet` from the repository that `export
--triton` writes: the client letterboxes and normalises as the manifest says (`GET /v1/model`), so
the same client code talks to Triton or to `rcr-deploy serve`. Tensors come as JSON (`data`, row
major) or with the binary-data extension: the JSON header, then each tensor's raw little-endian
bytes, the header's length in `Inference-Header-Content-Length`. Outputs go back the same way when
asked (`"binary_data": true` on an output, or `binary_data_output` on the request).

Spec: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ and Triton's
binary_data extension (docs/protocol/extension_binary_data.md in triton-inference-server/server).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from rcr_deploy.serve.protocol import RequestError
#: Header of the binary-data extension: the JSON part's length in bytes.
HEADER_LENGTH = "Inference-Header-Content-Length"


def tensor_names(manifest: dict[str, Any]) -> tuple[str, str]:
    """The model's input and output tensor names (the manifest's, else the export's defaults)."""
    return manifest.get("input", {}).get("name", "input"), manifest.get("output", {}).get("name", "logits")


def model_metadata(name: str, platform: str, manifest: dict[str, Any], in_channels: int, size: int) -> dict[str, Any]:
    """`GET /v2/models/{name}`: the tensors a client sends and gets (batch axis -1)."""
    inp, out = tensor_names(manifest)
    return {
        "name": name, "versions": ["1"], "platform": platform,
        "inputs": [{"name": inp, "datatype": "FP32", "shape": [-1, in_channels, size, size]}],
        "outputs": [{"name": out, "datatype": "FP32", "shape": [-1, 2, size, size]}],
    }


def parse_infer(body: bytes, header_length: str | None, input_name: str, shape: tuple[int, int, int]) -> tuple[np.ndarray, dict[str, Any]]:
    """An infer request body -> the NCHW float32 batch (C, H, W as `shape`) and the request's JSON.
    Anything else is a `RequestError` (400) naming what to fix."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise RequestError(400, f"{HEADER_LENGTH}: {header_length!r} is not a length within the {len(body)}-byte body")
        head, binary = body[: int(header_length)], body[int(header_length):]
    else:
        head, binary = body, b""
    try:
        request = json.loads(head)
    except ValueError as e:
        raise RequestError(400, f"the infer request is not JSON ({e}); send {{\"inputs\": [...]}}") from e
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(400, f"the model takes one input tensor, {input_name!r}; send \"inputs\": [{{\"name\": \"{input_name}\", ...}}]")
    tensor = inputs[0]
    if tensor.get("name") != input_name:
        raise RequestError(400, f"input {tensor.get('name')!r} is unknown; the model's input is {input_name!r}")
    if tensor.get("datatype") != "FP32":
        raise RequestError(400, f"input datatype {tensor.get('datatype')!r}: the model takes FP32")
    dims = tensor.get("shape")
    if not (isinstance(dims, list) and len(dims) == 4 and all(isinstance(d, int) for d in dims) and dims[0] >= 1 and tuple(dims[1:]) == shape):
        raise RequestError(400, f"input shape {dims}: the model takes [N, {', '.join(map(str, shape))}] with N >= 1")
    count = int(np.prod(dims))
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != 4 * count or len(binary) != size:
            raise RequestError(400, f"binary_data_size {size} with {len(binary)} bytes after the header: a {dims} FP32 tensor is {4 * count} bytes")
        x = np.frombuffer(binary, dtype="<f4").reshape(dims)
    else:
        try:
            x = np.asarray(tensor.get("data"), dtype=np.float32).reshape(dims)
        except (TypeError, ValueError) as e:
            raise RequestError(400, f"input data does not hold {count} numbers for shape {dims} ({e})") from e
    return np.ascontiguousarray(x, dtype=np.float32), request


def infer_response(name: str, request: dict[str, Any], output_name: str, logits: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The infer response body and its extra headers: JSON data, or the binary-data extension
    when the request asks for it."""
    wanted = request.get("outputs") or [{"name": output_name}]
    names = [o.get("name") for o in wanted if isinstance(o, dict)]
    if names != [output_name]:
        raise RequestError(400, f"outputs {names}: the model's one output is {output_name!r}")
    binary = bool((wanted[0].get("parameters") or {}).get("binary_data", (request.get("parameters") or {}).get("binary_data_output", False)))
    out: dict[str, Any] = {"name": output_name, "datatype": "FP32", "shape": list(logits.shape)}
    raw = np.ascontiguousarray(logits, dtype="<f4").tobytes()
    if binary:
        out["parameters"] = {"binary_data_size": len(raw)}
    else:
        out["data"] = logits.ravel().tolist()
    response = {"model_name": name, "model_version": "1", "outputs": [out]}
    if "id" in request:
        response["id"] = request["id"]
    head = json.dumps(response).encode()
    if not binary:
        return head, {}
    return head + raw, {HEADER_LENGTH: str(len(head))}
