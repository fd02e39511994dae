"""What a trained model becomes: ONNX (onnx.py), FP16 / INT8 Q/DQ (precision.py), manifests
(manifest.py), OpenVINO IRs (openvino.py), TensorRT engines (tensorrt.py), Triton repositories
(triton.py), and the chain that ties them (pipeline.py).

A format of the table (rcr_deploy.formats) made from the ONNX artifacts has its exporter here,
called by the chain as ``export_format(artifacts, job)`` with the `FormatJob` below."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class FormatJob:
    """What the export chain hands a format's exporter besides the validated ONNX artifacts."""

    #: The validation inputs every stage is checked on (name -> N x C x H x W float32).
    inputs: dict[str, np.ndarray]
    #: Preprocessed calibration images (N x C x H x W) when INT8 is exported, else None.
    calib: np.ndarray | None
    #: Square input size of the export.
    size: int
    progress: bool
    #: A file of the format -> its mIoU row on `export --val`, or None without --val: for a file
    #: that is another model than its ONNX artifact (re-quantised), whose accuracy is its own.
    measure: Callable[[Path], dict[str, Any]] | None = None
    #: `export --float-stem`: a format that quantises on its own keeps the stem's Convs float.
    float_stem: bool = True
