"""The `ckpt.pt` format: a tagged dict that loads with `torch.load(weights_only=True)`.

    {"format": "rcr-deploy-checkpoint", "version": 1,
     "arch": "rcrnet", "config": {"in_channels": 4, "num_classes": 2},
     "form": "train" | "deploy", "state_dict": {...}, "meta": {...}, ...training state}

A bare state_dict is accepted too, with the architecture named by the caller (`--arch`).
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rcr_deploy import reparam
from rcr_deploy.errors import CheckpointError
from rcr_deploy.fileio import atomic_path, regular_file, sha256_file
from rcr_deploy.models import VARIANTS, build_model

FORMAT = "rcr-deploy-checkpoint"
VERSION = 1
#: The trained model shipped inside the package (full RCRNet on EG1800; see README).
DEFAULT_CHECKPOINT = Path(__file__).parent / "assets" / "rcrnet-eg1800.pt"


def default_checkpoint() -> Path:
    """The built-in trained model; a clear error if this install lacks it."""
    if not DEFAULT_CHECKPOINT.is_file():
        raise CheckpointError(f"{DEFAULT_CHECKPOINT}: built-in model missing from this install; reinstall rcr-deploy or pass a checkpoint")
    return DEFAULT_CHECKPOINT


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint: the model (train or deploy form) and what was recorded with it."""

    model: nn.Module
    arch: str
    form: str
    path: Path
    sha256: str
    meta: dict[str, Any]
    raw: dict[str, Any]


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    arch: str,
    meta: dict[str, Any] | None = None,
    **extra: Any,
) -> None:
    """Write atomically; `extra` holds training state (optimiser, epoch, ...), plain types only."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "config": {"in_channels": model.in_channels, "num_classes": model.head.out_channels},
        "form": "deploy" if reparam.is_deploy_form(model) else "train",
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta or {},
        **extra,
    }
    # Serialised in memory first: torch's file writer reports a full disk as an opaque
    # RuntimeError, a plain write raises OSError, which `atomic_path` turns into one line.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def _read(path: Path) -> Any:
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file; check the path")
    regular_file(path, "checkpoint file")
    try:
        # torch warns about the pickle protocol of a file it then refuses: our one line says it all.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{path}: truncated or damaged checkpoint ({e}); re-copy or re-save it") from e
    except Exception as e:  # torch raises RuntimeError/UnpicklingError/ValueError for non-checkpoints
        text = str(e)
        if "central directory" in text or "failed finding" in text or "file read failed" in text:
            raise CheckpointError(f"{path}: truncated or damaged checkpoint; re-copy or re-save it") from e
        if "Unsupported global" in text:
            raise CheckpointError(
                f"{path}: holds objects that do not load with weights_only=True; save only tensors and plain types"
            ) from e
        raise CheckpointError(f"{path}: not a torch checkpoint file; pass a ckpt.pt from 'rcr-deploy train'") from e


def input_channels(state_dict: dict[str, torch.Tensor]) -> int:
    """The channels the model's first convolution takes (3: RGB, 4: RGB + prior)."""
    first_conv = next(v for v in state_dict.values() if v.ndim == 4)
    return int(first_conv.shape[1])


def _check_state_dict(state_dict: Any, path: Path) -> dict[str, torch.Tensor]:
    """A non-empty name -> tensor mapping with a conv layer, every value finite and every BN
    running variance >= 0; otherwise a `CheckpointError` naming the first bad tensor."""
    if not isinstance(state_dict, dict) or not state_dict:
        what = "empty" if isinstance(state_dict, dict) else f"a {type(state_dict).__name__}"
        raise CheckpointError(f"{path}: its state_dict is {what}, not a mapping of weights; re-save it with rcr-deploy")
    for name, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: state_dict entry {name!r} is a {type(v).__name__}, not a tensor; re-save it")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{path}: tensor {name} holds NaN or Inf (a diverged training run?); use an earlier checkpoint")
        if str(name).endswith("running_var") and bool((v < 0).any()):
            raise CheckpointError(f"{path}: tensor {name} holds a negative variance; the checkpoint is damaged, use another")
    if not any(v.ndim == 4 for v in state_dict.values()):
        raise CheckpointError(f"{path}: its state_dict has no convolution weights; pass an RCRNet checkpoint")
    return state_dict


