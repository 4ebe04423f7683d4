"""Training: SGD on the known classes, model selection by validation accuracy, per-epoch checkpoints.

Anomaly classes never reach this module: the caller passes the known-class training and validation
images only. The model kept is the one with the best validation accuracy; training stops after
`patience` epochs without improvement. After every epoch a checkpoint is written atomically, so
`resume=True` continues an interrupted run from its last finished epoch with the same random state.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from anomaly_repr.data.augment import Policy
from anomaly_repr.data.mixing import Mixing
from anomaly_repr.data.pipeline import DeviceBatches, Normalizer
from anomaly_repr.engine.device import autocast_dtype, hits, predict
from anomaly_repr.errors import BudgetError, DivergedError
from anomaly_repr.methods.base import Method, Stage
from anomaly_repr.models.backbones import OpenSetNet, init_from_images

log = logging.getLogger(__name__)
CHECK_EVERY = 25  # optimiser steps between checks of the summed loss: divergence stops an epoch early


def lr_factor(schedule: str, step: int, total: int, warmup: int = 0) -> float:
    """Multiplier of the peak learning rate at optimiser step `step` of `total`; `warmup` steps of linear
    warm-up before the cosine decay (onecycle has its own)."""
    progress = step / max(1, total)
    if schedule == "onecycle":  # linear warm-up over the first 20 %, then linear decay to zero
        return progress / 0.2 if progress < 0.2 else max(0.0, (1 - progress) / 0.8)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))  # cosine


@dataclass
class TrainResult:
    model: OpenSetNet  # with the weights of the best validation epoch
    best_val_acc: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)  # one row per finished epoch
    train_seconds: float = 0.0  # time in optimiser steps, validation excluded
    train_images: int = 0  # images seen in those steps
    precision: str = "torch.float32"  # autocast precision of the steps (weights stay float32)

    @property
    def images_per_second(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds else 0.0

    def summary_fields(self) -> dict:
        """Everything but the model, as a checkpoint keeps it."""
        return {k: v for k, v in vars(self).items() if k != "model"}

    @classmethod
    def joined(cls, model: OpenSetNet, val_acc: float, members: list[TrainResult]) -> TrainResult:
        """The result of members trained one by one and joined into `model`: its validation accuracy, (as best
        epoch) the mean of theirs, their epochs one after another (rows marked with their `member`), their
        summed steps and time."""
        history = [row | {"member": i} for i, r in enumerate(members) for row in r.history]
        return cls(model, val_acc, round(sum(r.best_epoch for r in members) / len(members)), history,
                   sum(r.train_seconds for r in members), sum(r.train_images for r in members), members[0].precision)


def save_atomically(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # readers see the old checkpoint or the new one, never half of one


@dataclass(frozen=True)
class TrainData:
    """What a method trains and selects on (known classes only, but for an all-class method)."""

    train_images: torch.Tensor  # uint8 (N, C, H, W)
    train_labels: torch.Tensor  # 0..K-1
    val_images: torch.Tensor  # the model-selection images
    val_labels: torch.Tensor
    normalizer: Normalizer  # channel statistics of the training images
    hflip: bool  # whether a mirror image keeps its class (augmentation may flip)
    device: torch.device


@dataclass(frozen=True)
class TrainHooks:
    """Callbacks of a training run. `on_epoch` receives, after each epoch, the model that validation reads
    (the weights' moving average when `ema_decay` is set), the epoch's metrics row (the method's own curves
    among them) and the validation images' logits that gave its accuracy (None in a stage that does not
    select: a hook that scores validation images reuses them instead of a second pass); `on_figures` the
    method's figures."""

    on_epoch: Callable[[OpenSetNet, dict[str, float], torch.Tensor | None], None] | None = None
    on_figures: Callable[[dict[str, Figure]], None] | None = None


def train(method: Method, model: OpenSetNet, data: TrainData, checkpoint: Path, resume: bool = False,
          hooks: TrainHooks | None = None) -> TrainResult:
    """Train `model` with `method`'s step on uint8 images (labels 0..K-1), stage by stage (one stage but for
    methods like CSI: each has its own optimiser, schedule and epochs, and only stages that select read the
    validation accuracy, keep the best model and stop early); epochs count on across stages. With
    `max_hours`, the first epoch of a stage that shows the stage cannot end in time stops the run."""
    run = _Run(method, model, data, checkpoint, resume and checkpoint.exists(), hooks or TrainHooks())
    for index, stage in enumerate(method.stages()):
        if index < run.state.get("stage", 0):
            run.first += stage.epochs
            continue
        run.train_stage(index, stage)
        run.first += stage.epochs
        run.state = {}  # later stages start afresh
    model.load_state_dict(run.best_state)
    model.eval()
    return run.result


