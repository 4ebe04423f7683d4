"""What a study searches, and the talk's values that it tries first.

- `target=recon_weight`: λ of the hybrid loss CE + λ·MSE, on a log scale (hybrid models).
- `target=godin`: G-ODIN's similarity h, its input-perturbation ε (from the experiment's ε grid),
  the weight decay of h's class vectors, and the scorer when several are given.
Objective scorers must not learn from anomaly labels: an oracle fitted on the validation anomalies
and scored on them would grade itself.
"""

from __future__ import annotations

from typing import Any

import optuna

from anomaly_repr.config import GODIN_H, ExperimentConfig
from anomaly_repr.errors import ConfigError
from anomaly_repr.scorers import SCORERS, make_scorer
from anomaly_repr.study import Study

H_WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 5e-4)  # candidate L2 penalties on G-ODIN's h (0: Hsu et al. 2020)
# The outputs each target's models produce, for checking that a scorer can apply.
TARGET_OUTPUTS = {"recon_weight": {"z", "logits", "recon_error"},
                  "godin": {"z", "logits", "godin_h", "godin_g", "godin_h_perturbed"}}


def check_scorers(target: str, names: list[str]) -> None:
    for name in names:
        if name not in SCORERS:
            raise ConfigError(f"unknown scorer {name!r}; choose one of {', '.join(sorted(SCORERS))}")
        if name.startswith("oracle_"):
            raise ConfigError(f"scorer {name} learns from validation anomalies and cannot be the objective")
        missing = set(make_scorer(name, ExperimentConfig()).requires) - TARGET_OUTPUTS[target]
        if missing:
            raise ConfigError(f"scorer {name} reads {', '.join(sorted(missing))}, which target={target} models lack")


def suggest(trial: optuna.Trial, target: str, base: ExperimentConfig, scorers: list[str],
            lambda_range: tuple[float, float]) -> tuple[dict[str, Any], str]:
    """(experiment fields of this trial, its scorer name)."""
    if target == "recon_weight":
        changes: dict[str, Any] = {"head": "linear",
                                   "recon_weight": trial.suggest_float("recon_weight", *lambda_range, log=True)}
    else:
        changes = {"head": "godin", "recon_weight": 0.0,
                   "godin_h": trial.suggest_categorical("godin_h", GODIN_H),
                   "godin_epsilons": str(trial.suggest_categorical("godin_epsilon", base.epsilons)),
                   "godin_h_weight_decay": trial.suggest_categorical("godin_h_weight_decay", H_WEIGHT_DECAYS)}
    scorer = trial.suggest_categorical("scorer", scorers) if len(scorers) > 1 else scorers[0]
    return changes, scorer


def talk_values(target: str, base: ExperimentConfig, lambda_range: tuple[float, float]) -> list[dict[str, Any]]:
    """The talk's settings, enqueued as the first trial: λ = 0.9 (CIFAR-10) or 0.005 (CIFAR-100); G-ODIN
    with cosine h and no decay on h (ε and the scorer are left to the sampler)."""
    if target == "godin":
        return [{"godin_h": "cosine", "godin_h_weight_decay": 0.0}]
    weight = Study.talk_weight(base.dataset)
    return [{"recon_weight": weight}] if lambda_range[0] <= weight <= lambda_range[1] else []
