"""ONNX artifact (FP32, FP16 or INT8 Q/DQ) -> TensorRT engine, cached.

Precision already lives in the artifact, so the build is the same for all three: a strongly
typed network (the flag exists on TensorRT 10; on 11 strong typing is the only mode), one
optimisation profile over the dynamic batch, a persistent timing cache, and an engine cache
keyed by everything that makes an engine invalid elsewhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from rcr_deploy.artifact import TIMING_CACHE, engines_writer, manifest_path, read_manifest, resolve, write_manifest
from rcr_deploy.errors import ExportError, ManifestError, RcrError
from rcr_deploy.fileio import atomic_path, sha256_file
from rcr_deploy.runtime.tensorrt_runner import TensorRTRunner, gpu_identity, require_tensorrt

from rcr_deploy.exporters.onnx import TOLERANCES, validate, validation_inputs
from rcr_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

__all__ = ["EngineOptions", "TensorRTRunner", "build_engine", "cache_key", "profile_shapes", "require_tensorrt"]


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """Build options; every field is part of the engine cache key."""

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    #: Spatial size for artifacts exported with dynamic H/W (fixed-size artifacts ignore it).
    size: tuple[int, int] = (224, 224)
    workspace_mib: int = 1024


def profile_shapes(input_shape: list[int | str], options: EngineOptions) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) shapes for the input: the batch from the options, C fixed, H/W fixed by the
    artifact or taken from `options.size` where the artifact leaves them dynamic."""
    if not 1 <= options.min_batch <= options.opt_batch <= options.max_batch:
        raise RcrError(
            f"batch profile min {options.min_batch} / opt {options.opt_batch} / max {options.max_batch} "
            "must satisfy 1 <= min <= opt <= max; fix --min-batch/--opt-batch/--max-batch"
        )
    if len(input_shape) != 4 or not isinstance(input_shape[1], int):
        raise RcrError(f"input shape {input_shape} is not N x C x H x W with a fixed C; re-export the artifact")
    _, c, h, w = input_shape
    h = h if isinstance(h, int) and h > 0 else options.size[0]
    w = w if isinstance(w, int) and w > 0 else options.size[1]
    return tuple((b, c, h, w) for b in (options.min_batch, options.opt_batch, options.max_batch))


