"""Why INT8 is or is not faster than FP32 on ONNX Runtime's CPU provider: a reproducible study.

    python -m rcr_deploy.benchmarks.int8_cpu [EXPORT_DIR] --calib DIR --md benchmarks/results/int8-cpu-2core.md

It quantises the export's FP32 artifact with Q/DQ placements ORT's CPU kernels prefer, times them
against the FP32 artifact and the export's own INT8 artifact (placed for TensorRT), interleaved,
and counts the ops in the graphs ORT actually runs after its optimisations (QLinearConv fused or
not, layout Transposes, ConvTranspose left in float), which is what explains the times.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import onnx

from rcr_deploy.benchmarks.timing import time_interleaved, timed_on_cpu
from rcr_deploy.fileio import write_text_atomic
from rcr_deploy.artifact import ARTIFACT_NAMES, DEFAULT_OUT_DIR
from rcr_deploy.benchmarks.machine import machine_info
from rcr_deploy.exporters.precision import _ImageReader
from rcr_deploy.preprocess import list_images

# Op types that tell the story: quantised kernels, float fallbacks, layout changes, Q/DQ glue.
SHOWN_OPS = ("QLinearConv", "Conv", "FusedConv", "ConvTranspose", "Transpose", "ReorderInput", "ReorderOutput", "QuantizeLinear", "DequantizeLinear", "Relu", "QLinearAdd", "Add")


def quantize_variants(fp32: Path, calib: list[Path], size: int, in_channels: int, tmp: Path) -> dict[str, tuple[Path, str]]:
    """Q/DQ placements for ORT's CPU kernels: uint8 asymmetric activations (ORT's fastest
    QLinearConv path on x86), per-channel int8 weights, removable Relus folded into the conv."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    variants = {
        "ort-qdq-u8s8": ("uint8 activations (asymmetric), int8 per-channel weights, all ops ORT quantises", QuantType.QUInt8, {}, None),
        "ort-qdq-s8s8-sym": ("int8 symmetric activations (TensorRT's scheme), Relu folded", QuantType.QInt8, {"ActivationSymmetric": True}, None),
        "ort-qdq-u8s8-conv-only": ("as ort-qdq-u8s8, Conv only (Add, pooling stay float)", QuantType.QUInt8, {}, ["Conv"]),
    }
    out = {}
    for name, (what, act, extra, ops) in variants.items():
        path = tmp / f"{name}.onnx"
        quantize_static(
            str(fp32), str(path), _ImageReader(calib, (size, size), in_channels, progress=False), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=act, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=ops, extra_options=extra,
        )  # fmt: skip
        out[name] = (path, what)
    return out


def optimised_ops(path: Path, threads: int, level: str, tmp: Path) -> collections.Counter:
    """Op counts of the graph ORT runs after its own optimisations (fusions, layout transforms)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.optimized_model_filepath = str(tmp / f"opt-{path.stem}-{level}.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def study(export_dir: Path, calib_dir: Path, calib_count: int, threads: int, iters: int) -> str:
    """Quantise, inspect and time; returns the markdown report."""
    import numpy as np
    import onnxruntime as ort

    fp32 = export_dir / ARTIFACT_NAMES["fp32"]
    shape = [d.dim_value for d in onnx.load(str(fp32), load_external_data=False).graph.input[0].type.tensor_type.shape.dim]
    in_channels, size = shape[1], shape[2]
    with tempfile.TemporaryDirectory(prefix="rcr-int8-") as tmp_name:
        tmp = Path(tmp_name)
        candidates = {"fp32": (fp32, "the export's FP32 artifact")}
        exported_int8 = export_dir / ARTIFACT_NAMES["int8"]
        if exported_int8.is_file():
            candidates["export-int8"] = (exported_int8, "the export's INT8 artifact (Q/DQ placed for TensorRT: int8 symmetric, Q/DQ pairs on weights, Relu kept)")
        candidates |= quantize_variants(fp32, list_images(calib_dir, "calibration")[:calib_count], size, in_channels, tmp)
        x = np.random.default_rng(0).standard_normal((1, in_channels, size, size), dtype=np.float32)
        calls, ops = {}, {}
        for name, (path, _) in candidates.items():
            for level in ("ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED"):
                options = ort.SessionOptions()
                options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
                options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                key = f"{name} ({level.removeprefix('ORT_ENABLE_').lower()})"
                calls[key] = timed_on_cpu(lambda s=session: s.run(None, {"input": x}))
                ops[key] = optimised_ops(path, threads, level, tmp)
                for _ in range(3):
                    calls[key]()
        stats = time_interleaved(calls, 1, iters, max_seconds=60.0)
    info = machine_info(threads)
    base = stats["fp32 (all)"].p50_ms
    lines = [
        f"# INT8 on ONNX Runtime CPU: {fp32} at batch 1, {size}x{size}",
        "",
        f"{info['cpu']}, {info['cores']} cores ({' '.join(info['cpu_flags'])}), {threads} threads, onnxruntime "
        f"{info['versions'].get('onnxruntime')}; load average {' / '.join(f'{v:.1f}' for v in info['load_average'] or [])}. "
        f"Calibration: {calib_count} images from `{calib_dir.name}`. Regenerate: `python -m rcr_deploy.benchmarks.int8_cpu {export_dir} --calib DIR --md FILE`.",
        "",
        "| artifact (optimisation level) | p50 ms | vs fp32 (all) | " + " | ".join(SHOWN_OPS) + " |",
        "| --- | ---: | ---: |" + " ---: |" * len(SHOWN_OPS),
    ]
    for key, s in stats.items():
        lines.append(f"| {key} | {s.p50_ms:.2f} | {base / s.p50_ms:.2f}x | " + " | ".join(str(ops[key].get(op, 0)) for op in SHOWN_OPS) + " |")
    lines += ["", "Op counts are of the graph ORT runs after its optimisations; artifacts:", ""]
    lines += [f"- `{name}`: {what}" for name, (_, what) in candidates.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", nargs="?", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--calib", type=Path, required=True, help="folder of calibration images")
    parser.add_argument("--calib-count", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--md", type=Path, help="write the markdown report here (else print it)")
    args = parser.parse_args()
    if not (args.export_dir / ARTIFACT_NAMES["fp32"]).is_file():
        parser.error(f"{args.export_dir / ARTIFACT_NAMES['fp32']}: no FP32 artifact; run 'rcr-deploy export CKPT' first")
    report = study(args.export_dir, args.calib, args.calib_count, args.threads, args.iters)
    if args.md:
        write_text_atomic(args.md, report)
    print(report)


if __name__ == "__main__":
    main()
