"""Oracles on features where the answer is known by construction."""

import numpy as np
import pytest

from anomaly_repr.config import ExperimentConfig
from anomaly_repr.errors import DataError
from anomaly_repr.scoring.metrics import anomaly_metrics
from anomaly_repr.scoring.outputs import Outputs
from anomaly_repr.scoring.scorers import make_scorer, scorers_of

CFG = ExperimentConfig(oracle_trees=100)


def separable(n: int, seed: int) -> Outputs:
    """Anomalies sit on a shell of radius 4 around the nominal cloud: separable, but not by max logit."""
    rng = np.random.default_rng(seed)
    nominal = rng.normal(0, 0.5, (n, 8))
    direction = rng.normal(size=(n, 8))
    anomaly = 4 * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    z = np.concatenate([nominal, anomaly]).astype(np.float32)
    logits = rng.normal(size=(2 * n, 4)).astype(np.float32)  # carries no information about z
    labels = np.concatenate([rng.integers(0, 4, n), -np.ones(n, dtype=int)])
    return Outputs(z=z, logits=logits, labels=labels)


def test_every_oracle_finds_separable_anomalies_while_a_blind_score_stays_at_chance():
    reference, test = separable(200, 0), separable(300, 1)
    assert set(scorers_of("oracle")) == {"oracle_rf", "oracle_linear", "oracle_knn"}
    for name in ("oracle_rf", "oracle_knn"):
        auroc = anomaly_metrics(make_scorer(name, CFG).fit(reference).score(test), test.is_anomaly)["auroc"]
        assert auroc > 0.98, name
    blind = anomaly_metrics(make_scorer("max_logit", CFG).fit(reference).score(test), test.is_anomaly)["auroc"]
    assert abs(blind - 0.5) < 0.08


def test_linear_probe_on_a_linearly_separable_direction():
    rng = np.random.default_rng(2)

    def outputs(n):
        z = rng.normal(size=(2 * n, 6)).astype(np.float32)
        z[n:, 0] += 4.0  # anomalies shifted along one axis
        return Outputs(z=z, logits=np.zeros((2 * n, 2), np.float32),
                       labels=np.concatenate([np.zeros(n, int), -np.ones(n, int)]))

    test = outputs(300)
    scores = make_scorer("oracle_linear", CFG).fit(outputs(200)).score(test)
    assert anomaly_metrics(scores, test.is_anomaly)["auroc"] > 0.98


def test_an_oracle_needs_anomalies_in_its_reference():
    nominal_only = Outputs(z=np.zeros((5, 2), np.float32), logits=np.zeros((5, 2), np.float32),
                           labels=np.zeros(5, int))
    with pytest.raises(DataError, match="nominal and anomaly"):
        make_scorer("oracle_rf", CFG).fit(nominal_only)


def test_knn_oracle_shrinks_k_to_a_tiny_reference():
    reference = separable(3, 0)  # six images, k = 10
    test = separable(50, 1)
    scores = make_scorer("oracle_knn", CFG).fit(reference).score(test)
    assert anomaly_metrics(scores, test.is_anomaly)["auroc"] > 0.9
