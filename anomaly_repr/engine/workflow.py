"""The stages every entry point shares, as plain computations: no MLflow call below this line.

source -> OpenSetSplit -> the method's model, trained on its labels -> extract once per split ->
calibrate -> scorers -> metrics (`evaluation.py`). `fit` and `evaluate` return values; `tracking/runs.py` and the
studies log them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from matplotlib.figure import Figure

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.data.sources import ImageData, load_source
from anomaly_repr.data.split import OpenSetSplit
from anomaly_repr.engine.device import accuracy, autocast_dtype, pick_device
from anomaly_repr.engine.train import TrainData, TrainHooks, TrainResult, check_budget, save_atomically, train
from anomaly_repr.errors import ConfigError, DivergedError, SealedError
from anomaly_repr.methods import Method, method_for
from anomaly_repr.models.backbones import OpenSetNet

log = logging.getLogger(__name__)


DEFAULT_CHECKPOINTS = Path("checkpoints")  # the CLI's default; ANOMALY_REPR_CHECKPOINTS moves it


def checkpoint_path(folder: Path, run_id: str) -> Path:
    """Per-run checkpoint file in `folder` (the caller's: the CLI reads it from the environment)."""
    return folder / f"{run_id}.pt"


PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Prepared:
    """A source, its open-set split and the images of the parts loaded: what every stage reads.

    `prepare(cfg, parts=("train", "val"))` is the sealed view that tuning works on: the source is asked
    for train and validation images only, and `images()` refuses any index of another part.
    """

    cfg: ExperimentConfig
    data: ImageData
    split: OpenSetSplit
    open_labels: np.ndarray  # open-set label of every pooled image (-1 = anomaly)
    loaded: torch.Tensor  # uint8 images of the loaded parts, one row per loaded index
    rows: np.ndarray  # pooled index -> row of `loaded`; -1 for images of parts not loaded
    method: Method  # the config's, resolved once by `prepare`; a copy with another config resolves its own

    def __post_init__(self) -> None:
        if self.method.cfg != self.cfg:  # dataclasses.replace(prep, cfg=...)
            object.__setattr__(self, "method", method_for(self.cfg))

    def images(self, index: np.ndarray) -> torch.Tensor:
        rows = self.rows[index]
        if (rows < 0).any():
            raise SealedError(f"{int((rows < 0).sum())} of the images asked for lie in a part this view does not "
                              "hold (the test split is sealed while tuning)")
        return self.loaded[torch.from_numpy(rows)]

    def training_view(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train indices, validation indices, labels of all pooled images) that the config's method trains on.

        Most methods see the known classes only (anomalies removed from train and from the
        model-selection validation images); an all-class method (the oracle representation) sees every
        class of the split.
        """
        if self.method.all_classes:
            return self.split.train, self.split.val, self.split.all_class_labels(self.data.labels)
        nominal = self.split.nominal
        return nominal(self.split.train, self.data.labels), nominal(self.split.val, self.data.labels), self.open_labels


def prepare(cfg: ExperimentConfig, parts: tuple[str, ...] = PARTS) -> Prepared:
    """Load the source, split it, and read the images of `parts` (a subset of train, val, test)."""
    if not set(parts) <= set(PARTS):
        raise ConfigError(f"unknown parts {sorted(set(parts) - set(PARTS))}; parts are {', '.join(PARTS)}")
    data, method = load_source(cfg), method_for(cfg)
    method.check_data(data.shape)
    split = OpenSetSplit.make(cfg, data.labels, data.classes, data.left_out, data.decoding)
    index = np.sort(np.concatenate([getattr(split, part) for part in parts]))
    rows = np.full(len(data.labels), -1, dtype=np.int64)
    rows[index] = np.arange(len(index))
    log.info("%s: %d images (%s loaded: %d), known %s, unknown %s, split %s", cfg.dataset, len(data.labels),
             "+".join(parts), len(index), split.known, split.unknown, split.hash)
    return Prepared(cfg, data, split, split.open_labels(data.labels), data.read(index), rows, method)


def unseal(prep: Prepared) -> Prepared:
    """The same view with the test images read as well: for the one test that follows a search."""
    missing = prep.split.test[prep.rows[prep.split.test] < 0]
    rows = prep.rows.copy()
    rows[missing] = np.arange(len(prep.loaded), len(prep.loaded) + len(missing))
    return dataclasses.replace(prep, loaded=torch.cat([prep.loaded, prep.data.read(missing)]), rows=rows)


def new_model(prep: Prepared) -> OpenSetNet:
    """The model of the config's method, initialised from its seed; an all-class method's model has a class
    for every class of the split."""
    cfg, method = prep.cfg, prep.method
    n_classes = len(prep.split.known) + (len(prep.split.unknown) if method.all_classes else 0)
    with torch.random.fork_rng(devices=[]):  # initial weights follow the seed, and nothing else's random state
        torch.manual_seed(cfg.seed)
        return method.build(n_classes, prep.data.shape[0], prep.data.shape[-1])


# (model, normaliser, the epoch's row, the logits of the nominal validation images that gave val/acc or None)
EpochHook = Callable[[OpenSetNet, Normalizer, dict[str, float], torch.Tensor | None], None]


@dataclass
class Fitted:
    model: OpenSetNet  # the best-validation-accuracy model, in eval mode
    normalizer: Normalizer  # channel statistics of its training images
    result: TrainResult
    example: torch.Tensor  # a few uint8 training images: the served model's input example
    device: torch.device

    def summary(self) -> dict[str, float]:
        r = self.result
        return {"val/best_acc": r.best_val_acc, "train/best_epoch": r.best_epoch, "train/epochs_run": len(r.history),
                "train/seconds": r.train_seconds, "train/images_per_second_mean": r.images_per_second}


class MemberHooks(Protocol):
    """What the tracking layer does around each member of a method that trains members one by one."""

    def member(self, index: int, cfg: ExperimentConfig) -> AbstractContextManager[EpochHook | None]:
        """Entered while member `index` trains (its epochs go to the hook it yields)."""

    def finished(self, index: int, fitted: Fitted) -> None:
        """Member `index` is trained: its model and result (called inside its `member` context)."""

    def elsewhere(self, prep: Prepared, indices: list[int], checkpoint: Path,
                  workers: int) -> Iterator[tuple[int, dict, dict]]:
        """Train these members in `workers` other processes: (index, weights, result fields) as each ends."""


def fit(prep: Prepared, checkpoint: Path, resume: bool = False, on_epoch: EpochHook | None = None,
        members: MemberHooks | None = None, on_figures: Callable[[dict[str, Figure]], None] | None = None) -> Fitted:
    """Train the config's method on its labels; `on_epoch(model, normalizer, row, val_logits)` runs after each
    epoch with the model that validation reads, in that epoch's state (tracking logs there; tuning scores and
    prunes there). A method with members trains them one by one (`fit_members`), `members` around each;
    `on_figures` receives the figures a method makes during training."""
    data = training_data(prep)
    if prep.method.member_configs():
        return fit_members(prep, data, checkpoint, resume, members)
    model, normalizer = new_model(prep), data.normalizer
    hook = (lambda net, row, logits: on_epoch(net, normalizer, row, logits)) if on_epoch else None
    result = train(prep.method, model, data, checkpoint, resume, TrainHooks(hook, on_figures))
    return Fitted(result.model, normalizer, result, data.train_images[:4], data.device)


def training_data(prep: Prepared) -> TrainData:
    """What the config's method trains and selects on, and the normaliser fitted on its training images."""
    train_index, val_index, all_labels = prep.training_view()
    train_x = prep.images(train_index)
    normalizer = Normalizer.fit(train_x)  # statistics of the training split only
    labels = torch.as_tensor(all_labels, dtype=torch.long)
    return TrainData(train_x, labels[train_index], prep.images(val_index), labels[val_index], normalizer,
                     prep.data.hflip, pick_device(prep.cfg.device))