def _num_classes(state_dict: dict[str, torch.Tensor]) -> int:
    return int(state_dict["head.weight"].shape[0]) if "head.weight" in state_dict else 2


def load_checkpoint(path: str | os.PathLike, arch: str | None = None, require_form: str | None = None) -> Checkpoint:
    """Load and validate a checkpoint; every failure is a one-line `CheckpointError`.

    `require_form="train"` rejects deploy-form checkpoints (they cannot be re-verified).
    The state_dict is always loaded strictly.
    """
    path = Path(path)
    raw = _read(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: holds a {type(raw).__name__}, not a checkpoint; save with rcr-deploy")
    if raw.get("format") == FORMAT:
        version = raw.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise CheckpointError(f"{path}: checkpoint version {version!r} is not a number; the file is damaged, re-save it")
        if version > VERSION:
            raise CheckpointError(f"{path}: checkpoint version {version} is newer than this rcr-deploy; upgrade")
        arch = arch or raw.get("arch")
        if not isinstance(arch, str):
            raise CheckpointError(f"{path}: records no architecture; name it with --arch ({', '.join(VARIANTS)})")
        if "state_dict" not in raw:
            raise CheckpointError(f"{path}: holds no state_dict (no weights); pass a ckpt.pt from 'rcr-deploy train'")
        state_dict = raw["state_dict"]
        meta = raw.get("meta") if isinstance(raw.get("meta"), dict) else {}
    elif raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        if arch is None:
            raise CheckpointError(f"{path}: a bare state_dict; name its architecture with --arch ({', '.join(VARIANTS)})")
        state_dict, meta = raw, {}
        raw = {"state_dict": raw}
    else:
        raise CheckpointError(f"{path}: not an rcr-deploy checkpoint (no format tag); pass a ckpt.pt from 'rcr-deploy train'")

    if arch not in VARIANTS:
        raise CheckpointError(f"{path}: unknown architecture {arch!r}; use one of {', '.join(VARIANTS)}")
    state_dict = _check_state_dict(state_dict, path)
    in_channels, num_classes = input_channels(state_dict), _num_classes(state_dict)
    if in_channels not in (3, 4):
        raise CheckpointError(f"{path}: its first convolution takes {in_channels} channels; rcr-deploy feeds RGB (3) or RGB + prior mask (4)")
    if num_classes != 2:
        raise CheckpointError(f"{path}: its head has {num_classes} classes; rcr-deploy serves person/background (2) models only")
    deploy = build_model(arch, in_channels=in_channels, num_classes=num_classes, deploy=True)
    form = "deploy" if set(state_dict) == set(deploy.state_dict()) else "train"
    if form == "deploy" and require_form == "train":
        raise CheckpointError(f"{path}: a deploy-form checkpoint; this step needs the train-form checkpoint it was made from")
    model = deploy if form == "deploy" else build_model(arch, in_channels=in_channels, num_classes=num_classes)
    _load_strict(model, state_dict, path, arch)
    model.eval()
    return Checkpoint(model=model, arch=arch, form=form, path=path, sha256=sha256_file(path), meta=meta, raw=raw)


def _load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(f"{path}: does not match architecture {arch!r}: {'; '.join(parts)}; pass the right --arch")
    for k, v in expected.items():
        if v.shape != state_dict[k].shape:
            raise CheckpointError(
                f"{path}: shape mismatch for {k}: checkpoint {tuple(state_dict[k].shape)}, "
                f"{arch!r} expects {tuple(v.shape)}; pass the right --arch"
            )
    model.load_state_dict(state_dict, strict=True)
