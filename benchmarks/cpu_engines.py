"""CPU engines side by side at each input size: latency (interleaved rounds), mIoU and agreement.

    python -m rcr_deploy.benchmarks.cpu_engines --sizes 160,192,224,256 --threads 2 --data DIR

For every size it exports the model (FP32 + INT8 Q/DQ ONNX, and their OpenVINO IRs, the INT8 one
by NNCF; each validated), times every engine at batch 1 and at batch 8 in interleaved rounds (so
load drifting on a shared machine hits all alike), scores each on the validation split of DIR
(`rcr_deploy.evaluate`), and compares each engine's masks and person probabilities with ONNX
Runtime FP32 on the same images. MediaPipe's selfie segmenter (`peer.py`), where installed, is
timed in the same batch-1 rounds and scored on the same images. The report opens with a
headline: the fastest RCRNet engine at each size against MediaPipe, and how far above the
compute floor (2 x MACs / the measured peak FLOP rate) it runs.
It writes `cpu-engines-<machine>.{json,md,png}` into --out (default benchmarks/results).
Without --data, mIoU is left out and --calib must name a folder of images for INT8.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rcr_deploy.benchmarks import peer as mediapipe
from rcr_deploy.benchmarks.timing import time_interleaved, timed_on_cpu
from rcr_deploy.benchmarks.machine import RESULTS, provenance, machine_info, machine_kind, peak_flops
from rcr_deploy.artifact import ARTIFACT_NAMES, format_path
from rcr_deploy.errors import TYPED, RcrError, report
from rcr_deploy.evaluate import evaluate
from rcr_deploy.postprocess import foreground_prob
from rcr_deploy.fileio import atomic_path, write_text_atomic
from rcr_deploy.runtime import Runner
from rcr_deploy.benchmarks.cost import count_macs_onnx
from rcr_deploy.data.folder import list_pairs
from rcr_deploy.exporters.pipeline import export
from rcr_deploy.exporters.precision import load_batch
from rcr_deploy.preprocess import list_images
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from rcr_deploy.runtime.openvino_runner import OpenVINORunner

#: name -> what it is. ov-int8 is the INT8 IR that `export --format openvino` ships; ov-int8-qdq
#: is the alternative it was measured against.
ENGINES = {
    "ort-fp32": "ONNX Runtime, FP32 artifact",
    "ort-int8": "ONNX Runtime, INT8 Q/DQ artifact",
    "ov-fp32": "OpenVINO FP32 IR, LATENCY hint, f32",
    "ov-bf16": "OpenVINO FP32 IR, LATENCY hint, bf16 (explicit option)",
    "ov-int8": "OpenVINO INT8 IR: the FP32 IR quantised by NNCF (shipped)",
    "ov-int8-qdq": "OpenVINO reading the INT8 Q/DQ ONNX directly (same calibration images)",
    "ov-default": "OpenVINO FP32 IR, the plugin's default hints",
    "litert-fp32": "LiteRT (XNNPACK), FP32 .tflite after the exact phone rewrite, NHWC",
    "litert-int8": "LiteRT (XNNPACK), full-integer INT8 .tflite",
    "mediapipe": mediapipe.DESCRIPTION,
}
#: RCRNet's own .tflite files: timed in the same LiteRT interpreter and rounds as MediaPipe's.
LITERT = ("litert-fp32", "litert-int8")
REFERENCE = "ort-fp32"
#: Real images for the agreement columns (the mIoU uses the whole validation split).
AGREEMENT_IMAGES = 16
#: The larger batch timed besides batch 1 (folders, offline jobs).
BATCH = 8


def load_engines(folder: Path, threads: int) -> dict[str, Runner]:
    """Every engine of ENGINES on one export folder."""
    fp32, int8 = folder / ARTIFACT_NAMES["fp32"], folder / ARTIFACT_NAMES["int8"]
    runners: dict[str, Runner] = {
        "ort-fp32": OnnxRuntimeRunner(fp32, threads=threads),
        "ort-int8": OnnxRuntimeRunner(int8, threads=threads),
        "ov-fp32": OpenVINORunner(format_path(fp32, "openvino"), threads=threads),
        "ov-bf16": OpenVINORunner(format_path(fp32, "openvino"), precision="bf16", threads=threads),
        "ov-int8": OpenVINORunner(format_path(int8, "openvino"), threads=threads),
        "ov-int8-qdq": OpenVINORunner(int8, threads=threads),
        "ov-default": OpenVINORunner(format_path(fp32, "openvino"), hint=None, precision=None),
    }
    for name, onnx in zip(LITERT, (fp32, int8)):
        if format_path(onnx, "tflite").is_file():
            from rcr_deploy.runtime.tflite_runner import TFLiteRunner

            runners[name] = TFLiteRunner(format_path(onnx, "tflite"), threads=threads)
    return runners


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Same-class pixel fraction and the largest person-probability difference of two logit maps."""
    return {
        "mask_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
        "max_prob_diff": float(np.abs(foreground_prob(a) - foreground_prob(b)).max()),
        "max_logit_diff": float(np.abs(a - b).max()),
    }


