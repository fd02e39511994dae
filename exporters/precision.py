"""Precision lives in the artifact: FP16 weights and ops, or INT8 Q/DQ nodes (DESIGN principle 1).

FP16: onnxconverter-common's convert_float_to_float16(keep_io_types=True): every float32
initializer becomes float16 and the graph computes in float16 between a Cast after the input and
a Cast before the output, so callers keep feeding and reading float32.

INT8: ONNX Runtime's `quantize_static` in QDQ format, placed as TensorRT's explicit-quantisation
guidance ("Q/DQ layer placement recommendations" in the TensorRT developer guide) asks:

1. Quantise the inputs of weighted ops, activation and weight: symmetric int8, zero point 0,
   per-channel weight scales (fused RCR kernels have wide per-channel ranges), biases left float.
2. Do not quantise a weighted op's output, so no Q/DQ sits between Conv and its Relu: TensorRT
   fuses Conv+bias+Relu (and a residual Add) and the next op's input Q closes the group.
3. Quantise both inputs of a residual Add, so TensorRT can fuse the Add into the Conv before it.
4. Keep the graph output and Sigmoid / Softmax / Resize in float.
5. Depth-wise ConvTranspose (the up-samplers) stays float: ONNX Runtime's per-channel axis for
   ConvTranspose is 1, of size 1 when groups == channels, so its scales would be per-tensor and
   round about half of the weights to zero; these layers are memory-bound, so int8 gains nothing.
6. With `float_stem` (the default), the stem stays float, weight and input: every Conv that reads
   a tensor computed from the input alone at half its resolution or more (RCRNet: the stem, its
   first block's Convs, and the decoder's skip branch before it meets up-sampled features; 23 % of
   the MACs). Those tensors have long-tailed ranges (min-max 12.6 where the KL
   threshold is 3.2 on the shipped model), and one int8 step of them wipes out the faint edges of
   a small person: quantising them with min-max ranges cost 7.7-9 points on the reframed splits,
   keeping them float 1.5-3, with the as-is splits within 0.15 of FP32 (docs/export.md).

`check_qdq_placement` asserts each rule on the graph, and the export runs it on every INT8 artifact.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from tqdm import tqdm

from rcr_deploy.errors import DataError, ExportError, RcrError, VerificationError
from rcr_deploy.preprocess import load_image, preprocess
from rcr_deploy.reparam import Tolerance

from rcr_deploy.exporters.calibration import CALIBRATORS, calibrate
from rcr_deploy.exporters.onnx import INPUT_NAME, validate, validate_openvino_int8
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from rcr_deploy.runtime.openvino_runner import OpenVINORunner

FP16_MAX = float(np.finfo(np.float16).max)
#: Op types that must stay un-quantised (TensorRT runs them in float; Q/DQ there costs accuracy).
NO_QDQ_OPS = ("Sigmoid", "Softmax", "Resize")
#: Op types whose inputs get Q/DQ (rules 1 and 3); their outputs never do (rule 2).
QUANTIZED_OPS = ("Conv", "Add")
QDQ = ("QuantizeLinear", "DequantizeLinear")
CALIB_METHODS = tuple(CALIBRATORS)
#: The INT8 file on other runtimes against ONNX Runtime with every graph optimisation: ORT with
#: none (DISABLE_ALL) and OpenVINO each fuse and round the Q/DQ graph their own way. Measured on the
#: shipped model at 224 (docs/cpu-engines.md): logits up to about 1 apart, >= 99.3 % same class. As
#: for INT8 against FP32, the logit bound catches a broken graph and the pixel agreement is the gate.
CROSS_RUNTIME = (Tolerance(rtol=0.5, atol=0.5), 0.95)
#: Default calibration images per method, the first N by name (set when the histogram methods held
#: every image in memory; docs/export.md says what the count does to accuracy).
DEFAULT_CALIB_COUNT = {"minmax": 128, "entropy": 32, "percentile": 32}


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """An FP16-compute copy of an FP32 graph with FP32 input and output (onnxconverter-common,
    keep_io_types: the same 174-node graph our hand-written converter made). A weight beyond the
    float16 range is refused rather than clamped, as the library would do silently."""
    from onnxconverter_common.float16 import convert_float_to_float16

    for init in proto.graph.initializer:
        if init.data_type == TensorProto.FLOAT and np.abs(numpy_helper.to_array(init)).max(initial=0.0) > FP16_MAX:
            raise RcrError(f"initializer {init.name} exceeds the float16 range; export FP32 or INT8 instead")
    with warnings.catch_warnings():  # one warning per weight below float16's smallest normal, which it keeps
        warnings.filterwarnings("ignore", message="the float32 number", category=UserWarning)
        model = convert_float_to_float16(copy.deepcopy(proto), keep_io_types=True)
    onnx.checker.check_model(model)
    return model


def load_batch(paths: list[Path], size: tuple[int, int], in_channels: int) -> np.ndarray:
    """Preprocess images exactly as inference does (letterbox, normalise, zero prior): NCHW float32."""
    if size[0] != size[1]:
        raise ExportError(f"real-image inputs need a square size, got {size[0]}x{size[1]}")
    return np.concatenate([preprocess(load_image(p), size[0], in_channels=in_channels)[0] for p in paths])


class _ImageReader:
    """onnxruntime CalibrationDataReader over preprocessed images, one per call, with a progress bar."""

    def __init__(self, paths: list[Path], size: tuple[int, int], in_channels: int, progress: bool) -> None:
        self.paths, self.size, self.in_channels = paths, size, in_channels
        self.bar = tqdm(total=len(paths), desc="int8 calibration", unit="img", disable=not progress, leave=False)
        self._iter = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for path in self.paths:
            yield {INPUT_NAME: load_batch([path], self.size, self.in_channels)}
            self.bar.update(1)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = self._batches()


class _NoPreprocessHint(logging.Filter):
    """ONNX Runtime logs, at WARNING on the root logger, a hint to run its model pre-processing on
    every quantisation. The graph is onnxsim's, already shape-inferred and folded: noise in the CLI."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_int8(
    fp32: onnx.ModelProto,
    calib_images: list[Path],
    size: tuple[int, int],
    in_channels: int,
    method: str = "minmax",
    progress: bool = True,
    float_stem: bool = True,
) -> onnx.ModelProto:
    """An INT8 Q/DQ model calibrated on `calib_images`, the stem's Convs (`stem_convs`) left float
    with `float_stem` (see the module docstring for the config)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if method not in CALIB_METHODS:
        raise ExportError(f"unknown calibration method {method!r}; use one of {', '.join(CALIB_METHODS)}")
    floats = stem_convs(fp32, size) if float_stem else []
    op_types = [op for op in QUANTIZED_OPS if op in {n.op_type for n in fp32.graph.node}]
    reader = _ImageReader(calib_images, size, in_channels, progress)
    with tempfile.TemporaryDirectory(prefix="rcr-int8-") as tmp:
        src, dst, cache = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx", Path(tmp) / "ranges.json"
        onnx.save_model(fp32, str(src))
        hint = _NoPreprocessHint()
        logging.getLogger().addFilter(hint)
        try:
            recorded = calibrate(src, op_types, method, reader, cache)
            quantize_static(
                str(src),
                str(dst),
                None,
                calibration_cache_path=str(cache),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                nodes_to_exclude=floats,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=recorded,
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "AddQDQPairToWeight": True,
                    "QuantizeBias": False,
                    "DedicatedQDQPair": False,
                    # Keep Relu explicit: TensorRT fuses Conv+Relu itself, and removing it would
                    # let a symmetric int8 range waste half its codes on negatives.
                    "QDQKeepRemovableActivations": True,
                    "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),  # rule 2
                },
            )
        except DataError:
            raise
        except Exception as e:
            raise ExportError(f"INT8 quantisation failed: {str(e).splitlines()[0]}; rerun with --debug") from e
        finally:
            reader.bar.close()
            logging.getLogger().removeFilter(hint)
        model = onnx.load_model(str(dst))
    strip_float_boundaries(model)
    check_qdq_placement(model, floats)
    return model


def stem_convs(fp32: onnx.ModelProto, size: tuple[int, int]) -> list[str]:
    """Names of the stem's Convs at input `size` (rule 6): those that read a tensor computed from
    the input alone at half its height or more, found by shape inference on a copy whose input is
    fixed at 1 x C x size. A decoder's up-sampled tensors are not the stem's: they come from below."""
    static = copy.deepcopy(fp32)
    dims = static.graph.input[0].type.tensor_type.shape.dim
    for i, v in ((0, 1), (2, size[0]), (3, size[1])):
        dims[i].Clear()
        dims[i].dim_value = v
    graph = onnx.shape_inference.infer_shapes(static).graph
    heights = {v.name: v.type.tensor_type.shape.dim[2].dim_value for v in graph.value_info if len(v.type.tensor_type.shape.dim) == 4}
    inits = {i.name for i in graph.initializer}
    stem = {graph.input[0].name}
    for node in graph.node:  # topologically sorted, as ONNX requires
        reads = [i for i in node.input if i and i not in inits]
        if reads and set(reads) <= stem and all(2 * heights.get(o, 0) >= size[0] for o in node.output):
            stem.update(node.output)
    return [n.name for n in graph.node if n.op_type == "Conv" and n.input[0] in stem]


def check_across_runtimes(path: Path, inputs: dict[str, np.ndarray]) -> list[dict]:
    """Run the INT8 artifact on ONNX Runtime without graph optimisations and on OpenVINO, each
    against ONNX Runtime with all of them, within `CROSS_RUNTIME`; raise `VerificationError`
    beyond it (on a CPU whose INT8 kernels saturate, OpenVINO's pixel agreement is recorded, not
    gated: `onnx.validate_openvino_int8`). Returns the validation summaries."""
    tol, agreement = CROSS_RUNTIME
    reference = OnnxRuntimeRunner(path)
    summaries = []
    for stage, runner, check in (
        ("int8 on onnxruntime DISABLE_ALL", OnnxRuntimeRunner(path, optimization="DISABLE_ALL"), validate),
        ("int8 on openvino", OpenVINORunner(path), validate_openvino_int8),
    ):
        result = check(runner, reference, inputs, tol, agreement)
        result.stage = stage
        if not result:
            s = result.summary()
            raise VerificationError(
                f"{path.name}: {stage} differs from onnxruntime ENABLE_ALL beyond tolerance: max abs {s['max_abs']:.3e} "
                f"(rtol {tol.rtol}, atol {tol.atol}), mask agreement {s['mask_agreement']} (needs {result.min_mask_agreement})"
            )
        summaries.append(result.summary())
    return summaries


def _index(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producers, consumers


def strip_float_boundaries(model: onnx.ModelProto) -> None:
    """Bypass the Q -> DQ pairs that ONNX Runtime puts on the graph output, around
    Sigmoid/Softmax/Resize, and on the inputs of ops outside QUANTIZED_OPS (it shares one pair among
    all readers of a tensor, so a Relu output read by a Conv and an AveragePool gets DQ -> AveragePool
    too), then drop the Q/DQ nodes left unused. TensorRT then keeps those tensors in float instead
    of rounding logits or attention weights to int8."""
    graph = model.graph
    producers, consumers = _index(graph)

    def float_source(name: str) -> str | None:
        dq = producers.get(name)
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None

    for node in graph.node:
        if node.op_type in QDQ or node.op_type in QUANTIZED_OPS:
            continue
        node.input[:] = [float_source(name) or name for name in node.input]
        if node.op_type not in NO_QDQ_OPS:
            continue
        for out in node.output:
            for q in (c for c in consumers.get(out, []) if c.op_type == "QuantizeLinear"):
                for dq in (c for c in consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"):
                    for user in consumers.get(dq.output[0], []):
                        user.input[:] = [out if name == dq.output[0] else name for name in user.input]
    for output in graph.output:
        source = float_source(output.name)
        if source is not None:  # the float tensor takes the output's name; its Q reads it there
            for node in graph.node:
                node.output[:] = [output.name + "_qdq_unused" if n == output.name else n for n in node.output]
                node.output[:] = [output.name if n == source else n for n in node.output]
                node.input[:] = [output.name if n == source else n for n in node.input]
    while True:  # prune Q/DQ whose outputs nobody reads
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in QDQ and n.output[0] not in used]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:  # their scales and zero points
        graph.initializer.remove(init)


def check_qdq_placement(model: onnx.ModelProto, floats: Collection[str] = ()) -> dict[str, int]:
    """Raise `ExportError` unless the Q/DQ layout follows the module docstring's rules; return Q/DQ counts.

    Checked: every Q/DQ is int8 with zero point 0 (symmetric); the Convs named in `floats` read a
    float weight and a float input, and every other Conv weight is a per-channel Q -> DQ pair on a
    float initializer; no bias is quantised; an activation's DequantizeLinear
    feeds only QUANTIZED_OPS (so no weighted op's output is quantised for its own sake) and no Relu
    reads one (Conv+Relu under one pair); ConvTranspose
    weights stay float; the graph output and the inputs and outputs of Sigmoid/Softmax/Resize
    carry no Q/DQ."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers, consumers = _index(graph)
    qdq = [n for n in graph.node if n.op_type in QDQ]
    if not qdq:
        raise ExportError("INT8 model has no Q/DQ nodes; nothing was quantised")
    for node in qdq:
        zp = inits.get(node.input[2]) if len(node.input) > 2 else None
        if zp is None or zp.data_type != TensorProto.INT8 or numpy_helper.to_array(zp).any():
            raise ExportError(f"{node.name}: Q/DQ is not symmetric int8 (zero point must be int8 zeros)")
    for node in graph.node:
        if node.name in floats and any(getattr(producers.get(i), "op_type", None) in QDQ for i in node.input[:2]):
            raise ExportError(f"{node.name}: a high-resolution Conv is quantised; it must stay float (rule 6)")
        if node.op_type == "Conv" and node.name not in floats:
            dq = producers.get(node.input[1])
            q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in inits:
                raise ExportError(f"{node.name}: weight is not a Q/DQ pair on a float initializer")
            if numpy_helper.to_array(inits[q.input[1]]).size < 2 and inits[q.input[0]].dims[0] > 1:
                raise ExportError(f"{node.name}: weight is quantised per tensor; per-channel scales are required")
            if len(node.input) > 2 and node.input[2] not in inits:
                raise ExportError(f"{node.name}: bias is quantised; biases must stay float")
        if node.op_type == "DequantizeLinear" and node.input[0] not in inits:  # an activation's DQ
            readers = {c.op_type for c in consumers.get(node.output[0], [])}
            if readers - set(QUANTIZED_OPS):
                raise ExportError(
                    f"{node.name}: feeds {', '.join(sorted(readers - set(QUANTIZED_OPS)))}; Q/DQ may only mark the "
                    f"inputs of {', '.join(QUANTIZED_OPS)}, never a weighted op's output"
                )
        if node.op_type == "ConvTranspose" and getattr(producers.get(node.input[1]), "op_type", None) in QDQ:
            raise ExportError(f"{node.name}: depth-wise ConvTranspose weight is quantised; it must stay float")
        if node.op_type == "Relu" and getattr(producers.get(node.input[0]), "op_type", None) == "DequantizeLinear":
            raise ExportError(f"{node.name}: Relu reads a DequantizeLinear; Conv and Relu must share one Q/DQ pair")
        if node.op_type in NO_QDQ_OPS:
            touched = [producers.get(i) for i in node.input] + [c for o in node.output for c in consumers.get(o, [])]
            if any(n is not None and n.op_type in QDQ for n in touched):
                raise ExportError(f"{node.name}: Q/DQ around {node.op_type}; it must run in float")
    for output in graph.output:
        producer = producers.get(output.name)
        if producer is not None and producer.op_type in QDQ:
            raise ExportError(f"graph output {output.name} is produced by {producer.op_type}; outputs must stay float")
    return {
        "QuantizeLinear": sum(n.op_type == "QuantizeLinear" for n in qdq),
        "DequantizeLinear": sum(n.op_type == "DequantizeLinear" for n in qdq),
    }
