"""ONNX Runtime runner; reads the artifact's manifest for its input spec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rcr_deploy.errors import RcrError
from rcr_deploy.runtime import MANIFEST_METADATA_KEY, Runner, manifest_path


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX artifact on ONNX Runtime (CPU provider unless `providers` says otherwise)."""

    def __init__(
        self, path: str | Path, providers: list[str] | None = None, threads: int | None = None, optimization: str = "ENABLE_ALL"
    ) -> None:
        """`optimization`: ONNX Runtime's graph optimisation level (DISABLE_ALL, ENABLE_BASIC,
        ENABLE_EXTENDED, ENABLE_ALL); an INT8 Q/DQ graph is fused differently at each."""
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise RcrError(f"{self.path}: no such artifact; run 'rcr-deploy export' first")
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_{optimization}")
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as e:
            raise RcrError(f"{self.path}: ONNX Runtime cannot load it ({str(e).splitlines()[0]}); re-export it") from e
        meta = manifest_path(self.path)
        if meta.is_file():
            self.manifest = json.loads(meta.read_text())
        else:  # the sidecar was lost: the copy inside the ONNX says the same
            embedded = self.session.get_modelmeta().custom_metadata_map.get(MANIFEST_METADATA_KEY)
            self.manifest = json.loads(embedded) if embedded else None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.in_channels = int(inp.shape[1])
        self.name = f"onnxruntime:{self.path.name}"

    def infer(self, x: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return out.astype(np.float32, copy=False)