def measure_size(
    size: int, args: argparse.Namespace, calib: list[Path], val: list[Path], tmp: Path, peer: dict[str, Any] | None
) -> dict[str, Any]:
    """Export at `size`, then time, score and compare every engine on it (and time `peer`'s model,
    {"model": SelfieSegmenter, "fg_miou": ..., "n_images": ...}, in the same batch-1 rounds)."""
    folder = tmp / str(size)
    export(args.ckpt, folder, ("fp32", "int8"), calib=args.calib_dir, size=size, calib_count=len(calib), formats=_formats(), progress=False)
    runners = load_engines(folder, args.threads)
    x = np.random.default_rng(0).standard_normal((1, 4, size, size), dtype=np.float32)
    xb = np.repeat(x, BATCH, axis=0)
    calls = {name: timed_on_cpu(lambda r=r: r.infer(x)) for name, r in runners.items()}
    batched = {name: timed_on_cpu(lambda r=r: r.infer(xb)) for name, r in runners.items()}
    if peer:
        calls["mediapipe"] = timed_on_cpu(peer["model"].timed_call)
    for call in [*calls.values(), *batched.values()]:
        for _ in range(args.warmup):
            call()
    stats = time_interleaved(calls, 1, args.iters, args.max_seconds)
    stats_b = time_interleaved(batched, BATCH, args.iters, args.max_seconds)
    rows: dict[str, Any] = {}
    real = load_batch(val[:AGREEMENT_IMAGES], (size, size), 4) if val else None
    outputs = {name: r.infer(real) for name, r in runners.items()} if real is not None else {}
    for name, runner in runners.items():
        row: dict[str, Any] = {"engine": name, "what": ENGINES[name], **_latency(stats[name]), f"batch{BATCH}": _latency(stats_b[name])}
        if outputs:
            row["vs_" + REFERENCE] = agreement(outputs[name], outputs[REFERENCE])
        if args.data is not None:
            report = evaluate(runner, args.data, size=size, split="val", limit=args.val_limit, progress=False)
            row["fg_miou"], row["n_images"] = report.fg_miou * 100, report.n_images
        rows[name] = row
        runner.close()
    if peer:
        rows["mediapipe"] = {"engine": "mediapipe", "what": ENGINES["mediapipe"], **_latency(stats["mediapipe"])}
        rows["mediapipe"].update({k: peer[k] for k in ("fg_miou", "n_images") if peer.get(k) is not None})
    result = {"size": size, "macs": count_macs_onnx(folder / ARTIFACT_NAMES["fp32"]).macs, "rows": rows}
    if outputs:  # the same INT8 file on two runtimes
        result["int8_ort_vs_openvino"] = agreement(outputs["ov-int8-qdq"], outputs["ort-int8"])
    return result


def _formats() -> str:
    """OpenVINO always; the .tflite files too where the tflite extra is installed (the phone race)."""
    from rcr_deploy.formats import FORMATS, installed

    return "onnx,openvino" + (",tflite" if installed(FORMATS["tflite"]) else "")


