"""The manifest every artifact carries: in the ONNX `metadata_props` and as a JSON sidecar.

It holds what a third party needs to run the artifact with nothing else (input spec, output
meaning) and what the export proved about it (validation figures, accuracy).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

import onnx

from rcr_deploy.errors import RcrError
from rcr_deploy.fileio import sha256_file, write_text_atomic
from rcr_deploy.preprocess import input_spec
from rcr_deploy.runtime import MANIFEST_METADATA_KEY, manifest_path

from rcr_deploy.exporters.onnx import INPUT_NAME, OUTPUT_NAME

FORMAT = "rcr-deploy-manifest"
VERSION = 1
#: The key under which the whole manifest (as JSON) sits in the ONNX metadata_props.
METADATA_KEY = MANIFEST_METADATA_KEY
CLASSES = ["background", "person"]
TOOLS = ("rcr-deploy", "torch", "onnx", "onnxruntime", "onnxscript", "onnxsim", "numpy")


def tool_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in TOOLS + extra:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return versions


def io_spec(in_channels: int, size: tuple[int, int], dynamic_hw: bool) -> dict[str, Any]:
    """The input and output records: names, shapes with their dynamic axes, and meaning."""
    h, w = ("height", "width") if dynamic_hw else size
    dynamic = {"0": "batch", **({"2": "height (multiple of 32)", "3": "width (multiple of 32)"} if dynamic_hw else {})}
    spec = input_spec(size[0], in_channels)
    return {
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", in_channels, h, w], "dynamic_axes": dynamic, **spec},
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", len(CLASSES), h, w],
            "dynamic_axes": dynamic,
            "meaning": "mask logits (not probabilities) at the input resolution",
            "classes": CLASSES,
            "postprocess": "person probability = softmax(logits, axis=1)[:, 1]; person where > 0.5; "
            "undo the letterbox (crop the padding, resize bilinear) to map it onto the original image",
        },
    }


def build(
    *,
    arch: str,
    variant: dict[str, str],
    checkpoint: Path,
    checkpoint_sha256: str,
    precision: str,
    opset: int,
    in_channels: int,
    size: tuple[int, int],
    dynamic_hw: bool,
    ops: dict[str, int],
    export: dict[str, Any],
    validation: list[dict[str, Any]],
    accuracy: dict[str, Any] | None,
) -> dict[str, Any]:
    """A manifest dict (see the README's manifest section for every field)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "architecture": arch,
        "variant": variant,
        "checkpoint": {"file": checkpoint.name, "sha256": checkpoint_sha256},
        **io_spec(in_channels, size, dynamic_hw),
        "precision": precision,
        "opset": opset,
        "graph_ops": ops,
        "export": export,
        "tools": tool_versions(),
        "validation": validation,
        "accuracy": accuracy,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def embed(proto: onnx.ModelProto, manifest: dict[str, Any]) -> None:
    """Put the manifest into the model's metadata_props (replacing an older one)."""
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in kept}, METADATA_KEY: json.dumps(manifest)})
    proto.producer_name = "rcr-deploy"


def write_sidecar(artifact: Path, manifest: dict[str, Any]) -> Path:
    """Write `<artifact>.json` atomically, adding the artifact's own sha256 (which the embedded
    copy cannot hold)."""
    path = manifest_path(artifact)
    write_text_atomic(path, json.dumps({**manifest, "artifact": {"file": artifact.name, "sha256": sha256_file(artifact)}}, indent=2))
    return path


def read(artifact: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an artifact: its JSON sidecar, else the copy in its metadata_props."""
    artifact = Path(artifact)
    sidecar = manifest_path(artifact)
    try:
        if sidecar.is_file():
            return json.loads(sidecar.read_text())
        if artifact.suffix == ".onnx" and artifact.is_file():
            props = {p.key: p.value for p in onnx.load_model(str(artifact), load_external_data=False).metadata_props}
            if METADATA_KEY in props:
                return json.loads(props[METADATA_KEY])
    except Exception as e:  # bad JSON, an unreadable file or a protobuf that does not decode
        raise RcrError(f"{artifact}: unreadable manifest ({e}); re-export it") from e
    raise RcrError(f"{artifact}: no rcr-deploy manifest beside or inside it; export it with 'rcr-deploy export'")
