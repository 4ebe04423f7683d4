"""Oracle anomaly detectors: how much anomaly information the latent features `z` hold (Q1, Q2).

An oracle is a classifier trained on `z` of the validation split labelled nominal vs anomaly, scoring
the test split with its anomaly probability. It uses validation *anomalies* by design, so it is an
upper reference, never a deployable scorer and never used for model selection; every oracle's name
starts with `oracle_`. Three probes: a 1000-tree random forest (the talk's oracle), a linear probe
(is the information linearly available?) and a k-nearest-neighbour probe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from anomaly_repr.errors import DataError
from anomaly_repr.scoring.outputs import Outputs
from anomaly_repr.scoring.scorers import check_fitted, register_scorer

if TYPE_CHECKING:
    from anomaly_repr.config import ExperimentConfig


class ProbeOracle:
    """Fits `estimator` on (z, is_anomaly) of the reference outputs; scores P(anomaly | z)."""

    requires: tuple[str, ...] = ("z",)
    fits_reference = True

    def __init__(self, estimator: BaseEstimator):
        self.estimator = estimator

    def fit(self, reference: Outputs) -> Self:
        if reference.is_anomaly.all() or not reference.is_anomaly.any():
            raise DataError(f"an oracle needs nominal and anomaly images in its reference outputs, got "
                            f"{int((~reference.is_anomaly).sum())} nominal and {int(reference.is_anomaly.sum())} "
                            "anomaly images")
        self.estimator_ = clone(self.estimator).fit(reference.z, reference.is_anomaly)
        self.fitted_ = True
        return self

    def score(self, outputs: Outputs) -> np.ndarray:
        check_fitted(self)
        return self.estimator_.predict_proba(outputs.z)[:, 1]


@register_scorer("oracle_rf", "oracle")
def random_forest(cfg: ExperimentConfig) -> ProbeOracle:
    return ProbeOracle(RandomForestClassifier(n_estimators=cfg.oracle_trees, n_jobs=-1, random_state=cfg.seed))


@register_scorer("oracle_linear", "oracle")
def linear_probe(cfg: ExperimentConfig) -> ProbeOracle:
    return ProbeOracle(make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)))


class KNNOracle(ProbeOracle):
    """k-NN probe on standardised z; k shrinks to the reference size on tiny validation splits."""

    def __init__(self, n_neighbors: int):
        super().__init__(make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors, weights="distance")))
        self.n_neighbors = n_neighbors

    def fit(self, reference: Outputs) -> Self:
        self.estimator.set_params(kneighborsclassifier__n_neighbors=min(self.n_neighbors, len(reference.z)))
        return super().fit(reference)


@register_scorer("oracle_knn", "oracle")
def knn_probe(cfg: ExperimentConfig) -> ProbeOracle:
    return KNNOracle(cfg.oracle_neighbors)

