"""What a method is: everything that makes one kind of model, in one place.

A method builds its network from a registered backbone, trains it (by default one forward, its loss and
one optimiser step per batch; a method may replace the whole step), names the extra outputs its
extraction adds, calibrates itself on nominal images if it needs to, brings its scorers (it
registers them in its module) and its search space for `tune`, and says which labels it trains on.
Nothing outside `anomaly_repr/methods/` asks which method it is holding: it asks the method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from anomaly_repr import registry
from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.models.backbones import ModelOutput, OpenSetNet, create_model
from anomaly_repr.registry import Registry
from anomaly_repr.scoring.outputs import Outputs

if TYPE_CHECKING:
    import optuna

    from anomaly_repr.config import ExperimentConfig

Autocast = Callable[[], AbstractContextManager]  # a fresh autocast context for one forward pass


class SearchBounds(Protocol):
    """What a method's search space reads of the tuning config (`tuning.config.TuneConfig` has it)."""

    @property
    def lambda_low(self) -> float:  # the hybrid's λ is searched on a log scale in [lambda_low, lambda_high]
        ...

    @property
    def lambda_high(self) -> float:
        ...


@dataclass(frozen=True)
class Calibration:
    """What a method learned after training from nominal validation images: metrics to log
    (`godin/epsilon`) and records to keep as JSON artifacts (`godin/epsilon_search.json`)."""

    values: dict[str, Any] = field(default_factory=dict)  # used by the method's extra passes
    metrics: dict[str, float] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)  # artifact path -> JSON-serialisable object


@dataclass(frozen=True)
class Stage:
    """A phase of training with its own optimiser, schedule and epochs (CSI: contrastive pretraining, then
    linear heads on the frozen backbone). Only a stage that `selects` reads the validation accuracy, keeps
    the best model and stops early."""

    name: str
    epochs: int
    selects: bool = True
    loss_name: str = "train/loss"  # the curve this stage's loss is logged as


# Roles in a study: the `classifier` is the reference every gain is measured against, the oracle
# representation bounds what the architecture can hold (q2), and every other method is a variant.
REFERENCE, ORACLE_REPRESENTATION, VARIANT = "reference", "oracle_representation", "variant"