def member_checkpoint(checkpoint: Path, index: int) -> Path:
    return checkpoint.with_name(f"{checkpoint.stem}.member{index}{checkpoint.suffix}")


def fit_member(prep: Prepared, data: TrainData, index: int, checkpoint: Path, hooks: MemberHooks | None,
               finished: int = 0) -> TrainResult:
    """Train member `index` of the config's method (continuing from its own checkpoint if one is left)."""
    member = dataclasses.replace(prep, cfg=prep.method.member_configs()[index])
    cfg, normalizer = member.cfg, data.normalizer
    model = new_model(member)
    path = member_checkpoint(checkpoint, index)
    with hooks.member(index, cfg) if hooks else nullcontext() as on_epoch:
        hook = (lambda net, row, logits: on_epoch(net, normalizer, row, logits)) if on_epoch else None
        try:
            result = train(member.method, model, data, path, path.exists(), TrainHooks(hook))
        except DivergedError as exc:
            members = len(prep.method.member_configs())
            raise DivergedError(f"member {index} of {members}: {exc}; the {finished} finished member(s) are kept "
                                "for `train --resume`") from None
        if hooks:
            hooks.finished(index, Fitted(result.model, normalizer, result, data.train_images[:4], data.device))
    return result


def fit_members(prep: Prepared, data: TrainData, checkpoint: Path, resume: bool,
                hooks: MemberHooks | None) -> Fitted:
    """Train a method's members, each with its own early stopping and checkpoint, then join them: one after
    another, or with `ensemble_workers` > 1 in that many processes (`hooks.elsewhere`). `checkpoint` keeps
    every finished member, so a resumed run trains only the others (and continues one that was interrupted
    from its own checkpoint)."""
    method, train_x, normalizer, device = prep.method, data.train_images, data.normalizer, data.device
    done: dict[int, dict] = torch.load(checkpoint, weights_only=True)["members"] if resume and checkpoint.exists() \
        else {}
    save_atomically({"members": done}, checkpoint)  # from the first member on, `train --resume` finds the run's
    configs = method.member_configs()
    pending = [i for i in range(len(configs)) if i not in done]

    def keep(index: int, state: dict, fields: dict) -> None:
        done[index] = {"state": state, "result": fields}
        save_atomically({"members": done}, checkpoint)
        member_checkpoint(checkpoint, index).unlink(missing_ok=True)

    if hooks and prep.cfg.ensemble_workers > 1 and len(pending) > 1:
        for index, state, fields in hooks.elsewhere(prep, pending, checkpoint, prep.cfg.ensemble_workers):
            keep(index, state, fields)
    began, trained = time.perf_counter(), 0
    for index in pending:
        if index not in done:
            result = fit_member(prep, data, index, checkpoint, hooks, finished=len(done))
            keep(index, result.model.state_dict(), result.summary_fields())
            trained, elapsed = trained + 1, time.perf_counter() - began
            left = sum(i not in done for i in pending)
            if prep.cfg.max_hours and left:  # each member has the budget's check; the members together too
                check_budget(prep.cfg.max_hours, "members", elapsed, elapsed / trained, left)
    models, results = [], []
    for index, cfg in enumerate(configs):
        model = new_model(dataclasses.replace(prep, cfg=cfg))
        model.load_state_dict(done[index]["state"])
        models.append(model)
        results.append(TrainResult(model, **done[index]["result"]))
    joined = method.combine(models)
    val_acc = accuracy(joined.to(device), data.val_images, data.val_labels, normalizer, device,
                       precision=autocast_dtype(prep.cfg.amp, device))
    result = TrainResult.joined(joined, val_acc, results)
    return Fitted(joined, normalizer, result, train_x[:4], device)
