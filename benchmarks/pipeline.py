"""Does the threaded frame pipeline of `rcr-deploy infer` help? Pipelined vs one thread, same run.

    python -m rcr_deploy.benchmarks.pipeline [--model CKPT|ONNX] [--threads 2] [--frames 60] [--height 480 --width 640]

Both modes segment the same generated clip with the temporal prior on and write the same
outputs (overlay + blurred-background mp4s, what a video call would use). They alternate,
`--repeats` times each, so drift on a shared machine hits both alike; the ratio of the two FPS
medians is the figure. Results: benchmarks/results/pipeline-<machine>-<N>threads.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from rcr_deploy.benchmarks.machine import machine_info, machine_kind, write_result
from rcr_deploy.data import synthetic
from rcr_deploy.infer import STAGES, infer
from rcr_deploy.runtime import load_runner
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from rcr_deploy.video import write_video

from rcr_deploy.benchmarks.machine import RESULTS


def measure(model: str | None, frames: int, height: int, width: int, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    if model is not None and str(model).endswith(".onnx"):
        runner = OnnxRuntimeRunner(model, threads=threads)
    else:
        runner = load_runner(model)
    runs: dict[str, list[dict]] = {"pipelined": [], "one thread": []}
    with tempfile.TemporaryDirectory(prefix="rcr-pipeline-") as tmp:
        clip = write_video(Path(tmp) / "clip.mp4", [f for f, _ in synthetic.video(frames, height, width)], fps=15)
        infer(str(clip), runner, Path(tmp) / "warm", save="overlay", max_frames=5, progress=False)  # warm-up
        for _ in tqdm(range(repeats), desc="pipelined vs one thread", unit="pair"):
            for mode, pipelined in (("pipelined", True), ("one thread", False)):
                t = infer(str(clip), runner, Path(tmp) / "out", save="overlay", background="blur", pipelined=pipelined, progress=False).timings
                runs[mode].append({"fps": t.fps, "wall_s": t.wall_s, "ms_per_frame": t.ms_per_frame()})
    fps = {mode: statistics.median(r["fps"] for r in rs) for mode, rs in runs.items()}
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(threads),
        "load_average_1m": os.getloadavg()[0],  # other work on a shared machine slows both modes
        "model": runner.name,
        "clip": {"frames": frames, "height": height, "width": width, "outputs": ["overlay", "background (blur)"], "prior": True},
        "repeats": repeats,
        "median_fps": fps,
        "speedup": fps["pipelined"] / fps["one thread"],
        "runs": runs,
    }


def to_markdown(result: dict) -> str:
    m, clip = result["machine"], result["clip"]
    lines = [
        f"# infer pipeline: threaded vs one thread ({m['cpu']}, {m['cores']} cores, model threads {m['threads']})",
        "",
        f"{result['created']}; model `{result['model']}`; generated clip {clip['frames']} frames at "
        f"{clip['width']}x{clip['height']}, prior on, outputs overlay + blurred background (2 mp4s); "
        f"median of {result['repeats']} alternating runs each; 1-minute load average at the end "
        f"{result['load_average_1m']:.1f} on {m['cores']} cores.",
        "",
        "| mode | FPS (median) | " + " | ".join(f"{s} ms" for s in STAGES) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in STAGES) + " |",
    ]
    for mode, runs in result["runs"].items():
        stages = [statistics.median(r["ms_per_frame"][s] for r in runs) for s in STAGES]
        lines.append(f"| {mode} | {result['median_fps'][mode]:.1f} | " + " | ".join(f"{v:.1f}" for v in stages) + " |")
    lines += ["", f"Pipelined / one thread: **{result['speedup']:.2f}x** FPS.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint or artifact; default: the built-in model")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="the model's threads (torch, or ONNX Runtime intra-op)")
    args = parser.parse_args()
    result = measure(args.model, args.frames, args.height, args.width, args.repeats, args.threads)
    stem = RESULTS / f"pipeline-{machine_kind(result['machine'])}-{args.threads}threads"
    write_result(stem, result, to_markdown(result))


if __name__ == "__main__":
    main()
