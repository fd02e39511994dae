"""The trainer: the paper's recipe, one process or many (torchrun + DistributedDataParallel).

Defaults are the paper's (§4.2.3: Adam, weight decay 5e-4, lr × 0.95^(epoch/20)) except the
learning rate, 1e-3 as in PortraitNet (see README). State is saved to `last.pt` after every
epoch (and every `save_every` steps, and on Ctrl-C), so `resume` continues bit-exactly: the data
order and every augmentation are keyed on (seed, epoch, index), and the optimiser, scheduler,
scaler and RNG states travel in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from rcr_deploy.checkpoint import load_checkpoint, save_checkpoint
from rcr_deploy.data.dataset import PortraitDataset
from rcr_deploy.data.folder import VAL_EVERY, list_pairs
from rcr_deploy.errors import CheckpointError, RcrError
from rcr_deploy.fileio import atomic_path, write_text_atomic
from rcr_deploy.models import DEFAULT_ARCH, VARIANTS, build_model
from rcr_deploy.train.losses import LossWeights, total_loss

SPLIT_RULE = f"sort the ids; index % {VAL_EVERY} == 0 is validation, the rest is training"


class TrainError(RcrError):
    """A training run that cannot go on as asked (out of memory, bad resume, bad config)."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run; saved as JSON beside its checkpoints and inside them."""

    data: str = ""
    out: str = "runs/rcrnet"
    arch: str = DEFAULT_ARCH
    train_split: str = "train"
    val_split: str = "val"
    size: int = 224
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
    amp: bool = True
    time_limit_min: float = 0.0
    save_every: int = 0
    val_limit: int = 0
    max_steps: int = 0

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise TrainError(f"{path}: no such config file; check the path") from e
        except json.JSONDecodeError as e:
            raise TrainError(f"{path}: not valid JSON ({e}); fix or re-save it") from e
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | os.PathLike = "config") -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainError(f"{source}: unknown config keys {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, json.dumps(dataclasses.asdict(self), indent=2) + "\n")


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, sharded over ranks, that can start part-way through."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch)).tolist()
        per_rank = math.ceil(self.n / self.world)
        order += order[: per_rank * self.world - self.n]  # pad so every rank takes the same steps
        return order[self.rank :: self.world]

    def __iter__(self):
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return math.ceil(self.n / self.world) - self.start


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """The paper's schedule: lr × decay^(epoch / every)."""
    return cfg.lr_decay ** (epoch / cfg.lr_decay_epochs)


@dataclasses.dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    stopped: str


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError("--device cuda: this machine has no CUDA GPU; use --device cpu")
    return torch.device(cfg.device)


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"


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
        if cfg.batch < 1 or cfg.epochs < 1:
            raise TrainError("--batch and --epochs must be at least 1")
        self.cfg = cfg
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = _device(cfg, self.local_rank)
        self.cuda = self.device.type == "cuda"
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.cuda else "gloo")
        if self.cuda:
            torch.cuda.set_device(self.device)
        self.main = self.rank == 0
        self.progress = progress and self.main
        self.out = Path(cfg.out)

        torch.manual_seed(cfg.seed)
        self.train_pairs = list_pairs(cfg.data, cfg.train_split)
        self.val_split = cfg.val_split or None
        if self.val_split:
            list_pairs(cfg.data, self.val_split)  # fail now, not after the first epoch
        self.dataset = PortraitDataset(self.train_pairs, cfg.size, seed=cfg.seed)
        self.sampler = EpochSampler(len(self.train_pairs), cfg.seed, self.rank, self.world)

        self.model = build_model(cfg.arch).to(self.device)
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: lr_factor(cfg, e))
        self.amp = cfg.amp and self.cuda
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
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
        torch.set_rng_state(raw["rng"]["torch"])
        if self.cuda and "cuda" in raw["rng"]:
            torch.cuda.set_rng_state(raw["rng"]["cuda"], self.device)

    def meta(self) -> dict[str, Any]:
        """What a checkpoint records about how it was made."""
        return {
            "arch": self.cfg.arch,
            "data": self.cfg.data,
            "split_rule": SPLIT_RULE,
            "epochs_done": self.epoch,
            "global_step": self.global_step,
            "wall_s": round(self.wall, 1),
            "hardware": _hardware(self.device),
            "world_size": self.world,
            "torch": str(torch.__version__),
            "best": self.best,
        }

    def _save(self, name: str) -> None:
        if self.main:
            save_checkpoint(self.out / name, self.model, self.cfg.arch, meta=self.meta(), **self._state())

    # ------------------------------------------------------------------------------ loop

    def _loader(self) -> DataLoader:
        self.dataset.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch, self.step_in_epoch * self.cfg.batch)
        return DataLoader(
            self.dataset,
            batch_size=self.cfg.batch,
            sampler=self.sampler,
            num_workers=self.cfg.workers,
            pin_memory=self.cuda,
            drop_last=False,
            persistent_workers=False,
        )

    def _step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        fmt = torch.channels_last if self.cuda else torch.contiguous_format
        x = torch.cat([batch["student"], batch["teacher"]]).to(self.device, non_blocking=True, memory_format=fmt)
        mask, edge = (batch[k].to(self.device, non_blocking=True) for k in ("mask", "edge"))
        n = batch["mask"].shape[0]
        try:
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                mask_logits, edge_logits = self.ddp(x, with_edge=True)
            terms = total_loss(
                (mask_logits[:n].float(), edge_logits[:n].float()),
                (mask_logits[n:].float(), edge_logits[n:].float()),
                mask,
                edge,
                self.weights,
            )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(terms["loss"]).backward()
            self._updating = True  # a Ctrl-C from here until the update ends must not be saved
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self._updating = False
        except torch.cuda.OutOfMemoryError as e:
            raise TrainError(
                f"out of GPU memory at batch {self.cfg.batch} (size {self.cfg.size}); lower --batch "
                f"(e.g. --batch {max(1, self.cfg.batch // 2)}); resume from {self.out / 'last.pt'}"
            ) from e
        return {k: float(v.detach()) for k, v in terms.items()}

    def validate(self) -> dict[str, float]:
        """Both mIoU conventions on the validation split (train form in eval mode)."""
        from rcr_deploy.evaluate import evaluate
        from rcr_deploy.runtime.torch_runner import TorchRunner

        runner = TorchRunner(self.model, f"{self.cfg.arch}@epoch{self.epoch}", device=str(self.device))
        try:
            report = evaluate(
                runner, self.cfg.data, self.cfg.size, self.cfg.val_limit or None, self.val_split, progress=self.progress
            )
        finally:
            self.model.train()
        return {"val_fg_miou": report.fg_miou, "val_class_miou": report.class_miou, "val_images": report.n_images}

    def fit(self) -> TrainResult:
        """Train until `epochs`, the time limit or `max_steps`; returns the model and history."""
        cfg = self.cfg
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / "config.json")
        self._t0 = time.perf_counter() - self.wall  # wall time counts over resumed sessions
        session = time.perf_counter()
        self._updating = False
        stopped = "epochs"
        self.model.train()
        try:
            while self.epoch < cfg.epochs:
                steps_per_epoch = len(EpochSampler(len(self.train_pairs), cfg.seed, self.rank, self.world))
                steps_per_epoch = math.ceil(steps_per_epoch / cfg.batch)
                bar = tqdm(
                    self._loader(),
                    total=steps_per_epoch,
                    initial=self.step_in_epoch,
                    desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                    unit="step",
                    disable=not self.progress,
                    dynamic_ncols=True,
                )
                for batch in bar:
                    terms = self._step(batch)
                    self.step_in_epoch += 1
                    self.global_step += 1
                    self.wall = time.perf_counter() - self._t0
                    for k, v in terms.items():
                        self.sums[k] = self.sums.get(k, 0.0) + v
                    bar.set_postfix(loss=f"{terms['loss']:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                    if cfg.save_every and self.global_step % cfg.save_every == 0:
                        self._save("last.pt")
                    if cfg.max_steps and self.global_step >= cfg.max_steps:
                        stopped = "max_steps"
                        break
                bar.close()
                if stopped == "max_steps":
                    self._save("last.pt")
                    break
                self._end_epoch()
                if cfg.time_limit_min and time.perf_counter() - session >= cfg.time_limit_min * 60:
                    stopped = "time_limit"
                    break
        except KeyboardInterrupt:
            if not self._updating:  # weights are whole: resume continues from this very step
                self._save("last.pt")
            raise
        if self.world > 1:
            dist.barrier()
        return TrainResult(self.model, self.history, self.best, stopped)

    def _end_epoch(self) -> None:
        n = max(self.step_in_epoch, 1)
        record: dict[str, Any] = {"epoch": self.epoch + 1, "wall_s": round(self.wall, 1), **{k: v / n for k, v in self.sums.items()}}
        self.epoch += 1
        self.step_in_epoch, self.sums = 0, {}
        self.scheduler.step()
        if self.val_split and self.main:
            record.update(self.validate())
            self.wall = record["wall_s"] = time.perf_counter() - self._t0
        self.history.append(record)
        if self.main and self.val_split and (self.best is None or record["val_fg_miou"] > self.best["val_fg_miou"]):
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


def plot_histories(histories: dict[str, list[dict[str, Any]]], path: str | os.PathLike) -> None:
    """Validation mIoU (both conventions) and training loss per epoch, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_iou, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, history in histories.items():
        epochs = [h["epoch"] for h in history]
        if history and "val_fg_miou" in history[0]:
            line = ax_iou.plot(epochs, [100 * h["val_fg_miou"] for h in history], "o-", label=f"{label}: fg mIoU")[0]
            ax_iou.plot(epochs, [100 * h["val_class_miou"] for h in history], "s--", color=line.get_color(), label=f"{label}: class mIoU")
        ax_loss.plot(epochs, [h["loss"] for h in history], "o-", label=label)
    ax_iou.set(xlabel="epoch", ylabel="validation IoU (%)", title="validation")
    ax_loss.set(xlabel="epoch", ylabel="L = Lm + αLc + βLe", title="training loss")
    for ax in (ax_iou, ax_loss):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
