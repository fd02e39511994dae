"""A Triton Inference Server model repository from an export folder (`rcr-deploy export --triton DIR`).

    DIR/rcrnet/config.pbtxt            platform onnxruntime_onnx, the FP32 artifact
    DIR/rcrnet/1/model.onnx
    DIR/rcrnet/manifest.json           the artifact's manifest: preprocessing a client must do
    DIR/rcrnet_fp16/..., rcrnet_int8/  the other ONNX precisions that were exported
    DIR/rcrnet_<format>[_<p>]/1/...    every other exported file whose format has a Triton backend in
                                       the format table (rcr_deploy.formats): rcrnet_openvino/1/model.xml|bin
    DIR/rcrnet_tensorrt_<p>/1/model.plan  + config (platform tensorrt_plan), per engine built

Every file is taken from the export folder's current set by its own name (`rcrnet-fp16.xml`
for FP16), never found by searching: the folder also keeps an older set under `.versions/`.

Every config.pbtxt is checked against Triton's own protobuf schema in the tests; the server
itself is not run by this project (it ships in NVIDIA's containers). Triton takes the model's
NCHW input: a client letterboxes and normalises as the manifest says (docs/serving.md).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rcr_deploy.artifact import ARTIFACT_NAMES, format_files, format_path, read_manifest
from rcr_deploy.errors import RcrError
from rcr_deploy.fileio import write_text_atomic
from rcr_deploy.formats import FORMATS, Triton
from rcr_deploy.serve.protocol import V2_MODEL_NAME

MODEL_NAME = V2_MODEL_NAME  # the name `rcr-deploy serve` gives the model in the same protocol
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
#: How long Triton holds a request to fill a batch (the same default as `rcr-deploy serve`).
QUEUE_DELAY_US = 5000


def _dims(shape: list[Any]) -> list[int]:
    """A manifest shape without its batch axis; named (dynamic) axes become -1."""
    return [d if isinstance(d, int) else -1 for d in shape[1:]]


def _tensor(record: dict[str, Any]) -> str:
    dtype = DTYPES.get(record.get("dtype", "float32"))
    if dtype is None:
        raise RcrError(f"tensor {record['name']}: dtype {record['dtype']} has no Triton type here; export fp32/fp16/int8 ONNX")
    dims = ", ".join(str(d) for d in _dims(record["shape"]))
    return f'  {{\n    name: "{record["name"]}"\n    data_type: {dtype}\n    dims: [ {dims} ]\n  }}'


def model_config(name: str, manifest: dict[str, Any], max_batch: int, triton: Triton, instances: int = 1) -> str:
    """config.pbtxt text for one model: its tensors from the manifest, dynamic batching, instances,
    and the format's Triton engine line, instance kind and parameters."""
    preferred = ", ".join(str(b) for b in sorted({b for b in (max_batch // 2, max_batch) if b > 1}))
    lines = [
        f'name: "{name}"',
        triton.engine,
        f"max_batch_size: {max_batch}",
        f"input [\n{_tensor(manifest['input'])}\n]",
        f"output [\n{_tensor(manifest['output'])}\n]",
        "dynamic_batching {\n" + (f"  preferred_batch_size: [ {preferred} ]\n" if preferred else "")
        + f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}",
        f"instance_group [\n  {{\n    count: {instances}\n    kind: {triton.kind}\n  }}\n]",
    ]
    for key, value in triton.parameters:
        lines.append(f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}')
    return "\n".join(lines) + "\n"


def _model(repo: Path, name: str, files: dict[str, Path], manifest: dict[str, Any], config: str) -> None:
    version = repo / name / "1"
    version.mkdir(parents=True)
    for target, source in files.items():
        shutil.copy2(source, version / target)
    (repo / name / "config.pbtxt").write_text(config)
    (repo / name / "manifest.json").write_text(json.dumps(manifest, indent=2))


def check_target(repo: str | os.PathLike, force: bool) -> None:
    """Before a long export: refuse to overwrite a folder unless --force."""
    repo = Path(repo)
    if repo.exists() and (not repo.is_dir() or any(repo.iterdir())) and not force:
        raise RcrError(f"--triton {repo}: exists and is not empty; pass --force to replace it or choose another folder")


def write_repository(
    export_dir: str | os.PathLike, repo: str | os.PathLike, engines: dict[str, Path] | None = None,
    max_batch: int = 8, instances: int = 1, force: bool = False,
) -> list[Path]:
    """Write the model repository for an export folder's artifacts (and engines); returns the
    config files. Built in a staging folder and moved into place whole."""
    export_dir, repo = Path(export_dir), Path(repo)
    check_target(repo, force)
    repo.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repo.name}.", dir=repo.parent))
    try:
        for fmt in FORMATS.values():
            if fmt.triton is None:
                continue
            for precision, file in ARTIFACT_NAMES.items():
                main = format_path(export_dir / file, fmt.name)
                if not main.is_file():
                    continue
                name = "_".join([MODEL_NAME] + [fmt.name] * (fmt.name != "onnx") + [precision] * (precision != "fp32"))
                manifest = read_manifest(main)
                files = dict(zip(fmt.triton.files, format_files(main, fmt.name)))
                _model(staging, name, files, manifest, model_config(name, manifest, max_batch, fmt.triton, instances))
        if not (staging / MODEL_NAME).is_dir():
            raise RcrError(f"{export_dir}: no {ARTIFACT_NAMES['fp32']} to put in a Triton repository; run 'rcr-deploy export' first")
        for precision, engine in (engines or {}).items():
            manifest = read_manifest(engine)
            limit = manifest.get("engine", {}).get("profile", {}).get("max", [max_batch])[0]
            name = f"{MODEL_NAME}_tensorrt_{precision}"
            config = model_config(name, manifest, min(max_batch, limit), FORMATS["tensorrt"].triton, instances)
            _model(staging, name, {"model.plan": engine}, manifest, config)
        write_text_atomic(staging / "README.txt", f"Triton model repository written by rcr-deploy from {export_dir.resolve()}; see docs/serving.md.\n")
        if repo.exists():
            shutil.rmtree(repo)
        os.replace(staging, repo)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(repo.glob("*/config.pbtxt"))

