"""The trainer: the paper's recipe, one process or many (torchrun + DistributedDataParallel).

Defaults are the paper's (§4.2.3: Adam, weight decay 5e-4, lr × 0.95^(epoch/20)) except the
learning rate, 1e-3 as in PortraitNet (see docs/training.md). State is saved to `last.pt` after
every epoch (and every `save_every` steps, and on Ctrl-C), so `resume` continues bit-exactly: the
data order and every augmentation are keyed on (seed, epoch, index), and the optimiser,
scheduler, scaler and RNG states travel in the checkpoint. `init` starts from another run's
weights with a fresh optimiser. With a time limit and the cosine schedule, the number of epochs is
planned from the pace measured in the run's first seconds, so the curve ends when the time does.

No checkpoint ever holds non-finite weights: a non-finite loss stops the run, naming the epoch and
step, before the optimiser applies it, and every save checks the weights first.

Why one file of about 680 lines: the state a resume must restore (model, optimiser, scheduler,
scaler, RNG, position in the epoch, history, plan) is read and written by the same class that
changes it; splitting the loop from its state would put that contract in two places.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from rcr_deploy.checkpoint import input_channels, load_checkpoint, save_checkpoint
from rcr_deploy.data.dataset import PortraitDataset
from rcr_deploy.data.folder import VAL_EVERY, Source, check_per_folder, list_pairs, sources
from rcr_deploy.errors import CheckpointError, RcrError
from rcr_deploy.fileio import write_text_atomic
from rcr_deploy.models import DEFAULT_ARCH, VARIANTS, build_model
from rcr_deploy.runtime import cpu_flags
from rcr_deploy.train.log import plot_histories
from rcr_deploy.train.losses import LossWeights, total_loss
from rcr_deploy.train.schedule import SCHEDULES, RunSampler, epoch_cost, lr_factor, plan_epochs, size_at, steps_per_epoch

SPLIT_RULE = f"sort the ids; index % {VAL_EVERY} == 0 is validation, the rest is training"
AMP_MODES = ("auto", "bf16", "fp16", "off")
#: The numeric fields' (lowest, highest[, multiple of]) values, checked wherever a config comes from:
#: options, a config.json, a checkpoint's saved config. Lists are checked item by item; --lr (an
#: open interval) and --progressive (rising sizes below --size) are checked by the Trainer.
RANGES: dict[str, tuple[float, ...]] = {
    "data_weights": (1e-6, 1e6), "distill_weights": (0, 1e6), "size": (32, 4096, 32), "epochs": (1, 10**6),
    "batch": (1, 4096), "weight_decay": (0, 1), "lr_decay": (1e-6, 1), "lr_decay_epochs": (1e-6, 1e9),
    "alpha": (0, 1e6), "beta": (0, 1e6), "temperature": (1e-6, 1e6), "seed": (0, 2**32 - 1), "workers": (0, 256),
    "threads": (0, 1024), "warmup_epochs": (0, 10**6), "time_limit_min": (0, 10**7), "save_every": (0, 10**9),
    "val_every": (1, 10**6), "val_limit": (0, 10**9), "max_steps": (0, 10**12),
}  # fmt: skip
PLAN_AFTER_S = 20.0  # seconds of steady training that the epoch plan is measured over


class TrainError(RcrError):
    """A training run that cannot go on as asked (out of memory, bad resume, bad config)."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run; saved as JSON beside its checkpoints and inside them."""

    data: list[str] = dataclasses.field(default_factory=list)
    data_weights: list[float] = dataclasses.field(default_factory=list)
    out: str = "runs/rcrnet"
    arch: str = DEFAULT_ARCH
    train_split: str = "train"
    val_split: str = "val"
    size: int = 224
    progressive: list[int] = dataclasses.field(default_factory=list)
    epochs: int = 2000
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 5e-4
    lr_decay: float = 0.95
    lr_decay_epochs: float = 20.0
    alpha: float = 1.0
    beta: float = 0.3
    temperature: float = 1.0
    seed: int = 0
    workers: int = 2
    threads: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool | None = None
    cache: bool = False
    anywhere: bool = False
    schedule: str = "paper"
    warmup_epochs: int = 0
    init: str = ""
    distill: str = ""
    distill_weights: list[float] = dataclasses.field(default_factory=list)
    time_limit_min: float = 0.0
    save_every: int = 0
    val_every: int = 1
    val_limit: int = 0
    max_steps: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, os.PathLike)):  # one folder, as configs before 0.3 name it
            self.data = [str(self.data)] if str(self.data) else []

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise TrainError(f"{path}: no such config file; check the path") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TrainError(f"{path}: not valid JSON ({e}); fix or re-save it") from e
        except OSError as e:  # a folder, no permission
            raise TrainError(f"{path}: cannot read this config file ({e.strerror}); pass a config.json") from e
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | os.PathLike = "config") -> "TrainConfig":
        if not isinstance(data, dict):
            raise TrainError(f"{source}: not a training config (a JSON object of option: value); re-save it, or pass the options")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainError(f"{source}: unknown config keys {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if isinstance(data.get("amp"), bool):  # configs before 0.2 said amp: true (fp16 on CUDA) / false
            data = {**data, "amp": "fp16" if data["amp"] else "off"}
        for f in dataclasses.fields(cls):
            if f.name in data and not _of_type(data[f.name], str(f.type)):
                raise TrainError(f"{source}: {f.name} is {data[f.name]!r:.60}, not of type {f.type}; fix that value")
        check_ranges(data, source)
        cfg = cls(**data)
        if cfg.amp not in AMP_MODES:
            raise TrainError(f"{source}: --amp {cfg.amp!r} is not one of {', '.join(AMP_MODES)}")
        if cfg.schedule not in SCHEDULES:
            raise TrainError(f"{source}: --schedule {cfg.schedule!r} is not one of {', '.join(SCHEDULES)}")
        return cfg

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, json.dumps(dataclasses.asdict(self), indent=2) + "\n")


