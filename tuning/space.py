"""What a study searches: a method's searchable settings, which live beside the method.

`target` names a method that has settings to search (`hybrid`: λ; `godin`: h, ε, the decay of h); the
name of earlier versions, `recon_weight`, still means the hybrid. Each method also names its objective's
default scorer and the talk's settings to try first. Objective scorers must not learn from anomaly
labels: an oracle fitted on the validation anomalies and scored on them would grade itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.errors import ConfigError
from anomaly_repr.extract import CORE
from anomaly_repr.methods import METHODS, Method, child_config, searchable
from anomaly_repr.scorers import SCORERS, is_oracle, make_scorer

if TYPE_CHECKING:
    from tuning.config import TuneConfig

TARGET_ALIASES = {"recon_weight": "hybrid"}  # target names of earlier versions


def target_method(target: str) -> str:
    """The method a `target` names; a one-line error for anything else."""
    name = TARGET_ALIASES.get(target, target)
    if name not in searchable():
        raise ConfigError(f"unknown target {target!r}; choose one of {', '.join([*searchable(), *TARGET_ALIASES])}")
    return name


def method_of(target: str, base: ExperimentConfig) -> Method:
    """The target's method, configured from `base` (the fields that select other methods reset)."""
    return METHODS[target_method(target)](child_config(base, target_method(target)))


def default_scorer(target: str) -> str:
    return METHODS[target_method(target)].tune_scorer or "max_logit"


def check_scorers(target: str, names: list[str]) -> None:
    method = METHODS[target_method(target)]
    outputs = set(CORE) | method.extra_outputs | ({"final_layer"} if method.linear_head else set())
    for name in names:
        if name not in SCORERS:
            raise ConfigError(f"unknown scorer {name!r}; choose one of {', '.join(sorted(SCORERS))}")
        if is_oracle(name):
            raise ConfigError(f"scorer {name} learns from validation anomalies and cannot be the objective")
        missing = set(make_scorer(name, ExperimentConfig()).requires) - outputs
        if missing:
            raise ConfigError(f"scorer {name} reads {', '.join(sorted(missing))}, which target={target} models lack")


def suggest(trial: optuna.Trial, method: Method, scorers: list[str], tcfg: TuneConfig) -> tuple[ExperimentConfig, str]:
    """(this trial's experiment config, its scorer name)."""
    cfg = method.cfg.replace(**method.suggest(trial, tcfg))
    scorer = trial.suggest_categorical("scorer", scorers) if len(scorers) > 1 else scorers[0]
    return cfg, scorer