class _Run:
    """One call of `train`: the data pipeline, the weights' average, what is best so far and the state a
    checkpoint keeps."""

    def __init__(self, method: Method, model: OpenSetNet, data: TrainData, checkpoint: Path, resuming: bool,
                 hooks: TrainHooks):
        cfg, device = method.cfg, data.device
        self.cfg, self.method, self.model, self.data, self.checkpoint, self.hooks = cfg, method, model, data, \
            checkpoint, hooks
        torch.manual_seed(cfg.seed)
        model.to(device).to(memory_format=torch.channels_last)
        if not resuming:  # before the weights' average copies the model; a resumed model has it in its checkpoint
            init_from_images(model, data.train_images, data.normalizer, device)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        num_classes = int(max(data.train_labels.max(), data.val_labels.max())) + 1
        height, width = data.train_images.shape[-2:]
        policy = Policy(cfg.augment, height, width, cfg.randaugment_ops, cfg.randaugment_magnitude)
        self.batches = DeviceBatches(data.train_images.to(device), data.train_labels.to(device), data.normalizer,
                                     cfg.batch_size, data.hflip, self.generator, policy, cfg.random_erasing,
                                     Mixing(cfg.mixup, cfg.cutmix, num_classes))
        # The weights' moving average (buffers too: batch-norm statistics) is what validation selects and what
        # the caller gets back when ema_decay is set.
        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True) \
            if cfg.ema_decay else None
        self.selected: OpenSetNet = self.ema.module if self.ema is not None else model  # type: ignore[assignment]
        self.dtype = autocast_dtype(cfg.amp, device)
        method.start(data.normalizer, device)
        self.result = TrainResult(model, best_val_acc=-1.0, best_epoch=-1, precision=str(self.dtype or torch.float32))
        self.best_state = {k: v.detach().clone() for k, v in self.selected.state_dict().items()}
        self.state: dict = torch.load(checkpoint, map_location=device, weights_only=True) if resuming else {}
        if self.state:
            self._restore()
        self.began, self.stale = time.perf_counter(), self.state.get("stale", 0)
        self.first = 0  # epochs of the stages before this one
        self.state_seconds = self.result.train_seconds  # of the epochs before a resume

    def _restore(self) -> None:
        state, result = self.state, self.result
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.method.load_train_state(state.get("method", {}))  # checkpoints of earlier versions have none
        self.generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        self.best_state = state["best_model"]
        result.best_val_acc, result.best_epoch = state["best_val_acc"], state["best_epoch"]
        result.history = state["history"]
        result.train_seconds, result.train_images = state["train_seconds"], state["train_images"]
        log.info("resumed from %s after epoch %d", self.checkpoint, state["epoch"])

    def autocast(self) -> torch.autocast:  # the loss and the scorers stay float32: the model casts its outputs
        return torch.autocast(self.data.device.type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None)

    def train_stage(self, index: int, stage: Stage) -> None:
        cfg, method, state, steps = self.cfg, self.method, self.state, len(self.batches)
        method.begin_stage(self.model, index)
        optimizer = method.optimizer(method.param_groups(self.model))
        # warm-up: the first stage's (a later one starts from trained weights)
        total_steps, warmup = stage.epochs * steps, round(cfg.warmup_epochs * steps) if index == 0 else 0
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, cfg.schedule, total=total_steps,
                                                                         warmup=warmup))
        if state.get("stage", 0) == index and "optimizer" in state:  # resumed inside this stage
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        checked = False
        for epoch in range(max(self.first, state.get("epoch", 0)) + 1, self.first + stage.epochs + 1):
            if stage.selects and cfg.patience and self.stale >= cfg.patience:
                break
            epoch_began = time.perf_counter()
            row = self.train_epoch(index, stage, epoch, optimizer, scheduler)
            val_logits = self.validate(row) if stage.selects else None
            if (figures := method.epoch_figures(epoch)) and self.hooks.on_figures:
                self.hooks.on_figures(figures)
            self.result.history.append(row)
            log.info("%s epoch %d/%d  loss %.4f  val/acc %.4f  %.0f img/s", stage.name, epoch,
                     self.first + stage.epochs, row[stage.loss_name], row.get("val/acc", float("nan")),
                     row["train/images_per_second"])
            if self.hooks.on_epoch:  # before the checkpoint: a crash in between repeats the epoch (its row is not
                self.hooks.on_epoch(self.selected, row, val_logits)  # logged twice)
            self.save(index, epoch, optimizer, scheduler)
            if cfg.max_hours and not checked:  # the first epoch this process runs of the stage
                check_budget(cfg.max_hours, stage.name, time.perf_counter() - self.began + self.state_seconds,
                             time.perf_counter() - epoch_began, self.first + stage.epochs - epoch)
                checked = True

    def train_epoch(self, index: int, stage: Stage, epoch: int, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, float]:
        """One epoch of steps of stage `index`; its metrics row."""
        model, device = self.model, self.data.device
        model.train()
        self.method.begin_stage(model, index)  # a stage may keep parts of the model in eval mode
        # The loss is summed on the device and read once per epoch: a read per step would wait for the step.
        loss_sum, seen, began = torch.zeros((), device=device), 0, time.perf_counter()
        bar = tqdm(self.batches, desc=f"{stage.name} epoch {epoch}", leave=False, disable=None, unit="batch")
        for step, (x, y) in enumerate(bar, 1):
            try:
                loss = self.method.train_step(model, optimizer, x.contiguous(memory_format=torch.channels_last), y,
                                              self.autocast)
            except DivergedError as exc:  # the method saw it coming (a sampler's energies exploding)
                raise DivergedError(f"training diverged at epoch {epoch}, step {step}: {exc}") from None
            scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(model)
            loss_sum += loss * len(y)
            seen += len(y)
            if step % CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
                raise DivergedError(f"training diverged at epoch {epoch}, step {step} (the loss is not finite); "
                                    "lower lr")
        total_loss = loss_sum.item()
        if not math.isfinite(total_loss):
            raise DivergedError(f"training diverged at epoch {epoch} (loss is {total_loss}); lower lr")
        seconds = time.perf_counter() - began
        self.result.train_seconds += seconds
        self.result.train_images += seen
        return {"epoch": epoch, stage.loss_name: total_loss / seen, "train/lr": optimizer.param_groups[0]["lr"],
                "train/images_per_second": seen / seconds, **self.method.epoch_metrics()}

    def validate(self, row: dict[str, float]) -> torch.Tensor:
        """The validation accuracy into `row`, the best model kept; the validation logits."""
        data, result = self.data, self.result
        val_logits = predict(self.selected, data.val_images, data.normalizer, data.device, precision=self.dtype)
        row["val/acc"] = val_acc = hits(val_logits, data.val_labels)
        if val_acc > result.best_val_acc:
            result.best_val_acc, result.best_epoch, self.stale = val_acc, int(row["epoch"]), 0
            self.best_state = {k: v.detach().clone() for k, v in self.selected.state_dict().items()}
        else:
            self.stale += 1
        return val_logits

    def save(self, index: int, epoch: int, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        result = self.result
        save_atomically({
            "stage": index, "epoch": epoch, "model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "best_model": self.best_state,
            "best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch, "history": result.history,
            "stale": self.stale, "train_seconds": result.train_seconds, "train_images": result.train_images,
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}), "method": self.method.train_state(),
        }, self.checkpoint)


def check_budget(max_hours: float, stage: str, elapsed: float, epoch_seconds: float, epochs_left: int) -> None:
    """Stop a run that an epoch shows cannot finish within `max_hours` (it keeps its checkpoint): `elapsed`
    seconds so far and `epochs_left` more epochs of `epoch_seconds` (later stages are not counted)."""
    need = elapsed + epoch_seconds * epochs_left
    if need > max_hours * 3600:
        raise BudgetError(f"{stage}: an epoch took {epoch_seconds:.0f} s, so the stage needs about {need / 3600:.2f} "
                          f"h in all ({epochs_left} epochs to go), more than max_hours={max_hours:g}; give fewer "
                          "epochs, a smaller model or more max_hours")