def check_ranges(data: dict[str, Any], source: str | os.PathLike) -> None:
    """`TrainError` naming the first numeric field of `data` outside `RANGES` (NaN and Inf included);
    `source` "options" names it as the command-line option."""
    for name, (lo, hi, *multiple) in RANGES.items():
        values = data.get(name, [])
        for x in values if isinstance(values, list) else [values]:
            if not (math.isfinite(x) and lo <= x <= hi and (not multiple or x % multiple[0] == 0)):
                step = f" and a multiple of {multiple[0]:g}" if multiple else ""
                where = f"--{name.replace('_', '-')} {x}" if source == "options" else f"{source}: {name} {x}"
                raise TrainError(f"{where}: must be a number from {lo:g} to {hi:g}{step}; fix that value")


def _of_type(value: Any, annotation: str) -> bool:
    """Whether a config value has its field's type (annotations are strings: `from __future__`)."""
    if value is None:
        return "None" in annotation
    if isinstance(value, bool) or annotation.startswith("bool"):
        return isinstance(value, bool) and annotation.startswith("bool")
    if annotation == "float":
        return isinstance(value, (int, float))
    if annotation == "list[int]":
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, {"int": int, "str": str}.get(annotation, object))


@dataclasses.dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    stopped: str


def keep_freed_memory() -> bool:
    """Keep the memory of freed tensors in this process's heap (glibc only; False elsewhere).

    By default glibc gives the top of the heap back to the kernel whenever more than 128 KiB is
    free there, so every training step faults its activations in again: on a 2-core CPU at
    224 x 224, batch 32, it took the step from 3.3 s to 5.8 s (docs/training.md). The
    data-loader workers, forked later, inherit the setting."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_mmap_threshold, most = -1, -3, 2**31 - 1  # mallopt takes a C int
    # Trim only past 2 GiB free; serve allocations below 2 GiB (a batch's activations) from the heap, not mmap.
    return bool(libc.mallopt(m_trim_threshold, most)) and bool(libc.mallopt(m_mmap_threshold, most))


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError("--device cuda: this machine has no CUDA GPU; use --device cpu")
    if cfg.device == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(cfg.device)


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 needs no loss scaling, so it is the GPU default; the CPU default is fp32 (measured in
    docs/training.md)."""
    mode = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "off")
    if mode == "fp16" and device.type != "cuda":
        raise TrainError("--amp fp16 needs a CUDA GPU; use --amp bf16 or --amp off on the CPU")
    flags = cpu_flags() if mode == "bf16" and device.type == "cpu" else None
    if flags is not None and not flags & {"avx512_bf16", "amx_bf16"}:
        print(
            "warning: --amp bf16: this CPU has no native bfloat16 (avx512_bf16 or amx_bf16), so it is emulated; "
            "on one such CPU a step took 100 s against 6.5 s with --amp off (docs/training.md). Use --amp off",
            file=sys.stderr,
        )  # fmt: skip
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)


