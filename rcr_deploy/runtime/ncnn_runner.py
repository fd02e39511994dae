"""ncnn runner: a `.ncnn.param` + `.ncnn.bin` pair from `export --format ncnn` on the `ncnn` wheel's CPU kernels.

ncnn takes one C x H x W image per extraction (its Mat has no batch axis), so this runner keeps
the Runner contract (NCHW float32 batch in, NCHW float32 logits out) by running each image of a
batch in turn. Compute is float32 whatever the weights are stored as: the fp16, bf16 and
Winograd-free defaults differ between CPUs, and the export's validation must hold on all of them.
The manifest is the sidecar (a `.param` file has no room for one); it records the weights' sha256,
checked here, since the `.param` alone is what the sidecar's own hash covers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rcr_deploy.artifact import format_files, read_manifest, require_usable, verify_bytes
from rcr_deploy.errors import RcrError, require
from rcr_deploy.runtime import Runner

INSTALL = "pip install 'rcr-deploy[ncnn]'"


def require_ncnn() -> Any:
    """The `ncnn` module, or `BackendUnavailable` naming the extra."""
    return require("ncnn", "ncnn", "ncnn")


class NcnnRunner(Runner):
    """Runs an ncnn model on the CPU with `threads` threads, in float32."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        ncnn = require_ncnn()
        self.path = Path(path)
        param, weights = format_files(self.path, "ncnn")[:2]
        if not param.is_file() or not weights.is_file():
            missing = param if not param.is_file() else weights
            raise RcrError(f"{missing}: no such file; run 'rcr-deploy export --format ncnn' first (an ncnn model is a .ncnn.param and its .ncnn.bin)")
        self.manifest = require_usable(self.path, read_manifest(self.path, missing_ok=True))
        verify_bytes(weights, self.manifest["ncnn"]["weights"]["sha256"], f"{self.path}.json")
        self._ncnn = ncnn
        self._net = ncnn.Net()
        opt = self._net.opt
        opt.use_vulkan_compute = False
        opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = False
        opt.use_bf16_storage = opt.use_bf16_packed = False
        # Worker threads sleep as soon as a layer ends instead of spinning for 20 ms: on a shared
        # machine the spinning made ncnn 10-20x slower (benchmarks/results/ncnn-study-cpu-2core.md).
        opt.openmp_blocktime = 0
        if threads:
            opt.num_threads = threads
        if self._net.load_param(str(param)) != 0 or self._net.load_model(str(weights)) != 0:
            raise RcrError(f"{self.path}: ncnn cannot load it (not an ncnn .param/.bin pair, or a damaged one); re-export it")
        self._in, self._out = self._net.input_names()[0], self._net.output_names()[0]
        shape = self.manifest["input"]["shape"]
        self.in_channels, self.height, self.width = (int(d) for d in shape[1:])
        self.name = f"ncnn:{self.path.name}"

    def infer(self, x: np.ndarray) -> np.ndarray:
        self._check_active()
        self._check_fixed_size(x, self.path)
        outs = []
        for image in np.asarray(x, dtype=np.float32):
            with self._net.create_extractor() as ex:
                # clone(): the Mat must own its data, the numpy image is gone after this iteration.
                ex.input(self._in, self._ncnn.Mat(np.ascontiguousarray(image)).clone())
                ret, out = ex.extract(self._out)
                if ret != 0:
                    raise RcrError(f"{self.path.name}: ncnn failed to run it (error {ret}); re-export it")
                outs.append(np.array(out, dtype=np.float32)[None])
        return np.concatenate(outs)

    def _release(self) -> None:
        self._net.clear()
        del self._net


def open_runner(path: Path, device: str = "cpu", hint: str = "latency", threads: int | None = None) -> NcnnRunner:
    """The format table's runner entry (rcr_deploy.formats): an ncnn model on the CPU."""
    if device != "cpu":
        raise RcrError(f"{path}: an ncnn model runs on the CPU here (ncnn's Vulkan GPU path is not used); pass --device cpu")
    return NcnnRunner(path, threads=threads)
