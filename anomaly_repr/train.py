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

from anomaly_repr.augment import Policy
from anomaly_repr.config import ExperimentConfig
from anomaly_repr.errors import BudgetError, DivergedError
from anomaly_repr.methods import method_for
from anomaly_repr.mixing import Mixing
from anomaly_repr.models import OpenSetNet, init_from_images
from anomaly_repr.pipeline import DeviceBatches, Normalizer, eval_batches

log = logging.getLogger(__name__)
CHECK_EVERY = 25  # optimiser steps between checks of the summed loss: divergence stops an epoch early


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bf16_native() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16: AMD Zen 4 on; AMX: Intel Sapphire Rapids on).
    Elsewhere bfloat16 is emulated and slower than float32."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check() for check in checks if check is not None)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast precision of training: bfloat16 for amp=true, and for amp=auto on CUDA and on CPUs with
    native bfloat16; None (float32) otherwise."""
    if amp == "false":
        return None
    if amp == "true" or device.type == "cuda" or (device.type == "cpu" and bf16_native()):
        return torch.bfloat16
    return None


def lr_factor(schedule: str, step: int, total: int, warmup: int = 0) -> float:
    """Multiplier of the peak learning rate at optimiser step `step` of `total`; `warmup` steps of linear
    warm-up before the cosine decay (onecycle has its own)."""
    progress = step / max(1, total)
    if schedule == "onecycle":  # linear warm-up over the first 20 %, then linear decay to zero
        return progress / 0.2 if progress < 0.2 else max(0.0, (1 - progress) / 0.8)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))  # cosine


@torch.no_grad()
def predict(model: OpenSetNet, images: torch.Tensor, normalizer: Normalizer, device: torch.device,
            batch_size: int | None = None, precision: torch.dtype | None = None) -> torch.Tensor:
    """The model's float32 logits (N, K) of uint8 `images`, in eval mode, on the CPU; `precision`: the
    autocast dtype of the forward passes (`autocast_dtype`), None for float32."""
    model.eval()
    with torch.autocast(device.type, dtype=precision or torch.bfloat16, enabled=precision is not None):
        return torch.cat([model(x.contiguous(memory_format=torch.channels_last)).logits.float().cpu()
                          for x in eval_batches(images, normalizer, batch_size, device)])


def accuracy(model: OpenSetNet, images: torch.Tensor, labels: torch.Tensor, normalizer: Normalizer,
             device: torch.device, batch_size: int | None = None, precision: torch.dtype | None = None) -> float:
    return hits(predict(model, images, normalizer, device, batch_size, precision), labels)


def hits(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels.cpu()).float().mean().item()


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


def train(cfg: ExperimentConfig, model: OpenSetNet, train_images: torch.Tensor, train_labels: torch.Tensor,
          val_images: torch.Tensor, val_labels: torch.Tensor, normalizer: Normalizer, hflip: bool,
          device: torch.device, checkpoint: Path, resume: bool = False,
          on_epoch: Callable[[OpenSetNet, dict[str, float], torch.Tensor | None], None] | None = None,
          on_figures: Callable[[dict[str, Figure]], None] | None = None) -> TrainResult:
    """Train `model` with its method's step on uint8 images (labels 0..K-1), stage by stage (one stage but for
    methods like CSI: each has its own optimiser, schedule and epochs, and only stages that select read the
    validation accuracy, keep the best model and stop early); epochs count on across stages. `on_epoch`
    receives, after each epoch, the model that validation reads (the weights' moving average when
    `ema_decay` is set), the epoch's metrics row (the method's own curves among them) and the validation
    images' logits that gave its accuracy (None in a stage that does not select: a hook that scores
    validation images reuses them instead of a second pass), `on_figures` the
    method's figures. With `max_hours`, the first epoch of a stage that shows the stage cannot end in time
    stops the run."""
    method = method_for(cfg)
    torch.manual_seed(cfg.seed)
    model.to(device).to(memory_format=torch.channels_last)
    resuming = resume and checkpoint.exists()
    if not resuming:  # before the weights' average copies the model; a resumed model has it in its checkpoint
        init_from_images(model, train_images, normalizer, device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    height, width = train_images.shape[-2:]
    policy = Policy(cfg.augment, height, width, cfg.randaugment_ops, cfg.randaugment_magnitude)
    batches = DeviceBatches(train_images.to(device), train_labels.to(device), normalizer, cfg.batch_size,
                            hflip, generator, policy, cfg.random_erasing, Mixing(cfg.mixup, cfg.cutmix, num_classes))
    # The weights' moving average (buffers too: batch-norm statistics) is what validation selects and what
    # the caller gets back when ema_decay is set.
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True) \
        if cfg.ema_decay else None
    selected: OpenSetNet = ema.module if ema is not None else model  # type: ignore[assignment]
    dtype = autocast_dtype(cfg.amp, device)

    def autocast() -> torch.autocast:  # the loss and the scorers stay float32: the model casts its outputs
        return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    method.start(normalizer, device)
    stages = method.stages()
    result = TrainResult(model, best_val_acc=-1.0, best_epoch=-1, precision=str(dtype or torch.float32))
    best_state = {k: v.detach().clone() for k, v in selected.state_dict().items()}
    state: dict = torch.load(checkpoint, map_location=device, weights_only=True) if resuming else {}
    if state:
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        method.load_train_state(state.get("method", {}))  # checkpoints of earlier versions have none
        generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        best_state = state["best_model"]
        result.best_val_acc, result.best_epoch = state["best_val_acc"], state["best_epoch"]
        result.history = state["history"]
        result.train_seconds, result.train_images = state["train_seconds"], state["train_images"]
        log.info("resumed from %s after epoch %d", checkpoint, state["epoch"])
    began_run, stale, first = time.perf_counter(), state.get("stale", 0), 0  # first: epochs before this stage
    state_seconds = result.train_seconds  # of the epochs before a resume

    for index, stage in enumerate(stages):
        if index < state.get("stage", 0):
            first += stage.epochs
            continue
        method.begin_stage(model, index)
        optimizer = method.optimizer(method.param_groups(model))
        # warm-up: the first stage's (a later one starts from trained weights)
        total_steps, warmup = stage.epochs * len(batches), round(cfg.warmup_epochs * len(batches)) if index == 0 else 0
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, cfg.schedule, total=total_steps,
                                                                         warmup=warmup))
        if state.get("stage", 0) == index and "optimizer" in state:  # resumed inside this stage
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        checked = False
        for epoch in range(max(first, state.get("epoch", 0)) + 1, first + stage.epochs + 1):
            if stage.selects and cfg.patience and stale >= cfg.patience:
                break
            model.train()
            method.begin_stage(model, index)  # a stage may keep parts of the model in eval mode
            # The loss is summed on the device and read once per epoch: a read per step would wait for the step.
            loss_sum, seen, began = torch.zeros((), device=device), 0, time.perf_counter()
            bar = tqdm(batches, desc=f"{stage.name} epoch {epoch}", leave=False, disable=None, unit="batch")
            for step, (x, y) in enumerate(bar, 1):
                try:
                    loss = method.train_step(model, optimizer, x.contiguous(memory_format=torch.channels_last), y,
                                             autocast)
                except DivergedError as exc:  # the method saw it coming (a sampler's energies exploding)
                    raise DivergedError(f"training diverged at epoch {epoch}, step {step}: {exc}") from None
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                loss_sum += loss * len(y)
                seen += len(y)
                if step % CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
                    raise DivergedError(f"training diverged at epoch {epoch}, step {step} (the loss is not finite); "
                                        "lower lr")
            total_loss = loss_sum.item()
            if not math.isfinite(total_loss):
                raise DivergedError(f"training diverged at epoch {epoch} (loss is {total_loss}); lower lr")
            seconds = time.perf_counter() - began
            result.train_seconds += seconds
            result.train_images += seen
            row = {"epoch": epoch, stage.loss_name: total_loss / seen, "train/lr": optimizer.param_groups[0]["lr"],
                   "train/images_per_second": seen / seconds, **method.epoch_metrics()}
            val_logits = None
            if stage.selects:
                val_logits = predict(selected, val_images, normalizer, device, precision=dtype)
                row["val/acc"] = val_acc = hits(val_logits, val_labels)
                if val_acc > result.best_val_acc:
                    result.best_val_acc, result.best_epoch, stale = val_acc, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in selected.state_dict().items()}
                else:
                    stale += 1
            if (figures := method.epoch_figures(epoch)) and on_figures:
                on_figures(figures)
            result.history.append(row)
            log.info("%s epoch %d/%d  loss %.4f  val/acc %.4f  %.0f img/s", stage.name, epoch, first + stage.epochs,
                     total_loss / seen, row.get("val/acc", float("nan")), row["train/images_per_second"])
            if on_epoch:  # before the checkpoint: a crash in between repeats the epoch (its row is not logged twice)
                on_epoch(selected, row, val_logits)
            save_atomically({
                "stage": index, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "best_model": best_state,
                "best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch, "history": result.history,
                "stale": stale, "train_seconds": result.train_seconds, "train_images": result.train_images,
                **({"ema": ema.state_dict()} if ema is not None else {}), "method": method.train_state(),
            }, checkpoint)
            if cfg.max_hours and not checked:  # the first epoch this process runs of the stage
                check_budget(cfg.max_hours, stage.name, time.perf_counter() - began_run + state_seconds,
                             time.perf_counter() - began, first + stage.epochs - epoch)
                checked = True
        first += stage.epochs
        state = {}  # later stages start afresh

    model.load_state_dict(best_state)
    model.eval()
    return result


def check_budget(max_hours: float, stage: str, elapsed: float, epoch_seconds: float, epochs_left: int) -> None:
    """Stop a run that an epoch shows cannot finish within `max_hours` (it keeps its checkpoint): `elapsed`
    seconds so far and `epochs_left` more epochs of `epoch_seconds` (later stages are not counted)."""
    need = elapsed + epoch_seconds * epochs_left
    if need > max_hours * 3600:
        raise BudgetError(f"{stage}: an epoch took {epoch_seconds:.0f} s, so the stage needs about {need / 3600:.2f} "
                          f"h in all ({epochs_left} epochs to go), more than max_hours={max_hours:g}; give fewer "
                          "epochs, a smaller model or more max_hours")