def _read_init(path: Path, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(path, require_form="train")
    if ckpt.arch != cfg.arch:
        raise CheckpointError(f"{path}: holds {ckpt.arch!r} weights, not {cfg.arch!r}; pass --arch {ckpt.arch} or another --init")
    return ckpt.model.state_dict()


def _read_frozen(cfg: TrainConfig, student: nn.Module, device: torch.device, channels_last: bool) -> tuple[nn.Module, torch.Tensor]:
    """`--distill`'s frozen model, in deploy form (one fused conv per block: the cheapest forward
    pass), and its per-dataset weights (default 1 each)."""
    from rcr_deploy.reparam import reparameterize

    weights = cfg.distill_weights or [1.0] * len(cfg.data)
    check_per_folder("--distill-weights", weights, cfg.data)
    ckpt = load_checkpoint(cfg.distill)
    model = ckpt.model if ckpt.form == "deploy" else reparameterize(ckpt.model)
    got, want = input_channels(model.state_dict()), input_channels(student.state_dict())
    if got != want:
        raise CheckpointError(f"--distill {cfg.distill}: takes {got} input channels, the model trained takes {want}; pass a model of the same input")
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return model.eval().requires_grad_(False), torch.tensor(weights, dtype=torch.float32)


def _read_resume(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    ckpt = load_checkpoint(path, require_form="train")
    raw = ckpt.raw
    if "optimizer" not in raw or "trainer" not in raw:
        raise CheckpointError(f"{path}: has no training state (a shipped or exported model?); resume from a run's last.pt")
    if ckpt.arch != cfg.arch:
        raise CheckpointError(f"{path}: was trained as {ckpt.arch!r}, not {cfg.arch!r}; resume with --arch {ckpt.arch} or start afresh")
    return {"model": ckpt.model.state_dict(), **raw}


class Trainer:
    """Runs one training configuration; rank and world come from torchrun's environment."""

    def __init__(self, cfg: TrainConfig, resume: str | os.PathLike | None = None, progress: bool = True) -> None:
        if cfg.arch not in VARIANTS:
            raise TrainError(f"unknown --arch {cfg.arch!r}; use one of {', '.join(VARIANTS)}")
        check_ranges(dataclasses.asdict(cfg), "config")  # a config built in Python has not been through from_dict
        if not (math.isfinite(cfg.lr) and 0 < cfg.lr <= 1):
            raise TrainError(f"--lr {cfg.lr}: use a learning rate in (0, 1], e.g. 1e-3")
        self.sizes = (*cfg.progressive, cfg.size)
        if any(s % 32 or s < 32 for s in self.sizes) or list(self.sizes) != sorted(set(self.sizes)):
            shown = ",".join(map(str, cfg.progressive))
            raise TrainError(f"--progressive {shown}: give rising multiples of 32 below --size {cfg.size}, e.g. 160,192")
        self.cfg = cfg
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        keep_freed_memory()
        self.device = _device(cfg, self.local_rank)
        self.cuda = self.device.type == "cuda"
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.cuda else "gloo")
        if self.cuda:
            torch.cuda.set_device(self.device)
        self.main = self.rank == 0
        self.progress = progress and self.main
        self.out = Path(cfg.out)
        if self.out.exists() and not self.out.is_dir():
            raise TrainError(f"--out {self.out}: is a file, not a folder; pass a folder for the run's checkpoints")

        torch.manual_seed(cfg.seed)
        self.sources = sources(cfg.data, cfg.data_weights or None)
        for split in (cfg.train_split, cfg.val_split):
            if len(self.sources) > 1 and split and Path(split).is_file():
                raise TrainError(f"--train-split/--val-split {split}: a file of ids needs a single --data; several datasets use train/val")
        groups = [list_pairs(src.root, cfg.train_split) for src in self.sources]
        self.train_pairs = [p for g in groups for p in g]
        self.val_split = cfg.val_split or None
        if self.val_split:
            for src in self.sources:
                list_pairs(src.root, self.val_split)  # fail now, not after the first epoch
        self.steps_per_epoch = steps_per_epoch(len(self.train_pairs), cfg.batch, self.world)
        self.autocast = _autocast_dtype(cfg, self.device)
        self.channels_last = self.cuda if cfg.channels_last is None else cfg.channels_last

        self.model = build_model(cfg.arch)
        if cfg.init and resume is None:
            self.model.load_state_dict(_read_init(Path(cfg.init), cfg))
        self.model = self.model.to(self.device)
        self.frozen = None
        if cfg.distill:
            self.frozen, self.distill_weights = _read_frozen(cfg, self.model, self.device, self.channels_last)
        elif cfg.distill_weights:
            raise TrainError("--distill-weights without --distill: name the frozen model with --distill CKPT")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        self.planned = cfg.epochs  # replaced by a plan when a time limit and the cosine schedule meet
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=self.cuda or None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda e: lr_factor(cfg.schedule, e, self.planned, cfg.lr_decay, cfg.lr_decay_epochs, cfg.warmup_epochs),
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast == torch.float16)
        # Decode only after every cheap check has passed.
        self.dataset = PortraitDataset(
            self.train_pairs, cfg.size, seed=cfg.seed, cache=cfg.cache, anywhere=cfg.anywhere,
            groups=[len(g) for g in groups], weights=[float(w) for w in cfg.data_weights] or None,
        )  # fmt: skip
        self.weights = LossWeights(cfg.alpha, cfg.beta, cfg.temperature)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.sums: dict[str, float] = {}  # this epoch's loss sums so far
        self.best: dict[str, Any] | None = None
        self.wall = 0.0
        if resume is not None:
            self._restore(Path(resume))
        self.ddp = (
            nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index] if self.cuda else None)
            if self.world > 1
            else self.model
        )

    # ------------------------------------------------------------------------------ state

    def _state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "trainer": {
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step,
                "wall_s": self.wall,
                "history": self.history,
                "best": self.best,
                "sums": self.sums,
                "planned": self.planned,
            },
            "rng": {
                "torch": torch.get_rng_state(),
                **({"cuda": torch.cuda.get_rng_state(self.device)} if self.cuda else {}),
            },
            "train_config": dataclasses.asdict(self.cfg),
        }

    def _restore(self, path: Path) -> None:
        raw = _read_resume(path, self.cfg)
        self.model.load_state_dict(raw["model"])
        self.optimizer.load_state_dict(raw["optimizer"])
        self.scheduler.load_state_dict(raw["scheduler"])
        self.scaler.load_state_dict(raw["scaler"])
        t = raw["trainer"]
        self.epoch, self.step_in_epoch, self.global_step = t["epoch"], t["step_in_epoch"], t["global_step"]
        self.wall, self.history, self.best, self.sums = t["wall_s"], list(t["history"]), t["best"], dict(t["sums"])
        self.planned = t.get("planned", self.cfg.epochs)
        torch.set_rng_state(raw["rng"]["torch"])
        if self.cuda and "cuda" in raw["rng"]:
            torch.cuda.set_rng_state(raw["rng"]["cuda"], self.device)

    def meta(self) -> dict[str, Any]:
        """What a checkpoint records about how it was made."""
        return {
            "arch": self.cfg.arch,
            "data": {s.name: s.root for s in self.sources},
            "split_rule": SPLIT_RULE,
            "epochs_done": self.epoch,
            "global_step": self.global_step,
            "wall_s": round(self.wall, 1),
            "hardware": _hardware(self.device),
            "world_size": self.world,
            "torch": str(torch.__version__),
            "best": self.best,
            "planned_epochs": self.planned,
            "init": self.cfg.init or None,
            "distill": self.cfg.distill or None,
        }

    def _save(self, name: str) -> None:
        bad = [k for k, v in self.model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise TrainError(
                f"non-finite weights in {bad[0]} at epoch {self.epoch + 1} step {self.step_in_epoch}: not saved as "
                f"{name}; the last good checkpoint is {self.out / 'last.pt'}; lower --lr"
            )
        if self.main:
            save_checkpoint(self.out / name, self.model, self.cfg.arch, meta=self.meta(), **self._state())

    # ------------------------------------------------------------------------------ loop

    def _loader(self) -> DataLoader:
        """One loader for the rest of the run (see schedule.RunSampler)."""
        sampler = RunSampler(
            len(self.train_pairs), self.cfg.batch, self.cfg.seed, self.cfg.epochs,
            (self.epoch, self.step_in_epoch), self.rank, self.world,
            (lambda epoch: size_at(epoch, self.planned, self.sizes)) if self.cfg.progressive else None,
        )  # fmt: skip
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.cfg.workers,
            pin_memory=self.cuda,
            worker_init_fn=_quiet_worker,
            prefetch_factor=4 if self.cfg.workers else None,
        )

    def _step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = torch.cat([batch["student"], batch["teacher"]]).to(self.device, non_blocking=True, memory_format=fmt)
        mask, edge = (batch[k].to(self.device, non_blocking=True) for k in ("mask", "edge"))
        n = batch["mask"].shape[0]
        try:
            frozen = None
            with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
                mask_logits, edge_logits = self.ddp(x, with_edge=True)
                if self.frozen is not None:
                    with torch.no_grad():
                        frozen = (self.frozen(x[n:]).float(), self.distill_weights[batch["group"]].to(self.device))
            terms = total_loss(
                (mask_logits[:n].float(), edge_logits[:n].float()),
                (mask_logits[n:].float(), edge_logits[n:].float()),
                mask,
                edge,
                self.weights,
                frozen,
            )
            loss = float(terms["loss"].detach())
            if not math.isfinite(loss):
                raise TrainError(
                    f"loss is {loss} at epoch {self.epoch + 1} step {self.step_in_epoch + 1}: training diverged and "
                    f"stopped; the last good checkpoint is {self.out / 'last.pt'}; lower --lr (now {self.cfg.lr:g})"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(terms["loss"]).backward()
            with _signals_held():
                self.scaler.step(self.optimizer)
                self.scaler.update()
        except torch.cuda.OutOfMemoryError as e:
            raise TrainError(
                f"out of GPU memory at batch {self.cfg.batch} (size {self.cfg.size}); lower --batch "
                f"(e.g. --batch {max(1, self.cfg.batch // 2)}); resume from {self.out / 'last.pt'}"
            ) from e
        return {k: float(v.detach()) for k, v in terms.items()}

    def _validate_one(self, runner: Any, source: Source) -> dict[str, float]:
        from rcr_deploy.evaluate import evaluate

        scores: dict[str, float] = {}
        for suffix, framing in [("", "as-is")] + ([("_reframed", "reframed")] if self.cfg.anywhere else []):
            report = evaluate(
                runner, source.root, self.cfg.size, self.cfg.val_limit or None, self.val_split,
                progress=self.progress, framing=framing,
            )  # fmt: skip
            scores |= {f"val_fg_miou{suffix}": report.fg_miou, f"val_class_miou{suffix}": report.class_miou}
        return {**scores, "val_images": report.n_images}

    def validate(self) -> dict[str, Any]:
        """Both mIoU conventions on each dataset's validation split (train form in eval mode); with
        `anywhere`, also on its reframed version (`eval --framing reframed`), which those augmentations
        target. With several datasets, `val_by_data` holds each one's scores, and the top-level
        scores (which pick best.pt) are their plain mean: each dataset counts the same, whatever
        its size."""
        from rcr_deploy.runtime.torch_runner import TorchRunner

        runner = TorchRunner(self.model, f"{self.cfg.arch}@epoch{self.epoch}", device=str(self.device))
        try:
            each = {src.name: self._validate_one(runner, src) for src in self.sources}
        finally:
            self.model.train()
        if len(each) == 1:
            return next(iter(each.values()))
        keys = next(iter(each.values())).keys()
        return {**{k: sum(s[k] for s in each.values()) / len(each) for k in keys if k != "val_images"},
                "val_images": sum(s["val_images"] for s in each.values()), "val_by_data": each}  # fmt: skip

    def _plan(self, session_start: float, steady: tuple[float, int] | None) -> tuple[float, int] | None:
        """Fit the cosine schedule to the time limit once the pace is known; returns the (time,
        epoch) mark the pace is measured from, None once planned."""
        cfg = self.cfg
        if steady is None or not cfg.time_limit_min or cfg.schedule != "cosine":
            return None
        now = time.perf_counter()
        wait = now - steady[0] < PLAN_AFTER_S and self.epoch - steady[1] < 3
        planned = self.planned
        if not wait:
            remaining = cfg.time_limit_min * 60 - (now - session_start)
            measured = epoch_cost(steady[1], self.epoch, self.planned, self.sizes)
            planned = plan_epochs(self.epoch, measured, now - steady[0], remaining, cfg.epochs, sizes=self.sizes)
        wait, planned = self._from_rank0(wait, planned)
        if wait:
            return steady
        self.planned = int(planned)
        if self.progress:
            pace = (now - steady[0]) / measured
            tqdm.write(f"planned {self.planned} epochs in all: {pace:.2f} s per epoch at size {cfg.size}, {remaining / 60:.1f} min left")
        return None

    def fit(self) -> TrainResult:
        """Train until `epochs`, the time limit or `max_steps`; returns the model and history."""
        cfg = self.cfg
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / "config.json")
        self._t0 = time.perf_counter() - self.wall  # wall time counts over resumed sessions
        session = self._session = time.perf_counter()
        stopped = "epochs"
        self.model.train()
        steady: tuple[float, int] | None = None  # (time, epoch) after the session's first epoch
        planning = bool(cfg.time_limit_min and cfg.schedule == "cosine")
        try:
            last = self.history[-1] if self.history else {}
            if self.step_in_epoch == 0 and last.get("epoch") == self.epoch and "val_fg_miou" not in last:
                # Stopped during that epoch's validation: score it before going on, as it would have been.
                self._close_epoch(last, due=self.epoch % cfg.val_every == 0 or self.epoch >= self.planned)
            done = self.epoch * self.steps_per_epoch + self.step_in_epoch
            bar = tqdm(
                total=self.planned * self.steps_per_epoch, initial=done, unit="step", disable=not self.progress,
                dynamic_ncols=True, desc=self._describe(),
            )  # fmt: skip
            for batch in _stops_recorded(self._loader()):
                terms = self._step(batch)
                self.step_in_epoch += 1
                self.global_step += 1
                self.wall = time.perf_counter() - self._t0
                for k, v in terms.items():
                    self.sums[k] = self.sums.get(k, 0.0) + v
                bar.update()
                bar.set_postfix(loss=f"{terms['loss']:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}", refresh=False)
                if cfg.save_every and self.global_step % cfg.save_every == 0:
                    self._save("last.pt")
                if cfg.max_steps and self.global_step >= cfg.max_steps:
                    stopped = "max_steps"
                    self._save("last.pt")
                    break
                if self.step_in_epoch < self.steps_per_epoch:
                    continue
                self._end_epoch()
                if planning:
                    steady = self._plan(session, steady) if steady else (time.perf_counter(), self.epoch)
                    planning = steady is not None
                    bar.total = self.planned * self.steps_per_epoch
                bar.set_description(self._describe(), refresh=False)
                if self.epoch >= self.planned:
                    break
                if self._time_up:
                    stopped = "time_limit"
                    break
            bar.close()
        except KeyboardInterrupt as stop:  # never inside an update (`_signals_held`): the weights are whole
            self._save("last.pt")
            if self.main:
                print(
                    f"stopped ({stop or 'interrupt'}) at epoch {self.epoch + 1} step {self.step_in_epoch}, global step "
                    f"{self.global_step}: saved {self.out / 'last.pt'}; continue with --resume {self.out / 'last.pt'}",
                    file=sys.stderr,
                )  # fmt: skip
            raise
        if self.world > 1:
            dist.barrier()
        return TrainResult(self.model, self.history, self.best, stopped)

    def _from_rank0(self, *values: float) -> list[float]:
        """Rank 0's values on every rank. A decision read off a clock (the plan, the time limit)
        must be the same on all of them, or they stop after different epochs and the first to
        reach a collective waits for ever."""
        if self.world == 1:
            return list(values)
        agreed = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.broadcast(agreed, 0)
        return agreed.tolist()

    def _describe(self) -> str:
        epoch = min(self.epoch, self.planned - 1)
        at = f" at {size_at(epoch, self.planned, self.sizes)}" if self.cfg.progressive else ""
        return f"epoch {epoch + 1}/{self.planned}{at}"

    def _end_epoch(self) -> None:
        n = max(self.step_in_epoch, 1)
        record: dict[str, Any] = {"epoch": self.epoch + 1, "wall_s": round(self.wall, 1), **{k: v / n for k, v in self.sums.items()}}
        if self.cfg.progressive:
            record["size"] = size_at(self.epoch, self.planned, self.sizes)
        self.epoch += 1
        self.step_in_epoch, self.sums = 0, {}
        self.scheduler.step()
        # Decided once, here, so that the epoch the run stops after is always validated.
        time_up = bool(self.cfg.time_limit_min) and time.perf_counter() - self._session >= self.cfg.time_limit_min * 60
        self._time_up = bool(self._from_rank0(time_up)[0])
        last = self.epoch >= self.planned or self._time_up
        # Recorded before validating: a Ctrl-C during validation saves last.pt with this epoch
        # done, so its record (without scores) must already be in the history; resume scores it.
        self.history.append(record)
        self._close_epoch(record, due=self.epoch % self.cfg.val_every == 0 or last)

    def _close_epoch(self, record: dict[str, Any], due: bool) -> None:
        """Validate into the epoch's `record` when `due`, keep best.pt, save last.pt and the history."""
        if self.val_split and self.main and due:
            record.update(self.validate())
            self.wall = record["wall_s"] = time.perf_counter() - self._t0
        if self.main and "val_fg_miou" in record and (self.best is None or record["val_fg_miou"] > self.best["val_fg_miou"]):
            self.best = {k: record[k] for k in ("epoch", "val_fg_miou", "val_class_miou")}
            self._save("best.pt")
        self._save("last.pt")
        if self.main:
            write_text_atomic(self.out / "history.json", json.dumps(self.history, indent=2) + "\n")
            plot_histories({self.cfg.arch: self.history}, self.out / "history.png")
            if self.progress:
                tqdm.write(json.dumps(record))
        if self.world > 1:
            dist.barrier()


