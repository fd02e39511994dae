"""LiteRT (TFLite) runner: a `.tflite` from `export --format tflite` on LiteRT's interpreter (XNNPACK).

The file is NHWC and batch 1, as phone developers feed it; this runner keeps the Runner contract
(NCHW float32 in, NCHW float32 logits out) by transposing, running each image of a batch in turn,
and, for a full-integer INT8 file, quantising the input and dequantising the output with the
scale and zero point the file carries. Its manifest is the sidecar, else the copy in the file's
metadata (`MANIFEST_METADATA_KEY`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rcr_deploy.artifact import MANIFEST_METADATA_KEY, check_manifest, read_manifest
from rcr_deploy.errors import ManifestError, RcrError, require
from rcr_deploy.fileio import native_stderr_silenced
from rcr_deploy.runtime import Runner

INSTALL = "pip install 'rcr-deploy[tflite]'"


def require_litert() -> Any:
    """LiteRT's `Interpreter` class, or `BackendUnavailable` naming the extra."""
    return require("ai_edge_litert.interpreter", "LiteRT (ai-edge-litert)", "tflite").Interpreter


def embedded_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest in a `.tflite`'s metadata, schema-checked, or None without one."""
    schema = require("ai_edge_litert.schema_py_generated", "LiteRT (ai-edge-litert)", "tflite")
    data = path.read_bytes()
    try:
        model = schema.Model.GetRootAs(data, 0)
        entries = [model.Metadata(i) for i in range(model.MetadataLength())]
        entry = next((m for m in entries if m.Name() == MANIFEST_METADATA_KEY.encode()), None)
        if entry is None:
            return None
        raw = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
        return check_manifest(json.loads(raw), f"{path} (embedded manifest)")
    except ManifestError:
        raise
    except Exception as e:  # a flatbuffer that does not decode
        raise ManifestError(f"{path}: not a readable .tflite ({str(e).splitlines()[0][:120]}); re-export it") from e


class TFLiteRunner(Runner):
    """Runs a `.tflite` on LiteRT's CPU interpreter (XNNPACK delegate), `threads` threads."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        interpreter_class = require_litert()
        self.path = Path(path)
        if not self.path.is_file():
            raise RcrError(f"{self.path}: no such artifact; run 'rcr-deploy export --format tflite' first")
        self.manifest = read_manifest(self.path, missing_ok=True) or embedded_manifest(self.path)
        try:
            with native_stderr_silenced():
                self._interpreter = interpreter_class(model_path=str(self.path), num_threads=threads)
                self._interpreter.allocate_tensors()
        except Exception as e:  # LiteRT raises ValueError / RuntimeError for a bad flatbuffer
            raise RcrError(f"{self.path}: LiteRT cannot load it ({str(e).splitlines()[0]}); re-export it") from e
        self._in = self._interpreter.get_input_details()[0]
        self._out = self._interpreter.get_output_details()[0]
        _, self.height, self.width, self.in_channels = (int(d) for d in self._in["shape"])
        self.name = f"litert:{self.path.name}"

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        if self._in["dtype"] == np.float32:
            return x
        scale, zero = self._in["quantization"]
        info = np.iinfo(self._in["dtype"])
        return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(self._in["dtype"])

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        if self._out["dtype"] == np.float32:
            return y
        scale, zero = self._out["quantization"]
        return ((y.astype(np.float32) - zero) * scale).astype(np.float32)

    def run_nhwc(self, x: np.ndarray) -> np.ndarray:
        """One 1 x H x W x C float32 image -> 1 x H x W x 2 float32 logits (the file's own layout)."""
        self._interpreter.set_tensor(self._in["index"], self._quantize(x))
        self._interpreter.invoke()
        return self._dequantize(self._interpreter.get_tensor(self._out["index"]))

    def infer(self, x: np.ndarray) -> np.ndarray:
        self._check_active()
        self._check_fixed_size(x, self.path)
        nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=np.float32)
        out = np.concatenate([self.run_nhwc(nhwc[i : i + 1]) for i in range(len(nhwc))])
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def _release(self) -> None:
        del self._interpreter


def open_runner(path: Path, device: str = "cpu", hint: str = "latency", threads: int | None = None) -> TFLiteRunner:
    """The format table's runner entry (rcr_deploy.formats): a `.tflite` on LiteRT's CPU interpreter."""
    if device != "cpu":
        raise RcrError(f"{path}: a .tflite runs on the CPU here (LiteRT XNNPACK); pass --device cpu")
    return TFLiteRunner(path, threads=threads)