def _latency(stats: Any) -> dict[str, float]:
    return {k: getattr(stats, k) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "iterations")}


def _load_note(load_1m: float, cores: int) -> str:
    """What the load before the run says about the figures (the run itself adds its 2 threads)."""
    if load_1m >= cores:
        return ("**The machine was busy when the run started (1-minute load at or above the core count), so the times "
                "are under load**; compare engines as ratios within one size (the rounds are interleaved).")
    return "No other work was scheduled on the machine for the run; the rounds are interleaved, so compare engines as ratios within one size."


#: Engines the headline may pick: what `export --format openvino` ships and ONNX Runtime, at
#: their deliberate settings (ov-bf16 and ov-default are there to show what the hints cost).
SHIPPED = {"fp32": ("ort-fp32", "ov-fp32"), "int8": ("ort-int8", "ov-int8", "ov-int8-qdq")}
#: mIoU an INT8 path may lose against FP32 and still count (the CPU-engine issue's bound).
INT8_MIOU_LOSS = 0.5


def _fastest(rows: dict[str, Any], names: tuple[str, ...], batch: bool = False) -> str:
    def latency(name: str) -> float:
        return (rows[name][f"batch{BATCH}"] if batch else rows[name])["p50_ms"]

    return min((n for n in names if n in rows), key=latency)