class Method:
    """The default method: a classifier trained with cross-entropy on the known classes."""

    name: ClassVar[str] = ""  # set by `register_method`
    role: ClassVar[str] = VARIANT
    all_classes: ClassVar[bool] = False  # train on every class of the split (anomalies included)?
    scores_logits: ClassVar[bool] = True  # do scores of the logits mean anything (not for all-class models)?
    extra_outputs: ClassVar[frozenset[str]] = frozenset()  # the Outputs extras its extraction adds
    linear_head: ClassVar[bool] = True  # is the model's head one linear layer (Outputs.final_layer)?
    # Config fields that `train --resume` may change (a sampler's step size after a divergence, say).
    resume_fields: ClassVar[tuple[str, ...]] = ()
    # Config fields whose non-default values select this method when `method` is not given.
    selectors: ClassVar[tuple[str, ...]] = ()
    # Tuning: the scorer of the objective by default; None = nothing to search.
    tune_scorer: ClassVar[str | None] = None
    oracle_gain_alias: ClassVar[str | None] = None  # an older parent metric equal to this method's oracle gain

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg

    # --- configuration ---
    @classmethod
    def claims(cls, cfg: ExperimentConfig) -> bool:
        """Whether `cfg`'s fields select this method (`head=godin`, `recon_weight > 0`)."""
        return False

    @classmethod
    def check(cls, cfg: ExperimentConfig) -> None:
        """Refuse, with a one-line ConfigError, bad values of the fields this method owns. The config runs
        every registered method's check, whichever method it selects (a bad value is refused anyway)."""

    @classmethod
    def settle(cls, cfg: ExperimentConfig) -> dict[str, Any]:
        """Field values implied by choosing this method (e.g. head=godin); raises ConfigError on a contradiction."""
        return {}

    # --- data ---
    def check_data(self, shape: tuple[int, int, int]) -> None:
        """Refuse, with a one-line error, images of shape (C, H, W) the method cannot train on."""

    # --- network ---
    def build(self, num_classes: int, in_channels: int, image_size: int) -> OpenSetNet:
        return create_model(self.cfg.arch, num_classes, in_channels)

    def stages(self) -> list[Stage]:
        """The phases of training: one by default, `epochs` long, selecting on validation accuracy."""
        return [Stage("train", self.cfg.epochs)]

    def begin_stage(self, model: nn.Module, index: int) -> None:
        """Before each epoch of stage `index` (after `model.train()`): freeze or set modes of parts."""

    def optimizer(self, param_groups: list[dict]) -> torch.optim.Optimizer:
        """The optimiser of a stage: SGD with Nesterov momentum at the configured peak learning rate."""
        return torch.optim.SGD(param_groups, lr=self.cfg.lr, momentum=self.cfg.momentum,
                               nesterov=self.cfg.momentum > 0)

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Weight decay on conv and linear weights; none on norms and biases."""
        named = list(model.named_parameters())
        return [{"params": [p for _, p in named if p.ndim > 1], "weight_decay": self.cfg.weight_decay},
                {"params": [p for _, p in named if p.ndim <= 1], "weight_decay": 0.0}]

    # --- training ---
    def loss(self, out: ModelOutput, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.logits.float(), y, label_smoothing=self.cfg.label_smoothing)

    def train_step(self, model: OpenSetNet, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                   autocast: Autocast) -> torch.Tensor:
        """One optimiser step on a batch; returns the batch's mean loss (detached, on the device)."""
        with autocast():
            loss = self.loss(model(x), x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    # --- state across a training run (a sampler's replay buffer, ...) ---
    def start(self, normalizer: Normalizer, device: torch.device) -> None:
        """Before the first step (and before a resumed run's state is loaded)."""

    def train_state(self) -> dict[str, Any]:
        """What the method's steps carry from one step to the next, kept in every checkpoint."""
        return {}

    def load_train_state(self, state: dict[str, Any]) -> None:
        """A resumed run's `train_state`."""

    def epoch_metrics(self) -> dict[str, float]:
        """Per-epoch curves of the method's own (`train/...`), summed up since the last call."""
        return {}

    def epoch_figures(self, epoch: int) -> dict[str, Figure]:
        """Figures to log after `epoch` (artifact path -> figure), made with matplotlib's `Figure` (not pyplot),
        so that one nobody logs holds no memory."""
        return {}

    # --- independent members (a deep ensemble) ---
    def member_configs(self) -> list[ExperimentConfig]:
        """Configs of members trained one after another, each on its own with its own early stopping, then
        joined by `combine`; [] (the default) = one model trained with `train_step`."""
        return []

    def combine(self, members: list[OpenSetNet]) -> OpenSetNet:
        """The method's model made of its trained members."""
        raise NotImplementedError(f"method {self.name} trains no members")

    # --- extraction ---
    def batch_extras(self, out: ModelOutput, x: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """Named extra outputs of one evaluation batch (`x` is the normalised input)."""
        return {}

    def calibrate(self, model: OpenSetNet, nominal_val: torch.Tensor, normalizer: Normalizer, device: torch.device,
                  nominal_train: torch.Tensor) -> Calibration:
        """Post-training calibration on nominal images only (no anomaly, no test image): the validation
        images (G-ODIN's ε) or the training images (GEOM's Dirichlets)."""
        return Calibration()

    def extra_passes(self, model: OpenSetNet, images: torch.Tensor, normalizer: Normalizer, device: torch.device,
                     calibration: Calibration) -> dict[str, np.ndarray]:
        """Extras that need a pass of their own (G-ODIN's input perturbation), after calibration."""
        return {}

    def views(self, outputs: dict[str, Outputs]) -> list[dict[str, Outputs]]:
        """Other readings of the same images, each scored like the model itself, whose AUROCs are averaged
        into `test/member_mean/<scorer>/auroc` (an ensemble's members, one at a time); [] = none."""
        return []

    # --- tuning ---
    def suggest(self, trial: optuna.Trial, tcfg: SearchBounds) -> dict[str, Any]:
        """The experiment fields of one trial: this method's searchable settings."""
        raise NotImplementedError(f"method {self.name} has no searchable settings")

    def talk_values(self, tcfg: SearchBounds) -> list[dict[str, Any]]:
        """Trial parameters to enqueue first (the talk's settings)."""
        return []


# --- the table of methods (filled as each method's module is imported: see __init__) ---

METHODS: Registry[type[Method]] = registry.METHODS


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def add(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(name)(cls)

    return add


def method_for(cfg: ExperimentConfig) -> Method:
    """The method `cfg` names (settled by the config's own checks)."""
    return METHODS[cfg.method](cfg)


def child_config(base: ExperimentConfig, name: str) -> ExperimentConfig:
    """`base` as a config of method `name`: the fields that select other methods go back to their defaults."""
    defaults = {f.name: f.default for f in fields(base) if f.default is not MISSING}
    resets = {f: defaults[f] for other, cls in METHODS.items() if other != name for f in cls.selectors}
    return base.replace(**resets, method=name)


def searchable() -> list[str]:
    """Methods with settings that `tune` can search."""
    return [name for name, cls in METHODS.items() if cls.tune_scorer is not None]
