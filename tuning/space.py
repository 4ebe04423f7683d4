"""What a study searches: a method's searchable settings, which live beside the method, or the training
recipe.

`target` names a method that has settings to search (`hybrid`: λ; `godin`: h, ε, the decay of h); the
name of earlier versions, `recon_weight`, still means the hybrid. `target=recipe` searches the classifier's
training recipe instead (augmentation policy, random erasing, mixup, cutmix, label smoothing, the weights'
moving average, and the warm-up of a cosine schedule), scored by the validation max-logit AUROC: the study
asks for a better detector, and the accuracy that the recipe raises is what model selection already
maximises inside every trial. Each method also names its objective's
default scorer and the talk's settings to try first. Objective scorers must not learn from anomaly
labels: an oracle fitted on the validation anomalies and scored on them would grade itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna

from anomaly_repr.config import AUGMENTS, ExperimentConfig
from anomaly_repr.errors import ConfigError, unknown
from anomaly_repr.methods import METHODS, Method, child_config, searchable
from anomaly_repr.methods.classifier import Classifier
from anomaly_repr.scoring.outputs import CORE
from anomaly_repr.scoring.scorers import SCORERS, is_oracle, make_scorer

if TYPE_CHECKING:
    from anomaly_repr.methods.base import SearchBounds

TARGET_ALIASES = {"recon_weight": "hybrid"}  # target names of earlier versions
RECIPE = "recipe"  # the target that searches the classifier's training recipe


# The recipe's search space: categorical choices and float ranges, and the plain recipe (nothing on top of
# crop and flip).
RECIPE_CHOICES: dict[str, list[Any]] = {"augment": list(AUGMENTS), "mixup": [0.0, 0.2, 1.0], "cutmix": [0.0, 1.0],
                                        "ema_decay": [0.0, 0.99, 0.999]}
RECIPE_RANGES = {"random_erasing": (0.0, 0.5), "label_smoothing": (0.0, 0.2)}
PLAIN_RECIPE = {"augment": "crop_flip", "random_erasing": 0.0, "mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.0,
                "ema_decay": 0.0}


class Recipe(Classifier):
    """The classifier, with the training recipe as its searchable settings (not a method of its own)."""

    tune_scorer = "max_logit"

    def suggest(self, trial: optuna.Trial, tcfg: SearchBounds) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for name in PLAIN_RECIPE:
            if name in RECIPE_CHOICES:
                fields[name] = trial.suggest_categorical(name, RECIPE_CHOICES[name])
            else:
                fields[name] = trial.suggest_float(name, *RECIPE_RANGES[name])
        if self.cfg.schedule == "cosine":
            fields["warmup_epochs"] = trial.suggest_float("warmup_epochs", 0.0, self.cfg.epochs / 4)
        return fields

    def talk_values(self, tcfg: SearchBounds) -> list[dict[str, Any]]:
        """The recipe as configured first (with the defaults: crop and flip, nothing else; with a `preset`: the
        preset's, which also fixes what the search does not vary): what every other trial is compared with.
        A configured value outside the search space is replaced by the plain recipe's."""
        first = {}
        for name, plain in PLAIN_RECIPE.items():
            value = getattr(self.cfg, name)
            low, high = RECIPE_RANGES.get(name, (value, value))
            inside = value in RECIPE_CHOICES[name] if name in RECIPE_CHOICES else low <= value <= high
            first[name] = value if inside else plain
        return [first | ({"warmup_epochs": 0.0} if self.cfg.schedule == "cosine" else {})]


def targets() -> list[str]:
    return [*searchable(), RECIPE, *TARGET_ALIASES]


def target_method(target: str) -> str:
    """The method a `target` trains; a one-line error for anything else."""
    name = TARGET_ALIASES.get(target, target)
    if name == RECIPE:
        return Classifier.name
    if name not in searchable():
        raise unknown("target", target, targets())
    return name


def method_of(target: str, base: ExperimentConfig) -> Method:
    """The target's method, configured from `base` (the fields that select other methods reset)."""
    cfg = child_config(base, target_method(target))
    return Recipe(cfg) if target == RECIPE else METHODS[target_method(target)](cfg)


def default_scorer(target: str) -> str:
    return Recipe.tune_scorer if target == RECIPE else METHODS[target_method(target)].tune_scorer or "max_logit"


def check_scorers(target: str, names: list[str]) -> None:
    method = METHODS[target_method(target)]
    outputs = set(CORE) | method.extra_outputs | ({"final_layer"} if method.linear_head else set())
    for name in names:
        if name not in SCORERS:
            raise unknown("scorer", name, sorted(SCORERS))
        if is_oracle(name):
            raise ConfigError(f"scorer {name} learns from validation anomalies and cannot be the objective")
        missing = set(make_scorer(name, ExperimentConfig()).requires) - outputs
        if missing:
            raise ConfigError(f"scorer {name} reads {', '.join(sorted(missing))}, which target={target} models lack")


def suggest(trial: optuna.Trial, method: Method, scorers: list[str],
            tcfg: SearchBounds) -> tuple[ExperimentConfig, str]:
    """(this trial's experiment config, its scorer name)."""
    cfg = method.cfg.replace(**method.suggest(trial, tcfg))
    scorer = trial.suggest_categorical("scorer", scorers) if len(scorers) > 1 else scorers[0]
    return cfg, scorer