def cache_key(onnx_sha256: str, identity: dict[str, str], options: EngineOptions) -> str:
    """Hex key of an engine: the ONNX bytes, TensorRT version, GPU name and compute capability,
    and the build options. Any change gives a new engine rather than a stale one."""
    payload = {"onnx": onnx_sha256, **identity, "options": dataclasses.asdict(options)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def engine_path(onnx_path: Path, key: str, cache_dir: Path | None = None) -> Path:
    """`<cache_dir>/<artifact stem>-<key[:16]>.engine`; the cache defaults to `engines/` beside the artifact."""
    return (cache_dir or onnx_path.parent / "engines") / f"{onnx_path.stem}-{key[:16]}.engine"


def _input_shape(onnx_path: Path) -> list[int | str]:
    import onnx

    try:
        model = onnx.load_model(str(onnx_path), load_external_data=False)
    except Exception as e:  # a protobuf that does not decode
        raise RcrError(f"{onnx_path}: not a readable ONNX model ({str(e).splitlines()[0]}); re-export it") from e
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def build_engine(
    onnx_path: str | os.PathLike,
    options: EngineOptions | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Build (or reuse from the cache) a TensorRT engine for an ONNX artifact; returns its path.

    The engine gets a manifest beside it: the artifact's manifest plus what the engine was built
    for, so a runner can refuse an engine from another TensorRT or GPU with a clear message."""
    trt = require_tensorrt()
    onnx_path = resolve(onnx_path)
    if not onnx_path.is_file():
        raise RcrError(f"{onnx_path}: no such ONNX artifact; run 'rcr-deploy export' first")
    source = read_manifest(onnx_path)  # a corrupt or foreign sidecar stops the build here
    options = options or EngineOptions()
    identity = gpu_identity()
    key = cache_key(sha256_file(onnx_path), identity, options)
    out = engine_path(onnx_path, key, Path(cache_dir) if cache_dir else None)
    if out.is_file() and manifest_path(out).is_file() and not force:
        try:
            read_manifest(out)  # a cached engine is reused only if its bytes are the ones its sidecar records
            return out
        except ManifestError:
            print(f"note: the cached engine {out} is damaged; building it again", file=sys.stderr)
    shapes = profile_shapes(_input_shape(onnx_path), options)
    timing_path = out.parent / TIMING_CACHE
    # The engines folder of an export folder is its published set's: written under the export's lock.
    with engines_writer(out.parent.parent):
        serialized, timing = _build(trt, onnx_path, shapes, options, timing_path.read_bytes() if timing_path.is_file() else b"")
        with atomic_path(out) as tmp:
            tmp.write_bytes(serialized)
        if timing is not None:
            with atomic_path(timing_path) as tmp:
                tmp.write_bytes(timing)
        _write_engine_manifest(out, source, onnx_path, key, identity, shapes, options)
    return out


def _write_engine_manifest(
    out: Path, source: dict[str, Any], onnx_path: Path, key: str, identity: dict[str, str], shapes: tuple[tuple[int, ...], ...], options: EngineOptions
) -> None:
    """The engine's sidecar: its ONNX artifact's manifest plus what it was built from and for."""
    engine_record = {
        "source": onnx_path.name,
        "cache_key": key,
        "built_for": identity,
        "profile": {"min": list(shapes[0]), "opt": list(shapes[1]), "max": list(shapes[2])},
        "options": dataclasses.asdict(options),
    }
    write_manifest(out, {**{k: v for k, v in source.items() if k != "artifact"}, "engine": engine_record})


def _build(trt: Any, onnx_path: Path, shapes: tuple[tuple[int, ...], ...], options: EngineOptions, timing_cache: bytes) -> tuple[bytes, bytes | None]:
    """Parse and build with every return value checked; returns the serialized engine and the
    updated timing cache (None where TensorRT gives none). A failure on our artifact is our bug."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(1 << int(strongly_typed) if strongly_typed is not None else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, *shapes)
    if config.add_optimization_profile(profile) < 0:
        raise ExportError(f"{onnx_path}: TensorRT rejected the optimisation profile {shapes}")
    timing = config.create_timing_cache(timing_cache)
    if timing is None and timing_cache:  # an unreadable cache file: build without it
        timing = config.create_timing_cache(b"")
    # ignore_mismatch=False: a cache from another TensorRT or GPU is not reused.
    if timing is None or not config.set_timing_cache(timing, False):
        raise ExportError(f"{onnx_path}: TensorRT could not set up a timing cache")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path}: TensorRT could not build an engine; see the TensorRT log above")
    updated = config.get_timing_cache()
    return bytes(serialized), bytes(updated.serialize()) if updated is not None else None


def validate_engine(engine: str | os.PathLike, artifact: str | os.PathLike, seed: int = 0) -> Any:
    """Compare the engine with ONNX Runtime on the artifact it came from, through the one Runner
    interface, as export compares ONNX Runtime with torch. Returns the `Validation` (truthy if passed).

    FP32 engines are held to the FP16 tolerance: TensorRT may pick TF32 kernels for FP32 convolutions."""
    with TensorRTRunner(engine) as runner, OnnxRuntimeRunner(artifact) as reference:
        precision = (reference.manifest or {}).get("precision", "fp32")
        tol, agreement = TOLERANCES["fp16" if precision == "fp32" else precision]
        profile = (runner.manifest or {}).get("engine", {}).get("profile")
        if profile is None:
            raise RcrError(f"{engine}: no engine manifest beside it; rebuild it with 'rcr-deploy build'")
        lo, _, hi = profile["min"], profile["opt"], profile["max"]
        inputs = {k: v for k, v in validation_inputs(lo[1], (lo[2], lo[3]), None, seed).items() if lo[0] <= v.shape[0] <= hi[0]}
        return validate(runner, reference, inputs, tol, agreement)