def _stops_recorded(batches: Iterator[Any]) -> Iterator[Any]:
    """`batches`, with every SIGINT and SIGTERM recorded before its handler runs, and a
    KeyboardInterrupt before the next batch once one is. The handler's own KeyboardInterrupt can
    land inside a finaliser (a `__del__`, a weakref callback such as matplotlib's), where Python
    prints and drops it, and the run would go on as if never stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield from batches
        return
    stops: list[int] = []
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def record(signum: int, frame: Any) -> None:
        stops.append(signum)
        before[signal.Signals(signum)](signum, frame)

    for sig, handler in before.items():
        if callable(handler):
            signal.signal(sig, record)
    try:
        for batch in batches:
            if stops:
                raise KeyboardInterrupt(signal.Signals(stops[0]).name)
            yield batch
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then stop with KeyboardInterrupt: a stop that
    lands inside an optimiser update would otherwise find half-updated weights, not worth saving."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in before:
        signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    stops = [sig for sig in held if before[sig] is not signal.SIG_IGN]
    if stops:
        raise KeyboardInterrupt(signal.Signals(stops[0]).name)


def _quiet_worker(_: int) -> None:
    # Each worker is one core's worth of augmentation; OpenCV's own threads would oversubscribe.
    import cv2

    cv2.setNumThreads(1)


def resume_config(path: str | os.PathLike) -> TrainConfig:
    """The config a run's checkpoint was trained with, to continue it unchanged."""
    raw = load_checkpoint(path, require_form="train").raw
    if "train_config" not in raw:
        raise CheckpointError(f"{path}: has no training state (a shipped or exported model?); resume from a run's last.pt")
    return TrainConfig.from_dict(raw["train_config"], path)


def strip_training_state(src: str | os.PathLike, dst: str | os.PathLike, **meta: Any) -> None:
    """Write `src`'s weights without optimiser, scheduler or RNG state (a model to ship), its
    meta extended by `meta`."""
    ckpt = load_checkpoint(src, require_form="train")
    save_checkpoint(dst, ckpt.model, ckpt.arch, meta={**ckpt.meta, **meta})
