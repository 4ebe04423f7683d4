"""The typed, frozen settings of a tuning study; the experiment itself stays an `ExperimentConfig`.

The CLI options and the MLproject `tune` parameters map one-to-one to these fields plus the
experiment's. Fields that define the objective (`OBJECTIVE_FIELDS`) are stored with the study, and
resuming a study by name with different values is refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from anomaly_repr.errors import ConfigError, unknown
from anomaly_repr.study.pool import PoolConfig

Protocol = Literal["val-anomalies", "class-holdout"]
Pruner = Literal["median", "hyperband", "none"]
PROTOCOLS, PRUNERS = (get_args(t) for t in (Protocol, Pruner))
# What the objective depends on: a resumed study must keep these, or its trials would not compare.
OBJECTIVE_FIELDS = ("target", "protocol", "scorer", "lambda_low", "lambda_high", "holdout_fraction")


@dataclass(frozen=True)
class TuneConfig(PoolConfig):
    """The search; the pool fields (study_name, storage, workers, role, heartbeats) come from `PoolConfig`."""

    target: str = "recon_weight"  # a method with searchable settings (hybrid, alias recon_weight: λ | godin: h, ε, ...)
    #                               or recipe: the classifier's augmentation, erasing, mixing, smoothing, EMA
    protocol: Protocol = "val-anomalies"  # val-anomalies | class-holdout (anomaly classes split into tuning/test)
    scorer: str = ""  # objective's scorer; '' = max_logit (λ) or godin (G-ODIN); a comma-separated list is searched
    n_trials: int = 20  # finished (complete or pruned) trials the study should hold, over all workers
    timeout: float = 0.0  # seconds after which this process starts no new trial; 0 = no limit
    pruner: Pruner = "median"  # median | hyperband | none, on the per-epoch validation AUROC
    startup_trials: int = 5  # TPE's random trials before it models, and trials before the median pruner acts
    lambda_low: float = 1e-4  # target=recon_weight: λ is searched on a log scale in [lambda_low, lambda_high]
    lambda_high: float = 10.0
    holdout_fraction: float = 0.5  # class-holdout: share of the anomaly classes the objective may see

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, allowed in (("protocol", PROTOCOLS), ("pruner", PRUNERS)):
            if getattr(self, name) not in allowed:
                raise unknown(name, getattr(self, name), allowed)
        if self.n_trials <= 0:
            raise ConfigError(f"n_trials must be a positive integer, got {self.n_trials}")
        if self.timeout < 0 or self.startup_trials < 0:
            raise ConfigError("timeout and startup_trials must not be negative")
        if not 0 < self.lambda_low < self.lambda_high:
            raise ConfigError(f"the λ range needs 0 < lambda_low < lambda_high, "
                              f"got {self.lambda_low}..{self.lambda_high}")
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        from tuning.space import check_scorers  # the registries import torch; the config alone does not

        check_scorers(self.target, self.scorers)

    @property
    def scorers(self) -> list[str]:
        """The objective's scorer names: one is fixed, several are a searched choice; none given = the
        target method's own default (max_logit for the hybrid, godin for G-ODIN)."""
        from tuning.space import default_scorer

        names = [s.strip() for s in self.scorer.split(",") if s.strip()]
        return names or [default_scorer(self.target)]

    def objective_fields(self) -> dict[str, str]:
        return {name: str(getattr(self, name)) for name in OBJECTIVE_FIELDS}

    def replace(self, **changes: Any) -> TuneConfig:
        return dataclasses.replace(self, **changes)


TUNE_FIELDS = {f.name: f for f in fields(TuneConfig)}
