"""The manifest every artifact carries: in the ONNX `metadata_props` and as a JSON sidecar.

It holds what a third party needs to run the artifact with nothing else (input spec, output
meaning) and what the export proved about it (validation figures, accuracy). This module builds
and embeds it; rcr_deploy.artifact writes, reads and checks it (manifest.schema.json).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any

import onnx

from rcr_deploy.artifact import MANIFEST_FORMAT, MANIFEST_METADATA_KEY, MANIFEST_VERSION, check_own_manifest
from rcr_deploy.preprocess import input_spec

from rcr_deploy.exporters.onnx import INPUT_NAME, OUTPUT_NAME

CLASSES = ["background", "person"]
TOOLS = ("rcr-deploy", "torch", "onnx", "onnxruntime", "onnxscript", "onnxsim", "onnxconverter-common", "numpy")


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
            "postprocess": "person probability = softmax(logits, axis=1)[:, classes.index('person')] in float32; person where > 0.5; "
            "onto the original image: cv2.resize the float32 probability to side x side (INTER_LINEAR), then crop "
            "[top:top+h, left:left+w] (the input's letterbox)",
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
    """A manifest dict, checked against rcr_deploy/manifest.schema.json (which describes every field)."""
    record = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "architecture": arch,
        "variant": variant,
        "checkpoint": {"file": checkpoint.name, "path": str(checkpoint.resolve()), "sha256": checkpoint_sha256},
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
    return check_own_manifest(record, f"the {precision} manifest")


def embed(proto: onnx.ModelProto, manifest: dict[str, Any]) -> None:
    """Put the manifest into the model's metadata_props (replacing an older one)."""
    kept = [p for p in proto.metadata_props if p.key != MANIFEST_METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in kept}, MANIFEST_METADATA_KEY: json.dumps(manifest)})
    proto.producer_name = "rcr-deploy"