def headline(report: dict[str, Any]) -> list[str]:
    """Per size: the fastest RCRNet engine (INT8 counts where it keeps mIoU within
    INT8_MIOU_LOSS of FP32), its distance to the compute floor, and MediaPipe in the same rounds."""
    lines = [
        "## Headline",
        "",
        f"| size | fastest RCRNet engine | p50 ms | mIoU | × floor | MediaPipe p50 ms (mIoU {_peer_miou(report)}) | RCRNet / MediaPipe p50 "
        f"| RCRNet LiteRT FP32 / INT8 vs MediaPipe, same interpreter | best INT8 vs best FP32, batch 1 | batch {BATCH} |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in report["sizes"]:
        rows = s["rows"]
        fp32 = rows[REFERENCE].get("fg_miou")
        int8 = tuple(n for n in SHIPPED["int8"] if fp32 is None or rows[n].get("fg_miou", -1.0) >= fp32 - INT8_MIOU_LOSS)
        best = _fastest(rows, SHIPPED["fp32"] + int8)
        f1, i1 = _fastest(rows, SHIPPED["fp32"]), _fastest(rows, SHIPPED["int8"])
        f8, i8 = _fastest(rows, SHIPPED["fp32"], batch=True), _fastest(rows, SHIPPED["int8"], batch=True)
        floor_ms = 2 * s["macs"] / (report["peak_gflops"] * 1e9) * 1e3
        ms, miou, peer = rows[best]["p50_ms"], rows[best].get("fg_miou"), rows.get("mediapipe")
        vs_peer = f"{peer['p50_ms']:.2f} | {ms / peer['p50_ms']:.2f}" if peer else "– | –"
        litert = [n for n in LITERT if n in rows]
        same = " / ".join(f"{rows[n]['p50_ms'] / peer['p50_ms']:.2f}" for n in litert) if peer and litert else "–"
        lines.append(
            f"| {s['size']} | {best} | {ms:.2f} | {'–' if miou is None else format(miou, '.2f')} | {ms / floor_ms:.1f} | {vs_peer} | {same} "
            f"| {rows[f1]['p50_ms'] / rows[i1]['p50_ms']:.2f} ({i1} vs {f1}) "
            f"| {rows[f8][f'batch{BATCH}']['p50_ms'] / rows[i8][f'batch{BATCH}']['p50_ms']:.2f} ({i8} vs {f8}) |"
        )
    lines += [
        "",
        f"RCRNet / MediaPipe below 1 means RCRNet is faster. INT8 engines count for the fastest only where they keep mIoU "
        f"within {INT8_MIOU_LOSS} points of {REFERENCE}. MediaPipe runs at its fixed 256x256 whatever the row's size; its time "
        "differs between rows only by the run's noise. The LiteRT column is the fairest race: RCRNet's own .tflite files "
        "(`export --format tflite`) and MediaPipe's .tflite in the same LiteRT interpreter (XNNPACK), threads and rounds.",
        "",
    ]
    return lines


def _peer_miou(report: dict[str, Any]) -> str:
    rows = [s["rows"]["mediapipe"] for s in report["sizes"] if "mediapipe" in s["rows"]]
    return f"{rows[0]['fg_miou']:.2f}" if rows and "fg_miou" in rows[0] else "–"


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# CPU engines by input size ({report['machine_kind']})",
        "",
        f"Measured {report['created']} with `{report['command']}`.",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} usable cores, flags {', '.join(m['cpu_flags'])}; {m['threads']} threads per engine; batch 1.",
        f"- Load average (1, 5, 15 min) before the run: {report['load_before']}, after: {report['load_after']}. "
        + _load_note(report["load_before"][0], m["cores"]),
        f"- Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}.",
        f"- Peak FP32 rate (best {report['machine']['threads']}-thread torch matmul, this run): {report['peak_gflops']:.0f} GFLOP/s; "
        "compute floor = 2 x MACs / that rate.",
        f"- MediaPipe: {report['peer_note']}",
        f"- mIoU: mean per-image foreground IoU (%) on {report['data'] or 'no data (pass --data)'}, validation split"
        + (f", first {report['val_limit']} images" if report["val_limit"] else "")
        + f". Agreement: against {REFERENCE} on {AGREEMENT_IMAGES} validation images.",
        "",
        *headline(report),
    ]
    for s in report["sizes"]:
        ref = s["rows"][REFERENCE]["p50_ms"]
        lines += [
            f"## {s['size']}x{s['size']}",
            "",
            f"| engine | p50 ms | p90 ms | p99 ms | × vs {REFERENCE} | batch {BATCH} p50 ms | img/s | mIoU | same class vs {REFERENCE} | max Δ person prob |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, r in s["rows"].items():
            agree = r.get("vs_" + REFERENCE)
            miou = f"{r['fg_miou']:.2f}" if "fg_miou" in r else "–"
            b = r.get(f"batch{BATCH}")
            batched = f"{b['p50_ms']:.2f} | {1000 * BATCH / b['p50_ms']:.0f}" if b else "– | –"
            lines.append(
                f"| {name}: {r['what']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {ref / r['p50_ms']:.2f} | {batched} | {miou} | "
                + (f"{agree['mask_agreement']:.4%} | {agree['max_prob_diff']:.3f} |" if agree else "– | – |")
            )
        if "int8_ort_vs_openvino" in s:
            a = s["int8_ort_vs_openvino"]
            lines += ["", f"The INT8 Q/DQ file on ONNX Runtime and on OpenVINO: same class on {a['mask_agreement']:.4%} of pixels, "
                      f"person probability up to {a['max_prob_diff']:.3f} apart (logits up to {a['max_logit_diff']:.2f})."]  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Latency against mIoU, one line per engine through the sizes (each point labelled with its size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for name in ENGINES:
        points = [(s["rows"][name]["p50_ms"], s["rows"][name].get("fg_miou"), s["size"]) for s in report["sizes"] if name in s["rows"]]
        points = [p for p in points if p[1] is not None]
        if not points:
            continue
        if name == "mediapipe":  # one model size: its points differ only by the run's noise
            points = [(float(np.median([p[0] for p in points])), points[0][1], mediapipe.SIZE)]
            ax.plot([points[0][0]], [points[0][1]], marker="*", markersize=14, linestyle="none", color="black", label="MediaPipe (peer)")
        else:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        for latency, miou, size in points:
            ax.annotate(str(size), (latency, miou), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel(f"p50 latency at batch 1 (ms, log scale), {report['machine']['threads']} threads" + (", machine under load" if report["load_before"][0] >= report["machine"]["cores"] else ""))
    ax.set_ylabel("foreground mIoU (%), validation split")
    ax.set_title(f"RCRNet speed vs accuracy by input size on {report['machine']['cpu']}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _load_peer(args: argparse.Namespace) -> tuple[dict[str, Any] | None, str]:
    """MediaPipe's model and its mIoU, or None and why not (it is optional)."""
    if not args.peer:
        return None, "left out (--no-peer)."
    try:
        model = mediapipe.SelfieSegmenter(threads=args.threads)
    except RcrError as e:
        print(f"note: {e}", file=sys.stderr)
        return None, f"not timed: {e}"
    peer: dict[str, Any] = {"model": model}
    if args.data is not None:
        peer["fg_miou"], peer["n_images"] = mediapipe.fg_miou(model, args.data, "val", args.val_limit)
    return peer, f"`{model.path.name}` from the mediapipe wheel, {model.path.stat().st_size:,} bytes, on LiteRT with {args.threads} threads."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="160,192,224,256", help="comma list of square input sizes (multiples of 32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=100, help="timed calls per engine and size")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=8.0, help="stop timing an engine after about this long per size")
    parser.add_argument("--ckpt", type=Path, default=None, help="checkpoint (default: the built-in model)")
    parser.add_argument("--data", type=Path, default=None, help="labelled folder (images/ + masks/): mIoU on its validation split, calibration from its train split")
    parser.add_argument("--calib", dest="calib_dir", type=Path, default=None, help="calibration images (default: the train split of --data)")
    parser.add_argument("--calib-count", type=int, default=32)
    parser.add_argument("--val-limit", type=int, default=None, help="score only the first N validation images")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True, help="time MediaPipe's selfie segmenter too, where installed")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes {args.sizes}: expected comma-separated integers, e.g. 160,192,224")
    if any(s < 32 or s % 32 for s in sizes):
        parser.error(f"--sizes {args.sizes}: every size must be a positive multiple of 32, e.g. 160,192,224,256")

    val = [p.image for p in list_pairs(args.data, "val")][: args.val_limit] if args.data else []
    if args.calib_dir is None and args.data is None:
        raise RcrError("INT8 needs calibration images: pass --data DIR (a labelled folder) or --calib DIR")
    if args.calib_dir is None:
        calib = [p.image for p in list_pairs(args.data, "train")][: args.calib_count]
    else:
        calib = list_images(args.calib_dir, "calibration")[: args.calib_count]
    import openvino

    peer, peer_note = _load_peer(args)
    load_before = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="rcr-cpu-engines-") as tmp:
        if args.calib_dir is None:  # the export reads a folder: link the chosen train images into one
            args.calib_dir = Path(tmp) / "calib"
            args.calib_dir.mkdir()
            for p in calib:
                (args.calib_dir / p.name).symlink_to(p.resolve())
        results = [measure_size(size, args, calib, val, Path(tmp), peer) for size in tqdm(sizes, desc="sizes", unit="size")]
    info = machine_info(args.threads)
    torch.set_num_threads(args.threads)
    peak = peak_flops("cpu")
    versions = {**info["versions"], "openvino": openvino.__version__.split("-")[0]}
    try:
        import nncf

        versions["nncf"] = nncf.__version__
    except ImportError:
        pass
    report = {
        **provenance("cpu_engines", argv),
        "machine": info,
        "machine_kind": machine_kind(info),
        "versions": versions,
        "load_before": load_before,
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "data": str(args.data) if args.data else None,
        "val_limit": args.val_limit,
        "engines": ENGINES,
        "peak_gflops": peak / 1e9,
        "peer_note": peer_note,
        "sizes": results,
    }
    stem = args.out / f"cpu-engines-{report['machine_kind']}"
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stem.with_suffix(".json"), json.dumps(report, indent=2))
    write_text_atomic(stem.with_suffix(".md"), to_markdown(report))
    if args.data:
        plot(report, stem.with_suffix(".png"))
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TYPED as e:
        sys.exit(report(e))
