"""ONNX Runtime runner; reads the artifact's manifest (rcr_deploy.artifact) for its input spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rcr_deploy.artifact import check_graph, read_manifest
from rcr_deploy.errors import RcrError
from rcr_deploy.runtime import Runner, int8_saturates, onnxruntime_providers


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
        # Read (and check) the manifest first: a corrupt sidecar is named before ONNX Runtime loads.
        self.manifest = read_manifest(self.path, missing_ok=True)
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_{optimization}")
        if int8_saturates():
            # Without VNNI, ORT's default INT8 kernels clip sums of products to 16 bits and move
            # pixels off FP32's class (measured in docs/cpu-engines.md, "CPUs without VNNI").
            options.add_session_config_entry("session.x64quantprecision", "1")
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as e:
            raise RcrError(f"{self.path}: ONNX Runtime cannot load it ({str(e).splitlines()[0]}); re-export it") from e
        check_graph(self.path, self.manifest, *([list(t.shape) for t in ts] for ts in (self.session.get_inputs(), self.session.get_outputs())))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.in_channels = int(inp.shape[1])
        self.name = f"onnxruntime:{self.path.name}"

    def infer(self, x: np.ndarray) -> np.ndarray:
        self._check_active()
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return out.astype(np.float32, copy=False)

    def _release(self) -> None:
        del self.session


def open_runner(path: Path, device: str = "cpu", hint: str = "latency", threads: int | None = None) -> OnnxRuntimeRunner:
    """The format table's runner entry (rcr_deploy.formats): an ONNX file on `device`'s providers."""
    return OnnxRuntimeRunner(path, providers=onnxruntime_providers(device), threads=threads)
