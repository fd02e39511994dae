"""INT8 activation ranges, computed here and handed to ONNX Runtime's `quantize_static` as its
calibration cache (`calibration_cache_path`, onnxruntime >= 1.27).

Why not `quantize_static`'s own calibration:

- It does not forward the histogram sizes: it builds the entropy calibrator with 128 bins and
  128 quantised bins, which leaves one candidate threshold, the full range: min-max's ranges.
- ORT's entropy search itself (`HistogramCollector.get_entropy_threshold`, 1.32) expands each
  quantised bin back into an int64 array, truncating every bin's share. That drops mass in the
  sparse tail, the more the wider the candidate, so it favours the narrowest threshold: on the
  shipped RCRNet it clipped most activations to 1/8 of their range and kept 59 % of the FP32 mask.

So `entropy` here is TensorRT's search ("8-bit Inference with TensorRT", Migacz, GTC 2017) in
float: on each tensor's histogram of |x| (ORT's percentile collector, 2048 bins), every threshold
from 128 bins up is scored by the KL divergence between the clipped distribution and its
128-level quantisation, and the least is kept; the first bin (a Relu's zeros, exact in int8) is
left out of the divergence, and the graph input (8-bit pixels: a comb, not a density) keeps its
full range. Min-max and percentile are ORT's own.

The images are read CALIB_CHUNK at a time: ORT's histogram calibrators hold every activation of
one `collect_data` call (~77 MiB per image for the full RCRNet at 224x224) and merge each call's
histograms into the last, so memory stays bounded whatever the calibration count.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Protocol

import numpy as np

CALIB_CHUNK = 8
#: Histogram bins, as TensorRT's entropy calibrator and ORT's percentile default use.
HISTOGRAM_BINS = 2048
#: Positive int8 levels (0..127) a symmetric range is cut into.
LEVELS = 128
#: ORT calibrator per method (`create_calibrator` extra options). Not max_intermediate_outputs:
#: ORT 1.32's min-max calibrator drops (not merges) each full chunk.
CALIBRATORS: dict[str, tuple[str, dict[str, Any]]] = {
    "minmax": ("MinMax", {"symmetric": True}),
    "entropy": ("Percentile", {"symmetric": True, "num_bins": HISTOGRAM_BINS}),  # its |x| histograms
    "percentile": ("Percentile", {"symmetric": True, "num_bins": HISTOGRAM_BINS, "percentile": 99.999}),
}


class Reader(Protocol):
    """ORT's CalibrationDataReader, with the image paths it reads (precision._ImageReader)."""

    paths: list[Path]

    def get_next(self) -> dict[str, np.ndarray] | None: ...


class _Chunk:
    """The next `n` inputs of a reader, read as a reader of their own."""

    def __init__(self, reader: Reader, n: int) -> None:
        self.reader, self.left = reader, n

    def get_next(self) -> dict[str, np.ndarray] | None:
        self.left -= 1
        return self.reader.get_next() if self.left >= 0 else None


def _smooth(d: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """A distribution with `eps` on its empty bins, normalised, so the KL stays finite."""
    d = d / d.sum() + eps * (d == 0)
    return d / d.sum()


def kl_threshold(hist: np.ndarray, edges: np.ndarray, levels: int = LEVELS) -> float:
    """The |x| threshold whose clipped, `levels`-level quantised distribution is nearest (KL) to
    the clipped one; the histogram's top edge when it has no more bins than levels."""
    hist = np.array(hist, dtype=np.float64)
    # The first bin holds the zeros (half of every Relu output): int8 keeps them exact, and their
    # spike would make any merging of the first bins look costly, i.e. favour the narrowest range.
    hist[0] = 0
    if hist.size <= levels or hist.sum() == 0:
        return float(edges[-1])
    best, best_kl = hist.size, np.inf
    for i in range(levels, hist.size + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()  # clipped values land on the threshold
        starts = np.arange(levels) * i // levels
        kept = p != 0
        sums = np.add.reduceat(hist[:i], starts)
        counts = np.add.reduceat(kept.astype(np.float64), starts)
        share = np.divide(sums, counts, out=np.zeros(levels), where=counts > 0)
        q = np.repeat(share, np.diff(np.append(starts, i))) * kept
        if not q.any():
            continue
        ps, qs = _smooth(p), _smooth(q)
        kl = float(np.sum(ps * np.log(ps / qs)))
        if kl < best_kl:
            best, best_kl = i, kl
    return float(edges[best])


def calibrate(src: Path, op_types: list[str], method: str, reader: Reader, cache: Path) -> Any:
    """Ranges of the inputs of `op_types` in `src` on the reader's images, saved at `cache` in the
    format `quantize_static(..., calibration_cache_path=cache)` reads; returns the
    CalibrationMethod the cache records, which `quantize_static` must be given to accept it."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    kind, options = CALIBRATORS[method]
    with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their settings; stdout is the CLI's
        calibrator = create_calibrator(
            src, op_types, augmented_model_path=str(cache.with_suffix(".onnx")), calibrate_method=CalibrationMethod[kind],
            providers=["CPUExecutionProvider"], extra_options=options,
        )  # fmt: skip
        for _ in range(0, len(reader.paths), CALIB_CHUNK):
            calibrator.collect_data(_Chunk(reader, CALIB_CHUNK))
        if method == "entropy":
            # The graph input is 8-bit pixels: a comb of values, not a density, and never clipped.
            inputs = {i.name for i in calibrator.model.graph.input}
            ranges = {}
            for name, (hist, edges, *_) in calibrator.collector.histogram_dict.items():
                t = np.float32(edges[-1] if name in inputs else kl_threshold(hist, edges))
                ranges[name] = TensorData(lowest=-t, highest=t)
            data = TensorsData(CalibrationMethod.Entropy, ranges)
        else:
            data = calibrator.compute_data()
    save_tensors_data(data, cache)
    return data.calibration_method
