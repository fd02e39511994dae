"""How one call is timed: wall clock on the CPU, CUDA events on a GPU (optionally a CUDA-graph
replay), and interleaved rounds across targets, so that load drifting on a shared machine hits
every target alike."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rcr_deploy.benchmarks.stats import LatencyStats
from rcr_deploy.runtime import Runner
from rcr_deploy.runtime.torch_runner import TorchRunner


def timed_on_cpu(fn: Callable[[], Any]) -> Callable[[], int]:
    """`fn` as a call returning its wall time in nanoseconds (perf_counter_ns)."""

    def timed() -> int:
        start = time.perf_counter_ns()
        fn()
        return time.perf_counter_ns() - start

    return timed


def _timed_on_gpu(fn: Callable[[], Any]) -> Callable[[], int]:
    """`fn` (work queued on torch's current CUDA stream) timed with CUDA events, in nanoseconds."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed() -> int:
        start.record()
        fn()
        end.record()
        end.synchronize()
        return int(start.elapsed_time(end) * 1e6)

    return timed


def timed_call(runner: Runner, x: np.ndarray, device: str, cuda_graphs: bool) -> Callable[[], int]:
    """The timed call of one runner on one batch. Torch and TensorRT on a GPU run on device-resident
    tensors, timed with CUDA events (torch optionally as a CUDA-graph replay); everything else
    goes through `Runner.infer` (host arrays in and out), timed with perf_counter_ns."""
    if not device.startswith("cuda") or not hasattr(runner, "infer_torch"):
        # CPU, and onnxruntime's CUDA provider: synchronous host calls
        return timed_on_cpu(lambda: runner.infer(x))
    static_x = torch.from_numpy(x).to(device)
    fn = runner.infer_torch  # TensorRT and torch: device tensors in and out
    if not cuda_graphs or not isinstance(runner, TorchRunner):
        return _timed_on_gpu(lambda: fn(static_x))
    with torch.inference_mode():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm up allocations on a side stream before capture
                fn(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(static_x)

    def replay(captured_input: torch.Tensor = static_x) -> None:
        # Every replay reads the captured input's memory, so the call must own it: freed, the
        # allocator gave it to the next batch size's tensors (an illegal memory access on an H200
        # with --batch 1,32).
        graph.replay()

    return _timed_on_gpu(replay)


SETTLE_S = 0.1
"""Pause before each target's turn. ONNX Runtime's worker threads spin for 30-40 ms after a call
returns (its default `session.intra_op.allow_spinning`); on a 2-core machine an engine timed in
that window ran 1.7x slower (OpenVINO FP32 at 224: 3.4 against 1.9 ms). A target's own spinning
is part of its speed; another's is not, so every turn waits it out and then makes one untimed
call to bring the target's threads and caches back."""


def time_interleaved(
    calls: dict[str, Callable[[], int]], batch: int, iters: int, max_seconds: float, chunk: int = 5, settle_s: float = SETTLE_S
) -> dict[str, LatencyStats]:
    """Time each call (each returns its own time in ns) `iters` times, taking turns `chunk` calls
    at a time, so load that drifts on a shared machine hits every target alike and the ratios
    between them stay fair. Each turn starts after `settle_s` and one untimed call (see
    SETTLE_S). Stops early after about `max_seconds` per target, at least one turn each."""
    samples: dict[str, list[int]] = {name: [] for name in calls}
    deadline = time.perf_counter() + max_seconds * len(calls)
    with tqdm(total=iters * len(calls), desc=f"timing batch {batch}", unit="call", leave=False) as bar:
        while any(len(s) < iters for s in samples.values()):
            for name, timed in calls.items():
                n = min(chunk, iters - len(samples[name]))
                if n == 0:
                    continue
                if len(calls) > 1 and settle_s > 0:
                    time.sleep(settle_s)
                    timed()
                samples[name] += [timed() for _ in range(n)]
                bar.update(n)
            if time.perf_counter() > deadline:
                break
    return {name: LatencyStats.from_ns(s, batch) for name, s in samples.items()}
