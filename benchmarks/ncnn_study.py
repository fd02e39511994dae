"""Can ncnn run RCRNet? A reproducible study: pnnx converts the FP32 ONNX artifact, the `ncnn`
wheel runs it (FP32 weights, and FP16 weight storage), each compared with ONNX Runtime FP32 on
real images and timed against it in interleaved rounds.

    pip install pnnx ncnn
    python -m rcr_deploy.benchmarks.ncnn_study rcr-deploy-out --data ../shared/data/eg1800 --md benchmarks/results/ncnn-study.md

The evidence `export --format ncnn` was built on (docs/targets/ncnn.md).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from rcr_deploy.artifact import ARTIFACT_NAMES
from rcr_deploy.benchmarks.timing import time_interleaved, timed_on_cpu
from rcr_deploy.data.folder import list_pairs
from rcr_deploy.exporters.precision import load_batch
from rcr_deploy.fileio import write_text_atomic
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner


def convert(onnx: Path, size: int, fp16: bool, out: Path) -> tuple[Path, Path, float]:
    """pnnx: ONNX -> ncnn .param/.bin (weights float16 with `fp16`); returns the files and the seconds."""
    work = out / ("fp16" if fp16 else "fp32")
    work.mkdir(parents=True)
    shutil.copy(onnx, work / "model.onnx")
    start = datetime.datetime.now()
    subprocess.run(["pnnx", "model.onnx", f"inputshape=[1,4,{size},{size}]", f"fp16={int(fp16)}"], cwd=work, check=True, capture_output=True)
    return work / "model.ncnn.param", work / "model.ncnn.bin", (datetime.datetime.now() - start).total_seconds()


class NcnnModel:
    """One ncnn net, FP32 arithmetic, `threads` threads; NCHW batch in, NCHW logits out."""

    def __init__(self, param: Path, weights: Path, threads: int) -> None:
        import ncnn

        self.ncnn = ncnn
        self.net = ncnn.Net()
        self.net.opt.num_threads = threads
        self.net.opt.use_fp16_arithmetic = False
        self.net.load_param(str(param))
        self.net.load_model(str(weights))

    def infer(self, x: np.ndarray) -> np.ndarray:
        outs = []
        for image in x:
            ex = self.net.create_extractor()
            ex.input("in0", self.ncnn.Mat(np.ascontiguousarray(image)).clone())
            _, out = ex.extract("out0")
            outs.append(np.array(out)[None])
        return np.concatenate(outs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="an export folder with the FP32 ONNX artifact")
    parser.add_argument("--data", type=Path, required=True, help="labelled folder: real images from its validation split")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--md", type=Path, default=None)
    args = parser.parse_args()
    onnx = args.folder / ARTIFACT_NAMES["fp32"]
    x = load_batch([p.image for p in list_pairs(args.data, "val")[: args.images]], (args.size, args.size), 4)
    reference = OnnxRuntimeRunner(onnx, threads=args.threads)
    ref = reference.infer(x)
    rows, calls = [], {"onnxruntime-fp32": timed_on_cpu(lambda: reference.infer(x[:1]))}
    load_before = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="rcr-ncnn-") as tmp:
        for fp16 in (False, True):
            param, weights, seconds = convert(onnx, args.size, fp16, Path(tmp))
            model = NcnnModel(param, weights, args.threads)
            out = model.infer(x)
            name = f"ncnn-{'fp16' if fp16 else 'fp32'}"
            rows.append({"name": name, "convert_s": seconds, "bin_bytes": weights.stat().st_size, "max_abs": float(np.abs(out - ref).max()),
                         "agreement": float((out.argmax(1) == ref.argmax(1)).mean()),
                         "ops": sorted({line.split()[0] for line in param.read_text().splitlines()[2:]})})  # fmt: skip
            calls[name] = timed_on_cpu(lambda m=model: m.infer(x[:1]))
        stats = time_interleaved(calls, 1, args.iters, 20.0)
    base = stats["onnxruntime-fp32"].p50_ms
    import ncnn

    lines = [
        "# ncnn study: pnnx + the ncnn wheel on RCRNet",
        "",
        f"Measured {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} with "
        f"`python -m rcr_deploy.benchmarks.ncnn_study {args.folder} --data {args.data} --size {args.size}`, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, batch 1, ncnn {ncnn.__version__}.",
        f"Load average before the run: {load_before} (1, 5, 15 min), after: {[round(v, 2) for v in os.getloadavg()]}: the machine was shared, "
        "so compare as ratios within this run (the rounds are interleaved).",
        "",
        f"Reference: ONNX Runtime FP32 on `{onnx.name}`, p50 {base:.2f} ms. Agreement on {len(x)} validation images.",
        "",
        "| model | pnnx s | weights bytes | max abs vs ORT | same class | p50 ms | × ORT time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        p50 = stats[r["name"]].p50_ms
        lines.append(f"| {r['name']} | {r['convert_s']:.1f} | {r['bin_bytes']:,} | {r['max_abs']:.2e} | {r['agreement']:.4%} | {p50:.2f} | {p50 / base:.2f} |")
    lines += ["", f"ncnn layers in the graph: {', '.join(rows[0]['ops'])}.", ""]
    text = "\n".join(lines)
    if args.md:
        write_text_atomic(args.md, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
