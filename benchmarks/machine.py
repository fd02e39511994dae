"""What a figure was measured on: the machine, the library versions, peak compute and memory."""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import importlib.metadata
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Scripts run from the repository root and write here unless told otherwise; never into the
# installed package.
RESULTS = Path("benchmarks") / "results"

import torch

_PACKAGES = ("rcr-deploy", "torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "onnxsim", "tensorrt")
# CPU features that decide how fast INT8 and FP32 kernels can be on x86.
_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.split()
    return model, [f for f in _CPU_FLAGS if f in flags]


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, usable cores, ISA flags, GPU, thread count and every relevant library version."""
    model, flags = _cpuinfo()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    versions = {p: v for p in _PACKAGES if (v := _version(p)) is not None}
    versions["python"] = platform.python_version()
    return {
        "cpu": model,
        "cores": cores,
        "cpu_flags": flags,
        "gpu": gpu,
        "os": platform.platform(),
        "threads": threads,
        # Other work on a shared machine slows every row; the ratios hold up better than the times.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": versions,
    }


def machine_kind(info: dict[str, Any]) -> str:
    """A file-name-friendly label for one kind of machine: `cpu-2core` or the GPU's name."""
    if info["gpu"]:
        return info["gpu"].lower().replace("nvidia", "").strip().replace(" ", "-")
    return f"cpu-{info['cores']}core"


def provenance(module: str, argv: list[str] | None = None) -> dict[str, str]:
    """A record's `created` (UTC) and `command` (`python -m rcr_deploy.benchmarks.MODULE ARGS`,
    the arguments `argv` or this process's)."""
    args = sys.argv[1:] if argv is None else argv
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", f"rcr_deploy.benchmarks.{module}", *args]),
    }


def write_result(stem: Path, result: dict[str, Any], markdown: str) -> None:
    """A benchmark's record beside its page (`stem`.json and .md, each written whole), the page
    printed too."""
    import json

    from rcr_deploy.fileio import write_text_atomic

    write_text_atomic(stem.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    write_text_atomic(stem.with_suffix(".md"), markdown)
    print(markdown)
    print(f"wrote {stem}.json and .md")


def peak_flops(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """The device's attainable FLOP/s: best of `repeats` timed n x n matmuls (2 n^3 FLOPs each).

    Measured, not taken from a data sheet, because a shared VM's attainable rate is what the
    model's convolutions can hope for.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up: thread pool, kernel selection
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter_ns()
        torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter_ns() - start)
    return 2 * n**3 / (best / 1e9)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


@contextlib.contextmanager
def peak_memory(device: str = "cpu") -> Iterator[dict[str, int | None]]:
    """Measure the peak memory a block adds, in bytes, into the yielded dict's `peak_bytes`.

    CPU: growth of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) over the
    RSS at entry, so each backend in one process is measured on its own. GPU: the allocator's
    peak (torch.cuda.max_memory_allocated) over its level at entry. `None` where unsupported.
    """
    result: dict[str, int | None] = {"peak_bytes": None}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        yield result
        torch.cuda.synchronize()
        result["peak_bytes"] = torch.cuda.max_memory_allocated() - base
        return
    with contextlib.suppress(OSError, AttributeError):
        # Hand freed heap pages back to the OS first; otherwise memory an earlier backend freed
        # still counts as resident and this block's own allocations would not show as growth.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS
        base = _status_kib("VmRSS")
    except OSError:
        yield result
        return
    yield result
    result["peak_bytes"] = max(0, _status_kib("VmHWM") - base) * 1024
