"""Anomaly scorers. One sign everywhere: a higher score means more anomalous.

Simple scores are plain functions of the logits. The registry holds estimators (scikit-learn style:
the constructor stores parameters, `fit` returns self, learned state ends in `_`, scoring before
fitting raises `NotFittedError`), so that scorers which learn sit beside the plain ones: the feature-space
detectors (`features.py`) learn from nominal outputs only and stay deployable; the oracles (`oracles.py`)
learn from validation outputs labelled nominal/anomaly and are upper references. `FunctionScorer` adapts
a plain function. Every scorer reads cached `Outputs`: a dozen scorers cost one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from scipy.special import logsumexp, softmax
from sklearn.exceptions import NotFittedError

from anomaly_repr.registry import Registry
from anomaly_repr.scoring.outputs import Outputs

if TYPE_CHECKING:
    from anomaly_repr.config import ExperimentConfig


def msp(logits: np.ndarray) -> np.ndarray:
    """1 - maximum softmax probability (Hendrycks & Gimpel 2017)."""
    return 1.0 - softmax(logits, axis=1).max(axis=1)


def entropy(logits: np.ndarray) -> np.ndarray:
    """Shannon entropy of the softmax distribution, in nats."""
    logp = logits - logsumexp(logits, axis=1, keepdims=True)
    return -(np.exp(logp) * logp).sum(axis=1)


def max_logit(logits: np.ndarray) -> np.ndarray:
    """Negative maximum logit (Vaze et al. 2022, "MLS")."""
    return -logits.max(axis=1)


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy -T log sum exp(logits / T) (Liu et al. 2020)."""
    return -temperature * logsumexp(logits / temperature, axis=1)


class Scorer(Protocol):
    requires: tuple[str, ...]  # the Outputs fields it reads; a scorer applies where they are present
    fits_reference: bool  # does `fit` learn anything from its reference outputs?

    def fit(self, reference: Outputs) -> Scorer: ...

    def score(self, outputs: Outputs) -> np.ndarray: ...


def check_fitted(scorer: object) -> None:
    if not getattr(scorer, "fitted_", False):
        raise NotFittedError(f"{type(scorer).__name__} is not fitted yet; call fit(reference_outputs) first")


def applies(scorer: Scorer, outputs: Outputs) -> bool:
    return all(outputs.has(name) for name in scorer.requires)


class FunctionScorer:
    """A fixed function of the outputs as an estimator: nothing to learn."""

    fits_reference = False

    def __init__(self, fn: Callable[[Outputs], np.ndarray], requires: tuple[str, ...] = ("logits",)):
        self.fn = fn
        self.requires = requires

    def fit(self, reference: Outputs) -> FunctionScorer:
        """Scorers learn from reference outputs (the validation split); a fixed function learns nothing."""
        self.fitted_ = True
        return self

    def score(self, outputs: Outputs) -> np.ndarray:
        check_fitted(self)
        if not applies(self, outputs):
            raise ValueError(f"this scorer reads {', '.join(self.requires)}, which these outputs lack")
        return self.fn(outputs)


ScorerFactory = Callable[["ExperimentConfig"], Scorer]
# classic (functions of the logits), feature (feature-space detectors fitted on nominal data), method (a
# method's own scores), oracle (fitted with anomaly labels: never deployable, never an objective): the
# report's column groups, left to right, and the order in which a model's scorers run
TIERS = ("classic", "feature", "method", "oracle")
Tier = Literal["classic", "feature", "method", "oracle"]
# Filled by this module (the classic scorers), the feature scorers, each method's own and the oracles.
SCORERS: Registry[ScorerFactory] = Registry(
    "scorer", ("anomaly_repr.scoring.features", "anomaly_repr.methods", "anomaly_repr.scoring.oracles"),
    order=lambda name: TIERS.index(tier(name)))


def register_scorer(name: str, tier: Tier) -> Callable[[ScorerFactory], ScorerFactory]:
    """Register a scorer factory under `name` in its tier."""
    if tier not in TIERS:
        raise ValueError(f"scorer {name!r}: unknown tier {tier!r}; one of {', '.join(TIERS)}")
    return SCORERS.register(name, tier=tier)


def _of_logits(fn: Callable[[np.ndarray], np.ndarray]) -> ScorerFactory:
    return lambda cfg: FunctionScorer(lambda outputs: fn(outputs.logits))


for _fn in (msp, entropy, max_logit, energy):
    register_scorer(_fn.__name__, "classic")(_of_logits(_fn))


def make_scorer(name: str, cfg: ExperimentConfig) -> Scorer:
    return SCORERS[name](cfg)


def tier(name: str) -> Tier:
    """The tier a scorer was registered in. A name this version does not register (read from an older run)
    counts as an oracle by its `oracle_` prefix, else as a method's own score."""
    about = SCORERS.about(name) if name in SCORERS else {}
    return about.get("tier") or ("oracle" if name.startswith("oracle_") else "method")


def scorers_of(which: Tier) -> tuple[str, ...]:
    """The scorers of one tier, in registration order."""
    return tuple(name for name in SCORERS if tier(name) == which)


def is_oracle(name: str) -> bool:
    """Oracles learn from anomaly labels: upper references, never deployable, never an objective."""
    return tier(name) == "oracle"
